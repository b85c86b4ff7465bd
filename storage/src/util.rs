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
        GfsError::Io { cause, .. } if is_disk_failure(cause) => RemoteError::new(ErrorKind::DiskFailed, e.to_string()),
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

/// Whether an I/O error means the disk itself failed: EIO, or a file system that went
/// read-only under us (ext4 remounts read-only after an I/O error in its journal).
pub fn is_disk_failure(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EROFS))
}

/// Checks an address a chunkserver is known by (`host:port`): what the master connects back
/// to and hands to clients. Returns it as given.
pub fn check_server_addr(addr: &str) -> std::result::Result<String, String> {
    if addr.len() > 255 || addr.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("not a host:port address".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("not a host:port address".into());
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("bad port {port:?}")),
        Ok(_) => {}
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(format!("{host} is a wildcard address no one can connect to"));
    }
    Ok(addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::check_server_addr;

    #[test]
    fn server_addresses() {
        assert!(check_server_addr("127.0.0.1:7001").is_ok());
        assert!(check_server_addr("cs1.example:7001").is_ok());
        assert!(check_server_addr("[::1]:7001").is_ok());
        for bad in ["", "127.0.0.1", "0.0.0.0:7001", "[::]:7001", "h:0", "h:x", ":7001", "a b:1", "a\n:1"] {
            assert!(check_server_addr(bad).is_err(), "{bad:?} accepted");
        }
    }
}
