//! The `kv` guest against a host-native server with the same protocol and durability contract,
//! side by side in one run: requests/s and latency percentiles over 1 and 8 connections, VM
//! exits per request, bulk TCP throughput into and out of the guest (pipelined 4 KiB values),
//! and disk MB/s next to this host's own disk.
//!
//! ```sh
//! export CARGO_TARGET_DIR=...          # optional; the same for both commands
//! cargo build --release -p vmm         # the bench runs target/release/ftvm; cargo bench does not build it
//! cargo bench -p ftvm-tests --bench kv # as root with iproute2 and /dev/kvm; 15-60 s, at most ~4 min
//! ```
//!
//! What it does, bounded in requests and time (a phase stops at its time budget and reports what
//! it completed; no phase starts after the total budget; the sockets time out after 20 s, so a
//! stalled server is an error naming the request):
//! - a network namespace with a TAP (host side 10.0.0.1/24, the guest 10.0.0.2/24), removed at
//!   the end whatever happens; all traffic stays inside it; the VMs die with the bench;
//! - a boot-only VM (`ftvm run --guest kv` on a fresh 256 MiB disk file, stopped with SIGTERM as
//!   soon as it listens): the exits of boot, subtracted from the measured VM's;
//! - the measured VM, on another fresh 256 MiB disk file, written with zeros first as a
//!   preallocated image (`FTVM_BENCH_SPARSE=1`: sparse files, as `tests/tests/kv.rs` uses, where
//!   the first write to each 4 KiB block also pays for allocating it);
//! - the native server, in the same namespace at 10.0.0.1:7000 (reached over the namespace's
//!   loopback, the guest over the TAP): a thread per connection, a map behind a mutex, an
//!   append-only log file written with write + fdatasync before each SET/DEL reply, as the guest
//!   logs every SET/DEL to its disk before replying (the guest commits a group at once);
//! - the phases, each run against the guest and then at once against the native server so that
//!   both see the same host (the disk of the development machines varies a lot over time): SETs
//!   then GETs of 24-byte values, closed loop (one outstanding request per connection) on 1
//!   connection, then on 8; then 4096-byte values, SET then GET, pipelined in windows of 32 on one
//!   connection;
//! - after the 4 KiB SETs, the host disk in the directory of the disk files: sequential 4 KiB
//!   write + fdatasync into a written file (as the guest's disk) and appended to a growing one
//!   (as the native log), and a 64 MiB sequential write with one fsync at the end.
//!
//! Exits per request come from two counters: ftvm's own (`exits: ...` at SIGTERM, minus the
//! boot-only VM's, over every request the guest served, STATS included), and the guest's `exits=`
//! in its STATS line, read before and after each phase. It prints the details, then a Markdown
//! table (`figure | guest | baseline | ratio`, ratio = guest / baseline), also written to
//! `/tmp/kv-bench.md`. `FTVM_BENCH_DIR` chooses where the disk files go (default: the temp dir).

use anyhow::{bail, Context, Result};
use ftvm_tests::{binary, can_use_namespaces, NetNs, Process};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const HOST_CIDR: &str = "10.0.0.1/24";
const GUEST_IP: &str = "10.0.0.2";
const NATIVE_IP: &str = "10.0.0.1";
const PORT: u16 = 7000;
const DISK_BYTES: u64 = 256 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Small-value requests per kind (SET, then GET) on 1 connection, and on 8.
const SMALL_REQUESTS_1: usize = 3000;
const SMALL_REQUESTS_8: usize = 8000;
const SMALL_VALUE: usize = 24;
/// Bulk phase: this many 4096-byte values, pipelined in windows.
const BULK_REQUESTS: usize = 8192;
const BULK_VALUE: usize = 4096;
const WINDOW: usize = 32;
/// Time budget of one phase (a phase that runs out reports what it completed).
const PHASE_BUDGET: Duration = Duration::from_secs(20);
/// The whole bench stops starting new phases after this.
const TOTAL_BUDGET: Duration = Duration::from_secs(180);
/// What one exit costs on the development machines (README), for the exit share of latency.
const EXIT_US: f64 = 84.0;

