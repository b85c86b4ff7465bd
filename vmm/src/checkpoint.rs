//! Delta checkpoints: what the guest changed since the last checkpoint (KVM's dirty log) plus
//! the whole vCPU and device state. A recorder takes one at each preemption; a replayer loads it
//! there instead of executing the stretch the primary ran without an exit.

use crate::error::{kvm, Result, VmmError};
use crate::machine::Machine;
use crate::memory::PAGE_SIZE;
use crate::state::MachineState;
use ftlog::{DeltaCheckpoint, PageData};

/// Captures the pages dirtied since the previous capture (this resets KVM's dirty log) and the
/// machine's state. Needs `dirty_logging` in the machine's configuration.
///
/// Pages the VMM itself writes (device DMA) are not in KVM's log; the devices of this board
/// write guest memory only through paths that also mark it (see devices::virtio).
pub fn capture(machine: &mut Machine) -> Result<Vec<u8>> {
    let state = machine.capture_state()?;
    let state = postcard::to_allocvec(&state).map_err(|e| VmmError::Checkpoint(format!("encode state: {e}")))?;
    let size = machine.ram.size as usize;
    let bitmap = machine.vm.get_dirty_log(0, size).map_err(kvm("read the dirty-page log"))?;
    let memory = machine.ram.as_slice()?;
    let pages = dirty_pages(&bitmap).map(|page| {
        let start = page * PAGE_SIZE as usize;
        (start as u64, &memory[start..start + PAGE_SIZE as usize])
    });
    DeltaCheckpoint::encode(&state, &[], pages).map_err(|e| VmmError::Checkpoint(e.to_string()))
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
