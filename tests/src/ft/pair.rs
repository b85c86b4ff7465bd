//! The steps the FT tests share: a live primary, a backup that joined it, a takeover, the
//! register's state, and the check that what the client saw acknowledged is on the disk.

use super::{match_line, number, wait_for_line, FtNet, Host, Join, KvLoad, LoadReport, Unread, FT_PORT};
use crate::kv::Client;
use crate::Process;
use anyhow::{bail, ensure, Context, Result};
use std::time::{Duration, Instant};

/// The register the tests protect their VM under (`ft.kv` in gfs).
pub const NAME: &str = "kv";
/// How long a boot may take to say `kv: listening on` (and the primary to go live).
pub const BOOT: Duration = Duration::from_secs(60);
/// How long a join (stop-and-copy of 128 MiB over the segment) may take.
pub const JOIN: Duration = Duration::from_secs(60);
/// How long after a kill the survivor may take to say so (default timeout 100 ms, plus a
/// compare-and-set on gfs, on a loaded 2-core machine).
pub const TAKEOVER: Duration = Duration::from_secs(10);
/// Answers the client must get in each phase of a test.
pub const ANSWERS: usize = 400;
/// How long the client may take for them (it includes a failover).
pub const ANSWERS_TIMEOUT: Duration = Duration::from_secs(60);

pub fn ensure_running(process: &mut Process, role: &str) -> Result<()> {
    if let Some(status) = process.exited()? {
        bail!("the {role} (pid {}) exited ({status})", process.pid());
    }
    Ok(())
}

/// Stops `vm` with SIGTERM and expects the clean stop's status 143 (a protected VM releases
/// its register on the way out, so the next start wins it at once).
pub fn stop_cleanly(vm: &mut Process, role: &str) -> Result<()> {
    vm.signal(libc::SIGTERM)?;
    let status = vm.wait(Duration::from_secs(30)).with_context(|| format!("{role} after SIGTERM"))?;
    ensure!(status.code() == Some(143), "{role} stopped with {status} after SIGTERM, not 143");
    Ok(())
}

/// Neither side of a pair gave up on the other (a measured phase is void if it did).
pub fn still_a_pair(primary: &mut Process, backup: &mut Process) -> Result<()> {
    for (process, role) in [(&mut *primary, "primary"), (&mut *backup, "backup")] {
        if let Some(status) = process.exited()? {
            bail!("the {role} exited ({status}) during a measured phase");
        }
    }
    ensure!(!primary.output().contains("ft: backup lost"), "the primary lost its backup during a measured phase");
    Ok(())
}

/// Ends a pair whose primary should outlive it: the backup is killed, the primary says it runs
/// alone, then stops cleanly (releasing the register for the next start).
pub fn end_pair(primary: &mut Process, backup: &mut Process) -> Result<()> {
    backup.kill();
    wait_for_line(primary, "ft: backup lost (no word for {n} ms); running alone, generation {n}", TAKEOVER)?;
    stop_cleanly(primary, "the primary")
}

/// A protected VM on `host` that is live and serving: the primary and its generation.
pub fn live_primary(net: &FtNet, host: Host, extra: &[&str]) -> Result<(Process, u64)> {
    let mut primary = net.primary(host, NAME, extra)?;
    let live = wait_for_line(&mut primary, &format!("ft: live as {NAME} generation {{n}}"), BOOT)?;
    let generation = number(&live[0])?;
    primary.wait_for("kv: listening on", BOOT)?;
    Ok((primary, generation))
}

/// Where every failover test starts: kv live on host-a (`primary_extra` on its command line),
/// a backup on host-b (`backup_extra`) that joined it, and the client's load under way with
/// [`ANSWERS`] answers already given.
pub struct UnderLoad {
    pub primary: Process,
    pub backup: Process,
    pub generation: u64,
    pub load: KvLoad,
}

pub fn protected_under_load(net: &FtNet, primary_extra: &[&str], backup_extra: &[&str]) -> Result<UnderLoad> {
    let (mut primary, generation) = live_primary(net, Host::A, primary_extra)?;
    let join = Join::Address(Host::A.ft_listen());
    let backup = join_backup_with(net, Host::B, FT_PORT, &join, &mut primary, &Host::A.ft_listen(), backup_extra)?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT)?;
    Ok(UnderLoad { primary, backup, generation, load })
}

/// A backup on `host` (its `--ft-listen` on `port`) that joined the live VM `primary`, which
/// listens on `live`; waited for until both sides say so.
pub fn join_backup(
    net: &FtNet,
    host: Host,
    port: u16,
    join: &Join,
    primary: &mut Process,
    live: &str,
) -> Result<Process> {
    join_backup_with(net, host, port, join, primary, live, &[])
}

pub fn join_backup_with(
    net: &FtNet,
    host: Host,
    port: u16,
    join: &Join,
    primary: &mut Process,
    live: &str,
    extra: &[&str],
) -> Result<Process> {
    let mut backup = net.backup(host, join, port, extra)?;
    wait_for_line(&mut backup, &format!("ft: following {live} from {{landmark}}"), JOIN)?;
    let protected = wait_for_line(
        primary,
        &format!("ft: protected by {} since {{landmark}} (pause {{n}} ms)", host.ft_listen_on(port)),
        JOIN,
    )?;
    println!("{live} protected by {} since {} (join pause {} ms)", host.label(), protected[0], protected[1]);
    Ok(backup)
}

