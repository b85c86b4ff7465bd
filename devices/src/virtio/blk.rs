//! virtio-blk (device ID 2): one request queue, 512-byte sectors. Requests are taken at the
//! exit of the queue notification and complete later, each as a `WorldEvent::DiskDone` at a
//! landmark (see `disk_queue`): the vCPU never waits for the disk.
//!
//! Features: VERSION_1, FLUSH, SEG_MAX, SIZE_MAX, RING_EVENT_IDX, and RO for a read-only disk.
//! Requests: IN (read), OUT (write), FLUSH and GET_ID; others get VIRTIO_BLK_S_UNSUPP. Every
//! request is checked against the capacity; one outside it, or not a whole number of sectors,
//! gets VIRTIO_BLK_S_IOERR. Those, GET_ID, unsupported requests and a FLUSH of a read-only disk
//! complete at once, in the notification. A chain too short to hold a header and a status byte
//! puts the device in needs-reset (there is nowhere to report a status).
//!
//! A read, a write or a flush gets the next request id of the device and waits in its pending
//! table (part of the device state, so checkpoints, snapshots and the state digest carry it) until
//! its completion is applied: the read's bytes go from the event (the bounce buffer) into the
//! guest's buffers, then the status. A read is handed to the output stage
//! (`OutputStage::submit_read`, which makes it see every write emitted before it); a write and a
//! flush leave through the output stage as outputs. A completion for no pending id (a request
//! issued again at go-live that had completed already) is ignored. When new backends are attached
//! ([`Blk::resubmit`]) every pending request is issued again, in order: a restored snapshot or a
//! backup going live completes what the old side never completed.

use super::device::{Ctx, Fault, VirtioDevice};
use super::net::read_bytes;
use super::output::{DiskRead, Output, OutputError, OutputStage};
use super::queue::{Buf, Chain, VirtQueue};
use crate::event::Landmark;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub const BLK_QUEUE_SIZE: u16 = 128;
pub const SECTOR_SIZE: u64 = 512;
/// Data segments per request (the queue size less the header and status descriptors).
pub const SEG_MAX: u32 = BLK_QUEUE_SIZE as u32 - 2;
/// Bytes per data segment.
pub const SIZE_MAX: u32 = 32 << 10;
/// The most data one request may carry, and the most a chain may: header, data, status.
pub const MAX_DATA: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
pub const MAX_CHAIN: u64 = REQ_HDR_LEN + MAX_DATA + 1;
/// `struct virtio_blk_outhdr`: type, reserved, sector.
pub const REQ_HDR_LEN: u64 = 16;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;

/// What a pending request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingOp {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Flush,
}

/// A request taken from the queue whose completion has not been applied yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub id: u64,
    /// Where the guest made it.
    pub at: Landmark,
    pub head: u16,
    pub op: PendingOp,
    /// The chain's buffers, (guest address, length): readable ones, then writable ones.
    pub readable: Vec<(u64, u32)>,
    pub writable: Vec<(u64, u32)>,
}

impl PendingRequest {
    fn chain(&self) -> Chain {
        let bufs = |list: &[(u64, u32)]| {
            list.iter().map(|&(addr, len)| Buf { addr: vm_memory::GuestAddress(addr), len }).collect()
        };
        Chain { head: self.head, readable: bufs(&self.readable), writable: bufs(&self.writable) }
    }
}

/// The device's own state, for checkpoints: the next request id and the pending requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkState {
    pub next_id: u64,
    pub pending: Vec<PendingRequest>,
}

pub struct Blk {
    index: u8,
    capacity: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    next_id: u64,
    pending: BTreeMap<u64, PendingRequest>,
}

impl Blk {
    /// Disk `index` (its index among the VM's disks, as in `InputKind::DiskRead`), of
    /// `size_bytes` bytes (the whole sectors of it are exposed).
    pub fn new(index: u8, size_bytes: u64, readonly: bool) -> Self {
        let mut id = [0u8; ID_LEN];
        let name = format!("ftvm-disk-{index}");
        id[..name.len()].copy_from_slice(name.as_bytes());
        Self { index, capacity: size_bytes / SECTOR_SIZE, readonly, id, next_id: 0, pending: BTreeMap::new() }
    }

    pub fn state(&self) -> BlkState {
        BlkState { next_id: self.next_id, pending: self.pending.values().cloned().collect() }
    }

    pub fn restore(&mut self, state: &BlkState) {
        self.next_id = state.next_id;
        self.pending = state.pending.iter().map(|p| (p.id, p.clone())).collect();
    }

