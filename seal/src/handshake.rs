//! The handshake: the initiator (the side that connected) sends [`SEAL_MAGIC`], then each
//! Noise message as `u16 LE length | message`. A responder that cannot verify the first message
//! (the initiator holds another key, or none) answers with a zero length, so the initiator
//! learns it was refused rather than seeing a bare hang-up; both sides log why.

use crate::stream::{self, Reader, Writer, MAX_RECORD};
use crate::{SealError, Security};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The first bytes of a sealed connection.
pub const SEAL_MAGIC: [u8; 8] = *b"FTSEAL1\n";
/// Noise pattern and algorithms: ephemeral keys on both sides, the cluster key mixed in from
/// the first message (so nothing is accepted from a peer without it), AES-GCM (ring's, with the
/// AES-NI and CLMUL instructions: 4x RustCrypto's and 1.7x ChaCha20-Poly1305 here), SHA-256.
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// The responder's one handshake message with this pattern: its ephemeral key and an empty
/// payload's tag.
const REPLY_LEN: usize = 32 + 16;

fn len_bytes(len: usize) -> [u8; 2] {
    (len as u16).to_le_bytes()
}

/// What to say of a peer whose first bytes are not a seal handshake: a peer that is not ours
/// usually speaks text (HTTP, SMTP, a banner), so name it.
fn not_ours(head: &[u8], protocol: &str) -> String {
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("the peer sent the text {:?}, it does not speak the {protocol} protocol", String::from_utf8_lossy(head))
    } else {
        format!("the peer's reply is not a sealed handshake: it does not speak the {protocol} protocol")
    }
}

/// Which end of the connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Connected to the peer: speaks first.
    Initiator,
    /// Accepted the connection.
    Responder,
}

