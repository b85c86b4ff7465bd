//! virtio devices on virtio-mmio: the board's network and disk devices.
//!
//! Device i of a [`VirtioDevices`] sits at `0xd000_1000 + 0x1000 * i` on IRQ `5 + i`
//! (docs/guest-abi.md) and is announced on the kernel command line ([`VirtioDevices::cmdline_fragment`]).
//! Net devices and disks are numbered separately (`WorldEvent::NetFrame { device }`,
//! `InputKind::DiskRead { device }`, [`Output`]), in the order they were added.
//!
//! Everything a device does happens at a VM exit, on the vCPU thread: a register write
//! ([`VirtioDevices::mmio_write`]) or a received frame applied by the board
//! ([`VirtioDevices::apply_frame`]). Data from the world reaches guest memory only there, from a
//! bounce buffer the device owns; data for the world leaves only through the [`OutputStage`].

pub mod announce;
pub mod blk;
pub mod blk_file;
pub mod description;
pub mod device;
pub mod disk;
pub mod disk_queue;
pub mod mmio;
pub mod net;
pub mod output;
pub mod queue;
pub mod spec;
pub mod tap;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod output_tests;
#[cfg(test)]
mod testdriver;
#[cfg(test)]
mod tests;

pub use blk::{Blk, BlkState};
pub use blk_file::{DiskError, DiskFile};
pub use description::DeviceDescription;
pub use disk::BlockBackend;
pub use disk_queue::{CompletionReceiver, Completions, DiskActivity, DiskQueue};
pub use mmio::{MmioTransport, RestoreError, TransportState};
pub use net::{Net, NetState};
pub use output::{DirectOutput, DiscardOutput, DiskRead, Output, OutputError, OutputStage};
pub use spec::{gfs_disk_path, DiskSpec, MacAddr, NetSpec, SpecError, GFS_DISK_PREFIX};
pub use tap::{Tap, TapError, TapReader, TapWriter};

use crate::event::{EventSource, Landmark};
use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};

/// Guest-physical base of the first virtio-mmio window, and the size of each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ of the first device; device i uses `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_IRQ_BASE: u8 = 5;
/// IRQs 5..=15 of the PIC pair.
pub const MAX_DEVICES: usize = 11;

/// Why a device cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("at most {MAX_DEVICES} virtio devices fit the board's IRQ lines")]
    TooMany,
}

enum Slot {
    Net(MmioTransport<Net>),
    Blk(MmioTransport<Blk>),
}

/// The state of one device slot, for checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotState {
    Net { transport: TransportState, net: NetState },
    Blk { transport: TransportState, blk: BlkState },
}

/// The state of all virtio devices, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    pub slots: Vec<SlotState>,
}

/// The VM's virtio devices, in MMIO slot order.
#[derive(Default)]
pub struct VirtioDevices {
    slots: Vec<Slot>,
    nets: Vec<usize>,
    disks: Vec<usize>,
}

impl VirtioDevices {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a net device in the next slot; returns its net index.
    pub fn add_net(&mut self, mac: MacAddr) -> Result<u8, AddError> {
        let index = self.next_index(self.nets.len())?;
        self.nets.push(self.slots.len());
        self.slots.push(Slot::Net(MmioTransport::new(Net::new(index, mac))));
        Ok(index)
    }

    /// Adds a disk of `size_bytes` bytes in the next slot; returns its disk index.
    pub fn add_blk(&mut self, size_bytes: u64, readonly: bool) -> Result<u8, AddError> {
        let index = self.next_index(self.disks.len())?;
        self.disks.push(self.slots.len());
        self.slots.push(Slot::Blk(MmioTransport::new(Blk::new(index, size_bytes, readonly))));
        Ok(index)
    }

