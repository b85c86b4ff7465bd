//! The key-value store and the request protocol (pure: host-tested in guest-images/tests).
//!
//! One request per line (`\n`, an optional `\r` before it is ignored), words separated by
//! spaces; commands are case-insensitive:
//! `SET <key> <value>` -> `OK`; `GET <key>` -> `VALUE <value>` | `NOT_FOUND`;
//! `DEL <key>` -> `OK` | `NOT_FOUND`; `STATS` -> `STATS keys=.. sets=.. gets=.. dels=..
//! errors=..` (then more counters from the server); else `ERR <reason>`.
//! Keys (1-250 bytes) and values (1-4096 bytes) are printable ASCII without spaces.
//! SET and DEL go to the log sink before the store changes; a full disk answers `ERR disk full`.

use super::disklog::{record_sectors, Record, MAX_KEY, MAX_VALUE, OP_DEL, OP_SET, OP_SNAP, SECTOR};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ops::Bound;

/// The longest request line: `SET <250-byte key> <4096-byte value>\r\n`.
pub const MAX_LINE: usize = 4 + MAX_KEY + 1 + MAX_VALUE + 2;

#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Set(&'a [u8], &'a [u8]),
    Get(&'a [u8]),
    Del(&'a [u8]),
    Stats,
}

fn printable(word: &[u8]) -> bool {
    word.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn check_key(key: &[u8]) -> Result<(), &'static str> {
    if key.len() > MAX_KEY {
        Err("key too long")
    } else if !printable(key) {
        Err("key is not printable ASCII")
    } else {
        Ok(())
    }
}

/// Parses one line (without its `\n`).
pub fn parse(line: &[u8]) -> Result<Request<'_>, &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let Some(cmd) = words.next() else {
        return Err("empty request");
    };
    let args: [Option<&[u8]>; 3] = [words.next(), words.next(), words.next()];
    let n = args.iter().take_while(|a| a.is_some()).count();
    let is = |name: &str| cmd.eq_ignore_ascii_case(name.as_bytes());
    let want = |count: usize| {
        if n == count {
            Ok(())
        } else {
            Err("wrong number of arguments")
        }
    };
    let arg = |i: usize| args[i].unwrap_or(b"");
    if is("SET") {
        want(2)?;
        check_key(arg(0))?;
        let value = arg(1);
        if value.len() > MAX_VALUE {
            return Err("value too long");
        }
        if !printable(value) {
            return Err("value is not printable ASCII");
        }
        Ok(Request::Set(arg(0), value))
    } else if is("GET") {
        want(1)?;
        check_key(arg(0))?;
        Ok(Request::Get(arg(0)))
    } else if is("DEL") {
        want(1)?;
        check_key(arg(0))?;
        Ok(Request::Del(arg(0)))
    } else if is("STATS") {
        want(0)?;
        Ok(Request::Stats)
    } else if !printable(cmd) {
        Err("request is not printable ASCII")
    } else {
        Err("unknown command")
    }
}

/// Where SET and DEL records go before they change the store.
pub trait LogSink {
    /// Takes the record (it is on the disk before any reply is sent), or refuses: disk full.
    fn append(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<(), ()>;
}

/// The bytes a key and its value take in the log (one record, whole sectors).
pub fn record_bytes(key: &[u8], value: &[u8]) -> u64 {
    (record_sectors(key.len(), value.len()) * SECTOR) as u64
}

#[derive(Default)]
pub struct Store {
    map: BTreeMap<Box<[u8]>, Box<[u8]>>,
    /// What a compaction would write: the log bytes of one record per live key.
    live_bytes: u64,
    pub sets: u64,
    pub gets: u64,
    pub dels: u64,
    pub errors: u64,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    /// Logs and stores `key` = `value` (the caller checked the lengths); both protocols use it.
    pub fn set(&mut self, key: &[u8], value: &[u8], log: &mut dyn LogSink) -> Result<(), &'static str> {
        log.append(OP_SET, key, value).map_err(|()| "disk full")?;
        self.put(key, value);
        Ok(())
    }

    /// Logs the deletion of `key` and removes it (the caller checked that it is present).
    pub fn remove(&mut self, key: &[u8], log: &mut dyn LogSink) -> Result<(), &'static str> {
        log.append(OP_DEL, key, b"").map_err(|()| "disk full")?;
        self.unmap(key);
        Ok(())
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The entries with keys after `cursor` (all of them for `None`), in key order.
    pub fn entries_after<'a>(&'a self, cursor: Option<&[u8]>) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        self.map.range::<[u8], _>((from, Bound::Unbounded)).map(|(k, v)| (&k[..], &v[..]))
    }

    /// Applies a replayed record.
    pub fn apply(&mut self, rec: &Record<'_>) {
        match rec.op {
            OP_SET | OP_SNAP => self.put(rec.key, rec.value),
            OP_DEL => self.unmap(rec.key),
            _ => {}
        }
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.live_bytes += record_bytes(key, value);
        match self.map.get_mut(key) {
            Some(old) if old.len() == value.len() => {
                self.live_bytes -= record_bytes(key, old);
                old.copy_from_slice(value);
            }
            _ => {
                if let Some(old) = self.map.insert(key.into(), value.into()) {
                    self.live_bytes -= record_bytes(key, &old);
                }
            }
        }
    }

    fn unmap(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.live_bytes -= record_bytes(key, &old);
        }
    }

    /// Answers one request line into `out`; `stats_extra` is appended to the STATS line.
    pub fn execute(&mut self, line: &[u8], log: &mut dyn LogSink, stats_extra: &str, out: &mut Vec<u8>) {
        let answer = match parse(line) {
            Ok(Request::Set(key, value)) => {
                self.sets += 1;
                self.set(key, value, log).map(|()| out.extend_from_slice(b"OK\n"))
            }
            Ok(Request::Get(key)) => {
                self.gets += 1;
                match self.map.get(key) {
                    Some(v) => {
                        out.extend_from_slice(b"VALUE ");
                        out.extend_from_slice(v);
                        out.push(b'\n');
                    }
                    None => out.extend_from_slice(b"NOT_FOUND\n"),
                }
                Ok(())
            }
            Ok(Request::Del(key)) => {
                self.dels += 1;
                if !self.map.contains_key(key) {
                    out.extend_from_slice(b"NOT_FOUND\n");
                    Ok(())
                } else {
                    self.remove(key, log).map(|()| out.extend_from_slice(b"OK\n"))
                }
            }
            Ok(Request::Stats) => {
                let mut line = alloc::string::String::new();
                let _ = write!(
                    line,
                    "STATS keys={} sets={} gets={} dels={} errors={}",
                    self.map.len(),
                    self.sets,
                    self.gets,
                    self.dels,
                    self.errors
                );
                out.extend_from_slice(line.as_bytes());
                if !stats_extra.is_empty() {
                    out.push(b' ');
                    out.extend_from_slice(stats_extra.as_bytes());
                }
                out.push(b'\n');
                Ok(())
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = answer {
            self.errors += 1;
            out.extend_from_slice(b"ERR ");
            out.extend_from_slice(reason.as_bytes());
            out.push(b'\n');
        }
    }
}
