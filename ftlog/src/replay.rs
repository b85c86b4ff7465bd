//! The replaying side: an event source that answers only from a log.
//!
//! # Ordering
//! Records are consumed strictly in log order, in the order the VMM asks, which must be the
//! order in which the primary asked. Each request names its landmark:
//! - a *required* answer ([`EventSource::read_clock`], [`ReplayWorld::expect_interrupt`],
//!   [`ReplayWorld::take_checkpoint`], an exit digest at a K boundary) must be the next record,
//!   at that landmark, of that kind; anything else is a divergence at the requested landmark;
//! - an *optional* answer ([`EventSource::poll`]) takes the matching records at the head of the
//!   log, or nothing;
//! - when the VMM moves to a later landmark, every record of the earlier ones must have been
//!   consumed; one left over is a divergence at *its* landmark (e.g. an interrupt the replayed
//!   guest did not take where the primary's did).
//!
//! # Snapshots
//! A [`Record::SnapshotMark`] says the primary saved a snapshot at the exit boundary
//! `Exit(n)` (after exit n was handled, before the world's events and interrupts at `Exit(n)`),
//! and restarted its running exit digest there. Both ways of replaying restart theirs at the
//! same point, so every later ExitDigest and the End compare equal:
//! - a replay from boot calls [`ReplayWorld::pass_snapshot_mark`] at every exit boundary (the
//!   top of the vCPU loop, before polling); it consumes the mark when it is there. A mark left
//!   unpassed is a divergence at its landmark when the replay moves on, like any record;
//! - a replay that starts by restoring the snapshot calls [`ReplayWorld::skip_to_snapshot`]
//!   first, then runs from `Exit(n)` exactly as the primary did after saving it (calling
//!   `pass_snapshot_mark` at every boundary too, for later marks).
//!
//! ExitDigest records stay at absolute multiples of K (the recorder's cadence never depends on
//! marks); each covers the exits since the last restart.
//!
//! # Errors
//! `EventSource` methods cannot fail, so the first divergence or log error is latched: from then
//! on the trait methods return benign values (clock 0, no events) and consume nothing, and every
//! direct method returns the latched error. The VMM checks [`ReplayWorld::error`] (or the result
//! of [`ReplayWorld::check_exit`], which it calls at every exit) and stops with
//! `replay: {error}`, which reads `replay: diverged at Exit(n): expected ..., got ...`.

use crate::digest::{ExitSignature, RunningDigest};
use crate::feed::{FeedItem, RecordFeed};
use crate::format::{landmark_key, End, LogError, LogHeader, LogReader, Record};
use crate::recorder::LogStats;
use devices::{ClockId, Deadlines, EventSource, InputKind, Landmark, WorldEvent, WorldStop};
use std::collections::VecDeque;
use std::fmt;
use std::io::Read;
use std::sync::Arc;

/// Replayed exits remembered to explain a digest mismatch.
const RECENT_EXITS: usize = 4;

/// The replayed VM did something other than the recorded one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The landmark where the difference was seen (for an exit digest, the K boundary that
    /// closes the window in which the differing exit lies).
    pub at: Landmark,
    /// What the log holds there.
    pub expected: String,
    /// What the replay did.
    pub got: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "diverged at {}: expected {}, got {}", self.at, self.expected, self.got)
    }
}

impl std::error::Error for Divergence {}

impl From<LogError> for ReplayError {
    fn from(error: LogError) -> Self {
        ReplayError::Log(error)
    }
}

/// Why a replay cannot go on.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Diverged(#[from] Divergence),
    /// The message includes the log error, so it is not also its `source()`.
    #[error("bad log: {0}")]
    Log(LogError),
    /// [`ReplayWorld::skip_to_snapshot`] did not find the mark; `found` says what it found
    /// instead (a record past the boundary, or the end of the log).
    #[error("no snapshot mark at exit {exits} in the log (found {found} first)")]
    NoSnapshotMark { exits: u64, found: String },
}

