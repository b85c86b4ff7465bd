//! What a running process asked the kernel to do, seen from outside it by `strace`: a test's
//! evidence that does not depend on the process reporting on itself (a no-op `fdatasync`
//! reports success just as well as a real one; only the missing system call shows it).

use crate::Process;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `strace` attached to every thread of a running process, writing to a file.
pub struct Strace {
    tracer: Process,
    log: PathBuf,
}

/// One system call of a traced thread.
#[derive(Debug, Clone)]
pub struct Call {
    pub tid: u32,
    pub name: String,
    /// What the first argument's descriptor is (`-yy`): a path, `TCP:[a->b]`, ... Empty when
    /// the first argument is not a descriptor.
    pub target: String,
    /// The arguments as strace printed them (byte strings in `\xNN` form).
    pub args: String,
    /// The return value, once the call finished (None: it never did, e.g. the process died).
    pub result: Option<i64>,
    /// Position of the line where the call started, and of the line where it returned, among
    /// the lines of every thread: calls on different threads are ordered by these.
    pub started: usize,
    pub finished: Option<usize>,
}

impl Call {
    /// The bytes of the call's first string argument (as far as strace printed it).
    pub fn first_bytes(&self) -> Vec<u8> {
        self.strings().next().unwrap_or_default()
    }

    /// The bytes of all its string arguments one after the other (the buffers of a `writev`).
    pub fn all_bytes(&self) -> Vec<u8> {
        self.strings().flatten().collect()
    }

    /// Each `"\xNN..."` argument, decoded.
    fn strings(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut rest = self.args.as_str();
        std::iter::from_fn(move || {
            let start = rest.find('"')?;
            let mut bytes = Vec::new();
            rest = &rest[start + 1..];
            while let Some(stripped) = rest.strip_prefix("\\x") {
                let Some(byte) = stripped.get(..2).and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    break;
                };
                bytes.push(byte);
                rest = &stripped[2..];
            }
            rest = rest.strip_prefix('"').unwrap_or(rest);
            Some(bytes)
        })
    }

    pub fn succeeded(&self) -> bool {
        self.result.is_some_and(|r| r >= 0)
    }
}

impl Strace {
    /// Attaches to every thread of `pid` (and threads and children it starts), tracing the
    /// system calls named in `syscalls` (strace's `-e trace=` list) into `log`. Returns once
    /// strace says it is attached.
    pub fn attach(pid: u32, syscalls: &str, log: &Path) -> Result<Self> {
        which_strace()?;
        let mut command = Command::new("strace");
        // -f: every thread; -tt: times; -yy: what each descriptor is; -xx -s: the bytes written.
        command.args(["-f", "-tt", "-yy", "-xx", "-s", "512", "-e"]).arg(format!("trace={syscalls}"));
        command.arg("-o").arg(log).arg("-p").arg(pid.to_string());
        let mut tracer = Process::spawn(command)?;
        tracer.wait_for("attached", Duration::from_secs(20)).context("strace attaching")?;
        Ok(Self { tracer, log: log.to_path_buf() })
    }

    /// Detaches (if the traced process still runs) and returns every call, in the order the
    /// calls started.
    pub fn finish(mut self) -> Result<Vec<Call>> {
        let _ = self.tracer.signal(libc::SIGINT);
        self.tracer.wait(Duration::from_secs(60)).context("strace ending")?;
        let text = std::fs::read_to_string(&self.log).with_context(|| format!("strace log {}", self.log.display()))?;
        Ok(parse(&text))
    }
}

fn which_strace() -> Result<()> {
    match Command::new("strace").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!("strace is not installed (Debian: apt-get install strace); this test needs it"),
    }
}

