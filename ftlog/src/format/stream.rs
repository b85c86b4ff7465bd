//! Streaming writer and reader of a log.

use super::codec::{read_exact_into, read_full};
use super::{length_check, Corruption, LogError, LogHeader, Record, FRAME_OVERHEAD, MAX_RECORD_LEN};
use devices::{InputKind, Landmark};
use std::io::{BufReader, BufWriter, Read, Write};

/// Buffer size of the writer and reader: large enough that a record costs a memcpy, not a
/// syscall.
const BUFFER_SIZE: usize = 64 * 1024;

/// A reader's scratch buffer above this size (after a large checkpoint) is released rather than
/// kept for the rest of the log.
const SCRATCH_KEEP: usize = 1 << 20;

/// Writes a log: the header at creation, then records, buffered.
///
/// Encoding a record allocates nothing (a reused scratch buffer holds the fixed part; a
/// checkpoint's data is written straight from the caller's slice). After a write fails the
/// writer refuses further records: a log with a partial record in the middle would be unreadable
/// from that point, so it is better to stop at the first failure.
pub struct LogWriter<W: Write> {
    out: BufWriter<W>,
    scratch: Vec<u8>,
    offset: u64,
    header: LogHeader,
    failed: Option<LogError>,
}

impl<W: Write> LogWriter<W> {
    /// Starts a log on `inner` by writing `header`.
    pub fn new(inner: W, header: &LogHeader) -> Result<Self, LogError> {
        let encoded = header.encode()?;
        let mut out = BufWriter::with_capacity(BUFFER_SIZE, inner);
        out.write_all(&encoded).map_err(|e| LogError::io(0, e))?;
        Ok(Self {
            out,
            scratch: Vec::with_capacity(128),
            offset: encoded.len() as u64,
            header: header.clone(),
            failed: None,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Bytes of log produced so far (header included), i.e. the offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Record) -> Result<(), LogError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&[0; 5]);
        let tail = record.encode_head(&mut scratch);
        let result = self.write_frame(&mut scratch, tail);
        self.scratch = scratch;
        result
    }

    /// Appends a checkpoint record without copying `data` (the same bytes as
    /// `write(&Record::Checkpoint { at, data: data.to_vec() })`).
    pub fn write_checkpoint(&mut self, at: Landmark, data: &[u8]) -> Result<(), LogError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&[0; 5]);
        let empty = Record::Checkpoint { at, data: Vec::new() };
        let _ = empty.encode_head(&mut scratch);
        let result = self.write_frame(&mut scratch, data);
        self.scratch = scratch;
        result
    }

    /// Appends a device input record without copying `data`.
    pub fn write_input(&mut self, at: Landmark, kind: InputKind, data: &[u8]) -> Result<(), LogError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(&[0; 5]);
        let empty = Record::Input { at, kind, data: Vec::new() };
        let _ = empty.encode_head(&mut scratch);
        let result = self.write_frame(&mut scratch, data);
        self.scratch = scratch;
        result
    }

    /// `head` holds 5 placeholder bytes, the kind and the fixed body; `tail` follows it.
    fn write_frame(&mut self, head: &mut [u8], tail: &[u8]) -> Result<(), LogError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let body_len = (head.len() - 5) as u64 + tail.len() as u64;
        let len = match u32::try_from(body_len) {
            Ok(len) if len <= MAX_RECORD_LEN => len,
            _ => return Err(LogError::TooLarge { offset: self.offset, len: body_len, max: MAX_RECORD_LEN }),
        };
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4] = length_check(len);
        let crc = crc32c::crc32c_append(crc32c::crc32c(head), tail);
        let written = self
            .out
            .write_all(head)
            .and_then(|()| self.out.write_all(tail))
            .and_then(|()| self.out.write_all(&crc.to_le_bytes()));
        if let Err(e) = written {
            let error = LogError::io(self.offset, e);
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.offset += body_len + FRAME_OVERHEAD as u64;
        Ok(())
    }

    /// Pushes buffered records to the underlying writer.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.out.flush().map_err(|e| LogError::io(self.offset, e))
    }

    pub fn get_ref(&self) -> &W {
        self.out.get_ref()
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(self) -> Result<W, LogError> {
        let offset = self.offset;
        self.out.into_inner().map_err(|e| LogError::io(offset, e.into_error()))
    }
}

