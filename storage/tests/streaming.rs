//! The streaming data path against a real cluster (master and chunkserver processes on
//! loopback): any piece size, window depth, source read pattern and durability level writes
//! and reads back exactly the same bytes.

mod common;

use common::{pattern, Cluster};
use proptest::prelude::*;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use storage::{Durability, StreamOpts, CHUNK_SIZE};

/// A source that hands out its bytes in reads of the given sizes (cycled), as a pipe or a
/// socket would, so pieces are filled by several short reads.
struct Choppy<'a> {
    data: &'a [u8],
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = want.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn piece_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..5000,
        (1usize..64).prop_map(|k| k * 64 * 1024),
        (1usize..8).prop_map(|k| k * 1024 * 1024 + 4097),
        Just(4 * 1024 * 1024),
    ]
}

fn start_offset() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..300_000, (1u64..3_000_000).prop_map(|back| CHUNK_SIZE - back)]
}

static CASE: AtomicU64 = AtomicU64::new(0);

#[test]
fn any_pieces_and_windows_write_and_read_back_the_same_bytes() {
    let c = Cluster::start("streaming", 3, &[]);
    let client = c.client();
    let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(
        len in prop_oneof![0usize..10_000, 10_000usize..7_000_000],
        offset in start_offset(),
        write_piece in piece_size(),
        write_window in 1usize..10,
        read_piece in piece_size(),
        read_window in 1usize..10,
        reads in proptest::collection::vec(1usize..3_000_000, 1..5),
        flush in any::<bool>(),
    )| {
        // Every piece is an fsync'd mutation on three replicas: thousands of tiny ones take
        // minutes on a loaded machine and test nothing more than hundreds do.
        let len = len.min(write_piece.saturating_mul(300));
        let path = format!("/p{}", CASE.fetch_add(1, Ordering::Relaxed));
        client.create(&path).unwrap();
        let data = pattern(len, len as u64 ^ offset);
        let writer = if flush { client.with_durability(Durability::Flush) } else { client.clone() };
        let mut src = Choppy { data: &data, pos: 0, sizes: reads, turn: 0 };
        let opts = StreamOpts { piece: write_piece, window: write_window };
        let written = writer.write_stream(&path, offset, &mut src, opts).unwrap();
        prop_assert_eq!(written, len as u64);
        writer.sync(&path).unwrap();

        let size = if len == 0 { 0 } else { offset + len as u64 };
        prop_assert_eq!(client.stat(&path).unwrap().size, size);
        // The whole file through the windowed reader: zeros before `offset`, then the data.
        let mut out = Vec::new();
        // Likewise for reads: at most a few thousand pieces over the whole file (zeros included).
        let read_piece = read_piece.max((size / 2000) as usize).min(storage::MAX_RECORD as usize);
        let opts = StreamOpts { piece: read_piece, window: read_window };
        let n = client.read_stream(&path, &mut out, opts).unwrap();
        prop_assert_eq!(n, size);
        let (front, back) = out.split_at(size.saturating_sub(len as u64) as usize);
        prop_assert!(front.iter().all(|&b| b == 0), "bytes before the write offset are not zero");
        prop_assert!(back == &data[..], "streamed read differs from what was written");
        // And through read_at, which splits large reads into windowed pieces too.
        let mut again = vec![0xAAu8; len + 1000];
        let got = client.read_at(&path, offset, &mut again).unwrap();
        prop_assert_eq!(got, len);
        prop_assert!(again[..len] == data[..], "read_at differs from what was written");
        client.delete(&path).unwrap();
    });
}

#[test]
fn large_write_at_and_read_at_run_windowed_and_match() {
    let c = Cluster::start("streaming-at", 3, &[]);
    let client = c.client();
    client.create("/f").unwrap();
    // 70 MiB at an unaligned offset: 18 mutations across two chunks, several in flight.
    let data = pattern(70 * 1024 * 1024, 9);
    let off = 12_345u64;
    client.write_at("/f", off, &data).unwrap();
    let mut back = vec![0u8; data.len() + 10];
    assert_eq!(client.read_at("/f", off, &mut back).unwrap(), data.len());
    assert!(back[..data.len()] == data[..]);
    // A read that starts inside the data and runs past the end is short by exactly the rest.
    let mut tail = vec![0u8; 9 * 1024 * 1024];
    let at = off + data.len() as u64 - 5_000_000;
    assert_eq!(client.read_at("/f", at, &mut tail).unwrap(), 5_000_000);
    assert!(tail[..5_000_000] == data[data.len() - 5_000_000..]);
}

#[test]
fn put_sync_and_write_sync_store_the_same_bytes_as_the_default() {
    let c = Cluster::start("put-sync", 3, &[]);
    let src = c.dir.join("src.bin");
    let data = pattern(9 * 1024 * 1024 + 77, 4);
    std::fs::write(&src, &data).unwrap();
    c.gfs_ok(&["put", src.to_str().unwrap(), "/strong"]);
    c.gfs_ok(&["put", "--sync", src.to_str().unwrap(), "/light"]);
    for f in ["/strong", "/light"] {
        let mut out = Vec::new();
        assert_eq!(c.client().read_to(f, &mut out).unwrap(), data.len() as u64);
        assert!(out == data, "{f} differs");
    }
    // `gfs write --sync` streams stdin at an offset and syncs before exiting.
    let out = common::gfs_command()
        .args(["--master", &c.master_addr, "write", "/light", "--offset", "5000000", "--sync"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(&data[..3_000_000])?;
            ch.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut model = data.clone();
    model[5_000_000..8_000_000].copy_from_slice(&data[..3_000_000]);
    let mut back = Vec::new();
    c.client().read_to("/light", &mut back).unwrap();
    assert!(back == model);
    // Writing to a missing file fails with one line and no panic.
    let out = c.gfs(&["write", "/missing", "--offset", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("gfs: "));
}
