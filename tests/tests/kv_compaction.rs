//! The `kv` guest's disk log compacting itself, end to end (real ftvm processes, a TAP in a
//! network namespace, disk files): ten times a 4 MiB disk in SETs over a bounded key set with
//! no error and every latest value back after a kill -9; a disk too small for the live set
//! refusing the SET that does not fit while GETs go on; a recorded session with compactions
//! replaying to the recorded state; and power cuts (the VMM killing itself right after its
//! N-th disk write, `FTVM_TEST_ABORT_AFTER_DISK_WRITES`) swept over the writes of compactions,
//! every acknowledged key checked after each restart.
//!
//! These tests need root, iproute2 and /dev/kvm; without them they fail, unless
//! `FTVM_ALLOW_SKIP=1` lets them pass as skipped.

use anyhow::{bail, Context, Result};
use ftvm_tests::kv::{self, boot, network, Client, GUEST_IP, PORT};
use ftvm_tests::{binary, require_namespaces, NetNs, Process};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn disk(dir: &Path, name: &str, bytes: u64) -> Result<PathBuf> {
    kv::disk_file(dir, name, bytes)
}

/// The `name=value` counters of a STATS line.
fn stats(line: &str) -> BTreeMap<String, String> {
    line.split(' ').filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn counter(stats: &BTreeMap<String, String>, name: &str) -> Result<u64> {
    stats.get(name).with_context(|| format!("no {name}= in STATS"))?.parse().with_context(|| format!("{name}="))
}

fn read_stats() -> Result<BTreeMap<String, String>> {
    let line = Client::connect()?.request("STATS")?;
    if !line.starts_with("STATS ") {
        bail!("STATS answered {line:?}");
    }
    Ok(stats(&line))
}

/// The bytes a SET of these lengths takes in the log (a record padded to whole sectors).
fn record_bytes(key: &str, value: &str) -> u64 {
    (24 + key.len() + value.len()).div_ceil(512) as u64 * 512
}

fn value_for(key: usize, round: usize, len: usize) -> String {
    let stem = format!("{key}.{round}-");
    stem.repeat(len / stem.len() + 1)[..len].to_owned()
}

/// Ten times the 4 MiB disk in SETs of ~4 KiB values over 200 keys, 8 connections (each owns
/// 25 keys): no ERR, the disk compacts many times, and after a kill -9 a restart loads the
/// latest value of every key.
#[test]
fn ten_times_a_small_disk_in_sets_over_a_bounded_key_set() -> Result<()> {
    require_namespaces!();
    const DISK: u64 = 4 << 20;
    const KEYS: usize = 200;
    const CONNECTIONS: usize = 8;
    const VALUE: usize = 4000;
    let ns = network("kvcompact10x")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path(), "kv.img", DISK)?;
    let mut vm = boot(&ns, &disk, &[], &[])?;
    let per = KEYS / CONNECTIONS;
    let rounds = (10 * DISK / (record_bytes("key-000", &"v".repeat(VALUE)) * KEYS as u64) + 1) as usize;
    let written = ns.within(move || {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                std::thread::spawn(move || -> Result<u64> {
                    let mut client = Client::connect()?;
                    let mut bytes = 0;
                    for round in 0..rounds {
                        for k in c * per..(c + 1) * per {
                            let (key, value) = (format!("key-{k:03}"), value_for(k, round, VALUE));
                            let answer = client.request(&format!("SET {key} {value}"))?;
                            if answer != "OK" {
                                bail!("SET {key} (round {round}) answered {answer:?}");
                            }
                            bytes += record_bytes(&key, &value);
                        }
                    }
                    Ok(bytes)
                })
            })
            .collect();
        let mut total = 0;
        for worker in workers {
            total += worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(total)
    })?;
    assert!(written >= 10 * DISK, "{written} bytes of SETs");
    let before = ns.within(read_stats)?;
    let compactions = counter(&before, "compactions")?;
    assert!(compactions >= 10, "{compactions} compactions for {written} bytes of SETs on a {DISK}-byte disk");
    assert_eq!(counter(&before, "errors")?, 0);
    assert!(counter(&before, "log_bytes")? < DISK, "{before:?}");
    assert_eq!(counter(&before, "live_bytes")?, KEYS as u64 * record_bytes("key-000", &"v".repeat(VALUE)));
    eprintln!("{written} bytes of SETs on a {DISK}-byte disk: {compactions} compactions; STATS {before:?}");

    vm.kill();
    let vm = boot(&ns, &disk, &[], &[])?;
    assert!(vm.output().contains(&format!("{KEYS} keys loaded")), "{}", vm.output());
    ns.within(move || {
        let mut client = Client::connect()?;
        for k in 0..KEYS {
            let answer = client.request(&format!("GET key-{k:03}"))?;
            let expected = format!("VALUE {}", value_for(k, rounds - 1, VALUE));
            if answer != expected {
                bail!("GET key-{k:03} answered {:?} (not its latest value)", &answer[..answer.len().min(40)]);
            }
        }
        Ok(())
    })
}

