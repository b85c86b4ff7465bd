//! `--commit verified` on one host over loopback, with the `tsc` workload: each value it prints
//! is a fresh RDTSC, which KVM does not log, so a backup's replay prints other bytes. In verified
//! mode the backup compares each output with the primary's and asks for a resync at the first
//! difference; the pair must stay protected through them, and a kill -9 of the primary must
//! still leave a backup that goes live and finishes the work. (The failover of a client's TCP
//! connection in verified mode is in `ft_pair.rs`.)

use anyhow::{bail, ensure, Context, Result};
use ftvm_tests::{binary, Process};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);
/// Six seconds of values, one every 100 ms.
const TSC: &[&str] = &["tsc", "60"];

fn free_addr() -> Result<String> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// A gfs master on loopback (the go-live registers live there), killed on drop.
struct Master {
    addr: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr()?;
        let mut command = Command::new(binary("gfs")?);
        command.args(["master", "--listen", &addr, "--dir"]).arg(dir.path().join("master"));
        let process = Process::spawn(command)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("the gfs master never listened on {addr}:\n{}", process.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr, _process: process, _dir: dir })
    }
}

fn primary(master: &Master, name: &str, listen: &str, workload: &[&str], commit: &str) -> Result<Process> {
    let mut command = Command::new(binary("ftvm")?);
    command.args(["run", "--guest"]).args(workload);
    command.args(["--ft", name, "--gfs-master", &master.addr, "--ft-listen", listen, "--commit", commit]);
    Process::spawn(command)
}

fn backup(master: &Master, join: &str, listen: &str) -> Result<Process> {
    let mut command = Command::new(binary("ftvm")?);
    command.args(["backup", "--join", join, "--gfs-master", &master.addr, "--ft-listen", listen]);
    Process::spawn(command)
}

fn exit_code(process: &mut Process) -> Result<i32> {
    let status = process.wait(LONG)?;
    status.code().with_context(|| format!("killed by a signal ({status}):\n{}", process.output()))
}

/// The values `tsc` printed (`tsc: I VALUE`), by I.
fn values(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("tsc: ")?.split(' ');
            let (i, value) = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
            words.next().is_none().then_some((i, value))
        })
        .collect()
}

#[test]
fn tsc_in_verified_mode_causes_resyncs_the_pair_stays_protected_and_a_kill_still_fails_over() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = primary(&master, "tsc", &a, TSC, "verified")?;
    p.wait_for("ft: live as tsc generation 1", LONG)?;
    let mut s = backup(&master, &a, &b)?;
    p.wait_for("ft: protected by ", LONG)?;
    // Both sides count the resyncs, a line each.
    for n in 1..=3 {
        p.wait_for(&format!("ft: resync {n} ("), LONG)?;
        s.wait_for(&format!("ft: resync {n} ("), LONG)?;
    }
    let before = p.output();
    ensure!(!before.contains("backup lost"), "the pair broke up during the resyncs:\n{before}");
    ensure!(values(&s.output()).is_empty(), "a following backup printed console output:\n{}", s.output());
    ensure!(!values(&before).is_empty(), "the primary released no value:\n{before}");
    p.kill();
    p.wait(LONG)?; // reaped: every byte it printed has been read
                   // What the primary released up to its death (it may have released more since `before`).
    let released = values(&p.output());
    s.wait_for("ft: live at ", LONG)?;
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    let out = s.output();
    ensure!(out.contains(", generation 2, "), "the backup won the next generation:\n{out}");
    // The backup finished the work from past what the primary released: it printed none of the
    // released values again, and every later one, including those the primary held across a
    // resync when it died (the resync carried them to the backup, which issued them again).
    let finished = values(&out);
    // Values are numbered 0..60; `None`: the primary released none.
    let last_released = released.last().map(|&(i, _)| i);
    ensure!(
        finished.iter().all(|&(i, _)| Some(i) > last_released),
        "the backup printed a value the primary had released:\nprimary:\n{before}\nbackup:\n{out}"
    );
    let missing: Vec<u64> =
        (last_released.map_or(0, |i| i + 1)..60).filter(|i| !finished.iter().any(|&(j, _)| j == *i)).collect();
    ensure!(
        missing.is_empty(),
        "values {missing:?} were printed by neither side (last released: {last_released:?}):\nprimary:\n{}\nbackup:\n{out}",
        p.output()
    );
    ensure!(out.contains("tsc: 60 reads, 59 forwards"), "the backup's run did not end as it should:\n{out}");
    Ok(())
}
