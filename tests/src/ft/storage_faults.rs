//! Faults of gfs under the FT pair (issue 15, points 3, 4 and 6): its processes killed
//! (`kill -9`) and started again over the same directories, `gfs fsck`, and a chunkserver that
//! answers slowly.

use super::{FtNet, Host, CHUNKSERVER_PORTS, GFS_DISK};
use crate::{binary, Process};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The chunkservers of the fixture.
pub const CHUNKSERVERS: usize = CHUNKSERVER_PORTS.len();

/// One process of gfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GfsProcess {
    /// The single master (replica 0 of a replicated one).
    Master,
    /// Replica 0, 1 or 2 of a replicated master ([`FtNet::with_replicated_master`]).
    Replica(usize),
    /// Chunkserver 0, 1 or 2.
    Chunkserver(usize),
}

impl GfsProcess {
    /// Its place among the fixture's gfs processes: the master's replicas, then the
    /// chunkservers.
    fn slot(self, replicas: usize) -> usize {
        match self {
            GfsProcess::Master => 0,
            GfsProcess::Replica(i) => i,
            GfsProcess::Chunkserver(i) => replicas + i,
        }
    }

    pub fn label(self) -> String {
        match self {
            GfsProcess::Master => "gfs master".into(),
            GfsProcess::Replica(i) => format!("gfs master replica {i}"),
            GfsProcess::Chunkserver(i) => format!("chunkserver {i}"),
        }
    }
}

impl FtNet {
    /// Kills `which` (SIGKILL, as a crash). False if it was not running.
    pub fn kill_gfs(&self, which: GfsProcess) -> bool {
        let mut processes = self.gfs_processes();
        match processes.get_mut(which.slot(self.master_replicas())).and_then(Option::take) {
            Some(mut process) => {
                process.kill();
                true
            }
            None => false,
        }
    }

    /// Starts `which` again over its directory (it finds its state there).
    pub fn restart_gfs(&self, which: GfsProcess) -> Result<()> {
        let command = match which {
            GfsProcess::Master => self.gfs_master_command(0)?,
            GfsProcess::Replica(i) => self.gfs_master_command(i)?,
            GfsProcess::Chunkserver(i) => self.chunkserver_command(i)?,
        };
        let mut processes = self.gfs_processes();
        let Some(slot) = processes.get_mut(which.slot(self.master_replicas())) else {
            bail!("no {} in this fixture", which.label());
        };
        if slot.is_some() {
            bail!("the {} is running", which.label());
        }
        *slot = Some(Process::spawn(command)?);
        Ok(())
    }

    /// Whether `which` runs (started by the fixture and not killed, and not exited).
    pub fn gfs_running(&self, which: GfsProcess) -> Result<bool> {
        let mut processes = self.gfs_processes();
        match processes.get_mut(which.slot(self.master_replicas())).and_then(Option::as_mut) {
            Some(process) => Ok(process.exited()?.is_none()),
            None => Ok(false),
        }
    }

    /// `gfs fsck` from host-a: whether it passed (no chunk without a live, healthy replica),
    /// and what it printed (the problems, then the summary).
    pub fn fsck(&self) -> Result<(bool, String)> {
        let mut command = self.host(Host::A).command(&binary("gfs")?);
        command.args(["--master", &self.gfs_master(), "--retry-secs", "1", "fsck"]);
        let output = command.output().with_context(|| format!("run {command:?}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Ok((output.status.success(), text.trim().to_owned()))
    }

    /// Polls `gfs fsck` until every chunk has all its replicas live and healthy (after a
    /// storm, the master re-replicates what a dead chunkserver held); its summary line. Not
    /// clean in time: the error has the last report and `gfs stat` of the VM's disk.
    pub fn wait_for_clean_fsck(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.fsck()?;
            let summary = report.1.lines().find(|line| line.starts_with("files ")).unwrap_or_default();
            if report.0 && fsck_clean(summary) {
                return Ok(summary.to_owned());
            }
            if Instant::now() > deadline {
                let path = GFS_DISK.trim_start_matches("gfs:");
                let stat = self.gfs_client(Host::A, &["stat", path]).unwrap_or_else(|e| format!("{e:#}"));
                bail!("gfs fsck is not clean {timeout:?} after healing:\n{}\ngfs stat {path}:\n{stat}", report.1);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Makes chunkserver `i` answer slowly until the returned guard is dropped: it is stopped
    /// (SIGSTOP) for `stopped` of every `stopped + running` (SIGCONT). This machine's kernel has no
    /// `netem` queueing discipline (`tc qdisc add ... netem` says "Specified qdisc kind is
    /// unknown"), so the delay is the process's, as a chunkserver on an overloaded machine or
    /// a slow disk would show it.
    pub fn slow_chunkserver(&self, i: usize, stopped: Duration, running: Duration) -> Result<SlowProcess> {
        let which = GfsProcess::Chunkserver(i);
        let pid = match self.gfs_processes().get(which.slot(self.master_replicas())).and_then(Option::as_ref) {
            Some(process) => process.pid(),
            None => bail!("the {} is not running", which.label()),
        };
        SlowProcess::start(pid, stopped, running)
    }
}

/// A process made slow (by [`FtNet::slow_chunkserver`], say); runs at full speed again on
/// drop.
pub struct SlowProcess {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowProcess {
    /// Stops process `pid` (SIGSTOP) for `stopped` of every `stopped + running` (SIGCONT).
    pub fn start(pid: u32, stopped: Duration, running: Duration) -> Result<Self> {
        let pid = libc::pid_t::try_from(pid).context("pid")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    signal(pid, libc::SIGSTOP);
                    std::thread::sleep(stopped);
                    signal(pid, libc::SIGCONT);
                    std::thread::sleep(running);
                }
            })
        };
        Ok(SlowProcess { stop, thread: Some(thread) })
    }
}

impl Drop for SlowProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes no memory from us; the pid is a child this test spawned and holds
    // (unreaped) while the test that slowed it runs.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether `gfs fsck`'s summary (`files F chunks C: H healthy, U under-replicated, M missing`)
/// has every chunk healthy.
fn fsck_clean(summary: &str) -> bool {
    summary.ends_with(" 0 under-replicated, 0 missing") && summary.starts_with("files ")
}

#[cfg(test)]
mod tests {
    use super::fsck_clean;

    #[test]
    fn fsck_is_clean_only_with_nothing_under_replicated_or_missing() {
        assert!(fsck_clean("files 1 chunks 2: 2 healthy, 0 under-replicated, 0 missing"));
        assert!(!fsck_clean("files 1 chunks 2: 1 healthy, 1 under-replicated, 0 missing"));
        assert!(!fsck_clean("files 1 chunks 2: 1 healthy, 0 under-replicated, 10 missing"));
    }
}
