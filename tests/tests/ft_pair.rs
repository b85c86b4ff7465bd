//! The FT pair end to end (issue 11, point 7), in the topology of `ftvm_tests::ft`: the kv guest
//! runs as a primary on host-a with a backup on host-b, a client on the far side of the switch
//! keeps one TCP connection busy, and hosts fail for real (`kill -9`). The client's connection
//! must carry on across a failover with nothing acknowledged lost, the switch must learn the
//! guest's MAC on the new host's port, and a VM that took over must take a new backup.

use anyhow::{bail, ensure, Context, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::{number, wait_for_line, FtNet, Host, Join, FT_PORT, GUEST_MAC};
use ftvm_tests::kv::Client;
use ftvm_tests::require_namespaces;
use std::time::{Duration, Instant};

#[test]
fn a_primary_killed_mid_stream_leaves_the_same_connection_served_from_host_b() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftkill")?;
    net.explain(primary_killed(&net, &[]))
}

/// The same failover with `--commit verified`: an output leaves only once the backup has
/// replayed up to it with an identical output.
#[test]
fn a_primary_killed_in_verified_mode_leaves_the_same_connection_served_from_host_b() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftverified")?;
    net.explain(primary_killed(&net, &["--commit", "verified"]))
}

fn primary_killed(net: &FtNet, extra: &[&str]) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, extra, &[])?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    ensure_running(&mut backup, "backup")?;

    let before = load.replies();
    primary.kill();
    let killed = Instant::now();
    let generation = took_over(&mut backup, killed, generation)?;
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;
    register_names(net, Host::B, FT_PORT, generation)?;
    ensure_running(&mut backup, "backup that took over")?;

    let report = load.finish()?;
    println!("{}", report.summary());
    ensure!(report.replies_after(killed) >= ANSWERS, "only {} answers after the kill", report.replies_after(killed));
    if let Some((gap, _)) = report.longest_gap() {
        println!("outage the client saw: {} ms; around the kill: {}", gap.as_millis(), report.around(killed));
    }
    survives_on_disk(net, &mut backup, "the backup that took over", generation, &report)
}

#[test]
fn a_killed_backup_leaves_the_primary_serving_alone() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftbackup")?;
    net.explain(backup_killed(&net))
}

fn backup_killed(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;

    let before = load.replies();
    backup.kill();
    let killed = Instant::now();
    let lost =
        wait_for_line(&mut primary, "ft: backup lost (no word for {n} ms); running alone, generation {n}", TAKEOVER)?;
    println!(
        "primary: backup lost (no word for {} ms), line seen {} ms after the failure",
        lost[0],
        killed.elapsed().as_millis()
    );
    let alone = number(&lost[1])?;
    ensure!(alone == generation + 1, "the primary runs alone at generation {alone}, expected {}", generation + 1);
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    ensure_running(&mut primary, "primary")?;
    register_names(net, Host::A, FT_PORT, alone)?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;

    let report = load.finish()?;
    println!("{}", report.summary());
    if let Some((gap, _)) = report.longest_gap() {
        println!("longest gap the client saw: {} ms", gap.as_millis());
    }
    survives_on_disk(net, &mut primary, "the primary left alone", alone, &report)
}

/// A following backup stopped with SIGTERM (as an operator would) leaves the pair plainly: one
/// line, status 0, no claim that its state differs; the primary wins its register back and
/// runs on alone, its replies flowing on the same connection.
#[test]
fn a_backup_stopped_with_sigterm_leaves_plainly_and_the_primary_serves_on() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftterm")?;
    net.explain(backup_terminated(&net))
}

fn backup_terminated(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    let before = load.replies();
    backup.signal(libc::SIGTERM)?;
    let status = backup.wait(TAKEOVER).context("the backup after SIGTERM")?;
    let output = backup.output();
    ensure!(status.code() == Some(0), "the backup stopped with {status}, not 0:\n{output}");
    let left = format!("ft: backup stopped by a signal; the primary at {} runs on alone", Host::A.ft_listen());
    ensure!(output.contains(&left), "the backup did not say {left:?}:\n{output}");
    ensure!(!output.contains("state-digest"), "the backup spoke of its state digest:\n{output}");
    let lost =
        wait_for_line(&mut primary, "ft: backup lost (no word for {n} ms); running alone, generation {n}", TAKEOVER)?;
    let alone = number(&lost[1])?;
    ensure!(alone == generation + 1, "the primary runs alone at generation {alone}, expected {}", generation + 1);
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    ensure_running(&mut primary, "primary")?;
    register_names(net, Host::A, FT_PORT, alone)?;
    let report = load.finish()?;
    println!("{}", report.summary());
    Ok(())
}

