//! The FT pair on one host over loopback, with our own guest's `timer` and `compute` workloads: a
//! primary and a backup as real `ftvm` processes, the go-live register on a real gfs master.
//! Whichever side finishes the work, the result must be the unprotected run's: `compute`'s
//! digest (a function of its whole computation), and every one of `timer`'s ticks (it counts
//! them on the guest's clock, which must carry on across a go-live). The pair across network
//! namespaces, with a client's TCP connection surviving a failover, is in `ft_pair.rs`.

use anyhow::{bail, Context, Result};
use ftvm_tests::ft::loopback::{free_addr, Master};
use ftvm_tests::{binary, Process};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// About four seconds of ticks (1 kHz), printed every 400.
const TIMER: &[&str] = &["timer", "4000"];
/// The line `timer` ends with when it got every tick.
const ALL_TICKS: &str = "timer: 4000 ticks, ";
/// About four seconds of computation.
const COMPUTE: &[&str] = &["compute", "1200"];
/// About ten: room for two failovers and a join in between.
const COMPUTE_LONG: &[&str] = &["compute", "3000"];
const LONG: Duration = Duration::from_secs(90);

fn ftvm() -> Result<PathBuf> {
    binary("ftvm")
}

/// The `digest:` line an unprotected run of `workload` prints.
fn unprotected_digest(workload: &[&str]) -> Result<String> {
    let out = Command::new(ftvm()?).args(["run", "--guest"]).args(workload).output()?;
    digest_line(&String::from_utf8_lossy(&out.stdout)).context("the unprotected run")
}

fn digest_line(text: &str) -> Result<String> {
    match text.lines().find(|l| l.starts_with("digest: ")) {
        Some(line) => Ok(line.to_owned()),
        None => bail!("no digest line in:\n{text}"),
    }
}

fn exit_code(process: &mut Process) -> Result<i32> {
    let status = process.wait(LONG)?;
    status.code().with_context(|| format!("killed by a signal ({status}):\n{}", process.output()))
}

/// Waits until the pair is protected and the primary has done part of `timer`'s work.
fn protected(primary: &mut Process, backup: &mut Process) -> Result<()> {
    primary.wait_for("ft: protected by ", LONG)?;
    backup.wait_for("ft: following ", LONG)?;
    primary.wait_for("timer: 1200/", LONG)?;
    Ok(())
}

/// Waits until the pair is protected, then lets the primary compute for a while (`compute`
/// prints nothing until it is done).
fn protected_computing(primary: &mut Process, backup: &mut Process) -> Result<()> {
    primary.wait_for("ft: protected by ", LONG)?;
    backup.wait_for("ft: following ", LONG)?;
    std::thread::sleep(Duration::from_millis(800));
    Ok(())
}

/// Every tick arrived, on whichever side finished.
fn got_every_tick(process: &Process) -> Result<()> {
    let out = process.output();
    if !out.contains(ALL_TICKS) {
        bail!("not every tick arrived:\n{out}");
    }
    Ok(())
}

#[test]
fn a_backup_follows_a_primary_to_power_off_and_reaches_the_same_state() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("follow", &a, TIMER, &["--state-digest"])?;
    p.wait_for("ft: live as follow generation 1", LONG)?;
    let mut s = master.backup(&a, &b, &[])?;
    assert_eq!(exit_code(&mut p)?, 0, "{}", p.output());
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    assert!(s.output().contains("ft: backup at power-off: state-digest identical"), "{}", s.output());
    // The backup printed none of the guest's console: the primary released it.
    assert!(digest_line(&s.output()).is_err(), "a following backup printed console output:\n{}", s.output());
    got_every_tick(&p)?;
    // The clean stop released the register: the next start needs no --takeover.
    let mut again = master.primary("follow", &free_addr()?, TIMER, &[])?;
    again.wait_for("ft: live as follow generation 3", LONG)?;
    Ok(())
}

#[test]
fn the_backup_takes_over_a_killed_primary_and_finishes_its_computation() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("kill", &a, COMPUTE, &[])?;
    let mut s = master.backup(&a, &b, &[])?;
    protected_computing(&mut p, &mut s)?;
    p.kill();
    s.wait_for("ft: live at ", LONG)?;
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    let out = s.output();
    assert!(out.contains(", generation 2, "), "the backup won the next generation:\n{out}");
    assert_eq!(digest_line(&out)?, unprotected_digest(COMPUTE)?, "the work the backup finished differs:\n{out}");
    Ok(())
}

#[test]
fn the_backup_takes_over_a_killed_primary_and_its_clock_and_timers_carry_on() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("tick", &a, TIMER, &[])?;
    let mut s = master.backup(&a, &b, &[])?;
    protected(&mut p, &mut s)?;
    p.kill();
    s.wait_for("ft: live at Exit(", LONG)?;
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    got_every_tick(&s)
}

