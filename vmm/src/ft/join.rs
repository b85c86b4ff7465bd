//! A backup joining a running VM (issue 13): a live pre-copy of guest memory, then a short pause.
//!
//! The primary's side runs in two places. On a join thread, while the vCPU runs on
//! ([`prepare`]): round 0 sends every page, then each round sends the pages written since the
//! previous one began, by the vCPU (KVM's dirty log) or by the devices (the guest memory's own
//! bitmap: KVM does not see the VMM's writes). Rounds stop when the dirty set is small, stops
//! shrinking, or after [`MAX_LIVE_ROUNDS`]. Then the vCPU pauses at a landmark and, on its own
//! thread ([`finish`]), sends the pages dirtied since, the vCPU and device state and the
//! transfer's digest; logging starts at that landmark, so the backup replays from exactly the
//! state the primary had there. Pages are read from guest memory straight into the channel's
//! chunks: the primary never holds a second copy of guest memory.
//!
//! A stop-and-copy join ([`JoinMode::StopAndCopy`], the baseline) is the same transfer with no
//! live rounds: the pause sends every page.
//!
//! The backup's side ([`receive`]) writes each page into its guest memory as it arrives and
//! restores the state once the digest checked out. The transfer format is
//! [`ftlog::channel::transfer`].

use super::progress::CopyProgress;
use crate::dirty::SharedDirtyLog;
use crate::machine::Machine;
use crate::memory::PAGE_SIZE;
use crate::snapshot::{self, Snapshot};
use crate::vcpu::RunPosition;
use devices::GuestMemoryMmap;
use ftlog::channel::transfer::{Item, TransferError, TransferReader, TransferWriter, MAX_RUN, PAGE};
use ftlog::channel::TransferSink;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// At most this many rounds of dirty pages follow the full pass before the pause.
pub const MAX_LIVE_ROUNDS: u32 = 12;
/// A dirty set this small (1 MiB) is sent in the pause rather than in another round.
pub const SMALL_DIRTY_PAGES: u64 = 256;
/// How long the join thread waits for the backup to take in what was queued before it asks
/// for the pause (so that the pause does not wait behind a full send queue).
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// How a backup joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JoinMode {
    /// Memory is copied while the guest runs; the pause sends only the last dirty pages.
    #[default]
    PreCopy,
    /// The guest pauses for the whole copy (the baseline the benchmark compares with).
    StopAndCopy,
}

/// Why a join failed. On the primary a failed join harms nothing: the VM runs on alone.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the backup went away during the state transfer: {0}")]
    Gone(std::io::Error),
    /// Its messages say "state transfer" themselves.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Vmm(#[from] crate::error::VmmError),
    #[error("the transfer ended without the machine state")]
    NoState,
}

/// What a join thread needs of the VM: its memory (the same mapping the vCPU runs on, with the
/// devices' dirty bitmap) and KVM's dirty log.
#[derive(Clone)]
pub struct MemorySource {
    mem: GuestMemoryMmap,
    size: u64,
    dirty: Option<Arc<SharedDirtyLog>>,
}

impl MemorySource {
    /// The source of `machine`; without dirty logging only a stop-and-copy join is possible.
    pub fn of(machine: &Machine) -> crate::Result<Self> {
        let dirty = match &machine.dirty_log {
            Some(log) => Some(Arc::new(log.share(&machine.vm)?)),
            None => None,
        };
        Ok(Self { mem: machine.ram.mem.clone(), size: machine.ram.size, dirty })
    }

    fn pages(&self) -> usize {
        (self.size / PAGE_SIZE) as usize
    }

    /// Every page, as a bitmap.
    fn all_pages(&self) -> Vec<u64> {
        let pages = self.pages();
        let mut bitmap = vec![u64::MAX; pages.div_ceil(64)];
        if !pages.is_multiple_of(64) {
            if let Some(last) = bitmap.last_mut() {
                *last = (1u64 << (pages % 64)) - 1;
            }
        }
        bitmap
    }

    /// The pages written since the last call, by the vCPU or by the devices; both logs start
    /// afresh for the next call.
    fn take_dirty(&self) -> Result<Vec<u64>, JoinError> {
        let mut bitmap = match &self.dirty {
            Some(log) => log.take()?,
            None => self.all_pages(),
        };
        for region in self.mem.iter() {
            let written = region.bitmap().get_and_reset();
            for (word, devices) in bitmap.iter_mut().zip(written) {
                *word |= devices;
            }
        }
        Ok(bitmap)
    }

    /// Copies the pages from `gpa` into `buf` (whole pages), volatile: the vCPU may be
    /// writing them, and the dirty log sends such a page again.
    fn copy(&self, gpa: u64, buf: &mut [u8]) -> Result<(), JoinError> {
        let slice = self
            .mem
            .get_slice(GuestAddress(gpa), buf.len())
            .map_err(|e| JoinError::Vmm(crate::error::VmmError::GuestMemory { addr: gpa, reason: e.to_string() }))?;
        slice.copy_to(buf);
        Ok(())
    }
}

