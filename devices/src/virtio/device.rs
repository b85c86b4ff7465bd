//! What a virtio device model provides to the transport, and what the transport gives it at an
//! exit.

use super::output::{OutputError, OutputStage};
use super::queue::{QueueError, VirtQueue};
use crate::event::{EventSource, Landmark};
use crate::GuestMemoryMmap;

/// Everything a device may touch at the exit where it runs: guest memory, the world (for data it
/// takes in, such as a disk read) and the output stage (for what it sends out).
pub struct Ctx<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub at: Landmark,
    pub world: &'a mut dyn EventSource,
    pub out: &'a mut dyn OutputStage,
}

/// Why a device stopped processing.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The guest broke the virtio contract: the device goes to needs-reset.
    #[error("queue {queue}: {error}")]
    Queue { queue: u16, error: QueueError },
    /// The guest broke a device-specific rule: the device goes to needs-reset.
    #[error("{0}")]
    Guest(String),
    /// A backend failed in a way the VM cannot survive (see `output`).
    #[error(transparent)]
    Host(#[from] OutputError),
}

impl Fault {
    pub fn queue(queue: u16) -> impl FnOnce(QueueError) -> Fault {
        move |error| Fault::Queue { queue, error }
    }
}

/// A virtio device model behind a transport. All methods run at exits, on the vCPU thread.
pub trait VirtioDevice {
    /// The virtio device ID (1 = net, 2 = block).
    fn device_id(&self) -> u32;

    /// The maximum size of each of the device's queues (powers of two).
    fn queue_max_sizes(&self) -> &'static [u16];

    /// Feature bits the device offers.
    fn features(&self) -> u64;

    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver set DRIVER_OK with these features; the queues it made ready are live.
    fn activate(&mut self, features: u64);

    /// The driver notified queue `queue` (which is ready). Returns whether an interrupt for used
    /// buffers is due.
    fn notify(&mut self, queue: u16, queues: &mut [VirtQueue], ctx: &mut Ctx<'_>) -> Result<bool, Fault>;

    /// The device was reset by the driver: forget negotiated state (not the backend).
    fn reset(&mut self);

    /// A short name for log lines ("virtio-net 0").
    fn name(&self) -> String;
}
