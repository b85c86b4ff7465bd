//! The event source: the one door through which the world reaches the guest.
//!
//! Everything the outside world chooses (what time it is, when a timer expires, later a received
//! frame or a completed disk read) is asked of an [`EventSource`] at a VM exit, stamped with the
//! [`Landmark`] of that exit. A live source answers from the host; `ftlog` wraps it to record the
//! answers (primary) or answers from a log (backup, replay). Devices never read host time or host
//! I/O themselves.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The point in the guest's execution at which an event takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Landmark {
    /// At the n-th deterministic VM exit (counted from 1). The guest reaches it at the same
    /// instruction on every run.
    Exit(u64),
    /// The vCPU was kicked out at an arbitrary instruction after the n-th deterministic exit
    /// (the stretch is reproduced by a checkpoint, not by execution).
    Preempt(u64),
}

impl Landmark {
    /// The deterministic exit count this landmark follows or is.
    pub fn exit_count(self) -> u64 {
        match self {
            Landmark::Exit(n) | Landmark::Preempt(n) => n,
        }
    }
}

/// Execution order: `Exit(n)` comes before `Preempt(n)` (which happens after exit n), which
/// comes before `Exit(n + 1)`.
impl Ord for Landmark {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |l: &Landmark| match l {
            Landmark::Exit(n) => (*n, 0u8),
            Landmark::Preempt(n) => (*n, 1u8),
        };
        rank(self).cmp(&rank(other))
    }
}

impl PartialOrd for Landmark {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Landmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Landmark::Exit(n) => write!(f, "Exit({n})"),
            Landmark::Preempt(n) => write!(f, "Preempt({n})"),
        }
    }
}

/// Which clock a guest read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClockId {
    /// Nanoseconds since the VM started; never goes backwards.
    Monotonic,
    /// Nanoseconds since the Unix epoch (UTC).
    Wall,
}

/// Timers a device has armed, as deadlines on the monotonic clock (ns since VM start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadlines {
    /// The PIT channel 0's next expiry, if armed.
    pub pit: Option<u64>,
}

impl Deadlines {
    /// The earliest armed deadline.
    pub fn earliest(&self) -> Option<u64> {
        self.pit
    }
}

/// Something the world did, delivered to the board at a landmark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorldEvent {
    /// The PIT channel 0 deadline has passed.
    PitExpired,
    /// A frame arrived for virtio-net device `device` (index among the VM's net devices).
    /// It waits in the device's bounce buffer until the guest posts a receive buffer.
    NetFrame { device: u8, frame: Vec<u8> },
    /// Request `id` of virtio-blk device `device` (index among the VM's disks) finished with
    /// virtio status `status`; `data` is what a read returned (its bounce buffer, copied into
    /// the guest's buffers when the event is applied), empty for a write or a flush.
    DiskDone { device: u8, id: u64, status: u8, data: Vec<u8> },
}

/// Data that a device takes from the world at an exit, synchronously (as opposed to
/// [`WorldEvent`]s, which arrive on their own). On a replaying source the data comes from the
/// log and the device's backend is not touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InputKind {
    /// The bytes a virtio-blk read returned from the backend, and its status byte appended.
    DiskRead { device: u8 },
}

/// Why a world stops a run.
#[derive(Clone, Debug)]
pub enum WorldStop {
    /// The recording being replayed ends here: the recorded run was stopped at this point.
    RecordingEnds { exits: u64 },
    /// No more input will come (a stream closed, or its sender was lost) and everything that
    /// came has been delivered: the run stands at a landmark where another world can carry on
    /// (a backup going live).
    InputEnded { lost: bool, reason: String },
    /// The world cannot go on: the replayed guest diverged, or its log is damaged.
    Failed(std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// The FT peer this world records for is gone: the run stops at this landmark, so that it
    /// can go on in another world (alone, after winning the go-live race) or halt.
    PeerLost { reason: String },
}

impl fmt::Display for WorldStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorldStop::RecordingEnds { exits } => write!(f, "the recording ends here, after {exits} exits"),
            WorldStop::InputEnded { lost: false, reason } => write!(f, "the input ended: {reason}"),
            WorldStop::InputEnded { lost: true, reason } => write!(f, "the input was lost: {reason}"),
            WorldStop::Failed(error) => write!(f, "{error}"),
            WorldStop::PeerLost { reason } => write!(f, "the FT peer is lost: {reason}"),
        }
    }
}

