//! The FT pair against the same VM unprotected, side by side in one run (issue 11, point 8):
//! kv requests/s and reply latency with 1 and 8 connections, the CPU each VMM uses, the logging
//! channel's bandwidth, and the outage a client sees over a series of `kill -9`s of the primary
//! with the join pause of each re-protection.
//!
//! ```sh
//! cargo build --release -p vmm -p storage   # the bench runs target/release/{ftvm,gfs}
//! cargo bench -p ftvm-tests --bench ft      # as root with iproute2, /dev/net/tun and /dev/kvm; about 75 s on the 2-core development machine
//! ```
//!
//! The topology is `ftvm_tests::ft::FtNet` (a switch bridge, host-a and host-b with a TAP each,
//! a client, gfs for the `ft.kv` register), created here and removed at the end whatever
//! happens. On this 2-core machine both VMMs, the client and gfs share the cores: the CPU lines
//! say what each side used.
//!
//! - Throughput and latency: phases alternate, protected with everything unsealed
//!   (`--insecure`, its register on a second, unsealed gfs master), unprotected (`ftvm run
//!   --guest kv` on host-a), then protected (`--ft kv --commit received` on host-a, `ftvm backup
//!   --join` on host-b, sealed with the bench's cluster key like everything else),
//!   [`ROUNDS`] times; in each, [`PHASE`] of closed-loop SET-then-GET (24-byte values, one
//!   outstanding request per connection) on 1 connection, then on 8. Requests/s are the median
//!   over the rounds; latency percentiles pool every reply of a kind of phase.
//! - CPU: utime+stime from `/proc/PID/stat` of each `ftvm` over the measured phases, as a share
//!   of their wall time (1.0 = one core busy).
//! - Log bandwidth: the bytes host-b's kernel acknowledged on host-a's connections to it (the
//!   logging channel, `ss -tin`) over the protected phases.
//! - Backup lag: the primary prints it when its pair ends (`ft: backup lag p50 ...`), from the
//!   time it pushed the log up to a position to the backup's report that its replay got there;
//!   taken from the rounds that end with the pair stopped.
//! - Outage: the last protected pair carries on; one connection sends SET/GET without pause while
//!   the primary is killed [`KILLS`] times. After each kill the backup goes live (`ft: live at`),
//!   a new backup starts on the dead host and joins it (`ft: protected by ... (pause P ms)`), and
//!   the next kill hits the new primary. The outage of a kill is the longest gap between replies
//!   from the kill to the start of the next join; every acknowledged SET is read back at the end.
//!   The series is drawn (issue 14, point 2) as `ftvm demo --plot` draws the demo: each reply's
//!   latency over time, with the kills, the go-live moments (the backup's `ft: live at` line)
//!   and the re-protections (the live side's `ft: protected by` line) marked, to `$FTVM_PLOT`
//!   (default [`DEFAULT_PLOT`]); the path is printed after the figures.

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::pair::{
    end_pair, join_backup, join_backup_with, live_primary, still_a_pair, stop_cleanly, TAKEOVER,
};
use ftvm_tests::ft::{number, wait_for_line, FtNet, Host, Join, FT_PORT};
use ftvm_tests::kv::Client;
use ftvm_tests::{binary, namespaces_unavailable, Process};
use std::time::{Duration, Instant};
use vmm::plot::{Chart, Mark, MarkKind, Reply};

