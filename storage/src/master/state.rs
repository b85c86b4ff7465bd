//! The master's persistent state (namespace and chunk versions), how each log record changes
//! it, and its checkpoint image.

use super::chunks::ChunkTable;
use super::namespace::{FileMeta, Namespace, Node};
use crate::error::{ErrorKind, GfsError, Result};
use crate::oplog::Record;
use crate::protocol::{ChunkHandle, Version};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A test-and-set register: its generation (0 = never set) and holder.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub generation: u64,
    pub holder: String,
}

/// Namespace, chunk table and registers.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub ns: Namespace,
    pub chunks: ChunkTable,
    pub registers: BTreeMap<String, Register>,
    /// Chunks referenced by more than one file (after snapshots): handle -> extra references.
    /// Rebuilt from the namespace when a checkpoint is loaded.
    pub shared: HashMap<ChunkHandle, u32>,
}

/// One file in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileImage {
    pub path: String,
    pub size: u64,
    /// (index, handle) of the chunks that exist: sparse, as the namespace holds them.
    pub chunks: Vec<(u64, ChunkHandle)>,
    pub register: Option<String>,
}

/// What a checkpoint stores.
#[derive(Debug, Serialize, Deserialize)]
pub struct StateImage {
    pub dirs: Vec<String>,
    pub files: Vec<FileImage>,
    pub versions: Vec<Version>,
    pub registers: Vec<(String, Register)>,
}

/// Checks a register name: non-empty, printable, at most 255 bytes.
pub fn check_register_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(GfsError::fs(ErrorKind::InvalidArgument, format!("bad register name {name:?}")));
    }
    Ok(())
}

impl State {
    /// Checks that `rec` can be applied, without changing anything.
    pub fn check(&self, rec: &Record) -> Result<()> {
        match rec {
            Record::Mkdir { path } | Record::CreateFile { path } => self.ns.check_create(path),
            Record::Delete { path } => self.ns.check_delete(path),
            Record::Rename { from, to } => self.ns.check_rename(from, to),
            Record::AddChunk { path, index, .. } => {
                let f = self.ns.file(path)?;
                if f.chunks.get(*index).is_some() {
                    return Err(GfsError::fs(ErrorKind::AlreadyExists, "chunk already allocated"));
                }
                Ok(())
            }
            Record::SetVersion { handle, .. } => match self.chunks.get(*handle) {
                Some(_) => Ok(()),
                None => Err(GfsError::fs(ErrorKind::UnknownChunk, format!("chunk {handle}"))),
            },
            Record::ExtendSize { path, .. } => self.ns.file(path).map(|_| ()),
            Record::CompareAndSet { name, generation, .. } => {
                check_register_name(name)?;
                let cur = self.registers.get(name).map(|r| r.generation).unwrap_or(0);
                if cur.checked_add(1) != Some(*generation) {
                    return Err(GfsError::fs(ErrorKind::Conflict, format!("register {name} is at generation {cur}")));
                }
                Ok(())
            }
            Record::ReleaseRegister { name, generation, holder } => {
                check_register_name(name)?;
                let cur = self.registers.get(name).cloned().unwrap_or_default();
                if cur.holder.is_empty() || cur.holder != *holder || cur.generation.checked_add(1) != Some(*generation)
                {
                    return Err(GfsError::fs(
                        ErrorKind::Conflict,
                        format!("register {name} is held by {:?} at generation {}", cur.holder, cur.generation),
                    ));
                }
                Ok(())
            }
            Record::Bind { path, register } => {
                check_register_name(register)?;
                self.ns.file(path).map(|_| ())
            }
            Record::Snapshot { src, dst } => self.ns.check_rename(src, dst),
            Record::ReplaceChunk { path, index, old, .. } => {
                let f = self.ns.file(path)?;
                if f.chunks.get(*index).unwrap_or(0) != *old {
                    return Err(GfsError::fs(ErrorKind::InvalidArgument, "chunk changed"));
                }
                Ok(())
            }
        }
    }

