//! Delta checkpoints: what the guest changed since the last checkpoint (KVM's dirty log) plus
//! the whole vCPU and device state. A recorder takes one at each preemption; a replayer loads it
//! there instead of executing the stretch the primary ran without an exit.

use crate::error::Result;
use crate::machine::Machine;
use crate::memory::PAGE_SIZE;
use crate::state::MachineState;
use ftlog::{DeltaCheckpoint, PageData};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Checkpoints captured by this process, their pages, bytes and time, for `-v` and benchmarks.
static CAPTURED: AtomicU64 = AtomicU64::new(0);
static CAPTURED_PAGES: AtomicU64 = AtomicU64::new(0);
static CAPTURED_BYTES: AtomicU64 = AtomicU64::new(0);
static CAPTURE_NANOS: AtomicU64 = AtomicU64::new(0);

/// (checkpoints, dirty pages, encoded bytes, nanoseconds spent capturing) so far.
pub fn capture_totals() -> (u64, u64, u64, u64) {
    (
        CAPTURED.load(Ordering::Relaxed),
        CAPTURED_PAGES.load(Ordering::Relaxed),
        CAPTURED_BYTES.load(Ordering::Relaxed),
        CAPTURE_NANOS.load(Ordering::Relaxed),
    )
}

/// Why a checkpoint cannot be taken or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("encode the machine state: {0}")]
    Encode(postcard::Error),
    #[error("decode the machine state: {0}")]
    Decode(postcard::Error),
    #[error("this machine was built without dirty-page logging")]
    NoDirtyLog,
    #[error("page {gpa:#x} lies outside guest memory")]
    PageOutside { gpa: u64 },
    #[error(transparent)]
    Layout(#[from] ftlog::CheckpointError),
    #[error("checkpoint format {found} is not {FORMAT}")]
    Format { found: u8 },
    #[error("decompress: {0}")]
    Decompress(lz4_flex::block::DecompressError),
    #[error("a checkpoint of {0} bytes is larger than this machine")]
    TooLarge(u64),
    #[error("truncated checkpoint")]
    Truncated,
    #[error("after loading, {count} page(s) differ from the recording: {pages}")]
    PagesDiffer { count: usize, pages: String },
    #[error("device state: {0}")]
    DeviceState(String),
}

/// The encoding of [`capture`]'s output: a version byte, then the LZ4 block (size prepended) of
/// a [`DeltaCheckpoint`] whose pages are XORed with their [`PageBases`].
const FORMAT: u8 = 2;

/// At most this many pages (32 MiB) are kept as bases; past it both sides start afresh.
const MAX_BASE_PAGES: usize = 8192;

/// The content of each page as the last checkpoint that carried it left it. The recorder and
/// the replayer keep identical sets (the replayer's bases are what it applied), so a checkpoint
/// carries a page as its XOR with the base: a stack page of which a few bytes changed becomes a
/// page of zeros that LZ4 shrinks to almost nothing.
#[derive(Default)]
pub struct PageBases {
    pages: HashMap<u64, Box<[u8; PAGE]>>,
}

const PAGE: usize = PAGE_SIZE as usize;

impl PageBases {
    /// Forgets every base: at a snapshot mark, where a replay may start with none.
    pub fn clear(&mut self) {
        self.pages.clear();
    }

    /// Makes room for `incoming` pages by the same rule on both sides.
    fn make_room(&mut self, incoming: usize) {
        if self.pages.len() + incoming > MAX_BASE_PAGES {
            self.pages.clear();
        }
    }

    /// `content` XOR its base (or `content` itself without one), and `content` becomes the base.
    fn encode_page(&mut self, gpa: u64, content: &[u8; PAGE], out: &mut [u8; PAGE]) {
        match self.pages.get_mut(&gpa) {
            Some(base) => {
                for ((o, c), b) in out.iter_mut().zip(content).zip(base.iter()) {
                    *o = c ^ b;
                }
                base.copy_from_slice(content);
            }
            None => {
                out.copy_from_slice(content);
                self.pages.insert(gpa, Box::new(*content));
            }
        }
    }

    /// The page a delta stands for, which becomes the base.
    fn decode_page(&mut self, gpa: u64, delta: Option<&[u8; PAGE]>) -> &[u8; PAGE] {
        let zero = [0u8; PAGE];
        let delta = delta.unwrap_or(&zero);
        let base = self.pages.entry(gpa).or_insert_with(|| Box::new([0u8; PAGE]));
        // Without a base the delta is the page itself: XOR with the zero page just inserted.
        for (b, d) in base.iter_mut().zip(delta) {
            *b ^= d;
        }
        base
    }
}

