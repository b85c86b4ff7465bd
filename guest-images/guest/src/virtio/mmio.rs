//! virtio-mmio version 2 registers and the device initialisation handshake. Every register
//! access is one VM exit (~84 µs on PVM hosts): only initialisation, notifications and
//! interrupt acknowledgements touch them.

use super::queue::Queue;

pub const MAGIC: u32 = 0x7472_6976; // "virt"

const R_MAGIC: usize = 0x000;
const R_VERSION: usize = 0x004;
const R_DEVICE_ID: usize = 0x008;
const R_DEVICE_FEATURES: usize = 0x010;
const R_DEVICE_FEATURES_SEL: usize = 0x014;
const R_DRIVER_FEATURES: usize = 0x020;
const R_DRIVER_FEATURES_SEL: usize = 0x024;
const R_QUEUE_SEL: usize = 0x030;
const R_QUEUE_NUM_MAX: usize = 0x034;
const R_QUEUE_NUM: usize = 0x038;
const R_QUEUE_READY: usize = 0x044;
const R_QUEUE_NOTIFY: usize = 0x050;
const R_INTERRUPT_STATUS: usize = 0x060;
const R_INTERRUPT_ACK: usize = 0x064;
const R_STATUS: usize = 0x070;
const R_QUEUE_DESC: usize = 0x080;
const R_QUEUE_DRIVER: usize = 0x090;
const R_QUEUE_DEVICE: usize = 0x0a0;
const R_CONFIG: usize = 0x100;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 0x80;
/// The device's own status bit: it found the driver's rings or registers unusable.
pub const S_NEEDS_RESET: u32 = 0x40;

pub const F_VERSION_1: u64 = 1 << 32;
pub const F_EVENT_IDX: u64 = 1 << 29;

/// One device's register window (identity-mapped, above 2 GiB: always a pointer in a register).
#[derive(Clone, Copy)]
pub struct Mmio {
    base: *mut u32,
}

impl Mmio {
    /// # Safety
    /// `base` must be the address of a virtio-mmio window that only this driver uses.
    pub unsafe fn new(base: u64) -> Self {
        Mmio { base: base as usize as *mut u32 }
    }

    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is a 32-bit aligned register inside the 4 KiB window (see `new`).
        unsafe { self.base.add(offset / 4).read_volatile() }
    }

    pub fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.add(offset / 4).write_volatile(value) }
    }

    pub fn config32(&self, offset: usize) -> u32 {
        self.read(R_CONFIG + offset)
    }

    /// Whether the window holds a version-2 virtio device; its device ID (1 net, 2 block).
    pub fn probe(&self) -> Option<u32> {
        (self.read(R_MAGIC) == MAGIC && self.read(R_VERSION) == 2).then(|| self.read(R_DEVICE_ID))
    }

    /// Notifies queue `queue` (one exit; the device processes it during that exit).
    pub fn notify(&self, queue: u16) {
        self.write(R_QUEUE_NOTIFY, queue as u32);
    }

    /// Lowers the interrupt line (both reasons at once, without reading InterruptStatus).
    pub fn ack_interrupt(&self) {
        self.write(R_INTERRUPT_ACK, 3);
    }

    /// Reset, ACKNOWLEDGE, DRIVER and feature negotiation: accepts `wanted & offered`, which must
    /// include `required`. Returns the accepted features; the device is left in FEATURES_OK
    /// for the queues to be set up, then [`Mmio::driver_ok`].
    pub fn negotiate(&self, wanted: u64, required: u64) -> Result<u64, &'static str> {
        self.write(R_STATUS, 0);
        self.write(R_STATUS, S_ACKNOWLEDGE);
        self.write(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.write(R_DEVICE_FEATURES_SEL, 0);
        let low = self.read(R_DEVICE_FEATURES) as u64;
        self.write(R_DEVICE_FEATURES_SEL, 1);
        let offered = low | (self.read(R_DEVICE_FEATURES) as u64) << 32;
        let accepted = offered & wanted;
        if accepted & required != required {
            self.write(R_STATUS, S_FAILED);
            return Err("device lacks required features");
        }
        self.write(R_DRIVER_FEATURES_SEL, 0);
        self.write(R_DRIVER_FEATURES, accepted as u32);
        self.write(R_DRIVER_FEATURES_SEL, 1);
        self.write(R_DRIVER_FEATURES, (accepted >> 32) as u32);
        let status = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK;
        self.write(R_STATUS, status);
        if self.read(R_STATUS) & S_FEATURES_OK == 0 {
            self.write(R_STATUS, S_FAILED);
            return Err("device refused the features");
        }
        Ok(accepted)
    }

    /// The largest size the device allows for queue `index` (0 if the queue does not exist).
    pub fn queue_max(&self, index: u16) -> u16 {
        self.write(R_QUEUE_SEL, index as u32);
        self.read(R_QUEUE_NUM_MAX).min(u16::MAX as u32) as u16
    }

    /// Gives queue `index` to the device and makes it ready.
    pub fn setup_queue(&self, index: u16, queue: &Queue) {
        self.setup_rings(index, queue.size(), [queue.desc_addr(), queue.avail_addr(), queue.used_addr()]);
    }

    /// Gives queue `index` of `size` entries to the device with the descriptor table, available
    /// ring and used ring at `rings`, and makes it ready.
    pub fn setup_rings(&self, index: u16, size: u16, rings: [u64; 3]) {
        self.write(R_QUEUE_SEL, index as u32);
        self.write(R_QUEUE_NUM, size as u32);
        for (reg, addr) in [R_QUEUE_DESC, R_QUEUE_DRIVER, R_QUEUE_DEVICE].into_iter().zip(rings) {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        self.write(R_QUEUE_READY, 1);
    }

    pub fn driver_ok(&self) -> Result<(), &'static str> {
        let status = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
        self.write(R_STATUS, status);
        if self.status() & S_NEEDS_RESET != 0 {
            return Err("device needs reset after initialisation");
        }
        Ok(())
    }

    /// The Status register (one exit).
    pub fn status(&self) -> u32 {
        self.read(R_STATUS)
    }

    /// The InterruptStatus register (one exit): bit 0 used buffers, bit 1 configuration change.
    pub fn interrupt_status(&self) -> u32 {
        self.read(R_INTERRUPT_STATUS)
    }

    /// Writes 0 to Status: the device forgets its queues and features (and a needs-reset).
    pub fn reset(&self) {
        self.write(R_STATUS, 0);
    }
}
