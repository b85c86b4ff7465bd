//! Output commit: the primary's output stage, which lets an output leave only once the backup
//! holds (or has replayed with identical outputs) the log that produced it, and only while the
//! backup's lease holds.
//!
//! Each output is stamped with the log's stream position at the moment it was produced
//! ([`PeerWatch::logged`], kept current by [`crate::RecordingWorld::publish_to`]): that log is
//! everything the backup needs to reproduce it. Outputs wait in order and leave in order, to an
//! inner stage (a [`devices::virtio::DirectOutput`]), once the backup's acknowledged position
//! ([`CommitMode::Received`]) or verified position ([`CommitMode::Verified`]) has reached their
//! stamp, and only while the backup's last word is younger than the lease: a primary that the OS
//! paused for longer than the lease wakes up holding, not releasing.
//!
//! The stage is a cloneable handle: the board emits through one clone, the vCPU loop and a timer
//! call [`OutputCommit::release_ready`] on others, the logging channel reads the release marker
//! and calls [`OutputCommit::wake`] when an acknowledgement arrives.
//!
//! What is held is bounded in bytes and in count. When an output does not fit, `emit` waits
//! (the vCPU waits, as the issue asks) until releases make room, the pair is given up for alone
//! mode ([`OutputCommit::release_all_and_go_direct`]) or the stage halts ([`OutputCommit::halt`],
//! the loser of the go-live race releases nothing). The vCPU loop should rather check
//! [`OutputCommit::is_full`] before re-entering the guest and wait with
//! [`OutputCommit::wait_for_space`], where it can also watch for a stop.
//!
//! On a backup, the same stage holds the outputs of the replay, stamped with the replayed
//! position: it never releases them (the backup has no lease: its `PeerWatch` never hears a
//! word), drops those the primary says it released ([`OutputCommit::discard_through`]), and at
//! go-live hands back the rest to re-issue ([`OutputCommit::take_unreleased`]).

use crate::peer::PeerWatch;
use devices::virtio::{DiskRead, Output, OutputError, OutputStage};
use devices::Landmark;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub mod carry;
#[cfg(test)]
mod tests;

/// Which word of the backup releases an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// The backup holds the log up to the output's stamp (the paper).
    Received,
    /// The backup replayed the log up to the output and produced an identical output. Outputs
    /// are stamped with their number (1, 2, ... from the pair's start) instead of a log
    /// position, and the backup's verified word is the count of outputs it matched.
    Verified,
}

/// How much may be held before the vCPU waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitLimits {
    /// Payload bytes held (frames, written data, console bytes). One output larger than this is
    /// still taken, alone, once everything before it has left.
    pub max_bytes: usize,
    /// Outputs held (flushes included).
    pub max_outputs: usize,
}

impl Default for CommitLimits {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_outputs: 65_536 }
    }
}

/// An output waiting for its log to reach the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldOutput {
    /// The log's stream position when the output was produced.
    pub position: u64,
    /// Where the guest produced it.
    pub at: Landmark,
    pub output: Output,
}

/// Counters for status lines and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub held: usize,
    pub held_bytes: usize,
    /// How long the oldest held output has waited.
    pub oldest_held_age: Option<Duration>,
    pub released: u64,
    pub released_bytes: u64,
    /// The stamp of the last output released (0: none yet).
    pub released_position: u64,
    /// Times an emit or a `wait_for_space` found the bound reached and had to wait.
    pub full_waits: u64,
    /// Outputs dropped by [`OutputCommit::discard_through`] and [`OutputCommit::halt`].
    pub discarded: u64,
}

/// What [`OutputCommit::wait_for_space`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Below the bound (or alone, or halted): the guest may run.
    Available,
    /// Still full at the deadline.
    TimedOut,
}

/// The output-commit stage; clones share it.
pub struct OutputCommit<S: OutputStage + Send> {
    shared: Arc<Shared<S>>,
}

impl<S: OutputStage + Send> Clone for OutputCommit<S> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

struct Shared<S> {
    state: Mutex<State<S>>,
    /// Signalled when room may have appeared (a release, an ack via `wake`, alone, halt).
    room: Condvar,
    watch: PeerWatch,
    mode: CommitMode,
    lease: Duration,
    limits: CommitLimits,
}

/// While waiting for room, releases are retried at least this often: acknowledgements land in
/// the `PeerWatch` atomics, and a channel that does not call `wake` must not stall the guest.
const ROOM_POLL: Duration = Duration::from_millis(1);

