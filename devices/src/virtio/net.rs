//! virtio-net (device ID 1): one receive and one transmit queue, no offloads.
//!
//! Features: VERSION_1, MAC, STATUS (link always up) and RING_EVENT_IDX. Checksum and
//! segmentation offloads (CSUM, GUEST_CSUM, *_TSO*, MRG_RXBUF) are deliberately not offered: every
//! frame is a plain Ethernet frame behind a zeroed 12-byte header, which keeps the TAP simple
//! (no IFF_VNET_HDR) and the logged frames self-contained. The guest computes checksums itself.
//!
//! Receive: frames come in as world events at exits ([`Net::receive`]) into a bounded bounce
//! queue owned by the device, and are copied into the guest's receive buffers at that exit or at
//! a later one when the guest posts buffers. Transmit: at a transmit notification, each chain is
//! gathered into one frame and handed to the output stage.

use super::device::{Ctx, Fault, VirtioDevice};
use super::queue::VirtQueue;
use super::spec::MacAddr;
use crate::virtio::output::Output;
use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const NET_QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (with `num_buffers`, always present under VERSION_1).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame, without the header, that is sent or received.
pub const MAX_FRAME: usize = 65550;
/// The most a transmit chain may carry: header and largest frame.
pub const MAX_TX_CHAIN: u64 = (NET_HDR_LEN + MAX_FRAME) as u64;
/// The most a receive chain may offer (far more than any frame needs).
pub const MAX_RX_CHAIN: u64 = 1 << 20;
/// Bounds of the bounce queue: frames beyond them are dropped, as a NIC drops when its ring is full.
pub const BOUNCE_FRAMES: usize = 256;
pub const BOUNCE_BYTES: usize = 4 << 20;

/// The device's state beyond the transport, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Received frames not yet copied into the guest, oldest first.
    pub bounce: Vec<Vec<u8>>,
    pub dropped: u64,
}

pub struct Net {
    index: u8,
    mac: MacAddr,
    bounce: VecDeque<Vec<u8>>,
    bounce_bytes: usize,
    dropped: u64,
}

