//! The backup's end of the channel: its receiver thread turns the incoming stream into the
//! snapshot stream ([`StateReader`]) and a [`ChannelFeed`] of records parsed by the log's own
//! reader ([`LogReader`]), so every record carries the stream position the primary's
//! [`crate::LogWriter`] gave it.

use super::handshake::{self, Hello, Role};
use super::wire::{FrameReader, Message, RecvError};
use super::{ms, prepare, writer, ChannelConfig, ChannelError, SendError};
use crate::feed::{ChannelFeed, FeedItem, FeedSender};
use crate::format::{LogError, LogReader};
use crossbeam_channel::{Receiver, Sender};
use std::io::Read;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the backup's receiver reports besides the feed's own end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEvent {
    /// The primary went silent for `silence`, or its connection broke (`reason` says which).
    PrimaryLost { silence: Duration, reason: String },
    /// The primary ended the channel on purpose.
    PrimaryClosed,
}

/// A resync the primary began: its state at `Exit(exits)`, then the log goes on from a snapshot
/// mark there. Handed over by rendezvous, so every record the feed held before it is older.
pub struct Resync {
    pub exits: u64,
    /// Outputs the primary had emitted before the landmark.
    pub outputs: u64,
    /// The outputs the primary held across the resync, encoded
    /// ([`crate::output_commit::carry::decode`] reads them).
    pub held: Vec<u8>,
    pub state: StateReader,
}

/// The most bytes of held outputs one resync may carry: the primary's default bound on what it
/// holds (64 MiB of payload, 65,536 outputs) with room for the entries' heads and other limits.
pub const MAX_CARRIED: usize = 256 << 20;

enum StateItem {
    Chunk(Vec<u8>),
    End { total: u64 },
}

