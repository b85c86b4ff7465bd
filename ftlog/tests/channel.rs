//! The logging channel over real TCP on 127.0.0.1: handshake, records and positions, acks, loss
//! detection on both sides, a cut record, bounded queues.

use devices::{ClockId, Deadlines, EventSource, InputKind, Landmark, WorldEvent};
use ftlog::channel::wire::Message;
use ftlog::channel::{SendError, LINK_MAGIC, PROTOCOL_VERSION};
use ftlog::{
    BackupEvent, BackupLink, ChannelConfig, ChannelError, ExitKind, ExitSignature, FeedItem, Hello, LogHeader,
    LogWriter, MachineDescription, PeerWatch, PrimaryEvent, PrimaryLink, Record, RecordFeed, RecordingWorld,
    ReplayWorld, Role,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn machine() -> MachineDescription {
    MachineDescription {
        image_digest: [7; 32],
        memory_size: 16 << 20,
        cmdline: "kv".into(),
        kernel_path: None,
        preemption_bound_ns: 2_000_000,
        devices: Vec::new(),
    }
}

fn header() -> LogHeader {
    LogHeader { machine: machine(), exit_digest_interval: 4, created_unix_ns: 0, start_exits: 0 }
}

fn primary_hello() -> Hello {
    Hello {
        role: Role::Primary,
        generation: 42,
        listen: "127.0.0.1:7000".into(),
        id: "host-a:1".into(),
        vm: "vm".into(),
        machine: Some(machine()),
        verified: false,
    }
}

fn backup_hello() -> Hello {
    Hello {
        role: Role::Backup,
        generation: 42,
        listen: "127.0.0.1:7001".into(),
        id: "host-b:2".into(),
        vm: "vm".into(),
        machine: None,
        verified: false,
    }
}

/// A connected pair: the primary accepts on a fresh port, the backup connects.
fn pair(
    primary: &ChannelConfig,
    backup: &ChannelConfig,
) -> (Result<PrimaryLink, ChannelError>, Result<BackupLink, ChannelError>, PeerWatch) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let watch = PeerWatch::new();
    let accepted = {
        let watch = watch.clone();
        let config = primary.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            PrimaryLink::accept(stream, &primary_hello(), watch, &config)
        })
    };
    let backup = BackupLink::connect(addr, &backup_hello(), backup);
    (accepted.join().unwrap(), backup, watch)
}

/// One cluster key for this test process, made once.
fn keys() -> seal::Security {
    static KEYS: std::sync::OnceLock<(tempfile::TempDir, seal::Security)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        seal::generate(dir.path(), false).unwrap();
        let security = seal::Security::from_dir(dir.path()).unwrap();
        (dir, security)
    })
    .1
    .clone()
}

/// The default configuration, sealed with the test's key.
fn sealed() -> ChannelConfig {
    ChannelConfig { security: keys(), ..ChannelConfig::default() }
}

/// For tests about what arrives rather than when: a loaded 2-core machine can starve a thread
/// for longer than the default timeout, which would end the pair before the test's point.
fn relaxed() -> ChannelConfig {
    ChannelConfig { timeout: Duration::from_secs(3), ..sealed() }
}

fn live_pair(config: &ChannelConfig) -> (PrimaryLink, BackupLink, PeerWatch) {
    let (primary, backup, watch) = pair(config, config);
    (primary.unwrap(), backup.unwrap(), watch)
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every record of the feed until it ends, and how it ended.
fn drain(feed: &mut impl RecordFeed, deadline: Duration) -> (Vec<(Record, u64)>, FeedItem) {
    let end = Instant::now() + deadline;
    let mut records = Vec::new();
    loop {
        assert!(Instant::now() < end, "the feed did not end");
        match feed.next_item() {
            FeedItem::Record { record, position } => records.push((record, position)),
            FeedItem::Wait => {}
            other => return (records, other),
        }
    }
}

/// A variety of records, one of them larger than a channel chunk.
fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for n in 1..200u64 {
        out.push(Record::Interrupt { at: Landmark::Exit(n), vector: (n % 200) as u8 + 32 });
        if n % 7 == 0 {
            out.push(Record::ClockRead { at: Landmark::Exit(n), clock: ClockId::Monotonic, value: n * 1000 });
        }
        if n % 50 == 0 {
            out.push(Record::World {
                at: Landmark::Exit(n),
                event: WorldEvent::NetFrame { device: 0, frame: vec![n as u8; 1500] },
            });
        }
    }
    out.push(Record::Input {
        at: Landmark::Exit(200),
        kind: InputKind::DiskRead { device: 0 },
        data: (0..3_000_000u32).map(|i| i as u8).collect(),
    });
    out.push(Record::Checkpoint { at: Landmark::Preempt(201), data: vec![9; 100] });
    out
}

