//! Reading the operation log back at startup.

use super::{decode_entry, list_segments, Entry};
use crate::error::{GfsError, Result};
use std::path::Path;

/// Replays every entry with an LSN above `after_lsn`, in order, through `apply`. A torn or
/// corrupt tail of the last non-empty segment is cut off (the file is truncated); damage
/// anywhere else is an error. Returns the last LSN seen (`after_lsn` if none).
pub fn replay(dir: &Path, after_lsn: u64, mut apply: impl FnMut(Entry) -> Result<()>) -> Result<u64> {
    let segments = list_segments(dir)?;
    let mut last = after_lsn;
    let n = segments.len();
    for (i, (first, path)) in segments.iter().enumerate() {
        if i + 1 < n && segments[i + 1].0 <= after_lsn + 1 {
            continue; // wholly covered by the checkpoint
        }
        let bytes = std::fs::read(path).map_err(|e| GfsError::io(format!("reading {}", path.display()), e))?;
        let mut off = 0usize;
        let mut expect = *first;
        while off < bytes.len() {
            match decode_entry(&bytes[off..]) {
                Ok((entry, used)) => {
                    if entry.lsn != expect {
                        return Err(GfsError::OpLog(format!(
                            "{}: expected LSN {expect}, found {}",
                            path.display(),
                            entry.lsn
                        )));
                    }
                    expect += 1;
                    off += used;
                    if entry.lsn > after_lsn {
                        if entry.lsn != last + 1 {
                            return Err(GfsError::OpLog(format!("gap in the log: LSN {} follows {last}", entry.lsn)));
                        }
                        last = entry.lsn;
                        apply(entry)?;
                    }
                }
                Err(e) => {
                    let later_data = segments[i + 1..]
                        .iter()
                        .any(|(_, p)| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(true));
                    if later_data {
                        return Err(GfsError::OpLog(format!(
                            "{} is damaged at byte {off} ({e}) and is not the log's tail",
                            path.display()
                        )));
                    }
                    tracing::warn!(
                        "cutting torn log tail of {} at byte {off} ({} bytes dropped): {e}",
                        path.display(),
                        bytes.len() - off
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| GfsError::io(format!("opening {}", path.display()), e))?;
                    f.set_len(off as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| GfsError::io(format!("truncating {}", path.display()), e))?;
                    break;
                }
            }
        }
    }
    Ok(last)
}

/// Reads (without changing anything) up to `max` entries after `after_lsn`, stopping at the
/// first damaged or incomplete record. `None` if the log no longer reaches back that far.
pub fn read_after(dir: &Path, after_lsn: u64, max: usize) -> Result<Option<Vec<Entry>>> {
    let segments = list_segments(dir)?;
    if segments.first().is_some_and(|(first, _)| *first > after_lsn + 1) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, (_, path)) in segments.iter().enumerate() {
        if i + 1 < segments.len() && segments[i + 1].0 <= after_lsn + 1 {
            continue;
        }
        let bytes = std::fs::read(path).map_err(|e| GfsError::io(format!("reading {}", path.display()), e))?;
        let mut off = 0;
        while off < bytes.len() && out.len() < max {
            let Ok((entry, used)) = decode_entry(&bytes[off..]) else { break };
            off += used;
            if entry.lsn > after_lsn {
                out.push(entry);
            }
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::super::{OpLog, Record};
    use super::*;

    fn rec(i: u64) -> Record {
        Record::Mkdir { path: format!("/d{i}") }
    }

    fn collect(dir: &Path, after: u64) -> Vec<Entry> {
        let mut v = Vec::new();
        replay(dir, after, |e| {
            v.push(e);
            Ok(())
        })
        .unwrap();
        v
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gfs-oplog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn append_rotate_replay() {
        let dir = tempdir("rotate");
        let log = OpLog::open(&dir, 1).unwrap();
        for i in 0..10 {
            assert_eq!(log.append(rec(i)).unwrap(), i + 1);
        }
        assert_eq!(log.rotate().unwrap(), 10);
        for i in 10..15 {
            log.append(rec(i)).unwrap();
        }
        assert_eq!(collect(&dir, 0).len(), 15);
        let tail = collect(&dir, 10);
        assert_eq!(tail.len(), 5);
        assert_eq!(tail[0].lsn, 11);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn torn_tail_is_cut() {
        let dir = tempdir("torn");
        let log = OpLog::open(&dir, 1).unwrap();
        for i in 0..5 {
            log.append(rec(i)).unwrap();
        }
        drop(log);
        let (_, path) = list_segments(&dir).unwrap().pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        // Tear the last entry in half.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        assert_eq!(collect(&dir, 0).len(), 4);
        // The file was cut, and a new log continues cleanly after it.
        let log = OpLog::open(&dir, 5).unwrap();
        log.append(rec(9)).unwrap();
        let all = collect(&dir, 0);
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].record, rec(9));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn damage_before_the_tail_is_an_error() {
        let dir = tempdir("mid");
        let log = OpLog::open(&dir, 1).unwrap();
        for i in 0..5 {
            log.append(rec(i)).unwrap();
        }
        log.rotate().unwrap();
        log.append(rec(5)).unwrap();
        let (_, first) = list_segments(&dir).unwrap().remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        assert!(replay(&dir, 0, |_| Ok(())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
