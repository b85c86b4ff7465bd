//! Device models of the ftvm board (see `docs/guest-abi.md` for the guest's view).
//!
//! The vCPU loop in `vmm` hands every port-I/O and MMIO exit to the [`Board`], which dispatches
//! it to one device. Devices are plain single-threaded state machines: they see the outside world
//! only through the [`event::EventSource`] passed in at each exit, so that `ftlog` can record and
//! replay everything that is not a function of the guest's own execution.

pub mod board;
pub mod clock;
pub mod event;
pub mod pic;
pub mod pit;
pub mod power;
pub mod serial;
pub mod virtio;

/// Guest memory as the devices and the VMM write it. Every write through it (a received frame,
/// a disk read, a used-ring entry) marks its page in the region's bitmap: KVM's dirty log sees
/// only the vCPU's writes, and a live copy of the memory needs both.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

pub use board::{Board, BoardState, IoOutcome};
pub use event::{ClockId, Deadlines, Doorbell, EventSource, HostWorld, InputKind, Landmark, WorldEvent, WorldStop};
