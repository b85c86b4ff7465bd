//! Host tests of the pure parts of the guest's `kv` workload: the disk-log format, the replay
//! at boot and the request protocol. The guest crate is `no_std`/`no_main`, so its files are
//! included here by path.

extern crate alloc;

#[allow(dead_code)]
#[path = "../guest/src/workloads/kv"]
mod kv {
    pub mod disklog;
    pub mod replay;
    pub mod store;
}

use kv::disklog::{self, Decoded, Record, MAX_KEY, MAX_RECORD_SECTORS, MAX_VALUE, OP_DEL, OP_SET, SECTOR};
use kv::replay::{replay, Replayed, Sectors};
use kv::store::{parse, LogSink, Request, Store, MAX_LINE};

/// An in-memory disk that also acts as the log writer (same rules as the guest's DiskLog:
/// records appended at `next`, one zero sector after each batch).
struct MemDisk {
    data: Vec<u8>,
    next: u64,
    seq: u64,
    reads: usize,
}

impl MemDisk {
    fn new(sectors: usize) -> Self {
        MemDisk { data: vec![0; sectors * SECTOR], next: 1, seq: 0, reads: 0 }
    }
    fn format(&mut self) {
        self.data[..SECTOR].copy_from_slice(&disklog::header());
    }
    fn cap(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }
    /// Continues appending where a replay said the log ends.
    fn resume(&mut self, r: &Replayed) {
        self.next = r.next_sector;
        self.seq = r.next_seq;
    }
    fn write_batch(&mut self, records: &[(u8, &[u8], &[u8])]) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for &(op, key, value) in records {
            starts.push(self.next + (buf.len() / SECTOR) as u64);
            disklog::encode(&Record { seq: self.seq, op, key, value }, &mut buf);
            self.seq += 1;
        }
        let sectors = (buf.len() / SECTOR) as u64;
        if self.next + sectors < self.cap() {
            buf.resize(buf.len() + SECTOR, 0);
        }
        let at = self.next as usize * SECTOR;
        self.data[at..at + buf.len()].copy_from_slice(&buf);
        self.next += sectors;
        starts
    }
}

impl Sectors for MemDisk {
    fn capacity(&self) -> u64 {
        self.cap()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.reads += 1;
        let at = sector as usize * SECTOR;
        buf.copy_from_slice(self.data.get(at..at + buf.len()).ok_or(())?);
        Ok(())
    }
}

impl LogSink for MemDisk {
    fn append(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), ()> {
        if self.next + disklog::record_sectors(key.len(), value.len()) as u64 > self.cap() {
            return Err(());
        }
        self.write_batch(&[(op, key, value)]);
        Ok(())
    }
}