fn main() -> Result<()> {
    if !can_use_namespaces() {
        bail!("the kv bench needs root, iproute2 and /dev/kvm (it creates a network namespace and a TAP)");
    }
    let ftvm = binary("ftvm").map_err(|e| {
        anyhow::anyhow!("{e:#}\nbuild it first, with the same CARGO_TARGET_DIR: `cargo build --release -p vmm`")
    })?;
    let started = Instant::now();
    let mut report = Report::default();
    let built = std::fs::metadata(&ftvm)?.modified()?;
    let age = built.elapsed().unwrap_or_default().as_secs();
    println!("kv bench: {} (built {age} s ago)", ftvm.display());
    // The guest is embedded in ftvm at build time.
    let guest_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/guest/src");
    if newest(&guest_src).is_some_and(|changed| changed > built) {
        println!("WARNING: {} changed after ftvm was built: `cargo build --release -p vmm` again", guest_src.display());
    }

    let base = std::env::var_os("FTVM_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("kv-bench-").tempdir_in(&base)?;
    let ns = NetNs::new("kvbench")?;
    ns.tap("tap0", HOST_CIDR)?;

    // 1. Boot only: the exits of boot and of starting to listen.
    let boot_disk = disk(dir.path(), "boot.img")?;
    let t = Instant::now();
    let mut vm = boot(&ns, &ftvm, &boot_disk)?;
    let boot_time = t.elapsed();
    let boot_exits = stop(&mut vm)?;
    drop(vm);
    println!("boot-only VM: listening after {:.2} s; {}", boot_time.as_secs_f64(), boot_exits.line);

    // 2. The measured VM, and the native server in the same namespace; each phase runs against
    // the guest and then against the native server, so that both see the same host load.
    let guest_disk = disk(dir.path(), "kv.img")?;
    let mut vm = boot(&ns, &ftvm, &guest_disk)?;
    let native_log = dir.path().join("native.log");
    let native_addr: SocketAddr = format!("{NATIVE_IP}:{PORT}").parse()?;
    let listener = ns.within(move || Ok(TcpListener::bind(native_addr)?))?;
    start_native_server(listener, &native_log)?;
    let mut guest = Target::new(&ns, "guest", format!("{GUEST_IP}:{PORT}").parse()?);
    let mut native = Target::new(&ns, "native", native_addr);
    let mut host_disk = None;
    for (n, &(_, op, _, connections)) in SLOTS.iter().enumerate() {
        if started.elapsed() > TOTAL_BUDGET {
            println!("skipping the remaining phases: over the total time budget of {TOTAL_BUDGET:?}");
            break;
        }
        guest.run(&ns, n)?;
        native.run(&ns, n)?;
        if op == Op::Set && connections.is_none() {
            // 3. The host's disk, in the same directory, right after the disk-bound phases.
            host_disk = Some(measure_host_disk(dir.path())?);
        }
    }
    let final_stats = guest.stats.read()?;
    let vm_exits = stop(&mut vm)?;
    drop(vm);
    println!("measured VM: {}", vm_exits.line);
    println!("guest STATS at the end: {}", final_stats.line);
    let idle: Vec<String> = guest.idle.iter().map(|(name, d)| format!("{name} {d}")).collect();
    println!("guest, between its phases (native phases running): {}", idle.join(", "));
    let [sync4k, append4k, seq] = match host_disk {
        Some(runs) => runs,
        None => measure_host_disk(dir.path())?,
    };

    // 4. Exits per request.
    let beyond_boot = vm_exits.minus(&boot_exits);
    let guest_requests = guest.results.requests() + guest.stats.requests;
    println!(
        "ftvm exits beyond boot: {} (io {}, mmio {}, hlt {}, irq-window {}), interrupts injected {}, preemptions {} \
         over {guest_requests} requests (STATS included): {:.2} exits/request",
        beyond_boot.exits,
        beyond_boot.io,
        beyond_boot.mmio,
        beyond_boot.hlt,
        beyond_boot.irq_window,
        beyond_boot.injected,
        beyond_boot.preemptions,
        beyond_boot.exits as f64 / guest_requests as f64
    );
    if let Some(counted) = final_stats.get("exits") {
        println!("the guest's own exits= counter: {counted} (ftvm counted {} beyond boot)", beyond_boot.exits);
    }

    report.build(&guest.results, &native.results, &beyond_boot, guest_requests, [&sync4k, &append4k, &seq]);
    let table = report.table;
    println!("\n{table}");
    let header = format!(
        "kv bench, {}, {} guest disk (`cargo bench -p ftvm-tests --bench kv`), {} s\n\n",
        machine(),
        if sparse_disks() { "sparse" } else { "preallocated" },
        started.elapsed().as_secs()
    );
    std::fs::write("/tmp/kv-bench.md", format!("{header}{table}"))?;
    println!("written to /tmp/kv-bench.md; the whole bench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The VM.

/// A disk file for the guest: written with zeros, so that the guest's writes land on allocated
/// blocks as in a preallocated image (`FTVM_BENCH_SPARSE=1`: a sparse file, where the first write
/// to each 4 KiB block also allocates it, which costs an ext4 journal commit at the next flush).
fn disk(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path)?;
    if sparse_disks() {
        file.set_len(DISK_BYTES)?;
    } else {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..DISK_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    Ok(path)
}

fn sparse_disks() -> bool {
    std::env::var_os("FTVM_BENCH_SPARSE").is_some_and(|v| v == "1")
}

fn boot(ns: &NetNs, ftvm: &Path, disk: &Path) -> Result<Process> {
    let mut command = ns.command(ftvm);
    command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0", "--disk"]);
    command.arg(disk);
    // SAFETY: prctl in the child before exec; `ip netns exec` execs ftvm, which keeps it: the VM
    // dies with this process even if the bench is killed.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut vm = Process::spawn(command)?;
    vm.wait_for("kv: listening on", BOOT_TIMEOUT)?;
    Ok(vm)
}

/// ftvm's `exits: <n> (io <a>, mmio <b>, hlt <c>, irq-window <d>), interrupts injected: <k>, preemptions: <p>`.
#[derive(Default, Clone)]
struct ExitLine {
    line: String,
    exits: u64,
    io: u64,
    mmio: u64,
    hlt: u64,
    irq_window: u64,
    injected: u64,
    preemptions: u64,
}

impl ExitLine {
    fn parse(output: &str) -> Result<Self> {
        let line = output
            .lines()
            .rev()
            .find(|l| l.starts_with("exits: "))
            .with_context(|| format!("no `exits:` line in ftvm's output:\n{output}"))?;
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse())
            .collect::<Result<_, _>>()?;
        let [exits, io, mmio, hlt, irq_window, injected, preemptions] = numbers[..] else {
            bail!("unexpected exits line: {line}");
        };
        Ok(Self { line: line.to_owned(), exits, io, mmio, hlt, irq_window, injected, preemptions })
    }

    fn minus(&self, other: &Self) -> Self {
        Self {
            line: String::new(),
            exits: self.exits.saturating_sub(other.exits),
            io: self.io.saturating_sub(other.io),
            mmio: self.mmio.saturating_sub(other.mmio),
            hlt: self.hlt.saturating_sub(other.hlt),
            irq_window: self.irq_window.saturating_sub(other.irq_window),
            injected: self.injected.saturating_sub(other.injected),
            preemptions: self.preemptions.saturating_sub(other.preemptions),
        }
    }
}

/// SIGTERM: ftvm stops the guest at its next exit and prints its counts.
fn stop(vm: &mut Process) -> Result<ExitLine> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
    vm.wait(Duration::from_secs(30))?;
    ExitLine::parse(&vm.output())
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// One connection speaking the line protocol.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: Vec<u8>,
}

impl Client {
    /// Connects (from a thread inside the namespace), retrying while ARP and the listener settle.
    fn connect(addr: SocketAddr) -> Result<Self> {
        let mut last = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    stream.set_nodelay(true)?;
                    let reader = BufReader::with_capacity(256 << 10, stream.try_clone()?);
                    return Ok(Self { reader, writer: stream, line: Vec::with_capacity(8192) });
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no connection"))).context(addr)
    }

    /// Reads one reply line (without its `\n`) into `self.line`.
    fn read_reply(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let read = self.reader.read_until(b'\n', &mut self.line).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                anyhow::anyhow!(
                    "no reply within {IO_TIMEOUT:?}: the server stalled ({} bytes of a line read)",
                    self.line.len()
                )
            }
            _ => e.into(),
        })?;
        if read == 0 || self.line.last() != Some(&b'\n') {
            bail!("the server closed the connection");
        }
        self.line.pop();
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(&self.line)
    }

    fn request(&mut self, request: &[u8]) -> Result<&[u8]> {
        self.writer.write_all(request)?;
        self.read_reply()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Set,
    Get,
}

