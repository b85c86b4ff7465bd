//! Message framing of the logging channel.
//!
//! ```text
//! frame: len u32 | lchk u8 | type u8 | body (len - 1) | crc32c u32
//! ```
//!
//! The same framing as a log record (see [`crate::format`]): `len` counts the type byte and the
//! body, `lchk` guards the length before it is trusted, the CRC-32C covers every byte before it.
//! Each message type has its own bound on `len`, checked before any byte of the body is waited
//! for, so a damaged or hostile length never commits memory.

use crate::format::length_check;
use std::io::Read;
use std::time::{Duration, Instant};

/// The largest chunk of snapshot or log bytes one message carries.
pub const MAX_CHUNK: usize = 1 << 20;
/// The largest handshake body (the machine description's command line and devices are short).
pub const MAX_HELLO: usize = 64 * 1024;

/// Bytes before the body (length, length check, type) and after it (CRC).
const HEAD: usize = 6;
const TAIL: usize = 4;

/// One message of the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The handshake body (see [`super::handshake`]), opaque here.
    Hello(Vec<u8>),
    /// Bytes of the primary's snapshot stream.
    StateChunk(Vec<u8>),
    /// The snapshot stream is complete: `total` bytes were sent.
    StateEnd { total: u64 },
    /// Bytes of the log stream, exactly as [`crate::LogWriter`] wrote them (header first).
    Records(Vec<u8>),
    /// I am alive. From the primary, `stamp` is when it was sent (the primary's clock); from
    /// the backup, the stamp of the latest primary heartbeat it has received, echoed: the
    /// primary's lease runs from that send time, so words that waited in a socket while the
    /// primary was paused cannot renew it.
    Heartbeat { stamp: u64 },
    /// The primary released outputs produced up to this stream position.
    Released { position: u64 },
    /// The backup holds the log up to this stream position.
    Ack { position: u64 },
    /// The backup replayed the log up to this position with identical outputs.
    Verified { position: u64 },
    /// The backup's replay diverged: it asks for the full state again; `reason` is a
    /// [`ResyncReason`] code.
    ResyncRequest { reason: u8 },
    /// Primary: the digest of its output number `sequence` (counted from the pair's start), so
    /// that a backup in verified mode can compare its own.
    OutputDigest { sequence: u64, digest: [u8; 32] },
    /// Primary: a resync follows: the full state at `Exit(exits)` (state chunks and their end),
    /// after which the log goes on with a snapshot mark at that landmark; `outputs` outputs
    /// had been emitted before it.
    ResyncBegin { exits: u64, outputs: u64 },
    /// Backup: the resync's state is applied; it follows from the snapshot mark.
    ResyncDone,
    /// Primary, just before a `ResyncBegin`: bytes of the outputs it holds across the resync
    /// ([`crate::output_commit::carry`]), in as many messages as they need.
    ResyncHeld(Vec<u8>),
    /// The sender ends the channel on purpose (nothing was lost).
    Close,
}

const T_HELLO: u8 = 1;
const T_STATE_CHUNK: u8 = 2;
const T_STATE_END: u8 = 3;
const T_RECORDS: u8 = 4;
const T_HEARTBEAT: u8 = 5;
const T_RELEASED: u8 = 6;
const T_ACK: u8 = 7;
const T_VERIFIED: u8 = 8;
const T_RESYNC: u8 = 9;
const T_CLOSE: u8 = 10;
const T_OUTPUT_DIGEST: u8 = 11;
const T_RESYNC_BEGIN: u8 = 12;
const T_RESYNC_DONE: u8 = 13;
const T_RESYNC_HELD: u8 = 14;

/// The largest `len` (type byte included) a frame of `kind` may have; `None` for an unknown type.
fn max_len(kind: u8) -> Option<usize> {
    Some(
        1 + match kind {
            T_HELLO => MAX_HELLO,
            T_STATE_CHUNK | T_RECORDS | T_RESYNC_HELD => MAX_CHUNK,
            T_STATE_END | T_RELEASED | T_ACK | T_VERIFIED | T_HEARTBEAT => 8,
            T_RESYNC => 1,
            T_OUTPUT_DIGEST => 40,
            T_RESYNC_BEGIN => 16,
            T_RESYNC_DONE | T_CLOSE => 0,
            _ => return None,
        },
    )
}

