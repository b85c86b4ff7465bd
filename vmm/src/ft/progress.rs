//! The backup's view of a join's copy (issue 13, point 2): on a terminal a progress bar (bytes,
//! round, rate) with, under `-v`, a log line per round; elsewhere one line per round on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

const PAGE: u64 = ftlog::channel::transfer::PAGE as u64;

/// The round being received.
struct Round {
    number: u32,
    pages: u64,
    last: bool,
    started: Instant,
    /// Transfer bytes read when it began.
    read_at_start: u64,
}

/// Reports the rounds of a transfer as they arrive.
pub struct CopyProgress {
    /// Drawn from the first round on (before it there is nothing to show).
    bar: Option<ProgressBar>,
    terminal: bool,
    round: Option<Round>,
    started: Instant,
}

impl Default for CopyProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyProgress {
    /// A bar if stderr is a terminal, else lines.
    pub fn new() -> Self {
        Self { bar: None, terminal: std::io::stderr().is_terminal(), round: None, started: Instant::now() }
    }

    /// Round `number` of `pages` pages begins (`read`: transfer bytes read so far).
    pub fn round(&mut self, number: u32, pages: u64, last: bool, read: u64) {
        self.end_round(read);
        if self.terminal && self.bar.is_none() {
            let bar = ProgressBar::new(0);
            let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}";
            let style = ProgressStyle::with_template(template)
                .map(|style| style.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_length(pages * PAGE);
            bar.set_position(0);
            bar.set_message(format!("ft: copy round {number}{}", if last { " (paused)" } else { "" }));
        }
        self.round = Some(Round { number, pages, last, started: Instant::now(), read_at_start: read });
    }

    /// `pages` more pages of the round are in.
    pub fn pages(&mut self, pages: u64, _read: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(pages * PAGE);
        }
    }

    /// The transfer is complete (`read` bytes in all).
    pub fn done(&mut self, read: u64) {
        self.end_round(read);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        tracing::info!(bytes = read, ms = self.started.elapsed().as_millis() as u64, "join: the copy is complete");
    }

    fn end_round(&mut self, read: u64) {
        let Some(round) = self.round.take() else { return };
        let elapsed = round.started.elapsed();
        let sent = read.saturating_sub(round.read_at_start);
        let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
        let rate = mib(sent) / elapsed.as_secs_f64().max(1e-6);
        let line = format!(
            "ft: copy round {}{}: {} pages ({:.1} MiB of memory), {:.1} MiB sent in {} ms ({:.0} MiB/s)",
            round.number,
            if round.last { " (paused)" } else { "" },
            round.pages,
            mib(round.pages * PAGE),
            mib(sent),
            elapsed.as_millis(),
            rate
        );
        match (&self.bar, self.terminal) {
            (Some(bar), _) => bar.suspend(|| tracing::info!("{line}")),
            (None, true) => tracing::info!("{line}"),
            (None, false) => crate::errln!("{line}"),
        }
    }
}
