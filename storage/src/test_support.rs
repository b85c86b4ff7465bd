//! What the crate's unit tests share: temporary directories, addresses where nothing
//! listens, and real chunkservers started in the test process.

use crate::chunkserver::{ChunkServer, ChunkServerConfig};
use crate::sync::Unpoisoned;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A new, empty directory for `name` in this test process, under one directory per process
/// (`gfs-unit-PID`), which is left behind like the integration tests' `gfs-e2e-*`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gfs-unit-{}", std::process::id())).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    dir
}

/// A loopback address nothing listens on, different at each call: port 1 of an address in
/// 127.0.0.0/8 (no test binds port 1; a port bound and let go could be bound again meanwhile by
/// a test running in parallel). A request sent there is refused at once.
pub fn closed_addr() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.{}.{}.{}:1", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// A real chunkserver in this process on loopback, its store in a temporary directory. Its
/// master cannot be reached (tests set versions, leases and fences themselves), it does not
/// scrub, and its heartbeats are an hour apart.
pub fn start_chunkserver(name: &str) -> Arc<ChunkServer> {
    start_chunkserver_of(name, &closed_addr())
}

/// [`start_chunkserver`] with `master` as its master. Its first heartbeat is turned away
/// (the master checks its address first) and the next is an hour later.
pub fn start_chunkserver_of(name: &str, master: &str) -> Arc<ChunkServer> {
    let mut cfg = ChunkServerConfig::new(temp_dir(name), master, "127.0.0.1:0");
    cfg.heartbeat = Duration::from_secs(3600);
    cfg.scrub_interval = None;
    cfg.sync = false;
    cfg.direct_io = false;
    ChunkServer::start(cfg).expect("start a chunkserver")
}

/// Runs `f` with the log events of this thread (not of threads it starts) written to a buffer;
/// returns what `f` returned and the log text. For messages that operators and other tests
/// read.
pub fn with_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock_unpoisoned().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buffer.0.lock_unpoisoned()).into_owned();
    (out, text)
}
