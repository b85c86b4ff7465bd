//! Test harness: a master and chunkservers as real `gfs` processes on loopback.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use storage::Client;

pub const GFS: &str = env!("CARGO_BIN_EXE_gfs");

/// This test process's cluster key: made once, used by every in-process client and server
/// (installed as the process's security) and given to every `gfs` it spawns (FT_KEYS).
pub fn keys() -> &'static Path {
    static KEYS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gfs-e2e-keys-{}", std::process::id()));
        seal::generate(&dir, true).expect("make the test's cluster key");
        seal::install(seal::Security::from_dir(&dir).expect("load the test's cluster key"));
        dir
    })
}

/// `gfs` with this test process's cluster key.
pub fn gfs_command() -> Command {
    let mut command = Command::new(GFS);
    command.env(seal::KEYS_ENV, keys());
    command
}

pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").to_string()
}

pub fn wait_listening(addr: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{addr} never started listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gfs-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A child process killed when dropped (also when a test panics).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct ChunkServerProc {
    pub addr: String,
    pub dir: PathBuf,
    pub rack: String,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub master_addr: String,
    pub master_args: Vec<String>,
    pub master: Option<Child>,
    pub cs: Vec<ChunkServerProc>,
    pub heartbeat_ms: u64,
    /// Shadow masters chunkservers also report to.
    pub shadows: Vec<String>,
    /// File systems mounted for the test, unmounted on drop.
    pub mounts: Vec<PathBuf>,
    /// The master's `--dead-after-secs`.
    pub dead_after_secs: u64,
    /// When chunkserver `i` was last started by [`Cluster::start_cs`]: [`Cluster::settle`] waits
    /// for a heartbeat from that process, not from the one before it.
    pub cs_started: Vec<Option<Instant>>,
}

fn spawn(args: &[String], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    let f2 = f.try_clone().expect("clone log");
    gfs_command().args(args).arg("-v").stdout(Stdio::from(f)).stderr(Stdio::from(f2)).spawn().expect("spawn gfs")
}

impl Cluster {
    /// Starts a master (with `master_args` added) and `n` chunkservers, and waits until they
    /// have all registered.
    pub fn start(name: &str, n: usize, master_args: &[&str]) -> Cluster {
        keys();
        let dir = temp_dir(name);
        let mut c = Cluster {
            master_addr: free_addr(),
            master_args: master_args.iter().map(|s| s.to_string()).collect(),
            master: None,
            cs: Vec::new(),
            heartbeat_ms: 100,
            shadows: Vec::new(),
            mounts: Vec::new(),
            dead_after_secs: 3,
            cs_started: Vec::new(),
            dir,
        };
        c.start_master();
        for i in 0..n {
            c.cs.push(ChunkServerProc {
                addr: free_addr(),
                dir: c.dir.join(format!("cs{i}")),
                rack: format!("rack{i}"),
                child: None,
            });
            c.start_cs(i);
        }
        c.settle();
        c
    }

    pub fn master_dir(&self) -> PathBuf {
        self.dir.join("master")
    }

    pub fn start_master(&mut self) {
        let mut args: Vec<String> = vec![
            "master".into(),
            "--dir".into(),
            self.master_dir().display().to_string(),
            "--listen".into(),
            self.master_addr.clone(),
            "--dead-after-secs".into(),
            self.dead_after_secs.to_string(),
        ];
        args.extend(self.master_args.iter().cloned());
        self.master = Some(spawn(&args, &self.dir.join("master.log")));
        wait_listening(&self.master_addr);
    }

    /// kill -9 the master.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_cs(&mut self, i: usize) {
        let p = &self.cs[i];
        let args: Vec<String> = vec![
            "chunkserver".into(),
            "--dir".into(),
            p.dir.display().to_string(),
            "--master".into(),
            std::iter::once(self.master_addr.clone()).chain(self.shadows.iter().cloned()).collect::<Vec<_>>().join(","),
            "--listen".into(),
            p.addr.clone(),
            "--rack".into(),
            p.rack.clone(),
            "--heartbeat-ms".into(),
            self.heartbeat_ms.to_string(),
        ];
        if self.cs_started.len() <= i {
            self.cs_started.resize(i + 1, None);
        }
        self.cs_started[i] = Some(Instant::now());
        let child = spawn(&args, &self.dir.join(format!("cs{i}.log")));
        wait_listening(&self.cs[i].addr);
        self.cs[i].child = Some(child);
    }

    /// The process id of chunkserver `i`, while it runs.
    pub fn cs_pid(&self, i: usize) -> u32 {
        self.cs[i].child.as_ref().map(Child::id).expect("chunkserver is running")
    }

    /// kill -9 chunkserver `i`.
    pub fn kill_cs(&mut self, i: usize) {
        if let Some(mut c) = self.cs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the master, and every shadow, has had a heartbeat (with its chunk report)
    /// from every running chunkserver since that chunkserver's process started.
    pub fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for master in std::iter::once(&self.master_addr).chain(&self.shadows) {
            let client = Client::new(master);
            loop {
                let status = client.status();
                let missing: Vec<&str> = self
                    .cs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.child.is_some())
                    .filter(|(i, p)| {
                        let since_start = self.cs_started.get(*i).copied().flatten().map(|t| t.elapsed());
                        !status.as_ref().is_ok_and(|st| {
                            st.servers.iter().any(|s| {
                                s.addr == p.addr
                                    && s.live
                                    && since_start.is_none_or(|d| Duration::from_millis(s.last_seen_ms + 1) < d)
                            })
                        })
                    })
                    .map(|(_, p)| p.addr.as_str())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "{master} has not heard from {missing:?}: {status:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Polls `done` every 20 ms until it holds; panics naming `what` after `timeout`.
    pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.master_addr)
    }

    /// Runs the CLI against this cluster.
    pub fn gfs(&self, args: &[&str]) -> Output {
        gfs_command().arg("--master").arg(&self.master_addr).args(args).output().expect("run gfs")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn gfs_ok(&self, args: &[&str]) -> String {
        let out = self.gfs(args);
        assert!(out.status.success(), "gfs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Chunk data files (`*.dat`) of chunkserver `i`.
    pub fn chunk_files(&self, i: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.cs[i].dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "dat"));
        v.sort();
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_master();
        for i in 0..self.cs.len() {
            self.kill_cs(i);
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg(&m).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reads `[0, len)` of a chunk straight from one chunkserver: its bytes, or the error kind
/// that cut the stream short.
pub fn fetch_replica(addr: &str, handle: u64, version: u32, len: u64) -> Result<Vec<u8>, storage::error::ErrorKind> {
    use storage::protocol::{ChunkReply, ChunkRequest, Conn, Incoming, Reply};
    let mut conn = Conn::connect(addr, Duration::from_secs(5)).expect("connect");
    conn.send(&ChunkRequest::Read { handle, version, offset: 0, len }).expect("send");
    match conn.recv::<Reply<ChunkReply>>().expect("reply") {
        Ok(ChunkReply::Reading { .. }) => {}
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => return Err(e.kind),
    }
    let mut frame = Vec::new();
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        match conn.recv_frame(&mut frame).expect("frame") {
            Incoming::Data => out.extend_from_slice(&frame),
            Incoming::Msg => {
                let r = Conn::decode_msg::<Reply<ChunkReply>>(&frame).expect("decode");
                return Err(r.err().map(|e| e.kind).unwrap_or(storage::error::ErrorKind::Protocol));
            }
        }
    }
    Ok(out)
}

/// Reads a chunk straight from one chunkserver; returns the error kind that cut it short.
pub fn read_replica(addr: &str, handle: u64, version: u32, len: u64) -> Option<storage::error::ErrorKind> {
    fetch_replica(addr, handle, version, len).err()
}
