//! Replaying the log at boot (pure over a [`Sectors`] source; host-tested in
//! guest-images/tests): see `disklog` for the format and the rules.

use super::disklog::{check_header, decode, Decoded, HeaderState, Record, MAX_RECORD_SECTORS, SECTOR};
use alloc::vec;
use alloc::vec::Vec;

/// Sectors are read this many at a time.
pub const CHUNK_SECTORS: usize = 128;

/// A disk, as the replay sees it.
pub trait Sectors {
    /// Capacity in sectors.
    fn capacity(&self) -> u64;
    /// Reads `buf.len() / 512` sectors from `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()>;
}

/// What the replay found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Whether sector 0 was blank (the caller writes a header).
    pub blank: bool,
    /// Records applied.
    pub records: u64,
    /// Where the next record goes, and its sequence number.
    pub next_sector: u64,
    pub next_seq: u64,
    /// Corrupt records skipped inside the log (a valid next record followed them).
    pub skipped: u64,
    /// Corrupt records dropped at the tail (0 or 1).
    pub dropped_tail: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    Read(u64),
    /// Sector 0 is neither blank nor our header.
    Foreign,
    TooSmall,
}

struct Window {
    start: u64,
    sectors: usize,
    data: Vec<u8>,
}

impl Window {
    /// Makes sure sectors `[s, s + n)` (cut at the capacity) are in the window; returns the
    /// bytes from `s` to the end of the window.
    fn at<'a, S: Sectors>(&'a mut self, src: &mut S, s: u64, n: usize) -> Result<&'a [u8], ReplayError> {
        let cap = src.capacity();
        let want = (n as u64).min(cap - s) as usize;
        let inside = s >= self.start && s + want as u64 <= self.start + self.sectors as u64;
        if !inside {
            let count = (CHUNK_SECTORS as u64).min(cap - s) as usize;
            src.read(s, &mut self.data[..count * SECTOR]).map_err(|()| ReplayError::Read(s))?;
            self.start = s;
            self.sectors = count;
        }
        let from = (s - self.start) as usize * SECTOR;
        Ok(&self.data[from..self.sectors * SECTOR])
    }
}

/// Replays the log, calling `apply` for each good record in order.
pub fn replay<S: Sectors>(src: &mut S, mut apply: impl FnMut(&Record<'_>)) -> Result<Replayed, ReplayError> {
    let cap = src.capacity();
    if cap < 2 {
        return Err(ReplayError::TooSmall);
    }
    let mut win = Window { start: 0, sectors: 0, data: vec![0; CHUNK_SECTORS * SECTOR] };
    let mut out = Replayed::default();
    match check_header(win.at(src, 0, 1)?) {
        HeaderState::Blank => {
            out.blank = true;
            out.next_sector = 1;
            return Ok(out);
        }
        HeaderState::Foreign => return Err(ReplayError::Foreign),
        HeaderState::Valid => {}
    }
    let (mut s, mut seq) = (1u64, 0u64);
    while s < cap {
        match decode(win.at(src, s, MAX_RECORD_SECTORS)?, seq) {
            Decoded::Record(rec, n) => {
                apply(&rec);
                out.records += 1;
                s += n as u64;
                seq += 1;
            }
            Decoded::End => break,
            Decoded::Corrupt | Decoded::NeedSectors(_) => {
                // Is the next record right behind it? Then only this one is lost.
                let mut resumed = None;
                let last = (s + MAX_RECORD_SECTORS as u64).min(cap - 1);
                for t in s + 1..=last {
                    if let Decoded::Record(..) = decode(win.at(src, t, MAX_RECORD_SECTORS)?, seq + 1) {
                        resumed = Some(t);
                        break;
                    }
                }
                match resumed {
                    Some(t) => {
                        out.skipped += 1;
                        s = t;
                        seq += 1;
                    }
                    None => {
                        out.dropped_tail += 1;
                        break;
                    }
                }
            }
        }
    }
    out.next_sector = s.min(cap);
    out.next_seq = seq;
    Ok(out)
}