/// The backup's end.
pub struct BackupLink {
    primary: Hello,
    queue: Sender<Message>,
    events: Receiver<BackupEvent>,
    feed: Receiver<ChannelFeed>,
    state: Option<Receiver<StateItem>>,
    resyncs: Receiver<Resync>,
    check: Arc<super::OutputCheck>,
    released: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    stream: TcpStream,
    /// Set when the link is dropped: the receiver stops waiting for room in the feed.
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BackupLink {
    /// Connects to the primary's `--ft-listen` address and runs the handshake.
    pub fn connect(addr: impl ToSocketAddrs, ours: &Hello, config: &ChannelConfig) -> Result<Self, ChannelError> {
        let stream = TcpStream::connect(addr)?;
        Self::start(stream, ours, config)
    }

    /// Runs the handshake on a connected stream and starts the threads.
    pub fn start(stream: TcpStream, ours: &Hello, config: &ChannelConfig) -> Result<Self, ChannelError> {
        prepare(&stream, config)?;
        let (reader, mut sealed) = super::open_sealed(&stream, config, seal::Side::Initiator)?;
        let mut frames = FrameReader::new(reader);
        let deadline = Instant::now() + config.handshake_timeout;
        let primary = handshake::exchange(&mut sealed, &mut frames, ours, config.version, Role::Primary, deadline)?;
        let (queue, outgoing) = crossbeam_channel::bounded(config.queue.max(1));
        let (events_tx, events) = crossbeam_channel::bounded(16);
        let (feed_tx, feed) = crossbeam_channel::bounded(1);
        let (state_tx, state) = crossbeam_channel::bounded(config.queue.max(1));
        let (nudge_tx, nudge) = crossbeam_channel::bounded(1);
        let (resyncs_tx, resyncs) = crossbeam_channel::bounded(0);
        let check = Arc::new(super::OutputCheck::new(queue.clone()));
        let released = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        // The stamp of the primary's latest heartbeat, echoed in ours.
        let echo = Arc::new(AtomicU64::new(0));
        let writer = {
            let stream = sealed;
            let acks = writer::Acks { held: held.clone(), nudge };
            let heartbeat = config.heartbeat;
            let stamp = writer::Stamp::Echo(echo.clone());
            std::thread::Builder::new()
                .name("ft-backup-send".into())
                .spawn(move || writer::run(stream, outgoing, heartbeat, stamp, Some(acks)))?
        };
        let receiver = {
            let source = WireSource {
                frames,
                pending: Vec::new(),
                used: 0,
                last_word: Instant::now(),
                timeout: config.timeout,
                join_timeout: config.join_timeout.max(config.timeout),
                state: Some(state_tx),
                state_bound: config.queue.max(1),
                resyncs: resyncs_tx,
                check: check.clone(),
                released: released.clone(),
                held: held.clone(),
                echo,
                nudge: nudge_tx,
                ended: Arc::new(Mutex::new(None)),
                stop: stop.clone(),
                poll: config.poll(),
                log_started: false,
                carried: Vec::new(),
            };
            let stream = stream.try_clone()?;
            let bound = config.feed_bound.max(1);
            std::thread::Builder::new()
                .name("ft-backup-recv".into())
                .spawn(move || receive(source, stream, bound, feed_tx, events_tx))?
        };
        Ok(Self {
            primary,
            queue,
            events,
            feed,
            state: Some(state),
            resyncs,
            check,
            released,
            held,
            stream,
            stop,
            threads: vec![writer, receiver],
        })
    }

    /// The primary's Hello (its machine description, generation, address and id).
    pub fn primary(&self) -> &Hello {
        &self.primary
    }

    pub fn events(&self) -> &Receiver<BackupEvent> {
        &self.events
    }

    /// The primary's full state as a byte stream (read it before waiting for the feed: the
    /// state precedes the log on the wire). `None` if it was already taken.
    pub fn state_reader(&mut self) -> Option<StateReader> {
        self.state.take().map(|items| StateReader { items, current: Vec::new(), used: 0, total: 0, done: false })
    }

    /// The feed of records, once the log's header has arrived (waits at most `wait`).
    pub fn feed(&self, wait: Duration) -> Result<ChannelFeed, ChannelError> {
        self.feed.recv_timeout(wait).map_err(|error| match error {
            crossbeam_channel::RecvTimeoutError::Timeout => ChannelError::Timeout("the log header"),
            crossbeam_channel::RecvTimeoutError::Disconnected => {
                ChannelError::Lost("the stream ended before the log header".into())
            }
        })
    }

    /// The highest stream position the primary says it released outputs through.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// The release marker itself, for a world that drops released outputs at every exit.
    pub fn released_marker(&self) -> Arc<AtomicU64> {
        self.released.clone()
    }

    /// The stream position of the last complete record pushed into the feed (what is acked).
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Tells the primary the replay reached `position` with identical outputs.
    pub fn send_verified(&self, position: u64) -> Result<(), SendError> {
        Ok(self.queue.try_send(Message::Verified { position })?)
    }

    /// Asks the primary for its full state again.
    pub fn request_resync(&self, reason: super::ResyncReason) -> Result<(), SendError> {
        Ok(self.queue.try_send(Message::ResyncRequest { reason: reason.code() })?)
    }

    /// A resync the primary has begun, if one waits (see [`Resync`]).
    pub fn take_resync(&self, wait: Duration) -> Option<Resync> {
        self.resyncs.recv_timeout(wait).ok()
    }

    /// Tells the primary the resync's state is applied.
    pub fn send_resync_done(&self) -> Result<(), SendError> {
        Ok(self.queue.send_timeout(Message::ResyncDone, Duration::from_secs(1))?)
    }

    /// The comparison of outputs in verified mode (fed with the primary's digests here).
    pub fn output_check(&self) -> Arc<super::OutputCheck> {
        self.check.clone()
    }

    /// Breaks the connection at once.
    pub fn abort(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for BackupLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        let (dead, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.queue, dead));
        // The receiver may be blocked handing the consumer a state chunk or a record: dropping
        // our ends of those channels releases it.
        self.state = None;
        let (_, no_resyncs) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.resyncs, no_resyncs));
        let (_, no_feed) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.feed, no_feed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The primary's snapshot stream, chunk by chunk as it arrives. Ends cleanly only at the end
/// marker with the announced length; a stream cut before it is an `UnexpectedEof` error.
pub struct StateReader {
    items: Receiver<StateItem>,
    current: Vec<u8>,
    used: usize,
    total: u64,
    done: bool,
}

