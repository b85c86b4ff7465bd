//! When this side released output, on the wall clock, for a judge outside the pair (issue 15,
//! point 2): a split brain is any time both sides released output, and only the sides know
//! when they did. Each go-live prints `ft: output released from T (generation G)` before the
//! first output leaves, and each halt prints `ft: halting; output last released at T` (or
//! `ft: halting; no output released`). T is Unix time in seconds with microseconds; the sides
//! of a test run on one machine and share its clock.
//!
//! While a primary runs alone its outputs go straight to the devices, so its halt counts as a
//! release; while paired they leave through the output commit, whose releases are noted here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch of the last output this side released (0: none yet).
static LAST_RELEASE_US: AtomicU64 = AtomicU64::new(0);
/// Outputs go straight to the devices (live and not paired): every instant is a release.
static DIRECT: AtomicBool = AtomicBool::new(false);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn format_us(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// This side won `generation` and is about to release output on its own.
pub fn live(generation: u64) {
    let now = now_us();
    LAST_RELEASE_US.store(now, Ordering::Release);
    DIRECT.store(true, Ordering::Release);
    crate::errln!("ft: output released from {} (generation {generation})", format_us(now));
}

/// A backup protects this side: from now on outputs leave only through the commit.
pub fn paired() {
    if DIRECT.swap(false, Ordering::AcqRel) {
        LAST_RELEASE_US.store(now_us(), Ordering::Release);
    }
}

/// The commit released `count` outputs just now.
pub fn released(count: usize) {
    if count > 0 {
        LAST_RELEASE_US.store(now_us(), Ordering::Release);
    }
}

/// This side halts: when it last released output.
pub fn halting() {
    let last = if DIRECT.load(Ordering::Acquire) { now_us() } else { LAST_RELEASE_US.load(Ordering::Acquire) };
    if last == 0 {
        crate::errln!("ft: halting; no output released");
    } else {
        crate::errln!("ft: halting; output last released at {}", format_us(last));
    }
}

#[cfg(test)]
mod tests {
    use super::format_us;

    #[test]
    fn times_print_as_seconds_with_six_digits_of_microseconds() {
        assert_eq!(format_us(1_796_198_701_000_042), "1796198701.000042");
        assert_eq!(format_us(5), "0.000005");
    }
}
