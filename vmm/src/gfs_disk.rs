//! The gfs backend of virtio-blk: a VM disk held in one gfs file (`--disk gfs:/PATH`), reached
//! through the storage crate's client library. virtio-blk sees only the [`BlockBackend`].
//!
//! A disk's size is its file's size (`ftvm disk create` makes the file at its full size with
//! nothing written, so never-written blocks read as zeros). Writes are acknowledged once every
//! replica holds them in memory; the guest's FLUSH has every replica that took one fdatasync it.
//!
//! **Nothing fails that retrying could save.** A write or a read goes on being retried through
//! chunkserver deaths, lost leases and an unreachable or restarting master, for as long as it
//! takes; a stall longer than a second is logged, and the longest is reported when the disk is
//! closed. Only what no retry can change ends an operation: a file that is gone, or, for a
//! write, being **fenced out**: the file is bound to a register (`ftvm disk create --fence`) and
//! another side has since won it, so the chunkservers refuse this side's generation. That error
//! is a [`FencedOut`] inside the `io::Error`, which [`FencedOut::find`] picks out of any error
//! chain, so that the VMM halts instead of reporting a failed write.
//!
//! **Fencing.** Writes to a bound file carry (register, generation) from a [`DiskFence`] shared
//! with whoever wins the register (the FT code): set it before opening the disk, and raise it
//! when a later go-live race is won; each write carries the generation current when it starts.

use devices::virtio::{BlockBackend, OutputError};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::client::RetryPolicy;
use storage::error::ErrorKind;
use storage::{Client, Durability, GfsError};

/// How long one client call waits for a master that cannot be reached before it returns: the
/// whole wait when a disk is opened (or `ftvm disk` runs), and one round of a retried read or
/// write, which then tries again.
pub const MASTER_WAIT: Duration = Duration::from_secs(10);
/// A retried operation stalled this long is logged (once, and again when it completes).
const STALL_WARNING: Duration = Duration::from_secs(1);
/// An operation that went through but took this long is logged: gfs answers slowly (a slow
/// chunkserver, say), which holds up the guest's writes.
const SLOW_WARNING: Duration = Duration::from_millis(250);
/// At most one "answers slowly" line per this period.
const SLOW_WARNING_PERIOD: Duration = Duration::from_secs(5);
/// The longest pause between two tries of a stalled operation.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// A fencing token shared by everything that writes one VM's gfs disks: (register,
/// generation), or nothing for a VM that has not won a register.
#[derive(Clone, Debug, Default)]
pub struct DiskFence(Arc<Mutex<Option<(String, u64)>>>);

impl DiskFence {
    /// Writes from now on carry `generation` of `register` (e.g. `ft.NAME`).
    pub fn set(&self, register: &str, generation: u64) {
        *self.lock() = Some((register.to_owned(), generation));
    }

