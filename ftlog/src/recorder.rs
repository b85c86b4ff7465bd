//! The recording side: a live event source whose every answer is written to the log.

use crate::digest::{ExitSignature, RunningDigest};
use crate::format::{landmark_key, End, LogError, LogHeader, LogWriter, Record};
use crate::peer::PeerWatch;
use devices::{ClockId, Deadlines, EventSource, InputKind, Landmark, WorldEvent};
use std::io::Write;

/// Counts of what a log holds, kept identically by the recorder and the replayer so that both
/// print the same summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub exits: u64,
    pub clock_reads: u64,
    pub world_events: u64,
    pub interrupts: u64,
    /// Synchronous device inputs (disk read data).
    pub inputs: u64,
    pub checkpoints: u64,
    pub exit_digests: u64,
}

impl LogStats {
    /// The counts of records after `earlier` (e.g. the recorder's stats when it wrote a snapshot
    /// mark): what a replay from that mark counts. `exits` is a position, not a count of
    /// records, and is kept as it is.
    pub fn since(&self, earlier: &LogStats) -> LogStats {
        LogStats {
            exits: self.exits,
            clock_reads: self.clock_reads.saturating_sub(earlier.clock_reads),
            world_events: self.world_events.saturating_sub(earlier.world_events),
            interrupts: self.interrupts.saturating_sub(earlier.interrupts),
            inputs: self.inputs.saturating_sub(earlier.inputs),
            checkpoints: self.checkpoints.saturating_sub(earlier.checkpoints),
            exit_digests: self.exit_digests.saturating_sub(earlier.exit_digests),
        }
    }

    /// Inputs the world chose: clock values, world events, device inputs and interrupt
    /// injections.
    pub fn events(&self) -> u64 {
        self.clock_reads + self.world_events + self.inputs + self.interrupts
    }
}

/// What a finished recording leaves behind.
#[derive(Debug)]
pub struct Recorded<W> {
    pub end: End,
    pub stats: LogStats,
    /// Size of the log in bytes.
    pub log_bytes: u64,
    /// The underlying writer, flushed (sync it if it is a file that must survive a crash).
    pub writer: W,
}

/// Delegates to a live [`EventSource`] and logs every answer at its landmark.
///
/// `EventSource` methods cannot fail, so a write error inside them is latched: the answer is
/// still returned (the guest keeps running correctly), and the error comes back from the next
/// direct call (`record_exit` runs at every exit) and from [`RecordingWorld::error`].
pub struct RecordingWorld<S: EventSource, W: Write> {
    inner: S,
    log: LogWriter<W>,
    digest: RunningDigest,
    interval: u64,
    stats: LogStats,
    error: Option<LogError>,
    last: (u64, u8),
    /// Where the stream position goes after every record (the output stage stamps outputs with it).
    publish: Option<PeerWatch>,
}

impl<S: EventSource, W: Write> RecordingWorld<S, W> {
    /// Starts a log on `out` with `header` (its `exit_digest_interval` is K).
    pub fn new(inner: S, out: W, header: &LogHeader) -> Result<Self, LogError> {
        let log = LogWriter::new(out, header)?;
        Ok(Self {
            inner,
            log,
            digest: RunningDigest::starting_at(header.start_exits),
            interval: u64::from(header.exit_digest_interval.max(1)),
            stats: LogStats::default(),
            error: None,
            last: landmark_key(Landmark::Exit(header.start_exits)),
            publish: None,
        })
    }

    /// From now on, publishes the log's stream position into `watch` after every record written
    /// (and now), so that an output produced at any point is stamped with the log that precedes it.
    pub fn publish_to(&mut self, watch: PeerWatch) {
        watch.set_logged(self.log.offset());
        self.publish = Some(watch);
    }

    fn publish_offset(&self) {
        if let Some(watch) = &self.publish {
            watch.set_logged(self.log.offset());
        }
    }

