//! Messages between clients, the master and chunkservers.

use crate::error::RemoteError;
use serde::{Deserialize, Serialize};

/// Globally unique, immutable chunk identifier assigned by the master.
pub type ChunkHandle = u64;
/// Chunk version number, raised by the master whenever it grants a new lease.
pub type Version = u32;

/// Requests served by the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MasterRequest {
    Mkdir {
        path: String,
    },
    Create {
        path: String,
    },
    Delete {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    List {
        path: String,
    },
    Stat {
        path: String,
    },
    /// Locations of chunk `index` of `path`. With `for_write`, the master allocates the chunk
    /// if needed and makes sure one replica holds a lease.
    GetChunk {
        path: String,
        index: u64,
        for_write: bool,
    },
    /// Raise the recorded size of `path` to at least `size`.
    ExtendSize {
        path: String,
        size: u64,
    },
    Heartbeat(Heartbeat),
    ReportCorrupt {
        server: String,
        handle: ChunkHandle,
    },
    /// Test-and-set: if register `name` is at `expected`, move it to `expected + 1` held by
    /// `holder` (persisted before the answer). Answered with the new state, or a `Conflict`
    /// error naming the current holder and generation.
    CompareAndSet {
        name: String,
        expected: u64,
        holder: String,
    },
    /// Current state of a register (generation 0 if never set).
    GetRegister {
        name: String,
    },
    /// Fence writes to `path` with register `register`.
    Bind {
        path: String,
        register: String,
    },
    /// The chunk to record-append to: the file's last chunk if its index is at least
    /// `min_index`, else a new chunk at `min_index`; with a lease.
    AppendChunk {
        path: String,
        min_index: u64,
    },
    /// Copy-on-write snapshot of a file or directory tree.
    Snapshot {
        src: String,
        dst: String,
    },
    /// Chunkservers and overall counts.
    Status,
    /// Every file's chunks checked for live, healthy replicas.
    Fsck,
    /// For shadow masters: log entries after `after_lsn` (at most `max`).
    FetchLog {
        after_lsn: u64,
        max: u32,
    },
    /// Release: if register `name` is at `expected` held by `holder`, move it to `expected + 1`
    /// with no holder (persisted before the answer). Answered with the new state, or a
    /// `Conflict` error naming the current holder and generation.
    ReleaseRegister {
        name: String,
        expected: u64,
        holder: String,
    },
    /// Between master replicas: Raft messages (each one encoded by the Raft library) from
    /// replica `from`. Answered with `Done` once queued.
    Raft {
        from: u64,
        msgs: Vec<Vec<u8>>,
    },
}

/// Replies of the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MasterReply {
    Done,
    Entries(Vec<DirEntry>),
    Stat(FileStat),
    /// The file's size, and the chunk's location: `None` when the chunk was never written (a
    /// hole, reads as zeros).
    Chunk {
        size: u64,
        location: Option<ChunkLocation>,
    },
    Heartbeat(HeartbeatReply),
    Register {
        generation: u64,
        holder: String,
    },
    AppendChunk {
        index: u64,
        location: ChunkLocation,
    },
    Status(ClusterStatus),
    Fsck(FsckReport),
    /// Log entries, in order (empty: nothing new).
    Log(Vec<crate::oplog::Entry>),
    /// The log no longer reaches back far enough: the newest checkpoint instead.
    Checkpoint {
        lsn: u64,
        image: Vec<u8>,
    },
}

/// What `gfs status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub servers: Vec<ServerStatus>,
    pub files: u64,
    pub dirs: u64,
    pub chunks: u64,
}

/// One chunkserver in `gfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub addr: String,
    pub rack: String,
    pub live: bool,
    pub chunks: u64,
    pub last_seen_ms: u64,
    /// What the chunkserver last said of its data directory's disk.
    pub disk: DiskState,
}

/// The state of a chunkserver's data disk, as its heartbeats report it. A disk that is not
/// [`DiskState::Ok`] takes no new chunks, leases or copies, and writes move to other replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskState {
    #[default]
    Ok,
    /// A write found no space (ENOSPC); back to `Ok` once room is free again.
    Full,
    /// The disk returned I/O errors (EIO, or the file system went read-only): its replicas are
    /// not trusted for writes and are copied elsewhere; back to `Ok` once a probe write, sync
    /// and read succeed again.
    Failing,
}

impl DiskState {
    /// Whether new chunks, leases, copies and writes may go to this disk.
    pub fn accepts_writes(self) -> bool {
        self == DiskState::Ok
    }

    /// How `gfs status` and the logs name it.
    pub fn describe(self) -> &'static str {
        match self {
            DiskState::Ok => "ok",
            DiskState::Full => "full",
            DiskState::Failing => "failing (I/O errors)",
        }
    }
}

/// What `gfs fsck` finds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub files: u64,
    pub chunks: u64,
    pub healthy: u64,
    pub under_replicated: u64,
    pub missing: u64,
    /// One line per chunk with a problem.
    pub problems: Vec<String>,
}

/// A fencing token: writes must carry the register's current generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub name: String,
    pub generation: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// What `stat` reports about a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub chunks: Vec<ChunkStat>,
    /// The register whose generation fences writes to the file (`Client::bind`), if any.
    pub register: Option<String>,
}

