//! A backup joining a running kv VM (issue 13, point 5): the live pre-copy join against the
//! stop-and-copy join (`--join-mode stop-and-copy`), side by side in one run, for 128 MiB,
//! 512 MiB and 2 GiB guests, idle and while a client sends SETs.
//!
//! ```sh
//! cargo build --release -p vmm -p storage      # the bench runs target/release/{ftvm,gfs}
//! cargo bench -p ftvm-tests --bench ft_join    # as root with iproute2, /dev/net/tun and /dev/kvm
//! ```
//!
//! The topology is `ftvm_tests::ft::FtNet` (host-a, host-b, a client, gfs for the register). For
//! each size and join mode one primary boots on host-a; [`JOINS`] backups join it one after the
//! other from host-b while it is idle, then [`JOINS`] more each while a client's load runs (one
//! connection, SET then GET without pause, from before the backup starts until after it
//! joined, every acknowledged SET read back); each backup is killed after it joined, the primary
//! wins the race and runs alone, and the next one joins. Per join:
//! - the pause: the primary's own `ft: protected by ... (pause P ms)`;
//! - the time from the backup's start to that line (the copy and the pause, as a user waits);
//! - the bytes the transfer carried (the primary's `-v` line `join: the copy is complete`);
//! - under load, the longest gap between the client's replies from the backup's start to the
//!   line.
//!
//! Then the same for a guest that writes its memory (`--guest dirty`, 512 MiB and 2 GiB, 3/4 of
//! it filled with non-zero pages, then [`DIRTY_PAGES_PER_TICK`] pages rewritten every ms): the
//! kv guest leaves most of its memory untouched (sent as zero runs), this one does not.
//!
//! Medians over the joins of a cell are printed, with stop-and-copy / pre-copy ratios.

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::pair::{live_primary, TAKEOVER};
use ftvm_tests::ft::{match_line, wait_for_line, FtNet, Host, Join, FT_PORT, GFS_MASTER};
use ftvm_tests::{binary, namespaces_unavailable, Process};
use std::time::{Duration, Instant};

/// Guest memory sizes, MiB.
const SIZES: [u64; 3] = [128, 512, 2048];
/// Sizes for the guest that writes its memory (`--guest dirty`): it fills 3/4 of it.
const DIRTY_SIZES: [u64; 2] = [512, 2048];
/// Pages the `dirty` guest writes per 1 ms tick (64 MiB/s).
const DIRTY_PAGES_PER_TICK: u64 = 16;
/// The register of the `dirty` guest's pair.
const DIRTY_NAME: &str = "dirty";
const MODES: [&str; 2] = ["pre-copy", "stop-and-copy"];
/// Joins per cell.
const JOINS: usize = 3;
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
const REPLIES: usize = 200;
const REPLIES_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    if let Some(why) = namespaces_unavailable() {
        println!("ft_join bench skipped: {why} (it builds network namespaces with a switch, two hosts and a client)");
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
    let net = FtNet::new("ftjbench")?;
    let result = net.explain(run(&net));
    println!("the whole bench took {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// One join's figures.
#[derive(Clone, Copy, Default)]
struct Joined {
    pause_ms: u64,
    to_protected: Duration,
    bytes: u64,
    client_gap: Option<Duration>,
}

/// What the guest does while a backup joins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// kv, no client.
    Idle,
    /// kv, a client sending SETs.
    Sets,
    /// `dirty`: 3/4 of memory written once, then [`DIRTY_PAGES_PER_TICK`] pages a ms.
    Writes,
}

impl Load {
    fn label(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Sets => "SETs",
            Load::Writes => "writes",
        }
    }
}

/// The joins of one cell (size, load, mode).
struct Cell {
    size: u64,
    load: Load,
    mode: &'static str,
    joins: Vec<Joined>,
}

