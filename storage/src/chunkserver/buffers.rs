//! Data pushed by clients, held in memory until the primary's order to apply it arrives.
//! Unclaimed data is dropped after a while (a client that disconnected, or a retry). The
//! memory of applied pushes is kept for the next ones (a few buffers at most).

use crate::error::{ErrorKind, GfsError, Result};
use crate::sync::Unpoisoned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Idle push buffers kept for reuse, at most.
const MAX_IDLE: usize = 4;
/// Largest buffer kept for reuse (a whole mutation).
const REUSE_MAX: usize = crate::MAX_MUTATION as usize;

type Idle = Mutex<Vec<Vec<u8>>>;

/// One push's data. When the last reference goes (the mutation applied it, or it expired), its
/// memory joins the idle buffers for the next push: a fresh 4 MiB buffer per push had every
/// page faulted in and zeroed, about a tenth of a chunkserver's CPU during a put.
pub struct Pushed {
    bytes: Vec<u8>,
    idle: Weak<Idle>,
}

impl std::ops::Deref for Pushed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Pushed {
    fn drop(&mut self) {
        if self.bytes.capacity() > REUSE_MAX {
            return;
        }
        if let Some(idle) = self.idle.upgrade() {
            let mut idle = idle.lock_unpoisoned();
            if idle.len() < MAX_IDLE {
                idle.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

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
        let pushed = Pushed { bytes: data, idle: Arc::downgrade(&self.buffers.idle) };
        if let Some((_, old)) = g.map.insert(id, (now, Arc::new(pushed))) {
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
    /// Memory of pushes already applied, for the next ones.
    idle: Arc<Idle>,
}

struct Inner {
    map: HashMap<u64, (Instant, Arc<Pushed>)>,
    bytes: usize,
}

impl Buffers {
    pub fn new(limit: usize, ttl: Duration) -> Buffers {
        Buffers { inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0 }), limit, ttl, idle: Arc::default() }
    }

    /// A buffer of `len` bytes to receive a push into: the memory of an earlier push if one is
    /// idle (its old bytes are still there: the push overwrites every one before it is
    /// stored), a new zeroed one otherwise.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let reused = self.idle.lock_unpoisoned().pop();
        match reused {
            Some(mut b) => {
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    b.resize(len, 0);
                }
                b
            }
            None => vec![0; len],
        }
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
    pub fn take(&self, id: u64) -> Result<Arc<Pushed>> {
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
    fn an_applied_push_lends_its_memory_to_the_next_without_zeroing_it() {
        let b = Buffers::new(1 << 20, Duration::from_secs(60));
        let mut first = b.buffer(1000);
        first.fill(7);
        let at = first.as_ptr();
        b.admit(1000).unwrap().fill(1, first);
        let pushed = b.take(1).unwrap();
        assert_eq!(&pushed[..], &[7u8; 1000][..]);
        let second = b.buffer(900);
        assert_ne!(second.as_ptr(), at, "memory still held by a mutation was handed out");
        drop(pushed);
        let third = b.buffer(900);
        assert_eq!(third.as_ptr(), at, "the applied push's memory was not reused");
        assert_eq!(third, vec![7u8; 900], "reused memory was zeroed or cut wrongly");
        // Growing a reused buffer zeroes only the new part.
        b.admit(900).unwrap().fill(2, third);
        drop(b.take(2).unwrap());
        let grown = b.buffer(1200);
        assert_eq!(&grown[..900], &[7u8; 900][..]);
        assert_eq!(&grown[900..], &[0u8; 300][..]);
        // At most MAX_IDLE buffers are kept.
        for id in 10..10 + 2 * MAX_IDLE as u64 {
            b.admit(8).unwrap().fill(id, vec![1; 8]);
        }
        for id in 10..10 + 2 * MAX_IDLE as u64 {
            drop(b.take(id).unwrap());
        }
        assert_eq!(b.idle.lock_unpoisoned().len(), MAX_IDLE);
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
