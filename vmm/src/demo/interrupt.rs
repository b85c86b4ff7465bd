//! Ctrl-C, SIGTERM and SIGHUP during the demo: the handler only raises a flag; every wait of
//! the demo looks at it and fails, so the demo unwinds and removes what it made.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire);
}

/// Routes SIGINT, SIGTERM and SIGHUP to the flag.
pub fn install() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe; SA_RESTART keeps system calls of other threads going.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    Ok(())
}

/// The signal that interrupted the demo, if one did.
pub fn signal() -> Option<i32> {
    match SIGNAL.load(Ordering::Acquire) {
        0 => None,
        signal => Some(signal),
    }
}

/// Fails once a signal has asked the demo to stop.
pub fn check() -> Result<()> {
    if let Some(signal) = signal() {
        bail!("interrupted by signal {signal}");
    }
    Ok(())
}
