//! The background scrubber: corruption in data nobody reads is found and repaired.

mod common;

use common::{pattern, wait_listening, ChunkServerProc, Cluster};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Adds chunkserver `i` to the cluster, started with `extra` flags (the harness's own
/// `start_cs` takes none).
fn start_cs_with(c: &mut Cluster, extra: &[&str]) {
    let i = c.cs.len();
    c.cs.push(ChunkServerProc {
        addr: common::free_addr(),
        dir: c.dir.join(format!("cs{i}")),
        rack: format!("rack{i}"),
        child: None,
    });
    let p = &c.cs[i];
    let log = std::fs::OpenOptions::new().create(true).append(true).open(c.dir.join(format!("cs{i}.log"))).unwrap();
    let child = common::gfs_command()
        .args(["chunkserver", "--master", &c.master_addr, "--listen", &p.addr, "--rack", &p.rack])
        .arg("--dir")
        .arg(&p.dir)
        .args(["--heartbeat-ms", &c.heartbeat_ms.to_string()])
        .args(extra)
        .arg("-v")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn gfs chunkserver");
    c.cs[i].child = Some(child);
    wait_listening(&c.cs[i].addr);
}

#[test]
fn the_scrubber_finds_a_corrupt_replica_and_it_is_replaced() {
    // Four chunkservers: three hold the chunk, the fourth is where the master re-replicates.
    let mut c = Cluster::start("scrub", 0, &[]);
    for _ in 0..4 {
        start_cs_with(&mut c, &["--scrub-interval-secs", "1"]);
    }
    c.settle();
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(5 * 1024 * 1024 + 12_345, 31);
    client.write_at("/f", 0, &data).unwrap();
    let st = client.stat("/f").unwrap();
    assert_eq!(st.chunks.len(), 1, "{st:?}");
    let holders: Vec<String> = st.chunks[0].replicas.iter().map(|r| r.server.clone()).collect();
    assert_eq!(holders.len(), 3, "{st:?}");

    // Flip bytes in one replica's data file behind gfs's back; nothing reads it through gfs.
    let victim = holders[1].clone();
    let vi = c.cs.iter().position(|p| p.addr == victim).unwrap();
    let file = c.chunk_files(vi).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    for off in [3_000_000, 3_000_001, 4_200_000] {
        bytes[off] ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();

    let t0 = Instant::now();
    loop {
        let ch = &client.stat("/f").unwrap().chunks[0];
        let good = ch.replicas.iter().filter(|r| !r.corrupt && !r.stale).count();
        if good == 3 && ch.replicas.len() == 3 && ch.replicas.iter().all(|r| r.server != victim) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the corrupt replica was not replaced: {ch:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("corrupt replica found by the scrubber and replaced within {:?}", t0.elapsed());

    // It was the scrubber (not a read) that found it, and the dropped replica's files are gone.
    let log = std::fs::read_to_string(c.dir.join(format!("cs{vi}.log"))).unwrap();
    assert!(log.contains("scrub: chunk"), "no scrub report in the victim's log");
    let t1 = Instant::now();
    while !c.chunk_files(vi).is_empty() {
        assert!(t1.elapsed() < Duration::from_secs(10), "the corrupt replica's files were not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fsck = c.gfs_ok(&["fsck"]);
    assert!(fsck.contains("1 healthy, 0 under-replicated, 0 missing"), "{fsck}");

    let mut back = vec![0u8; data.len()];
    assert_eq!(client.read_at("/f", 0, &mut back).unwrap(), data.len());
    assert!(back == data, "file read back differs");
}
