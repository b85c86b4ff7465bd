//! Lazy deletion: deleting a file renames it into `/.trash` under a name that records when it
//! was deleted (it can still be read, or renamed back). A background pass deletes trash older
//! than the configured delay; the chunks then become garbage, which chunkservers learn from
//! their heartbeat replies and remove.

use super::namespace::Node;
use super::Master;
use crate::error::Result;
use crate::oplog::Record;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where deleted files wait.
pub const TRASH: &str = "/.trash";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The deletion time encoded in a trash entry's name (`<ms>.<id>.<path with / as %>`).
fn deleted_at(name: &str) -> Option<u64> {
    name.split('.').next()?.parse().ok()
}

impl Master {
    /// Deletes `path`: files go to the trash (unless lazy deletion is off or they are in the
    /// trash already); directories must be empty and go at once.
    pub fn delete(self: &Arc<Self>, path: &str) -> Result<()> {
        let is_file = matches!(self.meta().state.ns.get(path), Some(Node::File(_)));
        if self.cfg.gc_delay.is_none() || !is_file || path.starts_with(&format!("{TRASH}/")) {
            let _l = self.locks.lock(&[], &[path]);
            return self.commit(Record::Delete { path: path.to_string() });
        }
        {
            let _l = self.locks.lock(&[], &[TRASH]);
            if self.meta().state.ns.get(TRASH).is_none() {
                self.commit(Record::Mkdir { path: TRASH.to_string() })?;
            }
        }
        let hidden =
            format!("{TRASH}/{}.{:08x}.{}", now_ms(), crate::util::random_id() as u32, &path[1..].replace('/', "%"));
        let _l = self.locks.lock(&[], &[path, &hidden]);
        self.commit(Record::Rename { from: path.to_string(), to: hidden })
    }

    /// Starts the trash collector (if lazy deletion is on).
    pub fn spawn_gc(self: &Arc<Self>) {
        let Some(delay) = self.cfg.gc_delay else { return };
        let every = (delay / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let me = self.clone();
        let _ = std::thread::Builder::new().name("gc".into()).spawn(move || loop {
            std::thread::sleep(every);
            if me.leads() {
                me.collect_trash(delay);
            }
        });
    }

    /// Deletes trash entries older than `delay`; returns how many.
    pub fn collect_trash(self: &Arc<Self>, delay: Duration) -> usize {
        let cutoff = now_ms().saturating_sub(delay.as_millis() as u64);
        let old: Vec<String> = match self.meta().state.ns.list(TRASH) {
            Ok(entries) => entries
                .into_iter()
                .filter(|e| deleted_at(&e.name).is_some_and(|t| t <= cutoff))
                .map(|e| format!("{TRASH}/{}", e.name))
                .collect(),
            Err(_) => return 0,
        };
        let mut n = 0;
        for p in old {
            let _l = self.locks.lock(&[], &[&p]);
            match self.commit(Record::Delete { path: p.clone() }) {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(path = %p, "garbage collection: {e}"),
            }
        }
        if n > 0 {
            tracing::info!(files = n, "garbage collected deleted files");
        }
        n
    }
}
