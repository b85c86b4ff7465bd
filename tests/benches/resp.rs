//! `redis-benchmark` against the `kv` guest's Redis protocol and against Debian's `redis-server`
//! with the same durability (`appendonly yes`, `appendfsync always`), side by side in one run:
//! requests/s, p50 and p99 latency for SET and GET at 1 and 50 connections, pipelined (16) and
//! not.
//!
//! ```sh
//! apt-get install -y redis-tools redis-server
//! cargo build --release -p vmm -p storage # the bench runs target/release/{ftvm,gfs}; cargo bench does not build them
//! cargo bench -p ftvm-tests --bench resp # as root with iproute2 and /dev/kvm; ~1-3 min
//! ```
//!
//! A network namespace with a TAP (host side 10.0.0.1/24, removed at the end whatever happens)
//! holds both: the guest at 10.0.0.2 (`resp=6379`, over the TAP) on a 256 MiB disk file written
//! with zeros first (a preallocated image), and `redis-server` at 10.0.0.1:6379 (over the
//! namespace's loopback) with its append-only file in the same directory, started fresh by the
//! bench (no RDB snapshots). Each configuration runs `redis-benchmark -t set,get -c C -P P -n N
//! --csv` (default 3-byte values, one key, as the tool's defaults) against the guest and then at
//! once against Redis, so that both see the same host. `FTVM_BENCH_DIR` chooses where the files
//! go (default: the temp dir); `FTVM_BENCH_SCALE` multiplies the request counts (default 1).
//! It prints a Markdown table (requests/s, p50 / p99 latency, each as guest, redis and the ratio
//! guest / redis), also written to `/tmp/resp-bench.md`.
//!
//! Then the same `redis-benchmark` runs against the protected VM (issue 17, point 4), in the FT
//! tests' topology (`ftvm_tests::ft::FtNet`: a switch, host-a and host-b with a TAP each, a
//! client, gfs for the `ft.kv` register; the disk a local file): the guest unprotected on
//! host-a, then protected (`--ft kv --commit received` on host-a, `ftvm backup --join` on
//! host-b), then the same with `--commit verified`, each configuration from the client's
//! namespace. A second table gives requests/s and p50 / p99 of each mode and the ratios FT /
//! unprotected; it is appended to `/tmp/resp-bench.md`. `FTVM_RESP_BENCH=redis` or `=ft` runs
//! only one of the two parts.

use anyhow::{bail, ensure, Context, Result};
use ftvm_tests::ft::pair::{end_pair, join_backup, live_primary, still_a_pair, stop_cleanly};
use ftvm_tests::ft::{FtNet, Host, Join, FT_PORT};
use ftvm_tests::{binary, can_use_namespaces, NetNs, Process};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST_CIDR: &str = "10.0.0.1/24";
const GUEST_IP: &str = "10.0.0.2";
const REDIS_IP: &str = "10.0.0.1";
const PORT: &str = "6379";
const DISK_BYTES: usize = 256 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// One redis-benchmark run may take this long before it is killed (coreutils `timeout`).
const RUN_TIMEOUT: &str = "300";

/// (connections, pipeline, requests per test at scale 1).
const CONFIGS: [(u32, u32, u64); 4] = [(1, 1, 2_000), (1, 16, 32_000), (50, 1, 20_000), (50, 16, 200_000)];

/// One line of `redis-benchmark --csv`.
#[derive(Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> Result<()> {
    if !can_use_namespaces() {
        bail!("the resp bench needs root, iproute2 and /dev/kvm (it creates a network namespace and a TAP)");
    }
    for tool in ["redis-benchmark", "redis-server"] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).status().is_err() {
            bail!("{tool} is missing: apt-get install -y redis-tools redis-server");
        }
    }
    let ftvm = binary("ftvm").map_err(|e| {
        anyhow::anyhow!("{e:#}\nbuild it first, with the same CARGO_TARGET_DIR: `cargo build --release -p vmm`")
    })?;
    let scale: f64 = match std::env::var("FTVM_BENCH_SCALE") {
        Ok(s) => s.parse().with_context(|| format!("FTVM_BENCH_SCALE={s} is not a number"))?,
        Err(_) => 1.0,
    };
    let parts = std::env::var("FTVM_RESP_BENCH").unwrap_or_else(|_| "redis,ft".to_owned());
    let mut report = String::new();
    if parts.split(',').any(|p| p == "redis") {
        report += &against_redis(&ftvm, scale)?;
    }
    if parts.split(',').any(|p| p == "ft") {
        if binary("gfs").is_err() {
            bail!("the protected part needs target/release/gfs too: `cargo build --release -p vmm -p storage`");
        }
        report += &against_protected(scale)?;
    }
    if report.is_empty() {
        bail!("FTVM_RESP_BENCH={parts:?} names no part: use redis, ft or both (redis,ft)");
    }
    std::fs::write("/tmp/resp-bench.md", &report)?;
    Ok(())
}

