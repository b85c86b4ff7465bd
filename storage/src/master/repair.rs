//! Background repair: chunks with fewer healthy live replicas than wanted are copied to other
//! chunkservers (fewest replicas first); once a chunk is whole again, its corrupt and stale
//! replicas, and those on a disk that returns I/O errors, are deleted.

use super::chunks::ServerIdx;
use super::custody::CopyTicket;
use super::Master;
use crate::error::{GfsError, Result};
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Conn, Reply, Version};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most copies started per round.
const PER_ROUND: usize = 16;
/// Copies in flight at once.
const PARALLEL: usize = 4;

struct Copy {
    handle: ChunkHandle,
    version: Version,
    source: String,
    dest: ServerIdx,
    dest_addr: String,
    live: usize,
}

impl Master {
    /// Starts the repair thread (if enabled).
    pub fn spawn_repair(self: &Arc<Self>) {
        let Some(every) = self.cfg.repair_interval else { return };
        let me = self.clone();
        let _ = std::thread::Builder::new().name("repair".into()).spawn(move || loop {
            // Wait until chunkservers have had time to report after a (re)start; go straight
            // on while there is work.
            if !me.leads() || me.uptime() <= me.cfg.dead_after || me.repair_round() == 0 {
                std::thread::sleep(every);
            }
        });
    }

    /// One pass: plans copies and deletions under the lock, carries them out without it.
    /// Returns the number of replicas copied.
    pub fn repair_round(&self) -> usize {
        let (mut copies, drops) = self.plan_repairs();
        copies.sort_by_key(|c| c.live);
        let mut done = 0;
        // Copies run a few at a time, in parallel.
        for batch in copies.chunks(PARALLEL).take(PER_ROUND.div_ceil(PARALLEL)) {
            done += std::thread::scope(|s| {
                let hs: Vec<_> = batch.iter().map(|c| s.spawn(move || self.copy_one(c))).collect();
                hs.into_iter().map(|h| h.join().unwrap_or(false)).filter(|&ok| ok).count()
            });
        }
        for (h, s, addr) in drops {
            if matches!(call(&addr, &ChunkRequest::Delete { handle: h }), Ok(ChunkReply::Deleted)) {
                let mut m = self.meta();
                if let Some(c) = m.state.chunks.get_mut(h) {
                    c.remove_replica(s);
                }
                if let Some(v) = m.corrupt.get_mut(&h) {
                    v.retain(|x| *x != s);
                }
                if let Some(v) = m.stale.get_mut(&h) {
                    v.retain(|(x, _)| *x != s);
                }
                tracing::info!(handle = h, server = %addr, "dropped a corrupt or stale replica, or one on a failing disk");
            }
        }
        done
    }

    /// Carries out one planned copy; returns whether it succeeded.
    fn copy_one(&self, c: &Copy) -> bool {
        let Some(ticket) = self.begin_copy(c.handle, c.version) else { return false };
        let t0 = Instant::now();
        let req = ChunkRequest::Replicate { handle: c.handle, version: c.version, source: c.source.clone() };
        let copied = call(&c.dest_addr, &req);
        let is_copied = matches!(copied, Ok(ChunkReply::Copied));
        if !self.end_copy(ticket, c.version, is_copied.then_some(c.dest)) {
            if is_copied {
                tracing::info!(handle = c.handle, dest = %c.dest_addr, "re-replication copy overtaken by a new lease; not counted");
            } else {
                tracing::warn!(handle = c.handle, dest = %c.dest_addr, "re-replication failed: {copied:?}");
            }
            return false;
        }
        let mut m = self.meta();
        let m = &mut *m;
        if let Some(x) = m.state.chunks.get_mut(c.handle) {
            // Forget replicas on dead servers (they re-report if they return).
            let dead: Vec<ServerIdx> = x.replicas().filter(|&s| !m.servers.is_live(s, self.cfg.dead_after)).collect();
            for s in dead {
                x.remove_replica(s);
            }
        }
        tracing::info!(handle = c.handle, dest = %c.dest_addr, ms = t0.elapsed().as_millis() as u64, "re-replicated");
        true
    }

