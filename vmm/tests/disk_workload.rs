//! The guest's `disk` workload (`ftvm run --guest disk [size=MiB] [bs=KiB] [ops=N]`) on a local
//! file disk: its figures parse, it checked every byte it read, the image holds exactly the
//! pattern it says it wrote (recomputed here from the same code), a recorded run replays to the
//! same state digest, and bad parameters are one line.

#[path = "../../guest-images/guest/src/workloads/disk/pattern.rs"]
#[allow(dead_code)]
mod pattern;

use std::path::Path;
use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
}

fn text(output: &Output) -> String {
    format!("{}\n--- stderr:\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The `disk: result ...` line as (key, value) pairs.
fn result(stdout: &str) -> Vec<(String, f64)> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("disk: result ")).unwrap_or_else(|| panic!("{stdout}"));
    line.split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("key=value");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect()
}

fn value(pairs: &[(String, f64)], key: &str) -> f64 {
    pairs.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} in {pairs:?}")).1
}

fn disk(dir: &Path, mib: u64) -> String {
    let path = dir.join("disk.img");
    std::fs::File::create(&path).and_then(|f| f.set_len(mib << 20)).expect("disk image");
    path.display().to_string()
}

#[test]
fn the_disk_workload_measures_checks_and_leaves_exactly_its_pattern_on_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(dir.path(), 8);
    let (size, bs, ops, seed) = (4u64, 64u64, 200u64, 9u64);
    let args = format!("size={size} bs={bs} ops={ops} seed={seed}");
    let mut cmd = vec!["run", "--guest", "disk"];
    cmd.extend(args.split(' '));
    cmd.extend(["--disk", &image]);
    let out = ftvm(&cmd);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let pairs = result(&all);
    for key in ["seq_write_mbps", "seq_read_mbps", "rand_read_iops", "rand_write_iops"] {
        assert!(value(&pairs, key) > 0.0, "{key}: {all}");
    }
    assert_eq!(value(&pairs, "mismatches"), 0.0, "{all}");
    // Two sequential reads of the area and the random reads, all checked.
    assert_eq!(value(&pairs, "verified_bytes"), (2 * (size << 20) + ops * 4096) as f64, "{all}");
    for phase in
        ["seq-write 4 MiB in ", "seq-read 4 MiB in ", "rand-read 200 x 4 KiB in ", "rand-write 200 x 4 KiB in "]
    {
        assert!(all.lines().any(|l| l.starts_with(&format!("disk: {phase}"))), "{phase}: {all}");
    }

    // The image: every word is the pattern with the versions the random writes left, and the
    // rest of the disk was never touched.
    let bytes = std::fs::read(&image).unwrap();
    let blocks = (size << 20) / pattern::BLOCK as u64;
    let mut versions = vec![0u8; blocks as usize];
    let mut rng = pattern::Rng::new(seed ^ 0x5752);
    for _ in 0..ops {
        let b = rng.block(blocks) as usize;
        versions[b] = versions[b].wrapping_add(1);
    }
    let area = (size << 20) as usize;
    assert_eq!(pattern::first_mismatch(&bytes[..area], seed, 0, |b| versions[b as usize]), None);
    assert!(versions.iter().any(|&v| v > 0));
    assert!(bytes[area..].iter().all(|&b| b == 0), "nothing written past size=");
}

/// Every disk request completes later, as a logged world event at a landmark (none is answered
/// at its notification): a recording holds one completion per request, and its replay (which
/// never touches the disk) ends with the same figures and state digest.
#[test]
fn a_recorded_disk_run_replays_to_the_same_figures_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(dir.path(), 4);
    let log = dir.path().join("disk.log");
    let log = log.to_str().unwrap();
    let out =
        ftvm(&["run", "--guest", "disk", "size=2", "ops=100", "--disk", &image, "--record", log, "--state-digest"]);
    let recorded = text(&out);
    assert_eq!(out.status.code(), Some(0), "{recorded}");
    let out = ftvm(&["replay", log]);
    let replayed = text(&out);
    assert_eq!(out.status.code(), Some(0), "{replayed}");
    assert!(replayed.contains("replay: ok"), "{replayed}");
    let line = |all: &str, prefix: &str| all.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
    for prefix in ["disk: result ", "digest: ", "state-digest: "] {
        assert_eq!(line(&recorded, prefix), line(&replayed, prefix), "{prefix}\n{recorded}\n{replayed}");
        assert!(line(&recorded, prefix).is_some(), "{prefix}: {recorded}");
    }
    let requests: usize = line(&recorded, "disk: requests=")
        .and_then(|l| l["disk: requests=".len()..].split(' ').next().and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("{recorded}"));
    let out = ftvm(&["log", log]);
    let records = String::from_utf8_lossy(&out.stdout);
    let completions = records.lines().filter(|l| l.contains("completion of request")).count();
    assert_eq!(completions, requests, "one logged completion per request");
    assert!(!records.contains("DiskRead"), "no read answered at its notification");
    // The replay did not read the disk: it still holds what the recording left, unchanged by a
    // fresh image of zeros.
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let out = ftvm(&["replay", log]);
    assert!(text(&out).contains("replay: ok"), "{}", text(&out));
}

#[test]
fn bad_parameters_and_a_missing_disk_are_one_line_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let image = disk(dir.path(), 2);
    for (args, says) in [
        (vec!["size=3"], "size=MiB is larger than the disk"),
        (vec!["bs=512"], "bs=KiB must be 1..=256"),
        (vec!["size=1", "bs=3"], "whole number of bs=KiB"),
        (vec!["ops=x"], "bad ops=N"),
    ] {
        let mut cmd = vec!["run", "--guest", "disk"];
        cmd.extend(&args);
        cmd.extend(["--disk", &image]);
        let out = ftvm(&cmd);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert_eq!(all.lines().filter(|l| l.starts_with("ftvm guest: disk: ")).count(), 1, "{all}");
        assert!(all.contains(says), "{args:?}: {all}");
    }
    let out = ftvm(&["run", "--guest", "disk"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no virtio-blk device"), "{}", text(&out));
}
