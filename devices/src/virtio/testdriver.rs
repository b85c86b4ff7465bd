//! A test driver: drives a transport through its registers and lays out descriptor tables and
//! rings in a real `GuestMemoryMmap`, as a guest driver would.

use super::device::VirtioDevice;
use super::disk_queue::{CompletionReceiver, Completions};
use super::mmio::*;
use super::output::{lay_over, DirectOutput, DiskRead, Output, OutputError, OutputStage};
use crate::event::{ClockId, Deadlines, EventSource, Landmark, WorldEvent};
use crate::GuestMemoryMmap;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

pub const MEM_SIZE: usize = 0x10_0000;
/// Where queue i's rings go: descriptor table, available ring, used ring.
pub fn ring_base(q: u16) -> u64 {
    0x1_0000 + u64::from(q) * 0x4000
}
pub const DATA: u64 = 0x4_0000;

pub struct TestWorld {
    pub inputs: usize,
}

impl EventSource for TestWorld {
    fn read_clock(&mut self, _at: Landmark, _clock: ClockId) -> u64 {
        0
    }
    fn poll(&mut self, _at: Landmark, _armed: Deadlines) -> Vec<WorldEvent> {
        Vec::new()
    }
    fn wait_idle(&mut self, _at: Landmark, _armed: Deadlines) {}
    fn time_until(&self, _deadline_ns: u64) -> Option<std::time::Duration> {
        None
    }
    fn device_input(
        &mut self,
        _at: Landmark,
        _kind: crate::event::InputKind,
        live: &mut dyn FnMut() -> Vec<u8>,
    ) -> Vec<u8> {
        self.inputs += 1;
        live()
    }
}

/// Keeps outputs, and disks in memory whose requests complete at once into `completions` (or
/// forwards to a real stage whose backend threads complete them later).
#[derive(Default)]
pub struct MemOutput {
    pub outputs: Vec<(Landmark, Output)>,
    pub disks: Vec<Vec<u8>>,
    pub reads: Vec<DiskRead>,
    /// Completions of the in-memory disks, not yet applied.
    pub completions: Vec<WorldEvent>,
    pub direct: Option<(DirectOutput, CompletionReceiver)>,
    /// Reads are taken and never completed (a replay: completions come from the log).
    pub drop_reads: bool,
}

impl MemOutput {
    /// Disk requests go to real backends, served by their threads.
    pub fn direct(disks: Vec<std::sync::Arc<dyn super::BlockBackend>>) -> Self {
        let (completions, receiver) = Completions::channel(None);
        let direct = DirectOutput::new(Vec::new(), disks, Box::new(std::io::sink()), completions);
        Self { direct: Some((direct, receiver)), ..Self::default() }
    }

    /// The completions there are now, after waiting up to 5 s for at least `want` of them.
    pub fn take_completions(&mut self, want: usize) -> Vec<WorldEvent> {
        let mut taken = std::mem::take(&mut self.completions);
        if let Some((_, receiver)) = &self.direct {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while taken.len() < want {
                match receiver.events.recv_deadline(deadline) {
                    Ok(event) => taken.push(event),
                    Err(_) => break,
                }
            }
            taken.extend(receiver.events.try_iter());
        }
        taken
    }
}

impl OutputStage for MemOutput {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        if let Some((direct, _)) = &mut self.direct {
            direct.emit(at, output.clone())?;
        } else {
            match &output {
                Output::DiskWrite { device, id, offset, data } => {
                    let disk = &mut self.disks[usize::from(*device)];
                    disk[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
                    self.completions.push(WorldEvent::DiskDone {
                        device: *device,
                        id: *id,
                        status: 0,
                        data: Vec::new(),
                    });
                }
                Output::DiskFlush { device, id } => self.completions.push(WorldEvent::DiskDone {
                    device: *device,
                    id: *id,
                    status: 0,
                    data: Vec::new(),
                }),
                _ => {}
            }
        }
        self.outputs.push((at, output));
        Ok(())
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        self.reads.push(read.clone());
        if self.drop_reads {
            return Ok(());
        }
        if let Some((direct, _)) = &mut self.direct {
            return direct.submit_read(read);
        }
        let disk = &self.disks[usize::from(read.device)];
        let at = read.offset as usize;
        let mut data = disk[at..at + read.len].to_vec();
        for (offset, bytes) in &read.patches {
            lay_over(&mut data, read.offset, *offset, bytes);
        }
        self.completions.push(WorldEvent::DiskDone { device: read.device, id: read.id, status: 0, data });
        Ok(())
    }
}