/// Rung by a device backend's thread when input arrives for the guest, so that a guest that
/// does not exit by itself is kicked out to take it within the preemption bound.
pub type Doorbell = std::sync::Arc<dyn Fn() + Send + Sync>;

/// The world as the VM sees it. Called only from the vCPU thread, only at exits.
pub trait EventSource {
    /// The value of a clock, for a guest read at `at`.
    fn read_clock(&mut self, at: Landmark, clock: ClockId) -> u64;

    /// What the world did by now, given the timers the devices have armed. Returned events are
    /// applied to the board at `at`, in order.
    fn poll(&mut self, at: Landmark, armed: Deadlines) -> Vec<WorldEvent>;

    /// The guest halted at `at`: block until the world has something for it (a deadline passes
    /// or, later, a device receives data). A replaying source returns at once: its events are already scheduled by the log.
    fn wait_idle(&mut self, at: Landmark, armed: Deadlines);

    /// Bytes a device takes from the world at `at`: `live` reads them from the real backend.
    /// A recording source records what `live` returned; a replaying source returns the
    /// recorded bytes and never calls `live`.
    fn device_input(&mut self, _at: Landmark, _kind: InputKind, live: &mut dyn FnMut() -> Vec<u8>) -> Vec<u8> {
        live()
    }

    /// Why the run must stop, if it must: a replaying source that ran out of log or saw the
    /// guest diverge says so here, and the vCPU loop checks after every exit.
    fn stop_reason(&self) -> Option<WorldStop> {
        None
    }

    /// The monotonic clock now, without recording it: a snapshot stores it so that a restored
    /// machine's clock (and the timers armed on it) carries on from where it was.
    fn monotonic_now(&self) -> u64 {
        0
    }

    /// Whether input waits that the next [`EventSource::poll`] would deliver (a received frame),
    /// so the vCPU loop kicks a guest that does not exit within the bound.
    fn input_pending(&self) -> bool {
        false
    }

    /// How long from now until `deadline_ns` on the monotonic clock passes, so the vCPU loop
    /// can kick a guest that does not exit by itself. `None` means never kick: a replaying
    /// source takes preemptions from the log instead.
    fn time_until(&self, deadline_ns: u64) -> Option<std::time::Duration>;
}

/// The live world of this host: real clocks, real waiting.
pub struct HostWorld {
    started: std::time::Instant,
    /// The monotonic clock's value at `started` (non-zero for a restored machine).
    offset_ns: u64,
    /// Frames received by each net device's backend thread: (device index, frames).
    nets: Vec<(u8, crossbeam_channel::Receiver<Vec<u8>>)>,
    /// Events other backend threads produce (disk completions).
    events: Vec<crossbeam_channel::Receiver<WorldEvent>>,
    /// How busy and quick the disks are (for a short wait at a landmark).
    disks: Vec<std::sync::Arc<crate::virtio::DiskActivity>>,
}

/// At most this many frames enter the guest at one exit, so a flood cannot stall the vCPU; the
/// rest wait in the channel (and the device's own bounce queue is bounded too).
const MAX_FRAMES_PER_POLL: usize = 64;
/// Likewise for disk completions (a queue holds at most 128 requests).
const MAX_EVENTS_PER_POLL: usize = 128;

