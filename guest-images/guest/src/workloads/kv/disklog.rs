//! The records of the `kv` log (pure: no I/O; host-tested in guest-images/tests). Where they
//! go on the disk (superblocks, two regions, compaction) is described in `layout`.
//!
//! Records start on a sector boundary and are padded with zeros to a whole number of 512-byte
//! sectors; little-endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic u32 `0x3152564b` ("KVR1") |
//! | 4 | CRC-32 (IEEE) of bytes 8 .. 24 + key_len + value_len |
//! | 8 | sequence number u64: one more than the record before it in the log |
//! | 16 | op u8: 1 SET, 2 DEL, 3 SNAP (a live key copied by a compaction; replayed as a SET) |
//! | 17 | reserved u8 (0) |
//! | 18 | key_len u16 (1..=250) |
//! | 20 | value_len u32 (0..=4096; 0 for DEL) |
//! | 24 | key, then value |
//!
//! The writer appends whole records after the last good one and writes one zero sector after
//! what it appended (when the region has room), so a scan ends at a zero sector, or at an
//! intact record of an older generation (its sequence number is not the expected one). At
//! boot the scan replays records while they are valid and in sequence; a non-zero sector that
//! is not a valid next record is corrupt. If a valid record with the next sequence number
//! starts within [`MAX_RECORD_SECTORS`] sectors after it, only that record is skipped;
//! otherwise it is the torn or corrupt tail: it is dropped and appending resumes at its first
//! sector.

use alloc::vec::Vec;

pub const SECTOR: usize = 512;
pub const RECORD_MAGIC: u32 = 0x3152_564b;
pub const RECORD_HEADER: usize = 24;
pub const MAX_KEY: usize = 250;
pub const MAX_VALUE: usize = 4096;
pub const MAX_RECORD_SECTORS: usize = (RECORD_HEADER + MAX_KEY + MAX_VALUE).div_ceil(SECTOR);

pub const OP_SET: u8 = 1;
pub const OP_DEL: u8 = 2;
pub const OP_SNAP: u8 = 3;

/// A decoded record, borrowing from the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub op: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// What a scan finds at a sector boundary.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record with the expected sequence number, and the sectors it takes.
    Record(Record<'a>, usize),
    /// The end of the log: a zero sector, or a valid record of an older generation.
    End,
    /// Not a valid record.
    Corrupt,
    /// The record claims more bytes than the buffer holds: this many sectors are needed.
    NeedSectors(usize),
}

/// The sectors a record with these lengths takes.
pub fn record_sectors(key_len: usize, value_len: usize) -> usize {
    (RECORD_HEADER + key_len + value_len).div_ceil(SECTOR)
}

/// Appends `rec` to `out`, padded with zeros to whole sectors.
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.push(rec.op);
    out.push(0);
    out.extend_from_slice(&(rec.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(rec.value.len() as u32).to_le_bytes());
    out.extend_from_slice(rec.key);
    out.extend_from_slice(rec.value);
    let crc = crc32(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let padded = start + record_sectors(rec.key.len(), rec.value.len()) * SECTOR;
    out.resize(padded, 0);
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

/// Decodes the record at the start of `buf` (which begins on a sector boundary and holds at
/// least one sector), expecting sequence number `seq`.
pub fn decode(buf: &[u8], seq: u64) -> Decoded<'_> {
    if buf.len() < SECTOR {
        return Decoded::NeedSectors(1);
    }
    let first = &buf[..SECTOR];
    if first.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    if u32_at(first, 0) != RECORD_MAGIC {
        return Decoded::Corrupt;
    }
    let op = first[16];
    let key_len = u16_at(first, 18) as usize;
    let value_len = u32_at(first, 20) as usize;
    let lengths_ok = (1..=MAX_KEY).contains(&key_len)
        && value_len <= MAX_VALUE
        && (op == OP_SET || op == OP_SNAP || (op == OP_DEL && value_len == 0))
        && first[17] == 0;
    if !lengths_ok {
        return Decoded::Corrupt;
    }
    let sectors = record_sectors(key_len, value_len);
    if buf.len() < sectors * SECTOR {
        return Decoded::NeedSectors(sectors);
    }
    let end = RECORD_HEADER + key_len + value_len;
    if crc32(&buf[8..end]) != u32_at(buf, 4) {
        return Decoded::Corrupt;
    }
    let record = Record {
        seq: u64_at(buf, 8),
        op,
        key: &buf[RECORD_HEADER..RECORD_HEADER + key_len],
        value: &buf[RECORD_HEADER + key_len..end],
    };
    if record.seq != seq {
        // Intact but out of sequence: left over from before the current tail.
        return Decoded::End;
    }
    Decoded::Record(record, sectors)
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}
