//! A shadow master tails the master's log and keeps serving reads when the master dies.

mod common;

use common::{pattern, Cluster};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn shadow_serves_reads_after_the_master_dies() {
    let mut c = Cluster::start("shadow", 0, &[]);
    let shadow_addr = common::free_addr();
    let log = std::fs::File::create(c.dir.join("shadow.log")).unwrap();
    let _shadow = common::KillOnDrop(
        common::gfs_command()
            .args(["master", "--dir"])
            .arg(c.dir.join("shadow"))
            .args(["--listen", &shadow_addr, "--shadow-of", &c.master_addr, "-v"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    common::wait_listening(&shadow_addr);
    c.shadows.push(shadow_addr.clone());
    for i in 0..3 {
        c.cs.push(common::ChunkServerProc {
            addr: common::free_addr(),
            dir: c.dir.join(format!("cs{i}")),
            rack: format!("r{i}"),
            child: None,
        });
        c.start_cs(i);
    }
    c.settle();
    let client = c.client();
    client.mkdir("/d").unwrap();
    client.create("/d/f").unwrap();
    let data = pattern(3_000_000, 41);
    client.write_at("/d/f", 0, &data).unwrap();

    let via_shadow = storage::Client::new(&shadow_addr);
    let t0 = Instant::now();
    // Caught up with the log, and told by every chunkserver where the replicas are.
    let ready = |s: storage::FileStat| {
        s.size == data.len() as u64 && s.chunks.iter().all(|ch| ch.replicas.iter().filter(|r| !r.stale).count() == 3)
    };
    while !via_shadow.stat("/d/f").map(ready).unwrap_or(false) {
        assert!(t0.elapsed() < Duration::from_secs(20), "shadow never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.kill_master();
    let mut back = vec![0u8; data.len()];
    assert_eq!(via_shadow.read_at("/d/f", 0, &mut back).unwrap(), data.len());
    assert!(back == data);
    let out = common::gfs_command().args(["--master", &shadow_addr, "ls", "/d"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("3000000 f"));
    let out = common::gfs_command().args(["--master", &shadow_addr, "mkdir", "/x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only shadow"));
}
