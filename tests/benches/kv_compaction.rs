//! SET throughput and latency of the `kv` guest during a compaction of its disk log, side by
//! side with the same load outside one, in one run (outside, during, outside again).
//!
//! ```sh
//! cargo build --release -p vmm                   # the bench runs target/release/ftvm
//! cargo bench -p ftvm-tests --bench kv_compaction  # as root with iproute2 and /dev/kvm; ~1 min
//! ```
//!
//! The guest runs on a 512 MiB disk file written with zeros first (`FTVM_BENCH_SPARSE=1`: a
//! sparse file) in `FTVM_BENCH_DIR` (default: the temp dir), regions of 256 MiB, with 10,000 keys of 4000-byte
//! values (a 40 MiB live set, a compaction copies it in 64 KiB chunks). The load: 8
//! connections, closed loop (one outstanding request each), SETs of 24-byte values over 8,000
//! keys of their own. A phase "outside" runs for a fixed time right after a compaction
//! finished (the log is far below the next threshold); the phase "during" starts when a
//! compaction has just started (driven there by overwriting the large values) and ends when
//! STATS says it finished. Three compactions, phases alternating (outside, during, ...,
//! outside), as the host disk's speed drifts; medians in a Markdown table (`figure | outside
//! | during | ratio`), also written to `/tmp/kv-compaction-bench.md`.

use anyhow::{bail, Context, Result};
use ftvm_tests::{binary, can_use_namespaces, NetNs, Process};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GUEST_IP: &str = "10.0.0.2";
const PORT: u16 = 7000;
const DISK_BYTES: u64 = 512 << 20;
const BIG_KEYS: usize = 10_000;
const BIG_VALUE: usize = 4000;
const CONNECTIONS: usize = 8;
const SMALL_VALUE: usize = 24;
const OUTSIDE: Duration = Duration::from_secs(3);
const DURING_LIMIT: Duration = Duration::from_secs(60);
const WINDOW: usize = 16;
const REPEATS: usize = 3;

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect() -> Result<Self> {
        let address = format!("{GUEST_IP}:{PORT}");
        let stream = TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(5)).context(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    fn request(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.reply(line)
    }

    fn reply(&mut self, what: &str) -> Result<String> {
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the server closed the connection after {what:?}");
        }
        Ok(answer.trim_end().to_owned())
    }
}

fn stats() -> Result<BTreeMap<String, u64>> {
    let line = Client::connect()?.request("STATS")?;
    Ok(line
        .split(' ')
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect())
}

fn counter(s: &BTreeMap<String, u64>, name: &str) -> Result<u64> {
    s.get(name).copied().with_context(|| format!("no {name}= in STATS"))
}

