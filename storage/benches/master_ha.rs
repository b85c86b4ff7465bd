//! The replicated master against the single master, side by side in one run: creates per
//! second (1 and 8 client threads) and compare_and_set latency, each measured on a single
//! `gfs master` and on a 3-replica `gfs master --peers` group in alternating rounds; then the
//! time from kill -9 of the leader to the first write the new leader acknowledges.
//!
//! `cargo bench -p storage --bench master_ha` (real processes on loopback, fsync on each).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/ha/mod.rs"]
mod ha;

use std::process::Stdio;
use std::time::{Duration, Instant};
use storage::Client;

const ROUNDS: usize = 3;
const CREATES: usize = 2000;
const CAS_OPS: usize = 500;

struct Figures {
    create_1: Vec<f64>,
    create_8: Vec<f64>,
    cas_p50: Vec<f64>,
    cas_p99: Vec<f64>,
}

impl Figures {
    fn new() -> Figures {
        Figures { create_1: Vec::new(), create_8: Vec::new(), cas_p50: Vec::new(), cas_p99: Vec::new() }
    }
}

fn creates_per_sec(c: &Client, dir: &str, threads: usize) -> f64 {
    c.mkdir(dir).expect("mkdir");
    let per = CREATES / threads;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..per {
                    c.create(&format!("{dir}/f{t}-{i}")).expect("create");
                }
            });
        }
    });
    (per * threads) as f64 / t0.elapsed().as_secs_f64()
}

/// p50 and p99 of compare_and_set, in microseconds.
fn cas_latency(c: &Client, name: &str) -> (f64, f64) {
    let (mut g, _) = c.register(name).expect("register");
    let mut lat = Vec::with_capacity(CAS_OPS);
    for _ in 0..CAS_OPS {
        let t0 = Instant::now();
        g = c.compare_and_set(name, g, "bench").expect("compare_and_set");
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

fn measure(c: &Client, round: usize, f: &mut Figures) {
    f.create_1.push(creates_per_sec(c, &format!("/b1-{round}"), 1));
    f.create_8.push(creates_per_sec(c, &format!("/b8-{round}"), 8));
    let (p50, p99) = cas_latency(c, &format!("bench-{round}"));
    f.cas_p50.push(p50);
    f.cas_p99.push(p99);
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = common::temp_dir("bench-master-ha");
    let single_addr = common::free_addr();
    let _single = common::KillOnDrop(
        common::gfs_command()
            .args(["master", "--dir", &dir.join("single").display().to_string(), "--listen", &single_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the single master"),
    );
    common::wait_listening(&single_addr);
    let mut group = ha::Replicas::start("bench-master-ha-group", 0, &[]);
    let single = Client::new(&single_addr);
    let replicated = group.client();
    let (mut s, mut r) = (Figures::new(), Figures::new());
    for round in 0..ROUNDS {
        measure(&single, round, &mut s);
        measure(&replicated, round, &mut r);
    }
    println!("gfs master, single vs 3 Raft replicas (median of {ROUNDS} alternating rounds, fsync on each):");
    println!("{:<34} {:>12} {:>12} {:>8}", "figure", "single", "3 replicas", "ratio");
    for (what, a, b) in [
        ("creates/s, 1 client thread", &s.create_1, &r.create_1),
        ("creates/s, 8 client threads", &s.create_8, &r.create_8),
        ("compare_and_set p50 (µs)", &s.cas_p50, &r.cas_p50),
        ("compare_and_set p99 (µs)", &s.cas_p99, &r.cas_p99),
    ] {
        let (a, b) = (median(a), median(b));
        println!("{what:<34} {a:>12.0} {b:>12.0} {:>8.2}", b / a);
    }

    // Failover: kill -9 the leader, time the first acknowledged write, bring it back.
    let mut took = Vec::new();
    for i in 0..ROUNDS {
        let leader = group.leader(Duration::from_secs(10));
        group.kill_master(leader);
        let t0 = Instant::now();
        replicated.create(&format!("/failover-{i}")).expect("a write after the kill");
        took.push(t0.elapsed().as_secs_f64() * 1e3);
        group.start_master(leader);
        // Wait until the restarted replica has caught up and follows (names the leader).
        common::Cluster::wait_until(
            "the restarted replica follows",
            Duration::from_secs(10),
            || matches!(group.direct(leader).register("x"), Err(e) if e.kind() == Some(storage::error::ErrorKind::NotLeader) && !e.to_string().contains("no leader")),
        );
    }
    println!(
        "kill -9 of the leader to the first write acknowledged by the new one: {} ms (median {:.0} ms; lease grants wait a further lease period)",
        took.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", "),
        median(&took)
    );
    drop(group);
    let _ = std::fs::remove_dir_all(&dir);
}
