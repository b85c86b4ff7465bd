//! Single requests to a ReplayWorld over short hand-written logs: what each answers and where it
//! diverges, for the cases the model run of `record_replay.rs` does not reach.

use devices::{ClockId, Deadlines, EventSource, Landmark};
use ftlog::{End, ExitKind, ExitSignature, LogWriter, Record, ReplayError, ReplayWorld};

#[path = "common/header.rs"]
mod header;
use header::header;

fn log_of(records: &[Record]) -> Vec<u8> {
    // No exit digest within these short runs (one every 64 exits): only the End checks the exits.
    let mut writer = LogWriter::new(Vec::new(), &header(64)).expect("log header");
    for record in records {
        writer.write(record).expect("log record");
    }
    writer.into_inner().expect("log bytes")
}

fn end_after(exits: u64) -> Record {
    Record::End(End { exits, exit_digest: [0; 32], exit_code: 0, state_digest: None })
}

fn exit(value: u64) -> ExitSignature {
    ExitSignature { kind: ExitKind::PioOut, rip: 0x10, addr: 0x3f8, len: 1, value }
}

/// Replays `exits` exits of a log that ends after `recorded` exits, then finishes.
fn finish_after(recorded: u64, exits: u64) -> ReplayError {
    let log = log_of(&[end_after(recorded)]);
    let mut world = ReplayWorld::new(&log[..]).expect("log opens");
    for n in 1..=exits {
        world.check_exit(&exit(n)).expect("no digest to compare before the End");
    }
    world.finish(None, None).expect_err("the exit counts differ")
}

#[test]
fn an_end_after_another_exit_count_diverges_at_the_first_exit_one_side_lacks() {
    let err = finish_after(5, 3);
    let d = err.divergence().expect("a divergence");
    assert_eq!(d.at, Landmark::Exit(4), "{d}");
    assert_eq!((d.expected.as_str(), d.got.as_str()), ("end after 5 exits", "end after 3 exits"));

    let err = finish_after(2, 3);
    let d = err.divergence().expect("a divergence");
    assert_eq!(d.at, Landmark::Exit(3), "{d}");
    assert_eq!((d.expected.as_str(), d.got.as_str()), ("end after 2 exits", "end after 3 exits"));
}

#[test]
fn an_idle_guest_woken_by_a_record_at_the_same_landmark_does_not_diverge() {
    let at = Landmark::Exit(0);
    let log = log_of(&[
        Record::ClockRead { at, clock: ClockId::Monotonic, value: 5_000 },
        Record::Interrupt { at, vector: 0x20 },
        end_after(0),
    ]);
    let mut world = ReplayWorld::new(&log[..]).expect("log opens");
    assert!(world.poll(at, Deadlines::default()).is_empty());
    world.wait_idle(at, Deadlines::default());
    assert_eq!(world.read_clock(at, ClockId::Monotonic), 5_000);
    // The clock read consumed a record since the last idle: the guest was not stuck.
    world.wait_idle(at, Deadlines::default());
    assert!(world.error().is_none(), "{:?}", world.error());
    // Nothing consumed since: the recorded interrupt can never come.
    world.wait_idle(at, Deadlines::default());
    let d = world.error().and_then(ReplayError::divergence).expect("a divergence");
    assert_eq!(d.at, at);
    assert_eq!(d.got, "guest idle at Exit(0) with nothing recorded to wake it");
}

#[test]
fn the_monotonic_clock_now_is_the_last_monotonic_value_replayed() {
    let at = Landmark::Exit(0);
    let log = log_of(&[
        Record::ClockRead { at, clock: ClockId::Monotonic, value: 5_000 },
        Record::ClockRead { at, clock: ClockId::Wall, value: 1_700_000_000_000_000_000 },
        end_after(0),
    ]);
    let mut world = ReplayWorld::new(&log[..]).expect("log opens");
    assert_eq!(world.monotonic_now(), 0, "nothing replayed yet");
    assert_eq!(world.read_clock(at, ClockId::Monotonic), 5_000);
    assert_eq!(world.monotonic_now(), 5_000);
    assert_eq!(world.read_clock(at, ClockId::Wall), 1_700_000_000_000_000_000);
    assert_eq!(world.monotonic_now(), 5_000, "a wall clock read does not move the monotonic clock");
    assert!(world.error().is_none(), "{:?}", world.error());
}

#[test]
fn a_replay_never_asks_to_be_preempted_by_a_timer() {
    // The vCPU loop kicks the guest when time_until says a deadline passes; a replay must take
    // its preemptions from the log only, or it would stop the guest where the primary did not.
    let log = log_of(&[end_after(0)]);
    let world = ReplayWorld::new(&log[..]).expect("log opens");
    for deadline_ns in [0, 1, u64::MAX] {
        assert_eq!(world.time_until(deadline_ns), None, "deadline {deadline_ns}");
    }
}
