//! Issue 15 point 4 under a running VM: the kv guest's disk is on gfs (a master and four
//! chunkservers, chunkserver 0 on a small tmpfs), a client sends SETs without pause, and chunkserver
//! 0's disk fills to the last byte. The VM keeps serving (no write fails in the guest), the
//! chunkserver and the master say what happened, gfs moves the disk's chunks off the full
//! chunkserver, and once space returns it takes chunks again. Every acknowledged SET reads back,
//! from the running VM and from a new VM over the same gfs file. Needs root.

use ftvm_tests::gfs::Cluster;
use ftvm_tests::kv::{Client as KvClient, PhasedSets, GUEST_IP};
use ftvm_tests::{cannot_run, namespaces_unavailable, NetNs, Process};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

/// Fills the file system holding `dir` to the last byte; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    while f.write(&block).is_ok_and(|n| n > 0) {}
    while f.write(&[0x5a; 4096]).is_ok_and(|n| n > 0) {}
    path
}

/// The chunkservers holding chunk `index` of `path`, current replicas only, from `gfs stat`.
fn holders(c: &Cluster, path: &str, index: u64) -> Vec<String> {
    let out = c.gfs(&["stat", path]).unwrap();
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

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kv_on_gfs_keeps_serving_while_a_chunkserver_disk_fills_and_empties() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let ns = NetNs::new("gfsdiskfull").unwrap();
    ns.tap("tap0", "10.0.0.1/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = match Cluster::start_with(Some(&ns), 4, dir.path(), &[(0, "48m")]) {
        Ok(c) => c,
        Err(e) if e.to_string().contains("tmpfs") => return cannot_run(&format!("{e:#}")),
        Err(e) => panic!("gfs cluster: {e:#}"),
    };
    c.create_disk("gfs:/vm/kv.img", "64M").unwrap();
    let boot = || {
        let mut command = ns.command(Path::new(FTVM));
        command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0"]);
        command.args(["--disk", "gfs:/vm/kv.img", "--gfs-master", &c.master_addr]);
        let mut vm = Process::spawn(command).unwrap();
        vm.wait_for("kv: listening on", Duration::from_secs(60)).unwrap();
        vm
    };
    let vm = boot();

    // The longest gap between two replies: before the fault, while the disk is full, after
    // space returned. Values of 1-2 KiB: the kv log grows into new blocks of the disk all the time.
    let load = PhasedSets::start(&ns, "full", |i| format!("v{i}-").repeat(200));
    load.wait_for_more(100).unwrap();
    let full = c.chunkservers[0].clone();
    assert!(holders(&c, "/vm/kv.img", 0).contains(&full), "chunkserver 0 holds no replica of the disk");

    load.enter_phase(1);
    let filler = fill(&c.chunkserver_dir(0));
    load.wait_for_more(300).unwrap();
    let cs_log = c.chunkserver_output(0);
    assert!(cs_log.contains("chunkserver: disk full in "), "{cs_log}");
    assert!(c.master_output().contains(&format!("chunkserver {full} reports its disk full")), "{}", c.master_output());
    // gfs moves the disk's chunk onto the fourth chunkserver.
    wait_until("the disk's chunk off the full chunkserver, three replicas", Duration::from_secs(60), || {
        let now = holders(&c, "/vm/kv.img", 0);
        now.len() == 3 && !now.contains(&full)
    });
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
    // The write moved to a new version without the full disk at once, not when a lease ran out
    // (a lease is 3 s; waiting one out shows as a gap of 3.5 s or more).
    let master = c.master_output();
    assert!(
        master.contains("replica's disk is full or failing under a lease: new version without it")
            || master.contains("the primary's disk is full or failing: lease revoked"),
        "{master}"
    );
    assert!(full_gap < Duration::from_millis(2500), "kv stalled {full_gap:?} while the disk was full");
    let fsck = String::from_utf8_lossy(&c.gfs(&["fsck"]).unwrap().stdout).into_owned();
    assert!(fsck.contains(" 0 missing"), "{fsck}");

    let check = move || -> anyhow::Result<()> {
        let mut kv = KvClient::connect()?;
        for i in 0..sets {
            let answer = kv.request(&format!("GET full{i}"))?;
            anyhow::ensure!(answer == format!("VALUE {}", format!("v{i}-").repeat(200)), "GET full{i}: {answer}");
        }
        Ok(())
    };
    ns.within(check).unwrap();
    drop(vm);
    let vm = boot();
    assert!(vm.output().contains(&format!("kv: replayed {sets} record(s)")), "{}", vm.output());
    ns.within(check).unwrap();
}
