//! The chunkserver's network service: pushes (received and forwarded down the chain frame by
//! frame), writes as primary, applies as secondary, verified streaming reads, version changes.

use super::heartbeat::report_corrupt;
use super::mutation::{append_primary, pad_secondary, Mutation};
use super::store::READ_PIECE;
use super::ChunkServer;
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::frame::Checksum;
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Conn, Received, Reply, Version};
use crate::sync::Unpoisoned;
use crate::util::to_remote;
use crate::{BLOCK_SIZE, CHUNK_SIZE, MAX_RECORD};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the accept loop on a background thread.
pub fn spawn_accept(cs: Arc<ChunkServer>, listener: TcpListener) -> Result<()> {
    let limits = cs.cfg.limits.clone();
    crate::protocol::conn::serve(listener, "cs", limits, move |conn| handle_conn(&cs, conn))
}

fn handle_conn(cs: &Arc<ChunkServer>, mut conn: Conn) {
    loop {
        let req: ChunkRequest = match conn.recv_opt() {
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
                let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
                return;
            }
        };
        let (op, started) = (req.name(), Instant::now());
        let keep = match req {
            ChunkRequest::Push { id, len, chain } => {
                let pushed = push(cs, &mut conn, id, len, chain);
                if pushed {
                    crate::metrics::bytes_written(len);
                }
                pushed
            }
            ChunkRequest::WriteInline { handle, version, offset, len, secondaries, fence, durable } => {
                let m = Mutation { handle, version, offset, id: 0, fence, durable };
                with_inline_data(cs, &mut conn, len, op, started, |data| m.write_primary_inline(cs, &secondaries, data))
            }
            ChunkRequest::ApplyInline { handle, version, serial, offset, len, fence, durable } => {
                let m = Mutation { handle, version, offset, id: 0, fence, durable };
                with_inline_data(cs, &mut conn, len, op, started, |data| m.apply_secondary_inline(cs, serial, data))
            }
            ChunkRequest::Read { handle, version, offset, len } => {
                let sent = read(cs, &mut conn, handle, version, offset, len);
                if sent {
                    crate::metrics::bytes_read(len);
                }
                sent
            }
            other => {
                let r = simple(cs, other).map_err(|e| {
                    cs.disk.observe(&e);
                    to_remote(&e)
                });
                crate::metrics::request_done(op, started, r.is_ok());
                conn.send(&r).is_ok()
            }
        };
        if matches!(op, "push" | "read") {
            crate::metrics::request_done(op, started, keep);
        }
        if !keep {
            return;
        }
    }
}

fn simple(cs: &Arc<ChunkServer>, req: ChunkRequest) -> Result<ChunkReply> {
    mutation_or_other(cs, req, true)
}

/// Serves `req`; `durable` is false for a mutation that came wrapped in `Unsynced`.
fn mutation_or_other(cs: &Arc<ChunkServer>, req: ChunkRequest, durable: bool) -> Result<ChunkReply> {
    match req {
        ChunkRequest::SetVersion { handle, version, lease_ms, register } => {
            let granted = Instant::now();
            if cs.store.get(handle).is_err() {
                // A new chunk: none on a full or failing disk.
                cs.disk.check_writable()?;
            }
            cs.revoke(handle);
            cs.store.set_version(handle, version)?;
            if let Ok(chunk) = cs.store.get(handle) {
                *chunk.register.lock_unpoisoned() = register;
            }
            if let Some(ms) = lease_ms {
                cs.grant(handle, version, granted, Duration::from_millis(ms));
            }
            tracing::debug!(handle, version, primary = lease_ms.is_some(), "version set");
            Ok(ChunkReply::VersionSet)
        }
        ChunkRequest::Write { handle, version, offset, id, secondaries, fence } => {
            let m = Mutation { handle, version, offset, id, fence, durable };
            m.write_primary(cs, &secondaries)
        }
        ChunkRequest::Apply { handle, version, serial, offset, id, fence } => {
            let m = Mutation { handle, version, offset, id, fence, durable };
            m.apply_secondary(cs, serial)
        }
        ChunkRequest::Append { handle, version, id, len, secondaries, fence } => {
            let m = Mutation { handle, version, offset: 0, id, fence, durable: true };
            append_primary(cs, m, len, &secondaries)
        }
        ChunkRequest::Pad { handle, version, serial, fence } => {
            let m = Mutation { handle, version, offset: 0, id: 0, fence, durable: true };
            pad_secondary(cs, m, serial)
        }
        ChunkRequest::Revoke { handle } => {
            if let Ok(chunk) = cs.store.get(handle) {
                // Wait for a mutation in flight to finish before giving the lease up.
                let _order = chunk.order.lock_unpoisoned();
                cs.revoke(handle);
            } else {
                cs.revoke(handle);
            }
            Ok(ChunkReply::Revoked)
        }
        ChunkRequest::Info { handle } => {
            let chunk = cs.store.get(handle)?;
            let version = chunk.state.lock_unpoisoned().version;
            Ok(ChunkReply::Info { version, len: cs.store.chunk_len(&chunk) })
        }
        ChunkRequest::Replicate { handle, version, source } => {
            cs.disk.check_writable()?;
            super::replicate::replicate(cs, handle, version, &source)?;
            Ok(ChunkReply::Copied)
        }
        ChunkRequest::Delete { handle } => {
            cs.revoke(handle);
            cs.store.delete(handle);
            Ok(ChunkReply::Deleted)
        }
        ChunkRequest::CopyChunk { from, to, version } => {
            cs.disk.check_writable()?;
            cs.store.copy_chunk(from, to, version)?;
            Ok(ChunkReply::Copied)
        }
        ChunkRequest::Verify { token } => {
            cs.keep_token(token);
            Ok(ChunkReply::Verified { addr: cs.addr.clone() })
        }
        ChunkRequest::Fence(f) => {
            cs.learn_fence(&f.name, f.generation);
            Ok(ChunkReply::Fenced)
        }
        ChunkRequest::Unsynced(inner) if durable => match *inner {
            m @ (ChunkRequest::Write { .. } | ChunkRequest::Apply { .. }) => mutation_or_other(cs, m, false),
            _ => Err(GfsError::fs(ErrorKind::InvalidArgument, "only writes can be unsynced")),
        },
        ChunkRequest::Sync { handles } => {
            for handle in handles {
                cs.store.sync_chunk(handle)?;
            }
            Ok(ChunkReply::Synced)
        }
        ChunkRequest::Unsynced(_) => Err(GfsError::fs(ErrorKind::InvalidArgument, "nested unsynced request")),
        ChunkRequest::Push { .. }
        | ChunkRequest::Read { .. }
        | ChunkRequest::WriteInline { .. }
        | ChunkRequest::ApplyInline { .. } => Err(GfsError::fs(ErrorKind::Protocol, "unreachable")),
    }
}