impl Net {
    /// Net device `index` (its index among the VM's net devices, as in `WorldEvent::NetFrame`).
    pub fn new(index: u8, mac: MacAddr) -> Self {
        Self { index, mac, bounce: VecDeque::new(), bounce_bytes: 0, dropped: 0 }
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Frames received and dropped (bounce queue full, frame too large, buffer too small).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Frames waiting in the bounce queue.
    pub fn pending(&self) -> usize {
        self.bounce.len()
    }

    /// Takes a received frame into the bounce queue; false if it was dropped.
    pub fn receive(&mut self, frame: Vec<u8>) -> bool {
        if frame.is_empty()
            || frame.len() > MAX_FRAME
            || self.bounce.len() >= BOUNCE_FRAMES
            || self.bounce_bytes + frame.len() > BOUNCE_BYTES
        {
            self.dropped += 1;
            tracing::debug!(device = self.index, len = frame.len(), "received frame dropped");
            return false;
        }
        self.bounce_bytes += frame.len();
        self.bounce.push_back(frame);
        true
    }

    /// Copies bounced frames into the guest's receive buffers. Returns whether an interrupt is due.
    pub fn deliver(&mut self, queues: &mut [VirtQueue], mem: &GuestMemoryMmap) -> Result<bool, Fault> {
        let rx = queues.get_mut(usize::from(RX_QUEUE)).ok_or_else(|| Fault::Guest("no receive queue".into()))?;
        if !rx.ready() {
            return Ok(false);
        }
        let mut used = false;
        while let Some(frame) = self.bounce.front() {
            let Some(chain) = rx.pop(mem, MAX_RX_CHAIN).map_err(Fault::queue(RX_QUEUE))? else {
                // Out of buffers: ask the guest to tell us when it posts more.
                rx.enable_notification(mem).map_err(Fault::queue(RX_QUEUE))?;
                break;
            };
            if !chain.readable.is_empty() {
                return Err(Fault::Guest(format!("receive chain {} has device-readable buffers", chain.head)));
            }
            let frame_len = frame.len();
            if chain.writable_len() < (NET_HDR_LEN + frame_len) as u64 {
                // The frame is dropped, the buffer stays for the next one.
                tracing::debug!(device = self.index, frame_len, room = chain.writable_len(), "rx buffer too small");
                rx.undo_pop().map_err(Fault::queue(RX_QUEUE))?;
                self.drop_front();
                continue;
            }
            let mut header = [0u8; NET_HDR_LEN];
            header[10] = 1; // num_buffers
            chain.write_at(mem, 0, &header).map_err(Fault::queue(RX_QUEUE))?;
            chain.write_at(mem, NET_HDR_LEN as u64, frame).map_err(Fault::queue(RX_QUEUE))?;
            // Both lengths are bounded by MAX_FRAME.
            rx.add_used(mem, chain.head, (NET_HDR_LEN + frame_len) as u32).map_err(Fault::queue(RX_QUEUE))?;
            if let Some(f) = self.bounce.pop_front() {
                self.bounce_bytes -= f.len();
            }
            used = true;
        }
        if self.bounce.is_empty() {
            // Nothing waits: the guest need not notify when it posts buffers.
            rx.disable_notification(mem).map_err(Fault::queue(RX_QUEUE))?;
        }
        Ok(used && rx.needs_notification(mem).map_err(Fault::queue(RX_QUEUE))?)
    }

    fn drop_front(&mut self) {
        if let Some(f) = self.bounce.pop_front() {
            self.bounce_bytes -= f.len();
            self.dropped += 1;
        }
    }

    fn transmit(&mut self, queues: &mut [VirtQueue], ctx: &mut Ctx<'_>) -> Result<bool, Fault> {
        let qerr = Fault::queue;
        let tx = queues.get_mut(usize::from(TX_QUEUE)).ok_or_else(|| Fault::Guest("no transmit queue".into()))?;
        let mut used = false;
        while let Some(chain) = tx.pop(ctx.mem, MAX_TX_CHAIN).map_err(qerr(TX_QUEUE))? {
            if !chain.writable.is_empty() {
                return Err(Fault::Guest(format!("transmit chain {} has device-writable buffers", chain.head)));
            }
            // At most MAX_TX_CHAIN, checked by pop.
            let len = chain.readable_len() as usize;
            if len < NET_HDR_LEN {
                return Err(Fault::Guest(format!(
                    "transmit chain {} of {len} bytes is shorter than the {NET_HDR_LEN}-byte header",
                    chain.head
                )));
            }
            let mut buf = vec![0u8; len];
            chain.read_at(ctx.mem, 0, &mut buf).map_err(qerr(TX_QUEUE))?;
            let frame = buf.split_off(NET_HDR_LEN);
            if frame.is_empty() {
                tracing::debug!(device = self.index, "empty frame not sent");
            } else {
                ctx.out.emit(ctx.at, Output::NetFrame { device: self.index, frame })?;
            }
            tx.add_used(ctx.mem, chain.head, 0).map_err(qerr(TX_QUEUE))?;
            used = true;
        }
        // With EVENT_IDX: notify us at the next chain (the ring is empty now).
        tx.enable_notification(ctx.mem).map_err(qerr(TX_QUEUE))?;
        Ok(used && tx.needs_notification(ctx.mem).map_err(qerr(TX_QUEUE))?)
    }

    pub fn state(&self) -> NetState {
        NetState { bounce: self.bounce.iter().cloned().collect(), dropped: self.dropped }
    }

    /// Restores the bounce queue; frames beyond the bounds are dropped, as at reception.
    pub fn restore(&mut self, state: &NetState) {
        self.bounce.clear();
        self.bounce_bytes = 0;
        for frame in &state.bounce {
            self.receive(frame.clone());
        }
        self.dropped = state.dropped;
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_bytes(&config, offset, data);
    }

    fn activate(&mut self, _features: u64) {}

    fn notify(&mut self, queue: u16, queues: &mut [VirtQueue], ctx: &mut Ctx<'_>) -> Result<bool, Fault> {
        match queue {
            RX_QUEUE => self.deliver(queues, ctx.mem),
            TX_QUEUE => self.transmit(queues, ctx),
            _ => Err(Fault::Guest(format!("notification of queue {queue}"))),
        }
    }

    fn reset(&mut self) {
        self.bounce.clear();
        self.bounce_bytes = 0;
    }

    fn name(&self) -> String {
        format!("virtio-net {}", self.index)
    }
}

/// Copies `data.len()` bytes of `config` from `offset`; bytes past its end read as zero.
pub(crate) fn read_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(config.len());
    let src = &config[start..];
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}
