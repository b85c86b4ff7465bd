//! Functional tests of the virtio devices, driven like a guest driver would.

use super::blk::{Blk, ID_LEN};
use super::mmio::*;
use super::net::{Net, NET_HDR_LEN, RX_QUEUE, TX_QUEUE};
use super::testdriver::{ring_base, MemOutput, Rig, DATA};
use super::*;
use crate::event::WorldEvent;
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const MAC: MacAddr = MacAddr([0x02, 1, 2, 3, 4, 5]);

fn net_rig(features: u64) -> Rig<Net> {
    let mut rig = Rig::new(Net::new(0, MAC));
    rig.init(V1 | 1 << VIRTIO_NET_F_MAC | features, &[16, 16]);
    rig
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// What `VirtioDevices::apply_frame` does for a live device.
fn receive(rig: &mut Rig<Net>, f: Vec<u8>) -> bool {
    let taken = rig.t.device_mut().receive(f);
    rig.t.run(&rig.mem, |net, queues, mem| net.deliver(queues, mem)).unwrap();
    taken
}

#[test]
fn transport_identifies_the_device() {
    let mut rig = Rig::new(Net::new(0, MAC));
    assert_eq!(rig.read(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rig.read(VERSION), 2);
    assert_eq!(rig.read(DEVICE_ID), 1);
    rig.write(DEVICE_FEATURES_SEL, 1);
    assert_eq!(rig.read(DEVICE_FEATURES), 1, "VERSION_1 in the high word");
    rig.write(DEVICE_FEATURES_SEL, 0);
    let low = rig.read(DEVICE_FEATURES);
    assert_ne!(low & (1 << VIRTIO_NET_F_MAC), 0);
    assert_ne!(low & (1 << VIRTIO_NET_F_STATUS), 0);
    assert_ne!(low & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    rig.write(QUEUE_SEL, 2);
    assert_eq!(rig.read(QUEUE_NUM_MAX), 0, "net has two queues");
    let mut mac = [0u8; 6];
    rig.t.mmio_read(CONFIG, &mut mac);
    assert_eq!(mac, MAC.0);
    let mut status = [0u8; 2];
    rig.t.mmio_read(CONFIG + 6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "link up");
}

#[test]
fn driver_features_without_version_1_are_refused() {
    let mut rig = Rig::new(Net::new(0, MAC));
    rig.write(STATUS, 1);
    rig.write(STATUS, 3);
    rig.write(DRIVER_FEATURES, 1 << VIRTIO_NET_F_MAC);
    rig.write(STATUS, 3 | 8);
    assert_eq!(rig.read(STATUS), 3, "FEATURES_OK not accepted");
    assert!(!rig.needs_reset());
}

#[test]
fn net_tx_frame_reaches_the_output_stage() {
    let mut rig = net_rig(0);
    let f = frame(60, 1);
    rig.write_mem(DATA, &[0u8; NET_HDR_LEN]);
    rig.write_mem(DATA + 0x100, &f[..20]);
    rig.write_mem(DATA + 0x200, &f[20..]);
    let head = rig.add_chain(TX_QUEUE, &[(DATA, 12, false), (DATA + 0x100, 20, false), (DATA + 0x200, 40, false)]);
    rig.notify(TX_QUEUE);
    assert_eq!(rig.out.outputs.len(), 1);
    assert_eq!(rig.out.outputs[0].1, Output::NetFrame { device: 0, frame: f });
    assert_eq!(rig.take_used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert!(rig.t.interrupt_line());
    assert_eq!(rig.ack(), INT_USED_BUFFER);
    assert!(!rig.t.interrupt_line());
}

#[test]
fn net_rx_frame_is_copied_into_a_posted_buffer() {
    let mut rig = net_rig(0);
    let head = rig.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    rig.notify(RX_QUEUE);
    assert!(!rig.t.interrupt_line(), "nothing received yet");
    let f = frame(100, 3);
    assert!(receive(&mut rig, f.clone()));
    assert_eq!(rig.take_used(RX_QUEUE), vec![(u32::from(head), 112)]);
    let hdr = rig.read_mem(DATA, NET_HDR_LEN);
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "zero header, num_buffers = 1");
    assert_eq!(rig.read_mem(DATA + 12, 100), f);
    assert!(rig.t.interrupt_line());
}

#[test]
fn net_rx_frames_wait_in_the_bounce_queue_until_the_guest_posts_buffers() {
    let mut rig = net_rig(0);
    assert!(receive(&mut rig, frame(64, 1)));
    assert!(receive(&mut rig, frame(65, 2)));
    assert_eq!(rig.t.device().pending(), 2);
    assert!(!rig.t.interrupt_line());
    // Two buffers split into header and data descriptors.
    let a = rig.add_chain(RX_QUEUE, &[(DATA, 12, true), (DATA + 0x100, 1514, true)]);
    let b = rig.add_chain(RX_QUEUE, &[(DATA + 0x1000, 2048, true)]);
    rig.notify(RX_QUEUE);
    assert_eq!(rig.take_used(RX_QUEUE), vec![(u32::from(a), 76), (u32::from(b), 77)]);
    assert_eq!(rig.read_mem(DATA + 0x100, 64), frame(64, 1));
    assert_eq!(rig.read_mem(DATA + 0x1000 + 12, 65), frame(65, 2));
    assert_eq!(rig.t.device().pending(), 0);
}

#[test]
fn net_rx_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut rig = net_rig(0);
    let head = rig.add_chain(RX_QUEUE, &[(DATA, 200, true)]);
    rig.notify(RX_QUEUE);
    receive(&mut rig, frame(500, 1));
    assert_eq!(rig.t.device().dropped(), 1);
    assert!(rig.take_used(RX_QUEUE).is_empty());
    receive(&mut rig, frame(100, 2));
    assert_eq!(rig.take_used(RX_QUEUE), vec![(u32::from(head), 112)]);
    assert!(!rig.needs_reset());
}

#[test]
fn net_bounce_queue_is_bounded() {
    let mut rig = net_rig(0);
    let taken = (0..300).filter(|i| receive(&mut rig, frame(60, *i as u8))).count();
    assert_eq!(taken, net::BOUNCE_FRAMES);
    assert!(!receive(&mut rig, vec![0; net::MAX_FRAME + 1]));
}

#[test]
fn avail_no_interrupt_flag_is_honoured_without_event_idx() {
    let mut rig = net_rig(0);
    rig.write_mem(ring_base(TX_QUEUE) + 0x1000, &1u16.to_le_bytes());
    rig.write_mem(DATA, &[0u8; 80]);
    rig.add_chain(TX_QUEUE, &[(DATA, 72, false)]);
    rig.notify(TX_QUEUE);
    assert_eq!(rig.out.outputs.len(), 1);
    assert!(!rig.t.interrupt_line(), "the driver asked for no interrupt");
}

#[test]
fn event_idx_suppresses_interrupts_and_notifications() {
    let mut rig = net_rig(EVENT_IDX);
    let size = 16u64;
    let avail = ring_base(TX_QUEUE) + 0x1000;
    let used = ring_base(TX_QUEUE) + 0x2000;
    // used_event = 1: interrupt only once the second chain is used.
    rig.write_mem(avail + 4 + 2 * size, &1u16.to_le_bytes());
    rig.write_mem(DATA, &[0u8; 80]);
    rig.add_chain(TX_QUEUE, &[(DATA, 72, false)]);
    rig.notify(TX_QUEUE);
    assert!(!rig.t.interrupt_line(), "used_event not reached");
    assert_eq!(rig.read_mem(used + 4 + 8 * size, 2), 1u16.to_le_bytes(), "avail_event = next chain");
    rig.add_chain(TX_QUEUE, &[(DATA, 72, false)]);
    rig.notify(TX_QUEUE);
    assert!(rig.t.interrupt_line());
    assert_eq!(rig.out.outputs.len(), 2);
}

fn blk_rig(size: u64, readonly: bool) -> (Rig<Blk>, tempfile::NamedTempFile, Arc<DiskFile>) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..size).map(|i| (i / 512) as u8).collect();
    std::io::Write::write_all(&mut tmp, &pattern).unwrap();
    let disk = Arc::new(DiskFile::open(tmp.path(), readonly).unwrap());
    let mut rig = Rig::new(Blk::new(0, disk.size(), readonly));
    let backend: Arc<dyn BlockBackend> = disk.clone();
    rig.out = MemOutput::direct(vec![backend]);
    rig.init(V1 | EVENT_IDX | 1 << VIRTIO_BLK_F_FLUSH | if readonly { 1 << VIRTIO_BLK_F_RO } else { 0 }, &[16]);
    (rig, tmp, disk)
}

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS_AT: u64 = DATA + 0x100;

