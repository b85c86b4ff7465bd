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
    Write { offset: u64, value: u32 },
    WriteOdd { offset: u64, bytes: Vec<u8> },
    Read { offset: u64, len: usize },
    Poke { addr: u64, bytes: Vec<u8> },
    Notify(u32),
    Frame(Vec<u8>),
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

fn run_steps<D: super::device::VirtioDevice>(rig: &mut Rig<D>, steps: &[Step], frame: impl Fn(&mut Rig<D>, Vec<u8>)) {
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
        }
        let _ = rig.t.interrupt_line();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
        for (_, o) in &rig.out.outputs {
            if let super::Output::DiskWrite { offset, data, .. } = o {
                prop_assert!(*offset + data.len() as u64 <= 8192);
            }
        }
    }
}
