//! RecordingWorld → ReplayWorld: a model VMM loop driven on both sides gives identical answers,
//! and tampered logs are reported as divergence at the right landmark.

// `%` reads more plainly than is_multiple_of in a model loop, and keeps the MSRV (1.80).
#![allow(clippy::manual_is_multiple_of)]

use devices::{ClockId, Deadlines, EventSource, Landmark, WorldEvent};
use ftlog::{
    Divergence, End, ExitKind, ExitSignature, LogError, LogHeader, LogReader, LogWriter, Record,
    RecordingWorld, ReplayError, ReplayWorld,
};

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
            3 if self.polls % 2 == 0 => vec![
                WorldEvent::NetFrame {
                    device: 0,
                    frame: vec![1, 2, 3],
                },
                WorldEvent::PitExpired,
            ],
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
    fn replace_run(&mut self, count: u64, acc: &mut u64) -> bool;
}

impl<W: std::io::Write> Side for RecordingWorld<FakeWorld, W> {
    fn exit(&mut self, sig: &ExitSignature) {
        self.record_exit(sig).expect("record exit");
    }
    fn interrupt(&mut self, at: Landmark, vector: u8) {
        self.record_interrupt(at, vector).expect("record interrupt");
    }
    fn preempted(&mut self, at: Landmark, acc: u64) {
        self.record_checkpoint(at, &acc.to_le_bytes())
            .expect("record checkpoint");
    }
    fn replace_run(&mut self, _count: u64, _acc: &mut u64) -> bool {
        false
    }
}

impl<R: std::io::Read> Side for ReplayWorld<R> {
    fn exit(&mut self, sig: &ExitSignature) {
        let _ = self.check_exit(sig);
    }
    fn interrupt(&mut self, at: Landmark, vector: u8) {
        let _ = self.expect_interrupt(at, vector);
    }
    fn preempted(&mut self, _at: Landmark, _acc: u64) {
        unreachable!("a replayer is never kicked")
    }
    fn replace_run(&mut self, count: u64, acc: &mut u64) -> bool {
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
}

fn mix(acc: u64, v: u64) -> u64 {
    (acc ^ v)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(17)
}

/// A model of the vCPU loop (the shape of vmm's `run_from`): world events and interrupts at the
/// top of the loop, preemptions before entry, clock reads during exit handling. Returns the
/// guest's final state and a trace of every answer the world gave.
fn drive(side: &mut impl Side, exits: u64, primary: bool) -> (u64, Vec<String>) {
    let mut acc = 1u64;
    let mut trace = Vec::new();
    let mut count = 0;
    let mut at = Landmark::Exit(0);
    let mut pending = false;
    let mut kicks_here = 0;
    loop {
        if side.stop_reason().is_some() {
            break;
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
        if side.replace_run(count, &mut acc) {
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
        let kind = if count % 2 == 0 {
            ExitKind::PioIn
        } else {
            ExitKind::PioOut
        };
        side.exit(&ExitSignature {
            kind,
            rip: acc & 0xffff,
            addr: 0x40,
            len: 1,
            value: acc,
        });
        if count % 3 == 0 {
            let clock = if count % 9 == 0 {
                ClockId::Wall
            } else {
                ClockId::Monotonic
            };
            let v = side.read_clock(at, clock);
            trace.push(format!("{at}: {clock:?}={v}"));
            acc = mix(acc, v);
        }
    }
    (acc, trace)
}

fn header(k: u32) -> LogHeader {
    LogHeader {
        image_digest: [1; 32],
        memory_size: 16 << 20,
        cmdline: "test".into(),
        kernel_path: None,
        preemption_bound_ns: 2_000_000,
        exit_digest_interval: k,
        created_unix_ns: 0,
        start_exits: 0,
    }
}

const EXITS: u64 = 40;

struct Recording {
    log: Vec<u8>,
    acc: u64,
    trace: Vec<String>,
    stats: ftlog::LogStats,
}

fn record(k: u32) -> Recording {
    let mut world =
        RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(k)).unwrap();
    let (acc, trace) = drive(&mut world, EXITS, true);
    let recorded = world.finish(0, Some([acc as u8; 32])).unwrap();
    assert_eq!(recorded.end.exits, EXITS);
    Recording {
        log: recorded.writer,
        acc,
        trace,
        stats: recorded.stats,
    }
}

fn replay(log: &[u8]) -> (ReplayWorld<&[u8]>, u64, Vec<String>) {
    let mut world = ReplayWorld::new(log).unwrap();
    let (acc, trace) = drive(&mut world, EXITS, false);
    (world, acc, trace)
}

fn divergence(world: &ReplayWorld<&[u8]>) -> Divergence {
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
        assert!(
            rec.stats.checkpoints == 3 && rec.stats.interrupts > 0 && rec.stats.world_events > 0
        );
        let (mut world, acc, trace) = replay(&rec.log);
        assert!(world.error().is_none(), "{:?}", world.error());
        assert_eq!(trace, rec.trace);
        assert_eq!(acc, rec.acc);
        let end = world
            .finish(Some(0), Some([acc as u8; 32]))
            .expect("replay ends like the recording");
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
            if let Record::Interrupt {
                at: Landmark::Exit(n),
                ..
            } = r
            {
                moved_from = Some(Landmark::Exit(*n));
                *r = Record::Interrupt {
                    at: Landmark::Exit(*n + 1),
                    vector: 0x20,
                };
                break;
            }
        }
    });
    let (world, _, _) = replay(&log);
    let d = divergence(&world);
    assert_eq!(Some(d.at), moved_from);
    assert!(d.got.contains("interrupt 0x20"), "{d}");
    assert!(d.to_string().starts_with(&format!(
        "diverged at {}: expected interrupt 0x20 at Exit(",
        d.at
    )));
}

