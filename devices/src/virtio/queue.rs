//! One split virtqueue as the device sees it: the configuration the driver writes through the
//! transport, and validated access to the descriptor chains it makes available.
//!
//! The available and used rings are handled by `virtio_queue::Queue`. Descriptor chains are
//! walked here rather than with `virtio_queue::DescriptorChain`, because that iterator ends a
//! chain silently on a loop, an index out of the table or an unreadable descriptor, while a
//! device of ours must tell those apart from a well-formed chain and put itself in needs-reset.
//! Every buffer of a returned [`Chain`] has been checked to lie inside guest memory.

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// A guest misbehaviour found in a queue's configuration or rings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue size {size} is not a power of two in 1..={max}")]
    BadSize { size: u32, max: u16 },
    #[error("{ring} address {addr:#x} is not {align}-byte aligned")]
    Misaligned { ring: &'static str, addr: u64, align: u64 },
    #[error("{ring} at {addr:#x} (+{len:#x}) is outside guest memory")]
    RingOutsideMemory { ring: &'static str, addr: u64, len: u64 },
    #[error("queue is not ready")]
    NotReady,
    #[error("available index {avail_idx} is more than the queue size {size} ahead of {next_avail}")]
    AvailIndex { avail_idx: u16, next_avail: u16, size: u16 },
    #[error("descriptor index {index} is outside the table of {size} (chain head {head})")]
    DescIndex { head: u16, index: u16, size: u16 },
    #[error("descriptor chain from head {head} is longer than the queue size {size} (a loop)")]
    ChainLoop { head: u16, size: u16 },
    #[error("indirect descriptor in chain {head}, but VIRTIO_F_INDIRECT_DESC is not offered")]
    Indirect { head: u16 },
    #[error("descriptor {index} of chain {head}: buffer {addr:#x} (+{len:#x}) is outside guest memory")]
    BufferOutsideMemory { head: u16, index: u16, addr: u64, len: u32 },
    #[error("chain from head {head} carries more than {limit} bytes")]
    TooLong { head: u16, limit: u64 },
    #[error("device-readable descriptor {index} follows a device-writable one in chain {head}")]
    ReadableAfterWritable { head: u16, index: u16 },
    #[error("guest memory access to the {what} failed: {detail}")]
    Memory { what: &'static str, detail: String },
}

fn memory(what: &'static str) -> impl FnOnce(virtio_queue::Error) -> QueueError {
    move |e| QueueError::Memory { what, detail: e.to_string() }
}

/// One buffer of a chain, inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated descriptor chain: device-readable buffers, then device-writable ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Reads `buf.len()` bytes of the readable part starting at `offset`; returns how many it read.
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> Result<usize, QueueError> {
        let mut done = 0usize;
        for (addr, len, skip) in Self::span(&self.readable, offset, buf.len()) {
            let dst = &mut buf[done..done + len];
            let at = offset_addr(addr, skip)?;
            mem.read_slice(dst, at).map_err(|e| QueueError::Memory { what: "buffer", detail: e.to_string() })?;
            done += len;
        }
        Ok(done)
    }

    /// Writes `data` into the writable part starting at `offset`; returns how many bytes fit.
    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) -> Result<usize, QueueError> {
        let mut done = 0usize;
        for (addr, len, skip) in Self::span(&self.writable, offset, data.len()) {
            let at = offset_addr(addr, skip)?;
            mem.write_slice(&data[done..done + len], at)
                .map_err(|e| QueueError::Memory { what: "buffer", detail: e.to_string() })?;
            done += len;
        }
        Ok(done)
    }

    /// The pieces (buffer address, length, offset into the buffer) covering `len` bytes from
    /// `offset` of the concatenation of `bufs`, in order.
    fn span(bufs: &[Buf], offset: u64, len: usize) -> Vec<(GuestAddress, usize, u64)> {
        let mut pieces = Vec::new();
        let mut skip = offset;
        let mut left = len as u64;
        for b in bufs {
            if left == 0 {
                break;
            }
            let blen = u64::from(b.len);
            if skip >= blen {
                skip -= blen;
                continue;
            }
            let take = (blen - skip).min(left);
            // `take` is at most a u32 buffer length, so it fits in usize.
            pieces.push((b.addr, take as usize, skip));
            left -= take;
            skip = 0;
        }
        pieces
    }
}

fn offset_addr(addr: GuestAddress, offset: u64) -> Result<GuestAddress, QueueError> {
    addr.0
        .checked_add(offset)
        .map(GuestAddress)
        .ok_or(QueueError::Memory { what: "buffer", detail: "address overflow".into() })
}

