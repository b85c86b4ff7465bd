//! A compact layout for delta checkpoints: the machine's state (vCPU and devices, encoded by the
//! VMM), optional page hashes, and dirty pages.
//!
//! A Checkpoint record's data is opaque to the log; this gives it a checked layout, which the
//! VMM then compresses (LZ4) and prefixes with its own format byte (`vmm/src/checkpoint.rs`).
//! Layout, little-endian:
//!
//! ```text
//! version u8 (=1) | state_len u32 | machine state | hashes_len u32 | page hashes |
//! page_count u32 | page_count × ( gpa_flags u64 | 4096 bytes unless the zero flag is set )
//! ```
//!
//! `gpa_flags` is the page-aligned guest-physical address with bit 0 set for an all-zero page
//! (common after boot and cheap to detect), whose bytes are then omitted. The page hashes are
//! empty unless the recording verifies checkpoints (`ftvm run --verify-checkpoints`): then they
//! hold an 8-byte hash of every guest page, which the replay compares after loading.

use crate::format::codec::Get;
use crate::format::Corruption;

pub const PAGE_SIZE: usize = 4096;

const VERSION: u8 = 1;
const ZERO_PAGE: u64 = 1;
const FLAG_MASK: u64 = PAGE_SIZE as u64 - 1;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("page at {gpa:#x} is not page-aligned")]
    Unaligned { gpa: u64 },
    #[error("page at {gpa:#x} has {len} bytes, not {PAGE_SIZE}")]
    PageSize { gpa: u64, len: usize },
    #[error("checkpoint part of {len} bytes is too large")]
    TooLarge { len: usize },
    #[error("malformed checkpoint at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: Corruption },
}

/// The contents of one page in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageData<'a> {
    Zero,
    Bytes(&'a [u8; PAGE_SIZE]),
}

/// A decoded checkpoint, borrowing from the record's bytes (pages are not copied).
#[derive(Clone, Debug)]
pub struct DeltaCheckpoint<'a> {
    /// The machine's state (vCPU and devices), as the VMM encoded it.
    pub machine_state: &'a [u8],
    /// 8 bytes per guest page, or empty (see the module docs).
    pub page_hashes: &'a [u8],
    page_count: u32,
    pages: &'a [u8],
}