#[test]
fn an_interrupt_the_replay_does_not_take_is_reported_at_its_landmark() {
    let rec = record(64);
    let mut extra_at = None;
    let log = rewrite(&rec.log, |records| {
        // An interrupt the model never injects (at the first clock read's landmark).
        let i = records
            .iter()
            .position(|r| matches!(r, Record::ClockRead { .. }))
            .unwrap();
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
    let i = records
        .iter()
        .position(|r| matches!(r, Record::ClockRead { .. }))
        .unwrap();
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
        assert_eq!(
            d.at,
            Landmark::Exit(first_bad.div_ceil(k) * k),
            "K={k}: {d}"
        );
        assert!(d.expected.starts_with("exit digest"), "{d}");
        assert!(
            d.got
                .contains(&format!("Exit({})..=", (first_bad.div_ceil(k) - 1) * k + 1)),
            "{d}"
        );
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
    assert!(world
        .stop_reason()
        .is_some_and(|r| r.starts_with("diverged at")));
}

#[test]
fn a_different_end_state_is_a_divergence() {
    let rec = record(4);
    let (mut world, acc, _) = replay(&rec.log);
    let err = world
        .finish(Some(0), Some([acc as u8 ^ 1; 32]))
        .unwrap_err();
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
    writer
        .write(&Record::Interrupt {
            at: Landmark::Exit(9),
            vector: 0x20,
        })
        .unwrap();
    writer
        .write(&Record::End(End {
            exits: 9,
            exit_digest: [0; 32],
            exit_code: 0,
            state_digest: None,
        }))
        .unwrap();
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
    let mut rec =
        RecordingWorld::new(FakeWorld { now: 0, polls: 0 }, Vec::new(), &header(64)).unwrap();
    let sig = ExitSignature {
        kind: ExitKind::Hlt,
        rip: 0x10,
        addr: 0,
        len: 0,
        value: 0,
    };
    rec.record_exit(&sig).unwrap();
    let log = rec.finish(130, None).unwrap().writer;
    let mut world = ReplayWorld::new(&log[..]).unwrap();
    assert_eq!(world.stop_reason(), None);
    world.check_exit(&sig).unwrap();
    assert!(world
        .stop_reason()
        .is_some_and(|r| r.contains("recording ends here")));
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
    let mut world = RecordingWorld::new(
        FakeWorld { now: 0, polls: 0 },
        Failing { budget: 100_000 },
        &header(1),
    )
    .unwrap();
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
    assert!(world.stop_reason().is_some_and(|r| r.contains("disk full")));
    let sig = ExitSignature {
        kind: ExitKind::Hlt,
        rip: 0,
        addr: 0,
        len: 0,
        value: 0,
    };
    assert!(matches!(world.record_exit(&sig), Err(LogError::Io { .. })));
}
