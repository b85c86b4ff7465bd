//! A hostile guest: malformed queues and chains put the device in needs-reset (never a panic),
//! and random register writes and ring contents are thrown at the devices by proptest.

use super::blk::Blk;
use super::mmio::*;
use super::net::{Net, RX_QUEUE, TX_QUEUE};
use super::testdriver::{ring_base, Rig, DATA, MEM_SIZE};
use super::MacAddr;
use proptest::prelude::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};

const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);

fn net() -> Rig<Net> {
    let mut rig = Rig::new(Net::new(0, MAC));
    rig.init(V1, &[16, 16]);
    rig
}

/// The device is in needs-reset, says so to the driver, ignores its queues, and comes back after
/// a reset.
fn assert_needs_reset(mut rig: Rig<Net>) {
    assert!(rig.needs_reset(), "device should need a reset");
    assert_ne!(rig.read(STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    if rig.read(STATUS) & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
        assert_ne!(rig.read(INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0, "config-change interrupt");
    }
    let outputs = rig.out.outputs.len();
    rig.notify(TX_QUEUE);
    assert_eq!(rig.out.outputs.len(), outputs, "queues ignored until reset");
    rig.write(STATUS, 0);
    assert_eq!(rig.read(STATUS), 0);
    assert!(!rig.t.interrupt_line());
    rig.init(V1, &[16, 16]);
    rig.write_mem(DATA, &[0u8; 80]);
    rig.add_chain(TX_QUEUE, &[(DATA, 72, false)]);
    rig.notify(TX_QUEUE);
    assert_eq!(rig.out.outputs.len(), outputs + 1, "works again after reset");
    assert!(!rig.needs_reset());
}

#[test]
fn descriptor_outside_guest_memory() {
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(MEM_SIZE as u64 - 8, 64, false)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(u64::MAX - 4, 64, false)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn looping_chain() {
    let mut rig = net();
    let next = VRING_DESC_F_NEXT as u16;
    rig.put_desc(TX_QUEUE, 0, DATA, 16, next, 1);
    rig.put_desc(TX_QUEUE, 1, DATA, 16, next, 0);
    rig.make_available(TX_QUEUE, 0);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn descriptor_index_outside_the_table() {
    let mut rig = net();
    rig.make_available(TX_QUEUE, 200);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
    let mut rig = net();
    rig.put_desc(TX_QUEUE, 0, DATA, 16, VRING_DESC_F_NEXT as u16, 16);
    rig.make_available(TX_QUEUE, 0);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn oversized_lengths() {
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(DATA, 40_000, false), (DATA, 40_000, false)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(0, u32::MAX, false)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn indirect_descriptor_not_negotiated() {
    let mut rig = net();
    rig.put_desc(TX_QUEUE, 0, DATA, 32, VRING_DESC_F_INDIRECT as u16, 0);
    rig.make_available(TX_QUEUE, 0);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn wrong_direction_buffers() {
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(DATA, 80, true)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
    let mut rig = net();
    rig.add_chain(RX_QUEUE, &[(DATA, 80, true), (DATA, 80, false)]);
    rig.notify(RX_QUEUE);
    // The bad rx chain is only looked at when a frame needs it.
    rig.t.device_mut().receive(vec![1; 60]);
    rig.t.run(&rig.mem, |n, q, m| n.deliver(q, m)).unwrap();
    assert_needs_reset(rig);
    let mut rig = net();
    rig.add_chain(TX_QUEUE, &[(DATA, 4, false)]);
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

#[test]
fn available_index_running_ahead() {
    let mut rig = net();
    rig.write_mem(ring_base(TX_QUEUE) + 0x1000 + 2, &100u16.to_le_bytes());
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
}

fn features_ok(rig: &mut Rig<Net>) {
    rig.write(STATUS, 1);
    rig.write(STATUS, 3);
    rig.write(DRIVER_FEATURES_SEL, 1);
    rig.write(DRIVER_FEATURES, 1);
    rig.write(STATUS, 11);
    rig.write(QUEUE_SEL, 0);
}

#[test]
fn bad_queue_sizes() {
    for size in [0, 3, 12, 512, 0x1_0000] {
        let mut rig = Rig::new(Net::new(0, MAC));
        features_ok(&mut rig);
        rig.write(QUEUE_NUM, size);
        assert!(rig.needs_reset(), "size {size}");
    }
}

#[test]
fn bad_ring_addresses() {
    let cases: &[(u64, u64, u64)] = &[
        (0x1_0008, 0x1_1000, 0x1_2000),               // descriptor table misaligned
        (0x1_0000, 0x1_1001, 0x1_2000),               // available ring misaligned
        (0x1_0000, 0x1_1000, 0x1_2002),               // used ring misaligned
        (MEM_SIZE as u64 - 0x80, 0x1_1000, 0x1_2000), // table runs off memory
        (0x1_0000, 0x1_1000, 1 << 40),                // used ring far outside
    ];
    for &(desc, avail, used) in cases {
        let mut rig = Rig::new(Net::new(0, MAC));
        features_ok(&mut rig);
        rig.write(QUEUE_NUM, 16);
        for (low, value) in [(QUEUE_DESC_LOW, desc), (QUEUE_DRIVER_LOW, avail), (QUEUE_DEVICE_LOW, used)] {
            rig.write(low, value as u32);
            rig.write(low + 4, (value >> 32) as u32);
        }
        assert!(!rig.needs_reset());
        rig.write(QUEUE_READY, 1);
        assert!(rig.needs_reset(), "{desc:#x} {avail:#x} {used:#x}");
        assert_eq!(rig.read(QUEUE_READY), 0);
    }
}

#[test]
fn notifications_of_queues_that_are_not_ready_or_do_not_exist() {
    let mut rig = Rig::new(Net::new(0, MAC));
    rig.init(V1, &[16]); // only the receive queue
    rig.notify(TX_QUEUE);
    assert_needs_reset(rig);
    let mut rig = net();
    rig.notify(7);
    assert_needs_reset(rig);
}

#[test]
fn protocol_violations() {
    // Queue configured before FEATURES_OK.
    let mut rig = Rig::new(Net::new(0, MAC));
    rig.write(QUEUE_NUM, 16);
    assert!(rig.needs_reset());
    // Queue reconfigured while ready.
    let mut rig = net();
    rig.write(QUEUE_SEL, 0);
    rig.write(QUEUE_DESC_LOW, 0x2_0000);
    assert_needs_reset(rig);
    // Status bits cleared without a reset.
    let mut rig = net();
    rig.write(STATUS, 1);
    assert_needs_reset(rig);
    // Register access of the wrong width.
    let mut rig = net();
    rig.write_bytes(QUEUE_NOTIFY, &[1, 0]);
    assert_needs_reset(rig);
    // Features changed after FEATURES_OK.
    let mut rig = net();
    rig.write(DRIVER_FEATURES, 0);
    assert_needs_reset(rig);
    // Write to a read-only register.
    let mut rig = net();
    rig.write(MAGIC_VALUE, 0);
    assert_needs_reset(rig);
}

#[test]
fn blk_chain_without_room_for_a_status() {
    let mut rig = Rig::new(Blk::new(0, 4096, false));
    rig.out.disks.push(vec![0; 4096]);
    rig.init(V1, &[16]);
    rig.add_chain(0, &[(DATA, 16, false)]);
    rig.notify(0);
    assert!(rig.needs_reset());
    let mut rig = Rig::new(Blk::new(0, 4096, false));
    rig.init(V1, &[16]);
    rig.add_chain(0, &[(DATA, 8, false), (DATA + 0x100, 1, true)]);
    rig.notify(0);
    assert!(rig.needs_reset());
}

/// One step of a hostile driver.
#[derive(Clone, Debug)]
enum Step {
    Write {
        offset: u64,
        value: u32,
    },
    WriteOdd {
        offset: u64,
        bytes: Vec<u8>,
    },
    Read {
        offset: u64,
        len: usize,
    },
    Poke {
        addr: u64,
        bytes: Vec<u8>,
    },
    Notify(u32),
    Frame(Vec<u8>),
    /// A descriptor written into queue `q`'s table, mostly pointing into the data area.
    Desc {
        q: u16,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
    /// A head made available on queue `q`.
    Avail {
        q: u16,
        head: u16,
    },
    /// A block request header in the data area.
    BlkHdr {
        at: u64,
        kind: u32,
        sector: u64,
    },
    /// The driver resets the device and sets it up again.
    Reinit {
        event_idx: bool,
    },
    /// A whole chain of (address, length, device-writable) buffers made available on queue `q`.
    Chain {
        q: u16,
        bufs: Vec<(u64, u32, bool)>,
    },
    /// A block request: header, data buffers (written by the device for reads), status byte.
    BlkRequest {
        kind: u32,
        sector: u64,
        data: Vec<u32>,
        header_len: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let regs = prop::sample::select(vec![
        DEVICE_FEATURES_SEL,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SEL,
        QUEUE_SEL,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC_LOW,
        QUEUE_DESC_HIGH,
        QUEUE_DRIVER_LOW,
        QUEUE_DRIVER_HIGH,
        QUEUE_DEVICE_LOW,
        QUEUE_DEVICE_HIGH,
        CONFIG,
    ]);
    // Values that often matter: small numbers, status bits, ring addresses, and anything.
    let values = prop_oneof![0u32..20, Just(0x1_0000), Just(0x1_1000), Just(0x1_2000), Just(15), any::<u32>()];
    // Addresses inside the rings of queues 0 and 1 and the data area, or anywhere.
    let addrs = prop_oneof![0x1_0000u64..0x1_8000, DATA..DATA + 0x1000, any::<u64>()];
    prop_oneof![
        4 => (regs, values).prop_map(|(offset, value)| Step::Write { offset, value }),
        1 => (0u64..0x200, prop::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(offset, bytes)| Step::WriteOdd { offset, bytes }),
        1 => (0u64..0x140, 0usize..9).prop_map(|(offset, len)| Step::Read { offset, len }),
        6 => (addrs, prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(addr, bytes)| Step::Poke { addr, bytes }),
        3 => (0u32..3).prop_map(Step::Notify),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Step::Frame),
    ]
}

/// Steps of a driver that mostly follows the rules: descriptors into the data area, heads made
/// available, block headers, notifications, frames; now and then a random poke or register write.
fn structured_step() -> impl Strategy<Value = Step> {
    let addr = prop_oneof![8 => (0u64..0x100).prop_map(|i| DATA + i * 16), 1 => any::<u64>()];
    let len = prop_oneof![8 => 0u32..0x300, 1 => any::<u32>()];
    let flags = prop_oneof![8 => 0u16..4, 1 => any::<u16>()];
    let next = prop_oneof![8 => 0u16..16, 1 => any::<u16>()];
    prop_oneof![
        8 => (0u16..2, 0u16..16, addr, len, flags, next)
            .prop_map(|(q, index, addr, len, flags, next)| Step::Desc { q, index, addr, len, flags, next }),
        4 => (0u16..2, prop_oneof![8 => 0u16..16, 1 => any::<u16>()]).prop_map(|(q, head)| Step::Avail { q, head }),
        2 => ((0u64..0x100).prop_map(|i| DATA + i * 16), prop_oneof![0u32..10, any::<u32>()], prop_oneof![0u64..20, any::<u64>()])
            .prop_map(|(at, kind, sector)| Step::BlkHdr { at, kind, sector }),
        4 => (0u32..2).prop_map(Step::Notify),
        2 => prop::collection::vec(any::<u8>(), 1..200).prop_map(Step::Frame),
        1 => any::<bool>().prop_map(|event_idx| Step::Reinit { event_idx }),
        1 => step(),
        6 => (0u16..2, prop::collection::vec(((0u64..64).prop_map(|i| DATA + i * 0x1000), prop_oneof![8 => 0u32..0x1000, 1 => any::<u32>()], any::<bool>()), 1..5))
            .prop_map(|(q, bufs)| Step::Chain { q, bufs }),
        8 => (
            prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            prop_oneof![8 => 0u64..20, 1 => any::<u64>()],
            prop::collection::vec(prop_oneof![8 => (0u32..3).prop_map(|n| n * 512), 1 => 0u32..0x2000], 0..4),
            prop_oneof![8 => Just(16u32), 1 => 0u32..32],
        )
            .prop_map(|(kind, sector, data, header_len)| Step::BlkRequest { kind, sector, data, header_len }),
    ]
}

fn run_steps<D: super::device::VirtioDevice>(rig: &mut Rig<D>, steps: &[Step], frame: impl Fn(&mut Rig<D>, Vec<u8>)) {
    let queues = rig.t.device().queue_max_sizes().len();
    for s in steps {
        match s {
            Step::Write { offset, value } => rig.write(*offset, *value),
            Step::WriteOdd { offset, bytes } => rig.write_bytes(*offset, bytes),
            Step::Read { offset, len } => {
                let mut buf = vec![0u8; *len];
                rig.t.mmio_read(*offset, &mut buf);
            }
            Step::Poke { addr, bytes } => {
                // Only guest memory can be poked; addresses outside are the device's business.
                let _ = vm_memory::Bytes::write_slice(&rig.mem, bytes, vm_memory::GuestAddress(*addr));
            }
            Step::Notify(q) => rig.write(QUEUE_NOTIFY, *q),
            Step::Frame(f) => frame(rig, f.clone()),
            Step::Desc { q, index, addr, len, flags, next } => {
                if usize::from(*q) < queues {
                    rig.put_desc(*q, *index, *addr, *len, *flags, *next);
                }
            }
            Step::Avail { q, head } => {
                if usize::from(*q) < queues {
                    rig.make_available(*q, *head);
                }
            }
            Step::BlkHdr { at, kind, sector } => {
                let mut hdr = [0u8; 16];
                hdr[0..4].copy_from_slice(&kind.to_le_bytes());
                hdr[8..16].copy_from_slice(&sector.to_le_bytes());
                rig.write_mem(*at, &hdr);
            }
            Step::Chain { q, bufs } => {
                if usize::from(*q) < queues {
                    rig.add_chain(*q, bufs);
                }
            }
            Step::BlkRequest { kind, sector, data, header_len } => {
                let mut hdr = [0u8; 16];
                hdr[0..4].copy_from_slice(&kind.to_le_bytes());
                hdr[8..16].copy_from_slice(&sector.to_le_bytes());
                rig.write_mem(DATA, &hdr);
                let write = *kind == 0 || *kind == 8;
                let mut chain = vec![(DATA, *header_len, false)];
                chain.extend(data.iter().enumerate().map(|(i, &len)| (DATA + 0x1_0000 * (i as u64 + 1), len, write)));
                chain.push((DATA + 0x100, 1, true));
                rig.add_chain(0, &chain);
            }
            Step::Reinit { event_idx } => {
                rig.write(STATUS, 0);
                let ev = if *event_idx { 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX } else { 0 };
                rig.init(V1 | ev, &vec![16; queues]);
            }
        }
        let _ = rig.t.interrupt_line();
    }
}

// Case counts: the default suite's, or `PROPTEST_CASES` for every property here (README,
// "Fuzzing": a million each with `PROPTEST_CASES=1000000 cargo test --release -p devices --lib
// virtio::fuzz_tests`).
proptest! {
    #![proptest_config(ftvm_tests::fuzz::config(2000))]

    /// Random register writes and memory from scratch: no panic.
    #[test]
    fn random_register_writes_never_panic(steps in prop::collection::vec(step(), 1..60)) {
        let mut rig = Rig::new(Net::new(0, MAC));
        run_steps(&mut rig, &steps, |_, _| {});
    }

    /// A properly initialised net device, then random rings, descriptors, frames and
    /// notifications: no panic, and the device either works or needs a reset.
    #[test]
    fn net_with_random_rings_never_panics(
        event_idx in any::<bool>(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut rig = Rig::new(Net::new(0, MAC));
        let ev = if event_idx { 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX } else { 0 };
        rig.init(V1 | ev, &[16, 16]);
        run_steps(&mut rig, &steps, |rig, f| {
            if rig.t.is_live() {
                rig.t.device_mut().receive(f);
                rig.t.run(&rig.mem, |n, q, m| n.deliver(q, m)).unwrap();
            }
        });
        let only_frames = rig.out.outputs.iter().all(|(_, o)| matches!(o, super::Output::NetFrame { .. }));
        prop_assert!(only_frames);
    }

    /// The same for a block device over an in-memory disk: every write stays inside the disk.
    #[test]
    fn blk_with_random_rings_never_panics(steps in prop::collection::vec(step(), 1..80)) {
        let mut rig = Rig::new(Blk::new(0, 8192, false));
        rig.out.disks.push(vec![0; 8192]);
        rig.init(V1, &[16]);
        run_steps(&mut rig, &steps, |_, _| {});
        apply_completions(&mut rig);
        for (_, o) in &rig.out.outputs {
            if let super::Output::DiskWrite { offset, data, .. } = o {
                prop_assert!(*offset + data.len() as u64 <= 8192);
            }
        }
    }
}

/// Applies whatever completions the in-memory disk produced, whatever state the hostile driver
/// left the device in.
fn apply_completions(rig: &mut Rig<Blk>) {
    for event in rig.out.take_completions(0) {
        if let crate::event::WorldEvent::DiskDone { id, status, data, .. } = event {
            let _ = rig.t.run(&rig.mem, |blk, q, m| blk.complete(id, status, &data, q, m));
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    needs_reset: u64,
    frames_sent: u64,
    frames_delivered: u64,
    disk_writes: u64,
    disk_reads: u64,
}

/// Mostly well-formed drivers, so that the fuzz gets past the first malformed chain and into the
/// devices' request handling; prints what it reached and checks it reached every path.
#[test]
fn structured_fuzz_reaches_every_path_without_panicking() {
    use proptest::test_runner::{Config, TestRunner};
    use std::cell::RefCell;
    let stats = RefCell::new(Stats::default());
    let steps = || (any::<bool>(), prop::collection::vec(structured_step(), 1..150));
    let config = Config { cases: ftvm_tests::fuzz::cases(1000), failure_persistence: None, ..Config::default() };

    TestRunner::new(config.clone())
        .run(&steps(), |(event_idx, steps)| {
            let mut rig = Rig::new(Net::new(0, MAC));
            let ev = if event_idx { 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX } else { 0 };
            rig.init(V1 | ev, &[16, 16]);
            let delivered = RefCell::new(0u64);
            run_steps(&mut rig, &steps, |rig, f| {
                if rig.t.is_live() {
                    let before = rig.t.device().pending() as u64;
                    let taken = u64::from(rig.t.device_mut().receive(f));
                    rig.t.run(&rig.mem, |n, q, m| n.deliver(q, m)).unwrap();
                    *delivered.borrow_mut() += (before + taken).saturating_sub(rig.t.device().pending() as u64);
                }
            });
            let mut s = stats.borrow_mut();
            s.cases += 1;
            s.needs_reset += u64::from(rig.needs_reset());
            s.frames_sent += rig.out.outputs.len() as u64;
            s.frames_delivered += *delivered.borrow();
            Ok(())
        })
        .unwrap();

    TestRunner::new(config)
        .run(&steps(), |(event_idx, steps)| {
            let mut rig = Rig::new(Blk::new(0, 8192, false));
            rig.out.disks.push(vec![0; 8192]);
            let ev = if event_idx { 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX } else { 0 };
            rig.init(V1 | ev, &[16]);
            run_steps(&mut rig, &steps, |_, _| {});
            apply_completions(&mut rig);
            let mut s = stats.borrow_mut();
            s.cases += 1;
            s.needs_reset += u64::from(rig.needs_reset());
            s.disk_reads += rig.out.reads.len() as u64;
            for (_, o) in &rig.out.outputs {
                if let super::Output::DiskWrite { offset, data, .. } = o {
                    prop_assert!(*offset + data.len() as u64 <= 8192);
                    s.disk_writes += 1;
                }
            }
            Ok(())
        })
        .unwrap();

    let s = stats.into_inner();
    println!("structured fuzz: {s:?}");
    assert!(s.needs_reset > 0 && s.frames_sent > 0 && s.frames_delivered > 0, "{s:?}");
    assert!(s.disk_writes > 0 && s.disk_reads > 0, "{s:?}");
}

proptest! {
    #![proptest_config(ftvm_tests::fuzz::config(1000))]

    /// A checkpoint is untrusted input too: restoring random transport state and then using the
    /// device never panics.
    #[test]
    fn restoring_random_state_never_panics(
        status in any::<u32>(),
        driver_features in any::<u64>(),
        queue_sel in 0u32..4,
        queues in prop::collection::vec(
            (any::<u16>(), any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u16>(), any::<u16>(), any::<bool>()),
            2..=2,
        ),
        steps in prop::collection::vec(step(), 0..20),
    ) {
        let mut rig = Rig::new(Net::new(0, MAC));
        rig.init(V1, &[16, 16]);
        let queues = queues
            .into_iter()
            .map(|(size, ready, desc, avail, used, next_avail, next_used, event_idx)| super::queue::QueueSnapshot {
                size: if size % 3 == 0 { 16 } else { size },
                ready,
                desc: if desc % 2 == 0 { ring_base(0) } else { desc & !0xf },
                avail: avail & !1,
                used: used & !3,
                next_avail,
                next_used,
                event_idx,
            })
            .collect();
        let state = TransportState { status, driver_features, queue_sel, queues, ..TransportState::default() };
        if rig.t.restore(&state).is_ok() {
            run_steps(&mut rig, &steps, |rig, f| {
                rig.t.device_mut().receive(f);
                rig.t.run(&rig.mem, |n, q, m| n.deliver(q, m)).unwrap();
            });
            rig.notify(TX_QUEUE);
            rig.notify(RX_QUEUE);
        }
    }
}

/// A valid chain of either device: a frame to send, or a block request inside the disk.
#[derive(Clone, Debug)]
enum ValidChain {
    Frame(u32),
    Blk { kind: u32, sector: u64, sectors: u32 },
}

fn valid_chain(blk: bool) -> BoxedStrategy<ValidChain> {
    if blk {
        (prop::sample::select(vec![0u32, 1, 4, 8]), 0u64..12, 1u32..4)
            .prop_map(|(kind, sector, sectors)| ValidChain::Blk { kind, sector, sectors })
            .boxed()
    } else {
        (1u32..1500).prop_map(ValidChain::Frame).boxed()
    }
}

/// Bytes of queue `q`'s descriptor table (16 entries) and available ring (flags, index, 16
/// entries): the part of guest memory a driver writes.
const DRIVER_AREA: [(u64, usize); 2] = [(0, 16 * 16), (0x1000, 4 + 2 * 16)];

fn blk_disk_bytes() -> u64 {
    16 * 512
}

proptest! {
    #![proptest_config(ftvm_tests::fuzz::config(2000))]

    /// Valid chains, then the descriptor table and available ring mutated as bytes (bits flipped,
    /// fields swapped, lengths, addresses, flags and indices planted): the device either serves
    /// sane requests or goes to needs-reset, never panics, and never writes outside the disk or
    /// sends a frame beyond the limit.
    #[test]
    fn mutated_valid_chains_are_served_or_need_reset(
        (blk, valid) in any::<bool>().prop_flat_map(|blk| (Just(blk), prop::collection::vec(valid_chain(blk), 1..6))),
        event_idx in any::<bool>(),
        ms in ftvm_tests::fuzz::mutations(4),
    ) {
        let ev = if event_idx { 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX } else { 0 };
        if blk {
            let mut rig = Rig::new(Blk::new(0, blk_disk_bytes(), false));
            rig.out.disks.push(vec![0; blk_disk_bytes() as usize]);
            rig.init(V1 | ev, &[16]);
            for (i, c) in valid.iter().enumerate() {
                if let ValidChain::Blk { kind, sector, sectors } = c {
                    let mut hdr = [0u8; 16];
                    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
                    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
                    let at = DATA + 0x1000 * i as u64;
                    rig.write_mem(at, &hdr);
                    let write = *kind == 0 || *kind == 8;
                    rig.add_chain(0, &[(at, 16, false), (at + 0x200, sectors * 512, write), (at + 0x100, 1, true)]);
                }
            }
            mutate_driver_area(&mut rig, 0, &ms);
            rig.notify(0);
            apply_completions(&mut rig);
            for (_, o) in &rig.out.outputs {
                if let super::Output::DiskWrite { offset, data, .. } = o {
                    prop_assert!(*offset + data.len() as u64 <= blk_disk_bytes());
                }
            }
            check_used(&mut rig, 0)?;
        } else {
            let mut rig = Rig::new(Net::new(0, MAC));
            rig.init(V1 | ev, &[16, 16]);
            for (i, c) in valid.iter().enumerate() {
                if let ValidChain::Frame(len) = c {
                    rig.add_chain(TX_QUEUE, &[(DATA + 0x1000 * i as u64, 12 + len, false)]);
                }
            }
            mutate_driver_area(&mut rig, TX_QUEUE, &ms);
            rig.notify(TX_QUEUE);
            for (_, o) in &rig.out.outputs {
                if let super::Output::NetFrame { frame, .. } = o {
                    prop_assert!(!frame.is_empty() && frame.len() <= super::net::MAX_FRAME);
                }
            }
            check_used(&mut rig, TX_QUEUE)?;
        }
    }

    /// Writes of any width anywhere in the configuration space change nothing the driver reads
    /// and do not put the device in needs-reset (the space is read-only for the driver).
    #[test]
    fn config_space_writes_change_nothing(
        blk in any::<bool>(),
        writes in prop::collection::vec((0u64..0x80, prop::collection::vec(any::<u8>(), 0..9)), 1..20),
    ) {
        fn check<D: super::device::VirtioDevice>(mut rig: Rig<D>, writes: &[(u64, Vec<u8>)]) -> Result<(), TestCaseError> {
            let read_config = |rig: &mut Rig<D>| (0..0x40u64).map(|o| {
                let mut b = [0u8; 1];
                rig.t.mmio_read(CONFIG + o, &mut b);
                b[0]
            }).collect::<Vec<u8>>();
            let before = read_config(&mut rig);
            let status = rig.read(STATUS);
            for (offset, bytes) in writes {
                rig.write_bytes(CONFIG + offset, bytes);
            }
            prop_assert_eq!(read_config(&mut rig), before);
            prop_assert_eq!(rig.read(STATUS), status);
            prop_assert!(!rig.needs_reset());
            Ok(())
        }
        if blk {
            let mut rig = Rig::new(Blk::new(0, blk_disk_bytes(), false));
            rig.init(V1, &[16]);
            check(rig, &writes)?;
        } else {
            let mut rig = Rig::new(Net::new(0, MAC));
            rig.init(V1, &[16, 16]);
            check(rig, &writes)?;
        }
    }
}

/// Applies `ms` to queue `q`'s descriptor table and available ring, as one byte image each.
fn mutate_driver_area<D: super::device::VirtioDevice>(rig: &mut Rig<D>, q: u16, ms: &[ftvm_tests::fuzz::Mutation]) {
    for (offset, len) in DRIVER_AREA {
        let at = ring_base(q) + offset;
        let mut bytes = ftvm_tests::fuzz::mutated(rig.read_mem(at, len), ms);
        bytes.resize(len, 0);
        rig.write_mem(at, &bytes);
    }
}

/// Unless the device needs a reset, what it returned names chains of the queue.
fn check_used<D: super::device::VirtioDevice>(rig: &mut Rig<D>, q: u16) -> Result<(), TestCaseError> {
    if !rig.needs_reset() {
        for (id, _) in rig.take_used(q) {
            prop_assert!(id < 16, "used id {} outside the queue", id);
        }
    }
    Ok(())
}
