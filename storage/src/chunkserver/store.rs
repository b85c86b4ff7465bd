//! On-disk chunk storage. Each chunk is up to four files in the data directory:
//! `<handle>.dat` (the data, sparse, created on first write), `<handle>.crc` (one CRC32C per
//! 64 KiB block), `<handle>.ver` (the version, replaced atomically) and `<handle>.bad` (marks a
//! replica found corrupt; it is reported as such). Every block read is verified. Writes are in
//! [`write`].

mod write;

use super::aligned::{AlignedBuf, AlignedPool, DIRECT_ALIGN};
use crate::error::{ErrorKind, GfsError, IoContext, Result};
use crate::protocol::{ChunkHandle, Version};
use crate::sync::Unpoisoned;
use crate::{BLOCKS_PER_CHUNK, BLOCK_SIZE, CHUNK_SIZE};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

/// Largest piece read and verified at once.
pub const READ_PIECE: u64 = 1024 * 1024;

fn zero_block_crc() -> u32 {
    static CRC: OnceLock<u32> = OnceLock::new();
    *CRC.get_or_init(|| crc32c::crc32c(&vec![0u8; BLOCK_SIZE as usize]))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock_unpoisoned()
}

/// In-memory state of one chunk replica.
pub struct ChunkState {
    pub version: Version,
    crcs: Vec<u32>,
    data: Option<File>,
    /// The data file opened with `O_DIRECT`, for durable writes.
    direct: Option<File>,
    crc_file: File,
    pub corrupt: bool,
    /// Last serial applied as a secondary, for the current version.
    pub last_serial: u64,
    /// End of the highest byte written (the data file's size); appends go here.
    pub len: u64,
}

/// One chunk replica.
pub struct Chunk {
    pub handle: ChunkHandle,
    pub state: Mutex<ChunkState>,
    /// Held by the primary while it orders and applies one mutation: (version, next serial).
    pub order: Mutex<(Version, u64)>,
    /// Register fencing writes to this chunk (told by the master with each version change).
    pub register: Mutex<Option<String>>,
    /// What the chunk report says, kept beside `state` (and changed with it) so the heartbeat
    /// can read it while a mutation holds `state` through an fsync that may take seconds: a
    /// heartbeat that waited would have the master declare this server dead.
    reported: Reported,
}

/// A replica's version and corrupt mark as the heartbeat reports them.
struct Reported {
    version: AtomicU32,
    corrupt: AtomicBool,
}

impl Reported {
    fn new(version: Version, corrupt: bool) -> Reported {
        Reported { version: AtomicU32::new(version), corrupt: AtomicBool::new(corrupt) }
    }
}

