//! Data pushed by clients, held in memory until the primary's order to apply it arrives.
//! Unclaimed data is dropped after a while (a client that disconnected, or a retry).

use crate::error::{ErrorKind, GfsError, Result};
use crate::sync::Unpoisoned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Room for one push in [`Buffers`], taken by [`Buffers::admit`].
pub struct Reservation<'a> {
    buffers: &'a Buffers,
    len: usize,
}

impl Reservation<'_> {
    /// Stores the pushed data (at most the reserved length) under `id`.
    pub fn fill(self, id: u64, data: Vec<u8>) {
        self.fill_at(id, data, Instant::now())
    }

    /// [`Reservation::fill`] at time `now` (tests pass their own clock).
    fn fill_at(mut self, id: u64, data: Vec<u8>, now: Instant) {
        let mut g = self.buffers.inner();
        // The reservation already counts `len`; count the data instead.
        g.bytes = g.bytes - self.len + data.len();
        self.len = 0;
        if let Some((_, old)) = g.map.insert(id, (now, Arc::new(data))) {
            g.bytes -= old.len();
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            self.buffers.inner().bytes -= self.len;
        }
    }
}

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
        self.inner.lock_unpoisoned()
    }

    /// Reserves room for `len` bytes of a push about to arrive (dropping expired buffers
    /// first). The room is taken at once, so pushes arriving together cannot each pass the
    /// check and then overrun the limit; it is given back when the reservation is dropped,
    /// unless [`Reservation::fill`] stores the data in it.
    pub fn admit(&self, len: usize) -> Result<Reservation<'_>> {
        self.admit_at(len, Instant::now())
    }

    /// [`Buffers::admit`] at time `now` (tests pass their own clock).
    fn admit_at(&self, len: usize, now: Instant) -> Result<Reservation<'_>> {
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
            return Err(GfsError::fs(
                ErrorKind::Unavailable,
                format!("push buffers full ({} of {} bytes held); retry later", g.bytes, self.limit),
            ));
        }
        g.bytes += len;
        Ok(Reservation { buffers: self, len })
    }

    /// Bytes held or reserved.
    pub fn held(&self) -> usize {
        self.inner().bytes
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
        b.admit_at(6, t0).unwrap().fill_at(1, vec![0; 6], t0);
        assert!(b.admit_at(6, t0).is_err());
        // Just before the deadline the buffer still counts; at it, it is dropped.
        assert!(b.admit_at(6, t0 + ttl - Duration::from_nanos(1)).is_err());
        b.admit_at(6, t0 + ttl).unwrap();
        assert!(b.take(1).is_err());
        b.admit_at(3, t0 + ttl).unwrap().fill_at(2, vec![1; 3], t0 + ttl);
        assert_eq!(b.take(2).unwrap().len(), 3);
        assert_eq!(b.held(), 0);
        // Replacing a buffer under the same id counts only the new one.
        b.admit_at(4, t0 + ttl).unwrap().fill_at(3, vec![0; 4], t0 + ttl);
        b.admit_at(6, t0 + ttl).unwrap().fill_at(3, vec![0; 6], t0 + ttl);
        assert_eq!(b.held(), 6);
        b.admit_at(4, t0 + ttl).unwrap();
        assert!(b.admit_at(5, t0 + ttl).is_err());
    }

    #[test]
    fn admitted_room_is_reserved_until_filled_or_dropped() {
        let b = Buffers::new(10, Duration::from_secs(60));
        let first = b.admit(6).unwrap();
        assert!(b.admit(6).is_err(), "two pushes that arrive together overran the limit");
        drop(first);
        let again = b.admit(6).unwrap();
        again.fill(1, vec![0; 4]);
        assert_eq!(b.held(), 4);
        b.admit(6).unwrap();
        assert_eq!(b.held(), 4);
    }
}
