//! The client library: a blocking API over the master and chunkservers.
//!
//! ```no_run
//! let c = storage::Client::new("127.0.0.1:7000");
//! c.create("/vm/disk0")?;
//! c.write_at("/vm/disk0", 4096, b"hello")?;
//! let mut buf = [0u8; 5];
//! c.read_at("/vm/disk0", 4096, &mut buf)?;
//! # Ok::<(), storage::GfsError>(())
//! ```

mod append;
mod cache;
mod data;
mod durability;
mod masters;
mod put;
mod stream;

pub use put::COPYING_SUFFIX;

use crate::error::{leader_hint, ErrorKind, GfsError, Result};
use crate::protocol::{ChunkLocation, Fence, MasterReply, MasterRequest, Pool, Reply};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use stream::{StreamOpts, STREAM_WINDOW};

pub use crate::protocol::{ChunkStat, DirEntry, FileStat, ReplicaStat};

/// Retry policy for writes.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per mutation on replica failures.
    pub attempts: u32,
    /// How long to keep retrying while the master says "unavailable" (e.g. after a restart).
    pub unavailable_wait: Duration,
    /// How long to keep trying to reach a master that does not answer (it is restarting, say),
    /// with backoff from 50 ms to 2 s between tries, before giving up.
    pub master_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 8, unavailable_wait: Duration::from_secs(120), master_wait: MASTER_WAIT }
    }
}

/// Default of [`RetryPolicy::master_wait`].
pub const MASTER_WAIT: Duration = Duration::from_secs(60);

/// Whether the master could not have seen the request: it was never connected to.
fn never_reached(e: &GfsError) -> bool {
    matches!(e, GfsError::Connect { .. })
}

/// Whether the connection failed under the request (the master died, say), so it may or may
/// not have been carried out.
fn lost_midway(e: &GfsError) -> bool {
    matches!(e, GfsError::Io { .. } | GfsError::Quiet { .. } | GfsError::Closed(_))
}

/// Requests that do the same when carried out twice, and so may be sent again after the
/// connection failed under them.
fn idempotent(req: &MasterRequest) -> bool {
    !matches!(
        req,
        MasterRequest::Mkdir { .. }
            | MasterRequest::Create { .. }
            | MasterRequest::Delete { .. }
            | MasterRequest::Rename { .. }
            | MasterRequest::CompareAndSet { .. }
            | MasterRequest::ReleaseRegister { .. }
            | MasterRequest::Bind { .. }
            | MasterRequest::Snapshot { .. }
    )
}

struct Inner {
    masters: masters::Masters,
    pool: Pool,
    cache: cache::Cache,
    retry: RetryPolicy,
    /// Chunks written with [`Durability::Flush`] and not yet synced.
    dirty: durability::DirtyChunks,
}

/// When a write is acknowledged, as HDFS's hflush and hsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every replica has fdatasynced it (the default).
    #[default]
    Sync,
    /// Every replica holds it in memory; [`Client::sync`] makes it durable.
    Flush,
}

/// A handle on a gfs cluster. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Fencing token stamped on every write (see [`Client::fenced`]).
    fence: Option<Fence>,
    durability: Durability,
    /// Writes up to this many bytes go to the primary with their data (see
    /// [`crate::INLINE_WRITE_MAX`]); larger ones are pushed along the chain first.
    inline_write_max: u64,
}

/// An open file: a path bound to a client.
#[derive(Clone)]
pub struct File {
    client: Client,
    path: String,
}

impl Client {
    /// A client for the master at `master` (`host:port`), or for the replicas of a replicated
    /// master (`A,B,C`: the client finds the leader). Connections are made on demand.
    pub fn new(master: &str) -> Client {
        Client::with_retry(master, RetryPolicy::default())
    }

    pub fn with_retry(master: &str, retry: RetryPolicy) -> Client {
        Client {
            inner: Arc::new(Inner {
                masters: masters::Masters::parse(master),
                pool: Pool::default(),
                cache: cache::Cache::default(),
                retry,
                dirty: durability::DirtyChunks::default(),
            }),
            fence: None,
            durability: Durability::Sync,
            inline_write_max: crate::INLINE_WRITE_MAX,
        }
    }

    /// This client with writes of up to `max` bytes sent with their data to the primary
    /// (0: every write is pushed along the chain first, as before `WriteInline` existed; for
    /// chunkservers that predate it, and for measuring one path against the other). At most
    /// [`crate::INLINE_WRITE_MAX`].
    pub fn with_inline_writes_up_to(&self, max: u64) -> Client {
        Client { inline_write_max: max.min(crate::INLINE_WRITE_MAX), ..self.clone() }
    }

