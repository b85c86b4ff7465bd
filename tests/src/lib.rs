//! Helpers for the end-to-end tests in `tests/tests/`: the built binaries, network namespaces
//! that the tests create and always remove, processes that are killed when a test ends, work
//! done from inside a namespace, real disk faults, what a process did as `strace` saw it, and the one rule for
//! tests that cannot run here.

pub mod disks;
pub mod ft;
pub mod fuzz;
pub mod gfs;
pub mod kv;
pub mod strace;

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that lets a test which cannot run here pass as skipped.
pub const ALLOW_SKIP: &str = "FTVM_ALLOW_SKIP";

/// A test that cannot run on this machine (no root, no namespaces, no tmpfs, no TUN) calls
/// this and returns: it fails the test unless `FTVM_ALLOW_SKIP=1` allows skipping, so a CI
/// machine that lacks something never reports the test as passed.
#[track_caller]
pub fn cannot_run(why: &str) {
    if std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("skipped ({ALLOW_SKIP}=1): {why}");
        return;
    }
    panic!("this test cannot run here: {why} (set {ALLOW_SKIP}=1 to let it pass as skipped)");
}

/// Returns from a test (`-> Result<()>`) through [`cannot_run`] when network namespaces are
/// not available here.
#[macro_export]
macro_rules! require_namespaces {
    () => {
        if let Some(why) = $crate::namespaces_unavailable() {
            $crate::cannot_run(&why);
            return Ok(());
        }
    };
}

/// Where this workspace lives.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// This test process's cluster key directory, made once: every `gfs` and `ftvm` the helpers
/// start gets it in `FT_KEYS` (through [`Process::spawn`], [`NetNs::command`] and
/// [`with_keys`]), and this process uses it for its own gfs connections.
pub fn keys() -> Result<&'static Path> {
    static KEYS: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    let made = KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ftvm-tests-keys-{}", std::process::id()));
        let made = seal::generate(&dir, true).and_then(|_| seal::Security::from_dir(&dir));
        made.map(|security| {
            seal::install(security);
            dir
        })
        .map_err(|e| e.to_string())
    });
    match made {
        Ok(dir) => Ok(dir.as_path()),
        Err(e) => bail!("making the test's cluster key: {e}"),
    }
}

/// `command` with the test's cluster key in its environment.
pub fn with_keys(command: &mut Command) -> Result<&mut Command> {
    Ok(command.env(seal::KEYS_ENV, keys()?))
}

/// A binary of this workspace (`ftvm`, `gfs`), next to the test executable's `deps/` folder.
/// Refused when it was built from another checkout or before one of its sources changed:
/// `cargo test -p ftvm-tests` does not rebuild it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("the test's own path")?;
    let dir = exe.parent().and_then(|deps| deps.parent()).context("the target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is not built; run the tests with `cargo test --workspace`", path.display());
    }
    check_fresh(&path)?;
    Ok(path)
}

/// Checks `binary` against the dependency list cargo wrote next to it (`<binary>.d`): every
/// source it was built from is older than it, and they are this workspace's sources. For
/// `ftvm`, the embedded guest's sources count too (its build script watches them).
fn check_fresh(binary: &Path) -> Result<()> {
    let rebuild = match binary.file_name().and_then(|n| n.to_str()) {
        Some("gfs") => {
            "rebuild it: `cargo build --release -p storage --bin gfs` (or `cargo test --workspace --release`)"
        }
        _ => "rebuild it: `cargo build --release -p vmm --bin ftvm` (or `cargo test --workspace --release`)",
    };
    let built = std::fs::metadata(binary)?.modified()?;
    let root = workspace_root();
    let dep_info = binary.with_extension("d");
    let mut watched: Vec<PathBuf> = match std::fs::read_to_string(&dep_info) {
        Ok(listing) => {
            let sources = dep_info_sources(&listing);
            if !sources.iter().any(|s| s.starts_with(&root)) {
                bail!("{} was built from another checkout, not {}; {rebuild}", binary.display(), root.display());
            }
            sources
        }
        // Cargo writes `<binary>.d` only when the binary is built on its own, not when a clean
        // `cargo test --workspace` builds it for another package's tests: then every source of
        // the crates it is made of counts.
        Err(_) => {
            let mut sources = Vec::new();
            let crates: &[&str] = match binary.file_name().and_then(|n| n.to_str()) {
                Some("gfs") => &["storage", "seal", "pipesafe"],
                _ => &["vmm", "devices", "ftlog", "storage", "seal", "pipesafe", "guest-images"],
            };
            for name in crates {
                collect_files(&root.join(name).join("src"), &mut sources);
                sources.push(root.join(name).join("Cargo.toml"));
            }
            sources
        }
    };
    if binary.file_name().is_some_and(|n| n == "ftvm") {
        collect_files(&root.join("guest-images/guest/src"), &mut watched);
    }
    for source in watched {
        let changed = std::fs::metadata(&source).and_then(|m| m.modified());
        match changed {
            Ok(time) if time <= built => {}
            Ok(_) => bail!("{} is older than {}; {rebuild}", binary.display(), source.display()),
            Err(_) => bail!("{} was built from {}, which is gone; {rebuild}", binary.display(), source.display()),
        }
    }
    Ok(())
}

