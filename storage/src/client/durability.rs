//! Durability levels (HDFS's hflush and hsync): chunks written with [`super::Durability::Flush`]
//! are noted per client until [`Client::sync`] has every replica holding them fdatasync them.

use super::{unexpected, Client};
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkReply, ChunkRequest};
use crate::sync::Unpoisoned;
use std::collections::HashMap;
use std::sync::Mutex;

/// A chunk written with [`super::Durability::Flush`] and not yet synced, and where it was written.
struct DirtyChunk {
    path: String,
    index: u64,
    replicas: Vec<String>,
}

/// Chunks written from memory only, by handle, until [`Client::sync`].
#[derive(Default)]
pub(super) struct DirtyChunks {
    map: Mutex<HashMap<u64, DirtyChunk>>,
}

impl DirtyChunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DirtyChunk>> {
        self.map.lock_unpoisoned()
    }

    pub(super) fn note(&self, path: &str, index: u64, handle: u64, chain: &[String]) {
        let mut m = self.lock();
        let d = m.entry(handle).or_insert_with(|| DirtyChunk { path: path.into(), index, replicas: Vec::new() });
        for a in chain {
            if !d.replicas.contains(a) {
                d.replicas.push(a.clone());
            }
        }
    }

    fn take(&self, path: &str) -> Vec<(u64, DirtyChunk)> {
        let mut m = self.lock();
        let handles: Vec<u64> = m.iter().filter(|(_, d)| d.path == path).map(|(h, _)| *h).collect();
        handles.into_iter().filter_map(|h| m.remove(&h).map(|d| (h, d))).collect()
    }

    fn put_back(&self, chunks: Vec<(u64, DirtyChunk)>) {
        let mut m = self.lock();
        for (h, d) in chunks {
            m.entry(h).or_insert(d);
        }
    }
}

impl Client {
    /// Makes every write this client acknowledged from memory ([`super::Durability::Flush`]) to
    /// `path` durable on every replica that holds it (HDFS's hsync; a VM disk's FLUSH). A
    /// replica that cannot sync fails the call, unless the master no longer lists it for
    /// that chunk (it was replaced, and the new replica was synced when installed). On
    /// failure the chunks stay noted, so a later call tries again.
    pub fn sync(&self, path: &str) -> Result<()> {
        let dirty = self.inner.dirty.take(path);
        if dirty.is_empty() {
            return Ok(());
        }
        let mut by_server: HashMap<&str, Vec<u64>> = HashMap::new();
        for (h, d) in &dirty {
            for a in &d.replicas {
                by_server.entry(a.as_str()).or_default().push(*h);
            }
        }
        let servers: Vec<(&str, Vec<u64>)> = by_server.into_iter().collect();
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let jobs: Vec<_> = servers.iter().map(|(a, hs)| s.spawn(move || self.sync_on(a, hs))).collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or_else(|_| Err(GfsError::fs(ErrorKind::Io, "sync thread panicked"))))
                .collect()
        });
        let mut errors = Vec::new();
        for ((addr, handles), r) in servers.iter().zip(results) {
            let Err(e) = r else { continue };
            for h in handles {
                let Some((_, d)) = dirty.iter().find(|(dh, _)| dh == h) else { continue };
                if let Err(e2) = self.sync_replaced(path, d.index, *h, addr) {
                    errors.push(format!("{addr}: {e}; {e2}"));
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        self.inner.dirty.put_back(dirty);
        Err(GfsError::fs(ErrorKind::Unavailable, format!("sync failed: {}", errors.join("; "))))
    }

    fn sync_on(&self, addr: &str, handles: &[u64]) -> Result<()> {
        match self.call(addr, &ChunkRequest::Sync { handles: handles.to_vec() }) {
            Ok(ChunkReply::Synced) => Ok(()),
            Ok(other) => Err(unexpected(addr, other)),
            Err(e) => {
                self.inner.pool.forget(addr);
                Err(e)
            }
        }
    }

    /// After `failed` could not sync chunk `handle`: fine if the master has since replaced
    /// that replica; the current replicas are synced too (a new one may have copied the data
    /// before it was durable elsewhere; syncing it again is cheap).
    fn sync_replaced(&self, path: &str, index: u64, handle: u64, failed: &str) -> Result<()> {
        self.inner.cache.forget(path, index);
        let (_, loc) = self.get_chunk(path, index, false)?;
        let Some(loc) = loc.filter(|l| l.handle == handle) else {
            return Ok(()); // the chunk is gone (file removed or rewritten): nothing to keep
        };
        if loc.replicas.iter().any(|a| a == failed) {
            return Err(GfsError::fs(ErrorKind::Unavailable, format!("{failed} still holds chunk {handle}")));
        }
        loc.replicas.iter().try_for_each(|a| self.sync_on(a, &[handle]))
    }
}
