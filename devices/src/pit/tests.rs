use super::*;
use proptest::prelude::*;

const MS: u64 = 1_000_000;

/// Programs channel 0 in `mode`, lobyte/hibyte, with `count`, at `now`.
fn program(pit: &mut Pit, mode: u8, count: u16, now: u64) {
    pit.write(0x43, 0x30 | mode << 1, now);
    let [low, high] = count.to_le_bytes();
    pit.write(0x40, low, now);
    pit.write(0x40, high, now);
}

fn ns_for_ticks(ticks: u128) -> u64 {
    u64::try_from((ticks * NS_PER_S).div_ceil(u128::from(PIT_HZ))).expect("fits")
}

#[test]
fn nothing_is_armed_at_reset() {
    let mut pit = Pit::new();
    assert_eq!(pit.next_deadline(), None);
    assert!(!pit.expire());
}

#[test]
fn periodic_1000hz_does_not_drift_over_10000_expiries() {
    for mode in [2, 3] {
        let mut pit = Pit::new();
        let start = 5 * MS + 123;
        program(&mut pit, mode, 1193, start);
        let mut previous = start;
        for k in 1..=10_000u128 {
            let deadline = pit.next_deadline().expect("armed");
            assert_eq!(deadline, start + ns_for_ticks(k * 1193));
            let gap = deadline - previous;
            assert!((999_847..=999_848).contains(&gap) || k == 1, "gap {gap} at {k}");
            previous = deadline;
            assert!(pit.expire());
        }
        // The 10,000th edge: 10,000 periods of 1193 ticks, 9.998474667 s to the nanosecond.
        assert_eq!(previous, start + 9_998_474_667);
    }
}

#[test]
fn period_follows_the_count_and_zero_means_65536() {
    let mut pit = Pit::new();
    program(&mut pit, 2, 0, 0);
    assert_eq!(pit.next_deadline(), Some(ns_for_ticks(65_536)));
    assert_eq!(pit.next_deadline(), Some(54_925_402));
}

#[test]
fn one_shot_fires_once() {
    let mut pit = Pit::new();
    program(&mut pit, 0, 1193, 10 * MS);
    assert_eq!(pit.next_deadline(), Some(10 * MS + ns_for_ticks(1193)));
    assert_eq!(pit.read(0x61, 10 * MS) & 0x20, 0, "channel 2 untouched");
    assert!(pit.expire());
    assert_eq!(pit.next_deadline(), None);
    assert!(!pit.expire());
}

#[test]
fn mode_4_strobes_once_a_tick_after_terminal_count() {
    let mut pit = Pit::new();
    program(&mut pit, 4, 100, 0);
    assert_eq!(pit.next_deadline(), Some(ns_for_ticks(101)));
    assert!(pit.expire());
    assert_eq!(pit.next_deadline(), None);
}

#[test]
fn modes_1_and_5_wait_for_a_gate_edge_that_channel_0_never_gets() {
    let mut pit = Pit::new();
    program(&mut pit, 1, 100, 0);
    assert_eq!(pit.next_deadline(), None);
    program(&mut pit, 5, 100, 0);
    assert_eq!(pit.next_deadline(), None);
}

#[test]
fn reprogramming_resets_the_schedule() {
    let mut pit = Pit::new();
    program(&mut pit, 2, 1193, 0);
    for _ in 0..5 {
        pit.expire();
    }
    program(&mut pit, 2, 11932, 7 * MS);
    assert_eq!(pit.next_deadline(), Some(7 * MS + ns_for_ticks(11932)));
    // A control word alone stops channel 0 until a count is written.
    pit.write(0x43, 0x34, 8 * MS);
    assert_eq!(pit.next_deadline(), None);
    pit.write(0x40, 0x00, 9 * MS);
    assert_eq!(pit.next_deadline(), None, "half a count does not arm");
    pit.write(0x40, 0x10, 9 * MS);
    assert_eq!(pit.next_deadline(), Some(9 * MS + ns_for_ticks(0x1000)));
}

#[test]
fn counter_latch_freezes_the_count_until_read() {
    let mut pit = Pit::new();
    program(&mut pit, 2, 10_000, 0);
    // 1 ms is 1193 whole ticks.
    pit.write(0x43, 0x00, MS);
    let low = pit.read(0x40, 3 * MS);
    pit.write(0x43, 0x00, 3 * MS); // a second latch before the read completes is ignored
    let high = pit.read(0x40, 5 * MS);
    assert_eq!(u16::from_le_bytes([low, high]), 10_000 - 1193);
    // Unlatched reads follow the clock.
    let low = pit.read(0x40, 2 * MS);
    let high = pit.read(0x40, 2 * MS);
    assert_eq!(u16::from_le_bytes([low, high]), 10_000 - 2386);
}

#[test]
fn count_reads_wrap_per_mode() {
    let mut pit = Pit::new();
    program(&mut pit, 2, 100, 0);
    let at_ticks = |t: u128| ns_for_ticks(t);
    pit.write(0x43, 0x00, at_ticks(250));
    let count = u16::from_le_bytes([pit.read(0x40, 0), pit.read(0x40, 0)]);
    assert_eq!(count, 50);
    program(&mut pit, 0, 100, 0);
    pit.write(0x43, 0x00, at_ticks(101));
    let count = u16::from_le_bytes([pit.read(0x40, 0), pit.read(0x40, 0)]);
    assert_eq!(count, 0xffff, "mode 0 wraps after terminal count");
}