/// A queue's state for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// One virtqueue: the registers the driver writes, and the ring state once it is ready.
#[derive(Debug)]
pub struct VirtQueue {
    max_size: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// The rings, once the driver made the queue ready and its configuration was valid.
    queue: Option<Queue>,
}

/// Which ring address a register write sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    Desc,
    Avail,
    Used,
}

impl VirtQueue {
    /// A queue of at most `max_size` entries (a power of two, at most 32768).
    pub fn new(max_size: u16) -> Self {
        Self { max_size, size: max_size, desc: 0, avail: 0, used: 0, queue: None }
    }

    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    pub fn ready(&self) -> bool {
        self.queue.is_some()
    }

    /// QueueNum: the size the driver chose.
    pub fn set_size(&mut self, size: u32) -> Result<(), QueueError> {
        match u16::try_from(size) {
            Ok(s) if s != 0 && s <= self.max_size && s.is_power_of_two() => {
                self.size = s;
                Ok(())
            }
            _ => Err(QueueError::BadSize { size, max: self.max_size }),
        }
    }

    /// Half of a ring address (`high` selects bits 32..64).
    pub fn set_address(&mut self, ring: Ring, high: bool, value: u32) {
        let field = match ring {
            Ring::Desc => &mut self.desc,
            Ring::Avail => &mut self.avail,
            Ring::Used => &mut self.used,
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(value)
        };
    }

    /// QueueReady = 1: checks the configuration against guest memory and starts the rings.
    pub fn activate(&mut self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<(), QueueError> {
        let size = u64::from(self.size);
        let event = if event_idx { 2 } else { 0 };
        let rings = [
            ("descriptor table", self.desc, 16, DESC_SIZE * size),
            ("available ring", self.avail, 2, 4 + 2 * size + event),
            ("used ring", self.used, 4, 4 + 8 * size + event),
        ];
        for (ring, addr, align, len) in rings {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned { ring, addr, align });
            }
            let inside =
                usize::try_from(len).is_ok_and(|l| GuestMemoryBackend::check_range(mem, GuestAddress(addr), l));
            if !inside {
                return Err(QueueError::RingOutsideMemory { ring, addr, len });
            }
        }
        let mut queue = Queue::new(self.max_size).map_err(memory("queue"))?;
        queue.try_set_size(self.size).map_err(memory("queue size"))?;
        queue.try_set_desc_table_address(GuestAddress(self.desc)).map_err(memory("descriptor table"))?;
        queue.try_set_avail_ring_address(GuestAddress(self.avail)).map_err(memory("available ring"))?;
        queue.try_set_used_ring_address(GuestAddress(self.used)).map_err(memory("used ring"))?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        self.queue = Some(queue);
        Ok(())
    }

    /// Back to the state after a device reset (or QueueReady = 0).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Stops the rings but keeps the configuration registers (QueueReady = 0).
    pub fn deactivate(&mut self) {
        self.queue = None;
    }

    fn rings(&mut self) -> Result<&mut Queue, QueueError> {
        self.queue.as_mut().ok_or(QueueError::NotReady)
    }

    /// Whether the driver has made chains available that the device has not taken yet.
    pub fn has_available(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let q = self.rings()?;
        let idx = q.avail_idx(mem, Ordering::Acquire).map_err(memory("available ring"))?;
        Ok(idx.0 != q.next_avail())
    }

    /// Takes the next available chain, if any, and validates it; its buffers together may carry
    /// at most `limit` bytes.
    pub fn pop(&mut self, mem: &GuestMemoryMmap, limit: u64) -> Result<Option<Chain>, QueueError> {
        let q = self.rings()?;
        let size = q.size();
        let desc_table = q.desc_table();
        let next_avail = q.next_avail();
        let head = match q.iter(mem) {
            Ok(mut iter) => match iter.next() {
                Some(chain) => chain.head_index(),
                None => return Ok(None),
            },
            Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                let avail_idx = q.avail_idx(mem, Ordering::Relaxed).map(|w| w.0).unwrap_or(0);
                return Err(QueueError::AvailIndex { avail_idx, next_avail, size });
            }
            Err(e) => return Err(memory("available ring")(e)),
        };
        walk_chain(mem, desc_table, size, head, limit).map(Some)
    }

    /// Puts the last popped chain back, so it is taken again by the next `pop`.
    pub fn undo_pop(&mut self) -> Result<(), QueueError> {
        let q = self.rings()?;
        q.set_next_avail((Wrapping(q.next_avail()) - Wrapping(1)).0);
        Ok(())
    }

    /// Returns chain `head` to the driver with `len` bytes written into it.
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) -> Result<(), QueueError> {
        self.rings()?.add_used(mem, head, len).map_err(memory("used ring"))
    }

    /// Whether the driver wants an interrupt for the chains used since the last call
    /// (`used_event` with VIRTIO_RING_F_EVENT_IDX, always otherwise).
    pub fn needs_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        let q = self.rings()?;
        let wanted = q.needs_notification(mem).map_err(memory("available ring"))?;
        if q.event_idx_enabled() || !wanted {
            return Ok(wanted);
        }
        // Without EVENT_IDX the driver may set VRING_AVAIL_F_NO_INTERRUPT (the crate ignores it).
        let flags: u16 = mem
            .read_obj(GuestAddress(q.avail_ring()))
            .map_err(|e| QueueError::Memory { what: "available ring", detail: e.to_string() })?;
        Ok(u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    }

    /// Asks the driver to notify when it makes the next chain available. Returns whether chains
    /// are available already.
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.rings()?.enable_notification(mem).map_err(memory("used ring"))
    }

    /// Tells the driver that notifications are not needed for now.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<(), QueueError> {
        self.rings()?.disable_notification(mem).map_err(memory("used ring"))
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let (next_avail, next_used, event_idx) =
            self.queue.as_ref().map_or((0, 0, false), |q| (q.next_avail(), q.next_used(), q.event_idx_enabled()));
        QueueSnapshot {
            size: self.size,
            ready: self.queue.is_some(),
            desc: self.desc,
            avail: self.avail,
            used: self.used,
            next_avail,
            next_used,
            event_idx,
        }
    }

    /// Restores a snapshot taken by [`VirtQueue::snapshot`] of a queue with the same maximum size.
    /// A snapshot that no valid queue could have produced is refused.
    pub fn restore(&mut self, snap: &QueueSnapshot) -> Result<(), QueueError> {
        let mut restored = Self::new(self.max_size);
        restored.set_size(u32::from(snap.size))?;
        restored.desc = snap.desc;
        restored.avail = snap.avail;
        restored.used = snap.used;
        if snap.ready {
            let mut q = Queue::new(self.max_size).map_err(memory("queue"))?;
            q.try_set_size(snap.size).map_err(memory("queue size"))?;
            q.try_set_desc_table_address(GuestAddress(snap.desc)).map_err(memory("descriptor table"))?;
            q.try_set_avail_ring_address(GuestAddress(snap.avail)).map_err(memory("available ring"))?;
            q.try_set_used_ring_address(GuestAddress(snap.used)).map_err(memory("used ring"))?;
            q.set_next_avail(snap.next_avail);
            q.set_next_used(snap.next_used);
            q.set_event_idx(snap.event_idx);
            q.set_ready(true);
            restored.queue = Some(q);
        }
        *self = restored;
        Ok(())
    }
}