impl Read for StateReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.used == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.items.recv() {
                Ok(StateItem::Chunk(chunk)) => {
                    self.total += chunk.len() as u64;
                    self.current = chunk;
                    self.used = 0;
                }
                Ok(StateItem::End { total }) if total == self.total => self.done = true,
                Ok(StateItem::End { total }) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("the state stream announced {total} bytes but carried {}", self.total),
                    ))
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the state stream ended before its end marker",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.used);
        buf[..n].copy_from_slice(&self.current[self.used..self.used + n]);
        self.used += n;
        Ok(n)
    }
}

/// The end cause is only written by the receiver thread; a poisoned lock still holds it.
fn lock(ended: &Mutex<Option<Ended>>) -> MutexGuard<'_, Option<Ended>> {
    ended.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How the incoming stream ended.
#[derive(Clone, Debug)]
enum Ended {
    Closed,
    Lost { silence: Duration, reason: String },
}

/// The log bytes of the incoming stream as a `Read`, for [`LogReader`]: every other message is
/// handled on the way (state chunks, release markers, heartbeats), and the end of the channel
/// reads as end of input (its cause is kept in `ended`).
struct WireSource {
    frames: FrameReader<seal::Reader>,
    pending: Vec<u8>,
    used: usize,
    last_word: Instant,
    timeout: Duration,
    /// `timeout` while the state is copied, before the log starts.
    join_timeout: Duration,
    state: Option<Sender<StateItem>>,
    state_bound: usize,
    /// Where a resync's state is handed to the backup (a rendezvous).
    resyncs: Sender<Resync>,
    check: Arc<super::OutputCheck>,
    released: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    /// The stamp of the primary's latest heartbeat (echoed by our writer).
    echo: Arc<AtomicU64>,
    nudge: Sender<()>,
    ended: Arc<Mutex<Option<Ended>>>,
    stop: Arc<AtomicBool>,
    poll: Duration,
    log_started: bool,
    /// Held outputs announced for the next resync (see [`Message::ResyncHeld`]).
    carried: Vec<u8>,
}

impl WireSource {
    fn end(&mut self, ended: Ended) {
        lock(&self.ended).get_or_insert(ended);
    }

    /// Takes in the next message; `false` once the channel has ended.
    fn pump(&mut self) -> bool {
        if lock(&self.ended).is_some() {
            return false;
        }
        // While a state is copied (the join's, or a resync's), a loaded host may starve
        // either side for longer than the usual timeout.
        let timeout = if self.log_started && self.state.is_none() { self.timeout } else { self.join_timeout };
        let message = match self.frames.next(self.last_word + timeout) {
            Ok(message) => message,
            Err(error) => {
                let silence = self.last_word.elapsed();
                let reason = match error {
                    RecvError::Idle => format!("no word from the primary for {} ms", ms(silence)),
                    other => other.to_string(),
                };
                self.end(Ended::Lost { silence, reason });
                return false;
            }
        };
        self.last_word = Instant::now();
        match message {
            Message::Records(bytes) => {
                // Log bytes mean the first state is complete (or was never sent).
                if !self.log_started {
                    self.state = None;
                }
                self.log_started = true;
                self.pending = bytes;
                self.used = 0;
            }
            Message::StateChunk(_) | Message::StateEnd { .. } if self.log_started && self.state.is_none() => {
                // After the log began, state comes only after a ResyncBegin.
                let reason = "the primary sent state after the log began, outside a resync".to_string();
                self.end(Ended::Lost { silence: Duration::ZERO, reason });
            }
            Message::ResyncBegin { exits, outputs } => {
                let (state_tx, items) = crossbeam_channel::bounded(self.state_bound);
                let state = StateReader { items, current: Vec::new(), used: 0, total: 0, done: false };
                // The rendezvous: the backup takes it while no record after the landmark is in
                // the feed yet (they follow the state on the wire).
                let held = std::mem::take(&mut self.carried);
                if push(&self.resyncs, Resync { exits, outputs, held, state }, &self.stop, self.poll) {
                    self.state = Some(state_tx);
                }
            }
            Message::ResyncHeld(bytes) if self.carried.len() + bytes.len() > MAX_CARRIED => {
                let reason = format!("the primary sent more than {MAX_CARRIED} bytes of held outputs for a resync");
                self.end(Ended::Lost { silence: Duration::ZERO, reason });
            }
            Message::ResyncHeld(bytes) => self.carried.extend_from_slice(&bytes),
            Message::OutputDigest { sequence, digest } => self.check.theirs(sequence, digest),
            Message::StateChunk(bytes) => {
                if let Some(state) = &self.state {
                    if !push(state, StateItem::Chunk(bytes), &self.stop, self.poll) {
                        self.state = None;
                    }
                }
            }
            Message::StateEnd { total } => {
                if let Some(state) = self.state.take() {
                    push(&state, StateItem::End { total }, &self.stop, self.poll);
                }
            }
            Message::Released { position } => {
                self.released.fetch_max(position, Ordering::AcqRel);
            }
            Message::Heartbeat { stamp } => {
                self.echo.fetch_max(stamp, Ordering::AcqRel);
            }
            Message::Close => self.end(Ended::Closed),
            other => {
                let reason = format!("the primary sent a backup's message ({})", other.name());
                self.end(Ended::Lost { silence: Duration::ZERO, reason });
            }
        }
        true
    }
}

