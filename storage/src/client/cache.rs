//! The client's cache of chunk locations and file sizes. Entries carrying a lease serve writes
//! until shortly before the lease ends; others serve reads for a short time. A stale entry at
//! worst makes a read see an older size or a chunkserver refuse an old version, after which the
//! client asks the master again.

use crate::protocol::ChunkLocation;
use crate::sync::Unpoisoned;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a location fetched for reading is trusted.
pub const READ_TTL: Duration = Duration::from_secs(1);

struct Entry {
    size: u64,
    loc: Option<ChunkLocation>,
    until: Instant,
    lease: bool,
}

#[derive(Default)]
pub struct Cache {
    map: Mutex<HashMap<(String, u64), Entry>>,
}

impl Cache {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, u64), Entry>> {
        self.map.lock_unpoisoned()
    }

    /// A still-valid entry (size, location) for reading.
    pub fn get_read(&self, path: &str, idx: u64) -> Option<(u64, Option<ChunkLocation>)> {
        let m = self.map();
        let e = m.get(&(path.to_string(), idx))?;
        (Instant::now() < e.until).then(|| (e.size, e.loc.clone()))
    }

    /// A location with a lease that is still safely valid.
    pub fn get_write(&self, path: &str, idx: u64) -> Option<ChunkLocation> {
        let m = self.map();
        let e = m.get(&(path.to_string(), idx))?;
        (e.lease && Instant::now() < e.until).then(|| e.loc.clone()).flatten()
    }

    pub fn put_read(&self, path: &str, idx: u64, size: u64, loc: Option<ChunkLocation>) {
        let mut m = self.map();
        let key = (path.to_string(), idx);
        if m.get(&key).is_some_and(|e| e.lease && Instant::now() < e.until) {
            return; // keep the lease entry
        }
        m.insert(key, Entry { size, loc, until: Instant::now() + READ_TTL, lease: false });
    }

    pub fn put_write(&self, path: &str, idx: u64, size: u64, loc: ChunkLocation) {
        // Trust the lease for a little less than it has left.
        let ms = loc.lease_ms.saturating_sub(loc.lease_ms / 4 + 500);
        self.map().insert(
            (path.to_string(), idx),
            Entry { size, loc: Some(loc), until: Instant::now() + Duration::from_millis(ms), lease: true },
        );
    }

    /// Largest size known for `path` from valid entries.
    pub fn known_size(&self, path: &str) -> Option<u64> {
        let now = Instant::now();
        self.map().iter().filter(|((p, _), e)| p == path && now < e.until).map(|(_, e)| e.size).max()
    }

    /// The file is now at least `size` long.
    pub fn raise_size(&self, path: &str, size: u64) {
        for ((p, _), e) in self.map().iter_mut() {
            if p == path {
                e.size = e.size.max(size);
            }
        }
    }

    pub fn forget(&self, path: &str, idx: u64) {
        self.map().remove(&(path.to_string(), idx));
    }

    /// Drops everything (after this client changed the namespace).
    pub fn clear(&self) {
        self.map().clear();
    }
}
