//! Test-and-set registers on the master, used by the VMM to decide which side goes live after
//! a failure; the winner's generation fences writes to the VM's disk.

use super::state::{check_register_name, Register};
use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{ChunkReply, ChunkRequest, Conn, Fence, Reply};
use crate::sync::Unpoisoned;
use std::sync::Arc;
use std::time::Duration;

const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest register holder accepted: it is kept in memory, in every checkpoint, and logged.
pub const MAX_HOLDER: usize = 256;

impl Master {
    /// Current state of register `name` (generation 0 and no holder if never set).
    pub fn register(&self, name: &str) -> Result<Register> {
        check_register_name(name)?;
        Ok(self.meta().state.registers.get(name).cloned().unwrap_or_default())
    }

    /// If `name` is at generation `expected`, moves it to `expected + 1` held by `holder`. The
    /// change is in the operation log, and every live chunkserver has been told the new
    /// generation (best effort; the others learn it with their next heartbeat and refuse
    /// fenced writes until then), before this returns.
    pub fn compare_and_set(self: &Arc<Self>, name: &str, expected: u64, holder: &str) -> Result<(u64, String)> {
        check_register_name(name)?;
        if holder.len() > MAX_HOLDER || holder.chars().any(char::is_control) {
            return Err(GfsError::fs(
                ErrorKind::InvalidArgument,
                format!("a register holder is at most {MAX_HOLDER} bytes without control characters"),
            ));
        }
        let _g = self.registers.lock_unpoisoned();
        let cur = self.register(name)?;
        if cur.generation != expected {
            return Err(GfsError::fs(
                ErrorKind::Conflict,
                format!("register {name} is held by {:?} at generation {}", cur.holder, cur.generation),
            ));
        }
        let generation =
            expected.checked_add(1).ok_or_else(|| GfsError::fs(ErrorKind::InvalidArgument, "generation overflow"))?;
        self.commit(Record::CompareAndSet { name: name.to_string(), generation, holder: holder.to_string() })?;
        tracing::info!(register = name, generation, holder, "register set");
        self.broadcast_fence(name, generation);
        Ok((generation, holder.to_string()))
    }

    /// If `name` is at generation `expected` held by `holder`, moves it to `expected + 1` with
    /// no holder, so that the next taker needs no takeover: durably, and announced to the
    /// chunkservers like [`Master::compare_and_set`] (writes carrying `expected` are fenced
    /// from then on). Otherwise a `Conflict` naming the current holder and generation.
    pub fn release_register(self: &Arc<Self>, name: &str, expected: u64, holder: &str) -> Result<u64> {
        check_register_name(name)?;
        let _g = self.registers.lock_unpoisoned();
        let generation =
            expected.checked_add(1).ok_or_else(|| GfsError::fs(ErrorKind::InvalidArgument, "generation overflow"))?;
        // The state machine checks holder and generation, on the master and again on replay.
        self.commit(Record::ReleaseRegister { name: name.to_string(), generation, holder: holder.to_string() })?;
        tracing::info!(register = name, generation, released_by = holder, "register released");
        self.broadcast_fence(name, generation);
        Ok(generation)
    }

    fn broadcast_fence(&self, name: &str, generation: u64) {
        let servers: Vec<String> = {
            let m = self.meta();
            m.servers.live(self.cfg.dead_after).into_iter().map(|i| m.servers.addr(i)).collect()
        };
        let req = ChunkRequest::Fence(Fence { name: name.to_string(), generation });
        std::thread::scope(|s| {
            for addr in &servers {
                let req = &req;
                s.spawn(move || {
                    let r = Conn::connect(addr, FENCE_TIMEOUT).and_then(|mut c| {
                        c.set_read_timeout(FENCE_TIMEOUT)?;
                        c.send(req)?;
                        c.recv::<Reply<ChunkReply>>()
                    });
                    if !matches!(r, Ok(Ok(ChunkReply::Fenced))) {
                        tracing::warn!(%addr, register = name, "could not announce the new generation");
                    }
                });
            }
        });
    }

    /// Fences writes to `path` by register `register`. Only a file without chunks can be
    /// bound, so every chunk of a bound file is fenced from its first write.
    pub fn bind(self: &Arc<Self>, path: &str, register: &str) -> Result<()> {
        let _l = self.locks.lock(&[], &[path]);
        {
            let m = self.meta();
            let f = m.state.ns.file(path)?;
            if !f.chunks.is_empty() {
                return Err(GfsError::fs(
                    ErrorKind::InvalidArgument,
                    format!("{path} already has data; bind a register before the first write"),
                ));
            }
        }
        self.commit(Record::Bind { path: path.to_string(), register: register.to_string() })
    }
}

#[cfg(test)]
#[path = "register_tests.rs"]
mod tests;
