//! The node thread: drives the Raft library (ticks, peer messages, proposals), persists what
//! it must before saying so, applies committed entries, answers proposers, takes snapshots.

use super::disk::DiskLog;
use super::store::LogStore;
use super::transport::Transport;
use super::{Cmd, Recovered, StateMachine, Status};
use crate::error::{not_leader, ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::sync::Unpoisoned;
use raft::prelude::{Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most commands taken from the channel before the library's output is handled.
const MAX_BATCH: usize = 4096;

/// The record an entry carries (`None` for the library's own empty entries).
pub fn decode(e: &Entry) -> Result<Option<Record>> {
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return Ok(None);
    }
    postcard::from_bytes(&e.data).map(Some).map_err(|err| GfsError::OpLog(format!("Raft entry {}: {err}", e.index)))
}

struct Node {
    raw: RawNode<LogStore>,
    store: LogStore,
    disk: DiskLog,
    sm: Arc<dyn StateMachine>,
    transport: Transport,
    status: Arc<Mutex<Status>>,
    peers: Vec<String>,
    /// Proposals waiting for their entry: index -> (term proposed in, answer).
    pending: BTreeMap<u64, (u64, SyncSender<Result<()>>)>,
    applied: u64,
    /// While leading: the index of this term's first entry, applied before writes are taken.
    term_start: Option<u64>,
    leading: bool,
    checkpoint_every: u64,
}

pub(super) fn spawn(
    rec: Recovered,
    sm: Arc<dyn StateMachine>,
    rx: Receiver<Cmd>,
    tx: Sender<Cmd>,
    status: Arc<Mutex<Status>>,
) -> Result<()> {
    let applied = rec.core.hard.commit;
    let config = raft::Config {
        id: rec.id,
        election_tick: rec.cfg.election_ticks,
        heartbeat_tick: rec.cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    config.validate().map_err(|e| GfsError::fs(ErrorKind::InvalidArgument, format!("Raft settings: {e}")))?;
    let store = LogStore::new(rec.core);
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let raw = RawNode::new(&config, store.clone(), &logger)
        .map_err(|e| GfsError::OpLog(format!("starting the Raft node: {e}")))?;
    let transport = Transport::start(&rec.peers, rec.id, tx)?;
    let tick = rec.cfg.tick;
    let mut node = Node {
        raw,
        store,
        disk: rec.disk,
        sm,
        transport,
        status,
        peers: rec.peers,
        pending: BTreeMap::new(),
        applied,
        term_start: None,
        leading: false,
        checkpoint_every: rec.cfg.checkpoint_every.max(1),
    };
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + tick;
            loop {
                match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                    Ok(cmd) => {
                        node.handle(cmd);
                        for cmd in rx.try_iter().take(MAX_BATCH) {
                            node.handle(cmd);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if Instant::now() >= next_tick {
                    node.raw.tick();
                    next_tick = Instant::now() + tick;
                }
                if let Err(e) = node.on_ready() {
                    // Going on could acknowledge what is not durable: stop taking part.
                    tracing::error!("Raft node stopped: {e}");
                    node.step_down();
                    node.status.lock_unpoisoned().leader = None;
                    return;
                }
            }
        })
        .map_err(|e| GfsError::io("starting the Raft node thread", e))?;
    Ok(())
}

impl Node {
    fn leader_addr(&self) -> Option<String> {
        let id = self.raw.raft.leader_id;
        (id != 0).then(|| self.peers.get(id as usize - 1).cloned()).flatten()
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Propose { data, done } => {
                if !self.leading {
                    let _ = done.send(Err(not_leader(self.leader_addr().as_deref())));
                    return;
                }
                match self.raw.propose(Vec::new(), data) {
                    Ok(()) => {
                        let index = self.raw.raft.raft_log.last_index();
                        self.pending.insert(index, (self.raw.raft.term, done));
                    }
                    Err(e) => {
                        let _ = done.send(Err(GfsError::fs(ErrorKind::Unavailable, format!("proposal dropped: {e}"))));
                    }
                }
            }
            Cmd::Step(msgs) => {
                for m in msgs {
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!("Raft message refused: {e}");
                    }
                }
            }
            Cmd::Unreachable(id) => self.raw.report_unreachable(id),
            Cmd::SnapshotSent { to, ok } => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            let (leader_id, role) = (ss.leader_id, ss.raft_state);
            self.role_changed(leader_id, role);
        }
        self.transport.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install(rd.snapshot().clone())?;
        }
        self.apply(rd.take_committed_entries())?;
        let entries = rd.take_entries();
        if !self.store.write().append(&entries) {
            return Err(GfsError::OpLog("the Raft library handed entries that leave a gap".into()));
        }
        if let Some(hs) = rd.hs() {
            self.store.write().hard = hs.clone();
        }
        self.disk.append(&entries, rd.hs(), rd.must_sync())?;
        self.transport.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let hard = {
                let mut c = self.store.write();
                c.hard.commit = commit;
                c.hard.clone()
            };
            // Durable with the next fsync; a replica restarted before that learns it again.
            self.disk.append(&[], Some(&hard), false)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.check_caught_up();
        self.maybe_snapshot()
    }

    fn role_changed(&mut self, leader_id: u64, role: StateRole) {
        let leader = (leader_id != 0).then(|| self.peers.get(leader_id as usize - 1).cloned()).flatten();
        tracing::info!(term = self.raw.raft.term, ?role, leader = ?leader, "Raft role");
        {
            let mut s = self.status.lock_unpoisoned();
            s.leader = leader;
            s.term = self.raw.raft.term;
        }
        if role == StateRole::Leader {
            if self.term_start.is_none() {
                self.term_start = Some(self.raw.raft.raft_log.last_index());
            }
        } else {
            self.step_down();
        }
    }

    fn step_down(&mut self) {
        self.term_start = None;
        if self.leading {
            self.leading = false;
            self.status.lock_unpoisoned().leading = false;
            self.sm.leadership(false);
        }
    }

    /// A new leader takes writes once it has applied everything committed before its term.
    fn check_caught_up(&mut self) {
        if let Some(start) = self.term_start {
            if !self.leading && self.applied >= start && self.raw.raft.state == StateRole::Leader {
                self.leading = true;
                self.sm.leadership(true);
                self.status.lock_unpoisoned().leading = true;
                tracing::info!(term = self.raw.raft.term, index = start, "leading");
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        for e in entries {
            let result = match decode(&e)? {
                Some(rec) => self.sm.apply(&rec),
                None => Ok(()),
            };
            self.applied = e.index;
            // Anything proposed below this index lost its place to another leader's entry.
            while let Some((&i, _)) = self.pending.first_key_value() {
                if i >= e.index {
                    break;
                }
                if let Some((_, (_, done))) = self.pending.pop_first() {
                    let _ = done.send(Err(not_leader(self.leader_addr().as_deref())));
                }
            }
            if let Some((term, done)) = self.pending.remove(&e.index) {
                let _ = done.send(if term == e.term {
                    result
                } else {
                    // Another leader's entry took this index: ours was never committed.
                    Err(not_leader(self.leader_addr().as_deref()))
                });
            }
        }
        Ok(())
    }

    fn install(&mut self, snap: Snapshot) -> Result<()> {
        let index = snap.get_metadata().index;
        tracing::info!(index, term = snap.get_metadata().term, "installing a snapshot from the leader");
        self.sm.restore(&snap.data)?;
        self.store.write().install(&snap);
        self.disk.save_snapshot(&self.store.read())?;
        self.applied = index;
        while let Some((&i, _)) = self.pending.first_key_value() {
            if i > index {
                break;
            }
            if let Some((_, (_, done))) = self.pending.pop_first() {
                let _ = done.send(Err(GfsError::fs(
                    ErrorKind::Unavailable,
                    "replaced by a snapshot before its outcome was seen here; it may or may not have been carried out",
                )));
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<()> {
        let (snap_index, term) = {
            let c = self.store.read();
            (c.snap_index, c.term(self.applied))
        };
        if self.applied < snap_index + self.checkpoint_every {
            return Ok(());
        }
        let Some(term) = term else { return Ok(()) };
        let started = Instant::now();
        let image = self.sm.image()?;
        let bytes = image.len();
        self.store.write().compact(self.applied, term, image);
        self.disk.save_snapshot(&self.store.read())?;
        tracing::info!(index = self.applied, bytes, took = ?started.elapsed(), "Raft snapshot taken");
        Ok(())
    }
}

/// Hands the Raft library's log lines to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> std::result::Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}