impl ReplayError {
    pub fn divergence(&self) -> Option<&Divergence> {
        match self {
            ReplayError::Diverged(d) => Some(d),
            ReplayError::Log(_) | ReplayError::NoSnapshotMark { .. } => None,
        }
    }
}

/// Answers every question of the VM from a log; see the module docs for the ordering rules.
pub struct ReplayWorld<F: RecordFeed> {
    feed: F,
    /// One record of lookahead; `None` once the feed is exhausted or failed.
    head: Option<Record>,
    /// Why the feed has no more records, once it said so (closed or lost).
    feed_ended: Option<(bool, String)>,
    current: Option<Landmark>,
    digest: RunningDigest,
    interval: u64,
    /// Exits verified by the last matching exit digest.
    verified: u64,
    recent: VecDeque<ExitSignature>,
    stats: LogStats,
    /// Records consumed when the guest last idled, to detect a replay that cannot progress.
    idle_mark: Option<(Landmark, u64)>,
    consumed: u64,
    /// The last monotonic clock value replayed, for `monotonic_now`.
    last_monotonic: u64,
    /// Stream position at the end of the lookahead record, and at the end of the last record
    /// consumed.
    head_end: u64,
    consumed_end: u64,
    error: Option<ReplayError>,
}

impl<R: Read> ReplayWorld<LogReader<R>> {
    /// Opens a complete log (it must end with an End record).
    pub fn new(input: R) -> Result<Self, LogError> {
        Ok(Self::from_feed(LogReader::new(input)?))
    }
}

impl<F: RecordFeed> ReplayWorld<F> {
    /// Replays from a feed: an opened [`LogReader`] (e.g. [`LogReader::open_ended`] for a log
    /// still being written), or a [`crate::ChannelFeed`] filled from the network.
    pub fn from_feed(feed: F) -> Self {
        let interval = u64::from(feed.header().exit_digest_interval.max(1));
        let start = feed.header().start_exits;
        let start_position = feed.position();
        let mut world = Self {
            feed,
            head: None,
            feed_ended: None,
            current: None,
            digest: RunningDigest::starting_at(start),
            interval,
            verified: start,
            recent: VecDeque::with_capacity(RECENT_EXITS),
            stats: LogStats::default(),
            idle_mark: None,
            consumed: 0,
            last_monotonic: 0,
            head_end: start_position,
            consumed_end: start_position,
            error: None,
        };
        world.head = world.pull();
        world
    }

    pub fn header(&self) -> &LogHeader {
        self.feed.header()
    }

    /// The feed, to drop records a backup waiting for a resync has no use for.
    pub fn feed_mut(&mut self) -> &mut F {
        &mut self.feed
    }

    /// The feed back (a backup starting over from a resync's snapshot mark): the lookahead
    /// record, if any, is dropped.
    pub fn into_feed(self) -> F {
        self.feed
    }

    /// The stream position at the end of the last record the replay consumed: at each point of
    /// the guest's run, the position the recorder's log had at the same point. A following
    /// backup stamps the outputs it holds with it, as the primary did.
    pub fn consumed_position(&self) -> u64 {
        self.consumed_end
    }

    /// Whether the feed said no record will ever come again and every record it gave has been
    /// consumed: the replay stands where another world can take over.
    pub fn input_ended(&self) -> Option<(bool, &str)> {
        match (&self.head, &self.feed_ended, &self.error) {
            (None, Some((lost, reason)), None) => Some((*lost, reason.as_str())),
            _ => None,
        }
    }

    /// The first divergence or log error, latched.
    pub fn error(&self) -> Option<&ReplayError> {
        self.error.as_ref()
    }

    /// Counts of what has been replayed, comparable with the recorder's. After
    /// [`Self::skip_to_snapshot`] the counters count only records after the mark (compare with
    /// the recorder's final stats [`LogStats::since`] its stats at the mark), while `exits` is,
    /// as always, the absolute exit count.
    pub fn stats(&self) -> LogStats {
        LogStats { exits: self.digest.exits(), ..self.stats }
    }

