//! Preemption: kicking the vCPU out of `KVM_RUN` when an interrupt has waited too long.
//!
//! A guest computing in ring 3 may run for seconds without a VM exit, while its timer interrupt
//! is due. Before each `KVM_RUN` the loop arms a POSIX timer aimed at its own thread; when it
//! fires, a signal handler sets `immediate_exit` in the shared `kvm_run` page, so `KVM_RUN`
//! returns `EINTR` whether the signal lands inside the run or just before it.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `immediate_exit` byte of the (single) vCPU's `kvm_run` page.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

extern "C" fn on_kick(_signal: libc::c_int) {
    let flag = IMMEDIATE_EXIT.load(Ordering::Acquire);
    if !flag.is_null() {
        // SAFETY: the pointer is the immediate_exit field of the kvm_run mapping, valid for the
        // life of the vCPU (cleared in Drop before the mapping goes); a byte store is
        // async-signal-safe.
        unsafe { ptr::write_volatile(flag, 1) };
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// A POSIX timer id. Timer ids are process-wide: any thread may arm the timer.
#[derive(Clone, Copy)]
struct TimerId(libc::timer_t);
// SAFETY: a timer_t is an opaque process-wide id, not memory of the thread that created it.
unsafe impl Send for TimerId {}

/// Lets backend threads (a TAP reader with a frame for the guest) have the vCPU kicked within
/// the preemption bound, while the loop runs the guest.
#[derive(Clone, Default)]
pub struct RemoteKick {
    target: Arc<Mutex<Option<(TimerId, Duration)>>>,
}

impl RemoteKick {
    /// A doorbell for a device backend.
    pub fn doorbell(&self) -> devices::Doorbell {
        let remote = self.clone();
        Arc::new(move || remote.ring())
    }

    fn ring(&self) {
        let Ok(target) = self.target.lock() else {
            return;
        };
        let Some((TimerId(timer), bound)) = *target else {
            return;
        };
        // Arm for `bound` unless the timer already fires sooner.
        let mut current = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        // SAFETY: the timer is live while it is attached (detached before deletion, under
        // this lock); `current` is valid for the call.
        if unsafe { libc::timer_gettime(timer, &mut current) } != 0 {
            return;
        }
        let remaining = Duration::new(current.it_value.tv_sec as u64, current.it_value.tv_nsec as u32);
        if remaining.is_zero() || remaining > bound {
            let spec = libc::itimerspec { it_interval: current.it_interval, it_value: timespec(bound) };
            // SAFETY: as above; `spec` is valid for the call.
            unsafe { libc::timer_settime(timer, 0, &spec, ptr::null_mut()) };
        }
    }

    fn attach(&self, timer: TimerId, bound: Duration) {
        if let Ok(mut target) = self.target.lock() {
            *target = Some((timer, bound));
        }
    }

    fn detach(&self) {
        if let Ok(mut target) = self.target.lock() {
            *target = None;
        }
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    let duration = duration.max(Duration::from_nanos(1));
    libc::timespec { tv_sec: duration.as_secs() as libc::time_t, tv_nsec: duration.subsec_nanos() as libc::c_long }
}

/// A one-shot timer that kicks the calling thread's vCPU.
pub struct Kicker {
    timer: libc::timer_t,
    remote: RemoteKick,
    /// Whether the timer may still fire; saves a syscall per exit when there is nothing to
    /// wait for.
    armed: std::cell::Cell<bool>,
}

impl Kicker {
    /// Creates the timer for the calling thread, which must be the thread that runs the vCPU.
    /// `immediate_exit` points into that vCPU's `kvm_run` page; `remote` lets backend threads
    /// arm the same timer for `bound` while this kicker lives.
    pub fn for_this_thread(immediate_exit: *mut u8, remote: &RemoteKick, bound: Duration) -> io::Result<Self> {
        IMMEDIATE_EXIT.store(immediate_exit, Ordering::Release);
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the
        // handler only performs a volatile byte store.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(kick_signal(), &action, ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        // SAFETY: sigevent is plain data; zeroed is a valid starting point.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = kick_signal();
        event.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = ptr::null_mut();
        // SAFETY: `event` and `timer` are valid for the call; the timer is deleted in Drop.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(io::Error::last_os_error());
        }
        remote.attach(TimerId(timer), bound);
        Ok(Self { timer, remote: remote.clone(), armed: std::cell::Cell::new(false) })
    }

    /// Kicks the vCPU after `delay` unless re-armed or disarmed first.
    pub fn arm(&self, delay: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer; `timespec` kicks as soon as possible instead.
        self.set(timespec(delay))?;
        self.armed.set(true);
        Ok(())
    }

    pub fn disarm(&self) -> io::Result<()> {
        if self.armed.get() {
            self.set(libc::timespec { tv_sec: 0, tv_nsec: 0 })?;
            self.armed.set(false);
        }
        Ok(())
    }

    fn set(&self, value: libc::timespec) -> io::Result<()> {
        let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: the timer is live; `spec` is valid for the call.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.remote.detach();
        // SAFETY: the timer was created in for_this_thread and is deleted once, after the
        // remote kick let go of it.
        unsafe { libc::timer_delete(self.timer) };
        IMMEDIATE_EXIT.store(ptr::null_mut(), Ordering::Release);
    }
}

/// Gets the vCPU out of a long guest stretch as the preemption timer would; callable from a
/// signal handler.
pub(crate) fn kick_from_signal() {
    on_kick(0);
}

// The stop on SIGINT/SIGTERM lives in `crate::stop`; these names stay for existing callers.
pub use crate::stop::{stop_on_signals, stop_requested};