/// At most one "held output full" warning per this period.
const FULL_WARN_PERIOD: Duration = Duration::from_secs(1);

enum Mode {
    /// Holding for the backup.
    Paired,
    /// No backup: outputs go straight through.
    Direct,
    /// Lost the go-live race: nothing leaves, ever.
    Halted,
}

struct State<S> {
    inner: S,
    held: VecDeque<(HeldOutput, Instant)>,
    held_bytes: usize,
    mode: Mode,
    stats: CommitStats,
    released_at: Option<Landmark>,
    last_full_warning: Option<Instant>,
    full_warnings_suppressed: u64,
    /// Outputs taken since the stage was made (or the count it was told to go on from).
    emitted: u64,
    /// While set (a resync under way), nothing is released.
    held_for_resync: bool,
}

fn payload_len(output: &Output) -> usize {
    match output {
        Output::NetFrame { frame, .. } => frame.len(),
        Output::DiskWrite { data, .. } => data.len(),
        Output::DiskFlush { .. } => 0,
        Output::Console { bytes } => bytes.len(),
    }
}

impl<S: OutputStage + Send> OutputCommit<S> {
    /// Holds outputs for the backup described by `watch`, releasing them to `inner` in `mode`
    /// while its last word is younger than `lease`.
    pub fn new(inner: S, watch: PeerWatch, mode: CommitMode, lease: Duration, limits: CommitLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    inner,
                    held: VecDeque::new(),
                    held_bytes: 0,
                    mode: Mode::Paired,
                    stats: CommitStats::default(),
                    released_at: None,
                    last_full_warning: None,
                    full_warnings_suppressed: 0,
                    emitted: 0,
                    held_for_resync: false,
                }),
                room: Condvar::new(),
                watch,
                mode,
                lease,
                limits,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // A panic while holding the lock leaves the queue consistent (every mutation is a
        // single push or pop), so the state is still usable.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Releases, in order, every held output whose stamp the backup has reached, while the lease
    /// holds. Returns how many left. An error is a backend failure, fatal for the VM.
    pub fn release_ready(&self) -> Result<usize, OutputError> {
        let mut state = self.lock();
        let released = self.shared.release_ready(&mut state)?;
        if released > 0 {
            self.shared.room.notify_all();
        }
        Ok(released)
    }

    /// Outputs taken so far: in verified mode, the number of the last one.
    pub fn emitted(&self) -> u64 {
        self.lock().emitted
    }

    /// Backup side, after a resync: the primary had emitted `outputs` before the landmark, so
    /// the next output here is number `outputs + 1`.
    pub fn continue_numbering_after(&self, outputs: u64) {
        self.lock().emitted = outputs;
    }

    /// A resync is under way: nothing leaves until [`Self::resync_done`] (the backup's replay
    /// diverged, so its acknowledgements say nothing about these outputs).
    pub fn hold_for_resync(&self) {
        self.lock().held_for_resync = true;
    }

    /// The backup holds the resync's state: releases go on.
    pub fn resync_done(&self) {
        self.lock().held_for_resync = false;
        self.shared.room.notify_all();
    }

    /// Something changed in the `PeerWatch` (an ack, a verified position): waiters retry now.
    pub fn wake(&self) {
        self.shared.room.notify_all();
    }

    /// Whether what is held has reached its bound: the vCPU loop waits before re-entering the
    /// guest ([`Self::wait_for_space`]).
    pub fn is_full(&self) -> bool {
        let state = self.lock();
        self.shared.is_full(&state)
    }

    /// Waits until what is held is below its bound, releasing what becomes ready meanwhile, for
    /// at most `timeout`.
    pub fn wait_for_space(&self, timeout: Duration) -> Result<Space, OutputError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let mut warned = false;
        loop {
            self.shared.release_ready(&mut state)?;
            if !self.shared.is_full(&state) {
                return Ok(Space::Available);
            }
            if !warned {
                warned = true;
                self.shared.warn_full(&mut state);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Space::TimedOut);
            }
            state = self.shared.wait_room(state, (deadline - now).min(ROOM_POLL));
        }
    }

    /// The stamp of the last output released: the channel's "released" marker. Every output
    /// stamped at or below it has left; none above it has.
    pub fn released_position(&self) -> u64 {
        self.lock().stats.released_position
    }

    /// The landmark of the last output released, if any.
    pub fn released_landmark(&self) -> Option<Landmark> {
        self.lock().released_at
    }

    pub fn stats(&self) -> CommitStats {
        let state = self.lock();
        let mut stats = state.stats;
        stats.held = state.held.len();
        stats.held_bytes = state.held_bytes;
        stats.oldest_held_age = state.held.front().map(|(_, since)| since.elapsed());
        stats
    }

    /// The primary won the race after losing its backup: releases everything held, in order,
    /// and from now on passes outputs straight through.
    pub fn release_all_and_go_direct(&self) -> Result<usize, OutputError> {
        let mut state = self.lock();
        state.mode = Mode::Direct;
        let mut released = 0;
        let result = loop {
            match state.held.pop_front() {
                Some((held, _)) => {
                    if let Err(e) = self.shared.release_one(&mut state, held) {
                        break Err(e);
                    }
                    released += 1;
                }
                None => break Ok(released),
            }
        };
        self.shared.room.notify_all();
        result
    }

    /// Lost the go-live race: drops everything held and every later output; nothing leaves.
    pub fn halt(&self) {
        let mut state = self.lock();
        halt_locked(&mut state);
        self.shared.room.notify_all();
    }

    /// Backup side: the primary released everything stamped at or below `position`; drops it.
    pub fn discard_through(&self, position: u64) -> usize {
        let mut state = self.lock();
        let mut dropped = 0;
        while state.held.front().is_some_and(|(held, _)| held.position <= position) {
            if let Some((held, _)) = state.held.pop_front() {
                state.held_bytes -= payload_len(&held.output);
                dropped += 1;
            }
        }
        state.stats.discarded += dropped as u64;
        if dropped > 0 {
            self.shared.room.notify_all();
        }
        dropped
    }

    /// Takes every held output (those after the last release marker), in order, leaving the
    /// stage empty: at go-live, what the backup must re-issue.
    pub fn take_unreleased(&self) -> Vec<HeldOutput> {
        let mut state = self.lock();
        state.held_bytes = 0;
        let taken: Vec<HeldOutput> = state.held.drain(..).map(|(held, _)| held).collect();
        self.shared.room.notify_all();
        taken
    }

    /// A copy of what is held, oldest first: at a resync it goes to the backup (see [`carry`]).
    pub fn held_outputs(&self) -> Vec<HeldOutput> {
        self.lock().held.iter().map(|(held, _)| held.clone()).collect()
    }

    /// Holds `inherited` (the primary's held outputs carried by a resync, with its stamps)
    /// before anything this stage holds, as if they had been emitted here.
    pub fn hold_inherited(&self, inherited: Vec<HeldOutput>) {
        let mut state = self.lock();
        let now = Instant::now();
        state.held_bytes += inherited.iter().map(|held| payload_len(&held.output)).sum::<usize>();
        for held in inherited.into_iter().rev() {
            state.held.push_front((held, now));
        }
    }

    /// Runs `f` on the inner stage (under the stage's lock).
    pub fn with_inner<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.lock().inner)
    }

    /// The inner stage back, once this is the last handle on the stage and nothing is held
    /// (after [`Self::release_all_and_go_direct`]); otherwise the handle is returned.
    pub fn into_inner(self) -> Result<S, Self> {
        if !self.lock().held.is_empty() {
            return Err(self);
        }
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => Ok(shared.state.into_inner().unwrap_or_else(PoisonError::into_inner).inner),
            Err(shared) => Err(Self { shared }),
        }
    }
}

