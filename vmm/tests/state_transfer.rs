//! The machine's state travels as a stream: a running machine paused through its control
//! handle, saved to a byte stream (what a join sends over a socket), rebuilt from it elsewhere,
//! and both copies carry on to the same result.

use devices::EventSource;
use std::time::Duration;
use vmm::session::{go_live, live_machine};
use vmm::{run, snapshot, Backends, MachineConfig, RunOptions, StopReason, VcpuControl};

mod common;
use common::Console;

/// The `digest:` line the guest printed.
fn digest_line(console: &Console) -> String {
    let text = console.text();
    text.lines().find(|l| l.starts_with("digest: ")).unwrap_or_else(|| panic!("no digest in:\n{text}")).to_owned()
}

#[test]
fn a_paused_machine_streamed_and_rebuilt_elsewhere_reaches_the_same_result_as_the_original() {
    let control = VcpuControl::new();
    let original_console = Console::default();
    let (mut machine, mut world) = live_machine(
        MachineConfig::embedded("compute 200"),
        Backends::console_only(Box::new(original_console.clone())),
        control.clone(),
    )
    .expect("machine");
    let pauser = {
        let control = control.clone();
        std::thread::spawn(move || {
            // Pause once the run is under way (the control handle says when a loop runs).
            while !control.running() {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(100));
            control.pause();
        })
    };
    let paused = run(&mut machine, &mut world, RunOptions::default()).expect("run");
    pauser.join().expect("pauser");
    assert!(matches!(paused.reason, StopReason::Paused), "the run must pause, not: {}", paused.reason);
    let position = paused.position;
    assert!(position.exits > 0, "paused after some exits: {position:?}");

    let clock = world.monotonic_now();
    let stream = snapshot::save_to(&mut machine, position, clock, Vec::new()).expect("save to a stream");
    let reader = snapshot::read_from(&stream[..], "the stream").expect("header");
    assert_eq!(reader.snapshot.position, position);
    let (mut copy, saved) = reader.restore(VcpuControl::new()).expect("rebuilt from the stream");

    let copy_console = Console::default();
    let copy_end =
        go_live(&mut copy, Backends::console_only(Box::new(copy_console.clone())), position, saved.monotonic_ns)
            .expect("the copy runs on");
    assert!(matches!(copy_end.reason, StopReason::PowerOff(0)), "{}", copy_end.reason);

    let original_end = run(&mut machine, &mut world, RunOptions { start: position, snapshot: None }).expect("run on");
    assert!(matches!(original_end.reason, StopReason::PowerOff(0)), "{}", original_end.reason);
    assert_eq!(digest_line(&copy_console), digest_line(&original_console));
}

#[test]
fn a_damaged_stream_is_refused_by_its_checksum() {
    let control = VcpuControl::new();
    let (mut machine, _world) =
        live_machine(MachineConfig::embedded("hello"), Backends::console_only(Box::new(std::io::sink())), control)
            .expect("machine");
    let mut stream = snapshot::save_to(&mut machine, Default::default(), 0, Vec::new()).expect("save");
    let middle = stream.len() / 2;
    stream[middle] ^= 0x40;
    let error = match snapshot::read_from(&stream[..], "the stream").expect("header").restore(VcpuControl::new()) {
        Ok(_) => panic!("a damaged stream was restored"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("checksum mismatch"), "{error}");
}
