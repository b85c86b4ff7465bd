//! A blocking, framed TCP connection, sealed (authenticated and encrypted, see the `seal`
//! crate) unless the process runs `--insecure`.

use super::frame::{self, Arrival, Checksum, Kind, Landed};
use crate::error::{GfsError, IoContext, Result};
use crate::sync::Unpoisoned;
use seal::Security;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The security of this process's channels: what [`seal::install`] set, or plain TCP where
/// nothing was installed yet.
pub fn process_security() -> Result<Security> {
    Ok(seal::installed().unwrap_or(Security::Insecure))
}

/// Default I/O timeout: a peer that stops talking for this long is treated as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a server keeps a connection that sends no request (`--idle-timeout-secs`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What arrived when a data frame was expected.
#[derive(Debug)]
pub enum Incoming {
    Data,
    Msg,
}

/// What [`Conn::recv_data_into`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// This many bytes of data, verified, at the front of the caller's buffer; the checksum
    /// lets them be forwarded without checksumming them again ([`Conn::queue_verified_data`]).
    Data(usize, Checksum),
    /// A message, left in the message buffer for [`Conn::decode_msg`].
    Msg,
    /// A data frame of this many bytes, more than the caller's buffer holds; the stream is no
    /// longer at a frame boundary, so the connection cannot be used further.
    TooLong(usize),
}

/// The read buffer under each connection. Small on purpose: a data frame's payload is read
/// past it straight into its destination once what is buffered is used up (reads as large as
/// the buffer bypass it), so only up to about twice this much of a 256 KiB frame is copied
/// through it; messages are far smaller than this.
const READ_BUFFER: usize = 8 * 1024;

/// A framed connection to one peer.
pub struct Conn {
    peer: String,
    reader: BufReader<seal::Reader>,
    writer: BufWriter<seal::Writer>,
    scratch: Vec<u8>,
    /// Serving side: how long to wait for the first byte of the next request (the I/O
    /// timeout still bounds the rest of it).
    idle: Option<Duration>,
    /// The read timeout for everything but that wait.
    io_timeout: Duration,
}

/// How long a client waits before it tries once more a server that hung up at the handshake.
const HUNG_UP_RETRY: Duration = Duration::from_millis(100);

/// Why a channel did not open: a peer that hung up at the handshake is told apart, for one more
/// try.
enum Opening {
    HungUp(seal::SealError),
    Failed(GfsError),
}

