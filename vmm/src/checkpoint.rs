//! Delta checkpoints: what the guest changed since the last checkpoint (KVM's dirty log) plus
//! the whole vCPU and device state. A recorder takes one at each preemption; a replayer loads it
//! there instead of executing the stretch the primary ran without an exit.

use crate::error::{Result, VmmError};
use crate::machine::Machine;
use crate::memory::PAGE_SIZE;
use crate::state::MachineState;
use ftlog::{DeltaCheckpoint, PageData};
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

/// Captures the pages dirtied since the previous capture (a superset: see [`crate::dirty`]) and
/// the machine's state. Needs `dirty_logging` in the machine's configuration.
///
/// Pages the VMM itself writes (device DMA) are not in KVM's log; the devices of this board
/// write guest memory only through paths that also mark it (see devices::virtio).
pub fn capture(machine: &mut Machine) -> Result<Vec<u8>> {
    let started = std::time::Instant::now();
    let state = machine.capture_state()?;
    let state = postcard::to_allocvec(&state).map_err(|e| VmmError::Checkpoint(format!("encode state: {e}")))?;
    let Some(dirty_log) = machine.dirty_log.as_mut() else {
        return Err(VmmError::Checkpoint("this machine was built without dirty-page logging".into()));
    };
    let bitmap = dirty_log.take(&machine.vm)?;
    let memory = machine.ram.as_slice()?;
    let mut count = 0u64;
    let pages = dirty_pages(&bitmap).map(|page| {
        count += 1;
        let start = page * PAGE_SIZE as usize;
        (start as u64, &memory[start..start + PAGE_SIZE as usize])
    });
    let encoded = DeltaCheckpoint::encode(&state, &[], pages).map_err(|e| VmmError::Checkpoint(e.to_string()))?;
    CAPTURED.fetch_add(1, Ordering::Relaxed);
    CAPTURED_PAGES.fetch_add(count, Ordering::Relaxed);
    CAPTURED_BYTES.fetch_add(encoded.len() as u64, Ordering::Relaxed);
    CAPTURE_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(encoded)
}

/// Loads a checkpoint taken by [`capture`] into the machine.
pub fn apply(machine: &mut Machine, bytes: &[u8]) -> Result<()> {
    let checkpoint = DeltaCheckpoint::decode(bytes).map_err(|e| VmmError::Checkpoint(e.to_string()))?;
    let state: MachineState =
        postcard::from_bytes(checkpoint.vcpu).map_err(|e| VmmError::Checkpoint(format!("decode state: {e}")))?;
    let memory = machine.ram.as_mut_slice()?;
    for (gpa, data) in checkpoint.pages() {
        let start = usize::try_from(gpa).unwrap_or(usize::MAX);
        let Some(page) = start.checked_add(PAGE_SIZE as usize).and_then(|end| memory.get_mut(start..end)) else {
            return Err(VmmError::Checkpoint(format!("page {gpa:#x} lies outside guest memory")));
        };
        match data {
            PageData::Zero => page.fill(0),
            PageData::Bytes(bytes) => page.copy_from_slice(bytes),
        }
    }
    machine.restore_state(&state)
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
    use super::dirty_pages;

    #[test]
    fn dirty_pages_lists_every_set_bit_in_order() {
        let pages: Vec<usize> = dirty_pages(&[0b1010, 0, 1 << 63]).collect();
        assert_eq!(pages, vec![1, 3, 128 + 63]);
    }
}
