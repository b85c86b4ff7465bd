//! What the primary knows of its backup, shared between the logging channel's threads (which
//! learn it) and the output stage and the vCPU loop (which act on it): how far the log has been
//! written, how far the backup holds it, how far it has replayed it with identical outputs, and
//! when it last said anything.
//!
//! Positions are stream positions: bytes of log (header included) up to the end of a record,
//! as [`crate::LogWriter::offset`] counts them. Several records share a landmark, so an output
//! is stamped with the position the log had when the output was produced, not with a landmark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cloneable handle on the shared state.
#[derive(Clone, Debug)]
pub struct PeerWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The clock every `*_ns` field counts from.
    base: Instant,
    /// Log bytes the recorder has produced (buffered or sent).
    logged: AtomicU64,
    /// Log bytes the backup has acknowledged holding.
    acked: AtomicU64,
    /// Log bytes the backup has replayed with outputs identical to ours (verified mode).
    verified: AtomicU64,
    /// When the backup last said anything (ns since `base`; 0: never).
    last_word_ns: AtomicU64,
}

impl Default for PeerWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerWatch {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                base: Instant::now(),
                logged: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                verified: AtomicU64::new(0),
                last_word_ns: AtomicU64::new(0),
            }),
        }
    }

    /// The recorder produced log up to `position`.
    pub fn set_logged(&self, position: u64) {
        self.inner.logged.fetch_max(position, Ordering::AcqRel);
    }

    pub fn logged(&self) -> u64 {
        self.inner.logged.load(Ordering::Acquire)
    }

    /// The backup holds the log up to `position` (acknowledgements only move forward).
    pub fn set_acked(&self, position: u64) {
        self.inner.acked.fetch_max(position, Ordering::AcqRel);
    }

    pub fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::Acquire)
    }

    /// The backup replayed the log up to `position` with identical outputs.
    pub fn set_verified(&self, position: u64) {
        self.inner.verified.fetch_max(position, Ordering::AcqRel);
    }

    pub fn verified(&self) -> u64 {
        self.inner.verified.load(Ordering::Acquire)
    }

    /// The backup said something just now (at the handshake).
    pub fn heard_now(&self) {
        self.heard_at(self.now_ns());
    }

    /// This side's clock for heartbeat stamps: ns since the watch was made (never 0).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.inner.base.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// The backup echoed the heartbeat this side sent at `stamp` ([`Self::now_ns`]): the lease
    /// runs from that send time. An echo of an old heartbeat (one that waited in a socket while
    /// this process was stopped) cannot renew it.
    pub fn heard_at(&self, stamp: u64) {
        let stamp = stamp.min(self.now_ns());
        self.inner.last_word_ns.fetch_max(stamp, Ordering::AcqRel);
    }

    /// How long since the backup last said anything; `None` if it never did.
    pub fn silence(&self) -> Option<Duration> {
        match self.inner.last_word_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.inner.base.elapsed().saturating_sub(Duration::from_nanos(ns))),
        }
    }

    /// Whether the backup's last word is younger than `timeout`: output may leave only then
    /// (a primary paused by its OS for longer wakes up holding, not releasing).
    pub fn lease_valid(&self, timeout: Duration) -> bool {
        self.silence().is_some_and(|silence| silence < timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_only_move_forward() {
        let watch = PeerWatch::new();
        watch.set_acked(100);
        watch.set_acked(40);
        assert_eq!(watch.acked(), 100);
        watch.set_logged(7);
        watch.set_logged(3);
        assert_eq!(watch.logged(), 7);
    }

    #[test]
    fn the_lease_holds_only_while_the_last_word_is_young() {
        let watch = PeerWatch::new();
        assert!(!watch.lease_valid(Duration::from_secs(3600)), "never heard: no lease");
        watch.heard_now();
        assert!(watch.lease_valid(Duration::from_secs(3600)));
        assert!(!watch.lease_valid(Duration::ZERO));
    }
}
