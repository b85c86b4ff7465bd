//! The log writer: group commit and compaction (pure over a [`Device`]; host-tested in
//! guest-images/tests). Where things go on the disk: `layout`.
//!
//! SET and DEL records of one loop iteration are encoded into one batch and written with one
//! request (flushed) before any of their replies is sent.
//!
//! **Compaction.** When the log in the active region passes half the region (a quarter of the
//! disk) and at least half of it is garbage (log bytes >= 2 x live bytes), or at once when the
//! next record does not fit in the region, a compaction starts: the batches go to the start
//! of the other region from then on, and each commit adds to its batch the next live keys in
//! key order (SNAP records, at most [`SNAPSHOT_CHUNK`] bytes a commit) read from the store at
//! that moment, after the batch's own records. Service goes on between commits; memory holds
//! one batch, never a copy of the store. When the last key is written, the next superblock
//! (written after the flushed batch) makes the other region active and the old one free.
//!
//! Why the state is exact at every instant: the records in the other region, replayed after
//! the old region, give the store as it was (a SNAP record holds the value the store had when
//! it was written, which already includes every record before it; every change after it is a
//! record after it). Once every key is covered, the other region alone gives it.
//!
//! **Space.** While a compaction runs, room is kept in the other region for the keys it has
//! still to copy (`ahead`, an upper bound: the live bytes when it started, minus what it
//! copied, plus every SET of a key it has not reached yet); a SET or DEL that would eat into
//! that room is refused (disk full), so a compaction always finishes. Outside a compaction a
//! record that fits nowhere (the live set would not fit in a region) is refused.

use super::disklog::{self, record_sectors, Record, OP_DEL, OP_SNAP, SECTOR};
use super::layout::{Superblock, RESERVED_SECTORS};
use super::replay::{self, RegionScan, ReplayError, Replayed, Sectors};
use super::store::{record_bytes, LogSink, Store};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// The largest write the log makes (the virtio-blk driver's request limit).
pub const MAX_WRITE: usize = 256 << 10;
/// A batch is written once it would grow past this (leaving room for the end sector).
const MAX_BATCH: usize = MAX_WRITE - SECTOR;
/// Live keys a commit copies during a compaction, at most (bytes of records).
pub const SNAPSHOT_CHUNK: usize = 64 << 10;
/// Zeroed at boot after the tail: everything a torn batch may have left behind.
const ERASE_SECTORS: u64 = (MAX_WRITE / SECTOR) as u64;

/// A disk the log writes to.
pub trait Device: Sectors {
    /// Writes whole sectors at `sector`, durable when it returns. A device that cannot write
    /// stops the machine (the records are not acknowledged).
    fn write(&mut self, sector: u64, data: &[u8]);
}

struct Compaction {
    target: usize,
    first_seq: u64,
    /// Where the next batch goes in the target region, and the records written there.
    end: u64,
    records: u64,
    /// The last key copied.
    cursor: Option<Box<[u8]>>,
    /// Upper bound of the bytes still to copy (see the module documentation).
    ahead: u64,
    /// Every live key is written: the superblock flips after this batch.
    complete: bool,
}

pub struct Log<D: Device> {
    dev: D,
    sb: Superblock,
    /// Where the active region's log ends (frozen while a compaction runs), its records.
    active_end: u64,
    active_records: u64,
    compaction: Option<Compaction>,
    next_seq: u64,
    batch: Vec<u8>,
    batch_records: u64,
    /// The store's live bytes at the last commit plus what was appended since: an upper bound.
    live_hint: u64,
    snapshot_chunk: usize,
    pub commits: u64,
    pub writes: u64,
}

