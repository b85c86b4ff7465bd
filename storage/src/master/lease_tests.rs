//! Leases, chunk locations and chunk reports on a real master (its operation log in a
//! temporary directory). A chunkserver is either an entry in the master's registry whose
//! address proof is already known (heartbeats are then handed to [`Master::heartbeat`]
//! directly) at an address where nothing listens, so that a grant sent there fails; or, where
//! a grant must succeed, a real chunkserver started in this process.

use super::super::chunks::{Lease, ServerIdx};
use super::super::{Master, MasterConfig};
use crate::chunkserver::ChunkServer;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{ChunkHandle, DiskState, FileStat, Heartbeat, HeartbeatReply, Version};
use crate::test_support::{closed_addr, start_chunkserver, temp_dir, with_log};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Long enough that no lease set up by a test runs out while it runs.
const LEASE: Duration = Duration::from_secs(60);
const DEAD_AFTER: Duration = Duration::from_secs(30);
const PATH: &str = "/f";

fn config(dir: PathBuf) -> MasterConfig {
    let mut cfg = MasterConfig::new(dir, "127.0.0.1:0");
    cfg.lease = LEASE;
    cfg.dead_after = DEAD_AFTER;
    cfg.repair_interval = None;
    cfg.rebalance_interval = None;
    cfg
}

fn open_master(name: &str) -> Arc<Master> {
    Master::open(config(temp_dir(&format!("lease-{name}")))).expect("open a master")
}

/// The proof token a registered server shows in its heartbeats.
fn token_of(idx: ServerIdx) -> u64 {
    1000 + u64::from(idx)
}

/// Registers a chunkserver at `addr` as if it had proved its address, with `disk`.
fn register_at(m: &Master, addr: &str, disk: DiskState) -> ServerIdx {
    let mut meta = m.meta();
    let idx = meta.servers.upsert(addr, &format!("rack-{addr}")).expect("room for a server");
    let s = meta.servers.get_mut(idx).expect("just registered");
    s.token = token_of(idx);
    s.disk = disk;
    idx
}

/// Registers a chunkserver at an address where nothing listens.
fn register(m: &Master) -> ServerIdx {
    register_at(m, &closed_addr(), DiskState::Ok)
}

fn addr(m: &Master, s: ServerIdx) -> String {
    m.meta().servers.addr(s)
}

/// Makes server `s` look silent for longer than the master's dead-after.
fn silence(m: &Master, s: ServerIdx) {
    let mut meta = m.meta();
    let long_ago = Instant::now().checked_sub(DEAD_AFTER * 2).expect("the clock runs longer than a minute");
    meta.servers.get_mut(s).expect("registered").last_seen = long_ago;
}

fn set_disk(m: &Master, s: ServerIdx, disk: DiskState) {
    m.meta().servers.get_mut(s).expect("registered").disk = disk;
}

fn hb(m: &Master, s: ServerIdx) -> Heartbeat {
    Heartbeat {
        server: addr(m, s),
        rack: format!("rack-{}", addr(m, s)),
        fresh: false,
        chunks: Vec::new(),
        extend: Vec::new(),
        corrupt: Vec::new(),
        tokens: vec![token_of(s)],
        disk: DiskState::Ok,
    }
}

fn report(m: &Arc<Master>, s: ServerIdx, chunks: &[(ChunkHandle, Version)]) -> HeartbeatReply {
    m.heartbeat(Heartbeat { chunks: chunks.to_vec(), ..hb(m, s) }).expect("heartbeat accepted")
}

fn create(m: &Arc<Master>, path: &str) {
    m.commit(Record::CreateFile { path: path.to_string() }).expect("create the file");
}

/// Adds chunk `index` to `path` and moves it to `version`.
fn add_chunk(m: &Arc<Master>, path: &str, index: u64, version: Version) -> ChunkHandle {
    let handle = m.meta().state.chunks.reserve();
    m.commit(Record::AddChunk { path: path.to_string(), index, handle }).expect("add a chunk");
    if version != 1 {
        m.commit(Record::SetVersion { handle, version }).expect("set the chunk's version");
    }
    handle
}

