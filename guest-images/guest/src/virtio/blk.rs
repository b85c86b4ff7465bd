//! virtio-blk driver: synchronous reads, and writes optionally followed by a FLUSH in the same
//! notification (two chains, one exit). ftvm's device completes requests later, at a landmark;
//! a quick disk's completion often arrives at the notification exit itself, so the used ring is
//! checked right after it; only if a request is still pending does the driver arm an interrupt
//! and wait, and it acknowledges the interrupt as soon as it has seen it.

use super::mmio::{Mmio, F_EVENT_IDX, F_VERSION_1};
use super::queue::{dma_buffer, Buf, Queue, MAX_CHAIN};
use crate::interrupts;

const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const S_OK: u8 = 0;

pub const SECTOR: usize = 512;
const QUEUE_SIZE: u16 = 32;
/// Bytes per data descriptor (the device's SIZE_MAX is 32 KiB).
const SEGMENT: usize = 32 << 10;
/// The largest request this driver makes: header and status leave MAX_CHAIN - 2 segments.
pub const MAX_REQUEST: usize = SEGMENT * 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The device answered with a status other than OK.
    Status(u8),
    /// Outside the disk, not whole sectors, or too large for one request.
    Range,
    ReadOnly,
}

pub struct Blk {
    mmio: Mmio,
    q: Queue,
    irq: u8,
    capacity: u64,
    readonly: bool,
    flush: bool,
    seg: usize,
    /// Two request headers (16 bytes each) and two status bytes, in DMA memory.
    scratch: *mut u8,
    irqs_seen: u64,
    pub requests: u64,
    pub kicks: u64,
    /// InterruptACK writes and halts while waiting for a completion.
    pub acks: u64,
    pub waits: u64,
}

