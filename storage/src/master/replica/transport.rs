//! Links to the other replicas: one thread per peer sends whatever Raft messages queued up
//! while the previous batch was in flight, as one `MasterRequest::Raft` on a framed
//! connection (`crate::protocol::Conn`), and waits for its `Done`. Raft tolerates lost
//! messages, so a failed batch is dropped and the library told the peer is unreachable.

use super::Cmd;
use crate::error::{GfsError, Result};
use crate::protocol::{Conn, MasterReply, MasterRequest, Reply};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A peer that does not answer a batch within this is treated as unreachable.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection, messages to that peer are dropped for this long.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Most bytes in one batch (well under a frame's largest body).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Queues to the peer links, by Raft id - 1 (`None` for this replica).
pub struct Transport {
    links: Vec<Option<Sender<Message>>>,
}

impl Transport {
    pub fn start(peers: &[String], me: u64, node: Sender<Cmd>) -> Result<Transport> {
        let mut links = Vec::with_capacity(peers.len());
        for (i, addr) in peers.iter().enumerate() {
            let id = i as u64 + 1;
            if id == me {
                links.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel();
            let (addr, node) = (addr.clone(), node.clone());
            std::thread::Builder::new()
                .name(format!("raft-link-{id}"))
                .spawn(move || Link { addr, me, to: id, conn: None, down_until: None }.run(rx, node))
                .map_err(|e| GfsError::io("starting a Raft peer link", e))?;
            links.push(Some(tx));
        }
        Ok(Transport { links })
    }

    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let Some(Some(link)) = (m.to as usize).checked_sub(1).and_then(|i| self.links.get(i)) else {
                tracing::warn!(to = m.to, "Raft message to an unknown replica dropped");
                continue;
            };
            let _ = link.send(m);
        }
    }
}

struct Link {
    addr: String,
    me: u64,
    to: u64,
    conn: Option<Conn>,
    down_until: Option<Instant>,
}

impl Link {
    fn run(mut self, rx: Receiver<Message>, node: Sender<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            let mut bytes = 0usize;
            while bytes < MAX_BATCH_BYTES {
                let Ok(m) = rx.try_recv() else { break };
                bytes += m.get_entries().iter().map(|e| e.data.len()).sum::<usize>() + 64;
                batch.push(m);
            }
            let snapshot = batch.iter().any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let ok = match self.deliver(&batch) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(peer = %self.addr, "Raft link: {e}");
                    self.conn = None;
                    let _ = node.send(Cmd::Unreachable(self.to));
                    false
                }
            };
            if snapshot {
                let _ = node.send(Cmd::SnapshotSent { to: self.to, ok });
            }
        }
    }

    fn deliver(&mut self, batch: &[Message]) -> Result<()> {
        if self.down_until.is_some_and(|t| Instant::now() < t) {
            return Err(GfsError::Closed(format!("{} (recently unreachable)", self.addr)));
        }
        let msgs = batch
            .iter()
            .map(|m| m.write_to_bytes().map_err(|e| GfsError::Codec(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        if self.conn.is_none() {
            let mut c = Conn::connect(&self.addr, CONNECT_TIMEOUT).inspect_err(|_| {
                self.down_until = Some(Instant::now() + RETRY_AFTER);
            })?;
            c.set_read_timeout(REPLY_TIMEOUT)?;
            self.conn = Some(c);
            self.down_until = None;
        }
        let Some(c) = self.conn.as_mut() else { return Err(GfsError::Closed(self.addr.clone())) };
        c.send(&MasterRequest::Raft { from: self.me, msgs })?;
        match c.recv::<Reply<MasterReply>>()? {
            Ok(MasterReply::Done) => Ok(()),
            Ok(other) => Err(GfsError::UnexpectedReply { peer: self.addr.clone(), what: format!("{other:?}") }),
            Err(error) => Err(GfsError::Remote { peer: self.addr.clone(), error }),
        }
    }
}
