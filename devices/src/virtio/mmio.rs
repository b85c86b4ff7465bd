//! The virtio-mmio transport, version 2 (virtio 1.x), for one device.
//!
//! Register accesses below 0x100 must be 32 bits wide and aligned; the device-specific
//! configuration space starts at 0x100. Any guest misbehaviour (a bad queue configuration, a
//! notification of a queue that is not ready, a malformed descriptor chain, ...) sets
//! DEVICE_NEEDS_RESET, raises a configuration-change interrupt and logs a warning naming what was
//! wrong; the device then ignores its queues until the driver resets it by writing 0 to Status.

use super::device::{Ctx, Fault, VirtioDevice};
use super::output::{OutputError, OutputStage};
use super::queue::{QueueSnapshot, Ring, VirtQueue};
use crate::event::{EventSource, Landmark};
use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const VENDOR_ID: u64 = 0x00c;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const SHM_SEL: u64 = 0x0ac;
pub const SHM_LEN_LOW: u64 = 0x0b0;
pub const SHM_BASE_HIGH: u64 = 0x0bc;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// "FTVM" in little-endian, our vendor ID.
pub const VENDOR: u32 = 0x4d56_5446;

/// InterruptStatus bits.
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The transport's registers, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueSnapshot>,
}

/// Why a checkpointed transport state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{device}: state has {got} queues, the device has {want}")]
    QueueCount { device: String, got: usize, want: usize },
    #[error("{device}: queue {queue}: {error}")]
    Queue { device: String, queue: usize, error: super::queue::QueueError },
    #[error("{0}")]
    Device(String),
}

