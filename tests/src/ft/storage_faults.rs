//! Faults of gfs under the FT pair (issue 15, points 3, 4 and 6): its processes killed
//! (`kill -9`) and started again over the same directories, `gfs fsck`, and a chunkserver that
//! answers slowly (`tc netem delay` on its replies in the storage namespace).

use super::{FtNet, Host, CHUNKSERVER_PORTS};
use crate::Process;
use anyhow::{bail, Result};

/// The chunkservers of the fixture.
pub const CHUNKSERVERS: usize = CHUNKSERVER_PORTS.len();

/// One process of gfs in the storage namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GfsProcess {
    Master,
    /// Chunkserver 0, 1 or 2.
    Chunkserver(usize),
}

impl GfsProcess {
    fn slot(self) -> usize {
        match self {
            GfsProcess::Master => 0,
            GfsProcess::Chunkserver(i) => 1 + i,
        }
    }

    pub fn label(self) -> String {
        match self {
            GfsProcess::Master => "gfs master".into(),
            GfsProcess::Chunkserver(i) => format!("chunkserver {i}"),
        }
    }
}

impl FtNet {
    /// Kills `which` (SIGKILL, as a crash). False if it was not running.
    pub fn kill_gfs(&self, which: GfsProcess) -> bool {
        let mut processes = self.gfs_processes();
        match processes.get_mut(which.slot()).and_then(Option::take) {
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
            GfsProcess::Master => self.gfs_master_command()?,
            GfsProcess::Chunkserver(i) => self.chunkserver_command(i)?,
        };
        let mut processes = self.gfs_processes();
        let Some(slot) = processes.get_mut(which.slot()) else {
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
        match processes.get_mut(which.slot()).and_then(Option::as_mut) {
            Some(process) => Ok(process.exited()?.is_none()),
            None => Ok(false),
        }
    }

    /// `gfs fsck` from host-a: its report, or an error with it if a chunk has no live, healthy
    /// replica.
    pub fn fsck(&self) -> Result<String> {
        self.gfs_client(Host::A, &["fsck"])
    }

    /// Delays what chunkserver `i` sends by `delay_ms` (`tc netem delay` on the storage
    /// namespace's link, for packets from its port): it answers slowly.
    pub fn slow_chunkserver(&self, i: usize, delay_ms: u32) -> Result<()> {
        let port = CHUNKSERVER_PORTS.get(i).map(u16::to_string);
        let Some(port) = port else {
            bail!("no chunkserver {i}");
        };
        let delay = format!("{delay_ms}ms");
        self.storage.tc(&["qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio"])?;
        self.storage
            .tc(&["qdisc", "add", "dev", "eth0", "parent", "1:3", "handle", "30:", "netem", "delay", &delay])?;
        self.storage.tc(&[
            "filter", "add", "dev", "eth0", "parent", "1:0", "protocol", "ip", "u32", "match", "ip", "sport", &port,
            "0xffff", "flowid", "1:3",
        ])
    }

    /// Undoes [`FtNet::slow_chunkserver`].
    pub fn fast_chunkservers(&self) -> Result<()> {
        self.storage.tc(&["qdisc", "del", "dev", "eth0", "root"])
    }
}