/// All chunks of one chunkserver.
pub struct Store {
    dir: PathBuf,
    sync: bool,
    /// Large and durable writes and streaming reads use `O_DIRECT` (cleared if the file system
    /// refuses it).
    direct: AtomicBool,
    /// Aligned buffers for `O_DIRECT` writes, reused across mutations.
    staging: AlignedPool,
    chunks: Mutex<HashMap<ChunkHandle, Arc<Chunk>>>,
    /// Held while a chunk's files are created or replaced wholesale.
    making: Mutex<()>,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> GfsError {
    GfsError::fs(kind, msg)
}

impl Store {
    /// Opens (or creates) the store in `dir`, loading every chunk's version and checksums.
    pub fn open(dir: &Path, sync: bool) -> Result<Store> {
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let store = Store {
            dir: dir.to_path_buf(),
            sync,
            direct: AtomicBool::new(true),
            staging: AlignedPool::default(),
            chunks: Mutex::new(HashMap::new()),
            making: Mutex::new(()),
        };
        let rd = std::fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))?;
        for ent in rd {
            let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
            let name = ent.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(".tmp")) {
                let _ = std::fs::remove_file(ent.path()); // an interrupted copy
                continue;
            }
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".ver")) else {
                continue;
            };
            let Ok(handle) = u64::from_str_radix(hex, 16) else {
                continue;
            };
            match store.load(handle) {
                Ok(c) => {
                    lock(&store.chunks).insert(handle, Arc::new(c));
                }
                Err(e) => tracing::warn!(handle, "skipping unreadable chunk: {e}"),
            }
        }
        Ok(store)
    }

    /// Whether large and durable writes and streaming reads use `O_DIRECT` (on by default).
    pub fn set_direct(&self, on: bool) {
        self.direct.store(on, Ordering::Relaxed);
    }

    fn path(&self, handle: ChunkHandle, ext: &str) -> PathBuf {
        self.dir.join(format!("{handle:016x}.{ext}"))
    }

    fn load(&self, handle: ChunkHandle) -> Result<Chunk> {
        let vp = self.path(handle, "ver");
        let vb = std::fs::read(&vp).ctx(|| format!("reading {}", vp.display()))?;
        if vb.len() != 8 || crc32c::crc32c(&vb[..4]).to_le_bytes() != vb[4..8] {
            return Err(GfsError::Frame(format!("{} is damaged", vp.display())));
        }
        let version = u32::from_le_bytes([vb[0], vb[1], vb[2], vb[3]]);
        let cp = self.path(handle, "crc");
        let cb = std::fs::read(&cp).ctx(|| format!("reading {}", cp.display()))?;
        if cb.len() != BLOCKS_PER_CHUNK * 4 {
            return Err(GfsError::Frame(format!("{} has the wrong size", cp.display())));
        }
        let crcs = cb.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let crc_file =
            OpenOptions::new().read(true).write(true).open(&cp).ctx(|| format!("opening {}", cp.display()))?;
        let dp = self.path(handle, "dat");
        let data = match OpenOptions::new().read(true).write(true).open(&dp) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(GfsError::io(format!("opening {}", dp.display()), e)),
        };
        let len = match &data {
            Some(f) => f.metadata().ctx(|| format!("reading {}", dp.display()))?.len().min(CHUNK_SIZE),
            None => 0,
        };
        let corrupt = self.path(handle, "bad").exists();
        Ok(Chunk {
            handle,
            state: Mutex::new(ChunkState { version, crcs, data, direct: None, crc_file, corrupt, last_serial: 0, len }),
            order: Mutex::new((version, 1)),
            register: Mutex::new(None),
            reported: Reported::new(version, corrupt),
        })
    }

    pub fn get(&self, handle: ChunkHandle) -> Result<Arc<Chunk>> {
        lock(&self.chunks)
            .get(&handle)
            .cloned()
            .ok_or_else(|| err(ErrorKind::UnknownChunk, format!("unknown chunk handle {handle}")))
    }

    /// Handles of every chunk stored (without touching any chunk's lock).
    pub fn handles(&self) -> Vec<ChunkHandle> {
        lock(&self.chunks).keys().copied().collect()
    }

    /// Every chunk with its version (the chunk report), and those known to be corrupt.
    pub fn report(&self) -> (Vec<(ChunkHandle, Version)>, Vec<ChunkHandle>) {
        let chunks: Vec<Arc<Chunk>> = lock(&self.chunks).values().cloned().collect();
        let mut all = Vec::with_capacity(chunks.len());
        let mut corrupt = Vec::new();
        for c in &chunks {
            all.push((c.handle, c.reported.version.load(Ordering::Relaxed)));
            if c.reported.corrupt.load(Ordering::Relaxed) {
                corrupt.push(c.handle);
            }
        }
        (all, corrupt)
    }

    fn write_version(&self, handle: ChunkHandle, version: Version) -> Result<()> {
        let mut b = version.to_le_bytes().to_vec();
        b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        // Its own temporary name: two writers of the same chunk's version (a new chunk being
        // created while a copy of it is installed) must not rename each other's file.
        let tmp = self.temp_path(&format!("{handle:016x}.ver.{}", crate::util::random_id()));
        let dst = self.path(handle, "ver");
        let ctx = || format!("writing {}", tmp.display());
        let mut f = File::create(&tmp).ctx(ctx)?;
        f.write_all(&b).ctx(ctx)?;
        f.sync_all().ctx(ctx)?;
        std::fs::rename(&tmp, &dst).ctx(|| format!("renaming {}", dst.display()))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).ctx(|| format!("syncing {}", self.dir.display()))
    }

    /// Sets a chunk's version, creating the chunk (empty) if it is new. Versions only rise.
    pub fn set_version(&self, handle: ChunkHandle, version: Version) -> Result<()> {
        // Under `making`, which `install` holds while it replaces a chunk's files: the two never
        // interleave on the same files.
        let _making = lock(&self.making);
        let existing = lock(&self.chunks).get(&handle).cloned();
        if let Some(c) = existing {
            let mut s = lock(&c.state);
            if version < s.version {
                return Err(err(
                    ErrorKind::StaleVersion,
                    format!("chunk {handle}: version {version} is older than {}", s.version),
                ));
            }
            self.write_version(handle, version)?;
            s.version = version;
            c.reported.version.store(version, Ordering::Relaxed);
            s.last_serial = 0;
            return Ok(());
        }
        let cp = self.path(handle, "crc");
        let table: Vec<u8> = std::iter::repeat_n(zero_block_crc().to_le_bytes(), BLOCKS_PER_CHUNK).flatten().collect();
        let ctx = || format!("creating {}", cp.display());
        let mut crc_file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&cp).ctx(ctx)?;
        crc_file.write_all(&table).ctx(ctx)?;
        crc_file.sync_all().ctx(ctx)?;
        self.write_version(handle, version)?;
        let chunk = Chunk {
            handle,
            state: Mutex::new(ChunkState {
                version,
                crcs: vec![zero_block_crc(); BLOCKS_PER_CHUNK],
                data: None,
                direct: None,
                crc_file,
                corrupt: false,
                last_serial: 0,
                len: 0,
            }),
            order: Mutex::new((version, 1)),
            register: Mutex::new(None),
            reported: Reported::new(version, false),
        };
        lock(&self.chunks).insert(handle, Arc::new(chunk));
        Ok(())
    }

    /// Installs a replica built elsewhere: `data` (a file in this directory, already synced)
    /// becomes the chunk's data with checksums `crcs`, at `version`, replacing any local copy.
    /// The version file is written last, so a crash leaves at worst an older version.
    pub fn install(&self, handle: ChunkHandle, version: Version, data: &Path, crcs: &[u32]) -> Result<()> {
        if crcs.len() != BLOCKS_PER_CHUNK {
            return Err(err(ErrorKind::InvalidArgument, "checksum table has the wrong size"));
        }
        let _making = lock(&self.making);
        let mut chunks = lock(&self.chunks);
        chunks.remove(&handle);
        let _ = std::fs::remove_file(self.path(handle, "bad"));
        let dp = self.path(handle, "dat");
        std::fs::rename(data, &dp).ctx(|| format!("installing {}", dp.display()))?;
        let table: Vec<u8> = crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        let cp = self.path(handle, "crc");
        let ctx = || format!("writing {}", cp.display());
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&cp).ctx(ctx)?;
        f.write_all(&table).ctx(ctx)?;
        f.sync_all().ctx(ctx)?;
        self.write_version(handle, version)?;
        chunks.insert(handle, Arc::new(self.load(handle)?));
        Ok(())
    }

    /// Path for a temporary file in the store's directory.
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.tmp"))
    }

    /// Makes a local copy of chunk `from` (which must be at `version`) named `to`.
    pub fn copy_chunk(&self, from: ChunkHandle, to: ChunkHandle, version: Version) -> Result<()> {
        let src = self.get(from)?;
        let s = lock(&src.state);
        check_version(from, &s, version)?;
        if lock(&self.chunks).contains_key(&to) {
            return Ok(()); // already copied (a retry)
        }
        if s.data.is_some() {
            let (a, b) = (self.path(from, "dat"), self.path(to, "dat"));
            std::fs::copy(&a, &b).ctx(|| format!("copying {} to {}", a.display(), b.display()))?;
            if self.sync {
                File::open(&b).and_then(|f| f.sync_all()).ctx(|| format!("syncing {}", b.display()))?;
            }
        }
        let table: Vec<u8> = s.crcs.iter().flat_map(|c| c.to_le_bytes()).collect();
        let cp = self.path(to, "crc");
        let ctx = || format!("creating {}", cp.display());
        let mut crc_file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&cp).ctx(ctx)?;
        crc_file.write_all(&table).ctx(ctx)?;
        crc_file.sync_all().ctx(ctx)?;
        self.write_version(to, version)?;
        let chunk = self.load(to)?;
        lock(&self.chunks).insert(to, Arc::new(chunk));
        Ok(())
    }

    /// Deletes a chunk's files (the master no longer knows it).
    pub fn delete(&self, handle: ChunkHandle) {
        lock(&self.chunks).remove(&handle);
        for ext in ["ver", "crc", "dat", "bad"] {
            let _ = std::fs::remove_file(self.path(handle, ext));
        }
    }

    /// Marks the replica corrupt so it is no longer reported.
    pub fn mark_corrupt(&self, chunk: &Chunk) {
        lock(&chunk.state).corrupt = true;
        chunk.reported.corrupt.store(true, Ordering::Relaxed);
        let _ = File::create(self.path(chunk.handle, "bad"));
    }

    /// Current length of a replica (where the next record append goes).
    pub fn chunk_len(&self, chunk: &Chunk) -> u64 {
        lock(&chunk.state).len
    }

    /// Opens (creating it, sparse) the replica's data file on its first write.
    fn open_data(&self, handle: ChunkHandle, s: &mut ChunkState) -> Result<()> {
        if s.data.is_none() {
            let dp = self.path(handle, "dat");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&dp)
                .ctx(|| format!("creating {}", dp.display()))?;
            s.data = Some(f);
        }
        Ok(())
    }

    /// Pads a replica to the full chunk size (the rest reads as zeros), so a record append
    /// that does not fit moves on to the next chunk.
    pub fn pad(&self, chunk: &Chunk, version: Version) -> Result<()> {
        let mut s = lock(&chunk.state);
        check_version(chunk.handle, &s, version)?;
        self.open_data(chunk.handle, &mut s)?;
        if let Some(f) = &s.data {
            f.set_len(CHUNK_SIZE).ctx(|| format!("padding chunk {}", chunk.handle))?;
            if self.sync {
                f.sync_all().ctx(|| format!("padding chunk {}", chunk.handle))?;
            }
        }
        s.len = CHUNK_SIZE;
        Ok(())
    }

    /// Reads the blocks covering `[offset, offset + len)` (at most [`READ_PIECE`]) into `out`,
    /// verifying each, and returns where the requested bytes are in `out`. Never-written ranges
    /// read as zeros.
    pub fn read(
        &self,
        chunk: &Chunk,
        version: Version,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        let Some((first, last, end)) = read_span(offset, len)? else {
            return Ok(0..0);
        };
        out.clear();
        out.resize((last - first + 1) * BLOCK_SIZE as usize, 0);
        self.read_blocks(chunk, version, first, out, false, None)?;
        let base = first as u64 * BLOCK_SIZE;
        Ok((offset - base) as usize..(end - base) as usize)
    }

    /// As [`Store::read`], into a reused aligned buffer, with `O_DIRECT` when the store uses
    /// it: the disk's data lands in `out` without a page-cache copy. `block_crcs` is replaced
    /// by the checksums of the blocks in `out`, each just verified against its block, so a
    /// caller can derive checksums of whole blocks from them instead of reading the bytes again.
    pub fn read_aligned(
        &self,
        chunk: &Chunk,
        version: Version,
        offset: u64,
        len: u64,
        out: &mut AlignedBuf,
        block_crcs: &mut Vec<u32>,
    ) -> Result<std::ops::Range<usize>> {
        block_crcs.clear();
        let Some((first, last, end)) = read_span(offset, len)? else {
            return Ok(0..0);
        };
        let need = (last - first + 1) * BLOCK_SIZE as usize;
        if out.capacity() < need {
            *out = AlignedBuf::new(need);
        }
        self.read_blocks(chunk, version, first, &mut out.as_mut_slice()[..need], true, Some(block_crcs))?;
        let base = first as u64 * BLOCK_SIZE;
        Ok((offset - base) as usize..(end - base) as usize)
    }

    /// A reused aligned buffer of at least `len` bytes (for [`Store::read_aligned`]).
    pub fn take_buffer(&self, len: usize) -> AlignedBuf {
        self.staging.take(len)
    }

    pub fn give_buffer(&self, buf: AlignedBuf) {
        self.staging.give(buf)
    }

    /// Fills `buf` (whole blocks from block `first`) and verifies every block; the verified
    /// checksums go to `verified` if given.
    fn read_blocks(
        &self,
        chunk: &Chunk,
        version: Version,
        first: usize,
        buf: &mut [u8],
        direct: bool,
        verified: Option<&mut Vec<u32>>,
    ) -> Result<()> {
        let mut s = lock(&chunk.state);
        check_version(chunk.handle, &s, version)?;
        let base = first as u64 * BLOCK_SIZE;
        let ctx = || format!("reading chunk {}", chunk.handle);
        let use_direct = direct
            && s.data.is_some()
            && self.direct.load(Ordering::Relaxed)
            && self.open_direct(chunk.handle, &mut s)?;
        match (&s.data, &s.direct) {
            (Some(_), Some(df)) if use_direct => {
                // Only up to the end of the file (rounded to the alignment): a direct read
                // that ends short at the end of the file cannot be continued unaligned.
                let want = s.len.saturating_sub(base).min(buf.len() as u64).next_multiple_of(DIRECT_ALIGN as u64);
                let want = (want as usize).min(buf.len());
                let got = read_direct_at(df, &mut buf[..want], base).ctx(ctx)?;
                buf[got..].fill(0);
            }
            (Some(f), _) => read_full_at(f, buf, base).ctx(ctx)?,
            (None, _) => buf.fill(0),
        }
        for (i, blk) in buf.chunks_exact(BLOCK_SIZE as usize).enumerate() {
            let b = first + i;
            if crc32c::crc32c(blk) != s.crcs[b] {
                drop(s);
                self.mark_corrupt(chunk);
                return Err(err(ErrorKind::Corrupt, format!("chunk {}: block {b} is corrupt", chunk.handle)));
            }
        }
        if let Some(v) = verified {
            v.extend_from_slice(&s.crcs[first..first + buf.len() / BLOCK_SIZE as usize]);
        }
        Ok(())
    }

    /// Whether `chunk` is still the store's replica of its handle (not deleted or replaced).
    fn is_current(&self, chunk: &Chunk) -> bool {
        lock(&self.chunks).get(&chunk.handle).is_some_and(|c| std::ptr::eq(&**c, chunk))
    }

    /// Scrubs blocks `[first, first + count)` of a replica: verifies each against its stored
    /// checksum, as a read would. Holds the chunk's lock only for this piece, and only if it is
    /// free (a mutation holding it makes this return [`Scrubbed::Busy`]). Blocks past the end
    /// of the data file read as zeros, so their checksum must be that of zeros (no I/O needed).
    /// A bad block marks the replica corrupt, exactly as a failed read does.
    pub fn scrub(&self, chunk: &Chunk, first: usize, count: usize, buf: &mut Vec<u8>) -> Result<Scrubbed> {
        let s = match chunk.state.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(Scrubbed::Busy),
        };
        if s.corrupt {
            return Ok(Scrubbed::AlreadyCorrupt);
        }
        let end = first.saturating_add(count).min(BLOCKS_PER_CHUNK);
        let ctx = || format!("scrubbing chunk {}", chunk.handle);
        let file_len = match &s.data {
            Some(f) => f.metadata().ctx(ctx)?.len().min(CHUNK_SIZE),
            None => 0,
        };
        let io_end = end.min(file_len.div_ceil(BLOCK_SIZE) as usize);
        let mut read = 0;
        let mut bad = None;
        if let (Some(f), true) = (&s.data, first < io_end) {
            buf.clear();
            buf.resize((io_end - first) * BLOCK_SIZE as usize, 0);
            read_full_at(f, buf, first as u64 * BLOCK_SIZE).ctx(ctx)?;
            read = buf.len() as u64;
            bad = (first..io_end)
                .zip(buf.chunks_exact(BLOCK_SIZE as usize))
                .find_map(|(b, blk)| (crc32c::crc32c(blk) != s.crcs[b]).then_some(b));
        }
        if bad.is_none() {
            bad = (io_end.max(first)..end).find(|&b| s.crcs[b] != zero_block_crc());
        }
        drop(s);
        match bad {
            Some(block) if self.is_current(chunk) => {
                self.mark_corrupt(chunk);
                Ok(Scrubbed::Corrupt { block, read })
            }
            // Deleted or replaced while we looked: nothing to report.
            Some(_) => Ok(Scrubbed::AlreadyCorrupt),
            None => Ok(Scrubbed::Clean { read }),
        }
    }
}

