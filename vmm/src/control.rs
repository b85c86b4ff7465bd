//! The vCPU control handle: how other threads (a device backend with input, the logging
//! channel, a signal, a join) ask the single vCPU thread to kick, pause or stop.
//!
//! Requests are flags the loop reads at the top of each iteration, at a landmark; a kick gets
//! the vCPU out of a long guest stretch so that it reads them soon. A paused run returns with
//! its position: the caller takes a checkpoint, streams state, attaches other backends, and
//! continues the run from there.

use crate::kick::{arm_no_later_than, Kicker, TimerId};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STOP: u8 = 1;
const PAUSE: u8 = 2;

/// What the loop was asked to do at its next landmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// End the run cleanly (a recording gets its End record, the state digest is printed).
    Stop,
    /// Return from the run at the next landmark; the run can be continued from there.
    Pause,
}

/// A cloneable, thread-safe handle on one vCPU's loop.
#[derive(Clone, Default)]
pub struct VcpuControl {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: AtomicU8,
    /// Whether a run loop is on the vCPU thread now (a stop then ends it cleanly).
    running: AtomicBool,
    /// The running loop's kick timer and preemption bound.
    timer: Mutex<Option<(TimerId, Duration)>>,
}

impl VcpuControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// A doorbell for a device backend: input is waiting, so a guest that does not exit by
    /// itself is kicked within the preemption bound.
    pub fn doorbell(&self) -> devices::Doorbell {
        let control = self.clone();
        Arc::new(move || control.kick_within_bound())
    }

    /// Kicks the vCPU out of the guest now (if it is in the guest; otherwise its next entry
    /// returns at once, as a preemption).
    pub fn kick(&self) {
        self.with_timer(|timer, _| arm_no_later_than(timer, Duration::from_nanos(1)));
    }

    /// Asks the loop to end the run at its next landmark.
    pub fn stop(&self) {
        self.inner.requests.fetch_or(STOP, Ordering::AcqRel);
        self.kick();
    }

    /// Asks the loop to return at its next landmark, to be continued later.
    pub fn pause(&self) {
        self.inner.requests.fetch_or(PAUSE, Ordering::AcqRel);
        self.kick();
    }

    /// Whether a stop was asked for (it stays asked: every later run stops at once).
    pub fn stop_requested(&self) -> bool {
        self.inner.requests.load(Ordering::Acquire) & STOP != 0
    }

    /// Whether a run loop is on the vCPU thread now.
    pub fn running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// The request the loop must act on now: a stop (kept), or a pause (consumed).
    pub(crate) fn take_request(&self) -> Option<Request> {
        let requests = self.inner.requests.load(Ordering::Acquire);
        if requests & STOP != 0 {
            return Some(Request::Stop);
        }
        if requests & PAUSE != 0 {
            self.inner.requests.fetch_and(!PAUSE, Ordering::AcqRel);
            return Some(Request::Pause);
        }
        None
    }

    /// Makes `kicker` the timer that kicks reach, while the returned guard lives.
    pub(crate) fn attach(&self, kicker: &Kicker, bound: Duration) -> Attached {
        if let Ok(mut timer) = self.inner.timer.lock() {
            *timer = Some((kicker.id(), bound));
        }
        self.inner.running.store(true, Ordering::Release);
        Attached { control: self.clone() }
    }

    /// Marks a run without a kick timer (a replay) as running.
    pub(crate) fn attach_without_timer(&self) -> Attached {
        self.inner.running.store(true, Ordering::Release);
        Attached { control: self.clone() }
    }

    fn kick_within_bound(&self) {
        self.with_timer(arm_no_later_than);
    }

    fn with_timer(&self, act: impl FnOnce(TimerId, Duration)) {
        let Ok(timer) = self.inner.timer.lock() else { return };
        if let Some((id, bound)) = *timer {
            act(id, bound);
        }
    }
}

/// Detaches the kick timer when the run loop ends (before the kicker deletes it).
pub(crate) struct Attached {
    control: VcpuControl,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(mut timer) = self.control.inner.timer.lock() {
            *timer = None;
        }
        self.control.inner.running.store(false, Ordering::Release);
    }
}
