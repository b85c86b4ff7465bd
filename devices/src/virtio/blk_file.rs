//! The file backend of virtio-blk: a regular file (or a host block device) holding the disk.

use super::disk::BlockBackend;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: no such file")]
    NotFound { path: PathBuf },
    #[error("disk {path}: permission denied opening it {mode} (add `,readonly` for a read-only disk)")]
    PermissionDenied { path: PathBuf, mode: &'static str },
    #[error("disk {path}: is a directory")]
    IsDirectory { path: PathBuf },
    #[error("disk {path}: is neither a regular file nor a block device")]
    NotAFile { path: PathBuf },
    #[error("disk {path}: {size} bytes is smaller than one 512-byte sector")]
    TooSmall { path: PathBuf, size: u64 },
    // The cause is part of the message, so it is no `source` (a field of that name would be):
    // a chain printed whole would say it twice.
    #[error("disk {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open disk image. Reads and writes are positional, so one `DiskFile` can be shared
/// (behind an `Arc`) by the device's reads and the output stage's writes.
#[derive(Debug)]
pub struct DiskFile {
    path: PathBuf,
    file: File,
    readonly: bool,
    size: u64,
}

impl DiskFile {
    pub fn open(path: &Path, readonly: bool) -> Result<Self, DiskError> {
        let owned = || path.to_owned();
        // O_NONBLOCK: opening a FIFO named as a disk must not wait for a writer; the type is
        // checked below and the flag cleared.
        let file =
            OpenOptions::new().read(true).write(!readonly).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::NotFound => DiskError::NotFound { path: owned() },
                    io::ErrorKind::PermissionDenied => DiskError::PermissionDenied {
                        path: owned(),
                        mode: if readonly { "read-only" } else { "read-write" },
                    },
                    _ if e.raw_os_error() == Some(libc::EISDIR) => DiskError::IsDirectory { path: owned() },
                    _ => DiskError::Io { path: owned(), cause: e },
                }
            })?;
        let io_err = |source| DiskError::Io { path: owned(), cause: source };
        let kind = file.metadata().map_err(io_err)?.file_type();
        if kind.is_dir() {
            return Err(DiskError::IsDirectory { path: owned() });
        }
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotAFile { path: owned() });
        }
        clear_nonblocking(&file).map_err(io_err)?;
        // Seeking to the end gives the size of block devices as well as of regular files.
        let size = (&file).seek(SeekFrom::End(0)).map_err(io_err)?;
        if size < 512 {
            return Err(DiskError::TooSmall { path: owned(), size });
        }
        Ok(Self { path: owned(), file, readonly, size })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockBackend for DiskFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.write_all_at(data, offset)?;
        power_cut_test_hook();
        Ok(())
    }

    /// fdatasync: the file's data and the metadata needed to read it back.
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Test hook for crash tests (`tests/tests/kv_compaction.rs`): with
/// `FTVM_TEST_ABORT_AFTER_DISK_WRITES=N`, the process kills itself (SIGKILL: nothing flushed,
/// as a power cut looks to the guest) right after the N-th disk write of the process is applied.
fn power_cut_test_hook() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| std::env::var("FTVM_TEST_ABORT_AFTER_DISK_WRITES").ok()?.parse().ok());
    if limit.is_some_and(|n| WRITES.fetch_add(1, Ordering::SeqCst) + 1 == n) {
        // SAFETY: kill(2) of this very process; SIGKILL cannot be caught.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::BlockBackend;

    #[test]
    fn opens_reads_writes_and_flushes() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &[7u8; 4096]).unwrap();
        let disk = DiskFile::open(tmp.path(), false).unwrap();
        assert_eq!(disk.size(), 4096);
        disk.write_at(512, b"hello").unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 6];
        disk.read_at(511, &mut buf).unwrap();
        assert_eq!(&buf, b"\x07hello");
    }

    #[test]
    fn errors_name_the_path_and_the_problem() {
        let missing = Path::new("/nonexistent/ftvm-disk.img");
        let err = DiskFile::open(missing, false).unwrap_err();
        assert!(matches!(err, DiskError::NotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/ftvm-disk.img"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let err = DiskFile::open(dir.path(), true).unwrap_err();
        assert!(matches!(err, DiskError::IsDirectory { .. }), "{err}");

        let tiny = tempfile::NamedTempFile::new().unwrap();
        let err = DiskFile::open(tiny.path(), true).unwrap_err();
        assert!(matches!(err, DiskError::TooSmall { size: 0, .. }), "{err}");
    }

    #[test]
    fn a_fifo_or_a_character_device_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path for the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for readonly in [true, false] {
            let err = DiskFile::open(&fifo, readonly).unwrap_err();
            assert!(matches!(err, DiskError::NotAFile { .. }), "{err}");
        }
        let err = DiskFile::open(Path::new("/dev/zero"), true).unwrap_err();
        assert!(matches!(err, DiskError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn a_readonly_disk_refuses_writes() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &[0u8; 1024]).unwrap();
        let disk = DiskFile::open(tmp.path(), true).unwrap();
        assert!(disk.readonly());
        assert!(disk.write_at(0, b"x").is_err());
    }
}
