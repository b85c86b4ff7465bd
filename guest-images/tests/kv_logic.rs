//! Host tests of the pure parts of the guest's `kv` workload: the record format, the
//! superblock, the replay at boot, the log writer and the request protocol. Compaction and
//! power cuts: `kv_compaction.rs`.

extern crate alloc;

mod kv_support;

use kv_support::kv::disklog::{self, Decoded, Record, MAX_KEY, MAX_RECORD_SECTORS, MAX_VALUE, OP_DEL, OP_SET, SECTOR};
use kv_support::kv::layout::{disk_state, DiskState, Superblock, RESERVED_SECTORS};
use kv_support::kv::replay::{replay, ReplayError};
use kv_support::kv::store::{parse, Request, Store, MAX_LINE};
use kv_support::{boot, contents, request, MemDisk};

fn key(i: usize) -> String {
    format!("key{i:05}")
}

fn value(i: usize) -> String {
    let len = 1 + i * 37 % MAX_VALUE;
    format!("v{i}-").repeat(len)[..len].to_owned()
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(disklog::crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(disklog::crc32(b""), 0);
}

#[test]
fn records_round_trip_padded_to_sectors() {
    for (k, v) in [(1, 0), (1, 1), (MAX_KEY, MAX_VALUE), (10, 488), (10, 479), (100, 4000)] {
        let (key, value) = (vec![b'k'; k], vec![b'v'; v]);
        let rec = Record { seq: 42, op: if v == 0 { OP_DEL } else { OP_SET }, key: &key, value: &value };
        let mut buf = Vec::new();
        disklog::encode(&rec, &mut buf);
        assert_eq!(buf.len() % SECTOR, 0);
        assert_eq!(buf.len() / SECTOR, disklog::record_sectors(k, v));
        assert!(buf.len() / SECTOR <= MAX_RECORD_SECTORS);
        assert_eq!(disklog::decode(&buf, 42), Decoded::Record(rec, buf.len() / SECTOR));
        // Another sequence number: an older record, the end of the log.
        assert_eq!(disklog::decode(&buf, 43), Decoded::End);
        // Too short a buffer asks for the whole record.
        if buf.len() > SECTOR {
            assert_eq!(disklog::decode(&buf[..SECTOR], 42), Decoded::NeedSectors(buf.len() / SECTOR));
        }
    }
    assert_eq!(disklog::decode(&[0; SECTOR], 0), Decoded::End);
}

#[test]
fn every_flipped_byte_of_a_record_is_detected() {
    let (key, value) = (b"some-key".to_vec(), vec![b'x'; 700]);
    let mut buf = Vec::new();
    disklog::encode(&Record { seq: 7, op: OP_SET, key: &key, value: &value }, &mut buf);
    let used = disklog::RECORD_HEADER + key.len() + value.len();
    for i in 0..used {
        for bit in [0x01u8, 0x80] {
            let mut bad = buf.clone();
            bad[i] ^= bit;
            match disklog::decode(&bad, 7) {
                Decoded::Record(..) => panic!("flip of byte {i} bit {bit:#x} not detected"),
                Decoded::End if (8..16).contains(&i) => {
                    panic!("flipped sequence number taken as the end")
                }
                _ => {}
            }
        }
    }
}

#[test]
fn superblock_states() {
    let sb = Superblock::format(1000);
    assert_eq!((sb.generation, sb.active, sb.first_seq, sb.region_sectors), (1, 0, 0, (1000 - RESERVED_SECTORS) / 2));
    assert_eq!(Superblock::decode(&sb.encode()), Some(sb));
    let mut two = vec![0u8; 2 * SECTOR];
    assert_eq!(disk_state(&two), DiskState::Blank);
    two[SECTOR..].copy_from_slice(&sb.encode()); // generation 1 lives in slot 1
    assert_eq!(disk_state(&two), DiskState::Formatted(sb));
    // The next generation goes to slot 0; the highest valid one is in force.
    let next = Superblock { generation: 2, active: 1, first_seq: 77, compactions: 1, ..sb };
    two[..SECTOR].copy_from_slice(&next.encode());
    assert_eq!(disk_state(&two), DiskState::Formatted(next));
    // A torn or damaged newer slot leaves the older one in force.
    two[40] ^= 1;
    assert_eq!(disk_state(&two), DiskState::Formatted(sb));
    // A superblock in the wrong slot is not taken.
    let mut wrong = vec![0u8; 2 * SECTOR];
    wrong[..SECTOR].copy_from_slice(&sb.encode());
    assert_eq!(disk_state(&wrong), DiskState::Foreign);
    let mut flipped = sb.encode();
    flipped[3] ^= 1;
    assert_eq!(Superblock::decode(&flipped), None);

    // A version-1 header, and anything else, is refused (never overwritten).
    let mut v1 = vec![0u8; 2 * SECTOR];
    v1[..8].copy_from_slice(b"FTVMKVLG");
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(disk_state(&v1), DiskState::OldVersion);
    let mut disk = MemDisk::new(128);
    disk.data[..4].copy_from_slice(b"MBR!");
    assert_eq!(replay(&mut disk, |_| {}).err(), Some(ReplayError::Foreign), "a foreign disk is not overwritten");
    assert_eq!(replay(&mut MemDisk::new(32), |_| {}).err(), Some(ReplayError::TooSmall));
}

#[test]
fn a_blank_disk_is_formatted_and_replays_to_nothing() {
    let (log, store, found) = boot(MemDisk::new(256));
    assert!(found.blank);
    assert_eq!((store.len(), found.records(), found.next()), (0, 0, (RESERVED_SECTORS, 0)));
    let (_, store, found) = boot(log.into_device());
    assert!(!found.blank);
    assert_eq!((store.len(), found.superblock.generation), (0, 1));
}

/// 10,000 keys, overwrites and deletes, on a disk large enough not to compact: the replayed
/// store equals the one that wrote the log, and appending after a replay continues it.
#[test]
fn replay_restores_every_write_across_restarts() {
    let (mut log, mut store, _) = boot(MemDisk::new(200_000));
    for i in 0..10_000 {
        assert_eq!(request(&mut log, &mut store, &format!("SET {} {}", key(i), value(i))), "OK");
    }
    for i in (0..10_000).step_by(7) {
        assert_eq!(request(&mut log, &mut store, &format!("DEL {}", key(i))), "OK");
    }
    // A group of 50 in one commit.
    let mut out = Vec::new();
    for i in 0..50 {
        store.execute(format!("SET {} batched", key(i * 3 + 1)).as_bytes(), &mut log, "", &mut out);
    }
    log.commit(&store);
    assert_eq!(log.compactions(), 0);
    let records = log.records();
    let mut disk = log.into_device();
    disk.reads = 0;
    let (mut log, mut replayed, found) = boot(disk);
    assert_eq!((found.skipped(), found.dropped_tail()), (0, 0));
    assert_eq!(found.records(), 10_000 + 10_000 / 7 + 1 + 50);
    assert_eq!(found.records(), records);
    assert_eq!(contents(&replayed), contents(&store));
    assert_eq!(replayed.live_bytes(), store.live_bytes());
    assert!(log.device().reads < 2_000, "reads in chunks, not sector by sector ({} reads)", log.device().reads);

    // Restart, write more, restart again.
    assert_eq!(request(&mut log, &mut replayed, "SET late arrival"), "OK");
    let (_, third, found) = boot(log.into_device());
    assert_eq!(found.records(), records + 1);
    assert_eq!(third.get(b"late"), Some(&b"arrival"[..]));
}

/// Sets keys 0..n, one commit each; returns where each record starts.
fn one_record_per_commit(
    log: &mut kv_support::kv::log::Log<MemDisk>,
    store: &mut Store,
    n: usize,
    len: impl Fn(usize) -> usize,
) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let start = RESERVED_SECTORS + log.log_bytes() / SECTOR as u64;
            let v = "x".repeat(len(i));
            assert_eq!(request(log, store, &format!("SET {} {v}", key(i))), "OK");
            start
        })
        .collect()
}

