//! Host tests of the guest's Redis protocol (`kv/resp.rs`, included by path with the store it
//! drives): replies to each command, binary-safe keys and values, the limits, protocol errors,
//! and properties: a byte stream split anywhere gives the same replies as whole, pipelined
//! requests answer as a model map does, and arbitrary bytes never panic.

extern crate alloc;

#[allow(dead_code)]
#[path = "../guest/src/workloads/kv"]
mod kv {
    pub mod disklog;
    pub mod resp;
    pub mod store;
}

use kv::disklog::{OP_DEL, OP_SET};
use kv::resp::{parse, serve, Parsed, MAX_ARGS, MAX_FRAME};
use kv::store::{LogSink, Store};
use proptest::prelude::*;
use std::collections::HashMap;

/// A logged change: op, key, value.
type Change = (u8, Vec<u8>, Vec<u8>);

/// Records what the server logs; refuses once `room` records were taken (a full disk).
#[derive(Default)]
struct Log {
    records: Vec<Change>,
    room: Option<usize>,
}

impl LogSink for Log {
    fn append(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), ()> {
        if self.room.is_some_and(|room| self.records.len() >= room) {
            return Err(());
        }
        self.records.push((op, key.to_vec(), value.to_vec()));
        Ok(())
    }
}

/// One connection: bytes in, replies out, as the guest's loop drives `serve`.
#[derive(Default)]
struct Conn {
    store: Store,
    log: Log,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    closed: bool,
}

impl Conn {
    fn feed(&mut self, bytes: &[u8]) -> &mut Self {
        if !self.closed {
            self.inbuf.extend_from_slice(bytes);
            let served = serve(&mut self.inbuf, &mut self.out, usize::MAX, &mut self.store, &mut self.log, "x=1");
            self.closed = served.close;
        }
        self
    }

    /// The replies so far, emptied.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn ask(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.feed(&frame(args)).take()
    }
}

