//! Error type of the library. Errors that cross the wire are carried as [`RemoteError`].

use serde::{Deserialize, Serialize};
use std::io;

/// Result alias used throughout the library.
pub type Result<T, E = GfsError> = std::result::Result<T, E>;

/// The kind of an error that the master or a chunkserver reports to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    NotEmpty,
    InvalidPath,
    InvalidArgument,
    UnknownChunk,
    StaleVersion,
    NoLease,
    Corrupt,
    ReadPastEnd,
    DiskFull,
    NoReplicas,
    Unavailable,
    Io,
    Protocol,
    /// A compare-and-set found another generation than expected.
    Conflict,
    /// A write carried an older (or no) fencing generation.
    Fenced,
    /// A master replica that does not lead refused a request; the message names the leader
    /// when one is known (see [`not_leader`] and [`leader_hint`]).
    NotLeader,
    /// A chunkserver's disk returned an I/O error (EIO) or went read-only: it takes no writes
    /// until a probe succeeds again (see `chunkserver/disk.rs`).
    DiskFailed,
}

const LEADER_IS: &str = "the leader is ";

/// The refusal of a master replica that does not lead, naming `leader` if known.
pub fn not_leader(leader: Option<&str>) -> GfsError {
    match leader {
        Some(l) => GfsError::fs(ErrorKind::NotLeader, format!("not the leader; {LEADER_IS}{l}")),
        None => GfsError::fs(ErrorKind::NotLeader, "not the leader; no leader is known yet"),
    }
}

/// The leader's address named by a [`not_leader`] refusal.
pub fn leader_hint(e: &RemoteError) -> Option<&str> {
    if e.kind != ErrorKind::NotLeader {
        return None;
    }
    e.message.split_once(LEADER_IS).map(|(_, l)| l.trim()).filter(|l| !l.is_empty())
}

/// An error reported by a remote peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError { kind, message: message.into() }
    }
}

/// Errors of the gfs library.
#[derive(Debug, thiserror::Error)]
pub enum GfsError {
    /// The cause is part of the message and deliberately not also a `source()`: error chains
    /// printed whole (`{:#}`, anyhow) would otherwise say it twice.
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    /// No connection could be made, so the peer cannot have seen any request.
    #[error("connecting to {addr}: {cause}")]
    Connect { addr: String, cause: io::Error },
    /// The peer closed the connection where a message was expected.
    #[error("{0} closed the connection")]
    Closed(String),
    /// A peer sent nothing at all (not even the start of a frame) for `after`.
    #[error("{peer} sent nothing for {after:?}")]
    Quiet { peer: String, after: std::time::Duration },
    #[error("malformed frame: {0}")]
    Frame(String),
    #[error("codec: {0}")]
    Codec(String),
    #[error("{peer}: {error}")]
    Remote { peer: String, error: RemoteError },
    #[error("unexpected reply from {peer}: {what}")]
    UnexpectedReply { peer: String, what: String },
    #[error("operation log: {0}")]
    OpLog(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Fs(RemoteError),
    #[error("write failed after {attempts} attempts: {last}")]
    WriteFailed { attempts: u32, last: String },
    #[error("read failed on every replica: {0}")]
    ReadFailed(String),
    /// The peer refused the secure handshake, or was refused by it (another key, none, or not a
    /// gfs peer at all): trying again cannot help.
    #[error("{0}")]
    Sealing(String),
}

impl GfsError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        GfsError::Io { context: context.into(), cause: source }
    }

    /// The remote error kind, if this error came from a peer.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            GfsError::Remote { error, .. } | GfsError::Fs(error) => Some(error.kind),
            _ => None,
        }
    }

    /// Builds a file-system error (a refusal by the master) from a kind and message.
    pub fn fs(kind: ErrorKind, message: impl Into<String>) -> Self {
        GfsError::Fs(RemoteError::new(kind, message))
    }
}

/// Helper to attach context to `io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| GfsError::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_cause_is_said_once_in_a_full_chain() {
        let e = GfsError::io("reading /d", io::Error::from_raw_os_error(21));
        let chain = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(chain.matches("os error 21").count(), 1, "{chain}");
    }

    #[test]
    fn a_not_leader_refusal_names_the_leader_when_known() {
        let GfsError::Fs(e) = not_leader(Some("127.0.0.1:7001")) else { panic!("not an fs error") };
        assert_eq!(leader_hint(&e), Some("127.0.0.1:7001"));
        let GfsError::Fs(e) = not_leader(None) else { panic!("not an fs error") };
        assert_eq!(leader_hint(&e), None);
        assert_eq!(leader_hint(&RemoteError::new(ErrorKind::Unavailable, "the leader is x")), None);
    }
}