/// What is wrong with a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("length check byte mismatch (length field damaged)")]
    LengthCheck,
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("length {len} of a message of type {kind:#04x} outside 1..={max}")]
    BadLength { kind: u8, len: u32, max: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("body of {len} bytes does not fit a message of type {kind:#04x}")]
    BadBody { kind: u8, len: usize },
    #[error("a chunk of {0} bytes exceeds the maximum {MAX_CHUNK}")]
    ChunkTooLarge(usize),
}

/// A broken frame at byte `offset` of the connection's incoming stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame at byte {offset} of the channel: {reason}")]
pub struct Malformed {
    pub offset: u64,
    pub reason: FrameError,
}

impl Message {
    /// The message's name, for errors (never its payload).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::StateChunk(_) => "StateChunk",
            Message::StateEnd { .. } => "StateEnd",
            Message::Records(_) => "Records",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::Released { .. } => "Released",
            Message::Ack { .. } => "Ack",
            Message::Verified { .. } => "Verified",
            Message::ResyncRequest { .. } => "ResyncRequest",
            Message::OutputDigest { .. } => "OutputDigest",
            Message::ResyncBegin { .. } => "ResyncBegin",
            Message::ResyncDone => "ResyncDone",
            Message::ResyncHeld(_) => "ResyncHeld",
            Message::Close => "Close",
        }
    }

    fn kind_and_body(&self) -> (u8, std::borrow::Cow<'_, [u8]>) {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            Message::Hello(body) => (T_HELLO, Borrowed(body)),
            Message::StateChunk(bytes) => (T_STATE_CHUNK, Borrowed(bytes)),
            Message::StateEnd { total } => (T_STATE_END, Owned(total.to_le_bytes().to_vec())),
            Message::Records(bytes) => (T_RECORDS, Borrowed(bytes)),
            Message::Heartbeat { stamp } => (T_HEARTBEAT, Owned(stamp.to_le_bytes().to_vec())),
            Message::Released { position } => (T_RELEASED, Owned(position.to_le_bytes().to_vec())),
            Message::Ack { position } => (T_ACK, Owned(position.to_le_bytes().to_vec())),
            Message::Verified { position } => (T_VERIFIED, Owned(position.to_le_bytes().to_vec())),
            Message::ResyncRequest { reason } => (T_RESYNC, Owned(vec![*reason])),
            Message::OutputDigest { sequence, digest } => {
                let mut body = sequence.to_le_bytes().to_vec();
                body.extend_from_slice(digest);
                (T_OUTPUT_DIGEST, Owned(body))
            }
            Message::ResyncBegin { exits, outputs } => {
                let mut body = exits.to_le_bytes().to_vec();
                body.extend_from_slice(&outputs.to_le_bytes());
                (T_RESYNC_BEGIN, Owned(body))
            }
            Message::ResyncDone => (T_RESYNC_DONE, Borrowed(&[])),
            Message::ResyncHeld(bytes) => (T_RESYNC_HELD, Borrowed(bytes)),
            Message::Close => (T_CLOSE, Borrowed(&[])),
        }
    }

    /// Appends the framed message to `out`. A body past its type's bound is refused (nothing
    /// is appended): the peer would reject it anyway.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (kind, body) = self.kind_and_body();
        let len = 1 + body.len();
        let max = max_len(kind).unwrap_or(0);
        if len > max {
            return Err(FrameError::ChunkTooLarge(body.len()));
        }
        let len32 = len as u32;
        let start = out.len();
        out.extend_from_slice(&len32.to_le_bytes());
        out.push(length_check(len32));
        out.push(kind);
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` if it is not complete yet, else the
/// message and the bytes it took. Never panics, and rejects a bad length or type as soon as the
/// 6 head bytes are there.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    if bytes.len() < HEAD {
        return Ok(None);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if bytes[4] != length_check(len) {
        return Err(FrameError::LengthCheck);
    }
    let kind = bytes[5];
    let max = max_len(kind).ok_or(FrameError::UnknownType(kind))?;
    if len == 0 || len as usize > max {
        return Err(FrameError::BadLength { kind, len, max });
    }
    let total = 5 + len as usize + TAIL;
    if bytes.len() < total {
        return Ok(None);
    }
    let (unit, rest) = bytes.split_at(5 + len as usize);
    let stored = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let computed = crc32c::crc32c(unit);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let body = &unit[HEAD..];
    let position = || -> Result<u64, FrameError> {
        let array: [u8; 8] = body.try_into().map_err(|_| FrameError::BadBody { kind, len: body.len() })?;
        Ok(u64::from_le_bytes(array))
    };
    let message = match kind {
        T_HELLO => Message::Hello(body.to_vec()),
        T_STATE_CHUNK => Message::StateChunk(body.to_vec()),
        T_STATE_END => Message::StateEnd { total: position()? },
        T_RECORDS => Message::Records(body.to_vec()),
        T_HEARTBEAT => Message::Heartbeat { stamp: position()? },
        T_RELEASED => Message::Released { position: position()? },
        T_ACK => Message::Ack { position: position()? },
        T_VERIFIED => Message::Verified { position: position()? },
        T_RESYNC => match body {
            [reason] => Message::ResyncRequest { reason: *reason },
            _ => return Err(FrameError::BadBody { kind, len: body.len() }),
        },
        T_OUTPUT_DIGEST => {
            let (sequence, digest) = body.split_at_checked(8).ok_or(FrameError::BadBody { kind, len: body.len() })?;
            let sequence: [u8; 8] = sequence.try_into().map_err(|_| FrameError::BadBody { kind, len: body.len() })?;
            let digest: [u8; 32] = digest.try_into().map_err(|_| FrameError::BadBody { kind, len: body.len() })?;
            Message::OutputDigest { sequence: u64::from_le_bytes(sequence), digest }
        }
        T_RESYNC_BEGIN => {
            let pair: [u8; 16] = body.try_into().map_err(|_| FrameError::BadBody { kind, len: body.len() })?;
            let (exits, outputs) = pair.split_at(8);
            let word = |bytes: &[u8]| bytes.try_into().map(u64::from_le_bytes);
            Message::ResyncBegin {
                exits: word(exits).map_err(|_| FrameError::BadBody { kind, len: body.len() })?,
                outputs: word(outputs).map_err(|_| FrameError::BadBody { kind, len: body.len() })?,
            }
        }
        T_RESYNC_DONE => Message::ResyncDone,
        T_RESYNC_HELD => Message::ResyncHeld(body.to_vec()),
        T_CLOSE => Message::Close,
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Some((message, total)))
}

/// Why no message came.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// Nothing complete arrived before the deadline (the connection may still be fine).
    #[error("no message before the deadline")]
    Idle,
    /// The peer closed the connection (`partial` bytes of an incomplete frame were dropped).
    #[error("the connection was closed by the peer ({partial} bytes of an incomplete frame dropped)")]
    Eof { partial: usize },
    #[error(transparent)]
    Malformed(#[from] Malformed),
    // Not a `source`: the message says the cause, and a chain printed whole would say it twice.
    #[error("the connection failed: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for RecvError {
    fn from(error: std::io::Error) -> Self {
        RecvError::Io(error)
    }
}

/// Reads whole frames from a stream whose reads time out (the socket's read timeout sets how
/// often [`FrameReader::next`] can notice a deadline): bytes of a partial frame survive a
/// timeout, and the buffer never holds more than one frame's bound plus one read.
pub struct FrameReader<R: Read> {
    input: R,
    buffer: Vec<u8>,
    /// Bytes at the front of `buffer` already taken by whole frames.
    consumed: usize,
    /// Stream offset of `buffer[consumed]`.
    offset: u64,
    closed: bool,
}

const READ_SIZE: usize = 64 * 1024;

impl<R: Read> FrameReader<R> {
    pub fn new(input: R) -> Self {
        Self { input, buffer: Vec::with_capacity(READ_SIZE), consumed: 0, offset: 0, closed: false }
    }

    /// The stream underneath (the handshake reads its fixed preamble from it before any frame).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.input
    }

    /// Bytes of the stream consumed by whole frames so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next message, waiting until `deadline` (roughly: one read timeout more). The stream
    /// is always read at least once before `Idle` is answered: a caller that was busy elsewhere
    /// past its deadline (a receiver waiting for room in a full feed) first takes in what
    /// arrived meanwhile, rather than calling a peer silent whose words sit unread.
    pub fn next(&mut self, deadline: Instant) -> Result<Message, RecvError> {
        loop {
            match decode_frame(&self.buffer[self.consumed..]) {
                Ok(Some((message, used))) => {
                    self.consumed += used;
                    self.offset += used as u64;
                    return Ok(message);
                }
                Ok(None) => {}
                Err(reason) => return Err(Malformed { offset: self.offset, reason }.into()),
            }
            if self.closed {
                return Err(RecvError::Eof { partial: self.buffer.len() - self.consumed });
            }
            // Only the incomplete frame at the tail moves, once per read.
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
            let start = self.buffer.len();
            self.buffer.resize(start + READ_SIZE, 0);
            let got = self.input.read(&mut self.buffer[start..]);
            self.buffer.truncate(start + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => self.closed = true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Err(RecvError::Idle);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Like [`Self::next`] with a relative wait.
    pub fn next_within(&mut self, wait: Duration) -> Result<Message, RecvError> {
        self.next(Instant::now() + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = Message> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            bytes().prop_map(Message::Hello),
            bytes().prop_map(Message::StateChunk),
            any::<u64>().prop_map(|total| Message::StateEnd { total }),
            bytes().prop_map(Message::Records),
            any::<u64>().prop_map(|stamp| Message::Heartbeat { stamp }),
            any::<u64>().prop_map(|position| Message::Released { position }),
            any::<u64>().prop_map(|position| Message::Ack { position }),
            any::<u64>().prop_map(|position| Message::Verified { position }),
            any::<u8>().prop_map(|reason| Message::ResyncRequest { reason }),
            (any::<u64>(), any::<[u8; 32]>()).prop_map(|(sequence, digest)| Message::OutputDigest { sequence, digest }),
            (any::<u64>(), any::<u64>()).prop_map(|(exits, outputs)| Message::ResyncBegin { exits, outputs }),
            Just(Message::ResyncDone),
            bytes().prop_map(Message::ResyncHeld),
            Just(Message::Close),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_a_split_stream(
            messages in proptest::collection::vec(message(), 1..8),
            split in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for m in &messages {
                m.encode_into(&mut wire).unwrap();
            }
            // A reader that hands out at most `split` bytes per read, like a slow socket.
            struct Trickle(Vec<u8>, usize, usize);
            impl Read for Trickle {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = self.2.min(buf.len()).min(self.0.len() - self.1);
                    buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                    self.1 += n;
                    Ok(n)
                }
            }
            let mut reader = FrameReader::new(Trickle(wire.clone(), 0, split));
            let far = Instant::now() + Duration::from_secs(60);
            for m in &messages {
                prop_assert_eq!(&reader.next(far).unwrap(), m);
            }
            let end = reader.next(far);
            prop_assert!(matches!(end, Err(RecvError::Eof { partial: 0 })), "{:?}", end);
            prop_assert_eq!(reader.offset(), wire.len() as u64);
        }

        #[test]
        fn the_decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut at = 0;
            while let Ok(Some((_, used))) = decode_frame(&bytes[at..]) {
                prop_assert!(used > 0);
                at += used;
            }
        }

        #[test]
        fn every_prefix_of_a_frame_is_incomplete_and_garbage_after_a_head_is_safe(
            m in message(),
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let wire = m.encode().unwrap();
            for cut in 0..wire.len() {
                prop_assert_eq!(decode_frame(&wire[..cut]), Ok(None));
            }
            // A valid head followed by anything: an error, incomplete, or this very frame.
            let mut mangled = wire[..HEAD.min(wire.len())].to_vec();
            mangled.extend_from_slice(&tail);
            let _ = decode_frame(&mangled);
        }

        #[test]
        fn any_flipped_byte_is_an_error_at_that_frame(m in message(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut wire = Message::Heartbeat { stamp: 7 }.encode().unwrap();
            let first = wire.len();
            m.encode_into(&mut wire).unwrap();
            let at = first + flip.index(wire.len() - first);
            wire[at] ^= 1 << bit;
            let mut reader = FrameReader::new(&wire[..]);
            let far = Instant::now() + Duration::from_secs(60);
            prop_assert_eq!(reader.next(far).unwrap(), Message::Heartbeat { stamp: 7 });
            match reader.next(far) {
                Err(RecvError::Malformed(Malformed { offset, .. })) => prop_assert_eq!(offset, first as u64),
                // A damaged length that claims more bytes than there are reads as a cut frame.
                Err(RecvError::Eof { partial }) => prop_assert_eq!(partial, wire.len() - first),
                other => prop_assert!(false, "flip at {} accepted: {:?}", at, other),
            }
        }
    }

    #[test]
    fn a_huge_length_is_refused_from_the_head_alone() {
        let len = (MAX_CHUNK as u32) + 2;
        let mut head = len.to_le_bytes().to_vec();
        head.push(length_check(len));
        head.push(T_RECORDS);
        assert_eq!(decode_frame(&head), Err(FrameError::BadLength { kind: T_RECORDS, len, max: MAX_CHUNK + 1 }));
        assert!(Message::Records(vec![0; MAX_CHUNK + 1]).encode().is_err());
    }
}