    /// Folds the next deterministic exit into the running digest and, every K exits, logs the
    /// digest. The cadence is absolute: an ExitDigest is written at every `Exit(n)` with `n` a
    /// multiple of K, whatever the log's start or its snapshot marks; it covers the exits since
    /// the digest last restarted (the log's start or the last mark). Returns the exit's landmark `Exit(n)`. Call it at the same point of exit handling
    /// as the replayer's `check_exit`, once per exit.
    pub fn record_exit(&mut self, sig: &ExitSignature) -> Result<Landmark, LogError> {
        self.check()?;
        let n = self.digest.fold(sig);
        self.stats.exits = n;
        if n.checked_rem(self.interval) == Some(0) {
            let record = Record::ExitDigest { exits: n, digest: self.digest.digest() };
            self.write(&record)?;
            self.stats.exit_digests += 1;
        }
        Ok(Landmark::Exit(n))
    }

    /// Logs an interrupt injected at `at`.
    pub fn record_interrupt(&mut self, at: Landmark, vector: u8) -> Result<(), LogError> {
        self.check()?;
        self.write(&Record::Interrupt { at, vector })?;
        self.stats.interrupts += 1;
        Ok(())
    }

    /// Logs a checkpoint taken at `at` (for a preemption: before anything else is logged at
    /// that `Preempt(n)`, because the replayer loads it on arrival at the landmark).
    pub fn record_checkpoint(&mut self, at: Landmark, data: &[u8]) -> Result<(), LogError> {
        self.check()?;
        self.note(at);
        self.log.write_checkpoint(at, data)?;
        self.publish_offset();
        self.stats.checkpoints += 1;
        Ok(())
    }

    /// Marks a snapshot the VMM saves now, at the exit boundary `Exit(exits)`: after exit
    /// `exits` was handled (and recorded), before the world's events and interrupts at
    /// `Exit(exits)`. `exits` must be the recorder's exit count ([`Self::exits`]) and nothing
    /// may have been recorded past `Exit(exits)` yet; otherwise nothing is written and
    /// [`LogError::MisplacedSnapshotMark`] is returned (the log stays good).
    ///
    /// Writes [`Record::SnapshotMark`] and restarts the running digest at `exits`
    /// ([`RunningDigest::starting_at`]): the following ExitDigest records (still at absolute
    /// multiples of K) and the End's `exit_digest` cover only exits after the mark, so a replay
    /// that starts from the snapshot ([`crate::ReplayWorld::skip_to_snapshot`]) can check them.
    /// The stats are not reset: they count the whole log. The mark is buffered like every
    /// record; [`Self::flush`] (or `log_mut().sync()`) if the snapshot must not outlive the log.
    pub fn mark_snapshot(&mut self, exits: u64) -> Result<(), LogError> {
        self.check()?;
        let recorded = self.digest.exits();
        let here = Landmark::Exit(recorded);
        let at = match self.last {
            (n, 1) => Landmark::Preempt(n),
            (n, _) => Landmark::Exit(n),
        };
        let at = if landmark_key(at) > landmark_key(here) { at } else { here };
        if exits != recorded || at != here {
            return Err(LogError::MisplacedSnapshotMark { offset: self.log.offset(), requested: exits, at });
        }
        self.write(&Record::SnapshotMark { exits })?;
        self.digest = RunningDigest::starting_at(exits);
        Ok(())
    }

    /// Writes the End record and flushes. Its `exit_digest` is the running digest since it last
    /// restarted (the log's start or the last snapshot mark), like the ExitDigest records.
    pub fn finish(mut self, exit_code: u32, state_digest: Option<[u8; 32]>) -> Result<Recorded<W>, LogError> {
        self.check()?;
        let end = End { exits: self.digest.exits(), exit_digest: self.digest.digest(), exit_code, state_digest };
        self.log.write(&Record::End(end.clone()))?;
        self.publish_offset();
        let log_bytes = self.log.offset();
        let writer = self.log.into_inner()?;
        Ok(Recorded { end, stats: self.stats, log_bytes, writer })
    }

