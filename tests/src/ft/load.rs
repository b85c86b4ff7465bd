//! The kv client of the FT tests: one long-lived connection from the client namespace that
//! sends SET/GET without pause and records every answer, so a test can measure the outage a
//! failover causes and check that every acknowledged SET reads back.

use crate::{kv, NetNs};
use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request and its answer, as the client saw them.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub sent: Instant,
    pub replied: Instant,
    pub request: String,
    pub reply: String,
}

#[derive(Default)]
struct LoadLog {
    exchanges: Vec<Exchange>,
    /// Indices of the keys whose SET was answered OK.
    acknowledged: Vec<usize>,
}

/// One long-lived kv connection from the client namespace: SET key-i, GET key-i, i+1, ...
/// without pause, never reconnecting; a wrong answer or a broken connection ends it with an
/// error that [`KvLoad::finish`] reports.
pub struct KvLoad {
    stop: Arc<AtomicBool>,
    /// Between two SET/GET pairs the stream waits while this is set (see [`KvLoad::pause`]).
    pause: Arc<Pause>,
    log: Arc<Mutex<LoadLog>>,
    socket: TcpStream,
    started: Instant,
    worker: Option<JoinHandle<(kv::Client, Result<()>)>>,
}

fn load_key(i: usize) -> String {
    format!("ft-key-{i:06}")
}

fn load_value(i: usize) -> String {
    format!("ft-value-{i}-{}", "v".repeat(i % 61))
}

impl KvLoad {
    pub(super) fn start(client_ns: &NetNs) -> Result<Self> {
        let client = client_ns.within(kv::Client::connect).context("connecting to the guest from the client")?;
        let socket = client.socket()?;
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(Pause::default());
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let worker = {
            let (stop, pause, log) = (Arc::clone(&stop), Arc::clone(&pause), Arc::clone(&log));
            std::thread::spawn(move || drive(client, &stop, &pause, &log))
        };
        Ok(Self { stop, pause, log, socket, started: Instant::now(), worker: Some(worker) })
    }

    /// Holds the stream after the SET/GET pair under way: returns once its GET was answered,
    /// so everything the guest did for it (the SET's write and flush, then the replies) has
    /// left the VM, and nothing new is asked until [`KvLoad::resume`].
    pub fn pause(&mut self, timeout: Duration) -> Result<()> {
        self.pause.asked.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while !self.pause.waiting.load(Ordering::SeqCst) {
            if self.worker.as_ref().is_some_and(JoinHandle::is_finished) {
                bail!("the client's connection ended while it was to pause");
            }
            if Instant::now() > deadline {
                bail!("the client did not reach a pause within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    pub fn resume(&self) {
        self.pause.asked.store(false, Ordering::SeqCst);
    }

    /// Answers received so far.
    pub fn replies(&self) -> usize {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).exchanges.len()
    }

    /// When the last answer arrived.
    pub fn last_reply(&self) -> Option<Instant> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).exchanges.last().map(|e| e.replied)
    }

    /// Polls until `count` answers have arrived in all; fails at once if the connection ended.
    pub fn wait_for_replies(&mut self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let replies = self.replies();
            if replies >= count {
                return Ok(());
            }
            if self.worker.as_ref().is_some_and(JoinHandle::is_finished) {
                let error = self.take_result().err().map(|e| format!("{e:#}")).unwrap_or_default();
                bail!("the client's connection ended after {replies} answers: {error}");
            }
            if Instant::now() > deadline {
                let silent = self.last_reply().map(|t| t.elapsed());
                bail!("{replies} answers of {count} after {timeout:?} (last answer {silent:?} ago)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How long the client waits for one answer before it gives up on the connection (20 s
    /// by default): a fault run whose outages may be longer raises it, and reports them.
    pub fn set_patience(&self, timeout: Duration) -> Result<()> {
        self.socket.set_read_timeout(Some(timeout)).context("set the client's read timeout")
    }

    /// Fails, with the client's error, if the connection has ended.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if self.worker.as_ref().is_some_and(JoinHandle::is_finished) {
            let error = self.take_result().err().map(|e| format!("{e:#}")).unwrap_or_default();
            bail!("the client's connection ended after {} answers: {error}", self.replies());
        }
        Ok(())
    }

    fn take_result(&mut self) -> Result<kv::Client> {
        let worker = self.worker.take().context("the client was already finished")?;
        let (client, result) = worker.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
        result.map(|()| client)
    }

    /// Stops the stream, then reads every acknowledged key back on the same connection.
    pub fn finish(self) -> Result<LoadReport> {
        let (report, unread) = self.finish_counting_unread()?;
        if let Some(first) = unread.first() {
            bail!("{} acknowledged SETs do not read back; the first: {first}", unread.len());
        }
        Ok(report)
    }

    /// [`KvLoad::finish`] that reads every acknowledged key back even after one failed: the
    /// report (its `read_back` counts the keys that did read back) and the ones that did not.
    pub fn finish_counting_unread(mut self) -> Result<(LoadReport, Vec<Unread>)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut client = self.take_result()?;
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner));
        let unread = read_back(&mut client, &log.acknowledged)?;
        let report = LoadReport {
            started: self.started,
            exchanges: log.exchanges,
            read_back: log.acknowledged.len() - unread.len(),
            acknowledged: log.acknowledged,
        };
        Ok((report, unread))
    }
}

