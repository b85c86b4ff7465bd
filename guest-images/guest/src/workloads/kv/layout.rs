//! Where the `kv` log lives on the disk: two superblock slots and two log regions (pure: no
//! I/O; host-tested in guest-images/tests). The record format is in `disklog`.
//!
//! Sectors of 512 bytes, little-endian:
//! - sectors 0 and 1: superblock slots. A superblock of generation `g` is written to slot
//!   `g % 2`, so the write that replaces it never touches the one in force; the valid slot
//!   with the highest generation is in force. Both slots all zero: a blank disk.
//! - sectors 2..8: reserved (zero).
//! - region 0 = sectors `[8, 8 + R)`, region 1 = `[8 + R, 8 + 2R)`, `R` = the region size in
//!   the superblock (`(capacity - 8) / 2` when the disk was formatted).
//!
//! Superblock (CRC-32 over bytes 0..56, the rest of the sector zero):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `"FTVMKVLG"` |
//! | 8 | version u32 (2; version 1 was a single log from sector 1, without compaction) |
//! | 12 | sector size u32 (512) |
//! | 16 | generation u64 (1 when formatted, +1 at each compaction) |
//! | 24 | region size u64, in sectors |
//! | 32 | active region u32 (0 or 1) |
//! | 36 | reserved u32 (0) |
//! | 40 | sequence number of the active region's first record u64 |
//! | 48 | compactions completed u64 |
//! | 56 | CRC-32 u32 |
//!
//! The log is the active region's records from its first sector (sequence numbers rising by
//! one), and, while a compaction runs, their continuation in the other region: a compaction
//! starts writing at the other region's first sector with the next sequence number, mixing
//! the live keys (op SNAP, in key order) with the SETs and DELs that arrive meanwhile. Once
//! every live key is written (and flushed), the next superblock makes the other region active.
//! A crash before that leaves the old region plus the continuation, which replay in order to
//! the same state; a crash after it leaves the new region alone, which holds the whole state.
//! Records left in a region by an older generation carry older sequence numbers, so a scan
//! stops at them.

use super::disklog::{crc32, SECTOR};

pub const MAGIC: &[u8; 8] = b"FTVMKVLG";
pub const VERSION: u32 = 2;
/// Superblock slots and reserved sectors before region 0.
pub const RESERVED_SECTORS: u64 = 8;
/// The smallest disk that holds two useful regions (32 KiB).
pub const MIN_CAPACITY: u64 = 64;
const SUPERBLOCK_BYTES: usize = 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub region_sectors: u64,
    pub active: usize,
    pub first_seq: u64,
    pub compactions: u64,
}

impl Superblock {
    /// The superblock of a freshly formatted disk of `capacity` sectors.
    pub fn format(capacity: u64) -> Superblock {
        Superblock {
            generation: 1,
            region_sectors: (capacity - RESERVED_SECTORS) / 2,
            active: 0,
            first_seq: 0,
            compactions: 0,
        }
    }

    /// The slot (sector) this superblock is written to.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    /// First sector of region `i`.
    pub fn region_start(&self, i: usize) -> u64 {
        RESERVED_SECTORS + i as u64 * self.region_sectors
    }

    /// One past the last sector of region `i`.
    pub fn region_end(&self, i: usize) -> u64 {
        self.region_start(i) + self.region_sectors
    }

    pub fn encode(&self) -> [u8; SECTOR] {
        let mut s = [0u8; SECTOR];
        s[..8].copy_from_slice(MAGIC);
        s[8..12].copy_from_slice(&VERSION.to_le_bytes());
        s[12..16].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        s[16..24].copy_from_slice(&self.generation.to_le_bytes());
        s[24..32].copy_from_slice(&self.region_sectors.to_le_bytes());
        s[32..36].copy_from_slice(&(self.active as u32).to_le_bytes());
        s[40..48].copy_from_slice(&self.first_seq.to_le_bytes());
        s[48..56].copy_from_slice(&self.compactions.to_le_bytes());
        let crc = crc32(&s[..SUPERBLOCK_BYTES]);
        s[56..60].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// Decodes one slot; `None` if it is not a valid version-2 superblock.
    pub fn decode(s: &[u8]) -> Option<Superblock> {
        if s.len() < SECTOR || &s[..8] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap_or([0; 8]));
        if u32_at(8) != VERSION || u32_at(12) != SECTOR as u32 || u32_at(56) != crc32(&s[..SUPERBLOCK_BYTES]) {
            return None;
        }
        let active = u32_at(32);
        let sb = Superblock {
            generation: u64_at(16),
            region_sectors: u64_at(24),
            active: active as usize,
            first_seq: u64_at(40),
            compactions: u64_at(48),
        };
        let rest_zero = s[60..SECTOR].iter().all(|&b| b == 0) && u32_at(36) == 0;
        (active <= 1 && sb.generation > 0 && sb.slot() < 2 && rest_zero).then_some(sb)
    }
}

/// What sectors 0 and 1 say.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskState {
    /// Both all zeros: a new disk (formatted at boot).
    Blank,
    Formatted(Superblock),
    /// A version-1 log (no compaction): not converted, not overwritten.
    OldVersion,
    /// Something else: not our log (or both superblocks damaged).
    Foreign,
}

/// Reads the superblock in force from the first two sectors (`two.len() >= 1024`).
pub fn disk_state(two: &[u8]) -> DiskState {
    if two.len() < 2 * SECTOR {
        return DiskState::Foreign;
    }
    let slots = [&two[..SECTOR], &two[SECTOR..2 * SECTOR]];
    if slots.iter().all(|s| s.iter().all(|&b| b == 0)) {
        return DiskState::Blank;
    }
    let valid = (0..2).filter_map(|i| Superblock::decode(slots[i]).filter(|sb| sb.slot() == i as u64));
    match valid.max_by_key(|sb| sb.generation) {
        Some(sb) => DiskState::Formatted(sb),
        None if &two[..8] == MAGIC && two[8..12] == 1u32.to_le_bytes() => DiskState::OldVersion,
        None => DiskState::Foreign,
    }
}
