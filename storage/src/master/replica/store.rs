//! The Raft log as the Raft library reads it: the latest snapshot (a checkpoint of the master
//! state) and the entries after it, with the hard state (term, vote, commit). The node thread
//! is the only writer; it makes every change durable through [`super::disk`] first.

use crate::sync::RwUnpoisoned;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{RaftState, Storage, StorageError};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The log in memory.
#[derive(Default)]
pub struct Core {
    pub hard: HardState,
    pub conf: ConfState,
    /// Index and term of the last entry the snapshot covers (0 and 0 before the first).
    pub snap_index: u64,
    pub snap_term: u64,
    /// The snapshot's state image (empty before the first).
    pub snap_data: Vec<u8>,
    /// Entries after the snapshot: `entries[0].index == snap_index + 1`.
    pub entries: Vec<Entry>,
}

impl Core {
    pub fn last_index(&self) -> u64 {
        self.entries.last().map(|e| e.index).unwrap_or(self.snap_index)
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snap_index {
            return Some(self.snap_term);
        }
        let i = index.checked_sub(self.snap_index + 1)?;
        self.entries.get(usize::try_from(i).ok()?).map(|e| e.term)
    }

    /// Appends `ents`, replacing any entries from the first one's index on (a new leader
    /// overwrote an uncommitted tail). Returns false if they would leave a gap.
    pub fn append(&mut self, ents: &[Entry]) -> bool {
        let Some(first) = ents.first() else { return true };
        if first.index <= self.snap_index || first.index > self.last_index() + 1 {
            return false;
        }
        self.entries.truncate((first.index - self.snap_index - 1) as usize);
        self.entries.extend_from_slice(ents);
        true
    }

    /// Drops the entries up to `index`, now covered by a snapshot of the state there.
    pub fn compact(&mut self, index: u64, term: u64, data: Vec<u8>) {
        let drop = index.saturating_sub(self.snap_index).min(self.entries.len() as u64) as usize;
        self.entries.drain(..drop);
        self.snap_index = index;
        self.snap_term = term;
        self.snap_data = data;
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn install(&mut self, snap: &Snapshot) {
        let meta = snap.get_metadata();
        self.entries.clear();
        self.snap_index = meta.index;
        self.snap_term = meta.term;
        self.snap_data = snap.data.to_vec();
        self.hard.term = self.hard.term.max(meta.term);
        self.hard.commit = meta.index;
    }

    fn snapshot(&self) -> Snapshot {
        let mut meta = SnapshotMetadata { index: self.snap_index, term: self.snap_term, ..Default::default() };
        meta.set_conf_state(self.conf.clone());
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = self.snap_data.clone().into();
        snap
    }
}

/// Shared view of [`Core`] handed to the Raft library.
#[derive(Clone, Default)]
pub struct LogStore(Arc<RwLock<Core>>);

impl LogStore {
    pub fn new(core: Core) -> LogStore {
        LogStore(Arc::new(RwLock::new(core)))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Core> {
        self.0.read_unpoisoned()
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Core> {
        self.0.write_unpoisoned()
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState { hard_state: c.hard.clone(), conf_state: c.conf.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let c = self.read();
        if low <= c.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > c.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let base = c.snap_index + 1;
        let mut ents = c.entries[(low - base) as usize..(high - base) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.read();
        if idx < c.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        c.term(idx).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let c = self.read();
        if c.snap_index < request_index {
            // The next checkpoint will cover it; the library asks again.
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(c.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn append_overwrites_a_conflicting_tail_and_refuses_gaps() {
        let mut c = Core::default();
        assert!(c.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]));
        assert!(c.append(&[entry(2, 2)]));
        assert_eq!(c.last_index(), 2);
        assert_eq!(c.term(2), Some(2));
        assert!(!c.append(&[entry(4, 2)]), "a gap");
        c.compact(1, 1, b"img".to_vec());
        assert_eq!(c.term(1), Some(1));
        assert_eq!(c.term(2), Some(2));
        assert!(!c.append(&[entry(1, 3)]), "behind the snapshot");
        let store = LogStore::new(c);
        assert!(matches!(
            store.entries(1, 2, None, raft::GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(store.entries(2, 3, None, raft::GetEntriesContext::empty(false)).unwrap().len(), 1);
        assert_eq!(store.snapshot(0, 2).unwrap().get_metadata().index, 1);
    }
}
