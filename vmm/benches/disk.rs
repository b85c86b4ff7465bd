//! VM disks on gfs against their baselines, side by side in one run:
//! - the guest's `disk` workload (sequential write/read MB/s, 4 KiB random read/write IOPS,
//!   measured inside the guest) on a gfs disk against the same workload on a local file disk;
//! - the same against the gfs client writing and reading the same amounts from the host (the
//!   VMM's own gfs backend, `GfsDisk`, on the same cluster, same request sizes, same flushes);
//! - kv requests/s (SETs of 24-byte values, 8 connections, closed loop) with its disk on gfs
//!   against on a local file (goal: >= 0.8).
//!
//! ```sh
//! cargo build --release -p vmm -p storage   # the bench runs target/release/{ftvm,gfs}
//! cargo bench -p vmm --bench disk           # as root (the kv part needs a network namespace)
//! ```
//!
//! A gfs cluster (master + 3 chunkservers, each its own process and data directory) on loopback
//! for the disk part, and another inside a network namespace with the kv guest's TAP for the kv
//! part; everything is removed at the end. Each pair of runs alternates (local, gfs, local, gfs)
//! so both see the same host; the figures are the sums over both rounds. `FTVM_BENCH_DIR` chooses
//! where the disk files and gfs data go (default: the temp dir). Prints the details, then a
//! Markdown table `figure | gfs | baseline | ratio` (ratio = gfs / baseline), also written to
//! `/tmp/disk-bench.md`.

use anyhow::{bail, Context, Result};
use devices::virtio::BlockBackend;
use ftvm_tests::gfs::Cluster;
use ftvm_tests::{binary, can_use_namespaces, kv};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use vmm::gfs_disk::{GfsAccess, GfsDisk};

/// The disk workload's parameters (the host client does the same).
const SIZE_MIB: u64 = 32;
const BS_KIB: u64 = 256;
const OPS: u64 = 1000;
const ROUNDS: usize = 2;
/// kv: SETs per connection, connections.
const KV_SETS: usize = 600;
const KV_CONNECTIONS: usize = 8;

/// One run's figures: seq write MB/s, seq read MB/s, random read IOPS, random write IOPS.
#[derive(Clone, Copy, Debug, Default)]
struct Figures([f64; 4]);

const NAMES: [&str; 4] = ["seq write MB/s", "seq read MB/s", "4 KiB rand read IOPS", "4 KiB rand write IOPS"];

impl Figures {
    fn add(&mut self, other: Figures) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn scaled(self, by: f64) -> Figures {
        Figures(self.0.map(|v| v * by))
    }
}

fn main() -> Result<()> {
    let base = std::env::var_os("FTVM_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("disk-bench-").tempdir_in(&base)?;
    let ftvm = binary("ftvm")?;
    let mut table = String::from("| figure | gfs | baseline | ratio |\n|---|---|---|---|\n");

    let cluster = Cluster::start(None, 3, dir.path()).context("gfs cluster on loopback")?;
    let local_image = dir.path().join("local.img");
    std::fs::write(&local_image, vec![0u8; ((SIZE_MIB + 1) << 20) as usize])?;
    let (mut local, mut gfs, mut host) = (Figures::default(), Figures::default(), Figures::default());
    for round in 0..ROUNDS {
        let l = guest_disk(&ftvm, None, local_image.to_str().context("path")?)?;
        let gfs_path = format!("gfs:/bench/disk{round}.img");
        cluster.create_disk(&gfs_path, &format!("{}M", SIZE_MIB + 1))?;
        let g = guest_disk(&ftvm, Some(&cluster.master_addr), &gfs_path)?;
        let host_path = format!("gfs:/bench/host{round}.img");
        cluster.create_disk(&host_path, &format!("{}M", SIZE_MIB + 1))?;
        let h = host_client(&cluster.master_addr, &host_path[4..])?;
        println!("round {round}: local {l:?}\nround {round}: gfs   {g:?}\nround {round}: host  {h:?}");
        local.add(l);
        gfs.add(g);
        host.add(h);
    }
    let (local, gfs, host) =
        (local.scaled(1.0 / ROUNDS as f64), gfs.scaled(1.0 / ROUNDS as f64), host.scaled(1.0 / ROUNDS as f64));
    for (i, name) in NAMES.iter().enumerate() {
        row(&mut table, &format!("disk workload {name}, gfs disk vs local file"), gfs.0[i], local.0[i]);
    }
    for (i, name) in NAMES.iter().enumerate() {
        row(&mut table, &format!("disk workload {name}, gfs disk vs gfs client on the host"), gfs.0[i], host.0[i]);
    }
    drop(cluster);

    if can_use_namespaces() {
        let (local_rps, gfs_rps) = kv_rates(dir.path())?;
        row(
            &mut table,
            &format!("kv SET requests/s, {KV_CONNECTIONS} connections, disk on gfs vs local file"),
            gfs_rps,
            local_rps,
        );
    } else {
        println!("kv part skipped: it needs root, iproute2 and /dev/kvm (a network namespace and a TAP)");
    }
    println!("\n{table}");
    std::fs::write("/tmp/disk-bench.md", &table)?;
    Ok(())
}

fn row(table: &mut String, figure: &str, gfs: f64, baseline: f64) {
    let _ = writeln!(table, "| {figure} | {gfs:.1} | {baseline:.1} | {:.2} |", gfs / baseline.max(f64::MIN_POSITIVE));
}

/// `ftvm run --guest disk` on `disk`; its figures.
fn guest_disk(ftvm: &Path, master: Option<&str>, disk: &str) -> Result<Figures> {
    let mut command = Command::new(ftvm);
    ftvm_tests::with_keys(&mut command)?;
    command.args(["run", "--guest", "disk"]).arg(format!("size={SIZE_MIB}")).arg(format!("bs={BS_KIB}"));
    command.arg(format!("ops={OPS}")).args(["--disk", disk]);
    if let Some(master) = master {
        command.env("GFS_MASTER", master);
    }
    let out = command.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the disk workload on {disk} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let line = text.lines().find_map(|l| l.strip_prefix("disk: result ")).context("no result line")?;
    let value = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .context(format!("{key} in {line}"))?
            .parse()
            .context(key.to_owned())
    };
    if value("mismatches")? != 0.0 {
        bail!("the disk workload on {disk} read back wrong bytes: {text}");
    }
    Ok(Figures([
        value("seq_write_mbps")?,
        value("seq_read_mbps")?,
        value("rand_read_iops")?,
        value("rand_write_iops")?,
    ]))
}

