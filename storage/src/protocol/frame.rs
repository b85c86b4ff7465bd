//! Frame codec. A frame is `len: u32 LE | crc32c(body): u32 LE | body`, where `body` is one kind
//! byte followed by the payload. Truncated frames, oversize lengths, unknown kinds and flipped
//! bytes are all reported as errors, never misread.

use crate::error::{GfsError, Result};
use std::io::{self, Read, Write};

/// Header size: length and checksum.
pub const HEADER: usize = 8;
/// Largest body accepted (a data frame is far smaller; this bounds memory per request).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A postcard-encoded message.
    Msg = 0,
    /// Raw bytes of a data stream.
    Data = 1,
}

impl Kind {
    fn from_byte(b: u8) -> Result<Kind> {
        match b {
            0 => Ok(Kind::Msg),
            1 => Ok(Kind::Data),
            other => Err(GfsError::Frame(format!("unknown frame kind {other}"))),
        }
    }
}

fn checksum(kind: Kind, payload: &[u8]) -> u32 {
    let c = crc32c::crc32c(&[kind as u8]);
    crc32c::crc32c_append(c, payload)
}

fn header(kind: Kind, payload: &[u8]) -> Result<[u8; HEADER]> {
    let body_len = payload.len() + 1;
    if body_len > MAX_BODY {
        return Err(GfsError::Frame(format!("frame body of {body_len} bytes is too large")));
    }
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[4..].copy_from_slice(&checksum(kind, payload).to_le_bytes());
    Ok(h)
}

/// Appends one encoded frame to `out`.
pub fn encode(kind: Kind, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&header(kind, payload)?);
    out.push(kind as u8);
    out.extend_from_slice(payload);
    Ok(())
}

/// Decodes one frame from the front of `buf`; returns the kind, payload and bytes consumed.
pub fn decode(buf: &[u8]) -> Result<(Kind, &[u8], usize)> {
    if buf.len() < HEADER {
        return Err(GfsError::Frame("truncated header".into()));
    }
    let (len, crc) = parse_header(buf)?;
    let end = HEADER + len;
    if buf.len() < end {
        return Err(GfsError::Frame(format!("truncated body: have {} of {len} bytes", buf.len() - HEADER)));
    }
    let body = &buf[HEADER..end];
    let kind = verify(body, crc)?;
    Ok((kind, &body[1..], end))
}

fn parse_header(h: &[u8]) -> Result<(usize, u32)> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_BODY {
        return Err(GfsError::Frame(describe_bad_length(len, &h[..4])));
    }
    Ok((len, crc))
}

/// A peer that is not gfs usually speaks text (HTTP, SMTP, a shell): name what it sent rather
/// than only the number those bytes make.
fn describe_bad_length(len: usize, first: &[u8]) -> String {
    if first == &seal::handshake::SEAL_MAGIC[..4] {
        return "the peer opened a sealed channel (it holds the cluster key) and this side runs --insecure".into();
    }
    if first.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        let text = String::from_utf8_lossy(first);
        format!("bad frame length {len}: the peer sent the text {text:?}, it does not speak the gfs protocol")
    } else {
        format!("bad frame length {len}")
    }
}

fn verify(body: &[u8], crc: u32) -> Result<Kind> {
    let kind = Kind::from_byte(body[0])?;
    if checksum(kind, &body[1..]) != crc {
        return Err(GfsError::Frame("checksum mismatch".into()));
    }
    Ok(kind)
}

/// Writes one frame (header and payload) without flushing.
pub fn write<W: Write>(w: &mut W, kind: Kind, payload: &[u8]) -> Result<()> {
    let h = header(kind, payload)?;
    write_with_header(w, h, kind, payload)
}

/// Writes a data frame whose checksum is already known: `checksum` is what [`read_data_into`]
/// returned for this very payload (verified on arrival), or [`Checksum::of_whole_blocks`] of
/// its blocks' verified checksums. A chunkserver forwarding pushed data down the chain, or
/// sending blocks it has just verified, so sends the bytes without checksumming them again.
pub fn write_verified_data<W: Write>(w: &mut W, payload: &[u8], checksum: Checksum) -> Result<()> {
    let body_len = payload.len() + 1;
    if body_len > MAX_BODY {
        return Err(GfsError::Frame(format!("frame body of {body_len} bytes is too large")));
    }
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[4..].copy_from_slice(&checksum.0.to_le_bytes());
    write_with_header(w, h, Kind::Data, payload)
}

