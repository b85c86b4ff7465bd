//! The log on the virtio disk: replay at boot, then group commit. SET and DEL records of one
//! loop iteration are encoded into one buffer and written with one request (plus a FLUSH in the
//! same notification: one exit) before any of their replies is sent.

use super::disklog::{self, record_sectors, Record, SECTOR};
use super::replay::{self, Replayed, Sectors};
use super::store::{LogSink, Store};
use crate::virtio::blk::{Blk, MAX_REQUEST};
use alloc::vec::Vec;

/// A batch is written once it would grow past this (leaving room for the end sector).
const MAX_BATCH: usize = MAX_REQUEST - SECTOR;

pub struct DiskLog {
    blk: Blk,
    next_sector: u64,
    next_seq: u64,
    batch: Vec<u8>,
    batch_records: u64,
    pub records: u64,
    pub commits: u64,
}

struct Source<'a>(&'a mut Blk);

impl Sectors for Source<'_> {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(sector, buf).map_err(|_| ())
    }
}

impl DiskLog {
    /// Replays the log on `blk` into `store` (formatting a blank disk).
    pub fn open(mut blk: Blk, store: &mut Store) -> Result<(DiskLog, Replayed), &'static str> {
        if blk.readonly() {
            return Err("the disk is read-only");
        }
        let found = replay::replay(&mut Source(&mut blk), |rec| store.apply(rec)).map_err(|e| match e {
            replay::ReplayError::Read(_) => "disk read failed",
            replay::ReplayError::Foreign => "sector 0 of the disk is not a kv log header (refusing to overwrite it)",
            replay::ReplayError::TooSmall => "the disk is too small (2 sectors at least)",
        })?;
        if found.blank {
            let mut first = Vec::with_capacity(2 * SECTOR);
            first.extend_from_slice(&disklog::header());
            first.resize(2 * SECTOR, 0);
            blk.write(0, &first).map_err(|_| "formatting the disk failed")?;
        }
        let log = DiskLog {
            blk,
            next_sector: found.next_sector,
            next_seq: found.next_seq,
            batch: Vec::with_capacity(MAX_REQUEST),
            batch_records: 0,
            records: found.records,
            commits: 0,
        };
        Ok((log, found))
    }

    /// Sectors used (header included) and the capacity.
    pub fn usage(&self) -> (u64, u64) {
        (self.next_sector + (self.batch.len() / SECTOR) as u64, self.blk.capacity())
    }

    pub fn disk_requests(&self) -> u64 {
        self.blk.requests
    }

    /// Exits the disk caused: notifications, interrupt acknowledgements, waits.
    pub fn disk_exits(&self) -> u64 {
        self.blk.kicks + self.blk.acks + self.blk.waits
    }

    /// Writes the pending batch and one zero sector after it (if the disk has room), flushed.
    /// A failed write stops the guest: its records are not acknowledged.
    pub fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let sectors = (self.batch.len() / SECTOR) as u64;
        if self.next_sector + sectors < self.blk.capacity() {
            self.batch.resize(self.batch.len() + SECTOR, 0);
        }
        if let Err(e) = self.blk.write(self.next_sector, &self.batch) {
            println!("kv: FATAL: disk write at sector {} failed: {:?}", self.next_sector, e);
            crate::power::off(3);
        }
        self.next_sector += sectors;
        self.records += self.batch_records;
        self.batch_records = 0;
        self.commits += 1;
        self.batch.clear();
    }
}

impl LogSink for DiskLog {
    fn append(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), ()> {
        let need = record_sectors(key.len(), value.len()) * SECTOR;
        if self.batch.len() + need > MAX_BATCH {
            self.commit();
        }
        let used = self.next_sector * SECTOR as u64 + self.batch.len() as u64;
        if used + need as u64 > self.blk.capacity() * SECTOR as u64 {
            return Err(());
        }
        let rec = Record { seq: self.next_seq, op, key, value };
        disklog::encode(&rec, &mut self.batch);
        self.next_seq += 1;
        self.batch_records += 1;
        Ok(())
    }
}