/// A 512 KiB disk (regions of 254 KiB) filled with distinct keys: the SET that does not fit
/// answers `ERR disk full`, GETs of every acknowledged key go on, and a restart holds them.
#[test]
fn a_disk_too_small_for_the_live_set_answers_disk_full_and_keeps_serving_gets() -> Result<()> {
    require_namespaces!();
    let ns = network("kvcompactfull")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path(), "kv.img", 512 << 10)?;
    let mut vm = boot(&ns, &disk, &[], &[])?;
    let value = "f".repeat(1000);
    let check = value.clone();
    let acknowledged = ns.within(move || {
        let mut client = Client::connect()?;
        for i in 0..1000 {
            match client.request(&format!("SET full-{i:04} {value}"))?.as_str() {
                "OK" => {}
                "ERR disk full" => {
                    // The refused key is absent; every other key and STATS still answer.
                    if client.request(&format!("GET full-{i:04}"))? != "NOT_FOUND" {
                        bail!("the refused SET full-{i:04} changed the store");
                    }
                    for k in 0..i {
                        if client.request(&format!("GET full-{k:04}"))? != format!("VALUE {value}") {
                            bail!("GET full-{k:04} after the disk filled");
                        }
                    }
                    return Ok(i);
                }
                other => bail!("SET full-{i:04} answered {other:?}"),
            }
        }
        bail!("1000 SETs of 1 KiB fit on a 512 KiB disk")
    })?;
    // The live set filled most of a region before the refusal.
    assert!(acknowledged * 1536 > 200 << 10, "only {acknowledged} SETs acknowledged");
    vm.kill();
    let _vm = boot(&ns, &disk, &[], &[])?;
    ns.within(move || {
        let mut client = Client::connect()?;
        for k in 0..acknowledged {
            if client.request(&format!("GET full-{k:04}"))? != format!("VALUE {check}") {
                bail!("GET full-{k:04} after the restart");
            }
        }
        Ok(())
    })
}

/// A session recorded on a 1 MiB disk, with compactions in it, replays to the recorded state
/// digest: compaction depends on log sizes only, never on time.
#[test]
fn a_recorded_session_with_compactions_replays_to_the_recorded_state() -> Result<()> {
    require_namespaces!();
    let ns = network("kvcompactrec")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path(), "kv.img", 1 << 20)?;
    let log = dir.path().join("kv.log");
    let args = ["--record", log.to_str().context("utf-8 path")?, "--state-digest"];
    let mut vm = boot(&ns, &disk, &args, &[])?;
    let stats = ns.within(|| {
        let mut client = Client::connect()?;
        for i in 0..600 {
            let answer = client.request(&format!("SET rec-{:02} {}", i % 40, value_for(i % 40, i, 2000)))?;
            if answer != "OK" {
                bail!("SET number {i} answered {answer:?}");
            }
        }
        read_stats()
    })?;
    assert!(counter(&stats, "compactions")? >= 2, "{stats:?}");
    // SIGTERM: ftvm stops the guest cleanly, closes the log and prints the state digest.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
    vm.wait(Duration::from_secs(30))?;
    let recorded = vm.output();
    let digest = |text: &str| text.lines().find(|l| l.starts_with("state-digest: ")).map(str::to_owned);
    let recorded_digest = digest(&recorded).with_context(|| format!("no state digest in:\n{recorded}"))?;
    let replay = std::process::Command::new(binary("ftvm")?).arg("replay").arg(&log).output()?;
    let replayed = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(replay.status.success(), "{replayed}\n{}", String::from_utf8_lossy(&replay.stderr));
    assert!(replayed.contains("replay: ok, "), "{replayed}");
    assert_eq!(digest(&replayed), Some(recorded_digest));
    Ok(())
}

