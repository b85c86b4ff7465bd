//! RecordingWorld → ReplayWorld: a model VMM loop driven on both sides gives identical answers,
//! and tampered logs are reported as divergence at the right landmark.

// `%` reads more plainly than is_multiple_of in a model loop, and keeps the MSRV (1.80).
#![allow(clippy::manual_is_multiple_of)]

use devices::{ClockId, Deadlines, EventSource, InputKind, Landmark, WorldEvent};
use ftlog::{
    ChannelFeed, Divergence, End, ExitKind, ExitSignature, FeedItem, LogError, LogHeader, LogReader, LogWriter, Record,
    RecordingWorld, ReplayError, ReplayWorld,
};

#[path = "common/header.rs"]
mod header;
use header::header;

/// A live world that is deterministic, so the test knows what it answered.
struct FakeWorld {
    now: u64,
    polls: u64,
}

impl EventSource for FakeWorld {
    fn read_clock(&mut self, _at: Landmark, clock: ClockId) -> u64 {
        self.now += 1_000;
        match clock {
            ClockId::Monotonic => self.now,
            ClockId::Wall => 1_700_000_000_000_000_000 + self.now,
        }
    }
    fn poll(&mut self, _at: Landmark, _armed: Deadlines) -> Vec<WorldEvent> {
        self.polls += 1;
        match self.polls % 5 {
            0 => vec![WorldEvent::PitExpired],
            3 if self.polls % 2 == 0 => {
                vec![WorldEvent::NetFrame { device: 0, frame: vec![1, 2, 3] }, WorldEvent::PitExpired]
            }
            _ => Vec::new(),
        }
    }
    fn wait_idle(&mut self, _at: Landmark, _armed: Deadlines) {}
    fn time_until(&self, _deadline_ns: u64) -> Option<std::time::Duration> {
        None
    }
}

/// What the VMM does differently as primary and as replayer.
trait Side: EventSource {
    fn exit(&mut self, sig: &ExitSignature);
    fn interrupt(&mut self, at: Landmark, vector: u8);
    /// Primary: the scripted kick happened; checkpoint the guest.
    fn preempted(&mut self, at: Landmark, acc: u64);
    /// Replayer: load the next preemption's checkpoint instead of running.
    fn load_preemption_instead_of_running(&mut self, count: u64, acc: &mut u64) -> bool;
    /// At the exit boundary `Exit(count)`: the primary saves a snapshot if `snapshot`; the
    /// replayer passes a mark if there is one. Returns whether a mark was written / passed.
    fn boundary(&mut self, count: u64, snapshot: bool) -> bool;
    fn counts(&self) -> ftlog::LogStats;
}

impl<W: std::io::Write> Side for RecordingWorld<FakeWorld, W> {
    fn exit(&mut self, sig: &ExitSignature) {
        self.record_exit(sig).expect("record exit");
    }
    fn interrupt(&mut self, at: Landmark, vector: u8) {
        self.record_interrupt(at, vector).expect("record interrupt");
    }
    fn preempted(&mut self, at: Landmark, acc: u64) {
        self.record_checkpoint(at, &acc.to_le_bytes()).expect("record checkpoint");
    }
    fn load_preemption_instead_of_running(&mut self, _count: u64, _acc: &mut u64) -> bool {
        false
    }
    fn boundary(&mut self, count: u64, snapshot: bool) -> bool {
        if snapshot {
            self.mark_snapshot(count).expect("mark snapshot");
        }
        snapshot
    }
    fn counts(&self) -> ftlog::LogStats {
        self.stats()
    }
}

impl<F: ftlog::RecordFeed> Side for ReplayWorld<F> {
    fn exit(&mut self, sig: &ExitSignature) {
        let _ = self.check_exit(sig);
    }
    fn interrupt(&mut self, at: Landmark, vector: u8) {
        let _ = self.expect_interrupt(at, vector);
    }
    fn preempted(&mut self, _at: Landmark, _acc: u64) {
        unreachable!("a replayer is never kicked")
    }
    fn load_preemption_instead_of_running(&mut self, count: u64, acc: &mut u64) -> bool {
        if self.next_preemption() != Some(count) {
            return false;
        }
        if let Ok(data) = self.take_checkpoint(Landmark::Preempt(count)) {
            if let Ok(bytes) = <[u8; 8]>::try_from(data.as_slice()) {
                *acc = u64::from_le_bytes(bytes);
            }
        }
        true
    }
    fn boundary(&mut self, count: u64, _snapshot: bool) -> bool {
        PASS_MARKS.with(|pass| pass.get()) && self.pass_snapshot_mark(count).unwrap_or(false)
    }
    fn counts(&self) -> ftlog::LogStats {
        self.stats()
    }
}

