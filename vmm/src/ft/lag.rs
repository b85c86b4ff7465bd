//! How far the backup's replay trails the primary (issue 11, point 8: "backup lag p50/p99/max,
//! a landmark on the primary to the same landmark replayed").
//!
//! The primary notes when it pushed the log up to each stream position; the backup reports the
//! position its replay has consumed (at most every [`REPORT_EVERY`]); a push is replayed when a
//! report reaches its position, and its lag is the time from the push to the report's arrival.
//! Samples go into a histogram of 0.1 ms buckets up to 100 ms (beyond: counted, and the exact
//! maximum kept), so a long run costs a fixed few kilobytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The backup reports its replayed position at most this often.
pub const REPORT_EVERY: Duration = Duration::from_millis(1);
const BUCKET: Duration = Duration::from_micros(100);
const BUCKETS: usize = 1000;
/// Pushes waiting for a report beyond this are forgotten (a backup that never reports).
const MAX_PENDING: usize = 100_000;

/// The lag of the backup's replay behind the primary's pushes.
#[derive(Debug)]
pub struct LagMeter {
    pending: VecDeque<(u64, Instant)>,
    buckets: Vec<u64>,
    beyond: u64,
    count: u64,
    max: Duration,
}

impl Default for LagMeter {
    fn default() -> Self {
        Self { pending: VecDeque::new(), buckets: vec![0; BUCKETS], beyond: 0, count: 0, max: Duration::ZERO }
    }
}

impl LagMeter {
    /// The log up to `position` left for the backup at `at`.
    pub fn pushed(&mut self, position: u64, at: Instant) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((position, at));
    }

    /// The backup says its replay has consumed the log up to `position`; heard at `now`.
    pub fn replayed(&mut self, position: u64, now: Instant) {
        while let Some(&(pushed, at)) = self.pending.front() {
            if pushed > position {
                break;
            }
            self.pending.pop_front();
            self.record(now.saturating_duration_since(at));
        }
    }

    fn record(&mut self, lag: Duration) {
        self.count += 1;
        self.max = self.max.max(lag);
        match self.buckets.get_mut((lag.as_micros() / BUCKET.as_micros()) as usize) {
            Some(bucket) => *bucket += 1,
            None => self.beyond += 1,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The lag below which a share `q` of the samples fall (the upper edge of its bucket),
    /// `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((BUCKET * (i as u32 + 1)).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// `ft: backup lag p50 X ms, p99 Y ms, max Z ms (N landmarks replayed)`, with samples.
    pub fn line(&self) -> Option<String> {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Some(format!(
            "ft: backup lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} landmarks replayed)",
            ms(self.quantile(0.5)?),
            ms(self.quantile(0.99)?),
            ms(self.max),
            self.count
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_push_is_measured_once_when_the_replay_reaches_it() {
        let mut meter = LagMeter::default();
        let t0 = Instant::now();
        meter.pushed(100, t0);
        meter.pushed(200, t0 + Duration::from_millis(1));
        meter.pushed(300, t0 + Duration::from_millis(2));
        meter.replayed(150, t0 + Duration::from_millis(3));
        assert_eq!(meter.count(), 1);
        meter.replayed(150, t0 + Duration::from_millis(9));
        assert_eq!(meter.count(), 1, "a repeated report measured again");
        meter.replayed(300, t0 + Duration::from_millis(4));
        assert_eq!(meter.count(), 3);
        assert_eq!(meter.max(), Duration::from_millis(3));
        // Samples 3, 3 and 2 ms.
        assert_eq!(meter.quantile(0.5), Some(Duration::from_millis(3)));
        assert_eq!(meter.quantile(0.01), Some(Duration::from_micros(2100)));
    }

    #[test]
    fn long_lags_count_beyond_the_buckets_and_keep_the_maximum() {
        let mut meter = LagMeter::default();
        let t0 = Instant::now();
        meter.pushed(1, t0);
        meter.pushed(2, t0);
        meter.replayed(1, t0 + Duration::from_micros(50));
        meter.replayed(2, t0 + Duration::from_secs(2));
        assert_eq!(meter.quantile(0.5), Some(Duration::from_micros(100)));
        assert_eq!(meter.quantile(0.99), Some(Duration::from_secs(2)));
        let line = meter.line().unwrap_or_default();
        assert_eq!(line, "ft: backup lag p50 0.1 ms, p99 2000.0 ms, max 2000.0 ms (2 landmarks replayed)");
        assert_eq!(LagMeter::default().line(), None);
    }
}
