//! Chunk metadata. Persistent: each chunk's version (in the operation log). Volatile, rebuilt
//! from chunk reports: where replicas live, which are stale, and leases.
//!
//! Handles are allocated densely from 1, so the table is a vector indexed by handle with 16
//! bytes per chunk (version plus up to six replica slots).

use crate::protocol::{ChunkHandle, DiskState, Version};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Index of a chunkserver in [`Servers`].
pub type ServerIdx = u16;
const NONE: ServerIdx = ServerIdx::MAX;
/// Most replicas tracked per chunk.
pub const MAX_REPLICAS: usize = 6;

/// One chunk: version 0 means the handle is free (never allocated, or deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub version: Version,
    replicas: [ServerIdx; MAX_REPLICAS],
}

impl Default for ChunkMeta {
    fn default() -> Self {
        ChunkMeta { version: 0, replicas: [NONE; MAX_REPLICAS] }
    }
}

impl ChunkMeta {
    /// Servers holding an up-to-date replica (as last reported).
    pub fn replicas(&self) -> impl Iterator<Item = ServerIdx> + '_ {
        self.replicas.iter().copied().filter(|&s| s != NONE)
    }

    pub fn has_replica(&self, s: ServerIdx) -> bool {
        self.replicas.contains(&s)
    }

    /// Adds a replica; returns false if every slot is taken.
    pub fn add_replica(&mut self, s: ServerIdx) -> bool {
        if self.has_replica(s) {
            return true;
        }
        match self.replicas.iter_mut().find(|r| **r == NONE) {
            Some(slot) => {
                *slot = s;
                true
            }
            None => false,
        }
    }

    pub fn remove_replica(&mut self, s: ServerIdx) {
        for r in self.replicas.iter_mut() {
            if *r == s {
                *r = NONE;
            }
        }
    }

    pub fn set_replicas(&mut self, servers: &[ServerIdx]) {
        self.replicas = [NONE; MAX_REPLICAS];
        for (slot, s) in self.replicas.iter_mut().zip(servers) {
            *slot = *s;
        }
    }
}

/// The chunk table, indexed by handle.
#[derive(Debug, Clone)]
pub struct ChunkTable {
    chunks: Vec<ChunkMeta>,
    /// Handles reserved but not yet allocated in the log (replicas may already exist).
    pending: HashSet<ChunkHandle>,
}

impl Default for ChunkTable {
    fn default() -> Self {
        // Handle 0 is reserved to mark holes in files.
        ChunkTable { chunks: vec![ChunkMeta::default()], pending: HashSet::new() }
    }
}

impl ChunkTable {
    /// Reserves a fresh handle (not yet allocated: version stays 0 until `AddChunk` applies).
    pub fn reserve(&mut self) -> ChunkHandle {
        self.chunks.push(ChunkMeta::default());
        let h = (self.chunks.len() - 1) as ChunkHandle;
        self.pending.insert(h);
        h
    }

    /// Gives up a reservation that will not be logged.
    pub fn release(&mut self, h: ChunkHandle) {
        self.pending.remove(&h);
    }

    pub fn get(&self, h: ChunkHandle) -> Option<&ChunkMeta> {
        self.chunks.get(usize::try_from(h).ok()?).filter(|c| c.version != 0)
    }

    pub fn get_mut(&mut self, h: ChunkHandle) -> Option<&mut ChunkMeta> {
        self.chunks.get_mut(usize::try_from(h).ok()?).filter(|c| c.version != 0)
    }

    /// Marks `h` allocated at `version`, growing the table if needed (replay).
    pub fn allocate(&mut self, h: ChunkHandle, version: Version) {
        let i = h as usize;
        if self.chunks.len() <= i {
            self.chunks.resize(i + 1, ChunkMeta::default());
        }
        self.chunks[i].version = version;
        self.pending.remove(&h);
    }

    pub fn free(&mut self, h: ChunkHandle) {
        if let Some(c) = self.chunks.get_mut(h as usize) {
            *c = ChunkMeta::default();
        }
    }

    /// Whether `h` was allocated once and has since been freed.
    pub fn is_garbage(&self, h: ChunkHandle) -> bool {
        h != 0 && (h as usize) < self.chunks.len() && self.chunks[h as usize].version == 0 && !self.pending.contains(&h)
    }

    /// Number of slots, including free ones.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.len() <= 1
    }

    pub fn versions(&self) -> Vec<Version> {
        self.chunks.iter().map(|c| c.version).collect()
    }

    pub fn from_versions(v: Vec<Version>) -> ChunkTable {
        let mut chunks: Vec<ChunkMeta> =
            v.into_iter().map(|version| ChunkMeta { version, ..Default::default() }).collect();
        if chunks.is_empty() {
            chunks.push(ChunkMeta::default());
        }
        ChunkTable { chunks, pending: HashSet::new() }
    }

    /// Allocated chunks with their handles.
    pub fn iter(&self) -> impl Iterator<Item = (ChunkHandle, &ChunkMeta)> {
        self.chunks.iter().enumerate().filter(|(_, c)| c.version != 0).map(|(h, c)| (h as ChunkHandle, c))
    }

    /// Drops server `s` from every chunk (it restarted or died).
    pub fn forget_server(&mut self, s: ServerIdx) {
        for c in self.chunks.iter_mut() {
            c.remove_replica(s);
        }
    }
}

/// A chunkserver as the master knows it.
#[derive(Debug, Clone)]
pub struct Server {
    pub addr: String,
    pub rack: String,
    pub last_seen: Instant,
    pub chunks: usize,
    /// The token this server proved it holds when the master checked it (see `verify.rs`).
    pub token: u64,
    /// Its data disk as its last heartbeat described it.
    pub disk: DiskState,
}

