//! The guest's `hostile` workload (issue 15, point 5): from inside a real VM it posts bad
//! descriptors to the virtio-net and virtio-blk devices (loops, buffers outside RAM or wrapping
//! around, huge lengths, indices out of range, an available index too far ahead, queues that
//! are not ready or missing, a used ring outside RAM). The VMM survives, each device goes to
//! needs-reset (the guest reads status bit 0x40 and prints it), ignores a valid chain until it
//! is reset, works again after a reset, and a replay of the recorded run reaches the same end:
//! the same guest lines, the same state digest, the same warnings. The same holds on a backup
//! that follows the VM live (an FT pair on loopback) and replays the cases as they happen.

use anyhow::{bail, Context, Result};
use ftvm_tests::{binary, cannot_run, namespaces_unavailable, NetNs, Process};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

/// Every bad case the workload runs on each device, as it names them.
const BAD_CASES: [&str; 10] = [
    "descriptor-loop",
    "buffer-outside-ram",
    "buffer-address-wraps",
    "huge-length",
    "head-out-of-range",
    "next-out-of-range",
    "avail-index-ahead",
    "notify-queue-not-ready",
    "notify-queue-missing",
    "used-ring-outside-ram",
];

fn text(output: &Output) -> String {
    format!("{}\n--- stderr:\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The guest's own lines: the workload's and its digest.
fn guest_lines(output: &Output) -> Vec<String> {
    stdout(output)
        .lines()
        .filter(|l| l.starts_with("hostile: ") || l.starts_with("digest: "))
        .map(str::to_owned)
        .collect()
}

fn state_digest(output: &Output) -> String {
    stdout(output)
        .lines()
        .find(|l| l.starts_with("state-digest: "))
        .unwrap_or_else(|| panic!("no state digest: {}", text(output)))
        .to_owned()
}

/// What every device must have answered: needs-reset for each bad case (with the status the
/// guest read), the config write ignored, and service again after a reset.
fn assert_devices_reacted(output: &Output, devices: &[&str]) {
    let all = text(output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    let out = stdout(output);
    for device in devices {
        for case in BAD_CASES {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("hostile: {device} {case}: ")))
                .unwrap_or_else(|| panic!("no line for {device} {case}: {all}"));
            assert!(line.contains(": needs-reset (status 0x4f, "), "{line}\n{all}");
            assert!(line.ends_with("valid chain ignored"), "{line}\n{all}");
            // The configuration-change interrupt comes with needs-reset once DRIVER_OK is set; a
            // used ring refused at QueueReady failed before it.
            let interrupt = if case == "used-ring-outside-ram" { "no" } else { "yes" };
            assert!(line.contains(&format!("config interrupt {interrupt})")), "{line}\n{all}");
        }
        let config = format!("hostile: {device} config-space-write: ignored (status 0xf, configuration unchanged)");
        assert!(out.lines().any(|l| l == config), "{config}: {all}");
        let again = format!("hostile: {device} works again after a reset");
        assert!(out.lines().any(|l| l == again), "{again}: {all}");
    }
    let n = devices.len();
    let summary = format!(
        "hostile: {} cases on {n} devices, {} needs-reset, 0 unexpected",
        n * (BAD_CASES.len() + 1),
        n * BAD_CASES.len()
    );
    assert!(out.lines().any(|l| l == summary), "{summary}: {all}");
    assert!(!all.contains("UNEXPECTED"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    // One warning per bad case, naming the device.
    let warnings = stderr(output).lines().filter(|l| l.contains("device needs reset")).count();
    assert_eq!(warnings, n * BAD_CASES.len(), "{all}");
}

fn disk(dir: &Path) -> String {
    let path = dir.join("disk.img");
    std::fs::File::create(&path).and_then(|f| f.set_len(1 << 20)).expect("disk image");
    path.display().to_string()
}

#[test]
fn a_hostile_guest_puts_net_and_blk_in_needs_reset_and_a_replay_ends_the_same() {
    if let Some(why) = namespaces_unavailable() {
        return cannot_run(&why);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let image = disk(dir.path());
    let log = dir.path().join("hostile.log");
    let ns = NetNs::new("hostile").expect("namespace");
    ns.tap("tap0", "10.0.0.1/24").expect("tap");
    let log_arg = log.display().to_string();
    let recorded = ns
        .command(Path::new(FTVM))
        .args(["run", "--guest", "hostile", "--net", "tap=tap0", "--disk", &image])
        .args(["--record", &log_arg, "--state-digest"])
        .output()
        .expect("ftvm runs");
    assert_devices_reacted(&recorded, &["virtio-net", "virtio-blk"]);
    // Only reads were offered: nothing reached the disk.
    assert!(std::fs::read(&image).expect("image").iter().all(|&b| b == 0), "the disk was written");

    // The replay: same devices in needs-reset at the same points, same end, no divergence.
    let replayed = Command::new(FTVM).args(["replay", &log_arg]).output().expect("ftvm replays");
    assert!(stdout(&replayed).lines().any(|l| l.starts_with("replay: ok, ")), "{}", text(&replayed));
    assert_devices_reacted(&replayed, &["virtio-net", "virtio-blk"]);
    assert_eq!(guest_lines(&replayed), guest_lines(&recorded), "{}", text(&replayed));
    assert_eq!(state_digest(&replayed), state_digest(&recorded), "{}", text(&replayed));
}

#[test]
fn a_hostile_guest_on_a_disk_alone_and_without_devices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = disk(dir.path());
    let output = Command::new(FTVM).args(["run", "--guest", "hostile", "--disk", &image]).output().expect("ftvm runs");
    assert_devices_reacted(&output, &["virtio-blk"]);

    let output = Command::new(FTVM).args(["run", "--guest", "hostile"]).output().expect("ftvm runs");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stdout(&output).contains("hostile: no virtio-net or virtio-blk device"), "{}", text(&output));
}

fn free_addr() -> Result<String> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// A gfs master on loopback for the go-live register, killed on drop.
struct Master {
    addr: String,
    _process: Process,
}

impl Master {
    fn start(dir: &Path) -> Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(binary("gfs")?);
        command.args(["master", "--listen", &addr, "--dir"]).arg(dir.join("master"));
        let process = Process::spawn(command)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("the gfs master never listened on {addr}:\n{}", process.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr, _process: process })
    }
}

