//! `ftvm demo`: the user's scenario on one machine. A switch, two hosts, a client and a
//! storage machine in network namespaces; a VM (the kv guest) on a fenced gfs disk, live on
//! host-a and followed by a backup on host-b; a client keeping one TCP connection busy; then
//! host-a's VMM killed with `kill -9`, the backup going live and the MAC moving, a new backup on
//! host-a, protection again, and the new primary killed too. Every process, namespace and file
//! it made is removed at the end, on failure and on Ctrl-C (drop order of the locals in
//! [`scenario`]).

mod cluster;
mod interrupt;
mod load;
mod timeline;
mod topology;

pub use cluster::serve_storage;
pub use topology::namespace_prefix;

use anyhow::{bail, ensure, Context, Result};
use cluster::{ftvm_exe, gfs_master, start_storage, Proc};
use load::Load;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use timeline::{Bandwidth, Failover, Summary, Timeline};
use topology::{Host, Topology, TAP};

/// The VM's register in gfs (`ft.kv`), which also fences its disk.
const NAME: &str = "kv";
/// The VM's disk.
const DISK: &str = "gfs:/vm/kv.img";
/// The VM's address and MAC.
const GUEST_CIDR: &str = "10.0.0.2/24";
const GUEST_MAC: &str = "52:54:00:f7:00:02";
/// The `--ft-listen` port of each VMM on its host.
const FT_PORT: u16 = 7100;
/// The port of the VM booted alone at the end to read the disk.
const CHECK_PORT: u16 = 7109;
/// How long a boot may take to say `kv: listening on`, and a join.
const BOOT: Duration = Duration::from_secs(60);
/// Silence after which a side presumes its peer dead (`--timeout-ms`). Above ftvm's default of
/// 100 ms: on a loaded 2-core machine a VMM can be descheduled that long, and a false alarm
/// would make the pair split. A `kill -9` is noticed at once whatever this is: the kernel
/// closes the dead VMM's connection.
const PEER_TIMEOUT_MS: &str = "500";
/// How long the survivor may take to go live after a kill.
const TAKEOVER: Duration = Duration::from_secs(10);
/// Replies the client must get in each phase.
const REPLIES: usize = 400;
const REPLIES_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the switch may take to learn the MAC's new port.
const MAC_MOVE: Duration = Duration::from_secs(5);

/// The demo's one-line refusal when it cannot run here.
fn check_can_run() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("ftvm demo needs root: it builds network namespaces and TAP devices (try: sudo ftvm demo)");
    }
    for (path, why) in [("/dev/kvm", "KVM"), ("/dev/net/tun", "TAP devices")] {
        if !std::path::Path::new(path).exists() {
            bail!("ftvm demo needs {path} for {why}");
        }
    }
    for tool in ["ip", "bridge", "ss"] {
        let found = std::process::Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
        ensure!(found, "ftvm demo needs `{tool}` (iproute2) on the PATH");
    }
    Ok(())
}

pub fn run(plot_to: Option<&std::path::Path>, keys: Option<&std::path::Path>) -> Result<ExitCode> {
    check_can_run()?;
    interrupt::install()?;
    vmm::outln!("ftvm demo: a VM that survives the loss of its host, twice, with a client connected all along.");
    vmm::outln!("Everything runs on this machine: each \"host\" is a network namespace plugged into one switch.");
    let timeline = Timeline::start();
    let result = scenario(&timeline, keys);
    // Every process, namespace and file is gone by now (dropped inside `scenario`).
    let took = timeline.elapsed().as_secs_f64();
    if let Some(signal) = interrupt::signal() {
        vmm::errln!("ftvm demo: interrupted by signal {signal}; everything it made is removed");
        return Ok(ExitCode::from(128 + signal as u8));
    }
    match result {
        Ok(summary) => {
            summary.print();
            if let Some(path) = plot_to {
                if let Err(error) = draw_plot(path, &timeline, &summary) {
                    vmm::errln!("ftvm demo: FAILED to draw the plot: {error:#}");
                    return Ok(ExitCode::from(1));
                }
                vmm::outln!("plot: {} (reply latency over time; kills, go-live and protection marked)", path.display());
            }
            vmm::outln!("ftvm demo: ok, every check passed, in {took:.0} s; everything it made is removed");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            vmm::errln!("ftvm demo: FAILED after {took:.0} s: {error:#}");
            vmm::errln!("ftvm demo: everything it made is removed");
            Ok(ExitCode::from(1))
        }
    }
}

