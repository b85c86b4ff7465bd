//! The health of a chunkserver's data disk. A write that finds no space (ENOSPC) marks the disk
//! full; an I/O error (EIO, or a file system gone read-only) marks it failing. Either way the
//! chunkserver says so once in its log, refuses new chunks, writes and copies with a clear error
//! (so a primary reports the replica as failed and the client retries), and tells the master at
//! once in a heartbeat; the master then places nothing there and gives each chunk it holds a new
//! version without it (`master/lease.rs`). The heartbeat thread probes a sick disk: a full one is
//! usable again once [`ROOM_TO_RESUME`] is free, a failing one once a probe file can be written,
//! synced, read back and removed.

use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::DiskState;
use crate::sync::Unpoisoned;
use crate::util::{is_disk_failure, is_disk_full};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Free space a full disk needs before it takes writes again: room for a few of the largest
/// mutations, so that one write does not fill it straight back.
pub const ROOM_TO_RESUME: u64 = 4 * crate::MAX_MUTATION;
/// Least time between two probes of a sick disk.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The probe file, in the data directory (`.tmp`: removed at start if a probe was cut short).
const PROBE_FILE: &str = "disk-probe.tmp";

struct Health {
    state: DiskState,
    /// Raised at every change of `state`, so heartbeat threads can tell they have not yet
    /// reported the latest one.
    generation: u64,
    last_probe: Option<Instant>,
}

/// What the chunkserver knows of its data disk.
pub struct DiskHealth {
    dir: PathBuf,
    health: Mutex<Health>,
    changed: Condvar,
}

/// The disk state a local error shows, if it shows one. Errors from peers (a copy's source,
/// say) say nothing about this disk and are never classified.
pub fn classify(e: &GfsError) -> Option<DiskState> {
    match e {
        GfsError::Io { cause, .. } if is_disk_full(cause) => Some(DiskState::Full),
        GfsError::Io { cause, .. } if is_disk_failure(cause) => Some(DiskState::Failing),
        GfsError::Fs(r) if r.kind == ErrorKind::DiskFull => Some(DiskState::Full),
        GfsError::Fs(r) if r.kind == ErrorKind::DiskFailed => Some(DiskState::Failing),
        _ => None,
    }
}

impl DiskHealth {
    pub fn new(dir: &Path) -> DiskHealth {
        DiskHealth {
            dir: dir.to_path_buf(),
            health: Mutex::new(Health { state: DiskState::Ok, generation: 0, last_probe: None }),
            changed: Condvar::new(),
        }
    }

    pub fn state(&self) -> DiskState {
        self.health.lock_unpoisoned().state
    }

    /// The state and how many times it has changed.
    pub fn snapshot(&self) -> (DiskState, u64) {
        let h = self.health.lock_unpoisoned();
        (h.state, h.generation)
    }

    /// Notes a local error: a full or failing disk changes the state (said once in the log).
    pub fn observe(&self, e: &GfsError) {
        if let Some(state) = classify(e) {
            self.set(state, &e.to_string());
        }
    }

    fn set(&self, state: DiskState, cause: &str) {
        let mut h = self.health.lock_unpoisoned();
        // A failing disk that is also full stays failing: the worse of the two decides.
        if h.state == state || (h.state == DiskState::Failing && state == DiskState::Full) {
            return;
        }
        let before = h.state;
        h.state = state;
        h.generation += 1;
        h.last_probe = Some(Instant::now());
        drop(h);
        self.changed.notify_all();
        let dir = self.dir.display();
        match state {
            DiskState::Full => {
                tracing::warn!("chunkserver: disk full in {dir}: refusing new chunks and writes ({cause})")
            }
            DiskState::Failing => tracing::error!(
                "chunkserver: disk I/O error in {dir}: refusing new chunks and writes; its replicas go elsewhere ({cause})"
            ),
            DiskState::Ok => tracing::warn!(
                "chunkserver: disk in {dir} usable again (was {}): taking new chunks and writes ({cause})",
                before.describe()
            ),
        }
    }

    /// Refuses a write, a new chunk or a copy while the disk is full or failing.
    pub fn check_writable(&self) -> Result<()> {
        let dir = self.dir.display();
        match self.state() {
            DiskState::Ok => Ok(()),
            DiskState::Full => {
                Err(GfsError::fs(ErrorKind::DiskFull, format!("disk full in {dir}: refusing new chunks and writes")))
            }
            DiskState::Failing => Err(GfsError::fs(
                ErrorKind::DiskFailed,
                format!("disk I/O error in {dir}: refusing new chunks and writes"),
            )),
        }
    }