/// A write the primary held when it died is written by the backup that takes over. The backup
/// is stopped (SIGSTOP), so it receives the log of a SET but cannot acknowledge it: the primary
/// must hold the SET's disk write and its reply. Then the primary is killed and the backup
/// continued: it must issue the write again (and the client must get its answer), so a guest
/// booted again from the disk has the key. Timeouts are long so that nobody races while the
/// backup is stopped.
#[test]
fn a_write_the_primary_held_when_it_died_is_written_by_the_backup() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftheld")?;
    net.explain(held_write(&net))
}

/// Long enough for the whole stop, short enough for a test.
const PATIENT: &[&str] = &["--timeout-ms", "5000"];

fn held_write(net: &FtNet) -> Result<()> {
    // The primary must not hold its vCPU while the stopped backup lags, or the SET is never run.
    let UnderLoad { mut primary, mut backup, generation, load } =
        protected_under_load(net, &["--timeout-ms", "5000", "--max-lag-ms", "0"], PATIENT)?;
    let report = load.finish()?;

    // Opened before the backup stops: the handshake's frames are outputs too.
    let mut probe = net.client.within(Client::connect)?;
    let (key, value) = ("held-key".to_owned(), "h".repeat(1200));
    backup.signal(libc::SIGSTOP)?;
    let before = net.bytes_acked_to(Host::A, Host::B)?;
    let request = format!("SET {key} {value}");
    let answer = std::thread::spawn(move || probe.request(&request));
    // The log of the request (it carries the whole frame) has reached host-b's kernel.
    let deadline = Instant::now() + Duration::from_secs(3);
    while net.bytes_acked_to(Host::A, Host::B)? < before + value.len() as u64 {
        if Instant::now() > deadline {
            bail!("the log of the held SET did not reach host-b within 3 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ensure!(!answer.is_finished(), "the SET was answered while the backup could not acknowledge its log");
    primary.kill();
    let killed = Instant::now();
    backup.signal(libc::SIGCONT)?;
    let generation = took_over(&mut backup, killed, generation)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answer.is_finished() {
        if Instant::now() > deadline {
            bail!("the held SET was not answered within 10 s of the kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let answered = killed.elapsed();
    let reply = answer.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;
    ensure!(reply == "OK", "the held SET was answered {reply:?}");
    println!("the held SET was answered {} ms after the kill", answered.as_millis());
    survives_on_disk_with(net, &mut backup, "the backup that took over", generation, &report, Some((key, value)))
}

#[test]
fn a_second_backup_joins_the_vm_that_took_over_and_a_second_failover_works() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftrejoin")?;
    net.explain(second_failover(&net))
}

fn second_failover(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;

    let before = load.replies();
    primary.kill();
    let first_kill = Instant::now();
    let generation = took_over(&mut backup, first_kill, generation)?;
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;

    // A new backup on host-a finds the live VM through the register and re-protects it.
    let second_port = FT_PORT + 1;
    let rejoin = Instant::now();
    let mut second =
        join_backup(net, Host::A, second_port, &Join::Register(NAME.into()), &mut backup, &Host::B.ft_listen())?;
    let before = load.replies();
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;

    let before = load.replies();
    backup.kill();
    let second_kill = Instant::now();
    let generation = took_over(&mut second, second_kill, generation)?;
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    register_names(net, Host::A, second_port, generation)?;
    ensure_running(&mut second, "second backup that took over")?;

    let report = load.finish()?;
    println!("{}", report.summary());
    let phases = [
        ("after the first kill", first_kill, Some(rejoin)),
        ("while the second backup joined", rejoin, Some(second_kill)),
        ("after the second kill", second_kill, None),
    ];
    for (phase, at, until) in phases {
        let gap = report.longest_gap_within(at, until).map(|g| g.as_millis()).unwrap_or_default();
        println!("longest gap {phase}: {gap} ms; {}", report.around(at));
    }
    survives_on_disk(net, &mut second, "the second backup that took over", generation, &report)
}