    /// Folds the next replayed exit into the running digest, and compares it with the log when
    /// the log has an exit digest here (always at multiples of K). Returns `Exit(n)`.
    pub fn check_exit(&mut self, sig: &ExitSignature) -> Result<Landmark, ReplayError> {
        self.check()?;
        let at = Landmark::Exit(self.digest.exits() + 1);
        self.advance(at);
        self.check()?;
        let n = self.digest.fold(sig);
        if self.recent.len() == RECENT_EXITS {
            self.recent.pop_front();
        }
        self.recent.push_back(*sig);
        match self.head {
            Some(Record::ExitDigest { exits, digest }) if exits == n => {
                self.consume();
                self.stats.exit_digests += 1;
                self.compare_digest(at, &digest);
            }
            _ if n.checked_rem(self.interval) == Some(0) => {
                let expected = self.describe_head();
                self.diverge(at, expected, format!("exit digest at {at}"));
            }
            _ => {}
        }
        self.check().map(|()| at)
    }

    /// The replayed board injects `vector` at `at`: the log must say the same, next (the VMM
    /// computes its injections from the device state and checks them here). Once the
    /// input has ended (see [`Self::input_ended`]) there is nothing to compare with: the
    /// injection follows from the device state alone, and the run stops before the guest runs
    /// on, where another world takes over.
    pub fn expect_interrupt(&mut self, at: Landmark, vector: u8) -> Result<(), ReplayError> {
        if self.input_ended().is_some() {
            return Ok(());
        }
        if self.advance(at) {
            match self.head {
                Some(Record::Interrupt { at: rec_at, vector: v }) if rec_at == at && v == vector => {
                    self.consume();
                    self.stats.interrupts += 1;
                }
                _ => {
                    let expected = self.describe_head();
                    self.diverge(at, expected, format!("interrupt {vector:#04x} at {at}"));
                }
            }
        }
        self.check()
    }

    /// If the next record is a preemption checkpoint `Preempt(n)`, returns `n`: instead of
    /// running the vCPU after exit n, the VMM loads it ([`Self::take_checkpoint`]) and then
    /// handles the landmark `Preempt(n)` (poll, interrupts) as the primary did. Ask before every
    /// vCPU entry; several preemptions can follow the same exit.
    pub fn next_preemption(&mut self) -> Option<u64> {
        if self.error.is_some() {
            return None;
        }
        match self.head {
            Some(Record::Checkpoint { at: Landmark::Preempt(n), .. }) => Some(n),
            _ => None,
        }
    }

    /// The checkpoint logged at `at`, which must be the next record. The data is moved out of
    /// the log, not copied.
    pub fn take_checkpoint(&mut self, at: Landmark) -> Result<Vec<u8>, ReplayError> {
        if self.advance(at) {
            if matches!(&self.head, Some(Record::Checkpoint { at: rec_at, .. }) if *rec_at == at) {
                if let Some(Record::Checkpoint { data, .. }) = self.consume() {
                    self.stats.checkpoints += 1;
                    return Ok(data);
                }
            }
            let expected = self.describe_head();
            self.diverge(at, expected, format!("checkpoint load at {at}"));
        }
        self.check().map(|()| Vec::new())
    }

    /// At the exit boundary `Exit(exits)` of a replay (the top of the vCPU loop, where the
    /// primary may have saved a snapshot: after exit `exits` was handled, before polling at
    /// `Exit(exits)`): if the next record is the snapshot mark for `exits`, consumes it (and any
    /// duplicate of it), restarts the running digest there as the recorder did, and returns
    /// true. Returns false if the next record is anything else, including the mark of a later
    /// boundary (nothing was recorded between here and there). A mark of an earlier exit count
    /// is a divergence at that mark's landmark, and so is `exits` differing from the replayed
    /// exit count ([`Self::exits`]) when a mark for it is next. Cheap: one comparison of the
    /// lookahead record when there is no mark. Call it with the exit count at a `Preempt(n)`
    /// boundary too if that is simpler: the mark of `Exit(n)` has been passed by then.
    pub fn pass_snapshot_mark(&mut self, exits: u64) -> Result<bool, ReplayError> {
        self.check()?;
        let Some(Record::SnapshotMark { exits: mark }) = self.head else {
            return Ok(false);
        };
        if mark > exits {
            return Ok(false);
        }
        let replayed = self.digest.exits();
        if mark < exits {
            let at = Landmark::Exit(mark);
            self.diverge(
                at,
                format!("snapshot mark at {at}"),
                format!("nothing at {at} (replay at the exit boundary Exit({exits}))"),
            );
        } else if exits != replayed {
            let expected = self.describe_head();
            self.diverge(
                Landmark::Exit(replayed),
                expected,
                format!("a snapshot mark check at Exit({exits}) after {replayed} replayed exits"),
            );
        }
        self.check()?;
        while matches!(self.head, Some(Record::SnapshotMark { exits: m }) if m == exits) {
            self.consume();
        }
        self.restart_digest(exits);
        self.check().map(|()| true)
    }

