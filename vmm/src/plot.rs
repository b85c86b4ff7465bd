//! The outage chart: a client's reply latency over time, with the kills, the go-live moments and
//! the re-protections marked, so a reader sees the outage at a glance. Drawn by `ftvm demo --plot
//! FILE.svg` and by the FT benchmark (`tests/benches/ft.rs`, `FTVM_PLOT`).

use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One reply the client got: when it arrived and how long after its request was sent.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub at: Instant,
    pub latency: Duration,
}

/// A moment worth a vertical line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    Kill,
    Live,
    Protected,
}

impl MarkKind {
    /// In the order they happen around a failover.
    const ALL: [MarkKind; 3] = [MarkKind::Kill, MarkKind::Live, MarkKind::Protected];

    fn color(self) -> RGBColor {
        match self {
            MarkKind::Kill => RGBColor(200, 30, 30),
            MarkKind::Live => RGBColor(20, 150, 40),
            MarkKind::Protected => RGBColor(40, 80, 220),
        }
    }

    /// Where its labels go, as a fraction of the top of the log-scale y axis (staggered: a kill
    /// and the go-live after it are a few ms apart).
    fn label_height(self) -> f64 {
        match self {
            MarkKind::Kill => 1.6,
            MarkKind::Live => 4.0,
            MarkKind::Protected => 10.0,
        }
    }

    fn legend(self) -> &'static str {
        match self {
            MarkKind::Kill => "kill -9 of the live VMM",
            MarkKind::Live => "the backup goes live",
            MarkKind::Protected => "protected (a backup in step)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Mark {
    pub at: Instant,
    pub kind: MarkKind,
    pub label: String,
}

/// What the chart says around the data.
pub struct Chart<'a> {
    /// The caption above the chart.
    pub title: &'a str,
    /// The x axis's description; x is seconds since `origin`.
    pub x_desc: &'a str,
    pub origin: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("drawing {what} of the chart {}", path.display())]
pub struct PlotError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: DrawingAreaErrorKind<std::io::Error>,
}

/// Writes the chart to `path` (SVG): x = seconds since `chart.origin`, y = each reply's latency
/// in ms (log scale: a 2 ms reply and a 500 ms outage on one chart).
pub fn draw(path: &Path, chart: &Chart, replies: &[Reply], marks: &[Mark]) -> Result<(), PlotError> {
    let failed = |what: &'static str| move |source| PlotError { what, path: path.to_owned(), source };
    let seconds = |at: Instant| at.saturating_duration_since(chart.origin).as_secs_f64();
    let points: Vec<(f64, f64)> =
        replies.iter().map(|reply| (seconds(reply.at), (reply.latency.as_secs_f64() * 1e3).max(0.01))).collect();
    let x_max = points.iter().map(|p| p.0).chain(marks.iter().map(|m| seconds(m.at))).fold(1.0, f64::max) * 1.02;
    let y_max = points.iter().map(|p| p.1).fold(10.0, f64::max) * 2.0;
    // A decade below the fastest reply: room for the legend, which would hide replies otherwise.
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).clamp(0.01, 1.0) / 10.0;

    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(failed("the background"))?;
    let mut plot = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(failed("the frame"))?;
    plot.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc("reply latency (ms, log scale)")
        .draw()
        .map_err(failed("the axes"))?;
    plot.draw_series(points.iter().map(|p| Circle::new(*p, 2, RGBColor(90, 90, 90).filled())))
        .map_err(failed("the replies"))?
        .label("one reply (SET or GET)")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(90, 90, 90).filled()));
    // The legend lists the kinds of marks in the order they happen...
    for kind in MarkKind::ALL.into_iter().filter(|kind| marks.iter().any(|mark| mark.kind == *kind)) {
        let color = kind.color();
        plot.draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
            .map_err(failed("the legend"))?
            .label(kind.legend())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    // ...but the lines go down in reverse: a go-live comes a few ms after its kill, one or two
    // pixels to the right, and the kill's line must not vanish under it.
    for kind in MarkKind::ALL.into_iter().rev() {
        for mark in marks.iter().filter(|mark| mark.kind == kind) {
            let x = seconds(mark.at);
            let color = kind.color();
            plot.draw_series(LineSeries::new([(x, y_min), (x, y_max)], color.stroke_width(2)))
                .map_err(failed("a mark"))?;
            // A few pixels right of its line, so the line does not cross it.
            let label = EmptyElement::at((x, y_max / kind.label_height()))
                + Text::new(mark.label.clone(), (4, 0), ("sans-serif", 12).into_font().color(&color));
            plot.draw_series(std::iter::once(label)).map_err(failed("a label"))?;
        }
    }
    plot.configure_series_labels()
        // Bottom left, in the decade below the fastest reply.
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed("the legend"))?;
    root.present().map_err(failed("the file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_dot_per_reply_and_every_mark_with_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outage.svg");
        let origin = Instant::now();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let replies: Vec<Reply> = (0..50)
            .map(|i| Reply { at: at(100 + i * 40), latency: Duration::from_millis(if i == 25 { 480 } else { 2 }) })
            .collect();
        let marks = [
            Mark { at: at(1000), kind: MarkKind::Kill, label: "kill host-a".into() },
            Mark { at: at(1300), kind: MarkKind::Live, label: "host-b live".into() },
            Mark { at: at(1800), kind: MarkKind::Protected, label: "protected again".into() },
        ];
        let chart = Chart { title: "an outage", x_desc: "seconds since the start", origin };
        draw(&path, &chart, &replies, &marks).unwrap();

        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "not an SVG: {}", &svg[..svg.len().min(80)]);
        // Each reply is a filled circle; the legend adds one more.
        assert_eq!(svg.matches("<circle").count(), replies.len() + 1);
        for text in ["an outage", "seconds since the start", "kill host-a", "host-b live", "protected again"] {
            assert!(svg.contains(text), "{text:?} is not on the chart");
        }
        for mark in &marks {
            assert!(svg.contains(mark.kind.legend()), "{:?} is not in the legend", mark.kind);
            let RGBColor(r, g, b) = mark.kind.color();
            let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
            // Its vertical line and its legend entry.
            assert!(svg.matches(&stroke).count() >= 2, "no line of {:?} ({stroke})", mark.kind);
        }
    }
}