impl<'a> DeltaCheckpoint<'a> {
    /// Encodes a checkpoint. `pages` yields (page-aligned gpa, 4096 bytes).
    pub fn encode<'p>(
        machine_state: &[u8],
        page_hashes: &[u8],
        pages: impl IntoIterator<Item = (u64, &'p [u8])>,
    ) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(1 + 12 + machine_state.len() + page_hashes.len());
        out.push(VERSION);
        for part in [machine_state, page_hashes] {
            let len = u32::try_from(part.len()).map_err(|_| CheckpointError::TooLarge { len: part.len() })?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut count: u32 = 0;
        for (gpa, bytes) in pages {
            if gpa & FLAG_MASK != 0 {
                return Err(CheckpointError::Unaligned { gpa });
            }
            if bytes.len() != PAGE_SIZE {
                return Err(CheckpointError::PageSize { gpa, len: bytes.len() });
            }
            count = count.checked_add(1).ok_or(CheckpointError::TooLarge { len: out.len() })?;
            if bytes.iter().all(|&b| b == 0) {
                out.extend_from_slice(&(gpa | ZERO_PAGE).to_le_bytes());
            } else {
                out.extend_from_slice(&gpa.to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        Ok(out)
    }

    /// Decodes and validates the whole checkpoint up front, so that loading it cannot fail half
    /// way through.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, CheckpointError> {
        let mut cursor = Cursor(Get::new(bytes));
        let version = cursor.take(1, "version")?[0];
        if version != VERSION {
            return Err(cursor.error(Corruption::BadField { field: "checkpoint version", value: version.into() }));
        }
        let state_len = cursor.u32("machine state length")? as usize;
        let machine_state = cursor.take(state_len, "machine state")?;
        let hashes_len = cursor.u32("page hashes length")? as usize;
        let page_hashes = cursor.take(hashes_len, "page hashes")?;
        let page_count = cursor.u32("page count")?;
        let pages_start = cursor.0.offset();
        for _ in 0..page_count {
            let gpa_flags = cursor.u64("page address")?;
            match gpa_flags & FLAG_MASK {
                0 => {
                    cursor.take(PAGE_SIZE, "page bytes")?;
                }
                ZERO_PAGE => {}
                other => return Err(cursor.error(Corruption::BadField { field: "page flags", value: other })),
            }
        }
        if cursor.0.offset() != bytes.len() {
            return Err(cursor.error(Corruption::TrailingBytes(bytes.len() - cursor.0.offset())));
        }
        Ok(Self { machine_state, page_hashes, page_count, pages: &bytes[pages_start..] })
    }

    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// The pages, in encoding order, as (gpa, contents).
    pub fn pages(&self) -> impl Iterator<Item = (u64, PageData<'a>)> + 'a {
        let mut rest = self.pages;
        std::iter::from_fn(move || {
            // Validated by `decode`; a short slice just ends the iteration.
            let (head, tail) = rest.split_first_chunk::<8>()?;
            let gpa_flags = u64::from_le_bytes(*head);
            let gpa = gpa_flags & !FLAG_MASK;
            if gpa_flags & ZERO_PAGE != 0 {
                rest = tail;
                return Some((gpa, PageData::Zero));
            }
            let (page, tail) = tail.split_first_chunk::<PAGE_SIZE>()?;
            rest = tail;
            Some((gpa, PageData::Bytes(page)))
        })
    }
}

/// Reads through the log's byte cursor, naming the offset of a malformed field.
struct Cursor<'a>(Get<'a>);

impl<'a> Cursor<'a> {
    fn error(&self, reason: Corruption) -> CheckpointError {
        CheckpointError::Malformed { offset: self.0.offset(), reason }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CheckpointError> {
        let offset = self.0.offset();
        self.0.take(n, field).map_err(|reason| CheckpointError::Malformed { offset, reason })
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CheckpointError> {
        let offset = self.0.offset();
        self.0.u32(field).map_err(|reason| CheckpointError::Malformed { offset, reason })
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CheckpointError> {
        let offset = self.0.offset();
        self.0.u64(field).map_err(|reason| CheckpointError::Malformed { offset, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_zero_and_data_pages() {
        let zero = [0u8; PAGE_SIZE];
        let mut data = [0u8; PAGE_SIZE];
        data[17] = 0xab;
        let pages: Vec<(u64, &[u8])> = vec![(0x1000, &zero), (0x7000, &data)];
        let bytes = DeltaCheckpoint::encode(b"regs", b"board", pages).expect("encode");
        assert_eq!(bytes.len(), 1 + 4 + 4 + 4 + 5 + 4 + 8 + 8 + PAGE_SIZE);
        let cp = DeltaCheckpoint::decode(&bytes).expect("decode");
        assert_eq!(cp.machine_state, b"regs");
        assert_eq!(cp.page_hashes, b"board");
        let got: Vec<_> = cp.pages().collect();
        assert_eq!(got, vec![(0x1000, PageData::Zero), (0x7000, PageData::Bytes(&data))]);
    }

    #[test]
    fn every_truncation_and_misaligned_page_is_rejected() {
        let data = [1u8; PAGE_SIZE];
        let bytes = DeltaCheckpoint::encode(b"r", b"d", [(0x2000, &data[..])]).expect("encode");
        for cut in 0..bytes.len() {
            assert!(DeltaCheckpoint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            DeltaCheckpoint::encode(b"", b"", [(0x2001, &data[..])]).err(),
            Some(CheckpointError::Unaligned { gpa: 0x2001 })
        );
    }
}
