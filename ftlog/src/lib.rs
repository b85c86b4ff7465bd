//! Replication of a VM as a log: the log format, the recorder (primary) and the replayer
//! (backup), the logging channel between a primary and its backup ([`channel`]), and later
//! output commit, the go-live race and go-live.
//!
//! The VMM's view:
//! - primary: wrap the live world in a [`RecordingWorld`], pass it to the board as the
//!   [`devices::EventSource`], and tell it each exit ([`RecordingWorld::record_exit`]), each
//!   injected interrupt and each preemption checkpoint;
//! - replay/backup: pass a [`ReplayWorld`] instead and make the same calls on it
//!   ([`ReplayWorld::check_exit`], [`ReplayWorld::expect_interrupt`], ...) at the same points.
//! - snapshots: when the primary saves a snapshot at an exit boundary it calls
//!   [`RecordingWorld::mark_snapshot`]; a replay from boot calls
//!   [`ReplayWorld::pass_snapshot_mark`] at every exit boundary, and a replay that restores the
//!   snapshot calls [`ReplayWorld::skip_to_snapshot`] first (see the `replay` module docs).

pub mod channel;
pub mod checkpoint;
pub mod digest;
pub mod feed;
pub mod format;
pub mod machine;
pub mod output_commit;
pub mod peer;
pub mod recorder;
pub mod replay;

pub use channel::{BackupEvent, BackupLink, ChannelConfig, ChannelError, Hello, PrimaryEvent, PrimaryLink, Role};
pub use checkpoint::{CheckpointError, DeltaCheckpoint, PageData, PAGE_SIZE};
pub use digest::{ExitKind, ExitSignature, RunningDigest};
pub use feed::{ChannelFeed, FeedItem, FeedSender, RecordFeed};
pub use format::{landmark_key, Corruption, End, LogError, LogHeader, LogReader, LogWriter, Record, RecordKind};
pub use machine::MachineDescription;
pub use output_commit::{CommitLimits, CommitMode, CommitStats, HeldOutput, OutputCommit, Space};
pub use peer::PeerWatch;
pub use recorder::{LogStats, Recorded, RecordingWorld};
pub use replay::{Divergence, ReplayError, ReplayWorld};
