//! Record append: the primary picks the offset, so concurrent appenders never overwrite each
//! other. At least once: a failed attempt is retried and may leave a duplicate or padding.

use super::data::is_permanent;
use super::{unexpected, Client};
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkReply, ChunkRequest, MasterReply, MasterRequest};
use crate::{CHUNK_SIZE, MAX_RECORD};
use std::time::{Duration, Instant};

impl Client {
    /// Appends `data` as one record (atomic: never split or interleaved with another) and
    /// returns the file offset where it landed. Records hold at most a quarter chunk.
    pub fn append(&self, path: &str, data: &[u8]) -> Result<u64> {
        let len = data.len() as u64;
        if len == 0 || len > MAX_RECORD {
            return Err(GfsError::fs(
                ErrorKind::InvalidArgument,
                format!("a record holds 1 to {MAX_RECORD} bytes, not {len}"),
            ));
        }
        let deadline = Instant::now() + self.inner.retry.unavailable_wait;
        let mut min_index = 0u64;
        let mut failures = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            let e = match self.append_once(path, data, &mut min_index) {
                Ok(Some(offset)) => {
                    self.extend_size(path, offset + len)?;
                    return Ok(offset);
                }
                Ok(None) => continue, // the chunk was full; go on to the next one
                Err(e) => e,
            };
            if is_permanent(&e) {
                return Err(e);
            }
            let waiting =
                matches!(e.kind(), Some(ErrorKind::Unavailable | ErrorKind::NoReplicas)) && Instant::now() < deadline;
            if !waiting {
                failures += 1;
                if failures >= self.inner.retry.attempts {
                    return Err(GfsError::WriteFailed { attempts: failures, last: e.to_string() });
                }
            }
            tracing::debug!(path, "record append failed, retrying: {e}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One attempt. `Ok(None)`: the chunk was full and padded, `min_index` moved on.
    fn append_once(&self, path: &str, data: &[u8], min_index: &mut u64) -> Result<Option<u64>> {
        let (index, loc) =
            match self.master(&MasterRequest::AppendChunk { path: path.into(), min_index: *min_index })? {
                MasterReply::AppendChunk { index, location } => (index, location),
                other => return Err(unexpected(self.inner.masters.given(), other)),
            };
        let (primary, chain, id) = self.push_to_replicas(&loc, data)?;
        let req = ChunkRequest::Append {
            handle: loc.handle,
            version: loc.version,
            id,
            len: data.len() as u64,
            secondaries: chain.into_iter().filter(|a| *a != primary).collect(),
            fence: self.fence.clone(),
        };
        match self.call(&primary, &req)? {
            ChunkReply::Appended { offset, failed } if failed.is_empty() => Ok(Some(index * CHUNK_SIZE + offset)),
            ChunkReply::ChunkFull { .. } => {
                // Even if a secondary missed the padding, the primary's chunk is full.
                *min_index = index + 1;
                Ok(None)
            }
            ChunkReply::Appended { failed, .. } => {
                Err(GfsError::fs(ErrorKind::Unavailable, format!("append failed on {}", failed.join(", "))))
            }
            other => Err(unexpected(&primary, other)),
        }
    }
}