thread_local! {
    /// Whether the model replayer passes snapshot marks (false: a VMM that ignores them).
    static PASS_MARKS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn mix(acc: u64, v: u64) -> u64 {
    (acc ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17)
}

/// The model machine's whole state at the top of its loop: what a snapshot saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Machine {
    acc: u64,
    count: u64,
    at: Landmark,
    pending: bool,
    kicks_here: u32,
}

const BOOT: Machine = Machine { acc: 1, count: 0, at: Landmark::Exit(0), pending: false, kicks_here: 0 };

/// A snapshot saved (primary) or a mark passed (replay) at an exit boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    machine: Machine,
    /// Trace entries before it.
    trace_len: usize,
    /// The side's stats when it was taken.
    stats: ftlog::LogStats,
}

/// A model of the vCPU loop (the shape of vmm's `run_from`): world events and interrupts at the
/// top of the loop, preemptions before entry, clock reads during exit handling. Returns the
/// guest's final state and a trace of every answer the world gave.
fn drive(side: &mut impl Side, exits: u64, primary: bool) -> (u64, Vec<String>) {
    let (acc, trace, _) = drive_from(side, BOOT, exits, primary, &[]);
    (acc, trace)
}

/// [`drive`] from `machine` (boot or a restored snapshot); the primary saves a snapshot at
/// each exit boundary in `snapshots`, the replayer passes marks at every exit boundary.
fn drive_from(
    side: &mut impl Side,
    machine: Machine,
    exits: u64,
    primary: bool,
    snapshots: &[u64],
) -> (u64, Vec<String>, Vec<Snapshot>) {
    let Machine { mut acc, mut count, mut at, mut pending, mut kicks_here } = machine;
    let mut trace = Vec::new();
    let mut taken = Vec::new();
    // A model run of `exits` exits takes a few landmarks per exit; a replay that stops making
    // progress (a checkpoint that is never consumed, say) fails here instead of hanging.
    let mut landmarks = 0u64;
    loop {
        landmarks += 1;
        assert!(landmarks < 100 * (exits + 1), "the run makes no progress at {at} after {landmarks} landmarks");
        if side.stop_reason().is_some() {
            break;
        }
        if at == Landmark::Exit(count) {
            let machine = Machine { acc, count, at, pending, kicks_here };
            let stats = side.counts();
            if side.boundary(count, primary && snapshots.contains(&count)) {
                taken.push(Snapshot { machine, trace_len: trace.len(), stats });
            }
        }
        for event in side.poll(at, Deadlines::default()) {
            trace.push(format!("{at}: {event:?}"));
            acc = mix(acc, 7);
            pending |= event == WorldEvent::PitExpired;
        }
        if pending && acc % 3 != 0 {
            side.interrupt(at, 0x20);
            trace.push(format!("{at}: irq"));
            acc = mix(acc, 0x20);
            pending = false;
        }
        if count == exits {
            break;
        }
        if side.load_preemption_instead_of_running(count, &mut acc) {
            at = Landmark::Preempt(count);
            continue;
        }
        // The primary is kicked twice after exit 5 and once after exit 11.
        if primary && ((count == 5 && kicks_here < 2) || (count == 11 && kicks_here < 1)) {
            kicks_here += 1;
            acc = mix(acc, 999);
            at = Landmark::Preempt(count);
            side.preempted(at, acc);
            continue;
        }
        kicks_here = 0;
        count += 1;
        at = Landmark::Exit(count);
        let kind = if count % 2 == 0 { ExitKind::PioIn } else { ExitKind::PioOut };
        side.exit(&ExitSignature { kind, rip: acc & 0xffff, addr: 0x40, len: 1, value: acc });
        if count % 3 == 0 {
            let clock = if count % 9 == 0 { ClockId::Wall } else { ClockId::Monotonic };
            let v = side.read_clock(at, clock);
            trace.push(format!("{at}: {clock:?}={v}"));
            acc = mix(acc, v);
        }
        // A disk read during exit handling: the primary's backend answers (1 to 5 bytes that
        // depend on the run so far), the replay answers from the log without touching it.
        if count % 4 == 2 {
            let mut backend = || {
                assert!(primary, "a replay reads the backend at {at}");
                acc.to_le_bytes()[..(count % 5 + 1) as usize].to_vec()
            };
            let data = side.device_input(at, InputKind::DiskRead { device: 0 }, &mut backend);
            trace.push(format!("{at}: disk read {data:?}"));
            acc = mix(acc, data.iter().fold(data.len() as u64, |h, &b| h.wrapping_mul(257) + u64::from(b)));
        }
    }
    (acc, trace, taken)
}

