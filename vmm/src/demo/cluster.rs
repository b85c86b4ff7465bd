//! The demo's processes: gfs (the `ftvm demo-storage` subcommand: a master and three
//! chunkservers in one process in the storage namespace) and the VMMs (`ftvm` itself under `ip
//! netns exec`). Each is killed with SIGKILL and reaped when dropped, and also dies if the demo
//! dies (parent-death signal); each runs in its own process group, so a Ctrl-C on the terminal
//! reaches only the demo, which then tears down in order.

use super::interrupt;
use super::topology::{NetNs, STORAGE_IP};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use storage::chunkserver::{ChunkServer, ChunkServerConfig};
use storage::master::{service, Master, MasterConfig};

/// The gfs master's port on [`STORAGE_IP`].
const MASTER_PORT: u16 = 7200;
/// The chunkservers' ports on [`STORAGE_IP`].
const CHUNKSERVER_PORTS: [u16; 3] = [7201, 7202, 7203];
/// The line `ftvm demo-storage` prints once the master sees every chunkserver.
pub const STORAGE_READY: &str = "gfs: master and 3 chunkservers up";

pub fn gfs_master() -> String {
    format!("{STORAGE_IP}:{MASTER_PORT}")
}

/// The key directory every process of the demo is given (`FT_KEYS`), set once by the scenario.
static KEYS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Seals the demo's channels: the user's key directory (`--keys`), or a new cluster key made in
/// `scratch` (the demo's temporary directory). Every process the demo starts gets it, and this
/// one uses it too. Returns the directory and the key's fingerprint.
pub fn seal_with(user_keys: Option<&Path>, scratch: &Path) -> Result<(PathBuf, String)> {
    let dir = match user_keys {
        Some(dir) => dir.to_path_buf(),
        None => {
            let dir = scratch.join("keys");
            seal::generate(&dir, false).context("making the demo's cluster key")?;
            dir
        }
    };
    let security = seal::Security::from_dir(&dir).context("loading the demo's cluster key")?;
    let fingerprint = match &security {
        seal::Security::Sealed(key) => key.fingerprint().to_owned(),
        seal::Security::Insecure => String::new(),
    };
    seal::install(security);
    let _ = KEYS.set(dir.clone());
    Ok((dir, fingerprint))
}

/// A line a process printed, and when the demo saw it.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A child process, its output collected line by line (stdout and stderr), killed on drop.
pub struct Proc {
    pub label: String,
    child: Child,
    lines: Lines,
    readers: Vec<JoinHandle<()>>,
    status: Option<std::process::ExitStatus>,
}

