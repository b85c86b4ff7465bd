//! The master's operation log: every metadata mutation is a [`Record`], appended with a log
//! sequence number (LSN) and made durable before the master answers. [`writer`] does the
//! appending with group commit, [`replay`] reads segments back (cutting a torn tail), and
//! [`checkpoint`] stores and loads snapshots of the whole state.

pub mod checkpoint;
pub mod replay;
pub mod writer;

use crate::error::{GfsError, Result};
use crate::protocol::frame::{self, Kind};
use crate::protocol::{ChunkHandle, Version};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use writer::OpLog;

/// One metadata mutation. New variants go at the end so old logs stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Mkdir {
        path: String,
    },
    CreateFile {
        path: String,
    },
    Delete {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Chunk `index` of `path` is `handle`, at version 1 and not yet on any chunkserver.
    AddChunk {
        path: String,
        index: u64,
        handle: ChunkHandle,
    },
    /// The chunk's version was raised (lease grant) or adopted from a chunk report.
    SetVersion {
        handle: ChunkHandle,
        version: Version,
    },
    /// The file's size is at least `size`.
    ExtendSize {
        path: String,
        size: u64,
    },
    /// Register `name` moved to `generation` (one more than before), held by `holder`.
    CompareAndSet {
        name: String,
        generation: u64,
        holder: String,
    },
    /// Writes to `path` are fenced by register `register`.
    Bind {
        path: String,
        register: String,
    },
    /// Copy-on-write snapshot: `dst` (file or tree) shares `src`'s chunks.
    Snapshot {
        src: String,
        dst: String,
    },
    /// Chunk `index` of `path` moves from shared chunk `old` to its private copy `new`.
    ReplaceChunk {
        path: String,
        index: u64,
        old: ChunkHandle,
        new: ChunkHandle,
        version: Version,
    },
    /// Register `name` moved to `generation` (one more than before) with no holder: `holder`,
    /// who held it at the generation before, let it go.
    ReleaseRegister {
        name: String,
        generation: u64,
        holder: String,
    },
}

/// A record with its log sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub lsn: u64,
    pub record: Record,
}

/// Appends the framed encoding of `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<()> {
    let bytes = postcard::to_stdvec(entry).map_err(|e| GfsError::Codec(e.to_string()))?;
    frame::encode(Kind::Msg, &bytes, out)
}

/// Decodes one entry from the front of `buf`, returning it and the bytes consumed.
pub fn decode_entry(buf: &[u8]) -> Result<(Entry, usize)> {
    let (kind, payload, used) = frame::decode(buf)?;
    if kind != Kind::Msg {
        return Err(GfsError::OpLog("unexpected frame kind in log".into()));
    }
    let entry = postcard::from_bytes(payload).map_err(|e| GfsError::Codec(e.to_string()))?;
    Ok((entry, used))
}

pub(crate) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("log-{first_lsn:020}"))
}

/// Log segments in `dir`, sorted by their first LSN.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    list_numbered(dir, "log-", "")
}

pub(crate) fn list_numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| GfsError::io(format!("listing {}", dir.display()), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| GfsError::io(format!("listing {}", dir.display()), e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)) else {
            continue;
        };
        if let Ok(n) = rest.parse::<u64>() {
            out.push((n, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// fsyncs a directory so that created/renamed/deleted entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| GfsError::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        let p = "/[a-z]{1,8}(/[a-z]{1,8}){0,3}";
        prop_oneof![
            p.prop_map(|path| Record::Mkdir { path }),
            p.prop_map(|path| Record::CreateFile { path }),
            p.prop_map(|path| Record::Delete { path }),
            (p, p).prop_map(|(from, to)| Record::Rename { from, to }),
            (p, any::<u64>(), any::<u64>()).prop_map(|(path, index, handle)| Record::AddChunk { path, index, handle }),
            (any::<u64>(), any::<u32>()).prop_map(|(handle, version)| Record::SetVersion { handle, version }),
            (p, any::<u64>()).prop_map(|(path, size)| Record::ExtendSize { path, size }),
            ("[a-z]{1,8}", any::<u64>(), "[a-z0-9]{0,8}")
                .prop_map(|(name, generation, holder)| { Record::CompareAndSet { name, generation, holder } }),
            (p, "[a-z]{1,8}").prop_map(|(path, register)| Record::Bind { path, register }),
            (p, p).prop_map(|(src, dst)| Record::Snapshot { src, dst }),
            (p, any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(path, index, old, new, version)| {
                Record::ReplaceChunk { path, index, old, new, version }
            }),
            ("[a-z]{1,8}", any::<u64>(), "[a-z0-9@:.]{1,16}")
                .prop_map(|(name, generation, holder)| Record::ReleaseRegister { name, generation, holder }),
        ]
    }

    fn encode_all(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            encode_entry(&Entry { lsn: i as u64 + 1, record: r.clone() }, &mut out).unwrap();
        }
        out
    }

    fn decode_all(mut buf: &[u8]) -> (Vec<Entry>, bool) {
        let mut out = Vec::new();
        while !buf.is_empty() {
            match decode_entry(buf) {
                Ok((e, used)) => {
                    out.push(e);
                    buf = &buf[used..];
                }
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 0..30)) {
            let bytes = encode_all(&records);
            let (entries, clean) = decode_all(&bytes);
            prop_assert!(clean);
            let back: Vec<Record> = entries.into_iter().map(|e| e.record).collect();
            prop_assert_eq!(back, records);
        }

        #[test]
        fn truncation_yields_a_clean_prefix(records in proptest::collection::vec(arb_record(), 1..30), cut in any::<proptest::sample::Index>()) {
            let bytes = encode_all(&records);
            let keep = cut.index(bytes.len());
            let (entries, _) = decode_all(&bytes[..keep]);
            // Never more than what was whole, and each decoded entry is exactly what was written.
            prop_assert!(entries.len() < records.len());
            for (e, r) in entries.iter().zip(records.iter()) {
                prop_assert_eq!(&e.record, r);
            }
        }

        #[test]
        fn flipped_byte_detected(records in proptest::collection::vec(arb_record(), 1..20), at in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode_all(&records);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let (entries, clean) = decode_all(&bytes);
            // Decoding stops at (or before) the damaged entry; nothing wrong is ever returned.
            prop_assert!(!clean || entries.len() < records.len());
            for (e, r) in entries.iter().zip(records.iter()) {
                prop_assert_eq!(&e.record, r);
            }
        }
    }
}
