//! Mutations on real chunkservers in this process: a primary and its secondaries reach each
//! other over loopback; the master is not needed (versions and leases are set as a grant
//! would set them).

use super::super::ChunkServer;
use super::*;
use crate::protocol::Fence;
use crate::test_support::{closed_addr, start_chunkserver, start_chunkserver_of, temp_dir};
use std::time::{Duration, Instant};

const VERSION: Version = 3;

fn start(name: &str) -> Arc<ChunkServer> {
    start_chunkserver(&format!("mutation-{name}"))
}

/// A primary holding a lease on `handles` at [`VERSION`], and two secondaries.
struct Group {
    primary: Arc<ChunkServer>,
    secondaries: Vec<Arc<ChunkServer>>,
}

impl Group {
    fn start(name: &str, handles: &[ChunkHandle]) -> Group {
        let group = Group {
            primary: start(&format!("{name}-p")),
            secondaries: vec![start(&format!("{name}-s1")), start(&format!("{name}-s2"))],
        };
        for cs in group.all() {
            for &h in handles {
                cs.store.set_version(h, VERSION).expect("set the version");
            }
        }
        for &h in handles {
            group.primary.grant(h, VERSION, Instant::now(), Duration::from_secs(60));
        }
        group
    }

    fn all(&self) -> impl Iterator<Item = &Arc<ChunkServer>> {
        std::iter::once(&self.primary).chain(&self.secondaries)
    }

    fn secondary_addrs(&self) -> Vec<String> {
        self.secondaries.iter().map(|cs| cs.addr.clone()).collect()
    }

    /// Pushes `data` as `id` to every replica, as a client's push down the chain does.
    fn push(&self, id: u64, data: &[u8]) {
        for cs in self.all() {
            push(cs, id, data);
        }
    }
}

fn push(cs: &ChunkServer, id: u64, data: &[u8]) {
    cs.buffers.admit(data.len()).expect("room for the push").fill(id, data.to_vec());
}

fn mutation(handle: ChunkHandle, offset: u64, id: u64) -> Mutation {
    Mutation { handle, version: VERSION, offset, id, fence: None, durable: true }
}

fn read(cs: &ChunkServer, handle: ChunkHandle, offset: u64, len: u64) -> Vec<u8> {
    let chunk = cs.store.get(handle).expect("a replica");
    let mut out = Vec::new();
    let range = cs.store.read(&chunk, VERSION, offset, len, &mut out).expect("read");
    out[range].to_vec()
}

