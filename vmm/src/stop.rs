//! Stopping ftvm: SIGINT and SIGTERM end it within a second wherever it is.
//!
//! While the vCPU loop runs, a signal stops the run cleanly at its next exit or kick (a recording
//! gets its End record, the state digest is printed): the handler only sets a flag and kicks the
//! vCPU. Everywhere else a flag alone would be ignored: a loop that never looks at it, or a
//! system call that blocks (a write to a full pipe; the C library restarts nothing for us, but
//! Rust's standard library retries on `EINTR`). So the handler also wakes a watchdog thread,
//! which interrupts the main thread's system call, and ends the process itself with status
//! 128 + signal unless the vCPU loop has taken the stop in hand within [`STOP_DEADLINE`]. A run
//! that stopped gets [`FINISH_DEADLINE`] more to close its log; a second signal ends ftvm at once.

use crate::control::VcpuControl;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a signal may go unanswered by the vCPU loop before the watchdog ends the process.
pub const STOP_DEADLINE: Duration = Duration::from_secs(1);
/// How long a run that stopped on a signal may take to close its log and print its report.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(5);

/// Why the run was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Signal,
    /// ftvm's stdout was closed by its reader: nobody is left to see the guest's console.
    OutputClosed,
}

const NO_STOP: u8 = 0;
const SIGNAL: u8 = 1;
const OUTPUT_CLOSED: u8 = 2;
static STOP: AtomicU8 = AtomicU8::new(NO_STOP);
/// The signal that asked for the stop, for the exit status.
static SIGNAL_NUMBER: AtomicI32 = AtomicI32::new(0);

/// Where the vCPU loop is, for the watchdog to know whether a clean stop is under way.
const NOT_RUNNING: u8 = 0;
const RUNNING: u8 = 1;
/// The loop returned (after a stop, or at power-off): the caller closes its log now.
const FINISHING: u8 = 2;
static RUN_PHASE: AtomicU8 = AtomicU8::new(NOT_RUNNING);

/// The write end of the pipe that wakes the watchdog (-1 until installed).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(signal: libc::c_int) {
    // First signal wins the exit status; a repeat is the user insisting.
    let _ = SIGNAL_NUMBER.compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire);
    STOP.store(SIGNAL, Ordering::Release);
    // The watchdog kicks the vCPU (through its control handle, which a handler cannot take).
    let fd = WAKE_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let byte = [signal as u8];
        // SAFETY: write(2) is async-signal-safe; the fd is the non-blocking write end of the
        // watchdog's pipe, open for the life of the process; `byte` is valid for one byte. A
        // full pipe (EAGAIN) means the watchdog is already awake.
        unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
    }
}

/// The vCPU a stop is for: kicked so that its loop sees the stop soon.
static CONTROL: OnceLock<VcpuControl> = OnceLock::new();

/// Makes SIGINT and SIGTERM stop `control`'s run cleanly, and end ftvm within a second in any
/// case. Call once, from the main thread, before any other thread is started.
pub fn stop_on_signals(control: &VcpuControl) -> io::Result<()> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let _ = CONTROL.set(control.clone());
    let mut fds = [0; 2];
    // SAFETY: `fds` is valid for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: F_SETFL on the pipe's write end, which we own; the handler must never block on it.
    if unsafe { libc::fcntl(write_fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    WAKE_FD.store(write_fd, Ordering::Release);
    // SAFETY: pthread_self has no preconditions; the id stays valid while the main thread lives,
    // which is as long as the process (the watchdog dies with it).
    let main_thread = unsafe { libc::pthread_self() };
    std::thread::Builder::new().name("ftvm-stop".into()).spawn(move || watchdog(read_fd, main_thread))?;
    // The nudge first: the watchdog may send it as soon as a stop signal arrives.
    set_handler(nudge_signal(), on_nudge)?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        set_handler(signal, on_stop)?;
    }
    Ok(())
}

/// The signal the watchdog sends the main thread to interrupt a blocked system call.
fn nudge_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_nudge(_signal: libc::c_int) {}

fn set_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the handlers
    // perform only atomic stores, a volatile byte store and write(2). No SA_RESTART: a blocked
    // system call in the main thread returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the first signal, then gives the main thread its deadlines.