/// Captures the pages dirtied since the previous capture (a superset: see [`crate::dirty`]) and
/// the machine's state. Needs `dirty_logging` in the machine's configuration.
///
/// Pages that devices write (received frames, disk reads) are not in KVM's dirty log and need
/// not be: devices write guest memory only at exits, with data from the event source, so a
/// replay writes the same bytes at the same exits.
pub fn capture(machine: &mut Machine) -> Result<Vec<u8>> {
    let started = std::time::Instant::now();
    let state = machine.capture_state()?;
    let state = postcard::to_allocvec(&state).map_err(CheckpointError::Encode)?;
    let Some(dirty_log) = machine.dirty_log.as_mut() else {
        return Err(CheckpointError::NoDirtyLog.into());
    };
    let bitmap = dirty_log.take(&machine.vm)?;
    let dirty: Vec<usize> = dirty_pages(&bitmap).collect();
    let memory = machine.ram.as_slice()?;
    let bases = &mut machine.checkpoint_bases;
    bases.make_room(dirty.len());
    let mut deltas = vec![[0u8; PAGE]; dirty.len()];
    for (page, delta) in dirty.iter().zip(deltas.iter_mut()) {
        let start = page * PAGE;
        let content: &[u8; PAGE] =
            memory[start..start + PAGE].try_into().map_err(|_| CheckpointError::PageOutside { gpa: start as u64 })?;
        bases.encode_page(start as u64, content, delta);
    }
    let pages = dirty.iter().zip(deltas.iter()).map(|(page, delta)| ((page * PAGE) as u64, &delta[..]));
    // With verification on, the checkpoint's spare part carries a hash of every page of guest
    // memory, which a replay compares with its own memory after loading the checkpoint.
    let page_hashes = if machine.verify_checkpoints { hash_pages(memory) } else { Vec::new() };
    let encoded = DeltaCheckpoint::encode(&state, &page_hashes, pages).map_err(CheckpointError::Layout)?;
    let mut out = vec![FORMAT];
    out.extend_from_slice(&lz4_flex::block::compress_prepend_size(&encoded));
    CAPTURED.fetch_add(1, Ordering::Relaxed);
    CAPTURED_PAGES.fetch_add(dirty.len() as u64, Ordering::Relaxed);
    CAPTURED_BYTES.fetch_add(out.len() as u64, Ordering::Relaxed);
    CAPTURE_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(out)
}

/// Loads a checkpoint taken by [`capture`] into the machine.
///
/// The recorder took the checkpoint in a `KVM_RUN` that began by completing the I/O or MMIO
/// access of the exit before it; this vCPU has not made that run, so its completion is still
/// pending in KVM and would be applied on top of the loaded state at the next entry (a register
/// written, RIP advanced a second time). Complete it first, then overwrite.
pub fn apply(machine: &mut Machine, bytes: &[u8]) -> Result<()> {
    machine.complete_pending_io()?;
    let encoded = decompress(bytes, machine.ram.size)?;
    let checkpoint = DeltaCheckpoint::decode(&encoded).map_err(CheckpointError::Layout)?;
    let state: MachineState = postcard::from_bytes(checkpoint.machine_state).map_err(CheckpointError::Decode)?;
    let bases = &mut machine.checkpoint_bases;
    bases.make_room(checkpoint.page_count() as usize);
    let memory = machine.ram.as_mut_slice()?;
    for (gpa, data) in checkpoint.pages() {
        let start = usize::try_from(gpa).unwrap_or(usize::MAX);
        let Some(page) = start.checked_add(PAGE).and_then(|end| memory.get_mut(start..end)) else {
            return Err(CheckpointError::PageOutside { gpa }.into());
        };
        let delta = match data {
            PageData::Zero => None,
            PageData::Bytes(bytes) => Some(bytes),
        };
        page.copy_from_slice(bases.decode_page(gpa, delta));
    }
    if !checkpoint.page_hashes.is_empty() {
        verify_pages(machine.ram.as_slice()?, checkpoint.page_hashes, &checkpoint)?;
    }
    machine.restore_state(&state)
}

/// Captures a checkpoint ([`capture`]) and writes it to `out`, framed: its length (u32,
/// little-endian), then its bytes, which begin with their format version. Returns the bytes
/// written.
pub fn capture_to<W: std::io::Write>(machine: &mut Machine, out: &mut W) -> Result<u64> {
    let bytes = capture(machine)?;
    let len = u32::try_from(bytes.len()).map_err(|_| CheckpointError::TooLarge(bytes.len() as u64))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&bytes)?;
    Ok(4 + u64::from(len))
}

/// Reads one checkpoint framed by [`capture_to`] from `input` and loads it ([`apply`]). A
/// length no checkpoint of this machine can have is refused before anything is allocated, and
/// the buffer grows only with the bytes that arrive.
pub fn apply_from<R: std::io::Read>(machine: &mut Machine, input: &mut R) -> Result<()> {
    use std::io::Read as _;
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u64::from(u32::from_le_bytes(len));
    if len > checkpoint_limit(machine.ram.size) {
        return Err(CheckpointError::TooLarge(len).into());
    }
    let mut bytes = Vec::new();
    input.by_ref().take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(CheckpointError::Truncated.into());
    }
    apply(machine, &bytes)
}

/// The most bytes a checkpoint of a machine with `memory_size` bytes of RAM can take: every page
/// with its address, and the state.
fn checkpoint_limit(memory_size: u64) -> u64 {
    memory_size + (memory_size / PAGE_SIZE) * 8 + (1 << 20)
}

