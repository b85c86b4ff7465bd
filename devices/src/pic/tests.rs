use super::*;
use proptest::prelude::*;

/// The Linux-style initialisation: cascade, ICW4, vectors 0x20/0x28, optional auto-EOI.
fn init(pic: &mut PicPair, auto_eoi: bool) {
    let icw4 = if auto_eoi { 0x03 } else { 0x01 };
    pic.write(0x20, 0x11);
    pic.write(0x21, 0x20);
    pic.write(0x21, 0x04);
    pic.write(0x21, icw4);
    pic.write(0xa0, 0x11);
    pic.write(0xa1, 0x28);
    pic.write(0xa1, 0x02);
    pic.write(0xa1, icw4);
}

fn initialised(auto_eoi: bool) -> PicPair {
    let mut pic = PicPair::new();
    init(&mut pic, auto_eoi);
    pic
}

#[test]
fn reset_state_uses_pc_vector_bases() {
    let mut pic = PicPair::new();
    pic.pulse_irq(0);
    assert_eq!(pic.acknowledge(), Some(0x08));
    pic.write(0x20, 0x20);
    pic.pulse_irq(9);
    assert_eq!(pic.acknowledge(), Some(0x71));
}

#[test]
fn init_sequence_sets_vector_bases_and_clears_masks() {
    let mut pic = PicPair::new();
    pic.write(0x21, 0xff);
    init(&mut pic, false);
    assert_eq!(pic.read(0x21), 0);
    assert_eq!(pic.state().master.init_step, InitStep::Ready);
    assert_eq!(pic.state().slave.init_step, InitStep::Ready);
    pic.pulse_irq(3);
    assert_eq!(pic.acknowledge(), Some(0x23));
    pic.pulse_irq(5);
    assert_eq!(pic.pending_vector(), None, "IRQ 3 in service blocks lower priorities");
    pic.pulse_irq(12);
    assert_eq!(pic.acknowledge(), Some(0x2c), "the slave sits at IR2, above IRQ 3");
}

#[test]
fn init_without_icw4_and_single_mode_skip_words() {
    let mut pic = PicPair::new();
    // Single mode, no ICW4: ICW2 is the last word; the next data write is the mask.
    pic.write(0x20, 0x12);
    pic.write(0x21, 0x40);
    pic.write(0x21, 0xfe);
    assert_eq!(pic.read(0x21), 0xfe);
    pic.pulse_irq(0);
    assert_eq!(pic.acknowledge(), Some(0x40));
    // Single mode: IR2 is not a cascade, a slave request arrives as vector base + 2.
    pic.write(0x21, 0x00);
    pic.write(0x20, 0x20);
    pic.pulse_irq(8);
    assert_eq!(pic.acknowledge(), Some(0x42));
}

#[test]
fn icw2_ignores_low_bits() {
    let mut pic = PicPair::new();
    pic.write(0x20, 0x11);
    pic.write(0x21, 0x27);
    pic.write(0x21, 0x04);
    pic.write(0x21, 0x01);
    pic.pulse_irq(1);
    assert_eq!(pic.acknowledge(), Some(0x21));
}

#[test]
fn auto_eoi_does_not_set_in_service() {
    let mut pic = initialised(true);
    pic.pulse_irq(0);
    assert_eq!(pic.acknowledge(), Some(0x20));
    assert_eq!(pic.isr(), 0);
    pic.pulse_irq(0);
    assert_eq!(pic.acknowledge(), Some(0x20), "no EOI needed");
    pic.pulse_irq(10);
    assert_eq!(pic.acknowledge(), Some(0x2a));
    assert_eq!(pic.isr(), 0);
}

#[test]
fn non_specific_eoi_clears_highest_priority_in_service() {
    let mut pic = initialised(false);
    pic.pulse_irq(4);
    assert_eq!(pic.acknowledge(), Some(0x24));
    pic.pulse_irq(1);
    assert_eq!(pic.acknowledge(), Some(0x21), "higher priority nests");
    assert_eq!(pic.isr(), 0b1_0010);
    pic.write(0x20, 0x20);
    assert_eq!(pic.isr(), 0b1_0000);
    pic.write(0x20, 0x20);
    assert_eq!(pic.isr(), 0);
}

#[test]
fn specific_eoi_clears_the_named_line() {
    let mut pic = initialised(false);
    pic.pulse_irq(4);
    pic.acknowledge();
    pic.pulse_irq(1);
    pic.acknowledge();
    pic.write(0x20, 0x60 | 4);
    assert_eq!(pic.isr(), 0b10);
}