/// Walks the chain from `head` in the descriptor table at `desc_table` of `size` entries.
fn walk_chain(mem: &GuestMemoryMmap, desc_table: u64, size: u16, head: u16, limit: u64) -> Result<Chain, QueueError> {
    let mut chain = Chain { head, ..Chain::default() };
    let mut index = head;
    let mut total = 0u64;
    for _ in 0..size {
        if index >= size {
            return Err(QueueError::DescIndex { head, index, size });
        }
        let mut raw = [0u8; DESC_SIZE as usize];
        // The table was checked to lie in guest memory at activation (but a restored checkpoint
        // was not), so the address and the read are still checked.
        let at = offset_addr(GuestAddress(desc_table), u64::from(index) * DESC_SIZE)?;
        mem.read_slice(&mut raw, at)
            .map_err(|e| QueueError::Memory { what: "descriptor table", detail: e.to_string() })?;
        let addr = u64::from_le_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]);
        let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from(u16::from_le_bytes([raw[12], raw[13]]));
        let next = u16::from_le_bytes([raw[14], raw[15]]);

        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(QueueError::Indirect { head });
        }
        total += u64::from(len);
        if total > limit {
            return Err(QueueError::TooLong { head, limit });
        }
        let inside = len == 0
            || addr.checked_add(u64::from(len)).is_some()
                && GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize);
        if !inside {
            return Err(QueueError::BufferOutsideMemory { head, index, addr, len });
        }
        let buf = Buf { addr: GuestAddress(addr), len };
        if flags & VRING_DESC_F_WRITE != 0 {
            chain.writable.push(buf);
        } else if !chain.writable.is_empty() {
            return Err(QueueError::ReadableAfterWritable { head, index });
        } else {
            chain.readable.push(buf);
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        index = next;
    }
    Err(QueueError::ChainLoop { head, size })
}