/// The same amounts through the VMM's gfs backend from the host: sequential writes of `BS_KIB`
/// and a flush, sequential reads, `OPS` random 4 KiB reads, `OPS` random 4 KiB writes and a flush.
fn host_client(master: &str, path: &str) -> Result<Figures> {
    let disk = GfsDisk::open(&GfsAccess::new(Some(master.to_owned())), path, false)?;
    let (bytes, bs) = (SIZE_MIB << 20, (BS_KIB << 10) as usize);
    let mut buf = vec![0x5au8; bs];
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let write = timed(&mut || {
        for offset in (0..bytes).step_by(bs) {
            disk.write_at(offset, &buf)?;
        }
        Ok(disk.flush()?)
    })?;
    let read = timed(&mut || {
        for offset in (0..bytes).step_by(bs) {
            disk.read_at(offset, &mut buf)?;
        }
        Ok(())
    })?;
    let blocks = bytes / 4096;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 4096
    };
    let rand_read = timed(&mut || {
        for _ in 0..OPS {
            disk.read_at(next(), &mut buf[..4096])?;
        }
        Ok(())
    })?;
    let rand_write = timed(&mut || {
        for _ in 0..OPS {
            disk.write_at(next(), &buf[..4096])?;
        }
        Ok(disk.flush()?)
    })?;
    let mb = bytes as f64 / 1e6;
    Ok(Figures([mb / write, mb / read, OPS as f64 / rand_read, OPS as f64 / rand_write]))
}

/// kv SETs/s at `KV_CONNECTIONS` connections on a local file disk and on a gfs disk, alternating.
fn kv_rates(dir: &Path) -> Result<(f64, f64)> {
    let ns = kv::network("dbench")?;
    let cluster = Cluster::start(Some(&ns), 3, dir).context("gfs cluster in the namespace")?;
    let (mut local, mut gfs) = ((0, 0.0), (0, 0.0));
    for round in 0..ROUNDS {
        let file = kv::disk_file(dir, &format!("kv{round}.img"), 64 << 20)?;
        let vm = kv::boot(&ns, &file, &[], &[])?;
        let (n, secs) = kv_load(&ns, round)?;
        drop(vm);
        println!("round {round}: kv on a local file: {n} SETs in {secs:.2} s = {:.0}/s", n as f64 / secs);
        local = (local.0 + n, local.1 + secs);

        let path = format!("gfs:/bench/kv{round}.img");
        cluster.create_disk(&path, "64M")?;
        let vm = kv::boot(&ns, Path::new(&path), &[], &[("GFS_MASTER", cluster.master_addr.clone())])?;
        let (n, secs) = kv_load(&ns, round)?;
        drop(vm);
        println!("round {round}: kv on gfs: {n} SETs in {secs:.2} s = {:.0}/s", n as f64 / secs);
        gfs = (gfs.0 + n, gfs.1 + secs);
    }
    Ok((local.0 as f64 / local.1, gfs.0 as f64 / gfs.1))
}

/// `KV_CONNECTIONS` clients, each sending `KV_SETS` SETs one at a time; (SETs, seconds).
fn kv_load(ns: &ftvm_tests::NetNs, round: usize) -> Result<(usize, f64)> {
    let start = Arc::new(Barrier::new(KV_CONNECTIONS + 1));
    let workers: Vec<_> = (0..KV_CONNECTIONS)
        .map(|c| {
            let start = Arc::clone(&start);
            ns.spawn_within(move || -> Result<Duration> {
                let client = kv::Client::connect();
                // Everyone passes the barrier, connected or not, so a failure cannot hang the rest.
                start.wait();
                let mut client = client?;
                let began = Instant::now();
                for i in 0..KV_SETS {
                    let answer = client.request(&format!("SET r{round}c{c}k{i} value-{i:019}"))?;
                    if answer != "OK" {
                        bail!("SET answered {answer:?}");
                    }
                }
                Ok(began.elapsed())
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a kv client panicked"))??;
    }
    Ok((KV_CONNECTIONS * KV_SETS, began.elapsed().as_secs_f64()))
}