impl Conn {
    /// Connects to `addr` with a connect timeout and the default I/O timeout, sealed as the
    /// process's security says ([`seal::install`]).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        Conn::connect_with(addr, timeout, &process_security()?)
    }

    /// Like [`Conn::connect`] with the given security (a test's client with another key).
    pub fn connect_with(addr: &str, timeout: Duration, security: &Security) -> Result<Conn> {
        let mut last = None;
        let addrs = addr.to_socket_addrs().ctx(|| format!("resolving {addr}"))?;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    return match Conn::open_sealed(s, addr.to_string(), security, seal::Side::Initiator) {
                        // A server killed or restarting as it accepted hangs up like one that does
                        // not seal: one more try tells them apart (a restarting one then refuses
                        // the connection, which the caller retries; a stranger hangs up again).
                        Err(Opening::HungUp(_)) => {
                            std::thread::sleep(HUNG_UP_RETRY);
                            let s = TcpStream::connect_timeout(&a, timeout)
                                .map_err(|cause| GfsError::Connect { addr: addr.to_string(), cause })?;
                            Conn::open(s, addr.to_string(), security, seal::Side::Initiator)
                        }
                        Err(Opening::Failed(e)) => Err(e),
                        Ok(conn) => Ok(conn),
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        Err(GfsError::Connect {
            addr: addr.to_string(),
            cause: last.unwrap_or_else(|| std::io::Error::other("the name resolves to no address")),
        })
    }

    /// Wraps an accepted or connected stream without sealing it (tests that speak to a
    /// server as a stranger would).
    pub fn from_stream(stream: TcpStream, peer: String) -> Result<Conn> {
        Conn::open(stream, peer, &Security::Insecure, seal::Side::Initiator)
    }

    /// Opens the channel on an accepted (`Responder`) or connected (`Initiator`) stream: the
    /// handshake, when sealed, within the I/O timeout. A server logs a peer it refused at the
    /// handshake here; a client's refusal is its error (which the caller reports once).
    pub fn open(stream: TcpStream, peer: String, security: &Security, side: seal::Side) -> Result<Conn> {
        Conn::open_sealed(stream, peer, security, side).map_err(|e| match e {
            Opening::HungUp(e) => GfsError::Sealing(e.to_string()),
            Opening::Failed(e) => e,
        })
    }

    fn open_sealed(
        stream: TcpStream,
        peer: String,
        security: &Security,
        side: seal::Side,
    ) -> std::result::Result<Conn, Opening> {
        let report = |e: &seal::SealError| match side {
            seal::Side::Responder => tracing::warn!("{e}"),
            seal::Side::Initiator => tracing::debug!("{e}"),
        };
        let ctx = || format!("configuring connection to {peer}");
        let configure = || -> Result<()> {
            stream.set_nodelay(true).ctx(ctx)?;
            stream.set_read_timeout(Some(IO_TIMEOUT)).ctx(ctx)?;
            stream.set_write_timeout(Some(IO_TIMEOUT)).ctx(ctx)
        };
        configure().map_err(Opening::Failed)?;
        let (r, w) = match seal::open(stream, security, "gfs", side, &peer, IO_TIMEOUT) {
            Ok(halves) => halves,
            Err(e @ seal::SealError::HungUp { .. }) => {
                report(&e);
                return Err(Opening::HungUp(e));
            }
            Err(e @ seal::SealError::Refused { .. }) => {
                report(&e);
                return Err(Opening::Failed(GfsError::Sealing(e.to_string())));
            }
            // Cut short (the peer restarting, say): the peer saw no request, so it may be tried
            // again like a connection that was never made.
            Err(e) => {
                report(&e);
                let cause = std::io::Error::other(e.to_string());
                return Err(Opening::Failed(GfsError::Connect { addr: peer, cause }));
            }
        };
        Ok(Conn {
            peer,
            reader: BufReader::with_capacity(READ_BUFFER, r),
            writer: BufWriter::with_capacity(256 * 1024, w),
            scratch: Vec::new(),
            idle: None,
            io_timeout: IO_TIMEOUT,
        })
    }

    /// The peer's address as given when connecting or accepting.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Changes the read timeout (e.g. for long waits).
    pub fn set_read_timeout(&mut self, t: Duration) -> Result<()> {
        self.io_timeout = t;
        self.reader
            .get_ref()
            .get_ref()
            .set_read_timeout(Some(t))
            .ctx(|| format!("configuring connection to {}", self.peer))
    }

    /// Serving side: wait at most `t` for each request to begin (see [`ServeLimits`]).
    pub fn set_idle_timeout(&mut self, t: Duration) {
        self.idle = Some(t);
    }

    /// Waits (up to the idle timeout, if one is set) for the first byte of the next frame.
    fn await_frame(&mut self) -> Result<Option<Arrival>> {
        let Some(idle) = self.idle else { return Ok(None) };
        if !self.reader.buffer().is_empty() || self.reader.get_ref().has_buffered() {
            return Ok(None);
        }
        let s = self.reader.get_ref().get_ref();
        let ctx = || format!("configuring connection to {}", self.peer);
        s.set_read_timeout(Some(idle)).ctx(ctx)?;
        let waited = loop {
            match self.reader.fill_buf() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map(|b| b.is_empty()),
            }
        };
        let s = self.reader.get_ref().get_ref();
        s.set_read_timeout(Some(self.io_timeout)).ctx(ctx)?;
        // A sealed record that began to arrive is a request under way, not a quiet peer.
        let waited = match waited {
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && self.reader.get_ref().has_buffered() =>
            {
                Ok(false)
            }
            other => other,
        };
        match waited {
            Ok(true) => Ok(Some(Arrival::Closed)),
            Ok(false) => Ok(None),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Ok(Some(Arrival::Quiet))
            }
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted) =>
            {
                Ok(Some(Arrival::Closed))
            }
            Err(e) => Err(GfsError::io(format!("receiving from {}", self.peer), e)),
        }
    }

    /// Queues a message without flushing.
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let bytes = postcard::to_stdvec(msg).map_err(|e| GfsError::Codec(e.to_string()))?;
        frame::write(&mut self.writer, Kind::Msg, &bytes)
    }

    /// Sends a message and flushes.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.queue(msg)?;
        self.flush()
    }

    /// Queues a data frame without flushing.
    pub fn queue_data(&mut self, data: &[u8]) -> Result<()> {
        frame::write(&mut self.writer, Kind::Data, data)
    }

    /// Queues a data frame under a checksum known to be its own, without computing it again:
    /// the one it arrived with ([`Conn::recv_data_into`], verified then), or one derived from
    /// its verified blocks ([`Checksum::of_whole_blocks`]).
    pub fn queue_verified_data(&mut self, data: &[u8], checksum: Checksum) -> Result<()> {
        frame::write_verified_data(&mut self.writer, data, checksum)
    }

    pub fn flush(&mut self) -> Result<()> {
        let peer = &self.peer;
        self.writer.flush().ctx(|| format!("sending to {peer}"))
    }

    /// Receives a message; `Ok(None)` when the peer closed the connection before sending any
    /// byte of one, [`GfsError::Quiet`] when it sent nothing within the read timeout.
    pub fn recv_opt<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = match self.await_frame() {
            Ok(Some(early)) => Ok(early),
            Ok(None) => frame::read_frame(&mut self.reader, &mut buf),
            Err(e) => Err(e),
        };
        let out = match r {
            Ok(Arrival::Closed) => Ok(None),
            Ok(Arrival::Quiet) => Err(self.quiet()),
            Ok(Arrival::Frame(Kind::Msg)) => decode(&buf).map(Some),
            Ok(Arrival::Frame(Kind::Data)) => Err(GfsError::Frame("data frame where a message was expected".into())),
            Err(e) => Err(e),
        };
        // An idle connection keeps no more than a small frame's worth of memory.
        if buf.capacity() <= frame::SMALL_BODY {
            buf.clear();
            self.scratch = buf;
        }
        out
    }

    fn quiet(&self) -> GfsError {
        GfsError::Quiet { peer: self.peer.clone(), after: self.idle.unwrap_or(self.io_timeout) }
    }

    /// Whether this idle connection can carry a new request: the peer has neither closed it
    /// nor sent anything unasked (such as an error frame written before it hung up). Anything
    /// waiting to be read on an idle connection can only be stale, so such a connection is
    /// unusable too.
    pub fn is_reusable(&self) -> bool {
        if !self.reader.buffer().is_empty() || self.reader.get_ref().has_buffered() {
            return false;
        }
        let s = self.reader.get_ref().get_ref();
        if s.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = s.peek(&mut [0u8; 1]);
        let restored = s.set_nonblocking(false).is_ok();
        restored && matches!(peeked, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Receives a message; end of stream is an error.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        match self.recv_opt()? {
            Some(m) => Ok(m),
            None => Err(GfsError::Closed(self.peer.clone())),
        }
    }

    /// Receives a frame into `buf`; a message frame is left in `buf` for [`Conn::decode_msg`].
    pub fn recv_frame(&mut self, buf: &mut Vec<u8>) -> Result<Incoming> {
        match frame::read_frame(&mut self.reader, buf)? {
            Arrival::Frame(Kind::Data) => Ok(Incoming::Data),
            Arrival::Frame(Kind::Msg) => Ok(Incoming::Msg),
            Arrival::Quiet => Err(self.quiet()),
            Arrival::Closed => Err(GfsError::Frame(format!("{} closed the connection mid-stream", self.peer))),
        }
    }

    /// Receives a frame: a data frame's payload straight into `dest` (no copy through a frame
    /// buffer), a message into `msg`. Both are verified before this returns.
    pub fn recv_data_into(&mut self, dest: &mut [u8], msg: &mut Vec<u8>) -> Result<Received> {
        match frame::read_data_into(&mut self.reader, dest, msg)? {
            Landed::Data(n, checksum) => Ok(Received::Data(n, checksum)),
            Landed::Msg => Ok(Received::Msg),
            Landed::TooLong(n) => Ok(Received::TooLong(n)),
            Landed::Quiet => Err(self.quiet()),
            Landed::Closed => Err(GfsError::Frame(format!("{} closed the connection mid-stream", self.peer))),
        }
    }

    /// Decodes a message frame previously received by [`Conn::recv_frame`].
    pub fn decode_msg<T: DeserializeOwned>(buf: &[u8]) -> Result<T> {
        decode(buf)
    }
}

fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T> {
    postcard::from_bytes(buf).map_err(|e| GfsError::Codec(e.to_string()))
}

/// What a server allows its peers.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// A connection that sends no request for this long is closed, silently: the peer never
    /// finds an unasked frame waiting on a connection it kept for later.
    pub idle_timeout: Duration,
    /// Most connections open at once from one IP address.
    pub per_peer: usize,
    /// Most connections open at once in all.
    pub total: usize,
    /// How connections are sealed; `None`: as the process's security says (the usual case).
    pub security: Option<Security>,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { idle_timeout: IDLE_TIMEOUT, per_peer: 128, total: 1024, security: None }
    }
}

/// Open connections per peer address, and in all.
#[derive(Default)]
struct Census {
    by_ip: std::collections::HashMap<std::net::IpAddr, usize>,
    total: usize,
}

/// One counted connection; uncounted on drop.
struct Admitted {
    census: std::sync::Arc<std::sync::Mutex<Census>>,
    ip: std::net::IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.census.lock_unpoisoned();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
    }
}

fn admit(
    census: &std::sync::Arc<std::sync::Mutex<Census>>,
    limits: &ServeLimits,
    ip: std::net::IpAddr,
) -> std::result::Result<Admitted, String> {
    let mut c = census.lock_unpoisoned();
    if c.total >= limits.total {
        return Err(format!("server busy: {} connections open", c.total));
    }
    let n = c.by_ip.entry(ip).or_default();
    if *n >= limits.per_peer {
        return Err(format!("too many connections from {ip} (at most {})", limits.per_peer));
    }
    *n += 1;
    c.total += 1;
    Ok(Admitted { census: census.clone(), ip })
}