/// Alternations of unprotected and protected phases.
const ROUNDS: usize = 3;
/// One measured load phase.
const PHASE: Duration = Duration::from_secs(5);
/// Connections of the two load phases.
const CONNECTIONS: [usize; 2] = [1, 8];
/// Primaries killed in the outage series.
const KILLS: usize = 10;
/// Replies the client must see between two events of the outage series.
const REPLIES_BETWEEN: usize = 100;
const REPLIES_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys each connection cycles through (a bounded live set on the guest's disk log).
const KEYS_PER_CONNECTION: usize = 1000;
const VALUE_BYTES: usize = 24;
/// Where the outage series is drawn unless `FTVM_PLOT` names another file.
const DEFAULT_PLOT: &str = "/tmp/ft-bench-outages.svg";

fn main() -> Result<()> {
    if let Some(why) = namespaces_unavailable() {
        println!("ft bench skipped: {why} (it builds network namespaces with a switch, two hosts and a client)");
        return Ok(());
    }
    for name in ["ftvm", "gfs"] {
        binary(name).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nbuild it first, with the same CARGO_TARGET_DIR: `cargo build --release -p vmm -p storage`"
            )
        })?;
    }
    let started = Instant::now();
    let net = FtNet::new("ftbench")?;
    let result = net.explain(run(&net));
    println!("the whole bench took {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// The unsealed gfs master of the `--insecure` phases (only the go-live register lives there:
/// the bench's disk is a local file).
const UNSEALED_MASTER: &str = "10.0.0.10:7300";

fn run(net: &FtNet) -> Result<()> {
    let mut plain = Mode::new("unprotected");
    let mut protected = Mode::new("FT (--commit received)");
    let mut verified = Mode::new("FT (--commit verified)");
    let mut unsealed = Mode::new("FT (--commit received, --insecure)");
    let mut pair = None;
    let unsealed_dir = tempfile::tempdir()?;
    let mut master = net.storage.command(&binary("gfs")?);
    master.args(["--insecure", "master", "--listen", UNSEALED_MASTER, "--dir"]).arg(unsealed_dir.path());
    let _unsealed_master = Process::spawn(master)?;
    for round in 0..ROUNDS {
        // The same as the received phase below with the logging channel and gfs unsealed.
        let insecure = ["--commit", "received", "--insecure", "--gfs-master", UNSEALED_MASTER];
        let (mut primary, _) = live_primary(net, Host::A, &insecure)?;
        let live = Host::A.ft_listen();
        let join = Join::Address(live.clone());
        let mut backup = join_backup_with(net, Host::B, FT_PORT, &join, &mut primary, &live, &insecure[2..])?;
        let backup_cpu = Cpu::read(backup.pid())?;
        unsealed.primary_cpu += measure(net, &mut unsealed, round, primary.pid(), true)?;
        unsealed.backup_cpu += Cpu::read(backup.pid())?.since(&backup_cpu);
        still_a_pair(&mut primary, &mut backup)?;
        stop_pair(&mut primary, &mut backup)?;
        drop((primary, backup));

        let mut vm = net.plain_vm(Host::A)?;
        plain.primary_cpu += measure(net, &mut plain, round, vm.pid(), false)?;
        stop_cleanly(&mut vm, "the unprotected VM")?;
        drop(vm);

        // Verified mode: the same load, outputs released only once the backup matched them.
        let (mut primary, _) = live_primary(net, Host::A, &["--commit", "verified"])?;
        let live = Host::A.ft_listen();
        let mut backup = join_backup(net, Host::B, FT_PORT, &Join::Address(live.clone()), &mut primary, &live)?;
        let backup_cpu = Cpu::read(backup.pid())?;
        verified.primary_cpu += measure(net, &mut verified, round, primary.pid(), true)?;
        verified.backup_cpu += Cpu::read(backup.pid())?.since(&backup_cpu);
        still_a_pair(&mut primary, &mut backup)?;
        end_pair(&mut primary, &mut backup)?;
        drop((primary, backup));

        let (mut primary, _) = live_primary(net, Host::A, &["--commit", "received"])?;
        let live = Host::A.ft_listen();
        let mut backup = join_backup(net, Host::B, FT_PORT, &Join::Address(live.clone()), &mut primary, &live)?;
        let backup_cpu = Cpu::read(backup.pid())?;
        protected.primary_cpu += measure(net, &mut protected, round, primary.pid(), true)?;
        protected.backup_cpu += Cpu::read(backup.pid())?.since(&backup_cpu);
        still_a_pair(&mut primary, &mut backup)?;
        if round + 1 < ROUNDS {
            protected.lags.push(stop_pair(&mut primary, &mut backup)?);
        } else {
            pair = Some((primary, backup));
        }
    }
    let (primary, backup) = pair.context("no protected round ran")?;
    let outages = kill_series(net, primary, backup)?;

    println!("\n==== ft bench: {ROUNDS} rounds alternating, {} s per phase, {KILLS} kills ====", PHASE.as_secs());
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (ft, base) = (median(&protected.rates[i]), median(&plain.rates[i]));
        println!(
            "kv requests/s, {connections} connection{}: FT {ft:.0} / unprotected {base:.0} = {:.3} (per round FT {}, unprotected {})",
            if *connections == 1 { "" } else { "s" },
            ft / base,
            list(&protected.rates[i]),
            list(&plain.rates[i])
        );
    }
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (sealed, open) = (median(&protected.rates[i]), median(&unsealed.rates[i]));
        let (mut s, mut o) = (protected.latencies[i].clone(), unsealed.latencies[i].clone());
        s.sort();
        o.sort();
        println!(
            "kv requests/s, {connections} conn, FT sealed (--keys) {sealed:.0} / unsealed (--insecure) {open:.0} = {:.3} (per round sealed {}, unsealed {}); reply latency p50 / p99 sealed {} / {} ms, unsealed {} / {} ms; CPU primary + backup sealed {:.2}, unsealed {:.2}",
            sealed / open,
            list(&protected.rates[i]),
            list(&unsealed.rates[i]),
            ms(percentile(&s, 0.5)),
            ms(percentile(&s, 0.99)),
            ms(percentile(&o, 0.5)),
            ms(percentile(&o, 0.99)),
            (protected.primary_cpu + protected.backup_cpu) / protected.wall.as_secs_f64(),
            (unsealed.primary_cpu + unsealed.backup_cpu) / unsealed.wall.as_secs_f64(),
        );
    }
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (ft, received, base) = (median(&verified.rates[i]), median(&protected.rates[i]), median(&plain.rates[i]));
        println!(
            "kv requests/s, {connections} conn, --commit verified: {ft:.0} / unprotected {base:.0} = {:.3}, / received {received:.0} = {:.3} (per round {})",
            ft / base,
            ft / received,
            list(&verified.rates[i])
        );
    }
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (ft, base) = (&mut verified.latencies[i], &mut plain.latencies[i]);
        ft.sort();
        base.sort();
        let (f50, f99, b50, b99) =
            (percentile(ft, 0.5), percentile(ft, 0.99), percentile(base, 0.5), percentile(base, 0.99));
        println!(
            "reply latency p50 / p99, {connections} conn, --commit verified: {} / {} ms; adds {} / {} ms to unprotected",
            ms(f50),
            ms(f99),
            ms_signed(f50, b50),
            ms_signed(f99, b99)
        );
    }
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (ft, base) = (&mut protected.latencies[i], &mut plain.latencies[i]);
        ft.sort();
        base.sort();
        let (f50, f99, b50, b99) =
            (percentile(ft, 0.5), percentile(ft, 0.99), percentile(base, 0.5), percentile(base, 0.99));
        println!(
            "reply latency p50 / p99, {connections} conn: FT {} / {} ms, unprotected {} / {} ms; output commit adds {} / {} ms (ratio {:.2} / {:.2})",
            ms(f50),
            ms(f99),
            ms(b50),
            ms(b99),
            ms_signed(f50, b50),
            ms_signed(f99, b99),
            f50.as_secs_f64() / b50.as_secs_f64(),
            f99.as_secs_f64() / b99.as_secs_f64()
        );
    }
    let (ft_wall, base_wall) = (protected.wall.as_secs_f64(), plain.wall.as_secs_f64());
    println!(
        "CPU during the load phases (share of one core): FT primary {:.2} + backup {:.2} = {:.2}; unprotected VM {:.2}; ratio FT total / unprotected {:.2}",
        protected.primary_cpu / ft_wall,
        protected.backup_cpu / ft_wall,
        (protected.primary_cpu + protected.backup_cpu) / ft_wall,
        plain.primary_cpu / base_wall,
        (protected.primary_cpu + protected.backup_cpu) / ft_wall / (plain.primary_cpu / base_wall)
    );
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let (bytes, wall) = (protected.log_bytes[i], protected.walls[i].as_secs_f64());
        println!(
            "log bandwidth primary -> backup, {connections} conn: {:.2} Mbit/s ({bytes} bytes in {wall:.1} s, {:.0} bytes per request)",
            bytes as f64 * 8.0 / wall / 1e6,
            bytes as f64 / protected.requests[i] as f64
        );
    }
    if let Some(worst) = protected.lags.iter().map(|lag| lag[1]).reduce(f64::max) {
        let rounds: Vec<String> =
            protected.lags.iter().map(|[p50, p99, max]| format!("{p50:.1} / {p99:.1} / {max:.1}")).collect();
        println!(
            "backup lag (a push of the log on the primary to the backup's report of its replay there), p50 / p99 / max ms per round: {}; worst p99 {worst:.1} ms",
            rounds.join(", ")
        );
    }
    outages.print();
    outages.plot()
}

