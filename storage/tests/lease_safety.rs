//! The two rules that keep two primaries from ordering mutations of one chunk at once, and
//! writes that go on while a replica holder is down.
//!
//! - A dead primary's lease is waited out: the master grants no new lease for the chunk before
//!   the old one has expired, since the "dead" primary may only be cut off from the master.
//! - A restarted master grants no lease for one lease period: it does not know which leases
//!   its previous run granted.
//!
//! The lower bounds below hold whatever the machine's speed: a lease granted for a write that
//! started at `t` expires no earlier than `t + lease`.

mod common;

use common::{fetch_replica, pattern, Cluster};
use std::time::{Duration, Instant};

/// The primary of chunk 0 of `path` as the master says, and the other replica holders.
fn holders(c: &Cluster, path: &str) -> (usize, Vec<usize>) {
    let st = c.client().stat(path).unwrap();
    let chunk = &st.chunks[0];
    let primary = chunk.primary.clone().expect("a write just took a lease");
    let index = |addr: &str| c.cs.iter().position(|p| p.addr == addr).expect("a chunkserver of this cluster");
    let others = chunk.replicas.iter().filter(|r| !r.stale && r.server != primary).map(|r| index(&r.server)).collect();
    (index(&primary), others)
}

#[test]
fn a_dead_primarys_unexpired_lease_is_waited_out() {
    const LEASE: Duration = Duration::from_secs(8);
    let mut c = Cluster::start("dead-primary", 3, &["--lease-secs", "8", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let before_grant = Instant::now();
    client.write_at("/f", 0, b"first").unwrap();
    let v1 = client.stat("/f").unwrap().chunks[0].version;
    let (primary, _) = holders(&c, "/f");
    c.kill_cs(primary);
    // The master declares the primary dead after 3 s; its lease still runs until at least
    // `before_grant + LEASE`, and no other replica may become primary before that.
    client.write_at("/f", 0, b"second").unwrap();
    let waited = before_grant.elapsed();
    assert!(waited >= LEASE, "a new primary took writes {waited:?} after the old lease was granted for {LEASE:?}");
    let st = client.stat("/f").unwrap();
    assert!(st.chunks[0].version > v1, "{st:?}");
    assert_ne!(st.chunks[0].primary.as_deref(), Some(c.cs[primary].addr.as_str()));
    let mut back = [0u8; 6];
    client.read_at("/f", 0, &mut back).unwrap();
    assert_eq!(&back, b"second");
}

#[test]
fn a_restarted_master_grants_no_lease_for_one_lease_period() {
    const LEASE: Duration = Duration::from_secs(5);
    let mut c = Cluster::start("master-grace", 3, &["--lease-secs", "5", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, b"first").unwrap();
    // The old primary may hold its lease for up to LEASE after the master dies.
    c.kill_master();
    let restarted = Instant::now();
    c.start_master();
    c.settle();
    // A client without the old lease cached has to ask the restarted master for one.
    c.client().write_at("/f", 0, b"second").unwrap();
    let waited = restarted.elapsed();
    assert!(waited >= LEASE, "the restarted master granted a lease {waited:?} after starting, within {LEASE:?}");
    let mut back = [0u8; 6];
    client.read_at("/f", 0, &mut back).unwrap();
    assert_eq!(&back, b"second");
}

/// A secondary dies between two writes: the second write's errors (a refused connection, a
/// failed secondary) are transient, the client retries until the master leaves the dead holder
/// out. When the holder comes back, its copy is stale and nobody serves it.
#[test]
fn writes_go_on_while_a_replica_holder_is_down() {
    let mut c = Cluster::start("holder-down", 3, &["--lease-secs", "2", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let first = pattern(1_000_000, 61);
    client.write_at("/f", 0, &first).unwrap();
    let (_, secondaries) = holders(&c, "/f");
    let down = secondaries[0];
    c.kill_cs(down);
    let second = pattern(1_000_000, 62);
    client.write_at("/f", 0, &second).unwrap();
    let mut back = vec![0u8; second.len()];
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == second, "the second write is not what a read returns");

    c.start_cs(down);
    c.settle();
    let st = client.stat("/f").unwrap();
    let chunk = &st.chunks[0];
    // Every replica the master calls current holds the second write; the one that missed it is not
    // among them.
    let current: Vec<&str> = chunk.replicas.iter().filter(|r| !r.stale).map(|r| r.server.as_str()).collect();
    assert!(!current.contains(&c.cs[down].addr.as_str()), "the holder that missed a write counts as current: {st:?}");
    for addr in current {
        let copy = fetch_replica(addr, chunk.handle, chunk.version, second.len() as u64).unwrap();
        assert!(copy == second, "{addr} holds other bytes at version {}", chunk.version);
    }
    for _ in 0..10 {
        client.read_at("/f", 0, &mut back).unwrap();
        assert!(back == second, "old data was served");
    }
}

/// Sends `signal` (`STOP`, `CONT`) to chunkserver `i`.
fn signal_cs(c: &Cluster, i: usize, signal: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(c.cs_pid(i).to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} chunkserver {i}");
}

fn is_live(c: &Cluster, i: usize) -> bool {
    let st = c.client().status().unwrap();
    st.servers.iter().any(|s| s.addr == c.cs[i].addr && s.live)
}

/// A secondary goes quiet (a stalled host, a cut link) without restarting while the primary's
/// lease runs on. The master leaves it out of the locations it hands out, so writes pass it by;
/// when its heartbeats resume it reports the version it had. That copy must count as stale, not
/// be served as current (a loaded CI machine once did exactly this to a streaming test).
#[test]
fn a_replica_holder_that_goes_quiet_under_a_lease_comes_back_stale() {
    let c = Cluster::start("holder-quiet", 3, &["--lease-secs", "60", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let first = pattern(1_000_000, 71);
    client.write_at("/f", 0, &first).unwrap();
    let (_, secondaries) = holders(&c, "/f");
    let quiet = secondaries[0];
    signal_cs(&c, quiet, "STOP");
    Cluster::wait_until("the master sees the stopped chunkserver as dead", Duration::from_secs(30), || {
        !is_live(&c, quiet)
    });
    // A client without the old location cached: the master's answer leaves the quiet holder out.
    let second = pattern(1_000_000, 72);
    c.client().write_at("/f", 0, &second).unwrap();
    signal_cs(&c, quiet, "CONT");
    Cluster::wait_until("the resumed chunkserver is live again", Duration::from_secs(30), || is_live(&c, quiet));
    c.settle();

    only_current_replicas_serve(&c, quiet, &second, "the holder that missed a write counts as current");
}

/// Chunk 0 of `/f`: chunkserver `left_out` is not counted current, every replica that is holds
/// `data` (read straight from it), and readers get `data`.
fn only_current_replicas_serve(c: &Cluster, left_out: usize, data: &[u8], counted: &str) {
    let st = c.client().stat("/f").unwrap();
    let chunk = &st.chunks[0];
    let current: Vec<&str> = chunk.replicas.iter().filter(|r| !r.stale).map(|r| r.server.as_str()).collect();
    assert!(!current.contains(&c.cs[left_out].addr.as_str()), "{counted}: {st:?}");
    for addr in current {
        let copy = fetch_replica(addr, chunk.handle, chunk.version, data.len() as u64).unwrap();
        assert!(copy == data, "{addr} holds other bytes at version {}", chunk.version);
    }
    let mut back = vec![0u8; data.len()];
    for _ in 0..10 {
        c.client().read_at("/f", 0, &mut back).unwrap();
        assert!(back == data, "old data was served");
    }
}

/// A replica can reach a chunk's current version without the lease's mutations: a
/// re-replication copy taken while a grant of that version was under way (the copy ends
/// before the primary hears of its lease, and later writes pass it by), or a `SetVersion` a
/// stalled chunkserver applies after the master gave up on it. Here a fourth chunkserver is
/// made to copy the chunk from a holder while the lease runs, as such a copy would be; the
/// master must not count its report of the current version, or readers get old bytes.
#[test]
fn a_replica_copied_under_a_lease_is_not_counted_current() {
    use storage::protocol::{ChunkReply, ChunkRequest, Conn, Reply};
    let c = Cluster::start("copied-under-lease", 4, &["--lease-secs", "60", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let first = pattern(300_000, 81);
    client.write_at("/f", 0, &first).unwrap();
    let st = client.stat("/f").unwrap();
    let chunk = st.chunks[0].clone();
    let (primary, _) = holders(&c, "/f");
    let outsider = (0..4).find(|&i| !chunk.replicas.iter().any(|r| r.server == c.cs[i].addr)).expect("a 4th server");
    let mut conn = Conn::connect(&c.cs[outsider].addr, Duration::from_secs(5)).unwrap();
    conn.send(&ChunkRequest::Replicate {
        handle: chunk.handle,
        version: chunk.version,
        source: c.cs[primary].addr.clone(),
    })
    .unwrap();
    assert!(matches!(conn.recv::<Reply<ChunkReply>>().unwrap(), Ok(ChunkReply::Copied)));
    // Written under the same lease, so at the same version, to the three holders only.
    let second = pattern(300_000, 82);
    client.write_at("/f", 0, &second).unwrap();
    assert_eq!(client.stat("/f").unwrap().chunks[0].version, chunk.version, "the lease ran on");
    c.settle();

    only_current_replicas_serve(&c, outsider, &second, "a copy taken under the lease counts as current");
}

/// A lease grant that reaches no replica (all of them down, not yet declared dead) must not
/// leave the chunk without one: nothing can have been written at a version no primary held, so
/// the replicas at the version before still hold every acknowledged write. (A kill storm once
/// ended with every replica stale and the chunk MISSING this way.)
#[test]
fn a_grant_no_replica_took_leaves_the_replicas_before_it_current() {
    let mut c = Cluster::start("grant-took-none", 3, &["--lease-secs", "1", "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(300_000, 71);
    client.write_at("/f", 0, &data).unwrap();
    let before = client.stat("/f").unwrap().chunks[0].version;
    // Past the lease: the next write needs a new grant.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..3 {
        c.kill_cs(i);
    }
    let once = storage::client::RetryPolicy {
        attempts: 1,
        unavailable_wait: Duration::ZERO,
        master_wait: Duration::from_secs(5),
    };
    let impatient = storage::Client::with_retry(&c.master_addr, once);
    assert!(
        impatient.write_at("/f", 0, &pattern(1000, 72)).is_err(),
        "a write with every chunkserver down went through"
    );
    for i in 0..3 {
        c.start_cs(i);
    }
    c.settle();
    let st = client.stat("/f").unwrap();
    let chunk = &st.chunks[0];
    assert_eq!(chunk.version, before, "the failed grant's version stayed: {st:?}");
    assert!(chunk.replicas.iter().all(|r| !r.stale), "replicas left stale by a grant none took: {st:?}");
    let mut back = vec![0u8; data.len()];
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == data, "the acknowledged write was not read back");
    let next = pattern(300_000, 73);
    client.write_at("/f", 0, &next).unwrap();
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == next, "a write after the failed grant was not read back");
}