impl<D: Device> Log<D> {
    /// Replays the log on `dev` into `store`, formats a blank disk, and clears what a torn
    /// batch may have left after the tail. A compaction found under way goes on.
    pub fn open(mut dev: D, store: &mut Store) -> Result<(Log<D>, Replayed), ReplayError> {
        let found = replay::replay(&mut dev, |rec| store.apply(rec))?;
        let sb = found.superblock;
        let mut log = Log {
            dev,
            sb,
            active_end: found.active.end,
            active_records: found.active.records,
            compaction: None,
            next_seq: found.next().1,
            batch: Vec::with_capacity(MAX_WRITE),
            batch_records: 0,
            live_hint: store.live_bytes(),
            snapshot_chunk: SNAPSHOT_CHUNK,
            commits: 0,
            writes: 0,
        };
        if found.blank {
            let mut first = vec![0u8; RESERVED_SECTORS as usize * SECTOR];
            let slot = sb.slot() as usize * SECTOR;
            first[slot..slot + SECTOR].copy_from_slice(&sb.encode());
            log.write(0, &first);
        }
        if let Some(c) = &found.compaction {
            log.compaction = Some(Compaction::resume(1 - sb.active, c, store));
        }
        // Erase after the tail, and the other region's start unless it continues the log.
        let (tail, limit) = log.tail();
        log.erase(tail, limit);
        if log.compaction.is_none() {
            let other = 1 - log.sb.active;
            log.erase(log.sb.region_start(other), log.sb.region_end(other));
        }
        Ok((log, found))
    }

    /// Copies at most `bytes` of live keys per commit (host tests make compactions take many
    /// commits on small disks).
    #[allow(dead_code)]
    pub fn set_snapshot_chunk(&mut self, bytes: usize) {
        self.snapshot_chunk = bytes.clamp(SECTOR, MAX_BATCH);
    }

    #[allow(dead_code)] // the host tests read the disk back
    pub fn into_device(self) -> D {
        self.dev
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn compacting(&self) -> bool {
        self.compaction.is_some()
    }

    /// Compactions completed over the disk's life.
    pub fn compactions(&self) -> u64 {
        self.sb.compactions
    }

    /// Records in the log on the disk.
    pub fn records(&self) -> u64 {
        self.active_records + self.compaction.as_ref().map_or(0, |c| c.records)
    }

    /// Bytes of records in the log on the disk (both regions while a compaction runs).
    pub fn log_bytes(&self) -> u64 {
        let active = self.active_end - self.sb.region_start(self.sb.active);
        let other = self.compaction.as_ref().map_or(0, |c| c.end - self.sb.region_start(c.target));
        (active + other) * SECTOR as u64
    }

    /// Sectors used (superblocks included) and the capacity.
    pub fn usage(&self) -> (u64, u64) {
        (RESERVED_SECTORS + self.log_bytes() / SECTOR as u64, self.dev.capacity())
    }

    /// Where the next batch goes, and the end of its region.
    fn tail(&self) -> (u64, u64) {
        match &self.compaction {
            Some(c) => (c.end, self.sb.region_end(c.target)),
            None => (self.active_end, self.sb.region_end(self.sb.active)),
        }
    }

    fn write(&mut self, sector: u64, data: &[u8]) {
        self.dev.write(sector, data);
        self.writes += 1;
    }

    fn erase(&mut self, from: u64, limit: u64) {
        let sectors = ERASE_SECTORS.min(limit.saturating_sub(from));
        if sectors > 0 {
            self.write(from, &vec![0u8; sectors as usize * SECTOR]);
        }
    }

    /// Whether `bytes` more (after the batch) fit in the tail's region.
    fn fits(&self, bytes: u64) -> bool {
        let (tail, limit) = self.tail();
        tail * SECTOR as u64 + self.batch.len() as u64 + bytes <= limit * SECTOR as u64
    }

    /// Writes the pending batch and one zero sector after it (if the region has room).
    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let (tail, limit) = self.tail();
        let sectors = (self.batch.len() / SECTOR) as u64;
        if tail + sectors < limit {
            self.batch.resize(self.batch.len() + SECTOR, 0);
        }
        let batch = core::mem::take(&mut self.batch);
        self.write(tail, &batch);
        self.batch = batch;
        self.batch.clear();
        match &mut self.compaction {
            Some(c) => {
                c.end += sectors;
                c.records += self.batch_records;
            }
            None => {
                self.active_end += sectors;
                self.active_records += self.batch_records;
            }
        }
        self.batch_records = 0;
        self.commits += 1;
    }

