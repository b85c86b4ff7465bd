//! A chunkserver whose disk fills up or returns I/O errors (issue 15, point 4), with real
//! faults (`ftvm_tests::disks`): a small tmpfs filled to the last byte (ENOSPC), and an ext4
//! file system on a loop device that the kernel shuts down (EIO). Writes go on without a
//! failure, gfs routes around the sick chunkserver and copies its chunks to a fourth one, and
//! everything written reads back; a full disk takes chunks again once space returns. Needs root.

mod common;

use common::{pattern, Cluster};
use ftvm_tests::disks::{fill, LoopExt4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use storage::protocol::DiskState;
use storage::Client;

/// Mounts a `size` tmpfs at `dir` (unmounted when the cluster is dropped); false if not root.
fn mount_tmpfs(c: &mut Cluster, dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        c.mounts.push(dir.to_path_buf());
    }
    ok
}

/// The master's view of chunkserver `addr`'s disk.
fn disk_of(client: &Client, addr: &str) -> Option<DiskState> {
    client.status().ok()?.servers.into_iter().find(|s| s.addr == addr).map(|s| s.disk)
}

fn log(c: &Cluster, name: &str) -> String {
    std::fs::read_to_string(c.dir.join(name)).unwrap_or_default()
}

/// Writes `n` pieces of 256 KiB at fresh offsets of `path` (each needs new space on every
/// replica), each checked to succeed; returns the longest a write took.
fn write_pieces(client: &Client, path: &str, first: u64, n: u64, written: &mut Vec<(u64, Vec<u8>)>) -> Duration {
    let mut longest = Duration::ZERO;
    for i in first..first + n {
        let data = pattern(256 << 10, 1000 + i);
        let t0 = Instant::now();
        client.write_at(path, i * (256 << 10), &data).unwrap_or_else(|e| panic!("write {i} of {path} failed: {e}"));
        longest = longest.max(t0.elapsed());
        written.push((i * (256 << 10), data));
    }
    longest
}

fn read_back(client: &Client, path: &str, written: &[(u64, Vec<u8>)]) {
    for (offset, data) in written {
        let mut back = vec![0u8; data.len()];
        client.read_at(path, *offset, &mut back).unwrap_or_else(|e| panic!("read {path}@{offset}: {e}"));
        assert!(back == *data, "{path}@{offset} reads back wrong");
    }
}

/// Replicas of chunk 0 of `path`, as the master lists them (current ones only).
fn current_replicas(client: &Client, path: &str) -> Vec<String> {
    let st = client.stat(path).unwrap();
    st.chunks[0].replicas.iter().filter(|r| !r.stale).map(|r| r.server.clone()).collect()
}

/// Adds a fourth chunkserver and waits until every chunk has three healthy replicas, none of
/// them on `sick`.
fn fourth_takes_over(c: &mut Cluster, client: &Client, sick: &str, paths: &[&str]) -> Duration {
    let i = c.cs.len();
    c.cs.push(common::ChunkServerProc {
        addr: common::free_addr(),
        dir: c.dir.join(format!("cs{i}")),
        rack: format!("rack{i}"),
        child: None,
    });
    c.start_cs(i);
    let t0 = Instant::now();
    Cluster::wait_until("every chunk copied off the sick chunkserver", Duration::from_secs(60), || {
        let fsck = client.fsck().unwrap();
        fsck.under_replicated == 0
            && fsck.missing == 0
            && paths.iter().all(|p| {
                client.stat(p).unwrap().chunks.iter().all(|ch| {
                    let good: Vec<_> = ch.replicas.iter().filter(|r| !r.stale && !r.corrupt).collect();
                    good.len() == 3 && good.iter().all(|r| r.server != sick)
                })
            })
    });
    t0.elapsed()
}

