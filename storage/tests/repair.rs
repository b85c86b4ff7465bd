//! Re-replication after a chunkserver dies or a replica turns out corrupt; status and fsck.

mod common;

use common::{pattern, Cluster};
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dead_chunkserver_replicas_are_recreated_elsewhere() {
    let mut c = Cluster::start("repair", 4, &["--lease-secs", "1"]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(70 * 1024 * 1024, 21);
    client.write_at("/f", 0, &data).unwrap();
    assert!(c.gfs_ok(&["fsck"]).contains("2 healthy, 0 under-replicated, 0 missing"));

    let st = client.stat("/f").unwrap();
    let victim = st.chunks[0].replicas[0].server.clone();
    let vi = c.cs.iter().position(|p| p.addr == victim).unwrap();
    c.kill_cs(vi);
    wait_until("the dead server to be noticed", || c.gfs_ok(&["status"]).contains("DOWN"));
    let t0 = Instant::now();
    wait_until("re-replication", || {
        client.stat("/f").unwrap().chunks.iter().all(|ch| {
            let live: Vec<_> = ch.replicas.iter().filter(|r| !r.stale && r.server != victim).collect();
            live.len() >= 3
        })
    });
    eprintln!("re-replicated within {:?} of the server being marked down", t0.elapsed());
    let fsck = c.gfs_ok(&["fsck"]);
    assert!(fsck.contains("0 under-replicated, 0 missing"), "{fsck}");
    let mut back = vec![0u8; data.len()];
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == data);
}

#[test]
fn corrupt_replica_is_replaced_then_dropped() {
    let c = Cluster::start("heal", 4, &[]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(2 * 1024 * 1024, 22);
    client.write_at("/f", 0, &data).unwrap();
    let st = client.stat("/f").unwrap();
    let holders: Vec<String> = st.chunks[0].replicas.iter().map(|r| r.server.clone()).collect();
    let vi = c.cs.iter().position(|p| p.addr == holders[0]).unwrap();
    let file = c.chunk_files(vi).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100_000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    // Read straight from the damaged replica: it refuses the block and reports itself.
    let (handle, version) = (st.chunks[0].handle, st.chunks[0].version);
    assert_eq!(
        common::read_replica(&holders[0], handle, version, data.len() as u64),
        Some(storage::error::ErrorKind::Corrupt)
    );
    // Reads through the client still succeed; the bad replica gets replaced and deleted.
    for _ in 0..5 {
        let mut back = vec![0u8; data.len()];
        client.read_at("/f", 0, &mut back).unwrap();
        assert!(back == data);
    }
    wait_until("the corrupt replica to be replaced", || {
        let ch = &client.stat("/f").unwrap().chunks[0];
        ch.replicas.iter().filter(|r| !r.corrupt && !r.stale).count() == 3
            && ch.replicas.iter().all(|r| r.server != holders[0])
    });
    let st = client.stat("/f").unwrap();
    assert!(st.chunks[0].replicas.iter().all(|r| r.server != holders[0]), "{st:?}");
    assert!(c.gfs_ok(&["fsck"]).contains("1 healthy"));
}
