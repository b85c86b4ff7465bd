//! The master as one replica of a Raft group (`--peers`): recovery from the Raft log, the
//! state machine the log drives, and what a replica that does not lead answers.

use super::replica::{RaftConfig, Recovered, StateMachine};
use super::state::{State, StateImage};
use super::{custody, Master, MasterConfig};
use crate::error::{GfsError, Result};
use crate::oplog::{OpLog, Record};
use crate::protocol::MasterRequest;
use crate::sync::Unpoisoned;
use std::sync::Arc;
use std::time::Instant;

/// Ticks without a leader before a follower stands (randomized up to twice this).
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;

impl Master {
    /// Recovers a replica from its Raft snapshot and log, and starts its Raft node.
    pub(super) fn open_replica(cfg: MasterConfig) -> Result<Arc<Master>> {
        if !crate::oplog::list_segments(&cfg.dir)?.is_empty() {
            return Err(GfsError::OpLog(format!(
                "{} holds a single master's operation log; a replica needs a directory of its own",
                cfg.dir.display()
            )));
        }
        let rec = Recovered::load(
            &cfg.dir,
            RaftConfig {
                peers: cfg.peers.clone(),
                me: cfg.listen.clone(),
                tick: cfg.raft_tick,
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: HEARTBEAT_TICKS,
                checkpoint_every: cfg.checkpoint_every,
            },
        )?;
        let mut state = match rec.image() {
            Some(bytes) => State::from_image(decode_image(bytes)?),
            None => State::default(),
        };
        let committed = rec.committed()?;
        let replayed = committed.len();
        for r in committed {
            // A record refused when first applied (a lost compare-and-set race) is refused
            // again, identically: nothing to do.
            if let Err(e) = state.apply(&r) {
                tracing::debug!("replayed record refused again: {e}");
            }
        }
        tracing::info!(replayed, "replica state recovered");
        let master = Arc::new(Master::new(cfg, state, OpLog::detached(), 0, true));
        let replica = rec.start(master.clone())?;
        if master.replica.set(replica).is_err() {
            return Err(GfsError::OpLog("replica started twice".into()));
        }
        Ok(master)
    }

    /// A replica that does not lead answers only what needs no leader; the rest is refused
    /// with the leader's address so that the caller can go there.
    pub(super) fn check_leader(&self, req: &MasterRequest) -> Result<()> {
        let Some(r) = self.replica() else { return Ok(()) };
        if matches!(req, MasterRequest::FetchLog { .. }) {
            return Err(GfsError::fs(
                crate::error::ErrorKind::InvalidArgument,
                "a replicated master has no shadows: its followers hold the same log",
            ));
        }
        let anywhere = matches!(
            req,
            MasterRequest::Heartbeat(_)
                | MasterRequest::ReportCorrupt { .. }
                | MasterRequest::Status
                | MasterRequest::Raft { .. }
        );
        if anywhere || r.status().leading {
            Ok(())
        } else {
            Err(r.refusal())
        }
    }
}

fn decode_image(bytes: &[u8]) -> Result<StateImage> {
    postcard::from_bytes(bytes).map_err(|e| GfsError::Checkpoint(format!("Raft snapshot image: {e}")))
}

impl StateMachine for Master {
    fn apply(&self, rec: &Record) -> Result<()> {
        self.meta().state.apply(rec)
    }

    fn image(&self) -> Result<Vec<u8>> {
        let img = self.meta().state.image();
        postcard::to_stdvec(&img).map_err(|e| GfsError::Codec(e.to_string()))
    }

    fn restore(&self, image: &[u8]) -> Result<()> {
        let mut fresh = State::from_image(decode_image(image)?);
        let mut m = self.meta();
        // Keep what heartbeats taught us about replicas.
        for (h, c) in m.state.chunks.iter() {
            let servers: Vec<_> = c.replicas().collect();
            if let Some(n) = fresh.chunks.get_mut(h) {
                n.set_replicas(&servers);
            }
        }
        m.state = fresh;
        Ok(())
    }

    fn leadership(&self, leading: bool) {
        let mut m = self.meta();
        // Leases this replica granted in an earlier term are not its to extend any more, and
        // what another leader granted is unknown here: wait those out like a restart.
        m.leases.clear();
        if leading {
            m.custody = custody::Custody::default();
            // An old leader cut off from the majority goes on extending leases until it
            // notices, within two election timeouts (at most twice ELECTION_TICKS each).
            let grace = self.cfg.lease + self.cfg.raft_tick * (4 * ELECTION_TICKS as u32);
            *self.lease_grace_until.lock_unpoisoned() = Instant::now() + grace;
            tracing::info!(?grace, "leading: no new leases until the old leader's have expired");
        }
    }
}