/// Submits one request and returns (status, used length).
fn request(rig: &mut Rig<Blk>, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    rig.write_mem(HDR, &hdr);
    rig.write_mem(STATUS_AT, &[0xff]);
    let mut chain = vec![(HDR, 16, false)];
    chain.extend_from_slice(data);
    chain.push((STATUS_AT, 1, true));
    let head = rig.add_chain(0, &chain);
    rig.notify(0);
    let mut used = rig.take_used(0);
    if used.is_empty() {
        complete(rig, 1);
        used = rig.take_used(0);
    }
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, u32::from(head));
    (rig.read_mem(STATUS_AT, 1)[0], used[0].1)
}

/// Applies the completions the stage has (after waiting for `want` of them), as the board does
/// at a landmark; returns how many there were.
fn complete(rig: &mut Rig<Blk>, want: usize) -> usize {
    let events = rig.out.take_completions(want);
    let n = events.len();
    for event in events {
        if let WorldEvent::DiskDone { id, status, data, .. } = event {
            rig.t.run(&rig.mem, |blk, q, m| blk.complete(id, status, &data, q, m)).unwrap();
        }
    }
    n
}

/// Puts a request on queue 0 without notifying; returns its head.
fn queue_request(
    rig: &mut Rig<Blk>,
    kind: u32,
    sector: u64,
    hdr_at: u64,
    status_at: u64,
    data: &[(u64, u32, bool)],
) -> u16 {
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    rig.write_mem(hdr_at, &hdr);
    rig.write_mem(status_at, &[0xff]);
    let mut chain = vec![(hdr_at, 16, false)];
    chain.extend_from_slice(data);
    chain.push((status_at, 1, true));
    rig.add_chain(0, &chain)
}