/// Drops everything held and every later output (the caller wakes the waiters).
fn halt_locked<S>(state: &mut State<S>) {
    state.mode = Mode::Halted;
    let dropped = state.held.len() as u64;
    state.held.clear();
    state.held_bytes = 0;
    state.stats.discarded += dropped;
}

impl<S: OutputStage + Send> Shared<S> {
    fn reached(&self) -> u64 {
        match self.mode {
            CommitMode::Received => self.watch.acked(),
            CommitMode::Verified => self.watch.verified(),
        }
    }

    fn release_ready(&self, state: &mut State<S>) -> Result<usize, OutputError> {
        if !matches!(state.mode, Mode::Paired) || state.held_for_resync {
            return Ok(0);
        }
        let mut released = 0;
        // The lease is checked before every output: a pause in the middle of a batch must not
        // let the rest of it out.
        while state.held.front().is_some_and(|(held, _)| held.position <= self.reached())
            && self.watch.lease_valid(self.lease)
        {
            let Some((held, _)) = state.held.pop_front() else { break };
            self.release_one(state, held)?;
            released += 1;
        }
        Ok(released)
    }

    /// Hands one output (already off the queue) to the inner stage and counts it.
    fn release_one(&self, state: &mut State<S>, held: HeldOutput) -> Result<(), OutputError> {
        let len = payload_len(&held.output);
        state.held_bytes = state.held_bytes.saturating_sub(len);
        state.stats.released += 1;
        state.stats.released_bytes += len as u64;
        state.stats.released_position = state.stats.released_position.max(held.position);
        state.released_at = Some(held.at);
        let result = state.inner.emit(held.at, held.output);
        if result.is_err() {
            // Fatal for the VM (a disk write refused by fencing, say): nothing after it may
            // leave, whichever thread releases next (a reply must not follow a lost write).
            halt_locked(state);
        }
        result
    }

