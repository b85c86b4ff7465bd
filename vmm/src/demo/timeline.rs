//! What the demo tells its watcher: one line per step as it happens, and the summary with the
//! figures at the end.

use super::load::LoadReport;
use std::time::{Duration, Instant};
use vmm::plot::Reply;

/// One line per step, stamped with the seconds since the demo started.
pub struct Timeline {
    started: Instant,
}

impl Timeline {
    pub fn start() -> Self {
        Self { started: Instant::now() }
    }

    /// When the demo started: the origin of the plot's time axis.
    pub fn origin(&self) -> Instant {
        self.started
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// `[ 12.3 s] WHO     WHAT`.
    pub fn step(&self, who: &str, what: &str) {
        vmm::outln!("[{:5.1} s] {who:<8} {what}", self.started.elapsed().as_secs_f64());
    }
}

/// One kill of the live side and what followed.
pub struct Failover {
    pub killed_host: &'static str,
    pub survivor_host: &'static str,
    pub killed_at: Instant,
    /// When the survivor said it went live.
    pub live_at: Instant,
    /// The survivor's own figure: from the last word it had from the dead side to going live.
    pub silence_ms: u64,
    pub generation: u64,
    /// The switch port the VM's MAC was learnt on afterwards.
    pub port_after: String,
}

impl Failover {
    /// The client's outage: the longest gap between two consecutive replies, where the later
    /// one came within `window` after the kill (so the gap that spans the kill counts).
    pub fn outage(&self, replies: &[Reply], window: Duration) -> Option<Duration> {
        replies
            .windows(2)
            .filter(|pair| pair[1].at > self.killed_at && pair[1].at <= self.killed_at + window)
            .map(|pair| pair[1].at - pair[0].at)
            .max()
    }
}

/// The log's rate between the hosts, sampled while the pair was protected under load.
pub struct Bandwidth {
    pub bytes: u64,
    pub over: Duration,
    pub requests: usize,
}

impl Bandwidth {
    pub fn describe(&self) -> String {
        let mbit = self.bytes as f64 * 8.0 / self.over.as_secs_f64().max(1e-3) / 1e6;
        let per_request = self.bytes.checked_div(self.requests as u64).unwrap_or(0);
        format!(
            "{mbit:.1} Mbit/s ({per_request} bytes per request, {} requests in {:.1} s)",
            self.requests,
            self.over.as_secs_f64()
        )
    }
}

/// Everything the summary needs.
pub struct Summary {
    pub report: LoadReport,
    pub failovers: Vec<Failover>,
    pub reprotect: Option<Duration>,
    pub bandwidth: Option<Bandwidth>,
    /// Keys the VM loaded from the disk when booted again, if that check ran.
    pub keys_on_disk: Option<usize>,
    /// When each pair came into step (for the plot).
    pub protected_at: Vec<Instant>,
}

/// How far after a kill the outage is looked for.
const OUTAGE_WINDOW: Duration = Duration::from_secs(20);

impl Summary {
    pub fn print(&self) {
        let report = &self.report;
        let span = match (report.replies.first(), report.replies.last()) {
            (Some(first), Some(last)) => (last.at - first.at).as_secs_f64(),
            _ => 0.0,
        };
        vmm::outln!("summary:");
        vmm::outln!(
            "  requests served: {} on one TCP connection in {span:.1} s, every reply checked, none wrong",
            report.replies.len()
        );
        let mut checked = format!(
            "  acknowledged writes checked: {} of {} read back on the same connection",
            report.acknowledged, report.acknowledged
        );
        if let Some(keys) = self.keys_on_disk {
            checked.push_str(&format!("; {keys} of {} on the gfs disk after a restart", report.acknowledged));
        }
        vmm::outln!("{checked}");
        for (i, failover) in self.failovers.iter().enumerate() {
            let outage = failover
                .outage(&report.replies, OUTAGE_WINDOW)
                .map_or("none measured".to_owned(), |gap| format!("{} ms", gap.as_millis()));
            vmm::outln!(
                "  failover {} ({} killed): outage {outage} (longest gap between replies); {} live after {} ms without word, generation {}, MAC on {}",
                i + 1,
                failover.killed_host,
                failover.survivor_host,
                failover.silence_ms,
                failover.generation,
                failover.port_after
            );
        }
        if let Some(reprotect) = self.reprotect {
            vmm::outln!("  time to re-protect: {} ms (from going live to a new backup in step)", reprotect.as_millis());
        }
        if let Some(bandwidth) = &self.bandwidth {
            vmm::outln!("  log bandwidth, primary to backup: {}", bandwidth.describe());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_longest_gap_ending_after_the_kill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let replies = [0, 5, 300, 310, 360, 2000].map(|ms| Reply { at: at(ms), latency: Duration::from_millis(2) });
        let failover = Failover {
            killed_host: "host-a",
            survivor_host: "host-b",
            killed_at: at(100),
            live_at: at(120),
            silence_ms: 1,
            generation: 2,
            port_after: "port-b".into(),
        };
        // The 1640 ms gap ends outside a 1 s window; the 295 ms one spans the kill.
        assert_eq!(failover.outage(&replies, Duration::from_secs(1)), Some(Duration::from_millis(295)));
        assert_eq!(failover.outage(&replies[..2], Duration::from_secs(1)), None);
    }
}