#[test]
fn blk_requests_complete_only_when_their_completion_is_applied() {
    let mut rig = Rig::new(Blk::new(0, 8192, false));
    rig.out.disks.push(vec![0; 8192]);
    rig.init(V1 | EVENT_IDX, &[16]);
    rig.write_mem(BUF, &[0x11; 512]);
    let w = queue_request(&mut rig, VIRTIO_BLK_T_OUT, 1, HDR, STATUS_AT, &[(BUF, 512, false)]);
    let r = queue_request(&mut rig, VIRTIO_BLK_T_IN, 1, HDR + 0x40, STATUS_AT + 1, &[(BUF + 0x800, 512, true)]);
    rig.notify(0);
    assert!(rig.take_used(0).is_empty(), "nothing completes at the notification");
    assert_eq!(rig.t.device().pending(), 2);
    assert_eq!(rig.read_mem(STATUS_AT, 2), vec![0xff, 0xff]);
    // The read was handed over after the write: it sees it.
    assert_eq!(rig.out.reads.len(), 1);

    let events = rig.out.take_completions(2);
    assert_eq!(events.len(), 2);
    // A completion for nothing pending (issued twice) changes nothing.
    rig.t.run(&rig.mem, |blk, q, m| blk.complete(77, 0, &[], q, m)).unwrap();
    assert!(rig.take_used(0).is_empty());
    // Checkpointed while both are pending, restored into a fresh device: the completions apply.
    let saved = rig.t.device().state();
    assert_eq!(saved.pending.len(), 2);
    let mut fresh = Blk::new(0, 8192, false);
    fresh.restore(&saved);
    *rig.t.device_mut() = fresh;
    for event in events.into_iter().rev() {
        let WorldEvent::DiskDone { id, status, data, .. } = event else { panic!("{event:?}") };
        rig.t.run(&rig.mem, |blk, q, m| blk.complete(id, status, &data, q, m)).unwrap();
    }
    let used = rig.take_used(0);
    assert_eq!(used, vec![(u32::from(r), 513), (u32::from(w), 1)], "in completion order");
    assert_eq!(rig.read_mem(STATUS_AT, 2), vec![0, 0]);
    assert_eq!(rig.read_mem(BUF + 0x800, 512), vec![0x11; 512]);
    assert_eq!(rig.t.device().pending(), 0);
}