fn chunk_len(cs: &ChunkServer, handle: ChunkHandle) -> u64 {
    cs.store.chunk_len(&cs.store.get(handle).expect("a replica"))
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    match r {
        Err(e) => e.kind().unwrap_or_else(|| panic!("an error without a kind: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn writes_reach_every_replica_in_the_primarys_serial_order() {
    let g = Group::start("writes", &[7]);
    for (id, offset) in [(1u64, 0u64), (2, 5000), (3, 100)] {
        let data = bytes(300, id as u8);
        g.push(id, &data);
        let durable = id != 2;
        let reply = Mutation { durable, ..mutation(7, offset, id) }.write_primary(&g.primary, &g.secondary_addrs());
        assert_eq!(reply.expect("write"), ChunkReply::Written { failed: vec![] }, "write {id}");
        for cs in g.all() {
            assert_eq!(read(cs, 7, offset, 300), data, "write {id} on {}", cs.addr);
        }
    }
    for cs in &g.secondaries {
        assert_eq!(cs.store.get(7).expect("a replica").state.lock_unpoisoned().last_serial, 3);
    }
}

#[test]
fn inline_writes_carry_their_data_to_every_replica_in_one_serial_order_with_pushed_ones() {
    let g = Group::start("inline", &[7]);
    // Inline and pushed writes interleaved over overlapping ranges: the bytes each replica ends
    // with are the last write's only if all of them applied every write in the same order.
    let writes = [(1u64, 0u64, true), (2, 100, false), (3, 50, true), (4, 0, false), (5, 120, true)];
    let mut expect = vec![0u8; 500];
    for (id, offset, inline) in writes {
        let data = bytes(300, id as u8);
        let m = Mutation { durable: id != 3, ..mutation(7, offset, id) };
        let reply = if inline {
            m.write_primary_inline(&g.primary, &g.secondary_addrs(), &data)
        } else {
            g.push(id, &data);
            m.write_primary(&g.primary, &g.secondary_addrs())
        };
        assert_eq!(reply.expect("write"), ChunkReply::Written { failed: vec![] }, "write {id}");
        expect[offset as usize..offset as usize + 300].copy_from_slice(&data);
    }
    for cs in g.all() {
        assert_eq!(read(cs, 7, 0, 420), expect[..420], "replica {}", cs.addr);
    }
    for cs in &g.secondaries {
        assert_eq!(cs.store.get(7).expect("a replica").state.lock_unpoisoned().last_serial, 5);
        assert!(cs.buffers.take(1).is_err(), "an inline write left pushed data behind");
    }
}

#[test]
fn a_secondary_that_cannot_be_reached_is_named_and_the_others_still_apply() {
    let g = Group::start("unreachable", &[7]);
    let data = bytes(64, 9);
    g.push(1, &data);
    let gone = closed_addr();
    let reply = mutation(7, 0, 1).write_primary(&g.primary, &[g.secondaries[0].addr.clone(), gone.clone()]);
    assert_eq!(reply.expect("write"), ChunkReply::Written { failed: vec![gone] });
    assert_eq!(read(&g.secondaries[0], 7, 0, 64), data);
}

#[test]
fn a_primary_without_a_lease_at_the_version_refuses_writes_and_appends() {
    let g = Group::start("no-lease", &[7]);
    g.primary.revoke(7);
    g.push(1, b"abc");
    assert_eq!(kind(mutation(7, 0, 1).write_primary(&g.primary, &g.secondary_addrs())), ErrorKind::NoLease);
    g.push(2, b"abc");
    assert_eq!(kind(append_primary(&g.primary, mutation(7, 0, 2), 3, &g.secondary_addrs())), ErrorKind::NoLease);
    assert_eq!(chunk_len(&g.primary, 7), 0);
}

#[test]
fn a_fenced_chunk_takes_only_mutations_with_its_registers_current_generation() {
    let g = Group::start("fenced", &[7]);
    for cs in g.all() {
        *cs.store.get(7).expect("a replica").register.lock_unpoisoned() = Some("vm".into());
        cs.sync_fences(&[("vm".into(), 2)]);
    }
    let with = |generation, m: Mutation| Mutation { fence: Some(Fence { name: "vm".into(), generation }), ..m };
    let s1 = &g.secondaries[0];
    g.push(1, b"old");
    assert_eq!(kind(with(1, mutation(7, 0, 1)).write_primary(&g.primary, &[])), ErrorKind::Fenced);
    assert_eq!(kind(with(1, mutation(7, 0, 1)).apply_secondary(s1, 1)), ErrorKind::Fenced);
    assert_eq!(kind(append_primary(&g.primary, with(1, mutation(7, 0, 1)), 3, &[])), ErrorKind::Fenced);
    assert_eq!(kind(pad_secondary(s1, with(1, mutation(7, 0, 0)), 1)), ErrorKind::Fenced);
    assert_eq!(chunk_len(s1, 7), 0);
    g.push(2, b"new");
    let reply = with(2, mutation(7, 0, 2)).write_primary(&g.primary, &g.secondary_addrs());
    assert_eq!(reply.expect("write"), ChunkReply::Written { failed: vec![] });
}

#[test]
fn a_secondary_applies_rising_serials_only_and_starts_over_at_a_new_version() {
    let cs = start("serials");
    cs.store.set_version(7, VERSION).expect("set the version");
    let apply = |id: u64, serial: u64, version: Version| {
        push(&cs, id, b"x");
        Mutation { version, ..mutation(7, id, id) }.apply_secondary(&cs, serial)
    };
    assert_eq!(apply(1, 1, VERSION).expect("first serial"), ChunkReply::Applied);
    assert_eq!(kind(apply(2, 1, VERSION)), ErrorKind::InvalidArgument);
    assert_eq!(apply(3, 3, VERSION).expect("a later serial"), ChunkReply::Applied);
    assert_eq!(kind(apply(4, 2, VERSION)), ErrorKind::InvalidArgument);
    cs.store.set_version(7, VERSION + 1).expect("a new version");
    assert_eq!(apply(5, 1, VERSION + 1).expect("serials start over"), ChunkReply::Applied);
}

#[test]
fn record_appends_go_one_after_the_other_at_the_end_of_every_replica() {
    let g = Group::start("append", &[7]);
    let (first, second) = (bytes(100, 1), bytes(50, 2));
    g.push(1, &first);
    let reply = append_primary(&g.primary, mutation(7, 0, 1), 100, &g.secondary_addrs()).expect("append");
    assert_eq!(reply, ChunkReply::Appended { offset: 0, failed: vec![] });
    g.push(2, &second);
    let reply = append_primary(&g.primary, mutation(7, 0, 2), 50, &g.secondary_addrs()).expect("append");
    assert_eq!(reply, ChunkReply::Appended { offset: 100, failed: vec![] });
    for cs in g.all() {
        assert_eq!(read(cs, 7, 0, 150), [first.clone(), second.clone()].concat(), "{}", cs.addr);
    }
}

#[test]
fn a_record_longer_than_the_limit_or_unlike_its_pushed_data_is_refused() {
    let cs = start("record-limit");
    cs.store.set_version(7, VERSION).expect("set the version");
    cs.grant(7, VERSION, Instant::now(), Duration::from_secs(60));
    let too_long = append_primary(&cs, mutation(7, 0, 1), MAX_RECORD + 1, &[]).expect_err("too long");
    assert!(too_long.to_string().contains("exceeds"), "{too_long}");
    push(&cs, 2, &[5; 11]);
    let unlike = append_primary(&cs, mutation(7, 0, 2), 10, &[]).expect_err("length unlike the data");
    assert!(unlike.to_string().contains("does not match"), "{unlike}");
    push(&cs, 3, &vec![6; MAX_RECORD as usize]);
    let reply = append_primary(&cs, mutation(7, 0, 3), MAX_RECORD, &[]).expect("a record of the largest size");
    assert_eq!(reply, ChunkReply::Appended { offset: 0, failed: vec![] });
}

#[test]
fn a_record_that_does_not_fit_pads_every_replica_and_one_that_just_fits_is_appended() {
    let g = Group::start("pad", &[7, 8]);
    for (id, h) in [(1, 7), (2, 8)] {
        g.push(id, b"z");
        mutation(h, CHUNK_SIZE - 101, id).write_primary(&g.primary, &g.secondary_addrs()).expect("write");
    }
    g.push(3, &[1; 101]);
    let reply = append_primary(&g.primary, mutation(7, 0, 3), 101, &g.secondary_addrs()).expect("append");
    assert_eq!(reply, ChunkReply::ChunkFull { failed: vec![] });
    for cs in g.all() {
        assert_eq!(chunk_len(cs, 7), CHUNK_SIZE, "{} padded", cs.addr);
    }
    g.push(4, &[2; 100]);
    let reply = append_primary(&g.primary, mutation(8, 0, 4), 100, &g.secondary_addrs()).expect("append");
    assert_eq!(reply, ChunkReply::Appended { offset: CHUNK_SIZE - 100, failed: vec![] });
    for cs in g.all() {
        assert_eq!(read(cs, 8, CHUNK_SIZE - 100, 100), vec![2; 100], "{}", cs.addr);
    }
}

#[test]
fn corruption_found_while_writing_is_reported_to_the_master_at_once() {
    let mut cfg = crate::master::MasterConfig::new(temp_dir("mutation-corrupt-master"), "127.0.0.1:0");
    cfg.repair_interval = None;
    cfg.rebalance_interval = None;
    let master = crate::master::Master::open(cfg).expect("open a master");
    let master_addr = crate::master::service::serve(master.clone()).expect("serve the master").to_string();
    let cs = start_chunkserver_of("mutation-corrupt-cs", &master_addr);
    master.meta().servers.upsert(&cs.addr, "rack").expect("room for a server");
    cs.store.set_version(7, VERSION).expect("set the version");
    cs.grant(7, VERSION, Instant::now(), Duration::from_secs(60));
    push(&cs, 1, &vec![1; crate::BLOCK_SIZE as usize]);
    mutation(7, 0, 1).write_primary(&cs, &[]).expect("write a whole block");

    // Damage the block on disk; a write into part of it must read, and so check, the rest.
    let data_file = std::fs::read_dir(&cs.cfg.dir)
        .expect("list the store")
        .map(|e| e.expect("a directory entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "dat"))
        .expect("the chunk's data file");
    let file = std::fs::OpenOptions::new().write(true).open(&data_file).expect("open the data file");
    std::os::unix::fs::FileExt::write_all_at(&file, &[2], 1000).expect("damage a byte");
    push(&cs, 2, b"x");
    assert_eq!(kind(mutation(7, 10, 2).write_primary(&cs, &[])), ErrorKind::Corrupt);

    // The report goes out from a thread of its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    let heard = || master.meta().corrupt.get(&7).is_some_and(|servers| !servers.is_empty());
    while !heard() {
        assert!(Instant::now() < deadline, "the master never heard of the corrupt replica");
        std::thread::sleep(Duration::from_millis(10));
    }
}
