//! A gfs cluster for tests and benchmarks: a master and chunkservers (the `gfs` binary, built
//! with `cargo build --release -p storage`), each on its own data directory, on this namespace's
//! loopback or inside a network namespace; all killed when the cluster is dropped.

use crate::disks::LoopExt4;
use crate::{binary, NetNs, Process};
use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Cluster<'a> {
    pub dir: tempfile::TempDir,
    ns: Option<&'a NetNs>,
    pub master_addr: String,
    /// The master, then chunkserver 0, 1, ...
    servers: Vec<Process>,
    /// Chunkservers' addresses, in order.
    pub chunkservers: Vec<String>,
    /// File systems mounted for the cluster (a chunkserver's small disk): unmounted on drop,
    /// once the servers are gone.
    mounts: Vec<PathBuf>,
    /// Chunkservers' disks that can fail, by chunkserver: unmounted and detached on drop,
    /// once the servers are gone.
    failing_disks: Vec<(usize, LoopExt4)>,
}

/// Where a chunkserver of [`Cluster::start_with`] keeps its chunks, other than a plain
/// directory of the cluster's.
#[derive(Clone, Copy, Debug)]
pub enum ChunkserverDisk<'s> {
    /// A tmpfs of this size (`mount -t tmpfs -o size=SIZE`): a disk a test can fill.
    Tmpfs(&'s str),
    /// An ext4 file system on a loop device: a disk a test can make fail with I/O errors
    /// ([`Cluster::fail_disk_with_io_errors`]).
    LoopExt4,
}

/// A port nobody listens on now.
fn free_addr() -> Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

impl<'a> Cluster<'a> {
    /// A master and `n` chunkservers (each on its own rack), under `parent` (a temporary
    /// directory there), all of them heard by the master before this returns.
    pub fn start(ns: Option<&'a NetNs>, n: usize, parent: &Path) -> Result<Cluster<'a>> {
        Self::start_with(ns, n, parent, &[])
    }

    /// Like [`Cluster::start`], with chunkserver `i`'s data directory on `disk` for each
    /// `(i, disk)` of `disks` (mounting needs root).
    pub fn start_with(
        ns: Option<&'a NetNs>,
        n: usize,
        parent: &Path,
        disks: &[(usize, ChunkserverDisk)],
    ) -> Result<Cluster<'a>> {
        // The servers, and this process's own gfs connections, use the test's cluster key.
        crate::keys()?;
        let dir = tempfile::Builder::new().prefix("gfs-").tempdir_in(parent)?;
        let addr = |i: usize| -> Result<String> {
            match ns {
                // A fresh namespace has every port free.
                Some(_) => Ok(format!("127.0.0.1:{}", 7100 + i)),
                None => free_addr(),
            }
        };
        let master_addr = addr(0)?;
        let mut cluster = Cluster {
            dir,
            ns,
            master_addr: master_addr.clone(),
            servers: Vec::new(),
            chunkservers: Vec::new(),
            mounts: Vec::new(),
            failing_disks: Vec::new(),
        };
        let master_dir = cluster.path("master");
        cluster.spawn(&["master", "--listen", &master_addr, "--dir", &master_dir])?;
        cluster.wait_listening(&master_addr)?;
        for i in 0..n {
            let cs = addr(i + 1)?;
            let cs_dir = cluster.path(&format!("cs{i}"));
            match disks.iter().find(|(at, _)| *at == i).map(|(_, disk)| disk) {
                Some(ChunkserverDisk::Tmpfs(size)) => cluster.mount_tmpfs(Path::new(&cs_dir), size)?,
                Some(ChunkserverDisk::LoopExt4) => {
                    let image = cluster.dir.path().join(format!("cs{i}.img"));
                    let disk = LoopExt4::mount(&image, Path::new(&cs_dir))?;
                    cluster.failing_disks.push((i, disk));
                }
                None => {}
            }
            let rack = format!("rack{i}");
            cluster.spawn(&[
                "chunkserver",
                "--master",
                &master_addr,
                "--listen",
                &cs,
                "--rack",
                &rack,
                "--heartbeat-ms",
                "100",
                "--dir",
                &cs_dir,
            ])?;
            cluster.wait_listening(&cs)?;
            cluster.chunkservers.push(cs);
        }
        cluster.wait_for_chunkservers(n)?;
        Ok(cluster)
    }

