//! Benchmark helpers behind `gfs bench-*` (used by storage/bench/gfs-bench.sh).

use anyhow::{Context, Result};
use std::time::Instant;
use storage::Client;

pub fn meta(c: &Client, threads: usize, ops: usize, dir: &str) -> Result<()> {
    let _ = c.mkdir(dir);
    let per = ops / threads.max(1);
    let run = |what: &str, f: &(dyn Fn(&Client, String) -> storage::Result<()> + Sync)| -> Result<()> {
        let t0 = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let c = c.clone();
                    s.spawn(move || -> storage::Result<()> {
                        for i in 0..per {
                            f(&c, format!("{dir}/f{t}-{i}"))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in hs {
                h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
            }
            Ok(())
        })?;
        let el = t0.elapsed().as_secs_f64();
        outln!(
            "{what}: {} ops in {el:.3} s = {:.0} ops/s ({threads} threads)",
            per * threads,
            (per * threads) as f64 / el
        );
        Ok(())
    };
    run("create", &|c, p| c.create(&p))?;
    run("lookup", &|c, p| c.stat(&p).map(|_| ()))?;
    Ok(())
}

pub fn net(mib: u64) -> Result<()> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding loopback")?;
    let addr = l.local_addr().context("local address")?;
    let rx = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr).context("connecting over loopback")?;
    let buf = vec![7u8; 1 << 20];
    let t0 = Instant::now();
    for _ in 0..mib {
        s.write_all(&buf).context("sending")?;
    }
    drop(s);
    let got = rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?.context("receiving")?;
    let el = t0.elapsed().as_secs_f64();
    outln!("loopback tcp: {} MiB in {el:.3} s = {:.0} MB/s", got >> 20, got as f64 / el / 1e6);
    Ok(())
}

/// `threads` clients each append `records` records of `size` bytes to `path`.
pub fn append(c: &Client, threads: usize, records: usize, size: usize, path: &str) -> Result<()> {
    let _ = c.create(path);
    let rec = vec![0x5au8; size];
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let c = c.clone();
                let rec = &rec;
                s.spawn(move || -> storage::Result<()> {
                    for _ in 0..records {
                        c.append(path, rec)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        }
        Ok(())
    })?;
    let el = t0.elapsed().as_secs_f64();
    let n = threads * records;
    outln!(
        "record append: {n} records of {size} bytes in {el:.3} s = {:.0} MB/s, {:.0} records/s ({threads} clients)",
        (n * size) as f64 / el / 1e6,
        n as f64 / el
    );
    Ok(())
}

/// `ops` compare_and_set calls in a row on register `name`, each expecting the generation the
/// previous one returned: prints the latency percentiles of the test-and-set used at go-live.
pub fn lock(c: &Client, ops: usize, name: &str) -> Result<()> {
    let (mut generation, _) = c.register(name).context("reading the register")?;
    let mut latencies = Vec::with_capacity(ops);
    for i in 0..ops {
        let t0 = Instant::now();
        generation = c.compare_and_set(name, generation, &format!("bench-{i}")).context("compare_and_set")?;
        latencies.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    outln!(
        "compare_and_set: {ops} calls, latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    Ok(())
}