    /// Prepares a replay that starts from the snapshot saved at `Exit(exits)`: consumes every
    /// record up to and including [`Record::SnapshotMark`] `{ exits }` without checking them
    /// (they describe the run up to the snapshot, which the restored machine already is), and
    /// then stands at the exit boundary `Exit(exits)` exactly as the primary did after saving:
    /// the next calls are the poll and interrupts at `Exit(exits)`, then `check_exit` of
    /// `Exit(exits + 1)`.
    ///
    /// The running digest restarts at `exits` like the recorder's did, so later ExitDigest
    /// records and [`Self::finish`] (whose exit count stays absolute) are checked. The last
    /// skipped monotonic clock value is kept for [`EventSource::monotonic_now`]. [`Self::stats`]
    /// counts records from the mark on. Call it on a fresh replay, before anything else.
    ///
    /// If a record past `Exit(exits)`, the End or the end of the log comes first, returns (and
    /// latches) [`ReplayError::NoSnapshotMark`]; a damaged log is reported as
    /// [`ReplayError::Log`].
    pub fn skip_to_snapshot(&mut self, exits: u64) -> Result<(), ReplayError> {
        self.check()?;
        let boundary = landmark_key(Landmark::Exit(exits));
        loop {
            let missing = match &self.head {
                Some(Record::SnapshotMark { exits: mark }) if *mark == exits => break,
                None => Some("the end of the log".to_string()),
                Some(record @ Record::End(_)) => Some(record.to_string()),
                Some(record) if record.landmark().is_some_and(|at| landmark_key(at) > boundary) => {
                    Some(record.to_string())
                }
                Some(Record::ClockRead { clock: ClockId::Monotonic, value, .. }) => {
                    self.last_monotonic = *value;
                    None
                }
                Some(_) => None,
            };
            if let Some(found) = missing {
                let error = ReplayError::NoSnapshotMark { exits, found };
                self.error = Some(error.clone());
                return Err(error);
            }
            self.consume();
            self.check()?;
        }
        while matches!(self.head, Some(Record::SnapshotMark { exits: m }) if m == exits) {
            self.consume();
        }
        self.check()?;
        self.restart_digest(exits);
        self.current = Some(Landmark::Exit(exits));
        self.stats = LogStats::default();
        self.idle_mark = None;
        Ok(())
    }

