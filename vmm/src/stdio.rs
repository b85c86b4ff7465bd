//! ftvm's stdout and stderr. Every byte ftvm prints goes through here: its own lines
//! ([`outln!`](crate::outln), [`errln!`](crate::errln)), the guest's serial console
//! ([`Stdout`] as the board's output) and the tracing subscriber ([`Stderr`]). So one place
//! decides what a write does when its reader is gone or a stop signal arrives while it blocks:
//!
//! - stdout closed (`EPIPE`, e.g. `ftvm log LOG | head -1`): output is dropped from then on, a
//!   run is asked to stop at its next exit as on SIGINT, and ftvm ends quietly with
//!   [`CLOSED_STDOUT_STATUS`] (what a shell shows for a writer killed by SIGPIPE);
//! - stderr closed: messages are dropped;
//! - a write blocked on a full pipe when SIGINT/SIGTERM arrives gives up, and writes after a
//!   stop never block: the stop must not wait for a reader that does not read;
//! - any other write error (a full disk) drops the output and is reported once.
//!
//! Writes are unbuffered (one `write(2)` per line or per console byte, next to the ~84 µs the
//! guest's exit for that byte costs), so nothing is lost or reordered when ftvm ends, and an
//! error line on stderr can start on a line of its own when stdout and stderr are one file.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// ftvm's exit status when its stdout was closed: 128 + SIGPIPE.
pub const CLOSED_STDOUT_STATUS: u8 = 128 + libc::SIGPIPE as u8;

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The last byte written to stdout was not a newline.
static STDOUT_MID_LINE: AtomicBool = AtomicBool::new(false);
static OTHER_ERROR_REPORTED: AtomicBool = AtomicBool::new(false);

/// Whether ftvm's stdout was closed by its reader.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Acquire)
}

/// The largest write that a pipe takes whole once it has room (POSIX PIPE_BUF is 4096 on Linux).
const PIPE_BUF: usize = 4096;

/// Writes all of `bytes` to `fd`: retries a write interrupted by an unrelated signal, gives up
/// on one interrupted by a stop, and after a stop only writes what the fd takes without waiting.
fn write_all_fd(fd: libc::c_int, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let chunk = if crate::stop::stop_requested() {
            if !writable_now(fd) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            &bytes[..bytes.len().min(PIPE_BUF)]
        } else {
            bytes
        };
        // SAFETY: `chunk` is valid for reads of its length; fd 1 and 2 stay open for the life of
        // the process (ftvm never closes them).
        let written = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        if written > 0 {
            bytes = &bytes[written as usize..];
            continue;
        }
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // A stop is checked at the top of the loop.
            Some(libc::EINTR) => continue,
            // A stdout left non-blocking by whoever gave it to us: wait for room like a
            // blocking one would, but a stop still ends the wait.
            Some(libc::EAGAIN) => {
                wait_writable(fd, Duration::from_millis(100));
            }
            _ => return Err(error),
        }
    }
    Ok(())
}

fn writable_now(fd: libc::c_int) -> bool {
    wait_writable(fd, Duration::ZERO)
}

fn wait_writable(fd: libc::c_int, timeout: Duration) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: `poll` is valid for one entry.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    ready == 1 && poll.revents & libc::POLLOUT != 0
}

/// Writes to stdout, never failing: see the module docs for what happens to the bytes.
fn write_stdout(bytes: &[u8]) {
    if bytes.is_empty() || stdout_closed() {
        return;
    }
    match write_all_fd(libc::STDOUT_FILENO, bytes) {
        Ok(()) => STDOUT_MID_LINE.store(bytes.last() != Some(&b'\n'), Ordering::Release),
        Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {
            STDOUT_CLOSED.store(true, Ordering::Release);
            crate::stop::request_stop(crate::stop::StopCause::OutputClosed);
        }
        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
        Err(error) => {
            if !OTHER_ERROR_REPORTED.swap(true, Ordering::AcqRel) {
                write_stderr(format!("ftvm: writing to stdout: {error}; its output is lost from here\n").as_bytes());
            }
        }
    }
}

/// Writes to stderr, never failing; starts on a fresh line if stdout, the same file, is in the
/// middle of one (the guest's console without its last newline).
fn write_stderr(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if STDOUT_MID_LINE.load(Ordering::Acquire) && stdout_is_stderr() {
        STDOUT_MID_LINE.store(false, Ordering::Release);
        let _ = write_all_fd(libc::STDERR_FILENO, b"\n");
    }
    // Nobody to tell if stderr itself is gone.
    let _ = write_all_fd(libc::STDERR_FILENO, bytes);
}

/// Whether fd 1 and fd 2 are the same open file (a terminal, or `2>&1`).
fn stdout_is_stderr() -> bool {
    fn identity(fd: libc::c_int) -> Option<(libc::dev_t, libc::ino_t)> {
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is valid for the call.
        (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some((stat.st_dev, stat.st_ino))
    }
    let out = identity(libc::STDOUT_FILENO);
    out.is_some() && out == identity(libc::STDERR_FILENO)
}

/// One line on stdout (`text` without its newline), on a line of its own: after a guest's
/// console line that was left unfinished, a newline comes first.
pub fn out_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 2);
    if STDOUT_MID_LINE.load(Ordering::Acquire) {
        line.push('\n');
    }
    line.push_str(text);
    line.push('\n');
    write_stdout(line.as_bytes());
}

/// One line on stderr (`text` without its newline), on a line of its own.
pub fn err_line(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write_stderr(line.as_bytes());
}

/// ftvm's stdout as a writer that never fails (for the guest's console).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stdout(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// ftvm's stderr as a writer that never fails (for the tracing subscriber).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stderr(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Prints a line on ftvm's stdout, like `println!` but without panicking on a closed pipe.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdio::out_line("")
    };
    ($($arg:tt)*) => {
        $crate::stdio::out_line(&::std::format!($($arg)*))
    };
}

/// Prints a line on ftvm's stderr, like `eprintln!` but without panicking on a closed pipe, and
/// never glued to a console line that stdout left open.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::stdio::err_line(&::std::format!($($arg)*))
    };
}
