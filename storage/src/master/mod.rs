//! The master: namespace, file-to-chunk mapping, chunk versions and leases. Every mutation is
//! made durable in the operation log before the master answers; checkpoints bound recovery.
//!
//! Concurrency: an operation first takes per-path read/write locks ([`locks`]), checks itself
//! against the state, appends its record to the log (group commit), then applies it. The
//! in-memory state sits behind one mutex that is only held for short lookups and applies,
//! never across disk or network I/O.

pub mod chunks;
mod custody;
pub mod ha;
pub mod health;
pub mod lease;
pub mod locks;
pub mod namespace;
pub mod rebalance;
pub mod register;
pub mod repair;
pub mod replica;
pub mod service;
pub mod shadow;
pub mod snapshot;
pub mod state;
pub mod trash;
pub mod verify;

use crate::error::{GfsError, Result};
use crate::oplog::{self, checkpoint, OpLog, Record};
use crate::sync::{RwUnpoisoned, Unpoisoned};
use chunks::{Lease, Servers};
use locks::PathLocks;
use state::{State, StateImage};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Default lease length. Heartbeats extend a lease while its chunk is written, so it only
/// needs to outlast a few heartbeats (1 s apart by default); what it bounds is how long writes
/// to a chunk stall when its primary dies (the master waits the lease out before granting
/// another) and how long a restarted master grants none: under 5 s with this default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// Default Raft tick: a new leader within 0.5 to 1 s of the old one falling silent.
pub const DEFAULT_RAFT_TICK: Duration = Duration::from_millis(50);

/// Master settings.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub dir: PathBuf,
    pub listen: String,
    pub lease: Duration,
    /// Take a checkpoint after this many log records.
    pub checkpoint_every: u64,
    /// A chunkserver silent for this long is considered down.
    pub dead_after: Duration,
    pub replicas: usize,
    /// How often to look for under-replicated chunks (`None`: never).
    pub repair_interval: Option<Duration>,
    /// How often to even out replica counts across chunkservers (`None`: never).
    pub rebalance_interval: Option<Duration>,
    /// Deleted files stay in `/.trash` this long (`None`: delete at once).
    pub gc_delay: Option<Duration>,
    /// Run as a read-only shadow of the master at this address.
    pub shadow_of: Option<String>,
    /// Idle timeout and connection limits of the service.
    pub limits: crate::protocol::conn::ServeLimits,
    /// Every replica's address, this one's (`listen`) included: run as one replica of a
    /// master replicated with Raft. Empty: a single master with its own operation log.
    pub peers: Vec<String>,
    /// One Raft clock tick; a follower stands for election after 10 to 20 ticks without a
    /// leader, and a leader sends heartbeats every 2.
    pub raft_tick: Duration,
}

impl MasterConfig {
    pub fn new(dir: impl Into<PathBuf>, listen: impl Into<String>) -> Self {
        MasterConfig {
            dir: dir.into(),
            listen: listen.into(),
            lease: DEFAULT_LEASE,
            checkpoint_every: 10_000,
            dead_after: Duration::from_secs(10),
            replicas: 3,
            repair_interval: Some(Duration::from_secs(1)),
            rebalance_interval: Some(Duration::from_secs(60)),
            gc_delay: Some(Duration::from_secs(3 * 24 * 3600)),
            shadow_of: None,
            limits: Default::default(),
            peers: Vec::new(),
            raft_tick: DEFAULT_RAFT_TICK,
        }
    }
}

/// Everything in memory, persistent and volatile.
pub struct Meta {
    pub state: State,
    pub servers: Servers,
    pub leases: HashMap<u64, Lease>,
    /// Replicas reported with an older version: (server, version).
    pub stale: HashMap<u64, Vec<(chunks::ServerIdx, u32)>>,
    /// Replicas with a known corrupt block: served last, left out of new leases if possible.
    pub corrupt: HashMap<u64, Vec<chunks::ServerIdx>>,
    /// Which replicas may hold each chunk's current version (see `custody.rs`).
    pub custody: custody::Custody,
}

/// The master's shared core.
pub struct Master {
    pub cfg: MasterConfig,
    meta: Mutex<Meta>,
    locks: PathLocks,
    log: OpLog,
    /// Mutations hold it shared from log append to apply; a checkpoint holds it exclusively.
    barrier: RwLock<()>,
    since_checkpoint: AtomicU64,
    checkpointing: AtomicBool,
    /// Serializes compare-and-set operations.
    registers: Mutex<()>,
    started: Instant,
    /// Set after a restart and on winning leadership: no lease may be granted before old ones
    /// have surely expired.
    lease_grace_until: Mutex<Instant>,
    /// Replicated masters only: this replica's Raft node.
    replica: OnceLock<replica::Replica>,
    /// Shadow only: the last LSN applied from the master.
    pub shadow_lsn: AtomicU64,
    /// Chunkserver checks sent, by claimed address (see `verify.rs`).
    checks: Mutex<HashMap<String, verify::Check>>,
}