/// Tells a refused peer why in one error frame (best effort: a sealed handshake for it gets
/// [`REFUSAL_TIMEOUT`]), then hangs up. Runs on the refusal thread, never the accept loop.
fn refuse(stream: TcpStream, why: &str, security: &Security, peer: &str) {
    let _ = stream.set_write_timeout(Some(REFUSAL_TIMEOUT));
    let reply: Result<(), crate::error::RemoteError> =
        Err(crate::error::RemoteError::new(crate::error::ErrorKind::Unavailable, why));
    let Ok(bytes) = postcard::to_stdvec(&reply) else { return };
    let mut out = Vec::new();
    if frame::encode(Kind::Msg, &bytes, &mut out).is_err() {
        return;
    }
    if let Ok((_, mut w)) = seal::open(stream, security, "gfs", seal::Side::Responder, peer, REFUSAL_TIMEOUT) {
        let _ = w.write_all(&out);
    }
}

/// How long the refusal thread spends telling a refused peer why.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(200);

/// Refused connections waiting to be told why. A peer that keeps connecting past its limit and
/// sends nothing costs each one [`REFUSAL_TIMEOUT`]: were that spent on the accept loop, one
/// flooding address would hold up accepts for every other (about 5 a second). So refusals go to
/// one thread through this short queue, and when it is full a refused connection is closed
/// without a word: a flood costs at most this many held sockets and one thread.
const REFUSAL_QUEUE: usize = 16;

