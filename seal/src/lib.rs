//! Authenticated, encrypted channels for gfs and the ftvm logging channel (issue 15, point 1).
//!
//! Every TCP connection of the cluster opens with a Noise handshake (through `snow`, pattern
//! `NNpsk0`: fresh ephemeral keys on both sides, mixed with a pre-shared cluster key from the
//! first message on). Only a peer holding the same cluster key completes it, so the handshake
//! is the mutual authentication, and the keys it derives encrypt the rest of the connection.
//! After it, the byte stream travels in sealed records (`u16 LE length | AEAD ciphertext`, at
//! most 65535 bytes each, the Noise limit); the nonce of each record is a counter kept by each
//! side per direction and never sent, so a record that is altered, replayed, dropped or
//! reordered fails to verify and the connection is refused.
//!
//! - [`keys`]: the key directory `gfs keygen DIR` / `ftvm keygen DIR` makes, and loading it;
//! - [`handshake`]: [`open`], the handshake on a connected stream;
//! - [`stream`]: the sealed [`Reader`] and [`Writer`] halves (each usable from its own
//!   thread, as the callers split a `TcpStream` with `try_clone`).
//!
//! [`Security`] says whether a process seals its channels; commands take it from `--keys DIR`,
//! env `FT_KEYS`, or an explicit `--insecure` ([`Security::resolve`]).

pub mod handshake;
pub mod keys;
pub mod stream;

pub use handshake::{open, Side};
pub use keys::{generate, ClusterKey, KEY_FILE};
pub use stream::{Reader, Writer};

use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The environment variable commands read the key directory from when `--keys` is not given.
pub const KEYS_ENV: &str = "FT_KEYS";

/// Why a key could not be made or loaded, or a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    // The cause is part of the message, so it is no `source` (a field of that name would be):
    // a chain printed whole would say it twice.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0}")]
    Key(String),
    /// The peer does not hold this cluster's key (or none): the handshake is refused.
    #[error("secure handshake with {peer} refused: {reason}")]
    Refused { peer: String, reason: String },
    /// The peer closed the connection before it answered the first message: a peer that does
    /// not seal its channels, or does not speak this protocol, does that; so does one that went
    /// down in that instant (a restart), which a caller may try once more.
    #[error("secure handshake with {peer} refused: {reason}")]
    HungUp { peer: String, reason: String },
    #[error("secure handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl SealError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SealError::Io { context: context.into(), cause: source }
    }
}

/// Whether a process's channels are sealed, and with which key.
#[derive(Clone)]
pub enum Security {
    /// Every channel is authenticated and encrypted with this cluster key.
    Sealed(Arc<ClusterKey>),
    /// Plain TCP, chosen explicitly with `--insecure`.
    Insecure,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Sealed(key) => write!(f, "Sealed(key {})", key.fingerprint()),
            Security::Insecure => write!(f, "Insecure"),
        }
    }
}

impl Security {
    /// Loads the cluster key from key directory `dir`.
    pub fn from_dir(dir: &Path) -> Result<Security, SealError> {
        Ok(Security::Sealed(Arc::new(ClusterKey::load(dir)?)))
    }

    /// What a command that opens network channels runs with: the key directory of `--keys`
    /// (clap fills it from [`KEYS_ENV`] too), or plain TCP if `insecure` (which wins, and says
    /// so at start with a warning), or an error naming both ways out.
    pub fn resolve(keys: Option<&Path>, insecure: bool) -> Result<Security, SealError> {
        if insecure {
            tracing::warn!(
                "running with --insecure: network channels are neither authenticated nor encrypted, \
                 anyone who can reach a port can speak on them"
            );
            return Ok(Security::Insecure);
        }
        match keys {
            Some(dir) => {
                let security = Security::from_dir(dir)?;
                if let Security::Sealed(key) = &security {
                    tracing::info!(keys = %dir.display(), fingerprint = %key.fingerprint(), "channels sealed with the cluster key");
                }
                Ok(security)
            }
            None => Err(SealError::Usage(format!(
                "this command opens network channels: give --keys DIR (or set {KEYS_ENV}=DIR; \
                 `gfs keygen DIR` makes one) or run with --insecure"
            ))),
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, Security::Sealed(_))
    }
}

static PROCESS: OnceLock<Security> = OnceLock::new();

/// Sets the security of every channel this process opens without being given one explicitly
/// (the gfs client's and servers' connections). The first call wins; `false` if it was set
/// already to something else.
pub fn install(security: Security) -> bool {
    let wanted = security.is_sealed();
    let fingerprint = match &security {
        Security::Sealed(key) => Some(key.fingerprint().to_owned()),
        Security::Insecure => None,
    };
    let current = PROCESS.get_or_init(|| security);
    current.is_sealed() == wanted
        && match current {
            Security::Sealed(key) => Some(key.fingerprint().to_owned()) == fingerprint,
            Security::Insecure => true,
        }
}

/// The security [`install`]ed for this process; an error (naming the fix) if none was.
pub fn installed() -> Result<Security, SealError> {
    PROCESS.get().cloned().ok_or_else(|| {
        SealError::Usage(
            "no channel security is set for this process: load a key directory (--keys DIR or FT_KEYS) \
             or choose --insecure"
                .into(),
        )
    })
}
