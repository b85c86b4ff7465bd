//! The state transfer of a join: what a primary streams to a joining backup before the log,
//! inside the channel's state messages ([`super::Message::StateChunk`] / `StateEnd`).
//!
//! ```text
//! "FTVMXFER" | u16 version |
//! items: Round  u8 1 | u32 round | u64 pages | u8 last   a round begins (last: in the pause)
//!        Pages  u8 2 | u64 gpa | u32 count | count * 4096 bytes
//!        Zero   u8 3 | u64 gpa | u32 count           pages that are all zeros
//!        State  u8 4 | u32 len | len bytes           the vCPU, devices and position (opaque here)
//!        End    u8 5 | blake3 (32) of every byte before this item
//! ```
//!
//! A live join (pre-copy) sends round 0 with every page while the guest runs, rounds of the
//! pages dirtied meanwhile, and a last round taken while the guest is paused, followed by the
//! state and the digest. A stop-and-copy join is the same stream with only the last round,
//! holding every page. Pages of a later round overwrite those of an earlier one; the backup's
//! memory is right only once the End item checked out. Every length is bounded before anything
//! is allocated or written, so a damaged or hostile stream is an error, never a panic.

use super::wire::{Message, MAX_CHUNK};
use crossbeam_channel::Sender;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The first bytes of a transfer.
pub const TRANSFER_MAGIC: [u8; 8] = *b"FTVMXFER";
/// The transfer format's version: bumped on any change of its items.
pub const TRANSFER_VERSION: u16 = 1;
/// The page size of guest memory in a transfer.
pub const PAGE: usize = 4096;
/// The most pages one Pages or Zero item carries (1 MiB).
pub const MAX_RUN: u32 = 256;
/// The largest State item (the real ones are a few KiB).
pub const MAX_STATE: u32 = 16 << 20;

const T_ROUND: u8 = 1;
const T_PAGES: u8 = 2;
const T_ZERO: u8 = 3;
const T_STATE: u8 = 4;
const T_END: u8 = 5;

/// One item's head (the bytes of Pages and State follow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// A round of `pages` pages begins; the `last` one is sent while the guest is paused.
    Round {
        round: u32,
        pages: u64,
        last: bool,
    },
    Pages {
        gpa: u64,
        count: u32,
    },
    Zero {
        gpa: u64,
        count: u32,
    },
    State {
        len: u32,
    },
    /// The digest matched: the transfer is complete and intact.
    End,
}

/// Why a transfer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("not a state transfer (bad magic)")]
    Magic,
    #[error("state transfer version {theirs} is not supported (this side reads {TRANSFER_VERSION})")]
    Version { theirs: u16 },
    #[error("unknown state transfer item {0}")]
    UnknownItem(u8),
    #[error("{count} pages at {gpa:#x} lie outside guest memory of {memory_size} bytes or exceed {MAX_RUN} a run")]
    PagesOutside { gpa: u64, count: u32, memory_size: u64 },
    #[error("a state of {0} bytes is larger than {MAX_STATE}")]
    StateTooLarge(u32),
    #[error("bytes follow the end of the transfer")]
    Trailing,
    #[error("the transfer's digest does not match its bytes: damaged on the way")]
    Digest,
    // Not a `source`: the message says the cause, and a chain printed whole would say it twice.
    #[error("state transfer: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for TransferError {
    fn from(error: std::io::Error) -> Self {
        TransferError::Io(error)
    }
}

