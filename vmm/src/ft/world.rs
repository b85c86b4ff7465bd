//! The worlds of the two roles, as the vCPU loop sees them.
//!
//! - [`PrimaryWorld`]: this host's world, recorded into the logging channel. Before every entry
//!   into the guest it pushes the log out when an output waits on it, holds the guest while the
//!   backup lags by more than `--max-lag-ms` or held output is full, and it stops the run at the
//!   next landmark once the backup is lost (the caller then races for the register).
//! - [`FollowWorld`]: the primary's log replayed from the channel; after every exit it drops
//!   the outputs the primary says it released, so that what is left at go-live is exactly what
//!   may not have left.

use super::lag::{LagMeter, REPORT_EVERY};
use crate::control::VcpuControl;
use crate::error::Result;
use crate::machine::Machine;
use crate::vcpu::{ExitInfo, RunObserver};
use devices::virtio::{DiscardOutput, OutputError, OutputStage};
use devices::{ClockId, Deadlines, EventSource, HostWorld, InputKind, Landmark, WorldEvent, WorldStop};
use ftlog::channel::{OutputCheck, RecordSink, ResyncReason};
use ftlog::{ChannelFeed, OutputCommit, PeerWatch, RecordingWorld, ReplayWorld};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The primary's output stage: the real backends behind the output commit.
pub type PrimaryCommit = OutputCommit<Box<dyn OutputStage + Send>>;
/// The backup's output stage: nothing leaves while it follows.
pub type FollowCommit = OutputCommit<DiscardOutput>;

/// A halted guest's wait is cut into slices this long, so that a lost backup or a join is
/// noticed at once even when no timer is armed.
const IDLE_SLICE: Duration = Duration::from_millis(5);
/// The log is pushed out at least this often, so that the backup follows closely even when no
/// output waits on it.
const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// How often a waiting vCPU looks at the backup's acknowledgements again.
const WAIT_POLL: Duration = Duration::from_millis(1);
/// At most one "the vCPU waits" warning per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);

/// What the FT threads know of the backup, read by the vCPU loop at each landmark.
#[derive(Clone, Default)]
pub struct LinkState {
    lost: Arc<AtomicBool>,
    /// When the backup was declared lost, the silence it had kept (ms).
    silence_ms: Arc<AtomicU64>,
    /// An output the releaser could not apply (a disk write refused by fencing, say).
    failed: Arc<Mutex<Option<Arc<OutputError>>>>,
    /// How far the backup's replay trails the log pushed to it.
    lag: Arc<Mutex<LagMeter>>,
    /// The resync under way, if any, and how many completed.
    resync: Arc<Mutex<ResyncState>>,
}

/// A resync as the primary sees it.
#[derive(Default)]
struct ResyncState {
    /// Asked for, why and since when; `sent` once the state left.
    pending: Option<(ResyncReason, Instant, bool)>,
    done: u64,
}

impl LinkState {
    fn resync(&self) -> std::sync::MutexGuard<'_, ResyncState> {
        self.resync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The backup asked for a resync; `false` if one is already under way.
    pub fn request_resync(&self, reason: ResyncReason) -> bool {
        let mut resync = self.resync();
        if resync.pending.is_some() {
            return false;
        }
        resync.pending = Some((reason, Instant::now(), false));
        true
    }

    /// A resync asked for whose state has not been sent yet: the vCPU thread sends it now.
    pub fn resync_to_send(&self) -> bool {
        let mut resync = self.resync();
        match &mut resync.pending {
            Some((_, _, sent @ false)) => {
                *sent = true;
                true
            }
            _ => false,
        }
    }

    /// A resync waits for an exit landmark to be sent at (the vCPU pauses after the next exit).
    pub fn resync_waiting(&self) -> bool {
        matches!(self.resync().pending, Some((_, _, false)))
    }

    /// The state to send could not be placed at this landmark: try at the next pause.
    pub fn resync_not_sent(&self) {
        if let Some((_, _, sent)) = &mut self.resync().pending {
            *sent = false;
        }
    }