fn watchdog(wake: libc::c_int, main_thread: libc::pthread_t) {
    if !wait_readable(wake, None) {
        return;
    }
    drain(wake);
    if let Some(control) = CONTROL.get() {
        control.kick();
    }
    let signal = SIGNAL_NUMBER.load(Ordering::Acquire);
    // The signal may have landed on another thread: make sure a system call blocked in the main
    // thread returns EINTR, so that it sees the stop.
    // SAFETY: the main thread outlives this thread (the process ends with it); the nudge signal
    // has a handler that does nothing, installed before this thread was started.
    unsafe { libc::pthread_kill(main_thread, nudge_signal()) };
    let started = Instant::now();
    let mut deadline = STOP_DEADLINE;
    loop {
        let remaining = deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            if RUN_PHASE.load(Ordering::Acquire) == FINISHING && deadline < STOP_DEADLINE + FINISH_DEADLINE {
                deadline = STOP_DEADLINE + FINISH_DEADLINE;
                continue;
            }
            break;
        }
        if RUN_PHASE.load(Ordering::Acquire) == NOT_RUNNING {
            // No run to stop cleanly: nothing is lost by ending now.
            break;
        }
        if wait_readable(wake, Some(remaining.min(Duration::from_millis(50)))) {
            // A second signal: the user does not want to wait.
            break;
        }
    }
    let name = if signal == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
    if RUN_PHASE.load(Ordering::Acquire) != NOT_RUNNING {
        crate::stdio::err_line(&format!("ftvm: {name}: stopped without finishing cleanly (it took too long)"));
    }
    // SAFETY: _exit ends the process without running destructors or atexit handlers, which could
    // wait on the very lock the stuck main thread holds.
    unsafe { libc::_exit(128 + signal) };
}

/// Polls `fd` for input; `None` waits forever. False on a poll error.
fn wait_readable(fd: libc::c_int, timeout: Option<Duration>) -> bool {
    let timeout_ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    loop {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: `poll` is valid for one entry.
        match unsafe { libc::poll(&mut poll, 1, timeout_ms) } {
            1 => return true,
            0 => return false,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return timeout.is_some(),
        }
    }
}

fn drain(fd: libc::c_int) {
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is valid for its length; one read takes what the handler wrote (a byte per
    // signal).
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
}

/// Asks the run to stop at its next exit, as a signal does (without the watchdog).
pub fn request_stop(cause: StopCause) {
    let value = match cause {
        StopCause::Signal => SIGNAL,
        StopCause::OutputClosed => OUTPUT_CLOSED,
    };
    let _ = STOP.compare_exchange(NO_STOP, value, Ordering::AcqRel, Ordering::Acquire);
    if let Some(control) = CONTROL.get() {
        control.kick();
    }
}

/// The signal that asked for the stop was answered in full by what stopped (a backup that
/// left its pair, the VM running on elsewhere): ftvm ends with its own status, not 128 + signal.
pub fn signal_answered() {
    SIGNAL_NUMBER.store(0, Ordering::Release);
}

/// Whether a stop was asked for, and why.
pub fn stop_cause() -> Option<StopCause> {
    match STOP.load(Ordering::Acquire) {
        SIGNAL => Some(StopCause::Signal),
        OUTPUT_CLOSED => Some(StopCause::OutputClosed),
        _ => None,
    }
}

/// Whether SIGINT or SIGTERM (or a closed stdout) asked the run to stop.
pub fn stop_requested() -> bool {
    stop_cause().is_some()
}

/// The exit status of an ftvm that a signal asked to stop: 128 + the signal, as a shell reports
/// a process the signal killed.
pub fn signal_exit_status() -> Option<u8> {
    match (stop_cause(), SIGNAL_NUMBER.load(Ordering::Acquire)) {
        (Some(StopCause::Signal), signal @ 1..=127) => Some(128 + signal as u8),
        _ => None,
    }
}

/// Why the run stopped, in words, if it was asked to.
pub fn stop_reason() -> Option<&'static str> {
    stop_cause().map(|cause| match cause {
        StopCause::Signal => "stopped by a signal",
        StopCause::OutputClosed => "stopped: stdout was closed",
    })
}

/// Marks the vCPU loop as running for as long as it lives; afterwards the caller is closing its
/// log, which the watchdog allows [`FINISH_DEADLINE`] for.
pub(crate) struct RunPhase(());

impl RunPhase {
    pub(crate) fn enter() -> Self {
        RUN_PHASE.store(RUNNING, Ordering::Release);
        RunPhase(())
    }
}

impl Drop for RunPhase {
    fn drop(&mut self) {
        RUN_PHASE.store(FINISHING, Ordering::Release);
    }
}
