//! `redis-benchmark` against the `kv` guest's Redis protocol and against Debian's `redis-server`
//! with the same durability (`appendonly yes`, `appendfsync always`), side by side in one run:
//! requests/s, p50 and p99 latency for SET and GET at 1 and 50 connections, pipelined (16) and
//! not.
//!
//! ```sh
//! apt-get install -y redis-tools redis-server
//! cargo build --release -p vmm          # the bench runs target/release/ftvm; cargo bench does not build it
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

use anyhow::{bail, Context, Result};
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
    let mut vm = ns.command(&ftvm);
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
    std::fs::write("/tmp/resp-bench.md", &table)?;
    Ok(())
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
