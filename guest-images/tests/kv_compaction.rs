//! Host tests of the `kv` log's compaction (guest `log.rs`, `layout.rs`, `replay.rs`): it keeps
//! a bounded key set within a small disk forever, serves while it copies, refuses only what
//! does not fit, and a power cut at any write (whole, lost or torn) boots to exactly the
//! acknowledged state: every write of a compaction-heavy run swept, and random runs (proptest).

extern crate alloc;

mod kv_support;

use kv_support::kv::log::Log;
use kv_support::kv::store::{record_bytes, Store};
use kv_support::{boot, contents, finish_compaction, request, MemDisk, Tear};
use proptest::prelude::*;
use std::collections::BTreeMap;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    /// SET key `k` to `len` copies of `fill`.
    Set {
        k: u8,
        len: u16,
        fill: u8,
    },
    Del {
        k: u8,
    },
}

impl Op {
    fn key(&self) -> Vec<u8> {
        let k = match self {
            Op::Set { k, .. } | Op::Del { k } => *k,
        };
        format!("key-{k:03}").into_bytes()
    }
    fn value(&self) -> Option<Vec<u8>> {
        match self {
            Op::Set { len, fill, .. } => Some(vec![b'a' + fill % 26; usize::from(*len).max(1)]),
            Op::Del { .. } => None,
        }
    }
    fn line(&self) -> String {
        match self.value() {
            Some(v) => format!("SET {} {}", String::from_utf8_lossy(&self.key()), String::from_utf8_lossy(&v)),
            None => format!("DEL {}", String::from_utf8_lossy(&self.key())),
        }
    }
    /// Applies an acknowledged op with its reply to the expected state.
    fn acknowledge(&self, reply: &str, state: &mut State) {
        match (self.value(), reply) {
            (Some(v), "OK") => {
                state.insert(self.key(), v);
            }
            (None, "OK") => {
                state.remove(&self.key());
            }
            (None, "NOT_FOUND") => assert!(!state.contains_key(&self.key()), "DEL of a present key: NOT_FOUND"),
            (_, "ERR disk full") => {}
            _ => panic!("{} answered {reply:?}", self.line()),
        }
    }
}

/// A run of loop iterations (each: some requests, then one commit; an empty one is an idle
/// iteration that only moves a compaction on) on `disk`.
struct Run {
    log: Log<MemDisk>,
    store: Store,
    acked: State,
    /// Compactions seen to start and to finish.
    started: u64,
}

/// What a run that lost power had in flight.
struct Crash {
    image: Vec<u8>,
    acked: State,
    in_flight: Vec<Op>,
}

impl Run {
    fn new(disk: MemDisk, chunk: usize) -> Result<Run, Crash> {
        let (mut log, store, _) = boot(disk);
        log.set_snapshot_chunk(chunk);
        let run = Run { log, store, acked: State::new(), started: 0 };
        match run.log.device().after_cut.clone() {
            Some(image) => Err(Crash { image, acked: State::new(), in_flight: Vec::new() }),
            None => Ok(run),
        }
    }

    /// Runs the iterations until the power cut, if any.
    fn iterations(&mut self, iterations: &[Vec<Op>]) -> Result<(), Crash> {
        for ops in iterations {
            let was_compacting = self.log.compacting();
            let mut replies = Vec::new();
            for op in ops {
                let mut out = Vec::new();
                self.store.execute(op.line().as_bytes(), &mut self.log, "", &mut out);
                replies.push(String::from_utf8(out).expect("ASCII").trim_end().to_owned());
            }
            self.log.commit(&self.store);
            if !was_compacting && self.log.compacting() {
                self.started += 1;
            }
            if let Some(image) = self.log.device().after_cut.clone() {
                return Err(Crash { image, acked: self.acked.clone(), in_flight: ops.clone() });
            }
            // The replies leave only now.
            for (op, reply) in ops.iter().zip(&replies) {
                op.acknowledge(reply, &mut self.acked);
            }
            assert_eq!(contents(&self.store), self.acked, "the store is what was acknowledged");
        }
        Ok(())
    }
}