fn set_replicas(m: &Master, h: ChunkHandle, servers: &[ServerIdx]) {
    m.meta().state.chunks.get_mut(h).expect("known chunk").set_replicas(servers);
}

fn version(m: &Master, h: ChunkHandle) -> Version {
    m.meta().state.chunks.get(h).expect("known chunk").version
}

/// A lease on `h` at `version` held by `replicas[0]`, running until `expires`.
fn put_lease(m: &Master, h: ChunkHandle, version: Version, replicas: &[ServerIdx], expires: Instant) {
    let lease = Lease { primary: replicas[0], version, expires, replicas: replicas.to_vec() };
    m.meta().leases.insert(h, lease);
}

fn in_a_lease() -> Instant {
    Instant::now() + LEASE
}

fn a_second_ago() -> Instant {
    Instant::now().checked_sub(Duration::from_secs(1)).expect("the clock runs longer than a second")
}

/// A chunk of `PATH` at version 2 on three servers, leased to the first until `expires`.
fn leased_chunk(m: &Arc<Master>, expires: Instant) -> (ChunkHandle, [ServerIdx; 3]) {
    let servers = [register(m), register(m), register(m)];
    create(m, PATH);
    let h = add_chunk(m, PATH, 0, 2);
    set_replicas(m, h, &servers);
    put_lease(m, h, 2, &servers, expires);
    (h, servers)
}