const EXITS: u64 = 40;

struct Recording {
    log: Vec<u8>,
    acc: u64,
    trace: Vec<String>,
    stats: ftlog::LogStats,
}

fn record(k: u32) -> Recording {
    let mut world = RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(k)).unwrap();
    let (acc, trace) = drive(&mut world, EXITS, true);
    let recorded = world.finish(0, Some([acc as u8; 32])).unwrap();
    assert_eq!(recorded.end.exits, EXITS);
    Recording { log: recorded.writer, acc, trace, stats: recorded.stats }
}

fn replay(log: &[u8]) -> (ReplayWorld<ftlog::LogReader<&[u8]>>, u64, Vec<String>) {
    let mut world = ReplayWorld::new(log).unwrap();
    let (acc, trace) = drive(&mut world, EXITS, false);
    (world, acc, trace)
}

fn divergence(world: &ReplayWorld<ftlog::LogReader<&[u8]>>) -> Divergence {
    match world.error() {
        Some(ReplayError::Diverged(d)) => d.clone(),
        other => panic!("expected a divergence, got {other:?}"),
    }
}

/// Decodes a log, edits its records and encodes it again.
fn rewrite(log: &[u8], edit: impl FnOnce(&mut Vec<Record>)) -> Vec<u8> {
    let reader = LogReader::new(log).unwrap();
    let header = reader.header().clone();
    let mut records: Vec<Record> = reader.map(|r| r.unwrap().1).collect();
    edit(&mut records);
    let mut writer = LogWriter::new(Vec::new(), &header).unwrap();
    for r in &records {
        writer.write(r).unwrap();
    }
    writer.into_inner().unwrap()
}

#[test]
fn replay_gives_identical_answers_and_counts() {
    for k in [1, 4, 64] {
        let rec = record(k);
        assert!(rec.stats.checkpoints == 3 && rec.stats.interrupts > 0 && rec.stats.world_events > 0);
        assert_eq!(rec.stats.inputs, EXITS / 4, "a disk read at every fourth exit");
        let (mut world, acc, trace) = replay(&rec.log);
        assert!(world.error().is_none(), "{:?}", world.error());
        assert_eq!(trace, rec.trace);
        assert_eq!(acc, rec.acc);
        let end = world.finish(Some(0), Some([acc as u8; 32])).expect("replay ends like the recording");
        assert_eq!(end.exits, EXITS);
        assert_eq!(world.stats(), rec.stats);
        assert_eq!(world.stats().events(), rec.stats.events());
    }
}

