//! The store on a real directory: writes, reads, checksums, scrubbing.

use super::*;

fn store(name: &str) -> (Store, PathBuf) {
    let d = std::env::temp_dir().join(format!("gfs-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    (Store::open(&d, false).unwrap(), d)
}

#[test]
fn write_read_verify_and_detect_corruption() {
    let (s, d) = store("rw");
    s.set_version(7, 2).unwrap();
    let c = s.get(7).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.write(&c, 2, 1000, &data).unwrap();
    let mut out = Vec::new();
    let r = s.read(&c, 2, 1000, 100_000, &mut out).unwrap();
    assert_eq!(&out[r], &data[..100_000]);
    // Unwritten ranges read as zeros; the old version is refused.
    let r = s.read(&c, 2, 10 * BLOCK_SIZE, 10, &mut out).unwrap();
    assert_eq!(&out[r], &[0u8; 10]);
    assert!(s.read(&c, 1, 0, 10, &mut out).is_err());
    assert!(s.read(&c, 2, CHUNK_SIZE - 1, 2, &mut out).is_err());
    // Reopen: checksums and versions persist.
    drop(c);
    let s = Store::open(&d, false).unwrap();
    assert_eq!(s.report(), (vec![(7, 2)], vec![]));
    let c = s.get(7).unwrap();
    let r = s.read(&c, 2, 1000, 50, &mut out).unwrap();
    assert_eq!(&out[r], &data[..50]);
    // Flip a byte on disk: the block fails verification.
    let dp = d.join(format!("{:016x}.dat", 7));
    let mut bytes = std::fs::read(&dp).unwrap();
    bytes[70_000] ^= 0x40;
    std::fs::write(&dp, bytes).unwrap();
    let e = s.read(&c, 2, 65_536, 10, &mut out).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Corrupt));
    assert_eq!(s.report().1, vec![7]);
    let _ = std::fs::remove_dir_all(&d);
}

/// The chunk report does not wait for a mutation: one holding a chunk through a slow
/// fsync must not hold up the heartbeat that keeps this server alive at the master.
#[test]
fn the_chunk_report_does_not_wait_for_a_held_chunk() {
    let (s, d) = store("report-busy");
    s.set_version(5, 3).unwrap();
    let c = s.get(5).unwrap();
    let held = lock(&c.state);
    let report = std::thread::scope(|t| {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = &s;
        t.spawn(move || {
            let _ = tx.send(s.report());
        });
        let r = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held); // let a blocked report finish so the scope can end
        r
    });
    assert_eq!(report.ok(), Some((vec![(5, 3)], vec![])), "the report waited for the chunk's lock");
    s.set_version(5, 4).unwrap();
    s.mark_corrupt(&c);
    assert_eq!(s.report(), (vec![(5, 4)], vec![5]));
    let _ = std::fs::remove_dir_all(&d);
}

/// Durable (`O_DIRECT`) and memory-only (buffered) writes at unaligned offsets and
/// lengths, interleaved on one replica, against a model; the data file keeps the exact
/// written length (the direct path writes whole blocks and trims the last one back).
#[test]
fn direct_and_buffered_writes_agree_with_a_model() {
    let (s, d) = store("direct");
    s.set_version(3, 1).unwrap();
    let c = s.get(3).unwrap();
    let mut model = vec![0u8; 0];
    let writes: [(u64, usize, bool); 7] = [
        (100, 70_000, true),                // partial first and last block, extends
        (0, 4 * BLOCK_SIZE as usize, true), // whole blocks
        (200_000, 10, false),               // tiny, buffered, extends
        (200_005, 300_000, true),           // overlaps the buffered write
        (65_530, 12, true),                 // straddles a block boundary inside data
        (3 * BLOCK_SIZE, 1, false),         // one byte
        (CHUNK_SIZE - 5, 5, true),          // the very end of the chunk
    ];
    for (i, (off, len, durable)) in writes.into_iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|j| (j as u64 * 31 + i as u64 * 7 + 1) as u8).collect();
        s.write_as(&c, 1, off, &data, durable).unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        let on_disk = std::fs::metadata(d.join(format!("{:016x}.dat", 3))).unwrap().len();
        assert_eq!(on_disk, model.len() as u64, "data file length after write {i}");
        assert_eq!(s.chunk_len(&c), model.len() as u64);
    }
    s.sync_chunk(3).unwrap();
    let check = |s: &Store, c: &Chunk| {
        let mut out = Vec::new();
        for at in (0..model.len() as u64).step_by(READ_PIECE as usize) {
            let n = (model.len() as u64 - at).min(READ_PIECE);
            let r = s.read(c, 1, at, n, &mut out).unwrap();
            assert!(out[r] == model[at as usize..(at + n) as usize], "bytes at {at}");
        }
    };
    check(&s, &c);
    drop(c);
    let s = Store::open(&d, false).unwrap();
    let c = s.get(3).unwrap();
    check(&s, &c);
    // A partly overwritten block that is corrupt on disk is refused, on the direct path too.
    let dp = d.join(format!("{:016x}.dat", 3));
    let mut bytes = std::fs::read(&dp).unwrap();
    bytes[BLOCK_SIZE as usize + 9] ^= 0x10;
    std::fs::write(&dp, bytes).unwrap();
    let e = s.write_as(&c, 1, BLOCK_SIZE + 100, &[1, 2, 3], true).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Corrupt));
    assert!(s.sync_chunk(99).is_err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn scrub_finds_corruption_nobody_read_and_skips_busy_chunks() {
    let (s, d) = store("scrub");
    s.set_version(9, 2).unwrap();
    let c = s.get(9).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    s.write(&c, 2, 0, &data).unwrap();
    let mut buf = Vec::new();
    let all = BLOCKS_PER_CHUNK;
    assert_eq!(s.scrub(&c, 0, all, &mut buf).unwrap(), Scrubbed::Clean { read: 5 * BLOCK_SIZE });
    // A mutation holding the chunk: the scrubber backs off instead of waiting.
    {
        let _held = lock(&c.state);
        assert_eq!(s.scrub(&c, 0, all, &mut buf).unwrap(), Scrubbed::Busy);
    }
    // Flip a byte on disk: found without any read, and the replica is marked corrupt.
    let dp = d.join(format!("{:016x}.dat", 9));
    let mut bytes = std::fs::read(&dp).unwrap();
    bytes[200_000] ^= 1;
    std::fs::write(&dp, bytes).unwrap();
    assert_eq!(s.scrub(&c, 0, 2, &mut buf).unwrap(), Scrubbed::Clean { read: 2 * BLOCK_SIZE });
    assert!(matches!(s.scrub(&c, 2, all, &mut buf).unwrap(), Scrubbed::Corrupt { block: 3, .. }));
    assert_eq!(s.report().1, vec![9]);
    assert_eq!(s.scrub(&c, 0, all, &mut buf).unwrap(), Scrubbed::AlreadyCorrupt);
    // A truncated data file: blocks past its end must have the checksum of zeros.
    s.set_version(10, 2).unwrap();
    let c2 = s.get(10).unwrap();
    s.write(&c2, 2, 0, &data).unwrap();
    let dp2 = d.join(format!("{:016x}.dat", 10));
    std::fs::OpenOptions::new().write(true).open(&dp2).unwrap().set_len(BLOCK_SIZE).unwrap();
    assert!(matches!(s.scrub(&c2, 0, all, &mut buf).unwrap(), Scrubbed::Corrupt { block: 1, .. }));
    let _ = std::fs::remove_dir_all(&d);
}