/// The SETs of the power-cut runs: 40 keys of 3000-byte values (6 sectors), so the live set
/// (120 KiB) takes two copy chunks and a 1 MiB disk compacts every ~45 SETs.
const CUT_KEYS: usize = 40;
const CUT_VALUE: usize = 3000;
const CUT_DISK: u64 = 1 << 20;
const CUT_SETS: usize = 300;

fn cut_key(i: usize) -> String {
    format!("cut-{:02}", i * 7 % CUT_KEYS)
}

fn cut_value(i: usize) -> String {
    value_for(i * 7 % CUT_KEYS, i, CUT_VALUE)
}

/// Without a power cut: after each SET, the disk writes ftvm has made (the guest counts the
/// same writes, boot included, as `disk_writes=`) and the compactions finished.
fn map_compaction_writes(ns: &NetNs, disk: &Path) -> Result<Vec<(u64, u64)>> {
    let _vm = boot(ns, disk, &[], &[])?;
    ns.within(|| {
        let mut client = Client::connect()?;
        let mut after = Vec::new();
        for i in 0..CUT_SETS {
            let answer = client.request(&format!("SET {} {}", cut_key(i), cut_value(i)))?;
            if answer != "OK" {
                bail!("SET number {i} answered {answer:?}");
            }
            let s = stats(&client.request("STATS")?);
            after.push((counter(&s, "disk_writes")?, counter(&s, "compactions")?));
        }
        Ok(after)
    })
}

/// What a run that lost power left: the values acknowledged per key, and the SET in flight.
struct CutRun {
    acked: BTreeMap<String, String>,
    in_flight: Option<(String, String)>,
}

