//! Small helpers shared by the servers and the client.

use crate::error::{ErrorKind, GfsError, RemoteError};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A random 64-bit id (seeded by the process's hash keys, the time and a counter).
pub fn random_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

/// Converts a local error into what is sent back to a peer.
pub fn to_remote(e: &GfsError) -> RemoteError {
    match e {
        GfsError::Remote { error, .. } | GfsError::Fs(error) => error.clone(),
        GfsError::Io { cause, .. } if is_disk_full(cause) => RemoteError::new(ErrorKind::DiskFull, e.to_string()),
        GfsError::Io { .. } => RemoteError::new(ErrorKind::Io, e.to_string()),
        GfsError::Frame(_)
        | GfsError::Codec(_)
        | GfsError::Quiet { .. }
        | GfsError::Closed(_)
        | GfsError::UnexpectedReply { .. } => RemoteError::new(ErrorKind::Protocol, e.to_string()),
        _ => RemoteError::new(ErrorKind::Io, e.to_string()),
    }
}

/// Whether an I/O error means the disk is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull
}
