//! The client's data path: writes are split at chunk boundaries and at [`MAX_MUTATION`]; each
//! piece is pushed along the chain of replicas and then committed by the primary. Reads go to
//! one replica and resume on another where one fails.

use super::stream::{run_windowed, STREAM_PIECE, STREAM_WINDOW};
use super::Durability;
use super::{unexpected, Client};
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkLocation, ChunkReply, ChunkRequest, Conn, Received, Reply};
use crate::sync::Unpoisoned;
use crate::util::random_id;
use crate::{CHUNK_SIZE, DATA_FRAME, MAX_MUTATION};
use std::sync::Mutex;
use std::time::{Duration, Instant};

impl Client {
    /// Writes all of `data` at `offset` of `path`, then raises the file size if needed.
    /// Large writes keep up to [`STREAM_WINDOW`] mutations in flight.
    pub fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let end = checked_end(offset, data.len())?;
        self.write_span(path, offset, data, STREAM_WINDOW)?;
        if !data.is_empty() {
            self.extend_size(path, end)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` as mutations cut at chunk boundaries and at
    /// [`MAX_MUTATION`], up to `window` at once; does not touch the file size.
    pub(super) fn write_span(&self, path: &str, offset: u64, data: &[u8], window: usize) -> Result<()> {
        let end = checked_end(offset, data.len())?;
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let n = (end - pos).min(CHUNK_SIZE - pos % CHUNK_SIZE).min(MAX_MUTATION);
            pieces.push((pos, n as usize));
            pos += n;
        }
        run_windowed(pieces.len(), window, |i| {
            let (at, n) = pieces[i];
            let start = (at - offset) as usize;
            self.write_piece(path, at / CHUNK_SIZE, at % CHUNK_SIZE, &data[start..start + n])
        })
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (short only at end of file).
    /// Large reads keep up to [`STREAM_WINDOW`] pieces in flight.
    pub fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if buf.len() <= STREAM_PIECE {
            return self.read_span(path, offset, buf);
        }
        let pieces: Vec<Mutex<(&mut [u8], usize)>> = buf.chunks_mut(STREAM_PIECE).map(|b| Mutex::new((b, 0))).collect();
        run_windowed(pieces.len(), STREAM_WINDOW, |i| {
            let mut p = pieces[i].lock_unpoisoned();
            let (b, got) = &mut *p;
            *got = self.read_span(path, offset + (i * STREAM_PIECE) as u64, b)?;
            Ok(())
        })?;
        let mut done = 0;
        for p in pieces {
            let (b, got) = p.into_inner_unpoisoned();
            done += got;
            if got < b.len() {
                break; // end of file: later pieces read nothing (or raced with a writer)
            }
        }
        Ok(done)
    }

    /// One piece of `read_at`, chunk by chunk.
    pub(super) fn read_span(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let idx = pos / CHUNK_SIZE;
            let cached = self.inner.cache.get_read(path, idx);
            let fresh = cached.is_none();
            let (size, loc) = match cached {
                Some(c) => c,
                None => self.get_chunk(path, idx, false)?,
            };
            if pos >= size {
                break;
            }
            let coff = pos % CHUNK_SIZE;
            let n = ((buf.len() - done) as u64).min(CHUNK_SIZE - coff).min(size - pos) as usize;
            let out = &mut buf[done..done + n];
            match loc {
                None => out.fill(0),
                Some(l) => {
                    if let Err(e) = self.read_chunk(&l, coff, out) {
                        // Perhaps only the cached location was stale: ask the master again.
                        self.inner.cache.forget(path, idx);
                        if fresh {
                            return Err(e);
                        }
                        continue;
                    }
                }
            }
            done += n;
        }
        Ok(done)
    }

    fn write_piece(&self, path: &str, idx: u64, coff: u64, data: &[u8]) -> Result<()> {
        let deadline = Instant::now() + self.inner.retry.unavailable_wait;
        let mut failures = 0u32;
        let mut backoff = Duration::from_millis(50);
        // The first refusal by a full or failing disk, said once the write went through
        // elsewhere (a write that fails in the end reports its own error, in one line).
        let mut disk_refusal: Option<(GfsError, Instant)> = None;
        loop {
            let result = self.write_location(path, idx).and_then(|loc| self.mutate(path, idx, &loc, coff, data));
            let e = match result {
                Ok(()) => {
                    if let Some((refusal, at)) = disk_refusal {
                        tracing::warn!(
                            path,
                            idx,
                            "a write went through {:?} after a chunkserver's disk refused it: {refusal}",
                            at.elapsed()
                        );
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            self.forget_lease(path, idx);
            let waiting =
                matches!(e.kind(), Some(ErrorKind::Unavailable | ErrorKind::NoReplicas)) && Instant::now() < deadline;
            if is_permanent(&e) {
                return Err(e);
            }
            if !waiting {
                failures += 1;
                if failures >= self.inner.retry.attempts {
                    return Err(GfsError::WriteFailed { attempts: failures, last: e.to_string() });
                }
            }
            tracing::debug!(path, idx, "mutation failed, retrying: {e}");
            if disk_refusal.is_none() && matches!(e.kind(), Some(ErrorKind::DiskFull | ErrorKind::DiskFailed)) {
                // The master hears of the disk from its chunkserver at once and gives the chunk
                // a new version without it; the retry goes there.
                disk_refusal = Some((e, Instant::now()));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn write_location(&self, path: &str, idx: u64) -> Result<ChunkLocation> {
        if let Some(loc) = self.inner.cache.get_write(path, idx) {
            return Ok(loc);
        }
        let (_, loc) = self.get_chunk(path, idx, true)?;
        loc.ok_or_else(|| GfsError::fs(ErrorKind::NoReplicas, "master returned no chunk for a write"))
    }

    fn forget_lease(&self, path: &str, idx: u64) {
        self.inner.cache.forget(path, idx);
    }

    /// One attempt: push the data along the chain, then ask the primary to commit it; a small
    /// write goes to the primary with its data instead.
    fn mutate(&self, path: &str, idx: u64, loc: &ChunkLocation, coff: u64, data: &[u8]) -> Result<()> {
        if self.inline_write_max > 0 && data.len() as u64 <= self.inline_write_max {
            return self.mutate_inline(path, idx, loc, coff, data);
        }
        let (primary, chain, id) = self.push_to_replicas(loc, data)?;
        if self.durability == Durability::Flush {
            // Noted before the commit: a write that fails half-way may still have reached
            // some replicas' memory, and a retry may land elsewhere; sync covers them all.
            self.inner.dirty.note(path, idx, loc.handle, &chain);
        }
        let secondaries: Vec<String> = chain.into_iter().filter(|a| *a != primary).collect();
        let write = ChunkRequest::Write {
            handle: loc.handle,
            version: loc.version,
            offset: coff,
            id,
            secondaries,
            fence: self.fence.clone(),
        };
        let req = match self.durability {
            Durability::Sync => write,
            Durability::Flush => ChunkRequest::Unsynced(Box::new(write)),
        };
        match self.call(&primary, &req)? {
            ChunkReply::Written { failed } if failed.is_empty() => Ok(()),
            ChunkReply::Written { failed } => {
                Err(GfsError::fs(ErrorKind::Unavailable, format!("mutation failed on {}", failed.join(", "))))
            }
            other => Err(unexpected(&primary, other)),
        }
    }

    /// One attempt at a small write: the primary gets the data with the request and sends it
    /// on to the secondaries with the order to apply it.
    fn mutate_inline(&self, path: &str, idx: u64, loc: &ChunkLocation, coff: u64, data: &[u8]) -> Result<()> {
        let primary = loc.primary.clone().ok_or_else(|| GfsError::fs(ErrorKind::NoLease, "no primary"))?;
        if self.durability == Durability::Flush {
            // Before the write, as in `mutate`.
            let mut replicas = loc.replicas.clone();
            if !replicas.contains(&primary) {
                replicas.push(primary.clone());
            }
            self.inner.dirty.note(path, idx, loc.handle, &replicas);
        }
        let write = ChunkRequest::WriteInline {
            handle: loc.handle,
            version: loc.version,
            offset: coff,
            len: data.len() as u64,
            secondaries: loc.replicas.iter().filter(|a| **a != primary).cloned().collect(),
            fence: self.fence.clone(),
            durable: self.durability == Durability::Sync,
        };
        let reply = self.inner.pool.call_with_data::<_, Reply<ChunkReply>>(&primary, &write, data);
        match reply?.map_err(|error| GfsError::Remote { peer: primary.clone(), error })? {
            ChunkReply::Written { failed } if failed.is_empty() => Ok(()),
            ChunkReply::Written { failed } => {
                Err(GfsError::fs(ErrorKind::Unavailable, format!("mutation failed on {}", failed.join(", "))))
            }
            other => Err(unexpected(&primary, other)),
        }
    }

    pub(super) fn call(&self, addr: &str, req: &ChunkRequest) -> Result<ChunkReply> {
        let mut c = self.inner.pool.get(addr)?;
        c.send(req)?;
        let r = c.recv::<Reply<ChunkReply>>()?;
        self.inner.pool.put(c);
        r.map_err(|error| GfsError::Remote { peer: addr.to_string(), error })
    }

    /// Streams `data` to the first replica, which forwards along the chain while it receives.
    /// Pushes `data` along the chain of the chunk's replicas (the primary included), as the first
    /// step of a mutation; returns the primary, the chain and the id the data is buffered under.
    pub(super) fn push_to_replicas(&self, loc: &ChunkLocation, data: &[u8]) -> Result<(String, Vec<String>, u64)> {
        let primary = loc.primary.clone().ok_or_else(|| GfsError::fs(ErrorKind::NoLease, "no primary"))?;
        let mut chain = loc.replicas.clone();
        if !chain.contains(&primary) {
            chain.push(primary.clone());
        }
        let id = random_id();
        let failed = self.push(&chain, id, data)?;
        if !failed.is_empty() {
            return Err(GfsError::fs(ErrorKind::Unavailable, format!("push failed on {}", failed.join(", "))));
        }
        Ok((primary, chain, id))
    }

    pub(super) fn push(&self, chain: &[String], id: u64, data: &[u8]) -> Result<Vec<String>> {
        let Some((first, rest)) = chain.split_first() else {
            return Err(GfsError::fs(ErrorKind::NoReplicas, "empty replica chain"));
        };
        let mut c = match self.inner.pool.get(first) {
            Ok(c) => c,
            Err(_) => return Ok(chain.to_vec()),
        };
        let sent = (|| {
            c.queue(&ChunkRequest::Push { id, len: data.len() as u64, chain: rest.to_vec() })?;
            for piece in data.chunks(DATA_FRAME) {
                c.queue_data(piece)?;
            }
            c.flush()?;
            c.recv::<Reply<ChunkReply>>()
        })();
        match sent {
            Ok(Ok(ChunkReply::Pushed { failed })) => {
                self.inner.pool.put(c);
                Ok(failed)
            }
            Ok(Ok(other)) => Err(unexpected(first, other)),
            Ok(Err(error)) => Err(GfsError::Remote { peer: first.clone(), error }),
            Err(e) => {
                tracing::debug!(%first, "push failed: {e}");
                self.inner.pool.forget(first);
                Ok(chain.to_vec())
            }
        }
    }

    /// Reads `out.len()` bytes at `coff` of a chunk, moving to the next replica where one fails
    /// and resuming from the last byte received.
    fn read_chunk(&self, loc: &ChunkLocation, coff: u64, out: &mut [u8]) -> Result<()> {
        let n = loc.replicas.len();
        if n == 0 {
            return Err(GfsError::fs(ErrorKind::NoReplicas, format!("chunk {}: no replica available", loc.handle)));
        }
        let mut r = (random_id() % n as u64) as usize;
        let mut got = 0usize;
        let mut stuck = 0usize;
        let mut errors = Vec::new();
        while got < out.len() {
            let addr = &loc.replicas[r % n];
            let before = got;
            match self.read_from(addr, loc, coff, out, &mut got) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(%addr, handle = loc.handle, "read failed: {e}");
                    errors.push(format!("{addr}: {e}"));
                    stuck = if got > before { 1 } else { stuck + 1 };
                    if stuck > n {
                        return Err(GfsError::ReadFailed(errors.join("; ")));
                    }
                    r += 1;
                }
            }
        }
        Ok(())
    }

    fn read_from(&self, addr: &str, loc: &ChunkLocation, coff: u64, out: &mut [u8], got: &mut usize) -> Result<()> {
        let mut c = self.inner.pool.get(addr)?;
        let want = (out.len() - *got) as u64;
        c.send(&ChunkRequest::Read {
            handle: loc.handle,
            version: loc.version,
            offset: coff + *got as u64,
            len: want,
        })?;
        let remote = |error| GfsError::Remote { peer: addr.to_string(), error };
        match c.recv::<Reply<ChunkReply>>()? {
            Ok(ChunkReply::Reading { len }) if len == want => {}
            Ok(other) => return Err(unexpected(addr, other)),
            Err(error) => {
                self.inner.pool.put(c);
                return Err(remote(error));
            }
        }
        // Data frames land straight in `out`; only an error message needs a buffer of its own.
        let mut msg = Vec::new();
        while *got < out.len() {
            match c.recv_data_into(&mut out[*got..], &mut msg)? {
                Received::Data(n, _) => *got += n,
                Received::TooLong(_) => return Err(unexpected(addr, "more data than asked for")),
                Received::Msg => {
                    let r: Reply<ChunkReply> = Conn::decode_msg(&msg)?;
                    self.inner.pool.put(c);
                    return Err(match r {
                        Err(error) => remote(error),
                        Ok(other) => unexpected(addr, other),
                    });
                }
            }
        }
        self.inner.pool.put(c);
        Ok(())
    }
}

/// End of a write of `len` bytes at `offset`, if within the largest file size.
pub(super) fn checked_end(offset: u64, len: usize) -> Result<u64> {
    offset
        .checked_add(len as u64)
        .filter(|&e| e <= crate::MAX_FILE_SIZE)
        .ok_or_else(|| GfsError::fs(ErrorKind::InvalidArgument, "write beyond the largest file size"))
}

/// Whether a mutation's error is final: retrying against other replicas or a new lease cannot
/// help (a fenced writer, a bad path or argument). A full or failing disk is not: the master
/// moves the chunk to replicas whose disks take writes, and only when every disk is full do the
/// attempts run out (with the disks' own error).
pub(super) fn is_permanent(e: &GfsError) -> bool {
    matches!(e.kind(), Some(ErrorKind::Fenced))
        || matches!(e, GfsError::Fs(r) if matches!(
            r.kind,
            ErrorKind::NotFound | ErrorKind::IsADirectory | ErrorKind::InvalidPath | ErrorKind::InvalidArgument
        ))
}
