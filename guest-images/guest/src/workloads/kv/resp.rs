//! The Redis protocol (RESP2, and inline commands) over the same store as the line protocol
//! (pure: host-tested in guest-images/tests/kv_resp.rs).
//!
//! A request is either a multibulk frame (`*<n>\r\n` then `n` times `$<len>\r\n<len bytes>\r\n`)
//! or an inline line (words separated by spaces or tabs, ended by `\n`, an optional `\r` before
//! it dropped). Arguments are binary-safe. Limits: a request takes at most [`MAX_FRAME`] bytes
//! and [`MAX_ARGS`] arguments; keys 1-250 bytes, values 0-4096 bytes (the disk log's limits).
//! A request breaking the framing (or the frame limits) is answered `-ERR Protocol error: ...`
//! and the connection is closed after the reply, as Redis does: the stream cannot be resynced.
//! Everything else, unknown commands included, is answered and the connection stays.
//!
//! Parsing borrows from the input buffer: a request is a fixed array of spans, no allocation.
//! Replies are appended to the connection's output buffer.

use super::disklog::{MAX_KEY, MAX_VALUE};
use super::store::{LogSink, Store};
use alloc::vec::Vec;

/// The largest request, in bytes (a SET of the longest key and value takes 4376).
pub const MAX_FRAME: usize = 8192;
/// The most arguments of one request (command name included).
pub const MAX_ARGS: usize = 64;
/// `*` or `$`, up to 20 characters of number, `\r`.
const MAX_HEADER: usize = 22;

const TOO_LARGE: &str = "request larger than 8192 bytes";
const TOO_MANY: &str = "more than 64 arguments";

/// The arguments of one request, as spans of the buffer it was parsed from.
pub struct Args<'a> {
    buf: &'a [u8],
    spans: [(u16, u16); MAX_ARGS],
    len: usize,
}

impl<'a> Args<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Args { buf, spans: [(0, 0); MAX_ARGS], len: 0 }
    }

    fn push(&mut self, start: usize, end: usize) -> Result<(), &'static str> {
        let span = self.spans.get_mut(self.len).ok_or(TOO_MANY)?;
        // Both fit: the parser only looks at the first MAX_FRAME (< 65536) bytes.
        *span = (start as u16, end as u16);
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> &'a [u8] {
        match self.spans[..self.len].get(i) {
            Some(&(s, e)) => &self.buf[s as usize..e as usize],
            None => b"",
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len).map(|i| self.get(i))
    }
}

/// What the front of an input buffer holds.
#[allow(clippy::large_enum_variant)] // on the stack, once per request: no allocation wanted
pub enum Parsed<'a> {
    /// Not a whole request yet.
    Incomplete,
    /// A request (no arguments: an empty line or `*0`, to be skipped) taking `used` bytes.
    Request { args: Args<'a>, used: usize },
    /// The framing is broken: answer and close.
    Invalid(&'static str),
}

/// Parses the request at the start of `buf`. Only the first [`MAX_FRAME`] bytes are looked at,
/// so the answer for a byte stream does not depend on how it was split into reads.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let view = &buf[..buf.len().min(MAX_FRAME)];
    let parsed = match view.first() {
        None => Parsed::Incomplete,
        Some(b'*') => multibulk(view),
        Some(_) => inline(view),
    };
    match parsed {
        Parsed::Incomplete if buf.len() >= MAX_FRAME => Parsed::Invalid(TOO_LARGE),
        parsed => parsed,
    }
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if (digits.len() > 1 && digits[0] == b'0') || (negative && digits == b"0") {
        return None;
    }
    let magnitude = digits.iter().try_fold(0i64, |n, &d| n.checked_mul(10)?.checked_sub((d - b'0') as i64))?;
    if negative {
        Some(magnitude)
    } else {
        magnitude.checked_neg()
    }
}

