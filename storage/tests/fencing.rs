//! Test-and-set registers on the master and fencing of writes by their generation.

mod common;

use common::Cluster;
use storage::error::ErrorKind;

#[test]
fn lock_command_sets_and_reports_conflicts() {
    let c = Cluster::start("lock", 1, &[]);
    assert_eq!(c.gfs_ok(&["lock", "vm1"]).trim(), "vm1 generation 0 holder");
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "0", "--holder", "hostA"]).trim(), "1");
    let out = c.gfs(&["lock", "vm1", "--expect", "0", "--holder", "hostB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostA") && err.contains("generation 1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "1", "--holder", "hostB"]).trim(), "2");
    assert_eq!(c.gfs_ok(&["lock", "vm1"]).trim(), "vm1 generation 2 holder hostB");
}

#[test]
fn writes_with_an_older_generation_are_refused() {
    let mut c = Cluster::start("fence", 3, &["--lease-secs", "2"]);
    let client = c.client();
    client.create("/disk").unwrap();
    client.bind("/disk", "vm").unwrap();
    let g1 = client.compare_and_set("vm", 0, "A").unwrap();
    let a = client.fenced("vm", g1);
    a.write_at("/disk", 0, b"written by A").unwrap();
    // Binding a file that already has data is refused.
    client.create("/other").unwrap();
    client.write_at("/other", 0, b"x").unwrap();
    assert!(client.bind("/other", "vm").is_err());

    // B wins the register: A is fenced off from then on, B writes.
    let g2 = client.compare_and_set("vm", g1, "B").unwrap();
    assert_eq!(g2, g1 + 1);
    let e = a.write_at("/disk", 0, b"A again!!!!!").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    let e = client.write_at("/disk", 0, b"no token").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    let b = client.fenced("vm", g2);
    b.write_at("/disk", 0, b"written by B").unwrap();
    let mut buf = [0u8; 12];
    client.read_at("/disk", 0, &mut buf).unwrap();
    assert_eq!(&buf, b"written by B");
    // A losing CAS names the holder and generation.
    let e = client.compare_and_set("vm", g1, "A").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Conflict));
    assert!(e.to_string().contains("\"B\"") && e.to_string().contains(&format!("generation {g2}")), "{e}");

    // Everything survives a master restart and chunkserver restarts.
    c.kill_master();
    for i in 0..3 {
        c.kill_cs(i);
    }
    c.start_master();
    for i in 0..3 {
        c.start_cs(i);
    }
    c.settle();
    assert_eq!(client.register("vm").unwrap(), (g2, "B".to_string()));
    let e = a.write_at("/disk", 0, b"A after restart").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
}

/// Sixteen threads race `compare_and_set` on one register, each retrying with the generation
/// it last saw: every generation has exactly one winner and generations are consecutive. The
/// register survives a kill -9 of the master, and a new race after the restart again has
/// exactly one winner, for the next generation.
#[test]
fn racing_compare_and_set_has_one_winner_per_generation_across_restart() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Barrier};
    const THREADS: usize = 16;
    const ROUNDS: usize = 12;
    let mut c = Cluster::start("cas-race", 1, &[]);
    let client = c.client();

    // Each thread returns the generations it won.
    let race = |client: &storage::Client, prefix: &str, start: u64, rounds: usize| -> Vec<(u64, String)> {
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let client = client.clone();
                let barrier = barrier.clone();
                let holder = format!("{prefix}{i}");
                std::thread::spawn(move || {
                    let mut seen = start;
                    let mut won = Vec::new();
                    barrier.wait();
                    for _ in 0..rounds {
                        match client.compare_and_set("race", seen, &holder) {
                            Ok(g) => {
                                assert_eq!(g, seen + 1, "{holder} won from {seen}");
                                won.push((g, holder.clone()));
                                seen = g;
                            }
                            Err(e) => {
                                assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{holder}: {e}");
                                let (g, _) = client.register("race").unwrap();
                                assert!(g > seen, "{holder} lost at {seen} but the register is at {g}");
                                seen = g;
                            }
                        }
                    }
                    won
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("racer panicked")).collect()
    };
    let winners_by_gen = |wins: &[(u64, String)]| {
        let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (g, h) in wins {
            m.entry(*g).or_default().push(h.clone());
        }
        m
    };

    let wins = race(&client, "host", 0, ROUNDS);
    let by_gen = winners_by_gen(&wins);
    for (g, hs) in &by_gen {
        assert_eq!(hs.len(), 1, "generation {g} has winners {hs:?}");
    }
    let gens: Vec<u64> = by_gen.keys().copied().collect();
    let last = *gens.last().expect("someone won");
    assert_eq!(gens, (1..=last).collect::<Vec<_>>(), "generations are not consecutive");
    assert!(last >= ROUNDS as u64, "only {last} generations in {ROUNDS} rounds of {THREADS} racers");
    let last_holder = by_gen[&last][0].clone();
    assert_eq!(client.register("race").unwrap(), (last, last_holder.clone()));

    // kill -9 the master and restart it from its directory: the register is as it was.
    c.kill_master();
    c.start_master();
    c.settle();
    assert_eq!(client.register("race").unwrap(), (last, last_holder));

    // One more race from the surviving generation: exactly one winner, for `last + 1`.
    let wins = race(&client, "after", last, 1);
    assert_eq!(wins.len(), 1, "winners after restart: {wins:?}");
    assert_eq!(wins[0].0, last + 1);
    assert_eq!(client.register("race").unwrap(), wins[0].clone());
}
