//! A split virtqueue, driver side, with VIRTIO_RING_F_EVENT_IDX.
//!
//! Costs nothing but memory accesses: the device only looks at the rings during an exit (a
//! notification or a frame applied by the VMM). Chains are added to the available ring
//! without publishing; [`Queue::publish`] makes them visible and tells whether the device
//! asked to be notified (`avail_event`), so a batch costs at most one notification.
//! Interrupts are asked for only when the driver is about to wait ([`Queue::arm`]); otherwise
//! `used_event` stays behind the used index and the device raises none.

use alloc::alloc::{alloc_zeroed, Layout};
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// The longest chain [`Queue::add`] takes.
pub const MAX_CHAIN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One buffer of a chain: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub struct Queue {
    size: u16,
    desc: *mut Desc,
    /// flags, idx, ring[size], used_event (u16 each)
    avail: *mut u16,
    /// flags, idx (u16), ring[size] of (id u32, len u32), avail_event (u16)
    used: *mut u8,
    free: Vec<u16>,
    /// Our next available index (published or not).
    avail_idx: u16,
    /// The available index at the last notification decision.
    kicked_idx: u16,
    /// The next used entry to read.
    last_used: u16,
}

/// Zeroed, page-aligned memory that lives as long as the guest.
fn dma_alloc(bytes: usize) -> *mut u8 {
    let layout = Layout::from_size_align(bytes.max(16), 4096).expect("dma layout");
    // SAFETY: the layout has a nonzero size.
    let p = unsafe { alloc_zeroed(layout) };
    assert!(!p.is_null(), "out of memory for virtio rings");
    p
}

/// Page-aligned zeroed buffer memory for the drivers (never freed).
pub fn dma_buffer(bytes: usize) -> *mut u8 {
    dma_alloc(bytes)
}

impl Queue {
    /// A queue of `size` entries (a power of two). All interrupts are suppressed at first.
    pub fn new(size: u16) -> Queue {
        let n = size as usize;
        let q = Queue {
            size,
            desc: dma_alloc(16 * n).cast(),
            avail: dma_alloc(6 + 2 * n).cast(),
            used: dma_alloc(6 + 8 * n),
            free: (0..size).rev().collect(),
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
        };
        q.write_used_event(u16::MAX);
        q
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn desc_addr(&self) -> u64 {
        self.desc as u64
    }
    pub fn avail_addr(&self) -> u64 {
        self.avail as u64
    }
    pub fn used_addr(&self) -> u64 {
        self.used as u64
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Adds a chain (not yet visible to the device); returns its head, or None if the
    /// descriptors run out.
    pub fn add(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > MAX_CHAIN || bufs.len() > self.free.len() {
            return None;
        }
        let mut ids = [0u16; MAX_CHAIN];
        for id in ids.iter_mut().take(bufs.len()) {
            *id = self.free.pop()?;
        }
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let d = Desc {
                addr: b.addr,
                len: b.len,
                flags: if b.write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { ids[i + 1] },
            };
            // SAFETY: ids come from the free list, so they are < size; the table has size entries.
            unsafe { self.desc.add(ids[i] as usize).write_volatile(d) };
        }
        let slot = (self.avail_idx % self.size) as usize;
        // SAFETY: ring entry `slot` < size, after the two u16 header fields.
        unsafe { self.avail.add(2 + slot).write_volatile(ids[0]) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(ids[0])
    }

    /// Sets the buffer address of descriptor `id` (of a chain added but not yet published).
    pub fn set_addr(&mut self, id: u16, addr: u64) {
        if id < self.size {
            // SAFETY: id < size, inside the descriptor table.
            unsafe { core::ptr::addr_of_mut!((*self.desc.add(id as usize)).addr).write_volatile(addr) };
        }
    }

    /// Makes the added chains visible to the device. Returns whether the device wants a
    /// notification (EVENT_IDX: `avail_event` lies among the chains published since the last
    /// decision).
    pub fn publish(&mut self) -> bool {
        if self.avail_idx == self.kicked_idx {
            return false;
        }
        fence(Ordering::SeqCst);
        // SAFETY: avail.idx is the second u16 of the available ring.
        unsafe { self.avail.add(1).write_volatile(self.avail_idx) };
        fence(Ordering::SeqCst);
        let event = self.read_avail_event();
        let (new, old) = (self.avail_idx, self.kicked_idx);
        self.kicked_idx = new;
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx is the u16 at offset 2 of the used ring.
        unsafe { self.used.add(2).cast::<u16>().read_volatile() }
    }

    fn read_avail_event(&self) -> u16 {
        // SAFETY: avail_event follows the used ring's `size` 8-byte entries.
        unsafe { self.used.add(4 + 8 * self.size as usize).cast::<u16>().read_volatile() }
    }

    fn write_used_event(&self, value: u16) {
        // SAFETY: used_event follows the available ring's `size` entries.
        unsafe { self.avail.add(2 + self.size as usize).write_volatile(value) }
    }

    /// Whether the device has returned chains we have not taken yet.
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// Takes the next used chain: (head, bytes written by the device). Its descriptors are
    /// free again.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = (self.last_used % self.size) as usize;
        // SAFETY: entry `slot` < size of the used ring, after its 4-byte header.
        let (id, len) = unsafe {
            let e = self.used.add(4 + 8 * slot).cast::<u32>();
            (e.read_volatile(), e.add(1).read_volatile())
        };
        self.last_used = self.last_used.wrapping_add(1);
        let head = id as u16;
        let mut d = head;
        for _ in 0..self.size {
            if d >= self.size {
                break;
            }
            self.free.push(d);
            // SAFETY: d < size (checked above).
            let desc = unsafe { self.desc.add(d as usize).read_volatile() };
            if desc.flags & DESC_F_NEXT == 0 {
                break;
            }
            d = desc.next;
        }
        Some((head, len))
    }

    /// Asks for an interrupt at the next used chain. Returns whether one is there already
    /// (then no interrupt may come for it: check again instead of waiting).
    pub fn arm(&self) -> bool {
        self.write_used_event(self.last_used);
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// No interrupts until `arm` (until the used index wraps around, at least).
    pub fn disarm(&self) {
        self.write_used_event(self.last_used.wrapping_sub(1));
    }
}