    /// The token writes carry now.
    pub fn get(&self) -> Option<(String, u64)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, u64)>> {
        // The value is replaced whole, so a panic elsewhere cannot leave it half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a VM's gfs disks are served, and the fencing token their writes carry.
#[derive(Clone, Debug, Default)]
pub struct GfsAccess {
    master: Option<String>,
    fence: DiskFence,
}

impl GfsAccess {
    /// Disks on the gfs cluster of master `master` (`host:port`, from `--gfs-master` or
    /// `GFS_MASTER`); `None` is fine while no disk is on gfs.
    pub fn new(master: Option<String>) -> Self {
        Self { master: master.filter(|m| !m.is_empty()), fence: DiskFence::default() }
    }

    /// The master named by `GFS_MASTER`, if set (a restore, which has no `--gfs-master`).
    pub fn from_env() -> Self {
        Self::new(std::env::var("GFS_MASTER").ok())
    }

    /// Writes carry `fence`'s token (set it before the disks are opened).
    pub fn with_fence(mut self, fence: DiskFence) -> Self {
        self.fence = fence;
        self
    }

    pub fn master(&self) -> Option<&str> {
        self.master.as_deref()
    }

    pub fn fence(&self) -> &DiskFence {
        &self.fence
    }

    /// A client of the master, for disk `path` (named in the error when there is no master).
    pub fn client(&self, path: &str) -> Result<Client, GfsDiskError> {
        let master = self.master.as_deref().ok_or_else(|| GfsDiskError::NoMaster { path: path.to_owned() })?;
        Ok(Client::with_retry(master, RetryPolicy { master_wait: MASTER_WAIT, ..RetryPolicy::default() }))
    }
}

/// Why a gfs disk could not be opened (or made, imported, exported).
#[derive(Debug, thiserror::Error)]
pub enum GfsDiskError {
    #[error("disk gfs:{path}: no gfs master given: use --gfs-master ADDR or set GFS_MASTER")]
    NoMaster { path: String },
    #[error("disk gfs:{path}: the gfs master at {master} cannot be reached ({cause})")]
    Unreachable { path: String, master: String, cause: String },
    #[error("disk gfs:{path}: no such file on gfs (make one with `ftvm disk create gfs:{path} --size SIZE`)")]
    NotFound { path: String },
    #[error("disk gfs:{path}: is a directory")]
    IsDirectory { path: String },
    #[error("disk gfs:{path}: {size} bytes is smaller than one 512-byte sector")]
    TooSmall { path: String, size: u64 },
    #[error("disk gfs:{path}: its writes are fenced by register {register}: run it {how} (or add `,readonly`)")]
    NeedsFence { path: String, register: String, how: String },
    #[error("disk gfs:{path}: its writes are fenced by register {register}, not by {given}")]
    WrongFence { path: String, register: String, given: String },
    #[error(
        "disk gfs:{path}: not fenced, so a side that lost the go-live race could still write it; \
         make a fenced copy: `ftvm disk export gfs:{path} FILE && ftvm disk import FILE gfs:NEW --fence NAME`"
    )]
    Unfenced { path: String },
    #[error("disk gfs:{path}: already exists")]
    Exists { path: String },
    #[error("disk gfs:{path}: {cause}")]
    Gfs { path: String, cause: GfsError },
}

impl GfsDiskError {
    /// `cause`, met on disk `path` of the cluster of `master`, in the words a user needs.
    pub fn from_gfs(path: &str, master: &str, cause: GfsError) -> Self {
        let path = path.to_owned();
        match cause.kind() {
            Some(ErrorKind::NotFound) => return GfsDiskError::NotFound { path },
            Some(ErrorKind::AlreadyExists) => return GfsDiskError::Exists { path },
            Some(ErrorKind::IsADirectory) => return GfsDiskError::IsDirectory { path },
            _ => {}
        }
        if matches!(cause, GfsError::Connect { .. } | GfsError::Quiet { .. } | GfsError::Closed(_)) {
            return GfsDiskError::Unreachable { path, master: master.to_owned(), cause: cause.to_string() };
        }
        GfsDiskError::Gfs { path, cause }
    }
}

/// A write refused because the disk's register has moved past this side's generation: another
/// side won the go-live race. No retry can help; the VM must halt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fenced out by generation {generation} of register {register} (these writes carry {ours})")]
pub struct FencedOut {
    pub register: String,
    /// The register's generation now (the winner's).
    pub generation: u64,
    /// The generation this side's writes carried.
    pub ours: u64,
}

impl FencedOut {
    /// The `FencedOut` anywhere in `error`'s chain, looking inside `io::Error`s too (whose
    /// `source()` skips the error they wrap) and inside a disk's [`OutputError`], whose message
    /// carries its cause instead of returning it from `source()`.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a FencedOut> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(fenced) = e.downcast_ref::<FencedOut>() {
                return Some(fenced);
            }
            if let Some(fenced) =
                e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref())
            {
                return Some(fenced);
            }
            next = match e.downcast_ref::<OutputError>().and_then(OutputError::io_cause) {
                Some(cause) => Some(cause),
                None => e.source(),
            };
        }
        None
    }
}

/// A VM disk held in one gfs file.
pub struct GfsDisk {
    client: Client,
    path: String,
    size: u64,
    readonly: bool,
    /// The register the file is bound to: writes carry the fence's generation of it.
    register: Option<String>,
    fence: DiskFence,
    /// The longest a read, write or flush has been held up by retries, in ms.
    longest_stall_ms: AtomicU64,
    /// When this disk last said gfs answers slowly.
    slow_warned_at: std::sync::Mutex<Option<Instant>>,
}

