//! Whole-file upload that is all or nothing: the data goes to a temporary name beside the
//! target and is renamed into place only once all of it is written, as HDFS does with
//! `._COPYING_`. A put that fails leaves no file under the target name; one cut short by the
//! client's own death may leave `NAME._COPYING_`, which the next put of NAME replaces.

use super::Client;
use crate::error::{ErrorKind, GfsError, Result};
use std::io::Read;

/// Suffix of the temporary name a put writes under.
pub const COPYING_SUFFIX: &str = "._COPYING_";

impl Client {
    /// Creates `path` with everything `r` yields, atomically: readers see either no file or
    /// the whole of it. Fails if `path` exists. Returns the bytes written.
    pub fn put(&self, path: &str, r: &mut impl Read) -> Result<u64> {
        let target = path.trim_end_matches('/');
        match self.stat(target) {
            Ok(_) => return Err(GfsError::fs(ErrorKind::AlreadyExists, format!("{target} already exists"))),
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        let temp = format!("{target}{COPYING_SUFFIX}");
        // Left by an earlier put of the same name that was cut short.
        match self.delete(&temp) {
            Err(e) if e.kind() != Some(ErrorKind::NotFound) => return Err(e),
            _ => {}
        }
        self.create(&temp)?;
        // With the light durability level the data is made durable before the name appears.
        let written = match self.write_from(&temp, r).and_then(|n| self.sync(&temp).map(|()| n)) {
            Ok(n) => n,
            Err(e) => {
                self.discard(&temp);
                return Err(e);
            }
        };
        if let Err(e) = self.rename(&temp, target) {
            // The master may have renamed it and then failed to answer.
            let landed = self.stat(target).is_ok_and(|s| s.size == written)
                && self.stat(&temp).is_err_and(|t| t.kind() == Some(ErrorKind::NotFound));
            if !landed {
                self.discard(&temp);
                return Err(e);
            }
        }
        Ok(written)
    }

    fn discard(&self, temp: &str) {
        if let Err(e) = self.delete(temp) {
            tracing::warn!("could not remove {temp} after a failed put: {e}");
        }
    }
}
