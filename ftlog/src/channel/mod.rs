//! The logging channel between a primary and its backup (issue 11, points 2 and 4): one TCP
//! connection per pair carrying the handshake, the primary's full state, its log records in
//! exactly the `--record` byte format, heartbeats and release markers one way, and
//! acknowledgements, verified positions, heartbeats and resync requests the other way.
//!
//! Each side runs a receiver thread (the vCPU thread never blocks on the socket) and a writer
//! thread fed by a bounded queue (a full queue is a typed [`SendError::Full`] the caller can wait
//! on). The writer also sends a heartbeat every [`ChannelConfig::heartbeat`]; a receiver that
//! hears nothing for [`ChannelConfig::timeout`], or sees the connection break, reports the peer
//! lost: the primary as [`PrimaryEvent::BackupLost`] (its [`crate::PeerWatch`] stops being
//! refreshed), the backup as [`BackupEvent::PrimaryLost`] and a final [`crate::FeedItem::Lost`]
//! after the last complete record (a partial record at the tail is dropped).
//!
//! - [`wire`]: message framing (length, length check, type, body, CRC-32C, a bound per type);
//! - [`handshake`]: magic, protocol version, role, generation, addresses, machine description;
//! - [`primary`]: [`PrimaryLink`], the primary's end;
//! - [`backup`]: [`BackupLink`], the backup's end, which turns the stream into a
//!   [`crate::ChannelFeed`] with the log's own reader;
//! - [`transfer`]: the versioned format of the state a join streams (pre-copy rounds of pages,
//!   the machine state, a digest).

pub mod backup;
pub mod handshake;
pub mod primary;
pub mod transfer;
pub mod verify;
pub mod wire;
mod writer;

pub use backup::{BackupEvent, BackupLink, StateReader};
pub use handshake::{Hello, Role, LINK_MAGIC, MAX_NAME, PROTOCOL_VERSION};
pub use primary::{PrimaryEvent, PrimaryLink, RecordSink, StateSink};
pub use transfer::TransferSink;
pub use verify::OutputCheck;
pub use wire::{FrameError, Malformed, Message};

use std::net::TcpStream;
use std::time::Duration;

/// Why a backup asks for a resync (the body of [`Message::ResyncRequest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// The replay's exit digests differ from the primary's.
    Diverged,
    /// An output of the replay differs from the primary's (verified mode).
    OutputDiffered,
}

impl ResyncReason {
    pub fn code(self) -> u8 {
        match self {
            ResyncReason::Diverged => 1,
            ResyncReason::OutputDiffered => 2,
        }
    }

    /// The reason for `code`; an unknown code reads as a divergence (a resync either way).
    pub fn from_code(code: u8) -> Self {
        match code {
            2 => ResyncReason::OutputDiffered,
            _ => ResyncReason::Diverged,
        }
    }

    /// As the `ft: resync N (REASON) ...` lines print it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Diverged => "replay diverged",
            ResyncReason::OutputDiffered => "output differed",
        }
    }
}

/// Timing and buffer bounds of a channel.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// How often each side sends a heartbeat (`--heartbeat-ms`).
    pub heartbeat: Duration,
    /// Silence longer than this means the peer is gone (`--timeout-ms`).
    pub timeout: Duration,
    /// Messages the send queue holds (each at most [`wire::MAX_CHUNK`] bytes of payload).
    pub queue: usize,
    /// Records the backup's feed holds before its receiver stops reading the socket. The backup
    /// acknowledges log as it enters the feed, and the primary's flow control (`--max-lag-ms`)
    /// follows those acknowledgements, so the replay trails the acknowledged log by at most
    /// this many records: small enough that a slow backup's replay stays near the bound (with
    /// 4096, a backup at a sixth of its speed trailed by 1.2 s against a 50 ms bound), large
    /// enough that a replay keeping up never waits for the socket.
    pub feed_bound: usize,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    /// The silence that means the peer is gone while the full state is being copied, before
    /// the log flows: a join moves the whole of guest memory, and a loaded host may starve
    /// either side's threads for longer than `timeout` meanwhile.
    pub join_timeout: Duration,
    /// The protocol version this side announces: [`PROTOCOL_VERSION`]; another value only to
    /// see a mismatch refused.
    pub version: u16,
    /// How the channel is sealed (`--keys DIR`), or plain TCP (`--insecure`).
    pub security: seal::Security,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
            queue: 32,
            feed_bound: 256,
            handshake_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(5),
            version: PROTOCOL_VERSION,
            security: seal::Security::Insecure,
        }
    }
}

impl ChannelConfig {
    /// The socket read timeout: how often a receiver looks at the clock while nothing arrives.
    pub(crate) fn poll(&self) -> Duration {
        (self.heartbeat / 2).clamp(Duration::from_millis(1), self.timeout.max(Duration::from_millis(1)))
    }
}

/// Why a channel could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("logging channel protocol version mismatch: this side speaks {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("logging channel handshake failed: {0}")]
    Handshake(String),
    /// The secure handshake failed: the peer holds another key, none, or is not a peer at all.
    #[error("logging channel: {0}")]
    Sealing(String),
    // Not a `source`: the message says the cause, and a chain printed whole would say it twice.
    #[error("logging channel I/O error: {0}")]
    Io(std::io::Error),
    #[error("the logging channel is lost: {0}")]
    Lost(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl From<std::io::Error> for ChannelError {
    fn from(error: std::io::Error) -> Self {
        ChannelError::Io(error)
    }
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The bounded send queue is full: wait (the writer drains it as the peer reads) and retry
    /// with the returned message.
    #[error("the logging channel's send queue is full")]
    Full(Message),
    /// The channel is gone; nothing more will be sent.
    #[error("the logging channel is lost")]
    Lost,
}

impl From<crossbeam_channel::TrySendError<Message>> for SendError {
    fn from(error: crossbeam_channel::TrySendError<Message>) -> Self {
        match error {
            crossbeam_channel::TrySendError::Full(message) => SendError::Full(message),
            crossbeam_channel::TrySendError::Disconnected(_) => SendError::Lost,
        }
    }
}

impl From<crossbeam_channel::SendTimeoutError<Message>> for SendError {
    fn from(error: crossbeam_channel::SendTimeoutError<Message>) -> Self {
        match error {
            crossbeam_channel::SendTimeoutError::Timeout(message) => SendError::Full(message),
            crossbeam_channel::SendTimeoutError::Disconnected(_) => SendError::Lost,
        }
    }
}

/// The name both ends of a sealed logging channel agree on in the handshake.
const SEAL_PROTOCOL: &str = "ftvm-log";

/// Opens the sealed (or, `--insecure`, plain) channel on `stream`; a peer refused at the
/// handshake is logged on this side (the peer logs its own).
fn open_sealed(
    stream: &TcpStream,
    config: &ChannelConfig,
    side: seal::Side,
) -> Result<(seal::Reader, seal::Writer), ChannelError> {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "the peer".into());
    seal::open(stream.try_clone()?, &config.security, SEAL_PROTOCOL, side, &peer, config.handshake_timeout).map_err(
        |error| {
            tracing::warn!(%error, "logging channel: handshake refused");
            ChannelError::Sealing(error.to_string())
        },
    )
}

/// Sets the socket up for a latency-bound stream with timed reads.
fn prepare(stream: &TcpStream, config: &ChannelConfig) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(config.poll()))
}

/// Whole milliseconds, for messages.
fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}