#[test]
fn in_service_line_blocks_equal_and_lower_priority() {
    let mut pic = initialised(false);
    pic.pulse_irq(3);
    assert_eq!(pic.acknowledge(), Some(0x23));
    pic.pulse_irq(3);
    pic.pulse_irq(5);
    assert_eq!(pic.pending_vector(), None);
    pic.write(0x20, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x23), "lowest line first");
    pic.write(0x20, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x25));
}

#[test]
fn masked_lines_stay_pending_until_unmasked() {
    let mut pic = initialised(false);
    pic.write(0x21, 0x01);
    pic.pulse_irq(0);
    assert_eq!(pic.pending_vector(), None);
    assert_eq!(pic.read(0x20), 0x01, "IRR is read by default");
    pic.write(0x21, 0x00);
    assert_eq!(pic.pending_vector(), Some(0x20));
    // Masking the cascade line hides the whole slave.
    pic.write(0x20, 0x20);
    pic.acknowledge();
    pic.write(0x20, 0x20);
    pic.write(0x21, 0x04);
    pic.pulse_irq(14);
    assert_eq!(pic.pending_vector(), None);
    pic.write(0x21, 0x00);
    assert_eq!(pic.pending_vector(), Some(0x2e));
}

#[test]
fn ocw3_selects_irr_or_isr() {
    let mut pic = initialised(false);
    pic.pulse_irq(5);
    pic.acknowledge();
    pic.pulse_irq(6);
    assert_eq!(pic.read(0x20), 0x40);
    pic.write(0x20, 0x0b);
    assert_eq!(pic.read(0x20), 0x20);
    pic.write(0x20, 0x0a);
    assert_eq!(pic.read(0x20), 0x40);
}

#[test]
fn poll_acknowledges_the_highest_request() {
    let mut pic = initialised(false);
    pic.write(0x20, 0x0c);
    assert_eq!(pic.read(0x20), 0, "nothing pending");
    pic.pulse_irq(6);
    pic.write(0x20, 0x0c);
    assert_eq!(pic.read(0x20), 0x86);
    assert_eq!(pic.isr(), 0x40);
    assert_eq!(pic.read(0x20), 0, "poll mode lasts one read: IRR");
}

#[test]
fn edges_not_levels_request_interrupts() {
    let mut pic = initialised(false);
    pic.set_irq(4, true);
    assert_eq!(pic.acknowledge(), Some(0x24));
    pic.write(0x20, 0x20);
    pic.set_irq(4, true);
    assert_eq!(pic.pending_vector(), None, "a held level is not a new edge");
    pic.set_irq(4, false);
    pic.set_irq(4, true);
    assert_eq!(pic.pending_vector(), Some(0x24));
}

#[test]
fn pending_vector_does_not_change_state() {
    let mut pic = initialised(false);
    pic.pulse_irq(9);
    let before = pic.state();
    assert_eq!(pic.pending_vector(), Some(0x29));
    assert_eq!(pic.pending_vector(), Some(0x29));
    assert_eq!(pic.state(), before);
}

#[test]
fn cascade_acknowledge_handles_both_chips() {
    let mut pic = initialised(false);
    pic.pulse_irq(11);
    assert_eq!(pic.pending_vector(), Some(0x2b));
    assert_eq!(pic.acknowledge(), Some(0x2b));
    assert_eq!(pic.isr(), 0x0804);
    // A lower-priority slave line waits for the slave's EOI; a master line above IR2 nests.
    pic.pulse_irq(12);
    assert_eq!(pic.pending_vector(), None);
    pic.pulse_irq(1);
    assert_eq!(pic.acknowledge(), Some(0x21));
    pic.write(0x20, 0x20);
    // Linux order: EOI the slave, then the master.
    pic.write(0xa0, 0x20);
    assert_eq!(pic.pending_vector(), None, "master IR2 still in service");
    pic.write(0x20, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x2c));
    assert_eq!(pic.isr(), 0x1004);
}

#[test]
fn cascade_works_when_master_is_eoid_first() {
    let mut pic = initialised(false);
    pic.pulse_irq(8);
    pic.pulse_irq(9);
    assert_eq!(pic.acknowledge(), Some(0x28));
    pic.write(0x20, 0x20);
    assert_eq!(pic.pending_vector(), None, "slave IR0 in service");
    pic.write(0xa0, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x29));
}

