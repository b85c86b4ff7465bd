//! Writing replicas: block checksums, `O_DIRECT` for durable writes, buffered ones for writes
//! acknowledged from memory, and the explicit sync that makes the latter durable.

use super::{check_version, err, lock, read_full_at, Chunk, ChunkState, Store};
use crate::error::{ErrorKind, GfsError, IoContext, Result};
use crate::protocol::{ChunkHandle, Version};
use crate::util::{is_disk_failure, is_disk_full};
use crate::{BLOCK_SIZE, CHUNK_SIZE};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

/// Smallest write acknowledged from memory that still goes through `O_DIRECT`.
const DIRECT_MIN: usize = 256 * 1024;

impl Store {
    /// Writes `data` at `offset` of the chunk at `version`, durably (see [`Store::write_as`]).
    pub fn write(&self, chunk: &Chunk, version: Version, offset: u64, data: &[u8]) -> Result<()> {
        self.write_as(chunk, version, offset, data, true)
    }

    /// Writes `data` at `offset` of the chunk at `version`, updating block checksums. Blocks
    /// only partly overwritten are verified first. `durable`: the data and checksums are on
    /// disk before this returns (unless the store was opened without sync); otherwise they
    /// may still be in the page cache until [`Store::sync_chunk`].
    ///
    /// Durable writes, and large ones at either level, go through `O_DIRECT` from a reused
    /// aligned buffer that covers whole 64 KiB blocks: the kernel then copies nothing into
    /// the page cache (the costliest step of a buffered write here; measured, a 1 GiB put of
    /// large pieces acknowledged from memory cost more CPU buffered than durable with
    /// `O_DIRECT`, as the page cache filled and had to be written back and reclaimed), and
    /// the fdatasync that follows has only the allocation metadata and the checksum page to
    /// flush. Small writes acknowledged from memory (a VM disk's 4 KiB) stay buffered: their
    /// edge blocks are then likely still cached, and no sync follows.
    pub fn write_as(&self, chunk: &Chunk, version: Version, offset: u64, data: &[u8], durable: bool) -> Result<()> {
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= CHUNK_SIZE).ok_or_else(|| {
            err(ErrorKind::ReadPastEnd, format!("write at {offset}+{} past the chunk end", data.len()))
        })?;
        if data.is_empty() {
            return Ok(());
        }
        let mut s = lock(&chunk.state);
        check_version(chunk.handle, &s, version)?;
        self.open_data(chunk.handle, &mut s)?;
        let direct = durable || data.len() >= DIRECT_MIN;
        if direct && self.direct.load(Ordering::Relaxed) && self.open_direct(chunk.handle, &mut s)? {
            return self.write_direct(chunk, s, offset, data, durable);
        }
        let first = (offset / BLOCK_SIZE) as usize;
        let last = ((end - 1) / BLOCK_SIZE) as usize;
        let mut new_crcs = Vec::with_capacity(last - first + 1);
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        for b in first..=last {
            let bs = b as u64 * BLOCK_SIZE;
            let (lo, hi) = (offset.max(bs), end.min(bs + BLOCK_SIZE));
            let piece = &data[(lo - offset) as usize..(hi - offset) as usize];
            if lo == bs && hi == bs + BLOCK_SIZE {
                new_crcs.push(crc32c::crc32c(piece));
            } else {
                if !read_verified(&s, chunk.handle, b, &mut block)? {
                    drop(s);
                    return Err(self.found_corrupt(chunk, b));
                }
                block[(lo - bs) as usize..(hi - bs) as usize].copy_from_slice(piece);
                new_crcs.push(crc32c::crc32c(&block));
            }
        }
        let Some(f) = s.data.as_ref() else {
            return Err(err(ErrorKind::Io, "chunk data file missing"));
        };
        let io_err = |what: &str, e: std::io::Error| write_error(chunk.handle, what, e);
        reserve(f, offset, data.len() as u64).map_err(|e| io_err("reserving space", e))?;
        f.write_all_at(data, offset).map_err(|e| io_err("writing data", e))?;
        self.finish_write(chunk.handle, &mut s, first, &new_crcs, end, durable)
    }

    /// The `O_DIRECT` half of [`Store::write_as`]: builds the whole blocks the write touches in
    /// an aligned buffer (edge blocks read and verified first), writes them in one call, then
    /// trims the file back if the last block reached past the written end.
    fn write_direct(
        &self,
        chunk: &Chunk,
        mut s: MutexGuard<'_, ChunkState>,
        offset: u64,
        data: &[u8],
        durable: bool,
    ) -> Result<()> {
        let end = offset + data.len() as u64;
        let first = (offset / BLOCK_SIZE) as usize;
        let last = ((end - 1) / BLOCK_SIZE) as usize;
        let lo = first as u64 * BLOCK_SIZE;
        let hi = (last as u64 + 1) * BLOCK_SIZE;
        let span = (hi - lo) as usize;
        let bs = BLOCK_SIZE as usize;
        let mut staging = self.staging.take(span);
        let buf = &mut staging.as_mut_slice()[..span];
        let mut bad = None;
        if offset > lo && !read_verified(&s, chunk.handle, first, &mut buf[..bs])? {
            bad = Some(first);
        }
        let last_partial = end < hi && (last != first || offset == lo);
        if bad.is_none() && last_partial && !read_verified(&s, chunk.handle, last, &mut buf[span - bs..])? {
            bad = Some(last);
        }
        if let Some(b) = bad {
            drop(s);
            self.staging.give(staging);
            return Err(self.found_corrupt(chunk, b));
        }
        buf[(offset - lo) as usize..(end - lo) as usize].copy_from_slice(data);
        let new_crcs: Vec<u32> = buf.chunks_exact(bs).map(crc32c::crc32c).collect();
        let written = (|| {
            let io_err = |what: &str, e: std::io::Error| write_error(chunk.handle, what, e);
            let (Some(f), Some(df)) = (s.data.as_ref(), s.direct.as_ref()) else {
                return Err(err(ErrorKind::Io, "chunk data file missing"));
            };
            reserve(f, lo, span as u64).map_err(|e| io_err("reserving space", e))?;
            df.write_all_at(buf, lo).map_err(|e| io_err("writing data", e))?;
            let size = s.len.max(end);
            if hi > size {
                f.set_len(size).map_err(|e| io_err("trimming the data file", e))?;
            }
            Ok(())
        })();
        self.staging.give(staging);
        written?;
        self.finish_write(chunk.handle, &mut s, first, &new_crcs, end, durable)
    }

    /// Stores the new checksums of blocks `first..` and syncs if asked.
    fn finish_write(
        &self,
        handle: ChunkHandle,
        s: &mut ChunkState,
        first: usize,
        new_crcs: &[u32],
        end: u64,
        durable: bool,
    ) -> Result<()> {
        let io_err = |what: &str, e: std::io::Error| write_error(handle, what, e);
        let crc_bytes: Vec<u8> = new_crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        s.crc_file.write_all_at(&crc_bytes, first as u64 * 4).map_err(|e| io_err("writing checksums", e))?;
        if durable && self.sync {
            sync_both(s.data.as_ref(), &s.crc_file).map_err(|(what, e)| io_err(what, e))?;
        }
        s.crcs[first..first + new_crcs.len()].copy_from_slice(new_crcs);
        s.len = s.len.max(end);
        Ok(())
    }

    /// Marks the replica corrupt after block `b` failed verification; the error to return.
    fn found_corrupt(&self, chunk: &Chunk, b: usize) -> GfsError {
        self.mark_corrupt(chunk);
        err(ErrorKind::Corrupt, format!("chunk {}: block {b} is corrupt", chunk.handle))
    }

    /// Makes everything written to a replica so far durable (data and checksums), for
    /// mutations that were acknowledged from memory.
    pub fn sync_chunk(&self, handle: ChunkHandle) -> Result<()> {
        let chunk = self.get(handle)?;
        let s = lock(&chunk.state);
        sync_both(s.data.as_ref(), &s.crc_file).map_err(|(what, e)| write_error(handle, what, e))
    }

    /// Opens the replica's `O_DIRECT` handle; false if this file system refuses `O_DIRECT`
    /// (tmpfs, say), after which the store writes buffered.
    pub(super) fn open_direct(&self, handle: ChunkHandle, s: &mut ChunkState) -> Result<bool> {
        if s.direct.is_some() {
            return Ok(true);
        }
        let dp = self.path(handle, "dat");
        match OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&dp) {
            Ok(f) => {
                s.direct = Some(f);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(dir = %self.dir.display(), "O_DIRECT not supported here; writing buffered");
                self.direct.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(GfsError::io(format!("opening {} for direct writes", dp.display()), e)),
        }
    }
}

