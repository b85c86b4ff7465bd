//! The `kv` guest behind virtio-net and virtio-blk, driven from a network namespace: 10,000 keys
//! over several connections; every acknowledged key survives a kill -9 in the middle of a stream
//! of writes and a restart from the same disk, and strace shows that no reply left before its
//! data was flushed; a corrupt record at the tail of the guest's disk log is dropped alone; a
//! recorded kv session over a disk that already holds data replays to the recorded state.

use anyhow::{bail, Context, Result};
use ftvm_tests::kv::{self, Client, GUEST_IP};
use ftvm_tests::strace::{Call, Strace};
use ftvm_tests::{binary, cannot_run, namespaces_unavailable, NetNs, Process};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A namespace holding a TAP for the VM, the host side at 10.0.0.1.
fn network(tag: &str) -> Result<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.tap("tap0", "10.0.0.1/24")?;
    Ok(ns)
}

fn disk(dir: &Path) -> Result<PathBuf> {
    kv::disk_file(dir, "kv.img", 64 << 20)
}

/// Boots the kv guest in `ns` and waits until it listens.
fn boot(ns: &NetNs, disk: &Path, extra: &[&str]) -> Result<Process> {
    kv::boot(ns, disk, extra, &[])
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

fn value(i: usize) -> String {
    format!("value-{i}-{}", "x".repeat(i % 97))
}

/// Sets keys `range` on one connection; returns the keys acknowledged with OK.
fn set_keys(range: std::ops::Range<usize>) -> Result<Vec<usize>> {
    let mut client = Client::connect()?;
    let mut acknowledged = Vec::new();
    for i in range {
        let answer = client.request(&format!("SET {} {}", key(i), value(i)))?;
        if answer != "OK" {
            bail!("SET {} answered {answer:?}", key(i));
        }
        acknowledged.push(i);
    }
    Ok(acknowledged)
}

fn check_keys(keys: Vec<usize>) -> Result<()> {
    let mut client = Client::connect()?;
    for i in keys {
        let answer = client.request(&format!("GET {}", key(i)))?;
        if answer != format!("VALUE {}", value(i)) {
            bail!("GET {} answered {answer:?}", key(i));
        }
    }
    Ok(())
}

/// Sets `count` keys over `connections` connections at once, from inside the namespace.
fn set_in_parallel(ns: &NetNs, count: usize, connections: usize) -> Result<Vec<usize>> {
    ns.within(move || {
        let per = count.div_ceil(connections);
        let workers: Vec<_> = (0..connections)
            .map(|c| std::thread::spawn(move || set_keys(c * per..((c + 1) * per).min(count))))
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(all)
    })
}

macro_rules! require_namespaces {
    () => {
        if let Some(why) = namespaces_unavailable() {
            cannot_run(&why);
            return Ok(());
        }
    };
}

#[test]
fn ten_thousand_keys_set_over_eight_connections_read_back() -> Result<()> {
    require_namespaces!();
    let ns = network("kv10k")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let _vm = boot(&ns, &disk, &[])?;
    let acknowledged = set_in_parallel(&ns, 10_000, 8)?;
    assert_eq!(acknowledged.len(), 10_000);
    ns.within(move || check_keys(acknowledged))?;
    let stats = ns.within(|| Client::connect()?.request("STATS"))?;
    assert!(stats.starts_with("STATS ") && stats.contains("keys=10000"), "{stats}");
    Ok(())
}

/// Keys a client had acknowledged when its connection broke, and the connections still open
/// (closed from outside once the VM is dead, so that no client waits out its read timeout).
#[derive(Default)]
struct Stream {
    acknowledged: Vec<usize>,
    open: Vec<TcpStream>,
}

/// Sets keys from `first` on, one connection, until the connection breaks.
fn set_until_broken(first: usize, stream: Arc<Mutex<Stream>>) -> Result<()> {
    let mut client = Client::connect()?;
    stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.open.push(client.socket()?);
    for i in first.. {
        match client.request(&format!("SET {} {}", key(i), value(i))) {
            Ok(answer) if answer == "OK" => {
                stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.acknowledged.push(i)
            }
            Ok(answer) => bail!("SET {} answered {answer:?}", key(i)),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Checks, from strace's view of the VMM, that no kv reply (`OK`) was written to the TAP while a
/// disk write before it had not been made durable by an fdatasync/fsync that started after
/// that write and returned before the reply. Returns (replies, flushes) seen.
fn no_reply_before_its_flush(calls: &[Call], disk: &Path) -> Result<(usize, usize)> {
    let disk = disk.to_str().context("utf-8 path")?;
    // (position, what): writes at the line they start, flushes at the line they return.
    enum Event {
        DiskWrite,
        Flush { started: usize },
        Reply,
    }
    let mut events: Vec<(usize, Event)> = Vec::new();
    for call in calls {
        let on_disk = call.target == disk;
        match call.name.as_str() {
            "pwrite64" | "pwritev" | "pwritev2" | "write" | "writev" if on_disk => {
                events.push((call.started, Event::DiskWrite))
            }
            "fdatasync" | "fsync" if on_disk && call.succeeded() => {
                if let Some(finished) = call.finished {
                    events.push((finished, Event::Flush { started: call.started }));
                }
            }
            "write" | "writev" if call.target.contains("tun") && call.all_bytes().ends_with(b"OK\n") => {
                events.push((call.started, Event::Reply))
            }
            _ => {}
        }
    }
    events.sort_by_key(|(position, _)| *position);
    let mut unflushed: Vec<usize> = Vec::new();
    let (mut replies, mut flushes) = (0, 0);
    for (position, event) in events {
        match event {
            Event::DiskWrite => unflushed.push(position),
            Event::Flush { started } => {
                flushes += 1;
                unflushed.retain(|&written| written > started);
            }
            Event::Reply => {
                if let Some(written) = unflushed.first() {
                    bail!(
                        "a reply went to the TAP (strace line {position}) while the disk write of line {written} \
                         was not flushed"
                    );
                }
                replies += 1;
            }
        }
    }
    Ok((replies, flushes))
}

#[test]
fn a_vm_killed_while_clients_write_holds_every_acknowledged_key() -> Result<()> {
    require_namespaces!();
    let ns = network("kvrestart")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let mut vm = boot(&ns, &disk, &[])?;
    let acknowledged = set_in_parallel(&ns, 1_000, 4)?;
    let deleted: Vec<usize> = acknowledged.iter().copied().filter(|i| i % 10 == 0).collect();
    let to_delete = deleted.clone();
    ns.within(move || {
        let mut client = Client::connect()?;
        for i in to_delete {
            let answer = client.request(&format!("DEL {}", key(i)))?;
            if answer != "OK" {
                bail!("DEL {} answered {answer:?}", key(i));
            }
        }
        Ok(())
    })?;

    // Four clients write without pause; the VM is killed in the middle of that.
    let trace = Strace::attach(
        vm.pid(),
        "pwrite64,pwritev,pwritev2,fdatasync,fsync,write,writev",
        &dir.path().join("strace.log"),
    )?;
    let stream = Arc::new(Mutex::new(Stream::default()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stream = Arc::clone(&stream);
            ns.spawn_within(move || set_until_broken(10_000 + c * 100_000, stream))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stream.lock().map(|s| s.acknowledged.len()).unwrap_or(0) < 400 {
        if Instant::now() > deadline {
            bail!("the clients did not get 400 writes acknowledged in time:\n{}", vm.output());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.kill(); // kill -9 while writes are in flight: nothing gets a chance to flush
    for connection in stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.open.drain(..) {
        let _ = connection.shutdown(std::net::Shutdown::Both);
    }
    for client in clients {
        client.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let calls = trace.finish()?;
    let (replies, flushes) = no_reply_before_its_flush(&calls, &disk)?;
    let streamed = std::mem::take(&mut stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.acknowledged);
    assert!(replies >= streamed.len(), "strace saw {replies} replies for {} acknowledged writes", streamed.len());
    assert!(flushes > 0, "no flush of the disk in {} traced calls", calls.len());

    let _vm = boot(&ns, &disk, &[])?;
    let kept: Vec<usize> = acknowledged.into_iter().filter(|i| i % 10 != 0).chain(streamed).collect();
    ns.within(move || {
        check_keys(kept)?;
        let mut client = Client::connect()?;
        for i in deleted {
            let answer = client.request(&format!("GET {}", key(i)))?;
            if answer != "NOT_FOUND" {
                bail!("deleted {} answered {answer:?}", key(i));
            }
        }
        Ok(())
    })
}

/// The byte offset of the last record in the guest's disk log: the last non-zero sector after
/// the header belongs to it.
fn last_record_sector(disk: &Path) -> Result<u64> {
    let bytes = std::fs::read(disk)?;
    let last = bytes
        .chunks(512)
        .enumerate()
        .skip(1)
        .rfind(|(_, sector)| sector.iter().any(|b| *b != 0))
        .map(|(i, _)| i as u64)
        .context("the disk log has no records")?;
    // Walk back to the sector where that record starts (its magic "KVR1").
    let mut sector = last;
    while sector > 1 && bytes[sector as usize * 512..sector as usize * 512 + 4] != 0x3152_564bu32.to_le_bytes() {
        sector -= 1;
    }
    Ok(sector * 512)
}

#[test]
fn a_corrupted_record_at_the_log_tail_is_detected_and_only_it_is_dropped() -> Result<()> {
    require_namespaces!();
    let ns = network("kvcorrupt")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let mut vm = boot(&ns, &disk, &[])?;
    ns.within(|| set_keys(0..50).map(|_| ()))?;
    vm.kill();

    let offset = last_record_sector(&disk)?;
    let mut bytes = std::fs::read(&disk)?;
    bytes[offset as usize + 30] ^= 0x5a; // inside the key of the last record
    std::fs::write(&disk, &bytes)?;

    let vm = boot(&ns, &disk, &[])?;
    let output = vm.output();
    assert!(output.contains("kv: dropped 1 corrupt record(s) at the log tail"), "{output}");
    assert!(output.contains("kv: listening on 10.0.0.2:7000, 49 keys loaded"), "{output}");
    ns.within(|| {
        check_keys((0..49).collect())?;
        let answer = Client::connect()?.request(&format!("GET {}", key(49)))?;
        if answer != "NOT_FOUND" {
            bail!("the corrupt record's key answered {answer:?}");
        }
        Ok(())
    })
}

#[test]
fn a_recorded_kv_session_replays_to_the_recorded_state() -> Result<()> {
    require_namespaces!();
    record_and_replay_a_kv_session("kvreplay", &[])
}

/// With a 100 µs bound the recorder preempts the guest constantly, also right after I/O and
/// MMIO exits whose completion KVM still holds: the replay must load those checkpoints over a
/// vCPU whose own completion is flushed first.
#[test]
fn a_kv_session_recorded_with_constant_preemptions_replays_to_the_recorded_state() -> Result<()> {
    require_namespaces!();
    record_and_replay_a_kv_session("kvpreempt", &["--preempt-us", "100"])
}

/// Fills `disk` with keys `PRELOADED` through a first VM, so that the recorded session's boot
/// reads real records from the disk: a replay must then hand the guest the recorded bytes.
fn preload(ns: &NetNs, disk: &Path) -> Result<()> {
    let mut vm = boot(ns, disk, &[])?;
    ns.within(|| set_keys(PRELOADED).map(|_| ()))?;
    vm.signal(libc::SIGTERM)?;
    vm.wait(Duration::from_secs(30))?;
    Ok(())
}

const PRELOADED: std::ops::Range<usize> = 50_000..50_300;

fn state_digest_line(text: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with("state-digest: ")).map(str::to_owned)
}

fn record_and_replay_a_kv_session(tag: &str, extra: &[&str]) -> Result<()> {
    let ns = network(tag)?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    preload(&ns, &disk)?;
    let log = dir.path().join("kv.log");
    let mut args = vec!["--record", log.to_str().context("utf-8 path")?, "--state-digest"];
    args.extend_from_slice(extra);
    let mut vm = boot(&ns, &disk, &args)?;
    let loaded = format!("{} keys loaded", PRELOADED.len());
    assert!(vm.output().contains(&loaded), "{}", vm.output());
    ns.within(|| {
        set_keys(0..200)?;
        check_keys((0..200).chain(PRELOADED).collect())
    })?;
    // SIGTERM: ftvm stops the guest cleanly, closes the log and prints the state digest.
    vm.signal(libc::SIGTERM)?;
    vm.wait(Duration::from_secs(30))?;
    let recorded = vm.output();
    let recorded_digest = state_digest_line(&recorded).with_context(|| format!("no state digest in:\n{recorded}"))?;

    let replay = std::process::Command::new(binary("ftvm")?).arg("replay").arg(&log).output()?;
    let replayed = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(replay.status.success(), "{replayed}\n{}", String::from_utf8_lossy(&replay.stderr));
    assert!(replayed.contains(&loaded), "the replayed guest did not read the disk's records:\n{replayed}");
    assert!(replayed.contains("replay: ok, "), "{replayed}");
    assert_eq!(state_digest_line(&replayed), Some(recorded_digest));
    Ok(())
}

/// A snapshot taken while recording a kv session (TAP and disk attached), plus the rest of the
/// log, replays to the recorded state; so does the whole log from boot.
#[test]
fn a_kv_snapshot_taken_while_recording_replays_the_rest_of_the_log() -> Result<()> {
    require_namespaces!();
    let ns = network("kvsnapreplay")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    preload(&ns, &disk)?;
    let log = dir.path().join("kv.log");
    let snapshot = dir.path().join("kv.snap");
    let args = [
        "--record",
        log.to_str().context("utf-8 path")?,
        "--state-digest",
        "--snapshot-at",
        SNAPSHOT_AT,
        "--snapshot",
        snapshot.to_str().context("utf-8 path")?,
    ];
    let mut vm = boot(&ns, &disk, &args)?;
    ns.within(|| {
        set_keys(0..100)?;
        check_keys((0..100).chain(PRELOADED).collect())
    })?;
    vm.signal(libc::SIGTERM)?;
    vm.wait(Duration::from_secs(30))?;
    let recorded = vm.output();
    assert!(snapshot.exists(), "no snapshot after {SNAPSHOT_AT} exits:\n{recorded}");
    let recorded_digest = state_digest_line(&recorded).with_context(|| format!("no state digest in:\n{recorded}"))?;

    for from in [Some(&snapshot), None] {
        let mut command = std::process::Command::new(binary("ftvm")?);
        command.arg("replay").arg(&log);
        if let Some(snapshot) = from {
            command.arg("--from").arg(snapshot);
        }
        let replay = command.output()?;
        let replayed = String::from_utf8_lossy(&replay.stdout).into_owned();
        assert!(replay.status.success(), "{from:?}: {replayed}\n{}", String::from_utf8_lossy(&replay.stderr));
        assert!(replayed.contains("replay: ok, "), "{from:?}: {replayed}");
        assert_eq!(state_digest_line(&replayed).as_ref(), Some(&recorded_digest), "{from:?}");
    }
    Ok(())
}

/// Where the kv snapshots are taken: after the guest has read its disk log and listens (about
/// 150 exits), once clients are being served.
const SNAPSHOT_AT: &str = "600";

/// `ftvm restore` of a kv snapshot reopens the TAP and the disk: the restored guest serves
/// clients, and what it acknowledged is on the disk for a fresh boot.
#[test]
fn a_restored_kv_snapshot_serves_and_persists_over_its_tap_and_disk() -> Result<()> {
    require_namespaces!();
    let ns = network("kvrestore")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    preload(&ns, &disk)?;
    let snapshot = dir.path().join("kv.snap");
    let snapshot_arg = snapshot.to_str().context("utf-8 path")?;
    let mut vm = boot(&ns, &disk, &["--snapshot-at", SNAPSHOT_AT, "--snapshot", snapshot_arg])?;
    // Requests that do not touch the disk drive the guest to the snapshot's exit count (the file
    // appears, whole, once it is written).
    let waiting_for = snapshot.clone();
    ns.within(move || {
        let mut client = Client::connect()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !waiting_for.exists() {
            if Instant::now() > deadline {
                bail!("no snapshot after a minute of STATS requests");
            }
            client.request("STATS")?;
        }
        Ok(())
    })
    .with_context(|| vm.output())?;
    vm.kill();

    let mut command = ns.command(&binary("ftvm")?);
    command.arg("restore").arg(&snapshot);
    let mut restored = Process::spawn(command)?;
    ns.within(|| {
        set_keys(0..100)?;
        check_keys((0..100).chain(PRELOADED).collect())
    })
    .with_context(|| restored.output())?;
    restored.kill();

    let _vm = boot(&ns, &disk, &[])?;
    ns.within(|| check_keys((0..100).chain(PRELOADED).collect()))
}

/// The Internet checksum of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request to the guest on a raw socket and waits for its reply.
fn ping_guest(sequence: u16) -> Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned by the File below and closed with it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw ICMP socket");
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let socket = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: setsockopt with a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let id: u16 = (std::process::id() & 0xffff) as u16;
    let mut request = vec![8u8, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&sequence.to_be_bytes());
    request.extend_from_slice(b"ftvm ping payload");
    let checksum = internet_checksum(&request);
    request[2..4].copy_from_slice(&checksum.to_be_bytes());
    let guest: std::net::Ipv4Addr = GUEST_IP.parse()?;
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(guest.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            request.as_ptr().cast(),
            request.len(),
            0,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("sending the echo request");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        let got = match std::io::Read::read(&mut &socket, &mut buffer) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("reading ICMP"),
        };
        // A raw IPv4 socket hands over the IP header too.
        let header = usize::from(buffer[0] & 0x0f) * 4;
        let (ip, icmp) = buffer[..got].split_at(header.min(got));
        let from = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        if from == guest
            && icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == sequence.to_be_bytes()
        {
            return Ok(());
        }
    }
    bail!("no echo reply from {GUEST_IP} for sequence {sequence}")
}

#[test]
fn the_guest_answers_arp_and_ping() -> Result<()> {
    require_namespaces!();
    let ns = network("kvping")?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let _vm = boot(&ns, &disk, &[])?;
    // The first echo request makes the host resolve the guest's MAC: the guest answers ARP too.
    ns.within(|| (1..=3).try_for_each(ping_guest))
}