#[test]
fn a_primary_whose_backup_dies_releases_what_it_held_and_runs_on_alone() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("alone", &a, TIMER, &[])?;
    let mut s = master.backup(&a, &b, &[])?;
    protected(&mut p, &mut s)?;
    s.kill();
    p.wait_for("running alone, generation 2", LONG)?;
    assert_eq!(exit_code(&mut p)?, 0, "{}", p.output());
    got_every_tick(&p)
}

#[test]
fn a_primary_paused_past_the_timeout_loses_the_race_and_releases_nothing() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("pause", &a, TIMER, &[])?;
    let mut s = master.backup(&a, &b, &[])?;
    protected(&mut p, &mut s)?;
    p.signal(libc::SIGSTOP)?;
    s.wait_for("ft: live at ", LONG)?;
    let printed_when_stopped = p.output();
    p.signal(libc::SIGCONT)?;
    assert_eq!(exit_code(&mut p)?, 75, "{}", p.output());
    let after = p.output();
    assert!(after.contains("ft: lost the go-live race to "), "{after}");
    // Nothing it held reached its console after the backup went live.
    let new_console: Vec<&str> = after[printed_when_stopped.len()..]
        .lines()
        .filter(|l| !l.starts_with("ft: ") && !l.contains(" WARN "))
        .collect();
    assert!(new_console.is_empty(), "the old primary released output after losing: {new_console:?}");
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    got_every_tick(&s)
}

#[test]
fn a_new_backup_joins_the_side_that_took_over_and_a_second_failover_works() -> Result<()> {
    let master = Master::start()?;
    let (a, b, c) = (free_addr()?, free_addr()?, free_addr()?);
    let mut first = master.primary("twice", &a, COMPUTE_LONG, &[])?;
    let mut second = master.backup(&a, &b, &[])?;
    protected_computing(&mut first, &mut second)?;
    first.kill();
    second.wait_for("ft: live at ", LONG)?;
    // A backup that finds the live side from the register.
    let mut command = Command::new(ftvm()?);
    command.args(["backup", "--ft", "twice", "--gfs-master", &master.addr, "--ft-listen", &c]);
    let mut third = Process::spawn(command)?;
    // A join that fails shows why on the joining side.
    let joined = second.wait_for("ft: protected by ", LONG);
    joined.with_context(|| format!("the third VMM (the new backup) said:\n{}", third.output()))?;
    third.wait_for(&format!("ft: following {b} from "), LONG)?;
    std::thread::sleep(Duration::from_millis(500));
    second.kill();
    third.wait_for("ft: live at ", LONG)?;
    assert_eq!(exit_code(&mut third)?, 0, "{}", third.output());
    assert!(third.output().contains(", generation 3, "), "{}", third.output());
    assert_eq!(digest_line(&third.output())?, unprotected_digest(COMPUTE_LONG)?);
    Ok(())
}

#[test]
fn a_held_register_refuses_a_second_primary_unless_the_operator_takes_over() -> Result<()> {
    let master = Master::start()?;
    let mut p = master.primary("held", &free_addr()?, TIMER, &[])?;
    p.wait_for("ft: live as held generation 1", LONG)?;
    let mut refused = master.primary("held", &free_addr()?, TIMER, &[])?;
    assert_ne!(exit_code(&mut refused)?, 0);
    let out = refused.output();
    assert!(out.contains("is held by") && out.contains("--takeover"), "{out}");
    let mut forced = master.primary("held", &free_addr()?, TIMER, &["--takeover"])?;
    forced.wait_for("ft: live as held generation 2", LONG)?;
    Ok(())
}

/// A CPU hog at the lowest priority, killed on drop.
struct Hog(std::process::Child);

impl Hog {
    fn start() -> Result<Self> {
        Ok(Self(Command::new("nice").args(["-n", "19", "sh", "-c", "while :; do :; done"]).spawn()?))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_busy_machine_is_not_a_dead_peer() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    const THIRTY_SECONDS: &[&str] = &["timer", "30000"];
    let mut p = master.primary("busy", &a, THIRTY_SECONDS, &[])?;
    let mut s = master.backup(&a, &b, &[])?;
    p.wait_for("ft: protected by ", LONG)?;
    // Two hogs on this two-core machine for the whole run.
    let hogs = [Hog::start()?, Hog::start()?];
    assert_eq!(exit_code(&mut p)?, 0, "{}", p.output());
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    drop(hogs);
    let (primary_out, backup_out) = (p.output(), s.output());
    assert!(!primary_out.contains("ft: backup lost"), "the primary took a busy backup for dead:\n{primary_out}");
    assert!(!backup_out.contains("ft: live at"), "the backup took a busy primary for dead:\n{backup_out}");
    assert!(backup_out.contains("ft: backup at power-off: state-digest identical"), "{backup_out}");
    Ok(())
}