#[test]
fn the_handshake_carries_both_hellos() {
    let (primary, backup, watch) = live_pair(&relaxed());
    assert_eq!(backup.primary(), &primary_hello());
    assert_eq!(primary.backup(), &backup_hello());
    assert!(watch.silence().is_some(), "the handshake is a word from the backup");
}

#[test]
fn a_version_mismatch_is_refused_on_both_sides() {
    let newer = ChannelConfig { version: PROTOCOL_VERSION + 1, ..sealed() };
    let (primary, backup, _) = pair(&sealed(), &newer);
    match primary {
        Err(ChannelError::VersionMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1))
        }
        other => panic!("the primary accepted a newer backup: {:?}", other.err()),
    }
    match backup {
        Err(error @ ChannelError::VersionMismatch { .. }) => {
            let text = error.to_string();
            assert!(text.contains(&format!("this side speaks {}", PROTOCOL_VERSION + 1)), "{text}");
            assert!(text.contains(&format!("the peer speaks {PROTOCOL_VERSION}")), "{text}");
        }
        other => panic!("the backup accepted an older primary: {:?}", other.err()),
    }
}

#[test]
fn records_arrive_with_their_positions_and_are_acknowledged() {
    let (primary, backup, watch) = live_pair(&relaxed());
    let mut log = LogWriter::new(primary.record_sink(), &header()).unwrap();
    let mut sent = Vec::new();
    for record in records() {
        log.write(&record).unwrap();
        sent.push((record, log.offset()));
    }
    log.flush().unwrap();
    let end = log.offset();

    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    assert_eq!(feed.header(), &header());
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match feed.next_item() {
            FeedItem::Record { record, position } => got.push((record, position)),
            FeedItem::Wait => {}
            other => panic!("the feed ended early: {other:?}"),
        }
    }
    assert!(got == sent, "records or positions differ");
    assert_eq!(feed.position(), end);
    wait_for("the ack of the last record", Duration::from_secs(5), || watch.acked() == end);
    assert_eq!(backup.held(), end);

    primary.send_released(sent[10].1).unwrap();
    wait_for("the release marker", Duration::from_secs(5), || backup.released() == sent[10].1);
    backup.send_verified(sent[20].1).unwrap();
    wait_for("the verified position", Duration::from_secs(5), || watch.verified() == sent[20].1);
    backup.request_resync(ftlog::channel::ResyncReason::OutputDiffered).unwrap();
    assert_eq!(
        primary.events().recv_timeout(Duration::from_secs(5)),
        Ok(PrimaryEvent::ResyncRequested(ftlog::channel::ResyncReason::OutputDiffered))
    );

    primary.close(Duration::from_secs(5));
    assert!(matches!(feed.next_item(), FeedItem::Closed | FeedItem::Wait));
    wait_for("the close", Duration::from_secs(5), || {
        matches!(backup.events().try_recv(), Ok(BackupEvent::PrimaryClosed))
    });
}

/// A deterministic live world for the recorder.
struct Clocked(u64);

impl EventSource for Clocked {
    fn read_clock(&mut self, _at: Landmark, _clock: ClockId) -> u64 {
        self.0 += 1_000;
        self.0
    }
    fn poll(&mut self, _at: Landmark, _armed: Deadlines) -> Vec<WorldEvent> {
        Vec::new()
    }
    fn wait_idle(&mut self, _at: Landmark, _armed: Deadlines) {}
    fn time_until(&self, _deadline_ns: u64) -> Option<Duration> {
        None
    }
}

