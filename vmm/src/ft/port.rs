//! The `--ft-listen` port: backups join the live side here, and `ftvm status` asks either side
//! here (a backup answers for itself while it follows).
//!
//! Each connection is sorted by its first 8 bytes, peeked, not read: [`STATUS_MAGIC`] gets a
//! status report and is closed; anything else is handed, untouched, to whoever accepts backups
//! (the live side's listener thread, see [`super::primary::Primary::listen`]), whose handshake
//! judges it. While this side follows, nobody accepts backups and a joining one is turned away.

use super::FtError;
use crate::telemetry::status::{self, STATUS_MAGIC};
use crate::telemetry::Role;
use crossbeam_channel::{Receiver, Sender};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a new connection may take to send its first 8 bytes.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(2);
/// How long a joining backup may wait for this side to start accepting (it binds the port
/// before it races for the register and boots), as it would have waited in the kernel's
/// backlog; a side that follows turns a backup away at once.
const HANDOFF_WAIT: Duration = Duration::from_secs(10);
/// Connections being sorted at once; more are closed at once (a flood must not make threads).
const MAX_SORTING: usize = 16;

/// The bound port and the backups that arrive on it.
pub struct FtPort {
    addr: String,
    links: Receiver<TcpStream>,
}

impl FtPort {
    /// Binds `addr` and starts sorting its connections. Bound before the register is taken,
    /// so that a taken address fails the start without holding the register.
    pub fn open(addr: &str) -> Result<Self, FtError> {
        let listen_error = |source| FtError::Listen { addr: addr.to_owned(), source };
        let listener = TcpListener::bind(addr).map_err(listen_error)?;
        let (links_tx, links) = crossbeam_channel::bounded(0);
        std::thread::Builder::new()
            .name("ft-port".into())
            .spawn(move || sort_connections(listener, links_tx))
            .map_err(listen_error)?;
        Ok(Self { addr: addr.to_owned(), links })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The connections that are not status questions: backups, or strangers for the handshake
    /// to refuse.
    pub fn links(&self) -> Receiver<TcpStream> {
        self.links.clone()
    }
}

fn sort_connections(listener: TcpListener, links: Sender<TcpStream>) {
    let sorting = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!("accepting on the ft port: {error}");
                continue;
            }
        };
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        if sorting.fetch_add(1, Ordering::AcqRel) >= MAX_SORTING {
            sorting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%peer, "too many connections at once on the ft port: closed");
            continue;
        }
        let (links, busy) = (links.clone(), sorting.clone());
        let spawned = std::thread::Builder::new().name("ft-sort".into()).spawn(move || {
            sort_one(stream, &peer, &links);
            busy.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(error) = spawned {
            sorting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("could not sort a connection on the ft port: {error}");
        }
    }
}

fn sort_one(mut stream: TcpStream, peer: &str, links: &Sender<TcpStream>) {
    match first_bytes(&stream) {
        Ok(Some(head)) if head == STATUS_MAGIC => {
            let mut magic = [0u8; 8];
            let answered = match stream.read_exact(&mut magic) {
                Ok(()) => status::answer(stream, peer, FIRST_BYTES_WAIT, || crate::telemetry::vitals().report())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answered {
                Ok(()) => tracing::debug!(%peer, "answered a status question"),
                Err(error) => tracing::warn!(%peer, "a status question went unanswered: {error}"),
            }
        }
        Ok(Some(_)) => {
            let turned_away = match crate::telemetry::vitals().role() {
                Role::Following | Role::Halted => links.try_send(stream).is_err(),
                Role::Starting | Role::Live => links.send_timeout(stream, HANDOFF_WAIT).is_err(),
            };
            if turned_away {
                tracing::warn!(%peer, "a backup tried to join this side, which is not live: turned away");
            }
        }
        Ok(None) => tracing::debug!(%peer, "a connection on the ft port closed or stayed silent"),
        Err(error) => tracing::debug!(%peer, "reading a connection on the ft port: {error}"),
    }
}

/// The connection's first 8 bytes, left in the socket; `None` if it closed or sent fewer in
/// [`FIRST_BYTES_WAIT`].
fn first_bytes(stream: &TcpStream) -> std::io::Result<Option<[u8; 8]>> {
    let deadline = Instant::now() + FIRST_BYTES_WAIT;
    stream.set_read_timeout(Some(FIRST_BYTES_WAIT))?;
    let mut head = [0u8; 8];
    loop {
        match stream.peek(&mut head) {
            Ok(8) => break,
            Ok(0) => return Ok(None),
            // Some bytes are there, not all: peek returns at once from now on.
            Ok(_) => std::thread::sleep(Duration::from_millis(2)),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(error) => return Err(error),
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
    stream.set_read_timeout(None)?;
    Ok(Some(head))
}
