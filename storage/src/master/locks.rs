//! Per-path read-write locks. An operation on `/a/b/c` takes read locks on `/a` and `/a/b` and a
//! read or write lock on `/a/b/c`. Locks are always taken in one global order (sorted by path)
//! so that operations touching several paths (rename) cannot deadlock.

use crate::sync::Unpoisoned;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct LockState {
    inner: Mutex<(u32, bool)>, // (readers, writer)
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock_unpoisoned()
}

impl LockState {
    fn acquire(&self, write: bool) {
        let mut g = lock(&self.inner);
        loop {
            let (readers, writer) = *g;
            let free = if write { readers == 0 && !writer } else { !writer };
            if free {
                if write {
                    g.1 = true;
                } else {
                    g.0 += 1;
                }
                return;
            }
            g = crate::sync::wait_unpoisoned(&self.cv, g);
        }
    }

    fn release(&self, write: bool) {
        let mut g = lock(&self.inner);
        if write {
            g.1 = false;
        } else {
            g.0 = g.0.saturating_sub(1);
        }
        self.cv.notify_all();
    }
}

/// The lock table. Entries exist only while some operation holds or waits for them.
#[derive(Default)]
pub struct PathLocks {
    table: Mutex<HashMap<String, Arc<LockState>>>,
}

/// Locks held by one operation; released on drop.
pub struct Held<'a> {
    owner: &'a PathLocks,
    held: Vec<(String, Arc<LockState>, bool)>,
}

/// Strict ancestors of a normalized path, excluding the root: `/a/b/c` gives `/a`, `/a/b`.
pub fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut end = 0;
    while let Some(i) = path[end + 1..].find('/') {
        end += 1 + i;
        out.push(path[..end].to_string());
    }
    out
}

impl PathLocks {
    /// Takes read locks on the ancestors of every path in `reads` and `writes`, a read lock on
    /// each of `reads` and a write lock on each of `writes`.
    pub fn lock(&self, reads: &[&str], writes: &[&str]) -> Held<'_> {
        let mut want: BTreeMap<String, bool> = BTreeMap::new();
        for p in reads.iter().chain(writes.iter()) {
            for a in ancestors(p) {
                want.entry(a).or_insert(false);
            }
        }
        for p in reads {
            want.entry(p.to_string()).or_insert(false);
        }
        for p in writes {
            want.insert(p.to_string(), true);
        }
        want.remove("/");
        let mut held = Vec::with_capacity(want.len());
        for (path, write) in want {
            let st = {
                let mut t = lock(&self.table);
                t.entry(path.clone()).or_default().clone()
            };
            st.acquire(write);
            held.push((path, st, write));
        }
        Held { owner: self, held }
    }

    /// Number of paths with a live lock entry (for tests).
    pub fn live_entries(&self) -> usize {
        lock(&self.table).len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for (path, st, write) in self.held.drain(..).rev() {
            st.release(write);
            let mut t = lock(&self.owner.table);
            // Only the table and we refer to it: nobody holds or waits for it.
            if Arc::strong_count(&st) == 2 {
                t.remove(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn ancestors_of_paths() {
        assert_eq!(ancestors("/a/b/c"), vec!["/a".to_string(), "/a/b".to_string()]);
        assert!(ancestors("/a").is_empty());
    }

    #[test]
    fn writer_excludes_creator_below() {
        let locks = Arc::new(PathLocks::default());
        let w = locks.lock(&[], &["/a"]);
        let done = Arc::new(AtomicBool::new(false));
        let (l2, d2) = (locks.clone(), done.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.lock(&[], &["/a/b"]); // needs a read lock on /a
            d2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!done.load(Ordering::SeqCst));
        drop(w);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(locks.live_entries(), 0);
    }

    #[test]
    fn readers_share() {
        let locks = PathLocks::default();
        let a = locks.lock(&["/x/y"], &[]);
        let b = locks.lock(&["/x"], &["/x/z"]);
        drop(a);
        drop(b);
        assert_eq!(locks.live_entries(), 0);
    }
}
