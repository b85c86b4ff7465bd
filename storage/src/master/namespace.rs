//! The namespace: a map from full path names to directories and files (GFS keeps a flat
//! table of full paths rather than per-directory lists). The root `/` always exists.

use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkHandle, DirEntry};
use std::collections::BTreeMap;

/// A file: its size and its chunks by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub chunks: ChunkList,
    /// Register whose generation fences writes to this file.
    pub register: Option<String>,
}

/// A file's chunks by index, sparse: a chunk never written has no entry, so a file written
/// only at a huge offset costs the master one entry, not a list as long as the offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkList(BTreeMap<u64, ChunkHandle>);

impl ChunkList {
    /// The chunk at `index`, if it was ever written.
    pub fn get(&self, index: u64) -> Option<ChunkHandle> {
        self.0.get(&index).copied()
    }

    /// Makes `handle` the chunk at `index` (handle 0, "none", removes the entry).
    pub fn set(&mut self, index: u64, handle: ChunkHandle) {
        if handle == 0 {
            self.0.remove(&index);
        } else {
            self.0.insert(index, handle);
        }
    }

    /// One past the highest index that has a chunk (0 for a file without chunks).
    pub fn end(&self) -> u64 {
        self.0.last_key_value().map_or(0, |(index, _)| index + 1)
    }

    /// (index, handle) of every chunk, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, ChunkHandle)> + '_ {
        self.0.iter().map(|(index, handle)| (*index, *handle))
    }

    /// Every chunk's handle, in index order.
    pub fn handles(&self) -> impl Iterator<Item = ChunkHandle> + '_ {
        self.0.values().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(u64, ChunkHandle)> for ChunkList {
    fn from_iter<I: IntoIterator<Item = (u64, ChunkHandle)>>(entries: I) -> Self {
        ChunkList(entries.into_iter().filter(|(_, handle)| *handle != 0).collect())
    }
}

/// A namespace node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(FileMeta),
}