/// One chunk of a file as `stat` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStat {
    pub index: u64,
    pub handle: ChunkHandle,
    pub version: Version,
    pub primary: Option<String>,
    pub replicas: Vec<ReplicaStat>,
}

/// One replica of a chunk as last reported by its chunkserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStat {
    pub server: String,
    pub version: Version,
    pub stale: bool,
    /// The chunkserver found a corrupt block in it (still used for other blocks, last).
    pub corrupt: bool,
}

/// Where a chunk lives and who holds its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocation {
    pub handle: ChunkHandle,
    pub version: Version,
    /// Up-to-date replicas (the primary included).
    pub replicas: Vec<String>,
    /// The lease holder, present for writes.
    pub primary: Option<String>,
    /// How long the lease is still valid, in milliseconds.
    pub lease_ms: u64,
}

/// Periodic message from a chunkserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Address the chunkserver serves on; its identity.
    pub server: String,
    pub rack: String,
    /// First heartbeat since the chunkserver started: forget what it reported before.
    pub fresh: bool,
    /// Chunk report: every chunk it holds with its version.
    pub chunks: Vec<(ChunkHandle, Version)>,
    /// Leases it holds and wants extended (it is primary and saw mutations).
    pub extend: Vec<(ChunkHandle, Version)>,
    /// Replicas in which it found a corrupt block.
    pub corrupt: Vec<ChunkHandle>,
    /// Tokens masters sent to `server` when they checked it ([`ChunkRequest::Verify`]): the
    /// proof that this heartbeat comes from the server at that address.
    pub tokens: Vec<u64>,
    /// The state of its data disk.
    pub disk: DiskState,
}

/// Master's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Leases extended by `lease_ms` from the time the heartbeat was sent.
    pub extended: Vec<ChunkHandle>,
    pub lease_ms: u64,
    /// Chunks the master no longer knows (their file was deleted): the replica may go.
    pub garbage: Vec<ChunkHandle>,
    /// Current generation of every register, for fencing.
    pub registers: Vec<(String, u64)>,
}

/// Requests served by a chunkserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    /// Followed by `len` bytes in data frames; the receiver forwards to `chain[0]` with the
    /// rest of the chain while it receives.
    Push { id: u64, len: u64, chain: Vec<String> },
    /// Sent by the client to the primary: commit pushed data `id` at `offset`.
    Write {
        handle: ChunkHandle,
        version: Version,
        offset: u64,
        id: u64,
        secondaries: Vec<String>,
        fence: Option<Fence>,
    },
    /// Sent by the primary to each secondary, in serial order.
    Apply { handle: ChunkHandle, version: Version, serial: u64, offset: u64, id: u64, fence: Option<Fence> },
    /// Sent by the client to the primary: a small write with its data, `len` bytes (at most
    /// [`crate::INLINE_WRITE_MAX`]) in the data frames that follow. The primary orders it and
    /// sends it on the same way (`ApplyInline`), so each replica gets the bytes in one hop
    /// instead of a push along the chain and then a commit: 4 messages on the way instead of 10.
    /// `durable: false` is acknowledged from memory, as an `Unsynced` write is.
    WriteInline {
        handle: ChunkHandle,
        version: Version,
        offset: u64,
        len: u64,
        secondaries: Vec<String>,
        fence: Option<Fence>,
        durable: bool,
    },
    /// Sent by the primary to each secondary, in serial order: a `WriteInline`'s data follows
    /// in data frames.
    ApplyInline {
        handle: ChunkHandle,
        version: Version,
        serial: u64,
        offset: u64,
        len: u64,
        fence: Option<Fence>,
        durable: bool,
    },
    /// Answered by `ChunkReply::Reading` and data frames.
    Read { handle: ChunkHandle, version: Version, offset: u64, len: u64 },
    /// From the master: set the version (creating the chunk's metadata if needed), and
    /// optionally make this server primary for `lease_ms`.
    SetVersion {
        handle: ChunkHandle,
        version: Version,
        lease_ms: Option<u64>,
        /// The register fencing the chunk's file, if any.
        register: Option<String>,
    },
    /// From the master: register `name` is now at `generation`.
    Fence(Fence),
    /// Sent by the client to the primary: append pushed data `id` (`len` bytes) as one record
    /// at an offset the primary chooses.
    Append { handle: ChunkHandle, version: Version, id: u64, len: u64, secondaries: Vec<String>, fence: Option<Fence> },
    /// From the master: give up the lease on `handle` (after in-flight mutations finish).
    Revoke { handle: ChunkHandle },
    /// Version and length of a replica.
    Info { handle: ChunkHandle },
    /// From the master: fetch chunk `handle` at `version` from `source` and keep a replica.
    Replicate { handle: ChunkHandle, version: Version, source: String },
    /// From the master: drop this replica (it was replaced).
    Delete { handle: ChunkHandle },
    /// From the master: make a local copy of chunk `from` (at `version`) named `to`.
    CopyChunk { from: ChunkHandle, to: ChunkHandle, version: Version },
    /// Sent by the primary to each secondary, in serial order: pad to the chunk's end.
    Pad { handle: ChunkHandle, version: Version, serial: u64, fence: Option<Fence> },
    /// From a master checking that a chunkserver is one, at the address its heartbeats claim:
    /// keep `token` and show it in the next heartbeats. Answered with `Verified`.
    Verify { token: u64 },
    /// A `Write` (from the client) or `Apply` (from the primary) acknowledged once every
    /// replica holds it in memory, without fdatasync (HDFS's hflush); `Sync` makes it durable.
    /// Decoding refuses an `Unsynced` inside another (see [`unsynced_inner`]).
    Unsynced(#[serde(deserialize_with = "unsynced_inner")] Box<ChunkRequest>),
    /// Make everything written to these replicas durable (fdatasync data and checksums).
    Sync { handles: Vec<ChunkHandle> },
}