#[test]
fn special_fully_nested_lets_higher_slave_lines_through() {
    let mut pic = PicPair::new();
    pic.write(0x20, 0x11);
    pic.write(0x21, 0x20);
    pic.write(0x21, 0x04);
    pic.write(0x21, 0x11);
    pic.pulse_irq(12);
    assert_eq!(pic.acknowledge(), Some(0x74));
    pic.pulse_irq(9);
    assert_eq!(pic.acknowledge(), Some(0x71));
}

#[test]
fn rotation_commands_change_priority() {
    let mut pic = initialised(false);
    // Set priority: IR3 lowest, so IR4 highest.
    pic.write(0x20, 0xc3);
    pic.pulse_irq(1);
    pic.pulse_irq(5);
    assert_eq!(pic.acknowledge(), Some(0x25));
    // Rotate on non-specific EOI: IR5 becomes lowest.
    pic.write(0x20, 0xa0);
    assert_eq!(pic.acknowledge(), Some(0x21));
}

#[test]
fn out_of_range_lines_and_ports_are_ignored() {
    let mut pic = initialised(false);
    let before = pic.state();
    pic.set_irq(16, true);
    pic.pulse_irq(255);
    pic.set_irq(2, true);
    pic.write(0x22, 0x11);
    assert_eq!(pic.read(0x1234), 0xff);
    assert_eq!(pic.state(), before);
}

#[test]
fn state_round_trip_behaves_identically() {
    let mut pic = initialised(false);
    pic.pulse_irq(10);
    pic.acknowledge();
    pic.pulse_irq(3);
    pic.write(0x21, 0x40);
    pic.write(0x20, 0x0b);
    let bytes = postcard::to_allocvec(&pic.state()).expect("serialises");
    let state: PicState = postcard::from_bytes(&bytes).expect("deserialises");
    let mut copy = PicPair::new();
    copy.restore(&state);
    assert_eq!(copy, pic);
    for p in [&mut pic, &mut copy] {
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
    }
    assert_eq!(copy.read(0x20), pic.read(0x20));
    assert_eq!(copy.acknowledge(), pic.acknowledge());
    assert_eq!(copy, pic);
}

#[derive(Clone, Debug)]
enum Op {
    Write(u16, u8),
    Read(u16),
    SetIrq(u8, bool),
    Pulse(u8),
    Acknowledge,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop::sample::select(vec![0x20u16, 0x21, 0xa0, 0xa1]),
        1 => any::<u16>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (port(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
        port().prop_map(Op::Read),
        (0u8..20, any::<bool>()).prop_map(|(l, v)| Op::SetIrq(l, v)),
        any::<u8>().prop_map(Op::Pulse),
        Just(Op::Acknowledge),
    ]
}

/// Applies `op`; returns what the guest or the VMM observes.
fn apply(pic: &mut PicPair, op: &Op) -> (Option<u8>, Option<u8>) {
    let observed = match *op {
        Op::Write(port, value) => {
            pic.write(port, value);
            None
        }
        Op::Read(port) => Some(pic.read(port)),
        Op::SetIrq(line, level) => {
            pic.set_irq(line, level);
            None
        }
        Op::Pulse(line) => {
            pic.pulse_irq(line);
            None
        }
        Op::Acknowledge => {
            let pending = pic.pending_vector();
            let acked = pic.acknowledge();
            assert_eq!(pending, acked, "pending_vector predicts acknowledge");
            acked
        }
    };
    (observed, pic.pending_vector())
}

proptest! {
    #[test]
    fn random_guests_never_panic_and_state_round_trips(
        ops in prop::collection::vec(op(), 0..200),
        split in any::<prop::sample::Index>(),
    ) {
        let mut pic = PicPair::new();
        let split = split.index(ops.len() + 1);
        for op in &ops[..split] {
            apply(&mut pic, op);
        }
        let bytes = postcard::to_allocvec(&pic.state()).expect("serialises");
        let mut copy = PicPair::new();
        copy.restore(&postcard::from_bytes(&bytes).expect("deserialises"));
        prop_assert_eq!(&copy, &pic);
        for op in &ops[split..] {
            prop_assert_eq!(apply(&mut copy, op), apply(&mut pic, op));
        }
        prop_assert_eq!(copy.state(), pic.state());
    }
}