#[test]
fn blk_pending_requests_are_issued_again_in_order_to_new_backends() {
    let mut rig = Rig::new(Blk::new(0, 8192, false));
    rig.out.disks.push(vec![0; 8192]);
    rig.init(V1, &[16]);
    rig.write_mem(BUF, &[0x22; 1024]);
    queue_request(&mut rig, VIRTIO_BLK_T_OUT, 2, HDR, STATUS_AT, &[(BUF, 1024, false)]);
    queue_request(&mut rig, VIRTIO_BLK_T_IN, 2, HDR + 0x40, STATUS_AT + 1, &[(BUF + 0x800, 512, true)]);
    queue_request(&mut rig, VIRTIO_BLK_T_FLUSH, 0, HDR + 0x80, STATUS_AT + 2, &[]);
    rig.notify(0);
    assert_eq!(rig.t.device().pending(), 3);
    // The old side never completed them: new backends get them again, in the guest's order.
    let mut fresh = MemOutput { disks: vec![vec![0; 8192]], ..MemOutput::default() };
    rig.t.device().resubmit(&rig.mem, &mut fresh).unwrap();
    let kinds: Vec<String> = fresh.outputs.iter().map(|(_, o)| format!("{o:?}").chars().take(10).collect()).collect();
    assert_eq!(kinds, ["DiskWrite ", "DiskFlush "]);
    assert_eq!(fresh.outputs[0].1, Output::DiskWrite { device: 0, id: 0, offset: 1024, data: vec![0x22; 1024] });
    assert_eq!(fresh.reads[0].id, 1);
    assert!(fresh.disks[0][1024..2048].iter().all(|&b| b == 0x22));
    rig.out = fresh;
    assert_eq!(complete(&mut rig, 3), 3);
    assert_eq!(rig.take_used(0).len(), 3);
    assert_eq!(rig.read_mem(BUF + 0x800, 512), vec![0x22; 512]);
}

#[test]
fn blk_read_write_flush_round_trip_on_a_file() {
    let (mut rig, tmp, _disk) = blk_rig(64 << 10, false);
    let mut cap = [0u8; 8];
    rig.t.mmio_read(CONFIG, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);

    rig.write_mem(BUF, &[0xab; 1024]);
    let (status, len) = request(&mut rig, VIRTIO_BLK_T_OUT, 2, &[(BUF, 1024, false)]);
    assert_eq!((u32::from(status), len), (VIRTIO_BLK_S_OK, 1));
    let on_disk = std::fs::read(tmp.path()).unwrap();
    assert!(on_disk[1024..2048].iter().all(|&b| b == 0xab));
    assert_eq!(on_disk[2048], 4, "neighbouring sector untouched");

    rig.write_mem(BUF, &[0; 2048]);
    let (status, len) = request(&mut rig, VIRTIO_BLK_T_IN, 1, &[(BUF, 512, true), (BUF + 0x400, 1024, true)]);
    assert_eq!((u32::from(status), len), (VIRTIO_BLK_S_OK, 1537));
    assert_eq!(rig.read_mem(BUF, 512), vec![1; 512]);
    assert_eq!(rig.read_mem(BUF + 0x400, 1024), vec![0xab; 1024]);
    assert_eq!(rig.out.reads.len(), 1, "the read went through the output stage");

    let (status, _) = request(&mut rig, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    assert!(rig.out.outputs.iter().any(|(_, o)| matches!(o, Output::DiskFlush { device: 0, .. })));

    let (status, len) = request(&mut rig, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, ID_LEN as u32, true)]);
    assert_eq!((u32::from(status), len), (VIRTIO_BLK_S_OK, ID_LEN as u32 + 1));
    assert_eq!(&rig.read_mem(BUF, 11), b"ftvm-disk-0");
    assert!(rig.t.interrupt_line());
}

#[test]
fn blk_readonly_refuses_writes_with_ioerr() {
    let (mut rig, tmp, _disk) = blk_rig(4096, true);
    rig.write(DEVICE_FEATURES_SEL, 0);
    assert_ne!(rig.read(DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO), 0);
    rig.write_mem(BUF, &[0xcd; 512]);
    let (status, _) = request(&mut rig, VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]);
    assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::read(tmp.path()).unwrap()[0], 0);
    assert!(rig.out.outputs.is_empty());
    let (status, _) = request(&mut rig, VIRTIO_BLK_T_IN, 7, &[(BUF, 512, true)]);
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    assert!(!rig.needs_reset());
}

