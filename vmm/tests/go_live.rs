//! Go-live is a run continued with another world: a machine replays the first half of a
//! recorded log, its input ends there, and it carries on live from exactly that landmark, with
//! backends attached then. What the guest computes must come out the same as in the recording.

use devices::{EventSource, WorldStop};
use ftlog::{LogReader, ReplayWorld};
use vmm::session::live_machine;
use vmm::session::record::record_to_file;
use vmm::session::replay::machine_for_log;
use vmm::{session, Backends, MachineConfig, RunOptions, StopReason, VcpuControl};

mod common;
use common::Console;

fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
}

/// Records `words`, replays the records before `cut` (a fraction of them), goes live there;
/// `check(recorded, live)` judges the console output of the recording and of the live part.
fn go_live_part_way(words: &str, cut: f64, check: impl Fn(&str, &str)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("run.log");
    let recorded_console = Console::default();
    let config = MachineConfig { dirty_logging: true, ..MachineConfig::embedded(words) };
    let (mut machine, world) =
        live_machine(config, Backends::console_only(Box::new(recorded_console.clone())), VcpuControl::new())
            .expect("machine");
    let recording = record_to_file(&mut machine, world, &log, 1, RunOptions::default()).expect("recording");
    assert!(matches!(recording.end.reason, StopReason::PowerOff(0)), "{}", recording.end.reason);
    let recorded_text = recorded_console.text();

    // The log cut at a record boundary part-way: what a backup holds when its primary dies.
    let bytes = std::fs::read(&log).expect("log");
    let offsets: Vec<u64> = LogReader::new(&bytes[..]).expect("log").map(|r| r.expect("record").0).collect();
    let cut_at = offsets[(offsets.len() as f64 * cut) as usize] as usize;
    let cut_log = &bytes[..cut_at];

    let mut replayer = ReplayWorld::from_feed(LogReader::new(cut_log).expect("header").open_ended());
    let mut follower = machine_for_log(replayer.header(), VcpuControl::new()).expect("machine");
    let replayed = vmm::run(&mut follower, &mut replayer, RunOptions::default()).expect("replay");
    let StopReason::World(WorldStop::InputEnded { lost: false, .. }) = replayed.reason else {
        panic!("the replay must stop where its input ends, not: {}", replayed.reason);
    };
    let position = replayed.position;
    assert!(position.exits > 0 && position.exits < recording.end.stats.exits, "stopped part-way: {position:?}");
    assert!(replayer.error().is_none());

    let live_console = Console::default();
    let backends = Backends::console_only(Box::new(live_console.clone()));
    let end = session::go_live(&mut follower, backends, position, replayer.monotonic_now()).expect("live run");
    assert!(matches!(end.reason, StopReason::PowerOff(0)), "the continued run must power off normally: {}", end.reason);

    let live_text = live_console.text();
    check(&recorded_text, &live_text);
    // The replayed part printed nothing: its console output was the recording's to release.
    let first_line = recorded_text.lines().next().expect("the guest printed");
    assert!(!live_text.contains(first_line), "{first_line:?} belongs to the replayed part:\n{live_text}");
}

#[test]
fn a_compute_run_replayed_part_way_goes_live_there_and_reaches_the_recorded_result() {
    for cut in [0.2, 0.5, 0.8] {
        go_live_part_way("compute 150", cut, |recorded, live| {
            let digest = line_starting(recorded, "digest: ");
            assert_eq!(line_starting(live, "digest: "), digest, "live part:\n{live}");
        });
    }
}

#[test]
fn a_timer_run_replayed_part_way_goes_live_there_and_gets_every_tick() {
    // Not the guest's digest: it covers the tick count seen after each wait, and a live run on
    // a loaded host can take two ticks in one wait (the recorded run could as well). The timer
    // going on to the end with no tick lost is what go-live must keep.
    for cut in [0.33, 0.61, 0.9] {
        go_live_part_way("timer 60", cut, |_, live| {
            assert!(live.lines().last().is_some_and(|l| l.starts_with("digest: ")), "unfinished:\n{live}");
            // The summary line, unless the replayed part had already printed its start.
            if let Some(summary) = live.lines().find(|l| l.starts_with("timer: ") && l.contains(" ticks, ")) {
                let ticks = summary["timer: ".len()..].split(' ').next().and_then(|t| t.parse::<u64>().ok());
                assert!(ticks.is_some_and(|t| t >= 60), "the live part did not count its 60 ticks:\n{live}");
            }
        });
    }
}