fn run(net: &FtNet) -> Result<()> {
    let mut cells = Vec::new();
    for size in SIZES {
        for mode in MODES {
            let size_arg = size.to_string();
            let extra = ["--memory-mib", &size_arg, "--join-mode", mode, "-v"];
            let (mut primary, _) = live_primary(net, Host::A, &extra)?;
            let mut joined = 0;
            for load in [Load::Idle, Load::Sets] {
                let mut joins = Vec::new();
                for _ in 0..JOINS {
                    joined += 1;
                    joins.push(join_once(net, &mut primary, joined, load)?);
                }
                let cell = Cell { size, load, mode, joins };
                print_cell(&cell);
                cells.push(cell);
            }
            primary.signal(libc::SIGTERM)?;
            primary.wait(Duration::from_secs(60)).context("the primary after SIGTERM")?;
        }
    }
    for size in DIRTY_SIZES {
        for mode in MODES {
            let mut primary = dirty_primary(net, size, mode)?;
            let mut joins = Vec::new();
            for joined in 1..=JOINS {
                joins.push(join_once(net, &mut primary, joined, Load::Writes)?);
            }
            let cell = Cell { size, load: Load::Writes, mode, joins };
            print_cell(&cell);
            cells.push(cell);
            primary.signal(libc::SIGTERM)?;
            primary.wait(Duration::from_secs(60)).context("the dirty primary after SIGTERM")?;
        }
    }
    println!("\n==== ft_join bench: median of {JOINS} joins per cell; kv guest, one client connection under load ====");
    println!(
        "{:>6} {:>6} {:>14} {:>9} {:>14} {:>9} {:>14}",
        "MiB", "load", "mode", "pause ms", "to protected", "sent MiB", "client gap ms"
    );
    for cell in &cells {
        print_row(cell);
    }
    println!("\nstop-and-copy / pre-copy:");
    for size in SIZES {
        for load in [Load::Idle, Load::Sets, Load::Writes] {
            let find = |mode| cells.iter().find(|c| c.size == size && c.load == load && c.mode == mode);
            if let (Some(pre), Some(stop)) = (find(MODES[0]), find(MODES[1])) {
                let (p, s) = (median(&pre.joins, |j| j.pause_ms as f64), median(&stop.joins, |j| j.pause_ms as f64));
                let (pt, st) = (
                    median(&pre.joins, |j| j.to_protected.as_secs_f64()),
                    median(&stop.joins, |j| j.to_protected.as_secs_f64()),
                );
                println!(
                    "{size:>6} MiB {:>6}: pause {s:.0} / {p:.0} ms = {:.1}x; backup start to protected {:.0} / {:.0} ms = {:.2}x",
                    load.label(),
                    s / p.max(1.0),
                    st * 1e3,
                    pt * 1e3,
                    st / pt
                );
            }
        }
    }
    Ok(())
}

/// Starts a backup on host-b, waits until the primary says it is protected (its `nth` such
/// line), takes the figures, kills the backup and waits until the primary runs alone again.
fn join_once(net: &FtNet, primary: &mut Process, nth: usize, kind: Load) -> Result<Joined> {
    let mut load = if kind == Load::Sets { Some(net.kv_load()?) } else { None };
    if let Some(load) = &mut load {
        load.wait_for_replies(REPLIES, REPLIES_TIMEOUT)?;
    }
    let live = Host::A.ft_listen();
    let started = Instant::now();
    let mut backup = if kind == Load::Writes {
        // The `dirty` guest has no devices: nothing to map on this host.
        let args = ["backup", "--join", &live, "--gfs-master", GFS_MASTER, "--ft-listen", &Host::B.ft_listen()];
        net.ftvm(Host::B, &args.map(String::from))?
    } else {
        net.backup(Host::B, &Join::Address(live.clone()), FT_PORT, &[])?
    };
    let protected = format!("ft: protected by {} since {{landmark}} (pause {{n}} ms)", Host::B.ft_listen_on(FT_PORT));
    let line = nth_line(primary, &protected, nth, JOIN_TIMEOUT)?;
    let to_protected = started.elapsed();
    let pause_ms: u64 = line[1].parse().context("pause")?;
    let complete = nth_line(primary, "{any} join: the copy is complete {any}", nth, Duration::from_secs(5))?;
    let bytes = complete[1]
        .split_whitespace()
        .find_map(|field| field.strip_prefix("bytes="))
        .context("no bytes= in the join line")?
        .parse()
        .context("bytes")?;
    backup.wait_for("ft: following ", JOIN_TIMEOUT)?;
    let client_gap = match load {
        Some(mut load) => {
            let before = load.replies();
            load.wait_for_replies(before + REPLIES, REPLIES_TIMEOUT)?;
            let report = load.finish()?;
            ensure!(report.read_back > 0, "the client's SETs did not read back");
            Some(report.longest_gap_within(started, None).unwrap_or_default())
        }
        None => None,
    };
    backup.kill();
    nth_line(primary, "ft: backup lost (no word for {n} ms); running alone, generation {n}", nth, TAKEOVER)?;
    Ok(Joined { pause_ms, to_protected, bytes, client_gap })
}