    /// Pushes buffered records out (e.g. before releasing output that depends on them).
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.check()?;
        self.log.flush()
    }

    /// The first write error, if any.
    pub fn error(&self) -> Option<&LogError> {
        self.error.as_ref()
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Exits recorded so far.
    pub fn exits(&self) -> u64 {
        self.digest.exits()
    }

    pub fn log_bytes(&self) -> u64 {
        self.log.offset()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Gives the wrapped source back and drops the log without an End record: the recording
    /// stops here (a primary whose backup is gone runs on alone in the same world).
    pub fn into_inner(self) -> S {
        self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The log writer, e.g. to `sync` a file-backed log.
    pub fn log_mut(&mut self) -> &mut LogWriter<W> {
        &mut self.log
    }

    fn check(&self) -> Result<(), LogError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Landmarks must not go backwards; a VMM that violates this writes a log no replay can
    /// follow, so catch it where it happens in debug builds.
    fn note(&mut self, at: Landmark) {
        let key = landmark_key(at);
        debug_assert!(key >= self.last, "landmark {at} recorded after a later one");
        self.last = key;
    }

    fn write(&mut self, record: &Record) -> Result<(), LogError> {
        if let Some(at) = record.landmark() {
            self.note(at);
        }
        self.log.write(record).inspect_err(|e| {
            self.error.get_or_insert_with(|| e.clone());
        })?;
        self.publish_offset();
        Ok(())
    }

    /// Writes from inside an `EventSource` method, where the error can only be latched.
    fn write_latched(&mut self, record: &Record) {
        if self.error.is_none() {
            let _ = self.write(record);
        }
    }
}

impl<S: EventSource, W: Write> EventSource for RecordingWorld<S, W> {
    fn read_clock(&mut self, at: Landmark, clock: ClockId) -> u64 {
        let value = self.inner.read_clock(at, clock);
        self.write_latched(&Record::ClockRead { at, clock, value });
        self.stats.clock_reads += 1;
        value
    }

    fn poll(&mut self, at: Landmark, armed: Deadlines) -> Vec<WorldEvent> {
        let events = self.inner.poll(at, armed);
        for event in &events {
            self.write_latched(&Record::World { at, event: event.clone() });
            self.stats.world_events += 1;
        }
        events
    }

    fn wait_idle(&mut self, at: Landmark, armed: Deadlines) {
        // Waiting is not an input: what ends it shows up in the next poll, which is logged.
        self.inner.wait_idle(at, armed);
    }

    fn device_input(&mut self, at: Landmark, kind: InputKind, live: &mut dyn FnMut() -> Vec<u8>) -> Vec<u8> {
        let data = self.inner.device_input(at, kind, live);
        if self.error.is_none() {
            self.note(at);
            match self.log.write_input(at, kind, &data) {
                Ok(()) => {
                    self.stats.inputs += 1;
                    self.publish_offset();
                }
                Err(e) => self.error = Some(e),
            }
        }
        data
    }

    /// A failed log stops the run: an unrecorded run cannot be replayed or failed over.
    fn stop_reason(&self) -> Option<devices::WorldStop> {
        match &self.error {
            Some(e) => Some(devices::WorldStop::Failed(std::sync::Arc::new(RecordingFailed(e.clone())))),
            None => self.inner.stop_reason(),
        }
    }

    fn monotonic_now(&self) -> u64 {
        self.inner.monotonic_now()
    }

    fn time_until(&self, deadline_ns: u64) -> Option<std::time::Duration> {
        self.inner.time_until(deadline_ns)
    }
}

/// The recording could not be written: the run stops rather than run on unrecorded.
#[derive(Debug, thiserror::Error)]
#[error("recording failed: {0}")]
pub struct RecordingFailed(pub LogError);
