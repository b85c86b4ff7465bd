//! A chunkserver: stores chunk replicas ([`store`]), receives pushed data and forwards it down
//! the chain ([`service`]), applies mutations in the primary's serial order, serves verified
//! reads, reports to the master ([`heartbeat`]) and scrubs its replicas in the background
//! ([`scrub`]).

pub mod aligned;
pub mod buffers;
pub mod disk;
pub mod heartbeat;
pub mod mutation;
pub mod replicate;
pub mod scrub;
pub mod service;
pub mod store;

use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkHandle, Fence, Pool, Version};
use crate::sync::Unpoisoned;
use buffers::Buffers;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::Store;

/// Chunkserver settings.
#[derive(Debug, Clone)]
pub struct ChunkServerConfig {
    pub dir: PathBuf,
    pub master: String,
    pub listen: String,
    /// The address to give the master and clients (`--advertise`); needed when `listen` is a
    /// wildcard such as `0.0.0.0:7001`, which nobody can connect to.
    pub advertise: Option<String>,
    pub rack: String,
    pub heartbeat: Duration,
    /// fdatasync chunk data and checksums before acknowledging a mutation.
    pub sync: bool,
    /// Large and durable writes and streaming reads use `O_DIRECT` (false: all through the
    /// page cache). Measured cheaper in CPU on this machine; see FIGURES.md.
    pub direct_io: bool,
    /// Most bytes of pushed, not yet applied data held in memory.
    pub buffer_limit: usize,
    /// Time between full scrub passes over every replica ([`scrub`]); `None` disables it.
    pub scrub_interval: Option<Duration>,
    /// Pause between two chunks of a scrub pass.
    pub scrub_pause: Duration,
    /// Most bytes a second the scrubber reads (0: no limit).
    pub scrub_rate: u64,
    /// Idle timeout and connection limits of the service.
    pub limits: crate::protocol::conn::ServeLimits,
}

impl ChunkServerConfig {
    pub fn new(dir: impl Into<PathBuf>, master: impl Into<String>, listen: impl Into<String>) -> Self {
        ChunkServerConfig {
            dir: dir.into(),
            master: master.into(),
            listen: listen.into(),
            advertise: None,
            rack: "default".into(),
            heartbeat: Duration::from_millis(1000),
            sync: true,
            direct_io: true,
            buffer_limit: 512 * 1024 * 1024,
            scrub_interval: Some(Duration::from_secs(3600)),
            scrub_pause: Duration::from_millis(20),
            scrub_rate: 32 * 1024 * 1024,
            limits: Default::default(),
        }
    }
}

/// The address this server is known by: `--advertise`, else the bound address, which must
/// then be one others can connect to.
fn advertised_addr(cfg: &ChunkServerConfig, bound: std::net::SocketAddr) -> Result<String> {
    match &cfg.advertise {
        Some(a) => {
            let parsed = crate::util::check_server_addr(a)
                .map_err(|why| GfsError::fs(ErrorKind::InvalidArgument, format!("--advertise {a:?}: {why}")))?;
            Ok(parsed)
        }
        None if bound.ip().is_unspecified() => Err(GfsError::fs(
            ErrorKind::InvalidArgument,
            format!(
                "listening on {bound}, which no one can connect to: pass --advertise HOST:PORT, the address the \
                 master and clients reach this server at"
            ),
        )),
        None => Ok(bound.to_string()),
    }
}

/// A lease this server holds as primary.
#[derive(Debug, Clone, Copy)]
pub struct HeldLease {
    pub version: Version,
    pub expires: Instant,
    /// Masters (one bit per place in `--master`) not yet asked to extend it since it was last
    /// mutated: each is asked, since any replica of a replicated master may lead.
    pub mutated: u64,
}

/// The chunkserver's shared core.
pub struct ChunkServer {
    pub cfg: ChunkServerConfig,
    /// The address this server is known by (its bound listen address).
    pub addr: String,
    pub store: Store,
    /// Whether the data disk is full or failing (reported in heartbeats).
    pub disk: disk::DiskHealth,
    pub buffers: Buffers,
    pub peers: Pool,
    leases: Mutex<HashMap<ChunkHandle, HeldLease>>,
    /// Register generations known from the master, for fencing.
    fences: Mutex<HashMap<String, u64>>,
    /// Whether the register table has been received since start.
    fences_synced: AtomicBool,
    /// Tokens masters sent when checking this server, newest last (shown in heartbeats).
    tokens: Mutex<std::collections::VecDeque<u64>>,
}

/// Most master tokens kept: one per master (and shadow) with room for re-checks.
const MAX_TOKENS: usize = 8;