impl Proc {
    /// `program args` inside `ns`.
    pub fn spawn_in(ns: &NetNs, label: &str, program: &Path, args: &[String]) -> Result<Self> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns.name]).arg(program).args(args);
        if let Some(keys) = KEYS.get() {
            command.env(seal::KEYS_ENV, keys);
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2),
        // which is async-signal-safe. `ip netns exec` execs the program in the same process, so
        // the parent-death signal stays armed for it. The demo spawns from its main thread,
        // which lives as long as the demo.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("start {label}"))?;
        let lines: Lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let lines = Arc::clone(&lines);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    lines.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), line));
                }
            }));
        }
        Ok(Self { label: label.to_owned(), child, lines, readers, status: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line for which `matcher` gives a value, and when it was seen.
    fn find<T>(&self, matcher: &dyn Fn(&str) -> Option<T>) -> Option<(Instant, T)> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().find_map(|(at, line)| matcher(line).map(|value| (*at, value)))
    }

    /// Polls until a line matches (see [`Proc::find`]); fails if the process exits first, on
    /// the deadline, or when the demo is interrupted.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        matcher: impl Fn(&str) -> Option<T>,
    ) -> Result<(Instant, T)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.find(&matcher) {
                return Ok(found);
            }
            if let Some(status) = self.exited()? {
                self.join_readers();
                if let Some(found) = self.find(&matcher) {
                    return Ok(found);
                }
                bail!("{} exited ({status}) before {what}:\n{}", self.label, self.tail(30));
            }
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!("{} did not show {what} within {timeout:?}:\n{}", self.label, self.tail(30));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The lines starting with `prefix` so far: the rest of each.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().filter_map(|(_, line)| line.strip_prefix(prefix).map(str::to_owned)).collect()
    }

    /// Waits for the `n`th line (from 1) starting with `prefix`; when it was seen, and its rest.
    pub fn wait_for_nth(&mut self, prefix: &str, n: usize, timeout: Duration) -> Result<(Instant, String)> {
        let what = format!("line {n} starting {prefix:?}");
        let deadline = Instant::now() + timeout;
        loop {
            let found = {
                let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                lines
                    .iter()
                    .filter_map(|(at, line)| line.strip_prefix(prefix).map(|rest| (*at, rest.to_owned())))
                    .nth(n - 1)
            };
            if let Some(found) = found {
                return Ok(found);
            }
            if let Some(status) = self.exited()? {
                bail!("{} exited ({status}) before {what}:\n{}", self.label, self.tail(30));
            }
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!("{} did not show {what} within {timeout:?}:\n{}", self.label, self.tail(30));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a line starting with `prefix`; the rest of it.
    pub fn wait_for_prefix(&mut self, prefix: &str, timeout: Duration) -> Result<(Instant, String)> {
        self.wait_for(&format!("a line {prefix:?}"), timeout, |line| line.strip_prefix(prefix).map(str::to_owned))
    }

    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("wait for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                self.join_readers();
                return Ok(status);
            }
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!("{} still runs {timeout:?} later:\n{}", self.label, self.tail(30));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`, as a host that dies; reaped at once.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) on our own child, not reaped yet (the caller checks it has not
        // exited), so the pid is still its.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Its last `count` lines, for an error message.
    pub fn tail(&self, count: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let skip = lines.len().saturating_sub(count);
        lines[skip..].iter().map(|(_, line)| format!("    | {line}\n")).collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        self.join_readers();
    }
}

/// The path of this `ftvm` executable (the VMMs and gfs are `ftvm` itself).
pub fn ftvm_exe() -> Result<PathBuf> {
    std::env::current_exe().context("the path of this ftvm executable")
}

/// Starts gfs in the storage namespace and waits until its master sees all chunkservers.
pub fn start_storage(ns: &NetNs, dir: &Path) -> Result<Proc> {
    let dir = dir.to_str().context("the demo's directory is not UTF-8")?.to_owned();
    let args = ["demo-storage".to_owned(), "--dir".to_owned(), dir];
    let mut storage = Proc::spawn_in(ns, "gfs (storage)", &ftvm_exe()?, &args)?;
    storage.wait_for_prefix(STORAGE_READY, Duration::from_secs(30))?;
    Ok(storage)
}

/// `ftvm demo-storage --dir DIR`: a gfs master and three chunkservers in this process (run in
/// the storage namespace), announced with [`STORAGE_READY`] once the master counts all three
/// up; then serves until killed.
pub fn serve_storage(dir: &Path) -> Result<()> {
    let master = gfs_master();
    let mut config = MasterConfig::new(dir.join("master"), master.clone());
    config.dead_after = Duration::from_secs(3);
    let opened = Master::open(config).context("starting the gfs master")?;
    service::serve(opened).context("starting the gfs master")?;
    let mut chunkservers = Vec::new();
    for (i, port) in CHUNKSERVER_PORTS.iter().enumerate() {
        let mut config =
            ChunkServerConfig::new(dir.join(format!("cs{i}")), master.clone(), format!("{STORAGE_IP}:{port}"));
        config.rack = format!("rack{i}");
        config.heartbeat = Duration::from_millis(100);
        chunkservers.push(ChunkServer::start(config).with_context(|| format!("starting chunkserver {i}"))?);
    }
    let client = storage::Client::new(&master);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = client.status().map(|s| s.servers.iter().filter(|cs| cs.live).count()).unwrap_or(0);
        if up == CHUNKSERVER_PORTS.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the gfs master sees {up} of {} chunkservers up after 20 s", CHUNKSERVER_PORTS.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    vmm::outln!("{STORAGE_READY} on {master}");
    loop {
        std::thread::park();
    }
}
