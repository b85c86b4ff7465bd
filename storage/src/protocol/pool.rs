//! A small pool of idle connections per peer address.
//!
//! A peer may close a connection while it sits here (servers close idle ones, and restart).
//! So a connection is handed out again only if nothing has arrived on it since its last
//! exchange: not a close, and not an unasked frame (which could only be stale and must never
//! be read as the reply to the next request). And [`Pool::call`] sends a request once more on
//! a fresh connection when a reused one turns out closed before any byte of the reply came.

use super::conn::Conn;
use crate::error::{GfsError, Result};
use crate::sync::Unpoisoned;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Keeps a few idle connections per address for reuse.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

const MAX_IDLE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one request/reply exchange failed.
enum Failure {
    /// The peer had closed the connection before it could have read the request: sending
    /// failed, or it hung up without a byte of reply. Safe to send again elsewhere.
    Unheard(GfsError),
    Other(GfsError),
}

fn exchange<Req: Serialize, Rep: DeserializeOwned>(c: &mut Conn, req: &Req, data: &[u8]) -> Result<Rep, Failure> {
    let sent = (|| {
        c.queue(req)?;
        for piece in data.chunks(crate::DATA_FRAME) {
            c.queue_data(piece)?;
        }
        c.flush()
    })();
    if let Err(e) = sent {
        return Err(match e {
            GfsError::Io { .. } => Failure::Unheard(e),
            other => Failure::Other(other),
        });
    }
    match c.recv_opt::<Rep>() {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Failure::Unheard(GfsError::Closed(c.peer().to_string()))),
        Err(e) => Err(Failure::Other(e)),
    }
}

impl Pool {
    /// A reusable idle connection to `addr`, or a new one.
    pub fn get(&self, addr: &str) -> Result<Conn> {
        match self.take_idle(addr) {
            Some(c) => Ok(c),
            None => Conn::connect(addr, CONNECT_TIMEOUT),
        }
    }

    /// A reusable idle connection to `addr`, if there is one; connections the peer closed or
    /// sent something unasked on are dropped on the way.
    pub fn take_idle(&self, addr: &str) -> Option<Conn> {
        loop {
            let c = self.idle.lock_unpoisoned().get_mut(addr).and_then(|v| v.pop())?;
            if c.is_reusable() {
                return Some(c);
            }
            tracing::debug!(%addr, "dropping a pooled connection the peer closed");
        }
    }