    fn is_full(&self, state: &State<S>) -> bool {
        matches!(state.mode, Mode::Paired)
            && (state.held.len() >= self.limits.max_outputs || state.held_bytes >= self.limits.max_bytes)
    }

    fn has_room_for(&self, state: &State<S>, len: usize) -> bool {
        state.held.is_empty()
            || (state.held.len() < self.limits.max_outputs && state.held_bytes + len <= self.limits.max_bytes)
    }

    fn wait_room<'a>(&self, state: MutexGuard<'a, State<S>>, period: Duration) -> MutexGuard<'a, State<S>> {
        match self.room.wait_timeout(state, period) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    fn warn_full(&self, state: &mut State<S>) {
        state.stats.full_waits += 1;
        let now = Instant::now();
        if state.last_full_warning.is_some_and(|last| now.duration_since(last) < FULL_WARN_PERIOD) {
            state.full_warnings_suppressed += 1;
            return;
        }
        tracing::warn!(
            held = state.held.len(),
            held_bytes = state.held_bytes,
            max_outputs = self.limits.max_outputs,
            max_bytes = self.limits.max_bytes,
            logged = self.watch.logged(),
            acked = self.watch.acked(),
            verified = self.watch.verified(),
            silence_ms = self.watch.silence().map(|s| s.as_millis()),
            similar_since_last = state.full_warnings_suppressed,
            "held output is full: the vCPU waits for the backup"
        );
        state.last_full_warning = Some(now);
        state.full_warnings_suppressed = 0;
    }
}

impl<S: OutputStage + Send> OutputStage for OutputCommit<S> {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        let shared = Arc::clone(&self.shared);
        let mut state = self.lock();
        // Stamped before any wait: the output depends on the log written so far, not on what
        // the recorder writes while the vCPU waits here.
        state.emitted += 1;
        let position = match shared.mode {
            CommitMode::Received => shared.watch.logged(),
            CommitMode::Verified => state.emitted,
        };
        let len = payload_len(&output);
        shared.release_ready(&mut state)?;
        let mut warned = false;
        loop {
            match state.mode {
                Mode::Direct => return state.inner.emit(at, output),
                Mode::Halted => {
                    state.stats.discarded += 1;
                    return Ok(());
                }
                Mode::Paired if shared.has_room_for(&state, len) => break,
                Mode::Paired => {
                    if !warned {
                        warned = true;
                        shared.warn_full(&mut state);
                    }
                    state = shared.wait_room(state, ROOM_POLL);
                    shared.release_ready(&mut state)?;
                }
            }
        }
        state.held_bytes += len;
        state.held.push_back((HeldOutput { position, at, output }, Instant::now()));
        shared.release_ready(&mut state)?;
        Ok(())
    }

    /// The read goes to the inner stage with every held write of its disk that overlaps it, in
    /// emit order, as a patch: those writes reach the disk only after the read, yet the read must
    /// see them. Under the stage's lock, so no release slips between the two.
    fn submit_read(&mut self, mut read: DiskRead) -> Result<(), OutputError> {
        let mut state = self.lock();
        let end = read.offset.saturating_add(read.len as u64);
        for (held, _) in &state.held {
            let Output::DiskWrite { device, offset, data, .. } = &held.output else { continue };
            if *device == read.device && *offset < end && offset.saturating_add(data.len() as u64) > read.offset {
                read.patches.push((*offset, data.clone()));
            }
        }
        state.inner.submit_read(read)
    }

    fn failure(&self) -> Option<Arc<OutputError>> {
        self.lock().inner.failure()
    }
}
