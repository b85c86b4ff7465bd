//! `ftvm demo` (issue 14, point 1), run as a user runs it: it must end with status 0 and the
//! summary's lines, and leave no namespace, directory or process behind, also when it is
//! interrupted with Ctrl-C half-way.

use anyhow::{ensure, Context, Result};
use ftvm_tests::{binary, require_namespaces, Process};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// One demo at a time: each wants the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The bound for the whole demo on 2 cores.
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

fn start_demo(extra: &[&std::ffi::OsStr]) -> Result<Process> {
    let mut command = Command::new(binary("ftvm")?);
    command.arg("demo").args(extra);
    Process::spawn(command)
}

/// The directory the demo announced for its files.
fn demo_dir(output: &str) -> Result<String> {
    let line = output
        .lines()
        .find(|l| l.contains("gfs keeps its master's log and the chunks in "))
        .context("no files line")?;
    let (_, dir) = line.split_once(" and the chunks in ").context("files line")?;
    Ok(dir.trim().to_owned())
}

/// Nothing of the demo `pid` remains: no namespace of its name, not its directory, no process
/// started with that directory (gfs).
fn nothing_left(pid: u32, dir: &str) -> Result<()> {
    let namespaces = Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    let prefix = format!("ftvm-demo-{pid}-");
    let left: Vec<String> = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    ensure!(left.is_empty(), "the demo left namespaces: {left:?}");
    ensure!(!std::path::Path::new(dir).exists(), "the demo left its directory {dir}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        ensure!(!cmdline.contains(dir), "a process of the demo is still running: {cmdline}");
    }
    Ok(())
}

#[test]
fn the_demo_survives_two_kills_checks_every_write_and_leaves_nothing_behind() -> Result<()> {
    require_namespaces!();
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let plot_dir = tempfile::tempdir()?;
    let plot = plot_dir.path().join("demo.svg");
    let mut demo = start_demo(&["--plot".as_ref(), plot.as_os_str()])?;
    let status = demo.wait(DEMO_TIMEOUT)?;
    let output = demo.output();
    println!("{output}");
    ensure!(status.success(), "ftvm demo ended with {status}:\n{output}");
    for expected in [
        "requests served: ",
        "acknowledged writes checked: ",
        "failover 1 (host-a killed): outage ",
        "failover 2 (host-b killed): outage ",
        "time to re-protect: ",
        "log bandwidth, primary to backup: ",
        "ftvm demo: ok, every check passed",
        "bridge fdb: the VM's MAC 52:54:00:f7:00:02 moved to port-b (host-b)",
        "bridge fdb: the VM's MAC 52:54:00:f7:00:02 moved to port-a (host-a)",
    ] {
        ensure!(output.contains(expected), "the demo's output lacks {expected:?}");
    }
    // Every acknowledged write was found, on the connection and on the disk: "N of N" twice.
    let checked = output.lines().find(|l| l.contains("acknowledged writes checked: ")).unwrap_or_default();
    let counts: Vec<u64> = checked.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    ensure!(
        counts.len() == 4 && counts[0] > 0 && counts.iter().all(|n| *n == counts[0]),
        "not every acknowledged write was found: {checked:?}"
    );
    // Point 2: the plot, with the replies and every kind of moment marked.
    let svg = std::fs::read_to_string(&plot).context("the plot was not written")?;
    for expected in ["<svg", "kill -9 of the live VMM", "the backup goes live", "protected again", "<circle"] {
        ensure!(svg.contains(expected), "the plot lacks {expected:?}");
    }
    nothing_left(demo.pid(), &demo_dir(&output)?)
}

#[test]
fn ctrl_c_half_way_through_the_demo_removes_everything_it_made() -> Result<()> {
    require_namespaces!();
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut demo = start_demo(&[])?;
    demo.wait_for("the VM is protected", DEMO_TIMEOUT)?;
    let prefix = format!("ftvm-demo-{}-", demo.pid());
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    let made = String::from_utf8_lossy(&namespaces.stdout).lines().filter(|l| l.starts_with(&prefix)).count();
    ensure!(made == 5, "the demo runs with {made} namespaces, not 5");
    demo.signal(libc::SIGINT)?;
    let status = demo.wait(Duration::from_secs(30))?;
    let output = demo.output();
    ensure!(status.code() == Some(130), "ftvm demo ended with {status} after SIGINT, not 130:\n{output}");
    ensure!(output.contains("interrupted by signal 2"), "{output}");
    nothing_left(demo.pid(), &demo_dir(&output)?)
}

/// `ftvm demo --replay` (issue 14, point 6): the record/replay demo stays, each of its four
/// workloads replayed to the recorded state.
#[test]
fn the_record_replay_demo_stays_available_as_replay() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let output = Command::new(binary("ftvm")?).args(["demo", "--replay"]).output().context("run ftvm demo --replay")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "ftvm demo --replay ended with {}:\n{stdout}", output.status);
    let identical = stdout.lines().filter(|l| l.ends_with("state-digest identical")).count();
    ensure!(identical == 4, "{identical} of 4 workloads replayed to the recorded state:\n{stdout}");
    Ok(())
}