    /// Applies one record. Records were checked before they were logged, so a failure here
    /// during replay means the log does not match the checkpoint.
    pub fn apply(&mut self, rec: &Record) -> Result<()> {
        match rec {
            Record::Mkdir { path } => self.ns.insert(path, Node::Dir),
            Record::CreateFile { path } => self.ns.insert(path, Node::File(FileMeta::default())),
            Record::Delete { path } => {
                if let Node::File(f) = self.ns.remove(path)? {
                    for h in f.chunks.handles() {
                        self.drop_ref(h);
                    }
                }
                Ok(())
            }
            Record::Snapshot { src, dst } => {
                for h in self.ns.copy_tree(src, dst)? {
                    *self.shared.entry(h).or_insert(0) += 1;
                }
                Ok(())
            }
            Record::ReplaceChunk { path, index, old, new, version } => {
                self.check(rec)?;
                let f = self.ns.file_mut(path)?;
                f.chunks.set(*index, *new);
                self.chunks.allocate(*new, *version);
                self.drop_ref(*old);
                Ok(())
            }
            Record::Rename { from, to } => self.ns.rename(from, to),
            Record::AddChunk { path, index, handle } => {
                let f = self.ns.file_mut(path)?;
                f.chunks.set(*index, *handle);
                self.chunks.allocate(*handle, 1);
                Ok(())
            }
            Record::SetVersion { handle, version } => match self.chunks.get_mut(*handle) {
                Some(c) => {
                    c.version = *version;
                    Ok(())
                }
                None => Err(GfsError::fs(ErrorKind::UnknownChunk, format!("chunk {handle}"))),
            },
            Record::ExtendSize { path, size } => {
                let f = self.ns.file_mut(path)?;
                f.size = f.size.max(*size);
                Ok(())
            }
            Record::CompareAndSet { name, generation, holder } => {
                self.check(rec)?;
                self.registers.insert(name.clone(), Register { generation: *generation, holder: holder.clone() });
                Ok(())
            }
            Record::ReleaseRegister { name, generation, .. } => {
                self.check(rec)?;
                self.registers.insert(name.clone(), Register { generation: *generation, holder: String::new() });
                Ok(())
            }
            Record::Bind { path, register } => {
                self.ns.file_mut(path)?.register = Some(register.clone());
                Ok(())
            }
        }
    }

