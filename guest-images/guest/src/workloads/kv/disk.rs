//! The log on the virtio disk: the [`Device`] the log writer and the boot replay use.

use super::log::{Device, Log, MAX_WRITE};
use super::replay::{ReplayError, Replayed, Sectors};
use super::store::Store;
use crate::virtio::blk::{Blk, MAX_REQUEST};

const _: () = assert!(MAX_WRITE <= MAX_REQUEST, "the log writes what the driver can send at once");

pub struct BlkDisk(Blk);

pub type DiskLog = Log<BlkDisk>;

impl Sectors for BlkDisk {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(sector, buf).map_err(|_| ())
    }
}

impl Device for BlkDisk {
    /// A failed write stops the guest: its records are not acknowledged.
    fn write(&mut self, sector: u64, data: &[u8]) {
        if let Err(e) = self.0.write(sector, data) {
            println!("kv: FATAL: disk write at sector {} failed: {:?}", sector, e);
            crate::power::off(3);
        }
    }
}

impl BlkDisk {
    pub fn requests(&self) -> u64 {
        self.0.requests
    }

    /// Exits the disk caused: notifications, interrupt acknowledgements, waits.
    pub fn exits(&self) -> u64 {
        self.0.kicks + self.0.acks + self.0.waits
    }
}

/// Replays the log on `blk` into `store` (formatting a blank disk).
pub fn open(blk: Blk, store: &mut Store) -> Result<(DiskLog, Replayed), &'static str> {
    if blk.readonly() {
        return Err("the disk is read-only");
    }
    Log::open(BlkDisk(blk), store).map_err(|e| match e {
        ReplayError::Read(_) => "disk read failed",
        ReplayError::Foreign => "sectors 0-1 of the disk are not a kv superblock (refusing to overwrite them)",
        ReplayError::OldVersion => "the disk holds a version-1 kv log (no compaction): not converted, use a new disk",
        ReplayError::TooSmall => "the disk is too small (64 sectors at least)",
        ReplayError::Geometry => "the superblock's regions do not fit on the disk (was it shrunk?)",
    })
}