#[test]
fn a_full_chunkserver_disk_is_routed_around_and_takes_chunks_again_when_space_returns() {
    let mut c = Cluster::start("diskfull", 0, &["--rebalance-interval-secs", "0"]);
    for i in 0..3 {
        let dir = c.dir.join(format!("cs{i}"));
        if i == 0 && !mount_tmpfs(&mut c, &dir, "64m") {
            return ftvm_tests::cannot_run("cannot mount a small tmpfs here (needs root)");
        }
        c.cs.push(common::ChunkServerProc { addr: common::free_addr(), dir, rack: format!("rack{i}"), child: None });
        c.start_cs(i);
    }
    c.settle();
    let full = c.cs[0].addr.clone();
    let client = c.client();
    client.create("/f").unwrap();
    let mut written = Vec::new();
    write_pieces(&client, "/f", 0, 8, &mut written);
    assert!(current_replicas(&client, "/f").contains(&full), "the tmpfs chunkserver holds no replica");

    let filler = fill(&c.cs[0].dir).unwrap();
    let longest = write_pieces(&client, "/f", 8, 24, &mut written);
    eprintln!("longest write while one chunkserver's disk filled: {longest:?}");
    let cs_log = log(&c, "cs0.log");
    assert!(cs_log.contains("chunkserver: disk full in "), "no disk-full line: {cs_log}");
    assert!(cs_log.contains("refusing new chunks and writes"), "{cs_log}");
    assert!(log(&c, "master.log").contains(&format!("chunkserver {full} reports its disk full")));
    assert_eq!(disk_of(&client, &full), Some(DiskState::Full));
    assert!(!current_replicas(&client, "/f").contains(&full), "the full disk still holds a current replica");
    // New files go elsewhere.
    client.create("/g").unwrap();
    let mut written_g = Vec::new();
    write_pieces(&client, "/g", 0, 4, &mut written_g);
    assert!(!current_replicas(&client, "/g").contains(&full));
    read_back(&client, "/f", &written);

    // A fourth chunkserver: gfs copies the chunks there.
    let copied = fourth_takes_over(&mut c, &client, &full, &["/f", "/g"]);
    eprintln!("re-replicated onto a fourth chunkserver in {copied:?}");

    // Space returns: the chunkserver says so, and takes new chunks again.
    std::fs::remove_file(&filler).unwrap();
    Cluster::wait_until("the disk usable again", Duration::from_secs(10), || {
        disk_of(&client, &full) == Some(DiskState::Ok)
    });
    assert!(log(&c, "cs0.log").contains("usable again (was full)"));
    assert!(log(&c, "master.log").contains(&format!("chunkserver {full} reports its disk usable again")));
    // It holds the fewest chunks, so new chunks land there first.
    client.create("/h").unwrap();
    let mut written_h = Vec::new();
    write_pieces(&client, "/h", 0, 2, &mut written_h);
    assert!(current_replicas(&client, "/h").contains(&full), "{:?}", client.stat("/h"));
    read_back(&client, "/f", &written);
    read_back(&client, "/g", &written_g);
    read_back(&client, "/h", &written_h);
}

#[test]
fn a_chunkserver_disk_returning_io_errors_is_routed_around_and_its_chunks_copied_elsewhere() {
    let mut c = Cluster::start("diskeio", 0, &["--rebalance-interval-secs", "0"]);
    let dir0 = c.dir.join("cs0");
    let disk = match LoopExt4::mount(&c.dir.join("cs0.img"), &dir0) {
        Ok(disk) => disk,
        Err(e) => return ftvm_tests::cannot_run(&format!("{e:#} (needs root)")),
    };
    for i in 0..3 {
        let dir = c.dir.join(format!("cs{i}"));
        c.cs.push(common::ChunkServerProc { addr: common::free_addr(), dir, rack: format!("rack{i}"), child: None });
        c.start_cs(i);
    }
    c.settle();
    let failing = c.cs[0].addr.clone();
    let client = c.client();
    client.create("/f").unwrap();
    client.create("/quiet").unwrap();
    let mut written = Vec::new();
    let mut written_quiet = Vec::new();
    write_pieces(&client, "/f", 0, 8, &mut written);
    // A file not written after the fault: its replica on the failing disk is copied anyway.
    write_pieces(&client, "/quiet", 0, 4, &mut written_quiet);
    assert!(current_replicas(&client, "/f").contains(&failing));

    disk.fail_with_io_errors().unwrap();
    let longest = write_pieces(&client, "/f", 8, 24, &mut written);
    eprintln!("longest write while one chunkserver's disk returned I/O errors: {longest:?}");
    let cs_log = log(&c, "cs0.log");
    assert!(cs_log.contains("chunkserver: disk I/O error in "), "no I/O error line: {cs_log}");
    assert!(log(&c, "master.log").contains(&format!("chunkserver {failing} reports disk I/O errors")));
    assert_eq!(disk_of(&client, &failing), Some(DiskState::Failing));
    assert!(!current_replicas(&client, "/f").contains(&failing));
    // Reads skip the failing disk, for the quiet file too.
    read_back(&client, "/f", &written);
    read_back(&client, "/quiet", &written_quiet);
    assert_eq!(client.fsck().unwrap().missing, 0);

    let copied = fourth_takes_over(&mut c, &client, &failing, &["/f", "/quiet"]);
    eprintln!("re-replicated onto a fourth chunkserver in {copied:?}");
    read_back(&client, "/f", &written);
    read_back(&client, "/quiet", &written_quiet);
    // The shut-down file system never answers again: the chunkserver stays out.
    assert_eq!(disk_of(&client, &failing), Some(DiskState::Failing));
    // The servers go first, then the file system, then the cluster's directory (with the image).
    for i in 0..c.cs.len() {
        c.kill_cs(i);
    }
    c.kill_master();
    drop(disk);
    drop(c);
}