thread_local! {
    /// Whether this thread is decoding the request inside an `Unsynced`.
    static IN_UNSYNCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes the request an [`ChunkRequest::Unsynced`] wraps, refusing another `Unsynced` inside it
/// before descending: postcard has no depth limit, and a frame of repeated `Unsynced` tags
/// would otherwise recurse until the connection thread's stack overflows and the process dies
/// (found while fuzzing the decoders, issue 15).
fn unsynced_inner<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<ChunkRequest>, D::Error> {
    /// Clears the flag however the inner decoding ends.
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_UNSYNCED.with(|inside| inside.set(false));
        }
    }
    if IN_UNSYNCED.with(|inside| inside.replace(true)) {
        return Err(serde::de::Error::custom("an Unsynced request nested in another"));
    }
    let _leave = Leave;
    ChunkRequest::deserialize(d).map(Box::new)
}

/// Replies of a chunkserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkReply {
    Pushed {
        failed: Vec<String>,
    },
    Written {
        failed: Vec<String>,
    },
    Applied,
    /// `len` bytes follow in data frames (an error message may cut the stream short).
    Reading {
        len: u64,
    },
    VersionSet,
    Fenced,
    /// The record was appended at `offset` within the chunk.
    Appended {
        offset: u64,
        failed: Vec<String>,
    },
    /// The record did not fit: the chunk was padded; retry on the next chunk.
    ChunkFull {
        failed: Vec<String>,
    },
    Revoked,
    Copied,
    Info {
        version: Version,
        len: u64,
    },
    Deleted,
    /// The address this chunkserver is known by.
    Verified {
        addr: String,
    },
    Synced,
}

/// Every reply on the wire is a result.
pub type Reply<T> = Result<T, RemoteError>;

impl MasterRequest {
    /// The request's name, for metrics and logs (never its arguments).
    pub fn name(&self) -> &'static str {
        match self {
            MasterRequest::Mkdir { .. } => "mkdir",
            MasterRequest::Create { .. } => "create",
            MasterRequest::Delete { .. } => "delete",
            MasterRequest::Rename { .. } => "rename",
            MasterRequest::List { .. } => "list",
            MasterRequest::Stat { .. } => "stat",
            MasterRequest::GetChunk { .. } => "get_chunk",
            MasterRequest::ExtendSize { .. } => "extend_size",
            MasterRequest::Heartbeat(_) => "heartbeat",
            MasterRequest::ReportCorrupt { .. } => "report_corrupt",
            MasterRequest::CompareAndSet { .. } => "compare_and_set",
            MasterRequest::GetRegister { .. } => "get_register",
            MasterRequest::Bind { .. } => "bind",
            MasterRequest::AppendChunk { .. } => "append_chunk",
            MasterRequest::Snapshot { .. } => "snapshot",
            MasterRequest::Status => "status",
            MasterRequest::Fsck => "fsck",
            MasterRequest::FetchLog { .. } => "fetch_log",
            MasterRequest::ReleaseRegister { .. } => "release_register",
            MasterRequest::Raft { .. } => "raft",
        }
    }
}

impl ChunkRequest {
    /// The request's name, for metrics and logs (never its arguments).
    pub fn name(&self) -> &'static str {
        match self {
            ChunkRequest::Push { .. } => "push",
            ChunkRequest::Write { .. } => "write",
            ChunkRequest::Apply { .. } => "apply",
            ChunkRequest::WriteInline { .. } => "write_inline",
            ChunkRequest::ApplyInline { .. } => "apply_inline",
            ChunkRequest::Read { .. } => "read",
            ChunkRequest::SetVersion { .. } => "set_version",
            ChunkRequest::Fence(_) => "fence",
            ChunkRequest::Append { .. } => "append",
            ChunkRequest::Revoke { .. } => "revoke",
            ChunkRequest::Info { .. } => "info",
            ChunkRequest::Replicate { .. } => "replicate",
            ChunkRequest::Delete { .. } => "delete",
            ChunkRequest::CopyChunk { .. } => "copy_chunk",
            ChunkRequest::Pad { .. } => "pad",
            ChunkRequest::Verify { .. } => "verify",
            ChunkRequest::Unsynced(inner) => inner.name(),
            ChunkRequest::Sync { .. } => "sync",
        }
    }
}
