//! The output stage: the one door through which the guest's effects leave the VM.
//!
//! Transmitted frames, disk writes and console bytes are handed to an [`OutputStage`] at the exit
//! that produced them, stamped with its [`Landmark`]. [`DirectOutput`] releases them at once (a VM
//! without a backup); the FT output rule holds them until the backup has acknowledged the log up
//! to that landmark; [`DiscardOutput`] drops them (a replay, whose outputs were released by the
//! recording). The console is an output like the others, so a following backup prints nothing
//! and a primary prints only what is safe.
//!
//! Disk reads also go through the stage ([`OutputStage::read_disk`]), because the stage is the
//! one part of the VMM that knows which writes it has not yet applied: whatever it holds, a read
//! must see every write emitted before it, in order.
//!
//! **Disk write status.** The status byte the guest sees for a write must be the same on the
//! primary and on a replaying backup, and a held write has no result yet when the guest is told.
//! So a write is always reported OK to the guest, and a write the backend fails to apply is
//! fatal for the VM: `emit` returns the error, and the VMM stops with it (a clear log line naming
//! the disk, offset and errno). Reads are different: their status comes back with their data
//! through the event source, so it is recorded and replayed like the data.

use super::disk::BlockBackend;
use super::tap::TapWriter;
use crate::event::Landmark;
use std::io::Write;
use std::sync::Arc;

/// Something the guest sends to the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A frame the guest transmitted on net device `device` (without the virtio-net header).
    NetFrame { device: u8, frame: Vec<u8> },
    /// Bytes the guest wrote at byte `offset` of disk `device`.
    DiskWrite { device: u8, offset: u64, data: Vec<u8> },
    /// The guest asked that disk `device`'s writes be made durable.
    DiskFlush { device: u8 },
    /// Bytes the guest wrote to its serial console.
    Console { bytes: Vec<u8> },
}

/// A backend failure that the VM cannot survive (see the module documentation).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing {len} bytes at offset {offset} of disk {device} ({path}): {source}")]
    DiskWrite { device: u8, path: String, offset: u64, len: usize, source: std::io::Error },
    #[error("flushing disk {device} ({path}): {source}")]
    DiskFlush { device: u8, path: String, source: std::io::Error },
    #[error("reading {len} bytes at offset {offset} of disk {device} ({path}): {source}")]
    DiskRead { device: u8, path: String, offset: u64, len: usize, source: std::io::Error },
    #[error("disk {device} is read-only ({path}), yet a write reached it")]
    ReadOnly { device: u8, path: String },
    #[error("the event source returned {got} bytes for a read of {want} on disk {device} (a corrupt log?)")]
    ReadLength { device: u8, got: usize, want: usize },
    #[error("no disk {device} in the output stage")]
    NoDisk { device: u8 },
}

/// Where outputs go.
pub trait OutputStage {
    /// Takes an output the guest produced at `at`. An error is fatal for the VM.
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError>;

    /// Fills `buf` from byte `offset` of disk `device`, as the guest must see it: every write
    /// emitted before is visible. An error becomes an I/O-error status for the guest's read.
    fn read_disk(&mut self, device: u8, offset: u64, buf: &mut [u8]) -> Result<(), OutputError>;
}

/// A boxed stage is a stage (the machine keeps its stage boxed; a stage that wraps another, as
/// the FT output commit does, can take it as it is).
impl OutputStage for Box<dyn OutputStage + Send> {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        (**self).emit(at, output)
    }

    fn read_disk(&mut self, device: u8, offset: u64, buf: &mut [u8]) -> Result<(), OutputError> {
        (**self).read_disk(device, offset, buf)
    }
}

/// Releases every output at once: frames to their TAP, writes to their disk, console bytes to
/// the console writer.
pub struct DirectOutput {
    taps: Vec<Option<TapWriter>>,
    disks: Vec<Arc<dyn BlockBackend>>,
    console: Box<dyn Write + Send>,
    /// A console write failed and was logged; later failures are silent.
    console_error_logged: bool,
}

impl DirectOutput {
    /// `taps[i]` carries net device i's frames (`None`: frames are dropped); `disks[i]` is disk
    /// i; console bytes go to `console`.
    pub fn new(
        taps: Vec<Option<TapWriter>>,
        disks: Vec<Arc<dyn BlockBackend>>,
        console: Box<dyn Write + Send>,
    ) -> Self {
        Self { taps, disks, console, console_error_logged: false }
    }

    fn disk(&self, device: u8) -> Result<&dyn BlockBackend, OutputError> {
        self.disks.get(usize::from(device)).map(|d| d.as_ref()).ok_or(OutputError::NoDisk { device })
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
            Output::DiskWrite { device, offset, data } => {
                let disk = self.disk(device)?;
                if disk.readonly() {
                    return Err(OutputError::ReadOnly { device, path: disk.name() });
                }
                disk.write_at(offset, &data).map_err(|source| OutputError::DiskWrite {
                    device,
                    path: disk.name(),
                    offset,
                    len: data.len(),
                    source,
                })
            }
            Output::DiskFlush { device } => {
                let disk = self.disk(device)?;
                disk.flush().map_err(|source| OutputError::DiskFlush { device, path: disk.name(), source })
            }
            Output::Console { bytes } => {
                self.write_console(&bytes);
                Ok(())
            }
        }
    }

    fn read_disk(&mut self, device: u8, offset: u64, buf: &mut [u8]) -> Result<(), OutputError> {
        let disk = self.disk(device)?;
        disk.read_at(offset, buf).map_err(|source| OutputError::DiskRead {
            device,
            path: disk.name(),
            offset,
            len: buf.len(),
            source,
        })
    }
}

/// Drops every output: a replay's outputs were released by the recording, and a machine without
/// backends (yet) has nowhere to send them. Disk reads fail: a replay takes them from the log, and
/// the event source never asks this stage. Optionally the console still goes to a writer, so
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

    fn read_disk(&mut self, device: u8, _offset: u64, _buf: &mut [u8]) -> Result<(), OutputError> {
        Err(OutputError::NoDisk { device })
    }
}
