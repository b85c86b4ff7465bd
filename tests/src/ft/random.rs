//! The randomness of the fault runs (issue 15): a small generator whose seed a run prints, so
//! the same order of faults can be run again.

use anyhow::{Context, Result};
use std::time::Duration;

/// xorshift64: enough to pick faults and delays, and reproducible from its seed.
pub struct XorShift(u64);

impl XorShift {
    /// Seeded from env `var` if set, else from the clock; the seed is returned to be printed.
    pub fn from_env(var: &str) -> Result<(Self, u64)> {
        let seed = match std::env::var(var) {
            Ok(seed) => seed.parse().with_context(|| format!("{var}={seed:?} is not a number"))?,
            Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64,
        };
        // Zero is xorshift's one fixed point.
        Ok((XorShift(seed | 1), seed))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A duration in `low..=high`, to the millisecond.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.next() % (span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;
    use std::time::Duration;

    #[test]
    fn picks_stay_in_their_range_and_a_seed_repeats_its_sequence() {
        let (mut a, mut b) = (XorShift(42), XorShift(42));
        for _ in 0..1000 {
            let pick = a.below(5);
            assert!(pick < 5);
            assert_eq!(pick, b.below(5));
            let delay = a.between(Duration::from_millis(500), Duration::from_secs(5));
            assert!((Duration::from_millis(500)..=Duration::from_secs(5)).contains(&delay));
            b.between(Duration::from_millis(500), Duration::from_secs(5));
        }
    }
}
