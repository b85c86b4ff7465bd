//! The replicated master (`gfs master --peers A,B,C`) under failure, as real processes on
//! loopback: the leader killed under a writing client, a leader cut off, a compare-and-set race
//! across a change of leader, and all three restarted.

mod common;
mod ha;

use common::pattern;
use ha::Replicas;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::client::RetryPolicy;
use storage::error::ErrorKind;
use storage::Client;

const FILE_LEN: usize = 8 * 1024;

fn write_file(c: &Client, path: &str, seed: u64) -> storage::Result<()> {
    c.create(path)?;
    c.open(path)?.write_at(0, &pattern(FILE_LEN, seed))
}

fn check_file(c: &Client, path: &str, seed: u64) {
    let f = c.open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut buf = vec![0u8; FILE_LEN];
    let n = f.read_at(0, &mut buf).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert_eq!(n, FILE_LEN, "{path}: short");
    assert!(buf == pattern(FILE_LEN, seed), "{path}: wrong bytes");
}

/// A client keeps creating and writing files while the leader is killed with SIGKILL: a new
/// leader takes over within a few seconds and every file whose write was acknowledged, before
/// or after, is there with its bytes.
#[test]
fn killing_the_leader_under_a_writing_client_loses_nothing_acknowledged() {
    let mut r = Replicas::start("ha-kill", 3, &[]);
    let client = r.client();
    client.mkdir("/w").unwrap();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // An error is an outcome the client could not learn (the leader died under the
                // request): not acknowledged, so not checked.
                if write_file(&client, &format!("/w/f{i}"), i).is_ok() {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
            }
        })
    };
    Replicas::wait_until_count(&acked, 20, Duration::from_secs(30));
    let old = r.leader(Duration::from_secs(5));
    r.kill_master(old);
    let killed = Instant::now();
    let new = r.leader(Duration::from_secs(10));
    let took = killed.elapsed();
    assert_ne!(new, old);
    assert!(took < Duration::from_secs(5), "a new leader only after {took:?}");
    let before = acked.lock().unwrap().len();
    Replicas::wait_until_count(&acked, before + 20, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    for &i in &acked {
        check_file(&client, &format!("/w/f{i}"), i);
    }
    // The killed replica comes back as a follower and catches up.
    r.start_master(old);
    let probe = r.direct(old);
    common::Cluster::wait_until(
        "the restarted replica names the leader",
        Duration::from_secs(10),
        || matches!(probe.list("/w"), Err(e) if e.kind() == Some(ErrorKind::NotLeader) && e.to_string().contains(&r.addrs[new])),
    );
    eprintln!("new leader {took:?} after the kill; {} files acknowledged, all there", acked.len());
}

/// A client that may not wait for the master (`master_wait` zero, as the VMM's go-live race
/// uses, which retries on its own) given the replicas with a follower first: the follower's
/// refusal names the leader, and the same call goes there and is answered.
#[test]
fn a_client_without_patience_goes_to_the_leader_a_follower_names() {
    let r = Replicas::start("ha-impatient", 0, &[]);
    let leader = r.leader(Duration::from_secs(5));
    let follower = (leader + 1) % 3;
    let others: Vec<&str> = (0..3).filter(|&i| i != follower).map(|i| r.addrs[i].as_str()).collect();
    let list = format!("{},{}", r.addrs[follower], others.join(","));
    let impatient = Client::with_retry(&list, RetryPolicy { master_wait: Duration::ZERO, ..RetryPolicy::default() });
    let (g, _) = impatient.register("race").unwrap_or_else(|e| panic!("a read through {list}: {e}"));
    assert_eq!(impatient.compare_and_set("race", g, "impatient").unwrap(), g + 1);
}

/// A leader stopped (SIGSTOP: alive, but hearing and saying nothing) is replaced by the
/// majority; once it runs again it follows and refuses writes, naming the new leader. A leader
/// whose followers are both stopped steps down and takes no write.
#[test]
fn a_cut_off_leader_steps_down_and_the_majority_elects() {
    let mut r = Replicas::start("ha-partition", 3, &[]);
    let client = r.client();
    client.mkdir("/p").unwrap();
    let old = r.leader(Duration::from_secs(5));
    r.pause(old);
    let paused = Instant::now();
    let new = r.leader(Duration::from_secs(10));
    assert_ne!(new, old);
    eprintln!("majority elected after {:?}", paused.elapsed());
    // (Straight to the new leader: a request already sent to the stopped replica would wait
    // out the connection's I/O timeout before the client could try another.)
    r.direct(new).create("/p/while-cut-off").unwrap();
    r.resume(old);
    let probe = r.direct(old);
    common::Cluster::wait_until(
        "the old leader refuses writes naming the new one",
        Duration::from_secs(10),
        || matches!(probe.create("/p/by-old"), Err(e) if e.kind() == Some(ErrorKind::NotLeader) && e.to_string().contains(&r.addrs[new])),
    );

    // Now cut the leader off from both followers.
    let followers: Vec<usize> = (0..3).filter(|&i| i != new).collect();
    for &f in &followers {
        r.pause(f);
    }
    let cut = Instant::now();
    let lone = r.direct(new);
    common::Cluster::wait_until(
        "a leader without a majority steps down",
        Duration::from_secs(10),
        || matches!(lone.register("vm"), Err(e) if e.kind() == Some(ErrorKind::NotLeader)),
    );
    eprintln!("lone leader stepped down {:?} after losing its majority", cut.elapsed());
    assert_eq!(r.write_refusal(new, "/p/after-step-down"), Some(ErrorKind::NotLeader), "a lone leader took a write");
    for &f in &followers {
        r.resume(f);
    }
    r.leader(Duration::from_secs(10));
    let names: Vec<String> = client.list("/p").unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"while-cut-off".to_string()), "{names:?}");
    assert!(!names.contains(&"after-step-down".to_string()), "a refused write happened: {names:?}");
    assert!(!names.contains(&"by-old".to_string()), "{names:?}");
}