impl ChunkServer {
    /// Opens the store, binds the listener and starts serving and heartbeating.
    pub fn start(cfg: ChunkServerConfig) -> Result<Arc<ChunkServer>> {
        let store = Store::open(&cfg.dir, cfg.sync)?;
        store.set_direct(cfg.direct_io);
        let listener =
            TcpListener::bind(&cfg.listen).map_err(|e| GfsError::io(format!("binding {}", cfg.listen), e))?;
        let bound = listener.local_addr().map_err(|e| GfsError::io("reading the bound address", e))?;
        let addr = advertised_addr(&cfg, bound)?;
        let cs = Arc::new(ChunkServer {
            disk: disk::DiskHealth::new(&cfg.dir),
            buffers: Buffers::new(cfg.buffer_limit, Duration::from_secs(120)),
            cfg,
            addr,
            store,
            peers: Pool::default(),
            leases: Mutex::new(HashMap::new()),
            fences: Mutex::new(HashMap::new()),
            fences_synced: AtomicBool::new(false),
            tokens: Mutex::new(std::collections::VecDeque::new()),
        });
        tracing::info!(addr = %cs.addr, chunks = cs.store.report().0.len(), "chunkserver started");
        service::spawn_accept(cs.clone(), listener)?;
        heartbeat::spawn(cs.clone())?;
        scrub::spawn(cs.clone())?;
        Ok(cs)
    }

    /// A master checked this server and sent `token` to show in heartbeats.
    pub fn keep_token(&self, token: u64) {
        let mut t = self.tokens.lock_unpoisoned();
        if !t.contains(&token) {
            if t.len() == MAX_TOKENS {
                t.pop_front();
            }
            t.push_back(token);
        }
    }

    /// Tokens to show in heartbeats.
    pub fn tokens(&self) -> Vec<u64> {
        self.tokens.lock_unpoisoned().iter().copied().collect()
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<ChunkHandle, HeldLease>> {
        self.leases.lock_unpoisoned()
    }

    /// The master, then any shadow masters (`--master` is a comma-separated list).
    pub fn masters(&self) -> Vec<String> {
        self.cfg.master.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }

    /// Records a lease granted by the master at `granted` (when the grant arrived).
    pub fn grant(&self, handle: ChunkHandle, version: Version, granted: Instant, len: Duration) {
        self.leases().insert(handle, HeldLease { version, expires: granted + len, mutated: 0 });
    }

    /// Drops any lease on `handle` (its version changed).
    pub fn revoke(&self, handle: ChunkHandle) {
        self.leases().remove(&handle);
    }

    /// Whether this server holds a valid lease on `handle` at `version`; marks it mutated.
    pub fn check_lease(&self, handle: ChunkHandle, version: Version) -> bool {
        let mut l = self.leases();
        match l.get_mut(&handle) {
            Some(h) if h.version == version && h.expires > Instant::now() => {
                h.mutated = u64::MAX;
                true
            }
            _ => false,
        }
    }

    /// Leases to ask master number `master` (its place in `--master`) to extend: held and
    /// mutated since its last heartbeat.
    pub fn leases_to_extend(&self, master: usize) -> Vec<(ChunkHandle, Version)> {
        let bit = 1u64 << master.min(63);
        let now = Instant::now();
        let mut l = self.leases();
        l.retain(|_, h| h.expires > now);
        l.iter_mut()
            .filter(|(_, h)| h.mutated & bit != 0)
            .map(|(k, h)| {
                h.mutated &= !bit;
                (*k, h.version)
            })
            .collect()
    }

    /// The master extended these leases; `sent` is when the heartbeat left.
    pub fn extend(&self, handles: &[ChunkHandle], sent: Instant, len: Duration) {
        let mut l = self.leases();
        for h in handles {
            if let Some(lease) = l.get_mut(h) {
                lease.expires = lease.expires.max(sent + len);
            }
        }
    }

    /// Register `name` is at least at `generation`.
    pub fn learn_fence(&self, name: &str, generation: u64) {
        let mut f = self.fences.lock_unpoisoned();
        let g = f.entry(name.to_string()).or_insert(0);
        *g = (*g).max(generation);
    }

    /// The master's full register table arrived (heartbeat reply).
    pub fn sync_fences(&self, table: &[(String, u64)]) {
        for (n, g) in table {
            self.learn_fence(n, *g);
        }
        self.fences_synced.store(true, Ordering::Release);
    }

    /// Checks a write against fencing: a chunk bound to a register only takes writes carrying
    /// that register's current generation.
    pub fn check_fence(&self, bound: Option<&str>, fence: Option<&Fence>) -> Result<()> {
        let fenced = |m: String| Err(GfsError::fs(ErrorKind::Fenced, m));
        let f = match (bound, fence) {
            (None, None) => return Ok(()),
            (Some(b), None) => return fenced(format!("writes are fenced by register {b}; none given")),
            (Some(b), Some(f)) if f.name != b => {
                return fenced(format!("writes are fenced by register {b}, not {}", f.name))
            }
            (_, Some(f)) => f,
        };
        if !self.fences_synced.load(Ordering::Acquire) {
            return Err(GfsError::fs(ErrorKind::Unavailable, "register generations not known yet"));
        }
        let cur = self.fences.lock_unpoisoned().get(&f.name).copied().unwrap_or(0);
        if f.generation < cur {
            return fenced(format!(
                "write carries generation {} of register {}, which is at {cur}",
                f.generation, f.name
            ));
        }
        if f.generation > cur {
            return Err(GfsError::fs(
                ErrorKind::Unavailable,
                format!("generation {} of register {} not known here yet", f.generation, f.name),
            ));
        }
        Ok(())
    }
}