#[test]
fn a_moved_interrupt_diverges_at_its_landmark() {
    let rec = record(64);
    let mut moved_from = None;
    let log = rewrite(&rec.log, |records| {
        for r in records.iter_mut() {
            if let Record::Interrupt { at: Landmark::Exit(n), .. } = r {
                moved_from = Some(Landmark::Exit(*n));
                *r = Record::Interrupt { at: Landmark::Exit(*n + 1), vector: 0x20 };
                break;
            }
        }
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(Some(d.at), moved_from);
    assert!(d.got.contains("interrupt 0x20"), "{d}");
    assert!(d.to_string().starts_with(&format!("diverged at {}: expected interrupt 0x20 at Exit(", d.at)));
}

#[test]
fn an_interrupt_the_replay_does_not_take_is_reported_at_its_landmark() {
    let rec = record(64);
    let mut extra_at = None;
    let log = rewrite(&rec.log, |records| {
        // An interrupt the model never injects (at the first clock read's landmark).
        let i = records.iter().position(|r| matches!(r, Record::ClockRead { .. })).unwrap();
        let at = records[i].landmark().unwrap();
        extra_at = Some(at);
        records.insert(i + 1, Record::Interrupt { at, vector: 0x99 });
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(Some(d.at), extra_at);
    assert!(d.expected.contains("0x99"), "{d}");
}

fn first_clock_read(records: &[Record]) -> (usize, u64) {
    let i = records.iter().position(|r| matches!(r, Record::ClockRead { .. })).unwrap();
    (i, records[i].landmark().unwrap().exit_count())
}

#[test]
fn a_changed_clock_value_diverges_at_the_next_digest() {
    for k in [1u64, 4] {
        let rec = record(k as u32);
        let mut read_at = 0;
        let log = rewrite(&rec.log, |records| {
            let (i, n) = first_clock_read(records);
            read_at = n;
            if let Record::ClockRead { value, .. } = &mut records[i] {
                *value += 1;
            }
        });
        let (world, _, _) = replay(&log);
        let d = divergence(&world);
        // The value is taken after exit n's signature; exit n + 1 is the first to differ.
        let first_bad = read_at + 1;
        assert_eq!(d.at, Landmark::Exit(first_bad.div_ceil(k) * k), "K={k}: {d}");
        assert!(d.expected.starts_with("exit digest"), "{d}");
        assert!(d.got.contains(&format!("Exit({})..=", (first_bad.div_ceil(k) - 1) * k + 1)), "{d}");
    }
}

#[test]
fn a_read_of_another_clock_diverges_at_that_landmark() {
    let rec = record(64);
    let mut read_at = 0;
    let log = rewrite(&rec.log, |records| {
        let (i, n) = first_clock_read(records);
        read_at = n;
        if let Record::ClockRead { clock, .. } = &mut records[i] {
            *clock = ClockId::Wall;
        }
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(read_at));
    assert_eq!(d.got, format!("Monotonic clock read at Exit({read_at})"));
    assert!(world.stop_reason().is_some_and(|r| r.to_string().starts_with("diverged at")));
}

#[test]
fn a_different_end_state_is_a_divergence() {
    let rec = record(4);
    let (mut world, acc, _) = replay(&rec.log);
    let err = world.finish(Some(0), Some([acc as u8 ^ 1; 32])).unwrap_err();
    assert!(err.to_string().contains("state digest"), "{err}");
}

#[test]
fn a_truncated_log_stops_the_replay_with_its_position() {
    let rec = record(4);
    let cut = rec.log.len() / 2;
    let (world, _, _) = replay(&rec.log[..cut]);
    match world.error() {
        Some(ReplayError::Log(LogError::Truncated { offset })) => assert!(*offset <= cut as u64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_idle_guest_with_nothing_to_wake_it_diverges() {
    let mut writer = LogWriter::new(Vec::new(), &header(64)).unwrap();
    writer.write(&Record::Interrupt { at: Landmark::Exit(9), vector: 0x20 }).unwrap();
    writer.write(&Record::End(End { exits: 9, exit_digest: [0; 32], exit_code: 0, state_digest: None })).unwrap();
    let log = writer.into_inner().unwrap();
    let mut world = ReplayWorld::new(&log[..]).unwrap();
    let at = Landmark::Exit(0);
    assert!(world.poll(at, Deadlines::default()).is_empty());
    world.wait_idle(at, Deadlines::default());
    assert!(world.error().is_none());
    assert!(world.poll(at, Deadlines::default()).is_empty());
    world.wait_idle(at, Deadlines::default());
    assert_eq!(divergence(&world).at, at);
}

#[test]
fn the_end_of_a_stopped_recording_is_a_stop_reason() {
    let mut rec = RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(64)).unwrap();
    let sig = ExitSignature { kind: ExitKind::Hlt, rip: 0x10, addr: 0, len: 0, value: 0 };
    rec.record_exit(&sig).unwrap();
    let log = rec.finish(130, None).unwrap().writer;
    let mut world = ReplayWorld::new(&log[..]).unwrap();
    assert!(world.stop_reason().is_none());
    world.check_exit(&sig).unwrap();
    assert!(matches!(world.stop_reason(), Some(devices::WorldStop::RecordingEnds { .. })));
    assert_eq!(world.finish(None, None).unwrap().exit_code, 130);
}

/// A writer that fails after `budget` bytes.
struct Failing {
    budget: usize,
}

impl std::io::Write for Failing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.budget {
            return Err(std::io::Error::other("disk full"));
        }
        self.budget -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.write(&[]).map(|_| ())
    }
}

#[test]
fn a_failed_log_write_stops_the_recording() {
    let mut world =
        RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Failing { budget: 100_000 }, &header(1)).unwrap();
    // The buffered writer holds 64 KiB, so the failure shows once enough has been written.
    let mut failed = false;
    for n in 1..100_000u64 {
        let v = world.read_clock(Landmark::Exit(n), ClockId::Monotonic);
        assert_eq!(v, n * 1_000, "answers keep coming from the live world");
        if world.stop_reason().is_some() {
            failed = true;
            break;
        }
    }
    assert!(failed);
    assert!(world.stop_reason().is_some_and(|r| r.to_string().contains("disk full")));
    let sig = ExitSignature { kind: ExitKind::Hlt, rip: 0, addr: 0, len: 0, value: 0 };
    assert!(matches!(world.record_exit(&sig), Err(LogError::Io { .. })));
}

struct MarkedRecording {
    rec: Recording,
    end: End,
    snapshots: Vec<Snapshot>,
}

/// A recording that saves snapshots at the exit boundaries in `marks`.
fn record_with_marks(k: u32, marks: &[u64]) -> MarkedRecording {
    let mut world = RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(k)).unwrap();
    let (acc, trace, snapshots) = drive_from(&mut world, BOOT, EXITS, true, marks);
    assert_eq!(snapshots.iter().map(|s| s.machine.count).collect::<Vec<_>>(), marks);
    let recorded = world.finish(0, Some([acc as u8; 32])).unwrap();
    MarkedRecording {
        rec: Recording { log: recorded.writer, acc, trace, stats: recorded.stats },
        end: recorded.end,
        snapshots,
    }
}

fn records(log: &[u8]) -> Vec<Record> {
    LogReader::new(log).unwrap().map(|r| r.unwrap().1).collect()
}

/// Restores `snapshot` and replays the rest of the log from its mark.
fn replay_from<'a>(log: &'a [u8], snapshot: &Snapshot) -> (ReplayWorld<ftlog::LogReader<&'a [u8]>>, u64, Vec<String>) {
    let mut world = ReplayWorld::new(log).unwrap();
    world.skip_to_snapshot(snapshot.machine.count).expect("the mark is in the log");
    let (acc, trace, _) = drive_from(&mut world, snapshot.machine, EXITS, false, &[]);
    (world, acc, trace)
}

#[test]
fn a_snapshot_replays_from_boot_and_from_its_mark_to_the_recorded_end() {
    let mark_sets: &[&[u64]] = &[&[0], &[5], &[13], &[20], &[EXITS], &[5, 20], &[0, 11, 12, 40]];
    for k in [1, 4, 7, 64] {
        for &marks in mark_sets {
            let m = record_with_marks(k, marks);
            let what = format!("K={k}, marks {marks:?}");
            let in_log: Vec<u64> = records(&m.rec.log)
                .iter()
                .filter_map(|r| match r {
                    Record::SnapshotMark { exits } => Some(*exits),
                    _ => None,
                })
                .collect();
            assert_eq!(in_log, marks, "{what}");
            // The mark follows exit n's records (its digest at a K boundary) and precedes the
            // events at Exit(n).
            for r in records(&m.rec.log).windows(2) {
                if let [Record::SnapshotMark { exits }, next] = r {
                    assert!(!matches!(next, Record::ExitDigest { exits: e, .. } if e == exits), "{what}");
                }
            }

            // From boot, passing every mark: the same answers, counts and end.
            let mut world = ReplayWorld::new(&m.rec.log[..]).unwrap();
            let (acc, trace, passed) = drive_from(&mut world, BOOT, EXITS, false, &[]);
            assert!(world.error().is_none(), "{what}: {:?}", world.error());
            assert_eq!((acc, &trace), (m.rec.acc, &m.rec.trace), "{what}");
            assert_eq!(passed, m.snapshots, "{what}: marks passed where they were written");
            assert_eq!(world.stats(), m.rec.stats, "{what}");
            let end = world.finish(Some(0), Some([acc as u8; 32])).expect(&what);
            assert_eq!(end, m.end, "{what}");

            // From each mark: the rest of the answers, the counts since the mark, the same end.
            for snapshot in &m.snapshots {
                let what = format!("{what}, from Exit({})", snapshot.machine.count);
                let (mut world, acc, trace) = replay_from(&m.rec.log, snapshot);
                assert!(world.error().is_none(), "{what}: {:?}", world.error());
                assert_eq!(acc, m.rec.acc, "{what}");
                assert_eq!(trace, m.rec.trace[snapshot.trace_len..], "{what}");
                assert_eq!(world.stats(), m.rec.stats.since(&snapshot.stats), "{what}");
                let end = world.finish(Some(0), Some([acc as u8; 32])).expect(&what);
                assert_eq!(end, m.end, "{what}");
            }
        }
    }
}

#[test]
fn the_end_digest_covers_the_exits_since_the_last_mark() {
    let with = record_with_marks(64, &[20]);
    let without = record(64);
    assert_eq!(with.end.exits, without_end(&without.log).exits);
    assert_ne!(with.end.exit_digest, without_end(&without.log).exit_digest);
    // A replay from the mark checks the End's digest: damage it and the end diverges.
    let log = rewrite(&with.rec.log, |records| {
        if let Some(Record::End(end)) = records.last_mut() {
            end.exit_digest[0] ^= 1;
        }
    });
    let (mut world, acc, _) = replay_from(&log, &with.snapshots[0]);
    assert!(world.error().is_none());
    let err = world.finish(Some(0), Some([acc as u8; 32])).unwrap_err();
    let d = err.divergence().expect("a divergence");
    assert_eq!(d.at, Landmark::Exit(EXITS));
    assert!(d.expected.contains("over Exit(21)..=Exit(40)"), "{d}");
}

fn without_end(log: &[u8]) -> End {
    match records(log).pop() {
        Some(Record::End(end)) => end,
        other => panic!("{other:?}"),
    }
}

#[test]
fn exit_digests_after_the_mark_are_checked_by_a_replay_from_it() {
    // K = 4, mark at 13: the first digest after the mark (Exit(16)) covers 14..=16 only.
    let m = record_with_marks(4, &[13]);
    let log = rewrite(&m.rec.log, |records| {
        let mark = records.iter().position(|r| matches!(r, Record::SnapshotMark { .. })).unwrap();
        // Change the first clock value after the mark (read at Exit(15), taken after exit 15).
        let i = mark + records[mark..].iter().position(|r| matches!(r, Record::ClockRead { .. })).unwrap();
        assert_eq!(records[i].landmark(), Some(Landmark::Exit(15)));
        if let Record::ClockRead { value, .. } = &mut records[i] {
            *value += 1;
        }
    });
    let (world, _, _) = replay_from(&log, &m.snapshots[0]);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(16), "{d}");
    assert!(d.expected.contains("over Exit(14)..=Exit(16)"), "{d}");
    assert!(d.got.contains("in Exit(14)..=Exit(16) differs"), "{d}");

    // A damaged value before the mark is not looked at by a replay from the mark, but
    // monotonic_now continues from the last monotonic value before it.
    let log = rewrite(&m.rec.log, |records| {
        let (i, n) = first_clock_read(records);
        assert!(n < 13);
        if let Record::ClockRead { value, .. } = &mut records[i] {
            *value += 1;
        }
    });
    let last_monotonic = records(&log)
        .iter()
        .take_while(|r| !matches!(r, Record::SnapshotMark { .. }))
        .filter_map(|r| match r {
            Record::ClockRead { clock: ClockId::Monotonic, value, .. } => Some(*value),
            _ => None,
        })
        .last()
        .unwrap();
    let mut world = ReplayWorld::new(&log[..]).unwrap();
    world.skip_to_snapshot(13).unwrap();
    assert_eq!(world.monotonic_now(), last_monotonic);
    assert_eq!(world.stats().exits, 13);
    assert_eq!(world.stats().events(), 0);
    let (mut world, acc, _) = replay_from(&log, &m.snapshots[0]);
    assert!(world.error().is_none(), "{:?}", world.error());
    world.finish(Some(0), Some([acc as u8; 32])).unwrap();
}

#[test]
fn a_mark_at_the_wrong_exit_count_diverges() {
    let m = record_with_marks(1, &[20]);
    let moved = |to: u64| {
        rewrite(&m.rec.log, |records| {
            for r in records.iter_mut() {
                if let Record::SnapshotMark { exits } = r {
                    *exits = to;
                }
            }
        })
    };
    // Earlier than where it is: a mark the replay did not pass where the log says.
    let log = moved(17);
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(17), "{d}");
    assert!(d.expected.contains("snapshot mark at Exit(17)"), "{d}");
    // Seen by pass_snapshot_mark at the boundary where the mark is, not later when the replay
    // moves on past it.
    assert_eq!(d.got, "nothing at Exit(17) (replay at the exit boundary Exit(20))");
    // Later: the replay reaches Exit(21) with the mark still ahead of exit 21's digest.
    let log = moved(23);
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(21), "{d}");
    assert_eq!(d.expected, "snapshot mark at Exit(23)");
    // A replay from boot that never passes marks diverges at the mark when it moves on.
    PASS_MARKS.with(|pass| pass.set(false));
    let (world, _, _) = replay(&m.rec.log);
    PASS_MARKS.with(|pass| pass.set(true));
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(20), "{d}");
    assert_eq!(d.expected, "snapshot mark at Exit(20)");
    // After skip_to_snapshot the mark is behind: passing it again finds nothing.
    let mut world = ReplayWorld::new(&m.rec.log[..]).unwrap();
    world.skip_to_snapshot(20).unwrap();
    assert!(!world.pass_snapshot_mark(20).unwrap());
    // pass_snapshot_mark for a count other than the replayed one, with that count's mark next.
    let log = rewrite(&m.rec.log, |records| {
        let i = records.iter().position(|r| matches!(r, Record::SnapshotMark { .. })).unwrap();
        records.insert(0, records[i].clone());
    });
    let mut world = ReplayWorld::new(&log[..]).unwrap();
    let err = world.pass_snapshot_mark(20).unwrap_err();
    assert!(err.to_string().contains("after 0 replayed exits"), "{err}");
}