/// The takeover line of a backup that went live after the primary was killed at `killed`:
/// its generation, checked against the one before; prints how long it took.
pub fn took_over(backup: &mut Process, killed: Instant, generation_before: u64) -> Result<u64> {
    let line = wait_for_line(
        backup,
        "ft: live at {landmark}, generation {n}, {n} ms after the last word from the primary",
        TAKEOVER,
    )?;
    let seen_after = killed.elapsed();
    let generation = number(&line[1])?;
    ensure!(
        generation == generation_before + 1,
        "the backup went live with generation {generation}, expected {} (the primary's plus one)",
        generation_before + 1
    );
    println!(
        "takeover: live at {}, generation {generation}, {} ms after the primary's last word; line seen {} ms after the failure",
        line[0],
        line[2],
        seen_after.as_millis()
    );
    Ok(generation)
}

/// The register names `host`'s VMM at `generation`.
pub fn register_names(net: &FtNet, host: Host, port: u16, generation: u64) -> Result<()> {
    let register = net.register(&format!("ft.{NAME}"))?;
    let expected_tail = format!("@{}", host.ft_listen_on(port));
    ensure!(
        register.contains(&format!(" generation {generation} ")) && register.ends_with(&expected_tail),
        "the register reads {register:?}, expected generation {generation} held by ...{expected_tail}"
    );
    Ok(())
}

/// Stops the live VM cleanly (SIGTERM) and boots the guest again from the shared disk: every
/// SET the client saw acknowledged must be on the disk, not only in the memory of the VM that
/// answered it (a write the primary held when it died must have been issued again).
/// A VM that stops cleanly releases the register: no holder, the next generation.
pub fn survives_on_disk(
    net: &FtNet,
    live: &mut Process,
    role: &str,
    generation: u64,
    report: &LoadReport,
) -> Result<()> {
    survives_on_disk_with(net, live, role, generation, report, None)
}

/// [`survives_on_disk`], with one more acknowledged `(key, value)` that must be there too.
pub fn survives_on_disk_with(
    net: &FtNet,
    live: &mut Process,
    role: &str,
    generation: u64,
    report: &LoadReport,
    extra: Option<(String, String)>,
) -> Result<()> {
    let keys = report.acknowledged_sets() + usize::from(extra.is_some());
    let (_vm, loaded) = boot_again_from_disk(net, live, role, generation)?;
    // The one SET in flight when the side serving it died may have reached the disk without
    // its reply reaching the client: the disk holds the acknowledged keys, and perhaps that one.
    ensure!(
        loaded == keys as u64 || loaded == keys as u64 + 1,
        "the guest booted again from the disk loaded {loaded} keys, not the {keys} acknowledged ones"
    );
    report.check_on_new_connection(&net.client)?;
    if let Some((key, value)) = extra {
        let answer = net.client.within(move || Client::connect()?.request(&format!("GET {key}")))?;
        ensure!(answer == format!("VALUE {value}"), "the held write's key reads back as {answer:?}");
    }
    Ok(())
}

/// As [`survives_on_disk`], counting rather than failing at the first: the acknowledged SETs
/// that the guest booted again from the disk does not read back, and the keys it loaded.
pub fn unread_on_disk(
    net: &FtNet,
    live: &mut Process,
    role: &str,
    generation: u64,
    report: &LoadReport,
) -> Result<(Vec<Unread>, u64)> {
    let (_vm, loaded) = boot_again_from_disk(net, live, role, generation)?;
    Ok((report.unread_on_new_connection(&net.client)?, loaded))
}

/// Stops the live VM cleanly (SIGTERM; the register is then free at the next generation) and
/// boots the guest again from the disk, unprotected, on host-a: the VM, and how many keys it
/// loaded. The client's neighbour cache is flushed, so it finds the guest on host-a.
fn boot_again_from_disk(net: &FtNet, live: &mut Process, role: &str, generation: u64) -> Result<(Process, u64)> {
    live.signal(libc::SIGTERM)?;
    let status = live.wait(Duration::from_secs(30)).with_context(|| format!("{role} after SIGTERM"))?;
    ensure!(status.code() == Some(143), "{role} stopped with {status} after SIGTERM, not 143");
    let register = net.register(&format!("ft.{NAME}"))?;
    let released = format!("ft.{NAME} generation {} holder", generation + 1);
    ensure!(register == released, "after a clean stop the register reads {register:?}, expected {released:?}");
    let vm = net.plain_vm(Host::A)?;
    let loaded = vm
        .output()
        .lines()
        .find_map(|line| match_line(line, "kv: listening on 10.0.0.2:7000, {n} keys loaded"))
        .map(|n| number(&n[0]))
        .transpose()?
        .with_context(|| {
            format!("the guest booted again from the disk did not say how many keys it loaded:\n{}", vm.output())
        })?;
    // The client last reached the guest through host-b; nothing announces it back on host-a.
    net.client.ip(&["neigh", "flush", "all"])?;
    Ok((vm, loaded))
}