impl GfsDisk {
    /// Opens gfs file `path` as a disk. A file bound to a register is writable only by a VM
    /// whose fence names that register, and a fenced VM writes only bound files.
    pub fn open(access: &GfsAccess, path: &str, readonly: bool) -> Result<Self, GfsDiskError> {
        let client = access.client(path)?;
        let master = access.master().unwrap_or_default();
        let stat = client.stat(path).map_err(|e| GfsDiskError::from_gfs(path, master, e))?;
        let path = stat.path;
        if stat.is_dir {
            return Err(GfsDiskError::IsDirectory { path });
        }
        if stat.size < 512 {
            return Err(GfsDiskError::TooSmall { path, size: stat.size });
        }
        if !readonly {
            match (&stat.register, access.fence.get()) {
                (Some(register), None) => {
                    let how = match register.strip_prefix("ft.") {
                        Some(name) => format!("with --ft {name}"),
                        None => format!("under register {register}"),
                    };
                    return Err(GfsDiskError::NeedsFence { path, register: register.clone(), how });
                }
                (Some(register), Some((given, _))) if *register != given => {
                    return Err(GfsDiskError::WrongFence { path, register: register.clone(), given });
                }
                (None, Some(_)) => return Err(GfsDiskError::Unfenced { path }),
                _ => {}
            }
        }
        Ok(Self {
            client: client.with_durability(Durability::Flush),
            path,
            size: stat.size,
            readonly,
            register: stat.register,
            fence: access.fence.clone(),
            longest_stall_ms: AtomicU64::new(0),
            slow_warned_at: std::sync::Mutex::new(None),
        })
    }

    /// The gfs path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The longest a single read, write or flush has waited on retries so far.
    pub fn longest_stall(&self) -> Duration {
        Duration::from_millis(self.longest_stall_ms.load(Ordering::Relaxed))
    }

    /// The client for the next write, carrying the current fencing token for a bound file.
    fn writer(&self) -> (Client, Option<(String, u64)>) {
        match (&self.register, self.fence.get()) {
            (Some(_), Some((register, generation))) => {
                (self.client.fenced(&register, generation), Some((register, generation)))
            }
            _ => (self.client.clone(), None),
        }
    }