fn draw_plot(path: &std::path::Path, timeline: &Timeline, summary: &Summary) -> Result<()> {
    use vmm::plot::{Chart, Mark, MarkKind};
    let mut marks = Vec::new();
    for (i, at) in summary.protected_at.iter().enumerate() {
        let label = if i == 0 { "protected".to_owned() } else { "protected again".to_owned() };
        marks.push(Mark { at: *at, kind: MarkKind::Protected, label });
    }
    for failover in &summary.failovers {
        marks.push(Mark {
            at: failover.killed_at,
            kind: MarkKind::Kill,
            label: format!("kill {}", failover.killed_host),
        });
        marks.push(Mark {
            at: failover.live_at,
            kind: MarkKind::Live,
            label: format!("{} live", failover.survivor_host),
        });
    }
    let chart = Chart {
        title: "ftvm demo: the client's reply latency on one TCP connection",
        x_desc: "seconds since the demo started",
        origin: timeline.origin(),
    };
    Ok(vmm::plot::draw(path, &chart, &summary.report.replies, &marks)?)
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn listen(host: Host, port: u16) -> String {
    format!("{}:{port}", host.ip())
}

/// `ftvm run --guest kv ... --ft kv` on `host`: the protected VM, live there.
fn start_primary(topology: &Topology, host: Host, port: u16, label: &str) -> Result<Proc> {
    let args = strings(&[
        "run",
        "--guest",
        "kv",
        &format!("ip={GUEST_CIDR}"),
        "--net",
        &format!("tap={TAP},mac={GUEST_MAC}"),
        "--disk",
        DISK,
        "--ft",
        NAME,
        "--gfs-master",
        &gfs_master(),
        "--ft-listen",
        &listen(host, port),
        "--timeout-ms",
        PEER_TIMEOUT_MS,
    ]);
    Proc::spawn_in(topology.host(host), label, &ftvm_exe()?, &args)
}

/// `ftvm backup --join LIVE` on `host`.
fn start_backup(topology: &Topology, host: Host) -> Result<Proc> {
    let args = strings(&[
        "backup",
        "--join",
        &listen(host.other(), FT_PORT),
        "--gfs-master",
        &gfs_master(),
        "--ft-listen",
        &listen(host, FT_PORT),
        "--net",
        &format!("tap={TAP}"),
        "--disk",
        DISK,
        "--timeout-ms",
        PEER_TIMEOUT_MS,
    ]);
    Proc::spawn_in(topology.host(host), &format!("backup on {}", host.label()), &ftvm_exe()?, &args)
}

fn protected_prefix(backup_host: Host) -> String {
    format!("ft: protected by {} since ", listen(backup_host, FT_PORT))
}

const BACKUP_LOST: &str = "ft: backup lost ";

/// Waits until the live VM `live` says (once more) that the backup on `backup_host` is in
/// step; when, and the pause the join cost the guest.
fn wait_protected(live: &mut Proc, backup_host: Host) -> Result<(Instant, String)> {
    let prefix = protected_prefix(backup_host);
    let n = live.lines_with(&prefix).len() + 1;
    let (at, rest) = live.wait_for_nth(&prefix, n, BOOT)?;
    let pause = rest.split("(pause ").nth(1).and_then(|p| p.strip_suffix(')')).unwrap_or("?").to_owned();
    Ok((at, pause))
}

/// Before a kill: the pair must still be in step. On a machine busy enough to stall a VMM past
/// the peer timeout the two sides split (the live side wins its register again and runs
/// alone); then a new backup joins, once. The live side's generation, as it is now.
fn keep_protected(
    timeline: &Timeline,
    topology: &Topology,
    live: &mut Proc,
    backup: &mut Proc,
    backup_host: Host,
    generation: u64,
) -> Result<u64> {
    let lost = live.lines_with(BACKUP_LOST);
    let protected = live.lines_with(&protected_prefix(backup_host)).len();
    if backup.exited()?.is_none() && lost.len() < protected {
        return Ok(generation);
    }
    let generation = lost
        .last()
        .and_then(|line| line.rsplit_once("generation "))
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or(generation);
    timeline.step(
        backup_host.label(),
        "the backup fell out of step (the machine is too busy: a side was silent too long); a new backup joins",
    );
    backup.kill();
    *backup = start_backup(topology, backup_host)?;
    let (_, pause) = wait_protected(live, backup_host)?;
    timeline.step(backup_host.label(), &format!("the new backup is in step (guest paused {pause}): protected again"));
    Ok(generation)
}

/// Polls the switch until it has learnt `GUEST_MAC` on `host`'s port.
fn wait_for_mac_on(topology: &Topology, host: Host) -> Result<()> {
    let deadline = Instant::now() + MAC_MOVE;
    loop {
        let port = topology.port_of(GUEST_MAC)?;
        if port.as_deref() == Some(host.switch_port()) {
            return Ok(());
        }
        interrupt::check()?;
        if Instant::now() > deadline {
            bail!(
                "the switch has the VM's MAC on {port:?}, not on {} ({}), after {MAC_MOVE:?}",
                host.switch_port(),
                host.label()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ft: live at LANDMARK, generation G, T ms after the last word from the primary`: (G, T).
fn parse_went_live(rest: &str) -> Option<(u64, u64)> {
    let (_, after) = rest.split_once(", generation ")?;
    let (generation, after) = after.split_once(", ")?;
    let silence = after.strip_suffix(" ms after the last word from the primary")?;
    Some((generation.parse().ok()?, silence.parse().ok()?))
}

/// Kills the live VM on `dead` with SIGKILL and follows the survivor on the other host until it
/// is live, the client is served again and the switch has moved the MAC (the caller then asks
/// for more replies: the outage is measured over them).
fn fail_over(
    timeline: &Timeline,
    topology: &Topology,
    dead: &mut Proc,
    dead_host: Host,
    survivor: &mut Proc,
    generation: u64,
    load: &mut Load,
) -> Result<Failover> {
    let survivor_host = dead_host.other();
    timeline.step(
        dead_host.label(),
        &format!("kill -9 {} (the VMM of the live VM; as if {} lost power)", dead.pid(), dead_host.label()),
    );
    dead.kill();
    let killed_at = Instant::now();
    let (live_at, went_live) = survivor.wait_for("the backup going live", TAKEOVER, |line| {
        line.strip_prefix("ft: live at ").and_then(parse_went_live)
    })?;
    let (new_generation, silence_ms) = went_live;
    ensure!(
        new_generation == generation + 1,
        "the backup went live with generation {new_generation}, expected {}",
        generation + 1
    );
    timeline.step(
        survivor_host.label(),
        &format!(
            "the backup heard nothing for {silence_ms} ms, won register ft.{NAME} (generation {new_generation}) and went live where the primary stopped"
        ),
    );
    let before = load.replies();
    load.wait_for_replies(before + 1, REPLIES_TIMEOUT)?;
    let served = load.first_reply_since(killed_at).unwrap_or_else(Instant::now);
    timeline.step(
        "client",
        &format!("served again on the same connection, {} ms after the kill", (served - killed_at).as_millis()),
    );
    wait_for_mac_on(topology, survivor_host)?;
    timeline.step(
        "switch",
        &format!(
            "bridge fdb: the VM's MAC {GUEST_MAC} moved to {} ({})",
            survivor_host.switch_port(),
            survivor_host.label()
        ),
    );
    Ok(Failover {
        killed_host: dead_host.label(),
        survivor_host: survivor_host.label(),
        killed_at,
        live_at,
        silence_ms,
        generation: new_generation,
        port_after: survivor_host.switch_port().to_owned(),
    })
}

/// The log's rate from `primary` to `backup` over the next [`REPLIES`] replies.
fn measure_bandwidth(topology: &Topology, primary: Host, load: &mut Load) -> Result<Bandwidth> {
    let (bytes_before, replies_before, at) =
        (topology.bytes_acked(primary, primary.other())?, load.replies(), Instant::now());
    load.wait_for_replies(replies_before + REPLIES, REPLIES_TIMEOUT)?;
    let (bytes_after, replies_after) = (topology.bytes_acked(primary, primary.other())?, load.replies());
    Ok(Bandwidth {
        bytes: bytes_after.saturating_sub(bytes_before),
        over: at.elapsed(),
        requests: replies_after - replies_before,
    })
}

/// The scenario. The locals are dropped in reverse order: the client, the VMMs, gfs, the
/// namespaces, then the directory.
fn scenario(timeline: &Timeline, keys: Option<&std::path::Path>) -> Result<Summary> {
    let dir = tempfile::Builder::new().prefix("ftvm-demo-").tempdir().context("the demo's directory")?;
    let topology = Topology::build()?;
    timeline.step(
        "network",
        &format!(
            "a switch with host-a (10.0.0.11), host-b (10.0.0.12), a client (10.0.0.100) and storage (10.0.0.10) plugged in (namespaces {}*)",
            namespace_prefix(std::process::id())
        ),
    );
    timeline.step("files", &format!("gfs keeps its master's log and the chunks in {}", dir.path().display()));
    let (keys, fingerprint) = cluster::seal_with(keys, dir.path())?;
    timeline.step(
        "keys",
        &format!(
            "every gfs connection and the logging channel are authenticated and encrypted with the cluster key in {} (fingerprint {fingerprint})",
            keys.display()
        ),
    );
    let _storage = start_storage(&topology.storage, dir.path())?;
    timeline.step(
        "storage",
        &format!("gfs is up: a master on {} and 3 chunkservers (every block kept 3 times)", gfs_master()),
    );

    let create = strings(&["disk", "create", DISK, "--size", "64M", "--fence", NAME, "--gfs-master", &gfs_master()]);
    let mut creating = Proc::spawn_in(topology.host(Host::A), "ftvm disk create", &ftvm_exe()?, &create)?;
    let status = creating.wait_exit(Duration::from_secs(30))?;
    ensure!(status.success(), "ftvm disk create failed ({status}):\n{}", creating.tail(10));
    timeline.step("storage", &format!("the VM's disk {DISK} (64 MiB) is on gfs, writable only by the VM's current owner (fenced by register ft.{NAME})"));

    let mut on_a = start_primary(&topology, Host::A, FT_PORT, "primary on host-a")?;
    let (_, generation) = on_a.wait_for("going live", BOOT, |line| {
        line.strip_prefix(&format!("ft: live as {NAME} generation ")).and_then(|g| g.parse::<u64>().ok())
    })?;
    on_a.wait_for_prefix("kv: listening on", BOOT)?;
    timeline.step("host-a", &format!("the VM (a key-value store at 10.0.0.2:7000) booted and is live, owner of register ft.{NAME} (generation {generation})"));
    timeline.step("host-a", &format!("(heartbeats every 10 ms both ways; a side silent for {PEER_TIMEOUT_MS} ms or whose connection breaks is presumed dead)"));

    let mut on_b = start_backup(&topology, Host::B)?;
    let (first_protected, pause) = wait_protected(&mut on_a, Host::B)?;
    timeline.step("host-b", &format!("a backup copied the running VM (guest paused {pause}) and now replays its every input: the VM is protected"));

    let mut load = Load::start(&topology.client)?;
    load.wait_for_replies(REPLIES, REPLIES_TIMEOUT)?;
    timeline.step(
        "client",
        &format!(
            "one TCP connection sends SET then GET of each key and checks every reply: {} replies so far",
            load.replies()
        ),
    );
    wait_for_mac_on(&topology, Host::A)?;
    timeline.step("switch", &format!("bridge fdb: the VM's MAC {GUEST_MAC} is on port-a (host-a)"));
    let bandwidth = measure_bandwidth(&topology, Host::A, &mut load)?;
    timeline.step("host-a", &format!("the log to the backup runs at {}", bandwidth.describe()));

    let mut failovers = Vec::new();
    let generation = keep_protected(timeline, &topology, &mut on_a, &mut on_b, Host::B, generation)?;
    failovers.push(fail_over(timeline, &topology, &mut on_a, Host::A, &mut on_b, generation, &mut load)?);
    drop(on_a);

    let mut on_a = start_backup(&topology, Host::A)?;
    let live_at = on_b.wait_for_prefix("ft: live at ", TAKEOVER)?.0;
    let (protected_at, pause) = wait_protected(&mut on_b, Host::A)?;
    let reprotect = protected_at.saturating_duration_since(live_at);
    timeline.step(
        "host-a",
        &format!(
            "a new backup joined the VM on host-b (guest paused {pause}): protected again, {} ms after it went live",
            reprotect.as_millis()
        ),
    );
    // Enough replies after the failover for its outage, and some under the new pair.
    let before = load.replies();
    load.wait_for_replies(before + REPLIES, REPLIES_TIMEOUT)?;
    timeline.step("client", &format!("{} replies so far, none wrong, same connection", load.replies()));

    let generation = keep_protected(timeline, &topology, &mut on_b, &mut on_a, Host::A, failovers[0].generation)?;
    failovers.push(fail_over(timeline, &topology, &mut on_b, Host::B, &mut on_a, generation, &mut load)?);
    drop(on_b);
    let before = load.replies();
    load.wait_for_replies(before + REPLIES, REPLIES_TIMEOUT)?;
    timeline.step("client", &format!("{} replies so far, none wrong, same connection", load.replies()));

    let report = load.finish()?;
    timeline.step(
        "client",
        &format!("stopped; all {} acknowledged SETs read back on the same connection", report.acknowledged),
    );

    let keys_on_disk = check_disk(timeline, &topology, on_a, failovers[1].generation, report.acknowledged)?;
    Ok(Summary {
        report,
        failovers,
        reprotect: Some(reprotect),
        bandwidth: Some(bandwidth),
        keys_on_disk: Some(keys_on_disk),
        protected_at: vec![first_protected, protected_at],
    })
}

/// Stops the live VM cleanly (it gives its register back) and boots the guest again from the
/// gfs disk alone: it must load every acknowledged key, not only the ones the last VM wrote.
fn check_disk(
    timeline: &Timeline,
    topology: &Topology,
    mut live: Proc,
    generation: u64,
    acknowledged: usize,
) -> Result<usize> {
    live.signal(libc::SIGTERM)?;
    let status = live.wait_exit(Duration::from_secs(30))?;
    ensure!(status.code() == Some(143), "the live VM stopped with {status} after SIGTERM, not 143:\n{}", live.tail(10));
    timeline.step(
        "host-a",
        &format!("the VM (generation {generation}) stopped cleanly; booting it again from the gfs disk alone"),
    );
    let mut fresh = start_primary(topology, Host::A, CHECK_PORT, "VM booted again on host-a")?;
    let (_, keys) = fresh.wait_for("the VM loading its keys", BOOT, |line| {
        line.strip_prefix("kv: listening on 10.0.0.2:7000, ")?.strip_suffix(" keys loaded")?.parse::<usize>().ok()
    })?;
    ensure!(
        keys == acknowledged,
        "the VM booted from the disk loaded {keys} keys, but {acknowledged} SETs were acknowledged"
    );
    timeline.step("host-a", &format!("it loaded {keys} keys from the disk: every acknowledged write is there"));
    fresh.signal(libc::SIGTERM)?;
    let _ = fresh.wait_exit(Duration::from_secs(30));
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::parse_went_live;

    #[test]
    fn the_go_live_line_gives_generation_and_silence() {
        let rest = "Preempt(812), generation 3, 104 ms after the last word from the primary";
        assert_eq!(parse_went_live(rest), Some((3, 104)));
        assert_eq!(parse_went_live("Exit(5), generation 3, 104 ms after the last word"), None);
    }
}
