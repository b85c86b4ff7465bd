//! Data pushed by clients, held in memory until the primary's order to apply it arrives.
//! Unclaimed data is dropped after a while (a client that disconnected, or a retry).

use crate::error::{ErrorKind, GfsError, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pushed data buffers keyed by the client's data id.
pub struct Buffers {
    inner: Mutex<Inner>,
    limit: usize,
    ttl: Duration,
}

struct Inner {
    map: HashMap<u64, (Instant, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl Buffers {
    pub fn new(limit: usize, ttl: Duration) -> Buffers {
        Buffers { inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0 }), limit, ttl }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that `len` more bytes may be buffered (dropping expired buffers first).
    pub fn admit(&self, len: usize) -> Result<()> {
        self.admit_at(len, Instant::now())
    }

    /// [`Buffers::admit`] at time `now` (tests pass their own clock).
    fn admit_at(&self, len: usize, now: Instant) -> Result<()> {
        let mut g = self.inner();
        let ttl = self.ttl;
        let mut freed = 0;
        g.map.retain(|_, (t, d)| {
            let keep = now.saturating_duration_since(*t) < ttl;
            if !keep {
                freed += d.len();
            }
            keep
        });
        g.bytes -= freed;
        if g.bytes + len > self.limit {
            return Err(GfsError::fs(ErrorKind::Unavailable, "push buffers full; retry later"));
        }
        Ok(())
    }

    pub fn put(&self, id: u64, data: Vec<u8>) {
        self.put_at(id, data, Instant::now())
    }

    /// [`Buffers::put`] at time `now`.
    fn put_at(&self, id: u64, data: Vec<u8>, now: Instant) {
        let mut g = self.inner();
        g.bytes += data.len();
        if let Some((_, old)) = g.map.insert(id, (now, Arc::new(data))) {
            g.bytes -= old.len();
        }
    }

    /// Removes and returns the data pushed under `id`.
    pub fn take(&self, id: u64) -> Result<Arc<Vec<u8>>> {
        let mut g = self.inner();
        match g.map.remove(&id) {
            Some((_, d)) => {
                g.bytes -= d.len();
                Ok(d)
            }
            None => Err(GfsError::fs(ErrorKind::NotFound, format!("no pushed data with id {id:x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_expiry() {
        let ttl = Duration::from_secs(30);
        let b = Buffers::new(10, ttl);
        let t0 = Instant::now();
        b.admit_at(6, t0).unwrap();
        b.put_at(1, vec![0; 6], t0);
        assert!(b.admit_at(6, t0).is_err());
        // Just before the deadline the buffer still counts; at it, it is dropped.
        assert!(b.admit_at(6, t0 + ttl - Duration::from_nanos(1)).is_err());
        b.admit_at(6, t0 + ttl).unwrap();
        assert!(b.take(1).is_err());
        b.put_at(2, vec![1; 3], t0 + ttl);
        assert_eq!(b.take(2).unwrap().len(), 3);
        // Replacing a buffer under the same id counts only the new one.
        b.put_at(3, vec![0; 4], t0 + ttl);
        b.put_at(3, vec![0; 6], t0 + ttl);
        b.admit_at(4, t0 + ttl).unwrap();
        assert!(b.admit_at(5, t0 + ttl).is_err());
    }
}
