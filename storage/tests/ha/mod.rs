//! Harness for the replicated master: three `gfs master --peers` processes and chunkservers
//! that report to all of them, on loopback.
#![allow(dead_code)]

use super::common::{free_addr, gfs_command, temp_dir, wait_listening};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use storage::client::RetryPolicy;
use storage::error::ErrorKind;
use storage::Client;

pub struct Replicas {
    pub dir: PathBuf,
    pub addrs: Vec<String>,
    pub masters: Vec<Option<Child>>,
    /// Replicas stopped with SIGSTOP (not to be asked anything until continued).
    pub stopped: Vec<bool>,
    pub master_args: Vec<String>,
    pub cs_addrs: Vec<String>,
    pub cs: Vec<Option<Child>>,
}

fn spawn(args: &[String], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    let f2 = f.try_clone().expect("clone log");
    gfs_command().args(args).arg("-v").stdout(Stdio::from(f)).stderr(Stdio::from(f2)).spawn().expect("spawn gfs")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on a child process this test started and has not yet reaped.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

impl Replicas {
    /// Starts three master replicas (with `master_args` added) and `n_cs` chunkservers, and
    /// waits until a leader has heard from every chunkserver.
    pub fn start(name: &str, n_cs: usize, master_args: &[&str]) -> Replicas {
        let dir = temp_dir(name);
        let mut r = Replicas {
            addrs: (0..3).map(|_| free_addr()).collect(),
            masters: vec![None, None, None],
            stopped: vec![false; 3],
            master_args: master_args.iter().map(|s| s.to_string()).collect(),
            cs_addrs: (0..n_cs).map(|_| free_addr()).collect(),
            cs: (0..n_cs).map(|_| None).collect(),
            dir,
        };
        for i in 0..3 {
            r.start_master(i);
        }
        for i in 0..n_cs {
            r.start_cs(i);
        }
        r.settle();
        r
    }

    /// `A,B,C`.
    pub fn list(&self) -> String {
        self.addrs.join(",")
    }

    pub fn start_master(&mut self, i: usize) {
        let mut args: Vec<String> = [
            "master",
            "--dir",
            &self.dir.join(format!("m{i}")).display().to_string(),
            "--listen",
            &self.addrs[i],
            "--peers",
            &self.list(),
            "--dead-after-secs",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.master_args.iter().cloned());
        self.masters[i] = Some(spawn(&args, &self.dir.join(format!("m{i}.log"))));
        self.stopped[i] = false;
        wait_listening(&self.addrs[i]);
    }

    /// kill -9 replica `i`.
    pub fn kill_master(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stopped[i] = false;
    }

    /// SIGSTOP replica `i`: as if cut off from everyone (its connections stay open).
    pub fn pause(&mut self, i: usize) {
        signal(self.masters[i].as_ref().expect("replica runs"), libc::SIGSTOP);
        self.stopped[i] = true;
    }

    pub fn resume(&mut self, i: usize) {
        signal(self.masters[i].as_ref().expect("replica runs"), libc::SIGCONT);
        self.stopped[i] = false;
    }

    pub fn start_cs(&mut self, i: usize) {
        let args: Vec<String> = [
            "chunkserver",
            "--dir",
            &self.dir.join(format!("cs{i}")).display().to_string(),
            "--master",
            &self.list(),
            "--listen",
            &self.cs_addrs[i],
            "--rack",
            &format!("rack{i}"),
            "--heartbeat-ms",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.cs[i] = Some(spawn(&args, &self.dir.join(format!("cs{i}.log"))));
        wait_listening(&self.cs_addrs[i]);
    }

    /// A client of the whole group (it finds the leader).
    pub fn client(&self) -> Client {
        Client::new(&self.list())
    }

    /// A client of replica `i` alone that gives up at once when it cannot be reached.
    pub fn direct(&self, i: usize) -> Client {
        Client::with_retry(&self.addrs[i], RetryPolicy { master_wait: Duration::ZERO, ..RetryPolicy::default() })
    }

    /// Whether replica `i` answers as the leader.
    pub fn is_leader(&self, i: usize) -> bool {
        if self.masters[i].is_none() || self.stopped[i] {
            return false;
        }
        self.direct(i).register("leader-probe").is_ok()
    }

    /// The replica that leads, waiting up to `timeout` for one.
    pub fn leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = (0..3).find(|&i| self.is_leader(i)) {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What replica `i` answers to a write: `None` if it took it, else the error kind.
    pub fn write_refusal(&self, i: usize, path: &str) -> Option<ErrorKind> {
        match self.direct(i).create(path) {
            Ok(()) => None,
            Err(e) => Some(e.kind().unwrap_or(ErrorKind::Io)),
        }
    }

    /// Waits until the leader has heard from every running chunkserver.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.leader(Duration::from_secs(10));
            let live = self.direct(leader).status().map(|s| s.servers.iter().filter(|s| s.live).count()).unwrap_or(0);
            if live >= self.cs.iter().filter(|c| c.is_some()).count() {
                return;
            }
            assert!(Instant::now() < deadline, "chunkservers did not all report to the leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..3 {
            if self.stopped[i] {
                self.resume(i);
            }
            self.kill_master(i);
        }
        for c in self.cs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Replicas {
    /// Waits until `v` holds at least `n` items.
    pub fn wait_until_count<T>(v: &std::sync::Mutex<Vec<T>>, n: usize, timeout: Duration) {
        super::common::Cluster::wait_until(&format!("{n} acknowledged"), timeout, || {
            v.lock().map(|v| v.len() >= n).unwrap_or(false)
        });
    }
}
