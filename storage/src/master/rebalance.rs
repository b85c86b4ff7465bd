//! Rebalancing: evens out replica counts across live chunkservers. Each round moves a bounded
//! number of replicas from the most-used server to the least-used one: the chunk is cloned to
//! the new server with the re-replication copy ([`ChunkRequest::Replicate`]), and only once
//! the copy is complete and the chunk still has its full set of healthy replicas without the
//! old one is that replica dropped. Chunks with corrupt or stale replicas, or below their
//! replication goal, are left to repair; a lease is revoked before the copy (as repair does).

use super::chunks::ServerIdx;
use super::Master;
use crate::error::{GfsError, Result};
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Conn, Reply, Version};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most replicas moved per round.
const PER_ROUND: usize = 8;

/// One planned move of a replica from `from` to `to`.
#[derive(Debug, Clone)]
struct Move {
    handle: ChunkHandle,
    version: Version,
    from: ServerIdx,
    from_addr: String,
    to: ServerIdx,
    to_addr: String,
}

/// Whether the spread between the fullest and the emptiest server (in replicas) is worth
/// moving data for: at least 2 (one move must not just swap them) and at least a tenth of
/// the mean.
fn unbalanced(most: usize, least: usize, mean: usize) -> bool {
    most.saturating_sub(least) >= 2.max(mean / 10)
}

impl Master {
    /// Starts the rebalancer thread (if enabled).
    pub fn spawn_rebalance(self: &Arc<Self>) {
        let Some(every) = self.cfg.rebalance_interval else { return };
        let me = self.clone();
        let _ = std::thread::Builder::new().name("rebalance".into()).spawn(move || loop {
            std::thread::sleep(every);
            // After a (re)start, chunk reports are incomplete until every server has reported.
            if me.leads() && me.uptime() > me.cfg.dead_after {
                me.rebalance_round();
            }
        });
    }

    /// One pass: plans moves under the lock, carries them out without it. Returns the number
    /// of replicas moved.
    pub fn rebalance_round(&self) -> usize {
        let moves = self.plan_rebalance();
        let mut done = 0;
        for mv in &moves {
            if self.move_replica(mv) {
                done += 1;
            }
        }
        done
    }