/// Writes a transfer to `out`, hashing every byte for the End item.
pub struct TransferWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> TransferWriter<W> {
    /// Starts a transfer: the magic and the version.
    pub fn begin(out: W) -> std::io::Result<Self> {
        let mut writer = Self { out, hasher: blake3::Hasher::new(), written: 0 };
        writer.put(&TRANSFER_MAGIC)?;
        writer.put(&TRANSFER_VERSION.to_le_bytes())?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn round(&mut self, round: u32, pages: u64, last: bool) -> std::io::Result<()> {
        let mut head = [0u8; 14];
        head[0] = T_ROUND;
        head[1..5].copy_from_slice(&round.to_le_bytes());
        head[5..13].copy_from_slice(&pages.to_le_bytes());
        head[13] = u8::from(last);
        self.put(&head)
    }

    /// A run of consecutive pages starting at `gpa`: `bytes` holds whole pages, at most
    /// [`MAX_RUN`] of them.
    pub fn pages(&mut self, gpa: u64, bytes: &[u8]) -> std::io::Result<()> {
        let count = bytes.len() / PAGE;
        if !bytes.len().is_multiple_of(PAGE) || count == 0 || count > MAX_RUN as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a page run must be 1..=256 whole pages",
            ));
        }
        self.put(&run_head(T_PAGES, gpa, count as u32))?;
        self.put(bytes)
    }

    /// `count` pages of zeros starting at `gpa`.
    pub fn zero(&mut self, gpa: u64, count: u32) -> std::io::Result<()> {
        if count == 0 || count > MAX_RUN {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a zero run must be 1..=256 pages"));
        }
        self.put(&run_head(T_ZERO, gpa, count))
    }

    pub fn state(&mut self, state: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(state.len()).ok().filter(|len| *len <= MAX_STATE).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the machine state is too large to transfer")
        })?;
        let mut head = [0u8; 5];
        head[0] = T_STATE;
        head[1..].copy_from_slice(&len.to_le_bytes());
        self.put(&head)?;
        self.put(state)
    }

    /// Ends the transfer with the digest of everything before; returns the output.
    pub fn end(mut self) -> std::io::Result<W> {
        let digest = self.hasher.finalize();
        self.out.write_all(&[T_END])?;
        self.out.write_all(digest.as_bytes())?;
        self.written += 33;
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

fn run_head(kind: u8, gpa: u64, count: u32) -> [u8; 13] {
    let mut head = [0u8; 13];
    head[0] = kind;
    head[1..9].copy_from_slice(&gpa.to_le_bytes());
    head[9..].copy_from_slice(&count.to_le_bytes());
    head
}

/// Reads a transfer for a guest of `memory_size` bytes: [`Self::next_item`] gives each item's head;
/// after a Pages item read its bytes with [`Self::read_bytes`], after a State item with
/// [`Self::read_state`].
pub struct TransferReader<R: Read> {
    input: R,
    hasher: blake3::Hasher,
    memory_size: u64,
    read: u64,
}

impl<R: Read> TransferReader<R> {
    /// Reads and checks the magic and the version.
    pub fn open(input: R, memory_size: u64) -> Result<Self, TransferError> {
        let mut reader = Self { input, hasher: blake3::Hasher::new(), memory_size, read: 0 };
        let mut magic = [0u8; 8];
        reader.read_bytes(&mut magic)?;
        if magic != TRANSFER_MAGIC {
            return Err(TransferError::Magic);
        }
        let mut version = [0u8; 2];
        reader.read_bytes(&mut version)?;
        let theirs = u16::from_le_bytes(version);
        if theirs != TRANSFER_VERSION {
            return Err(TransferError::Version { theirs });
        }
        Ok(reader)
    }

    /// Bytes read so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// Reads exactly `buf.len()` bytes of the transfer (hashed).
    pub fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), TransferError> {
        self.input.read_exact(buf)?;
        self.hasher.update(buf);
        self.read += buf.len() as u64;
        Ok(())
    }

    /// The next item's head. An End item is checked against the digest of what came before it.
    pub fn next_item(&mut self) -> Result<Item, TransferError> {
        let mut kind = [0u8; 1];
        self.input.read_exact(&mut kind)?;
        self.read += 1;
        if kind[0] == T_END {
            let mut digest = [0u8; 32];
            self.input.read_exact(&mut digest)?;
            self.read += 32;
            if self.hasher.finalize().as_bytes() != &digest {
                return Err(TransferError::Digest);
            }
            return Ok(Item::End);
        }
        self.hasher.update(&kind);
        match kind[0] {
            T_ROUND => {
                let mut body = [0u8; 13];
                self.read_bytes(&mut body)?;
                let round = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let pages = u64::from_le_bytes(body[4..12].try_into().unwrap_or_default());
                let last = match body[12] {
                    0 => false,
                    1 => true,
                    other => return Err(TransferError::UnknownItem(other)),
                };
                Ok(Item::Round { round, pages, last })
            }
            T_PAGES | T_ZERO => {
                let mut body = [0u8; 12];
                self.read_bytes(&mut body)?;
                let gpa = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
                let end = gpa.checked_add(u64::from(count) * PAGE as u64);
                let aligned = gpa % PAGE as u64 == 0;
                if count == 0 || count > MAX_RUN || !aligned || end.is_none_or(|end| end > self.memory_size) {
                    return Err(TransferError::PagesOutside { gpa, count, memory_size: self.memory_size });
                }
                Ok(if kind[0] == T_PAGES { Item::Pages { gpa, count } } else { Item::Zero { gpa, count } })
            }
            T_STATE => {
                let mut body = [0u8; 4];
                self.read_bytes(&mut body)?;
                let len = u32::from_le_bytes(body);
                if len > MAX_STATE {
                    return Err(TransferError::StateTooLarge(len));
                }
                Ok(Item::State { len })
            }
            other => Err(TransferError::UnknownItem(other)),
        }
    }

    /// After the End item: the stream must end there.
    pub fn finish(mut self) -> Result<(), TransferError> {
        let mut extra = [0u8; 1];
        match self.input.read(&mut extra)? {
            0 => Ok(()),
            _ => Err(TransferError::Trailing),
        }
    }

    /// The bytes of a State item of `len` bytes (grows with what arrives, not with `len`).
    pub fn read_state(&mut self, len: u32) -> Result<Vec<u8>, TransferError> {
        let mut state = Vec::new();
        self.input.by_ref().take(u64::from(len)).read_to_end(&mut state)?;
        if state.len() != len as usize {
            return Err(TransferError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        self.hasher.update(&state);
        self.read += u64::from(len);
        Ok(state)
    }
}

/// An owned writer of state chunks onto a primary's link (see
/// [`super::PrimaryLink::transfer_sink`]): it can move to the thread that copies memory while
/// the guest runs and back to the vCPU thread for the last round. A full queue makes it wait
/// while the backup lives; a lost backup makes it fail.
pub struct TransferSink {
    queue: Sender<Message>,
    lost: Arc<AtomicBool>,
    heartbeat: Duration,
    pending: Vec<u8>,
    total: u64,
}

impl TransferSink {
    pub(crate) fn new(queue: Sender<Message>, lost: Arc<AtomicBool>, heartbeat: Duration) -> Self {
        Self { queue, lost, heartbeat, pending: Vec::with_capacity(MAX_CHUNK), total: 0 }
    }

    fn send(&self, mut message: Message) -> std::io::Result<()> {
        loop {
            if self.lost.load(Ordering::Acquire) {
                return Err(gone());
            }
            match self.queue.send_timeout(message, self.heartbeat) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => message = back,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(gone()),
            }
        }
    }

    fn send_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_CHUNK));
        self.total += chunk.len() as u64;
        self.send(Message::StateChunk(chunk))
    }

    /// Waits until the writer has taken every queued message (so that what is queued next,
    /// in a pause, does not wait behind them), at most `wait`; false if the backup is gone.
    pub fn drain(&mut self, wait: Duration) -> bool {
        if self.send_pending().is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + wait;
        while !self.queue.is_empty() && std::time::Instant::now() < deadline {
            if self.lost.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        !self.lost.load(Ordering::Acquire)
    }

    /// Sends what is left and the end marker; returns the bytes of state sent.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.send_pending()?;
        self.send(Message::StateEnd { total: self.total })?;
        Ok(self.total)
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the backup went away during the state transfer")
}