impl HostWorld {
    pub fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            offset_ns: 0,
            nets: Vec::new(),
            events: Vec::new(),
            disks: Vec::new(),
        }
    }

    /// A world whose monotonic clock reads `ns` now: a restored machine's clock goes on from
    /// its snapshot.
    pub fn resuming_at(ns: u64) -> Self {
        Self {
            started: std::time::Instant::now(),
            offset_ns: ns,
            nets: Vec::new(),
            events: Vec::new(),
            disks: Vec::new(),
        }
    }

    /// Delivers the frames arriving on `frames` to net device `device`.
    pub fn attach_net(&mut self, device: u8, frames: crossbeam_channel::Receiver<Vec<u8>>) {
        self.nets.push((device, frames));
    }

    /// Delivers the disk completions arriving on `completions` at the next landmarks.
    pub fn attach_disks(&mut self, completions: crate::virtio::CompletionReceiver) {
        self.events.push(completions.events);
        self.disks.push(completions.activity);
    }

    /// When nothing has arrived yet but a quick disk is serving a request, waits for it a little
    /// (at most [`crate::virtio::disk_queue::POLL_MAX`]).
    fn wait_for_quick_disk(&self) {
        if self.events.iter().any(|e| !e.is_empty()) {
            return;
        }
        let Some(wait) = self.disks.iter().filter_map(|d| d.worth_waiting()).max() else {
            return;
        };
        let mut select = crossbeam_channel::Select::new();
        for events in &self.events {
            select.recv(events);
        }
        // Ready or not, the poll that follows takes what is there.
        let _ = select.ready_timeout(wait);
    }

    fn monotonic_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns.saturating_add(elapsed)
    }
}

impl Default for HostWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl EventSource for HostWorld {
    fn read_clock(&mut self, _at: Landmark, clock: ClockId) -> u64 {
        match clock {
            ClockId::Monotonic => self.monotonic_ns(),
            ClockId::Wall => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        }
    }

    fn poll(&mut self, _at: Landmark, armed: Deadlines) -> Vec<WorldEvent> {
        self.wait_for_quick_disk();
        let mut events = Vec::new();
        if matches!(armed.pit, Some(deadline) if self.monotonic_ns() >= deadline) {
            events.push(WorldEvent::PitExpired);
        }
        for (device, frames) in &self.nets {
            events.extend(
                frames
                    .try_iter()
                    .take(MAX_FRAMES_PER_POLL)
                    .map(|frame| WorldEvent::NetFrame { device: *device, frame }),
            );
        }
        let mut gone = Vec::new();
        for (i, source) in self.events.iter().enumerate() {
            for _ in 0..MAX_EVENTS_PER_POLL {
                match source.try_recv() {
                    Ok(event) => events.push(event),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    // Its disks were let go (and drained): a closed channel would end every
                    // idle wait at once, so it is dropped.
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        gone.push(i);
                        break;
                    }
                }
            }
        }
        for i in gone.into_iter().rev() {
            self.events.remove(i);
            self.disks.remove(i);
        }
        events
    }

    fn input_pending(&self) -> bool {
        self.nets.iter().any(|(_, frames)| !frames.is_empty()) || self.events.iter().any(|e| !e.is_empty())
    }

    fn monotonic_now(&self) -> u64 {
        self.monotonic_ns()
    }

    fn time_until(&self, deadline_ns: u64) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_nanos(deadline_ns.saturating_sub(self.monotonic_ns())))
    }

    fn wait_idle(&mut self, _at: Landmark, armed: Deadlines) {
        // Wake at the next deadline or when a frame arrives; with nothing armed, look again
        // every 100 ms so that a caller's stop request is noticed.
        let now = self.monotonic_ns();
        let until = armed.earliest().unwrap_or(now + 100_000_000);
        let timeout = std::time::Duration::from_nanos(until.saturating_sub(now));
        if timeout.is_zero() || self.input_pending() {
            return;
        }
        if self.nets.is_empty() && self.events.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let mut select = crossbeam_channel::Select::new();
        for (_, frames) in &self.nets {
            select.recv(frames);
        }
        for events in &self.events {
            select.recv(events);
        }
        // Ready or timed out, either way the loop polls next; nothing is taken here.
        let _ = select.ready_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks_order_by_exit_then_kind() {
        assert!(Landmark::Exit(3) < Landmark::Preempt(3));
        assert!(Landmark::Preempt(3) < Landmark::Exit(4));
        assert_eq!(Landmark::Preempt(7).to_string(), "Preempt(7)");
    }

    #[test]
    fn host_world_reports_an_expired_deadline_only_once_it_passed() {
        let mut world = HostWorld::new();
        let far = Deadlines { pit: Some(u64::MAX) };
        assert!(world.poll(Landmark::Exit(1), far).is_empty());
        let past = Deadlines { pit: Some(0) };
        assert_eq!(world.poll(Landmark::Exit(1), past), vec![WorldEvent::PitExpired]);
    }
}