fn load(disk: &mut MemDisk) -> (Store, Replayed) {
    let mut store = Store::new();
    let r = replay(disk, |rec| store.apply(rec)).expect("replay");
    (store, r)
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let len = 1 + i * 37 % MAX_VALUE;
    format!("v{i}-").repeat(len).into_bytes()[..len].to_vec()
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
fn header_states() {
    use disklog::HeaderState::*;
    assert_eq!(disklog::check_header(&[0; SECTOR]), Blank);
    assert_eq!(disklog::check_header(&disklog::header()), Valid);
    let mut h = disklog::header();
    h[3] ^= 1;
    assert_eq!(disklog::check_header(&h), Foreign);
    let mut disk = MemDisk::new(16);
    disk.data[..4].copy_from_slice(b"MBR!");
    assert!(replay(&mut disk, |_| {}).is_err(), "a foreign disk is not overwritten");
}

#[test]
fn a_blank_disk_replays_to_nothing() {
    let mut disk = MemDisk::new(64);
    let (store, r) = load(&mut disk);
    assert!(r.blank);
    assert_eq!((store.len(), r.next_sector, r.next_seq), (0, 1, 0));
}

/// 10,000 keys, overwrites and deletes, batches of various sizes: the replayed store equals the
/// one that wrote the log, and appending after a replay continues the same log.
#[test]
fn replay_restores_every_write_across_restarts() {
    let mut disk = MemDisk::new(200_000);
    disk.format();
    let mut store = Store::new();
    let mut out = Vec::new();
    for i in 0..10_000 {
        let line = [b"SET ".as_slice(), &key(i), b" ", &value(i)].concat();
        store.execute(&line, &mut disk, "", &mut out);
    }
    for i in (0..10_000).step_by(7) {
        store.execute(&[b"DEL ".as_slice(), &key(i)].concat(), &mut disk, "", &mut out);
    }
    let batch: Vec<(Vec<u8>, Vec<u8>)> = (0..50).map(|i| (key(i * 3 + 1), b"batched".to_vec())).collect();
    let recs: Vec<(u8, &[u8], &[u8])> = batch.iter().map(|(k, v)| (OP_SET, &k[..], &v[..])).collect();
    disk.write_batch(&recs);
    for (k, v) in &batch {
        store.apply(&Record { seq: 0, op: OP_SET, key: k, value: v });
    }

    let (replayed, r) = load(&mut disk);
    assert_eq!((r.skipped, r.dropped_tail), (0, 0));
    assert_eq!(r.records, 10_000 + 10_000 / 7 + 1 + 50);
    assert_eq!(replayed.len(), store.len());
    for i in 0..10_000 {
        assert_eq!(replayed.get(&key(i)), store.get(&key(i)), "key {i}");
    }
    assert!(disk.reads < 2_000, "reads in chunks, not sector by sector ({} reads)", disk.reads);

    // Restart, write more, restart again.
    disk.resume(&r);
    let mut again = Store::new();
    again.execute(b"SET late arrival", &mut disk, "", &mut out);
    let (third, r3) = load(&mut disk);
    assert_eq!(r3.records, r.records + 1);
    assert_eq!(third.get(b"late"), Some(&b"arrival"[..]));
}

#[test]
fn a_corrupt_tail_record_is_dropped_alone_and_overwritten() {
    let mut disk = MemDisk::new(4096);
    disk.format();
    let mut starts = Vec::new();
    for i in 0..20 {
        starts.extend(disk.write_batch(&[(OP_SET, &key(i), &value(i * 50))]));
    }
    let last = starts[19] as usize * SECTOR;
    disk.data[last + 30] ^= 0x40;
    let (store, r) = load(&mut disk);
    assert_eq!((r.records, r.dropped_tail, r.skipped), (19, 1, 0));
    assert_eq!((r.next_sector, r.next_seq), (starts[19], 19));
    assert_eq!(store.len(), 19);
    assert_eq!(store.get(&key(19)), None);
    assert_eq!(store.get(&key(18)), Some(&value(18 * 50)[..]));

    // Appending resumes over the bad record; the next boot sees a clean log.
    disk.resume(&r);
    disk.write_batch(&[(OP_SET, b"new", b"1")]);
    let (store, r) = load(&mut disk);
    assert_eq!((r.records, r.dropped_tail), (20, 0));
    assert_eq!(store.get(b"new"), Some(&b"1"[..]));
}

#[test]
fn a_torn_tail_at_any_sector_loses_only_the_last_record() {
    let mut base = MemDisk::new(512);
    base.format();
    for i in 0..5 {
        base.write_batch(&[(OP_SET, &key(i), &value(i * 811 + 100))]);
    }
    let (_, full) = load(&mut base);
    assert_eq!(full.records, 5);
    let (_, four) = {
        let mut d = MemDisk::new(512);
        d.format();
        for i in 0..4 {
            d.write_batch(&[(OP_SET, &key(i), &value(i * 811 + 100))]);
        }
        load(&mut d)
    };
    // Garbage written over the last record's sectors one by one (a torn write).
    for torn in four.next_sector..full.next_sector {
        let mut d = MemDisk { data: base.data.clone(), next: 0, seq: 0, reads: 0 };
        let at = torn as usize * SECTOR;
        d.data[at..at + SECTOR].fill(0xa5);
        let (store, r) = load(&mut d);
        assert_eq!((r.records, r.dropped_tail), (4, 1), "torn sector {torn}");
        assert_eq!(r.next_sector, four.next_sector);
        assert_eq!(store.len(), 4);
    }
}

#[test]
fn a_corrupt_record_inside_the_log_is_skipped_alone() {
    let mut disk = MemDisk::new(4096);
    disk.format();
    let mut starts = Vec::new();
    for i in 0..10 {
        starts.extend(disk.write_batch(&[(OP_SET, &key(i), &value(i * 400))]));
    }
    disk.data[starts[4] as usize * SECTOR] ^= 1; // the magic of record 4
    let (store, r) = load(&mut disk);
    assert_eq!((r.records, r.skipped, r.dropped_tail), (9, 1, 0));
    assert_eq!(store.get(&key(4)), None);
    assert_eq!(store.get(&key(9)), Some(&value(9 * 400)[..]));
    assert_eq!((r.next_sector, r.next_seq), (disk.next, 10));
}

#[test]
fn a_full_log_answers_disk_full() {
    let mut disk = MemDisk::new(4);
    disk.format();
    let mut store = Store::new();
    let mut out = Vec::new();
    store.execute(b"SET a 1", &mut disk, "", &mut out);
    store.execute(b"SET b 2", &mut disk, "", &mut out);
    store.execute(b"SET c 3", &mut disk, "", &mut out);
    store.execute(b"SET d 4", &mut disk, "", &mut out);
    store.execute(b"DEL a", &mut disk, "", &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), "OK\nOK\nOK\nERR disk full\nERR disk full\n");
    assert_eq!(store.get(b"d"), None, "a refused SET changes nothing");
    assert_eq!(store.get(b"a"), Some(&b"1"[..]), "a refused DEL changes nothing");
    let (replayed, r) = load(&mut disk);
    assert_eq!((replayed.len(), r.records, r.next_sector), (3, 3, 4));
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

    let mut disk = MemDisk::new(64);
    disk.format();
    let mut store = Store::new();
    let mut out = Vec::new();
    for line in ["SET a 1", "GET a", "SET a 22", "GET a", "DEL a", "DEL a", "GET a", "NOPE", "STATS"] {
        store.execute(line.as_bytes(), &mut disk, "extra=1", &mut out);
    }
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "OK\nVALUE 1\nOK\nVALUE 22\nOK\nNOT_FOUND\nNOT_FOUND\nERR unknown command\n\
         STATS keys=0 sets=2 gets=3 dels=2 errors=1 extra=1\n"
    );
    // DEL of a missing key writes nothing.
    let (_, r) = load(&mut disk);
    assert_eq!(r.records, 3);
}