/// A join under way: the transfer begun on the join thread, finished in the pause.
pub struct Prepared {
    writer: TransferWriter<TransferSink>,
    /// Rounds sent while the guest ran (0 for a stop-and-copy).
    rounds: u32,
    /// Pages taken from the logs after the last live round: they go in the pause.
    kept: Option<Vec<u64>>,
    live: Duration,
}

/// What a join moved, for the log and the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct JoinReport {
    /// Rounds, the last one (in the pause) included.
    pub rounds: u32,
    /// Pages sent in the pause.
    pub paused_pages: u64,
    /// Bytes of the whole transfer.
    pub bytes: u64,
    /// How long the rounds took while the guest ran.
    pub live: Duration,
}

/// On the join thread: begins the transfer into `sink` and, for a pre-copy, sends the live
/// rounds while the guest runs. Returns when the vCPU should pause for the rest.
pub fn prepare(source: &MemorySource, sink: TransferSink, mode: JoinMode) -> Result<Prepared, JoinError> {
    let started = Instant::now();
    let mut writer = TransferWriter::begin(sink).map_err(JoinError::Gone)?;
    if mode == JoinMode::StopAndCopy || source.dirty.is_none() {
        return Ok(Prepared { writer, rounds: 0, kept: None, live: Duration::ZERO });
    }
    // What was written before now is in round 0 anyway.
    source.take_dirty()?;
    let mut dirty = source.all_pages();
    let mut rounds = 0;
    let mut previous: Option<u64> = None;
    loop {
        let round_started = Instant::now();
        let before = writer.written();
        let pages = send_round(source, &mut writer, rounds, &dirty, false)?;
        tracing::info!(
            round = rounds,
            pages,
            bytes = writer.written() - before,
            ms = round_started.elapsed().as_millis() as u64,
            "join: round sent while the guest runs"
        );
        rounds += 1;
        dirty = source.take_dirty()?;
        let next = count(&dirty);
        let shrinking = previous.is_none_or(|previous| next < previous);
        if next <= SMALL_DIRTY_PAGES || !shrinking || rounds > MAX_LIVE_ROUNDS {
            break;
        }
        previous = Some(next);
    }
    // The pause should not wait behind chunks still queued for a slow backup.
    if !writer.get_mut().drain(DRAIN_WAIT) {
        return Err(JoinError::Gone(std::io::ErrorKind::BrokenPipe.into()));
    }
    Ok(Prepared { writer, rounds, kept: Some(dirty), live: started.elapsed() })
}

/// On the vCPU thread, paused at `position`: sends the last round (every page a stop-and-copy,
/// else those dirtied since the live rounds), the machine's state and the digest.
pub fn finish(
    machine: &mut Machine,
    position: RunPosition,
    monotonic_ns: u64,
    source: &MemorySource,
    prepared: Prepared,
) -> Result<JoinReport, JoinError> {
    let Prepared { mut writer, rounds, kept, live } = prepared;
    // Captured first: it completes the exit's pending I/O, which may write guest memory.
    let mut state = Vec::new();
    snapshot::save_state_to(machine, position, monotonic_ns, &mut state)?;
    let dirty = match kept {
        Some(mut kept) => {
            for (word, now) in kept.iter_mut().zip(source.take_dirty()?) {
                *word |= now;
            }
            kept
        }
        None => {
            // Every page goes now; what the logs hold (everything written since the last reset)
            // would otherwise make the first checkpoint after the join carry it all again.
            source.take_dirty()?;
            source.all_pages()
        }
    };
    let paused_pages = send_round(source, &mut writer, rounds, &dirty, true)?;
    writer.state(&state).map_err(JoinError::Gone)?;
    let bytes = writer.written() + 33;
    let sink = writer.end().map_err(JoinError::Gone)?;
    sink.finish().map_err(JoinError::Gone)?;
    Ok(JoinReport { rounds: rounds + 1, paused_pages, bytes, live })
}

fn count(bitmap: &[u64]) -> u64 {
    bitmap.iter().map(|word| u64::from(word.count_ones())).sum()
}

/// Sends round `round`: the pages set in `dirty`, in runs of at most [`MAX_RUN`] consecutive
/// pages, all-zero pages as Zero items. Returns the pages sent.
fn send_round(
    source: &MemorySource,
    writer: &mut TransferWriter<TransferSink>,
    round: u32,
    dirty: &[u64],
    last: bool,
) -> Result<u64, JoinError> {
    let pages = count(dirty);
    writer.round(round, pages, last).map_err(JoinError::Gone)?;
    let mut buf = vec![0u8; MAX_RUN as usize * PAGE];
    for (first, run) in runs(dirty, source.pages()) {
        let bytes = &mut buf[..run * PAGE];
        let gpa = (first * PAGE) as u64;
        source.copy(gpa, bytes)?;
        send_run(writer, gpa, bytes).map_err(JoinError::Gone)?;
    }
    Ok(pages)
}