/// One virtio device behind its MMIO window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    queues: Vec<VirtQueue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D) -> Self {
        let queues = device.queue_max_sizes().iter().map(|&max| VirtQueue::new(max)).collect();
        Self {
            device,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The level of the device's interrupt line (high while InterruptStatus is not zero).
    pub fn interrupt_line(&self) -> bool {
        self.interrupt_status != 0
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn needs_reset(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// Whether the driver has finished initialisation and the device has not failed.
    pub fn is_live(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !self.needs_reset()
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(device = %self.device.name(), offset, len = data.len(), "virtio-mmio register read not 32-bit aligned; reads as 0");
            return;
        }
        let value = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_id(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => u32::from(self.selected().is_some_and(|q| q.ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            // No shared memory regions: a length of all ones says so.
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write at `offset` in the window. An error is a backend failure fatal for the VM;
    /// guest mistakes are handled here (needs-reset) and are not errors.
    pub fn mmio_write(
        &mut self,
        offset: u64,
        data: &[u8],
        mem: &GuestMemoryMmap,
        at: Landmark,
        world: &mut dyn EventSource,
        out: &mut dyn OutputStage,
    ) -> Result<(), OutputError> {
        if offset >= CONFIG {
            // Our devices' configuration spaces are read-only for the driver (the MAC is only
            // writable in legacy virtio-net); ignoring the write is what a device may do.
            tracing::debug!(device = %self.device.name(), offset, "write to read-only virtio config space ignored");
            return Ok(());
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => u32::from_le_bytes(bytes),
            _ => {
                self.fail(&format!("register write of {} bytes at {offset:#x}, not 32-bit aligned", data.len()));
                return Ok(());
            }
        };
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM => self.write_queue_config(|q| q.set_size(value).map_err(|e| e.to_string())),
            QUEUE_DESC_LOW => self.write_queue_address(Ring::Desc, false, value),
            QUEUE_DESC_HIGH => self.write_queue_address(Ring::Desc, true, value),
            QUEUE_DRIVER_LOW => self.write_queue_address(Ring::Avail, false, value),
            QUEUE_DRIVER_HIGH => self.write_queue_address(Ring::Avail, true, value),
            QUEUE_DEVICE_LOW => self.write_queue_address(Ring::Used, false, value),
            QUEUE_DEVICE_HIGH => self.write_queue_address(Ring::Used, true, value),
            QUEUE_READY => self.write_queue_ready(value, mem),
            QUEUE_NOTIFY => return self.write_queue_notify(value, &mut Ctx { mem, at, world, out }),
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => {
                let was_ok = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
                self.write_status(value);
                if !was_ok && self.is_live() {
                    return self.after_driver_ok(&mut Ctx { mem, at, world, out });
                }
            }
            SHM_SEL => {}
            _ => self.fail(&format!("write to read-only or unknown register {offset:#x}")),
        }
        Ok(())
    }

    /// Runs device work that does not come from a register write (a received frame applied at
    /// an exit): only while the device is live; faults and interrupts are handled as for a
    /// notification.
    pub fn run(
        &mut self,
        mem: &GuestMemoryMmap,
        work: impl FnOnce(&mut D, &mut [VirtQueue], &GuestMemoryMmap) -> Result<bool, Fault>,
    ) -> Result<(), OutputError> {
        if !self.is_live() {
            return Ok(());
        }
        let result = work(&mut self.device, &mut self.queues, mem);
        self.settle(result)
    }

    fn settle(&mut self, result: Result<bool, Fault>) -> Result<(), OutputError> {
        match result {
            Ok(true) => self.interrupt_status |= INT_USED_BUFFER,
            Ok(false) => {}
            Err(Fault::Host(e)) => return Err(e),
            Err(fault) => self.fail(&fault),
        }
        Ok(())
    }

    /// The guest misbehaved: DEVICE_NEEDS_RESET, and a configuration-change interrupt if the
    /// driver is up.
    fn fail(&mut self, what: &dyn std::fmt::Display) {
        tracing::warn!(device = %self.device.name(), "guest error: {what}; device needs reset");
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt_status |= INT_CONFIG_CHANGE;
        }
    }

    fn selected(&self) -> Option<&VirtQueue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        let negotiating =
            self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK) == VIRTIO_CONFIG_S_DRIVER;
        if !negotiating {
            self.fail(&format!("DriverFeatures written with status {:#x}", self.status));
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            sel if value != 0 => self.fail(&format!("driver accepted features {value:#x} in word {sel}")),
            _ => {}
        }
    }

    /// Checks that the selected queue may be configured now and applies `set`.
    fn write_queue_config(&mut self, set: impl FnOnce(&mut VirtQueue) -> Result<(), String>) {
        let sel = self.queue_sel;
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            self.fail(&format!("queue {sel} configured before FEATURES_OK"));
            return;
        }
        let result = match self.queues.get_mut(sel as usize) {
            None => Err(format!("queue {sel} configured, the device has {}", self.queues.len())),
            Some(q) if q.ready() => Err(format!("queue {sel} configured while ready")),
            Some(q) => set(q).map_err(|e| format!("queue {sel}: {e}")),
        };
        if let Err(what) = result {
            self.fail(&what);
        }
    }

    fn write_queue_address(&mut self, ring: Ring, high: bool, value: u32) {
        self.write_queue_config(|q| {
            q.set_address(ring, high, value);
            Ok(())
        });
    }

    fn write_queue_ready(&mut self, value: u32, mem: &GuestMemoryMmap) {
        if value == 0 {
            // Always allowed (drivers deactivate queues after a reset, too).
            if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                q.deactivate();
            }
            return;
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        self.write_queue_config(|q| q.activate(mem, event_idx).map_err(|e| e.to_string()));
    }

    fn write_queue_notify(&mut self, value: u32, ctx: &mut Ctx<'_>) -> Result<(), OutputError> {
        if self.needs_reset() {
            tracing::debug!(device = %self.device.name(), queue = value, "notification ignored: device needs reset");
            return Ok(());
        }
        let Some(queue) = u16::try_from(value).ok().filter(|&q| usize::from(q) < self.queues.len()) else {
            self.fail(&format!("notification of queue {value}, the device has {}", self.queues.len()));
            return Ok(());
        };
        if !self.queues[usize::from(queue)].ready() {
            self.fail(&format!("notification of queue {queue}, which is not ready"));
            return Ok(());
        }
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            // The buffers stay available; they are processed at DRIVER_OK or the next notification.
            tracing::debug!(device = %self.device.name(), queue, "notification before DRIVER_OK deferred");
            return Ok(());
        }
        let result = self.device.notify(queue, &mut self.queues, ctx);
        self.settle(result)
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET belongs to the device; the driver's copy of it is ignored.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let old = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & old != old {
            self.fail(&format!("status {value:#x} clears bits of {old:#x} without a reset"));
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let extra = self.driver_features & !offered;
            if extra != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                tracing::warn!(
                    device = %self.device.name(),
                    accepted = self.driver_features,
                    offered,
                    "driver features refused (VERSION_1 is required; no bits beyond those offered)"
                );
                new &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let ok = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if new & ok != ok {
                self.fail(&format!("DRIVER_OK in status {value:#x} before features were accepted"));
                return;
            }
            self.device.activate(self.driver_features);
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            tracing::warn!(device = %self.device.name(), "driver gave up on the device (status FAILED)");
        }
        self.status = new | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
    }

    fn reset(&mut self) {
        tracing::debug!(device = %self.device.name(), "device reset");
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
    }

    /// After DRIVER_OK: lets the device process what the driver made available before it.
    fn after_driver_ok(&mut self, ctx: &mut Ctx<'_>) -> Result<(), OutputError> {
        for queue in 0..self.queues.len() {
            if self.is_live() && self.queues[queue].ready() {
                let result = self.device.notify(queue as u16, &mut self.queues, ctx);
                self.settle(result)?;
            }
        }
        Ok(())
    }

    pub fn state(&self) -> TransportState {
        TransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(VirtQueue::snapshot).collect(),
        }
    }

    /// Restores the registers and queues; the device model's own state is restored by its owner.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device: self.device.name(),
                got: state.queues.len(),
                want: self.queues.len(),
            });
        }
        for (queue, (q, snap)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            q.restore(snap).map_err(|error| RestoreError::Queue { device: self.device.name(), queue, error })?;
        }
        self.device.reset();
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.device.activate(self.driver_features);
        }
        Ok(())
    }
}
