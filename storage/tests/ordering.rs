//! Leases and mutation order: concurrent overlapping writers leave every replica identical,
//! and a lease in use is extended by heartbeats instead of being re-granted.

mod common;

use common::{fetch_replica, pattern, Cluster};
use std::time::{Duration, Instant};

#[test]
fn concurrent_overlapping_writes_leave_replicas_identical() {
    let c = Cluster::start("order", 3, &["--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let len = 4 * 1024 * 1024;
    client.write_at("/f", 0, &vec![0u8; len]).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let client = c.client();
            s.spawn(move || {
                for i in 0..25u64 {
                    // Overlapping, unaligned ranges: only one serial order makes replicas agree.
                    let off = ((t * 7 + i * 13) % 40) * 100_000 + t * 333;
                    let data = pattern(150_000 + (i as usize % 5) * 10_000, t * 100 + i);
                    client.write_at("/f", off, &data).unwrap();
                }
            });
        }
    });
    let st = client.stat("/f").unwrap();
    let ch = &st.chunks[0];
    let copies: Vec<Vec<u8>> =
        ch.replicas.iter().map(|r| fetch_replica(&r.server, ch.handle, ch.version, len as u64).unwrap()).collect();
    assert_eq!(copies.len(), 3);
    assert!(copies[0] == copies[1] && copies[1] == copies[2], "replicas diverged");
    let mut back = vec![0u8; len];
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == copies[0]);
}

#[test]
fn leases_are_extended_while_writing_and_regranted_after() {
    let c = Cluster::start("lease", 3, &["--lease-secs", "2"]);
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, b"first").unwrap();
    let v0 = client.stat("/f").unwrap().chunks[0].version;
    // Keep writing for more than two lease periods: heartbeats extend the lease, the version stays.
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_millis(4500) {
        client.write_at("/f", i * 10 % 1000, b"0123456789").unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = client.stat("/f").unwrap();
    assert_eq!(st.chunks[0].version, v0, "lease was re-granted while in use");
    assert!(st.chunks[0].primary.is_some());
    // Idle past the lease: the next write needs a new lease, hence a new version.
    let idle = Instant::now();
    common::Cluster::wait_until("the idle lease expires", Duration::from_secs(20), || {
        client.stat("/f").is_ok_and(|st| st.chunks[0].primary.is_none())
    });
    assert!(idle.elapsed() >= Duration::from_millis(1000), "the lease ended long before its 2 s");
    client.write_at("/f", 0, b"again").unwrap();
    assert_eq!(client.stat("/f").unwrap().chunks[0].version, v0 + 1);
}