    pub fn image(&self) -> StateImage {
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for (p, n) in self.ns.iter() {
            match n {
                Node::Dir => dirs.push(p.clone()),
                Node::File(f) => files.push(FileImage {
                    path: p.clone(),
                    size: f.size,
                    chunks: f.chunks.iter().collect(),
                    register: f.register.clone(),
                }),
            }
        }
        StateImage {
            dirs,
            files,
            versions: self.chunks.versions(),
            registers: self.registers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub fn from_image(img: StateImage) -> State {
        let mut ns = Namespace::default();
        for d in img.dirs {
            ns.insert_unchecked(d, Node::Dir);
        }
        for f in img.files {
            ns.insert_unchecked(
                f.path,
                Node::File(FileMeta { size: f.size, chunks: f.chunks.into_iter().collect(), register: f.register }),
            );
        }
        let mut state = State {
            ns,
            chunks: ChunkTable::from_versions(img.versions),
            registers: img.registers.into_iter().collect(),
            shared: HashMap::new(),
        };
        state.rebuild_shared();
        state
    }

    /// Recounts chunks referenced by several files.
    fn rebuild_shared(&mut self) {
        let mut refs: HashMap<ChunkHandle, u32> = HashMap::new();
        for h in self.ns.handles_below("/") {
            *refs.entry(h).or_insert(0) += 1;
        }
        self.shared = refs.into_iter().filter(|&(_, n)| n > 1).map(|(h, n)| (h, n - 1)).collect();
    }

    /// Whether a chunk is referenced by more than one file.
    pub fn is_shared(&self, h: ChunkHandle) -> bool {
        self.shared.contains_key(&h)
    }

    /// Drops one reference to `h`, freeing it when none is left.
    fn drop_ref(&mut self, h: ChunkHandle) {
        if h == 0 {
            return;
        }
        match self.shared.get_mut(&h) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.shared.remove(&h);
            }
            None => self.chunks.free(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_and_image_round_trip() {
        let mut s = State::default();
        let recs = vec![
            Record::Mkdir { path: "/d".into() },
            Record::CreateFile { path: "/d/f".into() },
            Record::AddChunk { path: "/d/f".into(), index: 2, handle: 1 },
            Record::SetVersion { handle: 1, version: 5 },
            Record::ExtendSize { path: "/d/f".into(), size: 100 },
            Record::Rename { from: "/d".into(), to: "/e".into() },
            Record::CompareAndSet { name: "vm".into(), generation: 1, holder: "a".into() },
            Record::Bind { path: "/e/f".into(), register: "vm".into() },
        ];
        for r in &recs {
            s.check(r).unwrap();
            s.apply(r).unwrap();
        }
        let f = s.ns.file("/e/f").unwrap();
        assert_eq!(f.chunks.iter().collect::<Vec<_>>(), vec![(2, 1)]);
        assert_eq!(s.chunks.get(1).unwrap().version, 5);
        let img = postcard::to_stdvec(&s.image()).unwrap();
        let back = State::from_image(postcard::from_bytes(&img).unwrap());
        assert_eq!(back.ns.file("/e/f").unwrap().size, 100);
        assert_eq!(back.chunks.get(1).unwrap().version, 5);
        assert_eq!(back.registers["vm"].generation, 1);
        assert_eq!(back.ns.file("/e/f").unwrap().register.as_deref(), Some("vm"));
        assert!(back.check(&Record::CompareAndSet { name: "vm".into(), generation: 1, holder: "b".into() }).is_err());
        let mut back = back;
        back.apply(&Record::Delete { path: "/e/f".into() }).unwrap();
        assert!(back.chunks.is_garbage(1));
    }

    #[test]
    fn release_frees_a_register_only_for_its_holder_at_its_generation() {
        let mut s = State::default();
        let set = Record::CompareAndSet { name: "vm".into(), generation: 1, holder: "a".into() };
        s.check(&set).unwrap();
        s.apply(&set).unwrap();
        for refused in [
            Record::ReleaseRegister { name: "vm".into(), generation: 2, holder: "b".into() },
            Record::ReleaseRegister { name: "vm".into(), generation: 3, holder: "a".into() },
            Record::ReleaseRegister { name: "vm".into(), generation: 1, holder: "a".into() },
            Record::ReleaseRegister { name: "never".into(), generation: 1, holder: "".into() },
        ] {
            let e = s.check(&refused).unwrap_err();
            assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{refused:?}");
            assert!(s.apply(&refused).is_err(), "{refused:?}");
        }
        let release = Record::ReleaseRegister { name: "vm".into(), generation: 2, holder: "a".into() };
        s.check(&release).unwrap();
        s.apply(&release).unwrap();
        assert_eq!(s.registers["vm"], Register { generation: 2, holder: String::new() });
        // Released twice is refused: nobody holds it now.
        assert!(s.check(&release).is_err());
        assert!(s.check(&Record::ReleaseRegister { name: "vm".into(), generation: 3, holder: "".into() }).is_err());
        // The next taker expects the released generation; the checkpoint keeps it.
        let back = State::from_image(postcard::from_bytes(&postcard::to_stdvec(&s.image()).unwrap()).unwrap());
        assert_eq!(back.registers["vm"], Register { generation: 2, holder: String::new() });
        back.check(&Record::CompareAndSet { name: "vm".into(), generation: 3, holder: "b".into() }).unwrap();
    }

    /// Finding 5 of the hostile-input sweep: a file written only at its last possible chunk
    /// index made the master hold (and checkpoint) a list as long as that index, ~8 MiB a file.
    #[test]
    fn a_file_written_only_at_a_huge_offset_costs_one_chunk_entry() {
        let mut s = State::default();
        let last = crate::MAX_FILE_CHUNKS - 1;
        for r in [
            Record::CreateFile { path: "/far".into() },
            Record::AddChunk { path: "/far".into(), index: last, handle: 1 },
        ] {
            s.check(&r).unwrap();
            s.apply(&r).unwrap();
        }
        let f = s.ns.file("/far").unwrap();
        assert_eq!(f.chunks.iter().collect::<Vec<_>>(), vec![(last, 1)]);
        assert_eq!(f.chunks.end(), last + 1, "appends still go after the last chunk");
        let image = postcard::to_stdvec(&s.image()).unwrap();
        assert!(image.len() < 1024, "the checkpoint of one far chunk took {} bytes", image.len());
        let back = State::from_image(postcard::from_bytes(&image).unwrap());
        assert_eq!(back.ns.file("/far").unwrap().chunks.get(last), Some(1));
        assert_eq!(back.ns.file("/far").unwrap().chunks.get(0), None);
    }

    /// Holes before, between and after chunks come back from a checkpoint as holes, and the
    /// checkpoint stores only the chunks.
    #[test]
    fn a_sparse_chunk_list_survives_a_checkpoint_round_trip() {
        let mut s = State::default();
        let indices = [0, 1000, crate::MAX_FILE_CHUNKS - 1];
        let mut records = vec![Record::CreateFile { path: "/holes".into() }];
        records.extend(indices.iter().zip(1..).map(|(&index, handle)| Record::AddChunk {
            path: "/holes".into(),
            index,
            handle,
        }));
        for r in &records {
            s.check(r).unwrap();
            s.apply(r).unwrap();
        }
        let image = s.image();
        let stored = &image.files.iter().find(|f| f.path == "/holes").unwrap().chunks;
        assert_eq!(stored, &vec![(0, 1), (1000, 2), (crate::MAX_FILE_CHUNKS - 1, 3)]);
        let bytes = postcard::to_stdvec(&image).unwrap();
        assert!(bytes.len() < 1024, "the checkpoint of three chunks took {} bytes", bytes.len());
        let back = State::from_image(postcard::from_bytes(&bytes).unwrap());
        let f = back.ns.file("/holes").unwrap();
        assert_eq!(f.chunks, s.ns.file("/holes").unwrap().chunks);
        assert_eq!((f.chunks.get(1), f.chunks.get(999), f.chunks.get(1001)), (None, None, None));
        assert_eq!(f.chunks.end(), crate::MAX_FILE_CHUNKS);
    }
}
