//! The rebalancer: an empty chunkserver joining a full cluster gets a fair share of replicas.

mod common;

use common::{pattern, ChunkServerProc, Cluster};
use std::time::{Duration, Instant};

const FILES: usize = 12;

#[test]
fn new_empty_chunkserver_gets_a_fair_share_of_replicas() {
    let mut c = Cluster::start("rebalance", 3, &["--rebalance-interval-secs", "0.3", "--lease-secs", "1"]);
    let client = c.client();
    let mut files = Vec::new();
    for i in 0..FILES {
        let path = format!("/f{i}");
        let data = pattern(300_000 + i * 4099, 40 + i as u64);
        client.create(&path).unwrap();
        client.write_at(&path, 0, &data).unwrap();
        files.push((path, data));
    }
    let total = FILES * 3;
    assert_eq!((0..3).map(|i| c.chunk_files(i).len()).sum::<usize>(), total);

    // An empty fourth chunkserver joins.
    c.cs.push(ChunkServerProc { addr: common::free_addr(), dir: c.dir.join("cs3"), rack: "rack3".into(), child: None });
    c.start_cs(3);
    let newcomer = c.cs[3].addr.clone();

    let t0 = Instant::now();
    let fair = total / 4;
    loop {
        let mut on_new = 0;
        let mut whole = true;
        for (path, _) in &files {
            let st = client.stat(path).unwrap();
            for ch in &st.chunks {
                let good = ch.replicas.iter().filter(|r| !r.stale && !r.corrupt).count();
                whole &= good == 3;
                on_new += ch.replicas.iter().filter(|r| r.server == newcomer).count();
            }
        }
        let on_disk: Vec<usize> = (0..4).map(|i| c.chunk_files(i).len()).collect();
        if whole && on_new + 1 >= fair && on_disk.iter().sum::<usize>() == total && on_disk[3] == on_new {
            eprintln!("balanced after {:?}: {on_new} replicas on the new server, on disk {on_disk:?}", t0.elapsed());
            assert!(on_disk.iter().all(|&n| n + 2 >= fair && n <= fair + 2), "{on_disk:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "not balanced: {on_new} replicas on the new server, every chunk whole: {whole}, on disk {on_disk:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let fsck = c.gfs_ok(&["fsck"]);
    assert!(fsck.contains(&format!("{FILES} healthy, 0 under-replicated, 0 missing")), "{fsck}");
    for (path, data) in &files {
        let mut back = vec![0u8; data.len()];
        assert_eq!(client.read_at(path, 0, &mut back).unwrap(), data.len());
        assert!(&back == data, "{path} differs after rebalancing");
    }
    let log = std::fs::read_to_string(c.dir.join("master.log")).unwrap();
    if std::env::var_os("GFS_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(log.contains("rebalanced a replica"), "moves are logged");
}
