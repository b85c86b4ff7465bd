//! The key directory: one file, [`KEY_FILE`], holding the cluster's 32-byte pre-shared key in
//! hex, readable by its owner only.

use crate::SealError;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file in a key directory that holds the cluster key.
pub const KEY_FILE: &str = "cluster.key";
/// The first word of a key file: the format, so another file is never read as a key.
const HEADER: &str = "ftvm-cluster-key-v1";
/// The most bytes a key file may hold: its header and 64 hex digits take 85, the rest is room
/// for whitespace an editor adds.
pub const MAX_KEY_FILE: u64 = 256;

/// The pre-shared key every member of a cluster holds.
pub struct ClusterKey {
    secret: [u8; 32],
    fingerprint: String,
}

impl ClusterKey {
    pub(crate) fn from_secret(secret: [u8; 32]) -> Self {
        let digest = blake3::derive_key("ftvm seal 2026-12 cluster key fingerprint", &secret);
        let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        ClusterKey { secret, fingerprint }
    }

    /// Reads the key of directory `dir`, refusing a key file others can read, or one that is
    /// not a regular file of at most [`MAX_KEY_FILE`] bytes. The file is looked at before it is
    /// opened and opened with `O_NONBLOCK`, so a FIFO put in its place is refused at once
    /// instead of blocking the command until a writer comes, and a huge file is never read.
    pub fn load(dir: &Path) -> Result<ClusterKey, SealError> {
        let path = dir.join(KEY_FILE);
        let meta = std::fs::metadata(&path).map_err(|e| {
            SealError::io(format!("reading the cluster key {} (make one with `gfs keygen DIR`)", path.display()), e)
        })?;
        check_key_file(&path, &meta)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| SealError::io(format!("reading {}", path.display()), e))?;
        // The path may have been replaced between the look and the open: check what was opened.
        let opened = file.metadata().map_err(|e| SealError::io(format!("reading {}", path.display()), e))?;
        check_key_file(&path, &opened)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SealError::io(format!("reading {}", path.display()), e))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(too_large(&path, bytes.len() as u64));
        }
        let text = String::from_utf8_lossy(&bytes);
        let bad = || SealError::Key(format!("{} is not a cluster key made by `gfs keygen`", path.display()));
        let mut words = text.split_whitespace();
        if words.next() != Some(HEADER) {
            return Err(bad());
        }
        let hex = words.next().ok_or_else(bad)?;
        if words.next().is_some() || hex.len() != 64 {
            return Err(bad());
        }
        let mut secret = [0u8; 32];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(ClusterKey::from_secret(secret))
    }

    /// The key itself, for the handshake.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// A short public name of the key (no secret can be learnt from it), for logs.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Refuses a key file that is not a regular file of ours: anything else could block a read (a
/// FIFO, a device), never end (`/dev/zero`), or be read by others.
fn check_key_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), SealError> {
    let kind = meta.file_type();
    let not_regular = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("a special file")
    };
    if let Some(what) = not_regular {
        return Err(SealError::Key(format!("the cluster key {} is {what}, not a regular file", path.display())));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SealError::Key(format!(
            "the cluster key {} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(too_large(path, meta.len()));
    }
    Ok(())
}

fn too_large(path: &Path, size: u64) -> SealError {
    SealError::Key(format!(
        "{} is not a cluster key made by `gfs keygen`: {size} bytes, more than a key file's {MAX_KEY_FILE}",
        path.display()
    ))
}

/// Makes a new cluster key in directory `dir` (made if missing, mode 0700), written mode 0600;
/// an existing key is kept unless `force`. Returns the key file's path and the new key.
pub fn generate(dir: &Path, force: bool) -> Result<(PathBuf, ClusterKey), SealError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SealError::io(format!("making the key directory {}", dir.display()), e))?;
    let path = dir.join(KEY_FILE);
    if path.exists() && !force {
        return Err(SealError::Key(format!(
            "{} exists: keeping it (give --force to replace it; every member of the cluster then needs the new key)",
            path.display()
        )));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| SealError::Key(format!("the system's random source failed: {e}")))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Written beside the key and renamed over it: a crash never leaves half a key.
    let staged = dir.join(format!(".{KEY_FILE}.new"));
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(|e| SealError::io(format!("writing {}", staged.display()), e))?;
    let write = |file: &mut std::fs::File| -> std::io::Result<()> {
        writeln!(file, "{HEADER} {hex}")?;
        file.sync_all()
    };
    write(&mut file).map_err(|e| SealError::io(format!("writing {}", staged.display()), e))?;
    std::fs::rename(&staged, &path)
        .map_err(|e| SealError::io(format!("renaming {} into place", staged.display()), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((path, ClusterKey::from_secret(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_back_is_private_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (path, made) = generate(dir.path(), false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = ClusterKey::load(dir.path()).unwrap();
        assert_eq!(loaded.secret(), made.secret());
        assert_eq!(loaded.fingerprint(), made.fingerprint());

        let refused = generate(dir.path(), false).err().expect("an existing key is kept");
        assert!(refused.to_string().contains("--force"), "{refused}");
        assert_eq!(ClusterKey::load(dir.path()).unwrap().secret(), made.secret());

        let (_, replaced) = generate(dir.path(), true).unwrap();
        assert_ne!(replaced.secret(), made.secret());
        assert_eq!(ClusterKey::load(dir.path()).unwrap().secret(), replaced.secret());
    }

    #[test]
    fn a_key_others_can_read_or_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = generate(dir.path(), false).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ClusterKey::load(dir.path()).err().expect("a readable key is refused");
        assert!(error.to_string().contains("readable by others"), "{error}");

        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = ClusterKey::load(dir.path()).err().expect("a foreign file is refused");
        assert!(error.to_string().contains("not a cluster key"), "{error}");

        let missing = ClusterKey::load(&dir.path().join("nowhere")).err().expect("no key");
        assert!(missing.to_string().contains("gfs keygen"), "{missing}");
    }

    /// `--keys DIR` where DIR/cluster.key is a FIFO: the load used to block in open(2) until a
    /// writer came (forever, as far as the user could tell).
    #[test]
    fn a_fifo_in_place_of_the_key_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `name` is a valid NUL-terminated path for the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "{}", std::io::Error::last_os_error());
        let (sender, receiver) = std::sync::mpsc::channel();
        let key_dir = dir.path().to_owned();
        // On a thread of its own: a load that blocks leaves the thread behind, not the test.
        std::thread::spawn(move || {
            let _ = sender.send(ClusterKey::load(&key_dir).err().map(|e| e.to_string()));
        });
        let error = receiver
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("loading a FIFO as the key blocked")
            .expect("a FIFO is refused");
        assert!(error.contains("is a FIFO (named pipe), not a regular file"), "{error}");
    }

    #[test]
    fn a_key_file_too_large_or_not_a_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        // A real key with 1 MiB of blanks after it: a key file holds a key and nothing more.
        let (_, _) = generate(dir.path(), false).unwrap();
        let mut padded = std::fs::read(&path).unwrap();
        padded.resize(1 << 20, b' ');
        std::fs::write(&path, &padded).unwrap();
        let error = ClusterKey::load(dir.path()).err().expect("a huge key file is refused").to_string();
        assert!(error.contains("1048576 bytes, more than a key file's 256"), "{error}");

        std::fs::remove_file(&path).unwrap();
        std::fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        let error = ClusterKey::load(dir.path()).err().expect("a directory is refused").to_string();
        assert!(error.contains("is a directory, not a regular file"), "{error}");
    }
}