    /// Commits the batch (with the next live keys if a compaction runs), finishes or starts
    /// a compaction. Called once per loop iteration, before any reply of it is sent.
    pub fn commit(&mut self, store: &Store) {
        if let Some(c) = &mut self.compaction {
            let budget = self.snapshot_chunk.min(MAX_BATCH - self.batch.len());
            let start = self.batch.len();
            // The reservation guarantees room; checked anyway so that a bug cannot write past
            // the region (it would stall the compaction instead).
            let room = (self.sb.region_end(c.target) - c.end) * SECTOR as u64;
            let mut last = None;
            c.complete = true;
            for (key, value) in store.entries_after(c.cursor.as_deref()) {
                let need = record_bytes(key, value);
                let len = self.batch.len() + need as usize;
                // At least one key a commit, whatever the chunk.
                let over_budget = len - start > budget && self.batch.len() > start;
                if over_budget || len as u64 > room {
                    c.complete = false;
                    break;
                }
                let rec = Record { seq: self.next_seq, op: OP_SNAP, key, value };
                disklog::encode(&rec, &mut self.batch);
                self.next_seq += 1;
                self.batch_records += 1;
                c.ahead = c.ahead.saturating_sub(need);
                last = Some(key);
            }
            if let Some(key) = last {
                c.cursor = Some(key.into());
            }
        }
        self.write_batch();
        if self.compaction.as_ref().is_some_and(|c| c.complete) {
            self.finish_compaction();
        } else if self.compaction.is_none() && self.should_compact(store.live_bytes()) {
            self.start_compaction(store.live_bytes());
        }
        self.live_hint = store.live_bytes();
    }

    fn should_compact(&self, live: u64) -> bool {
        let region = self.sb.region_sectors * SECTOR as u64;
        let log = (self.active_end - self.sb.region_start(self.sb.active)) * SECTOR as u64;
        log >= region / 2 && log >= 2 * live
    }

    fn start_compaction(&mut self, live: u64) {
        let target = 1 - self.sb.active;
        self.compaction = Some(Compaction {
            target,
            first_seq: self.next_seq,
            end: self.sb.region_start(target),
            records: 0,
            cursor: None,
            ahead: live,
            complete: false,
        });
    }

    /// The other region holds every live key (flushed): make it the active one.
    fn finish_compaction(&mut self) {
        let Some(c) = self.compaction.take() else { return };
        let sb = Superblock {
            generation: self.sb.generation + 1,
            active: c.target,
            first_seq: c.first_seq,
            compactions: self.sb.compactions + 1,
            ..self.sb
        };
        self.write(sb.slot(), &sb.encode());
        self.sb = sb;
        self.active_end = c.end;
        self.active_records = c.records;
    }
}

impl Compaction {
    /// Goes on with a compaction found at boot, after the last key it copied.
    fn resume(target: usize, found: &RegionScan, store: &Store) -> Compaction {
        let cursor: Option<Box<[u8]>> = found.last_snapshot_key.as_deref().map(Into::into);
        let ahead = store.entries_after(cursor.as_deref()).map(|(k, v)| record_bytes(k, v)).sum();
        Compaction {
            target,
            first_seq: found.first_seq,
            end: found.end,
            records: found.records,
            cursor,
            ahead,
            complete: false,
        }
    }

    /// Whether a future SNAP record will copy `key` again.
    fn ahead_of_cursor(&self, key: &[u8]) -> bool {
        self.cursor.as_deref().is_none_or(|c| key > c)
    }
}

impl<D: Device> LogSink for Log<D> {
    fn append(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), ()> {
        let need = (record_sectors(key.len(), value.len()) * SECTOR) as u64;
        if self.batch.len() + need as usize > MAX_BATCH {
            self.write_batch();
        }
        if self.compaction.is_none() && !self.fits(need) {
            // The region is full: compact now, if the live set fits in the other region.
            let region = self.sb.region_sectors * SECTOR as u64;
            if self.live_hint + 2 * need > region {
                return Err(());
            }
            self.write_batch();
            self.start_compaction(self.live_hint);
        }
        let copied_again = match &self.compaction {
            Some(c) if op != OP_DEL && c.ahead_of_cursor(key) => need,
            _ => 0,
        };
        let reserved = self.compaction.as_ref().map_or(0, |c| c.ahead);
        if !self.fits(need + reserved + copied_again) {
            return Err(());
        }
        if let Some(c) = &mut self.compaction {
            c.ahead += copied_again;
        }
        let rec = Record { seq: self.next_seq, op, key, value };
        disklog::encode(&rec, &mut self.batch);
        self.next_seq += 1;
        self.batch_records += 1;
        self.live_hint += need;
        Ok(())
    }
}