    fn mount_tmpfs(&mut self, dir: &Path, size: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output()?;
        if !out.status.success() {
            bail!("mount a {size} tmpfs at {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        self.mounts.push(dir.to_path_buf());
        Ok(())
    }

    /// Shuts chunkserver `i`'s disk down (a [`ChunkserverDisk::LoopExt4`]): from now on every
    /// read, write and sync there fails with EIO.
    pub fn fail_disk_with_io_errors(&self, i: usize) -> Result<()> {
        match self.failing_disks.iter().find(|(at, _)| *at == i) {
            Some((_, disk)) => disk.fail_with_io_errors(),
            None => bail!("chunkserver {i} has no disk that can fail (start it on ChunkserverDisk::LoopExt4)"),
        }
    }

    /// Chunkserver `i`'s data directory.
    pub fn chunkserver_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("cs{i}"))
    }

    /// What chunkserver `i` has printed so far (its log).
    pub fn chunkserver_output(&self, i: usize) -> String {
        self.servers.get(1 + i).map(Process::output).unwrap_or_default()
    }

    /// What the master has printed so far (its log).
    pub fn master_output(&self) -> String {
        self.servers.first().map(Process::output).unwrap_or_default()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A command for `program` where the cluster runs (inside its namespace, if it has one).
    pub fn command(&self, program: &Path) -> Command {
        match self.ns {
            Some(ns) => ns.command(program),
            None => {
                let mut command = Command::new(program);
                if let Ok(keys) = crate::keys() {
                    command.env(seal::KEYS_ENV, keys);
                }
                command
            }
        }
    }

    fn spawn(&mut self, args: &[&str]) -> Result<()> {
        let mut command = self.command(&binary("gfs")?);
        command.args(args);
        self.servers.push(Process::spawn(command)?);
        Ok(())
    }

    fn wait_listening(&self, addr: &str) -> Result<()> {
        let addr = addr.to_owned();
        let poll = move || -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect(&addr).is_err() {
                if Instant::now() > deadline {
                    bail!("{addr} never listened");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        match self.ns {
            Some(ns) => ns.within(poll),
            None => poll(),
        }
    }

    fn wait_for_chunkservers(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.gfs(&["status"])?;
            let up = String::from_utf8_lossy(&out.stdout).matches(" up ").count();
            if up >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {up} of {n} chunkservers up: {}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `gfs --master ADDR ARGS`.
    pub fn gfs(&self, args: &[&str]) -> Result<Output> {
        self.command(&binary("gfs")?).arg("--master").arg(&self.master_addr).args(args).output().context("run gfs")
    }

    /// `ftvm ARGS` with `GFS_MASTER` set to this cluster, where the cluster runs.
    pub fn ftvm(&self, args: &[&str]) -> Result<Output> {
        self.command(&binary("ftvm")?).args(args).env("GFS_MASTER", &self.master_addr).output().context("run ftvm")
    }

    /// Creates the gfs disk `gfs:/PATH` of `size` (`ftvm disk create`).
    pub fn create_disk(&self, path: &str, size: &str) -> Result<PathBuf> {
        let out = self.ftvm(&["disk", "create", path, "--size", size])?;
        if !out.status.success() {
            bail!("ftvm disk create {path}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(PathBuf::from(path))
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        // The servers first: a mounted file system they still use cannot be unmounted.
        self.servers.clear();
        for dir in self.mounts.drain(..) {
            let _ = Command::new("umount").arg(&dir).output();
        }
        // Unmounted and detached; the images go with the cluster's directory after this.
        self.failing_disks.clear();
    }
}
