//! Shadow masters: read-only copies that tail the master's operation log. They learn chunk
//! locations from chunkservers' heartbeats like the master does, and keep serving reads
//! (listings, stat, chunk locations, registers) while the master is down. They never mutate.

use super::state::{State, StateImage};
use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::{self, checkpoint};
use crate::protocol::{Conn, MasterReply, MasterRequest, Reply};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);
const BATCH: u32 = 10_000;

impl Master {
    /// Answers a shadow's request for log entries after `after_lsn`.
    pub fn fetch_log(&self, after_lsn: u64, max: u32) -> Result<MasterReply> {
        if let Some(entries) = oplog::replay::read_after(&self.cfg.dir, after_lsn, max as usize)? {
            return Ok(MasterReply::Log(entries));
        }
        for (_, path) in checkpoint::candidates(&self.cfg.dir)? {
            if let Ok((lsn, image)) = checkpoint::read(&path) {
                return Ok(MasterReply::Checkpoint { lsn, image });
            }
        }
        Err(GfsError::fs(ErrorKind::Unavailable, "no log or checkpoint to send"))
    }

    /// Refuses requests that would change anything on a shadow.
    pub fn check_writable(&self, req: &MasterRequest) -> Result<()> {
        let Some(of) = &self.cfg.shadow_of else { return Ok(()) };
        let read_only = matches!(
            req,
            MasterRequest::List { .. }
                | MasterRequest::Stat { .. }
                | MasterRequest::GetChunk { for_write: false, .. }
                | MasterRequest::GetRegister { .. }
                | MasterRequest::Heartbeat(_)
                | MasterRequest::ReportCorrupt { .. }
                | MasterRequest::Status
                | MasterRequest::Fsck
        );
        if read_only {
            Ok(())
        } else {
            Err(GfsError::fs(ErrorKind::Unavailable, format!("read-only shadow of {of}")))
        }
    }

    /// Starts tailing the master's log (shadows only).
    pub fn spawn_shadow_sync(self: &Arc<Self>) {
        let Some(of) = self.cfg.shadow_of.clone() else { return };
        let me = self.clone();
        let _ = std::thread::Builder::new().name("shadow".into()).spawn(move || {
            let mut conn: Option<Conn> = None;
            loop {
                match me.sync_once(&of, &mut conn) {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(master = %of, "shadow sync: {e}");
                        conn = None;
                    }
                }
                std::thread::sleep(POLL);
            }
        });
    }

    /// Fetches and applies one batch; returns how many entries were applied.
    fn sync_once(&self, of: &str, conn: &mut Option<Conn>) -> Result<usize> {
        if conn.is_none() {
            *conn = Some(Conn::connect(of, Duration::from_secs(5))?);
        }
        let Some(c) = conn.as_mut() else { return Ok(0) };
        let after = self.shadow_lsn.load(Ordering::Acquire);
        c.send(&MasterRequest::FetchLog { after_lsn: after, max: BATCH })?;
        match c.recv::<Reply<MasterReply>>()? {
            Ok(MasterReply::Log(entries)) => {
                let n = entries.len();
                let mut m = self.meta();
                for e in entries {
                    if e.lsn != self.shadow_lsn.load(Ordering::Acquire) + 1 {
                        break;
                    }
                    if let Err(err) = m.state.apply(&e.record) {
                        tracing::warn!(lsn = e.lsn, "shadow could not apply a record: {err}");
                    }
                    self.shadow_lsn.store(e.lsn, Ordering::Release);
                }
                Ok(n)
            }
            Ok(MasterReply::Checkpoint { lsn, image }) => {
                let img: StateImage =
                    postcard::from_bytes(&image).map_err(|e| GfsError::Checkpoint(format!("from {of}: {e}")))?;
                let mut m = self.meta();
                let mut fresh = State::from_image(img);
                // Keep what heartbeats taught us about replicas.
                for (h, c) in m.state.chunks.iter() {
                    let servers: Vec<_> = c.replicas().collect();
                    if let Some(n) = fresh.chunks.get_mut(h) {
                        n.set_replicas(&servers);
                    }
                }
                m.state = fresh;
                self.shadow_lsn.store(lsn, Ordering::Release);
                tracing::info!(lsn, "shadow loaded the master's checkpoint");
                Ok(1)
            }
            Ok(other) => Err(GfsError::UnexpectedReply { peer: of.to_string(), what: format!("{other:?}") }),
            Err(error) => Err(GfsError::Remote { peer: of.to_string(), error }),
        }
    }
}
