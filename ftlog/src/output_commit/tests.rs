//! The output-commit stage against real disk files; the inner sink is a real `DirectOutput`
//! wrapped to record what it was handed, in order.

use super::*;
use crate::format::LogHeader;
use crate::machine::MachineDescription;
use crate::recorder::RecordingWorld;
use devices::virtio::{BlockBackend, CompletionReceiver, Completions, DirectOutput, DiskFile};
use devices::{HostWorld, WorldEvent};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

const DISK_SIZE: usize = 4096;
const LONG_LEASE: Duration = Duration::from_secs(3600);

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ftlog-commit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Released = Arc<Mutex<Vec<(Landmark, Output)>>>;

/// The inner stage: records what leaves, then applies it through a `DirectOutput`.
struct Sink {
    released: Released,
    direct: DirectOutput,
}

impl OutputStage for Sink {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        self.released.lock().unwrap().push((at, output.clone()));
        self.direct.emit(at, output)
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        self.direct.submit_read(read)
    }
}

struct Fixture {
    stage: OutputCommit<Sink>,
    watch: PeerWatch,
    released: Released,
    disk: Arc<DiskFile>,
    completions: CompletionReceiver,
    next_read: u64,
    _dir: TempDir,
}

impl Fixture {
    fn new(mode: CommitMode, lease: Duration, limits: CommitLimits) -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("disk0.img");
        std::fs::write(&path, vec![0u8; DISK_SIZE]).expect("create disk");
        let disk = Arc::new(DiskFile::open(&path, false).expect("open disk"));
        let released = Released::default();
        let (sender, completions) = Completions::channel(None);
        let direct = DirectOutput::new(
            Vec::new(),
            vec![disk.clone() as Arc<dyn BlockBackend>],
            Box::new(std::io::sink()),
            sender,
        );
        let watch = PeerWatch::new();
        let sink = Sink { released: released.clone(), direct };
        let stage = OutputCommit::new(sink, watch.clone(), mode, lease, limits);
        Self { stage, watch, released, disk, completions, next_read: 1 << 32, _dir: dir }
    }

    fn received() -> Self {
        let f = Self::new(CommitMode::Received, LONG_LEASE, CommitLimits::default());
        f.watch.heard_now();
        f
    }

    /// Emits `output` at `Exit(n)` with the log at `position`.
    fn emit_at(&mut self, position: u64, n: u64, output: Output) {
        self.watch.set_logged(position);
        self.stage.emit(Landmark::Exit(n), output).expect("emit");
    }

    fn released(&self) -> Vec<(Landmark, Output)> {
        self.released.lock().unwrap().clone()
    }

    /// A read through the stage, as the device submits it, and its completion.
    fn read_stage(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let id = self.next_read;
        self.next_read += 1;
        self.stage.submit_read(DiskRead { device: 0, id, offset, len, patches: Vec::new() }).expect("submit a read");
        loop {
            match self.completions.events.recv_timeout(Duration::from_secs(5)).expect("the read completes") {
                WorldEvent::DiskDone { id: done, status: 0, data, .. } if done == id => return data,
                WorldEvent::DiskDone { id: done, .. } if done < 1 << 32 => continue, // a write's
                other => panic!("unexpected completion {other:?}"),
            }
        }
    }

    /// The file as it stands once the disk's thread has applied what it was handed.
    fn read_file(&self, offset: u64, len: usize) -> Vec<u8> {
        assert!(self.stage.with_inner(|sink| sink.direct.wait_for_disks(Duration::from_secs(5))));
        let mut buf = vec![0xEE; len];
        self.disk.read_at(offset, &mut buf).expect("read the file");
        buf
    }
}

fn frame(tag: u8) -> Output {
    Output::NetFrame { device: 0, frame: vec![tag; 60] }
}

/// Request ids for writes and flushes (reads take ids from 2^32 up).
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn write(offset: u64, data: &[u8]) -> Output {
    Output::DiskWrite { device: 0, id: next_id(), offset, data: data.to_vec() }
}

fn flush() -> Output {
    Output::DiskFlush { device: 0, id: next_id() }
}

#[test]
fn nothing_leaves_before_the_ack() {
    let mut f = Fixture::received();
    f.emit_at(100, 1, frame(1));
    f.emit_at(100, 1, write(0, b"held"));
    assert_eq!(f.stage.release_ready().unwrap(), 0);
    f.watch.set_acked(99);
    assert_eq!(f.stage.release_ready().unwrap(), 0);
    assert!(f.released().is_empty(), "released before the backup held the log");
    assert_eq!(f.read_file(0, 4), vec![0; 4], "a held write reached the disk");
    f.watch.set_acked(100);
    assert_eq!(f.stage.release_ready().unwrap(), 2);
    assert_eq!(f.read_file(0, 4), b"held");
}

