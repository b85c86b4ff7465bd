//! The FT pair (DESIGN.md, "The FT pair"): a primary that records its VM into a logging channel
//! and holds outputs until the backup has the log they depend on, and a backup that replays
//! that log and goes live where it ends when the primary dies.
//!
//! - [`register`]: the go-live register `ft.NAME` on the gfs master (the test-and-set race);
//! - [`primary`]: the live side: alone, joined by a backup, protected, and the race when the
//!   backup goes silent;
//! - [`join`]: how a backup joins a running VM (a live pre-copy of memory, then a short pause),
//!   with [`progress`] shown on the backup;
//! - [`backup`]: the following side: join, follow, race, go live, then serve as a primary;
//! - [`world`]: the two worlds the vCPU loop runs in while paired;
//! - [`fence`]: the VM's gfs disks fenced by the register, and the halt of a side fenced out;
//! - [`timeline`]: when this side released output, on the wall clock (for split-brain checks);
//! - [`lag`]: how far the backup's replay trails the primary;
//! - [`verify`]: verified mode (outputs compared before they leave) and, with [`primary`] and
//!   [`backup`], the resync a diverged backup asks for.
//!
//! The lines both sides print on stderr (stdout carries the guest's console) are part of the
//! interface: tests and operators read them.

mod accept;
pub mod backup;
pub mod fence;
pub mod join;
pub mod lag;
pub mod port;
pub mod primary;
pub mod progress;
pub mod register;
pub mod timeline;
pub mod verify;
pub mod world;

use ftlog::channel::ChannelConfig;
use ftlog::{CommitLimits, CommitMode};
use std::time::{Duration, Instant};

/// Exit status of a side that lost the go-live race, or whose disk writes were fenced out by
/// the side that won it: it released nothing more and halted.
pub const LOST_RACE_STATUS: u8 = 75;

/// How one side of a pair runs.
#[derive(Clone, Debug)]
pub struct FtConfig {
    /// The VM's name: its go-live register is `ft.NAME`.
    pub name: String,
    /// The gfs master holding the register.
    pub master: String,
    /// Where this side accepts a backup (`--ft-listen`).
    pub listen: String,
    /// This side's id (`--ft-id`, default `HOSTNAME:PID`).
    pub id: String,
    pub commit: CommitMode,
    pub channel: ChannelConfig,
    /// The backup may lag this far behind before the vCPU waits for it (zero: never waits).
    pub max_lag: Duration,
    pub limits: CommitLimits,
    /// How a backup joins this side (`--join-mode`).
    pub join: join::JoinMode,
}

impl FtConfig {
    /// What this side writes into the register: `ID@FT_LISTEN_ADDR`.
    pub fn holder(&self) -> String {
        format!("{}@{}", self.id, self.listen)
    }

    /// The default id: `HOSTNAME:PID`.
    pub fn default_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        format!("{}:{}", if host.is_empty() { "localhost" } else { host }, std::process::id())
    }
}

/// Why a side of the pair could not go on.
#[derive(Debug, thiserror::Error)]
pub enum FtError {
    #[error(
        "register {name} is held by {holder:?} (generation {generation}); if that VM is dead, start with --takeover"
    )]
    Held { name: String, holder: String, generation: u64 },
    #[error("register {name}")]
    Register {
        name: String,
        #[source]
        source: storage::GfsError,
    },
    #[error("cannot listen for a backup on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the primary at {addr}")]
    Join {
        addr: String,
        #[source]
        source: ftlog::channel::ChannelError,
    },
    #[error("the primary at {addr} {what}")]
    Primary { addr: String, what: String },
    #[error(transparent)]
    Vmm(#[from] crate::error::VmmError),
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
    // Not `source`s: their message is part of this one, and a chain printed whole would say it
    // twice.
    #[error("log: {0}")]
    Log(ftlog::LogError),
    #[error("the backup's replay stopped: {0}")]
    Replay(String),
    #[error("a held output could not be released: {0}")]
    Output(devices::virtio::OutputError),
}

impl From<ftlog::LogError> for FtError {
    fn from(error: ftlog::LogError) -> Self {
        FtError::Log(error)
    }
}

impl From<devices::virtio::OutputError> for FtError {
    fn from(error: devices::virtio::OutputError) -> Self {
        FtError::Output(error)
    }
}

/// Whole milliseconds since `at`, as the pair's lines print them.
pub(crate) fn ms_since(at: Instant) -> u128 {
    at.elapsed().as_millis()
}
