//! Benchmark for "Record, replay and snapshots", printing ratios measured side by side:
//! - recording overhead: wall time of a workload run plain / run with recording (target ≥ 0.95);
//! - log bytes per second of guest run time, per workload;
//! - replay speed relative to recording;
//! - size and capture time of a preemption checkpoint;
//! - snapshot save and restore time per 100 MiB of guest memory.
//!
//! Run: `cargo bench -p vmm --bench record_replay`.

use devices::HostWorld;
use ftlog::{RecordingWorld, ReplayWorld};
use std::io::{BufReader, BufWriter};
use std::time::{Duration, Instant};
use vmm::record_replay::{log_header, machine_for_log};
use vmm::{checkpoint, run, snapshot, KernelSource, Machine, MachineConfig, RunOptions, RunOutcome, RunPosition};

fn config(words: &[&str], memory_mib: u64, dirty_logging: bool) -> MachineConfig {
    MachineConfig {
        kernel: KernelSource::Embedded,
        memory_mib,
        cmdline: words.join(" "),
        initrd: None,
        preempt_bound: MachineConfig::DEFAULT_PREEMPT_BOUND,
        dirty_logging,
        devices: Default::default(),
    }
}

fn plain(words: &[&str]) -> Duration {
    let mut machine = Machine::new(config(words, 128, false), Box::new(std::io::sink())).expect("machine");
    let started = Instant::now();
    let (outcome, _) = run(&mut machine, &mut HostWorld::new(), RunOptions::default()).expect("run");
    assert_eq!(outcome, RunOutcome::PowerOff(0));
    started.elapsed()
}

/// Records into `log`; returns the wall time and the log's size.
fn recorded(words: &[&str], log: &std::path::Path) -> (Duration, u64) {
    let mut machine = Machine::new(config(words, 128, true), Box::new(std::io::sink())).expect("machine");
    let header = log_header(&machine, 1, 0);
    let file = std::fs::File::create(log).expect("log");
    let mut recorder = RecordingWorld::new(HostWorld::new(), BufWriter::new(file), &header).expect("recorder");
    let started = Instant::now();
    let (outcome, _) = run(&mut machine, &mut recorder, RunOptions::default()).expect("run");
    // The run alone, as for the plain one: the state digest and closing the log come after.
    let elapsed = started.elapsed();
    assert_eq!(outcome, RunOutcome::PowerOff(0));
    let digest = *vmm::digest::state_digest(&machine).expect("digest").as_bytes();
    let done = recorder.finish(0, Some(digest)).expect("finish");
    (elapsed, done.log_bytes)
}

fn replayed(log: &std::path::Path) -> Duration {
    let file = std::fs::File::open(log).expect("log");
    let mut replayer = ReplayWorld::new(BufReader::with_capacity(1 << 20, file)).expect("replayer");
    let mut machine = machine_for_log(replayer.header(), Box::new(std::io::sink())).expect("machine");
    let started = Instant::now();
    let (outcome, _) = run(&mut machine, &mut replayer, RunOptions::default()).expect("replay");
    assert_eq!(outcome, RunOutcome::PowerOff(0), "replay must finish like the recording");
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
    let mut machine = Machine::new(config(&["compute", "100"], 128, true), Box::new(std::io::sink())).expect("machine");
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
    let mut machine = Machine::new(config(&["hello"], 512, false), Box::new(std::io::sink())).expect("machine");
    run(&mut machine, &mut HostWorld::new(), RunOptions::default()).expect("run");
    let path = dir.path().join("bench.snap");
    let started = Instant::now();
    snapshot::save(&mut machine, RunPosition::default(), 0, &path).expect("save");
    let save = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let loaded = snapshot::load(&path).expect("load");
    let restored = snapshot::restore(&loaded, Box::new(std::io::sink())).expect("restore");
    let restore = started.elapsed().as_secs_f64();
    drop(restored);
    let per = |seconds: f64| seconds / 5.12 * 1e3;
    println!("save (with fsync): {:.1} ms per 100 MiB; load + restore: {:.1} ms per 100 MiB", per(save), per(restore));
}