/// The guest against `redis-server` with the same durability, in one namespace; the table.
fn against_redis(ftvm: &Path, scale: f64) -> Result<String> {
    let base = std::env::var_os("FTVM_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("resp-bench-").tempdir_in(&base)?;
    let redis_version = Command::new("redis-server").arg("--version").output()?;
    println!("resp bench: {}; {}", ftvm.display(), String::from_utf8_lossy(&redis_version.stdout).trim());

    let ns = NetNs::new("respbench")?;
    ns.tap("tap0", HOST_CIDR)?;

    let disk = dir.path().join("kv.img");
    let mut file = std::fs::File::create(&disk)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..DISK_BYTES / zeros.len() {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    drop(file);
    let mut vm = ns.command(ftvm);
    let ip = format!("ip={GUEST_IP}/24");
    let resp = format!("resp={PORT}");
    vm.args(["run", "--guest", "kv", &ip, &resp, "--net", "tap=tap0", "--disk"]).arg(&disk);
    let mut vm = Process::spawn(vm)?;
    vm.wait_for("kv: listening on", BOOT_TIMEOUT)?;

    let redis_dir = dir.path().join("redis");
    std::fs::create_dir(&redis_dir)?;
    let mut redis = ns.command(Path::new("redis-server"));
    redis.args(["--bind", REDIS_IP, "--port", PORT, "--appendonly", "yes", "--appendfsync", "always", "--save", ""]);
    redis.args(["--protected-mode", "no", "--daemonize", "no", "--dir"]).arg(&redis_dir);
    let mut redis = Process::spawn(redis)?;
    redis.wait_for("Ready to accept connections", BOOT_TIMEOUT)?;

    let started = Instant::now();
    let mut rows = Vec::new();
    for (connections, pipeline, requests) in CONFIGS {
        let requests = ((requests as f64 * scale) as u64).max(100);
        let guest = run(&ns, GUEST_IP, connections, pipeline, requests)?;
        let baseline = run(&ns, REDIS_IP, connections, pipeline, requests)?;
        for (test, g) in &guest {
            let b =
                baseline.iter().find(|(t, _)| t == test).map(|(_, b)| *b).context("a test missing in Redis's run")?;
            println!(
                "{test} -c {connections} -P {pipeline} -n {requests}: guest {:.0} req/s p50 {:.3} ms p99 {:.3} ms | redis {:.0} req/s p50 {:.3} ms p99 {:.3} ms",
                g.rps, g.p50_ms, g.p99_ms, b.rps, b.p50_ms, b.p99_ms
            );
            rows.push((format!("{test} -c {connections} -P {pipeline}"), *g, b));
        }
    }
    let elapsed = started.elapsed();
    if !vm.output().contains("kv: listening on") {
        bail!("the guest stopped:\n{}", vm.output());
    }
    vm.kill();
    redis.kill();

    let mut table = String::from(
        "| redis-benchmark -t set,get | guest req/s | redis req/s | ratio | guest p50 / p99 ms | redis p50 / p99 ms | ratio p50 / p99 |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, g, b) in &rows {
        let _ = writeln!(
            table,
            "| {name} | {:.0} | {:.0} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2} / {:.2} |",
            g.rps,
            b.rps,
            g.rps / b.rps,
            g.p50_ms,
            g.p99_ms,
            b.p50_ms,
            b.p99_ms,
            g.p50_ms / b.p50_ms,
            g.p99_ms / b.p99_ms
        );
    }
    println!("\nmeasured in {:.1} s\n\n{table}", elapsed.as_secs_f64());
    Ok(table)
}

/// The ways the protected part runs the guest, in order.
const MODES: [&str; 3] = ["unprotected", "FT received", "FT verified"];

/// The guest unprotected and protected in both commit modes, in the FT topology; the table.
fn against_protected(scale: f64) -> Result<String> {
    let net = FtNet::new("respft")?;
    let started = Instant::now();
    let rows = net.explain(measure_modes(&net, scale))?;
    let elapsed = started.elapsed();
    let mut table = String::from(
        "| redis-benchmark -t set,get | unprotected req/s | FT received req/s | ratio | FT verified req/s | ratio | p50 / p99 ms: unprotected | FT received | FT verified |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, [plain, received, verified]) in &rows {
        let _ = writeln!(
            table,
            "| {name} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} |",
            plain.rps,
            received.rps,
            received.rps / plain.rps,
            verified.rps,
            verified.rps / plain.rps,
            plain.p50_ms,
            plain.p99_ms,
            received.p50_ms,
            received.p99_ms,
            verified.p50_ms,
            verified.p99_ms
        );
    }
    println!("\nprotected part measured in {:.1} s\n\n{table}", elapsed.as_secs_f64());
    Ok(format!("\n{table}"))
}

/// Every configuration against each of [`MODES`]: one row per test and configuration, with the
/// figures of each mode.
fn measure_modes(net: &FtNet, scale: f64) -> Result<Vec<(String, [Figures; 3])>> {
    let resp = format!("resp={PORT}");
    let mut by_mode: Vec<Vec<(String, Figures)>> = Vec::new();
    for mode in MODES {
        if mode == "unprotected" {
            let mut vm = net.plain_vm_with(Host::A, &["--cmdline", &resp])?;
            by_mode.push(every_config(net, mode, scale)?);
            stop_cleanly(&mut vm, "the unprotected VM")?;
        } else {
            let commit = if mode == "FT verified" { "verified" } else { "received" };
            let (mut primary, _) = live_primary(net, Host::A, &["--commit", commit, "--cmdline", &resp])?;
            let live = Host::A.ft_listen();
            let mut backup = join_backup(net, Host::B, FT_PORT, &Join::Address(live.clone()), &mut primary, &live)?;
            by_mode.push(every_config(net, mode, scale)?);
            still_a_pair(&mut primary, &mut backup)?;
            end_pair(&mut primary, &mut backup)?;
        }
    }
    let mut rows = Vec::new();
    for (i, (name, plain)) in by_mode[0].iter().enumerate() {
        let at = |mode: usize| -> Result<Figures> {
            let (other, figures) = by_mode[mode].get(i).context("a mode ran fewer tests")?;
            ensure!(other == name, "the modes ran their tests in another order ({other} against {name})");
            Ok(*figures)
        };
        rows.push((name.clone(), [*plain, at(1)?, at(2)?]));
    }
    Ok(rows)
}

/// Every configuration from the client's namespace against the guest as `mode` runs it.
fn every_config(net: &FtNet, mode: &str, scale: f64) -> Result<Vec<(String, Figures)>> {
    let mut figures = Vec::new();
    for (connections, pipeline, requests) in CONFIGS {
        let requests = ((requests as f64 * scale) as u64).max(100);
        for (test, f) in run(&net.client, GUEST_IP, connections, pipeline, requests)? {
            println!(
                "{mode}: {test} -c {connections} -P {pipeline} -n {requests}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms",
                f.rps, f.p50_ms, f.p99_ms
            );
            figures.push((format!("{test} -c {connections} -P {pipeline}"), f));
        }
    }
    Ok(figures)
}

/// `redis-benchmark -t set,get --csv` against `host`, from inside the namespace.
fn run(ns: &NetNs, host: &str, connections: u32, pipeline: u32, requests: u64) -> Result<Vec<(String, Figures)>> {
    let mut command = ns.command(Path::new("timeout"));
    let (c, p, n) = (connections.to_string(), pipeline.to_string(), requests.to_string());
    command.args([RUN_TIMEOUT, "redis-benchmark", "-h", host, "-p", PORT, "-t", "set,get"]);
    command.args(["-c", &c, "-P", &p, "-n", &n, "--csv"]);
    let output = command.output().context("run redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stdout.contains("rror") || stderr.contains("rror") {
        bail!("redis-benchmark against {host} -c {c} -P {p} failed ({}):\n{stdout}{stderr}", output.status);
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let mut rows = Vec::new();
    for line in stdout.lines().skip_while(|l| !l.starts_with("\"test\"")).skip(1) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let number = |i: usize| -> Result<f64> {
            let field = fields.get(i).with_context(|| format!("short CSV line {line:?}"))?;
            field.parse().with_context(|| format!("bad number {field:?} in {line:?}"))
        };
        rows.push((fields[0].to_owned(), Figures { rps: number(1)?, p50_ms: number(4)?, p99_ms: number(6)? }));
    }
    if rows.len() != 2 {
        bail!("redis-benchmark against {host} printed {} result lines, not 2:\n{stdout}", rows.len());
    }
    Ok(rows)
}