    fn next_index(&self, count: usize) -> Result<u8, AddError> {
        if self.slots.len() >= MAX_DEVICES {
            return Err(AddError::TooMany);
        }
        u8::try_from(count).map_err(|_| AddError::TooMany)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot and offset of `addr`, if it is in a device's window.
    fn locate(&self, addr: u64) -> Option<(usize, u64)> {
        let rel = addr.checked_sub(VIRTIO_MMIO_BASE)?;
        let slot = usize::try_from(rel / VIRTIO_MMIO_SIZE).ok()?;
        (slot < self.slots.len()).then_some((slot, rel % VIRTIO_MMIO_SIZE))
    }

    /// A guest MMIO read; false if no device claims `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let Some((slot, offset)) = self.locate(addr) else {
            return false;
        };
        match &mut self.slots[slot] {
            Slot::Net(t) => t.mmio_read(offset, data),
            Slot::Blk(t) => t.mmio_read(offset, data),
        }
        true
    }

    /// A guest MMIO write; `Ok(false)` if no device claims `addr`. An error is a backend failure
    /// the VM cannot survive (a disk write that failed): stop the VM with it.
    pub fn mmio_write(
        &mut self,
        addr: u64,
        data: &[u8],
        mem: &GuestMemoryMmap,
        at: Landmark,
        world: &mut dyn EventSource,
        out: &mut dyn OutputStage,
    ) -> Result<bool, OutputError> {
        let Some((slot, offset)) = self.locate(addr) else {
            return Ok(false);
        };
        match &mut self.slots[slot] {
            Slot::Net(t) => t.mmio_write(offset, data, mem, at, world, out)?,
            Slot::Blk(t) => t.mmio_write(offset, data, mem, at, world, out)?,
        }
        Ok(true)
    }

    /// Applies `WorldEvent::NetFrame { device, frame }` at an exit: the frame goes to the device's
    /// bounce queue and into the guest's receive buffers if it has posted some. Frames for a
    /// device that is not running (or does not exist) are dropped. Returns whether the frame was
    /// taken.
    pub fn apply_frame(&mut self, device: u8, frame: Vec<u8>, mem: &GuestMemoryMmap) -> bool {
        let Some(Slot::Net(t)) = self.nets.get(usize::from(device)).map(|&s| &mut self.slots[s]) else {
            tracing::warn!(device, "frame for a net device this board does not have; dropped");
            return false;
        };
        if !t.is_live() {
            tracing::debug!(device, "frame for a net device the guest has not started; dropped");
            return false;
        }
        if !t.device_mut().receive(frame) {
            return false;
        }
        // Receiving never emits output, so no backend error can come out of this.
        if let Err(e) = t.run(mem, |net, queues, mem| net.deliver(queues, mem)) {
            tracing::error!(device, error = %e, "unexpected backend error while receiving");
        }
        true
    }

    /// Applies `WorldEvent::DiskDone { device, id, status, data }` at an exit: the request's
    /// data and status go into the guest's buffers and the chain to the used ring. An error is a
    /// completion that cannot be right (a read of another length: a corrupt log), fatal for the VM.
    pub fn apply_disk_done(
        &mut self,
        device: u8,
        id: u64,
        status: u8,
        data: &[u8],
        mem: &GuestMemoryMmap,
    ) -> Result<(), OutputError> {
        let Some(Slot::Blk(t)) = self.disks.get(usize::from(device)).map(|&s| &mut self.slots[s]) else {
            tracing::warn!(device, "completion for a disk this board does not have; dropped");
            return Ok(());
        };
        t.run(mem, |blk, queues, mem| blk.complete(id, status, data, queues, mem))
    }

    /// Issues every pending disk request again to `out` (new backends attached).
    pub fn resubmit_disk_requests(&self, mem: &GuestMemoryMmap, out: &mut dyn OutputStage) -> Result<(), OutputError> {
        for slot in &self.slots {
            if let Slot::Blk(t) = slot {
                if t.is_live() {
                    t.device().resubmit(mem, out)?;
                }
            }
        }
        Ok(())
    }

    /// Disk requests taken and not completed, over all disks.
    pub fn pending_disk_requests(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Blk(t) => t.device().pending(),
                Slot::Net(_) => 0,
            })
            .sum()
    }

    /// The interrupt line of each device: (IRQ, level). Level-triggered: the line stays high until
    /// the driver acknowledges (InterruptACK).
    pub fn interrupt_lines(&self) -> impl Iterator<Item = (u8, bool)> + '_ {
        self.slots.iter().enumerate().map(|(i, slot)| {
            let level = match slot {
                Slot::Net(t) => t.interrupt_line(),
                Slot::Blk(t) => t.interrupt_line(),
            };
            // `add_*` keeps the count within MAX_DEVICES, so this fits.
            (VIRTIO_IRQ_BASE + i as u8, level)
        })
    }

    /// `virtio_mmio.device=4K@0xd0001000:5 ...` for the kernel command line (empty without devices).
    pub fn cmdline_fragment(&self) -> String {
        (0..self.slots.len())
            .map(|i| {
                let base = VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE * i as u64;
                format!("virtio_mmio.device=4K@{base:#x}:{}", usize::from(VIRTIO_IRQ_BASE) + i)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn state(&self) -> VirtioState {
        let slots = self
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::Net(t) => SlotState::Net { transport: t.state(), net: t.device().state() },
                Slot::Blk(t) => SlotState::Blk { transport: t.state(), blk: t.device().state() },
            })
            .collect();
        VirtioState { slots }
    }

    /// Restores a checkpoint taken from a board with the same devices in the same order.
    pub fn restore(&mut self, state: &VirtioState) -> Result<(), RestoreError> {
        if state.slots.len() != self.slots.len() {
            return Err(RestoreError::Device(format!(
                "checkpoint has {} virtio devices, this VM has {}",
                state.slots.len(),
                self.slots.len()
            )));
        }
        for (i, (slot, saved)) in self.slots.iter_mut().zip(&state.slots).enumerate() {
            match (slot, saved) {
                (Slot::Net(t), SlotState::Net { transport, net }) => {
                    t.restore(transport)?;
                    t.device_mut().restore(net);
                }
                (Slot::Blk(t), SlotState::Blk { transport, blk }) => {
                    t.restore(transport)?;
                    t.device_mut().restore(blk);
                }
                _ => return Err(RestoreError::Device(format!("virtio slot {i} holds a different kind of device"))),
            }
        }
        Ok(())
    }
}