    /// Returns a connection after a complete exchange (never after an error).
    pub fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock_unpoisoned();
        let v = idle.entry(conn.peer().to_string()).or_default();
        if v.len() < MAX_IDLE {
            v.push(conn);
        }
    }

    /// Drops idle connections to `addr` (after it failed).
    pub fn forget(&self, addr: &str) {
        self.idle.lock_unpoisoned().remove(addr);
    }

    /// Sends `req` to `addr` and returns the reply, on a pooled connection if one is
    /// reusable. If the peer turns out to have closed that connection before reading the
    /// request, it is sent again on a fresh connection (once).
    pub fn call<Req: Serialize, Rep: DeserializeOwned>(&self, addr: &str, req: &Req) -> Result<Rep> {
        self.call_with_data(addr, req, &[])
    }

    /// [`Pool::call`] for a request followed by `data` in data frames (none if empty).
    pub fn call_with_data<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Req,
        data: &[u8],
    ) -> Result<Rep> {
        if let Some(mut c) = self.take_idle(addr) {
            match exchange(&mut c, req, data) {
                Ok(r) => {
                    self.put(c);
                    return Ok(r);
                }
                Err(Failure::Unheard(e)) => {
                    tracing::debug!(%addr, "pooled connection was closed, sending again: {e}");
                    self.forget(addr);
                }
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        let mut c = Conn::connect(addr, CONNECT_TIMEOUT)?;
        match exchange(&mut c, req, data) {
            Ok(r) => {
                self.put(c);
                Ok(r)
            }
            Err(Failure::Unheard(e) | Failure::Other(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::conn::{serve, ServeLimits};
    use crate::protocol::{ChunkReply, ChunkRequest, Reply};
    use std::net::TcpListener;
    use std::time::Instant;

    /// A server that answers `Info` with its length field counting the requests it served.
    fn server(limits: ServeLimits) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        serve(l, "test", limits, |mut conn| {
            let mut served = 0u64;
            while let Ok(Some(ChunkRequest::Info { handle })) = conn.recv_opt::<ChunkRequest>() {
                served += 1;
                let r: Reply<ChunkReply> = Ok(ChunkReply::Info { version: handle as u32, len: served });
                if conn.send(&r).is_err() {
                    return;
                }
            }
        })
        .unwrap();
        addr
    }

    fn info(pool: &Pool, addr: &str, handle: u64) -> Result<(u32, u64)> {
        match pool.call::<_, Reply<ChunkReply>>(addr, &ChunkRequest::Info { handle })? {
            Ok(ChunkReply::Info { version, len }) => Ok((version, len)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(error) => Err(GfsError::Remote { peer: addr.to_string(), error }),
        }
    }

    #[test]
    fn a_connection_the_server_closed_when_idle_is_not_reused() {
        let idle = Duration::from_millis(300);
        let addr = server(ServeLimits { idle_timeout: idle, ..ServeLimits::default() });
        let pool = Pool::default();
        assert_eq!(info(&pool, &addr, 1).unwrap(), (1, 1));
        assert_eq!(info(&pool, &addr, 2).unwrap(), (2, 2), "the connection was not pooled");
        // Poll until the server has closed the pooled connection for idleness.
        let t0 = Instant::now();
        loop {
            let c = pool.idle.lock().unwrap().get_mut(&addr).and_then(|v| v.pop()).unwrap();
            if !c.is_reusable() {
                pool.put(c);
                break;
            }
            pool.put(c);
            assert!(t0.elapsed() < Duration::from_secs(10), "the server never closed the idle connection");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The next request goes out on a fresh connection and gets its own reply.
        assert_eq!(info(&pool, &addr, 3).unwrap(), (3, 1));
    }

    #[test]
    fn an_unasked_frame_on_an_idle_connection_is_never_read_as_a_reply() {
        // A peer that, like the servers before this fix, writes an error frame when it gives
        // up on an idle connection, then closes it.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut conn = Conn::from_stream(stream, "client".into()).unwrap();
                    conn.set_idle_timeout(Duration::from_millis(200));
                    loop {
                        match conn.recv_opt::<ChunkRequest>() {
                            Ok(Some(ChunkRequest::Info { handle })) => {
                                let r: Reply<ChunkReply> = Ok(ChunkReply::Info { version: handle as u32, len: 0 });
                                let _ = conn.send(&r);
                            }
                            Ok(_) => return,
                            Err(e) => {
                                let stale: Reply<ChunkReply> = Err(crate::util::to_remote(&e));
                                let _ = conn.send(&stale);
                                // Keep it open a while: the stale frame sits there unread.
                                std::thread::sleep(Duration::from_secs(2));
                                return;
                            }
                        }
                    }
                });
            }
        });
        let pool = Pool::default();
        assert_eq!(info(&pool, &addr, 1).unwrap().0, 1);
        let t0 = Instant::now();
        loop {
            let c = pool.idle.lock().unwrap().get_mut(&addr).and_then(|v| v.pop()).unwrap();
            let stale = !c.is_reusable();
            pool.put(c);
            if stale {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "the stale frame never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(info(&pool, &addr, 2).unwrap().0, 2);
        let mut c = pool.get(&addr).unwrap();
        c.send(&ChunkRequest::Info { handle: 3 }).unwrap();
        assert!(matches!(c.recv::<Reply<ChunkReply>>().unwrap(), Ok(ChunkReply::Info { version: 3, .. })));
    }

    #[test]
    fn a_request_is_sent_again_when_the_pooled_connection_was_closed_unseen() {
        // The server hangs up on every connection after one reply, without the pool being able
        // to see it yet: `call` must notice the close and send again on a fresh connection.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for (i, stream) in l.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let mut conn = Conn::from_stream(stream, "client".into()).unwrap();
                if let Ok(Some(ChunkRequest::Info { handle })) = conn.recv_opt::<ChunkRequest>() {
                    let r: Reply<ChunkReply> = Ok(ChunkReply::Info { version: handle as u32, len: i as u64 });
                    let _ = conn.send(&r);
                }
            }
        });
        let pool = Pool::default();
        let (_, first_conn) = info(&pool, &addr, 1).unwrap();
        // In production the close can land just after the pool's check; here the check is
        // bypassed on a connection known to be closed, which is the same to the exchange.
        let t0 = Instant::now();
        let mut c = loop {
            let c = pool.idle.lock().unwrap().get_mut(&addr).and_then(|v| v.pop()).unwrap();
            if !c.is_reusable() {
                break c;
            }
            pool.put(c);
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        };
        let r = exchange::<_, Reply<ChunkReply>>(&mut c, &ChunkRequest::Info { handle: 2 }, &[]);
        assert!(matches!(r, Err(Failure::Unheard(_))), "a closed connection must count as unheard");
        let (v, conn_no) = info(&pool, &addr, 2).unwrap();
        assert_eq!(v, 2);
        assert!(conn_no > first_conn);
    }

    #[test]
    fn connections_per_peer_are_limited() {
        let addr = server(ServeLimits { per_peer: 3, ..ServeLimits::default() });
        let pools: Vec<Pool> = (0..3).map(|_| Pool::default()).collect();
        let mut held: Vec<Conn> = Vec::new();
        for p in &pools {
            info(p, &addr, 1).unwrap();
            held.push(p.take_idle(&addr).unwrap());
        }
        let extra = Pool::default();
        let e = info(&extra, &addr, 1).unwrap_err().to_string();
        assert!(e.contains("too many connections from 127.0.0.1"), "{e}");
        held.pop();
        // The count drops once the server notices the close.
        let t0 = Instant::now();
        while info(&extra, &addr, 1).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "a closed connection was never uncounted");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
