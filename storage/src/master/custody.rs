//! Which replicas may be counted as holding a chunk's current version.
//!
//! A replica holds version V correctly only if every mutation applied at V reached it.
//! Mutations at V happen only under the one lease granted at V, and reach the replicas that
//! grant went to. A replica that reaches V any other way can lack some of them: a
//! re-replication copy taken while a grant of V was under way (the copy ends before the
//! primary hears of its lease, and the writes that follow pass it by), or a replica that
//! applied a `SetVersion` only after the master had given up on it and granted without it.
//! Such a replica reports V like any other and, were it counted, would serve old bytes with
//! valid checksums.
//!
//! So the master keeps, per chunk, the replicas its last grant went to, adds those that a copy
//! it accepted made, and does not count a report of the current version from any other. And a
//! grant and a copy of the same chunk never overlap: a copy does not start while a grant is
//! under way, and a grant waits for a copy (up to [`COPY_EXCLUSION`], after which the copy can
//! no longer be accepted). After a master restart nothing is known, and reports are counted as
//! before: any lease from before the restart has ended before a copy or grant may start.

use super::chunks::ServerIdx;
use crate::protocol::{ChunkHandle, Version};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest a copy holds off lease grants (so writes) for its chunk. A copy still running
/// after that is overtaken by the next grant and will not be accepted.
pub const COPY_EXCLUSION: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Busy {
    /// A grant is under way; what custody was before it, to restore if no replica takes it.
    Granting(Option<(Version, Vec<ServerIdx>)>),
    /// A copy started at this instant (which also identifies it).
    Copying(Instant),
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Custody {
    /// Per chunk: the version last granted, and the replicas that may hold it.
    holders: HashMap<ChunkHandle, (Version, Vec<ServerIdx>)>,
    busy: HashMap<ChunkHandle, Busy>,
}

/// A copy under way, as [`Custody::begin_copy`] started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTicket {
    handle: ChunkHandle,
    started: Instant,
}

impl CopyTicket {
    pub fn handle(&self) -> ChunkHandle {
        self.handle
    }
}

impl Custody {
    /// Whether `server` reporting `version` (the chunk's current one) may be counted current.
    pub fn may_hold(&self, handle: ChunkHandle, version: Version, server: ServerIdx) -> bool {
        match self.holders.get(&handle) {
            Some((v, servers)) if *v == version => servers.contains(&server),
            _ => true,
        }
    }

    /// A grant of `version` to `targets` is about to be logged and sent. Refused (with the
    /// reason) while a copy of the chunk runs, or another grant does.
    pub fn begin_grant(&mut self, handle: ChunkHandle, version: Version, targets: &[ServerIdx]) -> Result<(), String> {
        match self.busy.get(&handle) {
            Some(Busy::Granting(_)) => return Err("a lease grant is under way".into()),
            Some(Busy::Copying(t)) if t.elapsed() < COPY_EXCLUSION => {
                return Err(format!("a re-replication copy is under way (for {:?})", t.elapsed()))
            }
            _ => {}
        }
        // Before any replica hears of `version`: a copy made from one of them meanwhile is
        // not among these, so it is not counted.
        let before = self.holders.insert(handle, (version, targets.to_vec()));
        self.busy.insert(handle, Busy::Granting(before));
        Ok(())
    }

    /// The grant of `version` is over: it went to `granted`. A grant no replica took was
    /// undone (the chunk is back at the version before it): custody is what it was then.
    pub fn end_grant(&mut self, handle: ChunkHandle, version: Version, granted: &[ServerIdx]) {
        let before = match self.busy.remove(&handle) {
            Some(Busy::Granting(before)) => before,
            Some(other) => {
                self.busy.insert(handle, other);
                None
            }
            None => None,
        };
        match (granted.is_empty(), before) {
            (true, Some(before)) => self.holders.insert(handle, before),
            (true, None) => self.holders.remove(&handle),
            (false, _) => self.holders.insert(handle, (version, granted.to_vec())),
        };
    }

    /// A copy of the chunk may start now, unless a grant or another copy is under way.
    pub fn begin_copy(&mut self, handle: ChunkHandle) -> Option<CopyTicket> {
        if self.busy.contains_key(&handle) {
            return None;
        }
        let started = Instant::now();
        self.busy.insert(handle, Busy::Copying(started));
        Some(CopyTicket { handle, started })
    }

