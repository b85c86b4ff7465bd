//! Copy-on-write snapshots.

mod common;

use common::{pattern, Cluster};
use storage::CHUNK_SIZE;

fn read_all(c: &storage::Client, path: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    assert_eq!(c.read_at(path, 0, &mut v).unwrap(), len);
    v
}

#[test]
fn snapshot_shares_chunks_until_written() {
    let mut c = Cluster::start("snap", 3, &["--lease-secs", "2"]);
    let client = c.client();
    client.mkdir("/vm").unwrap();
    client.create("/vm/disk").unwrap();
    let len = CHUNK_SIZE as usize + 1_000_000; // two chunks
    let orig = pattern(len, 11);
    client.write_at("/vm/disk", 0, &orig).unwrap();

    c.gfs_ok(&["snapshot", "/vm/disk", "/snap"]);
    client.snapshot("/vm", "/vm-copy").unwrap();
    let a = client.stat("/vm/disk").unwrap();
    let b = client.stat("/snap").unwrap();
    assert_eq!(a.size, b.size);
    assert_eq!(a.chunks[0].handle, b.chunks[0].handle, "snapshot shares chunks");

    // Writing the original copies chunk 0 only; the snapshots keep the old bytes.
    client.write_at("/vm/disk", 10, b"after the snapshot").unwrap();
    let a2 = client.stat("/vm/disk").unwrap();
    assert_ne!(a2.chunks[0].handle, b.chunks[0].handle);
    assert_eq!(a2.chunks[1].handle, b.chunks[1].handle);
    assert_eq!(a2.chunks[0].replicas.iter().filter(|r| !r.stale).count(), 3);
    let mut now = orig.clone();
    now[10..28].copy_from_slice(b"after the snapshot");
    let got = read_all(&client, "/vm/disk", len);
    if let Some(i) = got.iter().zip(&now).position(|(a, b)| a != b) {
        panic!("differs at {i}: {:?} vs {:?}", &got[i..i + 20], &now[i..i + 20]);
    }
    assert!(read_all(&client, "/snap", len) == orig);
    assert!(read_all(&client, "/vm-copy/disk", len) == orig);
    // Writing the snapshot copies too, leaving the original alone.
    client.write_at("/snap", CHUNK_SIZE + 5, b"snap only").unwrap();
    let mut snap = orig.clone();
    snap[CHUNK_SIZE as usize + 5..CHUNK_SIZE as usize + 14].copy_from_slice(b"snap only");
    assert!(read_all(&client, "/snap", len) == snap);
    assert!(read_all(&client, "/vm/disk", len) == now);

    // Deleting the original leaves the snapshots whole, across a master restart.
    client.delete("/vm/disk").unwrap();
    c.kill_master();
    c.start_master();
    c.settle();
    assert!(read_all(&client, "/snap", len) == snap);
    assert!(read_all(&client, "/vm-copy/disk", len) == orig);
    client.write_at("/vm-copy/disk", 0, b"x").unwrap_or_else(|e| panic!("{e}"));
}
