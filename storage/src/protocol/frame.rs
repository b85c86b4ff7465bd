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

/// Reads one frame into `buf` (replaced by the payload). The length is checked before any
/// memory is committed, and `buf` grows only with the bytes that actually arrive, so a peer
/// that announces a large frame and goes quiet costs nothing but its reservation.
pub fn read_frame<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Arrival> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(Arrival::Closed),
            Ok(0) => return Err(GfsError::Frame("truncated header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if got == 0 && is_timeout(&e) => return Ok(Arrival::Quiet),
            Err(e) if got == 0 && is_reset(&e) => return Ok(Arrival::Closed),
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
    Ok(Arrival::Frame(kind))
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