impl Write for TransferSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let take = bytes.len().min(MAX_CHUNK - self.pending.len());
        self.pending.extend_from_slice(&bytes[..take]);
        if self.pending.len() == MAX_CHUNK {
            self.send_pending()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MEMORY: u64 = 64 * PAGE as u64;

    #[derive(Clone, Debug)]
    enum Op {
        Round(u32, u64, bool),
        Pages(u64, Vec<u8>),
        Zero(u64, u32),
        State(Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(r, p, l)| Op::Round(r, p, l)),
            (0u64..60, 1usize..4, any::<u8>())
                .prop_map(|(page, n, b)| Op::Pages(page * PAGE as u64, vec![b; n * PAGE])),
            (0u64..60, 1u32..4).prop_map(|(page, n)| Op::Zero(page * PAGE as u64, n)),
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(Op::State),
        ]
    }

    fn write(ops: &[Op]) -> Vec<u8> {
        let mut writer = TransferWriter::begin(Vec::new()).unwrap();
        for op in ops {
            match op {
                Op::Round(r, p, l) => writer.round(*r, *p, *l).unwrap(),
                Op::Pages(gpa, bytes) => writer.pages(*gpa, bytes).unwrap(),
                Op::Zero(gpa, n) => writer.zero(*gpa, *n).unwrap(),
                Op::State(bytes) => writer.state(bytes).unwrap(),
            }
        }
        writer.end().unwrap()
    }

    /// Reads a whole transfer; the items and the bytes they carried.
    fn read_all(bytes: &[u8]) -> Result<Vec<(Item, Vec<u8>)>, TransferError> {
        let mut reader = TransferReader::open(bytes, MEMORY)?;
        let mut items = Vec::new();
        loop {
            let item = reader.next_item()?;
            let body = match item {
                Item::Pages { count, .. } => {
                    let mut body = vec![0u8; count as usize * PAGE];
                    reader.read_bytes(&mut body)?;
                    body
                }
                Item::State { len } => reader.read_state(len)?,
                _ => Vec::new(),
            };
            items.push((item, body));
            if item == Item::End {
                reader.finish()?;
                return Ok(items);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_transfer_reads_back_as_written(ops in proptest::collection::vec(op(), 0..8)) {
            let bytes = write(&ops);
            let items = read_all(&bytes).unwrap();
            prop_assert_eq!(items.len(), ops.len() + 1);
            for (op, (item, body)) in ops.iter().zip(&items) {
                match op {
                    Op::Round(r, p, l) => prop_assert_eq!(*item, Item::Round { round: *r, pages: *p, last: *l }),
                    Op::Pages(gpa, b) => {
                        prop_assert_eq!(*item, Item::Pages { gpa: *gpa, count: (b.len() / PAGE) as u32 });
                        prop_assert_eq!(body, b);
                    }
                    Op::Zero(gpa, n) => prop_assert_eq!(*item, Item::Zero { gpa: *gpa, count: *n }),
                    Op::State(s) => {
                        prop_assert_eq!(*item, Item::State { len: s.len() as u32 });
                        prop_assert_eq!(body, s);
                    }
                }
            }
        }

        #[test]
        fn any_flipped_byte_or_cut_is_an_error(ops in proptest::collection::vec(op(), 1..5), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<bool>()) {
            let mut bytes = write(&ops);
            let at = at.index(bytes.len());
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= 1 << bit;
            }
            prop_assert!(read_all(&bytes).is_err());
        }
    }

    #[test]
    fn a_run_outside_memory_or_another_version_is_refused() {
        let mut writer = TransferWriter::begin(Vec::new()).unwrap();
        writer.zero(MEMORY - PAGE as u64, 2).unwrap();
        let bytes = writer.end().unwrap();
        assert!(matches!(read_all(&bytes), Err(TransferError::PagesOutside { .. })));
        let mut bytes = write(&[]);
        bytes[8] = 9;
        let error = read_all(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("version 9"), "{error}");
    }
}
