//! Checkpoints: the whole master state at some LSN, in one checksummed frame. Written to a
//! temporary file, fsynced, then renamed into place, so a crash leaves either the old set of
//! checkpoints or the new one.

use super::{list_numbered, list_segments, sync_dir};
use crate::error::{GfsError, Result};
use crate::protocol::frame::{self, Kind};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many checkpoints to keep (older log segments are kept as far back as the oldest).
const KEEP: usize = 2;

fn path_for(dir: &Path, lsn: u64) -> PathBuf {
    dir.join(format!("ckpt-{lsn:020}.ckpt"))
}

/// Writes a checkpoint of the state at `lsn`, then drops checkpoints and log segments that are
/// no longer needed.
pub fn write(dir: &Path, lsn: u64, image: &[u8]) -> Result<PathBuf> {
    let mut framed = Vec::with_capacity(image.len() + 16);
    framed.extend_from_slice(&lsn.to_le_bytes());
    frame::encode(Kind::Msg, image, &mut framed)?;
    let path = path_for(dir, lsn);
    let tmp = dir.join(format!("ckpt-{lsn:020}.tmp"));
    let io = |what: &str, e| GfsError::io(format!("{what} {}", tmp.display()), e);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    f.write_all(&framed).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
    sync_dir(dir)?;
    prune(dir)?;
    Ok(path)
}

fn prune(dir: &Path) -> Result<()> {
    let ckpts = list_numbered(dir, "ckpt-", ".ckpt")?;
    if ckpts.len() < KEEP {
        return Ok(());
    }
    let oldest_kept = ckpts[ckpts.len() - KEEP].0;
    for (_, p) in &ckpts[..ckpts.len() - KEEP] {
        let _ = std::fs::remove_file(p);
    }
    let segs = list_segments(dir)?;
    for w in segs.windows(2) {
        // Segment w[0] holds LSNs up to w[1].0 - 1.
        if w[1].0 <= oldest_kept + 1 {
            let _ = std::fs::remove_file(&w[0].1);
        }
    }
    Ok(())
}

/// Checkpoints present, newest first, as (lsn, path).
pub fn candidates(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = list_numbered(dir, "ckpt-", ".ckpt")?;
    v.reverse();
    Ok(v)
}

/// Reads and verifies one checkpoint file; returns its LSN and image bytes.
pub fn read(path: &Path) -> Result<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| GfsError::io(format!("reading {}", path.display()), e))?;
    if bytes.len() < 8 {
        return Err(GfsError::Checkpoint(format!("{} is truncated", path.display())));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&bytes[..8]);
    let lsn = u64::from_le_bytes(l);
    let (kind, payload, used) =
        frame::decode(&bytes[8..]).map_err(|e| GfsError::Checkpoint(format!("{}: {e}", path.display())))?;
    if kind != Kind::Msg || used != bytes.len() - 8 {
        return Err(GfsError::Checkpoint(format!("{} is malformed", path.display())));
    }
    Ok((lsn, payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_detect_damage() {
        let dir = std::env::temp_dir().join(format!("gfs-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = write(&dir, 42, b"hello state").unwrap();
        assert_eq!(read(&p).unwrap(), (42, b"hello state".to_vec()));
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p).is_err());
        std::fs::write(&p, &bytes[..n - 5]).unwrap();
        assert!(read(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
