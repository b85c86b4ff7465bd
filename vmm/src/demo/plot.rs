//! `ftvm demo --plot FILE.svg`: the client's reply latency over the demo, with the kills, the
//! go-live moments and the re-protections marked, so the outage shows at a glance.

use super::load::LoadReport;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::time::Instant;

/// A moment worth a vertical line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Kill,
    Live,
    Protected,
}

impl MarkKind {
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

pub struct Mark {
    pub at: Instant,
    pub kind: MarkKind,
    pub label: String,
}

/// Writes the chart to `path` (SVG): x = seconds since `origin`, y = each reply's latency in ms
/// (log scale: a 2 ms reply and a 500 ms outage on one chart).
pub fn draw(path: &Path, origin: Instant, report: &LoadReport, marks: &[Mark]) -> Result<()> {
    let seconds = |at: Instant| at.saturating_duration_since(origin).as_secs_f64();
    let points: Vec<(f64, f64)> = report
        .replies
        .iter()
        .zip(&report.latencies)
        .map(|(replied, latency)| (seconds(*replied), (latency.as_secs_f64() * 1e3).max(0.01)))
        .collect();
    let x_max = points.iter().map(|p| p.0).chain(marks.iter().map(|m| seconds(m.at))).fold(1.0, f64::max) * 1.02;
    let y_max = points.iter().map(|p| p.1).fold(10.0, f64::max) * 2.0;
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).clamp(0.01, 1.0) / 2.0;

    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).context("drawing the chart")?;
    let mut chart = ChartBuilder::on(&root)
        .caption("ftvm demo: the client's reply latency on one TCP connection", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .context("drawing the chart")?;
    chart
        .configure_mesh()
        .x_desc("seconds since the demo started")
        .y_desc("reply latency (ms, log scale)")
        .draw()
        .context("drawing the axes")?;
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 2, RGBColor(90, 90, 90).filled())))
        .context("drawing the replies")?
        .label("one reply (SET or GET)")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, RGBColor(90, 90, 90).filled()));
    let mut in_legend = Vec::new();
    for mark in marks {
        let x = seconds(mark.at);
        let color = mark.kind.color();
        let series = chart
            .draw_series(LineSeries::new([(x, y_min), (x, y_max)], color.stroke_width(2)))
            .context("drawing a mark")?;
        if !in_legend.contains(&mark.kind) {
            in_legend.push(mark.kind);
            series
                .label(mark.kind.legend())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        let text = Text::new(
            mark.label.clone(),
            (x, y_max / mark.kind.label_height()),
            ("sans-serif", 12).into_font().color(&color),
        );
        chart.draw_series(std::iter::once(text)).context("drawing a label")?;
    }
    chart
        .configure_series_labels()
        // Bottom left: below the protected replies, before the unprotected fast ones at the end.
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .context("drawing the legend")?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
