//! Latency of small durable writes, as a kv guest's group commit makes them: `N` writes of
//! `BYTES` at advancing 512-byte-aligned offsets, each acknowledged only once every replica
//! fdatasynced it, against the same writes with `pwrite` + `fdatasync` on a local file. Each
//! round also writes the same bytes sent with the write to the primary (`WriteInline`, the
//! default for small writes) and pushed along the chain first (as before it), durable and
//! acknowledged from memory (`Durability::Flush`, no sync: the protocol's own cost).
//!
//! Run: `FT_KEYS=DIR cargo run --release -p storage --example durable_latency -- MASTER LOCAL_DIR
//! [N] [BYTES]` (without `FT_KEYS`, the cluster must run `--insecure`). `LOCAL_DIR` should be on
//! the chunkservers' disk.

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

fn percentiles(mut t: Vec<Duration>) -> String {
    t.sort();
    let at = |p: f64| t[((t.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    format!("p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms", at(0.5), at(0.9), at(0.99))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let master = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:7000".into());
    let dir = std::path::PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "/tmp".into()));
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(300);
    let bytes: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let data = vec![0x5au8; bytes];
    let step = bytes.div_ceil(512) as u64 * 512;

    let keys = std::env::var_os("FT_KEYS").map(std::path::PathBuf::from);
    seal::install(seal::Security::resolve(keys.as_deref(), keys.is_none())?);
    let client = storage::Client::new(&master);
    let path = format!("/lat{}", std::process::id());
    client.create(&path)?;
    // Sized up front, as a VM disk is: no write then waits on the master to raise the size.
    client.extend_size(&path, (n as u64 * 4 + 1) * step)?;
    let local =
        std::fs::File::options().create(true).truncate(true).read(true).write(true).open(dir.join("lat.img"))?;
    local.set_len(64 << 20)?;
    let inline = client.clone();
    let pushed = client.with_inline_writes_up_to(0);
    let writers = [
        ("durable, sent with the write", inline.clone()),
        ("durable, pushed first", pushed.clone()),
        ("from memory, sent with the write", inline.with_durability(storage::Durability::Flush)),
        ("from memory, pushed first", pushed.with_durability(storage::Durability::Flush)),
    ];
    let mut gfs: Vec<Vec<Duration>> = vec![Vec::new(); writers.len()];
    let mut l = Vec::new();
    for i in 0..n as u64 {
        // Each writer at its own offsets, one after another in every round, so a slow spell of
        // the machine falls on all of them alike; who goes first turns round by round, so none
        // always follows a durable write (whose journal commit may still hold the disk).
        for k in 0..writers.len() {
            let w = (i as usize + k) % writers.len();
            let writer = &writers[w].1;
            let at = (i * writers.len() as u64 + w as u64) * step;
            let t = Instant::now();
            writer.write_at(&path, at, &data)?;
            gfs[w].push(t.elapsed());
        }
        let t = Instant::now();
        local.write_all_at(&data, i * step)?;
        local.sync_data()?;
        l.push(t.elapsed());
    }
    let mut out = std::io::stdout();
    for ((what, _), times) in writers.iter().zip(gfs) {
        writeln!(out, "gfs write of {bytes} B, {what}: {}", percentiles(times))?;
    }
    writeln!(out, "local pwrite+fdatasync of {bytes} B: {}", percentiles(l))?;
    Ok(())
}
