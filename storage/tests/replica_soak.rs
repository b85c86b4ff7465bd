//! Soak: many files written with random piece sizes, windows and durability levels, each
//! read back from every replica the master counts current (not through the client, which
//! would hide a bad replica behind a good one). It found the copy-during-grant bug that
//! `master/custody.rs` closes (about one bad replica in 500 files on a loaded machine).
//!
//! `SOAK_SECS=600 cargo test --release -p storage --test replica_soak -- --ignored --nocapture`
mod common;

use common::{pattern, Cluster};
use std::time::{Duration, Instant};
use storage::protocol::{ChunkReply, ChunkRequest, Conn, Incoming, Reply};
use storage::{Durability, StreamOpts, CHUNK_SIZE};

fn read_range(addr: &str, handle: u64, version: u32, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut c = Conn::connect(addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < offset + len {
        let n = (offset + len - pos).min(4 << 20);
        c.send(&ChunkRequest::Read { handle, version, offset: pos, len: n }).map_err(|e| e.to_string())?;
        match c.recv::<Reply<ChunkReply>>().map_err(|e| e.to_string())? {
            Ok(ChunkReply::Reading { len: l }) if l == n => {}
            other => return Err(format!("{other:?}")),
        }
        let mut got = 0u64;
        let mut frame = Vec::new();
        while got < n {
            match c.recv_frame(&mut frame).map_err(|e| e.to_string())? {
                Incoming::Data => {
                    got += frame.len() as u64;
                    out.extend_from_slice(&frame);
                }
                Incoming::Msg => return Err("msg".into()),
            }
        }
        pos += n;
    }
    Ok(out)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
#[ignore = "soak (2 minutes by default); see the command at the top of the file"]
fn every_replica_counted_current_holds_every_acknowledged_byte() {
    let secs: u64 = std::env::var("SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let c = Cluster::start("replica-soak", 3, &[]);
    let client = c.client();
    let mut rng = Rng(std::process::id() as u64 | 1);
    let t0 = Instant::now();
    let mut case = 0u64;
    let mut bad = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        case += 1;
        let path = format!("/r{case}");
        client.create(&path).unwrap();
        let len = if rng.below(2) == 0 { rng.below(10_000) + 1 } else { rng.below(7_000_000) + 1 } as usize;
        let offset = match rng.below(3) {
            0 => 0,
            1 => rng.below(300_000),
            _ => CHUNK_SIZE - 1 - rng.below(3_000_000),
        };
        let piece = [rng.below(5000) + 1, (rng.below(63) + 1) * 65536, 4 << 20][rng.below(3) as usize] as usize;
        let window = (rng.below(9) + 1) as usize;
        let flush = rng.below(4) != 0;
        let data = pattern(len, case);
        let len = len.min(piece * 300);
        let data = &data[..len];
        let writer = if flush { client.with_durability(Durability::Flush) } else { client.clone() };
        let mut src = data;
        writer.write_stream(&path, offset, &mut src, StreamOpts { piece, window }).unwrap();
        writer.sync(&path).unwrap();
        let st = client.stat(&path).unwrap();
        for ch in &st.chunks {
            let cstart = ch.index * CHUNK_SIZE;
            let lo = offset.max(cstart);
            let hi = (offset + len as u64).min(cstart + CHUNK_SIZE);
            if lo >= hi {
                continue;
            }
            let want = &data[(lo - offset) as usize..(hi - offset) as usize];
            for r in ch.replicas.iter().filter(|r| !r.stale) {
                match read_range(&r.server, ch.handle, r.version, lo - cstart, hi - lo) {
                    Ok(got) if got == want => {}
                    Ok(got) => {
                        let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                        let zeros = got[first..].iter().take(64).all(|&b| b == 0);
                        eprintln!(
                            "BAD case {case} path {path} flush {flush} piece {piece} window {window} len {len} offset {offset}: replica {} (stale {} v{}) of chunk {} idx {} differs at chunk offset {} (zeros: {zeros})",
                            r.server, r.stale, r.version, ch.handle, ch.index, lo - cstart + first as u64
                        );
                        bad += 1;
                    }
                    Err(e) => eprintln!("case {case}: reading {} failed: {e}", r.server),
                }
            }
        }
        client.delete(&path).unwrap();
    }
    eprintln!("{case} cases, {bad} bad replicas; logs in {}", c.dir.display());
    assert_eq!(bad, 0);
}