/// `ftvm run --guest dirty` with 3/4 of `size` MiB written, protected as [`DIRTY_NAME`] on
/// host-a, waited for until its memory is filled.
fn dirty_primary(net: &FtNet, size: u64, mode: &str) -> Result<Process> {
    let (size_arg, fill, pages) = (size.to_string(), (size * 3 / 4).to_string(), DIRTY_PAGES_PER_TICK.to_string());
    let args = [
        "run",
        "--memory-mib",
        &size_arg,
        "--ft",
        DIRTY_NAME,
        "--gfs-master",
        GFS_MASTER,
        "--ft-listen",
        &Host::A.ft_listen(),
        "--join-mode",
        mode,
        "-v",
        "--guest",
        "dirty",
        &fill,
        &pages,
        "600",
    ];
    let mut primary = net.ftvm(Host::A, &args.map(String::from))?;
    primary.wait_for(&format!("dirty: {fill} MiB filled"), Duration::from_secs(120))?;
    Ok(primary)
}

/// The captures of the `nth` line (from 1) matching `pattern`, waited for.
fn nth_line(process: &mut Process, pattern: &str, nth: usize, timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let output = process.output();
        if let Some(parts) = output.lines().filter_map(|line| match_line(line, pattern)).nth(nth - 1) {
            return Ok(parts);
        }
        if let Some(status) = process.exited()? {
            anyhow::bail!("pid {} exited ({status}) before its line {nth} like {pattern:?}", process.pid());
        }
        if Instant::now() > deadline {
            // Waits at least once more for the line itself, with its diagnostics.
            return wait_for_line(process, pattern, Duration::ZERO).and_then(|_| {
                anyhow::bail!("pid {} printed no line {nth} like {pattern:?} within {timeout:?}", process.pid())
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(joins: &[Joined], value: impl Fn(&Joined) -> f64) -> f64 {
    let mut values: Vec<f64> = joins.iter().map(value).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

fn print_cell(cell: &Cell) {
    println!(
        "{} MiB, {}, {}: pauses {} ms; backup start to protected {} ms; sent {} MiB{}",
        cell.size,
        cell.load.label(),
        cell.mode,
        cell.joins.iter().map(|j| j.pause_ms.to_string()).collect::<Vec<_>>().join(", "),
        cell.joins.iter().map(|j| j.to_protected.as_millis().to_string()).collect::<Vec<_>>().join(", "),
        cell.joins.iter().map(|j| format!("{:.1}", mib(j.bytes))).collect::<Vec<_>>().join(", "),
        if cell.load == Load::Sets {
            format!(
                "; longest client gap {} ms",
                cell.joins
                    .iter()
                    .map(|j| j.client_gap.unwrap_or_default().as_millis().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
}

fn print_row(cell: &Cell) {
    println!(
        "{:>6} {:>6} {:>14} {:>9.0} {:>11.0} ms {:>9.1} {:>14}",
        cell.size,
        cell.load.label(),
        cell.mode,
        median(&cell.joins, |j| j.pause_ms as f64),
        median(&cell.joins, |j| j.to_protected.as_secs_f64() * 1e3),
        median(&cell.joins, |j| mib(j.bytes)),
        if cell.load == Load::Sets {
            format!("{:.0}", median(&cell.joins, |j| j.client_gap.unwrap_or_default().as_secs_f64() * 1e3))
        } else {
            "-".into()
        }
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
