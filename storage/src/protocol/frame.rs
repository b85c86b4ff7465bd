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
        return Err(GfsError::Frame(format!("bad frame length {len}")));
    }
    Ok((len, crc))
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

/// Reads one frame into `buf` (resized to the payload). Returns `Ok(None)` on a clean end of
/// stream before any header byte.
pub fn read<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<Kind>> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(GfsError::Frame("truncated header".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GfsError::io("receiving frame", e)),
        }
    }
    let (len, crc) = parse_header(&h)?;
    let mut kind = [0u8; 1];
    read_exact(r, &mut kind)?;
    buf.clear();
    buf.resize(len - 1, 0);
    read_exact(r, buf)?;
    let kind = Kind::from_byte(kind[0])?;
    if checksum(kind, buf) != crc {
        return Err(GfsError::Frame("checksum mismatch".into()));
    }
    Ok(Some(kind))
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
}
