//! Record append: atomic records at offsets chosen by the primary, concurrent appenders,
//! padding and moving on at a chunk's end.

mod common;

use common::{pattern, Cluster};
use std::io::Write;
use std::process::Stdio;
use storage::CHUNK_SIZE;

fn cli_append(c: &Cluster, path: &str, data: &[u8]) -> u64 {
    let mut child = common::gfs_command()
        .args(["--master", &c.master_addr, "append", path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn cli_appends_print_offsets() {
    let c = Cluster::start("append-cli", 3, &[]);
    assert_eq!(cli_append(&c, "/log", b"first record\n"), 0);
    assert_eq!(cli_append(&c, "/log", b"second\n"), 13);
    assert_eq!(c.gfs_ok(&["cat", "/log"]), "first record\nsecond\n");
}

#[test]
fn concurrent_appenders_get_whole_records_at_distinct_offsets() {
    let c = Cluster::start("append-conc", 3, &[]);
    c.client().create("/log").unwrap();
    let results: Vec<(u64, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let client = c.client();
                s.spawn(move || {
                    (0..40u64)
                        .map(|i| {
                            let rec = pattern(1000 + ((t * 40 + i) as usize * 7919) % 300_000, t * 1000 + i);
                            (client.append("/log", &rec).unwrap(), rec)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let client = c.client();
    let mut spans: Vec<(u64, u64)> = results.iter().map(|(o, r)| (*o, *o + r.len() as u64)).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "records overlap: {w:?}");
    }
    for (off, rec) in &results {
        assert!(off % CHUNK_SIZE + rec.len() as u64 <= CHUNK_SIZE, "record straddles a chunk");
        let mut back = vec![0u8; rec.len()];
        assert_eq!(client.read_at("/log", *off, &mut back).unwrap(), rec.len());
        assert!(&back == rec, "record at {off} damaged");
    }
}

#[test]
fn records_that_do_not_fit_move_to_the_next_chunk() {
    let c = Cluster::start("append-pad", 3, &[]);
    let client = c.client();
    client.create("/big").unwrap();
    let rec = pattern(15 * 1024 * 1024, 42);
    let mut offs = Vec::new();
    for _ in 0..6 {
        offs.push(client.append("/big", &rec).unwrap());
    }
    // Four 15 MiB records fit in the first chunk; the fifth starts the second chunk.
    assert_eq!(offs[..5], [0, 15 << 20, 30 << 20, 45 << 20, CHUNK_SIZE]);
    for off in offs {
        let mut back = vec![0u8; rec.len()];
        client.read_at("/big", off, &mut back).unwrap();
        assert!(back == rec);
    }
    let too_big = vec![0u8; (CHUNK_SIZE / 4 + 1) as usize];
    assert!(client.append("/big", &too_big).is_err());
}