#[test]
fn a_replay_follows_a_recording_through_the_channel() {
    let (primary, mut backup, _) = live_pair(&relaxed());
    let state: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7) as u8).collect();
    let sig = |n: u64| ExitSignature { kind: ExitKind::PioOut, rip: 0x1000 + n, addr: 0x3f8, len: 1, value: n };
    const EXITS: u64 = 300;
    let recorder = {
        let state = state.clone();
        std::thread::spawn(move || {
            match primary.send_state(&state[..]) {
                Ok(sent) => assert_eq!(sent, state.len() as u64),
                Err(error) => panic!("{error}: {:?}", primary.events().try_iter().collect::<Vec<_>>()),
            }
            let mut world = RecordingWorld::new(Clocked(0), primary.record_sink(), &header()).unwrap();
            let mut clocks = Vec::new();
            for n in 1..=EXITS {
                let at = world.record_exit(&sig(n)).unwrap();
                if n % 3 == 0 {
                    clocks.push(world.read_clock(at, ClockId::Monotonic));
                }
            }
            world.finish(0, Some([5; 32])).unwrap();
            primary.close(Duration::from_secs(5));
            clocks
        })
    };
    let mut received = Vec::new();
    if let Err(error) = backup.state_reader().unwrap().read_to_end(&mut received) {
        panic!("reading the state: {error}; events: {:?}", backup.events().try_iter().collect::<Vec<_>>());
    }
    assert!(received == state, "the state stream differs");
    let mut replay = ReplayWorld::from_feed(backup.feed(Duration::from_secs(5)).unwrap());
    let mut clocks = Vec::new();
    for n in 1..=EXITS {
        let at = replay.check_exit(&sig(n)).unwrap();
        if n % 3 == 0 {
            clocks.push(replay.read_clock(at, ClockId::Monotonic));
        }
    }
    replay.finish(Some(0), Some([5; 32])).unwrap();
    assert_eq!(clocks, recorder.join().unwrap());
}

#[test]
fn a_killed_primary_ends_the_feed_with_lost_after_its_records() {
    let (primary, backup, _) = live_pair(&relaxed());
    let mut log = LogWriter::new(primary.record_sink(), &header()).unwrap();
    for n in 1..=10 {
        log.write(&Record::Interrupt { at: Landmark::Exit(n), vector: 40 }).unwrap();
    }
    log.flush().unwrap();
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    wait_for("the records", Duration::from_secs(5), || backup.held() == log.offset());
    let killed = Instant::now();
    primary.abort();
    let (got, end) = drain(&mut feed, Duration::from_secs(5));
    eprintln!("backup: killed primary's connection seen broken after {} µs", killed.elapsed().as_micros());
    assert_eq!(got.len(), 10);
    assert!(matches!(end, FeedItem::Lost(_)), "{end:?}");
    let event = backup.events().recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(event, BackupEvent::PrimaryLost { .. }), "{event:?}");
}

/// A primary played by hand: handshake, then whatever bytes the test wants.
fn fake_primary(config: ChannelConfig) -> (seal::Writer, BackupLink) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let security = config.security.clone();
    let backup = std::thread::spawn(move || BackupLink::connect(addr, &backup_hello(), &config));
    let (stream, _) = listener.accept().unwrap();
    let (mut reader, mut stream) =
        seal::open(stream, &security, "ftvm-log", seal::Side::Responder, "backup", Duration::from_secs(5)).unwrap();
    let mut hello = LINK_MAGIC.to_vec();
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    Message::Hello(postcard::to_allocvec(&primary_hello()).unwrap()).encode_into(&mut hello).unwrap();
    stream.write_all(&hello).unwrap();
    let mut preamble = [0u8; 10];
    reader.read_exact(&mut preamble).unwrap();
    (stream, backup.join().unwrap().unwrap())
}