/// How receiving a payload's data frames failed.
enum PayloadError {
    /// A message, or a frame longer than the rest of the payload, where data belonged.
    Malformed,
    /// The connection failed under it: the sender went away.
    Lost(GfsError),
}

/// Receives data frames until `data` is full, each landing straight in its place (no frame
/// buffer to copy it out of); `each` sees every frame's bytes, with the checksum they were
/// verified with, as it arrives. Pushes and inline writes both arrive this way.
fn receive_payload(
    conn: &mut Conn,
    data: &mut [u8],
    mut each: impl FnMut(&[u8], Checksum),
) -> std::result::Result<(), PayloadError> {
    let mut got = 0;
    let mut msg = Vec::new();
    while got < data.len() {
        match conn.recv_data_into(&mut data[got..], &mut msg) {
            Ok(Received::Data(n, checksum)) => {
                each(&data[got..got + n], checksum);
                got += n;
            }
            Ok(Received::Msg | Received::TooLong(_)) => return Err(PayloadError::Malformed),
            Err(e) => return Err(PayloadError::Lost(e)),
        }
    }
    Ok(())
}

/// Receives the `len` bytes of data frames that follow an inline write, within the push
/// buffers' memory budget, and answers `mutate`'s result. Returns whether the connection is
/// still usable: not after a refusal before the data was read (what follows it cannot be
/// skipped safely) nor after a malformed stream.
fn with_inline_data(
    cs: &Arc<ChunkServer>,
    conn: &mut Conn,
    len: u64,
    op: &'static str,
    started: Instant,
    mutate: impl FnOnce(&[u8]) -> Result<ChunkReply>,
) -> bool {
    let refuse = |conn: &mut Conn, e: GfsError| {
        crate::metrics::request_done(op, started, false);
        let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
        false
    };
    if len > crate::INLINE_WRITE_MAX {
        let max = crate::INLINE_WRITE_MAX;
        return refuse(
            conn,
            GfsError::fs(ErrorKind::InvalidArgument, format!("inline write of {len} bytes exceeds {max}")),
        );
    }
    let _room = match cs.buffers.admit(len as usize) {
        Ok(room) => room,
        Err(e) => return refuse(conn, e),
    };
    let mut data = cs.buffers.buffer(len as usize);
    match receive_payload(conn, &mut data, |_, _| {}) {
        Ok(()) => {}
        Err(PayloadError::Malformed) => {
            return refuse(conn, GfsError::fs(ErrorKind::Protocol, "malformed inline write"));
        }
        Err(PayloadError::Lost(e)) => {
            // The sender went away mid-write: nothing was applied.
            tracing::debug!("inline write aborted: {e}");
            crate::metrics::request_done(op, started, false);
            return false;
        }
    }
    let r = mutate(&data).map_err(|e| {
        cs.disk.observe(&e);
        to_remote(&e)
    });
    crate::metrics::request_done(op, started, r.is_ok());
    if r.is_ok() {
        crate::metrics::bytes_written(len);
    }
    conn.send(&r).is_ok()
}