    /// The backup applied the resync: its number, reason and duration since it was asked for.
    pub fn resync_done(&self) -> Option<(u64, ResyncReason, Duration)> {
        let mut resync = self.resync();
        let (reason, since, true) = resync.pending.take()? else { return None };
        resync.done += 1;
        Some((resync.done, reason, since.elapsed()))
    }
}

impl LinkState {
    pub fn set_lost(&self, silence: Duration) {
        self.silence_ms.store(silence.as_millis() as u64, Ordering::Release);
        self.lost.store(true, Ordering::Release);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub fn silence_ms(&self) -> u64 {
        self.silence_ms.load(Ordering::Acquire)
    }

    /// The releaser failed to apply an output: the VM cannot go on.
    pub fn set_failed(&self, error: Arc<OutputError>) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub fn failure(&self) -> Option<Arc<OutputError>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn lag(&self) -> std::sync::MutexGuard<'_, LagMeter> {
        self.lag.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log up to `position` was pushed to the backup at `at`.
    pub fn pushed(&self, position: u64, at: Instant) {
        self.lag().pushed(position, at);
    }

    /// The backup reports its replay at `position`.
    pub fn replayed(&self, position: u64) {
        self.lag().replayed(position, Instant::now());
    }

    /// The backup's lag over the paired run (none if it never reported).
    pub fn lag_figures(&self) -> Option<crate::telemetry::LagFigures> {
        let lag = self.lag();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Some(crate::telemetry::LagFigures {
            p50_ms: ms(lag.quantile(0.5)?),
            p99_ms: ms(lag.quantile(0.99)?),
            max_ms: ms(lag.max()),
            samples: lag.count(),
        })
    }

    /// The backup's lag over the paired run, as a line (none if it never reported).
    pub fn lag_line(&self) -> Option<String> {
        self.lag().line()
    }
}

/// The primary's world while a backup follows.
pub struct PrimaryWorld {
    recorder: RecordingWorld<HostWorld, RecordSink>,
    commit: PrimaryCommit,
    watch: PeerWatch,
    link: LinkState,
    control: VcpuControl,
    max_lag: Duration,
    /// Log position pushed to the channel last, and when.
    flushed: u64,
    flushed_at: Instant,
    /// Positions pushed out and when, oldest first, until the backup acknowledges them.
    unacked: VecDeque<(u64, Instant)>,
    last_warning: Option<Instant>,
    /// Times the vCPU waited for a lagging backup or for room in held output.
    pub lag_waits: u64,
    pub full_waits: u64,
    /// A record could not be written (the channel broke under it): the run stops at the next
    /// landmark with this, where a lost backup is told apart from a fault.
    record_failed: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PrimaryWorld {
    pub fn new(
        recorder: RecordingWorld<HostWorld, RecordSink>,
        commit: PrimaryCommit,
        watch: PeerWatch,
        link: LinkState,
        control: VcpuControl,
        max_lag: Duration,
    ) -> Self {
        let flushed = watch.logged();
        Self {
            recorder,
            commit,
            watch,
            link,
            control,
            max_lag,
            flushed,
            flushed_at: Instant::now(),
            unacked: VecDeque::new(),
            last_warning: None,
            lag_waits: 0,
            full_waits: 0,
            record_failed: None,
        }
    }

    /// A failed record write stops the run at the next landmark (through [`Self::stop_reason`])
    /// rather than failing it where it stands: the run then ends at a position it can go on
    /// from, alone, once the race is won.
    fn recorded(&mut self, written: Result<()>) -> Result<()> {
        if let Err(error) = written {
            self.record_failed.get_or_insert_with(|| Arc::new(error));
        }
        Ok(())
    }

    /// The recording, to finish it (End record) or give the live world back.
    pub fn into_recorder(self) -> RecordingWorld<HostWorld, RecordSink> {
        self.recorder
    }

    /// Pushes buffered log records into the channel when an output waits on them or the last
    /// push is older than [`FLUSH_EVERY`].
    fn push_log(&mut self, force: bool) {
        let logged = self.watch.logged();
        if logged <= self.flushed {
            if force {
                // Right after a join the log's header is buffered with no record behind it: a
                // backup without it cannot go live if the primary dies before the guest logs
                // anything (a vCPU held by a stalled disk, say).
                let _ = self.recorder.flush();
            }
            return;
        }
        let waiting_output = self.commit.stats().held > 0;
        if !(force || waiting_output || self.flushed_at.elapsed() >= FLUSH_EVERY) {
            return;
        }
        // A failed push is latched in the recorder and stops the run at the next landmark.
        if self.recorder.flush().is_ok() {
            self.flushed = logged;
            self.flushed_at = Instant::now();
            self.unacked.push_back((logged, self.flushed_at));
            self.link.pushed(logged, self.flushed_at);
        }
    }

    /// A resync at `Exit(exits)`: pushes out every record so far, then writes the snapshot mark
    /// the backup's replay restarts from (buffered: it leaves after the state, see
    /// [`Self::push_now`]).
    pub fn mark_resync(&mut self, exits: u64) -> std::result::Result<(), ftlog::LogError> {
        self.recorder.flush()?;
        self.push_log(true);
        self.recorder.mark_snapshot(exits)
    }

    /// Pushes the log out now.
    pub fn push_now(&mut self) {
        self.push_log(true);
    }

    /// How far behind the backup is: the age of the oldest push it has not acknowledged.
    fn lag(&mut self) -> Duration {
        let acked = self.watch.acked();
        while self.unacked.front().is_some_and(|&(position, _)| position <= acked) {
            self.unacked.pop_front();
        }
        self.unacked.front().map_or(Duration::ZERO, |&(_, at)| at.elapsed())
    }

    fn warn(&mut self, what: &str) {
        if self.last_warning.is_none_or(|at| at.elapsed() >= WARN_PERIOD) {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                logged = self.watch.logged(),
                acked = self.watch.acked(),
                held = self.commit.stats().held,
                "{what}"
            );
        }
    }