    fn plan_rebalance(&self) -> Vec<Move> {
        let m = self.meta();
        let dead = self.cfg.dead_after;
        // A full or failing disk neither takes nor gives replicas here (repair's business).
        let live: Vec<ServerIdx> = m.servers.live(dead).into_iter().filter(|&s| m.servers.accepts_writes(s)).collect();
        if live.len() < 2 {
            return Vec::new();
        }
        // Replicas per live server, from the chunk table (updated as moves are planned).
        let mut load: HashMap<ServerIdx, usize> = live.iter().map(|&s| (s, 0)).collect();
        for (_, c) in m.state.chunks.iter() {
            for s in c.replicas() {
                if let Some(n) = load.get_mut(&s) {
                    *n += 1;
                }
            }
        }
        let rack = |s: ServerIdx| m.servers.get(s).map(|x| x.rack.as_str()).unwrap_or("");
        let mut moves: Vec<Move> = Vec::new();
        let mut moved: HashSet<ChunkHandle> = HashSet::new();
        'rounds: while moves.len() < PER_ROUND {
            let mut order: Vec<ServerIdx> = live.clone();
            order.sort_by_key(|s| (load[s], m.servers.addr(*s)));
            let mean = load.values().sum::<usize>() / live.len();
            let from = *order.last().expect("two live servers");
            // Emptiest first; any target well below `from` will do.
            for &to in order.iter().take_while(|t| unbalanced(load[&from], load[t], mean)) {
                for (h, c) in m.state.chunks.iter() {
                    if c.version <= 1 || moved.contains(&h) || !c.has_replica(from) || c.has_replica(to) {
                        continue;
                    }
                    // A lease is revoked before the copy, as repair does.
                    if m.corrupt.get(&h).is_some_and(|v| !v.is_empty())
                        || m.stale.get(&h).is_some_and(|v| !v.is_empty())
                    {
                        continue;
                    }
                    let holders: Vec<ServerIdx> = c.replicas().filter(|&s| m.servers.is_live(s, dead)).collect();
                    if holders.len() < self.cfg.replicas {
                        continue; // repair's business
                    }
                    // Keep the replicas spread over at least as many racks as before.
                    let racks_before: HashSet<&str> = holders.iter().map(|&s| rack(s)).collect();
                    let racks_after: HashSet<&str> =
                        holders.iter().filter(|&&s| s != from).chain(std::iter::once(&to)).map(|&s| rack(s)).collect();
                    if racks_after.len() < racks_before.len() {
                        continue;
                    }
                    moves.push(Move {
                        handle: h,
                        version: c.version,
                        from,
                        from_addr: m.servers.addr(from),
                        to,
                        to_addr: m.servers.addr(to),
                    });
                    moved.insert(h);
                    *load.get_mut(&from).expect("live") -= 1;
                    *load.get_mut(&to).expect("live") += 1;
                    continue 'rounds;
                }
            }
            break;
        }
        moves
    }

    /// Copies one replica to its new server, then drops the old one if the chunk keeps its
    /// full set of healthy replicas. Returns whether the replica moved.
    fn move_replica(&self, mv: &Move) -> bool {
        let h = mv.handle;
        let Some(ticket) = self.begin_copy(h, mv.version) else { return false };
        let t0 = Instant::now();
        let req = ChunkRequest::Replicate { handle: h, version: mv.version, source: mv.from_addr.clone() };
        let copied = call(&mv.to_addr, &req);
        let accepted = self.end_copy(ticket, mv.version, matches!(copied, Ok(ChunkReply::Copied)).then_some(mv.to));
        if !matches!(copied, Ok(ChunkReply::Copied)) {
            tracing::warn!(handle = h, from = %mv.from_addr, to = %mv.to_addr, "rebalance copy failed: {copied:?}");
            return false;
        }
        if !accepted {
            // Written meanwhile: the copy is stale; its report marks it so and repair drops it.
            tracing::info!(handle = h, "chunk changed during a rebalance copy; keeping the old replica");
            return false;
        }
        // The copy is whole: record it, and take the old replica out of the table if enough
        // healthy replicas remain without it (clients are no longer sent there).
        let drop_old = {
            let mut m = self.meta();
            let m = &mut *m;
            let dead = self.cfg.dead_after;
            let Some(c) = m.state.chunks.get_mut(h).filter(|c| c.version == mv.version) else {
                tracing::info!(handle = h, "chunk changed after a rebalance copy; keeping the old replica");
                return false;
            };
            let bad = m.corrupt.get(&h).map(|v| v.as_slice()).unwrap_or(&[]);
            let others =
                c.replicas().filter(|&s| s != mv.from && m.servers.is_live(s, dead) && !bad.contains(&s)).count();
            let leased = m.leases.get(&h).is_some_and(|l| l.expires > Instant::now());
            let ok = others >= self.cfg.replicas && !leased;
            if ok {
                c.remove_replica(mv.from);
            }
            ok
        };
        if !drop_old {
            tracing::info!(handle = h, to = %mv.to_addr, "rebalance copied a replica but kept the old one");
            return false;
        }
        match call(&mv.from_addr, &ChunkRequest::Delete { handle: h }) {
            Ok(ChunkReply::Deleted) => {
                // A chunk report sent before the delete may have put it back.
                if let Some(c) = self.meta().state.chunks.get_mut(h) {
                    c.remove_replica(mv.from);
                }
                tracing::info!(
                    handle = h,
                    from = %mv.from_addr,
                    to = %mv.to_addr,
                    ms = t0.elapsed().as_millis() as u64,
                    "rebalanced a replica"
                );
                true
            }
            other => {
                // It stays on disk; the next chunk report lists it again as a replica.
                tracing::warn!(handle = h, from = %mv.from_addr, "rebalance could not drop the old replica: {other:?}");
                false
            }
        }
    }
}

fn call(addr: &str, req: &ChunkRequest) -> Result<ChunkReply> {
    let mut c = Conn::connect(addr, Duration::from_secs(5))?;
    c.set_read_timeout(Duration::from_secs(120))?;
    c.send(req)?;
    c.recv::<Reply<ChunkReply>>()?.map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
}

#[cfg(test)]
mod tests {
    use super::unbalanced;

    #[test]
    fn threshold() {
        assert!(!unbalanced(5, 4, 4));
        assert!(unbalanced(6, 4, 5));
        assert!(unbalanced(12, 0, 9));
        assert!(!unbalanced(105, 100, 100));
        assert!(unbalanced(110, 100, 100));
    }
}
