//! The FT pair on one host over loopback, without namespaces: a gfs master for the go-live
//! registers, and `ftvm run --ft` / `ftvm backup` processes on free ports of 127.0.0.1.

use crate::{binary, Process};
use anyhow::{bail, Result};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (free when asked: bind it soon).
pub fn free_addr() -> Result<String> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

/// A gfs master on loopback, killed on drop.
pub struct Master {
    pub addr: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Master {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_addr()?;
        let mut command = Command::new(binary("gfs")?);
        command.args(["master", "--listen", &addr, "--dir"]).arg(dir.path().join("master"));
        let process = Process::spawn(command)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                bail!("the gfs master never listened on {addr}:\n{}", process.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr, _process: process, _dir: dir })
    }

    /// `ftvm run --guest WORKLOAD --ft NAME` live on `listen`, with `extra` flags.
    pub fn primary(&self, name: &str, listen: &str, workload: &[&str], extra: &[&str]) -> Result<Process> {
        let mut command = Command::new(binary("ftvm")?);
        command.args(["run", "--guest"]).args(workload);
        command.args(["--ft", name, "--gfs-master", &self.addr, "--ft-listen", listen]).args(extra);
        Process::spawn(command)
    }

    /// `ftvm backup --join JOIN` on `listen`, with `extra` flags.
    pub fn backup(&self, join: &str, listen: &str, extra: &[&str]) -> Result<Process> {
        let mut command = Command::new(binary("ftvm")?);
        command.args(["backup", "--join", join, "--gfs-master", &self.addr, "--ft-listen", listen]).args(extra);
        Process::spawn(command)
    }
}