#[test]
fn blk_requests_outside_the_disk_or_malformed_get_an_error_status() {
    let (mut rig, _tmp, _disk) = blk_rig(4096, false);
    let cases: &[(u32, u64, u32, bool, u32)] = &[
        (VIRTIO_BLK_T_OUT, 8, 512, false, VIRTIO_BLK_S_IOERR), // just past the end
        (VIRTIO_BLK_T_OUT, 7, 1024, false, VIRTIO_BLK_S_IOERR), // straddles the end
        (VIRTIO_BLK_T_IN, u64::MAX / 256, 512, true, VIRTIO_BLK_S_IOERR), // offset overflows
        (VIRTIO_BLK_T_IN, 0, 100, true, VIRTIO_BLK_S_IOERR),   // not whole sectors
        (VIRTIO_BLK_T_OUT, 0, 511, false, VIRTIO_BLK_S_IOERR),
        (99, 0, 512, true, VIRTIO_BLK_S_UNSUPP),
    ];
    for &(kind, sector, len, write, want) in cases {
        let (status, _) = request(&mut rig, kind, sector, &[(BUF, len, write)]);
        assert_eq!(u32::from(status), want, "kind {kind} sector {sector} len {len}");
    }
    assert!(rig.out.outputs.is_empty(), "nothing reached the disk");
    assert!(!rig.needs_reset());
}

/// A block device over an in-memory disk, without EVENT_IDX.
fn blk_in_memory() -> Rig<Blk> {
    let mut rig = Rig::new(Blk::new(0, 8192, false));
    rig.out.disks.push(vec![0; 8192]);
    rig.init(V1, &[16]);
    rig
}

#[test]
fn blk_chain_too_short_for_a_header_and_a_status_needs_a_reset() {
    // A whole header and no status byte, then a status byte after half a header: either way
    // there is nowhere to report a status. Both are flushes, which would otherwise be issued.
    let chains: [&[(u64, u32, bool)]; 2] = [&[(HDR, 16, false)], &[(HDR, 8, false), (STATUS_AT, 1, true)]];
    for chain in chains {
        let mut rig = blk_in_memory();
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
        rig.write_mem(HDR, &hdr);
        rig.add_chain(0, chain);
        rig.notify(0);
        assert!(rig.needs_reset(), "{chain:?}");
        assert!(rig.take_used(0).is_empty(), "{chain:?}");
        assert!(rig.out.outputs.is_empty(), "{chain:?}: {:?}", rig.out.outputs);
        assert_eq!(rig.t.device().pending(), 0, "{chain:?}");
    }
}

#[test]
fn blk_notification_raises_no_interrupt_while_its_requests_are_pending() {
    // Without EVENT_IDX the driver wants an interrupt for every chain used, and only then.
    let mut rig = blk_in_memory();
    queue_request(&mut rig, VIRTIO_BLK_T_IN, 0, HDR, STATUS_AT, &[(BUF, 512, true)]);
    rig.notify(0);
    assert_eq!(rig.t.device().pending(), 1);
    assert!(!rig.t.interrupt_line(), "nothing used yet");
    assert_eq!(complete(&mut rig, 1), 1);
    assert!(rig.t.interrupt_line(), "the read completed");
    assert_eq!(rig.take_used(0).len(), 1);
}

#[test]
fn blk_flush_of_a_readonly_disk_completes_at_once_without_reaching_the_disk() {
    let (mut rig, _tmp, _disk) = blk_rig(4096, true);
    queue_request(&mut rig, VIRTIO_BLK_T_FLUSH, 0, HDR, STATUS_AT, &[]);
    rig.notify(0);
    assert_eq!(rig.take_used(0).len(), 1, "completed in the notification");
    assert_eq!(u32::from(rig.read_mem(STATUS_AT, 1)[0]), VIRTIO_BLK_S_OK);
    assert!(rig.out.outputs.is_empty(), "{:?}", rig.out.outputs);
    assert_eq!(rig.t.device().pending(), 0);
}

#[test]
fn blk_reset_forgets_the_requests_in_flight() {
    let mut rig = blk_in_memory();
    queue_request(&mut rig, VIRTIO_BLK_T_IN, 0, HDR, STATUS_AT, &[(BUF, 512, true)]);
    rig.notify(0);
    assert_eq!(rig.t.device().pending(), 1);
    rig.write(STATUS, 0);
    assert_eq!(rig.t.device().pending(), 0, "their completions will find nothing pending");
    assert!(rig.t.device().state().pending.is_empty());
}

