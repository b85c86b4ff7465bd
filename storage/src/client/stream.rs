//! Streaming: sliding windows of pieces for `put`, `get`, `cat`, `write` and large
//! `write_at` / `read_at`. A piece's buffer goes back to work as soon as its piece is done, so
//! the pipeline never drains between batches, and memory stays at `piece * window`.

use super::Client;
use crate::error::{ErrorKind, GfsError, Result};
use crate::sync::Unpoisoned;
use crate::MAX_MUTATION;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

/// Piece size used by the streaming helpers (one mutation per piece).
pub(super) const STREAM_PIECE: usize = MAX_MUTATION as usize;
/// Pieces in flight at once in the streaming helpers and in large `write_at` / `read_at`.
pub const STREAM_WINDOW: usize = 8;

/// How the streaming calls cut their work: pieces of `piece` bytes, at most `window` of them
/// in flight at once. While earlier pieces are being pushed, committed or read, the next one
/// is already read from the source (or from gfs), so the pipeline never drains between
/// batches; memory stays bounded by `piece * window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOpts {
    pub piece: usize,
    pub window: usize,
}

impl Default for StreamOpts {
    fn default() -> Self {
        StreamOpts { piece: STREAM_PIECE, window: STREAM_WINDOW }
    }
}

impl StreamOpts {
    fn checked(self) -> Result<StreamOpts> {
        if self.piece == 0 || self.window == 0 || self.piece > crate::MAX_RECORD as usize {
            return Err(GfsError::fs(
                ErrorKind::InvalidArgument,
                format!("stream piece must be 1..={} bytes and window at least 1", crate::MAX_RECORD),
            ));
        }
        Ok(self)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(GfsError::io("reading input", e)),
        }
    }
    Ok(filled)
}

/// Runs `job(0..n)` on up to `window` threads, each taking the next index when it is done
/// with one; stops handing out work at the first error and returns it.
pub(super) fn run_windowed(n: usize, window: usize, job: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    if n <= 1 || window <= 1 {
        return (0..n).try_for_each(job);
    }
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<GfsError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..window.min(n) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if let Err(e) = job(i) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock_unpoisoned().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner_unpoisoned() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn thread_panicked(what: &str) -> GfsError {
    GfsError::fs(ErrorKind::Io, format!("{what} thread panicked"))
}

impl Client {
    /// Copies the whole file to `w`; returns the bytes copied (see [`Client::read_stream`]).
    pub fn read_to(&self, path: &str, w: &mut impl Write) -> Result<u64> {
        self.read_stream(path, w, StreamOpts::default())
    }

    /// Copies the whole file to `w` in pieces of `opts.piece` bytes: up to `opts.window`
    /// pieces are read at once (spread over replicas) while finished ones are written out in
    /// order; a reader takes the next piece as soon as its buffer comes back.
    pub fn read_stream(&self, path: &str, w: &mut impl Write, opts: StreamOpts) -> Result<u64> {
        let StreamOpts { piece, window } = opts.checked()?;
        let next = AtomicU64::new(0);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let free_rx = Mutex::new(free_rx);
        let (done_tx, done_rx) = mpsc::channel::<(u64, Vec<u8>, Result<usize>)>();
        for _ in 0..window {
            let _ = free_tx.send(vec![0u8; piece]);
        }
        std::thread::scope(|s| {
            for _ in 0..window {
                let done_tx = done_tx.clone();
                let (free_rx, next) = (&free_rx, &next);
                s.spawn(move || loop {
                    // Taking the buffer and the piece number under one lock keeps pieces in
                    // the order buffers come free, so the writer never waits on a late one
                    // that no reader has started.
                    let (mut buf, k) = {
                        let rx = free_rx.lock_unpoisoned();
                        match rx.recv() {
                            Ok(b) => (b, next.fetch_add(1, Ordering::Relaxed)),
                            Err(_) => return, // the writer is finished
                        }
                    };
                    let r = self.read_span(path, k * piece as u64, &mut buf);
                    if done_tx.send((k, buf, r)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            let mut ready: BTreeMap<u64, (Vec<u8>, usize)> = BTreeMap::new();
            let mut expect = 0u64;
            let mut total = 0u64;
            let result = (|| loop {
                let (k, buf, r) = done_rx.recv().map_err(|_| thread_panicked("reader"))?;
                ready.insert(k, (buf, r?));
                while let Some((buf, n)) = ready.remove(&expect) {
                    w.write_all(&buf[..n]).map_err(|e| GfsError::io("writing output", e))?;
                    total += n as u64;
                    expect += 1;
                    if n < piece {
                        return Ok(total);
                    }
                    let _ = free_tx.send(buf);
                }
            })();
            drop(free_tx); // readers waiting for a buffer see the end and stop
            result
        })
    }

    /// Writes everything from `r` into `path` starting at offset 0; returns the bytes written
    /// (see [`Client::write_stream`]).
    pub fn write_from(&self, path: &str, r: &mut impl Read) -> Result<u64> {
        self.write_stream(path, 0, r, StreamOpts::default())
    }

    /// Writes everything from `r` at `offset` of `path` in pieces of `opts.piece` bytes: the
    /// next piece is read from `r` while up to `opts.window` earlier ones are being pushed
    /// and committed, and a buffer is refilled as soon as its piece is acknowledged. The file
    /// size is raised once, at the end. Returns the bytes written.
    pub fn write_stream(&self, path: &str, offset: u64, r: &mut impl Read, opts: StreamOpts) -> Result<u64> {
        let StreamOpts { piece, window } = opts.checked()?;
        let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Vec<u8>, usize)>(window);
        let work_rx = Mutex::new(work_rx);
        let (done_tx, done_rx) = mpsc::channel::<(Vec<u8>, Result<()>)>();
        let total = std::thread::scope(|s| {
            for _ in 0..window {
                let done_tx = done_tx.clone();
                let work_rx = &work_rx;
                s.spawn(move || loop {
                    let job = work_rx.lock_unpoisoned().recv();
                    let Ok((at, buf, n)) = job else {
                        return; // no more pieces
                    };
                    let r = self.write_span(path, at, &buf[..n], 1);
                    if done_tx.send((buf, r)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            let mut allocated = 0usize;
            let mut in_flight = 0usize;
            let mut first_error: Option<GfsError> = None;
            let mut pos = offset;
            loop {
                let mut buf = if allocated < window {
                    allocated += 1;
                    vec![0u8; piece]
                } else {
                    let (b, r) = done_rx.recv().map_err(|_| thread_panicked("writer"))?;
                    in_flight -= 1;
                    if let Err(e) = r {
                        first_error = Some(e);
                        break;
                    }
                    b
                };
                let n = match fill(r, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        first_error = Some(e);
                        break;
                    }
                };
                if n > 0 {
                    super::data::checked_end(pos, n)?;
                    work_tx.send((pos, buf, n)).map_err(|_| thread_panicked("writer"))?;
                    in_flight += 1;
                    pos += n as u64;
                }
                if n < piece {
                    break;
                }
            }
            drop(work_tx);
            for _ in 0..in_flight {
                let (_, r) = done_rx.recv().map_err(|_| thread_panicked("writer"))?;
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(pos - offset),
            }
        })?;
        if total > 0 {
            self.extend_size(path, offset + total)?;
        }
        Ok(total)
    }
}
