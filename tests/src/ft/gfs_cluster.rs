//! gfs in the FT topology: the master (or its replicas) and three chunkservers started over
//! their directories in the fixture, the `gfs` client run from a host, and what they printed.

use super::{tail, FtNet, Host, CHUNKSERVER_PORTS, STORAGE_IP};
use crate::{binary, Process};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, Instant};

impl FtNet {
    /// The master (or its replicas) and three chunkservers, waited for until the master, asked
    /// from each host, sees all three up (and, replicated, until one replica leads).
    pub(super) fn start_gfs(&mut self) -> Result<()> {
        for i in 0..self.master_addrs.len() {
            let master = Process::spawn(self.gfs_master_command(i)?)?;
            self.gfs_processes().push(Some(master));
        }
        for i in 0..CHUNKSERVER_PORTS.len() {
            let chunkserver = Process::spawn(self.chunkserver_command(i)?)?;
            self.gfs_processes().push(Some(chunkserver));
        }
        if self.master_addrs.len() > 1 {
            self.master_leader(Duration::from_secs(30), None)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for host in [Host::A, Host::B] {
            loop {
                let status = self.gfs_client(host, &["status"]);
                let up = status.as_ref().map(|s| s.lines().filter(|l| l.contains(" up chunks ")).count()).unwrap_or(0);
                if up == CHUNKSERVER_PORTS.len() {
                    break;
                }
                for process in self.gfs_processes().iter_mut().flatten() {
                    if let Some(status) = process.exited()? {
                        bail!("a gfs process exited ({status})");
                    }
                }
                if Instant::now() > deadline {
                    bail!("the gfs master does not see {} chunkservers up from {}: {status:?}", up, host.label());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// `gfs master` (replica `i` of a replicated one, in its namespace, with `--peers`) over
    /// its directory in the fixture (a restart finds its state).
    pub(super) fn gfs_master_command(&self, i: usize) -> Result<Command> {
        let listen = self.master_addrs.get(i).with_context(|| format!("no master replica {i}"))?;
        let replicated = self.master_addrs.len() > 1;
        let ns = self.master_namespaces.get(i).unwrap_or(&self.storage);
        let mut master = ns.command(&binary("gfs")?);
        let dir = if replicated { format!("master{i}") } else { "master".to_owned() };
        master.arg("master").arg("--dir").arg(self.dir.join(dir));
        master.args(["--listen", listen, "--dead-after-secs", "3"]);
        if replicated {
            // `-v`: the replicas' Raft roles and terms show in the diagnostics.
            master.args(["--peers", &self.gfs_master(), "-v"]);
        }
        Ok(master)
    }

    /// `gfs chunkserver` number `i` (0..3) in `storage`, over its directory in the fixture.
    pub(super) fn chunkserver_command(&self, i: usize) -> Result<Command> {
        let port = CHUNKSERVER_PORTS.get(i).with_context(|| format!("no chunkserver {i}"))?;
        let mut chunkserver = self.storage.command(&binary("gfs")?);
        chunkserver.arg("chunkserver").arg("--dir").arg(self.dir.join(format!("cs{i}")));
        chunkserver.args(["--master", &self.gfs_master(), "--listen", &format!("{STORAGE_IP}:{port}")]);
        chunkserver.args(["--rack", &format!("rack{i}"), "--heartbeat-ms", "100"]);
        Ok(chunkserver)
    }

    /// The gfs processes: the master (or its replicas), then the chunkservers.
    pub(super) fn gfs_processes(&self) -> MutexGuard<'_, Vec<Option<Process>>> {
        self.gfs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The addresses a host that is cut from gfs must not reach: the storage namespace and
    /// the master's replicas.
    pub(super) fn storage_ips(&self) -> Vec<String> {
        let mut ips = vec![STORAGE_IP.to_owned()];
        for addr in &self.master_addrs {
            let ip = addr.split(':').next().unwrap_or(addr).to_owned();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        ips
    }

    /// Runs a `gfs` client command (`--master` given) in `host` and returns its standard output.
    pub fn gfs_client(&self, host: Host, args: &[&str]) -> Result<String> {
        let mut command = self.host(host).command(&binary("gfs")?);
        command.args(["--master", &self.gfs_master(), "--retry-secs", "1"]).args(args);
        let output = command.output().with_context(|| format!("run {command:?}"))?;
        if !output.status.success() {
            bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The register `name` as the master holds it: `NAME generation G holder H`.
    pub fn register(&self, name: &str) -> Result<String> {
        self.gfs_client(Host::A, &["lock", name])
    }

    /// The tail of what each gfs process printed, for diagnostics.
    pub(super) fn gfs_output(&self) -> String {
        let masters = self.master_addrs.len();
        let mut text = String::new();
        for (i, process) in self.gfs_processes().iter().enumerate() {
            let role = match i {
                0 if masters == 1 => "gfs master".to_owned(),
                i if i < masters => format!("gfs master replica {i} ({})", self.master_addrs[i]),
                i => format!("gfs chunkserver {}", i - masters),
            };
            match process {
                Some(process) => text.push_str(&format!("---- {role}\n{}", tail(&process.output(), 20))),
                None => text.push_str(&format!("---- {role}: killed\n")),
            }
        }
        text
    }
}