/// Threads race `compare_and_set` on one register, each always expecting the generation it
/// last saw, while the leader is killed: each generation has exactly one acknowledged winner,
/// and no one ever sees the generation go back.
#[test]
fn a_compare_and_set_race_across_a_leader_change_has_one_winner_per_generation() {
    let mut r = Replicas::start("ha-cas", 0, &[]);
    let wins: Arc<Mutex<BTreeMap<u64, Vec<String>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let racers: Vec<_> = (0..4)
        .map(|t| {
            let (client, wins, stop) = (r.client(), wins.clone(), stop.clone());
            std::thread::spawn(move || {
                let me = format!("racer-{t}");
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match client.compare_and_set("vm", seen, &me) {
                        Ok(g) => {
                            assert_eq!(g, seen + 1);
                            wins.lock().unwrap().entry(g).or_default().push(me.clone());
                            seen = g;
                        }
                        Err(_) => {
                            if let Ok((g, _)) = client.register("vm") {
                                assert!(g >= seen, "{me} saw generation {g} after {seen}");
                                seen = g;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let count = || wins.lock().unwrap().len();
    common::Cluster::wait_until("some generations won", Duration::from_secs(30), || count() >= 30);
    let old = r.leader(Duration::from_secs(5));
    r.kill_master(old);
    let at_kill = count();
    common::Cluster::wait_until("generations won after the kill", Duration::from_secs(30), || count() >= at_kill + 30);
    r.start_master(old);
    let at_restart = count();
    common::Cluster::wait_until("generations won after the restart", Duration::from_secs(30), || {
        count() >= at_restart + 10
    });
    stop.store(true, Ordering::Relaxed);
    for t in racers {
        t.join().unwrap();
    }
    let wins = wins.lock().unwrap().clone();
    for (g, who) in &wins {
        assert_eq!(who.len(), 1, "generation {g} won by {who:?}");
    }
    let (last, holder) = r.client().register("vm").unwrap();
    let (&top, who) = wins.last_key_value().unwrap();
    assert!(last >= top, "register at {last}, but {top} was acknowledged");
    if last == top {
        assert_eq!(&holder, &who[0]);
    }
    eprintln!("{} generations won, register at {last}", wins.len());
}

/// Everything acknowledged is there after all three replicas are killed and restarted, with
/// snapshots taken (and one sent to a replica that was down) along the way.
#[test]
fn restarting_all_three_keeps_everything() {
    let mut r = Replicas::start("ha-restart", 3, &["--checkpoint-every", "16"]);
    let client = r.client();
    client.mkdir("/r").unwrap();
    let leader = r.leader(Duration::from_secs(5));
    let behind = (leader + 1) % 3;
    r.kill_master(behind);
    for i in 0..40u64 {
        write_file(&client, &format!("/r/f{i}"), i).unwrap();
    }
    let (g, _) = client.register("fence").unwrap();
    client.compare_and_set("fence", g, "holder-a").unwrap();
    // The replica that was down gets the leader's snapshot, then has to serve as leader.
    r.start_master(behind);
    let snapshot_in = r.dir.join(format!("m{behind}"));
    common::Cluster::wait_until("the replica that was down receives a snapshot", Duration::from_secs(20), || {
        std::fs::read_dir(&snapshot_in).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
    });
    for i in 0..3 {
        r.kill_master(i);
    }
    for i in 0..3 {
        r.start_master(i);
    }
    r.settle();
    let names = client.list("/r").unwrap();
    assert_eq!(names.len(), 40, "{names:?}");
    for i in 0..40u64 {
        check_file(&client, &format!("/r/f{i}"), i);
    }
    assert_eq!(client.register("fence").unwrap(), (g + 1, "holder-a".to_string()));
    // And the group goes on taking writes.
    write_file(&client, "/r/after", 99).unwrap();
    check_file(&client, "/r/after", 99);
}
