//! The master's network service: accepts connections and answers [`MasterRequest`]s.

use super::namespace::normalize;
use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{Conn, MasterReply, MasterRequest, Reply};
use crate::util::to_remote;
use std::net::TcpListener;
use std::sync::Arc;

/// Binds `cfg.listen` and serves forever on background threads; returns the bound address.
pub fn serve(master: Arc<Master>) -> Result<std::net::SocketAddr> {
    let listener =
        TcpListener::bind(&master.cfg.listen).map_err(|e| GfsError::io(format!("binding {}", master.cfg.listen), e))?;
    let addr = listener.local_addr().map_err(|e| GfsError::io("reading the bound address", e))?;
    if master.is_shadow() {
        master.spawn_shadow_sync();
    } else {
        master.spawn_repair();
        master.spawn_rebalance();
        master.spawn_gc();
    }
    let watched = Arc::clone(&master);
    crate::metrics::watch_cluster(Box::new(move || watched.cluster_figures()));
    crate::protocol::conn::serve(listener, "master", master.cfg.limits.clone(), move |conn| {
        handle_conn(&master, conn)
    })?;
    Ok(addr)
}

fn handle_conn(master: &Arc<Master>, mut conn: Conn) {
    loop {
        let req: MasterRequest = match conn.recv_opt() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e @ GfsError::Quiet { .. }) => {
                // Hang up without a word: anything written now would wait unread on a
                // connection the peer keeps for its next request.
                tracing::debug!("closing an idle connection: {e}");
                return;
            }
            Err(e) => {
                tracing::debug!("{}: bad request: {e}", conn.peer());
                // The stream can no longer be trusted; say why and hang up.
                let _ = conn.send(&Reply::<MasterReply>::Err(to_remote(&e)));
                return;
            }
        };
        tracing::trace!("{}: {req:?}", conn.peer());
        let (op, started) = (req.name(), std::time::Instant::now());
        let reply = handle(master, req).map_err(|e| to_remote(&e));
        crate::metrics::request_done(op, started, reply.is_ok());
        if let Err(e) = conn.send(&reply) {
            tracing::debug!("{}: {e}", conn.peer());
            return;
        }
    }
}

/// Answers one request.
pub fn handle(master: &Arc<Master>, req: MasterRequest) -> Result<MasterReply> {
    master.check_writable(&req)?;
    master.check_leader(&req)?;
    match req {
        MasterRequest::Raft { from, msgs } => match master.replica() {
            Some(r) => {
                r.receive(from, msgs)?;
                Ok(MasterReply::Done)
            }
            None => Err(GfsError::fs(ErrorKind::InvalidArgument, "not a replicated master (no --peers)")),
        },
        MasterRequest::FetchLog { after_lsn, max } => master.fetch_log(after_lsn, max),
        MasterRequest::Mkdir { path } => {
            let path = normalize(&path)?;
            let _l = master.locks.lock(&[], &[&path]);
            master.commit(Record::Mkdir { path })?;
            Ok(MasterReply::Done)
        }
        MasterRequest::Create { path } => {
            let path = normalize(&path)?;
            let _l = master.locks.lock(&[], &[&path]);
            master.commit(Record::CreateFile { path })?;
            Ok(MasterReply::Done)
        }
        MasterRequest::Delete { path } => {
            let path = normalize(&path)?;
            master.delete(&path)?;
            Ok(MasterReply::Done)
        }
        MasterRequest::Rename { from, to } => {
            let (from, to) = (normalize(&from)?, normalize(&to)?);
            let _l = master.locks.lock(&[], &[&from, &to]);
            master.commit(Record::Rename { from, to })?;
            Ok(MasterReply::Done)
        }
        MasterRequest::List { path } => {
            let path = normalize(&path)?;
            let _l = master.locks.lock(&[&path], &[]);
            Ok(MasterReply::Entries(master.meta().state.ns.list(&path)?))
        }
        MasterRequest::Stat { path } => {
            let path = normalize(&path)?;
            let _l = master.locks.lock(&[&path], &[]);
            Ok(MasterReply::Stat(master.stat(&path)?))
        }
        MasterRequest::GetChunk { path, index, for_write } => {
            let path = normalize(&path)?;
            if index >= crate::MAX_FILE_CHUNKS {
                return Err(GfsError::fs(ErrorKind::InvalidArgument, "chunk index too large"));
            }
            let (size, location) = master.get_chunk(&path, index, for_write)?;
            Ok(MasterReply::Chunk { size, location })
        }
        MasterRequest::ExtendSize { path, size } => {
            let path = normalize(&path)?;
            if size > crate::MAX_FILE_SIZE {
                return Err(GfsError::fs(ErrorKind::InvalidArgument, "size beyond the largest file"));
            }
            let _l = master.locks.lock(&[], &[&path]);
            let current = master.meta().state.ns.file(&path)?.size;
            if size > current {
                master.commit(Record::ExtendSize { path, size })?;
            }
            Ok(MasterReply::Done)
        }
        MasterRequest::Heartbeat(hb) => Ok(MasterReply::Heartbeat(master.heartbeat(hb)?)),
        MasterRequest::CompareAndSet { name, expected, holder } => {
            let (generation, holder) = master.compare_and_set(&name, expected, &holder)?;
            Ok(MasterReply::Register { generation, holder })
        }
        MasterRequest::ReleaseRegister { name, expected, holder } => {
            let generation = master.release_register(&name, expected, &holder)?;
            Ok(MasterReply::Register { generation, holder: String::new() })
        }
        MasterRequest::GetRegister { name } => {
            let r = master.register(&name)?;
            Ok(MasterReply::Register { generation: r.generation, holder: r.holder })
        }
        MasterRequest::Bind { path, register } => {
            let path = normalize(&path)?;
            master.bind(&path, &register)?;
            Ok(MasterReply::Done)
        }
        MasterRequest::AppendChunk { path, min_index } => {
            let path = normalize(&path)?;
            if min_index >= crate::MAX_FILE_CHUNKS {
                return Err(GfsError::fs(ErrorKind::InvalidArgument, "chunk index too large"));
            }
            let (index, location) = master.append_chunk(&path, min_index)?;
            Ok(MasterReply::AppendChunk { index, location })
        }
        MasterRequest::Snapshot { src, dst } => {
            let (src, dst) = (normalize(&src)?, normalize(&dst)?);
            master.snapshot(&src, &dst)?;
            Ok(MasterReply::Done)
        }
        MasterRequest::Status => Ok(MasterReply::Status(master.status())),
        MasterRequest::Fsck => Ok(MasterReply::Fsck(master.fsck())),
        MasterRequest::ReportCorrupt { server, handle } => {
            master.report_corrupt(&server, handle);
            Ok(MasterReply::Done)
        }
    }
}
