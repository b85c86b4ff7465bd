//! The handshake: each side sends a preamble (magic and protocol version) and a Hello, then
//! reads the other's. Both send before reading, so a version mismatch is seen, and refused with
//! both versions named, on both sides.

use super::wire::{FrameReader, Message, RecvError};
use super::ChannelError;
use crate::MachineDescription;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::time::Instant;

/// The first bytes either side sends.
pub const LINK_MAGIC: [u8; 8] = *b"FTVMLINK";
/// The channel's protocol version: bumped on any change of the preamble, framing or messages.
pub const PROTOCOL_VERSION: u16 = 5;
/// The longest `--ft-listen` address or `--ft-id` a Hello may carry.
pub const MAX_NAME: usize = 256;

/// Which side of the pair a Hello comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Backup,
}

/// What each side says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    /// The generation of the `ft.NAME` register the sender knows.
    pub generation: u64,
    /// The sender's `--ft-listen` address.
    pub listen: String,
    /// The sender's `--ft-id`.
    pub id: String,
    /// The protected VM's name (`--ft NAME`: its go-live register is `ft.NAME`).
    pub vm: String,
    /// The machine (the primary's; a backup sends `None`).
    pub machine: Option<MachineDescription>,
    /// The primary's `--commit verified`: the backup follows in the primary's mode.
    pub verified: bool,
}

impl Hello {
    fn check(&self) -> Result<(), ChannelError> {
        for (field, value) in [("listen address", &self.listen), ("id", &self.id), ("VM name", &self.vm)] {
            if value.len() > MAX_NAME {
                return Err(ChannelError::Handshake(format!(
                    "the {field} is {} bytes long (at most {MAX_NAME})",
                    value.len()
                )));
            }
        }
        Ok(())
    }
}

/// Sends our preamble and Hello, reads the peer's, and checks that the peer plays `expect`.
pub(crate) fn exchange(
    stream: &mut seal::Writer,
    frames: &mut FrameReader<seal::Reader>,
    ours: &Hello,
    version: u16,
    expect: Role,
    deadline: Instant,
) -> Result<Hello, ChannelError> {
    ours.check()?;
    let body = postcard::to_allocvec(ours).map_err(|e| ChannelError::Handshake(format!("encoding our hello: {e}")))?;
    let mut out = Vec::with_capacity(10 + body.len() + 10);
    out.extend_from_slice(&LINK_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    Message::Hello(body).encode_into(&mut out).map_err(|e| ChannelError::Handshake(format!("our hello: {e}")))?;
    stream.write_all(&out).map_err(ChannelError::Io)?;

    let mut preamble = [0u8; 10];
    read_preamble(frames.get_mut(), &mut preamble, deadline)?;
    if preamble[..8] == seal::handshake::SEAL_MAGIC {
        return Err(ChannelError::Handshake(
            "the peer opened a sealed channel (it holds the cluster key) and this side runs --insecure".into(),
        ));
    }
    if preamble[..8] != LINK_MAGIC {
        return Err(ChannelError::Handshake("the peer is not an ftvm logging channel (bad magic)".into()));
    }
    let theirs = u16::from_le_bytes([preamble[8], preamble[9]]);
    if theirs != version {
        // Close gently: reading the peer's unread hello first keeps the kernel from answering
        // it with a reset, which could destroy our preamble before the peer reads it, and the
        // peer would see a broken connection instead of the mismatch.
        let _ = stream.get_ref().shutdown(std::net::Shutdown::Write);
        drain(frames.get_mut(), deadline.min(Instant::now() + std::time::Duration::from_secs(1)));
        return Err(ChannelError::VersionMismatch { ours: version, theirs });
    }
    let body = match frames.next(deadline) {
        Ok(Message::Hello(body)) => body,
        Ok(other) => return Err(ChannelError::Handshake(format!("expected a hello, got {}", other.name()))),
        Err(RecvError::Idle) => return Err(ChannelError::Handshake("no hello from the peer in time".into())),
        Err(e) => return Err(ChannelError::Handshake(format!("reading the peer's hello: {e}"))),
    };
    let hello: Hello = postcard::from_bytes(&body)
        .map_err(|e| ChannelError::Handshake(format!("the peer's hello does not decode: {e}")))?;
    hello.check()?;
    if hello.role != expect {
        return Err(ChannelError::Handshake(format!("the peer is a {:?}, expected a {expect:?}", hello.role)));
    }
    Ok(hello)
}

/// Reads the fixed preamble, which precedes the framed stream (the socket has a read timeout).
fn read_preamble(stream: &mut seal::Reader, buf: &mut [u8], deadline: Instant) -> Result<(), ChannelError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(ChannelError::Handshake("the peer closed the connection during the handshake".into())),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Err(ChannelError::Handshake("no preamble from the peer in time".into()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ChannelError::Io(e)),
        }
    }
    Ok(())
}

/// Reads and discards until the peer closes or `deadline` passes.
fn drain(stream: &mut seal::Reader, deadline: Instant) {
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
