//! Heartbeats: chunk report, lease extension requests, corrupt-replica reports, the state of
//! the data disk (sent at once when it changes).

use super::ChunkServer;
use crate::error::{GfsError, Result};
use crate::protocol::{ChunkHandle, Conn, Heartbeat, MasterReply, MasterRequest, Reply};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts one heartbeat thread per master: the master proper and its read-only shadows, or
/// the replicas of a replicated master. Each is asked to extend leases (shadows and replicas
/// that do not lead hold none and extend nothing); all learn chunk locations.
pub fn spawn(cs: Arc<ChunkServer>) -> Result<()> {
    for (i, master) in cs.masters().into_iter().enumerate() {
        let cs = cs.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || run(&cs, &master, i))
            .map_err(|e| GfsError::io("starting a heartbeat thread", e))?;
    }
    Ok(())
}

fn run(cs: &ChunkServer, master: &str, place: usize) {
    let mut conn: Option<Conn> = None;
    let mut fresh = true;
    loop {
        let sent = Instant::now();
        cs.disk.probe();
        let (disk, disk_generation) = cs.disk.snapshot();
        let (chunks, corrupt) = cs.store.report();
        let hb = Heartbeat {
            server: cs.addr.clone(),
            rack: cs.cfg.rack.clone(),
            fresh,
            chunks,
            extend: cs.leases_to_extend(place),
            corrupt,
            tokens: cs.tokens(),
            disk,
        };
        match beat(master, &mut conn, hb) {
            Ok(reply) => {
                fresh = false;
                cs.extend(&reply.extended, sent, Duration::from_millis(reply.lease_ms));
                cs.sync_fences(&reply.registers);
                for h in reply.garbage {
                    tracing::info!(handle = h, "deleting a chunk the master no longer knows");
                    cs.store.delete(h);
                }
            }
            // Another cluster key (or none): no heartbeat can succeed until an operator acts.
            Err(e @ GfsError::Sealing(_)) => {
                tracing::warn!("heartbeat to {master} failed: {e}");
                conn = None;
            }
            Err(e) => {
                // The first heartbeats are refused until the master has checked us.
                tracing::debug!("heartbeat to {master} failed: {e}");
                conn = None;
            }
        }
        // The next beat is due after the interval, or at once when the disk turns full,
        // failing or usable again: the master stops sending writes there within a round trip.
        cs.disk.wait_change(disk_generation, cs.cfg.heartbeat.saturating_sub(sent.elapsed()));
    }
}

fn beat(master: &str, conn: &mut Option<Conn>, hb: Heartbeat) -> Result<crate::protocol::HeartbeatReply> {
    if conn.is_none() {
        let mut c = Conn::connect(master, TIMEOUT)?;
        c.set_read_timeout(TIMEOUT)?;
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Err(GfsError::Frame("no connection".into()));
    };
    c.send(&MasterRequest::Heartbeat(hb))?;
    match c.recv::<Reply<MasterReply>>()? {
        Ok(MasterReply::Heartbeat(r)) => Ok(r),
        Ok(other) => Err(GfsError::UnexpectedReply { peer: master.to_string(), what: format!("{other:?}") }),
        Err(error) => Err(GfsError::Remote { peer: master.to_string(), error }),
    }
}

/// Tells the master, in the background, that our replica of `handle` is corrupt.
pub fn report_corrupt(cs: &Arc<ChunkServer>, handle: ChunkHandle) {
    let cs = cs.clone();
    let _ = std::thread::Builder::new().name("report-corrupt".into()).spawn(move || {
        // Every master listed: whichever replica leads must hear it (shadows ignore it).
        for master in cs.masters() {
            let r = Conn::connect(&master, TIMEOUT).and_then(|mut c| {
                c.send(&MasterRequest::ReportCorrupt { server: cs.addr.clone(), handle })?;
                c.recv::<Reply<MasterReply>>().map(|_| ())
            });
            if let Err(e) = r {
                tracing::warn!(handle, %master, "could not report a corrupt replica: {e}");
            }
        }
    });
}
