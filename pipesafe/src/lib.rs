//! stdout and stderr for a command-line program that must never panic on them (`ftvm` and
//! `gfs`). Every line a binary prints goes through [`out_line`] and [`err_line`] (and, for
//! unformatted bytes such as a guest's console or a tracing subscriber, the [`Stdout`] and
//! [`Stderr`] writers), so one place decides what a write does when its reader is gone:
//!
//! - stdout closed (`EPIPE`, e.g. `gfs ls / | head -1`): output is dropped from then on, the
//!   program's [`Policy::on_stdout_closed`] runs once (ftvm asks a run to stop), and the program
//!   should end with [`CLOSED_STDOUT_STATUS`] (what a shell shows for a writer killed by
//!   SIGPIPE; Rust ignores SIGPIPE, so the write fails instead of killing the process);
//! - stderr closed: messages are dropped;
//! - a write blocked on a full pipe gives up once [`Policy::stop_requested`] says so (a stop
//!   must not wait for a reader that does not read), and writes after a stop never block;
//! - any other write error (a full disk) drops the output and is reported once on stderr.
//!
//! Writes are unbuffered (one `write(2)` per line), so nothing is lost or reordered when the
//! program ends, and an error line on stderr can start on a line of its own when stdout and
//! stderr are one file.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The exit status of a program whose stdout was closed: 128 + SIGPIPE.
pub const CLOSED_STDOUT_STATUS: u8 = 128 + libc::SIGPIPE as u8;

/// What a program does around its output: given with every write, so there is no global hook
/// to install before the first line.
#[derive(Debug)]
pub struct Policy {
    /// The program's name, for the one message about a failing stdout.
    pub program: &'static str,
    /// Whether the program is stopping (a signal arrived): a write then never waits.
    pub stop_requested: fn() -> bool,
    /// Runs once, on the write that finds stdout closed.
    pub on_stdout_closed: fn(),
}

impl Policy {
    /// A program without stop signals of its own: writes wait as long as the reader does, and a
    /// closed stdout only drops what follows.
    pub const fn plain(program: &'static str) -> Policy {
        Policy { program, stop_requested: never, on_stdout_closed: nothing }
    }
}

fn never() -> bool {
    false
}

fn nothing() {}

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The last byte written to stdout was not a newline.
static STDOUT_MID_LINE: AtomicBool = AtomicBool::new(false);
static OTHER_ERROR_REPORTED: AtomicBool = AtomicBool::new(false);

/// Whether the program's stdout was closed by its reader.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Acquire)
}

/// The largest write that a pipe takes whole once it has room (POSIX PIPE_BUF is 4096 on Linux).
const PIPE_BUF: usize = 4096;

/// Writes all of `bytes` to `fd`: retries a write interrupted by an unrelated signal, gives up
/// on one interrupted by a stop, and after a stop only writes what the fd takes without waiting.
fn write_all_fd(policy: &Policy, fd: libc::c_int, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let chunk = if (policy.stop_requested)() {
            if !writable_now(fd) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            &bytes[..bytes.len().min(PIPE_BUF)]
        } else {
            bytes
        };
        // SAFETY: `chunk` is valid for reads of its length; fd 1 and 2 stay open for the life of
        // the process (the programs using this never close them).
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

/// Writes to stdout and says whether all of it went: for a program's main output (a file's
/// contents), where a lost byte must fail the command. A closed stdout is noted as by
/// [`write_stdout`] and returned as `BrokenPipe`.
pub fn try_write_stdout(policy: &Policy, bytes: &[u8]) -> io::Result<()> {
    if stdout_closed() {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    if bytes.is_empty() {
        return Ok(());
    }
    match write_all_fd(policy, libc::STDOUT_FILENO, bytes) {
        Ok(()) => {
            STDOUT_MID_LINE.store(bytes.last() != Some(&b'\n'), Ordering::Release);
            Ok(())
        }
        Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {
            if !STDOUT_CLOSED.swap(true, Ordering::AcqRel) {
                (policy.on_stdout_closed)();
            }
            Err(error)
        }
        Err(error) => Err(error),
    }
}

/// Writes to stdout, never failing: see the crate docs for what happens to the bytes.
pub fn write_stdout(policy: &Policy, bytes: &[u8]) {
    match try_write_stdout(policy, bytes) {
        Ok(()) => {}
        Err(_) if stdout_closed() => {}
        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
        Err(error) => {
            if !OTHER_ERROR_REPORTED.swap(true, Ordering::AcqRel) {
                let message = format!("{}: writing to stdout: {error}; its output is lost from here\n", policy.program);
                write_stderr(policy, message.as_bytes());
            }
        }
    }
}

/// Writes to stderr, never failing; starts on a fresh line if stdout, the same file, is in the
/// middle of one (a guest's console without its last newline).
pub fn write_stderr(policy: &Policy, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if STDOUT_MID_LINE.load(Ordering::Acquire) && stdout_is_stderr() {
        STDOUT_MID_LINE.store(false, Ordering::Release);
        let _ = write_all_fd(policy, libc::STDERR_FILENO, b"\n");
    }
    // Nobody to tell if stderr itself is gone.
    let _ = write_all_fd(policy, libc::STDERR_FILENO, bytes);
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

/// One line on stdout (`text` without its newline), on a line of its own: after output that
/// was left unfinished (a guest's console line), a newline comes first.
pub fn out_line(policy: &Policy, text: &str) {
    let mut line = String::with_capacity(text.len() + 2);
    if STDOUT_MID_LINE.load(Ordering::Acquire) {
        line.push('\n');
    }
    line.push_str(text);
    line.push('\n');
    write_stdout(policy, line.as_bytes());
}

/// One line on stderr (`text` without its newline), on a line of its own.
pub fn err_line(policy: &Policy, text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write_stderr(policy, line.as_bytes());
}

/// stdout as a writer that never fails.
#[derive(Clone, Copy, Debug)]
pub struct Stdout(pub &'static Policy);

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stdout(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// stdout as a writer that fails when a write fails ([`try_write_stdout`]): for output that
/// must arrive whole, and that should stop being made once nobody reads it.
#[derive(Clone, Copy, Debug)]
pub struct CheckedStdout(pub &'static Policy);

impl Write for CheckedStdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        try_write_stdout(self.0, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// stderr as a writer that never fails (for a tracing subscriber).
#[derive(Clone, Copy, Debug)]
pub struct Stderr(pub &'static Policy);

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_stderr(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