#[test]
fn blk_read_takes_logged_bytes_and_refuses_a_wrong_length() {
    let (mut rig, _tmp, _disk) = blk_rig(4096, false);
    // A replay: the stage drops the read, its completion comes from the log.
    rig.out.drop_reads = true;
    queue_request(&mut rig, VIRTIO_BLK_T_IN, 0, HDR, STATUS_AT, &[(BUF, 512, true)]);
    rig.notify(0);
    assert!(rig.take_used(0).is_empty());
    let data = vec![0x5a; 512];
    rig.t.run(&rig.mem, |blk, q, m| blk.complete(0, 0, &data, q, m)).unwrap();
    assert_eq!(rig.take_used(0).len(), 1);
    assert_eq!(rig.read_mem(STATUS_AT, 1), vec![0]);
    assert_eq!(rig.read_mem(BUF, 512), vec![0x5a; 512], "data from the log, not the disk");

    queue_request(&mut rig, VIRTIO_BLK_T_IN, 0, HDR, STATUS_AT, &[(BUF, 512, true)]);
    rig.notify(0);
    let err = rig.t.run(&rig.mem, |blk, q, m| blk.complete(1, 0, &[0; 10], q, m)).unwrap_err();
    assert!(matches!(err, OutputError::ReadLength { got: 10, want: 512, .. }), "{err}");
}

#[test]
fn transport_state_survives_a_checkpoint() {
    let mut rig = net_rig(EVENT_IDX);
    rig.write_mem(DATA, &[0u8; 80]);
    rig.add_chain(TX_QUEUE, &[(DATA, 72, false)]);
    rig.notify(TX_QUEUE);
    receive(&mut rig, frame(70, 9));
    let state = rig.t.state();
    let net_state = rig.t.device().state();
    assert_eq!(net_state.bounce.len(), 1);

    let mut fresh = MmioTransport::new(Net::new(0, MAC));
    fresh.restore(&state).unwrap();
    fresh.device_mut().restore(&net_state);
    assert_eq!(fresh.state(), state);
    assert_eq!(fresh.device().state(), net_state);
    assert!(fresh.is_live());

    let mut bad = state.clone();
    bad.queues[0].size = 3;
    assert!(fresh.restore(&bad).is_err());
    bad.queues.pop();
    assert!(fresh.restore(&bad).is_err());
}

#[test]
fn device_collection_dispatches_and_announces() {
    let mut devs = VirtioDevices::new();
    assert_eq!(devs.cmdline_fragment(), "");
    assert_eq!(devs.add_net(MAC).unwrap(), 0);
    assert_eq!(devs.add_blk(1 << 20, false).unwrap(), 0);
    assert_eq!(devs.add_net(MacAddr::default_for(1)).unwrap(), 1);
    assert_eq!(
        devs.cmdline_fragment(),
        "virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6 virtio_mmio.device=4K@0xd0003000:7"
    );
    let mut id = [0u8; 4];
    assert!(devs.mmio_read(0xd000_2008, &mut id));
    assert_eq!(u32::from_le_bytes(id), 2, "slot 1 is the disk");
    assert!(!devs.mmio_read(0xd000_4000, &mut id), "no slot 3");
    assert!(!devs.mmio_read(0xd000_0000, &mut id), "the clock is not ours");
    assert_eq!(devs.interrupt_lines().collect::<Vec<_>>(), vec![(5, false), (6, false), (7, false)]);

    let mem = crate::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
    assert!(!devs.apply_frame(0, vec![1; 60], &mem), "driver not started: dropped");
    assert!(!devs.apply_frame(5, vec![1; 60], &mem), "no such device");

    let state = devs.state();
    assert_eq!(state.slots.len(), 3);
    let bytes = postcard::to_allocvec(&state).unwrap();
    assert_eq!(postcard::from_bytes::<VirtioState>(&bytes).unwrap(), state);
    devs.restore(&state).unwrap();
    let mut wrong = state.clone();
    wrong.slots.swap(0, 1);
    assert!(devs.restore(&wrong).is_err());
    for _ in 0..8 {
        let _ = devs.add_blk(512, true);
    }
    assert!(matches!(devs.add_blk(512, true), Err(AddError::TooMany)));
    assert_eq!(devs.len(), MAX_DEVICES);
}