#[test]
fn lobyte_and_hibyte_access_modes() {
    let mut pit = Pit::new();
    pit.write(0x43, 0x14, 0); // channel 0, lobyte only, mode 2
    pit.write(0x40, 200, 0);
    assert_eq!(pit.next_deadline(), Some(ns_for_ticks(200)));
    assert_eq!(pit.read(0x40, 0), 200);
    pit.write(0x43, 0x24, 0); // hibyte only
    pit.write(0x40, 0x02, 0);
    assert_eq!(pit.next_deadline(), Some(ns_for_ticks(0x200)));
    assert_eq!(pit.read(0x40, 0), 0x02);
}

#[test]
fn read_back_latches_status_then_count() {
    let mut pit = Pit::new();
    program(&mut pit, 3, 1000, 0);
    pit.write(0x43, 0xc2, 0); // latch count and status of channel 0
    assert_eq!(pit.read(0x40, 0), 0x80 | 0x30 | 3 << 1, "OUT high, lohi, mode 3");
    assert_eq!(pit.read(0x40, 0), 0xe8);
    assert_eq!(pit.read(0x40, 0), 0x03);
}

#[test]
fn bcd_counts() {
    let mut pit = Pit::new();
    pit.write(0x43, 0x35, 0); // lohi, mode 2, BCD
    pit.write(0x40, 0x00, 0);
    pit.write(0x40, 0x10, 0); // 1000 decimal
    assert_eq!(pit.next_deadline(), Some(ns_for_ticks(1000)));
    pit.write(0x43, 0x00, ns_for_ticks(1));
    assert_eq!(u16::from_le_bytes([pit.read(0x40, 0), pit.read(0x40, 0)]), 0x0999);
}

#[test]
fn channel_2_gate_and_output_on_port_61() {
    let mut pit = Pit::new();
    assert_eq!(pit.read(0x61, 0) & 0x03, 0);
    pit.write(0x61, 0x03, 0);
    assert_eq!(pit.read(0x61, 0) & 0x03, 0x03);
    // Linux's TSC calibration: channel 2, mode 0, poll bit 5 for terminal count.
    pit.write(0x43, 0xb0, 0);
    pit.write(0x42, 0xff, 0);
    pit.write(0x42, 0x00, 0);
    assert_eq!(pit.read(0x61, ns_for_ticks(254)) & 0x20, 0);
    assert_eq!(pit.read(0x61, ns_for_ticks(255)) & 0x20, 0x20);
    assert_eq!(pit.next_deadline(), None, "channel 2 drives no IRQ");
}

#[test]
fn state_round_trip_behaves_identically() {
    let mut pit = Pit::new();
    program(&mut pit, 2, 1193, 3 * MS);
    pit.expire();
    pit.write(0x43, 0x00, 4 * MS);
    let _ = pit.read(0x40, 4 * MS);
    pit.write(0x61, 0x01, 4 * MS);
    let bytes = postcard::to_allocvec(&pit.state()).expect("serialises");
    let mut copy = Pit::new();
    copy.restore(&postcard::from_bytes(&bytes).expect("deserialises"));
    assert_eq!(copy, pit);
    assert_eq!(copy.read(0x40, 6 * MS), pit.read(0x40, 6 * MS));
    assert_eq!(copy.expire(), pit.expire());
    assert_eq!(copy.next_deadline(), pit.next_deadline());
    assert_eq!(copy, pit);
}

#[derive(Clone, Debug)]
enum Op {
    Write(u16, u8),
    Read(u16),
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let port = prop_oneof![
        4 => prop::sample::select(vec![0x40u16, 0x41, 0x42, 0x43, 0x61]),
        1 => any::<u16>(),
    ];
    prop_oneof![
        (port.clone(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
        port.prop_map(Op::Read),
        Just(Op::Expire),
    ]
}

fn apply(pit: &mut Pit, op: &Op, now: u64) -> (Option<u8>, Option<u64>) {
    let observed = match *op {
        Op::Write(port, value) => {
            pit.write(port, value, now);
            None
        }
        Op::Read(port) => Some(pit.read(port, now)),
        Op::Expire => Some(u8::from(pit.expire())),
    };
    (observed, pit.next_deadline())
}

proptest! {
    #[test]
    fn random_guests_never_panic_and_state_round_trips(
        ops in prop::collection::vec((op(), 0u64..2_000_000), 0..200),
        start in prop_oneof![Just(0u64), any::<u64>()],
        split in any::<prop::sample::Index>(),
    ) {
        let mut pit = Pit::new();
        let split = split.index(ops.len() + 1);
        let mut now = start;
        for (op, step) in &ops[..split] {
            now = now.saturating_add(*step);
            apply(&mut pit, op, now);
        }
        let bytes = postcard::to_allocvec(&pit.state()).expect("serialises");
        let mut copy = Pit::new();
        copy.restore(&postcard::from_bytes(&bytes).expect("deserialises"));
        prop_assert_eq!(&copy, &pit);
        for (op, step) in &ops[split..] {
            now = now.saturating_add(*step);
            prop_assert_eq!(apply(&mut copy, op, now), apply(&mut pit, op, now));
        }
        prop_assert_eq!(copy.state(), pit.state());
    }
}
