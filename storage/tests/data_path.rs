//! End-to-end data path tests: real master and chunkserver processes on loopback.

mod common;

use common::{pattern, Cluster};
use std::time::Duration;
use storage::error::ErrorKind;
use storage::protocol::{ChunkReply, ChunkRequest, Conn, Reply};

#[test]
fn put_then_get_200_mib_with_three_replicas() {
    let c = Cluster::start("put-get", 3, &[]);
    let src = c.dir.join("src.bin");
    let dst = c.dir.join("dst.bin");
    let data = pattern(200 * 1024 * 1024, 1);
    std::fs::write(&src, &data).unwrap();
    c.gfs_ok(&["put", src.to_str().unwrap(), "/big"]);
    c.gfs_ok(&["get", "/big", dst.to_str().unwrap()]);
    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "downloaded file differs");

    let stat = c.gfs_ok(&["stat", "/big"]);
    assert!(stat.contains("size: 209715200"), "{stat}");
    assert!(stat.contains("chunks: 4"), "{stat}");
    let st = c.client().stat("/big").unwrap();
    for ch in &st.chunks {
        let fresh: Vec<_> = ch.replicas.iter().filter(|r| !r.stale).collect();
        assert_eq!(fresh.len(), 3, "chunk {} has replicas {:?}", ch.index, ch.replicas);
        assert!(fresh.iter().all(|r| r.version == ch.version));
    }
    // Each chunkserver holds one replica of each chunk.
    for i in 0..3 {
        assert_eq!(c.chunk_files(i).len(), 4);
    }
    assert!(c.gfs_ok(&["ls", "/"]).contains("209715200 big"));
}