impl Crash {
    /// Boots from the image; checks every key against the acknowledged state (a key written by
    /// a request in flight may hold either); returns the booted log and store.
    fn recover(&self, chunk: usize) -> (Log<MemDisk>, Store, bool) {
        let (mut log, store, found) = boot(MemDisk::from_image(self.image.clone()));
        log.set_snapshot_chunk(chunk);
        let recovered = contents(&store);
        let keys: std::collections::BTreeSet<&Vec<u8>> = recovered.keys().chain(self.acked.keys()).collect();
        for key in keys {
            let got = recovered.get(key);
            let mut allowed = vec![self.acked.get(key)];
            let in_flight: Vec<Option<Vec<u8>>> =
                self.in_flight.iter().filter(|op| &op.key() == key).map(|op| op.value()).collect();
            allowed.extend(in_flight.iter().map(Option::as_ref));
            assert!(
                allowed.contains(&got),
                "key {} recovered as {:?}; acknowledged {:?}, in flight {:?}",
                String::from_utf8_lossy(key),
                got.map(|v| v.len()),
                self.acked.get(key).map(|v| v.len()),
                in_flight.iter().map(|v| v.as_ref().map(Vec::len)).collect::<Vec<_>>()
            );
        }
        let live: u64 = recovered.iter().map(|(k, v)| record_bytes(k, v)).sum();
        assert_eq!(store.live_bytes(), live, "live bytes are counted as the records are replayed");
        (log, store, found.compaction.is_some())
    }
}

/// Deterministic pseudo-random iterations over `keys` keys with values up to `max_len`.
fn workload(iterations: usize, keys: u8, max_len: u16, seed: u64) -> Vec<Vec<Op>> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..iterations)
        .map(|_| {
            let n = (next() % 4) as usize; // 0: an idle iteration
            (0..n)
                .map(|_| {
                    let k = (next() % u64::from(keys)) as u8;
                    if next() % 8 == 0 {
                        Op::Del { k }
                    } else {
                        Op::Set { k, len: 1 + (next() % u64::from(max_len)) as u16, fill: next() as u8 }
                    }
                })
                .collect()
        })
        .collect()
}

/// Ten times the disk's capacity in SETs over 200 keys on a 4 MiB disk: never a refusal, the
/// log stays within the disk, and a reboot loads the latest value of every key.
#[test]
fn ten_times_the_disk_in_sets_over_a_bounded_key_set() {
    let sectors = 8192; // 4 MiB
    let (mut log, mut store, _) = boot(MemDisk::new(sectors));
    let mut latest = State::new();
    let mut written = 0u64;
    let mut i = 0u64;
    while written < 10 * (sectors as u64 * 512) {
        let k = format!("key-{:03}", i * 7919 % 200);
        let v = format!("{i}-").repeat(1 + (i % 300) as usize);
        assert_eq!(request(&mut log, &mut store, &format!("SET {k} {v}")), "OK", "SET number {i}");
        written += record_bytes(k.as_bytes(), v.as_bytes());
        latest.insert(k.into_bytes(), v.into_bytes());
        let (used, cap) = log.usage();
        assert!(used <= cap);
        i += 1;
    }
    assert!(log.compactions() >= 10, "{} compactions", log.compactions());
    assert_eq!(contents(&store), latest);
    let (_, replayed, found) = boot(log.into_device());
    assert_eq!(contents(&replayed), latest, "after {} compactions", found.superblock.compactions);
}

/// Requests are served between the commits of a compaction, which copies one chunk a commit;
/// at its end the new region alone holds the state and the log is down to the live set.
#[test]
fn a_compaction_copies_in_chunks_while_requests_are_served() {
    let (mut log, mut store, _) = boot(MemDisk::new(2048)); // regions of 1020 sectors
    log.set_snapshot_chunk(4096);
    let mut sets = 0;
    while !log.compacting() {
        let k = sets % 100;
        assert_eq!(request(&mut log, &mut store, &format!("SET k{k:03} {}", "r".repeat(400 + sets / 100))), "OK");
        sets += 1;
        assert!(sets < 2000);
    }
    assert!(log.compacting(), "half a region written, three quarters garbage: compacting");
    let live = store.live_bytes();
    let commits_before = log.commits;
    let mut rounds = 0;
    while log.compacting() {
        // A SET ahead of the copy, one behind it, a DEL and a GET (a commit each).
        let n = rounds;
        assert_eq!(request(&mut log, &mut store, &format!("SET k{:03} during-{n}", 99 - n % 100)), "OK");
        assert_eq!(request(&mut log, &mut store, &format!("SET k{:03} during-{n}", n % 100)), "OK");
        let del = request(&mut log, &mut store, &format!("DEL k{:03}", 50 + n % 7));
        assert!(del == "OK" || del == "NOT_FOUND", "{del}");
        assert!(request(&mut log, &mut store, &format!("GET k{:03}", n % 100)).starts_with("VALUE "));
        rounds += 1;
        assert!(rounds < 1000);
    }
    let commits = log.commits - commits_before;
    assert!(commits >= live / 4096, "{commits} commits copied {live} bytes in chunks of 4096");
    assert_eq!(log.compactions(), 1);
    assert!(log.log_bytes() < 2 * live + 64 * 1024, "log {} bytes, live {live}", log.log_bytes());
    let expected = contents(&store);
    // The old region is garbage now: wipe it; the new one alone boots to the same state.
    let mut disk = log.into_device();
    let (_, _, found) = boot(MemDisk::from_image(disk.data.clone()));
    assert_eq!((found.superblock.generation, found.superblock.active), (2, 1));
    let old = 8 * 512..(8 + found.superblock.region_sectors as usize) * 512;
    disk.data[old].fill(0x5a);
    let (_, replayed, found) = boot(disk);
    assert!(found.compaction.is_none());
    assert_eq!(contents(&replayed), expected);
}