#[test]
fn release_follows_the_acks_in_order() {
    let mut f = Fixture::received();
    let outputs = [
        (10, 1, frame(1)),
        (20, 2, write(8, b"two")),
        (20, 2, flush()),
        (30, 3, Output::Console { bytes: b"three".to_vec() }),
        (40, 4, frame(4)),
    ];
    for (position, n, output) in outputs.clone() {
        f.emit_at(position, n, output);
    }
    let expect =
        |upto: usize| outputs[..upto].iter().map(|(_, n, o)| (Landmark::Exit(*n), o.clone())).collect::<Vec<_>>();
    f.watch.set_acked(20);
    f.stage.release_ready().unwrap();
    assert_eq!(f.released(), expect(3));
    assert_eq!(f.stage.released_position(), 20);
    assert_eq!(f.stage.released_landmark(), Some(Landmark::Exit(2)));
    // An emit releases opportunistically what has become ready.
    f.watch.set_acked(35);
    f.emit_at(50, 5, frame(5));
    assert_eq!(f.released(), expect(4));
    f.watch.set_acked(50);
    f.stage.release_ready().unwrap();
    assert_eq!(f.released().len(), 6);
    let stats = f.stage.stats();
    assert_eq!((stats.held, stats.held_bytes, stats.released, stats.released_position), (0, 0, 6, 50));
    assert_eq!(stats.oldest_held_age, None);
}

#[test]
fn verified_mode_waits_for_the_verified_position() {
    // In verified mode an output's stamp is its number, and the backup's word the count of
    // outputs it matched.
    let mut f = Fixture::new(CommitMode::Verified, LONG_LEASE, CommitLimits::default());
    f.watch.heard_now();
    f.emit_at(100, 1, frame(1));
    f.emit_at(100, 2, frame(2));
    f.watch.set_acked(1000);
    assert_eq!(f.stage.release_ready().unwrap(), 0, "verified mode released on a mere ack");
    f.watch.set_verified(1);
    assert_eq!(f.stage.release_ready().unwrap(), 1, "the first output matched, and only it");
    assert_eq!(f.stage.released_position(), 1);
    f.watch.set_verified(2);
    assert_eq!(f.stage.release_ready().unwrap(), 1);
    assert_eq!(f.stage.emitted(), 2);
}

#[test]
fn nothing_leaves_while_a_resync_is_under_way() {
    let mut f = Fixture::new(CommitMode::Received, LONG_LEASE, CommitLimits::default());
    f.watch.heard_now();
    f.emit_at(10, 1, frame(1));
    f.stage.hold_for_resync();
    f.watch.set_acked(10);
    assert_eq!(f.stage.release_ready().unwrap(), 0, "released while the backup was being resynced");
    f.stage.resync_done();
    assert_eq!(f.stage.release_ready().unwrap(), 1);
}