/// Sends the pages of `bytes` (at `gpa`): consecutive zero pages as one Zero item, the others
/// as Pages items.
fn send_run(writer: &mut TransferWriter<TransferSink>, gpa: u64, bytes: &[u8]) -> std::io::Result<()> {
    let mut start = 0;
    while start < bytes.len() {
        let zero = is_zero(&bytes[start..start + PAGE]);
        let mut end = start + PAGE;
        while end < bytes.len() && is_zero(&bytes[end..end + PAGE]) == zero {
            end += PAGE;
        }
        let at = gpa + start as u64;
        if zero {
            writer.zero(at, ((end - start) / PAGE) as u32)?;
        } else {
            writer.pages(at, &bytes[start..end])?;
        }
        start = end;
    }
    Ok(())
}

fn is_zero(page: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: any bytes are valid u64s; align_to hands back the unaligned ends as bytes.
        unsafe { page.align_to::<u64>() }
    };
    prefix.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && suffix.iter().all(|b| *b == 0)
}

/// The runs of consecutive set bits of `bitmap` (first page, length), each at most
/// [`MAX_RUN`] pages, among the first `pages` bits.
fn runs(bitmap: &[u64], pages: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let set = move |page: usize| bitmap.get(page / 64).is_some_and(|word| word & (1 << (page % 64)) != 0);
    let mut page = 0;
    std::iter::from_fn(move || {
        while page < pages && !set(page) {
            // Skip empty words whole.
            if page % 64 == 0 && bitmap.get(page / 64) == Some(&0) {
                page += 64;
            } else {
                page += 1;
            }
        }
        if page >= pages {
            return None;
        }
        let first = page;
        while page < pages && set(page) && page - first < MAX_RUN as usize {
            page += 1;
        }
        Some((first, page - first))
    })
}

/// On the backup: reads a transfer into `machine`'s memory, page by page as it arrives, and
/// restores the state it ends with. `what` names the source in errors.
pub fn receive<R: Read>(
    input: R,
    mut machine: Machine,
    what: &str,
    progress: &mut CopyProgress,
) -> Result<(Machine, Snapshot), JoinError> {
    let mut reader = TransferReader::open(input, machine.ram.size)?;
    let mut state = None;
    {
        let memory = machine.ram.as_mut_slice()?;
        loop {
            match reader.next_item()? {
                Item::Round { round, pages, last } => progress.round(round, pages, last, reader.read()),
                Item::Pages { gpa, count } => {
                    let start = gpa as usize;
                    reader.read_bytes(&mut memory[start..start + count as usize * PAGE])?;
                    progress.pages(u64::from(count), reader.read());
                }
                Item::Zero { gpa, count } => {
                    let start = gpa as usize;
                    for page in memory[start..start + count as usize * PAGE].chunks_mut(PAGE) {
                        // Reading a page never touched maps the shared zero page; writing
                        // zeros over it would make it resident for nothing.
                        if !is_zero(page) {
                            page.fill(0);
                        }
                    }
                    progress.pages(u64::from(count), reader.read());
                }
                Item::State { len } => state = Some(reader.read_state(len)?),
                Item::End => break,
            }
        }
    }
    let read = reader.read();
    reader.finish()?;
    progress.done(read);
    let state = state.ok_or(JoinError::NoState)?;
    let snapshot = snapshot::read_state_from(&state[..], what)?;
    machine.matches(&snapshot.machine, what)?;
    if snapshot.machine.memory_size != machine.ram.size {
        return Err(JoinError::Vmm(crate::error::VmmError::Snapshot {
            path: what.into(),
            reason: "the machine's memory size differs from the primary's".into(),
        }));
    }
    machine.restore_state(&snapshot.state)?;
    Ok((machine, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cover_exactly_the_set_bits_in_bounded_pieces() {
        let mut bitmap = vec![0u64; 16];
        let set = [0usize, 1, 2, 63, 64, 65, 300, 301];
        for page in set {
            bitmap[page / 64] |= 1 << (page % 64);
        }
        // 700 consecutive pages: cut at MAX_RUN.
        for page in 320..1020 {
            bitmap[page / 64] |= 1 << (page % 64);
        }
        let found: Vec<(usize, usize)> = runs(&bitmap, 1024).collect();
        assert_eq!(found[..4], [(0, 3), (63, 3), (300, 2), (320, 256)]);
        assert_eq!(found[4..], [(576, 256), (832, 188)]);
        assert_eq!(runs(&bitmap, 64).collect::<Vec<_>>(), [(0, 3), (63, 1)]);
    }

    #[test]
    fn zero_pages_are_told_apart() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page));
        page[PAGE - 1] = 1;
        assert!(!is_zero(&page));
    }
}
