//! The primary's end of the channel.

use super::handshake::{self, Hello, Role};
use super::wire::{FrameReader, Message, RecvError, MAX_CHUNK};
use super::{ms, prepare, writer, ChannelConfig, ChannelError, SendError};
use crate::PeerWatch;
use crossbeam_channel::{Receiver, Sender};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the primary's receiver learns besides positions (those go to the [`PeerWatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryEvent {
    /// The backup went silent for `silence`, or its connection broke (`reason` says which).
    BackupLost { silence: Duration, reason: String },
    /// The backup's replay diverged: it wants the full state again.
    ResyncRequested(super::ResyncReason),
    /// The backup applied the state of a resync and follows again.
    ResyncDone,
    /// The backup ended the channel on purpose.
    BackupClosed,
}

/// The primary's end: queue messages with [`Self::try_send`] / [`Self::send_timeout`] (or write
/// the log through [`Self::record_sink`]); the backup's words arrive in the [`PeerWatch`] and
/// [`Self::events`].
pub struct PrimaryLink {
    backup: Hello,
    queue: Sender<Message>,
    events: Receiver<PrimaryEvent>,
    lost: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    /// A resync's state is being copied: the join's longer silence applies until it is done.
    resyncing: Arc<AtomicBool>,
    stream: TcpStream,
    writer: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
    heartbeat: Duration,
}

impl PrimaryLink {
    /// Runs the handshake on a connection the primary accepted and starts the threads. `watch`
    /// learns the backup's acknowledgements, verified positions and every word it says.
    pub fn accept(
        stream: TcpStream,
        ours: &Hello,
        watch: PeerWatch,
        config: &ChannelConfig,
    ) -> Result<Self, ChannelError> {
        prepare(&stream, config)?;
        let (reader, mut sealed) = super::open_sealed(&stream, config, seal::Side::Responder)?;
        let mut frames = FrameReader::new(reader);
        let deadline = Instant::now() + config.handshake_timeout;
        let backup = handshake::exchange(&mut sealed, &mut frames, ours, config.version, Role::Backup, deadline)?;
        watch.heard_now();
        let (queue, outgoing) = crossbeam_channel::bounded(config.queue.max(1));
        let (events_tx, events) = crossbeam_channel::bounded(16);
        let lost = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let resyncing = Arc::new(AtomicBool::new(false));
        let writer = {
            let stream = sealed;
            let heartbeat = config.heartbeat;
            let stamp = writer::Stamp::Own(watch.clone());
            std::thread::Builder::new()
                .name("ft-primary-send".into())
                .spawn(move || writer::run(stream, outgoing, heartbeat, stamp, None))?
        };
        let receiver = {
            let receive = Receive {
                frames,
                stream: stream.try_clone()?,
                watch,
                events: events_tx,
                lost: lost.clone(),
                closing: closing.clone(),
                resyncing: resyncing.clone(),
                timeout: config.timeout,
                join_timeout: config.join_timeout.max(config.timeout),
            };
            std::thread::Builder::new().name("ft-primary-recv".into()).spawn(move || receive.run())?
        };
        Ok(Self {
            backup,
            queue,
            events,
            lost,
            closing,
            resyncing,
            stream,
            writer: Some(writer),
            receiver: Some(receiver),
            heartbeat: config.heartbeat,
        })
    }

    /// The backup's Hello.
    pub fn backup(&self) -> &Hello {
        &self.backup
    }

    pub fn events(&self) -> &Receiver<PrimaryEvent> {
        &self.events
    }

    /// Whether the receiver has declared the backup lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Queues `message` if there is room now.
    pub fn try_send(&self, message: Message) -> Result<(), SendError> {
        if self.is_lost() {
            return Err(SendError::Lost);
        }
        Ok(self.queue.try_send(message)?)
    }

    /// Queues `message`, waiting at most `wait` for room.
    pub fn send_timeout(&self, message: Message, wait: Duration) -> Result<(), SendError> {
        if self.is_lost() {
            return Err(SendError::Lost);
        }
        Ok(self.queue.send_timeout(message, wait)?)
    }

    /// Queues `message`, waiting for room as long as the backup is alive.
    fn send_while_alive(&self, mut message: Message) -> Result<(), SendError> {
        loop {
            match self.send_timeout(message, self.heartbeat) {
                Err(SendError::Full(back)) => message = back,
                other => return other,
            }
        }
    }

