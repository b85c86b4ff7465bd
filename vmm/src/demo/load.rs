//! The demo's client: one TCP connection from the client namespace to the VM that sends SET
//! then GET of the same key, without pause, and checks every reply. It never reconnects: the
//! point is that the one connection survives the failovers.

use super::interrupt;
use super::topology::{enter_namespace, NetNs};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm::plot::Reply;

/// The kv service of the guest.
pub const SERVICE: &str = "10.0.0.2:7000";

pub fn key(i: usize) -> String {
    format!("demo-key-{i:06}")
}

pub fn value(i: usize) -> String {
    format!("demo-value-{i}-{}", "v".repeat(i % 31))
}

#[derive(Default)]
struct Log {
    /// When each reply arrived, and how long after its request was sent.
    replies: Vec<Reply>,
    /// Keys (by index) whose SET was answered OK.
    acknowledged: usize,
}

/// One line-protocol connection.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn request(&mut self, line: &str) -> Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the VM closed the connection");
        }
        Ok(answer.trim_end().to_owned())
    }
}

/// The running client.
pub struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    socket: TcpStream,
    worker: Option<JoinHandle<(Option<Connection>, Result<()>)>>,
}

/// What the client saw, once stopped and every acknowledged SET read back.
pub struct LoadReport {
    pub replies: Vec<Reply>,
    pub acknowledged: usize,
}

impl Load {
    /// Connects from `client` (a thread moved into its namespace) and starts the stream.
    pub fn start(client: &NetNs) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (stop_w, log_w) = (Arc::clone(&stop), Arc::clone(&log));
        let namespace = client.name.clone();
        let worker = std::thread::spawn(move || {
            let connection = match enter_namespace(&namespace).and_then(|()| connect()) {
                Ok(connection) => connection,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return (None, Ok(()));
                }
            };
            let _ = ready_tx.send(connection.writer.try_clone().map_err(anyhow::Error::from));
            let (connection, result) = drive(connection, &stop_w, &log_w);
            (Some(connection), result)
        });
        let socket = ready_rx.recv().context("the client thread ended")??;
        Ok(Self { stop, log, socket, worker: Some(worker) })
    }

    pub fn replies(&self) -> usize {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).replies.len()
    }

    /// When the first reply at or after `at` arrived.
    pub fn first_reply_since(&self, at: Instant) -> Option<Instant> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).replies.iter().map(|r| r.at).find(|r| *r >= at)
    }

    /// Polls until `count` replies have arrived in all; fails at once if the connection ended
    /// or a reply was wrong.
    pub fn wait_for_replies(&mut self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let replies = self.replies();
            if replies >= count {
                return Ok(());
            }
            if self.worker.as_ref().is_some_and(JoinHandle::is_finished) {
                let error = self.take_result().err().map(|e| format!("{e:#}")).unwrap_or_default();
                bail!("the client's connection failed after {replies} replies: {error}");
            }
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!("the client got {replies} replies of {count} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn take_result(&mut self) -> Result<Connection> {
        let worker = self.worker.take().context("the client was already stopped")?;
        let (connection, result) = worker.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
        result?;
        connection.context("the client never connected")
    }

    /// Stops the stream and reads every acknowledged key back on the same connection.
    pub fn finish(mut self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut connection = self.take_result()?;
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner));
        for i in 0..log.acknowledged {
            let answer = connection.request(&format!("GET {}", key(i)))?;
            if answer != format!("VALUE {}", value(i)) {
                bail!("acknowledged SET {} reads back as {answer:?}", key(i));
            }
        }
        Ok(LoadReport { replies: log.replies, acknowledged: log.acknowledged })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Connects to the VM's service, trying for a few seconds (its stack may still be coming up).
fn connect() -> Result<Connection> {
    let address = SERVICE.parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                stream.set_nodelay(true)?;
                return Ok(Connection { reader: BufReader::new(stream.try_clone()?), writer: stream });
            }
            Err(e) if Instant::now() > deadline => return Err(e).context(SERVICE),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn drive(mut connection: Connection, stop: &AtomicBool, log: &Mutex<Log>) -> (Connection, Result<()>) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = set_and_get(&mut connection, i, log) {
            return (connection, Err(e));
        }
        i += 1;
    }
    (connection, Ok(()))
}

/// SET key-i, then GET it back; every reply checked.
fn set_and_get(connection: &mut Connection, i: usize, log: &Mutex<Log>) -> Result<()> {
    let sent = Instant::now();
    let reply = connection.request(&format!("SET {} {}", key(i), value(i)))?;
    let replied = Instant::now();
    if reply != "OK" {
        bail!("SET {} answered {reply:?}", key(i));
    }
    {
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.replies.push(Reply { at: replied, latency: replied - sent });
        log.acknowledged = i + 1;
    }
    let sent = Instant::now();
    let reply = connection.request(&format!("GET {}", key(i)))?;
    let replied = Instant::now();
    if reply != format!("VALUE {}", value(i)) {
        bail!("GET {} right after its SET answered {reply:?}", key(i));
    }
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    log.replies.push(Reply { at: replied, latency: replied - sent });
    Ok(())
}