fn write_with_header<W: Write>(w: &mut W, h: [u8; HEADER], kind: Kind, payload: &[u8]) -> Result<()> {
    let io = |e| GfsError::io("sending frame", e);
    w.write_all(&h).map_err(io)?;
    w.write_all(&[kind as u8]).map_err(io)?;
    w.write_all(payload).map_err(io)
}

/// What [`read_frame`] found on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A whole, verified frame.
    Frame(Kind),
    /// The peer closed (or reset) the connection before sending any byte of a frame.
    Closed,
    /// The read timed out before any byte of a frame arrived: the peer is idle, not broken.
    Quiet,
}

/// Bodies at most this large are read without touching the shared budget: every data frame
/// and nearly every message fits.
pub const SMALL_BODY: usize = crate::DATA_FRAME + 1024;
/// Most bytes of larger frames being received at once, across every connection of the
/// process. A frame that would go past it is refused rather than waited for.
pub const LARGE_FRAME_BUDGET: usize = 64 * 1024 * 1024;

static LARGE_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes of [`LARGE_FRAME_BUDGET`] held by one frame while it arrives; given back on drop.
struct Reservation(usize);

impl Reservation {
    fn take(len: usize) -> Result<Reservation> {
        use std::sync::atomic::Ordering;
        let mut cur = LARGE_IN_FLIGHT.load(Ordering::Relaxed);
        loop {
            if cur + len > LARGE_FRAME_BUDGET {
                return Err(GfsError::Frame(format!(
                    "frame of {len} bytes refused: {cur} bytes of large frames already arriving (budget {LARGE_FRAME_BUDGET})"
                )));
            }
            match LARGE_IN_FLIGHT.compare_exchange_weak(cur, cur + len, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Reservation(len)),
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        LARGE_IN_FLIGHT.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Bytes of large frames being received right now in this process (for tests and status).
pub fn large_frames_in_flight() -> usize {
    LARGE_IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
}

/// The front of a frame: its kind, payload length and checksum, read ahead of the payload.
struct Head {
    kind: Kind,
    body: usize,
    crc: u32,
}

/// What begins on the stream: a frame, or nothing yet.
enum Start {
    Head(Head),
    /// As in [`Arrival`].
    Closed,
    Quiet,
}

/// Reads a frame's header and kind byte (unless the stream closed or went quiet before its
/// first byte).
fn read_head<R: Read>(r: &mut R) -> Result<Start> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(Start::Closed),
            Ok(0) => return Err(GfsError::Frame("truncated header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if got == 0 && is_timeout(&e) => return Ok(Start::Quiet),
            Err(e) if got == 0 && is_reset(&e) => return Ok(Start::Closed),
            Err(e) => return Err(GfsError::io("receiving frame", e)),
        }
    }
    let (len, crc) = parse_header(&h)?;
    let mut kind = [0u8; 1];
    read_exact(r, &mut kind)?;
    let kind = Kind::from_byte(kind[0])?;
    let body = len - 1;
    if kind == Kind::Data && body > crate::DATA_FRAME {
        return Err(GfsError::Frame(format!("data frame of {body} bytes exceeds {}", crate::DATA_FRAME)));
    }
    Ok(Start::Head(Head { kind, body, crc }))
}

/// Reads one frame into `buf` (replaced by the payload). The length is checked before any
/// memory is committed, and `buf` grows only with the bytes that actually arrive, so a peer
/// that announces a large frame and goes quiet costs nothing but its reservation.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Arrival> {
    let Head { kind, body, crc } = match read_head(r)? {
        Start::Head(head) => head,
        Start::Closed => return Ok(Arrival::Closed),
        Start::Quiet => return Ok(Arrival::Quiet),
    };
    read_body(r, kind, body, crc, buf)?;
    Ok(Arrival::Frame(kind))
}

/// Reads a payload of `body` bytes into `buf` and verifies it.
fn read_body<R: Read>(r: &mut R, kind: Kind, body: usize, crc: u32, buf: &mut Vec<u8>) -> Result<()> {
    let _reservation = if body > SMALL_BODY { Some(Reservation::take(body)?) } else { None };
    buf.clear();
    let mut limited = r.take(body as u64);
    let read = loop {
        match limited.read_to_end(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match read {
        Ok(_) if buf.len() == body => {}
        Ok(_) => return Err(GfsError::Frame(format!("truncated body: have {} of {body} bytes", buf.len()))),
        Err(e) => return Err(GfsError::io("receiving frame body", e)),
    }
    if checksum(kind, buf) != crc {
        return Err(GfsError::Frame("checksum mismatch".into()));
    }
    Ok(())
}

/// The checksum of a data frame's payload, as verified on arrival (see
/// [`write_verified_data`]), or derived from verified block checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u32);

impl Checksum {
    /// The checksum of a data frame whose payload is exactly the [`crate::BLOCK_SIZE`] blocks
    /// whose CRC32Cs are `block_crcs`, in order, computed from those alone: a chunkserver that
    /// has just verified the blocks it sends need not run CRC32C over the bytes once more
    /// (on this machine's CPU, CRC32C costs about as much as a copy). Each step is
    /// `crc(A ++ B) = shift(crc(A)) ^ crc(B)`, `shift` being CRC32C's linear map over one
    /// block of bytes, a 32 x 32 bit matrix built once.
    pub fn of_whole_blocks(block_crcs: &[u32]) -> Checksum {
        let shift = block_shift();
        let mut acc = crc32c::crc32c(&[Kind::Data as u8]);
        for &b in block_crcs {
            acc = apply_shift(shift, acc) ^ b;
        }
        Checksum(acc)
    }
}

/// Columns of CRC32C's shift over one block: column `i` is where bit `i` of a CRC goes.
fn block_shift() -> &'static [u32; 32] {
    static SHIFT: std::sync::OnceLock<[u32; 32]> = std::sync::OnceLock::new();
    // crc32c_combine(x, 0, len) is the shift of x over len bytes: linear in x, so the images
    // of the 32 unit vectors describe it.
    SHIFT.get_or_init(|| std::array::from_fn(|i| crc32c::crc32c_combine(1 << i, 0, crate::BLOCK_SIZE as usize)))
}

fn apply_shift(columns: &[u32; 32], crc: u32) -> u32 {
    columns.iter().enumerate().filter(|(i, _)| crc >> i & 1 == 1).fold(0, |acc, (_, c)| acc ^ c)
}

/// What [`read_data_into`] found on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// A data frame of this many bytes, verified, at the front of the caller's buffer.
    Data(usize, Checksum),
    /// A message frame, verified, in the message buffer.
    Msg,
    /// A data frame of this many bytes, more than the caller's buffer holds: its payload was
    /// not read, so the stream is no longer at a frame boundary.
    TooLong(usize),
    /// As in [`Arrival`].
    Closed,
    Quiet,
}

/// Reads one frame; a data frame's payload lands straight in `dest` (which must be large
/// enough), a message's in `msg` (as [`read_frame`] would). Either is verified before this
/// returns. Receiving pushed or read data into its final place, rather than into a frame
/// buffer first and copying it from there, saves a copy of every byte.
pub fn read_data_into<R: Read>(r: &mut R, dest: &mut [u8], msg: &mut Vec<u8>) -> Result<Landed> {
    let Head { kind, body, crc } = match read_head(r)? {
        Start::Head(head) => head,
        Start::Closed => return Ok(Landed::Closed),
        Start::Quiet => return Ok(Landed::Quiet),
    };
    if kind == Kind::Msg {
        read_body(r, kind, body, crc, msg)?;
        return Ok(Landed::Msg);
    }
    if body > dest.len() {
        return Ok(Landed::TooLong(body));
    }
    let payload = &mut dest[..body];
    read_exact(r, payload)?;
    if checksum(kind, payload) != crc {
        return Err(GfsError::Frame("checksum mismatch".into()));
    }
    Ok(Landed::Data(body, Checksum(crc)))
}

/// Reads one frame into `buf` (resized to the payload). Returns `Ok(None)` on a clean end of
/// stream before any header byte; a timeout is an error.
pub fn read<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Kind>> {
    match read_frame(r, buf)? {
        Arrival::Frame(k) => Ok(Some(k)),
        Arrival::Closed => Ok(None),
        Arrival::Quiet => Err(GfsError::io("receiving frame", io::ErrorKind::TimedOut.into())),
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            GfsError::Frame("truncated body".into())
        } else {
            GfsError::io("receiving frame body", e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..4096), data in any::<bool>()) {
            let kind = if data { Kind::Data } else { Kind::Msg };
            let mut out = Vec::new();
            encode(kind, &payload, &mut out).unwrap();
            let (k, p, used) = decode(&out).unwrap();
            prop_assert_eq!(k, kind);
            prop_assert_eq!(p, &payload[..]);
            prop_assert_eq!(used, out.len());
            let mut buf = Vec::new();
            let k2 = read(&mut &out[..], &mut buf).unwrap();
            prop_assert_eq!(k2, Some(kind));
            prop_assert_eq!(buf, payload);
        }

        #[test]
        fn truncation_detected(payload in proptest::collection::vec(any::<u8>(), 0..1024), cut in any::<proptest::sample::Index>()) {
            let mut out = Vec::new();
            encode(Kind::Msg, &payload, &mut out).unwrap();
            let keep = cut.index(out.len()); // strictly shorter than the frame
            prop_assert!(decode(&out[..keep]).is_err());
            let mut buf = Vec::new();
            let r = read(&mut &out[..keep], &mut buf);
            if keep == 0 { prop_assert!(matches!(r, Ok(None))); } else { prop_assert!(r.is_err()); }
        }

        #[test]
        fn flipped_byte_detected(payload in proptest::collection::vec(any::<u8>(), 0..1024), at in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let mut out = Vec::new();
            encode(Kind::Data, &payload, &mut out).unwrap();
            let i = at.index(out.len());
            out[i] ^= 1 << bit;
            // A flip in the length may still describe a valid frame only if the checksum matches,
            // which CRC32C rules out for single-bit errors.
            prop_assert!(decode(&out).is_err());
        }
    }