/// One line about a checkpoint's vCPU, for `ftvm log`: where the guest was and what decides
/// whether it can take an interrupt.
pub fn describe(bytes: &[u8], memory_size: u64) -> Result<String> {
    let encoded = decompress(bytes, memory_size)?;
    let checkpoint = DeltaCheckpoint::decode(&encoded).map_err(CheckpointError::Layout)?;
    let state: MachineState = postcard::from_bytes(checkpoint.machine_state).map_err(CheckpointError::Decode)?;
    let v = &state.vcpu;
    Ok(format!(
        "rip {:#x} rflags {:#x} cpl {} mp_state {} | shadow {} injected {} nr {:#x} | exception injected {} pending {} nr {} flags {:#x} | run: if {} ready {} window {} | {} page(s)",
        v.regs.rip,
        v.regs.rflags,
        v.sregs.cs.dpl,
        v.mp_state.mp_state,
        v.events.interrupt.shadow,
        v.events.interrupt.injected,
        v.events.interrupt.nr,
        v.events.exception.injected,
        v.events.exception.pending,
        v.events.exception.nr,
        v.events.flags,
        v.if_flag,
        v.ready_for_interrupt_injection,
        v.request_interrupt_window,
        checkpoint.page_count()
    ))
}

/// A 64-bit hash of each page, for `--verify-checkpoints`.
fn hash_pages(memory: &[u8]) -> Vec<u8> {
    memory.chunks(PAGE).flat_map(|page| blake3::hash(page).as_bytes()[..8].to_vec()).collect()
}

/// Compares memory after a checkpoint was loaded with the recorder's page hashes; names the
/// pages that differ (and whether the checkpoint carried them) so a divergence can be traced to
/// memory the dirty log missed.
fn verify_pages(memory: &[u8], recorded: &[u8], checkpoint: &DeltaCheckpoint) -> Result<()> {
    let ours = hash_pages(memory);
    if ours == recorded {
        return Ok(());
    }
    let carried: std::collections::HashSet<u64> = checkpoint.pages().map(|(gpa, _)| gpa).collect();
    let differing: Vec<String> = ours
        .chunks(8)
        .zip(recorded.chunks(8))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(page, _)| {
            let gpa = (page * PAGE) as u64;
            format!("{gpa:#x}{}", if carried.contains(&gpa) { " (carried)" } else { "" })
        })
        .collect();
    Err(CheckpointError::PagesDiffer {
        count: differing.len(),
        pages: differing.iter().take(16).cloned().collect::<Vec<_>>().join(", "),
    }
    .into())
}

/// Undoes the compression, refusing a stated size no checkpoint of this machine can have (a
/// corrupt log must not make us allocate gigabytes).
fn decompress(bytes: &[u8], memory_size: u64) -> Result<Vec<u8>> {
    let (&format, compressed) = bytes.split_first().ok_or(CheckpointError::Truncated)?;
    if format != FORMAT {
        return Err(CheckpointError::Format { found: format }.into());
    }
    let stated = compressed.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let limit = checkpoint_limit(memory_size);
    match stated {
        Some(size) if size <= limit => {
            Ok(lz4_flex::block::decompress_size_prepended(compressed).map_err(CheckpointError::Decompress)?)
        }
        Some(size) => Err(CheckpointError::TooLarge(size).into()),
        None => Err(CheckpointError::Truncated.into()),
    }
}

/// Page numbers whose bit is set in a KVM dirty bitmap.
fn dirty_pages(bitmap: &[u64]) -> impl Iterator<Item = usize> + '_ {
    bitmap.iter().enumerate().flat_map(|(word_index, word)| {
        let mut bits = *word;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                word_index * 64 + bit
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_round_trips_through_bases_on_both_sides() {
        let (mut recorder, mut replayer) = (PageBases::default(), PageBases::default());
        let mut page = [7u8; PAGE];
        for round in 0..3u8 {
            page[100] = round;
            let mut delta = [0u8; PAGE];
            recorder.encode_page(0x1000, &page, &mut delta);
            if round > 0 {
                assert_eq!(delta.iter().filter(|b| **b != 0).count(), 1, "only the changed byte remains");
            }
            let all_zero = delta.iter().all(|b| *b == 0);
            let restored = replayer.decode_page(0x1000, (!all_zero).then_some(&delta));
            assert_eq!(restored, &page);
        }
    }

    #[test]
    fn a_checkpoint_stating_an_impossible_size_is_refused() {
        let mut bytes = vec![FORMAT];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 16]);
        assert!(decompress(&bytes, 16 << 20).is_err());
        assert!(decompress(&[], 16 << 20).is_err());
        assert!(decompress(&[9, 0, 0, 0, 0], 16 << 20).is_err());
    }

    #[test]
    fn dirty_pages_lists_every_set_bit_in_order() {
        let pages: Vec<usize> = dirty_pages(&[0b1010, 0, 1 << 63]).collect();
        assert_eq!(pages, vec![1, 3, 128 + 63]);
    }
}