    /// The replayed run ended: the log must end here too, after as many exits, with the same
    /// exit digest, exit code (if given: a run stopped by the log has none of its own) and
    /// state digest (when both are known). Returns the recorded End.
    pub fn finish(&mut self, exit_code: Option<u32>, state_digest: Option<[u8; 32]>) -> Result<End, ReplayError> {
        self.check()?;
        let exits = self.digest.exits();
        let at = self.current.unwrap_or(Landmark::Exit(exits));
        let Some(Record::End(end)) = self.head.clone() else {
            let expected = self.describe_head();
            self.diverge(at, expected, format!("the end of the run after {exits} exits"));
            return Err(self.check().err().unwrap_or_else(|| ReplayError::Log(self.truncated())));
        };
        let hex = crate::format::short_hex;
        if end.exits != exits {
            let n = end.exits.min(exits) + 1;
            self.diverge(
                Landmark::Exit(n),
                format!("end after {} exits", end.exits),
                format!("end after {exits} exits"),
            );
        } else {
            self.compare_digest(Landmark::Exit(exits), &end.exit_digest);
        }
        if let Some(code) = exit_code.filter(|&code| code != end.exit_code) {
            self.diverge(at, format!("exit code {}", end.exit_code), format!("exit code {code}"));
        }
        if let (Some(recorded), Some(replayed)) = (end.state_digest, state_digest) {
            if recorded != replayed {
                self.diverge(
                    at,
                    format!("state digest {}", hex(&recorded)),
                    format!("state digest {}", hex(&replayed)),
                );
            }
        }
        self.check()?;
        self.consume();
        // Let the feed report anything after End.
        if let FeedItem::Failed(e) = self.feed.next_item() {
            self.error = Some(ReplayError::Log(e));
        }
        self.check().map(|()| end)
    }

    fn check(&self) -> Result<(), ReplayError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn diverge(&mut self, at: Landmark, expected: String, got: String) {
        if self.error.is_none() {
            self.error = Some(ReplayError::Diverged(Divergence { at, expected, got }));
        }
    }

    fn truncated(&self) -> LogError {
        LogError::Truncated { offset: self.feed.position() }
    }

    fn describe_head(&self) -> String {
        match &self.head {
            Some(record) => record.to_string(),
            None => "end of log".to_string(),
        }
    }

    /// Takes the head record and reads the next one (a read error is latched).
    fn consume(&mut self) -> Option<Record> {
        self.consumed_end = self.head_end;
        let next = self.pull();
        self.consumed += 1;
        std::mem::replace(&mut self.head, next)
    }

    /// The next record from the feed, waiting while it says `Wait`; `None` once it has no more
    /// (why is kept in `feed_ended`, or latched as an error).
    fn pull(&mut self) -> Option<Record> {
        if self.feed_ended.is_some() {
            return None;
        }
        loop {
            match self.feed.next_item() {
                FeedItem::Record { record, position } => {
                    self.head_end = position;
                    return Some(record);
                }
                FeedItem::Wait => continue,
                FeedItem::Closed => {
                    self.feed_ended = Some((false, "the log ended".into()));
                    return None;
                }
                FeedItem::Lost(reason) => {
                    self.feed_ended = Some((true, reason));
                    return None;
                }
                FeedItem::Failed(error) => {
                    if self.error.is_none() {
                        self.error = Some(ReplayError::Log(error));
                    }
                    return None;
                }
            }
        }
    }

    /// Moves the replay to `at`: records of earlier landmarks must all have been consumed.
    /// Returns false (and latches) if replay cannot go on.
    fn advance(&mut self, at: Landmark) -> bool {
        if self.error.is_some() {
            return false;
        }
        let key = landmark_key(at);
        if let Some(current) = self.current {
            if key < landmark_key(current) {
                self.diverge(at, format!("a landmark at or after {current}"), format!("a request at {at}"));
                return false;
            }
            if key == landmark_key(current) {
                return true;
            }
        }
        if let Some(pending) = self.head.as_ref().and_then(Record::landmark) {
            if landmark_key(pending) < key {
                let expected = self.describe_head();
                self.diverge(pending, expected, format!("nothing at {pending} (replay moved on to {at})"));
                return false;
            }
        }
        self.current = Some(at);
        true
    }

    /// Restarts the running digest at `exits`, as the recorder did at a snapshot mark.
    fn restart_digest(&mut self, exits: u64) {
        self.digest = RunningDigest::starting_at(exits);
        self.verified = exits;
        self.recent.clear();
    }

    fn compare_digest(&mut self, at: Landmark, recorded: &[u8; 32]) {
        let replayed = self.digest.digest();
        let n = self.digest.exits();
        if *recorded == replayed {
            self.verified = n;
            return;
        }
        let hex = crate::format::short_hex;
        let recent: Vec<String> = self.recent.iter().map(ToString::to_string).collect();
        self.diverge(
            at,
            format!("exit digest {} over Exit({})..=Exit({n})", hex(recorded), self.digest.start() + 1),
            format!(
                "exit digest {} (a replayed exit in Exit({})..=Exit({n}) differs; last replayed: [{}])",
                hex(&replayed),
                self.verified + 1,
                recent.join("; ")
            ),
        );
    }
}