/// A live set that outgrows half the disk: the SET that does not fit is refused (`ERR disk
/// full`), GETs go on, and the disk boots to what was acknowledged. Deleting keys makes room.
#[test]
fn a_disk_too_small_for_the_live_set_refuses_the_set_that_does_not_fit() {
    let (mut log, mut store, _) = boot(MemDisk::new(1024)); // regions of 508 sectors
    let mut acked = State::new();
    let mut refused = None;
    for i in 0..2000 {
        let (k, v) = (format!("k{i:04}"), "v".repeat(900)); // 2 sectors each
        match request(&mut log, &mut store, &format!("SET {k} {v}")).as_str() {
            "OK" => {
                acked.insert(k.into_bytes(), v.into_bytes());
            }
            "ERR disk full" => {
                refused = Some(i);
                break;
            }
            other => panic!("{other}"),
        }
        // Overwrites make garbage, so compactions run before the live set is too large.
        assert_eq!(request(&mut log, &mut store, &format!("SET k{:04} {}", i / 2, "w".repeat(900))), "OK");
        acked.insert(format!("k{:04}", i / 2).into_bytes(), vec![b'w'; 900]);
    }
    let refused = refused.expect("the disk fills");
    let live = store.live_bytes();
    assert!(live * 10 >= 508 * 512 * 8, "refused at {live} live bytes, under 80% of a region");
    assert!(log.compactions() > 0);
    for (k, v) in &acked {
        let k = String::from_utf8_lossy(k);
        assert_eq!(request(&mut log, &mut store, &format!("GET {k}")), format!("VALUE {}", String::from_utf8_lossy(v)));
    }
    assert_eq!(request(&mut log, &mut store, &format!("GET k{refused:04}")), "NOT_FOUND");
    finish_compaction(&mut log, &store);
    let (mut log, mut store, _) = boot(log.into_device());
    assert_eq!(contents(&store), acked);
    // Deleting half the keys makes room again.
    for i in (0..refused).step_by(2) {
        assert_eq!(request(&mut log, &mut store, &format!("DEL k{i:04}")), "OK", "DEL k{i:04}");
    }
    for i in 0..50 {
        assert_eq!(request(&mut log, &mut store, &format!("SET again{i} {}", "z".repeat(900))), "OK", "SET again{i}");
    }
}

/// Power cut at every write of a run with a dozen compactions (several commits each), with
/// the write whole, lost, torn after its first sector, or scattered: the boot holds every
/// acknowledged write, and the run goes on from there to the same state after another boot.
#[test]
fn a_power_cut_at_any_write_of_compacting_runs_keeps_the_acknowledged_state() {
    let chunk = 2048;
    let sectors = 192; // regions of 92 sectors
    let iterations = workload(400, 10, 1200, 0x5eed);
    let mut clean = Run::new(MemDisk::new(sectors), chunk).unwrap_or_else(|_| unreachable!());
    assert!(clean.iterations(&iterations).is_ok());
    let writes = clean.log.device().writes;
    assert!(clean.log.compactions() >= 8, "{} compactions in the clean run", clean.log.compactions());
    let (mut resumed, mut after_flip) = (0, 0);
    for at in 1..=writes {
        for tear in [Tear::Whole, Tear::Nothing, Tear::Prefix(1), Tear::Scatter(at)] {
            let mut disk = MemDisk::new(sectors);
            disk.cut_power_at(at, tear);
            let crash = match Run::new(disk, chunk).and_then(|mut run| run.iterations(&iterations)) {
                Ok(()) => panic!("write {at} never happened"),
                Err(crash) => crash,
            };
            let (log, store, was_compacting) = crash.recover(chunk);
            resumed += usize::from(was_compacting);
            after_flip += usize::from(log.compactions() > 0);
            // Go on from the recovered state: the same requests again, then a clean boot.
            let mut run = Run { acked: contents(&store), log, store, started: 0 };
            assert!(run.iterations(&iterations[..60]).is_ok());
            finish_compaction(&mut run.log, &run.store);
            let (_, replayed, _) = boot(run.log.into_device());
            assert_eq!(contents(&replayed), run.acked, "cut at write {at} ({tear:?}), then 60 iterations");
        }
    }
    assert!(resumed > 100, "only {resumed} cuts fell inside a compaction");
    assert!(after_flip > 100, "only {after_flip} cuts after a finished compaction");
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, 1u16..1600, any::<u8>()).prop_map(|(k, len, fill)| Op::Set { k, len, fill }),
        1 => (0u8..12).prop_map(|k| Op::Del { k }),
    ]
}

