//! Issue 15 point 4 under a running VM: the kv guest's disk is on gfs (a master and four
//! chunkservers), a client sends SETs without pause, and chunkserver 0's disk fails under it
//! (`ftvm_tests::disks`): a small tmpfs fills to the last byte and later empties, or an ext4 file
//! system on a loop device is shut down and returns I/O errors from then on. The VM keeps
//! serving (no write fails in the guest, no long gap between replies), the chunkserver and the
//! master say what happened, and gfs moves the disk's chunk off the sick chunkserver onto the
//! fourth one; a full disk takes chunks again once space returns. Every acknowledged SET reads
//! back, from the running VM and from a new VM over the same gfs file. Needs root.

use ftvm_tests::disks::fill;
use ftvm_tests::gfs::{ChunkserverDisk, Cluster};
use ftvm_tests::kv::{self, Client as KvClient, PhasedSets};
use ftvm_tests::{cannot_run, namespaces_unavailable, NetNs, Process};
use std::path::Path;
use std::time::{Duration, Instant};

/// The kv guest's disk.
const DISK: &str = "gfs:/vm/kv.img";
/// Its file in gfs.
const GFS_FILE: &str = "/vm/kv.img";
/// The longest the client may wait for a reply while chunkserver 0's disk is sick: the write
/// moves to a new version without the sick replica at once, not when a lease runs out (a lease
/// is 3 s; waiting one out shows as a gap of 3.5 s or more).
const LONGEST_GAP: Duration = Duration::from_millis(2500);

/// A SET's value: 1-2 KiB, so the kv log grows into new blocks of the disk all the time.
fn value(i: usize) -> String {
    format!("v{i}-").repeat(200)
}

#[test]
fn kv_on_gfs_keeps_serving_while_a_chunkserver_disk_fills_and_empties() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let ns = kv::network("gfsdiskfull").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(&ns, dir.path(), ChunkserverDisk::Tmpfs("48m")) else { return };
    let vm = boot(&ns, &c);

    let load = PhasedSets::start(&ns, "full", value);
    load.wait_for_more(100).unwrap();
    let full = c.chunkservers[0].clone();
    assert!(holders(&c, 0).contains(&full), "chunkserver 0 holds no replica of the disk");

    load.enter_phase(1);
    let filler = fill(&c.chunkserver_dir(0)).unwrap();
    load.wait_for_more(300).unwrap();
    let cs_log = c.chunkserver_output(0);
    assert!(cs_log.contains("chunkserver: disk full in "), "{cs_log}");
    assert!(c.master_output().contains(&format!("chunkserver {full} reports its disk full")), "{}", c.master_output());
    moves_off(&c, &full);
    load.wait_for_more(100).unwrap();

    load.enter_phase(2);
    std::fs::remove_file(&filler).unwrap();
    wait_until("the chunkserver's disk usable again", Duration::from_secs(20), || {
        c.master_output().contains(&format!("chunkserver {full} reports its disk usable again"))
    });
    assert!(c.chunkserver_output(0).contains("usable again (was full)"));
    load.wait_for_more(200).unwrap();
    let (sets, [before, full_gap, after]) = load.finish().unwrap();
    eprintln!(
        "{sets} SETs; longest gap between replies: {before:?} before the fault, {full_gap:?} while chunkserver 0's \
         disk was full, {after:?} after space returned"
    );
    went_on_without_the_sick_replica(&c);
    assert!(full_gap < LONGEST_GAP, "kv stalled {full_gap:?} while the disk was full");
    reads_back(&ns, &c, vm, "full", sets);
}