/// What scrubbing a piece of a replica found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrubbed {
    /// Every block matched its checksum; `read` bytes came from disk.
    Clean { read: u64 },
    /// A mutation holds the chunk: try again later.
    Busy,
    /// The replica is already known corrupt (or is no longer stored): nothing to do.
    AlreadyCorrupt,
    /// `block` does not match its checksum; the replica is now marked corrupt.
    Corrupt { block: usize, read: u64 },
}

fn check_version(handle: ChunkHandle, s: &ChunkState, version: Version) -> Result<()> {
    if s.version != version {
        return Err(err(
            ErrorKind::StaleVersion,
            format!("chunk {handle}: replica has version {}, request has {version}", s.version),
        ));
    }
    Ok(())
}

/// First and last block and the end of a read of `len` bytes at `offset` (None if empty).
fn read_span(offset: u64, len: u64) -> Result<Option<(usize, usize, u64)>> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= CHUNK_SIZE && len <= READ_PIECE)
        .ok_or_else(|| err(ErrorKind::ReadPastEnd, format!("read at {offset}+{len} past the chunk end")))?;
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(((offset / BLOCK_SIZE) as usize, ((end - 1) / BLOCK_SIZE) as usize, end)))
}

/// Reads `buf` at `off` of an `O_DIRECT` file (aligned buffer, offset and length); returns how
/// much was read, short only at the end of the file.
fn read_direct_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    // An O_DIRECT read that ends off the alignment has reached the end of the file.
    read_until(f, buf, off, |done| done % DIRECT_ALIGN != 0)
}

/// Reads as much as the file has at `off`; the rest of `buf` is left as zeros.
fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let done = read_until(f, buf, off, |_| false)?;
    buf[done..].fill(0);
    Ok(())
}

/// Fills `buf` from `off` until it is full, the file ends, or `at_end(bytes read so far)` says
/// the file ended; returns the bytes read.
fn read_until(f: &File, buf: &mut [u8], off: u64, at_end: impl Fn(usize) -> bool) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if at_end(done) {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