fn kind(r: Result<impl std::fmt::Debug>) -> ErrorKind {
    match r {
        Err(e) => e.kind().unwrap_or_else(|| panic!("an error without a kind: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn chunk_replicas(stat: &FileStat) -> Vec<(String, Version, bool, bool)> {
    let mut v: Vec<_> =
        stat.chunks[0].replicas.iter().map(|r| (r.server.clone(), r.version, r.stale, r.corrupt)).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<(String, Version, bool, bool)>) -> Vec<(String, Version, bool, bool)> {
    v.sort();
    v
}

#[test]
fn a_report_of_the_current_version_counts_the_replica_an_older_one_is_stale_once_and_a_newer_one_neither() {
    let m = open_master("report");
    let (a, b, c) = (register(&m), register(&m), register(&m));
    create(&m, PATH);
    let h = add_chunk(&m, PATH, 0, 2);
    let ((), log) = with_log(|| {
        report(&m, a, &[(h, 2)]);
        report(&m, b, &[(h, 1)]);
        report(&m, b, &[(h, 1)]);
        report(&m, c, &[(h, 3)]);
    });
    assert!(!log.contains("too many replicas"), "{log}");
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(chunk_replicas(&stat), sorted(vec![(addr(&m, a), 2, false, false), (addr(&m, b), 1, true, false)]));

    // Back at the current version: counted, and no longer stale.
    report(&m, b, &[(h, 2)]);
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(chunk_replicas(&stat), sorted(vec![(addr(&m, a), 2, false, false), (addr(&m, b), 2, false, false)]));
    assert!(m.meta().stale.is_empty(), "no stale list is kept once empty");
}

#[test]
fn a_replica_reporting_the_current_version_without_having_been_granted_it_is_stale_once() {
    let m = open_master("custody");
    let (a, b) = (register(&m), register(&m));
    create(&m, PATH);
    let h = add_chunk(&m, PATH, 0, 2);
    {
        let mut meta = m.meta();
        meta.custody.begin_grant(h, 2, &[a]).expect("no grant under way");
        meta.custody.end_grant(h, 2, &[a]);
    }
    report(&m, a, &[(h, 2)]);
    report(&m, b, &[(h, 2)]);
    report(&m, b, &[(h, 2)]);
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(chunk_replicas(&stat), sorted(vec![(addr(&m, a), 2, false, false), (addr(&m, b), 2, true, false)]));
}

#[test]
fn a_chunk_the_master_has_freed_is_reported_as_garbage_and_a_live_one_is_not() {
    let m = open_master("garbage");
    let a = register(&m);
    create(&m, PATH);
    let kept = add_chunk(&m, PATH, 0, 1);
    create(&m, "/gone");
    let gone = add_chunk(&m, "/gone", 0, 1);
    m.commit(Record::Delete { path: "/gone".into() }).expect("delete");
    let reply = report(&m, a, &[(kept, 1), (gone, 1)]);
    assert_eq!(reply.garbage, vec![gone]);
    assert_eq!(reply.lease_ms, LEASE.as_millis() as u64);
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(chunk_replicas(&stat), vec![(addr(&m, a), 1, false, false)]);
}

#[test]
fn a_shadow_counts_a_replica_ahead_of_it_as_current_and_tells_no_one_to_drop_chunks() {
    let mut cfg = config(temp_dir("lease-shadow"));
    cfg.shadow_of = Some(closed_addr());
    let m = Master::open(cfg).expect("open a shadow");
    let (a, b, c) = (register(&m), register(&m), register(&m));
    let h = {
        let mut meta = m.meta();
        let h = meta.state.chunks.reserve();
        for rec in [
            Record::CreateFile { path: PATH.into() },
            Record::AddChunk { path: PATH.into(), index: 0, handle: h },
            Record::SetVersion { handle: h, version: 2 },
            Record::CreateFile { path: "/gone".into() },
            Record::AddChunk { path: "/gone".into(), index: 0, handle: h + 1 },
            Record::Delete { path: "/gone".into() },
        ] {
            meta.state.apply(&rec).expect("apply");
        }
        h
    };
    let reply = report(&m, a, &[(h, 3), (h + 1, 1)]);
    assert!(reply.garbage.is_empty(), "a shadow names no garbage: {:?}", reply.garbage);
    report(&m, b, &[(h, 2)]);
    report(&m, c, &[(h, 1)]);
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(
        chunk_replicas(&stat),
        sorted(vec![(addr(&m, a), 2, false, false), (addr(&m, b), 2, false, false), (addr(&m, c), 1, true, false)])
    );
}

#[test]
fn a_fresh_registration_forgets_that_servers_leases_stale_and_corrupt_entries_only() {
    let m = open_master("fresh");
    let (a, b) = (register(&m), register(&m));
    create(&m, PATH);
    let (h1, h2) = (add_chunk(&m, PATH, 0, 2), add_chunk(&m, PATH, 1, 2));
    set_replicas(&m, h1, &[a, b]);
    set_replicas(&m, h2, &[a, b]);
    put_lease(&m, h1, 2, &[a, b], in_a_lease());
    put_lease(&m, h2, 2, &[b, a], in_a_lease());
    {
        let mut meta = m.meta();
        meta.stale.insert(h1, vec![(a, 1), (b, 1)]);
        meta.corrupt.insert(h2, vec![a, b]);
    }
    m.heartbeat(Heartbeat { fresh: true, ..hb(&m, a) }).expect("heartbeat accepted");
    let meta = m.meta();
    assert!(!meta.leases.contains_key(&h1), "the lease a held is gone");
    assert_eq!(meta.leases.get(&h2).map(|l| l.primary), Some(b), "b's lease stays");
    assert_eq!(meta.stale.get(&h1), Some(&vec![(b, 1)]));
    assert_eq!(meta.corrupt.get(&h2), Some(&vec![b]));
    assert_eq!(meta.state.chunks.get(h1).expect("chunk").replicas().collect::<Vec<_>>(), vec![b]);
}

#[test]
fn heartbeats_extend_only_the_primarys_unexpired_lease_at_its_version() {
    let m = open_master("extend");
    let (a, b) = (register(&m), register(&m));
    create(&m, PATH);
    let h: Vec<ChunkHandle> = (0..4).map(|i| add_chunk(&m, PATH, i, 2)).collect();
    let soon = Instant::now() + Duration::from_secs(1);
    put_lease(&m, h[0], 2, &[a, b], soon);
    put_lease(&m, h[1], 2, &[b, a], soon);
    put_lease(&m, h[2], 2, &[a, b], soon);
    put_lease(&m, h[3], 2, &[a, b], a_second_ago());
    let sent = Instant::now();
    let reply = m
        .heartbeat(Heartbeat { extend: vec![(h[0], 2), (h[1], 2), (h[2], 1), (h[3], 2)], ..hb(&m, a) })
        .expect("heartbeat accepted");
    assert_eq!(reply.extended, vec![h[0]]);
    let meta = m.meta();
    assert!(meta.leases[&h[0]].expires >= sent + LEASE, "extended by a whole lease from the heartbeat");
    assert!(meta.leases[&h[1]].expires <= soon, "another primary's lease is not extended");
}

#[test]
fn a_disk_state_in_a_heartbeat_is_what_the_master_then_goes_by_and_says_once() {
    let m = open_master("disk");
    let a = register(&m);
    let full = format!("chunkserver {} reports its disk full", addr(&m, a));
    let beat = |disk| with_log(|| m.heartbeat(Heartbeat { disk, ..hb(&m, a) }).expect("heartbeat accepted")).1;
    assert!(beat(DiskState::Full).contains(&full));
    assert!(!m.meta().servers.accepts_writes(a));
    assert!(!beat(DiskState::Full).contains(&full), "said once");
    assert!(beat(DiskState::Ok).contains("reports its disk usable again (was full)"));
    assert!(m.meta().servers.accepts_writes(a));
}

#[test]
fn a_corrupt_replica_is_marked_once_and_listed_last_and_one_of_an_unknown_chunk_is_dropped() {
    let m = open_master("corrupt");
    let (a, b, c) = (register(&m), register(&m), register(&m));
    create(&m, PATH);
    let h = add_chunk(&m, PATH, 0, 2);
    set_replicas(&m, h, &[a, b, c]);
    m.heartbeat(Heartbeat { corrupt: vec![h, 9999], ..hb(&m, a) }).expect("heartbeat accepted");
    m.heartbeat(Heartbeat { corrupt: vec![h], ..hb(&m, a) }).expect("heartbeat accepted");
    assert_eq!(m.meta().corrupt.get(&h), Some(&vec![a]));
    assert!(!m.meta().corrupt.contains_key(&9999), "a report of a chunk the master does not know is not kept");
    let (_, loc) = m.get_chunk(PATH, 0, false).expect("location");
    assert_eq!(loc.expect("a chunk").replicas.last(), Some(&addr(&m, a)));

    m.report_corrupt(&addr(&m, b), h);
    m.report_corrupt(&addr(&m, b), h);
    assert_eq!(m.meta().corrupt.get(&h), Some(&vec![a, b]));
    let stat = m.stat(PATH).expect("stat");
    assert_eq!(
        chunk_replicas(&stat),
        sorted(vec![(addr(&m, a), 2, false, true), (addr(&m, b), 2, false, true), (addr(&m, c), 2, false, false)])
    );
    let (_, loc) = m.get_chunk(PATH, 0, false).expect("location");
    assert_eq!(loc.expect("a chunk").replicas[0], addr(&m, c));
}

#[test]
fn a_read_location_names_the_chunk_its_version_and_the_remaining_lease() {
    let m = open_master("read");
    let (h, [a, b, c]) = leased_chunk(&m, in_a_lease());
    m.commit(Record::ExtendSize { path: PATH.into(), size: 1234 }).expect("extend");
    let (size, loc) = m.get_chunk(PATH, 0, false).expect("location");
    let loc = loc.expect("a chunk");
    assert_eq!((size, loc.handle, loc.version, loc.primary.clone()), (1234, h, 2, None));
    assert_eq!(loc.replicas, vec![addr(&m, a), addr(&m, b), addr(&m, c)]);
    assert!(loc.lease_ms > LEASE.as_millis() as u64 / 2, "lease_ms {}", loc.lease_ms);
    assert_eq!(m.get_chunk(PATH, 7, false).expect("past the end"), (1234, None));

    put_lease(&m, h, 2, &[a, b, c], a_second_ago());
    assert_eq!(m.get_chunk(PATH, 0, false).expect("location").1.expect("a chunk").lease_ms, 0);
    put_lease(&m, h, 1, &[a, b, c], in_a_lease());
    assert_eq!(m.get_chunk(PATH, 0, false).expect("location").1.expect("a chunk").lease_ms, 0);
}

#[test]
fn a_replica_on_a_failing_disk_is_left_out_while_another_can_serve() {
    let m = open_master("failing");
    let (a, b) = (register(&m), register(&m));
    create(&m, PATH);
    let h = add_chunk(&m, PATH, 0, 2);
    set_replicas(&m, h, &[a, b]);
    set_disk(&m, a, DiskState::Failing);
    let replicas = |m: &Arc<Master>| m.get_chunk(PATH, 0, false).expect("location").1.expect("a chunk").replicas;
    assert_eq!(replicas(&m), vec![addr(&m, b)]);
    set_disk(&m, b, DiskState::Failing);
    assert_eq!(replicas(&m), vec![addr(&m, a), addr(&m, b)], "failing replicas still serve when all are");
}

#[test]
fn stat_names_the_primary_of_an_unexpired_lease_at_the_current_version_only() {
    let m = open_master("stat");
    let (h, [a, b, c]) = leased_chunk(&m, in_a_lease());
    let primary = |m: &Arc<Master>| m.stat(PATH).expect("stat").chunks[0].primary.clone();
    assert_eq!(primary(&m), Some(addr(&m, a)));
    put_lease(&m, h, 2, &[a, b, c], a_second_ago());
    assert_eq!(primary(&m), None);
    put_lease(&m, h, 1, &[a, b, c], in_a_lease());
    assert_eq!(primary(&m), None);
    m.commit(Record::Mkdir { path: "/d".into() }).expect("mkdir");
    assert!(m.stat("/d").expect("stat a directory").is_dir);
}

#[test]
fn a_valid_lease_with_every_replica_up_is_handed_out_again() {
    let m = open_master("reuse");
    let (h, [a, ..]) = leased_chunk(&m, in_a_lease());
    m.commit(Record::ExtendSize { path: PATH.into(), size: 99 }).expect("extend");
    let (size, loc) = m.get_chunk(PATH, 0, true).expect("the lease held is enough");
    let loc = loc.expect("a chunk");
    assert_eq!((size, loc.handle, loc.version, loc.primary), (99, h, 2, Some(addr(&m, a))));
    assert_eq!(version(&m, h), 2);
}

#[test]
fn a_chunk_shared_with_a_snapshot_is_copied_before_it_is_written() {
    let m = open_master("shared");
    let (h, _) = leased_chunk(&m, in_a_lease());
    m.commit(Record::Snapshot { src: PATH.into(), dst: "/snap".into() }).expect("snapshot");
    // Its lease would do for a write; the copy comes first, and here no replica can make it.
    let e = m.get_chunk(PATH, 0, true).expect_err("no replica can copy the chunk");
    assert_eq!(e.kind(), Some(ErrorKind::NoReplicas));
    assert!(e.to_string().contains("could copy"), "{e}");
    assert_eq!(m.meta().state.ns.file(PATH).expect("file").chunks.get(0), Some(h));
}

#[test]
fn a_lease_whose_primary_is_down_or_no_longer_a_replica_is_waited_out() {
    let m = open_master("primary-down");
    let (h, [a, b, c]) = leased_chunk(&m, in_a_lease());
    silence(&m, a);
    assert_eq!(kind(m.get_chunk(PATH, 0, true)), ErrorKind::Unavailable);
    register_at(&m, &addr(&m, a), DiskState::Ok);
    set_replicas(&m, h, &[b, c]);
    assert_eq!(kind(m.get_chunk(PATH, 0, true)), ErrorKind::Unavailable);
    assert_eq!(version(&m, h), 2);
}

/// `prepare` spoils a valid lease on a chunk whose replicas are unreachable: the master must
/// try a new grant, which no replica takes.
fn spoiled_lease_is_replaced(name: &str, prepare: impl FnOnce(&Arc<Master>, ChunkHandle, [ServerIdx; 3])) {
    let m = open_master(name);
    let (h, servers) = leased_chunk(&m, in_a_lease());
    prepare(&m, h, servers);
    assert_eq!(kind(m.get_chunk(PATH, 0, true)), ErrorKind::NoReplicas, "{name}");
    assert_eq!(version(&m, h), 2, "{name}: a grant no replica took is undone");
}

#[test]
fn a_lease_with_a_quiet_or_sick_replica_or_that_expired_is_replaced() {
    spoiled_lease_is_replaced("quiet-dead", |m, _, [_, _, c]| silence(m, c));
    spoiled_lease_is_replaced("quiet-dropped", |m, h, [a, b, _]| set_replicas(m, h, &[a, b]));
    spoiled_lease_is_replaced("sick", |m, _, [_, b, _]| set_disk(m, b, DiskState::Full));
    spoiled_lease_is_replaced("expired", |m, h, servers| put_lease(m, h, 2, &servers, a_second_ago()));
    spoiled_lease_is_replaced("old-version", |m, h, servers| put_lease(m, h, 1, &servers, in_a_lease()));
}

#[test]
fn the_master_says_why_it_replaces_a_lease() {
    const SICK: &str = "replica's disk is full or failing under a lease: new version without it";
    const QUIET: &str = "replica gone quiet under a lease: new version";
    let m = open_master("why-sick");
    let (_, [_, b, _]) = leased_chunk(&m, in_a_lease());
    set_disk(&m, b, DiskState::Full);
    let (_, log) = with_log(|| m.get_chunk(PATH, 0, true));
    assert!(log.contains(SICK) && !log.contains(QUIET), "{log}");
    let m = open_master("why-quiet");
    let (_, [_, _, c]) = leased_chunk(&m, in_a_lease());
    silence(&m, c);
    let (_, log) = with_log(|| m.get_chunk(PATH, 0, true));
    assert!(log.contains(QUIET) && !log.contains(SICK), "{log}");
}

#[test]
fn a_lease_is_kept_when_no_replicas_disk_takes_writes() {
    let m = open_master("all-full");
    let (h, servers) = leased_chunk(&m, in_a_lease());
    for s in servers {
        set_disk(&m, s, DiskState::Full);
    }
    let (_, loc) = m.get_chunk(PATH, 0, true).expect("nothing to gain from a new version");
    assert_eq!(loc.expect("a chunk").primary, Some(addr(&m, servers[0])));
    assert_eq!(version(&m, h), 2);
}

#[test]
fn a_primary_whose_disk_is_full_is_asked_to_give_its_lease_up() {
    let m = open_master("primary-full");
    let (h, [a, ..]) = leased_chunk(&m, in_a_lease());
    set_disk(&m, a, DiskState::Full);
    // It is alive, so it is asked to give the lease up, and here cannot be reached.
    match m.get_chunk(PATH, 0, true) {
        Err(e @ GfsError::Fs(_)) if e.kind() == Some(ErrorKind::Unavailable) => {
            assert!(e.to_string().contains("could not be revoked"), "{e}")
        }
        other => panic!("expected the revoke to fail, got {other:?}"),
    }
    assert_eq!(version(&m, h), 2);
}

#[test]
fn a_restarted_master_grants_no_lease_for_a_lease_period() {
    let dir = temp_dir("lease-restart");
    let m = Master::open(config(dir.clone())).expect("open");
    create(&m, PATH);
    drop(m);
    let m = Master::open(config(dir)).expect("reopen");
    register(&m);
    assert_eq!(kind(m.get_chunk(PATH, 0, true)), ErrorKind::Unavailable);
}

#[test]
fn a_new_chunk_goes_to_live_servers_and_is_refused_as_disk_full_when_every_disk_is_full() {
    let m = open_master("new-chunk");
    let (a, b) = (register(&m), register(&m));
    create(&m, PATH);
    // Placed on a and b, which cannot be reached: no replica takes it.
    assert_eq!(kind(m.get_chunk(PATH, 0, true)), ErrorKind::NoReplicas);
    set_disk(&m, a, DiskState::Full);
    set_disk(&m, b, DiskState::Full);
    create(&m, "/g");
    assert_eq!(kind(m.get_chunk("/g", 0, true)), ErrorKind::DiskFull);
}

#[test]
fn a_record_append_goes_to_the_last_chunk_unless_the_client_asks_for_a_later_one() {
    let m = open_master("append");
    let servers = [register(&m), register(&m), register(&m)];
    create(&m, PATH);
    let chunks: Vec<ChunkHandle> = (0..2).map(|i| add_chunk(&m, PATH, i, 2)).collect();
    for &h in &chunks {
        set_replicas(&m, h, &servers);
        put_lease(&m, h, 2, &servers, in_a_lease());
    }
    for min_index in [0, 1] {
        let (index, loc) = m.append_chunk(PATH, min_index).expect("the last chunk is leased");
        assert_eq!((index, loc.handle), (1, chunks[1]), "min_index {min_index}");
    }
    // A later chunk is added (and, its servers unreachable, not leased).
    for min_index in [2, 4] {
        assert_eq!(kind(m.append_chunk(PATH, min_index)), ErrorKind::NoReplicas);
        let added = m.meta().state.ns.file(PATH).expect("file").chunks.get(min_index).unwrap_or(0);
        assert_ne!(added, 0, "chunk {min_index} added");
    }
    create(&m, "/empty");
    assert_eq!(kind(m.append_chunk("/empty", 0)), ErrorKind::NoReplicas);
    assert_ne!(m.meta().state.ns.file("/empty").expect("file").chunks.get(0).unwrap_or(0), 0);
}

/// Real chunkservers in this process, registered with the master under their real address.
fn start_chunkservers(m: &Arc<Master>, name: &str, n: usize) -> Vec<(Arc<ChunkServer>, ServerIdx)> {
    (0..n)
        .map(|i| {
            let cs = start_chunkserver(&format!("lease-{name}-cs{i}"));
            let idx = register_at(m, &cs.addr, DiskState::Ok);
            (cs, idx)
        })
        .collect()
}

fn granted_to(m: &Master, h: ChunkHandle) -> Vec<ServerIdx> {
    let mut v = m.meta().leases.get(&h).expect("a lease").replicas.clone();
    v.sort();
    v
}

#[test]
fn a_grant_reaches_the_live_replicas_that_take_writes_and_runs_a_lease_length() {
    let m = open_master("grant");
    let cs = start_chunkservers(&m, "grant", 3);
    let [a, b, c] = [cs[0].1, cs[1].1, cs[2].1];
    create(&m, PATH);
    let h = add_chunk(&m, PATH, 0, 2);
    set_replicas(&m, h, &[a, b, c]);

    let before = Instant::now();
    let (_, loc) = m.get_chunk(PATH, 0, true).expect("a grant");
    assert_eq!(loc.expect("a chunk").version, 3);
    assert_eq!(granted_to(&m, h), vec![a, b, c]);
    assert!(m.meta().leases[&h].expires >= before + LEASE, "a lease runs for the lease length");

    // A corrupt replica is left out of the next version, and so is one whose disk is full.
    m.meta().corrupt.insert(h, vec![c]);
    m.meta().leases.remove(&h);
    m.get_chunk(PATH, 0, true).expect("a grant");
    assert_eq!((version(&m, h), granted_to(&m, h)), (4, vec![a, b]));
    set_replicas(&m, h, &[a, b, c]);
    set_disk(&m, b, DiskState::Full);
    m.meta().leases.remove(&h);
    m.get_chunk(PATH, 0, true).expect("a grant");
    assert_eq!((version(&m, h), granted_to(&m, h)), (5, vec![a]));

    // No replica takes writes: the ones not corrupt still get the version.
    set_replicas(&m, h, &[a, b, c]);
    set_disk(&m, a, DiskState::Full);
    set_disk(&m, c, DiskState::Full);
    m.meta().leases.remove(&h);
    m.get_chunk(PATH, 0, true).expect("a grant");
    assert_eq!((version(&m, h), granted_to(&m, h)), (6, vec![a, b]));

    // Every replica corrupt: all of them still get it.
    set_replicas(&m, h, &[a, b, c]);
    m.meta().corrupt.insert(h, vec![a, b, c]);
    for s in [a, b, c] {
        set_disk(&m, s, DiskState::Ok);
    }
    m.meta().leases.remove(&h);
    m.get_chunk(PATH, 0, true).expect("a grant");
    assert_eq!((version(&m, h), granted_to(&m, h)), (7, vec![a, b, c]));
}