/// A refused connection and why it was refused.
struct Refusal {
    stream: TcpStream,
    why: String,
    peer: String,
}

/// Starts the thread that tells refused peers why, and returns its queue.
fn start_refusals(name: &str, security: Security) -> Result<std::sync::mpsc::SyncSender<Refusal>> {
    let (queue, refusals) = std::sync::mpsc::sync_channel::<Refusal>(REFUSAL_QUEUE);
    std::thread::Builder::new()
        .name(format!("{name}-refuse"))
        .spawn(move || {
            for Refusal { stream, why, peer } in refusals {
                refuse(stream, &why, &security, &peer);
            }
        })
        .map_err(|e| GfsError::io("starting the refusal thread", e))?;
    Ok(queue)
}

/// Accepts connections on `listener` on a thread named `name`-accept and serves each on a thread
/// of its own with `handle` (the master's and the chunkservers' servers are alike in this),
/// within `limits`.
pub fn serve(
    listener: std::net::TcpListener,
    name: &str,
    limits: ServeLimits,
    handle: impl Fn(Conn) + Clone + Send + 'static,
) -> Result<()> {
    let conn_name = format!("{name}-conn");
    let security = match limits.security.clone() {
        Some(security) => security,
        None => process_security()?,
    };
    let census = std::sync::Arc::new(std::sync::Mutex::new(Census::default()));
    let refusals = start_refusals(name, security.clone())?;
    std::thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        continue;
                    }
                };
                let Ok(peer_addr) = stream.peer_addr() else { continue };
                let peer = peer_addr.to_string();
                let admitted = match admit(&census, &limits, peer_addr.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        tracing::debug!(%peer, "refused: {why}");
                        // A full queue drops the refusal, which closes the connection unexplained.
                        let _ = refusals.try_send(Refusal { stream, why, peer });
                        continue;
                    }
                };
                let handle = handle.clone();
                let idle = limits.idle_timeout;
                let security = security.clone();
                let spawned = std::thread::Builder::new().name(conn_name.clone()).spawn(move || {
                    let _admitted = admitted;
                    match Conn::open(stream, peer.clone(), &security, seal::Side::Responder) {
                        Ok(mut conn) => {
                            conn.set_idle_timeout(idle);
                            handle(conn)
                        }
                        Err(e) => tracing::warn!("{peer}: {e}"),
                    }
                });
                if let Err(e) = spawned {
                    tracing::error!("cannot spawn a connection thread: {e}");
                }
            }
        })
        .map(|_| ())
        .map_err(|e| GfsError::io("starting the accept thread", e))
}

#[cfg(test)]
mod tests {
    use super::super::messages::*;
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-z/]{0,20}"
    }

    fn arb_request() -> impl Strategy<Value = MasterRequest> {
        prop_oneof![
            arb_string().prop_map(|path| MasterRequest::Mkdir { path }),
            (arb_string(), arb_string()).prop_map(|(from, to)| MasterRequest::Rename { from, to }),
            (arb_string(), any::<u64>(), any::<bool>())
                .prop_map(|(path, index, for_write)| { MasterRequest::GetChunk { path, index, for_write } }),
            (arb_string(), proptest::collection::vec((any::<u64>(), any::<u32>()), 0..10), any::<bool>()).prop_map(
                |(server, chunks, fresh)| MasterRequest::Heartbeat(Heartbeat {
                    server,
                    rack: "r".into(),
                    fresh,
                    chunks,
                    extend: vec![],
                    corrupt: vec![],
                    tokens: vec![],
                    disk: Default::default(),
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trip(req in arb_request()) {
            let bytes = postcard::to_stdvec(&req).unwrap();
            let mut framed = Vec::new();
            super::frame::encode(super::Kind::Msg, &bytes, &mut framed).unwrap();
            let (_, payload, _) = super::frame::decode(&framed).unwrap();
            let back: MasterRequest = super::decode(payload).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = super::decode::<MasterRequest>(&bytes);
            let _ = super::decode::<ChunkRequest>(&bytes);
        }
    }
}
