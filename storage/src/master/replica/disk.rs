//! The Raft log on disk. Segments `raft-NNNNNNNNNNNNNNNNNNNN` hold checksummed frames, each a
//! batch of entries or a hard state; reading them in order (a later entry replaces any at its
//! index and after) rebuilds the log. After each snapshot a new segment is written whole and
//! the older ones removed. Snapshots are checkpoints (`oplog::checkpoint`) named by their Raft
//! index and holding the term with the state image.

use super::store::Core;
use crate::error::{GfsError, Result};
use crate::oplog::{checkpoint, list_numbered, sync_dir};
use crate::protocol::frame::{self, Kind};
use protobuf::ProtobufEnum;
use raft::prelude::{ConfState, Entry, EntryType, HardState};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
enum DiskRecord {
    Entries(Vec<DiskEntry>),
    Hard { term: u64, vote: u64, commit: u64 },
}

#[derive(Serialize, Deserialize)]
struct DiskEntry {
    index: u64,
    term: u64,
    kind: i32,
    data: Vec<u8>,
    context: Vec<u8>,
}

/// What a snapshot's checkpoint file holds besides its index.
#[derive(Serialize, Deserialize)]
struct SnapFile {
    term: u64,
    image: Vec<u8>,
}

/// The segment being appended to.
pub struct DiskLog {
    dir: PathBuf,
    file: File,
    seq: u64,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("raft-{seq:020}"))
}

fn encode(rec: &DiskRecord, out: &mut Vec<u8>) -> Result<()> {
    let bytes = postcard::to_stdvec(rec).map_err(|e| GfsError::Codec(e.to_string()))?;
    frame::encode(Kind::Msg, &bytes, out)
}

fn to_disk(e: &Entry) -> DiskEntry {
    DiskEntry {
        index: e.index,
        term: e.term,
        kind: e.get_entry_type().value(),
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

fn from_disk(d: DiskEntry) -> Result<Entry> {
    let kind =
        EntryType::from_i32(d.kind).ok_or_else(|| GfsError::OpLog(format!("unknown Raft entry type {}", d.kind)))?;
    let mut e =
        Entry { index: d.index, term: d.term, data: d.data.into(), context: d.context.into(), ..Default::default() };
    e.set_entry_type(kind);
    Ok(e)
}

fn hard_record(h: &HardState) -> DiskRecord {
    DiskRecord::Hard { term: h.term, vote: h.vote, commit: h.commit }
}

/// Rebuilds the log from `dir` (the newest valid snapshot, then every segment) and opens the
/// last segment for appending. `conf` is the fixed set of replicas.
pub fn load(dir: &Path, conf: ConfState) -> Result<(Core, DiskLog)> {
    let mut core = Core { conf, ..Core::default() };
    for (_, path) in checkpoint::candidates(dir)? {
        let snap = checkpoint::read(&path).and_then(|(index, bytes)| {
            let f: SnapFile =
                postcard::from_bytes(&bytes).map_err(|e| GfsError::Checkpoint(format!("{}: {e}", path.display())))?;
            Ok((index, f))
        });
        match snap {
            Ok((index, f)) => {
                tracing::info!(index, "loaded Raft snapshot {}", path.display());
                core.compact(index, f.term, f.image);
                core.hard.commit = index;
                core.hard.term = f.term;
                break;
            }
            Err(e) => tracing::warn!("skipping snapshot: {e}"),
        }
    }
    let segments = list_numbered(dir, "raft-", "")?;
    let n = segments.len();
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| GfsError::io(format!("reading {}", path.display()), e))?;
        let mut off = 0;
        while off < bytes.len() {
            let decoded = frame::decode(&bytes[off..]).and_then(|(kind, payload, used)| {
                if kind != Kind::Msg {
                    return Err(GfsError::OpLog("unexpected frame kind in the Raft log".into()));
                }
                let rec: DiskRecord = postcard::from_bytes(payload).map_err(|e| GfsError::Codec(e.to_string()))?;
                Ok((rec, used))
            });
            let (rec, used) = match decoded {
                Ok(r) => r,
                Err(e) if i + 1 == n => {
                    tracing::warn!("cutting the torn tail of {} at byte {off}: {e}", path.display());
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| GfsError::io(format!("opening {}", path.display()), e))?;
                    f.set_len(off as u64)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| GfsError::io(format!("truncating {}", path.display()), e))?;
                    break;
                }
                Err(e) => {
                    return Err(GfsError::OpLog(format!(
                        "{} is damaged at byte {off} and is not the tail: {e}",
                        path.display()
                    )))
                }
            };
            off += used;
            match rec {
                DiskRecord::Hard { term, vote, commit } => {
                    core.hard.term = term.max(core.hard.term);
                    core.hard.vote = vote;
                    core.hard.commit = commit.max(core.snap_index);
                }
                DiskRecord::Entries(ents) => {
                    let ents: Vec<Entry> =
                        ents.into_iter().filter(|e| e.index > core.snap_index).map(from_disk).collect::<Result<_>>()?;
                    if !core.append(&ents) {
                        return Err(GfsError::OpLog(format!(
                            "{}: entries from index {} leave a gap after {}",
                            path.display(),
                            ents.first().map(|e| e.index).unwrap_or(0),
                            core.last_index()
                        )));
                    }
                }
            }
        }
    }
    core.hard.commit = core.hard.commit.min(core.last_index());
    let log = match segments.last() {
        Some(&(seq, ref path)) => {
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| GfsError::io(format!("opening {}", path.display()), e))?;
            DiskLog { dir: dir.to_path_buf(), file, seq }
        }
        None => DiskLog::create(dir, 1, &[])?,
    };
    Ok((core, log))
}