    /// Starts a copy of chunk `handle` at `version` (re-replication or rebalancing): none while
    /// a lease grant or another copy of it is under way (see `custody.rs`), and only once no
    /// lease can be used at `version` any more: the lease is revoked first (the next writer
    /// gets a new version, which the copy then lacks and so is not counted).
    pub(super) fn begin_copy(&self, handle: ChunkHandle, version: Version) -> Option<CopyTicket> {
        let ticket = {
            let mut m = self.meta();
            if m.state.chunks.get(handle).is_none_or(|c| c.version != version) {
                return None;
            }
            m.custody.begin_copy(handle)?
        };
        if let Err(e) = self.revoke_lease(handle) {
            tracing::debug!(handle, "copy waits for the lease: {e}");
            self.end_copy(ticket, version, None);
            return None;
        }
        Some(ticket)
    }

    /// Ends a copy begun by [`Master::begin_copy`]. If `dest` now holds the copy, it is counted
    /// as a replica, in the same step, when the chunk is still at `version` and no grant
    /// overtook the copy; returns whether it was.
    pub(super) fn end_copy(&self, ticket: CopyTicket, version: Version, dest: Option<ServerIdx>) -> bool {
        let mut m = self.meta();
        let m = &mut *m;
        let handle = ticket.handle();
        let same = m.state.chunks.get(handle).is_some_and(|c| c.version == version);
        if !m.custody.end_copy(ticket, version, dest.filter(|_| same)) {
            return false;
        }
        let Some(dest) = dest else { return false };
        if let Some(c) = m.state.chunks.get_mut(handle) {
            c.add_replica(dest);
        }
        if let Some(v) = m.stale.get_mut(&handle) {
            v.retain(|(s, _)| *s != dest);
        }
        true
    }

    fn plan_repairs(&self) -> (Vec<Copy>, Vec<(ChunkHandle, ServerIdx, String)>) {
        let mut m = self.meta();
        let m = &mut *m;
        let chunks = &m.state.chunks;
        m.custody.retain(|h| chunks.get(h).is_some());
        let dead = self.cfg.dead_after;
        let now = Instant::now();
        let mut copies = Vec::new();
        let mut drops = Vec::new();
        for (h, c) in m.state.chunks.iter() {
            if c.version <= 1 {
                continue; // never written
            }
            let leased = m.leases.get(&h).is_some_and(|l| l.expires > now);
            let bad = m.corrupt.get(&h).map(|v| v.as_slice()).unwrap_or(&[]);
            let live: Vec<ServerIdx> = c.replicas().filter(|&s| m.servers.is_live(s, dead)).collect();
            // A replica on a disk that returns I/O errors is not counted: copied elsewhere
            // while it can still be read.
            let healthy: Vec<ServerIdx> =
                live.iter().copied().filter(|&s| !bad.contains(&s) && !m.servers.disk_failing(s)).collect();
            if healthy.len() >= self.cfg.replicas {
                if leased {
                    continue;
                }
                for &s in live.iter().filter(|&&s| bad.contains(&s) || m.servers.disk_failing(s)) {
                    drops.push((h, s, m.servers.addr(s)));
                }
                for &(s, _) in m.stale.get(&h).map(|v| v.as_slice()).unwrap_or(&[]) {
                    if m.servers.is_live(s, dead) {
                        drops.push((h, s, m.servers.addr(s)));
                    }
                }
                continue;
            }
            let Some(&source) = healthy.first() else { continue };
            if let Some(&dest) = m.servers.place(1, dead, &live).first() {
                copies.push(Copy {
                    handle: h,
                    version: c.version,
                    source: m.servers.addr(source),
                    dest,
                    dest_addr: m.servers.addr(dest),
                    live: healthy.len(),
                });
            }
        }
        (copies, drops)
    }
}

fn call(addr: &str, req: &ChunkRequest) -> Result<ChunkReply> {
    let mut c = Conn::connect(addr, Duration::from_secs(5))?;
    c.set_read_timeout(Duration::from_secs(120))?;
    c.send(req)?;
    c.recv::<Reply<ChunkReply>>()?.map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
}
