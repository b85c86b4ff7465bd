//! The `kv` guest behind virtio-net and virtio-blk, driven from a network namespace: 10,000 keys
//! over several connections; every acknowledged key survives a kill -9 and restart from the same
//! disk; a corrupt record at the tail of the guest's disk log is dropped alone; a recorded kv
//! session replays to the recorded state.

use anyhow::{bail, Context, Result};
use ftvm_tests::{binary, can_use_namespaces, NetNs, Process};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GUEST_IP: &str = "10.0.0.2";
const PORT: u16 = 7000;
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A namespace holding a TAP for the VM, the host side at 10.0.0.1.
fn network(tag: &str) -> Result<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.tap("tap0", "10.0.0.1/24")?;
    Ok(ns)
}

fn disk(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("kv.img");
    std::fs::File::create(&path)?.set_len(64 << 20)?;
    Ok(path)
}

/// Boots the kv guest in `ns` and waits until it listens.
fn boot(ns: &NetNs, disk: &Path, extra: &[&str]) -> Result<Process> {
    let mut command = ns.command(&binary("ftvm")?);
    command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0", "--disk"]);
    command.arg(disk).args(extra);
    let mut vm = Process::spawn(command)?;
    vm.wait_for("kv: listening on", BOOT_TIMEOUT)?;
    Ok(vm)
}

/// One connection speaking the line protocol.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect() -> Result<Self> {
        let address = format!("{GUEST_IP}:{PORT}");
        let mut last = None;
        for _ in 0..50 {
            match TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                    stream.set_nodelay(true)?;
                    return Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream });
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no connection"))).context(address)
    }

    fn request(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the server closed the connection after {line:?}");
        }
        Ok(answer.trim_end().to_owned())
    }
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
        if !can_use_namespaces() {
            eprintln!("skipped: needs root and iproute2 for network namespaces");
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

#[test]
fn a_restarted_vm_holds_every_acknowledged_key() -> Result<()> {
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
    vm.kill(); // kill -9: nothing gets a chance to flush
    let _vm = boot(&ns, &disk, &[])?;
    let kept: Vec<usize> = acknowledged.into_iter().filter(|i| i % 10 != 0).collect();
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

fn record_and_replay_a_kv_session(tag: &str, extra: &[&str]) -> Result<()> {
    let ns = network(tag)?;
    let dir = tempfile::tempdir()?;
    let disk = disk(dir.path())?;
    let log = dir.path().join("kv.log");
    let mut args = vec!["--record", log.to_str().context("utf-8 path")?, "--state-digest"];
    args.extend_from_slice(extra);
    let mut vm = boot(&ns, &disk, &args)?;
    ns.within(|| {
        set_keys(0..200)?;
        check_keys((0..200).collect())
    })?;
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