#[derive(Clone, Copy, Default)]
struct QueueCursor {
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    size: u16,
}

pub struct Rig<D: VirtioDevice> {
    pub t: MmioTransport<D>,
    pub mem: GuestMemoryMmap,
    pub world: TestWorld,
    pub out: MemOutput,
    pub exits: u64,
    cursors: Vec<QueueCursor>,
}

impl<D: VirtioDevice> Rig<D> {
    pub fn new(device: D) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Self {
            t: MmioTransport::new(device),
            mem,
            world: TestWorld { inputs: 0 },
            out: MemOutput::default(),
            exits: 0,
            cursors: Vec::new(),
        }
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        self.write_bytes(offset, &value.to_le_bytes());
    }

    pub fn write_bytes(&mut self, offset: u64, data: &[u8]) {
        self.exits += 1;
        self.t.mmio_write(offset, data, &self.mem, Landmark::Exit(self.exits), &mut self.world, &mut self.out).unwrap();
    }

    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates `features` and sets up `sizes.len()` queues of the given sizes, then DRIVER_OK.
    pub fn init(&mut self, features: u64, sizes: &[u16]) {
        assert_eq!(self.read(MAGIC_VALUE), MAGIC);
        assert_eq!(self.read(VERSION), 2);
        self.write(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write(STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.write(STATUS, s);
        assert_eq!(self.read(STATUS), s, "features refused");
        for (q, &size) in sizes.iter().enumerate() {
            self.setup_queue(q as u16, size);
        }
        self.write(STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    }

    pub fn setup_queue(&mut self, q: u16, size: u16) {
        let base = ring_base(q);
        self.mem.write_slice(&[0u8; 0x4000], GuestAddress(base)).unwrap();
        self.write(QUEUE_SEL, u32::from(q));
        assert!(self.read(QUEUE_NUM_MAX) >= u32::from(size));
        self.write(QUEUE_NUM, u32::from(size));
        self.write(QUEUE_DESC_LOW, base as u32);
        self.write(QUEUE_DESC_HIGH, 0);
        self.write(QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        self.write(QUEUE_DRIVER_HIGH, 0);
        self.write(QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        self.write(QUEUE_DEVICE_HIGH, 0);
        self.write(QUEUE_READY, 1);
        if self.cursors.len() <= usize::from(q) {
            self.cursors.resize(usize::from(q) + 1, QueueCursor::default());
        }
        self.cursors[usize::from(q)] = QueueCursor { size, ..QueueCursor::default() };
    }

    /// Writes one raw descriptor of queue `q`.
    pub fn put_desc(&self, q: u16, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(ring_base(q) + u64::from(index) * 16)).unwrap();
    }

    /// Makes head `head` available on queue `q` (without notifying).
    pub fn make_available(&mut self, q: u16, head: u16) {
        let c = &mut self.cursors[usize::from(q)];
        let avail = ring_base(q) + 0x1000;
        let slot = avail + 4 + 2 * u64::from(c.avail_idx % c.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        c.avail_idx = c.avail_idx.wrapping_add(1);
        self.mem.write_obj(c.avail_idx, GuestAddress(avail + 2)).unwrap();
    }

    /// Adds a chain of (address, length, device-writable) buffers to queue `q`; returns its head.
    pub fn add_chain(&mut self, q: u16, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.cursors[usize::from(q)].size;
        let head = self.cursors[usize::from(q)].next_desc;
        let mut index = head;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let next = (index + 1) % size;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.put_desc(q, index, addr, len, flags, next);
            index = next;
        }
        self.cursors[usize::from(q)].next_desc = index;
        self.make_available(q, head);
        head
    }

    pub fn notify(&mut self, q: u16) {
        self.write(QUEUE_NOTIFY, u32::from(q));
    }

    /// Used entries (id, len) of queue `q` not seen before.
    pub fn take_used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let used = ring_base(q) + 0x2000;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let c = &mut self.cursors[usize::from(q)];
        let mut entries = Vec::new();
        while c.used_seen != idx {
            let at = used + 4 + 8 * u64::from(c.used_seen % c.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            entries.push((id, len));
            c.used_seen = c.used_seen.wrapping_add(1);
        }
        entries
    }

    /// Acknowledges all interrupts; returns the status that was pending.
    pub fn ack(&mut self) -> u32 {
        let status = self.read(INTERRUPT_STATUS);
        self.write(INTERRUPT_ACK, status);
        status
    }

    pub fn needs_reset(&self) -> bool {
        self.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    pub fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }
}