/// A `*<n>\r\n` or `$<n>\r\n` line at `at`: `Ok(None)` while incomplete, else the number and
/// where the line ends.
fn header(buf: &[u8], at: usize, kind: u8, bad: &'static str) -> Result<Option<(i64, usize)>, &'static str> {
    let rest = &buf[at..];
    match rest.first() {
        None => return Ok(None),
        Some(&b) if b != kind => return Err("expected '$'"),
        Some(_) => {}
    }
    match rest.iter().position(|&b| b == b'\n') {
        None if rest.len() > MAX_HEADER => Err(bad),
        None => Ok(None),
        Some(nl) if !(2..=MAX_HEADER).contains(&nl) || rest[nl - 1] != b'\r' => Err(bad),
        Some(nl) => Ok(Some((parse_int(&rest[1..nl - 1]).ok_or(bad)?, at + nl + 1))),
    }
}

fn multibulk(buf: &[u8]) -> Parsed<'_> {
    const BAD_COUNT: &str = "invalid multibulk length";
    const BAD_LEN: &str = "invalid bulk length";
    let (count, mut at) = match header(buf, 0, b'*', BAD_COUNT) {
        Ok(Some(h)) => h,
        Ok(None) => return Parsed::Incomplete,
        Err(e) => return Parsed::Invalid(e),
    };
    let mut args = Args::new(buf);
    if count <= 0 {
        return Parsed::Request { args, used: at };
    }
    if count > MAX_ARGS as i64 {
        return Parsed::Invalid(TOO_MANY);
    }
    for _ in 0..count {
        let (len, start) = match header(buf, at, b'$', BAD_LEN) {
            Ok(Some(h)) => h,
            Ok(None) => return Parsed::Incomplete,
            Err(e) => return Parsed::Invalid(e),
        };
        if len < 0 {
            return Parsed::Invalid(BAD_LEN);
        }
        // Checked on the header already, so that a huge length is refused at once.
        if len as u64 + start as u64 + 2 > MAX_FRAME as u64 {
            return Parsed::Invalid(TOO_LARGE);
        }
        let end = start + len as usize;
        match buf.get(end..end + 2) {
            None => return Parsed::Incomplete,
            Some(b"\r\n") => {}
            Some(_) => return Parsed::Invalid("bulk string not followed by CRLF"),
        }
        if let Err(e) = args.push(start, end) {
            return Parsed::Invalid(e);
        }
        at = end + 2;
    }
    Parsed::Request { args, used: at }
}