/// Rounds of the cases on the primary (each ~350 exits), 100 ms apart: several seconds, so that
/// a backup joins while they run and replays the rest, and keeps up between rounds.
const ROUNDS: u64 = 60;
const PAUSE_MS: u64 = 100;
const LONG: Duration = Duration::from_secs(120);

/// An FT pair on loopback: the primary runs `hostile rounds=60 pause=100` on a disk; a backup joins while
/// the rounds go on, replays them (its own device model goes to needs-reset at the same points,
/// with the same warnings), and at power-off has the primary's state.
#[test]
fn a_backup_following_a_hostile_guest_reaches_the_same_end() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = disk(dir.path());
    let master = Master::start(dir.path())?;
    let (a, b) = (free_addr()?, free_addr()?);
    let (rounds, pause) = (format!("rounds={ROUNDS}"), format!("pause={PAUSE_MS}"));
    let mut primary = Command::new(FTVM);
    primary.args(["run", "--guest", "hostile", &rounds, &pause, "--disk", &image, "--state-digest"]);
    primary.args(["--ft", "hostile", "--gfs-master", &master.addr, "--ft-listen", &a]);
    let mut primary = Process::spawn(primary)?;
    primary.wait_for("ft: live as hostile generation 1", LONG)?;
    let mut backup = Command::new(FTVM);
    backup.args(["backup", "--join", &a, "--gfs-master", &master.addr, "--ft-listen", &b, "--disk", &image]);
    let mut backup = Process::spawn(backup)?;

    let status = primary.wait(LONG)?;
    let out = primary.output();
    assert_eq!(status.code(), Some(0), "{out}");
    let cases = ROUNDS * (BAD_CASES.len() as u64 + 1);
    let summary =
        format!("hostile: {cases} cases on 1 devices, {} needs-reset, 0 unexpected", ROUNDS * BAD_CASES.len() as u64);
    assert!(out.lines().any(|l| l == summary), "{summary}: {out}");
    assert!(out.contains("hostile: virtio-blk works again after a reset"), "{out}");
    assert!(out.contains("ft: protected by "), "the backup never joined while the rounds ran: {out}");

    let status = backup.wait(LONG)?;
    let followed = backup.output();
    assert_eq!(status.code(), Some(0), "{followed}");
    assert!(followed.contains("ft: following "), "{followed}");
    assert!(followed.contains("ft: backup at power-off: state-digest identical"), "{followed}");
    // The backup's device model went to needs-reset for the cases it replayed: whole rounds of
    // them (it joined at some point of the run), never more than the primary's.
    let warnings = followed.lines().filter(|l| l.contains("device needs reset")).count() as u64;
    assert!(warnings >= BAD_CASES.len() as u64, "the backup replayed no round: {followed}");
    assert!(warnings <= ROUNDS * BAD_CASES.len() as u64, "{followed}");
    assert!(!followed.contains("UNEXPECTED") && !followed.contains("panicked"), "{followed}");
    assert!(std::fs::read(&image).context("image")?.iter().all(|&b| b == 0), "the disk was written");
    Ok(())
}
