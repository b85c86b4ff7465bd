//! Strategies for the log's records, shared by the format's property tests and its fuzzing.

use devices::{ClockId, InputKind, Landmark, WorldEvent};
use ftlog::{End, Record};
use proptest::prelude::*;

pub fn landmark() -> impl Strategy<Value = Landmark> {
    prop_oneof![any::<u64>().prop_map(Landmark::Exit), any::<u64>().prop_map(Landmark::Preempt)]
}

pub fn clock() -> impl Strategy<Value = ClockId> {
    prop_oneof![Just(ClockId::Monotonic), Just(ClockId::Wall)]
}

/// Up to `max_data` bytes of payload.
pub fn world_event(max_data: usize) -> impl Strategy<Value = WorldEvent> {
    prop_oneof![
        Just(WorldEvent::PitExpired),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..max_data))
            .prop_map(|(device, frame)| WorldEvent::NetFrame { device, frame }),
        (any::<u8>(), any::<u64>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..max_data))
            .prop_map(|(device, id, status, data)| WorldEvent::DiskDone { device, id, status, data }),
    ]
}

/// Every kind of record, with up to `max_data` bytes of payload (world events, checkpoints,
/// inputs).
pub fn record(max_data: usize) -> impl Strategy<Value = Record> {
    prop_oneof![
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(exits, digest)| Record::ExitDigest { exits, digest }),
        (landmark(), any::<u8>()).prop_map(|(at, vector)| Record::Interrupt { at, vector }),
        (landmark(), clock(), any::<u64>()).prop_map(|(at, clock, value)| Record::ClockRead { at, clock, value }),
        (landmark(), world_event(max_data)).prop_map(|(at, event)| Record::World { at, event }),
        (landmark(), proptest::collection::vec(any::<u8>(), 0..max_data))
            .prop_map(|(at, data)| Record::Checkpoint { at, data }),
        (landmark(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..max_data))
            .prop_map(|(at, device, data)| Record::Input { at, kind: InputKind::DiskRead { device }, data }),
        any::<u64>().prop_map(|exits| Record::SnapshotMark { exits }),
    ]
}

pub fn end() -> impl Strategy<Value = End> {
    (any::<u64>(), any::<[u8; 32]>(), any::<u32>(), any::<Option<[u8; 32]>>())
        .prop_map(|(exits, exit_digest, exit_code, state_digest)| End { exits, exit_digest, exit_code, state_digest })
}
