//! `gfs status` and `gfs fsck`: what the master knows about chunkservers and replicas.

use super::namespace::Node;
use super::Master;
use crate::protocol::{ClusterStatus, FsckReport, ServerStatus};

impl Master {
    /// Chunkservers and overall counts.
    pub fn status(&self) -> ClusterStatus {
        let m = self.meta();
        let dead = self.cfg.dead_after;
        let servers = m
            .servers
            .all()
            .map(|(i, s)| ServerStatus {
                addr: s.addr.clone(),
                rack: s.rack.clone(),
                live: m.servers.is_live(i, dead),
                chunks: s.chunks as u64,
                last_seen_ms: s.last_seen.elapsed().as_millis() as u64,
                disk: s.disk,
            })
            .collect();
        let (mut files, mut dirs) = (0, 0);
        for (_, n) in m.state.ns.iter() {
            match n {
                Node::Dir => dirs += 1,
                Node::File(_) => files += 1,
            }
        }
        ClusterStatus { servers, files, dirs, chunks: m.state.chunks.iter().count() as u64 }
    }

    /// The counts `--metrics` shows (an fsck's, without its list of problems' text).
    pub fn cluster_figures(&self) -> crate::metrics::ClusterFigures {
        let status = self.status();
        let fsck = self.fsck();
        let live = status.servers.iter().filter(|s| s.live).count() as u64;
        crate::metrics::ClusterFigures {
            chunkservers_live: live,
            chunkservers_dead: status.servers.len() as u64 - live,
            files: status.files,
            chunks: status.chunks,
            under_replicated: fsck.under_replicated,
            missing: fsck.missing,
        }
    }

    /// Checks every chunk of every file for live, healthy, up-to-date replicas.
    pub fn fsck(&self) -> FsckReport {
        let m = self.meta();
        let dead = self.cfg.dead_after;
        let mut r =
            FsckReport { files: 0, chunks: 0, healthy: 0, under_replicated: 0, missing: 0, problems: Vec::new() };
        for (path, n) in m.state.ns.iter() {
            let Node::File(f) = n else { continue };
            r.files += 1;
            for (i, h) in f.chunks.iter() {
                let Some(c) = m.state.chunks.get(h) else { continue };
                r.chunks += 1;
                let bad = m.corrupt.get(&h).map(|v| v.as_slice()).unwrap_or(&[]);
                let good = c
                    .replicas()
                    .filter(|&s| m.servers.is_live(s, dead) && !bad.contains(&s) && !m.servers.disk_failing(s))
                    .count();
                let stale = m.stale.get(&h).map(|v| v.len()).unwrap_or(0);
                if good == 0 && c.version > 1 {
                    r.missing += 1;
                    r.problems.push(format!("{path} chunk {i} (handle {h}): MISSING, no live healthy replica"));
                } else if good < self.cfg.replicas && c.version > 1 {
                    r.under_replicated += 1;
                    r.problems.push(format!(
                        "{path} chunk {i} (handle {h}): {good} of {} replicas ({} corrupt, {stale} stale)",
                        self.cfg.replicas,
                        bad.len()
                    ));
                } else {
                    r.healthy += 1;
                }
            }
        }
        r
    }
}