    /// The master's address (or the replicas' addresses), as given.
    pub fn master_addr(&self) -> &str {
        self.inner.masters.given()
    }

    /// Sends one request to the master. While the master cannot be reached (it is
    /// restarting, say) the request is tried again with backoff for up to
    /// [`RetryPolicy::master_wait`]; after a connection failed under it, only a request that
    /// may safely be carried out twice is. Given several replicas, it goes to the one that
    /// answered last, to the leader a refusing replica names, or else round the list; a
    /// replica's refusal (`NotLeader`) sends it on to the next in the same call even once the
    /// wait is over (or with no wait at all), until every replica has refused once.
    fn master(&self, req: &MasterRequest) -> Result<MasterReply> {
        let masters = &self.inner.masters;
        let deadline = Instant::now() + self.inner.retry.master_wait;
        let max_backoff = if masters.len() > 1 { Duration::from_millis(250) } else { Duration::from_secs(2) };
        let mut backoff = Duration::from_millis(50);
        // Replicas tried since the last pause: pause once every one of them was.
        let mut tried = 0;
        // Refusals in this call: a replica that is not the leader answers at once and names the
        // leader if it knows one, so going there is finding the master, not waiting for it.
        let mut refusals = 0;
        loop {
            let (i, addr) = masters.current();
            let why = match self.inner.pool.call::<_, Reply<MasterReply>>(addr, req) {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) if e.kind == ErrorKind::NotLeader => {
                    // Refused, so not carried out: safe to send anywhere again. The next try, in
                    // this call or the next one, goes to the leader it names or the next replica.
                    if !leader_hint(&e).is_some_and(|l| l != addr && masters.follow(l)) {
                        masters.next_after(i);
                    }
                    refusals += 1;
                    if Instant::now() >= deadline && refusals >= masters.len() {
                        return Err(GfsError::Fs(e));
                    }
                    GfsError::Fs(e)
                }
                Ok(Err(e)) => return Err(GfsError::Fs(e)),
                Err(e) if (never_reached(&e) || (idempotent(req) && lost_midway(&e))) && Instant::now() < deadline => {
                    masters.next_after(i);
                    e
                }
                Err(e) => {
                    if lost_midway(&e) || never_reached(&e) {
                        masters.next_after(i);
                    }
                    return Err(e);
                }
            };
            tried += 1;
            if tried >= masters.len() {
                tried = 0;
                tracing::debug!(%addr, "no master took the request, trying again in {backoff:?}: {why}");
                std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }

    fn done(&self, req: MasterRequest) -> Result<()> {
        if !matches!(req, MasterRequest::ExtendSize { .. }) {
            // Namespace changes can make cached chunk locations wrong for a path.
            self.inner.cache.clear();
        }
        match self.master(&req)? {
            MasterReply::Done => Ok(()),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Creates an empty file.
    pub fn create(&self, path: &str) -> Result<()> {
        self.done(MasterRequest::Create { path: path.into() })
    }

    /// Creates a directory.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.done(MasterRequest::Mkdir { path: path.into() })
    }

    /// Deletes a file or an empty directory.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.done(MasterRequest::Delete { path: path.into() })
    }

    /// Renames a file or directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.done(MasterRequest::Rename { from: from.into(), to: to.into() })
    }