impl Blk {
    pub fn new(mmio: Mmio, irq: u8) -> Result<Blk, &'static str> {
        let features =
            mmio.negotiate(F_VERSION_1 | F_EVENT_IDX | F_FLUSH | F_RO | F_SEG_MAX | F_SIZE_MAX, F_VERSION_1)?;
        let size = QUEUE_SIZE.min(mmio.queue_max(0));
        if size == 0 || !size.is_power_of_two() {
            return Err("bad queue size");
        }
        let capacity = mmio.config32(0) as u64 | (mmio.config32(4) as u64) << 32;
        let mut seg = SEGMENT;
        if features & F_SIZE_MAX != 0 {
            let size_max = mmio.config32(8) as usize;
            if size_max >= SECTOR {
                seg = seg.min(size_max & !(SECTOR - 1));
            }
        }
        let blk = Blk {
            mmio,
            q: Queue::new(size),
            irq,
            capacity,
            readonly: features & F_RO != 0,
            flush: features & F_FLUSH != 0,
            seg,
            scratch: dma_buffer(64),
            irqs_seen: interrupts::count(irq),
            requests: 0,
            kicks: 0,
            acks: 0,
            waits: 0,
        };
        mmio.setup_queue(0, &blk.q);
        mmio.driver_ok()?;
        Ok(blk)
    }

    pub fn irq(&self) -> u8 {
        self.irq
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Reads `buf.len()` bytes (whole sectors) from `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check(sector, buf.len())?;
        self.submit(T_IN, sector, buf.as_mut_ptr(), buf.len(), false)
    }

    /// Writes `data` (whole sectors) at `sector`, then flushes if the device can.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.readonly {
            return Err(BlkError::ReadOnly);
        }
        self.check(sector, data.len())?;
        let flush = self.flush;
        self.submit(T_OUT, sector, data.as_ptr() as *mut u8, data.len(), flush)
    }

    /// Writes `data` (whole sectors) at `sector` without a FLUSH: the device may complete it
    /// before it is durable ([`Blk::flush`] makes every completed write durable).
    pub fn write_unflushed(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        if self.readonly {
            return Err(BlkError::ReadOnly);
        }
        self.check(sector, data.len())?;
        self.submit(T_OUT, sector, data.as_ptr() as *mut u8, data.len(), false)
    }

    /// A FLUSH alone (nothing if the device does not offer it): every write completed before
    /// is durable when this returns.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if !self.flush || self.readonly {
            return Ok(());
        }
        let hdr = self.header(0, T_FLUSH, 0);
        self.q
            .add(&[
                Buf { addr: hdr, len: 16, write: false },
                Buf { addr: self.scratch as u64 + 32, len: 1, write: true },
            ])
            .ok_or(BlkError::Range)?;
        self.requests += 1;
        if self.q.publish() {
            self.mmio.notify(0);
            self.kicks += 1;
        }
        self.wait_used(1);
        match self.status(0) {
            S_OK => Ok(()),
            s => Err(BlkError::Status(s)),
        }
    }

    fn check(&self, sector: u64, len: usize) -> Result<(), BlkError> {
        let sectors = (len / SECTOR) as u64;
        let segments = len.div_ceil(self.seg);
        if len == 0 || !len.is_multiple_of(SECTOR) || segments > MAX_CHAIN - 2 {
            return Err(BlkError::Range);
        }
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(BlkError::Range),
        }
    }

    fn header(&self, i: usize, kind: u32, sector: u64) -> u64 {
        // SAFETY: scratch holds 64 bytes: headers at 0 and 16, status bytes at 32 and 33.
        unsafe {
            let h = self.scratch.add(16 * i);
            h.cast::<u32>().write_volatile(kind);
            h.add(4).cast::<u32>().write_volatile(0);
            h.add(8).cast::<u64>().write_unaligned(sector);
            self.scratch.add(32 + i).write_volatile(0xff);
        }
        self.scratch as u64 + 16 * i as u64
    }

    fn status(&self, i: usize) -> u8 {
        // SAFETY: status byte i of the scratch area (see `header`).
        unsafe { self.scratch.add(32 + i).read_volatile() }
    }

    /// One request (and a FLUSH after it if `flush`), one notification, wait for both.
    fn submit(&mut self, kind: u32, sector: u64, data: *mut u8, len: usize, flush: bool) -> Result<(), BlkError> {
        let mut bufs = [Buf { addr: 0, len: 0, write: false }; MAX_CHAIN];
        let mut n = 0;
        bufs[n] = Buf { addr: self.header(0, kind, sector), len: 16, write: false };
        n += 1;
        let mut off = 0;
        while off < len {
            let piece = (len - off).min(self.seg);
            bufs[n] = Buf { addr: data as u64 + off as u64, len: piece as u32, write: kind == T_IN };
            n += 1;
            off += piece;
        }
        bufs[n] = Buf { addr: self.scratch as u64 + 32, len: 1, write: true };
        n += 1;
        let mut chains = 1;
        self.q.add(&bufs[..n]).ok_or(BlkError::Range)?;
        if flush {
            let flush_hdr = self.header(1, T_FLUSH, 0);
            self.q
                .add(&[
                    Buf { addr: flush_hdr, len: 16, write: false },
                    Buf { addr: self.scratch as u64 + 33, len: 1, write: true },
                ])
                .ok_or(BlkError::Range)?;
            chains += 1;
        }
        self.requests += chains as u64;
        if self.q.publish() {
            self.mmio.notify(0);
            self.kicks += 1;
        }
        self.wait_used(chains);
        for i in 0..chains {
            let s = self.status(i);
            if s != S_OK {
                return Err(BlkError::Status(s));
            }
        }
        Ok(())
    }

    /// Waits until `chains` chains come back (normally already there after the notification).
    fn wait_used(&mut self, mut chains: usize) {
        loop {
            while chains > 0 && self.q.pop_used().is_some() {
                chains -= 1;
            }
            // Lower the line if it went up since we last looked, so the next use is an edge and
            // no interrupt stays pending (with IF=0 a pending one has ftvm kick the vCPU).
            let seen = interrupts::count(self.irq);
            if seen != self.irqs_seen {
                self.irqs_seen = seen;
                self.acks += 1;
                self.mmio.ack_interrupt();
            }
            if chains == 0 {
                self.q.disarm();
                return;
            }
            if !self.q.arm() {
                self.waits += 1;
                interrupts::wait();
            }
        }
    }
}