/// Opens the channel on `stream`: with `Security::Sealed`, runs the handshake (within
/// `timeout`) for `protocol` (a name both sides must agree on, e.g. `"gfs"`: a handshake for
/// another protocol fails); with `Security::Insecure`, only splits the stream. `peer` names the
/// other side in errors.
pub fn open(
    stream: TcpStream,
    security: &Security,
    protocol: &str,
    side: Side,
    peer: &str,
    timeout: Duration,
) -> Result<(Reader, Writer), SealError> {
    let key = match security {
        Security::Insecure => {
            return stream::plain(stream).map_err(|e| SealError::io(format!("splitting the connection to {peer}"), e))
        }
        Security::Sealed(key) => key.clone(),
    };
    let failed = |reason: String| SealError::Handshake { peer: peer.to_owned(), reason };
    let refused = |reason: String| SealError::Refused { peer: peer.to_owned(), reason };
    let params = NOISE_PARAMS.parse().map_err(|e| failed(format!("noise parameters: {e:?}")))?;
    let prologue = format!("ftvm seal v1 {protocol}");
    let builder = snow::Builder::new(params)
        .prologue(prologue.as_bytes())
        .and_then(|b| b.psk(0, key.secret()))
        .map_err(|e| failed(format!("setting up the handshake: {e}")))?;
    let mut noise = match side {
        Side::Initiator => builder.build_initiator(),
        Side::Responder => builder.build_responder(),
    }
    .map_err(|e| failed(format!("setting up the handshake: {e}")))?;

    let saved_timeout = stream.read_timeout().ok().flatten();
    let mut wire = Wire { stream: &stream, deadline: Instant::now() + timeout };
    let mut message = vec![0u8; MAX_RECORD];
    let mut payload = vec![0u8; MAX_RECORD];
    let outcome = (|| match side {
        Side::Initiator => {
            let n = noise.write_message(&[], &mut message).map_err(|e| failed(format!("first message: {e}")))?;
            let mut first = SEAL_MAGIC.to_vec();
            first.extend_from_slice(&(n as u16).to_le_bytes());
            first.extend_from_slice(&message[..n]);
            wire.send(&first).map_err(|e| failed(format!("sending the first message: {e}")))?;
            let len = wire.read_len().map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => SealError::HungUp {
                    peer: peer.to_owned(),
                    reason: "the peer hung up at the handshake: it does not seal its channels (--insecure?) or does not speak this protocol"
                        .into(),
                },
                _ => failed(format!("waiting for the reply: {e}")),
            })?;
            if len == 0 {
                return Err(refused("the peer does not hold this cluster's key (the keys differ)".into()));
            }
            if len != REPLY_LEN {
                let mut head = len_bytes(len).to_vec();
                let mut more = [0u8; 2];
                if wire.read_exact(&mut more).is_ok() {
                    head.extend_from_slice(&more);
                }
                return Err(refused(not_ours(&head, protocol)));
            }
            wire.read_exact(&mut message[..len]).map_err(|e| failed(format!("reading the reply: {e}")))?;
            noise
                .read_message(&message[..len], &mut payload)
                .map_err(|_| refused("the peer's reply does not verify: it does not hold this cluster's key".into()))?;
            Ok(())
        }
        Side::Responder => {
            let mut magic = [0u8; SEAL_MAGIC.len()];
            wire.read_exact(&mut magic).map_err(|e| failed(format!("waiting for the first message: {e}")))?;
            if magic != SEAL_MAGIC {
                wire.tell_plain_peer();
                return Err(refused(format!(
                    "the peer did not open a sealed channel: it runs without keys (--insecure?) or does not speak \
                     the {protocol} protocol"
                )));
            }
            let len = wire.read_len().map_err(|e| failed(format!("reading the first message: {e}")))?;
            wire.read_exact(&mut message[..len]).map_err(|e| failed(format!("reading the first message: {e}")))?;
            if noise.read_message(&message[..len], &mut payload).is_err() {
                // A refusal anyone could forge, and no more harmful than a hang-up: it only lets
                // an honest peer with the wrong key say so in its log.
                let _ = wire.send(&0u16.to_le_bytes());
                return Err(refused(
                    "the peer does not hold this cluster's key (its first message does not verify)".into(),
                ));
            }
            let n = noise.write_message(&[], &mut message).map_err(|e| failed(format!("the reply: {e}")))?;
            let mut reply = (n as u16).to_le_bytes().to_vec();
            reply.extend_from_slice(&message[..n]);
            wire.send(&reply).map_err(|e| failed(format!("sending the reply: {e}")))?;
            Ok(())
        }
    })();
    let _ = stream.set_read_timeout(saved_timeout);
    outcome?;
    let transport =
        noise.into_stateless_transport_mode().map_err(|e| failed(format!("finishing the handshake: {e}")))?;
    stream::sealed(stream, transport).map_err(|e| SealError::io(format!("splitting the connection to {peer}"), e))
}

/// Handshake I/O on the bare socket, each read bounded by the deadline.
struct Wire<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Wire<'_> {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.stream;
        s.write_all(bytes)
    }

    /// Answers a peer that spoke plain bytes with the magic and a refusal, which gfs and the
    /// logging channel name as "the peer opened a sealed channel", then lingers until it hangs
    /// up (briefly): closing with its words unread would reset the connection, and a reset can
    /// destroy the answer before the peer reads it.
    fn tell_plain_peer(&mut self) {
        let mut answer = SEAL_MAGIC.to_vec();
        answer.extend_from_slice(&[0, 0]);
        if self.send(&answer).is_err() {
            return;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let linger = Instant::now() + Duration::from_secs(1);
        let mut sink = [0u8; 4096];
        while Instant::now() < linger.min(self.deadline) {
            let _ = self.stream.set_read_timeout(Some(Duration::from_millis(50)));
            let mut s = self.stream;
            match s.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    }

    fn read_len(&mut self) -> io::Result<usize> {
        let mut len = [0u8; 2];
        self.read_exact(&mut len)?;
        Ok(u16::from_le_bytes(len) as usize)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer did not finish the handshake in time"));
            }
            self.stream.set_read_timeout(Some(left.min(Duration::from_millis(250))))?;
            let mut s = self.stream;
            match s.read(&mut buf[got..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection")),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer reset the connection"))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
