//! A blocking, framed TCP connection.

use super::frame::{self, Kind};
use crate::error::{GfsError, IoContext, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Default I/O timeout: a peer that stops talking for this long is treated as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What arrived when a data frame was expected.
#[derive(Debug)]
pub enum Incoming {
    Data,
    Msg,
}

/// A framed connection to one peer.
pub struct Conn {
    peer: String,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    scratch: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` with a connect timeout and the default I/O timeout.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        let mut last = None;
        let addrs = addr.to_socket_addrs().ctx(|| format!("resolving {addr}"))?;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => return Conn::from_stream(s, addr.to_string()),
                Err(e) => last = Some(e),
            }
        }
        Err(GfsError::io(format!("connecting to {addr}"), last.unwrap_or_else(|| std::io::Error::other("no address"))))
    }

    /// Wraps an accepted or connected stream.
    pub fn from_stream(stream: TcpStream, peer: String) -> Result<Conn> {
        let ctx = || format!("configuring connection to {peer}");
        stream.set_nodelay(true).ctx(ctx)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ctx(ctx)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).ctx(ctx)?;
        let w = stream.try_clone().ctx(ctx)?;
        Ok(Conn {
            peer,
            reader: BufReader::with_capacity(256 * 1024, stream),
            writer: BufWriter::with_capacity(256 * 1024, w),
            scratch: Vec::new(),
        })
    }

    /// The peer's address as given when connecting or accepting.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Changes the read timeout (e.g. for long waits).
    pub fn set_read_timeout(&self, t: Duration) -> Result<()> {
        self.reader.get_ref().set_read_timeout(Some(t)).ctx(|| format!("configuring connection to {}", self.peer))
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

    pub fn flush(&mut self) -> Result<()> {
        let peer = &self.peer;
        self.writer.flush().ctx(|| format!("sending to {peer}"))
    }

    /// Receives a message; `Ok(None)` on a clean end of stream.
    pub fn recv_opt<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut buf = std::mem::take(&mut self.scratch);
        let r = frame::read(&mut self.reader, &mut buf);
        let out = match r {
            Ok(None) => Ok(None),
            Ok(Some(Kind::Msg)) => decode(&buf).map(Some),
            Ok(Some(Kind::Data)) => Err(GfsError::Frame("data frame where a message was expected".into())),
            Err(e) => Err(e),
        };
        self.scratch = buf;
        out
    }

    /// Receives a message; end of stream is an error.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        match self.recv_opt()? {
            Some(m) => Ok(m),
            None => Err(GfsError::Frame(format!("{} closed the connection", self.peer))),
        }
    }

    /// Receives a frame into `buf`; a message frame is left in `buf` for [`Conn::decode_msg`].
    pub fn recv_frame(&mut self, buf: &mut Vec<u8>) -> Result<Incoming> {
        match frame::read(&mut self.reader, buf)? {
            Some(Kind::Data) => Ok(Incoming::Data),
            Some(Kind::Msg) => Ok(Incoming::Msg),
            None => Err(GfsError::Frame(format!("{} closed the connection mid-stream", self.peer))),
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

/// Accepts connections on `listener` on a thread named `name`-accept and serves each on a thread
/// of its own with `handle` (the master's and the chunkservers' servers are alike in this).
pub fn serve(
    listener: std::net::TcpListener,
    name: &str,
    handle: impl Fn(Conn) + Clone + Send + 'static,
) -> Result<()> {
    let conn_name = format!("{name}-conn");
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
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let handle = handle.clone();
                let spawned =
                    std::thread::Builder::new().name(conn_name.clone()).spawn(move || {
                        match Conn::from_stream(stream, peer.clone()) {
                            Ok(conn) => handle(conn),
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