impl DiskLog {
    fn create(dir: &Path, seq: u64, initial: &[u8]) -> Result<DiskLog> {
        let path = segment_path(dir, seq);
        let io = |what: &str, e| GfsError::io(format!("{what} {}", path.display()), e);
        let mut file =
            OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(|e| io("creating", e))?;
        file.write_all(initial).and_then(|_| file.sync_all()).map_err(|e| io("writing", e))?;
        sync_dir(dir)?;
        Ok(DiskLog { dir: dir.to_path_buf(), file, seq })
    }

    /// Appends entries and the hard state; on disk (fsynced) when this returns if `sync`.
    pub fn append(&mut self, ents: &[Entry], hard: Option<&HardState>, sync: bool) -> Result<()> {
        let mut buf = Vec::new();
        if !ents.is_empty() {
            encode(&DiskRecord::Entries(ents.iter().map(to_disk).collect()), &mut buf)?;
        }
        if let Some(h) = hard {
            encode(&hard_record(h), &mut buf)?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&buf)
            .and_then(|_| if sync { self.file.sync_data() } else { Ok(()) })
            .map_err(|e| GfsError::io(format!("appending to the Raft log in {}", self.dir.display()), e))
    }

    /// Stores `core`'s snapshot as a checkpoint, then starts a new segment holding only what
    /// follows it, and removes the older segments.
    pub fn save_snapshot(&mut self, core: &Core) -> Result<()> {
        let file = SnapFile { term: core.snap_term, image: core.snap_data.clone() };
        let bytes = postcard::to_stdvec(&file).map_err(|e| GfsError::Codec(e.to_string()))?;
        checkpoint::write(&self.dir, core.snap_index, &bytes)?;
        let mut initial = Vec::new();
        encode(&hard_record(&core.hard), &mut initial)?;
        if !core.entries.is_empty() {
            encode(&DiskRecord::Entries(core.entries.iter().map(to_disk).collect()), &mut initial)?;
        }
        let next = DiskLog::create(&self.dir, self.seq + 1, &initial)?;
        *self = next;
        for (seq, path) in list_numbered(&self.dir, "raft-", "")? {
            if seq < self.seq {
                let _ = std::fs::remove_file(path);
            }
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, data: data.to_vec().into(), ..Default::default() }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gfs-raftdisk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hard(term: u64, vote: u64, commit: u64) -> HardState {
        HardState { term, vote, commit, ..Default::default() }
    }

    #[test]
    fn entries_hard_state_and_snapshots_survive_a_reload() {
        let dir = tempdir("reload");
        let (_, mut log) = load(&dir, ConfState::default()).unwrap();
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")], Some(&hard(1, 2, 2)), true).unwrap();
        // A new leader replaced the uncommitted tail.
        log.append(&[entry(3, 2, b"C")], Some(&hard(2, 3, 3)), true).unwrap();
        let (core, mut log) = load(&dir, ConfState::default()).unwrap();
        assert_eq!((core.hard.term, core.hard.vote, core.hard.commit), (2, 3, 3));
        assert_eq!(core.entries.iter().map(|e| e.data.to_vec()).collect::<Vec<_>>(), [b"a", b"b", b"C"]);
        let mut core = core;
        core.compact(2, 1, b"state at 2".to_vec());
        log.save_snapshot(&core).unwrap();
        log.append(&[entry(4, 2, b"d")], None, true).unwrap();
        drop(log);
        // A torn last frame is cut; what came before stays.
        let (_, seg) = list_numbered(&dir, "raft-", "").unwrap().pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 2).unwrap();
        let (core, _) = load(&dir, ConfState::default()).unwrap();
        assert_eq!((core.snap_index, core.snap_term, core.snap_data.as_slice()), (2, 1, &b"state at 2"[..]));
        assert_eq!(core.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [3]);
        assert_eq!(core.hard.commit, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Entries from `back` before the end (a new leader overwriting a tail), `n` of them.
        Append {
            back: u64,
            n: u64,
            term: u64,
        },
        Hard {
            vote: u64,
        },
        /// A snapshot covering all but `keep` of the entries.
        Snapshot {
            keep: u64,
        },
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..3, 1u64..4, 1u64..5).prop_map(|(back, n, term)| Op::Append { back, n, term }),
            1 => (0u64..4).prop_map(|vote| Op::Hard { vote }),
            1 => (0u64..3).prop_map(|keep| Op::Snapshot { keep }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever sequence of appends (overwriting tails), hard states and snapshots was
        /// made durable, loading the directory gives back exactly the log as it was in memory.
        #[test]
        fn loading_gives_back_what_was_written(ops in proptest::collection::vec(arb_op(), 1..24)) {
            let dir = tempdir(&format!("prop-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
            let (mut model, mut log) = load(&dir, ConfState::default()).unwrap();
            for op in ops {
                match op {
                    Op::Append { back, n, term } => {
                        let first = (model.last_index() + 1).saturating_sub(back).max(model.snap_index + 1);
                        let ents: Vec<Entry> =
                            (first..first + n).map(|i| entry(i, term, format!("{i}/{term}").as_bytes())).collect();
                        proptest::prop_assert!(model.append(&ents));
                        log.append(&ents, None, true).unwrap();
                    }
                    Op::Hard { vote } => {
                        model.hard = hard(model.hard.term + 1, vote, model.last_index());
                        log.append(&[], Some(&model.hard), true).unwrap();
                    }
                    Op::Snapshot { keep } => {
                        let at = model.last_index().saturating_sub(keep).max(model.snap_index);
                        if at > model.snap_index {
                            let term = model.term(at).unwrap();
                            model.compact(at, term, format!("state at {at}").into_bytes());
                            log.save_snapshot(&model).unwrap();
                        }
                    }
                }
            }
            drop(log);
            let (back, _) = load(&dir, ConfState::default()).unwrap();
            let ents = |c: &Core| c.entries.iter().map(|e| (e.index, e.term, e.data.to_vec())).collect::<Vec<_>>();
            proptest::prop_assert_eq!(ents(&back), ents(&model));
            proptest::prop_assert_eq!((back.snap_index, back.snap_term, &back.snap_data), (model.snap_index, model.snap_term, &model.snap_data));
            // A snapshot's term counts as seen (a real hard state is never behind its entries).
            proptest::prop_assert_eq!((back.hard.term, back.hard.vote), (model.hard.term.max(model.snap_term), model.hard.vote));
            proptest::prop_assert_eq!(back.hard.commit, model.hard.commit.max(model.snap_index).min(model.last_index()));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
