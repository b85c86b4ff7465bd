//! The default lease, extended by heartbeats, keeps writes to a chunk from stalling for long:
//! a writer that never stops sees no gap of 5 s or more when the chunk's primary is killed -9 or
//! the master is restarted, and a lease that its primary keeps extending is not re-granted
//! (the chunk version stays) however long the writes go on.
//!
//! The cluster runs with the production defaults that matter here: the master's lease and
//! `--dead-after-secs`, and 1 s chunkserver heartbeats.

mod common;

use common::{pattern, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MOST_STALL: Duration = Duration::from_secs(5);

/// A cluster of three chunkservers with the production heartbeat and dead-after settings.
fn production_cluster(name: &str) -> Cluster {
    let mut c = Cluster::start(name, 3, &["--repair-interval-secs", "0"]);
    c.kill_master();
    c.dead_after_secs = 10;
    c.start_master();
    c.heartbeat_ms = 1000;
    for i in 0..3 {
        c.kill_cs(i);
        c.start_cs(i);
    }
    c.settle();
    c
}

/// Writes 4 KiB pieces to `/f` without pause until `stop`; returns the longest time between two
/// writes completing (or the first error) and how many writes went through.
fn writer(client: storage::Client, stop: Arc<AtomicBool>) -> JoinHandle<Result<(Duration, u64), String>> {
    std::thread::spawn(move || {
        let piece = pattern(4096, 5);
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        let mut writes = 0u64;
        while !stop.load(Ordering::Acquire) {
            let offset = (writes % 256) * 4096;
            client.write_at("/f", offset, &piece).map_err(|e| format!("write {writes}: {e}"))?;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            writes += 1;
        }
        Ok((longest, writes))
    })
}

fn primary_of(c: &Cluster) -> usize {
    let st = c.client().stat("/f").unwrap();
    let primary = st.chunks[0].primary.clone().expect("a lease while writes go on");
    c.cs.iter().position(|p| p.addr == primary).expect("a chunkserver of this cluster")
}

#[test]
fn a_dead_primary_stalls_writes_under_five_seconds() {
    let mut c = production_cluster("lease-dead-primary");
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, b"first").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let job = writer(c.client(), stop.clone());
    std::thread::sleep(Duration::from_millis(500)); // writes under way, the lease held
    let primary = primary_of(&c);
    let killed = Instant::now();
    c.kill_cs(primary);
    // Until writes have gone on a while under a new primary.
    Cluster::wait_until("a new primary", Duration::from_secs(30), || {
        client.stat("/f").is_ok_and(|st| st.chunks[0].primary.as_ref().is_some_and(|p| *p != c.cs[primary].addr))
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    let (longest, writes) = job.join().unwrap().unwrap();
    eprintln!("primary killed: longest stall {longest:?} ({writes} writes, new primary after {:?})", killed.elapsed());
    assert!(longest < MOST_STALL, "writes stalled {longest:?} after the primary died");
}

#[test]
fn a_master_restart_stalls_writes_under_five_seconds() {
    let mut c = production_cluster("lease-master-restart");
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, b"first").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let job = writer(c.client(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    c.kill_master();
    c.start_master();
    let restarted = Instant::now();
    // The restarted master grants no lease for one lease period; writes go on after it.
    std::thread::sleep(storage::master::DEFAULT_LEASE + Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let (longest, writes) = job.join().unwrap().unwrap();
    eprintln!("master restarted: longest stall {longest:?} ({writes} writes, {:?})", restarted.elapsed());
    assert!(longest < MOST_STALL, "writes stalled {longest:?} across a master restart");
}

#[test]
fn heartbeats_extend_a_lease_while_its_chunk_is_written() {
    let c = production_cluster("lease-extended");
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, b"first").unwrap();
    let version = client.stat("/f").unwrap().chunks[0].version;
    let stop = Arc::new(AtomicBool::new(false));
    let job = writer(c.client(), stop.clone());
    std::thread::sleep(storage::master::DEFAULT_LEASE * 3);
    stop.store(true, Ordering::Release);
    let (longest, writes) = job.join().unwrap().unwrap();
    let after = client.stat("/f").unwrap().chunks[0].version;
    eprintln!("extended: longest gap {longest:?} over {writes} writes");
    assert_eq!(after, version, "the lease was granted again (version {version} -> {after}) instead of extended");
}
