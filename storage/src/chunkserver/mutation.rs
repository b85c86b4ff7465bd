//! Mutations: the primary orders each one with a serial number, applies it, then has every
//! secondary apply it in that order. Fenced files also need the register's current generation.

use super::heartbeat::report_corrupt;
use super::ChunkServer;
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Fence, Reply, Version};
use std::sync::Arc;

/// One mutation as the primary or a secondary receives it.
pub struct Mutation {
    pub handle: ChunkHandle,
    pub version: Version,
    pub offset: u64,
    /// Id of the pushed data to write.
    pub id: u64,
    pub fence: Option<Fence>,
}

impl Mutation {
    fn apply_local(&self, cs: &Arc<ChunkServer>, chunk: &super::store::Chunk, data: &[u8]) -> Result<()> {
        cs.store.write(chunk, self.version, self.offset, data).inspect_err(|e| {
            if e.kind() == Some(ErrorKind::Corrupt) {
                report_corrupt(cs, self.handle);
            }
        })
    }

    fn check_fence(&self, cs: &ChunkServer, chunk: &super::store::Chunk) -> Result<()> {
        let bound = chunk.register.lock().unwrap_or_else(|p| p.into_inner()).clone();
        cs.check_fence(bound.as_deref(), self.fence.as_ref())
    }

    /// As primary: order the mutation, apply it locally, then on every secondary. Replies
    /// name the secondaries that failed.
    pub fn write_primary(&self, cs: &Arc<ChunkServer>, secondaries: &[String]) -> Result<ChunkReply> {
        let handle = self.handle;
        if !cs.check_lease(handle, self.version) {
            return Err(GfsError::fs(
                ErrorKind::NoLease,
                format!("chunk {handle}: no valid lease at version {}", self.version),
            ));
        }
        let chunk = cs.store.get(handle)?;
        self.check_fence(cs, &chunk)?;
        let data = cs.buffers.take(self.id)?;
        // One mutation at a time per chunk: serial order is application order everywhere.
        let mut order = chunk.order.lock().unwrap_or_else(|p| p.into_inner());
        if order.0 != self.version {
            *order = (self.version, 1);
        }
        let serial = order.1;
        order.1 += 1;
        self.apply_local(cs, &chunk, &data)?;
        let req = ChunkRequest::Apply {
            handle,
            version: self.version,
            serial,
            offset: self.offset,
            id: self.id,
            fence: self.fence.clone(),
        };
        let failed: Vec<String> = std::thread::scope(|s| {
            let jobs: Vec<_> = secondaries
                .iter()
                .map(|addr| {
                    let req = &req;
                    s.spawn(move || match call(cs, addr, req) {
                        Ok(ChunkReply::Applied) => None,
                        Ok(other) => {
                            tracing::warn!(%addr, "unexpected apply reply {other:?}");
                            Some(addr.clone())
                        }
                        Err(e) => {
                            tracing::warn!(%addr, handle, serial, "apply failed: {e}");
                            Some(addr.clone())
                        }
                    })
                })
                .collect();
            jobs.into_iter()
                .zip(secondaries)
                .filter_map(|(j, addr)| j.join().unwrap_or_else(|_| Some(addr.clone())))
                .collect()
        });
        Ok(ChunkReply::Written { failed })
    }

    /// As secondary: apply in the primary's serial order.
    pub fn apply_secondary(&self, cs: &Arc<ChunkServer>, serial: u64) -> Result<ChunkReply> {
        let data = cs.buffers.take(self.id)?;
        let chunk = cs.store.get(self.handle)?;
        self.check_fence(cs, &chunk)?;
        {
            let mut s = chunk.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.version == self.version && serial <= s.last_serial {
                return Err(GfsError::fs(
                    ErrorKind::InvalidArgument,
                    format!("chunk {}: serial {serial} after {}", self.handle, s.last_serial),
                ));
            }
            s.last_serial = serial;
        }
        self.apply_local(cs, &chunk, &data)?;
        Ok(ChunkReply::Applied)
    }
}

fn call(cs: &ChunkServer, addr: &str, req: &ChunkRequest) -> Result<ChunkReply> {
    let mut c = cs.peers.get(addr)?;
    c.send(req)?;
    let r = c.recv::<Reply<ChunkReply>>()?;
    cs.peers.put(c);
    r.map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
}