    /// Requests taken and not completed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Applies the completion of request `id` (see `WorldEvent::DiskDone`): a read's `data` goes
    /// into its buffers, the status after it, and the chain is returned to the guest. Returns
    /// whether an interrupt for used buffers is due.
    pub fn complete(
        &mut self,
        id: u64,
        status: u8,
        data: &[u8],
        queues: &mut [VirtQueue],
        mem: &crate::GuestMemoryMmap,
    ) -> Result<bool, Fault> {
        let Some(request) = self.pending.remove(&id) else {
            tracing::debug!(device = self.index, id, "completion of a request not pending (issued twice); ignored");
            return Ok(false);
        };
        let q = queues.first_mut().ok_or_else(|| Fault::Guest("no request queue".into()))?;
        let chain = request.chain();
        let written = match request.op {
            PendingOp::Read { len, .. } => {
                if data.len() as u64 != len {
                    return Err(Fault::Host(OutputError::ReadLength {
                        device: self.index,
                        got: data.len(),
                        want: len as usize,
                    }));
                }
                chain.write_at(mem, 0, data).map_err(Fault::queue(0))?;
                // At most MAX_DATA.
                len as u32
            }
            PendingOp::Write { .. } | PendingOp::Flush => 0,
        };
        chain.write_at(mem, chain.writable_len() - 1, &[status]).map_err(Fault::queue(0))?;
        q.add_used(mem, request.head, written + 1).map_err(Fault::queue(0))?;
        q.needs_notification(mem).map_err(Fault::queue(0))
    }

    /// Issues every pending request again, in the order the guest made them, to `out` (new
    /// backends: a restore, or a backup going live). Writes take their data from the guest's
    /// buffers, which the guest may not touch until the request completes.
    pub fn resubmit(&self, mem: &crate::GuestMemoryMmap, out: &mut dyn OutputStage) -> Result<(), OutputError> {
        for request in self.pending.values() {
            let (device, id) = (self.index, request.id);
            match request.op {
                PendingOp::Read { offset, len } => {
                    out.submit_read(DiskRead { device, id, offset, len: len as usize, patches: Vec::new() })?
                }
                PendingOp::Write { offset, len } => {
                    let mut data = vec![0u8; len as usize];
                    if let Err(error) = request.chain().read_at(mem, REQ_HDR_LEN, &mut data) {
                        // The chain was read when the request was taken; memory cannot have shrunk.
                        tracing::error!(device, id, %error, "a pending write's buffers are unreadable now; not issued again");
                        continue;
                    }
                    out.emit(request.at, Output::DiskWrite { device, id, offset, data })?
                }
                PendingOp::Flush => out.emit(request.at, Output::DiskFlush { device, id })?,
            }
        }
        if !self.pending.is_empty() {
            tracing::info!(device = self.index, requests = self.pending.len(), "pending disk requests issued again");
        }
        Ok(())
    }