/// Registry of chunkservers.
#[derive(Debug, Default)]
pub struct Servers {
    list: Vec<Server>,
    by_addr: HashMap<String, ServerIdx>,
}

impl Servers {
    /// Index of `addr`, registering it if new.
    pub fn upsert(&mut self, addr: &str, rack: &str) -> Option<ServerIdx> {
        if let Some(&i) = self.by_addr.get(addr) {
            let s = &mut self.list[i as usize];
            s.rack = rack.to_string();
            s.last_seen = Instant::now();
            return Some(i);
        }
        if self.list.len() >= NONE as usize {
            return None;
        }
        let i = self.list.len() as ServerIdx;
        self.list.push(Server {
            addr: addr.to_string(),
            rack: rack.to_string(),
            last_seen: Instant::now(),
            chunks: 0,
            token: 0,
            disk: DiskState::Ok,
        });
        self.by_addr.insert(addr.to_string(), i);
        Some(i)
    }

    /// Every server ever registered, with its index.
    pub fn all(&self) -> impl Iterator<Item = (ServerIdx, &Server)> {
        self.list.iter().enumerate().map(|(i, s)| (i as ServerIdx, s))
    }

    pub fn get(&self, i: ServerIdx) -> Option<&Server> {
        self.list.get(i as usize)
    }

    pub fn get_mut(&mut self, i: ServerIdx) -> Option<&mut Server> {
        self.list.get_mut(i as usize)
    }

    pub fn index(&self, addr: &str) -> Option<ServerIdx> {
        self.by_addr.get(addr).copied()
    }

    pub fn is_live(&self, i: ServerIdx, dead_after: Duration) -> bool {
        self.get(i).is_some_and(|s| s.last_seen.elapsed() < dead_after)
    }

    pub fn addr(&self, i: ServerIdx) -> String {
        self.get(i).map(|s| s.addr.clone()).unwrap_or_default()
    }

    /// Whether new chunks, leases and copies may go to server `i` (its disk is neither full
    /// nor failing).
    pub fn accepts_writes(&self, i: ServerIdx) -> bool {
        self.get(i).is_some_and(|s| s.disk.accepts_writes())
    }

    /// Whether server `i`'s disk returns I/O errors: its replicas are read last and copied
    /// elsewhere, as corrupt ones are.
    pub fn disk_failing(&self, i: ServerIdx) -> bool {
        self.get(i).is_some_and(|s| s.disk == DiskState::Failing)
    }

    /// Every live server.
    pub fn live(&self, dead_after: Duration) -> Vec<ServerIdx> {
        (0..self.list.len() as ServerIdx).filter(|&i| self.is_live(i, dead_after)).collect()
    }

    /// Picks up to `n` live servers whose disks take writes, for a new chunk or a copy: least
    /// loaded first, spread over racks.
    pub fn place(&self, n: usize, dead_after: Duration, exclude: &[ServerIdx]) -> Vec<ServerIdx> {
        let mut live: Vec<ServerIdx> = (0..self.list.len() as ServerIdx)
            .filter(|&i| self.is_live(i, dead_after) && self.accepts_writes(i) && !exclude.contains(&i))
            .collect();
        live.sort_by_key(|&i| (self.list[i as usize].chunks, self.list[i as usize].addr.clone()));
        let mut chosen: Vec<ServerIdx> = Vec::new();
        let mut racks: Vec<&str> = Vec::new();
        for &i in &live {
            let rack = self.list[i as usize].rack.as_str();
            if chosen.len() < n && !racks.contains(&rack) {
                chosen.push(i);
                racks.push(rack);
            }
        }
        for &i in &live {
            if chosen.len() < n && !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        chosen
    }
}

/// A lease on a chunk.
#[derive(Debug, Clone)]
pub struct Lease {
    pub primary: ServerIdx,
    pub version: Version,
    pub expires: Instant,
    /// The replicas that took this version (the primary among them): every mutation under
    /// the lease must reach them all, or the version must move on without the one it missed.
    pub replicas: Vec<ServerIdx>,
}

impl Lease {
    pub fn remaining(&self) -> Duration {
        self.expires.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_meta_is_small() {
        assert_eq!(std::mem::size_of::<ChunkMeta>(), 16);
    }

    #[test]
    fn replicas_and_placement() {
        let mut c = ChunkMeta { version: 1, ..Default::default() };
        assert!(c.add_replica(3));
        assert!(c.add_replica(3));
        assert_eq!(c.replicas().collect::<Vec<_>>(), vec![3]);
        c.remove_replica(3);
        assert_eq!(c.replicas().count(), 0);

        let mut s = Servers::default();
        let a = s.upsert("a:1", "r1").unwrap();
        let b = s.upsert("b:1", "r1").unwrap();
        let c2 = s.upsert("c:1", "r2").unwrap();
        let p = s.place(2, Duration::from_secs(10), &[]);
        assert_eq!(p, vec![a, c2]); // spread over racks first
        assert_eq!(s.place(5, Duration::from_secs(10), &[]).len(), 3);
        // A full or failing disk takes no new chunk; one usable again does.
        s.get_mut(a).unwrap().disk = DiskState::Full;
        s.get_mut(c2).unwrap().disk = DiskState::Failing;
        assert_eq!(s.place(3, Duration::from_secs(10), &[]), vec![b]);
        s.get_mut(a).unwrap().disk = DiskState::Ok;
        assert_eq!(s.place(3, Duration::from_secs(10), &[]), vec![a, b]);
    }
}
