//! Chunk locations, leases and chunk reports.
//!
//! Granting a lease: the master raises the chunk's version and logs it *before* telling any
//! replica, then sends the new version to every up-to-date replica and the lease to one of
//! them. Replicas that miss the new version are stale from then on; but a grant that no replica
//! took is undone (the version goes back), since nothing can have been written at a version no
//! primary holds: the replicas at the version before still hold every acknowledged write, and
//! leaving them stale would lose the chunk (seen under a storm of chunkserver kills: replicas
//! dead but not yet declared dead took every grant down with them).

use super::chunks::{Lease, ServerIdx};
use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{
    ChunkHandle, ChunkLocation, ChunkReply, ChunkRequest, ChunkStat, Conn, DiskState, FileStat, Heartbeat,
    HeartbeatReply, ReplicaStat, Reply, Version,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;

impl Master {
    /// Location of chunk `index` of `path`; for writes, allocates it and ensures a lease.
    pub fn get_chunk(
        self: &Arc<Self>,
        path: &str,
        index: u64,
        for_write: bool,
    ) -> Result<(u64, Option<ChunkLocation>)> {
        if !for_write {
            let _l = self.locks.lock(&[path], &[]);
            let m = self.meta();
            let f = m.state.ns.file(path)?;
            let h = f.chunks.get(index).unwrap_or(0);
            if h == 0 {
                return Ok((f.size, None));
            }
            return Ok((f.size, Some(self.location(&m, h, false))));
        }
        // The write lock on the file serializes allocation and lease grants for it.
        let _l = self.locks.lock(&[], &[path]);
        self.writable_chunk(path, index)
    }

    /// The chunk to record-append to: the last chunk if its index is at least `min_index`,
    /// else a new one at `min_index`; allocated and leased.
    pub fn append_chunk(self: &Arc<Self>, path: &str, min_index: u64) -> Result<(u64, ChunkLocation)> {
        let _l = self.locks.lock(&[], &[path]);
        let last = self.meta().state.ns.file(path)?.chunks.end();
        let index = if last == 0 || last - 1 < min_index { min_index } else { last - 1 };
        match self.writable_chunk(path, index)? {
            (_, Some(loc)) => Ok((index, loc)),
            (_, None) => Err(GfsError::fs(ErrorKind::NoReplicas, "no chunk to append to")),
        }
    }

    /// Allocates chunk `index` of `path` if needed and makes sure it has a lease. The caller
    /// holds the file's write lock.
    fn writable_chunk(self: &Arc<Self>, path: &str, index: u64) -> Result<(u64, Option<ChunkLocation>)> {
        let (existing, register) = {
            let m = self.meta();
            let f = m.state.ns.file(path)?;
            (f.chunks.get(index).unwrap_or(0), f.register.clone())
        };
        let handle = if existing != 0 && self.meta().state.is_shared(existing) {
            // Shared with a snapshot: write to a private copy.
            self.copy_on_write(path, index, existing)?
        } else if existing != 0 {
            existing
        } else {
            let handle = self.meta().state.chunks.reserve();
            if let Err(e) = self.commit(Record::AddChunk { path: path.to_string(), index, handle }) {
                self.meta().state.chunks.release(handle);
                return Err(e);
            }
            handle
        };
        self.ensure_lease(handle, register)?;
        let m = self.meta();
        let size = m.state.ns.file(path)?.size;
        Ok((size, Some(self.location(&m, handle, true))))
    }

    fn location(&self, m: &super::Meta, h: ChunkHandle, with_lease: bool) -> ChunkLocation {
        let dead = self.cfg.dead_after;
        let bad = m.corrupt.get(&h).map(|v| v.as_slice()).unwrap_or(&[]);
        let (version, replicas) = match m.state.chunks.get(h) {
            Some(c) => {
                let mut live: Vec<ServerIdx> = c.replicas().filter(|&s| m.servers.is_live(s, dead)).collect();
                // A disk returning I/O errors is left out while another replica can serve: it
                // is neither read from nor waited on by a client's sync.
                if live.iter().any(|&s| !m.servers.disk_failing(s)) {
                    live.retain(|&s| !m.servers.disk_failing(s));
                }
                // Healthy replicas first; corrupt ones still serve their good blocks.
                live.sort_by_key(|s| bad.contains(s));
                (c.version, live.into_iter().map(|s| m.servers.addr(s)).collect())
            }
            None => (0, Vec::new()),
        };
        let lease = m.leases.get(&h).filter(|l| l.version == version && l.expires > Instant::now());
        ChunkLocation {
            handle: h,
            version,
            replicas,
            primary: lease.filter(|_| with_lease).map(|l| m.servers.addr(l.primary)),
            lease_ms: lease.map(|l| l.remaining().as_millis() as u64).unwrap_or(0),
        }
    }

    fn ensure_lease(self: &Arc<Self>, handle: ChunkHandle, register: Option<String>) -> Result<()> {
        let dead = self.cfg.dead_after;
        if let Some(primary) = self.primary_disk_sick(handle) {
            // Its disk refuses the writes the lease is for. It is alive, so it can be told to
            // give the lease up at once (after any mutation in flight) instead of waiting it out.
            tracing::warn!(handle, %primary, "the primary's disk is full or failing: lease revoked, new version without it");
            self.revoke_lease(handle)?;
        }
        let (new_version, targets) = {
            let mut m = self.meta();
            let m = &mut *m;
            let c = m
                .state
                .chunks
                .get(handle)
                .ok_or_else(|| GfsError::fs(ErrorKind::UnknownChunk, format!("chunk {handle}")))?;
            let now = Instant::now();
            if let Some(l) = m.leases.get(&handle) {
                if l.version == c.version && l.expires > now {
                    if !m.servers.is_live(l.primary, dead) || !c.has_replica(l.primary) {
                        return Err(GfsError::fs(
                            ErrorKind::Unavailable,
                            format!("chunk {handle}: lease held by an unreachable primary for {:?}", l.remaining()),
                        ));
                    }
                    let quiet: Vec<ServerIdx> = l
                        .replicas
                        .iter()
                        .copied()
                        .filter(|&s| !m.servers.is_live(s, dead) || !c.has_replica(s))
                        .collect();
                    // Replicas whose disk is full or failing refuse every write: left out of a
                    // new version, if any replica can take writes (else nothing is gained, and
                    // the writes fail with what the disks say).
                    let can_write = |s: ServerIdx| m.servers.is_live(s, dead) && m.servers.accepts_writes(s);
                    let sick: Vec<ServerIdx> = if c.replicas().any(can_write) {
                        l.replicas.iter().copied().filter(|&s| !quiet.contains(&s) && !can_write(s)).collect()
                    } else {
                        Vec::new()
                    };
                    if quiet.is_empty() && sick.is_empty() {
                        return Ok(());
                    }
                    if !sick.is_empty() {
                        let sick: Vec<String> = sick.iter().map(|&s| m.servers.addr(s)).collect();
                        tracing::warn!(
                            handle,
                            version = c.version,
                            ?sick,
                            "replica's disk is full or failing under a lease: new version without it"
                        );
                    }
                    // A location handed out now leaves the quiet replica out, so writes would
                    // pass it by at this version, and it would be taken back as current when
                    // its heartbeats resume. A new version (which also revokes this lease at
                    // the primary) makes it stale instead.
                    if !quiet.is_empty() {
                        let quiet: Vec<String> = quiet.iter().map(|&s| m.servers.addr(s)).collect();
                        tracing::info!(
                            handle,
                            version = c.version,
                            ?quiet,
                            "replica gone quiet under a lease: new version"
                        );
                    }
                }
            }
            if now < self.lease_grace_until() {
                return Err(GfsError::fs(
                    ErrorKind::Unavailable,
                    format!(
                        "master restarted or newly leading: no new leases for {:?} while old ones may be held",
                        self.lease_grace_until() - now
                    ),
                ));
            }
            let bad = m.corrupt.get(&handle).map(|v| v.as_slice()).unwrap_or(&[]);
            let mut live: Vec<ServerIdx> = c.replicas().filter(|&s| m.servers.is_live(s, dead)).collect();
            let writable = |s: &ServerIdx| !bad.contains(s) && m.servers.accepts_writes(*s);
            if live.iter().any(writable) {
                // A corrupt replica, or one whose disk is full or failing, misses the new
                // version and so drops out (re-replication makes up for it).
                live.retain(writable);
            } else if live.iter().any(|s| !bad.contains(s)) {
                live.retain(|s| !bad.contains(s));
            }
            let targets = if !live.is_empty() {
                live
            } else if c.version == 1 {
                // Never written anywhere: place it now, on disks that take writes.
                let placed = m.servers.place(self.cfg.replicas, dead, &[]);
                if placed.is_empty() && !m.servers.live(dead).is_empty() {
                    return Err(GfsError::fs(
                        ErrorKind::DiskFull,
                        format!(
                            "chunk {handle}: no room for a new chunk: every live chunkserver's disk is full or failing"
                        ),
                    ));
                }
                placed
            } else {
                Vec::new()
            };
            if targets.is_empty() {
                return Err(GfsError::fs(ErrorKind::NoReplicas, format!("chunk {handle}: no live up-to-date replica")));
            }
            let new_version =
                c.version.checked_add(1).ok_or_else(|| GfsError::fs(ErrorKind::Io, "version overflow"))?;
            m.custody
                .begin_grant(handle, new_version, &targets)
                .map_err(|why| GfsError::fs(ErrorKind::Unavailable, format!("chunk {handle}: {why}")))?;
            (new_version, targets)
        };
        let mut granted: Vec<ServerIdx> = Vec::new();
        let result = self.grant(handle, new_version, &targets, register, &mut granted);
        self.meta().custody.end_grant(handle, new_version, &granted);
        result
    }

    /// Whether `handle`'s lease is held by a live primary whose disk is full or failing while
    /// another live replica's disk takes writes; returns the primary's address.
    fn primary_disk_sick(&self, handle: ChunkHandle) -> Option<String> {
        let dead = self.cfg.dead_after;
        let m = self.meta();
        let (c, l) = (m.state.chunks.get(handle)?, m.leases.get(&handle)?);
        let can_write = |s: ServerIdx| m.servers.is_live(s, dead) && m.servers.accepts_writes(s);
        let sick = l.version == c.version
            && l.expires > Instant::now()
            && m.servers.is_live(l.primary, dead)
            && !m.servers.accepts_writes(l.primary)
            && c.replicas().any(can_write);
        sick.then(|| m.servers.addr(l.primary))
    }

    /// Logs `new_version`, sends it to `targets` and the lease to the first that accepts;
    /// `granted` gets those that took the version.
    fn grant(
        self: &Arc<Self>,
        handle: ChunkHandle,
        new_version: Version,
        targets: &[ServerIdx],
        register: Option<String>,
        granted: &mut Vec<ServerIdx>,
    ) -> Result<()> {
        self.commit(Record::SetVersion { handle, version: new_version })?;
        let addrs: Vec<String> = {
            let m = self.meta();
            targets.iter().map(|&s| m.servers.addr(s)).collect()
        };
        // The first replica that accepts becomes primary; the rest are secondaries.
        let mut ok: Vec<ServerIdx> = Vec::new();
        let mut primary: Option<(ServerIdx, Instant)> = None;
        for (i, &s) in targets.iter().enumerate() {
            let lease = primary.is_none().then_some(self.cfg.lease);
            if send_version(&addrs[i], handle, new_version, lease, register.clone()).is_ok() {
                ok.push(s);
                if primary.is_none() {
                    primary = Some((s, Instant::now()));
                }
            }
        }
        if ok.is_empty() {
            let before = new_version - 1;
            tracing::warn!(handle, version = new_version, "no replica took the new version; back to {before}");
            self.commit(Record::SetVersion { handle, version: before })?;
            return Err(GfsError::fs(ErrorKind::NoReplicas, format!("chunk {handle}: no replica accepted the lease")));
        }
        let mut m = self.meta();
        if let Some(c) = m.state.chunks.get_mut(handle) {
            c.set_replicas(&ok);
        }
        granted.clone_from(&ok);
        match primary {
            Some((p, acked)) => {
                let lease = Lease { primary: p, version: new_version, expires: acked + self.cfg.lease, replicas: ok };
                m.leases.insert(handle, lease);
                tracing::debug!(handle, version = new_version, primary = %m.servers.addr(p), "lease granted");
                Ok(())
            }
            None => Err(GfsError::fs(ErrorKind::NoReplicas, format!("chunk {handle}: no replica accepted the lease"))),
        }
    }

    /// Processes a heartbeat and chunk report.
    pub fn heartbeat(self: &Arc<Self>, hb: Heartbeat) -> Result<HeartbeatReply> {
        let token = self.verify(&hb)?;
        let mut extended = Vec::new();
        let mut garbage = Vec::new();
        {
            let mut m = self.meta();
            let idx = m
                .servers
                .upsert(&hb.server, &hb.rack)
                .ok_or_else(|| GfsError::fs(ErrorKind::Unavailable, "too many chunkservers"))?;
            if hb.fresh {
                tracing::info!(server = %hb.server, chunks = hb.chunks.len(), "chunkserver (re)registered");
                m.state.chunks.forget_server(idx);
                m.leases.retain(|_, l| l.primary != idx);
                for v in m.stale.values_mut() {
                    v.retain(|(s, _)| *s != idx);
                }
                for v in m.corrupt.values_mut() {
                    v.retain(|s| *s != idx);
                }
            }
            if let Some(s) = m.servers.get_mut(idx) {
                s.chunks = hb.chunks.len();
                s.token = token;
                if s.disk != hb.disk {
                    note_disk_change(&hb.server, s.disk, hb.disk);
                    s.disk = hb.disk;
                }
            }
            let m = &mut *m;
            // A shadow, or a replica that does not lead, only learns where chunks are.
            let shadow = !self.leads();
            for &(h, v) in &hb.chunks {
                if m.state.chunks.is_garbage(h) && !shadow {
                    garbage.push(h);
                    continue;
                }
                let Some(c) = m.state.chunks.get_mut(h) else {
                    continue;
                };
                // A shadow may lag the master: a newer replica is simply current.
                if v == c.version && !shadow && !m.custody.may_hold(h, v, idx) {
                    // Not given this version by the grant (nor by a copy accepted since): it
                    // may lack mutations made under the lease. Left out, and dropped later.
                    c.remove_replica(idx);
                    let st = m.stale.entry(h).or_default();
                    if !st.iter().any(|(s, _)| *s == idx) {
                        tracing::warn!(handle = h, server = %hb.server, version = v, "replica reports the current version without having been given it; not counted");
                        st.push((idx, v));
                    }
                } else if v == c.version || (shadow && v > c.version) {
                    if !c.add_replica(idx) {
                        tracing::warn!(handle = h, "too many replicas to track");
                    }
                    if let Some(st) = m.stale.get_mut(&h) {
                        st.retain(|(s, _)| *s != idx);
                    }
                } else if v < c.version {
                    c.remove_replica(idx);
                    let st = m.stale.entry(h).or_default();
                    if !st.iter().any(|(s, _)| *s == idx) {
                        tracing::info!(handle = h, server = %hb.server, version = v, current = c.version, "stale replica");
                        st.push((idx, v));
                    }
                } else {
                    // The master logs a new version before any replica hears of it, so a
                    // replica ahead of the log is not one the master made: never take a
                    // version from a report alone, and do not hand this replica out.
                    c.remove_replica(idx);
                    tracing::warn!(handle = h, server = %hb.server, version = v, current = c.version, "replica reports a version ahead of the master's; ignored");
                }
            }
            let now = Instant::now();
            for &(h, v) in &hb.extend {
                if let Some(l) = m.leases.get_mut(&h) {
                    if l.primary == idx && l.version == v && l.expires > now {
                        l.expires = now + self.cfg.lease;
                        extended.push(h);
                    }
                }
            }
            for &h in &hb.corrupt {
                let v = m.corrupt.entry(h).or_default();
                if !v.contains(&idx) {
                    v.push(idx);
                }
            }
            m.stale.retain(|_, v| !v.is_empty());
            let chunks = &m.state.chunks;
            m.corrupt.retain(|h, v| !v.is_empty() && chunks.get(*h).is_some());
        }
        Ok(HeartbeatReply {
            extended,
            lease_ms: self.cfg.lease.as_millis() as u64,
            garbage,
            registers: self.meta().state.registers.iter().map(|(k, r)| (k.clone(), r.generation)).collect(),
        })
    }

    /// A chunkserver found a corrupt block: send clients to other replicas first, and leave
    /// it out of the next lease (re-replication will replace it).
    pub fn report_corrupt(&self, server: &str, handle: ChunkHandle) {
        let mut m = self.meta();
        if let Some(idx) = m.servers.index(server) {
            tracing::warn!(handle, %server, "corrupt replica reported");
            let v = m.corrupt.entry(handle).or_default();
            if !v.contains(&idx) {
                v.push(idx);
            }
        }
    }

    /// Size, chunks, replicas and their versions.
    pub fn stat(&self, path: &str) -> Result<FileStat> {
        let m = self.meta();
        let node = m
            .state
            .ns
            .get(path)
            .ok_or_else(|| GfsError::fs(ErrorKind::NotFound, format!("{path}: no such file or directory")))?;
        let f = match node {
            super::namespace::Node::Dir => {
                return Ok(FileStat {
                    path: path.to_string(),
                    is_dir: true,
                    size: 0,
                    chunks: Vec::new(),
                    register: None,
                })
            }
            super::namespace::Node::File(f) => f,
        };
        let now = Instant::now();
        let mut chunks = Vec::new();
        for (i, h) in f.chunks.iter() {
            let Some(c) = m.state.chunks.get(h) else {
                continue;
            };
            let mut replicas: Vec<ReplicaStat> = c
                .replicas()
                .map(|s| ReplicaStat {
                    server: m.servers.addr(s),
                    version: c.version,
                    stale: false,
                    corrupt: m.corrupt.get(&h).is_some_and(|v| v.contains(&s)),
                })
                .collect();
            for &(s, v) in m.stale.get(&h).map(|v| v.as_slice()).unwrap_or(&[]) {
                replicas.push(ReplicaStat { server: m.servers.addr(s), version: v, stale: true, corrupt: false });
            }
            let primary = m
                .leases
                .get(&h)
                .filter(|l| l.version == c.version && l.expires > now)
                .map(|l| m.servers.addr(l.primary));
            chunks.push(ChunkStat { index: i, handle: h, version: c.version, primary, replicas });
        }
        Ok(FileStat { path: path.to_string(), is_dir: false, size: f.size, chunks, register: f.register.clone() })
    }
}

/// Says once, at the master, that a chunkserver's disk changed, and what follows from it.
fn note_disk_change(server: &str, before: DiskState, now: DiskState) {
    match now {
        DiskState::Full => tracing::warn!(
            %server,
            "chunkserver {server} reports its disk full: no new chunks, leases or copies there; its chunks' next \
             writes go to a new version without it"
        ),
        DiskState::Failing => tracing::warn!(
            %server,
            "chunkserver {server} reports disk I/O errors: no new chunks, leases or copies there; its replicas are \
             read last and copied elsewhere"
        ),
        DiskState::Ok => tracing::warn!(
            %server,
            "chunkserver {server} reports its disk usable again (was {}): it takes new chunks and copies",
            before.describe()
        ),
    }
}

fn send_version(
    addr: &str,
    handle: ChunkHandle,
    version: Version,
    lease: Option<Duration>,
    register: Option<String>,
) -> Result<()> {
    let mut conn = Conn::connect(addr, RPC_TIMEOUT)?;
    conn.set_read_timeout(RPC_TIMEOUT)?;
    conn.send(&ChunkRequest::SetVersion { handle, version, lease_ms: lease.map(|d| d.as_millis() as u64), register })?;
    match conn.recv::<Reply<ChunkReply>>()? {
        Ok(ChunkReply::VersionSet) => Ok(()),
        Ok(other) => Err(GfsError::UnexpectedReply { peer: addr.to_string(), what: format!("{other:?}") }),
        Err(error) => {
            tracing::warn!(%addr, handle, "set version refused: {error}");
            Err(GfsError::Remote { peer: addr.to_string(), error })
        }
    }
}