impl Read for WireSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.used == self.pending.len() {
            // The log reader has taken in every byte it was given: acknowledge what it holds.
            let _ = self.nudge.try_send(());
            if !self.pump() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.used);
        buf[..n].copy_from_slice(&self.pending[self.used..self.used + n]);
        self.used += n;
        Ok(n)
    }
}

/// Hands `item` to the consumer, waiting for room while the link lives; `false` if the
/// consumer is gone or the link was dropped.
fn push<T>(to: &Sender<T>, mut item: T, stop: &AtomicBool, poll: Duration) -> bool {
    loop {
        match to.send_timeout(item, poll) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Acquire) => item = back,
            Err(_) => return false,
        }
    }
}

/// The backup's receiver thread.
fn receive(
    source: WireSource,
    stream: TcpStream,
    bound: usize,
    feed_slot: Sender<ChannelFeed>,
    events: Sender<BackupEvent>,
) {
    let ended = source.ended.clone();
    let held = source.held.clone();
    let stop = source.stop.clone();
    let poll = source.poll;
    let report = |feed: Option<&FeedSender>| {
        let _ = stream.shutdown(Shutdown::Both);
        let ended =
            lock(&ended).clone().unwrap_or(Ended::Lost { silence: Duration::ZERO, reason: "the stream ended".into() });
        match ended {
            Ended::Closed => {
                if let Some(feed) = feed {
                    push(feed, FeedItem::Closed, &stop, poll);
                }
                let _ = events.try_send(BackupEvent::PrimaryClosed);
            }
            Ended::Lost { silence, reason } => {
                tracing::warn!(silence_ms = ms(silence) as u64, %reason, "logging channel: primary lost");
                if let Some(feed) = feed {
                    push(feed, FeedItem::Lost(reason.clone()), &stop, poll);
                }
                let _ = events.try_send(BackupEvent::PrimaryLost { silence, reason });
            }
        }
    };
    let mut reader = match LogReader::new(source) {
        Ok(reader) => reader.open_ended(),
        Err(error) => {
            let reason = format!("bad log stream: {error}");
            lock(&ended).get_or_insert(Ended::Lost { silence: Duration::ZERO, reason });
            return report(None);
        }
    };
    let start = reader.offset();
    held.store(start, Ordering::Release);
    let (feed, records) = ChannelFeed::new(reader.header().clone(), start, bound);
    if feed_slot.send(feed).is_err() {
        return report(None);
    }
    while let Some(item) = reader.next() {
        match item {
            Ok((_, record)) => {
                let position = reader.offset();
                if !push(&records, FeedItem::Record { record, position }, &stop, poll) {
                    // Nobody replays any more.
                    return report(None);
                }
                held.store(position, Ordering::Release);
            }
            // The channel ended inside a record: that partial record is dropped.
            Err(LogError::Truncated { .. }) if lock(&ended).is_some() => break,
            Err(error) => {
                push(&records, FeedItem::Failed(error.clone()), &stop, poll);
                let _ = stream.shutdown(Shutdown::Both);
                let reason = format!("bad log stream: {error}");
                let _ = events.try_send(BackupEvent::PrimaryLost { silence: Duration::ZERO, reason });
                return;
            }
        }
    }
    report(Some(&records));
}
