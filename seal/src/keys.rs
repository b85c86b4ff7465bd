//! The key directory: one file, [`KEY_FILE`], holding the cluster's 32-byte pre-shared key in
//! hex, readable by its owner only.

use crate::SealError;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file in a key directory that holds the cluster key.
pub const KEY_FILE: &str = "cluster.key";
/// The first word of a key file: the format, so another file is never read as a key.
const HEADER: &str = "ftvm-cluster-key-v1";

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

    /// Reads the key of directory `dir`, refusing a key file others can read.
    pub fn load(dir: &Path) -> Result<ClusterKey, SealError> {
        let path = dir.join(KEY_FILE);
        let meta = std::fs::metadata(&path).map_err(|e| {
            SealError::io(format!("reading the cluster key {} (make one with `gfs keygen DIR`)", path.display()), e)
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SealError::Key(format!(
                "the cluster key {} is readable by others (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| SealError::io(format!("reading {}", path.display()), e))?;
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
}
