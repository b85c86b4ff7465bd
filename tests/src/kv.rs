//! The kv guest as the end-to-end tests and benchmarks drive it: booted by a real `ftvm` in a
//! network namespace on a TAP and a disk file, and spoken to over its line protocol.

use crate::{binary, NetNs, Process};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The guest's address on the TAP (the host side is 10.0.0.1).
pub const GUEST_IP: &str = "10.0.0.2";
/// The line protocol's port.
pub const PORT: u16 = 7000;
/// How long a boot may take to say `kv: listening on`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A namespace with `tap0` at 10.0.0.1/24, for one guest.
pub fn network(tag: &str) -> Result<NetNs> {
    let ns = NetNs::new(tag)?;
    ns.tap("tap0", "10.0.0.1/24")?;
    Ok(ns)
}

/// A sparse disk file of `bytes` in `dir`.
pub fn disk_file(dir: &Path, name: &str, bytes: u64) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::File::create(&path)?.set_len(bytes)?;
    Ok(path)
}

/// Boots the kv guest in `ns` on `disk` with `extra` ftvm arguments and `env` set for ftvm, and
/// waits until it listens.
pub fn boot(ns: &NetNs, disk: &Path, extra: &[&str], env: &[(&str, String)]) -> Result<Process> {
    let mut command = ns.command(&binary("ftvm")?);
    command.args(["run", "--guest", "kv", &format!("ip={GUEST_IP}/24"), "--net", "tap=tap0", "--disk"]);
    command.arg(disk).args(extra);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut vm = Process::spawn(command)?;
    vm.wait_for("kv: listening on", BOOT_TIMEOUT)?;
    Ok(vm)
}

/// One connection speaking the line protocol (run it from inside the namespace).
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects, trying for a few seconds (the guest may still be bringing its socket up).
    pub fn connect() -> Result<Self> {
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

    /// Another handle on the connection's socket (a test closes it from outside, as a dying
    /// client would).
    pub fn socket(&self) -> std::io::Result<TcpStream> {
        self.writer.try_clone()
    }

    /// Sends one request line and returns the answer line.
    pub fn request(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the server closed the connection after {line:?}");
        }
        Ok(answer.trim_end().to_owned())
    }
}

/// SETs without pause on one connection from inside a namespace (`SET {prefix}{i} value(i)`),
/// with the longest gap between two replies kept for each phase of a fault test (before the
/// fault, during it, after it).
pub struct PhasedSets {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    gaps: Arc<Mutex<[Duration; 3]>>,
    phase: Arc<AtomicUsize>,
    /// Why the client stopped early (a SET that failed, a connection closed), for the error
    /// of [`PhasedSets::wait_for_more`].
    failure: Arc<Mutex<Option<String>>>,
    client: std::thread::JoinHandle<Result<usize>>,
}

impl PhasedSets {
    /// Starts the client in `ns`, in phase 0.
    pub fn start(ns: &NetNs, prefix: &'static str, value: fn(usize) -> String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let gaps = Arc::new(Mutex::new([Duration::ZERO; 3]));
        let phase = Arc::new(AtomicUsize::new(0));
        let failure = Arc::new(Mutex::new(None));
        let client = {
            let (stop, acknowledged, gaps, phase) = (stop.clone(), acknowledged.clone(), gaps.clone(), phase.clone());
            let failure = failure.clone();
            ns.spawn_within(move || {
                let failed = |e: anyhow::Error| {
                    *failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!("{e:#}"));
                    e
                };
                let mut kv = Client::connect().map_err(failed)?;
                let mut last = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let answer = kv.request(&format!("SET {prefix}{i} {}", value(i))).map_err(failed)?;
                    if answer != "OK" {
                        return Err(failed(anyhow::anyhow!("SET {prefix}{i}: {answer}")));
                    }
                    let gap = last.elapsed();
                    last = Instant::now();
                    let mut gaps = gaps.lock().unwrap_or_else(PoisonError::into_inner);
                    let p = phase.load(Ordering::Acquire).min(2);
                    gaps[p] = gaps[p].max(gap);
                    drop(gaps);
                    i += 1;
                    acknowledged.store(i, Ordering::Release);
                }
                Ok(i)
            })
        };
        Self { stop, acknowledged, gaps, phase, failure, client }
    }

    /// Waits until `n` more SETs were acknowledged (at most two minutes).
    pub fn wait_for_more(&self, n: usize) -> Result<()> {
        let target = self.acknowledged.load(Ordering::Acquire) + n;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.acknowledged.load(Ordering::Acquire) < target {
            if self.client.is_finished() {
                let why = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
                bail!("the client stopped: {}", why.as_deref().unwrap_or("no error kept"));
            }
            anyhow::ensure!(Instant::now() < deadline, "kv stopped acknowledging SETs");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Gaps from now on count in `phase` (0, 1 or 2).
    pub fn enter_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Release);
    }

    /// Stops the client: the SETs acknowledged (keys `{prefix}0..n`) and each phase's longest gap.
    pub fn finish(self) -> Result<(usize, [Duration; 3])> {
        self.stop.store(true, Ordering::Release);
        let sets = self.client.join().map_err(|_| anyhow::anyhow!("the SET client panicked"))??;
        let gaps = *self.gaps.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((sets, gaps))
    }
}
