//! The output stage: the one door through which the guest's effects leave the VM.
//!
//! Transmitted frames, disk writes and console bytes are handed to an [`OutputStage`] at the exit
//! that produced them, stamped with its [`Landmark`]. [`DirectOutput`] releases them at once (a VM
//! without a backup); the FT output rule holds them until the backup has acknowledged the log up
//! to that landmark; [`DiscardOutput`] drops them (a replay, whose outputs were released by the
//! recording). The console is an output like the others, so a following backup prints nothing
//! and a primary prints only what is safe.
//!
//! Disk reads also go through the stage ([`OutputStage::submit_read`]), because the stage is the
//! one part of the VMM that knows which writes it has not yet applied: whatever it holds, a read
//! must see every write emitted before it, in order. A stage that holds writes adds them to the
//! read as patches.
//!
//! **Disk requests complete later.** Writes, flushes and reads carry the device's request id;
//! [`DirectOutput`] hands them to each disk's backend thread ([`super::disk_queue`]) and returns at
//! once, and each finished request comes back as a `WorldEvent::DiskDone` through the live world,
//! at a landmark. So no disk round trip is paid on the vCPU thread, and a recording logs each
//! completion where the guest saw it.
//!
//! **Disk write status.** The status byte the guest sees for a write must be the same on the
//! primary and on a replaying backup. A write the backend accepts completes OK; a write it fails
//! is fatal for the VM: the stage latches the error ([`OutputStage::failure`]) and the VMM stops
//! with it (a clear log line naming the disk, offset and errno), never telling the guest. Reads
//! are different: their status comes back with their data in the completion event, so it is
//! recorded and replayed like the data.

use super::disk::BlockBackend;
use super::disk_queue::{Completions, DiskQueue};
use super::tap::TapWriter;
use crate::event::Landmark;
use std::io::Write;
use std::sync::Arc;

/// Something the guest sends to the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A frame the guest transmitted on net device `device` (without the virtio-net header).
    NetFrame { device: u8, frame: Vec<u8> },
    /// Bytes the guest wrote at byte `offset` of disk `device`, as its request `id` (which
    /// completes once they are applied).
    DiskWrite { device: u8, id: u64, offset: u64, data: Vec<u8> },
    /// The guest asked, as request `id`, that disk `device`'s completed writes be made durable.
    DiskFlush { device: u8, id: u64 },
    /// Bytes the guest wrote to its serial console.
    Console { bytes: Vec<u8> },
}

/// A backend failure that the VM cannot survive (see the module documentation).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    // The cause is part of the message, so it is no `source` (a field of that name would be):
    // a chain printed whole would say it twice.
    #[error("writing {len} bytes at offset {offset} of disk {device} ({path}): {cause}")]
    DiskWrite { device: u8, path: String, offset: u64, len: usize, cause: std::io::Error },
    #[error("flushing disk {device} ({path}): {cause}")]
    DiskFlush { device: u8, path: String, cause: std::io::Error },
    #[error("reading {len} bytes at offset {offset} of disk {device} ({path}): {cause}")]
    DiskRead { device: u8, path: String, offset: u64, len: usize, cause: std::io::Error },
    #[error("disk {device} is read-only ({path}), yet a write reached it")]
    ReadOnly { device: u8, path: String },
    #[error("the event source returned {got} bytes for a read of {want} on disk {device} (a corrupt log?)")]
    ReadLength { device: u8, got: usize, want: usize },
    #[error("no disk {device} in the output stage")]
    NoDisk { device: u8 },
    #[error("disk {device} failed earlier: {first}")]
    Failed { device: u8, first: Arc<OutputError> },
    #[error("disk {device}: its backend thread could not start: {cause}")]
    Thread { device: u8, cause: std::io::Error },
}

impl OutputError {
    /// The I/O error behind this one, if a backend failed (for a caller that must know what
    /// refused a write: a gfs fence). Not a `source()`: the message already says it.
    pub fn io_cause(&self) -> Option<&std::io::Error> {
        match self {
            OutputError::DiskWrite { cause, .. }
            | OutputError::DiskFlush { cause, .. }
            | OutputError::DiskRead { cause, .. }
            | OutputError::Thread { cause, .. } => Some(cause),
            OutputError::Failed { first, .. } => first.io_cause(),
            OutputError::ReadOnly { .. } | OutputError::ReadLength { .. } | OutputError::NoDisk { .. } => None,
        }
    }
}

/// A read request of the guest, handed to the stage at the exit that made it. It completes later
/// as `WorldEvent::DiskDone { device, id, .. }` with `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRead {
    pub device: u8,
    pub id: u64,
    pub offset: u64,
    pub len: usize,
    /// Writes emitted before the read that a stage still holds, (byte offset, data) in emit
    /// order: laid over what the disk returns, so the read sees them.
    pub patches: Vec<(u64, Vec<u8>)>,
}

/// Copies the part of `data` (written at byte `at`) that falls inside `buf` (read from byte
/// `offset`) over `buf`.
pub fn lay_over(buf: &mut [u8], offset: u64, at: u64, data: &[u8]) {
    let end = offset.saturating_add(buf.len() as u64);
    let from = offset.max(at);
    let to = end.min(at.saturating_add(data.len() as u64));
    if from >= to {
        return;
    }
    // Both differences are bounded by the lengths of `buf` and `data`, which are usizes.
    let (in_buf, in_data, n) = ((from - offset) as usize, (from - at) as usize, (to - from) as usize);
    buf[in_buf..in_buf + n].copy_from_slice(&data[in_data..in_data + n]);
}

/// Where outputs go.
pub trait OutputStage {
    /// Takes an output the guest produced at `at`. An error is fatal for the VM.
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError>;