#[test]
fn a_silent_primary_is_lost_after_the_timeout_and_a_cut_record_is_dropped() {
    let config = sealed();
    let (mut stream, backup) = fake_primary(config.clone());
    let mut log = LogWriter::new(Vec::new(), &header()).unwrap();
    let mut positions = Vec::new();
    for n in 1..=3 {
        log.write(&Record::Interrupt { at: Landmark::Exit(n), vector: 40 }).unwrap();
        positions.push(log.offset());
    }
    let bytes = log.into_inner().unwrap();
    // The log stream stops in the middle of the third record ...
    let cut = (positions[1] + 3) as usize;
    let mut wire = Vec::new();
    Message::Records(bytes[..cut].to_vec()).encode_into(&mut wire).unwrap();
    // ... and the channel in the middle of a frame that would have completed it.
    let mut rest = Vec::new();
    Message::Records(bytes[cut..].to_vec()).encode_into(&mut rest).unwrap();
    wire.extend_from_slice(&rest[..rest.len() - 2]);
    stream.write_all(&wire).unwrap();
    let silent_since = Instant::now();

    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    let (got, end) = drain(&mut feed, Duration::from_secs(5));
    let waited = silent_since.elapsed();
    assert_eq!(got.iter().map(|(_, p)| *p).collect::<Vec<_>>(), positions[..2]);
    assert!(matches!(&end, FeedItem::Lost(reason) if reason.contains("no word from the primary")), "{end:?}");
    assert!(waited >= config.timeout, "declared lost after only {waited:?}");
    assert!(waited < Duration::from_secs(2), "declared lost only after {waited:?}");
    eprintln!("backup: primary silent since the cut, declared lost after {} ms", waited.as_millis());
    match backup.events().recv_timeout(Duration::from_secs(5)).unwrap() {
        BackupEvent::PrimaryLost { silence, .. } => assert!(silence >= config.timeout, "{silence:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(backup.held(), positions[1], "the cut record is not acknowledged");
    drop(stream);
}

/// A backup played by hand: handshake, then silence (it reads nothing and says nothing).
fn fake_backup(config: ChannelConfig) -> (seal::Writer, PrimaryLink, PeerWatch) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let watch = PeerWatch::new();
    let primary = {
        let watch = watch.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            PrimaryLink::accept(stream, &primary_hello(), watch, &config)
        })
    };
    let stream = TcpStream::connect(addr).unwrap();
    let (_, mut stream) =
        seal::open(stream, &keys(), "ftvm-log", seal::Side::Initiator, "primary", Duration::from_secs(5)).unwrap();
    let mut hello = LINK_MAGIC.to_vec();
    hello.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    Message::Hello(postcard::to_allocvec(&backup_hello()).unwrap()).encode_into(&mut hello).unwrap();
    stream.write_all(&hello).unwrap();
    (stream, primary.join().unwrap().unwrap(), watch)
}