/// What one kind of phase measured over the rounds.
struct Mode {
    name: &'static str,
    /// Requests/s per round, per entry of [`CONNECTIONS`].
    rates: [Vec<f64>; 2],
    /// Every reply latency, per entry of [`CONNECTIONS`].
    latencies: [Vec<Duration>; 2],
    requests: [usize; 2],
    /// Wall time of the phases, all and per entry of [`CONNECTIONS`].
    wall: Duration,
    walls: [Duration; 2],
    primary_cpu: f64,
    backup_cpu: f64,
    /// The backup's lag p50 / p99 / max in ms, per round that ended with the pair stopped.
    lags: Vec<[f64; 3]>,
    /// Bytes on the logging channel, per entry of [`CONNECTIONS`].
    log_bytes: [u64; 2],
}

impl Mode {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            rates: Default::default(),
            latencies: Default::default(),
            requests: [0; 2],
            wall: Duration::ZERO,
            walls: [Duration::ZERO; 2],
            primary_cpu: 0.0,
            backup_cpu: 0.0,
            lags: Vec::new(),
            log_bytes: [0; 2],
        }
    }
}

/// The load phases of one round against the VM whose `ftvm` is `pid`; returns the CPU seconds
/// that process used over them.
/// With `logged`, also the bytes host-a sent host-b over each phase (the logging channel).
fn measure(net: &FtNet, mode: &mut Mode, round: usize, pid: u32, logged: bool) -> Result<f64> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).context("the VMM's /proc entry")?;
    ensure!(comm.trim() == "ftvm", "pid {pid} is {:?}, not ftvm (does `ip netns exec` fork?)", comm.trim());
    let before = Cpu::read(pid)?;
    for (i, &connections) in CONNECTIONS.iter().enumerate() {
        let acked = if logged { net.bytes_acked_to(Host::A, Host::B)? } else { 0 };
        let t = Instant::now();
        let load = closed_loop(net, connections, &format!("r{round}c{connections}"))?;
        mode.wall += t.elapsed();
        mode.walls[i] += t.elapsed();
        if logged {
            mode.log_bytes[i] += net.bytes_acked_to(Host::A, Host::B)?.saturating_sub(acked);
        }
        let rate = load.latencies.len() as f64 / load.elapsed.as_secs_f64();
        println!(
            "{} round {round}, {connections} conn: {} requests in {:.2} s = {rate:.0} /s",
            mode.name,
            load.latencies.len(),
            load.elapsed.as_secs_f64()
        );
        mode.requests[i] += load.latencies.len();
        mode.rates[i].push(rate);
        mode.latencies[i].extend(load.latencies);
    }
    Ok(Cpu::read(pid)?.since(&before))
}