#[test]
fn kv_on_gfs_keeps_serving_while_a_chunkserver_disk_returns_io_errors() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let ns = kv::network("gfsdiskeio").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = cluster(&ns, dir.path(), ChunkserverDisk::LoopExt4) else { return };
    let vm = boot(&ns, &c);

    let load = PhasedSets::start(&ns, "eio", value);
    load.wait_for_more(100).unwrap();
    let failing = c.chunkservers[0].clone();
    assert!(holders(&c, 0).contains(&failing), "chunkserver 0 holds no replica of the disk");

    load.enter_phase(1);
    c.fail_disk_with_io_errors(0).unwrap();
    load.wait_for_more(300).unwrap();
    let cs_log = c.chunkserver_output(0);
    assert!(cs_log.contains("chunkserver: disk I/O error in "), "{cs_log}");
    assert!(cs_log.contains("its replicas go elsewhere"), "{cs_log}");
    let master = c.master_output();
    assert!(master.contains(&format!("chunkserver {failing} reports disk I/O errors")), "{master}");
    moves_off(&c, &failing);
    load.wait_for_more(100).unwrap();

    // The shut-down file system never works again: the VM serves on without it.
    load.enter_phase(2);
    load.wait_for_more(200).unwrap();
    let (sets, [before, failing_gap, after]) = load.finish().unwrap();
    eprintln!(
        "{sets} SETs; longest gap between replies: {before:?} before the fault, {failing_gap:?} while chunkserver \
         0's disk returned I/O errors, {after:?} after its chunk moved to chunkserver 3"
    );
    went_on_without_the_sick_replica(&c);
    assert!(failing_gap < LONGEST_GAP, "kv stalled {failing_gap:?} while the disk returned I/O errors");
    assert!(!c.master_output().contains(&format!("chunkserver {failing} reports its disk usable again")));
    reads_back(&ns, &c, vm, "eio", sets);
}

/// A master and four chunkservers in `ns`, chunkserver 0 on `disk`, and the kv guest's disk on
/// them; None (through [`cannot_run`]) if `disk` cannot be mounted here.
fn cluster<'a>(ns: &'a NetNs, parent: &Path, disk: ChunkserverDisk) -> Option<Cluster<'a>> {
    let c = match Cluster::start_with(Some(ns), 4, parent, &[(0, disk)]) {
        Ok(c) => c,
        Err(e) if ["tmpfs", "loop device"].iter().any(|what| e.to_string().contains(what)) => {
            cannot_run(&format!("{e:#}"));
            return None;
        }
        Err(e) => panic!("gfs cluster: {e:#}"),
    };
    c.create_disk(DISK, "64M").unwrap();
    Some(c)
}

/// Boots the kv guest on the gfs disk and waits until it listens.
fn boot(ns: &NetNs, c: &Cluster) -> Process {
    kv::boot(ns, Path::new(DISK), &["--gfs-master", &c.master_addr], &[]).unwrap()
}

/// The chunkservers holding chunk `index` of the disk, current replicas only, from `gfs stat`.
fn holders(c: &Cluster, index: u64) -> Vec<String> {
    let out = c.gfs(&["stat", GFS_FILE]).unwrap();
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(line) = stat.lines().find(|l| l.starts_with(&format!("chunk {index} "))) else { return Vec::new() };
    let Some(replicas) = line.split(" replicas ").nth(1) else { return Vec::new() };
    replicas
        .split_whitespace()
        .filter(|r| !r.contains("stale"))
        .filter_map(|r| r.split('@').next())
        .map(|a| a.trim_matches(',').to_owned())
        .collect()
}

/// gfs moves the disk's chunk off `sick` onto the fourth chunkserver: three replicas again.
fn moves_off(c: &Cluster, sick: &str) {
    wait_until("the disk's chunk off the sick chunkserver, three replicas", Duration::from_secs(60), || {
        let now = holders(c, 0);
        now.len() == 3 && !now.iter().any(|h| h == sick)
    });
}

/// The master moved the write to a new version without the sick replica, and no chunk is
/// missing.
fn went_on_without_the_sick_replica(c: &Cluster) {
    let master = c.master_output();
    assert!(
        master.contains("replica's disk is full or failing under a lease: new version without it")
            || master.contains("the primary's disk is full or failing: lease revoked"),
        "{master}"
    );
    let fsck = String::from_utf8_lossy(&c.gfs(&["fsck"]).unwrap().stdout).into_owned();
    assert!(fsck.contains(" 0 missing"), "{fsck}");
}

/// Every acknowledged SET (`{prefix}0..sets`) reads back from the running `vm`, then from a new
/// VM over the same gfs file, which replays exactly those.
fn reads_back(ns: &NetNs, c: &Cluster, vm: Process, prefix: &'static str, sets: usize) {
    let check = move || -> anyhow::Result<()> {
        let mut kv = KvClient::connect()?;
        for i in 0..sets {
            let answer = kv.request(&format!("GET {prefix}{i}"))?;
            anyhow::ensure!(answer == format!("VALUE {}", value(i)), "GET {prefix}{i}: {answer}");
        }
        Ok(())
    };
    ns.within(check).unwrap();
    drop(vm);
    let vm = boot(ns, c);
    assert!(vm.output().contains(&format!("kv: replayed {sets} record(s)")), "{}", vm.output());
    ns.within(check).unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
