//! Our own guest's workloads under `ftvm run --guest`: each boots and prints what it should, the
//! timer gets exactly its interrupts, the compute loop is preempted and still right.

use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn expect_success(output: &Output) -> String {
    let text = stdout(output);
    assert_eq!(output.status.code(), Some(0), "stdout:\n{text}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr));
    text
}

/// The power-off statistics line, parsed: (exits, interrupts injected, preemptions).
fn stats(text: &str) -> (u64, u64, u64) {
    let line = text.lines().find(|l| l.starts_with("exits: ")).expect("stats line printed");
    let number_after = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
    };
    (number_after("exits: "), number_after("interrupts injected: "), number_after("preemptions: "))
}

fn digest_line(text: &str) -> &str {
    text.lines().find(|l| l.starts_with("digest: ")).expect("the workload prints its digest")
}

/// The compute workload's mixing loop, written again on the host as the reference.
fn reference_mix(rounds: u64) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for i in 0..rounds {
        h = (h ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h = h.rotate_left(17).wrapping_add(0x6a09_e667_f3bc_c909);
    }
    h
}

#[test]
fn hello_prints_its_banner_and_powers_off_with_zero() {
    let text = expect_success(&ftvm(&["run", "--guest", "hello", "--state-digest"]));
    assert!(text.contains("ftvm guest: hello from ring 3"), "{text}");
    assert_eq!(digest_line(&text).len(), "digest: ".len() + 16);
    assert!(text.lines().any(|l| l.starts_with("state-digest: ") && l.len() == "state-digest: ".len() + 64), "{text}");
    let (exits, injected, _) = stats(&text);
    assert!(exits > 0);
    assert_eq!(injected, 0, "hello takes no interrupts");
}

#[test]
fn timer_takes_exactly_its_interrupts() {
    let text = expect_success(&ftvm(&["run", "--guest", "timer", "120"]));
    assert!(text.contains("timer: 120/120"), "{text}");
    assert!(text.contains("timer: 120 ticks"), "{text}");
    let (_, injected, _) = stats(&text);
    assert_eq!(injected, 120, "{text}");
}

#[test]
fn compute_is_preempted_and_prints_the_right_checksum() {
    let millions = 200;
    let text = expect_success(&ftvm(&["run", "--guest", "compute", &millions.to_string()]));
    let expected = format!("compute: checksum {:016x}", reference_mix(millions * 1_000_000));
    assert!(text.contains(&expected), "expected {expected:?} in:\n{text}");
    let (_, injected, preemptions) = stats(&text);
    assert!(preemptions > 0, "a long computation with a 1 kHz timer must be preempted:\n{text}");
    assert!(injected > 0, "{text}");
}

#[test]
fn clock_reads_advancing_time_and_the_wall_clock() {
    let text = expect_success(&ftvm(&["run", "--guest", "clock", "50"]));
    let line = text.lines().find(|l| l.starts_with("clock: 50 reads, ")).unwrap_or_else(|| panic!("{text}"));
    let elapsed: u64 = line["clock: 50 reads, ".len()..].split(' ').next().and_then(|n| n.parse().ok()).expect("ns");
    assert!(elapsed > 0, "{line}");
    let wall = text.lines().find(|l| l.starts_with("clock: wall ")).expect("wall line");
    let seconds: u64 = wall["clock: wall ".len()..].split('.').next().and_then(|n| n.parse().ok()).expect("seconds");
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    assert!(host.abs_diff(seconds) < 120, "guest wall clock {seconds} far from host {host}");
}

#[test]
fn an_unknown_workload_exits_with_the_usage_code() {
    let output = ftvm(&["run", "--guest", "no-such-workload"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
}

#[test]
fn a_guest_fault_is_reported_with_its_address() {
    let output = ftvm(&["run", "--guest", "fault"]);
    assert_eq!(output.status.code(), Some(101));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fatal fault") && stderr.contains("rip 0x"), "{stderr}");
}

#[test]
fn a_snapshot_restored_in_a_new_process_finishes_in_the_same_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = dir.path().join("timer.snap");
    let snapshot = snapshot.to_str().expect("utf-8");
    let whole = expect_success(&ftvm(&[
        "run",
        "--guest",
        "hello",
        "--state-digest",
        "--snapshot-at",
        "40",
        "--snapshot",
        snapshot,
    ]));
    let restored = expect_success(&ftvm(&["restore", snapshot, "--state-digest"]));
    let digest = |text: &str| text.lines().find(|l| l.starts_with("state-digest: ")).map(str::to_owned);
    assert!(digest(&whole).is_some());
    assert_eq!(digest(&whole), digest(&restored), "whole run:\n{whole}\nrestored:\n{restored}");
}