impl Master {
    /// Recovers state from `cfg.dir` (newest valid checkpoint plus the log after it) and opens
    /// a new log segment.
    pub fn open(cfg: MasterConfig) -> Result<Arc<Master>> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| GfsError::io(format!("creating {}", cfg.dir.display()), e))?;
        if cfg.shadow_of.is_some() {
            return Ok(Arc::new(Master::new(cfg.clone(), State::default(), OpLog::detached(), 0, false)));
        }
        if !cfg.peers.is_empty() {
            return Master::open_replica(cfg);
        }
        let (mut state, ckpt_lsn) = load_checkpoint(&cfg)?;
        let mut replayed = 0u64;
        let last = oplog::replay::replay(&cfg.dir, ckpt_lsn, |e| {
            replayed += 1;
            state.apply(&e.record).map_err(|err| GfsError::OpLog(format!("replaying LSN {}: {err}", e.lsn)))
        })?;
        tracing::info!(checkpoint_lsn = ckpt_lsn, replayed, last_lsn = last, "master state recovered");
        let log = OpLog::open(&cfg.dir, last + 1)?;
        // Old leases may still be held if this is a restart of a master that granted some.
        let restarted = last > 0 || ckpt_lsn > 0;
        Ok(Arc::new(Master::new(cfg, state, log, replayed, restarted)))
    }

    fn new(cfg: MasterConfig, state: State, log: OpLog, replayed: u64, restarted: bool) -> Master {
        let now = Instant::now();
        Master {
            lease_grace_until: Mutex::new(if restarted { now + cfg.lease } else { now }),
            replica: OnceLock::new(),
            cfg,
            meta: Mutex::new(Meta {
                state,
                servers: Servers::default(),
                leases: HashMap::new(),
                stale: HashMap::new(),
                corrupt: HashMap::new(),
                custody: custody::Custody::default(),
            }),
            locks: PathLocks::default(),
            log,
            barrier: RwLock::new(()),
            since_checkpoint: AtomicU64::new(replayed),
            checkpointing: AtomicBool::new(false),
            registers: Mutex::new(()),
            started: now,
            shadow_lsn: AtomicU64::new(0),
            checks: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this is a read-only shadow.
    pub fn is_shadow(&self) -> bool {
        self.cfg.shadow_of.is_some()
    }

    /// This replica's Raft node, if the master is replicated.
    pub fn replica(&self) -> Option<&replica::Replica> {
        self.replica.get()
    }

    /// Whether this master takes writes: a single master does, a shadow never, a replica
    /// while it leads (and has caught up).
    pub fn leads(&self) -> bool {
        match self.replica() {
            Some(r) => r.status().leading,
            None => !self.is_shadow(),
        }
    }

    /// Until when no lease may be granted.
    pub fn lease_grace_until(&self) -> Instant {
        *self.lease_grace_until.lock_unpoisoned()
    }

    /// Locks the in-memory metadata.
    pub fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock_unpoisoned()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Checks `rec`, makes it durable, applies it. The caller holds the path locks that keep
    /// the check valid until the apply.
    pub fn commit(self: &Arc<Self>, rec: Record) -> Result<()> {
        self.meta().state.check(&rec)?;
        if let Some(r) = self.replica() {
            // Applied by the Raft node once a majority has it; snapshots are its business.
            return r.propose(&rec);
        }
        {
            let _b = self.barrier.read_unpoisoned();
            self.log.append(rec.clone())?;
            if let Err(e) = self.meta().state.apply(&rec) {
                tracing::error!("record logged but not applied: {rec:?}: {e}");
                return Err(e);
            }
        }
        let n = self.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.cfg.checkpoint_every && !self.checkpointing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            std::thread::spawn(move || {
                if let Err(e) = me.checkpoint() {
                    tracing::error!("checkpoint failed: {e}");
                }
                me.checkpointing.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Writes a checkpoint now.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let (lsn, bytes) = {
            let _b = self.barrier.write_unpoisoned();
            let lsn = self.log.rotate()?;
            let img = self.meta().state.image();
            self.since_checkpoint.store(0, Ordering::Relaxed);
            (lsn, postcard::to_stdvec(&img).map_err(|e| GfsError::Codec(e.to_string()))?)
        };
        let path = checkpoint::write(&self.cfg.dir, lsn, &bytes)?;
        tracing::info!(lsn, bytes = bytes.len(), "checkpoint written");
        Ok(path)
    }
}

fn load_checkpoint(cfg: &MasterConfig) -> Result<(State, u64)> {
    let cands = checkpoint::candidates(&cfg.dir)?;
    for (_, path) in &cands {
        match checkpoint::read(path).and_then(|(lsn, bytes)| {
            let img: StateImage =
                postcard::from_bytes(&bytes).map_err(|e| GfsError::Checkpoint(format!("{}: {e}", path.display())))?;
            Ok((State::from_image(img), lsn))
        }) {
            Ok(r) => {
                tracing::info!("loaded checkpoint {}", path.display());
                return Ok(r);
            }
            Err(e) => tracing::warn!("skipping checkpoint: {e}"),
        }
    }
    if !cands.is_empty() {
        // Only safe if the log still goes back to the beginning.
        let segs = oplog::list_segments(&cfg.dir)?;
        if segs.first().map(|s| s.0) != Some(1) {
            return Err(GfsError::Checkpoint(
                "no valid checkpoint and the log does not reach back to the start".into(),
            ));
        }
    }
    Ok((State::default(), 0))
}
