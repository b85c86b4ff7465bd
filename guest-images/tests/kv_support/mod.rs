//! Shared by the host tests of the guest's `kv` logic: the guest's pure files (the guest crate
//! is `no_std`/`no_main`, so they are included by path), and an in-memory disk whose power can
//! be cut at any write, whole, not at all, or torn.

#![allow(dead_code)]

#[path = "../../guest/src/workloads/kv"]
pub mod kv {
    pub mod disklog;
    pub mod layout;
    pub mod log;
    pub mod replay;
    pub mod store;
}

use kv::disklog::SECTOR;
use kv::log::{Device, Log};
use kv::replay::{Replayed, Sectors};
use kv::store::Store;

/// How much of the write at the power cut reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// All of it (the cut comes right after the write).
    Whole,
    /// None of it.
    Nothing,
    /// Its first sectors (this many, cut at its length).
    Prefix(usize),
    /// Some of its sectors, chosen by a seed (a disk that reorders sector writes).
    Scatter(u64),
}

impl Tear {
    fn keeps(&self, sector: usize, sectors: usize) -> bool {
        match *self {
            Tear::Whole => true,
            Tear::Nothing => false,
            Tear::Prefix(n) => sector < n.min(sectors),
            Tear::Scatter(seed) => splitmix(seed ^ sector as u64) & 1 == 1,
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub struct MemDisk {
    pub data: Vec<u8>,
    /// Writes made, and read requests.
    pub writes: u64,
    pub reads: u64,
    /// Cut the power at this write (1-based), with this much of it reaching the disk.
    cut: Option<(u64, Tear)>,
    /// The disk as the power cut left it (the machine itself goes on writing to `data`).
    pub after_cut: Option<Vec<u8>>,
}

impl MemDisk {
    pub fn new(sectors: usize) -> Self {
        Self::from_image(vec![0; sectors * SECTOR])
    }

    pub fn from_image(data: Vec<u8>) -> Self {
        MemDisk { data, writes: 0, reads: 0, cut: None, after_cut: None }
    }

    pub fn cut_power_at(&mut self, write: u64, tear: Tear) {
        self.cut = Some((write, tear));
    }
}

impl Sectors for MemDisk {
    fn capacity(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.reads += 1;
        let at = sector as usize * SECTOR;
        buf.copy_from_slice(self.data.get(at..at + buf.len()).ok_or(())?);
        Ok(())
    }
}

impl Device for MemDisk {
    fn write(&mut self, sector: u64, data: &[u8]) {
        assert_eq!(data.len() % SECTOR, 0, "whole sectors");
        let at = sector as usize * SECTOR;
        assert!(at + data.len() <= self.data.len(), "write past the end of the disk");
        self.writes += 1;
        if let Some((write, tear)) = self.cut {
            if write == self.writes {
                let mut image = self.data.clone();
                let sectors = data.len() / SECTOR;
                for i in (0..sectors).filter(|&i| tear.keeps(i, sectors)) {
                    image[at + i * SECTOR..at + (i + 1) * SECTOR].copy_from_slice(&data[i * SECTOR..(i + 1) * SECTOR]);
                }
                self.after_cut = Some(image);
            }
        }
        self.data[at..at + data.len()].copy_from_slice(data);
    }
}

/// Boots from `disk`: the log, the store it replays to, and what the replay found.
pub fn boot(disk: MemDisk) -> (Log<MemDisk>, Store, Replayed) {
    let mut store = Store::new();
    let (log, found) = Log::open(disk, &mut store).expect("replay");
    (log, store, found)
}

/// One request, committed as the server's loop does; the reply line.
pub fn request(log: &mut Log<MemDisk>, store: &mut Store, line: &str) -> String {
    let mut out = Vec::new();
    store.execute(line.as_bytes(), log, "", &mut out);
    log.commit(store);
    String::from_utf8(out).expect("ASCII reply").trim_end().to_owned()
}

/// Commits with no request until the running compaction finishes (as the idle loop does).
pub fn finish_compaction(log: &mut Log<MemDisk>, store: &Store) {
    for _ in 0..100_000 {
        if !log.compacting() {
            return;
        }
        log.commit(store);
    }
    panic!("the compaction does not finish");
}

/// Every key and value of the store.
pub fn contents(store: &Store) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    store.entries_after(None).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}
