//! The two halves of a channel after the handshake. Sealed, each direction is a run of records
//! `u16 LE length | ciphertext` whose nonces are counted by both sides (the receiver expects
//! exactly the next one), so a record that does not verify (altered, replayed, reordered or cut
//! short inside) ends the connection with an `InvalidData` error. Unsealed (`--insecure`), the
//! halves pass bytes through to the socket.

use snow::StatelessTransportState;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// The AEAD tag each record carries.
pub const TAG: usize = 16;
/// The largest record on the wire (the Noise message limit).
pub const MAX_RECORD: usize = 65535;
/// The most plaintext one record carries.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG;
/// Records sealed into one write to the socket at most.
const RECORDS_PER_WRITE: usize = 4;

/// The receiving half: reads and opens records (or passes bytes through, unsealed).
pub struct Reader {
    stream: TcpStream,
    sealed: Option<Opening>,
}

struct Opening {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes read from the socket and not yet opened: whole records and the start of one.
    raw: Vec<u8>,
    raw_start: usize,
    /// The last opened record's plaintext, and how much of it was handed out.
    plain: Vec<u8>,
    plain_used: usize,
    /// A record failed to verify: nothing more is read from this connection.
    refused: bool,
}

/// The sending half: seals what is written into records (or writes it through, unsealed).
pub struct Writer {
    stream: TcpStream,
    sealed: Option<Sealing>,
}

struct Sealing {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    out: Vec<u8>,
    /// A write failed part way: the peer's nonce count and ours may differ now.
    broken: bool,
}

pub(crate) fn sealed(stream: TcpStream, transport: StatelessTransportState) -> io::Result<(Reader, Writer)> {
    let transport = Arc::new(transport);
    let write_half = stream.try_clone()?;
    let reader = Reader {
        stream,
        sealed: Some(Opening {
            transport: transport.clone(),
            nonce: 0,
            raw: Vec::with_capacity(2 * (MAX_RECORD + 2)),
            raw_start: 0,
            plain: Vec::with_capacity(MAX_PLAIN),
            plain_used: 0,
            refused: false,
        }),
    };
    let writer = Writer {
        stream: write_half,
        sealed: Some(Sealing {
            transport,
            nonce: 0,
            out: Vec::with_capacity(RECORDS_PER_WRITE * (MAX_RECORD + 2)),
            broken: false,
        }),
    };
    Ok((reader, writer))
}

pub(crate) fn plain(stream: TcpStream) -> io::Result<(Reader, Writer)> {
    let write_half = stream.try_clone()?;
    Ok((Reader { stream, sealed: None }, Writer { stream: write_half, sealed: None }))
}

impl Reader {
    /// The socket underneath (for timeouts, shutdown, peeking).
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Whether this channel is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Whether bytes were taken off the socket that the caller has not read yet (an idle
    /// connection with such bytes is not idle).
    pub fn has_buffered(&self) -> bool {
        self.sealed.as_ref().is_some_and(|o| o.plain_used < o.plain.len() || o.raw_start < o.raw.len())
    }
}

impl Opening {
    /// The length of the whole record at the front of `raw`, if its header has arrived.
    fn next_record_len(&self) -> Option<usize> {
        let head = self.raw.get(self.raw_start..self.raw_start + 2)?;
        Some(2 + u16::from_le_bytes([head[0], head[1]]) as usize)
    }

    /// Opens the record at the front of `raw` into `plain`.
    fn open_front(&mut self, len: usize) -> io::Result<()> {
        let record = &self.raw[self.raw_start + 2..self.raw_start + len];
        self.plain.resize(MAX_PLAIN.max(record.len()), 0);
        match self.transport.read_message(self.nonce, record, &mut self.plain) {
            Ok(n) => {
                self.plain.truncate(n);
                self.plain_used = 0;
                self.nonce += 1;
                self.raw_start += len;
                Ok(())
            }
            Err(_) => {
                self.refused = true;
                self.plain.clear();
                self.plain_used = 0;
                Err(refused_record(self.nonce))
            }
        }
    }
}

fn refused_record(nonce: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sealed record {nonce} does not verify (altered, replayed or out of order): the connection is refused"),
    )
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(o) = self.sealed.as_mut() else { return self.stream.read(buf) };
        if o.refused {
            return Err(refused_record(o.nonce));
        }
        loop {
            if o.plain_used < o.plain.len() {
                let n = buf.len().min(o.plain.len() - o.plain_used);
                buf[..n].copy_from_slice(&o.plain[o.plain_used..o.plain_used + n]);
                o.plain_used += n;
                return Ok(n);
            }
            if let Some(len) = o.next_record_len() {
                if o.raw.len() - o.raw_start >= len {
                    o.open_front(len)?;
                    continue;
                }
            }
            // Too little for a record: keep the partial one at the front and read more (a read
            // that times out leaves it there for the next call).
            if o.raw_start > 0 {
                o.raw.drain(..o.raw_start);
                o.raw_start = 0;
            }
            let have = o.raw.len();
            o.raw.resize(have + MAX_RECORD + 2, 0);
            let got = self.stream.read(&mut o.raw[have..]);
            o.raw.truncate(have + *got.as_ref().unwrap_or(&0));
            match got? {
                0 if have == 0 => return Ok(0),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection ended inside a sealed record",
                    ))
                }
                _ => {}
            }
        }
    }
}

impl Writer {
    /// The socket underneath (for shutdown).
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }
}

impl Write for Writer {
    /// Seals up to a few records' worth of `buf` and sends them whole before returning: what
    /// was written is on its way, no flush is needed to send it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(s) = self.sealed.as_mut() else { return self.stream.write(buf) };
        if s.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the sealed channel broke during an earlier write"));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        s.out.clear();
        let mut taken = 0;
        for piece in buf.chunks(MAX_PLAIN).take(RECORDS_PER_WRITE) {
            let at = s.out.len();
            s.out.resize(at + 2 + piece.len() + TAG, 0);
            let n = s
                .transport
                .write_message(s.nonce, piece, &mut s.out[at + 2..])
                .map_err(|e| io::Error::other(format!("sealing a record: {e}")))?;
            s.out[at..at + 2].copy_from_slice(&(n as u16).to_le_bytes());
            s.out.truncate(at + 2 + n);
            s.nonce += 1;
            taken += piece.len();
        }
        if let Err(e) = self.stream.write_all(&s.out) {
            s.broken = true;
            return Err(e);
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