/// Receives pushed data, forwarding each frame down the chain as it arrives. Returns whether
/// the connection is still usable.
fn push(cs: &Arc<ChunkServer>, conn: &mut Conn, id: u64, len: u64, chain: Vec<String>) -> bool {
    if len > MAX_RECORD {
        let e = GfsError::fs(ErrorKind::InvalidArgument, format!("push of {len} bytes exceeds {MAX_RECORD}"));
        let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
        return false; // the data frames that follow cannot be skipped safely
    }
    if chain.len() > crate::master::chunks::MAX_REPLICAS {
        let e = GfsError::fs(ErrorKind::InvalidArgument, format!("push chain of {} servers is too long", chain.len()));
        let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
        return false;
    }
    let room = match cs.buffers.admit(len as usize) {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
            return false;
        }
    };
    let mut down: Option<Conn> = None;
    let mut failed: Vec<String> = Vec::new();
    if let Some((next, rest)) = chain.split_first() {
        let opened = cs.peers.get(next).and_then(|mut c| {
            c.send(&ChunkRequest::Push { id, len, chain: rest.to_vec() })?;
            Ok(c)
        });
        match opened {
            Ok(c) => down = Some(c),
            Err(e) => {
                tracing::warn!(%next, "cannot forward push: {e}");
                failed.extend(chain.iter().cloned());
            }
        }
    }
    // Each frame lands straight in its place in `data` (no frame buffer to copy it out of),
    // and is forwarded from there under the checksum it was verified with.
    let mut data = cs.buffers.buffer(len as usize);
    let received = receive_payload(conn, &mut data, |frame, checksum| {
        if let Some(d) = down.as_mut() {
            if d.queue_verified_data(frame, checksum).and_then(|_| d.flush()).is_err() {
                failed.extend(chain.iter().cloned());
                down = None;
            }
        }
    });
    match received {
        Ok(()) => {}
        Err(PayloadError::Malformed) => {
            tracing::debug!(id, "malformed push stream");
            let e = GfsError::fs(ErrorKind::Protocol, "malformed push stream");
            let _ = conn.send(&Reply::<ChunkReply>::Err(to_remote(&e)));
            return false;
        }
        Err(PayloadError::Lost(e)) => {
            // The client went away mid-push: nothing is stored, the chain sees EOF too.
            tracing::debug!(id, "push aborted: {e}");
            return false;
        }
    }
    if let Some(mut d) = down {
        match d.recv::<Reply<ChunkReply>>() {
            Ok(Ok(ChunkReply::Pushed { failed: f })) => {
                failed.extend(f);
                cs.peers.put(d);
            }
            _ => failed.extend(chain.iter().cloned()),
        }
    }
    room.fill(id, data);
    conn.send(&Reply::<ChunkReply>::Ok(ChunkReply::Pushed { failed })).is_ok()
}

/// Streams `[offset, offset+len)` of a chunk, verified piece by piece. Returns whether the
/// connection is still usable.
fn read(cs: &Arc<ChunkServer>, conn: &mut Conn, handle: ChunkHandle, version: Version, offset: u64, len: u64) -> bool {
    let start = (|| {
        if offset.checked_add(len).is_none_or(|e| e > CHUNK_SIZE) {
            return Err(GfsError::fs(
                ErrorKind::ReadPastEnd,
                format!("read at {offset}+{len} past the end of chunk {handle}"),
            ));
        }
        let chunk = cs.store.get(handle)?;
        let v = chunk.state.lock_unpoisoned().version;
        if v != version {
            return Err(GfsError::fs(
                ErrorKind::StaleVersion,
                format!("chunk {handle}: replica has version {v}, request has {version}"),
            ));
        }
        Ok(chunk)
    })();
    let chunk = match start {
        Ok(c) => c,
        Err(e) => return conn.send(&Reply::<ChunkReply>::Err(to_remote(&e))).is_ok(),
    };
    if conn.queue(&Reply::<ChunkReply>::Ok(ChunkReply::Reading { len })).is_err() {
        return false;
    }
    let mut buf = cs.store.take_buffer(READ_PIECE as usize);
    let mut block_crcs = Vec::new();
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = (end - pos).min(READ_PIECE - pos % READ_PIECE);
        let range = match cs.store.read_aligned(&chunk, version, pos, n, &mut buf, &mut block_crcs) {
            Ok(r) => r,
            Err(e) => {
                cs.disk.observe(&e);
                if e.kind() == Some(ErrorKind::Corrupt) {
                    tracing::warn!(handle, "{e}");
                    report_corrupt(cs, handle);
                }
                // Cut the stream short with the error; the client resumes on another replica.
                return conn.send(&Reply::<ChunkReply>::Err(to_remote(&e))).is_ok();
            }
        };
        let bs = BLOCK_SIZE as usize;
        let mut at = range.start;
        for piece in buf.as_slice()[range].chunks(crate::DATA_FRAME) {
            // A frame of whole blocks takes its checksum from the blocks' own, just verified.
            let queued = if at % bs == 0 && piece.len() % bs == 0 {
                let sum = Checksum::of_whole_blocks(&block_crcs[at / bs..(at + piece.len()) / bs]);
                conn.queue_verified_data(piece, sum)
            } else {
                conn.queue_data(piece)
            };
            if queued.is_err() {
                return false;
            }
            at += piece.len();
        }
        pos += n;
    }
    cs.store.give_buffer(buf);
    conn.flush().is_ok()
}