/// Parses `strace -f -tt -yy -xx -o` output: `TID HH:MM:SS.us name(args) = result`, calls cut in
/// two by another thread as `name(args <unfinished ...>` and `<... name resumed>...) = result`.
pub fn parse(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    let mut unfinished: HashMap<u32, usize> = HashMap::new();
    for (line_no, line) in text.lines().enumerate() {
        let Some((tid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            continue;
        };
        // After the thread id: the time, then the call.
        let Some((_time, call)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        if let Some(resumed) = call.strip_prefix("<... ") {
            if let Some(index) = unfinished.remove(&tid) {
                calls[index].args.push_str(resumed.split_once("resumed>").map(|p| p.1).unwrap_or(""));
                calls[index].result = result_of(resumed);
                calls[index].finished = Some(line_no);
            }
            continue;
        }
        let Some((name, args)) = call.split_once('(') else {
            continue; // signals (`--- SIGTERM ---`) and exits (`+++ killed +++`)
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let target = descriptor_of(args);
        let is_unfinished = args.ends_with("<unfinished ...>");
        let call = Call {
            tid,
            name: name.to_owned(),
            target,
            args: args.to_owned(),
            result: if is_unfinished { None } else { result_of(args) },
            started: line_no,
            finished: (!is_unfinished).then_some(line_no),
        };
        if is_unfinished {
            unfinished.insert(tid, calls.len());
        }
        calls.push(call);
    }
    calls
}

/// `5</path/file>, ...` -> `/path/file`.
fn descriptor_of(args: &str) -> String {
    let digits = args.chars().take_while(char::is_ascii_digit).count();
    let Some(rest) = args[digits..].strip_prefix('<') else {
        return String::new();
    };
    if digits == 0 {
        return String::new();
    }
    // The description may itself hold '>' (`TCP:[a->b]`): it ends where an argument list goes on.
    let end = [">, ", ">)", "> <"].iter().filter_map(|close| rest.find(close)).min().unwrap_or(rest.len());
    unescape(&rest[..end])
}

/// `-xx` prints paths as `\xNN` bytes too.
fn unescape(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let byte = (first == b'\\' && tail.first() == Some(&b'x'))
            .then(|| tail.get(1..3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()))
            .flatten();
        match byte {
            Some(byte) => {
                bytes.push(byte);
                rest = &tail[3..];
            }
            None => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn result_of(tail: &str) -> Option<i64> {
    let (_, result) = tail.rsplit_once(") = ")?;
    result.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_cut_and_descriptor_calls() {
        let text = "\
100 10:00:00.000001 pwrite64(5</tmp/d/kv.img>, \"\\x4b\\x56\"..., 1024, 512) = 1024
101 10:00:00.000002 write(7</dev/net/tun>, \"\\x4f\\x4b\\x0a\", 3 <unfinished ...>
100 10:00:00.000003 fdatasync(5</tmp/d/kv.img>) = 0
101 10:00:00.000004 <... write resumed>) = 3
102 10:00:00.000005 sendto(9<TCP:[127.0.0.1:1->127.0.0.1:2]>, \"\\x01\", 1, MSG_NOSIGNAL, NULL, 0) = 1
100 10:00:00.000006 +++ killed by SIGKILL +++
";
        let calls = parse(text);
        assert_eq!(calls.len(), 4);
        assert_eq!((calls[0].name.as_str(), calls[0].target.as_str()), ("pwrite64", "/tmp/d/kv.img"));
        assert_eq!(calls[0].first_bytes(), b"KV");
        assert_eq!((calls[1].started, calls[1].finished, calls[1].result), (1, Some(3), Some(3)));
        assert_eq!(calls[1].first_bytes(), b"OK\n");
        assert_eq!(calls[2].finished, Some(2));
        assert_eq!(calls[3].target, "TCP:[127.0.0.1:1->127.0.0.1:2]");
        let tun = parse("9 10:00:00.1 write(3<\\x2f\\x64\\x65\\x76<char 10:200>>, \"\\x4f\", 1) = 1\n");
        assert_eq!(tun[0].target, "/dev<char 10:200>");
        let writev = parse("7 10:00:00.1 writev(3</dev/net/tun>, [{iov_base=\"\\x01\", iov_len=1}, {iov_base=\"\\x4f\\x4b\\x0a\", iov_len=3}], 2) = 4\n");
        assert_eq!(writev[0].all_bytes(), b"\x01OK\n");
        assert!(calls.iter().all(Call::succeeded));
    }
}
