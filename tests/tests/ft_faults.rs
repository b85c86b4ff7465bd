//! Faults that are not a dead host, for the FT pair in the topology of `ftvm_tests::ft`: the
//! logging link cut while both sides still reach gfs (exactly one side goes on, the other exits
//! 75), a busy machine (not a dead peer), and a primary stopped for 2 s (it loses the race and
//! lets nothing out).

use anyhow::{bail, ensure, Context, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::{number, wait_for_line, FtNet, Host, FT_PORT, GUEST_MAC};
use ftvm_tests::{require_namespaces, Process};
use std::process::Command;
use std::time::{Duration, Instant};

/// The logging link cut while both sides live and both reach gfs: both race for the register,
/// exactly one goes on (the client's connection with it) and the other exits 75 having
/// released nothing.
#[test]
fn a_cut_logging_link_leaves_exactly_one_side_serving_and_the_other_exits_75() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftcut")?;
    net.explain(link_cut(&net))
}

/// The exit status of the side that lost the go-live race.
const LOST_RACE: i32 = 75;

fn link_cut(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;

    let before = load.replies();
    net.cut_link_between_hosts()?;
    let cut = Instant::now();
    // Exactly one side exits, with 75.
    let deadline = cut + TAKEOVER;
    let (mut winner, mut loser, winner_host, loser_host) = loop {
        match (primary.exited()?, backup.exited()?) {
            (Some(_), Some(_)) => bail!("both sides exited after the cut"),
            (Some(_), None) => break (backup, primary, Host::B, Host::A),
            (None, Some(_)) => break (primary, backup, Host::A, Host::B),
            (None, None) if Instant::now() > deadline => bail!("neither side halted within {TAKEOVER:?} of the cut"),
            (None, None) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let status = loser.wait(Duration::from_secs(5))?;
    ensure!(status.code() == Some(LOST_RACE), "the {} side exited with {status}, not {LOST_RACE}", loser_host.label());
    let lost = wait_for_line(&mut loser, "ft: lost the go-live race to {any} (generation {n}): halting", TAKEOVER)?;
    let won = generation + 1;
    ensure!(
        lost[0].ends_with(&format!("@{}", winner_host.ft_listen())) && number(&lost[1])? == won,
        "the loser names {} at generation {}, expected ...@{} at {won}",
        lost[0],
        lost[1],
        winner_host.ft_listen()
    );
    match winner_host {
        Host::A => {
            wait_for_line(
                &mut winner,
                "ft: backup lost (no word for {n} ms); running alone, generation {n}",
                TAKEOVER,
            )?;
        }
        Host::B => {
            took_over(&mut winner, cut, generation)?;
        }
    }
    println!("after the cut {} went on and {} halted with {LOST_RACE}", winner_host.label(), loser_host.label());
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, winner_host, Duration::from_secs(5))?;
    register_names(net, winner_host, FT_PORT, won)?;
    ensure_running(&mut winner, "side that won")?;
    let report = load.finish()?;
    println!("{}", report.summary());
    let gap = report.longest_gap_within(cut, None).map(|g| g.as_millis()).unwrap_or_default();
    println!("longest gap after the cut: {gap} ms; {}", report.around(cut));
    survives_on_disk(net, &mut winner, "the side that won", won, &report)
}

/// A busy machine is not a dead peer: with two `nice -n 19` CPU hogs running for 30 s while the
/// client keeps the guest busy, the pair stays a pair. Nobody says the other is lost, nobody
/// races for the register, and the client is served throughout.
#[test]
fn a_busy_machine_is_not_a_dead_peer() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftbusy")?;
    net.explain(busy_machine(&net))
}

/// How long the hogs run (issue 11, point 7).
const BUSY_FOR: Duration = Duration::from_secs(30);

fn busy_machine(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;

    let hogs = (0..2)
        .map(|_| {
            let mut hog = Command::new("nice");
            hog.args(["-n", "19", "sh", "-c", "while :; do :; done"]);
            Process::spawn(hog)
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let before = load.replies();
    let broken = ["ft: backup lost", "ft: live at", "ft: lost the go-live race"];
    while started.elapsed() < BUSY_FOR {
        for (role, process) in [("primary", &mut primary), ("backup", &mut backup)] {
            ensure_running(process, role)?;
            let output = process.output();
            if let Some(line) = output.lines().find(|line| broken.iter().any(|b| line.starts_with(b))) {
                bail!("the {role} printed {line:?} {} ms into the busy period", started.elapsed().as_millis());
            }
        }
        load.wait_for_replies(load.replies() + 1, ANSWERS_TIMEOUT)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(hogs);
    let served = load.replies() - before;
    register_names(net, Host::A, FT_PORT, generation)?;
    let report = load.finish()?;
    let gap = report.longest_gap_within(started, None).map(|g| g.as_millis()).unwrap_or_default();
    println!("{served} answers during {} s with two CPU hogs; longest gap {gap} ms", BUSY_FOR.as_secs());
    Ok(())
}

/// A primary stopped (SIGSTOP) for 2 s and then continued: the backup is live by then, and the
/// old primary loses the race (exit 75) without letting anything it held out. Not one frame
/// leaves its TAP after it continues, the switch keeps the guest's MAC on host-b's port, and the
/// disk holds exactly what the client saw acknowledged.
#[test]
fn a_primary_stopped_for_2_s_loses_the_race_and_nothing_it_held_leaves() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftstop")?;
    net.explain(primary_stopped(&net))
}

/// How long the primary is stopped (issue 11, point 7).
const STOPPED_FOR: Duration = Duration::from_secs(2);

fn primary_stopped(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;

    let before = load.replies();
    primary.signal(libc::SIGSTOP)?;
    let stopped = Instant::now();
    let won = took_over(&mut backup, stopped, generation)?;
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;
    while stopped.elapsed() < STOPPED_FOR {
        // The stop lasts its full length, whatever the backup did meanwhile.
        load.wait_for_replies(load.replies() + 1, ANSWERS_TIMEOUT)?;
    }
    let written_before = net.frames_from_vm(Host::A)?;
    primary.signal(libc::SIGCONT)?;
    let status = primary.wait(TAKEOVER).context("the old primary after SIGCONT")?;
    ensure!(status.code() == Some(LOST_RACE), "the old primary exited with {status}, not {LOST_RACE}");
    let lost = wait_for_line(&mut primary, "ft: lost the go-live race to {any} (generation {n}): halting", TAKEOVER)?;
    ensure!(
        lost[0].ends_with(&format!("@{}", Host::B.ft_listen())) && number(&lost[1])? == won,
        "the old primary names {} at generation {}, expected ...@{} at {won}",
        lost[0],
        lost[1],
        Host::B.ft_listen()
    );
    let written_after = net.frames_from_vm(Host::A)?;
    ensure!(
        written_after == written_before,
        "the old primary wrote {} frame(s) to its TAP after it was continued",
        written_after - written_before
    );
    let before = load.replies();
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    let port = net.fdb_port_of(GUEST_MAC)?;
    ensure!(
        port.as_deref() == Some(Host::B.switch_port()),
        "the switch has the guest's MAC on {port:?} after the old primary ran again"
    );
    let report = load.finish()?;
    println!("{}", report.summary());
    survives_on_disk(net, &mut backup, "the backup that took over", won, &report)
}