    /// Takes a read of the guest: it completes later, seeing every write emitted before it. An
    /// error is fatal for the VM (a read the backend fails completes with an I/O-error status).
    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError>;

    /// The write or flush a backend failed, once one has: the VM cannot go on.
    fn failure(&self) -> Option<Arc<OutputError>> {
        None
    }

    /// Waits until every output handed to a backend so far has finished (a disk write applied
    /// or refused), for at most `timeout`; whether they all did.
    fn settle(&self, _timeout: std::time::Duration) -> bool {
        true
    }
}

/// A boxed stage is a stage (the machine keeps its stage boxed; a stage that wraps another, as
/// the FT output commit does, can take it as it is).
impl OutputStage for Box<dyn OutputStage + Send> {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        (**self).emit(at, output)
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        (**self).submit_read(read)
    }

    fn failure(&self) -> Option<Arc<OutputError>> {
        (**self).failure()
    }

    fn settle(&self, timeout: std::time::Duration) -> bool {
        (**self).settle(timeout)
    }
}

/// Releases every output at once: frames to their TAP, disk requests to their disk's backend
/// thread (they complete later), console bytes to the console writer.
pub struct DirectOutput {
    taps: Vec<Option<TapWriter>>,
    disks: Vec<DiskQueue>,
    console: Box<dyn Write + Send>,
    /// A console write failed and was logged; later failures are silent.
    console_error_logged: bool,
}

impl DirectOutput {
    /// `taps[i]` carries net device i's frames (`None`: frames are dropped); `disks[i]` is disk
    /// i, served by a thread of its own whose completions go to `completions`; console bytes go
    /// to `console`. A disk whose thread cannot start is failed from the start
    /// ([`OutputStage::failure`]).
    pub fn new(
        taps: Vec<Option<TapWriter>>,
        disks: Vec<Arc<dyn BlockBackend>>,
        console: Box<dyn Write + Send>,
        completions: Completions,
    ) -> Self {
        let disks = disks
            .into_iter()
            .enumerate()
            // The board has at most MAX_DEVICES devices.
            .map(|(i, backend)| DiskQueue::start(i as u8, backend, completions.clone()))
            .collect();
        Self { taps, disks, console, console_error_logged: false }
    }

    fn disk(&self, device: u8) -> Result<&DiskQueue, OutputError> {
        self.disks.get(usize::from(device)).ok_or(OutputError::NoDisk { device })
    }

    /// Waits until every disk request handed over so far has finished, for at most `timeout`;
    /// returns whether they all did.
    pub fn wait_for_disks(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.disks.iter().all(|d| d.wait_idle(deadline.saturating_duration_since(std::time::Instant::now())))
    }

    fn write_console(&mut self, bytes: &[u8]) {
        // A console nobody reads (a closed pipe) loses bytes, as a serial line would; the guest
        // cannot be told and must not be stopped for it.
        if let Err(error) = self.console.write_all(bytes).and_then(|()| self.console.flush()) {
            if !self.console_error_logged {
                self.console_error_logged = true;
                tracing::warn!(%error, "console output failed; its bytes are dropped from now on");
            }
        }
    }
}

impl OutputStage for DirectOutput {
    fn emit(&mut self, _at: Landmark, output: Output) -> Result<(), OutputError> {
        match output {
            Output::NetFrame { device, frame } => {
                match self.taps.get_mut(usize::from(device)).and_then(Option::as_mut) {
                    // A network may lose frames; a failed send is logged, never fatal.
                    Some(tap) => {
                        if let Err(e) = tap.send(&frame) {
                            tracing::warn!(device, tap = tap.name(), error = %e, "frame not sent");
                        }
                    }
                    None => tracing::trace!(device, "frame for a net device without a TAP dropped"),
                }
                Ok(())
            }
            Output::DiskWrite { device, id, offset, data } => {
                let disk = self.disk(device)?;
                if disk.backend().readonly() {
                    return Err(OutputError::ReadOnly { device, path: disk.backend().name() });
                }
                disk.write(id, offset, data)
            }
            Output::DiskFlush { device, id } => self.disk(device)?.flush(id),
            Output::Console { bytes } => {
                self.write_console(&bytes);
                Ok(())
            }
        }
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        self.disk(read.device)?.read(read)
    }

    fn failure(&self) -> Option<Arc<OutputError>> {
        self.disks.iter().find_map(DiskQueue::failure)
    }

    fn settle(&self, timeout: std::time::Duration) -> bool {
        self.wait_for_disks(timeout)
    }
}

/// Drops every output: a replay's outputs were released by the recording, and a machine without
/// backends (yet) has nowhere to send them. Disk reads are dropped too: a replay takes their
/// completions from the log. Optionally the console still goes to a writer, so
/// that `ftvm replay` shows what the replayed guest prints.
#[derive(Default)]
pub struct DiscardOutput {
    /// Outputs dropped so far.
    pub dropped: u64,
    console: Option<Box<dyn Write + Send>>,
}

impl DiscardOutput {
    /// Drops everything but the console, which goes to `console`.
    pub fn showing_console(console: Box<dyn Write + Send>) -> Self {
        Self { dropped: 0, console: Some(console) }
    }
}

impl OutputStage for DiscardOutput {
    fn emit(&mut self, _at: Landmark, output: Output) -> Result<(), OutputError> {
        match (output, self.console.as_mut()) {
            (Output::Console { bytes }, Some(console)) => {
                // The console of a replay is for reading only: a closed one loses nothing.
                let _ = console.write_all(&bytes).and_then(|()| console.flush());
            }
            _ => self.dropped += 1,
        }
        Ok(())
    }

    fn submit_read(&mut self, _read: DiskRead) -> Result<(), OutputError> {
        self.dropped += 1;
        Ok(())
    }
}