#[test]
fn a_corrupt_tail_record_is_dropped_alone_and_overwritten() {
    let (mut log, mut store, _) = boot(MemDisk::new(4096));
    let starts = one_record_per_commit(&mut log, &mut store, 20, |i| i * 50 + 1);
    let mut disk = log.into_device();
    disk.data[starts[19] as usize * SECTOR + 30] ^= 0x40;
    let (mut log, mut store, found) = boot(disk);
    assert_eq!((found.records(), found.dropped_tail(), found.skipped()), (19, 1, 0));
    assert_eq!(found.next(), (starts[19], 19));
    assert_eq!(store.len(), 19);
    assert_eq!(store.get(key(19).as_bytes()), None);
    assert_eq!(store.get(key(18).as_bytes()), Some("x".repeat(18 * 50 + 1).as_bytes()));

    // Appending resumes over the bad record; the next boot sees a clean log.
    assert_eq!(request(&mut log, &mut store, "SET new 1"), "OK");
    let (_, store, found) = boot(log.into_device());
    assert_eq!((found.records(), found.dropped_tail()), (20, 0));
    assert_eq!(store.get(b"new"), Some(&b"1"[..]));
}

#[test]
fn a_torn_tail_at_any_sector_loses_only_the_last_record() {
    let (mut log, mut store, _) = boot(MemDisk::new(512));
    let starts = one_record_per_commit(&mut log, &mut store, 5, |i| i * 811 + 100);
    let end = RESERVED_SECTORS + log.log_bytes() / SECTOR as u64;
    let base = log.into_device().data;
    // Garbage written over the last record's sectors one by one (a torn write).
    for torn in starts[4]..end {
        let mut d = MemDisk::from_image(base.clone());
        let at = torn as usize * SECTOR;
        d.data[at..at + SECTOR].fill(0xa5);
        let (_, store, found) = boot(d);
        assert_eq!((found.records(), found.dropped_tail()), (4, 1), "torn sector {torn}");
        assert_eq!(found.next().0, starts[4]);
        assert_eq!(store.len(), 4);
    }
}

