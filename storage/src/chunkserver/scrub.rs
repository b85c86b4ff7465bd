//! Background scrubber: walks every stored replica and verifies every block against its
//! stored CRC32C, so corruption in data nobody reads is still found. A bad block is handled
//! exactly like a failed read: the replica is marked corrupt and reported to the master (at
//! once, and in every heartbeat after), whose repair copies a good replica elsewhere and then
//! drops this one.
//!
//! It goes gently: one full pass every `scrub_interval`, a pause between chunks, at most
//! `scrub_rate` bytes a second, and a chunk's lock is only taken for one piece
//! ([`READ_PIECE`]) at a time and only if no mutation holds it; a chunk still busy after a few
//! tries is skipped until the next pass. I/O errors are logged and the pass goes on.

use super::heartbeat::report_corrupt;
use super::store::{Chunk, Scrubbed, READ_PIECE};
use super::ChunkServer;
use crate::error::{GfsError, Result};
use crate::{BLOCKS_PER_CHUNK, BLOCK_SIZE};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blocks verified per lock hold.
const PIECE_BLOCKS: usize = (READ_PIECE / BLOCK_SIZE) as usize;
/// How often to retry a piece whose chunk a mutation holds, and how long to wait between tries.
const BUSY_TRIES: u32 = 20;
const BUSY_WAIT: Duration = Duration::from_millis(5);
/// Longest wait before the first pass after a start.
const FIRST_PASS_MAX_DELAY: Duration = Duration::from_secs(60);

/// Counts from one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub chunks: usize,
    pub clean: usize,
    pub corrupt: usize,
    /// Skipped: busy with mutations, already known corrupt, deleted, or an I/O error.
    pub skipped: usize,
    pub bytes: u64,
}

/// How scrubbing one chunk ended.
enum Outcome {
    Clean,
    Corrupt,
    Skipped,
}

/// Starts the scrubber thread, unless scrubbing is disabled.
pub fn spawn(cs: Arc<ChunkServer>) -> Result<()> {
    let Some(every) = cs.cfg.scrub_interval else {
        tracing::info!("scrubber disabled");
        return Ok(());
    };
    std::thread::Builder::new()
        .name("scrub".into())
        .spawn(move || {
            std::thread::sleep(every.min(FIRST_PASS_MAX_DELAY));
            loop {
                let t0 = Instant::now();
                let st = pass(&cs);
                tracing::info!(
                    chunks = st.chunks,
                    clean = st.clean,
                    corrupt = st.corrupt,
                    skipped = st.skipped,
                    bytes = st.bytes,
                    ms = t0.elapsed().as_millis() as u64,
                    "scrub pass done"
                );
                std::thread::sleep(every);
            }
        })
        .map(|_| ())
        .map_err(|e| GfsError::io("starting the scrubber thread", e))
}

/// One full pass over every chunk stored now.
pub fn pass(cs: &Arc<ChunkServer>) -> PassStats {
    let mut st = PassStats::default();
    let mut limit = RateLimit::new(cs.cfg.scrub_rate);
    let mut buf = Vec::new();
    let mut handles = cs.store.handles();
    handles.sort_unstable();
    for (i, h) in handles.into_iter().enumerate() {
        if i > 0 {
            std::thread::sleep(cs.cfg.scrub_pause);
        }
        let Ok(chunk) = cs.store.get(h) else {
            continue; // deleted since the listing
        };
        st.chunks += 1;
        match scrub_chunk(cs, &chunk, &mut buf, &mut limit, &mut st.bytes) {
            Outcome::Clean => st.clean += 1,
            Outcome::Corrupt => st.corrupt += 1,
            Outcome::Skipped => st.skipped += 1,
        }
    }
    st
}

fn scrub_chunk(
    cs: &Arc<ChunkServer>,
    chunk: &Chunk,
    buf: &mut Vec<u8>,
    limit: &mut RateLimit,
    bytes: &mut u64,
) -> Outcome {
    let handle = chunk.handle;
    let mut first = 0;
    let mut busy = 0;
    while first < BLOCKS_PER_CHUNK {
        match cs.store.scrub(chunk, first, PIECE_BLOCKS, buf) {
            Ok(Scrubbed::Clean { read }) => {
                first += PIECE_BLOCKS;
                busy = 0;
                *bytes += read;
                limit.consumed(read);
            }
            Ok(Scrubbed::Busy) => {
                busy += 1;
                if busy >= BUSY_TRIES {
                    tracing::debug!(handle, "scrub skips a chunk busy with mutations");
                    return Outcome::Skipped;
                }
                std::thread::sleep(BUSY_WAIT);
            }
            Ok(Scrubbed::AlreadyCorrupt) => return Outcome::Skipped,
            Ok(Scrubbed::Corrupt { block, read }) => {
                *bytes += read;
                tracing::warn!(handle, block, "scrub: chunk {handle}: block {block} is corrupt; reporting it");
                report_corrupt(cs, handle);
                return Outcome::Corrupt;
            }
            Err(e) => {
                cs.disk.observe(&e);
                tracing::warn!(handle, "scrub could not check a chunk: {e}");
                return Outcome::Skipped;
            }
        }
    }
    Outcome::Clean
}

/// Keeps the scrubber at or under `rate` bytes a second (0: no limit).
struct RateLimit {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    fn new(rate: u64) -> Self {
        RateLimit { rate, start: Instant::now(), bytes: 0 }
    }

    fn consumed(&mut self, n: u64) {
        if self.rate == 0 || n == 0 {
            return;
        }
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