    /// The copy is over. If it succeeded, whether its replica at `version` may be counted:
    /// only if no grant overtook it. Either way the chunk is free again.
    pub fn end_copy(&mut self, ticket: CopyTicket, version: Version, dest: Option<ServerIdx>) -> bool {
        let ours = self.busy.get(&ticket.handle) == Some(&Busy::Copying(ticket.started));
        if ours {
            self.busy.remove(&ticket.handle);
        }
        let Some(dest) = dest.filter(|_| ours) else { return false };
        if let Some((v, servers)) = self.holders.get_mut(&ticket.handle) {
            if *v != version {
                return false;
            }
            if !servers.contains(&dest) {
                servers.push(dest);
            }
        }
        true
    }

    /// Forgets chunks for which `known` is false (deleted ones).
    pub fn retain(&mut self, known: impl Fn(ChunkHandle) -> bool) {
        self.holders.retain(|h, _| known(*h));
        self.busy.retain(|h, _| known(*h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_taken_while_a_grant_runs_is_not_counted() {
        let mut c = Custody::default();
        c.begin_grant(7, 3, &[0, 1, 2]).unwrap();
        assert!(c.begin_copy(7).is_none(), "no copy may start while a grant is under way");
        // Server 3 got version 3 some other way (say, a copy that started before the grant
        // was noted, or a late SetVersion): not counted.
        assert!(!c.may_hold(7, 3, 3));
        assert!(c.may_hold(7, 3, 1));
        // The grant reached only 0 and 1: 2 applied the version late.
        c.end_grant(7, 3, &[0, 1]);
        assert!(!c.may_hold(7, 3, 2));
        assert!(c.may_hold(7, 3, 0));
        // An older version's rule does not apply to a newer one (nothing known: counted).
        assert!(c.may_hold(7, 4, 2));
    }

    #[test]
    fn an_accepted_copy_is_counted_and_a_grant_waits_for_it() {
        let mut c = Custody::default();
        c.begin_grant(9, 2, &[0, 1]).unwrap();
        c.end_grant(9, 2, &[0, 1]);
        let t = c.begin_copy(9).unwrap();
        assert!(c.begin_copy(9).is_none(), "one copy at a time");
        assert!(c.begin_grant(9, 3, &[0, 1]).is_err(), "a grant waits for the copy");
        assert!(c.end_copy(t, 2, Some(5)));
        assert!(c.may_hold(9, 2, 5));
        c.begin_grant(9, 3, &[0, 1, 5]).unwrap();
        c.end_grant(9, 3, &[0, 1, 5]);
    }

    #[test]
    fn a_copy_overtaken_by_a_grant_is_not_accepted() {
        let mut c = Custody::default();
        c.begin_grant(4, 2, &[0]).unwrap();
        c.end_grant(4, 2, &[0]);
        // A copy that has run for longer than the exclusion: the next grant takes over.
        let started = Instant::now().checked_sub(COPY_EXCLUSION).expect("the machine has been up 10 s");
        c.busy.insert(4, Busy::Copying(started));
        let t = CopyTicket { handle: 4, started };
        c.begin_grant(4, 3, &[0]).unwrap();
        assert!(!c.end_copy(t, 2, Some(1)));
        assert!(!c.may_hold(4, 3, 1));
        c.end_grant(4, 3, &[0]);
        assert!(c.begin_copy(4).is_some());
    }

    #[test]
    fn a_grant_no_replica_took_leaves_custody_as_it_was() {
        let mut c = Custody::default();
        c.begin_grant(5, 2, &[0, 1]).unwrap();
        c.end_grant(5, 2, &[0, 1]);
        c.begin_grant(5, 3, &[0, 1]).unwrap();
        c.end_grant(5, 3, &[]);
        // Back at version 2: its holders count, others still do not.
        assert!(c.may_hold(5, 2, 0) && c.may_hold(5, 2, 1));
        assert!(!c.may_hold(5, 2, 7));
        assert!(c.begin_copy(5).is_some(), "the chunk is free again");
    }

    #[test]
    fn a_failed_copy_frees_the_chunk() {
        let mut c = Custody::default();
        let t = c.begin_copy(1).unwrap();
        assert!(!c.end_copy(t, 2, None));
        assert!(c.begin_grant(1, 3, &[0]).is_ok());
    }
}
