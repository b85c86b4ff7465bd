//! Lazy deletion: deleted files wait in /.trash, then are collected, and chunkservers drop
//! their chunks.

mod common;

use common::{pattern, Cluster};
use std::time::{Duration, Instant};

#[test]
fn deleted_files_go_to_trash_then_their_chunks_are_collected() {
    let c = Cluster::start("gc", 3, &["--gc-delay-secs", "2"]);
    let client = c.client();
    client.mkdir("/d").unwrap();
    client.create("/d/f").unwrap();
    let data = pattern(1_000_000, 31);
    client.write_at("/d/f", 0, &data).unwrap();
    client.create("/keep").unwrap();
    client.write_at("/keep", 0, b"keep me").unwrap();
    assert_eq!(c.chunk_files(0).len(), 2);

    c.gfs_ok(&["rm", "/d/f"]);
    assert!(c.gfs_ok(&["ls", "/d"]).trim().is_empty());
    // Still readable in the trash for a while.
    let trash = client.list("/.trash").unwrap();
    assert_eq!(trash.len(), 1);
    assert!(trash[0].name.ends_with("d%f"), "{:?}", trash[0].name);
    let mut back = vec![0u8; data.len()];
    client.read_at(&format!("/.trash/{}", trash[0].name), 0, &mut back).unwrap();
    assert!(back == data);

    let t0 = Instant::now();
    while !(client.list("/.trash").unwrap().is_empty() && (0..3).all(|i| c.chunk_files(i).len() == 1)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "trash not collected");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut keep = [0u8; 7];
    client.read_at("/keep", 0, &mut keep).unwrap();
    assert_eq!(&keep, b"keep me");
}