fn inline(buf: &[u8]) -> Parsed<'_> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return Parsed::Incomplete;
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let mut args = Args::new(buf);
    let mut start = None;
    // A separator after the line ends its last word.
    for (i, &b) in buf[..line_end].iter().chain(core::iter::once(&b' ')).enumerate() {
        let separator = b == b' ' || b == b'\t';
        match (separator, start) {
            (true, Some(s)) => {
                if let Err(e) = args.push(s, i) {
                    return Parsed::Invalid(e);
                }
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    Parsed::Request { args, used: nl + 1 }
}

/// Whether `inbuf` starts with something [`serve`] would act on.
pub fn has_request(inbuf: &[u8]) -> bool {
    !matches!(parse(inbuf), Parsed::Incomplete)
}

/// What [`serve`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// A reply was appended.
    pub answered: bool,
    /// Close the connection once the output is sent (QUIT, or broken framing).
    pub close: bool,
}

/// Answers the requests at the front of `inbuf` (and drains them) while `out` is shorter than
/// `out_limit`. After a QUIT or a protocol error the rest of the input is dropped.
pub fn serve(
    inbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    out_limit: usize,
    store: &mut Store,
    log: &mut dyn LogSink,
    info_extra: &str,
) -> Served {
    let mut served = Served::default();
    let mut start = 0;
    while out.len() < out_limit {
        match parse(&inbuf[start..]) {
            Parsed::Incomplete => break,
            Parsed::Request { args, used } => {
                start += used;
                if args.is_empty() {
                    continue;
                }
                served.answered = true;
                if execute(&args, store, log, info_extra, out) == After::Close {
                    served.close = true;
                    break;
                }
            }
            Parsed::Invalid(reason) => {
                store.errors += 1;
                out.extend_from_slice(b"-ERR Protocol error: ");
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
                served.answered = true;
                served.close = true;
                break;
            }
        }
    }
    if served.close {
        inbuf.clear();
    } else {
        inbuf.drain(..start);
    }
    served
}

#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

/// What `CONFIG GET` answers (redis-benchmark asks for `save` and `appendonly` at start).
/// Every SET/DEL/INCR is on the disk before its reply: that is `appendfsync always`.
const CONFIG: [(&str, &str); 4] = [("save", ""), ("appendonly", "yes"), ("appendfsync", "always"), ("databases", "1")];

/// Runs one request (at least one argument), appending its reply.
fn execute(args: &Args<'_>, store: &mut Store, log: &mut dyn LogSink, info_extra: &str, out: &mut Vec<u8>) -> After {
    let name = args.get(0);
    let is = |cmd: &str| name.eq_ignore_ascii_case(cmd.as_bytes());
    let argc = args.len();
    let arity = |ok: bool, out: &mut Vec<u8>, store: &mut Store| {
        if !ok {
            store.errors += 1;
            out.extend_from_slice(b"-ERR wrong number of arguments for '");
            sanitized(name, out);
            out.extend_from_slice(b"' command\r\n");
        }
        ok
    };
    let result: Result<(), &str> = if is("GET") {
        if !arity(argc == 2, out, store) {
            return After::Continue;
        }
        store.gets += 1;
        check_key(args.get(1)).map(|()| match store.get(args.get(1)) {
            Some(value) => bulk(value, out),
            None => out.extend_from_slice(b"$-1\r\n"),
        })
    } else if is("SET") {
        if argc > 3 {
            store.errors += 1;
            out.extend_from_slice(b"-ERR SET options are not supported (only SET key value)\r\n");
            return After::Continue;
        }
        if !arity(argc == 3, out, store) {
            return After::Continue;
        }
        store.sets += 1;
        set(store, log, args.get(1), args.get(2)).map(|()| out.extend_from_slice(b"+OK\r\n"))
    } else if is("PING") {
        if !arity(argc <= 2, out, store) {
            return After::Continue;
        }
        if argc == 2 {
            bulk(args.get(1), out);
        } else {
            out.extend_from_slice(b"+PONG\r\n");
        }
        Ok(())
    } else if is("DEL") || is("EXISTS") {
        if !arity(argc >= 2, out, store) {
            return After::Continue;
        }
        let delete = is("DEL");
        if delete {
            store.dels += 1;
        } else {
            store.gets += 1;
        }
        let keys = || args.iter().skip(1);
        let mut result = keys().try_for_each(check_key);
        let mut count = 0;
        for key in keys() {
            if result.is_err() {
                break;
            }
            if store.get(key).is_some() {
                count += 1;
                if delete {
                    result = store.remove(key, log);
                }
            }
        }
        result.map(|()| integer(count, out))
    } else if is("INCR") {
        if !arity(argc == 2, out, store) {
            return After::Continue;
        }
        store.sets += 1;
        incr(store, log, args.get(1)).map(|n| integer(n, out))
    } else if is("DBSIZE") {
        if !arity(argc == 1, out, store) {
            return After::Continue;
        }
        integer(store.len() as i64, out);
        Ok(())
    } else if is("INFO") {
        info(store, info_extra, out);
        Ok(())
    } else if is("CONFIG") {
        if argc >= 3 && args.get(1).eq_ignore_ascii_case(b"GET") {
            config_get(args, out);
            Ok(())
        } else if argc >= 2 {
            Err("only CONFIG GET is supported")
        } else {
            arity(false, out, store);
            return After::Continue;
        }
    } else if is("QUIT") {
        out.extend_from_slice(b"+OK\r\n");
        return After::Close;
    } else {
        store.errors += 1;
        out.extend_from_slice(b"-ERR unknown command '");
        sanitized(name, out);
        out.extend_from_slice(b"'\r\n");
        return After::Continue;
    };
    if let Err(reason) = result {
        store.errors += 1;
        out.extend_from_slice(b"-ERR ");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    After::Continue
}

fn check_key(key: &[u8]) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err("key must be 1-250 bytes")
    } else {
        Ok(())
    }
}

