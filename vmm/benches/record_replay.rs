//! Benchmark for "Record, replay and snapshots", printing ratios measured side by side:
//! - recording overhead: wall time of a workload run plain / run with recording (target ≥ 0.95);
//! - log bytes per second of guest run time, per workload;
//! - replay speed relative to recording;
//! - size and capture time of a preemption checkpoint;
//! - snapshot save and restore time per 100 MiB of guest memory.
//!
//! Run: `cargo bench -p vmm --bench record_replay`.

use devices::HostWorld;
use ftlog::ReplayWorld;
use std::io::BufReader;
use std::time::{Duration, Instant};
use vmm::session::record::record_to_file;
use vmm::session::replay::machine_for_log;
use vmm::{checkpoint, run, snapshot, Machine, MachineConfig, RunOptions, RunPosition, StopReason, VcpuControl};

fn config(words: &[&str], memory_mib: u64, dirty_logging: bool) -> MachineConfig {
    MachineConfig { memory_mib, dirty_logging, ..MachineConfig::embedded(words.join(" ")) }
}

fn build(config: MachineConfig) -> Machine {
    Machine::new(config, VcpuControl::new()).expect("machine")
}

fn plain(words: &[&str]) -> Duration {
    let mut machine = build(config(words, 128, false));
    let started = Instant::now();
    let end = run(&mut machine, &mut HostWorld::new(), RunOptions::default()).expect("run");
    assert!(matches!(end.reason, StopReason::PowerOff(0)), "{}", end.reason);
    started.elapsed()
}

/// Records into `log`; returns the wall time of the run alone (as for the plain one: the state
/// digest and closing the log come after) and the log's size.
fn recorded(words: &[&str], log: &std::path::Path) -> (Duration, u64) {
    let mut machine = build(config(words, 128, true));
    let recording = record_to_file(&mut machine, HostWorld::new(), log, 1, RunOptions::default()).expect("record");
    assert!(matches!(recording.end.reason, StopReason::PowerOff(0)), "{}", recording.end.reason);
    (recording.run_time, recording.log_bytes)
}

fn replayed(log: &std::path::Path) -> Duration {
    let file = std::fs::File::open(log).expect("log");
    let mut replayer = ReplayWorld::new(BufReader::with_capacity(1 << 20, file)).expect("replayer");
    let mut machine = machine_for_log(replayer.header(), VcpuControl::new()).expect("machine");
    let started = Instant::now();
    let end = run(&mut machine, &mut replayer, RunOptions::default()).expect("replay");
    assert!(matches!(end.reason, StopReason::PowerOff(0)), "replay must finish like the recording: {}", end.reason);
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("bench.log");
    println!("== recording overhead, log rate and replay speed (median of 5 alternating rounds)");
    println!("workload | plain s | recorded s | plain/recorded | log KiB | log KiB/s | replay s | record/replay");
    for words in [&["timer", "300"][..], &["compute", "300"], &["clock", "500"], &["hello"]] {
        let (mut plains, mut records, mut replays, mut sizes) = (vec![], vec![], vec![], vec![]);
        for _ in 0..5 {
            plains.push(plain(words).as_secs_f64());
            let (t, bytes) = recorded(words, &log);
            records.push(t.as_secs_f64());
            sizes.push(bytes as f64);
            replays.push(replayed(&log).as_secs_f64());
        }
        let (p, r, rp, size) = (median(plains), median(records), median(replays), median(sizes));
        println!(
            "{:<12} | {p:.3} | {r:.3} | {:.3} | {:.1} | {:.1} | {rp:.3} | {:.2}",
            words.join(" "),
            p / r,
            size / 1024.0,
            size / 1024.0 / r,
            r / rp
        );
    }

    println!("== preemption checkpoint (compute workload, 128 MiB guest)");
    let mut machine = build(config(&["compute", "100"], 128, true));
    run(&mut machine, &mut HostWorld::new(), RunOptions::default()).expect("run");
    let started = Instant::now();
    let first = checkpoint::capture(&mut machine).expect("checkpoint");
    let first_time = started.elapsed();
    let started = Instant::now();
    let second = checkpoint::capture(&mut machine).expect("checkpoint");
    let second_time = started.elapsed();
    println!(
        "after the whole run: {} KiB in {:.2} ms; with nothing dirtied since: {} KiB in {:.2} ms",
        first.len() / 1024,
        first_time.as_secs_f64() * 1e3,
        second.len() / 1024,
        second_time.as_secs_f64() * 1e3
    );

    println!("== snapshot and restore of a 512 MiB guest");
    let mut machine = build(config(&["hello"], 512, false));
    run(&mut machine, &mut HostWorld::new(), RunOptions::default()).expect("run");
    let path = dir.path().join("bench.snap");
    let started = Instant::now();
    snapshot::save(&mut machine, RunPosition::default(), 0, &path).expect("save");
    let save = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let restored = snapshot::load(&path).expect("load").restore(VcpuControl::new()).expect("restore");
    let restore = started.elapsed().as_secs_f64();
    drop(restored);
    let per = |seconds: f64| seconds / 5.12 * 1e3;
    println!("save (with fsync): {:.1} ms per 100 MiB; load + restore: {:.1} ms per 100 MiB", per(save), per(restore));
}
