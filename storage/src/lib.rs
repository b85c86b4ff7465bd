//! gfs: a GFS-style distributed file system (see DESIGN.md, "gfs").
//!
//! * [`master`]: namespace, file-to-chunk mapping, chunk versions, leases, operation log and
//!   checkpoints.
//! * [`chunkserver`]: stores 64 MiB chunks with a CRC32C per 64 KiB block, applies mutations in
//!   the primary's serial order and streams data along a chain of replicas.
//! * [`client`]: the blocking client library used by the `gfs` CLI and by the VMM.
//! * [`protocol`]: length-delimited, checksummed frames carrying postcard messages over TCP.
//! * [`oplog`]: the master's operation log and checkpoints.

pub mod chunkserver;
pub mod client;
pub mod error;
pub mod master;
pub mod metrics;
pub mod oplog;
pub mod protocol;
pub mod sync;
pub mod util;

#[cfg(test)]
mod test_support;

pub use client::{Client, DirEntry, Durability, FileStat, StreamOpts};
pub use error::{GfsError, Result};

/// Size of one chunk: 64 MiB.
pub const CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Size of one checksummed block inside a chunk: 64 KiB.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Number of checksummed blocks in a chunk.
pub const BLOCKS_PER_CHUNK: usize = (CHUNK_SIZE / BLOCK_SIZE) as usize;
/// Largest mutation a client sends in one push + commit. Writes are split at this size and at
/// chunk boundaries, so no request ever buffers a whole chunk.
pub const MAX_MUTATION: u64 = 4 * 1024 * 1024;
/// Largest record for record append: a quarter of a chunk (one push, one mutation).
pub const MAX_RECORD: u64 = CHUNK_SIZE / 4;
/// Most chunks in one file (64 TiB), so no request can make the master allocate without bound.
pub const MAX_FILE_CHUNKS: u64 = 1 << 20;
/// Largest file size.
pub const MAX_FILE_SIZE: u64 = MAX_FILE_CHUNKS * CHUNK_SIZE;
/// Size of one data frame on the wire.
pub const DATA_FRAME: usize = 256 * 1024;
/// Largest write sent with its data to the primary (`WriteInline`) rather than pushed along the
/// chain first: below it a write costs round trips, not bandwidth. Above it the chain's
/// pipelined push sends each byte out of every server once, while it still arrives.
pub const INLINE_WRITE_MAX: u64 = DATA_FRAME as u64;