#[test]
fn overwrite_a_range_in_the_middle() {
    let c = Cluster::start("overwrite", 3, &[]);
    let client = c.client();
    client.create("/f").unwrap();
    let mut model = pattern(70 * 1024 * 1024, 2);
    client.write_at("/f", 0, &model).unwrap();
    // Unaligned, crossing the chunk boundary at 64 MiB and several 64 KiB blocks.
    let off = 64 * 1024 * 1024 - 123_457;
    let patch = pattern(1_000_003, 3);
    client.write_at("/f", off as u64, &patch).unwrap();
    model[off..off + patch.len()].copy_from_slice(&patch);
    // A small overwrite through the CLI too.
    let out = common::gfs_command()
        .args(["--master", &c.master_addr, "write", "/f", "--offset", "1000"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(b"overwritten!")?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    model[1000..1012].copy_from_slice(b"overwritten!");

    let mut back = vec![0u8; model.len()];
    assert_eq!(client.read_at("/f", 0, &mut back).unwrap(), model.len());
    assert!(back == model, "file differs after overwrite");
    let mut mid = vec![0u8; patch.len() + 10];
    client.read_at("/f", off as u64 - 5, &mut mid).unwrap();
    assert_eq!(&mid[5..5 + patch.len()], &patch[..]);
    // Reads past the end are short, not errors.
    let mut tail = vec![0u8; 100];
    assert_eq!(client.read_at("/f", model.len() as u64 - 10, &mut tail).unwrap(), 10);
    assert_eq!(client.read_at("/f", model.len() as u64 + 10, &mut tail).unwrap(), 0);
}

#[test]
fn flipped_bytes_in_chunk_files_are_detected_and_reads_stay_correct() {
    let c = Cluster::start("corrupt", 3, &["--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(3 * 1024 * 1024, 4);
    client.write_at("/f", 0, &data).unwrap();
    // Damage a different block on every replica, so no single replica can serve the file.
    for (i, block) in [(0usize, 3u64), (1, 17), (2, 40)] {
        let files = c.chunk_files(i);
        assert_eq!(files.len(), 1);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let at = (block * 65536 + 777) as usize;
        bytes[at] ^= 0xA5;
        bytes[at + 1] ^= 0x5A;
        std::fs::write(&files[0], bytes).unwrap();
    }
    for _ in 0..3 {
        let mut back = vec![0u8; data.len()];
        assert_eq!(client.read_at("/f", 0, &mut back).unwrap(), data.len());
        assert!(back == data, "read returned corrupt bytes");
    }
    // The CLI too.
    let dst = c.dir.join("out");
    c.gfs_ok(&["get", "/f", dst.to_str().unwrap()]);
    assert!(std::fs::read(&dst).unwrap() == data);
    // Each replica, read whole directly, refuses its bad block (the client above may not have
    // touched every one), and tells the master, which then marks it corrupt.
    let st = client.stat("/f").unwrap();
    let (handle, version) = (st.chunks[0].handle, st.chunks[0].version);
    for p in &c.cs {
        assert_eq!(common::read_replica(&p.addr, handle, version, data.len() as u64), Some(ErrorKind::Corrupt));
    }
    Cluster::wait_until("the master marks all three replicas corrupt", Duration::from_secs(20), || {
        client.stat("/f").is_ok_and(|st| st.chunks[0].replicas.iter().filter(|r| r.corrupt).count() == 3)
    });
    assert!(c.gfs_ok(&["stat", "/f"]).contains("(corrupt)"));
}

#[test]
fn restarted_chunkserver_with_an_old_copy_is_not_served() {
    let c0 = Cluster::start("stale", 3, &["--lease-secs", "1", "--repair-interval-secs", "0"]);
    let mut c = c0;
    let client = c.client();
    client.create("/f").unwrap();
    let old = pattern(2 * 1024 * 1024, 5);
    client.write_at("/f", 0, &old).unwrap();
    let v_old = client.stat("/f").unwrap().chunks[0].version;
    // Keep a copy of chunkserver 2's replica as it is now.
    c.kill_cs(2);
    let backup = c.dir.join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    for e in std::fs::read_dir(&c.cs[2].dir).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, backup.join(p.file_name().unwrap())).unwrap();
    }
    c.start_cs(2);
    Cluster::wait_until("the first lease expires", Duration::from_secs(20), || {
        client.stat("/f").is_ok_and(|st| st.chunks[0].primary.is_none())
    });
    let new = pattern(2 * 1024 * 1024, 6);
    client.write_at("/f", 0, &new).unwrap();
    let st = client.stat("/f").unwrap();
    let v_new = st.chunks[0].version;
    assert!(v_new > v_old);
    assert_eq!(st.chunks[0].replicas.iter().filter(|r| !r.stale).count(), 3, "{st:?}");

    // Restart chunkserver 2 with the old copy.
    c.kill_cs(2);
    for e in std::fs::read_dir(&backup).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, c.cs[2].dir.join(p.file_name().unwrap())).unwrap();
    }
    c.start_cs(2);
    c.settle();
    let st = client.stat("/f").unwrap();
    let r2: Vec<_> = st.chunks[0].replicas.iter().filter(|r| r.server == c.cs[2].addr).collect();
    assert_eq!(r2.len(), 1, "{st:?}");
    assert!(r2[0].stale && r2[0].version == v_old, "{st:?}");
    assert!(c.gfs_ok(&["stat", "/f"]).contains("(stale)"));
    for _ in 0..20 {
        let mut back = vec![0u8; new.len()];
        client.read_at("/f", 0, &mut back).unwrap();
        assert!(back == new, "old data was served");
    }
    // Asked directly at the current version, the stale replica refuses.
    let mut conn = Conn::connect(&c.cs[2].addr, Duration::from_secs(5)).unwrap();
    conn.send(&ChunkRequest::Read { handle: st.chunks[0].handle, version: v_new, offset: 0, len: 10 }).unwrap();
    let r: Reply<ChunkReply> = conn.recv().unwrap();
    assert_eq!(r.unwrap_err().kind, ErrorKind::StaleVersion);
}

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let mut c = Cluster::start("full", 0, &[]);
    for i in 0..3 {
        let dir = c.dir.join(format!("cs{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            ftvm_tests::cannot_run("cannot mount a small tmpfs here (needs root)");
            return;
        }
        c.mounts.push(dir.clone());
        c.cs.push(common::ChunkServerProc { addr: common::free_addr(), dir, rack: format!("r{i}"), child: None });
        c.start_cs(i);
    }
    c.settle();
    let client = c.client();
    client.create("/small").unwrap();
    let small = pattern(1024 * 1024, 7);
    client.write_at("/small", 0, &small).unwrap();
    client.create("/huge").unwrap();
    let huge = pattern(12 * 1024 * 1024, 8);
    let e = client.write_at("/huge", 0, &huge).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("disk full"), "{e}");
    // The CLI reports one line and fails.
    let src = std::env::temp_dir().join(format!("gfs-full-src-{}", std::process::id()));
    std::fs::write(&src, &huge).unwrap();
    let out = c.gfs(&["put", src.to_str().unwrap(), "/huge2"]);
    let _ = std::fs::remove_file(&src);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    let mut back = vec![0u8; small.len()];
    client.read_at("/small", 0, &mut back).unwrap();
    assert!(back == small);
}
