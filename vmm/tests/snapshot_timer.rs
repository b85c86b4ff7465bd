//! Snapshots of a guest with a running timer: the PIT counting, the PIC with interrupts in
//! service, ticks still to come. `ftvm restore` goes on from the snapshot, in a new process, to
//! the same end; `ftvm replay --from` reaches the recorded state.

use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn state_digest(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with("state-digest: "))
        .unwrap_or_else(|| panic!("no state digest in:\n{}", text(output)))
        .to_owned()
}

/// The number after `key` on the power-off statistics line.
fn stat(output: &Output, key: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("exits: ")).unwrap_or_else(|| panic!("{}", text(output)));
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
}

/// Ticks of `timer 40`, and where in its run the snapshots are taken: after boot, with the PIT
/// already ticking and most ticks still to come.
const TICKS: &str = "40";

/// The exit count halfway through a whole `timer 40` run.
fn halfway() -> u64 {
    let whole = ftvm(&["run", "--guest", "timer", TICKS]);
    assert!(whole.status.success(), "{}", text(&whole));
    stat(&whole, "exits: ") / 2
}

#[test]
fn a_timer_snapshot_restored_in_a_new_process_gets_the_remaining_ticks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = dir.path().join("timer.snap");
    let at = halfway().to_string();
    let snapshot_arg = snapshot.to_str().expect("utf-8");
    let whole = ftvm(&["run", "--guest", "timer", TICKS, "--snapshot-at", &at, "--snapshot", snapshot_arg]);
    assert!(whole.status.success(), "{}", text(&whole));
    let whole_out = String::from_utf8_lossy(&whole.stdout).into_owned();
    let restored = ftvm(&["restore", snapshot_arg]);
    let out = String::from_utf8_lossy(&restored.stdout).into_owned();
    assert!(restored.status.success(), "{}", text(&restored));
    // It goes on from the middle: no boot banner, the end of the run, every tick counted.
    assert!(!out.contains("ticks at"), "the restored guest booted again:\n{out}");
    let done = format!("timer: {TICKS} ticks, ");
    assert!(whole_out.contains(&done) && out.contains(&done), "whole:\n{whole_out}\nrestored:\n{out}");
    let before: u64 = whole_out.lines().filter(|l| l.starts_with("timer: ") && l.contains('/')).count() as u64;
    let after: u64 = out.lines().filter(|l| l.starts_with("timer: ") && l.contains('/')).count() as u64;
    assert!(after > 0 && after < before, "progress lines: whole {before}, restored {after}:\n{out}");
    let ticks: u64 = TICKS.parse().expect("a number");
    let injected = stat(&restored, "interrupts injected: ");
    assert!(injected > 0 && injected < ticks, "the restored run injected {injected} of {ticks} ticks:\n{out}");
}

#[test]
fn a_timer_snapshot_taken_while_recording_replays_the_rest_of_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    let snapshot = dir.path().join("timer.snap");
    let at = halfway().to_string();
    let (log_arg, snapshot_arg) = (log.to_str().expect("utf-8"), snapshot.to_str().expect("utf-8"));
    let recorded = ftvm(&[
        "run",
        "--state-digest",
        "--record",
        log_arg,
        "--snapshot-at",
        &at,
        "--snapshot",
        snapshot_arg,
        "--guest",
        "timer",
        TICKS,
    ]);
    assert!(recorded.status.success(), "{}", text(&recorded));
    let from_snapshot = ftvm(&["replay", log_arg, "--from", snapshot_arg]);
    assert!(from_snapshot.status.success(), "{}", text(&from_snapshot));
    assert_eq!(state_digest(&from_snapshot), state_digest(&recorded));
    // The log holds interrupts on both sides of the snapshot: it was taken mid-run.
    let listing = ftvm(&["log", log_arg]);
    let interrupts_at: Vec<u64> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.contains("interrupt "))
        .filter_map(|l| {
            let exit = l.split("Exit(").nth(1)?;
            exit.split(')').next()?.parse().ok()
        })
        .collect();
    let at: u64 = at.parse().expect("a number");
    assert!(
        interrupts_at.iter().any(|&e| e < at) && interrupts_at.iter().any(|&e| e > at),
        "interrupts at {interrupts_at:?}, snapshot at {at}"
    );
}