impl<F: RecordFeed> EventSource for ReplayWorld<F> {
    fn read_clock(&mut self, at: Landmark, clock: ClockId) -> u64 {
        if !self.advance(at) {
            return 0;
        }
        match self.head {
            Some(Record::ClockRead { at: rec_at, clock: rec_clock, value }) if rec_at == at && rec_clock == clock => {
                self.consume();
                self.stats.clock_reads += 1;
                if clock == ClockId::Monotonic {
                    self.last_monotonic = value;
                }
                value
            }
            _ => {
                let expected = self.describe_head();
                self.diverge(at, expected, format!("{clock:?} clock read at {at}"));
                0
            }
        }
    }

    fn poll(&mut self, at: Landmark, _armed: Deadlines) -> Vec<WorldEvent> {
        let mut events = Vec::new();
        if !self.advance(at) {
            return events;
        }
        while matches!(&self.head, Some(Record::World { at: rec_at, .. }) if *rec_at == at) {
            if let Some(Record::World { event, .. }) = self.consume() {
                self.stats.world_events += 1;
                events.push(event);
            }
        }
        events
    }

    /// Returns at once: the log already says when the world acts. Idling twice at the same
    /// landmark with nothing consumed in between means no recorded event can wake the guest
    /// here: a divergence, unless the next record is the End (the recording stopped while its
    /// guest idled).
    fn wait_idle(&mut self, at: Landmark, _armed: Deadlines) {
        if !self.advance(at) {
            return;
        }
        let mark = (at, self.consumed);
        if self.idle_mark == Some(mark) && !matches!(self.head, Some(Record::End(_))) {
            let expected = self.describe_head();
            self.diverge(at, expected, format!("guest idle at {at} with nothing recorded to wake it"));
        }
        self.idle_mark = Some(mark);
    }

    /// The recorded bytes; `live` is never called (the backend is not touched on replay).
    fn device_input(&mut self, at: Landmark, kind: InputKind, _live: &mut dyn FnMut() -> Vec<u8>) -> Vec<u8> {
        if !self.advance(at) {
            return Vec::new();
        }
        if matches!(&self.head, Some(Record::Input { at: rec_at, kind: rec_kind, .. }) if *rec_at == at && *rec_kind == kind)
        {
            if let Some(Record::Input { data, .. }) = self.consume() {
                self.stats.inputs += 1;
                return data;
            }
        }
        let expected = self.describe_head();
        self.diverge(at, expected, format!("{kind:?} input at {at}"));
        Vec::new()
    }

    /// The latched divergence or log error; or, with every record before End consumed after as
    /// many exits as the recording, the end of the recording (the recorded run was stopped
    /// here, e.g. while its guest idled). A run that ends on its own (power-off) ends before
    /// the vCPU loop asks. Either way the VMM then calls [`ReplayWorld::finish`].
    fn stop_reason(&self) -> Option<WorldStop> {
        if let Some(e) = &self.error {
            return Some(WorldStop::Failed(Arc::new(e.clone())));
        }
        if let Some((lost, reason)) = self.input_ended() {
            return Some(WorldStop::InputEnded { lost, reason: reason.to_string() });
        }
        match &self.head {
            Some(Record::End(end)) if end.exits == self.digest.exits() => {
                Some(WorldStop::RecordingEnds { exits: end.exits })
            }
            _ => None,
        }
    }

    /// The last replayed monotonic clock value (a replay has no clock of its own).
    fn monotonic_now(&self) -> u64 {
        self.last_monotonic
    }

    /// None: a replay never preempts on its own; preemptions come from the log
    /// ([`ReplayWorld::next_preemption`]).
    fn time_until(&self, _deadline_ns: u64) -> Option<std::time::Duration> {
        None
    }
}
