//! Mutations: the primary orders each one with a serial number, applies it, then has every
//! secondary apply it in that order. Fenced files also need the register's current generation.

use super::heartbeat::report_corrupt;
use super::ChunkServer;
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Fence, Reply, Version};
use crate::sync::Unpoisoned;
use crate::{CHUNK_SIZE, MAX_RECORD};
use std::sync::Arc;

/// One mutation as the primary or a secondary receives it.
pub struct Mutation {
    pub handle: ChunkHandle,
    pub version: Version,
    pub offset: u64,
    /// Id of the pushed data to write.
    pub id: u64,
    pub fence: Option<Fence>,
    /// Durable before acknowledged (fdatasync); false: acknowledged from memory.
    pub durable: bool,
}

impl Mutation {
    fn apply_local(&self, cs: &Arc<ChunkServer>, chunk: &super::store::Chunk, data: &[u8]) -> Result<()> {
        cs.store.write_as(chunk, self.version, self.offset, data, self.durable).inspect_err(|e| {
            if e.kind() == Some(ErrorKind::Corrupt) {
                report_corrupt(cs, self.handle);
            }
        })
    }

    /// Fencing first (a fenced-out writer must hear so, whatever the disk), then the disk: a
    /// full or failing one refuses the write, so the primary names this replica as failed
    /// (or, as primary, fails the mutation) and the client retries once the master has moved
    /// the chunk to a new version without it.
    fn check_may_write(&self, cs: &ChunkServer, chunk: &super::store::Chunk) -> Result<()> {
        self.check_fence(cs, chunk)?;
        cs.disk.check_writable()
    }

    fn check_fence(&self, cs: &ChunkServer, chunk: &super::store::Chunk) -> Result<()> {
        let bound = chunk.register.lock_unpoisoned().clone();
        cs.check_fence(bound.as_deref(), self.fence.as_ref())
    }

    /// As primary: order the mutation, then apply it locally and on every secondary at the
    /// same time (the order lock is held throughout, so every replica still applies in serial
    /// order; the local disk write no longer delays the secondaries'). Replies name the
    /// secondaries that failed; a local failure fails the whole mutation, and the client
    /// retries it, as for any failed replica.
    pub fn write_primary(&self, cs: &Arc<ChunkServer>, secondaries: &[String]) -> Result<ChunkReply> {
        let chunk = cs.store.get(self.handle)?;
        self.check_may_write(cs, &chunk)?;
        let data = cs.buffers.take(self.id)?;
        self.order_and_apply(cs, &chunk, secondaries, &data, Payload::Pushed)
    }

    /// [`Mutation::write_primary`] for a write that came with its data (`WriteInline`): the
    /// secondaries get the data with the order to apply it.
    pub fn write_primary_inline(
        &self,
        cs: &Arc<ChunkServer>,
        secondaries: &[String],
        data: &[u8],
    ) -> Result<ChunkReply> {
        let chunk = cs.store.get(self.handle)?;
        self.check_may_write(cs, &chunk)?;
        self.order_and_apply(cs, &chunk, secondaries, data, Payload::Inline)
    }

    fn order_and_apply(
        &self,
        cs: &Arc<ChunkServer>,
        chunk: &super::store::Chunk,
        secondaries: &[String],
        data: &[u8],
        payload: Payload,
    ) -> Result<ChunkReply> {
        let (handle, version) = (self.handle, self.version);
        // One mutation at a time per chunk: serial order is application order everywhere.
        let mut order = chunk.order.lock_unpoisoned();
        // The lease is checked under the order lock: a revoke takes that lock too, so once the
        // master hears "revoked" (and, say, starts copying the chunk) no mutation that passed
        // an earlier check can still be applied.
        no_lease_unless(cs.check_lease(handle, version), handle, version)?;
        if order.0 != version {
            *order = (version, 1);
        }
        let serial = order.1;
        order.1 += 1;
        let (req, sent_data) = match payload {
            Payload::Pushed => {
                let apply = ChunkRequest::Apply {
                    handle,
                    version,
                    serial,
                    offset: self.offset,
                    id: self.id,
                    fence: self.fence.clone(),
                };
                (self.unsynced_if_asked(apply), &[][..])
            }
            Payload::Inline => {
                let apply = ChunkRequest::ApplyInline {
                    handle,
                    version,
                    serial,
                    offset: self.offset,
                    len: data.len() as u64,
                    fence: self.fence.clone(),
                    durable: self.durable,
                };
                (apply, data)
            }
        };
        let (local, failed) = std::thread::scope(|s| {
            let remote = s.spawn(|| fan_out(cs, secondaries, &req, sent_data, serial));
            let local = self.apply_local(cs, chunk, data);
            let failed = remote.join().unwrap_or_else(|_| secondaries.to_vec());
            (local, failed)
        });
        local?;
        Ok(ChunkReply::Written { failed })
    }

    /// `req` as sent to the secondaries: marked unsynced when this mutation is.
    fn unsynced_if_asked(&self, req: ChunkRequest) -> ChunkRequest {
        if self.durable {
            req
        } else {
            ChunkRequest::Unsynced(Box::new(req))
        }
    }

    /// As secondary: apply in the primary's serial order.
    pub fn apply_secondary(&self, cs: &Arc<ChunkServer>, serial: u64) -> Result<ChunkReply> {
        let data = cs.buffers.take(self.id)?;
        self.apply_secondary_inline(cs, serial, &data)
    }