impl LogWriter<std::fs::File> {
    /// Flushes and makes the log durable (fdatasync): what output commit waits for when the
    /// backup is a file.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.flush()?;
        self.out.get_ref().sync_data().map_err(|e| LogError::io(self.offset, e))
    }
}

/// Reads a log: validates the header at creation, then yields `(offset, record)` in order.
///
/// Every length is checked against [`MAX_RECORD_LEN`] and against the bytes that actually
/// arrive before memory is committed to it; no input makes it panic. After the first error, or
/// after the End record and end of input, the iterator yields `None`.
pub struct LogReader<R: Read> {
    input: BufReader<R>,
    header: LogHeader,
    offset: u64,
    scratch: Vec<u8>,
    require_end: bool,
    end_seen: bool,
    done: bool,
}

impl<R: Read> LogReader<R> {
    /// Reads and checks the header. The reader is buffered internally.
    pub fn new(inner: R) -> Result<Self, LogError> {
        let mut input = BufReader::with_capacity(BUFFER_SIZE, inner);
        let (header, offset) = LogHeader::read_from(&mut input)?;
        Ok(Self {
            input,
            header,
            offset,
            scratch: Vec::with_capacity(128),
            require_end: true,
            end_seen: false,
            done: false,
        })
    }

    /// Accepts end of input at a record boundary without an End record as a clean end (a log
    /// still being written, or one read for inspection). By default a missing End is reported as
    /// [`LogError::Truncated`] at the end offset: a log cut exactly at a record boundary is
    /// otherwise indistinguishable from a shorter run.
    pub fn open_ended(mut self) -> Self {
        self.require_end = false;
        self
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// Offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the End record has been read.
    pub fn end_seen(&self) -> bool {
        self.end_seen
    }

    fn read_record(&mut self) -> Result<Option<(u64, Record)>, LogError> {
        let start = self.offset;
        let mut prefix = [0u8; 5];
        let got = read_full(&mut self.input, &mut prefix).map_err(|e| LogError::io(start, e))?;
        if got == 0 {
            return if self.end_seen || !self.require_end {
                Ok(None)
            } else {
                Err(LogError::Truncated { offset: start })
            };
        }
        let corrupt = |reason| LogError::Corrupt { offset: start, reason };
        if self.end_seen {
            return Err(corrupt(Corruption::AfterEnd));
        }
        if got < prefix.len() {
            return Err(LogError::Truncated { offset: start });
        }
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if prefix[4] != length_check(len) {
            return Err(corrupt(Corruption::LengthCheck));
        }
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(corrupt(Corruption::BadLength { len, max: MAX_RECORD_LEN }));
        }
        self.scratch.clear();
        let complete = read_exact_into(&mut self.input, len as usize + 4, &mut self.scratch)
            .map_err(|e| LogError::io(start, e))?;
        if !complete {
            return Err(LogError::Truncated { offset: start });
        }
        let (unit, crc) = self.scratch.split_at(len as usize);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c_append(crc32c::crc32c(&prefix), unit);
        if stored != computed {
            return Err(corrupt(Corruption::Checksum { stored, computed }));
        }
        let record = Record::decode(unit).map_err(corrupt)?;
        if self.scratch.capacity() > SCRATCH_KEEP {
            self.scratch = Vec::with_capacity(128);
        }
        self.offset += u64::from(len) + FRAME_OVERHEAD as u64;
        if matches!(record, Record::End(_)) {
            self.end_seen = true;
        }
        Ok(Some((start, record)))
    }

    /// Reads every remaining record.
    pub fn read_all(self) -> Result<Vec<(u64, Record)>, LogError> {
        self.collect()
    }
}

impl<R: Read> Iterator for LogReader<R> {
    type Item = Result<(u64, Record), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read_record() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