#[test]
fn skipping_to_a_mark_the_log_does_not_have_is_an_error() {
    let plain = record(4);
    let mut world = ReplayWorld::new(&plain.log[..]).unwrap();
    let err = world.skip_to_snapshot(20).unwrap_err();
    assert!(matches!(err, ReplayError::NoSnapshotMark { exits: 20, .. }));
    assert!(err.to_string().starts_with("no snapshot mark at exit 20"), "{err}");
    assert!(err.divergence().is_none());
    // Latched: the replay cannot go on.
    assert!(world.error().is_some());
    assert!(world.stop_reason().is_some_and(|r| r.to_string().contains("no snapshot mark")));
    assert!(world.check_exit(&ExitSignature { kind: ExitKind::Hlt, rip: 0, addr: 0, len: 0, value: 0 }).is_err());

    // A log with marks at other counts: found out at the first record past the boundary.
    let m = record_with_marks(4, &[5, 20]);
    let mut world = ReplayWorld::new(&m.rec.log[..]).unwrap();
    match world.skip_to_snapshot(13).unwrap_err() {
        ReplayError::NoSnapshotMark { exits: 13, found } => {
            assert!(found.contains("Exit(14)") || found.contains("Preempt(13)"), "{found}")
        }
        other => panic!("{other:?}"),
    }
    // Past the last exit: found the End.
    let mut world = ReplayWorld::new(&m.rec.log[..]).unwrap();
    let err = world.skip_to_snapshot(EXITS + 1).unwrap_err();
    assert!(err.to_string().contains("found end after 40 exits"), "{err}");
    // A log cut before the mark: the log error, not a missing mark.
    let mark_at = {
        let reader = LogReader::new(&m.rec.log[..]).unwrap();
        reader.map(|r| r.unwrap()).find(|(_, r)| *r == Record::SnapshotMark { exits: 20 }).unwrap().0
    };
    let cut = &m.rec.log[..mark_at as usize + 3];
    let mut world = ReplayWorld::new(cut).unwrap();
    assert!(matches!(
        world.skip_to_snapshot(20),
        Err(ReplayError::Log(LogError::Truncated { offset })) if offset == mark_at
    ));
    // An open-ended log that stops before the mark (a live stream): missing mark.
    let reader = LogReader::new(&m.rec.log[..mark_at as usize]).unwrap().open_ended();
    let mut world = ReplayWorld::from_feed(reader);
    let err = world.skip_to_snapshot(20).unwrap_err();
    assert!(err.to_string().contains("found the end of the log"), "{err}");
}