    /// While the disk is sick, at most every [`PROBE_EVERY`]: checks whether it is usable again.
    pub fn probe(&self) {
        let state = {
            let mut h = self.health.lock_unpoisoned();
            if h.state == DiskState::Ok || h.last_probe.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
                return;
            }
            h.last_probe = Some(Instant::now());
            h.state
        };
        let verdict = match state {
            DiskState::Ok => return,
            DiskState::Full => match free_bytes(&self.dir) {
                Ok(free) if free >= ROOM_TO_RESUME => Ok(format!("{} MiB free", free >> 20)),
                Ok(free) => Err(format!("{} MiB free, {} MiB needed", free >> 20, ROOM_TO_RESUME >> 20)),
                Err(e) => Err(format!("cannot read its free space: {e}")),
            },
            DiskState::Failing => probe_write(&self.dir)
                .map(|()| "a probe file was written, synced, read back and removed".to_string())
                .map_err(|e| e.to_string()),
        };
        match verdict {
            Ok(why) => self.set(DiskState::Ok, &why),
            Err(why) => tracing::debug!(dir = %self.dir.display(), "disk still {}: {why}", state.describe()),
        }
    }

    /// Waits until the state has changed past `seen` (a generation from [`DiskHealth::snapshot`])
    /// or `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) {
        let h = self.health.lock_unpoisoned();
        let _unused = self.changed.wait_timeout_while(h, timeout, |h| h.generation == seen);
    }
}

/// Bytes an unprivileged writer may still use in the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid, writable statvfs; both
    // outlive the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Writes, syncs, reads back and removes a small file in `dir`.
fn probe_write(dir: &Path) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let io = |what: &str, e: std::io::Error| GfsError::io(format!("disk probe: {what} {}", path.display()), e);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let written = (|| {
        let mut f = std::fs::File::create(&path).map_err(|e| io("creating", e))?;
        f.write_all(&pattern).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        let mut back = Vec::new();
        std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut back)).map_err(|e| io("reading", e))?;
        if back != pattern {
            return Err(GfsError::fs(ErrorKind::DiskFailed, format!("disk probe: {} read back wrong", path.display())));
        }
        Ok(())
    })();
    let removed = std::fs::remove_file(&path).map_err(|e| io("removing", e));
    written.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(errno: i32) -> GfsError {
        GfsError::io("writing chunk 1", std::io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn only_local_no_space_and_io_errors_mark_the_disk() {
        assert_eq!(classify(&io_error(libc::ENOSPC)), Some(DiskState::Full));
        assert_eq!(classify(&io_error(libc::EIO)), Some(DiskState::Failing));
        assert_eq!(classify(&io_error(libc::EROFS)), Some(DiskState::Failing));
        assert_eq!(classify(&io_error(libc::ENOENT)), None);
        assert_eq!(classify(&io_error(libc::EACCES)), None);
        assert_eq!(classify(&GfsError::fs(ErrorKind::DiskFull, "x")), Some(DiskState::Full));
        assert_eq!(classify(&GfsError::fs(ErrorKind::DiskFailed, "x")), Some(DiskState::Failing));
        assert_eq!(classify(&GfsError::fs(ErrorKind::Corrupt, "x")), None);
        // A copy's source that is full says nothing about this disk.
        let remote = GfsError::Remote {
            peer: "10.0.0.9:7001".into(),
            error: crate::error::RemoteError::new(ErrorKind::DiskFailed, "x"),
        };
        assert_eq!(classify(&remote), None);
    }

    #[test]
    fn a_sick_disk_refuses_writes_and_a_probe_brings_it_back() {
        let dir = std::env::temp_dir().join(format!("gfs-disk-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let health = DiskHealth::new(&dir);
        health.check_writable().unwrap();
        let (_, seen) = health.snapshot();
        health.observe(&io_error(libc::ENOSPC));
        assert_eq!(health.snapshot(), (DiskState::Full, seen + 1));
        assert_eq!(health.check_writable().unwrap_err().kind(), Some(ErrorKind::DiskFull));
        // Once failing, a later "full" does not hide it.
        health.observe(&io_error(libc::EIO));
        health.observe(&io_error(libc::ENOSPC));
        assert_eq!(health.state(), DiskState::Failing);
        let e = health.check_writable().unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::DiskFailed));
        assert!(e.to_string().contains("disk I/O error in"), "{e}");
        // A waiter for a change it has not seen returns at once.
        let t0 = Instant::now();
        health.wait_change(seen, Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // This directory's disk works: the probe (after its pause) finds it usable again.
        std::thread::sleep(PROBE_EVERY);
        health.probe();
        assert_eq!(health.state(), DiskState::Ok);
        assert!(!dir.join(PROBE_FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
