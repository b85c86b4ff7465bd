//! Appending to the operation log with group commit: callers hand records to one writer
//! thread, which writes every record waiting at that moment, fsyncs once, then answers them all.

use super::{encode_entry, segment_path, sync_dir, Entry, Record};
use crate::error::{GfsError, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

/// Most records committed by one fsync.
const MAX_BATCH: usize = 4096;

enum Cmd {
    Append(Record, SyncSender<Result<u64>>),
    /// Start a new segment; answers the last LSN written to the old one.
    Rotate(SyncSender<Result<u64>>),
}

/// Handle to the log writer thread. Cloneable and shareable.
#[derive(Clone)]
pub struct OpLog {
    tx: Sender<Cmd>,
}

struct Writer {
    dir: PathBuf,
    file: File,
    /// Bytes of durable, well-formed entries in the current segment.
    good_len: u64,
    next_lsn: u64,
    failed: Option<String>,
}

impl OpLog {
    /// Opens a new segment starting at `next_lsn` in `dir` and starts the writer thread.
    pub fn open(dir: &Path, next_lsn: u64) -> Result<OpLog> {
        let file = create_segment(dir, next_lsn)?;
        let mut w = Writer { dir: dir.to_path_buf(), file, good_len: 0, next_lsn, failed: None };
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("oplog".into())
            .spawn(move || w.run(rx))
            .map_err(|e| GfsError::io("starting the log writer", e))?;
        Ok(OpLog { tx })
    }

    /// A log that refuses every append (for read-only shadow masters).
    pub fn detached() -> OpLog {
        let (tx, rx) = mpsc::channel::<Cmd>();
        drop(rx);
        OpLog { tx }
    }

    /// Appends `record`; returns its LSN once it is on disk.
    pub fn append(&self, record: Record) -> Result<u64> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(Cmd::Append(record, tx)).map_err(|_| GfsError::OpLog("log writer stopped".into()))?;
        rx.recv().map_err(|_| GfsError::OpLog("log writer stopped".into()))?
    }

    /// Starts a new segment; returns the last LSN of the previous one.
    pub fn rotate(&self) -> Result<u64> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(Cmd::Rotate(tx)).map_err(|_| GfsError::OpLog("log writer stopped".into()))?;
        rx.recv().map_err(|_| GfsError::OpLog("log writer stopped".into()))?
    }
}

fn create_segment(dir: &Path, first_lsn: u64) -> Result<File> {
    let path = segment_path(dir, first_lsn);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| GfsError::io(format!("creating {}", path.display()), e))?;
    sync_dir(dir)?;
    Ok(file)
}

impl Writer {
    fn run(&mut self, rx: Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            for cmd in batch {
                match cmd {
                    Cmd::Append(rec, reply) => appends.push((rec, reply)),
                    Cmd::Rotate(reply) => {
                        self.commit(std::mem::take(&mut appends));
                        let _ = reply.send(self.rotate());
                    }
                }
            }
            self.commit(appends);
        }
    }

    fn rotate(&mut self) -> Result<u64> {
        if let Some(f) = &self.failed {
            return Err(GfsError::OpLog(f.clone()));
        }
        self.file = create_segment(&self.dir, self.next_lsn)?;
        self.good_len = 0;
        Ok(self.next_lsn - 1)
    }

    fn commit(&mut self, appends: Vec<(Record, SyncSender<Result<u64>>)>) {
        if appends.is_empty() {
            return;
        }
        let first = self.next_lsn;
        let result = self.write_batch(appends.iter().map(|(r, _)| r));
        for (i, (_, reply)) in appends.into_iter().enumerate() {
            let _ = reply.send(match &result {
                Ok(()) => Ok(first + i as u64),
                Err(e) => Err(GfsError::OpLog(e.clone())),
            });
        }
    }

    fn write_batch<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let mut buf = Vec::new();
        let mut lsn = self.next_lsn;
        for r in records {
            let entry = Entry { lsn, record: r.clone() };
            encode_entry(&entry, &mut buf).map_err(|e| e.to_string())?;
            lsn += 1;
        }
        let res = self.file.write_all(&buf).and_then(|_| self.file.sync_data());
        match res {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                self.next_lsn = lsn;
                Ok(())
            }
            Err(e) => {
                let msg = format!("appending to the operation log: {e}");
                tracing::error!("{msg}");
                // Cut what may have been partly written so later records stay readable.
                let cut = self
                    .file
                    .set_len(self.good_len)
                    .and_then(|_| self.file.seek(SeekFrom::Start(self.good_len)))
                    .and_then(|_| self.file.sync_data());
                if let Err(e2) = cut {
                    self.failed = Some(format!("operation log unusable: {e2} (after {e})"));
                }
                Err(msg)
            }
        }
    }
}
