//! Master crash recovery: kill -9 during creates, checkpoint plus log tail, torn log tail.

mod common;

use common::Cluster;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn names(c: &Cluster, dir: &str) -> BTreeSet<String> {
    let t0 = Instant::now();
    loop {
        match c.client().list(dir) {
            Ok(v) => return v.into_iter().map(|e| e.name).collect(),
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(20), "master did not come back: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn kill_9_during_a_stream_of_creates_loses_no_acknowledged_create() {
    let mut c = Cluster::start("kill9", 0, &["--checkpoint-every", "300"]);
    c.client().mkdir("/c").unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (acked, stop, addr) = (acked.clone(), stop.clone(), c.master_addr.clone());
            std::thread::spawn(move || {
                let client = storage::Client::new(&addr);
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("f{t}-{i}");
                    if client.create(&format!("/c/{name}")).is_ok() {
                        acked.lock().unwrap().push(name);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let creates stream for a while, then kill -9 the master in the middle of them.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 1000 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill_master();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "only {} creates acknowledged", acked.len());

    c.start_master();
    let present = names(&c, "/c");
    let missing: Vec<_> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged creates lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // And the restarted master keeps working.
    c.client().create("/c/after-restart").unwrap();
}

#[test]
fn restart_from_checkpoint_plus_log_tail_and_torn_tail() {
    let mut c = Cluster::start("ckpt", 0, &["--checkpoint-every", "50"]);
    let client = c.client();
    client.mkdir("/d").unwrap();
    for i in 0..120 {
        client.create(&format!("/d/f{i}")).unwrap();
    }
    client.rename("/d/f0", "/d/renamed").unwrap();
    client.delete("/d/f1").unwrap();
    // Wait for the background checkpoint to land.
    let dir = c.master_dir();
    let t0 = Instant::now();
    let ckpts = loop {
        let v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ckpt-") && n.ends_with(".ckpt"))
            .collect();
        if !v.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!ckpts.is_empty(), "no checkpoint written");
    let newest: u64 = ckpts
        .iter()
        .filter_map(|n| n.trim_start_matches("ckpt-").trim_end_matches(".ckpt").parse().ok())
        .max()
        .unwrap();
    // Some records come after the newest checkpoint: there is a log tail to replay.
    let mut segs: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("log-").and_then(|s| s.parse().ok()).map(|l| (l, e.path()))
        })
        .collect();
    segs.sort();
    let (last_first, last_path) = segs.last().cloned().unwrap();
    assert!(last_first > newest);
    assert!(std::fs::metadata(&last_path).unwrap().len() > 0, "no log tail after the checkpoint");

    c.kill_master();
    // Tear the tail: half a record of garbage at the end of the log.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&last_path).unwrap();
        f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2]).unwrap();
    }
    c.start_master();
    let present = names(&c, "/d");
    assert_eq!(present.len(), 119);
    assert!(present.contains("renamed") && !present.contains("f0") && !present.contains("f1"));
    for i in 2..120 {
        assert!(present.contains(&format!("f{i}")), "f{i} missing");
    }
    // New records after the cut tail are readable after another restart.
    c.client().create("/d/after").unwrap();
    c.kill_master();
    c.start_master();
    assert!(names(&c, "/d").contains("after"));
    let log = std::fs::read_to_string(c.dir.join("master.log")).unwrap();
    assert!(log.contains("loaded checkpoint"), "{log}");
    assert!(log.contains("cutting torn log tail"), "{log}");
}
