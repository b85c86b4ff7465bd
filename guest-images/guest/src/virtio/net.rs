//! virtio-net driver (queue 0 receive, queue 1 transmit) and smoltcp's `phy::Device` over it.
//!
//! Every buffer is 2 KiB (12-byte `virtio_net_hdr_v1` + a 1514-byte frame fit): descriptor i
//! of a queue always points at buffer i, so a used head names its buffer. Nothing here exits
//! except [`Net::flush`] (at most one notification per queue per batch, and only when the
//! device asked for it through `avail_event`) and [`Net::ack`].

use super::mmio::{Mmio, F_EVENT_IDX, F_VERSION_1};
use super::queue::{dma_buffer, Buf, Queue};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

const RX: u16 = 0;
const TX: u16 = 1;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const HDR: usize = 12;
const BUF: usize = 2048;
const MTU: usize = 1514;
const QUEUE_SIZE: u16 = 128;

/// One direction: its queue and the buffers behind its descriptors.
pub struct Ring {
    q: Queue,
    bufs: *mut u8,
}

impl Ring {
    fn new(size: u16) -> Ring {
        Ring { q: Queue::new(size), bufs: dma_buffer(BUF * size as usize) }
    }

    fn buf(&self, id: u16) -> *mut u8 {
        // SAFETY: id < queue size, and the area holds `size` buffers of BUF bytes.
        unsafe { self.bufs.add(BUF * (id as usize % self.q.size() as usize)) }
    }
}

pub struct Net {
    mmio: Mmio,
    rx: Ring,
    tx: Ring,
    mac: [u8; 6],
    pub irq: u8,
    pub frames_in: u64,
    pub frames_out: u64,
    pub kicks: u64,
    pub acks: u64,
}

impl Net {
    /// Initialises the device behind `mmio` (on `irq`) and posts every receive buffer.
    pub fn new(mmio: Mmio, irq: u8) -> Result<Net, &'static str> {
        let features = mmio.negotiate(F_VERSION_1 | F_EVENT_IDX | F_MAC | F_STATUS, F_VERSION_1 | F_EVENT_IDX)?;
        let size = QUEUE_SIZE.min(mmio.queue_max(RX)).min(mmio.queue_max(TX));
        if size == 0 || !size.is_power_of_two() {
            return Err("bad queue size");
        }
        let mut net = Net {
            mmio,
            rx: Ring::new(size),
            tx: Ring::new(size),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            irq,
            frames_in: 0,
            frames_out: 0,
            kicks: 0,
            acks: 0,
        };
        if features & F_MAC != 0 {
            let (a, b) = (mmio.config32(0), mmio.config32(4));
            net.mac[..4].copy_from_slice(&a.to_le_bytes());
            net.mac[4..].copy_from_slice(&b.to_le_bytes()[..2]);
        }
        mmio.setup_queue(RX, &net.rx.q);
        mmio.setup_queue(TX, &net.tx.q);
        net.refill_rx();
        mmio.driver_ok()?;
        net.flush();
        Ok(net)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Posts every free receive descriptor with its buffer (the address is set once the
    /// queue has chosen the descriptor: single-descriptor chains, buffer i behind descriptor i).
    fn refill_rx(&mut self) {
        let rx = &mut self.rx;
        while let Some(id) = rx.q.add(&[Buf { addr: 0, len: BUF as u32, write: true }]) {
            rx.q.set_addr(id, rx.buf(id) as u64);
        }
    }

    /// Publishes posted receive buffers and queued frames; notifies the device where it asked.
    pub fn flush(&mut self) {
        self.refill_rx();
        if self.tx.q.publish() {
            self.mmio.notify(TX);
            self.kicks += 1;
        }
        if self.rx.q.publish() {
            self.mmio.notify(RX);
            self.kicks += 1;
        }
        // The device sends synchronously at the notification: take the buffers back now.
        while self.tx.q.pop_used().is_some() {}
        self.tx.q.disarm();
    }

    /// Whether a received frame waits.
    pub fn rx_pending(&self) -> bool {
        self.rx.q.has_used()
    }

    /// Asks for an interrupt at the next received frame; true if one is there already.
    pub fn arm(&self) -> bool {
        self.rx.q.arm()
    }

    pub fn disarm(&self) {
        self.rx.q.disarm();
    }

    /// Lowers the interrupt line (one exit).
    pub fn ack(&mut self) {
        self.acks += 1;
        self.mmio.ack_interrupt();
    }
}

pub struct RxToken<'a> {
    ring: &'a Ring,
    id: u16,
    len: usize,
}

pub struct TxToken<'a> {
    net_tx: &'a mut Ring,
    frames_out: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let len = self.len.clamp(HDR, BUF) - HDR;
        // SAFETY: the device wrote `len` bytes after the header into buffer `id`, which is
        // ours until `Net::flush` posts it again.
        let frame = unsafe { core::slice::from_raw_parts(self.ring.buf(self.id).add(HDR), len) };
        f(frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let ring = self.net_tx;
        let id = match ring.q.add(&[Buf { addr: 0, len: (HDR + len) as u32, write: false }]) {
            Some(id) => id,
            None => {
                // Checked by `Device::transmit`; cannot happen.
                panic!("virtio-net: no transmit descriptor")
            }
        };
        let buf = ring.buf(id);
        ring.q.set_addr(id, buf as u64);
        // SAFETY: buffer `id` is ours until the device uses it; HDR + len <= BUF.
        let (hdr, frame) =
            unsafe { (core::slice::from_raw_parts_mut(buf, HDR), core::slice::from_raw_parts_mut(buf.add(HDR), len)) };
        hdr.fill(0);
        *self.frames_out += 1;
        f(frame)
    }
}

impl Net {
    /// Makes sure a transmit descriptor is free: takes back used ones, and if the ring is
    /// full of unsent frames, sends them (one notification).
    fn tx_room(&mut self) -> bool {
        while self.tx.q.pop_used().is_some() {}
        if self.tx.q.free_count() == 0 {
            if self.tx.q.publish() {
                self.mmio.notify(TX);
                self.kicks += 1;
            }
            while self.tx.q.pop_used().is_some() {}
        }
        self.tx.q.free_count() > 0
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.rx.q.has_used() || !self.tx_room() {
            return None;
        }
        let (id, len) = self.rx.q.pop_used()?;
        self.frames_in += 1;
        Some((
            RxToken { ring: &self.rx, id, len: len as usize },
            TxToken { net_tx: &mut self.tx, frames_out: &mut self.frames_out },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if !self.tx_room() {
            return None;
        }
        Some(TxToken { net_tx: &mut self.tx, frames_out: &mut self.frames_out })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}
