//! Preemption: kicking the vCPU out of `KVM_RUN` when an interrupt has waited too long.
//!
//! A guest computing in ring 3 may run for seconds without a VM exit, while its timer interrupt
//! is due. Before each `KVM_RUN` the loop arms a POSIX timer aimed at its own thread; when it
//! fires, a signal handler sets `immediate_exit` in the thread's `kvm_run` page, so `KVM_RUN`
//! returns `EINTR` whether the signal lands inside the run or just before it. Other threads
//! reach the same timer through the [`crate::control::VcpuControl`] handle.

use std::cell::Cell;
use std::io;
use std::ptr;
use std::time::Duration;

thread_local! {
    /// The `immediate_exit` byte of the `kvm_run` page of the vCPU this thread runs. The kick
    /// signal is aimed at this thread (SIGEV_THREAD_ID), so its handler finds it here.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn on_kick(_signal: libc::c_int) {
    // A const-initialised thread-local without a destructor is a plain TLS load: safe in a
    // signal handler. `try_with` fails only while the thread is being torn down.
    let _ = IMMEDIATE_EXIT.try_with(|flag| {
        let flag = flag.get();
        if !flag.is_null() {
            // SAFETY: the pointer is the immediate_exit field of this thread's kvm_run mapping,
            // valid while the Kicker lives (cleared in its Drop before the mapping can go); a
            // byte store is async-signal-safe.
            unsafe { ptr::write_volatile(flag, 1) };
        }
    });
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// A POSIX timer id. Timer ids are process-wide: any thread may arm the timer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerId(pub(crate) libc::timer_t);
// SAFETY: a timer_t is an opaque process-wide id, not memory of the thread that created it.
unsafe impl Send for TimerId {}

pub(crate) fn timespec(duration: Duration) -> libc::timespec {
    let duration = duration.max(Duration::from_nanos(1));
    libc::timespec { tv_sec: duration.as_secs() as libc::time_t, tv_nsec: duration.subsec_nanos() as libc::c_long }
}

/// Arms `timer` to fire after `delay` unless it already fires sooner.
pub(crate) fn arm_no_later_than(timer: TimerId, delay: Duration) {
    let mut current = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
    };
    // SAFETY: the caller holds the timer live (the control handle detaches it under its lock
    // before deletion); `current` is valid for the call.
    if unsafe { libc::timer_gettime(timer.0, &mut current) } != 0 {
        return;
    }
    let remaining = Duration::new(current.it_value.tv_sec as u64, current.it_value.tv_nsec as u32);
    if remaining.is_zero() || remaining > delay {
        let spec = libc::itimerspec { it_interval: current.it_interval, it_value: timespec(delay) };
        // SAFETY: as above; `spec` is valid for the call.
        unsafe { libc::timer_settime(timer.0, 0, &spec, ptr::null_mut()) };
    }
}

/// A one-shot timer that kicks the calling thread's vCPU.
pub struct Kicker {
    timer: libc::timer_t,
}

impl Kicker {
    /// Creates the timer for the calling thread, which must be the thread that runs the vCPU.
    /// `immediate_exit` points into that vCPU's `kvm_run` page and must stay valid while the
    /// kicker lives.
    pub fn for_this_thread(immediate_exit: *mut u8) -> io::Result<Self> {
        IMMEDIATE_EXIT.with(|flag| flag.set(immediate_exit));
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the
        // handler only performs a thread-local load and a volatile byte store.
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
        Ok(Self { timer })
    }

    /// The timer's id, for other threads to kick the vCPU through the control handle.
    pub(crate) fn id(&self) -> TimerId {
        TimerId(self.timer)
    }

    /// Kicks the vCPU after `delay` unless re-armed or disarmed first.
    pub fn arm(&self, delay: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer; `timespec` kicks as soon as possible instead.
        self.set(timespec(delay))
    }

    /// Always a syscall: a backend's doorbell (another thread) may have armed the timer for
    /// input the loop has taken meanwhile, and a kick left armed would preempt the guest later
    /// for nothing (each preemption costs a checkpoint when recording).
    pub fn disarm(&self) -> io::Result<()> {
        self.set(libc::timespec { tv_sec: 0, tv_nsec: 0 })
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
        // SAFETY: the timer was created in for_this_thread and is deleted once; the control
        // handle detached it before this kicker is dropped (see `control::Attached`).
        unsafe { libc::timer_delete(self.timer) };
        IMMEDIATE_EXIT.with(|flag| flag.set(ptr::null_mut()));
    }
}