fn key(tag: &str, i: usize) -> String {
    format!("{tag}-{i:06}")
}

/// A printable value of `len` bytes that differs from key to key.
fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("v{i:06}-").into_bytes();
    v.extend((0..len.saturating_sub(v.len())).map(|j| b'a' + ((i * 7 + j) % 26) as u8));
    v.truncate(len);
    v
}

fn request_bytes(op: Op, tag: &str, i: usize, len: usize, out: &mut Vec<u8>) {
    match op {
        Op::Set => {
            out.extend_from_slice(format!("SET {} ", key(tag, i)).as_bytes());
            out.extend_from_slice(&value(i, len));
        }
        Op::Get => out.extend_from_slice(format!("GET {}", key(tag, i)).as_bytes()),
    }
    out.push(b'\n');
}

fn check_reply(op: Op, tag: &str, i: usize, len: usize, reply: &[u8]) -> Result<()> {
    let ok = match op {
        Op::Set => reply == b"OK",
        Op::Get => reply.strip_prefix(b"VALUE ") == Some(&value(i, len)[..]),
    };
    if !ok {
        let shown = String::from_utf8_lossy(&reply[..reply.len().min(120)]);
        bail!("{op:?} {} answered {shown:?} ({} bytes)", key(tag, i), reply.len());
    }
    Ok(())
}