#[test]
fn the_recorder_refuses_a_mark_away_from_its_exit_count() {
    let mut world = RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(2)).unwrap();
    let sig = |value| ExitSignature { kind: ExitKind::PioOut, rip: 0x10, addr: 0x3f8, len: 1, value };
    for v in 1..=3 {
        world.record_exit(&sig(v)).unwrap();
    }
    let bytes = world.log_bytes();
    for wrong in [0, 2, 4] {
        match world.mark_snapshot(wrong) {
            Err(LogError::MisplacedSnapshotMark { requested, at, offset }) => {
                assert_eq!((requested, at, offset), (wrong, Landmark::Exit(3), bytes));
            }
            other => panic!("{other:?}"),
        }
    }
    // Past the boundary: a preemption after exit 3 was already logged.
    world.record_checkpoint(Landmark::Preempt(3), &[1, 2, 3]).unwrap();
    let bytes = world.log_bytes();
    let err = world.mark_snapshot(3).unwrap_err();
    assert!(matches!(err, LogError::MisplacedSnapshotMark { at: Landmark::Preempt(3), .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("snapshot mark for exit 3 requested at byte {bytes}, but the recording is at Preempt(3)")
    );
    // Nothing was written and nothing is latched: the recording goes on and replays.
    assert_eq!(world.log_bytes(), bytes);
    assert!(world.error().is_none() && world.stop_reason().is_none());
    world.record_exit(&sig(4)).unwrap();
    world.mark_snapshot(4).unwrap();
    world.mark_snapshot(4).unwrap(); // a second snapshot at the same boundary
    world.record_exit(&sig(5)).unwrap();
    let recorded = world.finish(0, None).unwrap();
    let mut after_mark = ftlog::RunningDigest::starting_at(4);
    after_mark.fold(&sig(5));
    assert_eq!(recorded.end.exit_digest, after_mark.digest());
    let mut replay = ReplayWorld::new(&recorded.writer[..]).unwrap();
    for v in 1..=3 {
        replay.check_exit(&sig(v)).unwrap();
    }
    assert!(!replay.pass_snapshot_mark(3).unwrap());
    assert_eq!(replay.next_preemption(), Some(3));
    replay.take_checkpoint(Landmark::Preempt(3)).unwrap();
    replay.check_exit(&sig(4)).unwrap();
    assert!(replay.pass_snapshot_mark(4).unwrap());
    assert!(!replay.pass_snapshot_mark(4).unwrap(), "both marks passed at once");
    replay.check_exit(&sig(5)).unwrap();
    assert_eq!(replay.finish(Some(0), None).unwrap(), recorded.end);
}

#[test]
fn a_missing_exit_digest_diverges_at_its_boundary() {
    let rec = record(4);
    let log = rewrite(&rec.log, |records| {
        let first = records.iter().position(|r| matches!(r, Record::ExitDigest { .. })).expect("an exit digest");
        records.remove(first);
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(4));
    assert_eq!(d.got, "exit digest at Exit(4)");
}

#[test]
fn a_digest_mismatch_names_the_last_four_replayed_exits() {
    let rec = record(4);
    let log = rewrite(&rec.log, |records| {
        let second = records
            .iter_mut()
            .filter_map(|r| match r {
                Record::ExitDigest { digest, .. } => Some(digest),
                _ => None,
            })
            .nth(1)
            .expect("two exit digests");
        second[0] ^= 1;
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(d.at, Landmark::Exit(8));
    let recent = d.got.split("last replayed: [").nth(1).expect("the last exits are named");
    assert_eq!(recent.matches("; ").count(), 3, "not the last 4 exits: {}", d.got);
}

/// The records of `log` before its End, each with the stream position at its end, and the
/// position before the first.
fn records_before_end(log: &[u8]) -> (LogHeader, u64, Vec<(Record, u64)>) {
    let mut reader = LogReader::new(log).unwrap();
    let header = reader.header().clone();
    let start = reader.offset();
    let mut records = Vec::new();
    while let Some(item) = reader.next() {
        let (_, record) = item.unwrap();
        if matches!(record, Record::End(_)) {
            break;
        }
        records.push((record, reader.offset()));
    }
    (header, start, records)
}

/// A backup's feed: the recording's records up to its End, then the stream ends as `ended`.
fn fed_to_its_end(ended: FeedItem) -> (ReplayWorld<ChannelFeed>, Vec<(Record, u64)>) {
    let rec = record(64);
    let (header, start, records) = records_before_end(&rec.log);
    let (feed, sender) = ChannelFeed::new(header, start, records.len() + 1);
    for (record, position) in &records {
        sender.send(FeedItem::Record { record: record.clone(), position: *position }).unwrap();
    }
    sender.send(ended).unwrap();
    let mut world = ReplayWorld::from_feed(feed);
    let (_, trace) = drive(&mut world, EXITS, false);
    assert_eq!(trace, rec.trace, "the replay of every record but End answers as the recording did");
    (world, records)
}

#[test]
fn a_feed_that_closes_ends_the_input_after_its_last_record() {
    let (world, records) = fed_to_its_end(FeedItem::Closed);
    assert!(world.error().is_none(), "{:?}", world.error());
    assert_eq!(world.input_ended(), Some((false, "the log ended")));
    let stop = world.stop_reason();
    assert!(
        matches!(&stop, Some(devices::WorldStop::InputEnded { lost: false, reason }) if reason == "the log ended"),
        "{stop:?}"
    );
    let last = records.last().map(|(_, position)| *position);
    assert_eq!(Some(world.consumed_position()), last, "go-live stamps outputs from the last record consumed");
}

#[test]
fn a_lost_primary_ends_the_input_with_its_reason() {
    let (world, _) = fed_to_its_end(FeedItem::Lost("no word for 100 ms".into()));
    assert_eq!(world.input_ended(), Some((true, "no word for 100 ms")));
}

#[test]
fn the_input_has_not_ended_while_a_record_is_unconsumed() {
    let rec = record(64);
    let (header, start, records) = records_before_end(&rec.log);
    let (feed, sender) = ChannelFeed::new(header, start, records.len() + 1);
    let (record, position) = &records[0];
    sender.send(FeedItem::Record { record: record.clone(), position: *position }).unwrap();
    sender.send(FeedItem::Closed).unwrap();
    let world = ReplayWorld::from_feed(feed);
    assert_eq!(world.input_ended(), None, "the one record is still to be replayed");
    assert_eq!(world.consumed_position(), start, "nothing consumed yet");
}