    /// Whether the vCPU must not run on now: the backup is gone, or a stop was asked.
    fn must_stop(&self) -> bool {
        self.link.is_lost() || self.control.stop_requested()
    }

    /// Before each entry into the guest: push the log, and hold the guest while the backup
    /// lags or held output is full (the paper's flow control).
    fn before_entry(&mut self) {
        self.push_log(false);
        if self.max_lag > Duration::ZERO && self.lag() > self.max_lag {
            self.lag_waits += 1;
            let lag = self.lag();
            self.warn(&format!("the backup lags by {} ms: the vCPU waits for it to catch up", lag.as_millis()));
            while self.lag() > self.max_lag / 2 && !self.must_stop() {
                self.push_log(true);
                std::thread::sleep(WAIT_POLL);
            }
        }
        if self.commit.is_full() {
            self.full_waits += 1;
            self.push_log(true);
            while !self.must_stop() {
                match self.commit.wait_for_space(WAIT_POLL * 10) {
                    Ok(ftlog::Space::Available) => break,
                    Ok(ftlog::Space::TimedOut) => self.push_log(true),
                    // The stage keeps the error for the next emit, which stops the VM with it.
                    Err(_) => break,
                }
            }
        }
    }
}

impl EventSource for PrimaryWorld {
    fn read_clock(&mut self, at: Landmark, clock: ClockId) -> u64 {
        self.recorder.read_clock(at, clock)
    }

    fn poll(&mut self, at: Landmark, armed: Deadlines) -> Vec<WorldEvent> {
        self.recorder.poll(at, armed)
    }

    fn wait_idle(&mut self, at: Landmark, armed: Deadlines) {
        // A halted guest may be waiting on a reply that waits on this log.
        self.push_log(true);
        let slice_end = self.recorder.monotonic_now() + IDLE_SLICE.as_nanos() as u64;
        let pit = Some(armed.pit.map_or(slice_end, |deadline| deadline.min(slice_end)));
        self.recorder.wait_idle(at, Deadlines { pit });
    }

    fn device_input(&mut self, at: Landmark, kind: InputKind, live: &mut dyn FnMut() -> Vec<u8>) -> Vec<u8> {
        self.recorder.device_input(at, kind, live)
    }

    fn stop_reason(&self) -> Option<WorldStop> {
        if self.link.is_lost() {
            return Some(WorldStop::PeerLost { reason: format!("no word for {} ms", self.link.silence_ms()) });
        }
        if let Some(error) = &self.record_failed {
            return Some(WorldStop::Failed(error.clone()));
        }
        self.recorder.stop_reason()
    }