fn set(store: &mut Store, log: &mut dyn LogSink, key: &[u8], value: &[u8]) -> Result<(), &'static str> {
    check_key(key)?;
    if value.len() > MAX_VALUE {
        return Err("value longer than 4096 bytes");
    }
    store.set(key, value, log)
}

fn incr(store: &mut Store, log: &mut dyn LogSink, key: &[u8]) -> Result<i64, &'static str> {
    check_key(key)?;
    let old = match store.get(key) {
        None => 0,
        Some(value) => parse_int(value).ok_or("value is not an integer or out of range")?,
    };
    let new = old.checked_add(1).ok_or("increment or decrement would overflow")?;
    let mut digits = [0u8; 20];
    store.set(key, decimal(new, &mut digits), log)?;
    Ok(new)
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

fn integer(n: i64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    out.push(b':');
    out.extend_from_slice(decimal(n, &mut digits));
    out.extend_from_slice(b"\r\n");
}

fn length_header(kind: u8, n: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    out.push(kind);
    out.extend_from_slice(decimal(n as i64, &mut digits));
    out.extend_from_slice(b"\r\n");
}

fn bulk(value: &[u8], out: &mut Vec<u8>) {
    length_header(b'$', value.len(), out);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A client-chosen name inside an error line: printable ASCII only (a CR or LF would end the
/// line), at most 32 bytes.
fn sanitized(name: &[u8], out: &mut Vec<u8>) {
    out.extend(name.iter().take(32).map(|&b| if (0x20..=0x7e).contains(&b) && b != b'\'' { b } else { b'?' }));
}

/// Glob match (`*`, `?`), ASCII case-insensitive, as CONFIG GET patterns.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| glob(rest, &name[skip..])),
        Some((&p, rest)) => match name.split_first() {
            Some((&n, name_rest)) => (p == b'?' || p.eq_ignore_ascii_case(&n)) && glob(rest, name_rest),
            None => false,
        },
    }
}

fn config_get(args: &Args<'_>, out: &mut Vec<u8>) {
    let matches = |(name, _): &&(&str, &str)| args.iter().skip(2).any(|p| glob(p, name.as_bytes()));
    length_header(b'*', 2 * CONFIG.iter().filter(matches).count(), out);
    for (name, value) in CONFIG.iter().filter(matches) {
        bulk(name.as_bytes(), out);
        bulk(value.as_bytes(), out);
    }
}

fn info(store: &Store, extra: &str, out: &mut Vec<u8>) {
    let mut text = Vec::with_capacity(256 + extra.len());
    text.extend_from_slice(b"# Server\r\nftvm_kv:1\r\nredis_mode:standalone\r\n# Persistence\r\n");
    text.extend_from_slice(b"aof_enabled:1\r\nappendfsync:always\r\n# Stats\r\n");
    let mut digits = [0u8; 20];
    for (name, n) in [("sets", store.sets), ("gets", store.gets), ("dels", store.dels), ("errors", store.errors)] {
        text.extend_from_slice(b"kv_");
        text.extend_from_slice(name.as_bytes());
        text.push(b':');
        text.extend_from_slice(decimal(n as i64, &mut digits));
        text.extend_from_slice(b"\r\n");
    }
    if !extra.is_empty() {
        text.extend_from_slice(b"kv_server:");
        text.extend_from_slice(extra.as_bytes());
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"# Keyspace\r\n");
    if store.len() > 0 {
        text.extend_from_slice(b"db0:keys=");
        text.extend_from_slice(decimal(store.len() as i64, &mut digits));
        text.extend_from_slice(b",expires=0,avg_ttl=0\r\n");
    }
    bulk(&text, out);
}
