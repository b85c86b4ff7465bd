//! Fixed-width little-endian field codec shared by the header and the records.
//!
//! Hand-written rather than serde so that the bytes are exactly the documented layout, encoding a
//! record never allocates, and decoding can check every length against what is left.

use super::Corruption;
use devices::{ClockId, InputKind, Landmark, WorldEvent};

/// Appends fields to a byte buffer.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, v: &[u8]);
    fn put_landmark(&mut self, at: Landmark);
    fn put_clock(&mut self, clock: ClockId);
    fn put_world_event(&mut self, event: &WorldEvent);
    fn put_input_kind(&mut self, kind: InputKind);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
    fn put_landmark(&mut self, at: Landmark) {
        let (tag, n) = match at {
            Landmark::Exit(n) => (LANDMARK_EXIT, n),
            Landmark::Preempt(n) => (LANDMARK_PREEMPT, n),
        };
        self.put_u8(tag);
        self.put_u64(n);
    }
    fn put_clock(&mut self, clock: ClockId) {
        self.put_u8(match clock {
            ClockId::Monotonic => 0,
            ClockId::Wall => 1,
        });
    }
    fn put_world_event(&mut self, event: &WorldEvent) {
        // Exhaustive on purpose: a new WorldEvent variant must get a tag (and payload) here.
        match event {
            WorldEvent::PitExpired => self.put_u8(0),
            WorldEvent::NetFrame { device, frame } => {
                self.put_u8(1);
                self.put_u8(*device);
                // Record length is limited to MAX_RECORD_LEN, far below u32::MAX; the writer
                // rejects a record that large, so saturating here cannot produce a bad log.
                self.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
                self.put_bytes(frame);
            }
            WorldEvent::DiskDone { device, id, status, data } => {
                self.put_u8(2);
                self.put_u8(*device);
                self.put_u64(*id);
                self.put_u8(*status);
                // Bounded by MAX_RECORD_LEN, as for frames.
                self.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
                self.put_bytes(data);
            }
        }
    }
    fn put_input_kind(&mut self, kind: InputKind) {
        match kind {
            InputKind::DiskRead { device } => {
                self.put_u8(0);
                self.put_u8(device);
            }
        }
    }
}

const LANDMARK_EXIT: u8 = 0;
const LANDMARK_PREEMPT: u8 = 1;

/// Reads fields from a body, refusing to read past its end. The one byte cursor of ftlog: the
/// log's records and header, and the checkpoint layout, are all read through it.
pub(crate) struct Get<'a> {
    rest: &'a [u8],
    /// Length of the whole body, so that [`Get::offset`] can name where a field failed.
    total: usize,
}

impl<'a> Get<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes, total: bytes.len() }
    }

    /// Bytes read so far.
    pub(crate) fn offset(&self) -> usize {
        self.total - self.rest.len()
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Corruption> {
        if n > self.rest.len() {
            return Err(Corruption::Short(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Corruption> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Corruption> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Corruption> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Corruption> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A u32-length-prefixed UTF-8 string; the length is checked against the remaining bytes
    /// before anything is allocated.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, Corruption> {
        let len = self.u32(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| Corruption::BadUtf8(field))
    }

    pub(crate) fn landmark(&mut self) -> Result<Landmark, Corruption> {
        let tag = self.u8("landmark")?;
        let n = self.u64("landmark")?;
        match tag {
            LANDMARK_EXIT => Ok(Landmark::Exit(n)),
            LANDMARK_PREEMPT => Ok(Landmark::Preempt(n)),
            other => Err(Corruption::BadField { field: "landmark", value: other.into() }),
        }
    }

    pub(crate) fn clock(&mut self) -> Result<ClockId, Corruption> {
        match self.u8("clock")? {
            0 => Ok(ClockId::Monotonic),
            1 => Ok(ClockId::Wall),
            other => Err(Corruption::BadField { field: "clock", value: other.into() }),
        }
    }

    pub(crate) fn world_event(&mut self) -> Result<WorldEvent, Corruption> {
        match self.u8("world event")? {
            0 => Ok(WorldEvent::PitExpired),
            1 => {
                let device = self.u8("frame device")?;
                let len = self.u32("frame length")? as usize;
                Ok(WorldEvent::NetFrame { device, frame: self.take(len, "frame")?.to_vec() })
            }
            2 => {
                let device = self.u8("disk device")?;
                let id = self.u64("disk request id")?;
                let status = self.u8("disk status")?;
                let len = self.u32("disk data length")? as usize;
                Ok(WorldEvent::DiskDone { device, id, status, data: self.take(len, "disk data")?.to_vec() })
            }
            other => Err(Corruption::BadField { field: "world event", value: other.into() }),
        }
    }

    pub(crate) fn input_kind(&mut self) -> Result<InputKind, Corruption> {
        match self.u8("input kind")? {
            0 => Ok(InputKind::DiskRead { device: self.u8("input device")? }),
            other => Err(Corruption::BadField { field: "input kind", value: other.into() }),
        }
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails if bytes remain: fixed-layout bodies must be consumed exactly.
    pub(crate) fn finish(self) -> Result<(), Corruption> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(Corruption::TrailingBytes(n)),
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns how many bytes were read, so that the
/// caller can tell a clean end (0) from a truncated unit.
pub(crate) fn read_full<R: std::io::Read>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Appends exactly `n` bytes from `reader` to `out`, growing `out` only as data arrives so that a
/// damaged length cannot allocate more than the stream holds. Returns whether all `n` arrived.
pub(crate) fn read_exact_into<R: std::io::Read>(reader: &mut R, n: usize, out: &mut Vec<u8>) -> std::io::Result<bool> {
    use std::io::Read;
    let start = out.len();
    out.reserve(n.min(64 * 1024));
    let got = reader.take(n as u64).read_to_end(out)?;
    debug_assert_eq!(out.len(), start + got);
    Ok(got == n)
}