    /// Tells the backup that outputs produced up to `position` have been released.
    pub fn send_released(&self, position: u64) -> Result<(), SendError> {
        self.try_send(Message::Released { position })
    }

    /// Sends the digest of output number `sequence` (verified mode), waiting for queue room
    /// while the backup is alive: a digest the backup never gets would read as a mismatch.
    pub fn send_output_digest(&self, sequence: u64, digest: [u8; 32]) -> Result<(), SendError> {
        self.send_while_alive(Message::OutputDigest { sequence, digest })
    }

    /// Sends the outputs held across a resync (encoded by
    /// [`crate::output_commit::carry::encode`]), before [`Self::send_resync_begin`], so that a
    /// backup that goes live from the resync's state can issue again what this side never did.
    pub fn send_resync_held(&self, held: &[u8]) -> Result<(), SendError> {
        for chunk in held.chunks(MAX_CHUNK) {
            self.send_while_alive(Message::ResyncHeld(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Announces a resync: the full state at `Exit(exits)` follows, `outputs` having been
    /// emitted before it.
    pub fn send_resync_begin(&self, exits: u64, outputs: u64) -> Result<(), SendError> {
        self.resyncing.store(true, Ordering::Release);
        self.send_while_alive(Message::ResyncBegin { exits, outputs })
    }

    /// Streams a snapshot (e.g. what `vmm::snapshot::save_to` wrote) as state chunks and the end
    /// marker; returns the bytes sent. Waits for queue room while the backup is alive.
    pub fn send_state<R: Read>(&self, mut state: R) -> Result<u64, ChannelError> {
        let mut total = 0u64;
        let lost = |_| ChannelError::Lost("the backup went away during the state transfer".into());
        loop {
            let mut chunk = vec![0u8; MAX_CHUNK];
            let got = loop {
                match state.read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if got == 0 {
                break;
            }
            chunk.truncate(got);
            total += got as u64;
            self.send_while_alive(Message::StateChunk(chunk)).map_err(lost)?;
        }
        self.send_while_alive(Message::StateEnd { total }).map_err(lost)?;
        Ok(total)
    }

    /// A writer for the full state: what `vmm::snapshot::save_to` writes into it leaves as
    /// state chunks while it is written (no second copy of guest memory is made);
    /// [`StateSink::finish`] sends the end marker.
    pub fn state_sink(&self) -> StateSink<'_> {
        StateSink { link: self, pending: Vec::with_capacity(MAX_CHUNK), total: 0 }
    }

    /// An owned writer of state chunks (a join's transfer, see [`super::transfer`]), which can
    /// be handed from thread to thread; [`super::TransferSink::finish`] sends the end marker.
    pub fn transfer_sink(&self) -> super::TransferSink {
        super::TransferSink::new(self.queue.clone(), self.lost.clone(), self.heartbeat)
    }

    /// A writer for the log stream: give it to a [`crate::LogWriter`] (or
    /// [`crate::RecordingWorld`]) and every byte it writes becomes Records messages. A full queue
    /// makes it wait (the caller's log flush blocks), never grow; a lost backup makes it fail.
    pub fn record_sink(&self) -> RecordSink {
        RecordSink { queue: self.queue.clone(), lost: self.lost.clone(), heartbeat: self.heartbeat }
    }

    /// Ends the channel on purpose: the queued messages and a Close go out first (waiting at
    /// most `wait`), then the connection is shut down.
    pub fn close(mut self, wait: Duration) {
        self.closing.store(true, Ordering::Release);
        let _ = self.queue.send_timeout(Message::Close, wait);
        self.finish(wait);
    }

    /// Breaks the connection at once, as a crashed host would (nothing more is sent).
    pub fn abort(&self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn finish(&mut self, wait: Duration) {
        // Dropping our queue sender lets the writer drain and stop once the sinks are gone.
        let (dead, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.queue, dead));
        let deadline = Instant::now() + wait;
        let until_finished = |thread: &Option<JoinHandle<()>>| {
            while thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        until_finished(&self.writer);
        // Linger until the backup closes its side too: closing a socket with its words still
        // unread would answer with a reset, and a reset destroys whatever the backup has not
        // read yet (the end of the log, the Close itself).
        until_finished(&self.receiver);
        let _ = self.stream.shutdown(Shutdown::Both);
        for thread in [self.writer.take(), self.receiver.take()].into_iter().flatten() {
            let _ = thread.join();
        }
    }
}

impl Drop for PrimaryLink {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.finish(Duration::ZERO);
    }
}

/// See [`PrimaryLink::state_sink`].
pub struct StateSink<'a> {
    link: &'a PrimaryLink,
    pending: Vec<u8>,
    total: u64,
}

impl StateSink<'_> {
    fn send_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_CHUNK));
        self.total += chunk.len() as u64;
        self.link.send_while_alive(Message::StateChunk(chunk)).map_err(|_| gone())
    }

    /// Sends what is left and the end marker; returns the bytes of state sent.
    pub fn finish(mut self) -> Result<u64, ChannelError> {
        self.send_pending().map_err(|_| ChannelError::Lost("the backup went away during the state transfer".into()))?;
        self.link
            .send_while_alive(Message::StateEnd { total: self.total })
            .map_err(|_| ChannelError::Lost("the backup went away during the state transfer".into()))?;
        Ok(self.total)
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the backup went away during the state transfer")
}