/// The prerequisites in a Makefile-style dependency file (`target: a.rs b.rs`, spaces in
/// names escaped with a backslash).
fn dep_info_sources(listing: &str) -> Vec<PathBuf> {
    let Some(first) = listing.lines().next() else {
        return Vec::new();
    };
    let Some((_, prerequisites)) = first.split_once(": ") else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = prerequisites.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    sources
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// Whether this process may create network namespaces (root with iproute2).
pub fn can_use_namespaces() -> bool {
    Command::new("ip").args(["netns", "list"]).output().map(|o| o.status.success()).unwrap_or(false) && is_root()
}

/// Why namespace tests cannot run here, if they cannot: root, iproute2 and `/dev/net/tun`.
pub fn namespaces_unavailable() -> Option<String> {
    if !can_use_namespaces() {
        return Some("needs root and iproute2 for network namespaces".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun for the VM's TAP".into());
    }
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// Creates `ftvm-<tag>-<pid>` with its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("ftvm-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A persistent TAP in the namespace with `host_cidr` on the host side, up.
    pub fn tap(&self, name: &str, host_cidr: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "mode", "tap", "name", name])?;
        self.ip(&["addr", "add", host_cidr, "dev", name])?;
        self.ip(&["link", "set", name, "up"])
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        command_in(&self.name, program)
    }

    /// Runs `work` on a thread that has entered the namespace (sockets it opens live there).
    pub fn within<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        self.spawn_within(work).join().map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
    }
}

impl NetNs {
    /// Like [`NetNs::within`], without waiting for `work` to end.
    pub fn spawn_within<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> JoinHandle<Result<T>> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: setns on a namespace fd we hold open; it changes only this thread's network
            // namespace, and this thread ends with `work`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns into the test namespace");
            }
            work()
        })
    }
}

/// A command that runs inside the namespace named `ns` (for a thread that does not hold the
/// [`NetNs`]), with the test's cluster key.
pub fn command_in(ns: &str, program: &Path) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(program);
    if let Ok(keys) = keys() {
        command.env(seal::KEYS_ENV, keys);
    }
    command
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// What a process printed: its lines in order, and when each was read (the readers are
/// dedicated threads, so that is when it was printed, within a millisecond or so).
#[derive(Default)]
struct Printed {
    text: String,
    /// When the n-th line of `text` arrived.
    times: Vec<Instant>,
}

/// What a [`Process`] printed, readable after the process is gone.
#[derive(Clone)]
pub struct OutputHandle(Arc<Mutex<Printed>>);

impl OutputHandle {
    pub fn text(&self) -> String {
        self.0.lock().map(|o| o.text.clone()).unwrap_or_default()
    }
}

/// A child process killed on drop, whose standard output is collected line by line.
pub struct Process {
    child: Child,
    output: Arc<Mutex<Printed>>,
    /// The threads copying stdout and stderr into `output`; they end when the pipes close.
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Result<Self> {
        let mut child = with_keys(&mut command)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {command:?}"))?;
        let output = Arc::new(Mutex::new(Printed::default()));
        let mut readers = Vec::new();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    if let Ok(mut all) = output.lock() {
                        all.text.push_str(&line);
                        all.text.push('\n');
                        all.times.push(Instant::now());
                    }
                }
            }));
        }
        Ok(Self { child, output, readers })
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.text.clone()).unwrap_or_default()
    }

    /// When the first line containing `needle` was printed, if one was.
    pub fn printed_at(&self, needle: &str) -> Option<Instant> {
        let printed = self.output.lock().ok()?;
        printed.text.lines().zip(&printed.times).find(|(line, _)| line.contains(needle)).map(|(_, at)| *at)
    }

    /// A handle on what the process prints that outlives the process (for diagnostics after a
    /// test has dropped it).
    pub fn output_handle(&self) -> OutputHandle {
        OutputHandle(Arc::clone(&self.output))
    }

    /// The exit status, if the process has exited (without waiting).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits until a line containing `needle` has been printed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("exited ({status}) before printing {needle:?}:\n{}", self.output());
            }
            if Instant::now() > deadline {
                bail!("{needle:?} not printed within {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.join_readers();
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("still running after {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until everything the process printed is in [`Process::output`]. The pipes close
    /// when the process and every child that inherited them have exited.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// SIGKILL, as a host failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) on our own child, which we have not reaped yet (so the pid is its).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
