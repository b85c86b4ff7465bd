//! The files a user names to ftvm (kernels, initrds, logs, snapshots): opened without ever
//! blocking, accepted only when they are regular files, and read only as far as a bound the
//! caller knows in advance (for a kernel or an initrd: what fits in guest RAM).
//!
//! A path is first looked at with `stat`, so a FIFO or a device is refused before anything opens
//! it. Between that look and the open the path may change, so the open itself uses `O_NONBLOCK`
//! (an open of a FIFO then returns at once instead of waiting for the other end, uninterruptibly
//! as far as the user can tell) and the type is checked again on the open descriptor with
//! `fstat`; the flag is cleared before the file is handed out.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Why a named file cannot be used. The messages are meant to follow `<what> <path>: `.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("no such file")]
    NotFound,
    #[error("permission denied")]
    PermissionDenied,
    #[error("is a directory, not a file")]
    Directory,
    #[error("is a {0}, not a regular file (ftvm reads and writes only regular files here)")]
    NotRegular(&'static str),
    #[error("{size} bytes is more than {limit} bytes, the most that can fit")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for InputFileError {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::NotFound => InputFileError::NotFound,
            io::ErrorKind::PermissionDenied => InputFileError::PermissionDenied,
            _ if error.raw_os_error() == Some(libc::EISDIR) => InputFileError::Directory,
            _ => InputFileError::Io(error),
        }
    }
}

/// What kind of file `metadata` describes, in words, unless it is a regular file.
fn refuse_unless_regular(metadata: &Metadata) -> Result<(), InputFileError> {
    let kind = metadata.file_type();
    if kind.is_file() {
        Ok(())
    } else if kind.is_dir() {
        Err(InputFileError::Directory)
    } else if kind.is_fifo() {
        Err(InputFileError::NotRegular("FIFO (named pipe)"))
    } else if kind.is_char_device() {
        Err(InputFileError::NotRegular("character device"))
    } else if kind.is_block_device() {
        Err(InputFileError::NotRegular("block device"))
    } else if kind.is_socket() {
        Err(InputFileError::NotRegular("socket"))
    } else {
        Err(InputFileError::NotRegular("special file"))
    }
}

/// Opens with `O_NONBLOCK`, checks the open file is regular, then clears the flag (regular-file
/// I/O ignores it, but a descriptor handed out should say what it is).
fn open_checked(path: &Path, options: &mut OpenOptions) -> Result<File, InputFileError> {
    if let Ok(metadata) = std::fs::metadata(path) {
        refuse_unless_regular(&metadata)?;
    }
    let file = options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).map_err(|error| {
        // A write-only open of a FIFO without a reader fails with ENXIO under O_NONBLOCK: the
        // path turned into a FIFO after the look above.
        if error.raw_os_error() == Some(libc::ENXIO) {
            InputFileError::NotRegular("FIFO (named pipe)")
        } else {
            InputFileError::from(error)
        }
    })?;
    refuse_unless_regular(&file.metadata()?)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor this function's caller owns; no memory is
    // passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a regular file for reading.
pub fn open(path: &Path) -> Result<File, InputFileError> {
    open_checked(path, OpenOptions::new().read(true))
}

/// Creates (or truncates) a regular file for writing: a log or a snapshot. An existing path that
/// is not a regular file is refused and left alone.
pub fn create(path: &Path) -> Result<File, InputFileError> {
    let file = open_checked(path, OpenOptions::new().write(true).create(true))?;
    // Truncated only now that it is known to be a regular file of ours to overwrite.
    file.set_len(0)?;
    Ok(file)
}

/// Checks that `path`, if it exists, is a regular file that could be replaced: for outputs
/// written later in the run (a snapshot), so that a bad path is refused before the run starts.
pub fn check_writable_target(path: &Path) -> Result<(), InputFileError> {
    match std::fs::metadata(path) {
        Ok(metadata) => refuse_unless_regular(&metadata),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The first `n` bytes of a regular file (fewer if it is shorter), for checking its magic before
/// reading the rest.
pub fn read_head(file: &mut File, n: usize) -> Result<Vec<u8>, InputFileError> {
    let mut head = Vec::with_capacity(n);
    file.by_ref().take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads the rest of `file` onto `bytes`, refusing (before reading) a file whose size is larger
/// than `limit` and (while reading) one that grows past it.
pub fn read_rest_bounded(file: &mut File, bytes: &mut Vec<u8>, limit: u64) -> Result<(), InputFileError> {
    let size = file.metadata()?.len();
    if size > limit {
        return Err(InputFileError::TooLarge { size, limit });
    }
    bytes.reserve(size.saturating_sub(bytes.len() as u64) as usize);
    let room = limit.saturating_sub(bytes.len() as u64);
    // One byte past the room tells a file that grew while it was read from one that fits.
    file.by_ref().take(room + 1).read_to_end(bytes)?;
    if bytes.len() as u64 > limit {
        return Err(InputFileError::TooLarge { size: bytes.len() as u64, limit });
    }
    Ok(())
}

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, InputFileError> {
    let mut file = open(path)?;
    let mut bytes = Vec::new();
    read_rest_bounded(&mut file, &mut bytes, limit)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    #[test]
    fn a_fifo_is_refused_for_reading_and_writing_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        assert!(matches!(open(&fifo), Err(InputFileError::NotRegular(kind)) if kind.contains("FIFO")));
        assert!(matches!(create(&fifo), Err(InputFileError::NotRegular(kind)) if kind.contains("FIFO")));
        assert!(matches!(read_bounded(&fifo, 10), Err(InputFileError::NotRegular(_))));
        assert!(check_writable_target(&fifo).is_err());
    }

    #[test]
    fn devices_and_directories_are_refused() {
        assert!(matches!(open(Path::new("/dev/zero")), Err(InputFileError::NotRegular("character device"))));
        assert!(matches!(create(Path::new("/dev/null")), Err(InputFileError::NotRegular("character device"))));
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(open(dir.path()), Err(InputFileError::Directory)));
        assert!(matches!(open(&dir.path().join("missing")), Err(InputFileError::NotFound)));
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big");
        let file = File::create(&path).expect("create");
        file.set_len(1 << 40).expect("sparse 1 TiB");
        match read_bounded(&path, 1 << 20) {
            Err(InputFileError::TooLarge { size, limit }) => assert_eq!((size, limit), (1 << 40, 1 << 20)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        std::fs::write(&path, b"0123456789").expect("write");
        assert_eq!(read_bounded(&path, 10).expect("fits exactly"), b"0123456789");
        assert!(matches!(read_bounded(&path, 9), Err(InputFileError::TooLarge { .. })));
    }

    #[test]
    fn create_truncates_a_regular_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out");
        std::fs::write(&path, b"old contents").expect("write");
        drop(create(&path).expect("create"));
        assert_eq!(std::fs::metadata(&path).expect("metadata").len(), 0);
    }
}