impl KvLoad {
    /// Ends the stream when the server is gone for good (a VM that halted): the connection is
    /// shut and nothing is read back on it; the report's `read_back` counts the SETs that were
    /// acknowledged, for the caller to read back elsewhere (from the disk).
    pub fn finish_unanswered(mut self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.socket.shutdown(std::net::Shutdown::Both).context("shutting the client's connection")?;
        // The request under way fails with the shut socket; what came before stands.
        let _ = self.take_result();
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner));
        if let Some(wrong) = log.exchanges.iter().find(|e| e.request.starts_with("SET ") && e.reply != "OK") {
            bail!("{:?} answered {:?}: the guest was told of a failure", wrong.request, wrong.reply);
        }
        Ok(LoadReport {
            started: self.started,
            exchanges: log.exchanges,
            read_back: log.acknowledged.len(),
            acknowledged: log.acknowledged,
        })
    }
}

impl Drop for KvLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A pause of the stream between two SET/GET pairs: asked by the test, taken by the worker.
#[derive(Default)]
struct Pause {
    asked: AtomicBool,
    waiting: AtomicBool,
}

fn drive(mut client: kv::Client, stop: &AtomicBool, pause: &Pause, log: &Mutex<LoadLog>) -> (kv::Client, Result<()>) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        if pause.asked.load(Ordering::SeqCst) {
            pause.waiting.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        pause.waiting.store(false, Ordering::SeqCst);
        if let Err(e) = set_and_get(&mut client, i, log) {
            return (client, Err(e));
        }
        i += 1;
    }
    (client, Ok(()))
}

/// SET key-i, then GET it back.
fn set_and_get(client: &mut kv::Client, i: usize, log: &Mutex<LoadLog>) -> Result<()> {
    let reply = exchange(client, format!("SET {} {}", load_key(i), load_value(i)), log)?;
    if reply != "OK" {
        bail!("SET {} answered {reply:?}", load_key(i));
    }
    log.lock().unwrap_or_else(PoisonError::into_inner).acknowledged.push(i);
    let reply = exchange(client, format!("GET {}", load_key(i)), log)?;
    if reply != format!("VALUE {}", load_value(i)) {
        bail!("GET {} right after its SET answered {reply:?}", load_key(i));
    }
    Ok(())
}

fn exchange(client: &mut kv::Client, request: String, log: &Mutex<LoadLog>) -> Result<String> {
    let sent = Instant::now();
    let reply = client.request(&request).with_context(|| format!("{request:?}"))?;
    let replied = Instant::now();
    let exchange = Exchange { sent, replied, request, reply: reply.clone() };
    log.lock().unwrap_or_else(PoisonError::into_inner).exchanges.push(exchange);
    Ok(reply)
}

/// Whether an error of the client's (or of a read back) is a reply against an acknowledged
/// write: a split brain, for the runs that count them.
pub fn contradicts_an_acknowledged_write(error: &str) -> bool {
    error.contains("reads back as") || error.contains("right after its SET answered")
}

/// An acknowledged SET that did not read back: its key, and what a GET of it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unread {
    pub key: String,
    pub answer: String,
}