    fn monotonic_now(&self) -> u64 {
        self.recorder.monotonic_now()
    }

    fn input_pending(&self) -> bool {
        self.recorder.input_pending()
    }

    fn time_until(&self, deadline_ns: u64) -> Option<Duration> {
        self.recorder.time_until(deadline_ns)
    }
}

impl RunObserver for PrimaryWorld {
    fn on_exit(&mut self, count: u64, exit: &ExitInfo, rip: u64) -> Result<()> {
        let written = self.recorder.on_exit(count, exit, rip);
        if self.link.resync_waiting() {
            // A resync starts at an exit landmark (its snapshot mark's place): pause here.
            self.control.pause();
        }
        self.recorded(written)
    }

    fn wants_rip(&self) -> bool {
        self.recorder.wants_rip()
    }

    fn on_snapshot(&mut self, exits: u64) -> Result<()> {
        self.recorder.on_snapshot(exits)
    }

    fn on_interrupt(&mut self, at: Landmark, vector: u8) -> Result<()> {
        let written = self.recorder.on_interrupt(at, vector);
        self.recorded(written)
    }

    fn on_preempt(&mut self, at: Landmark, machine: &mut Machine) -> Result<()> {
        let written = self.recorder.on_preempt(at, machine);
        self.recorded(written)
    }

    fn load_logged_preemption(&mut self, _count: u64, _machine: &mut Machine) -> Result<bool> {
        // Called before every entry into the guest: the primary's place for flow control.
        self.before_entry();
        Ok(false)
    }
}

/// The backup's world while it follows: the primary's log from the channel.
pub struct FollowWorld {
    replayer: ReplayWorld<ChannelFeed>,
    commit: FollowCommit,
    /// The watch `commit` stamps outputs from: the replay's consumed position is published
    /// into it, so an output held here has the stamp the primary gave the same output.
    watch: PeerWatch,
    released: Arc<AtomicU64>,
    /// Tells the primary how far the replay has got (for its lag figure), and when it last did.
    report: Option<Box<dyn FnMut(u64) + Send>>,
    reported: (u64, Instant),
    /// The position of the last complete record received: a replay that reached it waits for
    /// more, so it reports at once.
    received: Option<Box<dyn Fn() -> u64 + Send>>,
    /// Verified mode: the comparison of outputs, which stops the replay at a difference.
    check: Option<Arc<OutputCheck>>,
}

/// An output of the replay differs from the primary's (verified mode).
#[derive(Debug, thiserror::Error)]
#[error("verified mode: {0}")]
pub struct OutputMismatch(pub String);

impl FollowWorld {
    /// `commit` stamps from `watch`; `released` is the channel's last release marker.
    pub fn new(
        replayer: ReplayWorld<ChannelFeed>,
        commit: FollowCommit,
        watch: PeerWatch,
        released: Arc<AtomicU64>,
    ) -> Self {
        let world = Self {
            replayer,
            commit,
            watch,
            released,
            report: None,
            reported: (0, Instant::now()),
            received: None,
            check: None,
        };
        world.publish();
        world
    }

    /// Reports the replay's position through `report` as it advances: at most every
    /// [`REPORT_EVERY`], and at once when the guest idles or the replay has consumed all that
    /// `received` says has arrived (it waits for the primary from there on).
    pub fn reporting_replay(
        mut self,
        report: impl FnMut(u64) + Send + 'static,
        received: impl Fn() -> u64 + Send + 'static,
    ) -> Self {
        self.report = Some(Box::new(report));
        self.received = Some(Box::new(received));
        self
    }

    /// Verified mode: outputs are compared through `check` (the replay's positions are not
    /// reported: the channel's verified word counts matched outputs), and a difference stops
    /// the replay.
    pub fn verifying(mut self, check: Arc<OutputCheck>) -> Self {
        self.check = Some(check);
        self
    }

    /// Whether the replay stopped on an output that differs from the primary's.
    pub fn output_mismatch(&self) -> Option<String> {
        self.check.as_ref()?.mismatch()
    }