#[test]
fn a_silent_backup_is_reported_lost_by_the_primary() {
    let config = sealed();
    let (mut stream, primary, watch) = fake_backup(config.clone());
    // Past the join (the first acknowledgement), then silence.
    stream.write_all(&Message::Ack { position: 1 }.encode().unwrap()).unwrap();
    let silent_since = Instant::now();
    match primary.events().recv_timeout(Duration::from_secs(5)).unwrap() {
        PrimaryEvent::BackupLost { silence, reason } => {
            assert!(silence >= config.timeout, "{silence:?}");
            assert!(reason.contains("no word"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let waited = silent_since.elapsed();
    assert!(waited >= config.timeout);
    eprintln!("primary: backup silent after its hello, declared lost after {} ms", waited.as_millis());
    assert!(!watch.lease_valid(config.timeout));
    assert!(matches!(primary.try_send(Message::Released { position: 1 }), Err(SendError::Lost)));
    drop(stream);
}

#[test]
fn a_live_pair_stays_a_pair_on_heartbeats_alone() {
    let config = sealed();
    let (primary, backup, watch) = live_pair(&config);
    let start = Instant::now();
    while start.elapsed() < config.timeout * 5 {
        assert!(watch.lease_valid(config.timeout), "the lease lapsed while both sides are alive");
        std::thread::sleep(config.heartbeat);
    }
    assert!(primary.events().try_recv().is_err());
    assert!(backup.events().try_recv().is_err());
}

#[test]
fn a_stalled_replay_fills_bounded_queues_and_loses_nothing() {
    // The replay stalls for longer than the timeout (over 600 ms): busy, its primary not lost.
    let config = ChannelConfig { queue: 8, feed_bound: 16, timeout: Duration::from_millis(250), ..sealed() };
    let (primary, backup, watch) = live_pair(&config);
    // A long log, sent as raw chunks so that the test sees the queue's answers.
    let mut log = LogWriter::new(Vec::new(), &header()).unwrap();
    let mut n = 0u64;
    while log.offset() < 64 << 20 {
        n += 1;
        log.write_input(Landmark::Exit(n), InputKind::DiskRead { device: 0 }, &[n as u8; 4000]).unwrap();
    }
    let end = log.offset();
    let bytes = log.into_inner().unwrap();
    let mut chunks = bytes.chunks(64 * 1024);
    let mut accepted = 0usize;
    let mut full_since = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Nobody takes from the feed: the backup's receiver stops, then TCP, then the queue.
    let mut pending = chunks.next().map(|c| Message::Records(c.to_vec()));
    while let Some(message) = pending.take() {
        if full_since.is_some_and(|since: Instant| since.elapsed() > Duration::from_millis(600)) {
            pending = Some(message);
            break;
        }
        assert!(Instant::now() < deadline, "the queue never filled");
        match primary.try_send(message) {
            Ok(()) => {
                accepted += 64 * 1024;
                full_since = None;
                pending = chunks.next().map(|c| Message::Records(c.to_vec()));
            }
            Err(SendError::Full(back)) => {
                let since = *full_since.get_or_insert_with(Instant::now);
                pending = Some(back);
                if since.elapsed() > Duration::from_millis(600) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(SendError::Lost) => panic!("the backup was declared lost"),
        }
    }
    assert!(full_since.is_some(), "all {accepted} bytes were accepted: nothing bounds the sender");
    // The queue, both socket buffers and the backup's feed hold it all: a few MiB, not the log.
    assert!(accepted < 40 << 20, "{accepted} bytes accepted before the queue said full");
    // The backup's heartbeats kept coming while its replay stalled: it is not lost. (The
    // lease may lapse meanwhile: it needs an echo of a recent heartbeat of ours, and ours wait
    // behind the log in the full socket; nothing could be released anyway.)
    assert!(!primary.is_lost(), "the backup's heartbeats stopped while its replay stalled");
    let _ = &watch;

    // The replay resumes: everything arrives, the sender finishes.
    let rest: Vec<Message> = pending.into_iter().chain(chunks.map(|c| Message::Records(c.to_vec()))).collect();
    let sender = std::thread::spawn(move || {
        for mut message in rest {
            loop {
                match primary.send_timeout(message, Duration::from_secs(10)) {
                    Ok(()) => break,
                    Err(SendError::Full(back)) => message = back,
                    Err(SendError::Lost) => panic!("lost"),
                }
            }
        }
        primary
    });
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    let mut last = 0;
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while last < end && Instant::now() < deadline {
        match feed.next_item() {
            FeedItem::Record { position, .. } => {
                last = position;
                count += 1;
            }
            FeedItem::Wait => {}
            other => panic!("the feed ended after {count} records: {other:?}"),
        }
    }
    assert_eq!((count, last), (n, end));
    let primary = sender.join().unwrap();
    assert!(primary.events().try_recv().is_err(), "the primary lost its backup");
    assert!(backup.events().try_recv().is_err(), "the backup lost its primary");
}

#[test]
fn dropping_a_backup_whose_feed_is_full_does_not_hang() {
    let config = ChannelConfig { feed_bound: 1, ..relaxed() };
    let (primary, backup, _) = live_pair(&config);
    let mut log = LogWriter::new(primary.record_sink(), &header()).unwrap();
    for n in 1..=100 {
        log.write(&Record::Interrupt { at: Landmark::Exit(n), vector: 40 }).unwrap();
    }
    log.flush().unwrap();
    // Held but never read: the receiver waits for room in the feed.
    let feed = backup.feed(Duration::from_secs(5)).unwrap();
    wait_for("the feed to fill", Duration::from_secs(5), || backup.held() > 0);
    let dropping = std::thread::spawn(move || drop(backup));
    wait_for("the drop", Duration::from_secs(5), || dropping.is_finished());
    drop(feed);
    drop(primary);
}

#[test]
fn a_clean_close_waits_for_a_slow_backup_to_read_everything() {
    let config = ChannelConfig { feed_bound: 4, ..relaxed() };
    let (primary, backup, _) = live_pair(&config);
    let mut log = LogWriter::new(primary.record_sink(), &header()).unwrap();
    let mut last = 0;
    for n in 1..=2000 {
        log.write_input(Landmark::Exit(n), InputKind::DiskRead { device: 0 }, &[n as u8; 500]).unwrap();
        last = log.offset();
    }
    log.flush().unwrap();
    drop(log);
    let closer = std::thread::spawn(move || primary.close(Duration::from_secs(10)));
    // The replay is slow to start: most of the log still sits in the socket buffers when the
    // primary closes. Its close must not destroy them.
    let start = Instant::now();
    while !closer.is_finished() && start.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    let (got, end) = drain(&mut feed, Duration::from_secs(10));
    assert!(matches!(end, FeedItem::Closed), "{end:?} after {} records", got.len());
    assert_eq!((got.len(), got.last().map(|(_, p)| *p)), (2000, Some(last)));
    closer.join().unwrap();
}

#[test]
fn state_after_the_log_began_ends_the_stream_instead_of_vanishing() {
    let (mut stream, backup) = fake_primary(relaxed());
    let mut log = LogWriter::new(Vec::new(), &header()).unwrap();
    log.write(&Record::Interrupt { at: Landmark::Exit(1), vector: 40 }).unwrap();
    let mut wire = Vec::new();
    Message::Records(log.into_inner().unwrap()).encode_into(&mut wire).unwrap();
    Message::StateChunk(vec![1; 10]).encode_into(&mut wire).unwrap();
    stream.write_all(&wire).unwrap();
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    let (got, end) = drain(&mut feed, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert!(matches!(&end, FeedItem::Lost(reason) if reason.contains("state after the log")), "{end:?}");
}

#[test]
fn a_backup_silent_while_the_state_is_copied_gets_the_join_timeout() {
    let config = ChannelConfig { join_timeout: Duration::from_millis(600), ..sealed() };
    let (stream, primary, _watch) = fake_backup(config.clone());
    let silent_since = Instant::now();
    match primary.events().recv_timeout(Duration::from_secs(5)).unwrap() {
        PrimaryEvent::BackupLost { silence, .. } => assert!(silence >= config.join_timeout, "{silence:?}"),
        other => panic!("{other:?}"),
    }
    let waited = silent_since.elapsed();
    assert!(waited >= config.join_timeout, "declared lost after {waited:?}, before the join timeout");
    drop(stream);
}

#[test]
fn a_resync_carries_the_held_outputs_ahead_of_its_state() {
    use devices::virtio::Output;
    use ftlog::output_commit::carry;
    use ftlog::HeldOutput;

    let (primary, backup, _watch) = live_pair(&relaxed());
    let mut log = LogWriter::new(primary.record_sink(), &header()).unwrap();
    log.write(&Record::Interrupt { at: Landmark::Exit(1), vector: 40 }).unwrap();
    log.flush().unwrap();
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    // More than one message's worth, so the held outputs are split and joined again.
    let held = vec![
        HeldOutput { position: 7, at: Landmark::Exit(2), output: Output::Console { bytes: b"value 3\n".to_vec() } },
        HeldOutput {
            position: 9,
            at: Landmark::Preempt(3),
            output: Output::DiskWrite { device: 0, id: 4, offset: 4096, data: vec![0xa5; 3 << 19] },
        },
    ];
    let state = vec![0x5a; 100_000];
    let sender = {
        let held = carry::encode(&held);
        let state = state.clone();
        std::thread::spawn(move || {
            primary.send_resync_held(&held).unwrap();
            primary.send_resync_begin(3, 11).unwrap();
            primary.send_state(&state[..]).unwrap();
            primary
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let resync = loop {
        assert!(Instant::now() < deadline, "no resync arrived");
        // The receiver hands the log on before the resync; the backup takes it in meanwhile.
        let _ = feed.next_item();
        if let Some(resync) = backup.take_resync(Duration::from_millis(1)) {
            break resync;
        }
    };
    assert_eq!((resync.exits, resync.outputs), (3, 11));
    let mut got = Vec::new();
    let mut reader = resync.state;
    reader.read_to_end(&mut got).unwrap();
    assert!(got == state, "the state differs");
    assert_eq!(carry::decode(&resync.held), Ok(held));
    let primary = sender.join().unwrap();

    // The next resync carries only what is held then (here: nothing).
    let sender = std::thread::spawn(move || {
        primary.send_resync_begin(5, 11).unwrap();
        primary.send_state(&[1u8, 2, 3][..]).unwrap();
        primary
    });
    let resync = loop {
        assert!(Instant::now() < deadline, "no second resync arrived");
        if let Some(resync) = backup.take_resync(Duration::from_millis(1)) {
            break resync;
        }
    };
    assert_eq!(resync.exits, 5);
    assert!(resync.held.is_empty(), "{} bytes of held outputs came again", resync.held.len());
    drop(sender.join().unwrap());
}

#[test]
fn a_backup_with_another_key_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    seal::generate(dir.path(), false).unwrap();
    let stranger = ChannelConfig { security: seal::Security::from_dir(dir.path()).unwrap(), ..relaxed() };
    let (primary, backup, _) = pair(&relaxed(), &stranger);
    let primary = primary.err().expect("the primary refuses a backup with another key").to_string();
    let backup = backup.err().expect("the backup is refused").to_string();
    assert!(primary.contains("does not hold this cluster's key"), "{primary}");
    assert!(backup.contains("keys differ"), "{backup}");
}

#[test]
fn a_backup_without_keys_is_refused_on_both_sides() {
    let plain = ChannelConfig { security: seal::Security::Insecure, ..relaxed() };
    let (primary, backup, _) = pair(&relaxed(), &plain);
    let primary = primary.err().expect("the primary refuses a backup without keys").to_string();
    let backup = backup.err().expect("the backup is refused").to_string();
    assert!(primary.contains("did not open a sealed channel"), "{primary}");
    assert!(backup.contains("sealed channel") && backup.contains("--insecure"), "{backup}");
}

#[test]
fn a_log_record_altered_on_the_wire_ends_the_channel() {
    let (mut stream, backup) = fake_primary(relaxed());
    let mut log = LogWriter::new(Vec::new(), &header()).unwrap();
    log.write(&Record::Interrupt { at: Landmark::Exit(1), vector: 40 }).unwrap();
    let first = log.offset();
    let mut wire = Vec::new();
    Message::Records(log.into_inner().unwrap()).encode_into(&mut wire).unwrap();
    stream.write_all(&wire).unwrap();
    // The next sealed record is forged: written on the socket under the seal, as a stranger
    // on the path would.
    let mut forged = 40u16.to_le_bytes().to_vec();
    forged.extend_from_slice(&[0x55; 40]);
    (&mut stream.get_ref()).write_all(&forged).unwrap();
    let mut feed = backup.feed(Duration::from_secs(5)).unwrap();
    let (got, end) = drain(&mut feed, Duration::from_secs(5));
    assert_eq!(got.iter().map(|(_, p)| *p).collect::<Vec<_>>(), vec![first]);
    assert!(matches!(&end, FeedItem::Lost(reason) if reason.contains("does not verify")), "{end:?}");
}
