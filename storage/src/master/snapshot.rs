//! Copy-on-write snapshots. Taking one revokes the leases on the source's chunks (so the next
//! write must come to the master) and logs that the copy shares them. The first write to a
//! shared chunk has every replica copy it locally under a new handle, and goes there.

use super::chunks::ServerIdx;
use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Conn, Reply};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RPC_TIMEOUT: Duration = Duration::from_secs(30);

impl Master {
    /// Snapshots `src` (a file or a directory tree) as `dst`.
    pub fn snapshot(self: &Arc<Self>, src: &str, dst: &str) -> Result<()> {
        let _l = self.locks.lock(&[], &[src, dst]);
        let (handles, check) = {
            let m = self.meta();
            (m.state.ns.handles_below(src), m.state.check(&Record::Snapshot { src: src.into(), dst: dst.into() }))
        };
        check?;
        for h in handles {
            self.revoke_lease(h)?;
        }
        self.commit(Record::Snapshot { src: src.to_string(), dst: dst.to_string() })?;
        tracing::info!(src, dst, "snapshot taken");
        Ok(())
    }

    /// Ends any lease on `h`: the primary is told to stop taking mutations; if it cannot be
    /// reached the lease must run out first.
    pub(super) fn revoke_lease(&self, h: ChunkHandle) -> Result<()> {
        let now = Instant::now();
        if now < self.lease_grace_until() {
            // Leases from before the restart are unknown here but may still be used.
            return Err(GfsError::fs(
                ErrorKind::Unavailable,
                format!("master restarted: leases granted before may be held for {:?}", self.lease_grace_until() - now),
            ));
        }
        let lease = {
            let m = self.meta();
            m.leases.get(&h).filter(|l| l.expires > Instant::now()).map(|l| (m.servers.addr(l.primary), l.remaining()))
        };
        let Some((addr, remaining)) = lease else { return Ok(()) };
        match call(&addr, &ChunkRequest::Revoke { handle: h }) {
            Ok(ChunkReply::Revoked) => {
                self.meta().leases.remove(&h);
                Ok(())
            }
            _ => Err(GfsError::fs(
                ErrorKind::Unavailable,
                format!("chunk {h}: the lease held by {addr} could not be revoked; retry in {remaining:?}"),
            )),
        }
    }

    /// Replaces shared chunk `old` at `index` of `path` by a private copy made on each replica.
    /// The caller holds the file's write lock.
    pub(super) fn copy_on_write(self: &Arc<Self>, path: &str, index: u64, old: ChunkHandle) -> Result<ChunkHandle> {
        let (version, sources, new) = {
            let mut m = self.meta();
            let dead = self.cfg.dead_after;
            let c =
                m.state.chunks.get(old).ok_or_else(|| GfsError::fs(ErrorKind::UnknownChunk, format!("chunk {old}")))?;
            let version = c.version;
            let sources: Vec<(ServerIdx, String)> =
                c.replicas().filter(|&s| m.servers.is_live(s, dead)).map(|s| (s, m.servers.addr(s))).collect();
            (version, sources, m.state.chunks.reserve())
        };
        let mut ok = Vec::new();
        for (s, addr) in &sources {
            match call(addr, &ChunkRequest::CopyChunk { from: old, to: new, version }) {
                Ok(ChunkReply::Copied) => ok.push(*s),
                other => tracing::warn!(%addr, old, new, "copy-on-write failed: {other:?}"),
            }
        }
        if ok.is_empty() {
            self.meta().state.chunks.release(new);
            return Err(GfsError::fs(ErrorKind::NoReplicas, format!("chunk {old}: no replica could copy it")));
        }
        if let Err(e) = self.commit(Record::ReplaceChunk { path: path.to_string(), index, old, new, version }) {
            self.meta().state.chunks.release(new);
            return Err(e);
        }
        if let Some(c) = self.meta().state.chunks.get_mut(new) {
            c.set_replicas(&ok);
        }
        tracing::debug!(path, index, old, new, "copy-on-write");
        Ok(new)
    }
}

fn call(addr: &str, req: &ChunkRequest) -> Result<ChunkReply> {
    let mut c = Conn::connect(addr, Duration::from_secs(5))?;
    c.set_read_timeout(RPC_TIMEOUT)?;
    c.send(req)?;
    c.recv::<Reply<ChunkReply>>()?.map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
}