    proptest! {
        /// Frames of any size read through a small buffered reader (as a connection reads
        /// them) land whole and in order in the caller's buffer, messages in their own.
        #[test]
        fn data_lands_in_the_callers_buffer(
            sizes in proptest::collection::vec(0usize..=crate::DATA_FRAME, 1..6),
            msg_at in any::<proptest::sample::Index>(),
            seed in any::<u8>(),
        ) {
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8)).collect())
                .collect();
            let msg_at = msg_at.index(payloads.len() + 1);
            let mut wire = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                if i == msg_at {
                    encode(Kind::Msg, b"a message", &mut wire).unwrap();
                }
                encode(Kind::Data, p, &mut wire).unwrap();
            }
            if msg_at == payloads.len() {
                encode(Kind::Msg, b"a message", &mut wire).unwrap();
            }
            let total: usize = sizes.iter().sum();
            let mut r = std::io::BufReader::with_capacity(8 * 1024, &wire[..]);
            let mut dest = vec![0xAAu8; total + 5];
            let mut msg = Vec::new();
            let mut got = 0;
            let mut frames = 0;
            let mut msgs = 0;
            loop {
                match read_data_into(&mut r, &mut dest[got..], &mut msg).unwrap() {
                    Landed::Data(n, sum) => {
                        prop_assert_eq!(n, payloads[frames].len());
                        prop_assert_eq!(sum, Checksum(checksum(Kind::Data, &payloads[frames])));
                        got += n;
                        frames += 1;
                    }
                    Landed::Msg => {
                        prop_assert_eq!(&msg[..], b"a message");
                        prop_assert_eq!(frames, msg_at);
                        msgs += 1;
                    }
                    Landed::Closed => break,
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            prop_assert_eq!((frames, msgs), (payloads.len(), 1));
            prop_assert_eq!(&dest[..total], &payloads.concat()[..]);
            prop_assert_eq!(&dest[total..], &[0xAAu8; 5][..], "bytes past the data were touched");
        }

        /// A data frame forwarded under the checksum it arrived with is the frame itself.
        #[test]
        fn forwarding_with_the_verified_checksum_resends_the_same_frame(
            payload in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut wire = Vec::new();
            encode(Kind::Data, &payload, &mut wire).unwrap();
            let mut dest = vec![0u8; payload.len()];
            let Landed::Data(n, sum) = read_data_into(&mut &wire[..], &mut dest, &mut Vec::new()).unwrap() else {
                panic!("no data frame");
            };
            let mut forwarded = Vec::new();
            write_verified_data(&mut forwarded, &dest[..n], sum).unwrap();
            prop_assert_eq!(forwarded, wire);
        }

        #[test]
        fn flipped_byte_in_data_received_in_place_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 1..2048),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut wire = Vec::new();
            encode(Kind::Data, &payload, &mut wire).unwrap();
            let i = at.index(wire.len());
            wire[i] ^= 1 << bit;
            let mut dest = vec![0u8; 4096];
            // A flipped kind byte may turn the frame into a message: that must not verify either.
            // A flipped length may announce more than `dest` holds: refused unread, not accepted.
            let r = read_data_into(&mut &wire[..], &mut dest, &mut Vec::new());
            prop_assert!(matches!(r, Err(_) | Ok(Landed::TooLong(_))), "accepted: {:?}", r);
        }
    }

    proptest! {
        #[test]
        fn checksum_of_whole_blocks_is_the_frame_checksum(blocks in 0usize..=4, seed in any::<u64>()) {
            let bs = crate::BLOCK_SIZE as usize;
            let mut x = seed | 1;
            let payload: Vec<u8> = (0..blocks * bs)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let crcs: Vec<u32> = payload.chunks(bs).map(crc32c::crc32c).collect();
            prop_assert_eq!(Checksum::of_whole_blocks(&crcs), Checksum(checksum(Kind::Data, &payload)));
        }
    }

    #[test]
    fn data_frame_longer_than_the_destination_is_not_read() {
        let mut wire = Vec::new();
        encode(Kind::Data, &[5u8; 100], &mut wire).unwrap();
        let mut dest = [0u8; 99];
        let mut r = &wire[..];
        assert_eq!(read_data_into(&mut r, &mut dest, &mut Vec::new()).unwrap(), Landed::TooLong(100));
        assert_eq!(r.len(), 100, "the payload was consumed");
        assert_eq!(dest, [0u8; 99], "the payload was written past the caller's buffer length check");
    }

    #[test]
    fn closed_and_quiet_before_a_frame_when_receiving_in_place() {
        let mut dest = [0u8; 16];
        assert_eq!(read_data_into(&mut &[][..], &mut dest, &mut Vec::new()).unwrap(), Landed::Closed);
        let mut quiet = Stalls { bytes: vec![], at: 0 };
        assert_eq!(read_data_into(&mut quiet, &mut dest, &mut Vec::new()).unwrap(), Landed::Quiet);
    }

    #[test]
    fn oversize_length_rejected() {
        let mut h = vec![0u8; HEADER];
        h[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&h).is_err());
        let mut buf = Vec::new();
        assert!(read(&mut &h[..], &mut buf).is_err());
    }

    #[test]
    fn text_from_a_stranger_is_named() {
        let mut buf = Vec::new();
        let e = read(&mut &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], &mut buf).unwrap_err().to_string();
        assert!(e.contains("bad frame length 1347703880"), "{e}");
        assert!(e.contains("\"HTTP\"") && e.contains("does not speak the gfs protocol"), "{e}");
        let e = read(&mut &[0xff; 16][..], &mut buf).unwrap_err().to_string();
        assert!(!e.contains("text"), "{e}");
    }

    /// A reader that hands out `have` bytes and then reports a timeout, like a socket whose
    /// peer sent a header and went quiet.
    struct Stalls {
        bytes: Vec<u8>,
        at: usize,
    }

    impl Read for Stalls {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.at == self.bytes.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = out.len().min(self.bytes.len() - self.at).min(4096);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn memory_grows_with_arrived_bytes_not_the_announced_length() {
        let payload = vec![7u8; MAX_BODY - 1];
        let mut framed = Vec::new();
        encode(Kind::Msg, &payload, &mut framed).unwrap();
        framed.truncate(HEADER + 1 + 10_000);
        let mut buf = Vec::new();
        assert!(read_frame(&mut Stalls { bytes: framed, at: 0 }, &mut buf).is_err());
        assert!(buf.capacity() < 64 * 1024, "{} bytes committed for 10000 that arrived", buf.capacity());
        assert_eq!(large_frames_in_flight(), 0, "the reservation outlived the frame");

        // The budget is reserved, not only checked: holding it all refuses the next frame.
        let hold: Vec<Reservation> =
            (0..LARGE_FRAME_BUDGET / MAX_BODY).map(|_| Reservation::take(MAX_BODY).unwrap()).collect();
        assert!(Reservation::take(SMALL_BODY + 1).is_err(), "the budget was only checked, not reserved");
        drop(hold);
        assert!(Reservation::take(MAX_BODY).is_ok());
    }

    #[test]
    fn quiet_and_closed_before_a_frame_are_not_errors() {
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut Stalls { bytes: vec![], at: 0 }, &mut buf).unwrap(), Arrival::Quiet);
        assert_eq!(read_frame(&mut &[][..], &mut buf).unwrap(), Arrival::Closed);
        assert!(read_frame(&mut Stalls { bytes: vec![5, 0], at: 0 }, &mut buf).is_err());
    }

    #[test]
    fn oversize_data_frame_rejected_before_reading_it() {
        let mut h = Vec::new();
        h.extend_from_slice(&((crate::DATA_FRAME + 2) as u32).to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        h.push(Kind::Data as u8);
        let e = read(&mut &h[..], &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
    }
}