#[test]
fn a_corrupt_record_inside_the_log_is_skipped_alone() {
    let (mut log, mut store, _) = boot(MemDisk::new(4096));
    let starts = one_record_per_commit(&mut log, &mut store, 10, |i| i * 400 + 1);
    let end = RESERVED_SECTORS + log.log_bytes() / SECTOR as u64;
    let mut disk = log.into_device();
    disk.data[starts[4] as usize * SECTOR] ^= 1; // the magic of record 4
    let (_, store, found) = boot(disk);
    assert_eq!((found.records(), found.skipped(), found.dropped_tail()), (9, 1, 0));
    assert_eq!(store.get(key(4).as_bytes()), None);
    assert_eq!(store.get(key(9).as_bytes()), Some("x".repeat(9 * 400 + 1).as_bytes()));
    assert_eq!(found.next(), (end, 10));
}

/// The smallest disk: regions of 28 sectors. Nothing is ever deleted, so no compaction can
/// make room: the SET that does not fit is refused, the DEL too, and GETs go on.
#[test]
fn a_full_disk_answers_disk_full_and_keeps_serving_gets() {
    let (mut log, mut store, _) = boot(MemDisk::new(64));
    let mut set = 0;
    let reply = loop {
        let reply = request(&mut log, &mut store, &format!("SET {} {}", key(set), "v".repeat(400)));
        if reply != "OK" {
            break reply;
        }
        set += 1;
        assert!(set < 100, "the disk never fills");
    };
    assert_eq!(reply, "ERR disk full");
    assert!(set >= 10, "only {set} one-sector records fit");
    assert_eq!(store.get(key(set).as_bytes()), None, "a refused SET changes nothing");
    for i in 0..set {
        assert_eq!(request(&mut log, &mut store, &format!("GET {}", key(i))), format!("VALUE {}", "v".repeat(400)));
    }
    assert_eq!(request(&mut log, &mut store, "SET tiny 1"), "ERR disk full");
    let (_, replayed, _) = boot(log.into_device());
    assert_eq!(contents(&replayed), contents(&store));
}

#[test]
fn requests_parse_and_answer() {
    assert_eq!(parse(b"SET k v"), Ok(Request::Set(b"k", b"v")));
    assert_eq!(parse(b"set  k  v\r"), Ok(Request::Set(b"k", b"v")));
    assert_eq!(parse(b"GET k"), Ok(Request::Get(b"k")));
    assert_eq!(parse(b"DEL k"), Ok(Request::Del(b"k")));
    assert_eq!(parse(b"STATS"), Ok(Request::Stats));
    assert_eq!(parse(b""), Err("empty request"));
    assert_eq!(parse(b"SET k"), Err("wrong number of arguments"));
    assert_eq!(parse(b"SET k v w"), Err("wrong number of arguments"));
    assert_eq!(parse(b"GET"), Err("wrong number of arguments"));
    assert_eq!(parse(b"STATS now"), Err("wrong number of arguments"));
    assert_eq!(parse(b"FLY away"), Err("unknown command"));
    assert_eq!(parse(b"SET k\tx v"), Err("key is not printable ASCII"));
    assert_eq!(parse(b"SET k v\x7f"), Err("value is not printable ASCII"));
    let long_key = vec![b'k'; MAX_KEY + 1];
    assert_eq!(parse(&[b"GET ".as_slice(), &long_key].concat()), Err("key too long"));
    let max = [b"SET ".as_slice(), &[b'k'; MAX_KEY], b" ", &[b'v'; MAX_VALUE], b"\r"].concat();
    assert!(max.len() < MAX_LINE);
    assert!(matches!(parse(&max), Ok(Request::Set(..))));
    let too_long = [b"SET k ".as_slice(), &[b'v'; MAX_VALUE + 1]].concat();
    assert_eq!(parse(&too_long), Err("value too long"));

    let (mut log, mut store, _) = boot(MemDisk::new(64));
    let mut out = Vec::new();
    for line in ["SET a 1", "GET a", "SET a 22", "GET a", "DEL a", "DEL a", "GET a", "NOPE", "STATS"] {
        store.execute(line.as_bytes(), &mut log, "extra=1", &mut out);
        log.commit(&store);
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "OK\nVALUE 1\nOK\nVALUE 22\nOK\nNOT_FOUND\nNOT_FOUND\nERR unknown command\n\
         STATS keys=0 sets=2 gets=3 dels=2 errors=1 extra=1\n"
    );
    // DEL of a missing key writes nothing.
    let (_, _, found) = boot(log.into_device());
    assert_eq!(found.records(), 3);
}
