//! ftvm's stdout and stderr. Every byte ftvm prints goes through here: its own lines
//! ([`outln!`](crate::outln), [`errln!`](crate::errln)), the guest's serial console
//! ([`Stdout`] as the board's output) and the tracing subscriber ([`Stderr`]). The writing
//! itself is `pipesafe`'s, shared with `gfs`; what is ftvm's is its [`POLICY`]:
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

pub use pipesafe::{stdout_closed, CLOSED_STDOUT_STATUS};

/// How ftvm's output meets its stop machinery.
pub static POLICY: pipesafe::Policy = pipesafe::Policy {
    program: "ftvm",
    stop_requested: crate::stop::stop_requested,
    on_stdout_closed: stop_on_closed_stdout,
};

fn stop_on_closed_stdout() {
    crate::stop::request_stop(crate::stop::StopCause::OutputClosed);
}

/// One line on stdout (`text` without its newline), on a line of its own: after a guest's
/// console line that was left unfinished, a newline comes first.
pub fn out_line(text: &str) {
    pipesafe::out_line(&POLICY, text);
}

/// One line on stderr (`text` without its newline), on a line of its own.
pub fn err_line(text: &str) {
    pipesafe::err_line(&POLICY, text);
}

/// ftvm's stdout as a writer that never fails (for the guest's console).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pipesafe::write_stdout(&POLICY, buf);
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
        pipesafe::write_stderr(&POLICY, buf);
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