struct Load {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// `connections` connections from the client, each SET then GET of its own keys, one
/// outstanding request at a time, for [`PHASE`]; every reply checked.
fn closed_loop(net: &FtNet, connections: usize, tag: &str) -> Result<Load> {
    let tag = tag.to_owned();
    net.client.within(move || {
        let clients = (0..connections).map(|_| Client::connect()).collect::<Result<Vec<_>>>()?;
        let start = Instant::now();
        let deadline = start + PHASE;
        let workers: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, mut client)| {
                let tag = tag.clone();
                std::thread::spawn(move || -> Result<Vec<Duration>> {
                    let mut latencies = Vec::new();
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let key = format!("b-{tag}-{c}-{}", i % KEYS_PER_CONNECTION);
                        let value = format!("{:0>width$}", i, width = VALUE_BYTES);
                        let t = Instant::now();
                        let reply = client.request(&format!("SET {key} {value}"))?;
                        latencies.push(t.elapsed());
                        ensure!(reply == "OK", "SET {key} answered {reply:?}");
                        let t = Instant::now();
                        let reply = client.request(&format!("GET {key}"))?;
                        latencies.push(t.elapsed());
                        ensure!(reply == format!("VALUE {value}"), "GET {key} answered {reply:?}");
                        i += 1;
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(Load { elapsed: start.elapsed(), latencies })
    })
}

/// utime + stime of a process, in seconds.
struct Cpu(f64);

impl Cpu {
    fn read(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("no ')' in /proc/PID/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `after` starts at field 3.
        let ticks = |n: usize| -> Result<u64> { number(fields.get(n - 3).context("short /proc/PID/stat")?) };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(Cpu((ticks(14)? + ticks(15)?) as f64 / hz))
    }

    fn since(&self, before: &Cpu) -> f64 {
        self.0 - before.0
    }
}

/// Ends a protected round: the backup is killed, the primary says how far the backup's replay
/// trailed and that it runs alone (it won the register), then stops cleanly and so releases the
/// register for the next start. Returns the lag's p50, p99 and max in ms.
fn stop_pair(primary: &mut Process, backup: &mut Process) -> Result<[f64; 3]> {
    backup.kill();
    let lag = wait_for_line(
        primary,
        "ft: backup lag p50 {any} ms, p99 {any} ms, max {any} ms ({n} landmarks replayed)",
        TAKEOVER,
    )?;
    wait_for_line(primary, "ft: backup lost (no word for {n} ms); running alone, generation {n}", TAKEOVER)?;
    stop_cleanly(primary, "the primary")?;
    let ms = |i: usize| -> Result<f64> { lag[i].parse().with_context(|| format!("lag {:?}", lag[i])) };
    Ok([ms(0)?, ms(1)?, ms(2)?])
}

/// The outage series: returns what each kill cost.
fn kill_series(net: &FtNet, mut primary: Process, mut backup: Process) -> Result<Outages> {
    let mut outages = Outages::default();
    let (mut live_host, mut backup_host) = (Host::A, Host::B);
    let mut backup_listen = Host::B.ft_listen();
    let mut load = net.kv_load()?;
    load.wait_for_replies(REPLIES_BETWEEN, REPLIES_TIMEOUT)?;
    let mut kills = Vec::new();
    let mut marks = Vec::new();
    for k in 0..KILLS {
        let before = load.replies();
        let killed = Instant::now();
        primary.kill();
        let line = wait_for_line(
            &mut backup,
            "ft: live at {landmark}, generation {n}, {n} ms after the last word from the primary",
            TAKEOVER,
        )?;
        let live_seen = killed.elapsed();
        let live_at = backup.printed_at("ft: live at ").context("the go-live line has no time")?;
        load.wait_for_replies(before + REPLIES_BETWEEN, REPLIES_TIMEOUT)?;
        // The dead host gets a new backup, on a port no earlier backup used there.
        let port = FT_PORT + 1 + k as u16;
        let rejoin = Instant::now();
        let new_backup =
            join_backup(net, live_host, port, &Join::Address(backup_listen.clone()), &mut backup, &backup_listen)?;
        let protected = wait_for_line(
            &mut backup,
            &format!("ft: protected by {} since {{landmark}} (pause {{n}} ms)", live_host.ft_listen_on(port)),
            Duration::from_secs(1),
        )?;
        let pause = number(&protected[1])?;
        let protected_at = backup
            .printed_at(&format!("ft: protected by {} since ", live_host.ft_listen_on(port)))
            .context("the protected line has no time")?;
        marks.push(Mark { at: killed, kind: MarkKind::Kill, label: format!("kill {}", k + 1) });
        marks.push(Mark { at: live_at, kind: MarkKind::Live, label: format!("{} live", backup_host.label()) });
        marks.push(Mark { at: protected_at, kind: MarkKind::Protected, label: "protected".to_owned() });
        println!(
            "kill {}: {} went live {} ms after the kill (its line: {} ms after the primary's last word); join pause {pause} ms",
            k + 1,
            backup_host.label(),
            live_seen.as_millis(),
            line[2]
        );
        kills.push((killed, rejoin));
        outages.pauses.push(pause);
        outages.detected.push(number(&line[2])?);
        primary = std::mem::replace(&mut backup, new_backup);
        std::mem::swap(&mut live_host, &mut backup_host);
        backup_listen = backup_host.ft_listen_on(port);
        let before = load.replies();
        load.wait_for_replies(before + REPLIES_BETWEEN, REPLIES_TIMEOUT)?;
    }
    backup.kill();
    let report = load.finish()?;
    println!("{}", report.summary());
    let replies =
        report.exchanges.iter().map(|e| Reply { at: e.replied, latency: e.replied.duration_since(e.sent) }).collect();
    outages.plot = Some(OutagePlot { origin: report.started, replies, marks });
    for (i, &(killed, rejoin)) in kills.iter().enumerate() {
        let gap = report.longest_gap_within(killed, Some(rejoin)).context("no replies around a kill")?;
        let next = kills.get(i + 1).map(|&(next, _)| next);
        let join_gap = report.longest_gap_within(rejoin, next).unwrap_or_default();
        outages.gaps.push(gap);
        outages.join_gaps.push(join_gap);
    }
    drop(primary);
    Ok(outages)
}

#[derive(Default)]
struct Outages {
    gaps: Vec<Duration>,
    join_gaps: Vec<Duration>,
    pauses: Vec<u64>,
    detected: Vec<u64>,
    plot: Option<OutagePlot>,
}

/// What the outage chart shows: every reply of the series' client, and the events.
struct OutagePlot {
    /// When the client connected: the chart's time 0.
    origin: Instant,
    replies: Vec<Reply>,
    marks: Vec<Mark>,
}

impl Outages {
    /// Draws the series to `$FTVM_PLOT` (default [`DEFAULT_PLOT`]) and says where.
    fn plot(&self) -> Result<()> {
        let plot = self.plot.as_ref().context("the outage series recorded nothing to draw")?;
        let path = std::env::var_os("FTVM_PLOT").map_or_else(|| DEFAULT_PLOT.into(), std::path::PathBuf::from);
        let title =
            format!("ftvm FT bench: the client's reply latency over {KILLS} kills of the primary, one TCP connection");
        let chart = Chart { title: &title, x_desc: "seconds since the client connected", origin: plot.origin };
        vmm::plot::draw(&path, &chart, &plot.replies, &plot.marks)?;
        println!("outage plot: {} (reply latency over time; kills, go-live and re-protection marked)", path.display());
        Ok(())
    }

    fn print(&self) {
        let mut gaps = self.gaps.clone();
        gaps.sort();
        let mut join_gaps = self.join_gaps.clone();
        join_gaps.sort();
        let mut pauses = self.pauses.clone();
        pauses.sort();
        println!(
            "outage the client saw over {} kills (longest gap between replies): p50 {} ms, max {} ms (each kill in order: {})",
            gaps.len(),
            percentile(&gaps, 0.5).as_millis(),
            gaps.last().copied().unwrap_or_default().as_millis(),
            self.gaps.iter().map(|g| g.as_millis().to_string()).collect::<Vec<_>>().join(", ")
        );
        println!(
            "join pause (the primary's line) over {} joins: p50 {} ms, max {} ms (each: {}); longest gap the client saw during a join: p50 {} ms, max {} ms",
            pauses.len(),
            pauses.get(pauses.len().saturating_sub(1) / 2).copied().unwrap_or_default(),
            pauses.last().copied().unwrap_or_default(),
            self.pauses.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            percentile(&join_gaps, 0.5).as_millis(),
            join_gaps.last().copied().unwrap_or_default().as_millis()
        );
        println!(
            "backup's silence before going live (its line): {} ms",
            self.detected.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn list(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ")
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn ms_signed(a: Duration, b: Duration) -> String {
    format!("{:+.3}", (a.as_secs_f64() - b.as_secs_f64()) * 1e3)
}