/// SETs `round` of the large values of keys `keys`, pipelined in windows on 8 connections;
/// stops early (between windows) once `until` says so.
fn set_big(keys: std::ops::Range<usize>, round: usize, until: Option<Arc<AtomicBool>>) -> Result<()> {
    let per = keys.len().div_ceil(CONNECTIONS);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mine = keys.start + c * per..(keys.start + (c + 1) * per).min(keys.end);
            let until = until.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut client = Client::connect()?;
                let value = format!("{round}-").repeat(BIG_VALUE)[..BIG_VALUE].to_owned();
                let keys: Vec<usize> = mine.collect();
                for window in keys.chunks(WINDOW) {
                    if until.as_ref().is_some_and(|u| u.load(Ordering::Relaxed)) {
                        break;
                    }
                    let mut out = Vec::new();
                    for k in window {
                        out.extend_from_slice(format!("SET big-{k:05} {value}\n").as_bytes());
                    }
                    client.writer.write_all(&out)?;
                    for k in window {
                        let answer = client.reply("a big SET")?;
                        if answer != "OK" {
                            bail!("SET big-{k:05} answered {answer:?}");
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok(())
}

/// What one phase of small SETs measured.
struct Phase {
    sets: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.sets as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
    }
}

/// Small SETs on 8 connections, closed loop, until `stop` is set.
fn small_sets(stop: Arc<AtomicBool>, tag: &'static str) -> Result<Phase> {
    let start = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut client = Client::connect()?;
                let mut latencies = Vec::new();
                let value = "s".repeat(SMALL_VALUE);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = client.request(&format!("SET {tag}-{c}-{:04} {value}", i % 1000))?;
                    if answer != "OK" {
                        bail!("small SET answered {answer:?}");
                    }
                    latencies.push(sent.elapsed());
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
    Ok(Phase { sets: latencies.len(), elapsed: start.elapsed(), latencies })
}

fn outside_phase(tag: &'static str) -> Result<Phase> {
    let before = stats()?;
    if counter(&before, "compacting")? != 0 {
        bail!("a compaction runs before the phase outside one");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(OUTSIDE);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let phase = small_sets(stop, tag)?;
    let _ = timer.join();
    let after = stats()?;
    if counter(&after, "compactions")? != counter(&before, "compactions")? || counter(&after, "compacting")? != 0 {
        bail!("a compaction ran during the phase meant to be outside one");
    }
    Ok(phase)
}

/// Waits until STATS says no compaction runs.
fn wait_idle(limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while counter(&stats()?, "compacting")? != 0 {
        if Instant::now() > deadline {
            bail!("the compaction did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Overwrites the large values until a compaction starts, then runs small SETs until it
/// ends: the phase, how long the compaction took, the live bytes it copied.
fn during_phase(round: &mut usize) -> Result<(Phase, Duration, u64)> {
    let triggered = Arc::new(AtomicBool::new(false));
    let watcher = {
        let triggered = Arc::clone(&triggered);
        std::thread::spawn(move || -> Result<()> {
            let deadline = Instant::now() + DURING_LIMIT;
            while counter(&stats()?, "compacting")? == 0 {
                if Instant::now() > deadline {
                    bail!("no compaction started");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            triggered.store(true, Ordering::Relaxed);
            Ok(())
        })
    };
    while !triggered.load(Ordering::Relaxed) && !watcher.is_finished() {
        set_big(0..BIG_KEYS, *round, Some(Arc::clone(&triggered)))?;
        *round += 1;
    }
    watcher.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
    let before = stats()?;
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> Result<Duration> {
            let start = Instant::now();
            let result = wait_idle(DURING_LIMIT);
            stop.store(true, Ordering::Relaxed);
            result.map(|()| start.elapsed())
        })
    };
    let during = small_sets(stop, "during")?;
    let took = monitor.join().map_err(|_| anyhow::anyhow!("the monitor panicked"))??;
    let after = stats()?;
    if counter(&after, "compactions")? != counter(&before, "compactions")? + 1 {
        bail!("the phase during a compaction saw {before:?} then {after:?}");
    }
    Ok((during, took, counter(&before, "live_bytes")?))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(ns: &NetNs, disk: &Path) -> Result<()> {
    let mut command = ns.command(&binary("ftvm")?);
    command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0", "--disk"]).arg(disk);
    let mut vm = Process::spawn(command)?;
    vm.wait_for("kv: listening on", Duration::from_secs(60))?;

    let report = ns.within(|| -> Result<String> {
        // The live set, then overwrites until the first compaction starts; let it finish.
        let fill = Instant::now();
        set_big(0..BIG_KEYS, 0, None)?;
        let mut round = 1;
        while counter(&stats()?, "compactions")? == 0 && counter(&stats()?, "compacting")? == 0 {
            set_big(0..BIG_KEYS, round, None)?;
            round += 1;
        }
        wait_idle(DURING_LIMIT)?;
        let live = counter(&stats()?, "live_bytes")?;
        eprintln!("filled {live} live bytes in {:.1} s; first compaction done", fill.elapsed().as_secs_f64());

        // Alternating phases, as the host disk's speed drifts a lot over a minute.
        let (mut outside, mut during, mut copies) = (vec![outside_phase("outside")?], Vec::new(), Vec::new());
        for rep in 0..REPEATS {
            let (phase, took, copied) = during_phase(&mut round)?;
            eprintln!(
                "rep {rep}: outside {:.0} SET/s, during {:.0} SET/s ({:.2} s compaction)",
                outside[rep].per_second(),
                phase.per_second(),
                took.as_secs_f64()
            );
            during.push(phase);
            copies.push((took, copied));
            outside.push(outside_phase("outside")?);
        }
        let mut table = String::new();
        table.push_str(&format!(
            "| figure ({REPEATS} compactions, median) | outside a compaction | during a compaction | ratio during / outside |\n|---|---|---|---|\n"
        ));
        let rates = |phases: &[Phase]| median(phases.iter().map(Phase::per_second).collect());
        let (out_rate, dur_rate) = (rates(&outside), rates(&during));
        table.push_str(&format!(
            "| SET/s, 8 connections, 24-byte values | {out_rate:.0} | {dur_rate:.0} | {:.2} |\n",
            dur_rate / out_rate
        ));
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            let pick = |phases: &[Phase]| median(phases.iter().map(|p| p.percentile(q).as_secs_f64() * 1e3).collect());
            let (out, dur) = (pick(&outside), pick(&during));
            table.push_str(&format!("| SET latency {name} | {out:.2} ms | {dur:.2} ms | {:.2} |\n", dur / out));
        }
        let seconds = median(copies.iter().map(|(t, _)| t.as_secs_f64()).collect());
        let mib = median(copies.iter().map(|(_, c)| *c as f64 / (1 << 20) as f64).collect());
        table.push_str(&format!(
            "| a compaction: {mib:.1} MiB of live keys copied while serving | | {seconds:.2} s ({:.1} MiB/s) | |\n",
            mib / seconds
        ));
        let each: Vec<String> = outside
            .iter()
            .map(|p| format!("{:.0}", p.per_second()))
            .zip(during.iter().map(|p| format!("{:.0}", p.per_second())).chain(std::iter::once("-".to_owned())))
            .map(|(o, d)| format!("{o} / {d}"))
            .collect();
        table.push_str(&format!("\nSET/s outside / during, in order: {}\n", each.join(", ")));
        Ok(table)
    })?;
    println!("\n{report}");
    std::fs::write("/tmp/kv-compaction-bench.md", &report)?;
    let _ = vm;
    Ok(())
}

fn main() -> Result<()> {
    if !can_use_namespaces() {
        bail!("the kv compaction bench needs root, iproute2 and /dev/kvm");
    }
    let ns = NetNs::new("kvcompactbench")?;
    ns.tap("tap0", "10.0.0.1/24")?;
    let dir = tempfile::tempdir_in(std::env::var_os("FTVM_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()))?;
    let disk = dir.path().join("kv.img");
    let mut file = std::fs::File::create(&disk)?;
    if std::env::var("FTVM_BENCH_SPARSE").as_deref() == Ok("1") {
        file.set_len(DISK_BYTES)?;
    } else {
        // Written with zeros: a preallocated image, so that a sync does not also allocate.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..DISK_BYTES >> 20 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    drop(file);
    run(&ns, &disk)
}