#[test]
fn nothing_leaves_past_the_lease_even_if_acked() {
    let lease = Duration::from_millis(30);
    let mut f = Fixture::new(CommitMode::Received, lease, CommitLimits::default());
    f.emit_at(10, 1, frame(1));
    f.watch.set_acked(10);
    assert_eq!(f.stage.release_ready().unwrap(), 0, "released before the backup ever spoke");
    f.watch.heard_now();
    assert_eq!(f.stage.release_ready().unwrap(), 1);

    f.emit_at(20, 2, frame(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.watch.lease_valid(lease) {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::yield_now();
    }
    f.watch.set_acked(20);
    assert_eq!(f.stage.release_ready().unwrap(), 0, "released under an expired lease");
    f.emit_at(20, 3, frame(3));
    assert_eq!(f.released().len(), 1, "an emit released under an expired lease");
    assert_eq!(f.stage.wait_for_space(Duration::ZERO).unwrap(), Space::Available);
    assert_eq!(f.released().len(), 1);
    f.watch.heard_now();
    assert_eq!(f.stage.release_ready().unwrap(), 2, "a fresh word releases what was acked");
}

#[test]
fn reads_see_held_writes_then_the_disk() {
    let mut f = Fixture::received();
    f.emit_at(10, 1, write(100, b"abcdef"));
    f.emit_at(20, 2, write(103, b"XY"));
    f.emit_at(30, 3, write(98, b"12"));
    // Another disk's writes are not this disk's.
    f.emit_at(30, 3, Output::DiskWrite { device: 1, id: next_id(), offset: 100, data: b"zz".to_vec() });
    let mut expect = vec![0u8; 16];
    expect[4..10].copy_from_slice(b"abcdef");
    expect[7..9].copy_from_slice(b"XY");
    expect[2..4].copy_from_slice(b"12");
    assert_eq!(f.read_stage(96, 16), expect, "a read missed held writes");
    assert_eq!(f.read_file(96, 16), vec![0; 16], "held writes reached the file");
    // A read that only partly overlaps a write.
    assert_eq!(f.read_stage(104, 2), b"Yf");

    f.watch.set_acked(20);
    f.stage.release_ready().unwrap();
    let mut on_disk = vec![0u8; 16];
    on_disk[4..10].copy_from_slice(b"abcXYf");
    assert_eq!(f.read_file(96, 16), on_disk);
    assert_eq!(f.read_stage(96, 16), expect);
}

#[test]
fn a_full_stage_is_reported_and_emit_waits_within_the_bound() {
    let limits = CommitLimits { max_bytes: 1000, max_outputs: 8 };
    let mut f = Fixture::new(CommitMode::Received, LONG_LEASE, limits);
    f.watch.heard_now();
    for n in 1..=3 {
        f.emit_at(n * 10, n, Output::NetFrame { device: 0, frame: vec![0; 300] });
    }
    assert!(!f.stage.is_full());
    f.emit_at(40, 4, Output::NetFrame { device: 0, frame: vec![0; 100] });
    assert!(f.stage.is_full(), "1000 bytes held of 1000 is full");
    assert_eq!(f.stage.wait_for_space(Duration::from_millis(5)).unwrap(), Space::TimedOut);
    let waits_before = f.stage.stats().full_waits;
    assert_eq!(waits_before, 1, "the wait was not counted");

    let mut emitter = f.stage.clone();
    f.watch.set_logged(50);
    let (done, emitted) = std::sync::mpsc::channel();
    let blocked = std::thread::spawn(move || {
        let _ = done.send(emitter.emit(Landmark::Exit(5), frame(5)).is_ok());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.stage.stats().full_waits == waits_before {
        assert!(Instant::now() < deadline, "emit never reported the full stage");
        assert!(!blocked.is_finished(), "emit went past the bound");
        std::thread::yield_now();
    }
    let stats = f.stage.stats();
    assert_eq!((stats.held, stats.held_bytes), (4, 1000), "memory grew past the bound");
    assert!(!blocked.is_finished());
    // The first output leaves: room for the waiting one.
    f.watch.set_acked(10);
    f.stage.wake();
    let emitted = emitted.recv_timeout(Duration::from_secs(10));
    assert_eq!(emitted, Ok(true), "emit did not go on once there was room");
    blocked.join().expect("emitter thread");
    let stats = f.stage.stats();
    assert_eq!((stats.held, stats.held_bytes), (4, 760));
    assert_eq!(f.stage.wait_for_space(Duration::ZERO).unwrap(), Space::Available);

    // The count bound too, and one output larger than the whole byte bound still passes alone.
    f.watch.set_acked(50);
    f.stage.release_ready().unwrap();
    f.emit_at(60, 6, Output::NetFrame { device: 0, frame: vec![0; 5000] });
    assert!(f.stage.is_full());
    f.watch.set_acked(60);
    f.stage.release_ready().unwrap();
    for n in 7..15 {
        f.emit_at(70, n, flush());
    }
    assert!(f.stage.is_full(), "8 outputs held of 8 is full");
    assert_eq!(f.stage.stats().held, 8);
}

#[test]
fn take_unreleased_returns_exactly_what_did_not_leave() {
    let mut f = Fixture::received();
    let all: Vec<HeldOutput> = (1..=5)
        .map(|n| HeldOutput {
            position: n * 10,
            at: Landmark::Exit(n),
            output: if n % 2 == 0 { write(n * 8, &[n as u8; 4]) } else { frame(n as u8) },
        })
        .collect();
    for held in &all {
        f.emit_at(held.position, held.at.exit_count(), held.output.clone());
    }
    f.watch.set_acked(20);
    f.stage.release_ready().unwrap();
    assert_eq!(f.stage.released_position(), 20);
    assert_eq!(f.stage.take_unreleased(), all[2..].to_vec());
    assert_eq!(f.stage.stats().held, 0);
    assert!(f.stage.take_unreleased().is_empty());
}

#[test]
fn a_backup_drops_what_the_primary_released_and_takes_the_rest() {
    // The backup's watch never hears a word: nothing it holds ever leaves through it.
    let mut f = Fixture::new(CommitMode::Received, LONG_LEASE, CommitLimits::default());
    let all: Vec<HeldOutput> =
        (1..=4).map(|n| HeldOutput { position: n * 10, at: Landmark::Exit(n), output: frame(n as u8) }).collect();
    for held in &all {
        f.emit_at(held.position, held.at.exit_count(), held.output.clone());
    }
    f.watch.set_acked(1000);
    assert_eq!(f.stage.release_ready().unwrap(), 0);
    assert_eq!(f.stage.discard_through(25), 2);
    assert_eq!(f.stage.take_unreleased(), all[2..].to_vec());
    assert!(f.released().is_empty());
}

#[test]
fn a_resync_carries_the_primarys_held_outputs_to_the_backup_which_holds_them_first() {
    // The primary holds four outputs across a resync; the backup's new stage starts past them.
    let mut primary = Fixture::received();
    let before: Vec<HeldOutput> = (1..=4)
        .map(|n| HeldOutput { position: n * 10, at: Landmark::Exit(n), output: write(n * 8, &[n as u8; 4]) })
        .collect();
    for held in &before {
        primary.emit_at(held.position, held.at.exit_count(), held.output.clone());
    }
    primary.stage.hold_for_resync();
    primary.watch.set_acked(1000);
    assert_eq!(primary.stage.release_ready().unwrap(), 0);
    let carried = carry::decode(&carry::encode(&primary.stage.held_outputs())).expect("decode");
    assert_eq!(carried, before);

    let mut backup = Fixture::new(CommitMode::Received, LONG_LEASE, CommitLimits::default());
    backup.emit_at(50, 5, frame(5));
    backup.stage.hold_inherited(carried);
    assert_eq!(backup.stage.stats().held, 5);
    assert_eq!(backup.stage.stats().held_bytes, 4 * 4 + 60);
    // The primary released the first two before it died: the backup issues the rest, in order.
    assert_eq!(backup.stage.discard_through(20), 2);
    let mut expected = before[2..].to_vec();
    expected.push(HeldOutput { position: 50, at: Landmark::Exit(5), output: frame(5) });
    assert_eq!(backup.stage.take_unreleased(), expected);
}

#[test]
fn alone_releases_everything_then_passes_through() {
    let mut f = Fixture::received();
    f.emit_at(10, 1, frame(1));
    f.emit_at(20, 2, write(0, b"alone"));
    assert_eq!(f.stage.release_all_and_go_direct().unwrap(), 2);
    assert_eq!(f.read_file(0, 5), b"alone");
    f.emit_at(30, 3, frame(3));
    assert_eq!(f.released().len(), 3);
    assert_eq!(f.stage.stats().held, 0);
}

#[test]
fn a_halted_stage_releases_nothing() {
    let mut f = Fixture::received();
    f.emit_at(10, 1, frame(1));
    f.stage.halt();
    f.watch.set_acked(100);
    f.emit_at(20, 2, write(0, b"lost"));
    assert_eq!(f.stage.release_ready().unwrap(), 0);
    assert!(f.released().is_empty());
    assert_eq!(f.read_file(0, 4), vec![0; 4]);
    assert_eq!(f.stage.stats().discarded, 2);
}

/// An output the backend refuses (a gfs write fenced out, here a write to a disk that is not
/// there) is fatal: nothing after it leaves, from this thread or any other.
#[test]
fn nothing_leaves_after_an_output_that_failed() {
    let mut f = Fixture::received();
    f.emit_at(10, 1, Output::DiskWrite { device: 1, id: next_id(), offset: 0, data: b"refused".to_vec() });
    f.emit_at(20, 2, frame(2));
    f.watch.set_acked(100);
    assert!(matches!(f.stage.release_ready(), Err(OutputError::NoDisk { device: 1 })));
    f.emit_at(30, 3, write(0, b"late"));
    assert_eq!(f.stage.release_ready().unwrap(), 0);
    let released: Vec<Output> = f.released().into_iter().map(|(_, output)| output).collect();
    assert_eq!(released.len(), 1, "only the refused write was handed on: {released:?}");
    assert_eq!(f.read_file(0, 4), vec![0; 4]);
    assert_eq!(f.stage.stats().held, 0);
}

#[test]
fn the_recorder_publishes_its_stream_position() {
    let header = LogHeader {
        machine: MachineDescription {
            image_digest: [1; 32],
            memory_size: 16 << 20,
            cmdline: "test".into(),
            kernel_path: None,
            preemption_bound_ns: 2_000_000,
            devices: Vec::new(),
        },
        exit_digest_interval: 1,
        created_unix_ns: 0,
        start_exits: 0,
    };
    let mut world = RecordingWorld::new(HostWorld::new(), Vec::new(), &header).expect("recorder");
    let watch = PeerWatch::new();
    world.publish_to(watch.clone());
    assert_eq!(watch.logged(), world.log_bytes(), "the header is part of the stream");
    let before = watch.logged();
    world.record_interrupt(Landmark::Exit(0), 32).expect("interrupt");
    assert!(watch.logged() > before);
    assert_eq!(watch.logged(), world.log_bytes());
    world.record_checkpoint(Landmark::Preempt(0), &[7; 100]).expect("checkpoint");
    assert_eq!(watch.logged(), world.log_bytes());
    let _ = devices::EventSource::read_clock(&mut world, Landmark::Preempt(0), devices::ClockId::Monotonic);
    assert_eq!(watch.logged(), world.log_bytes());
}

/// (offset, data) of a write in the model.
type ModelWrite = (u64, Vec<u8>);

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u16, len: u8, byte: u8 },
    Flush,
    Log(u8),
    Ack(u8),
    Read { offset: u16, len: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..1024, 1u8..=64, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
        1 => Just(Op::Flush),
        2 => any::<u8>().prop_map(Op::Log),
        2 => any::<u8>().prop_map(Op::Ack),
        3 => (0u16..1024, 1u8..=128).prop_map(|(offset, len)| Op::Read { offset, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the interleaving, a read sees every write emitted before it, the file holds
    /// exactly the released prefix, and only outputs stamped at or below the ack have left.
    #[test]
    fn reads_always_see_every_write_in_order(ops in proptest::collection::vec(op(), 1..80)) {
        let mut f = Fixture::received();
        let mut logged = 1u64;
        // (stamp, the write if it is one): every output emitted, in order.
        let mut emitted: Vec<(u64, Option<ModelWrite>)> = Vec::new();
        let mut model = vec![0u8; DISK_SIZE];
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { offset, len, byte } => {
                    let data = vec![byte; usize::from(len)];
                    f.emit_at(logged, n as u64, write(u64::from(offset), &data));
                    model[usize::from(offset)..usize::from(offset) + data.len()].copy_from_slice(&data);
                    emitted.push((logged, Some((u64::from(offset), data))));
                }
                Op::Flush => {
                    f.emit_at(logged, n as u64, flush());
                    emitted.push((logged, None));
                }
                Op::Log(more) => logged += u64::from(more),
                Op::Ack(back) => {
                    f.watch.set_acked(logged.saturating_sub(u64::from(back)));
                    f.stage.release_ready().unwrap();
                }
                Op::Read { offset, len } => {
                    let (from, to) = (usize::from(offset), usize::from(offset) + usize::from(len));
                    prop_assert_eq!(f.read_stage(u64::from(offset), usize::from(len)), &model[from..to]);
                }
            }
            let released = f.released().len();
            let acked = f.watch.acked();
            prop_assert!(emitted[..released].iter().all(|(p, _)| *p <= acked), "released past the ack");
            prop_assert!(emitted[released..].first().is_none_or(|(p, _)| *p > acked), "held what was acked");
        }
        let released = f.released().len();
        let mut on_disk = vec![0u8; DISK_SIZE];
        for (_, w) in &emitted[..released] {
            if let Some((offset, data)) = w {
                on_disk[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
        }
        prop_assert_eq!(f.read_file(0, DISK_SIZE), on_disk);
        prop_assert_eq!(f.read_stage(0, DISK_SIZE), model);
    }
}

/// The board takes its stage as `Box<dyn OutputStage + Send>`; clones go to other threads.
#[test]
fn the_stage_fits_the_board_and_crosses_threads() {
    fn boxed(stage: OutputCommit<DirectOutput>) -> Box<dyn OutputStage + Send> {
        Box::new(stage)
    }
    fn sync<T: Send + Sync>(_: &T) {}
    let stage = OutputCommit::new(
        DirectOutput::new(Vec::new(), Vec::new(), Box::new(std::io::sink()), Completions::channel(None).0),
        PeerWatch::new(),
        CommitMode::Received,
        LONG_LEASE,
        CommitLimits::default(),
    );
    sync(&stage);
    let mut board_side = boxed(stage.clone());
    board_side.emit(Landmark::Exit(1), frame(1)).expect("emit");
    assert_eq!(stage.stats().held, 1);
}