    /// Lists a directory (or describes one file).
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.master(&MasterRequest::List { path: path.into() })? {
            MasterReply::Entries(e) => Ok(e),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Size, chunks, replicas and versions of a path.
    pub fn stat(&self, path: &str) -> Result<FileStat> {
        match self.master(&MasterRequest::Stat { path: path.into() })? {
            MasterReply::Stat(s) => Ok(s),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Test-and-set on register `name`: if it is at generation `expected`, it moves to
    /// `expected + 1` held by `holder`, durably, and the new generation is returned. Otherwise
    /// the error (kind `Conflict`) names the current holder and generation.
    pub fn compare_and_set(&self, name: &str, expected: u64, holder: &str) -> Result<u64> {
        match self.master(&MasterRequest::CompareAndSet { name: name.into(), expected, holder: holder.into() })? {
            MasterReply::Register { generation, .. } => Ok(generation),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Lets go of register `name`: if it is at generation `expected` held by `holder`, it moves
    /// to `expected + 1` with no holder, durably, and the new generation is returned (writes
    /// fenced by `expected` are refused from then on). Otherwise the error (kind `Conflict`)
    /// names the current holder and generation.
    ///
    /// When the connection fails under the request, the register tells whether it was carried
    /// out: released (at `expected + 1`, no holder) is success, still held by `holder` at
    /// `expected` is tried again.
    pub fn release_register(&self, name: &str, expected: u64, holder: &str) -> Result<u64> {
        let req = MasterRequest::ReleaseRegister { name: name.into(), expected, holder: holder.into() };
        let deadline = Instant::now() + self.inner.retry.master_wait;
        loop {
            match self.master(&req) {
                Ok(MasterReply::Register { generation, .. }) => return Ok(generation),
                Ok(other) => return Err(unexpected(self.inner.masters.given(), other)),
                Err(e) if lost_midway(&e) => {
                    let (generation, current) = self.register(name)?;
                    if current.is_empty() && Some(generation) == expected.checked_add(1) {
                        return Ok(generation);
                    }
                    if generation != expected || current != holder {
                        return Err(GfsError::fs(
                            ErrorKind::Conflict,
                            format!("register {name} is held by {current:?} at generation {generation}"),
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(register = name, "release lost midway and not carried out, trying again: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Current generation and holder of register `name` (0 and "" if never set).
    pub fn register(&self, name: &str) -> Result<(u64, String)> {
        match self.master(&MasterRequest::GetRegister { name: name.into() })? {
            MasterReply::Register { generation, holder } => Ok((generation, holder)),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Fences writes to `path` (an empty file) by register `register`: from then on
    /// chunkservers only accept writes carrying the register's current generation.
    pub fn bind(&self, path: &str, register: &str) -> Result<()> {
        self.done(MasterRequest::Bind { path: path.into(), register: register.into() })
    }

    /// A client sharing connections and caches with this one whose writes carry generation
    /// `generation` of register `name` as their fencing token.
    pub fn fenced(&self, name: &str, generation: u64) -> Client {
        Client { fence: Some(Fence { name: name.into(), generation }), ..self.clone() }
    }

    /// A client sharing connections and caches with this one whose writes are acknowledged
    /// at `durability` (with [`Durability::Flush`], call [`Client::sync`] to make them
    /// durable; a VM disk does so on the guest's FLUSH).
    pub fn with_durability(&self, durability: Durability) -> Client {
        Client { durability, ..self.clone() }
    }

    /// Copy-on-write snapshot of a file or directory tree.
    pub fn snapshot(&self, src: &str, dst: &str) -> Result<()> {
        self.done(MasterRequest::Snapshot { src: src.into(), dst: dst.into() })
    }

    /// Chunkservers and overall counts.
    pub fn status(&self) -> Result<crate::protocol::ClusterStatus> {
        match self.master(&MasterRequest::Status)? {
            MasterReply::Status(s) => Ok(s),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Replica health of every chunk.
    pub fn fsck(&self) -> Result<crate::protocol::FsckReport> {
        match self.master(&MasterRequest::Fsck)? {
            MasterReply::Fsck(r) => Ok(r),
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }

    /// Opens an existing file.
    pub fn open(&self, path: &str) -> Result<File> {
        let st = self.stat(path)?;
        if st.is_dir {
            return Err(GfsError::fs(ErrorKind::IsADirectory, format!("{path}: is a directory")));
        }
        Ok(File { client: self.clone(), path: st.path })
    }

    /// Raises the recorded size of `path` to at least `size`, writing nothing: the bytes
    /// between the old and the new end read as zeros (a VM disk made at its full size).
    pub fn extend_size(&self, path: &str, size: u64) -> Result<()> {
        if self.inner.cache.known_size(path).is_some_and(|s| s >= size) {
            return Ok(());
        }
        self.done(MasterRequest::ExtendSize { path: path.into(), size })?;
        self.inner.cache.raise_size(path, size);
        Ok(())
    }

    fn get_chunk(&self, path: &str, index: u64, for_write: bool) -> Result<(u64, Option<ChunkLocation>)> {
        match self.master(&MasterRequest::GetChunk { path: path.into(), index, for_write })? {
            MasterReply::Chunk { size, location } => {
                match &location {
                    Some(l) if for_write => self.inner.cache.put_write(path, index, size, l.clone()),
                    _ => self.inner.cache.put_read(path, index, size, location.clone()),
                }
                Ok((size, location))
            }
            other => Err(unexpected(self.inner.masters.given(), other)),
        }
    }
}

impl File {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Current size as recorded by the master.
    pub fn len(&self) -> Result<u64> {
        Ok(self.client.stat(&self.path)?.size)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads at `offset`; returns the bytes read (short only at the end of the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.client.read_at(&self.path, offset, buf)
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.client.write_at(&self.path, offset, data)
    }

    /// Makes every write this client acknowledged from memory to this file durable.
    pub fn sync(&self) -> Result<()> {
        self.client.sync(&self.path)
    }
}

fn unexpected(peer: &str, what: impl std::fmt::Debug) -> GfsError {
    GfsError::UnexpectedReply { peer: peer.to_string(), what: format!("{what:?}") }
}