/// Sends the SETs until the VMM dies (it must: it kills itself at a disk write).
fn run_until_power_cut(vm: Arc<Mutex<Process>>) -> Result<CutRun> {
    let stream = TcpStream::connect_timeout(&format!("{GUEST_IP}:{PORT}").parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut run = CutRun { acked: BTreeMap::new(), in_flight: None };
    let dead = || vm.lock().map(|mut vm| vm.wait(Duration::ZERO).is_ok()).unwrap_or(true);
    // One request and its reply; `None` once the VMM is gone.
    let mut exchange = |line: String| -> Option<String> {
        writer.write_all(line.as_bytes()).ok()?;
        let mut answer = String::new();
        loop {
            match reader.read_line(&mut answer) {
                Ok(0) => return None,
                Ok(_) => return Some(answer.trim_end().to_owned()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && !dead() => {}
                Err(_) => return None,
            }
        }
    };
    for i in 0..CUT_SETS {
        let (key, value) = (cut_key(i), cut_value(i));
        run.in_flight = Some((key.clone(), value.clone()));
        let Some(answer) = exchange(format!("SET {key} {value}\n")) else { return Ok(run) };
        if answer != "OK" {
            bail!("SET number {i} answered {answer:?}");
        }
        run.acked.insert(key, value);
        run.in_flight = None;
        // As the mapping run does, so that the guest interleaves its writes the same way.
        if exchange("STATS\n".to_owned()).is_none() {
            return Ok(run);
        }
    }
    bail!("the VMM did not cut the power within {CUT_SETS} SETs")
}

/// Kills the VMM right after its N-th disk write, N swept over the writes around the first
/// compactions of a fixed run (they land at the same writes: compaction depends on log sizes
/// only), then restarts from that disk: every acknowledged key holds its latest acknowledged
/// value (the one SET in flight may hold either), and the interrupted compaction finishes.
#[test]
fn power_cuts_during_compactions_lose_no_acknowledged_key() -> Result<()> {
    require_namespaces!();
    let ns = network("kvcompactcut")?;
    let dir = tempfile::tempdir()?;
    let after = map_compaction_writes(&ns, &disk(dir.path(), "map.img", CUT_DISK)?)?;
    // The SETs after which a compaction had finished: it started after the SET before.
    let finished: Vec<usize> = (1..after.len()).filter(|&i| after[i].1 > after[i - 1].1).collect();
    if finished.len() < 4 {
        bail!("only {} compactions in {CUT_SETS} SETs: {after:?}", finished.len());
    }
    // Every write from just before each of the first four compactions to just after it.
    let mut cuts: Vec<u64> = Vec::new();
    for &i in finished.iter().take(4) {
        cuts.extend(after[i - 1].0.saturating_sub(1)..=after[i].0 + 2);
    }
    cuts.sort_unstable();
    cuts.dedup();
    eprintln!("writes and compactions after each SET: {after:?}; cutting at {cuts:?}");

    let (mut resumed, mut after_flip) = (0, 0);
    for &at in &cuts {
        let disk = disk(dir.path(), &format!("cut-{at}.img"), CUT_DISK)?;
        let vm = boot(&ns, &disk, &[], &[("FTVM_TEST_ABORT_AFTER_DISK_WRITES", at.to_string())])?;
        let vm = Arc::new(Mutex::new(vm));
        let shared = Arc::clone(&vm);
        let run = ns.within(move || run_until_power_cut(shared))?;
        let mut dead = vm.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        dead.wait(Duration::from_secs(10)).with_context(|| format!("cut at write {at}"))?;
        drop(dead);

        let vm = boot(&ns, &disk, &[], &[])?;
        let output = vm.output();
        resumed += usize::from(output.contains("kv: resuming an interrupted compaction"));
        let in_flight = run.in_flight.clone();
        let acked = run.acked.clone();
        let s = ns.within(move || {
            let mut client = Client::connect()?;
            for k in 0..CUT_KEYS {
                let key = format!("cut-{k:02}");
                let answer = client.request(&format!("GET {key}"))?;
                let mut allowed: Vec<String> = vec![match acked.get(&key) {
                    Some(v) => format!("VALUE {v}"),
                    None => "NOT_FOUND".to_owned(),
                }];
                if let Some((k, v)) = &in_flight {
                    if *k == key {
                        allowed.push(format!("VALUE {v}"));
                    }
                }
                if !allowed.contains(&answer) {
                    bail!("cut at write {at}: GET {key} answered {:?}", &answer[..answer.len().min(40)]);
                }
            }
            // The interrupted compaction goes on at boot and finishes.
            for _ in 0..200 {
                let s = read_stats()?;
                if counter(&s, "compacting")? == 0 {
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bail!("cut at write {at}: the compaction never finishes after the restart")
        })?;
        after_flip += usize::from(counter(&s, "compactions")? > 0);
        eprintln!("cut at write {at}: {} keys acknowledged, restart: {}", run.acked.len(), {
            output.lines().filter(|l| l.contains("replayed") || l.contains("resuming")).collect::<Vec<_>>().join("; ")
        });
        drop(vm);
        std::fs::remove_file(&disk)?;
    }
    assert!(resumed >= 4, "only {resumed} of {} cuts interrupted a compaction", cuts.len());
    assert!(after_flip >= 3, "only {after_flip} of {} cuts came after a finished compaction", cuts.len());
    Ok(())
}
