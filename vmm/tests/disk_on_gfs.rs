//! The `disk` workload on a gfs disk (master + 3 chunkservers on loopback): every request goes to
//! the disk's backend thread and completes later as an event, so the guest reads back exactly
//! what it wrote; a recording of it replays to the same figures and state digest without gfs.

use ftvm_tests::gfs::Cluster;
use std::process::Output;

fn text(output: &Output) -> String {
    format!("{}\n--- stderr:\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn line<'a>(all: &'a str, prefix: &str) -> Option<&'a str> {
    all.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn the_disk_workload_on_gfs_checks_every_byte_and_its_recording_replays_without_gfs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(None, 3, dir.path()).expect("gfs cluster");
    cluster.create_disk("gfs:/vm/disk.img", "8M").unwrap();
    let log = dir.path().join("disk.log");
    let log = log.to_str().unwrap();
    let out = cluster
        .ftvm(&[
            "run",
            "--guest",
            "disk",
            "size=4",
            "bs=128",
            "ops=200",
            "--disk",
            "gfs:/vm/disk.img",
            "--record",
            log,
            "--state-digest",
        ])
        .unwrap();
    let recorded = text(&out);
    assert_eq!(out.status.code(), Some(0), "{recorded}");
    let result = line(&recorded, "disk: result ").unwrap_or_else(|| panic!("{recorded}"));
    assert!(result.ends_with(" mismatches=0"), "{recorded}");
    assert!(result.contains(&format!("verified_bytes={}", 2 * (4 << 20) + 200 * 4096)), "{recorded}");
    drop(cluster);

    // gfs is gone: the replay takes every completion from the log.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftvm")).args(["replay", log]).output().unwrap();
    let replayed = text(&out);
    assert!(replayed.contains("replay: ok"), "{replayed}");
    for prefix in ["disk: result ", "digest: ", "state-digest: "] {
        assert_eq!(line(&recorded, prefix), line(&replayed, prefix), "{prefix}\n{recorded}\n{replayed}");
    }
}
