//! The on-disk and on-wire log format (DESIGN.md, "Log records").
//!
//! A log is a header followed by one ordered stream of records:
//!
//! ```text
//! header:  magic "FTVMLOG\0" (8) | version u16 | len u32 | lchk u8 | body (len) | crc32c u32
//! record:  len u32 | lchk u8 | kind u8 | body (len - 1) | crc32c u32
//! ```
//!
//! All integers are little-endian and fixed-width. `len` counts the bytes between `lchk` and the
//! CRC. `lchk` is `0xA5 ^ len[0] ^ len[1] ^ len[2] ^ len[3]`: it lets the reader reject a damaged
//! length *before* trusting it, so a corrupted length byte is always reported as corruption at
//! that record (a CRC alone would be read from the wrong place and only catch it with high
//! probability). The CRC-32C covers every byte of the unit before it (for the header, the magic
//! and version too), so any single damaged byte in a log is detected deterministically.
//!
//! A log written by a finished run ends with an [`Record::End`]; a reader treats end-of-file at a
//! record boundary without it as [`LogError::Truncated`] unless told the stream is open-ended.
//!
//! Record kinds are added without a version bump (the version is for changes to framing, the
//! header, or existing kinds): an older reader reports a newer kind as [`Corruption::UnknownKind`]
//! at that record, and every log it could read is read the same way by this build. Kind 8,
//! [`Record::SnapshotMark`] (body: `exits u64`), was added this way; a log without marks is
//! byte-for-byte what version 1 always wrote.

pub(crate) mod codec;
mod header;
mod record;
mod stream;

pub use header::{LogHeader, FORMAT_VERSION, MAGIC};
pub(crate) use record::short_hex;
pub use record::{landmark_key, End, Record, RecordKind};
pub use stream::{LogReader, LogWriter};

use std::sync::Arc;

/// The largest record body accepted (kind byte included). Large enough for a delta checkpoint of
/// a whole 1 GiB guest; small enough that a damaged length cannot make us wait for, or allocate,
/// absurd amounts.
pub const MAX_RECORD_LEN: u32 = 1 << 30;

/// The largest header body accepted: the command line and kernel path are short strings.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;

/// Bytes of framing around a record body: length, length check, CRC.
pub const FRAME_OVERHEAD: usize = 4 + 1 + 4;

/// The check byte stored after a length, so that a damaged length is caught before it is used.
pub(crate) fn length_check(len: u32) -> u8 {
    len.to_le_bytes().iter().fold(0xA5, |acc, b| acc ^ b)
}

/// What is wrong with a unit (header or record) whose bytes are all present.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("length check byte mismatch (length field damaged)")]
    LengthCheck,
    #[error("length {len} outside 1..={max}")]
    BadLength { len: u32, max: u32 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record kind {0:#04x}")]
    UnknownKind(u8),
    #[error("body too short for field `{0}`")]
    Short(&'static str),
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("invalid value {value} for field `{field}`")]
    BadField { field: &'static str, value: u64 },
    #[error("field `{0}` is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("record after the End record")]
    AfterEnd,
    #[error("the machine's device list does not decode")]
    BadDevices,
}

/// An error reading or writing a log; every variant names the byte offset it concerns.
///
/// [`LogError::MisplacedSnapshotMark`] is a misuse by the VMM, not damage: nothing was written
/// and the log is still good.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LogError {
    /// The log stops inside the unit (header or record) starting at `offset`, or, when a complete
    /// log was required, at a record boundary before the End record.
    #[error("log truncated: unit at byte {offset} is incomplete or the End record is missing")]
    Truncated { offset: u64 },
    /// The unit starting at `offset` is present but damaged.
    #[error("log corrupt at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: Corruption },
    /// Not an ftvm log: the magic differs first at byte `offset`.
    #[error("not an ftvm log: bad magic at byte {offset}")]
    BadMagic { offset: u64 },
    /// A well-formed header of a format version this build does not read.
    #[error("unsupported log format version {found} at byte {offset} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { offset: u64, found: u16 },
    /// A unit too large to be written (see [`MAX_RECORD_LEN`], [`MAX_HEADER_LEN`]).
    #[error("unit of {len} bytes at byte {offset} exceeds the maximum {max}")]
    TooLarge { offset: u64, len: u64, max: u32 },
    /// [`crate::RecordingWorld::mark_snapshot`] was asked to mark exit `requested` while the
    /// recording is at `at` (another exit count, or past `Exit(requested)`, e.g. a preemption
    /// after it was already logged). Nothing was written: the log is still good.
    #[error("snapshot mark for exit {requested} requested at byte {offset}, but the recording is at {at}")]
    MisplacedSnapshotMark { offset: u64, requested: u64, at: devices::Landmark },
    /// The underlying reader or writer failed at `offset`. The message includes the cause, so
    /// it is not also returned by `source()` (a printed chain would say it twice).
    #[error("log I/O error at byte {offset}: {cause}")]
    Io { offset: u64, cause: Arc<std::io::Error> },
}

impl LogError {
    /// The byte offset the error concerns.
    pub fn offset(&self) -> u64 {
        match self {
            LogError::Truncated { offset }
            | LogError::Corrupt { offset, .. }
            | LogError::BadMagic { offset }
            | LogError::UnsupportedVersion { offset, .. }
            | LogError::TooLarge { offset, .. }
            | LogError::MisplacedSnapshotMark { offset, .. }
            | LogError::Io { offset, .. } => *offset,
        }
    }

    pub(crate) fn io(offset: u64, source: std::io::Error) -> Self {
        LogError::Io { offset, cause: Arc::new(source) }
    }
}