impl std::fmt::Display for Unread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "acknowledged SET {} reads back as {:?}", self.key, self.answer)
    }
}

/// GETs every key of `acknowledged` (indices) on `client`: those that do not answer the value
/// their SET wrote.
fn read_back(client: &mut kv::Client, acknowledged: &[usize]) -> Result<Vec<Unread>> {
    let mut unread = Vec::new();
    for &i in acknowledged {
        let answer = client.request(&format!("GET {}", load_key(i)))?;
        if answer != format!("VALUE {}", load_value(i)) {
            unread.push(Unread { key: load_key(i), answer });
        }
    }
    Ok(unread)
}

/// What one [`KvLoad`] saw.
pub struct LoadReport {
    pub started: Instant,
    pub exchanges: Vec<Exchange>,
    /// Acknowledged SETs read back on the same connection by [`KvLoad::finish`] (every one;
    /// [`KvLoad::finish_counting_unread`] counts only those that did).
    pub read_back: usize,
    /// The indices of the acknowledged keys.
    acknowledged: Vec<usize>,
}

impl LoadReport {
    /// The longest time between two consecutive answers (the outage the client saw), and the
    /// answer that ended it.
    pub fn longest_gap(&self) -> Option<(Duration, &Exchange)> {
        self.exchanges.windows(2).map(|pair| (pair[1].replied - pair[0].replied, &pair[1])).max_by_key(|(gap, _)| *gap)
    }

    /// The longest gap between consecutive answers among those that end after `from` and no
    /// later than `until` (the outage around one event of a test with several).
    pub fn longest_gap_within(&self, from: Instant, until: Option<Instant>) -> Option<Duration> {
        self.exchanges
            .windows(2)
            .filter(|pair| pair[1].replied > from && until.is_none_or(|until| pair[1].replied <= until))
            .map(|pair| pair[1].replied - pair[0].replied)
            .max()
    }

    /// Around an event at `at` (a kill): how long before it the last answer came, and how long
    /// after it the first one did.
    pub fn around(&self, at: Instant) -> String {
        let before = self.exchanges.iter().rev().find(|e| e.replied <= at).map(|e| (at - e.replied).as_millis());
        let after = self.exchanges.iter().find(|e| e.replied > at);
        match (before, after) {
            (Some(before), Some(after)) => format!(
                "last answer {before} ms before, first answer {} ms after (to {:?}, sent {} ms after)",
                (after.replied - at).as_millis(),
                after.request,
                after.sent.saturating_duration_since(at).as_millis()
            ),
            _ => format!("answers before: {before:?} ms ago; none after"),
        }
    }

    /// Reads every acknowledged key back over a new connection from `client_ns` (a guest booted
    /// again from the disk must hold them all).
    pub fn check_on_new_connection(&self, client_ns: &NetNs) -> Result<()> {
        let unread = self.unread_on_new_connection(client_ns)?;
        if let Some(first) = unread.first() {
            bail!("{} acknowledged SETs do not read back on a new connection; the first: {first}", unread.len());
        }
        Ok(())
    }

    /// Reads every acknowledged key back over a new connection from `client_ns`, all of them
    /// even after one failed: those that did not read back.
    pub fn unread_on_new_connection(&self, client_ns: &NetNs) -> Result<Vec<Unread>> {
        let keys = self.acknowledged.clone();
        client_ns.within(move || read_back(&mut kv::Client::connect()?, &keys))
    }

    /// SETs the client saw acknowledged.
    pub fn acknowledged_sets(&self) -> usize {
        self.acknowledged.len()
    }

    /// Answers that arrived after `at`.
    pub fn replies_after(&self, at: Instant) -> usize {
        self.exchanges.iter().filter(|e| e.replied > at).count()
    }

    /// A line for the test's output.
    pub fn summary(&self) -> String {
        let gap = self.longest_gap().map(|(gap, e)| format!("{} ms (ended by {:?})", gap.as_millis(), e.request));
        format!(
            "{} answers on one connection in {:.1} s, {} acknowledged SETs read back; longest gap between answers: {}",
            self.exchanges.len(),
            self.exchanges.last().map(|e| (e.replied - self.started).as_secs_f64()).unwrap_or(0.0),
            self.read_back,
            gap.unwrap_or_else(|| "none".into())
        )
    }
}
