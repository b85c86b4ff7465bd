//! `ftvm run --record` then `ftvm replay`: every workload replays to the recorded state digest;
//! a tampered log diverges at the landmark that was changed; a truncated log is a clear error.

use devices::{ClockId, Landmark};
use ftlog::{LogReader, LogWriter, Record};
use std::path::Path;
use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn state_digest(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("state-digest: "))
        .unwrap_or_else(|| panic!("no state digest in:\n{}", text(output)))
        .to_owned()
}

/// Records `words` into `log` and returns the recorded run's state digest line.
fn record(log: &Path, words: &[&str]) -> String {
    let mut args = vec!["run", "--state-digest", "--record", log.to_str().expect("utf-8")];
    args.push("--guest");
    args.extend_from_slice(words);
    let output = ftvm(&args);
    assert!(output.status.success(), "{}", text(&output));
    state_digest(&output)
}

fn replay(log: &Path) -> Output {
    ftvm(&["replay", log.to_str().expect("utf-8")])
}

fn records(log: &Path) -> (ftlog::LogHeader, Vec<Record>) {
    let reader = LogReader::new(std::fs::File::open(log).expect("log opens")).expect("log header");
    let header = reader.header().clone();
    let records = reader.map(|r| r.expect("valid record").1).collect();
    (header, records)
}

fn rewrite(log: &Path, header: &ftlog::LogHeader, records: &[Record]) {
    let mut writer = LogWriter::new(std::fs::File::create(log).expect("log"), header).expect("header");
    for record in records {
        writer.write(record).expect("record");
    }
    writer.into_inner().expect("flush");
}

fn record_then_replay(words: &[&str]) -> (String, Output) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("run.log");
    let recorded = record(&log, words);
    let replayed = replay(&log);
    (recorded, replayed)
}

fn assert_replays_to_the_recorded_digest(words: &[&str]) -> String {
    let (recorded, replayed) = record_then_replay(words);
    let out = text(&replayed);
    assert!(replayed.status.success(), "{out}");
    assert!(out.lines().any(|l| l.starts_with("replay: ok, ")), "{out}");
    assert_eq!(state_digest(&replayed), recorded, "{out}");
    out
}

#[test]
fn hello_replays_to_the_recorded_state() {
    assert_replays_to_the_recorded_digest(&["hello"]);
}

#[test]
fn timer_replays_to_the_recorded_state() {
    assert_replays_to_the_recorded_digest(&["timer", "40"]);
}

#[test]
fn clock_replays_to_the_recorded_state() {
    assert_replays_to_the_recorded_digest(&["clock", "40"]);
}

#[test]
fn compute_replays_through_its_preemption_checkpoints() {
    let out = assert_replays_to_the_recorded_digest(&["compute", "80"]);
    let line = out.lines().find(|l| l.starts_with("replay: ok, ")).expect("replay line");
    let checkpoints: u64 = line
        .rsplit(", ")
        .next()
        .and_then(|part| part.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(checkpoints >= 1, "the compute recording must contain a preemption checkpoint: {line}");
}

#[test]
fn a_moved_interrupt_diverges_at_its_landmark() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "20"]);
    let (header, mut records) = records(&log);
    let index = records
        .iter()
        .position(|r| matches!(r, Record::Interrupt { at: Landmark::Exit(_), .. }))
        .expect("the timer log has interrupts");
    let Record::Interrupt { at: Landmark::Exit(n), vector } = records[index] else { unreachable!() };
    records[index] = Record::Interrupt { at: Landmark::Exit(n + 3), vector };
    rewrite(&log, &header, &records);
    let output = replay(&log);
    assert!(!output.status.success());
    let out = text(&output);
    assert!(out.contains(&format!("replay: diverged at Exit({n}): expected ")), "{out}");
}

#[test]
fn a_changed_clock_value_diverges_at_its_landmark() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("clock.log");
    record(&log, &["clock", "20"]);
    let (header, mut records) = records(&log);
    let index = records
        .iter()
        .rposition(|r| matches!(r, Record::ClockRead { clock: ClockId::Monotonic, .. }))
        .expect("the clock log has clock reads");
    let Record::ClockRead { at, clock, value } = records[index].clone() else { unreachable!() };
    records[index] = Record::ClockRead { at, clock, value: value + 1 };
    rewrite(&log, &header, &records);
    let output = replay(&log);
    assert!(!output.status.success());
    let out = text(&output);
    assert!(out.contains(&format!("replay: diverged at {at}: expected ")), "{out}");
}

#[test]
fn a_missing_exit_digest_diverges_at_its_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "20"]);
    let (header, mut records) = records(&log);
    let index = records
        .iter()
        .position(|r| matches!(r, Record::ExitDigest { exits, .. } if *exits > 50))
        .expect("the timer log has exit digests");
    let Record::ExitDigest { exits, .. } = records.remove(index) else { unreachable!() };
    rewrite(&log, &header, &records);
    let output = replay(&log);
    assert!(!output.status.success());
    let out = text(&output);
    assert!(out.contains(&format!("replay: diverged at Exit({exits}): ")), "{out}");
}

#[test]
fn a_truncated_log_is_a_clear_error_naming_its_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    record(&log, &["timer", "20"]);
    let bytes = std::fs::read(&log).expect("log");
    // Cut three bytes into the record that starts nearest two thirds of the way.
    let reader = LogReader::new(std::fs::File::open(&log).expect("log opens")).expect("log header");
    let offsets: Vec<u64> = reader.map(|r| r.expect("valid record").0).collect();
    let cut_record = *offsets.iter().rfind(|&&o| o <= bytes.len() as u64 * 2 / 3).expect("records before 2/3");
    std::fs::write(&log, &bytes[..cut_record as usize + 3]).expect("truncate");
    let output = replay(&log);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let expected = format!("log truncated: unit at byte {cut_record} is incomplete");
    assert!(out.contains(&expected), "the error names the cut record's position ({expected:?}): {out}");
}

#[test]
fn a_missing_log_is_a_one_line_error() {
    let output = ftvm(&["replay", "/nonexistent/ftvm.log"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/ftvm.log"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn a_snapshot_taken_while_recording_plus_the_rest_of_the_log_reaches_the_recorded_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("timer.log");
    let snap = dir.path().join("timer.snap");
    let output = ftvm(&[
        "run",
        "--state-digest",
        "--record",
        log.to_str().expect("utf-8"),
        "--snapshot-at",
        "120",
        "--snapshot",
        snap.to_str().expect("utf-8"),
        "--guest",
        "timer",
        "40",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let recorded = state_digest(&output);
    let from_snapshot = ftvm(&["replay", log.to_str().expect("utf-8"), "--from", snap.to_str().expect("utf-8")]);
    assert!(from_snapshot.status.success(), "{}", text(&from_snapshot));
    assert_eq!(state_digest(&from_snapshot), recorded);
    let from_boot = replay(&log);
    assert!(from_boot.status.success(), "{}", text(&from_boot));
    assert_eq!(state_digest(&from_boot), recorded);
}
