//! Helpers for the end-to-end tests in `tests/tests/`: the built binaries, network namespaces
//! that the tests create and always remove, processes that are killed when a test ends, and
//! work done from inside a namespace.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A binary of this workspace (`ftvm`, `gfs`), next to the test executable's `deps/` folder.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("the test's own path")?;
    let dir = exe.parent().and_then(|deps| deps.parent()).context("the target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} is not built; run the tests with `cargo test --workspace`", path.display());
    }
    Ok(path)
}

/// Whether this process may create network namespaces (root with iproute2).
pub fn can_use_namespaces() -> bool {
    Command::new("ip").args(["netns", "list"]).output().map(|o| o.status.success()).unwrap_or(false) && unsafe_is_root()
}

fn unsafe_is_root() -> bool {
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
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `work` on a thread that has entered the namespace (sockets it opens live there).
    pub fn within<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
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
        .join()
        .map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
    }
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

/// A child process killed on drop, whose standard output is collected line by line.
pub struct Process {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {command:?}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    if let Ok(mut all) = output.lock() {
                        all.push_str(&line);
                        all.push('\n');
                    }
                }
            });
        }
        Ok(Self { child, output })
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
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
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("still running after {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a host failure would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