/// What one phase did.
#[derive(Default, Clone)]
struct Phase {
    requests: usize,
    /// Value bytes carried (SET: sent, GET: received).
    value_bytes: usize,
    elapsed: Duration,
    /// The keys answered (for a SET phase: the keys the GET phase may ask for).
    done: Vec<usize>,
    /// Per-request latencies (closed loop only).
    latencies: Vec<Duration>,
    /// The guest's STATS counters that changed during the phase.
    stats_delta: BTreeMap<String, u64>,
    /// Whether the phase ran out of time before its count.
    truncated: bool,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.value_bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }

    fn exits_per_request(&self) -> Option<f64> {
        self.stats_delta.get("exits").map(|e| *e as f64 / self.requests as f64)
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Requests of `op` for the keys `indices` over `connections` connections, one outstanding
/// each, the keys split between the connections; stops at the phase budget.
fn closed_loop(
    ns: &NetNs,
    addr: SocketAddr,
    tag: &str,
    op: Op,
    indices: Vec<usize>,
    connections: usize,
) -> Result<Phase> {
    let tag = tag.to_owned();
    ns.within(move || {
        let per = indices.len().div_ceil(connections).max(1);
        let barrier = Arc::new(Barrier::new(connections + 1));
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(Client::connect(addr)?);
        }
        let mut chunks = indices.chunks(per).map(<[usize]>::to_vec).collect::<Vec<_>>();
        chunks.resize(connections, Vec::new());
        let workers: Vec<_> = clients
            .into_iter()
            .zip(chunks)
            .map(|(mut client, chunk)| {
                let (barrier, tag) = (Arc::clone(&barrier), tag.clone());
                std::thread::spawn(move || -> Result<(Vec<(usize, Duration)>, bool)> {
                    let mut done = Vec::with_capacity(chunk.len());
                    let mut request = Vec::with_capacity(256);
                    barrier.wait();
                    let deadline = Instant::now() + PHASE_BUDGET;
                    for i in chunk {
                        if Instant::now() > deadline {
                            return Ok((done, true));
                        }
                        request.clear();
                        request_bytes(op, &tag, i, SMALL_VALUE, &mut request);
                        let t = Instant::now();
                        let reply = client.request(&request).with_context(|| format!("{op:?} {}", key(&tag, i)))?;
                        let latency = t.elapsed();
                        check_reply(op, &tag, i, SMALL_VALUE, reply)?;
                        done.push((i, latency));
                    }
                    Ok((done, false))
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let mut phase = Phase::default();
        let mut errors = Vec::new();
        for worker in workers {
            match worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))? {
                Ok((done, truncated)) => {
                    phase.truncated |= truncated;
                    for (i, latency) in done {
                        phase.done.push(i);
                        phase.latencies.push(latency);
                    }
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        phase.elapsed = t.elapsed();
        if !errors.is_empty() {
            bail!("{} of {connections} connections failed: {}", errors.len(), errors.join("; "));
        }
        phase.requests = phase.latencies.len();
        phase.value_bytes = phase.requests * SMALL_VALUE;
        phase.latencies.sort();
        Ok(phase)
    })
}

/// `count` requests of `op` with `len`-byte values on one connection, `WINDOW` requests sent
/// before their replies are read.
fn pipelined(ns: &NetNs, addr: SocketAddr, tag: &str, op: Op, indices: Vec<usize>, len: usize) -> Result<Phase> {
    let tag = tag.to_owned();
    ns.within(move || {
        let count = indices.len();
        let mut client = Client::connect(addr)?;
        let mut batch = Vec::with_capacity(WINDOW * (len + 64));
        let mut phase = Phase::default();
        let t = Instant::now();
        let deadline = t + PHASE_BUDGET;
        let mut i = 0;
        while i < count {
            if Instant::now() > deadline {
                phase.truncated = true;
                break;
            }
            let end = (i + WINDOW).min(count);
            batch.clear();
            for &j in &indices[i..end] {
                request_bytes(op, &tag, j, len, &mut batch);
            }
            client.writer.write_all(&batch)?;
            for (k, &j) in indices[i..end].iter().enumerate() {
                let reply = client
                    .read_reply()
                    .with_context(|| format!("reply {} of a window of {} (requests {i}..{end})", k + 1, end - i))?;
                check_reply(op, &tag, j, len, reply)?;
                phase.done.push(j);
            }
            i = end;
        }
        phase.elapsed = t.elapsed();
        phase.requests = i;
        phase.value_bytes = i * len;
        Ok(phase)
    })
}

/// The guest's STATS line as `name=value` pairs (`log_sectors=used/capacity` gives `used`).
struct Stats {
    line: String,
    values: BTreeMap<String, u64>,
}

impl Stats {
    fn get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }
}

struct StatsReader<'a> {
    ns: &'a NetNs,
    addr: SocketAddr,
    requests: usize,
}

impl<'a> StatsReader<'a> {
    fn new(ns: &'a NetNs, addr: SocketAddr) -> Self {
        Self { ns, addr, requests: 0 }
    }

    fn read(&mut self) -> Result<Stats> {
        let addr = self.addr;
        let line = self.ns.within(move || {
            let mut client = Client::connect(addr)?;
            Ok(String::from_utf8_lossy(client.request(b"STATS\n")?).into_owned())
        })?;
        self.requests += 1;
        if !line.starts_with("STATS ") {
            bail!("STATS answered {line:?}");
        }
        let values = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| {
                let (name, value) = w.split_once('=')?;
                let value = value.split('/').next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect();
        Ok(Stats { line, values })
    }
}

fn delta(before: &Stats, after: &Stats) -> BTreeMap<String, u64> {
    after
        .values
        .iter()
        .filter_map(|(name, a)| {
            let b = before.values.get(name)?;
            (a != b).then(|| (name.clone(), a.saturating_sub(*b)))
        })
        .collect()
}

/// Every phase against one server.
#[derive(Default)]
struct Results {
    set1: Phase,
    get1: Phase,
    set8: Phase,
    get8: Phase,
    bulk_set: Phase,
    bulk_get: Phase,
}

impl Results {
    fn phases(&self) -> [(&'static str, &Phase); 6] {
        [
            ("SET, 1 connection", &self.set1),
            ("GET, 1 connection", &self.get1),
            ("SET, 8 connections", &self.set8),
            ("GET, 8 connections", &self.get8),
            ("SET 4 KiB, pipelined", &self.bulk_set),
            ("GET 4 KiB, pipelined", &self.bulk_get),
        ]
    }

    fn requests(&self) -> usize {
        self.phases().iter().map(|(_, p)| p.requests).sum()
    }

    fn phase_mut(&mut self, n: usize) -> &mut Phase {
        match n {
            0 => &mut self.set1,
            1 => &mut self.get1,
            2 => &mut self.set8,
            3 => &mut self.get8,
            4 => &mut self.bulk_set,
            _ => &mut self.bulk_get,
        }
    }
}

/// The phases, in order: (key tag, operation, requests, connections or pipelined).
const SLOTS: [(&str, Op, usize, Option<usize>); 6] = [
    ("c1", Op::Set, SMALL_REQUESTS_1, Some(1)),
    ("c1", Op::Get, SMALL_REQUESTS_1, Some(1)),
    ("c8", Op::Set, SMALL_REQUESTS_8, Some(8)),
    ("c8", Op::Get, SMALL_REQUESTS_8, Some(8)),
    ("bulk", Op::Set, BULK_REQUESTS, None),
    ("bulk", Op::Get, BULK_REQUESTS, None),
];

/// One server under test, the phases run so far, and its STATS counters.
struct Target<'a> {
    who: &'static str,
    addr: SocketAddr,
    stats: StatsReader<'a>,
    /// STATS after the previous phase: what changed until the next one is idle time.
    last: Option<Stats>,
    idle: BTreeMap<String, u64>,
    set_keys: HashMap<&'static str, Vec<usize>>,
    results: Results,
}

impl<'a> Target<'a> {
    fn new(ns: &'a NetNs, who: &'static str, addr: SocketAddr) -> Self {
        let stats = StatsReader::new(ns, addr);
        Self {
            who,
            addr,
            stats,
            last: None,
            idle: BTreeMap::new(),
            set_keys: HashMap::new(),
            results: Results::default(),
        }
    }

    /// Runs phase `n` of [`SLOTS`], with a STATS request before and after it.
    fn run(&mut self, ns: &NetNs, n: usize) -> Result<()> {
        let (tag, op, count, connections) = SLOTS[n];
        let who = self.who;
        // GET exactly the keys the SET phase had acknowledged.
        let indices = match op {
            Op::Get => self.set_keys.get(tag).cloned().unwrap_or_default(),
            Op::Set => (0..count).collect(),
        };
        let before = self.stats.read()?;
        if let Some(last) = &self.last {
            for (name, d) in delta(last, &before) {
                *self.idle.entry(name).or_default() += d;
            }
        }
        let mut phase = match connections {
            Some(c) => closed_loop(ns, self.addr, tag, op, indices, c),
            None => pipelined(ns, self.addr, tag, op, indices, BULK_VALUE),
        }
        .with_context(|| format!("{who}: {tag} {op:?}"))?;
        if op == Op::Set {
            self.set_keys.insert(tag, phase.done.clone());
        }
        let after = self.stats.read()?;
        phase.stats_delta = delta(&before, &after);
        self.last = Some(after);
        let p = &phase;
        let name = self.results.phases()[n].0;
        println!(
            "{who:>6} {name:<22} {:>5} req in {:>6.2} s: {:>8.0} req/s, {:>7.2} MB/s values{}{}",
            p.requests,
            p.elapsed.as_secs_f64(),
            p.per_second(),
            p.mb_per_s(),
            if p.latencies.is_empty() {
                String::new()
            } else {
                format!(
                    ", latency p50 {} p90 {} p99 {} max {}",
                    ms(p.percentile(0.5)),
                    ms(p.percentile(0.9)),
                    ms(p.percentile(0.99)),
                    ms(p.percentile(1.0))
                )
            },
            if p.truncated { " (time budget reached)" } else { "" }
        );
        let per: Vec<String> = p
            .stats_delta
            .iter()
            .filter(|(name, _)| !name.starts_with("heap") && *name != "keys")
            .map(|(name, d)| format!("{name} {:.2}", *d as f64 / p.requests.max(1) as f64))
            .collect();
        if !per.is_empty() {
            println!("{:>29} per request: {}", "", per.join(", "));
        }
        if let (Some(e), false) = (p.exits_per_request(), p.latencies.is_empty()) {
            println!(
                "{:>29} exits x {EXIT_US} µs = {:.0} µs per request (latency p50 {})",
                "",
                e * EXIT_US,
                ms(p.percentile(0.5))
            );
        }
        *self.results.phase_mut(n) = phase;
        Ok(())
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// The native baseline server: same protocol, SET/DEL appended to a log file and fdatasync'ed
// before the reply, a thread per connection.

struct Native {
    map: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    log: Mutex<std::fs::File>,
    /// A second handle on the log, for fdatasync outside the append lock.
    sync: std::fs::File,
    counts: Mutex<[u64; 5]>,
    log_bytes: std::sync::atomic::AtomicU64,
}

fn start_native_server(listener: TcpListener, log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let sync = file.try_clone()?;
    let native = Arc::new(Native {
        map: Mutex::default(),
        log: Mutex::new(file),
        sync,
        counts: Mutex::default(),
        log_bytes: Default::default(),
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(|s| s.ok()) {
            let native = Arc::clone(&native);
            std::thread::spawn(move || {
                let _ = serve(&native, stream);
            });
        }
    });
    Ok(())
}

fn serve(native: &Native, stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(64 << 10, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(64 << 10, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        native.execute(&line, &mut writer)?;
        // Reply now unless more requests are already buffered (pipelining).
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

impl Native {
    fn execute(&self, line: &[u8], out: &mut impl Write) -> Result<()> {
        let mut words = line.splitn(3, |b| *b == b' ');
        let command = words.next().unwrap_or_default().to_ascii_uppercase();
        let (a, b) = (words.next(), words.next());
        let count = |i: usize| self.counts.lock().map(|mut c| c[i] += 1);
        match (&command[..], a, b) {
            (b"SET", Some(k), Some(v)) if !k.is_empty() && k.len() <= 250 && !v.is_empty() && v.len() <= 4096 => {
                self.append(b'S', k, v)?;
                self.map.lock().unwrap().insert(k.to_vec(), v.to_vec());
                let _ = count(1);
                out.write_all(b"OK\n")?;
            }
            (b"GET", Some(k), None) => {
                let _ = count(2);
                match self.map.lock().unwrap().get(k) {
                    Some(v) => {
                        out.write_all(b"VALUE ")?;
                        out.write_all(v)?;
                        out.write_all(b"\n")?;
                    }
                    None => out.write_all(b"NOT_FOUND\n")?,
                }
            }
            (b"DEL", Some(k), None) => {
                let _ = count(3);
                if self.map.lock().unwrap().contains_key(k) {
                    self.append(b'D', k, b"")?;
                    self.map.lock().unwrap().remove(k);
                    out.write_all(b"OK\n")?;
                } else {
                    out.write_all(b"NOT_FOUND\n")?;
                }
            }
            (b"STATS", None, None) => {
                let keys = self.map.lock().unwrap().len();
                let c = *self.counts.lock().unwrap();
                let logged = self.log_bytes.load(std::sync::atomic::Ordering::Relaxed);
                writeln!(
                    out,
                    "STATS keys={keys} sets={} gets={} dels={} errors={} log_bytes={logged}",
                    c[1], c[2], c[3], c[4]
                )?;
            }
            _ => {
                let _ = count(4);
                out.write_all(b"ERR bad request\n")?;
            }
        }
        Ok(())
    }

    /// One record (`op len(key) len(value) key value`), written, then made durable.
    fn append(&self, op: u8, key: &[u8], value: &[u8]) -> Result<()> {
        let mut record = Vec::with_capacity(16 + key.len() + value.len());
        record.push(op);
        record.extend_from_slice(&(key.len() as u32).to_le_bytes());
        record.extend_from_slice(&(value.len() as u32).to_le_bytes());
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        self.log.lock().unwrap().write_all(&record)?;
        self.log_bytes.fetch_add(record.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.sync.sync_data()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The host's disk.

struct DiskRun {
    bytes: u64,
    ops: u64,
    elapsed: Duration,
}

impl DiskRun {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// 4 KiB write+fdatasync into a written file (or appended, with sparse guest disks), appended,
/// and a 64 MiB sequential write with one fsync.
fn measure_host_disk(dir: &Path) -> Result<[DiskRun; 3]> {
    let budget = Duration::from_secs(5);
    let sync4k = host_sync_writes(&dir.join("sync4k.bin"), 4096, 4096, budget, !sparse_disks())?;
    let append4k = host_sync_writes(&dir.join("append4k.bin"), 4096, 4096, budget, false)?;
    let seq = host_sequential_write(&dir.join("seq.bin"), 64 << 20)?;
    let first = if sparse_disks() { "appended" } else { "into a written file" };
    for (name, run) in [(first, &sync4k), ("appended", &append4k)] {
        println!(
            "  host 4 KiB write+fdatasync, {name}: {:.2} MB/s ({} writes, {:.0} µs each)",
            run.mb_per_s(),
            run.ops,
            run.elapsed.as_secs_f64() * 1e6 / run.ops as f64
        );
    }
    println!("  host 64 MiB sequential write + one fsync: {:.1} MB/s", seq.mb_per_s());
    Ok([sync4k, append4k, seq])
}

/// Sequential `size`-byte writes, each followed by fdatasync, until `count` or `budget`: into a
/// file written beforehand (`prewritten`, as the guest's disk file) or appended to an empty one.
fn host_sync_writes(path: &Path, size: usize, count: u64, budget: Duration, prewritten: bool) -> Result<DiskRun> {
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let block = vec![0x5au8; size];
    if prewritten {
        for _ in 0..count {
            file.write_all(&block)?;
        }
        file.sync_all()?;
        std::io::Seek::rewind(&mut file)?;
    }
    let t = Instant::now();
    let mut ops = 0;
    while ops < count && t.elapsed() < budget {
        file.write_all(&block)?;
        file.sync_data()?;
        ops += 1;
    }
    let run = DiskRun { bytes: ops * size as u64, ops, elapsed: t.elapsed() };
    drop(file);
    std::fs::remove_file(path)?;
    Ok(run)
}

/// `total` bytes written sequentially in 1 MiB blocks, one fsync at the end (like dd conv=fsync).
fn host_sequential_write(path: &Path, total: u64) -> Result<DiskRun> {
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    let block = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    let mut written = 0;
    while written < total {
        file.write_all(&block)?;
        written += block.len() as u64;
    }
    file.sync_all()?;
    let run = DiskRun { bytes: written, ops: written / block.len() as u64, elapsed: t.elapsed() };
    drop(file);
    std::fs::remove_file(path)?;
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Default)]
struct Report {
    table: String,
}

impl Report {
    fn row(&mut self, figure: &str, guest: String, baseline: String, ratio: Option<f64>) {
        let ratio = ratio.filter(|r| r.is_finite()).map(|r| format!("{r:.3}")).unwrap_or_else(|| "—".into());
        let _ = writeln!(self.table, "| {figure} | {guest} | {baseline} | {ratio} |");
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        guest: &Results,
        native: &Results,
        exits: &ExitLine,
        guest_requests: usize,
        [sync4k, append4k, seq]: [&DiskRun; 3],
    ) {
        let _ = writeln!(self.table, "| figure | guest (ftvm kv) | baseline (same run) | ratio guest/baseline |");
        let _ = writeln!(self.table, "|---|---|---|---|");
        for (label, g, n) in [
            ("1 connection", [&guest.set1, &guest.get1], [&native.set1, &native.get1]),
            ("8 connections", [&guest.set8, &guest.get8], [&native.set8, &native.get8]),
        ] {
            let rate = |p: [&Phase; 2]| {
                let requests = p[0].requests + p[1].requests;
                requests as f64 / (p[0].elapsed + p[1].elapsed).as_secs_f64()
            };
            let (rg, rn) = (rate(g), rate(n));
            self.row(
                &format!("kv requests/s, {label} (SET then GET, {SMALL_VALUE}-byte values)"),
                format!("{rg:.0}"),
                format!("{rn:.0} (native server)"),
                Some(rg / rn),
            );
            for (kind, i) in [("SET", 0), ("GET", 1)] {
                let qs = [0.5, 0.9, 0.99];
                let show = |p: &Phase| {
                    let v: Vec<String> =
                        qs.iter().map(|q| format!("{:.3}", p.percentile(*q).as_secs_f64() * 1e3)).collect();
                    format!("{} ms", v.join(" / "))
                };
                let ratios: Vec<String> = qs
                    .iter()
                    .map(|q| format!("{:.1}", g[i].percentile(*q).as_secs_f64() / n[i].percentile(*q).as_secs_f64()))
                    .collect();
                let _ = writeln!(
                    self.table,
                    "| {kind} latency p50 / p90 / p99, {label} | {} | {} | {} |",
                    show(g[i]),
                    show(n[i]),
                    ratios.join(" / ")
                );
            }
        }
        self.row(
            "VM exits per request, all phases (ftvm's count beyond boot, idle gaps included)",
            format!("{:.2}", exits.exits as f64 / guest_requests as f64),
            "0 (native)".into(),
            None,
        );
        for (name, p) in guest.phases() {
            if let Some(e) = p.exits_per_request() {
                self.row(&format!("VM exits per request, {name} (guest's count)"), format!("{e:.2}"), "0".into(), None);
            }
        }
        self.row(
            &format!("bulk TCP into the guest: SET {BULK_VALUE}-byte values, windows of {WINDOW}, MB/s of values"),
            format!("{:.2}", guest.bulk_set.mb_per_s()),
            format!("{:.2} (native server)", native.bulk_set.mb_per_s()),
            Some(guest.bulk_set.mb_per_s() / native.bulk_set.mb_per_s()),
        );
        self.row(
            &format!("bulk TCP out of the guest: GET {BULK_VALUE}-byte values, windows of {WINDOW}, MB/s of values"),
            format!("{:.2}", guest.bulk_get.mb_per_s()),
            format!("{:.2} (native server)", native.bulk_get.mb_per_s()),
            Some(guest.bulk_get.mb_per_s() / native.bulk_get.mb_per_s()),
        );
        let b = &guest.bulk_set;
        let secs = b.elapsed.as_secs_f64();
        let guest_disk = b.stats_delta.get("log_sectors").map(|s| (*s * 512) as f64 / secs / 1e6);
        let native_logged = native.bulk_set.stats_delta.get("log_bytes").copied().unwrap_or(0);
        let native_disk = native_logged as f64 / native.bulk_set.elapsed.as_secs_f64() / 1e6;
        if let Some(gd) = guest_disk {
            let commits = b.stats_delta.get("commits").copied().unwrap_or(0);
            let requests = b.stats_delta.get("disk_requests").copied().unwrap_or(0);
            let into = if sparse_disks() {
                "appended, as into the guest's sparse disk"
            } else {
                "into a written file, as the guest's disk"
            };
            self.row(
                &format!(
                    "disk MB/s written during the 4 KiB SETs (guest: log sectors, {commits} commits, {requests} disk requests) \
                     vs host 4 KiB write+fdatasync, {into}"
                ),
                format!("{gd:.2}"),
                format!("{:.2} (host)", sync4k.mb_per_s()),
                Some(gd / sync4k.mb_per_s()),
            );
            if !sparse_disks() {
                self.row(
                    "disk MB/s during the 4 KiB SETs vs host 4 KiB write+fdatasync appended to a growing file",
                    format!("{gd:.2}"),
                    format!("{:.2} (host)", append4k.mb_per_s()),
                    Some(gd / append4k.mb_per_s()),
                );
            }
            self.row(
                "disk MB/s written during the 4 KiB SETs, vs the native server's log",
                format!("{gd:.2}"),
                format!("{native_disk:.2} (native server)"),
                Some(gd / native_disk),
            );
            self.row(
                "disk MB/s, vs host sequential write (64 MiB, 1 MiB blocks, one fsync)",
                format!("{gd:.2}"),
                format!("{:.1} (host)", seq.mb_per_s()),
                Some(gd / seq.mb_per_s()),
            );
        }
    }
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() { newest(&path) } else { entry.metadata().and_then(|m| m.modified()).ok() };
        latest = latest.max(time);
    }
    latest
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut kernel = String::new();
    if let Ok(mut f) = std::fs::File::open("/proc/sys/kernel/osrelease") {
        let _ = f.read_to_string(&mut kernel);
    }
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}
