//! Master replicas kept in step by Raft (the `raft` crate, TiKV's raft-rs: synchronous, so it
//! fits this thread-based crate without an async runtime).
//!
//! Each replica runs one node thread ([`node`]) that owns the Raft state machine: it takes
//! proposals and peer messages from a channel, ticks the clock, makes log entries durable
//! ([`disk`]) and applies committed records to the master state through [`StateMachine`].
//! A mutation is answered only once its entry is committed (a majority has fsynced it) and
//! applied. Peers talk through the framed connections of `crate::protocol` ([`transport`]).
//! Checkpoints are Raft snapshots: taken every `checkpoint_every` applied entries, sent to a
//! replica that fell behind the compacted log.

mod disk;
mod node;
mod store;
mod transport;

use crate::error::{not_leader, GfsError, Result};
use crate::oplog::Record;
use crate::sync::Unpoisoned;
use raft::prelude::{ConfState, Message};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a proposer waits for its entry to be committed and applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the replicated log drives: the master's state.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed record (the same on every replica, in log order).
    fn apply(&self, rec: &Record) -> Result<()>;
    /// The whole state, encoded, for a snapshot.
    fn image(&self) -> Result<Vec<u8>>;
    /// Replaces the whole state by a snapshot's image.
    fn restore(&self, image: &[u8]) -> Result<()>;
    /// This replica started (true) or stopped (false) leading. It starts only once it has
    /// applied every entry committed before its term.
    fn leadership(&self, leading: bool);
}

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Every replica's address, this one's included; a replica's Raft id is its place in the
    /// sorted list, plus one.
    pub peers: Vec<String>,
    /// This replica's address as it appears in `peers`.
    pub me: String,
    /// One Raft clock tick.
    pub tick: Duration,
    /// Ticks without a leader's word before a follower stands for election (randomized up to
    /// twice this).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Take a snapshot after this many applied entries.
    pub checkpoint_every: u64,
}

impl RaftConfig {
    /// The peers sorted and deduplicated, so that every replica numbers them alike.
    fn sorted_peers(&self) -> Vec<String> {
        let mut p: Vec<String> = self.peers.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        p.sort();
        p.dedup();
        p
    }

    /// This replica's id.
    fn id(&self, peers: &[String]) -> Result<u64> {
        if peers.len() < 3 {
            return Err(GfsError::fs(
                crate::error::ErrorKind::InvalidArgument,
                format!("--peers needs at least 3 replicas (a majority must survive one failure), got {}", peers.len()),
            ));
        }
        peers.iter().position(|p| *p == self.me).map(|i| i as u64 + 1).ok_or_else(|| {
            GfsError::fs(
                crate::error::ErrorKind::InvalidArgument,
                format!("--listen {} is not one of --peers {}", self.me, peers.join(",")),
            )
        })
    }
}

/// Who leads, as this replica knows it.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// This replica leads and has caught up: it takes writes.
    pub leading: bool,
    /// The leader's address, if one is known.
    pub leader: Option<String>,
    pub term: u64,
}

enum Cmd {
    Propose { data: Vec<u8>, done: mpsc::SyncSender<Result<()>> },
    Step(Vec<Message>),
    Unreachable(u64),
    SnapshotSent { to: u64, ok: bool },
}

/// What a replica recovered from its directory, before its node thread starts.
pub struct Recovered {
    cfg: RaftConfig,
    id: u64,
    peers: Vec<String>,
    core: store::Core,
    disk: disk::DiskLog,
}

impl Recovered {
    /// Reads the snapshot and log in `dir`.
    pub fn load(dir: &Path, cfg: RaftConfig) -> Result<Recovered> {
        let peers = cfg.sorted_peers();
        let id = cfg.id(&peers)?;
        let conf = ConfState::from((((1..=peers.len() as u64).collect::<Vec<u64>>()), Vec::new()));
        let (core, disk) = disk::load(dir, conf)?;
        tracing::info!(
            id,
            snapshot = core.snap_index,
            last = core.last_index(),
            commit = core.hard.commit,
            term = core.hard.term,
            "Raft log recovered"
        );
        Ok(Recovered { cfg, id, peers, core, disk })
    }

    /// The state image of the snapshot, if there is one.
    pub fn image(&self) -> Option<&[u8]> {
        (self.core.snap_index > 0).then_some(self.core.snap_data.as_slice())
    }

    /// The records committed after the snapshot, in order, to apply before starting.
    pub fn committed(&self) -> Result<Vec<Record>> {
        let upto = self.core.hard.commit;
        let mut out = Vec::new();
        for e in self.core.entries.iter().take_while(|e| e.index <= upto) {
            if let Some(r) = node::decode(e)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Starts the node thread and the peer links; the state machine holds the state as of
    /// the snapshot plus [`Recovered::committed`].
    pub fn start(self, sm: Arc<dyn StateMachine>) -> Result<Replica> {
        let status = Arc::new(Mutex::new(Status::default()));
        let (tx, rx) = mpsc::channel();
        let peers = self.peers.clone();
        node::spawn(self, sm, rx, tx.clone(), status.clone())?;
        Ok(Replica { tx, status, peers })
    }
}

/// Handle on the node thread of this replica.
pub struct Replica {
    tx: Sender<Cmd>,
    status: Arc<Mutex<Status>>,
    peers: Vec<String>,
}

impl Replica {
    pub fn status(&self) -> Status {
        self.status.lock_unpoisoned().clone()
    }

    /// The refusal to give when not leading.
    pub fn refusal(&self) -> GfsError {
        not_leader(self.status().leader.as_deref())
    }

    /// Every replica's address.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// Replicates `rec`; returns once a majority has it durably and it was applied here (with
    /// the result of applying it).
    pub fn propose(&self, rec: &Record) -> Result<()> {
        let data = postcard::to_stdvec(rec).map_err(|e| GfsError::Codec(e.to_string()))?;
        let (done, wait) = mpsc::sync_channel(1);
        self.tx.send(Cmd::Propose { data, done }).map_err(|_| stopped())?;
        match wait.recv_timeout(PROPOSE_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(GfsError::fs(
                crate::error::ErrorKind::Unavailable,
                format!("not committed within {PROPOSE_TIMEOUT:?} (no majority reachable?); it may still be later"),
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }

    /// Raft messages from replica `from`, each encoded by the Raft library.
    pub fn receive(&self, from: u64, msgs: Vec<Vec<u8>>) -> Result<()> {
        let mut decoded = Vec::with_capacity(msgs.len());
        for m in msgs {
            let msg = <Message as protobuf::Message>::parse_from_bytes(&m)
                .map_err(|e| GfsError::Codec(format!("Raft message from replica {from}: {e}")))?;
            if msg.from != from {
                return Err(GfsError::Codec(format!(
                    "Raft message claims replica {} on replica {from}'s link",
                    msg.from
                )));
            }
            decoded.push(msg);
        }
        self.tx.send(Cmd::Step(decoded)).map_err(|_| stopped())
    }
}

fn stopped() -> GfsError {
    GfsError::fs(crate::error::ErrorKind::Unavailable, "the Raft node of this master stopped")
}