    /// [`Mutation::apply_secondary`] for data that came with the order (`ApplyInline`).
    pub fn apply_secondary_inline(&self, cs: &Arc<ChunkServer>, serial: u64, data: &[u8]) -> Result<ChunkReply> {
        let chunk = cs.store.get(self.handle)?;
        self.check_may_write(cs, &chunk)?;
        next_serial(&chunk, self.version, serial)?;
        self.apply_local(cs, &chunk, data)?;
        Ok(ChunkReply::Applied)
    }
}

/// How a primary's secondaries get a mutation's bytes.
#[derive(Clone, Copy)]
enum Payload {
    /// Pushed to them along the chain before the commit: they hold it under the mutation's id.
    Pushed,
    /// Sent with the order to apply it.
    Inline,
}

/// As primary: append the pushed record at the end of the chunk, or pad the chunk (on every
/// replica) if the record does not fit, so the client moves on to the next chunk.
pub fn append_primary(cs: &Arc<ChunkServer>, m: Mutation, len: u64, secondaries: &[String]) -> Result<ChunkReply> {
    if len > MAX_RECORD {
        return Err(GfsError::fs(ErrorKind::InvalidArgument, format!("record of {len} bytes exceeds {MAX_RECORD}")));
    }
    let handle = m.handle;
    let chunk = cs.store.get(handle)?;
    m.check_may_write(cs, &chunk)?;
    let data = cs.buffers.take(m.id)?;
    if data.len() as u64 != len {
        return Err(GfsError::fs(ErrorKind::InvalidArgument, "record length does not match the pushed data"));
    }
    let mut order = chunk.order.lock_unpoisoned();
    // Under the order lock, as for writes (see `write_primary`).
    no_lease_unless(cs.check_lease(handle, m.version), handle, m.version)?;
    if order.0 != m.version {
        *order = (m.version, 1);
    }
    let serial = order.1;
    order.1 += 1;
    let at = cs.store.chunk_len(&chunk);
    if at + len > CHUNK_SIZE {
        cs.store.pad(&chunk, m.version)?;
        let req = ChunkRequest::Pad { handle, version: m.version, serial, fence: m.fence.clone() };
        let failed = fan_out(cs, secondaries, &req, &[], serial);
        return Ok(ChunkReply::ChunkFull { failed });
    }
    let m = Mutation { offset: at, ..m };
    let req = ChunkRequest::Apply { handle, version: m.version, serial, offset: at, id: m.id, fence: m.fence.clone() };
    let (local, failed) = std::thread::scope(|s| {
        let remote = s.spawn(|| fan_out(cs, secondaries, &req, &[], serial));
        let local = m.apply_local(cs, &chunk, &data);
        (local, remote.join().unwrap_or_else(|_| secondaries.to_vec()))
    });
    local?;
    Ok(ChunkReply::Appended { offset: at, failed })
}

/// As secondary: pad the chunk, in serial order.
pub fn pad_secondary(cs: &Arc<ChunkServer>, m: Mutation, serial: u64) -> Result<ChunkReply> {
    let chunk = cs.store.get(m.handle)?;
    m.check_may_write(cs, &chunk)?;
    next_serial(&chunk, m.version, serial)?;
    cs.store.pad(&chunk, m.version)?;
    Ok(ChunkReply::Applied)
}

/// The error for a mutation that reached a primary without a valid lease at `version`.
fn no_lease_unless(valid: bool, handle: ChunkHandle, version: Version) -> Result<()> {
    if valid {
        return Ok(());
    }
    Err(GfsError::fs(ErrorKind::NoLease, format!("chunk {handle}: no valid lease at version {version}")))
}

/// Secondaries apply mutations in increasing serial order; an old serial is refused.
fn next_serial(chunk: &super::store::Chunk, version: Version, serial: u64) -> Result<()> {
    let mut s = chunk.state.lock_unpoisoned();
    if s.version == version && serial <= s.last_serial {
        return Err(GfsError::fs(
            ErrorKind::InvalidArgument,
            format!("chunk {}: serial {serial} after {}", chunk.handle, s.last_serial),
        ));
    }
    s.last_serial = serial;
    Ok(())
}

/// Sends `req` (followed by `data` in data frames, if any) to every secondary in parallel;
/// returns those that failed.
fn fan_out(cs: &Arc<ChunkServer>, secondaries: &[String], req: &ChunkRequest, data: &[u8], serial: u64) -> Vec<String> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = secondaries
            .iter()
            .map(|addr| {
                s.spawn(move || match call(cs, addr, req, data) {
                    Ok(ChunkReply::Applied) => None,
                    Ok(other) => {
                        tracing::warn!(%addr, "unexpected reply {other:?}");
                        Some(addr.clone())
                    }
                    Err(e) => {
                        tracing::warn!(%addr, serial, "secondary failed: {e}");
                        Some(addr.clone())
                    }
                })
            })
            .collect();
        jobs.into_iter()
            .zip(secondaries)
            .filter_map(|(j, addr)| j.join().unwrap_or_else(|_| Some(addr.clone())))
            .collect()
    })
}

fn call(cs: &ChunkServer, addr: &str, req: &ChunkRequest, data: &[u8]) -> Result<ChunkReply> {
    cs.peers
        .call_with_data::<_, Reply<ChunkReply>>(addr, req, data)?
        .map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
}

#[cfg(test)]
#[path = "mutation_tests.rs"]
mod tests;
