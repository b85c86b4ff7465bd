//! Replaying the log at boot (pure over a [`Sectors`] source; host-tested in
//! guest-images/tests): see `layout` for where the log is and `disklog` for the records.

use super::disklog::{decode, Decoded, Record, MAX_RECORD_SECTORS, OP_SNAP, SECTOR};
use super::layout::{disk_state, DiskState, Superblock, MIN_CAPACITY};
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

/// The part of the log found in one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionScan {
    /// The sequence number the region's log starts with.
    pub first_seq: u64,
    /// Records applied.
    pub records: u64,
    /// Where the next record goes (absolute sector), and its sequence number.
    pub end: u64,
    pub next_seq: u64,
    /// Corrupt records skipped inside the log (a valid next record followed them).
    pub skipped: u64,
    /// Corrupt records dropped at the tail (0 or 1).
    pub dropped_tail: u64,
    /// The key of the last SNAP record: how far the compaction that wrote them got.
    pub last_snapshot_key: Option<Vec<u8>>,
}

/// What the replay found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Whether the disk was blank (the caller formats it with `superblock`).
    pub blank: bool,
    /// The superblock in force.
    pub superblock: Superblock,
    /// The log in the active region.
    pub active: RegionScan,
    /// Its continuation in the other region: a compaction was under way.
    pub compaction: Option<RegionScan>,
}

impl Replayed {
    /// Records applied, in both regions.
    pub fn records(&self) -> u64 {
        self.active.records + self.compaction.as_ref().map_or(0, |c| c.records)
    }
    /// Where the next record goes and its sequence number.
    pub fn next(&self) -> (u64, u64) {
        let tail = self.compaction.as_ref().unwrap_or(&self.active);
        (tail.end, tail.next_seq)
    }
    pub fn skipped(&self) -> u64 {
        self.active.skipped + self.compaction.as_ref().map_or(0, |c| c.skipped)
    }
    pub fn dropped_tail(&self) -> u64 {
        self.active.dropped_tail + self.compaction.as_ref().map_or(0, |c| c.dropped_tail)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    Read(u64),
    /// Sectors 0 and 1 are neither blank nor a superblock.
    Foreign,
    /// A version-1 log.
    OldVersion,
    TooSmall,
    /// The superblock's regions do not fit on the disk (it was shrunk?).
    Geometry,
}

struct Window {
    start: u64,
    sectors: usize,
    data: Vec<u8>,
}

impl Window {
    /// Makes sure sectors `[s, s + n)` (cut at `limit`) are in the window; returns the bytes
    /// from `s` to the end of the window or to `limit`.
    fn at<'a, S: Sectors>(&'a mut self, src: &mut S, s: u64, n: usize, limit: u64) -> Result<&'a [u8], ReplayError> {
        let want = (n as u64).min(limit - s) as usize;
        let inside = s >= self.start && s + want as u64 <= self.start + self.sectors as u64;
        if !inside {
            let count = (CHUNK_SECTORS as u64).min(limit - s) as usize;
            src.read(s, &mut self.data[..count * SECTOR]).map_err(|()| ReplayError::Read(s))?;
            self.start = s;
            self.sectors = count;
        }
        let from = (s - self.start) as usize * SECTOR;
        let to = (self.sectors as u64).min(limit - self.start) as usize * SECTOR;
        Ok(&self.data[from..to])
    }
}

/// Replays the records of `[start, limit)` from sequence number `seq`.
fn scan<S: Sectors>(
    src: &mut S,
    win: &mut Window,
    (start, limit): (u64, u64),
    mut seq: u64,
    apply: &mut impl FnMut(&Record<'_>),
) -> Result<RegionScan, ReplayError> {
    let mut out = RegionScan { first_seq: seq, ..RegionScan::default() };
    let mut s = start;
    while s < limit {
        match decode(win.at(src, s, MAX_RECORD_SECTORS, limit)?, seq) {
            Decoded::Record(rec, n) => {
                apply(&rec);
                if rec.op == OP_SNAP {
                    out.last_snapshot_key = Some(rec.key.to_vec());
                }
                out.records += 1;
                s += n as u64;
                seq += 1;
            }
            Decoded::End => break,
            Decoded::Corrupt | Decoded::NeedSectors(_) => {
                // Is the next record right behind it? Then only this one is lost.
                let mut resumed = None;
                let last = (s + MAX_RECORD_SECTORS as u64).min(limit - 1);
                for t in s + 1..=last {
                    if let Decoded::Record(..) = decode(win.at(src, t, MAX_RECORD_SECTORS, limit)?, seq + 1) {
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
    out.end = s.min(limit);
    out.next_seq = seq;
    Ok(out)
}

/// Replays the log, calling `apply` for each good record in order.
pub fn replay<S: Sectors>(src: &mut S, mut apply: impl FnMut(&Record<'_>)) -> Result<Replayed, ReplayError> {
    let cap = src.capacity();
    if cap < MIN_CAPACITY {
        return Err(ReplayError::TooSmall);
    }
    let mut win = Window { start: 0, sectors: 0, data: vec![0; CHUNK_SECTORS * SECTOR] };
    let sb = match disk_state(win.at(src, 0, 2, cap)?) {
        DiskState::Blank => {
            let sb = Superblock::format(cap);
            let start = sb.region_start(sb.active);
            let active = RegionScan { end: start, ..RegionScan::default() };
            return Ok(Replayed { blank: true, superblock: sb, active, compaction: None });
        }
        DiskState::OldVersion => return Err(ReplayError::OldVersion),
        DiskState::Foreign => return Err(ReplayError::Foreign),
        DiskState::Formatted(sb) => sb,
    };
    if sb.region_sectors < MAX_RECORD_SECTORS as u64 + 1 || sb.region_end(1) > cap {
        return Err(ReplayError::Geometry);
    }
    let bounds = |i: usize| (sb.region_start(i), sb.region_end(i));
    let mut active = scan(src, &mut win, bounds(sb.active), sb.first_seq, &mut apply)?;
    // A compaction under way continues the sequence at the start of the other region. A
    // corrupt last record of the active region may hide the number it continues from.
    let other = 1 - sb.active;
    let mut compaction = None;
    let tries = if active.dropped_tail > 0 { 2 } else { 1 };
    for extra in 0..tries {
        let found = scan(src, &mut win, bounds(other), active.next_seq + extra, &mut apply)?;
        if found.records > 0 {
            if extra > 0 {
                active.dropped_tail = 0;
                active.skipped += 1;
            }
            compaction = Some(found);
            break;
        }
    }
    Ok(Replayed { blank: false, superblock: sb, active, compaction })
}