    /// Runs `op` until it succeeds or fails in a way no retry can change.
    fn retrying<T>(
        &self,
        what: &str,
        offset: u64,
        len: usize,
        mut op: impl FnMut() -> storage::Result<T>,
    ) -> Result<T, GfsError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut warned = false;
        loop {
            let result = op();
            let stalled = started.elapsed();
            match result {
                Ok(value) => {
                    self.longest_stall_ms.fetch_max(stalled.as_millis() as u64, Ordering::Relaxed);
                    if warned {
                        tracing::warn!(disk = %self.name(), what, offset, len, "gfs {what} went through after {stalled:?}");
                    } else if stalled >= SLOW_WARNING && self.may_say_slow() {
                        tracing::warn!(disk = %self.name(), what, offset, len, "gfs answers slowly: a {what} took {stalled:?}");
                    }
                    return Ok(value);
                }
                Err(e) if is_final(&e) => return Err(e),
                Err(e) => {
                    if !warned && stalled >= STALL_WARNING {
                        warned = true;
                        tracing::warn!(disk = %self.name(), what, offset, len, "gfs {what} held up for {stalled:?}, retrying: {e}");
                    } else {
                        tracing::debug!(disk = %self.name(), what, offset, len, "gfs {what} failed, retrying: {e}");
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Whether the "answers slowly" line may be printed now (once per [`SLOW_WARNING_PERIOD`]).
    fn may_say_slow(&self) -> bool {
        let mut last = self.slow_warned_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < SLOW_WARNING_PERIOD) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// The error for a write the chunkservers refused by fencing.
    fn fenced_out(&self, token: Option<(String, u64)>, refusal: GfsError) -> io::Error {
        let Some((register, ours)) = token.or_else(|| self.register.clone().map(|r| (r, 0))) else {
            return io::Error::other(refusal.to_string());
        };
        // The chunkserver's refusal names the generation it knows (no round trip before the
        // VM halts); the master is asked only when it does not.
        let generation = refusal
            .to_string()
            .rsplit_once("which is at ")
            .and_then(|(_, g)| g.trim().parse().ok())
            .or_else(|| self.client.register(&register).ok().map(|(generation, _)| generation))
            .unwrap_or(ours.saturating_add(1));
        tracing::error!(disk = %self.name(), register, generation, ours, "gfs write fenced out: {refusal}");
        io::Error::other(FencedOut { register, generation, ours })
    }
}

/// Whether retrying cannot change `e`: the file is gone or the request is wrong, or (writes)
/// the writer is fenced out. Everything else (unreachable servers, lost leases, stale
/// replicas, a full chunkserver disk, a master restarting) may pass.
fn is_final(e: &GfsError) -> bool {
    matches!(
        e.kind(),
        Some(
            ErrorKind::Fenced
                | ErrorKind::NotFound
                | ErrorKind::IsADirectory
                | ErrorKind::NotADirectory
                | ErrorKind::InvalidPath
                | ErrorKind::InvalidArgument
        )
    )
}

impl BlockBackend for GfsDisk {
    fn name(&self) -> String {
        format!("gfs:{}", self.path)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len();
        let read = self
            .retrying("read", offset, len, || self.client.read_at(&self.path, offset, buf))
            .map_err(|e| io::Error::other(e.to_string()))?;
        if read < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends at {}", self.name(), offset + read as u64),
            ));
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_with(offset, data, Durability::Flush)
    }

    /// Every replica fdatasyncs before it acknowledges: one round trip instead of a write and a
    /// sync (the FLUSH that follows finds nothing of it left to sync).
    fn write_durable_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_with(offset, data, Durability::Sync)
    }

    fn durable_write_is_cheaper(&self) -> bool {
        true
    }

    fn flush(&self) -> io::Result<()> {
        self.retrying("flush", 0, 0, || self.client.sync(&self.path)).map_err(|e| io::Error::other(e.to_string()))
    }
}

impl GfsDisk {
    /// A write acknowledged at `durability`, retried until it lands or is fenced out.
    fn write_with(&self, offset: u64, data: &[u8], durability: Durability) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > self.size) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("beyond the end of {}", self.name())));
        }
        let mut token = None;
        let result = self.retrying("write", offset, data.len(), || {
            let (client, carried) = self.writer();
            token = carried;
            client.with_durability(durability).write_at(&self.path, offset, data)
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == Some(ErrorKind::Fenced) => Err(self.fenced_out(token, e)),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

impl Drop for GfsDisk {
    fn drop(&mut self) {
        tracing::info!(disk = %self.name(), longest_stall_ms = self.longest_stall().as_millis() as u64, "gfs disk closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_out_is_found_through_io_errors_and_sources() {
        let fenced = FencedOut { register: "ft.vm".into(), generation: 7, ours: 6 };
        let io = io::Error::other(fenced.clone());
        assert_eq!(FencedOut::find(&io), Some(&fenced));
        #[derive(Debug, thiserror::Error)]
        #[error("writing disk 0")]
        struct Outer {
            source: io::Error,
        }
        let outer = Outer { source: io::Error::other(fenced.clone()) };
        assert_eq!(FencedOut::find(&outer), Some(&fenced));
        let anyhow_error = anyhow::Error::new(outer).context("the VM stopped");
        assert_eq!(FencedOut::find(anyhow_error.as_ref()), Some(&fenced));
        let write = OutputError::DiskWrite {
            device: 0,
            path: "gfs:/vm/d".into(),
            offset: 0,
            len: 512,
            cause: io::Error::other(fenced.clone()),
        };
        let failed = OutputError::Failed { device: 0, first: std::sync::Arc::new(write) };
        assert_eq!(FencedOut::find(&failed), Some(&fenced));
        assert_eq!(FencedOut::find(&io::Error::other("disk full")), None);
        assert!(fenced.to_string().contains("fenced out by generation 7"), "{fenced}");
    }

    #[test]
    fn a_fence_is_shared_by_its_clones() {
        let fence = DiskFence::default();
        let access = GfsAccess::new(Some("127.0.0.1:1".into())).with_fence(fence.clone());
        assert_eq!(access.fence().get(), None);
        fence.set("ft.vm", 3);
        assert_eq!(access.fence().get(), Some(("ft.vm".into(), 3)));
    }

    #[test]
    fn no_master_is_one_clear_line() {
        let e = GfsAccess::new(None).client("/vm/d").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "disk gfs:/vm/d: no gfs master given: use --gfs-master ADDR or set GFS_MASTER");
        assert!(GfsAccess::new(Some(String::new())).master().is_none());
    }
}