fn frame(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn each_command_answers_as_redis_does() {
    let mut c = Conn::default();
    assert_eq!(text(&c.ask(&[b"PING"])), "+PONG\r\n");
    assert_eq!(text(&c.ask(&[b"ping", b"hi"])), "$2\r\nhi\r\n");
    assert_eq!(text(&c.ask(&[b"SET", b"k", b"v1"])), "+OK\r\n");
    assert_eq!(text(&c.ask(&[b"get", b"k"])), "$2\r\nv1\r\n");
    assert_eq!(text(&c.ask(&[b"GET", b"nope"])), "$-1\r\n");
    assert_eq!(text(&c.ask(&[b"SET", b"k2", b""])), "+OK\r\n");
    assert_eq!(text(&c.ask(&[b"GET", b"k2"])), "$0\r\n\r\n");
    assert_eq!(text(&c.ask(&[b"EXISTS", b"k", b"k2", b"nope", b"k"])), ":3\r\n");
    assert_eq!(text(&c.ask(&[b"DBSIZE"])), ":2\r\n");
    assert_eq!(text(&c.ask(&[b"INCR", b"n"])), ":1\r\n");
    assert_eq!(text(&c.ask(&[b"INCR", b"n"])), ":2\r\n");
    assert_eq!(text(&c.ask(&[b"GET", b"n"])), "$1\r\n2\r\n");
    assert_eq!(text(&c.ask(&[b"SET", b"neg", b"-10"])), "+OK\r\n");
    assert_eq!(text(&c.ask(&[b"INCR", b"neg"])), ":-9\r\n");
    assert_eq!(text(&c.ask(&[b"DEL", b"k", b"nope", b"k2"])), ":2\r\n");
    assert_eq!(text(&c.ask(&[b"DEL", b"k"])), ":0\r\n");
    assert_eq!(text(&c.ask(&[b"DBSIZE"])), ":2\r\n");
    assert_eq!(
        text(&c.ask(&[b"CONFIG", b"GET", b"save"])),
        "*2\r\n$4\r\nsave\r\n$0\r\n\r\n",
        "redis-benchmark asks for this at start"
    );
    assert_eq!(text(&c.ask(&[b"CONFIG", b"get", b"APPENDONLY"])), "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
    assert_eq!(
        text(&c.ask(&[b"CONFIG", b"GET", b"append*"])),
        "*4\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n"
    );
    assert_eq!(text(&c.ask(&[b"CONFIG", b"GET", b"maxmemory"])), "*0\r\n");
    let info = text(&c.ask(&[b"INFO"]));
    assert!(info.starts_with('$') && info.contains("# Server\r\n") && info.contains("db0:keys=2,"), "{info}");
    assert!(info.contains("kv_server:x=1\r\n"), "{info}");
    // The log holds every change in order, before the replies.
    let ops: Vec<_> = c.log.records.iter().map(|(op, k, v)| (*op, text(k), text(v))).collect();
    let want = [
        (OP_SET, "k", "v1"),
        (OP_SET, "k2", ""),
        (OP_SET, "n", "1"),
        (OP_SET, "n", "2"),
        (OP_SET, "neg", "-10"),
        (OP_SET, "neg", "-9"),
        (OP_DEL, "k", ""),
        (OP_DEL, "k2", ""),
    ];
    let want: Vec<_> = want.iter().map(|&(op, k, v)| (op, k.to_owned(), v.to_owned())).collect();
    assert_eq!(ops, want);
    assert_eq!(text(&c.ask(&[b"QUIT"])), "+OK\r\n");
    assert!(c.closed);
}

#[test]
fn errors_keep_the_connection() {
    let mut c = Conn::default();
    let cases: &[(&[&[u8]], &str)] = &[
        (&[b"FLUSHALL"], "-ERR unknown command 'FLUSHALL'\r\n"),
        (&[b"bad\r\nname'"], "-ERR unknown command 'bad??name?'\r\n"),
        (&[b"GET"], "-ERR wrong number of arguments for 'GET' command\r\n"),
        (&[b"get", b"a", b"b"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&[b"SET", b"k"], "-ERR wrong number of arguments for 'SET' command\r\n"),
        (&[b"SET", b"k", b"v", b"EX", b"10"], "-ERR SET options are not supported (only SET key value)\r\n"),
        (&[b"SET", b"k", b"v", b"NX"], "-ERR SET options are not supported (only SET key value)\r\n"),
        (&[b"DEL"], "-ERR wrong number of arguments for 'DEL' command\r\n"),
        (&[b"CONFIG", b"SET", b"save", b""], "-ERR only CONFIG GET is supported\r\n"),
        (&[b"SET", b"", b"v"], "-ERR key must be 1-250 bytes\r\n"),
        (&[b"SET", &[b'k'; 251], b"v"], "-ERR key must be 1-250 bytes\r\n"),
        (&[b"SET", b"k", &[b'v'; 4097]], "-ERR value longer than 4096 bytes\r\n"),
        (&[b"SET", b"s", b"abc"], "+OK\r\n"),
        (&[b"INCR", b"s"], "-ERR value is not an integer or out of range\r\n"),
        (&[b"SET", b"big", b"9223372036854775807"], "+OK\r\n"),
        (&[b"INCR", b"big"], "-ERR increment or decrement would overflow\r\n"),
        (&[b"SET", b"z", b"007"], "+OK\r\n"),
        (&[b"INCR", b"z"], "-ERR value is not an integer or out of range\r\n"),
        (&[b"DEL", b"s", b""], "-ERR key must be 1-250 bytes\r\n"),
    ];
    for (args, want) in cases {
        assert_eq!(text(&c.ask(args)), *want, "{:?}", args.iter().map(|a| text(a)).collect::<Vec<_>>());
        assert!(!c.closed);
    }
    // The failed DEL deleted nothing: all its keys are checked first.
    assert_eq!(text(&c.ask(&[b"EXISTS", b"s"])), ":1\r\n");
    assert_eq!(text(&c.ask(&[b"SET", &[b'k'; 250], &[b'v'; 4096]])), "+OK\r\n");
    assert_eq!(c.store.errors, 16);
}

#[test]
fn keys_and_values_are_binary_safe() {
    let mut c = Conn::default();
    let key: &[u8] = b"k\r\n\0 \xff$3\r\n";
    let value: Vec<u8> = (0..=255u8).collect();
    assert_eq!(c.ask(&[b"SET", key, &value]), b"+OK\r\n");
    let mut want = b"$256\r\n".to_vec();
    want.extend_from_slice(&value);
    want.extend_from_slice(b"\r\n");
    assert_eq!(c.ask(&[b"GET", key]), want);
    assert_eq!(c.store.get(key), Some(&value[..]));
}

#[test]
fn inline_commands() {
    let mut c = Conn::default();
    assert_eq!(text(c.feed(b"PING\r\n").take().as_slice()), "+PONG\r\n");
    assert_eq!(text(c.feed(b"  set \t a   b\n\r\n\n").take().as_slice()), "+OK\r\n");
    assert_eq!(text(c.feed(b"get a\r\nGET").take().as_slice()), "$1\r\nb\r\n");
    assert_eq!(text(c.feed(b" b\r\n").take().as_slice()), "$-1\r\n");
    assert!(!c.closed);
}

#[test]
fn the_disk_full_answer_changes_nothing() {
    let mut c = Conn { log: Log { room: Some(1), ..Log::default() }, ..Conn::default() };
    assert_eq!(text(&c.ask(&[b"SET", b"a", b"1"])), "+OK\r\n");
    assert_eq!(text(&c.ask(&[b"SET", b"a", b"2"])), "-ERR disk full\r\n");
    assert_eq!(text(&c.ask(&[b"INCR", b"a"])), "-ERR disk full\r\n");
    assert_eq!(text(&c.ask(&[b"DEL", b"a"])), "-ERR disk full\r\n");
    assert_eq!(text(&c.ask(&[b"GET", b"a"])), "$1\r\n1\r\n");
}

#[test]
fn broken_framing_answers_a_protocol_error_and_closes() {
    let big_inline = vec![b'a'; MAX_FRAME];
    let too_many = frame(&vec![b"k".as_slice(); MAX_ARGS + 1]);
    let big_bulk = frame(&[b"SET", b"k", &vec![b'v'; MAX_FRAME]]);
    let cases: &[(&[u8], &str)] = &[
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\n", "invalid multibulk length"),
        (b"*99999999999999999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n+PING\r\n", "expected '$'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$4\r\nPINGxx", "bulk string not followed by CRLF"),
        (b"*1\r\n$100000\r\n", "request larger than 8192 bytes"),
        (&too_many, "more than 64 arguments"),
        (&big_inline, "request larger than 8192 bytes"),
        (&big_bulk, "request larger than 8192 bytes"),
    ];
    for (input, reason) in cases {
        let mut c = Conn::default();
        let mut stream = frame(&[b"PING"]);
        stream.extend_from_slice(input);
        stream.extend_from_slice(&frame(&[b"SET", b"after", b"x"]));
        let out = c.feed(&stream).take();
        assert_eq!(text(&out), format!("+PONG\r\n-ERR Protocol error: {reason}\r\n"), "{}", text(input));
        assert!(c.closed && c.inbuf.is_empty() && c.store.get(b"after").is_none());
    }
    // A request of exactly MAX_FRAME bytes is still served.
    let fill = MAX_FRAME - frame(&[b"PING", b""]).len();
    let exact = frame(&[b"PING", &vec![b'p'; fill - fill.to_string().len() + 1]]);
    assert_eq!(exact.len(), MAX_FRAME);
    assert!(matches!(parse(&exact), Parsed::Request { used: MAX_FRAME, .. }));
}

#[test]
fn serving_stops_at_the_output_limit_and_resumes() {
    let mut c = Conn::default();
    let pipeline: Vec<u8> = (0..10).flat_map(|_| frame(&[b"PING"])).collect();
    c.inbuf.extend_from_slice(&pipeline);
    let served = serve(&mut c.inbuf, &mut c.out, 21, &mut c.store, &mut c.log, "");
    assert!(served.answered && !served.close);
    assert_eq!(c.take(), b"+PONG\r\n".repeat(3));
    assert_eq!(c.inbuf.len(), 7 * frame(&[b"PING"]).len());
    c.feed(b"");
    assert_eq!(c.take(), b"+PONG\r\n".repeat(7));
}

#[derive(Clone, Debug)]
enum Op {
    Set(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    Del(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    Incr(Vec<u8>),
    Dbsize,
    Ping,
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys, so that commands meet; any bytes in them.
    let key = prop_oneof![
        prop::sample::select(vec![b"a".to_vec(), b"b\r\n".to_vec(), b"*1\r\n".to_vec(), vec![0, 255]]),
        prop::collection::vec(any::<u8>(), 1..6),
    ];
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (-3i64..3).prop_map(|n| n.to_string().into_bytes()),
        Just(i64::MAX.to_string().into_bytes()),
    ];
    prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| Op::Set(k, v)),
        key.clone().prop_map(Op::Get),
        prop::collection::vec(key.clone(), 1..4).prop_map(Op::Del),
        prop::collection::vec(key.clone(), 1..4).prop_map(Op::Exists),
        key.prop_map(Op::Incr),
        Just(Op::Dbsize),
        Just(Op::Ping),
    ]
}

fn encode(op: &Op) -> Vec<u8> {
    let mut args: Vec<&[u8]> = Vec::new();
    match op {
        Op::Set(k, v) => args.extend([b"SET".as_slice(), k, v]),
        Op::Get(k) => args.extend([b"GET".as_slice(), k]),
        Op::Del(keys) => args.extend(std::iter::once(b"DEL".as_slice()).chain(keys.iter().map(|k| &k[..]))),
        Op::Exists(keys) => args.extend(std::iter::once(b"exists".as_slice()).chain(keys.iter().map(|k| &k[..]))),
        Op::Incr(k) => args.extend([b"incr".as_slice(), k]),
        Op::Dbsize => args.push(b"DBSIZE"),
        Op::Ping => args.push(b"PING"),
    }
    frame(&args)
}

/// What Redis answers, from a plain map.
fn model(ops: &[Op]) -> Vec<u8> {
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for op in ops {
        let reply = match op {
            Op::Set(k, v) => {
                map.insert(k.clone(), v.clone());
                "+OK\r\n".to_owned().into_bytes()
            }
            Op::Get(k) => match map.get(k) {
                Some(v) => [format!("${}\r\n", v.len()).into_bytes(), v.clone(), b"\r\n".to_vec()].concat(),
                None => b"$-1\r\n".to_vec(),
            },
            Op::Del(keys) => format!(":{}\r\n", keys.iter().filter(|k| map.remove(*k).is_some()).count()).into_bytes(),
            Op::Exists(keys) => format!(":{}\r\n", keys.iter().filter(|k| map.contains_key(*k)).count()).into_bytes(),
            Op::Incr(k) => {
                let old = match map.get(k) {
                    None => Some(0),
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .filter(|s| {
                            !s.starts_with('+') && !s.starts_with("-0") && (s.len() == 1 || !s.starts_with('0'))
                        })
                        .and_then(|s| s.parse::<i64>().ok()),
                };
                match old.map(|n| n.checked_add(1)) {
                    None => b"-ERR value is not an integer or out of range\r\n".to_vec(),
                    Some(None) => b"-ERR increment or decrement would overflow\r\n".to_vec(),
                    Some(Some(n)) => {
                        map.insert(k.clone(), n.to_string().into_bytes());
                        format!(":{n}\r\n").into_bytes()
                    }
                }
            }
            Op::Dbsize => format!(":{}\r\n", map.len()).into_bytes(),
            Op::Ping => b"+PONG\r\n".to_vec(),
        };
        out.extend(reply);
    }
    out
}

fn served_in_chunks(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, bool, Vec<Change>) {
    let mut c = Conn::default();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        let cut = cut.clamp(at, stream.len());
        c.feed(&stream[at..cut]);
        at = cut;
    }
    (c.take(), c.closed, c.log.records)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Pipelined requests in one buffer answer as the model, and log exactly the changes.
    #[test]
    fn pipelined_requests_answer_as_a_map_does(ops in prop::collection::vec(op(), 1..40)) {
        let stream: Vec<u8> = ops.iter().flat_map(encode).collect();
        let mut c = Conn::default();
        c.feed(&stream);
        prop_assert_eq!(text(&c.take()), text(&model(&ops)));
        prop_assert!(c.inbuf.is_empty() && !c.closed);
        // Replaying the log gives the same map.
        let mut replayed = Store::new();
        for (op, key, value) in &c.log.records {
            let rec = kv::disklog::Record { seq: 0, op: *op, key, value };
            replayed.apply(&rec);
        }
        prop_assert_eq!(replayed.len(), c.store.len());
    }

    /// The same stream split at every byte boundary gives the same replies and log.
    #[test]
    fn a_split_anywhere_changes_nothing(ops in prop::collection::vec(op(), 1..6)) {
        let stream: Vec<u8> = ops.iter().flat_map(encode).collect();
        let whole = served_in_chunks(&stream, &[]);
        for cut in 0..=stream.len() {
            prop_assert_eq!(&served_in_chunks(&stream, &[cut]), &whole, "cut at {}", cut);
        }
        let bytewise: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(&served_in_chunks(&stream, &bytewise), &whole);
    }

    /// Arbitrary bytes (and damaged requests) never panic, get well-formed replies, and are
    /// answered the same however they arrive; a protocol error is the last reply.
    #[test]
    fn malformed_input_gets_an_error_not_a_panic(
        ops in prop::collection::vec(op(), 0..5),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        at in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(0usize..400, 0..8),
    ) {
        let mut stream: Vec<u8> = ops.iter().flat_map(encode).collect();
        let at = at.index(stream.len() + 1);
        stream.splice(at..at, noise);
        let mut sorted = cuts.clone();
        sorted.sort_unstable();
        let whole = served_in_chunks(&stream, &[]);
        prop_assert_eq!(&served_in_chunks(&stream, &sorted), &whole);
        let replies = text(&whole.0);
        if whole.1 && !replies.ends_with("+OK\r\n") {
            let last = replies.trim_end_matches("\r\n").rsplit("\r\n").next().unwrap_or("");
            prop_assert!(last.starts_with("-ERR Protocol error: "), "{:?}", replies);
        }
        for line in replies.split_terminator("\r\n") {
            prop_assert!(!line.is_empty());
        }
    }

    /// Multibulk frames of any arguments parse back to those arguments.
    #[test]
    fn frames_parse_back(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 1..MAX_ARGS)) {
        let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
        let bytes = frame(&refs);
        match parse(&bytes) {
            Parsed::Request { args: parsed, used } => {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(parsed.iter().collect::<Vec<_>>(), refs);
            }
            _ => prop_assert!(false, "not parsed"),
        }
        for end in 0..bytes.len() {
            prop_assert!(matches!(parse(&bytes[..end]), Parsed::Incomplete));
        }
    }
}