impl Write for StateSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let take = bytes.len().min(MAX_CHUNK - self.pending.len());
        self.pending.extend_from_slice(&bytes[..take]);
        if self.pending.len() == MAX_CHUNK {
            self.send_pending()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// See [`PrimaryLink::record_sink`].
pub struct RecordSink {
    queue: Sender<Message>,
    lost: Arc<AtomicBool>,
    heartbeat: Duration,
}

impl Write for RecordSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let take = bytes.len().min(MAX_CHUNK);
        let mut message = Message::Records(bytes[..take].to_vec());
        loop {
            if self.lost.load(Ordering::Acquire) {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the backup is lost"));
            }
            match self.queue.send_timeout(message, self.heartbeat) {
                Ok(()) => return Ok(take),
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    tracing::debug!("logging channel: send queue full, the log waits");
                    message = back;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the logging channel is closed"))
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The primary's receiver thread.
struct Receive {
    frames: FrameReader<seal::Reader>,
    stream: TcpStream,
    watch: PeerWatch,
    events: Sender<PrimaryEvent>,
    lost: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    resyncing: Arc<AtomicBool>,
    timeout: Duration,
    /// `timeout` until the backup's first acknowledgement (while the state is copied).
    join_timeout: Duration,
}

impl Receive {
    fn run(mut self) {
        let mut last_word = Instant::now();
        let mut joined = false;
        let reason = loop {
            let copying = !joined || self.resyncing.load(Ordering::Acquire);
            let timeout = if copying { self.join_timeout } else { self.timeout };
            let message = match self.frames.next(last_word + timeout) {
                Ok(message) => message,
                Err(RecvError::Idle) => break format!("no word for {} ms", ms(last_word.elapsed())),
                Err(error) => break error.to_string(),
            };
            last_word = Instant::now();
            // Every word proves the backup alive (silence detection above), but only an echoed
            // heartbeat renews the lease: it says when this side asked.
            match message {
                Message::Ack { position } => {
                    joined = true;
                    self.watch.set_acked(position);
                }
                Message::Verified { position } => self.watch.set_verified(position),
                Message::Heartbeat { stamp } => self.watch.heard_at(stamp),
                Message::ResyncRequest { reason } => {
                    let reason = super::ResyncReason::from_code(reason);
                    let _ = self.events.try_send(PrimaryEvent::ResyncRequested(reason));
                }
                Message::ResyncDone => {
                    self.resyncing.store(false, Ordering::Release);
                    let _ = self.events.try_send(PrimaryEvent::ResyncDone);
                }
                Message::Close => {
                    self.lost.store(true, Ordering::Release);
                    let _ = self.stream.shutdown(Shutdown::Both);
                    let _ = self.events.try_send(PrimaryEvent::BackupClosed);
                    return;
                }
                other => break format!("the backup sent a primary's message ({})", other.name()),
            }
        };
        let silence = last_word.elapsed();
        self.lost.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        if !self.closing.load(Ordering::Acquire) {
            tracing::warn!(silence_ms = ms(silence) as u64, %reason, "logging channel: backup lost");
            let _ = self.events.try_send(PrimaryEvent::BackupLost { silence, reason });
        }
    }
}
