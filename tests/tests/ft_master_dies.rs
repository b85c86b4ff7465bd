//! The master dies too (issue 15, point 3), in the topology of `ftvm_tests::ft` with the VM's
//! disk on gfs: the gfs master is killed at the moment the primary dies. The backup cannot win
//! the go-live register while the master is down, so it keeps holding output and trying (and
//! says so), and nothing leaves its VM; once the master is started again over its directory,
//! the backup wins the next generation, goes live and issues again what the primary may not
//! have completed. Nothing acknowledged is lost: every acknowledged SET reads back on the
//! client's connection and from the gfs file. The test prints how long the master was down, how
//! long after its restart the backup was live, and the outage the client saw.

use anyhow::{ensure, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::partition::unix_now;
use ftvm_tests::ft::storage_faults::GfsProcess;
use ftvm_tests::ft::{FtNet, Host, FT_PORT, GUEST_MAC};
use ftvm_tests::{require_namespaces, Process};
use std::time::{Duration, Instant};

/// The backup's word that it cannot reach the master during the race (once a second).
const MASTER_DOWN: &str = "go-live race: the gfs master does not answer; output stays held and the race goes on";
/// The backup must have said so this many times (tried for over a second) before the master
/// comes back.
const WARNINGS: usize = 2;
/// How long the backup may keep trying before it must have warned twice.
const WARNED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn the_backup_holds_output_while_the_master_is_down_and_goes_live_when_it_is_back() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("fmdown")?;
    net.explain(master_dies_with_the_primary(&net))
}

fn master_dies_with_the_primary(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    let taps = net.watch_taps();

    let before = load.replies();
    ensure!(net.kill_gfs(GfsProcess::Master), "the gfs master was not running");
    primary.kill();
    let killed = Instant::now();
    let killed_unix = unix_now();

    warned(&backup, WARNINGS)?;
    ensure_running(&mut backup, "backup")?;
    ensure!(
        !backup.output().contains("ft: live at") && !backup.output().contains("ft: output released from"),
        "the backup went live without the master:\n{}",
        backup.output()
    );
    let answered_while_down = load.replies() - before;
    let down_for = killed.elapsed();
    net.restart_gfs(GfsProcess::Master)?;
    let restarted = Instant::now();
    let restarted_unix = unix_now();

    let won = took_over(&mut backup, killed, generation)?;
    let live_after_restart = restarted.elapsed();
    load.wait_for_replies(load.replies() + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;
    register_names(net, Host::B, FT_PORT, won)?;
    ensure_running(&mut backup, "backup that took over")?;

    // Nothing left the backup's VM while the master was down: its TAP took no frame between
    // the kill and the restart.
    for (host, writes) in taps.finish()? {
        if let Some(write) = writes.iter().find(|w| host == Host::B && w.seen > killed_unix && w.after < restarted_unix)
        {
            anyhow::bail!(
                "{} frame(s) left the backup's VM {:.1} ms after the kill, with the master down",
                write.frames,
                (write.seen - killed_unix) * 1e3
            );
        }
    }
    let report = load.finish()?;
    println!("{}", report.summary());
    let outage = report.longest_gap_within(killed, None).unwrap_or_default();
    println!(
        "master and primary killed together: master down {} ms (the backup warned {WARNINGS} times and held \
         everything: {answered_while_down} answers while down); live {} ms after the master restarted; \
         outage the client saw {} ms",
        down_for.as_millis(),
        live_after_restart.as_millis(),
        outage.as_millis()
    );
    ensure!(answered_while_down <= 1, "the client got {answered_while_down} answers with no side live");
    survives_on_disk(net, &mut backup, "the backup that took over", won, &report)
}

/// Waits until the backup has said `times` times that it cannot reach the master.
fn warned(backup: &Process, times: usize) -> Result<()> {
    let deadline = Instant::now() + WARNED_WITHIN;
    loop {
        let count = backup.output().lines().filter(|line| line.contains(MASTER_DOWN)).count();
        if count >= times {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the backup warned {count} times in {WARNED_WITHIN:?} that the master does not answer:\n{}",
            backup.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