fn tear() -> impl Strategy<Value = Tear> {
    prop_oneof![
        Just(Tear::Whole),
        Just(Tear::Nothing),
        (0usize..600).prop_map(Tear::Prefix),
        any::<u64>().prop_map(Tear::Scatter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random SETs and DELs (idle iterations let compactions run), on random small disks with
    /// random copy chunks, power cut at a random write in a random way: the boot holds exactly
    /// what was acknowledged (a key written in flight may hold either value), and after more
    /// requests and another boot, exactly what was acknowledged since.
    #[test]
    fn power_cuts_at_random_writes_keep_the_acknowledged_state(
        iterations in prop::collection::vec(prop::collection::vec(op(), 0..4), 50..300),
        sectors in 80usize..400,
        chunk in 512usize..8192,
        cut in any::<prop::sample::Index>(),
        tear in tear(),
    ) {
        let mut clean = Run::new(MemDisk::new(sectors), chunk).unwrap_or_else(|_| unreachable!());
        prop_assert!(clean.iterations(&iterations).is_ok());
        let writes = clean.log.device().writes as usize;
        let at = 1 + cut.index(writes) as u64;
        let mut disk = MemDisk::new(sectors);
        disk.cut_power_at(at, tear);
        let crash = match Run::new(disk, chunk).and_then(|mut run| run.iterations(&iterations)) {
            Ok(()) => panic!("write {at} of {writes} never happened"),
            Err(crash) => crash,
        };
        let (log, store, _) = crash.recover(chunk);
        let mut run = Run { acked: contents(&store), log, store, started: 0 };
        let more = &iterations[..iterations.len().min(40)];
        prop_assert!(run.iterations(more).is_ok());
        finish_compaction(&mut run.log, &run.store);
        let (_, replayed, _) = boot(run.log.into_device());
        prop_assert_eq!(contents(&replayed), run.acked);
    }
}

/// A compaction's first batch torn so that its first records are garbage and a later one is
/// intact leaves no continuation (nothing there was acknowledged). Appending then goes on in
/// the active region with the same sequence numbers, so the boot must erase that debris: a
/// later boot would otherwise take the intact record for the continuation of the log.
#[test]
fn the_debris_of_a_torn_compaction_start_is_erased_at_boot() {
    let (mut log, mut store, _) = boot(MemDisk::new(192));
    assert_eq!(request(&mut log, &mut store, "SET before 1"), "OK");
    let next_seq = log.records();
    let mut disk = log.into_device();
    let (_, _, found) = boot(MemDisk::from_image(disk.data.clone()));
    let other = (8 + found.superblock.region_sectors) as usize * 512;
    disk.data[other..other + 1024].fill(0xa5);
    let mut phantom = Vec::new();
    let rec =
        kv_support::kv::disklog::Record { seq: next_seq + 2, op: 1, key: b"phantom", value: b"never-acknowledged" };
    kv_support::kv::disklog::encode(&rec, &mut phantom);
    disk.data[other + 1024..other + 1024 + phantom.len()].copy_from_slice(&phantom);

    let (mut log, mut store, found) = boot(disk);
    assert!(found.compaction.is_none(), "garbage at the other region's start continues nothing");
    assert_eq!(request(&mut log, &mut store, "SET real 1"), "OK");
    let (_, store, found) = boot(log.into_device());
    assert!(found.compaction.is_none());
    assert_eq!(store.get(b"phantom"), None, "a record nobody acknowledged came back");
    assert_eq!(store.get(b"real"), Some(&b"1"[..]));
}