/// Normalizes a client-supplied path: absolute, no empty, `.` or `..` components, no NUL.
pub fn normalize(path: &str) -> Result<String> {
    let bad = |why: &str| GfsError::fs(ErrorKind::InvalidPath, format!("{path:?}: {why}"));
    if !path.starts_with('/') {
        return Err(bad("must be absolute"));
    }
    if path.len() > 4096 {
        return Err(bad("too long"));
    }
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(bad("invalid component"));
        }
        // A newline or other control character would forge lines in listings and logs.
        if comp.chars().any(char::is_control) {
            return Err(bad("control characters are not allowed in names"));
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Parent of a normalized path (`/` for top-level entries).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn not_found(path: &str) -> GfsError {
    GfsError::fs(ErrorKind::NotFound, format!("{path}: no such file or directory"))
}

/// The namespace tree.
#[derive(Debug, Default, Clone)]
pub struct Namespace {
    nodes: BTreeMap<String, Node>,
}

impl Namespace {
    pub fn get(&self, path: &str) -> Option<&Node> {
        if path == "/" {
            return Some(&Node::Dir);
        }
        self.nodes.get(path)
    }

    pub fn file(&self, path: &str) -> Result<&FileMeta> {
        match self.get(path) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir) => Err(GfsError::fs(ErrorKind::IsADirectory, format!("{path}: is a directory"))),
            None => Err(not_found(path)),
        }
    }

    pub fn file_mut(&mut self, path: &str) -> Result<&mut FileMeta> {
        match self.nodes.get_mut(path) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir) => Err(GfsError::fs(ErrorKind::IsADirectory, format!("{path}: is a directory"))),
            None => Err(not_found(path)),
        }
    }

    /// Checks that `path` can be created: its parent is a directory and it does not exist.
    pub fn check_create(&self, path: &str) -> Result<()> {
        if path == "/" || self.get(path).is_some() {
            return Err(GfsError::fs(ErrorKind::AlreadyExists, format!("{path}: already exists")));
        }
        let p = parent(path);
        match self.get(p) {
            Some(Node::Dir) => Ok(()),
            Some(Node::File(_)) => Err(GfsError::fs(ErrorKind::NotADirectory, format!("{p}: not a directory"))),
            None => Err(not_found(p)),
        }
    }

    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        self.check_create(path)?;
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let plen = prefix.len();
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !k[plen..].contains('/'))
    }

    /// Lists a directory, or describes a single file.
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        match self.get(path) {
            None => Err(not_found(path)),
            Some(Node::File(f)) => Ok(vec![DirEntry {
                name: path.rsplit('/').next().unwrap_or(path).to_string(),
                is_dir: false,
                size: f.size,
            }]),
            Some(Node::Dir) => Ok(self
                .children(path)
                .map(|(k, n)| DirEntry {
                    name: k.rsplit('/').next().unwrap_or(k).to_string(),
                    is_dir: matches!(n, Node::Dir),
                    size: match n {
                        Node::File(f) => f.size,
                        Node::Dir => 0,
                    },
                })
                .collect()),
        }
    }

    /// Checks that `path` can be deleted (exists; a directory must be empty).
    pub fn check_delete(&self, path: &str) -> Result<()> {
        if path == "/" {
            return Err(GfsError::fs(ErrorKind::InvalidPath, "cannot delete /"));
        }
        match self.get(path) {
            None => Err(not_found(path)),
            Some(Node::Dir) if self.children(path).next().is_some() => {
                Err(GfsError::fs(ErrorKind::NotEmpty, format!("{path}: directory not empty")))
            }
            Some(_) => Ok(()),
        }
    }

    /// Removes `path`; returns the node removed.
    pub fn remove(&mut self, path: &str) -> Result<Node> {
        self.check_delete(path)?;
        self.nodes.remove(path).ok_or_else(|| not_found(path))
    }

    /// Checks that `from` can be renamed to `to`.
    pub fn check_rename(&self, from: &str, to: &str) -> Result<()> {
        if from == "/" {
            return Err(GfsError::fs(ErrorKind::InvalidPath, "cannot rename /"));
        }
        if self.get(from).is_none() {
            return Err(not_found(from));
        }
        if to.starts_with(&format!("{from}/")) || to == from {
            return Err(GfsError::fs(ErrorKind::InvalidArgument, format!("cannot move {from} into itself")));
        }
        self.check_create(to)
    }

    /// Renames `from` (and everything below it) to `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.check_rename(from, to)?;
        let prefix = format!("{from}/");
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(n) = self.nodes.remove(from) {
            self.nodes.insert(to.to_string(), n);
        }
        for k in below {
            if let Some(n) = self.nodes.remove(&k) {
                self.nodes.insert(format!("{to}{}", &k[from.len()..]), n);
            }
        }
        Ok(())
    }

    /// Copies `from` (and everything below it) to `to`; returns the chunk handles copied.
    pub fn copy_tree(&mut self, from: &str, to: &str) -> Result<Vec<ChunkHandle>> {
        self.check_rename(from, to)?;
        let prefix = format!("{from}/");
        let mut copies: Vec<(String, Node)> = Vec::new();
        if let Some(n) = self.get(from) {
            copies.push((to.to_string(), n.clone()));
        }
        for (k, n) in self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
            copies.push((format!("{to}{}", &k[from.len()..]), n.clone()));
        }
        let mut handles = Vec::new();
        for (k, n) in copies {
            if let Node::File(f) = &n {
                handles.extend(f.chunks.handles());
            }
            self.nodes.insert(k, n);
        }
        Ok(handles)
    }

    /// Chunk handles of every file at or below `path`.
    pub fn handles_below(&self, path: &str) -> Vec<ChunkHandle> {
        let prefix = if path == "/" { "/".to_string() } else { format!("{path}/") };
        let own = self.get(path).into_iter();
        let below = self.nodes.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, n)| n);
        own.chain(below)
            .filter_map(|n| match n {
                Node::File(f) => Some(f.chunks.handles()),
                Node::Dir => None,
            })
            .flatten()
            .collect()
    }

    /// Every node, in path order (for checkpoints).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Inserts without checks (loading a checkpoint).
    pub fn insert_unchecked(&mut self, path: String, node: Node) {
        self.nodes.insert(path, node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/a//b/").unwrap(), "/a/b");
        assert_eq!(normalize("/").unwrap(), "/");
        assert!(normalize("a/b").is_err());
        assert!(normalize("/a/../b").is_err());
        assert!(normalize("/a\nfake line").is_err());
        assert!(normalize("/a/b\u{7f}").is_err());
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
    }

    /// Finding 5 of the hostile-input sweep: a write just below offset 2^46 (the last chunk a
    /// file may have) into an empty file grew the master by ~8 MiB, a vector resized to the
    /// index. The list holds the chunks written and nothing for the holes between them.
    #[test]
    fn a_chunk_list_holds_only_the_chunks_written() {
        let mut list = ChunkList::default();
        let far = crate::MAX_FILE_CHUNKS - 1;
        assert_eq!(far * crate::CHUNK_SIZE, (1 << 46) - crate::CHUNK_SIZE);
        list.set(far, 7);
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![(far, 7)]);
        assert_eq!((list.get(0), list.get(far - 1), list.get(far)), (None, None, Some(7)));
        assert_eq!(list.end(), far + 1, "appends go after the last chunk");
        list.set(3, 9);
        assert_eq!(list.handles().collect::<Vec<_>>(), vec![9, 7]);
        list.set(far, 0);
        assert_eq!(list.end(), 4, "handle 0 removes the entry");
        list.set(3, 0);
        assert!(list.is_empty());
        let loaded: ChunkList = [(5, 0), (2, 4)].into_iter().collect();
        assert_eq!(loaded.iter().collect::<Vec<_>>(), vec![(2, 4)], "a 0 read back is no chunk");
    }

    #[test]
    fn tree_operations() {
        let mut ns = Namespace::default();
        ns.insert("/a", Node::Dir).unwrap();
        ns.insert("/a/f", Node::File(FileMeta::default())).unwrap();
        assert!(ns.insert("/a/f", Node::Dir).is_err());
        assert!(ns.insert("/nope/x", Node::Dir).is_err());
        assert!(ns.insert("/a/f/x", Node::Dir).is_err());
        assert_eq!(ns.list("/").unwrap().len(), 1);
        assert_eq!(ns.list("/a").unwrap()[0].name, "f");
        assert!(ns.check_delete("/a").is_err());
        ns.rename("/a", "/b").unwrap();
        assert!(ns.file("/b/f").is_ok());
        assert!(ns.rename("/b", "/b/c").is_err());
        ns.remove("/b/f").unwrap();
        ns.remove("/b").unwrap();
        assert!(ns.list("/").unwrap().is_empty());
    }
}