    /// Takes request `op` of `chain` as pending; returns its id.
    fn take(&mut self, chain: &Chain, op: PendingOp, at: Landmark) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let list = |bufs: &[Buf]| bufs.iter().map(|b| (b.addr.0, b.len)).collect();
        let request = PendingRequest {
            id,
            at,
            head: chain.head,
            op,
            readable: list(&chain.readable),
            writable: list(&chain.writable),
        };
        self.pending.insert(id, request);
        id
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The byte offset of `len` bytes at `sector`, if they are whole sectors inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (len.is_multiple_of(SECTOR_SIZE) && end <= self.capacity * SECTOR_SIZE).then_some(offset)
    }

    /// Handles one request; returns the number of bytes written into the chain if it completed
    /// at once, `None` if it is pending.
    fn handle(&mut self, chain: &Chain, ctx: &mut Ctx<'_>) -> Result<Option<u32>, Fault> {
        let head = chain.head;
        let qerr = Fault::queue(0);
        if chain.readable_len() < REQ_HDR_LEN || chain.writable_len() < 1 {
            return Err(Fault::Guest(format!(
                "request {head}: {} readable and {} writable bytes cannot hold a header and a status",
                chain.readable_len(),
                chain.writable_len()
            )));
        }
        let mut hdr = [0u8; REQ_HDR_LEN as usize];
        chain.read_at(ctx.mem, 0, &mut hdr).map_err(Fault::queue(0))?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
        // Both at most MAX_CHAIN, checked when the chain was taken.
        let data_in = chain.writable_len() - 1;
        let data_out = chain.readable_len() - REQ_HDR_LEN;

        let (status, written) = match kind {
            VIRTIO_BLK_T_IN => match self.read(chain, sector, data_in, ctx)? {
                Some(status) => (status, 0),
                None => return Ok(None),
            },
            VIRTIO_BLK_T_OUT => match self.write(chain, sector, data_out, ctx)? {
                Some(status) => (status, 0),
                None => return Ok(None),
            },
            VIRTIO_BLK_T_FLUSH if !self.readonly => {
                let id = self.take(chain, PendingOp::Flush, ctx.at);
                ctx.out.emit(ctx.at, Output::DiskFlush { device: self.index, id })?;
                return Ok(None);
            }
            VIRTIO_BLK_T_FLUSH => (VIRTIO_BLK_S_OK, 0),
            VIRTIO_BLK_T_GET_ID => {
                let n = (ID_LEN as u64).min(data_in) as usize;
                chain.write_at(ctx.mem, 0, &self.id[..n]).map_err(Fault::queue(0))?;
                (VIRTIO_BLK_S_OK, n as u32)
            }
            _ => {
                tracing::debug!(device = self.index, kind, "unsupported block request");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        chain.write_at(ctx.mem, data_in, &[status as u8]).map_err(qerr)?;
        Ok(Some(written + 1))
    }

    /// An IN request: its status if it failed at once, `None` once it is submitted.
    fn read(&mut self, chain: &Chain, sector: u64, len: u64, ctx: &mut Ctx<'_>) -> Result<Option<u32>, Fault> {
        let Some(offset) = self.range(sector, len) else {
            tracing::debug!(device = self.index, sector, len, capacity = self.capacity, "read outside the disk");
            return Ok(Some(VIRTIO_BLK_S_IOERR));
        };
        let id = self.take(chain, PendingOp::Read { offset, len }, ctx.at);
        // At most MAX_DATA.
        ctx.out.submit_read(DiskRead { device: self.index, id, offset, len: len as usize, patches: Vec::new() })?;
        Ok(None)
    }

    /// An OUT request: its status if it failed at once, `None` once it is emitted.
    fn write(&mut self, chain: &Chain, sector: u64, len: u64, ctx: &mut Ctx<'_>) -> Result<Option<u32>, Fault> {
        if self.readonly {
            tracing::debug!(device = self.index, sector, "write to a read-only disk refused");
            return Ok(Some(VIRTIO_BLK_S_IOERR));
        }
        let Some(offset) = self.range(sector, len) else {
            tracing::debug!(device = self.index, sector, len, capacity = self.capacity, "write outside the disk");
            return Ok(Some(VIRTIO_BLK_S_IOERR));
        };
        // At most MAX_DATA.
        let mut data = vec![0u8; len as usize];
        chain.read_at(ctx.mem, REQ_HDR_LEN, &mut data).map_err(Fault::queue(0))?;
        let id = self.take(chain, PendingOp::Write { offset, len }, ctx.at);
        ctx.out.emit(ctx.at, Output::DiskWrite { device: self.index, id, offset, data })?;
        Ok(None)
    }
}

impl VirtioDevice for Blk {
    fn device_id(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        &[BLK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.readonly { 1 << VIRTIO_BLK_F_RO } else { 0 };
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config up to num_queues: capacity, size_max, seg_max, then zeros.
        let mut config = [0u8; 36];
        config[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_bytes(&config, offset, data);
    }

    fn activate(&mut self, _features: u64) {}

    fn notify(&mut self, queue: u16, queues: &mut [VirtQueue], ctx: &mut Ctx<'_>) -> Result<bool, Fault> {
        let q = queues.get_mut(usize::from(queue)).ok_or_else(|| Fault::Guest(format!("no queue {queue}")))?;
        let mut used = false;
        while let Some(chain) = q.pop(ctx.mem, MAX_CHAIN).map_err(Fault::queue(queue))? {
            if let Some(len) = self.handle(&chain, ctx)? {
                q.add_used(ctx.mem, chain.head, len).map_err(Fault::queue(queue))?;
                used = true;
            }
        }
        q.enable_notification(ctx.mem).map_err(Fault::queue(queue))?;
        Ok(used && q.needs_notification(ctx.mem).map_err(Fault::queue(queue))?)
    }

    /// Requests in flight are forgotten: their completions find nothing pending.
    fn reset(&mut self) {
        self.pending.clear();
    }

    fn name(&self) -> String {
        format!("virtio-blk {}", self.index)
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// What the driver is told (capacity in whole sectors, segment size and count) and the
    /// longest chain accepted, pinned: a change here changes what guests may send.
    #[test]
    fn the_config_space_and_chain_limits_are_the_advertised_ones() {
        let blk = Blk::new(0, (1 << 20) + 100, false);
        assert_eq!(blk.capacity(), 2048);
        let mut config = [0u8; 16];
        blk.read_config(0, &mut config);
        let word = |at: usize, len: usize| config[at..at + len].iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b));
        assert_eq!((word(0, 8), word(8, 4), word(12, 4)), (2048, 32 << 10, 126));
        assert_eq!((SEG_MAX, SIZE_MAX), (u32::from(BLK_QUEUE_SIZE) - 2, 32768));
        assert_eq!(MAX_DATA, 126 * 32768);
        assert_eq!(MAX_CHAIN, 16 + 126 * 32768 + 1);
        // VERSION_1 (32), EVENT_IDX (29), FLUSH (9), SEG_MAX (2), SIZE_MAX (1); RO (5) when read-only.
        assert_eq!(blk.features(), 1 << 32 | 1 << 29 | 1 << 9 | 1 << 2 | 1 << 1);
        assert!(!blk.readonly() && blk.features() & 1 << VIRTIO_BLK_F_RO == 0);
        let readonly = Blk::new(1, 4096, true);
        assert!(readonly.readonly() && readonly.features() & 1 << VIRTIO_BLK_F_RO != 0);
    }
}