/// fdatasyncs a replica's data and checksum files side by side: each sync waits on the disk, and
/// two in flight at once cost about one (the file system commits them together), where one
/// after the other cost two.
fn sync_both(data: Option<&File>, crcs: &File) -> std::result::Result<(), (&'static str, std::io::Error)> {
    let Some(data) = data else {
        return crcs.sync_data().map_err(|e| ("syncing checksums", e));
    };
    std::thread::scope(|s| {
        let checksums = s.spawn(|| crcs.sync_data());
        let data = data.sync_data().map_err(|e| ("syncing data", e));
        let checksums = checksums.join().unwrap_or_else(|_| Err(std::io::Error::other("the sync thread panicked")));
        data.and(checksums.map_err(|e| ("syncing checksums", e)))
    })
}

/// Reads block `b` into `block` (zeros past the end of the data file); whether it matches its
/// checksum.
fn read_verified(s: &ChunkState, handle: ChunkHandle, b: usize, block: &mut [u8]) -> Result<bool> {
    block.fill(0);
    if let Some(f) = &s.data {
        read_full_at(f, block, b as u64 * BLOCK_SIZE).ctx(|| format!("reading chunk {handle}"))?;
    }
    Ok(crc32c::crc32c(block) == s.crcs[b])
}

fn write_error(handle: ChunkHandle, what: &str, e: std::io::Error) -> GfsError {
    if is_disk_full(&e) {
        err(ErrorKind::DiskFull, format!("chunk {handle}: {what}: disk full"))
    } else if is_disk_failure(&e) {
        err(ErrorKind::DiskFailed, format!("chunk {handle}: {what}: disk failed: {e}"))
    } else {
        GfsError::io(format!("chunk {handle}: {what}"), e)
    }
}

/// Allocates disk space for a range so that a full disk fails before any byte is overwritten.
fn reserve(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `f` and
    // stays open for the duration of the call.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off, l) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Filesystems without fallocate: fall through to the write, which reports ENOSPC itself.
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}
