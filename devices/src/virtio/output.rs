//! The output stage: the one door through which the guest's effects leave the VM.
//!
//! Transmitted frames and disk writes are handed to an [`OutputStage`] at the exit that produced
//! them, stamped with its [`Landmark`]. [`DirectOutput`] releases them at once (a VM without a
//! backup); the FT output rule will hold them until the backup has acknowledged the log up to
//! that landmark.
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

use super::blk_file::DiskFile;
use super::tap::TapWriter;
use crate::event::Landmark;
use std::path::PathBuf;
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
}

/// A backend failure that the VM cannot survive (see the module documentation).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing {len} bytes at offset {offset} of disk {device} ({path}): {source}")]
    DiskWrite { device: u8, path: PathBuf, offset: u64, len: usize, source: std::io::Error },
    #[error("flushing disk {device} ({path}): {source}")]
    DiskFlush { device: u8, path: PathBuf, source: std::io::Error },
    #[error("reading {len} bytes at offset {offset} of disk {device} ({path}): {source}")]
    DiskRead { device: u8, path: PathBuf, offset: u64, len: usize, source: std::io::Error },
    #[error("disk {device} is read-only ({path}), yet a write reached it")]
    ReadOnly { device: u8, path: PathBuf },
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

/// Releases every output at once: frames to their TAP, writes to their disk file.
pub struct DirectOutput {
    taps: Vec<Option<TapWriter>>,
    disks: Vec<Arc<DiskFile>>,
}

impl DirectOutput {
    /// `taps[i]` carries net device i's frames (`None`: frames are dropped); `disks[i]` is disk i.
    pub fn new(taps: Vec<Option<TapWriter>>, disks: Vec<Arc<DiskFile>>) -> Self {
        Self { taps, disks }
    }

    fn disk(&self, device: u8) -> Result<&DiskFile, OutputError> {
        self.disks.get(usize::from(device)).map(|d| d.as_ref()).ok_or(OutputError::NoDisk { device })
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
                    return Err(OutputError::ReadOnly { device, path: disk.path().to_owned() });
                }
                disk.write_at(offset, &data).map_err(|source| OutputError::DiskWrite {
                    device,
                    path: disk.path().to_owned(),
                    offset,
                    len: data.len(),
                    source,
                })
            }
            Output::DiskFlush { device } => {
                let disk = self.disk(device)?;
                disk.flush().map_err(|source| OutputError::DiskFlush { device, path: disk.path().to_owned(), source })
            }
        }
    }

    fn read_disk(&mut self, device: u8, offset: u64, buf: &mut [u8]) -> Result<(), OutputError> {
        let disk = self.disk(device)?;
        disk.read_at(offset, buf).map_err(|source| OutputError::DiskRead {
            device,
            path: disk.path().to_owned(),
            offset,
            len: buf.len(),
            source,
        })
    }
}