    /// Whether the replay's exits differ from the primary's.
    pub fn diverged(&self) -> bool {
        self.replayer.error().is_some_and(|error| error.divergence().is_some())
    }

    /// The replay, to start over from a resync (its feed goes on).
    pub fn into_replayer(self) -> ReplayWorld<ChannelFeed> {
        self.replayer
    }

    /// No more reports (the channel is about to close).
    pub fn stop_reporting(&mut self) {
        self.report = None;
        self.received = None;
    }

    fn report_replay(&mut self, now: bool) {
        if let Some(check) = &self.check {
            check.tell_pending();
        }
        let Some(report) = self.report.as_mut() else { return };
        let position = self.replayer.consumed_position();
        let (last, at) = self.reported;
        let caught_up = self.received.as_ref().is_some_and(|received| position >= received());
        if position > last && (now || caught_up || at.elapsed() >= REPORT_EVERY) {
            report(position);
            self.reported = (position, Instant::now());
        }
    }

    /// Stamps what the guest emits next with the log consumed so far.
    fn publish(&self) {
        self.watch.set_logged(self.replayer.consumed_position());
    }

    pub fn replayer(&mut self) -> &mut ReplayWorld<ChannelFeed> {
        &mut self.replayer
    }

    fn drop_released(&self) {
        self.commit.discard_through(self.released.load(Ordering::Acquire));
    }
}

impl EventSource for FollowWorld {
    fn read_clock(&mut self, at: Landmark, clock: ClockId) -> u64 {
        let value = self.replayer.read_clock(at, clock);
        self.publish();
        value
    }

    fn poll(&mut self, at: Landmark, armed: Deadlines) -> Vec<WorldEvent> {
        let events = self.replayer.poll(at, armed);
        self.publish();
        events
    }

    fn wait_idle(&mut self, at: Landmark, armed: Deadlines) {
        self.report_replay(true);
        self.replayer.wait_idle(at, armed)
    }

    fn device_input(&mut self, at: Landmark, kind: InputKind, live: &mut dyn FnMut() -> Vec<u8>) -> Vec<u8> {
        let data = self.replayer.device_input(at, kind, live);
        self.publish();
        data
    }

    fn stop_reason(&self) -> Option<WorldStop> {
        if let Some(mismatch) = self.output_mismatch() {
            return Some(WorldStop::Failed(Arc::new(OutputMismatch(mismatch))));
        }
        self.replayer.stop_reason()
    }

    fn monotonic_now(&self) -> u64 {
        self.replayer.monotonic_now()
    }

    fn input_pending(&self) -> bool {
        self.replayer.input_pending()
    }

    fn time_until(&self, deadline_ns: u64) -> Option<Duration> {
        self.replayer.time_until(deadline_ns)
    }
}

impl RunObserver for FollowWorld {
    fn on_exit(&mut self, count: u64, exit: &ExitInfo, rip: u64) -> Result<()> {
        if let Err(error) = self.replayer.on_exit(count, exit, rip) {
            // A divergence stops the run at the next landmark (the replay's stop reason), where
            // it has a position to resync, or go live, from.
            if !self.diverged() {
                return Err(error);
            }
        }
        self.publish();
        self.drop_released();
        self.report_replay(false);
        Ok(())
    }

    fn wants_rip(&self) -> bool {
        self.replayer.wants_rip()
    }

    fn on_interrupt(&mut self, at: Landmark, vector: u8) -> Result<()> {
        self.replayer.on_interrupt(at, vector)?;
        self.publish();
        Ok(())
    }

    fn at_boundary(&mut self, exits: u64) -> Result<bool> {
        if self.diverged() {
            return Ok(false);
        }
        let passed = self.replayer.at_boundary(exits)?;
        self.publish();
        Ok(passed)
    }

    fn load_logged_preemption(&mut self, count: u64, machine: &mut Machine) -> Result<bool> {
        let loaded = self.replayer.load_logged_preemption(count, machine)?;
        self.publish();
        Ok(loaded)
    }

    fn checkpoint_comes_next(&mut self, count: u64) -> bool {
        self.replayer.checkpoint_comes_next(count)
    }

    fn preempts_on_time(&self) -> bool {
        false
    }
}
