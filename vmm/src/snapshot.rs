//! Snapshots: the whole machine in one file, taken at an exit boundary and resumed in a new
//! process with `ftvm restore`.
//!
//! Layout: `FTVMSNAP` magic, u16 version, u32 length + postcard header ([`SnapshotHeader`]:
//! configuration, position, clock, vCPU and device state), then guest memory raw, then the
//! 32-byte blake3 of everything before it. The file is written to a temporary name, fsynced and
//! renamed, so a crash never leaves a half snapshot under the real name.

use crate::error::{Result, VmmError};
use crate::machine::{DeviceSetup, KernelSource, Machine, MachineConfig};
use crate::state::MachineState;
use crate::vcpu::RunPosition;
use crate::virtio_setup::DeviceDescription;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"FTVMSNAP";
const VERSION: u16 = 1;
/// A header larger than this is corruption, not a snapshot (the real one is a few KiB).
const MAX_HEADER: u32 = 16 << 20;

/// What a snapshot holds besides memory.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The kernel file, or None for our embedded guest.
    pub kernel: Option<PathBuf>,
    pub image_digest: [u8; 32],
    pub memory_mib: u64,
    pub cmdline: String,
    pub preempt_bound_us: u64,
    pub position: RunPosition,
    /// The world's monotonic clock when the snapshot was taken.
    pub monotonic_ns: u64,
    /// The virtio devices; a restore opens the same TAPs and disk files again.
    pub devices: Vec<DeviceDescription>,
    pub state: MachineState,
}

/// A snapshot opened from disk: its header read and checked, its memory still in the file
/// (read straight into guest memory by [`restore`], and verified as it is read).
pub struct Snapshot {
    pub header: SnapshotHeader,
    path: PathBuf,
    /// Where guest memory starts in the file.
    memory_offset: u64,
    /// The hash of everything before the memory.
    prefix_hash: blake3::Hasher,
}

impl Snapshot {
    /// The configuration to rebuild the machine with.
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            kernel: self.header.kernel.clone().map_or(KernelSource::Embedded, KernelSource::File),
            memory_mib: self.header.memory_mib,
            cmdline: self.header.cmdline.clone(),
            initrd: None,
            preempt_bound: Duration::from_micros(self.header.preempt_bound_us),
            dirty_logging: false,
            devices: DeviceSetup::reopen(&self.header.devices),
        }
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> VmmError {
    VmmError::Snapshot { path: path.to_path_buf(), reason: reason.into() }
}

/// Saves the machine at `position` (an exit boundary) to `path`.
pub fn save(machine: &mut Machine, position: RunPosition, monotonic_ns: u64, path: &Path) -> Result<()> {
    let header = SnapshotHeader {
        kernel: match &machine.config.kernel {
            KernelSource::File(path) => Some(path.clone()),
            KernelSource::Embedded => None,
        },
        image_digest: machine.image_digest,
        memory_mib: machine.config.memory_mib,
        cmdline: machine.config.cmdline.clone(),
        preempt_bound_us: machine.config.preempt_bound.as_micros() as u64,
        position,
        monotonic_ns,
        devices: machine.devices.clone(),
        state: machine.capture_state()?,
    };
    let encoded = postcard::to_allocvec(&header).map_err(|e| corrupt(path, format!("encode header: {e}")))?;
    let header_len = u32::try_from(encoded.len()).map_err(|_| corrupt(path, "header too large"))?;

    let temporary = path.with_extension("partial");
    let file = crate::input_file::create(&temporary).map_err(|e| corrupt(&temporary, e.to_string()))?;
    let mut out = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new() };
    let io = |e: std::io::Error| corrupt(path, e.to_string());
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
    out.write_all(&header_len.to_le_bytes()).map_err(io)?;
    out.write_all(&encoded).map_err(io)?;
    out.write_all(machine.ram.as_slice()?).map_err(io)?;
    let digest = out.hasher.finalize();
    let mut writer = out.inner;
    writer.write_all(digest.as_bytes()).map_err(io)?;
    let file = writer.into_inner().map_err(|e| corrupt(path, e.to_string()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}

const FIXED: usize = 8 + 2 + 4;

/// Opens a snapshot and checks its header; the memory and the whole-file checksum are checked
/// by [`restore`] as it reads them.
pub fn load(path: &Path) -> Result<Snapshot> {
    let mut file = crate::input_file::open(path).map_err(|e| corrupt(path, e.to_string()))?;
    let file_len = file.metadata().map_err(|e| corrupt(path, e.to_string()))?.len();
    let mut prefix = vec![0u8; FIXED];
    let got = read_up_to(&mut file, &mut prefix).map_err(|e| corrupt(path, e.to_string()))?;
    let header_len = check_prefix(&prefix[..got], file_len).map_err(|reason| corrupt(path, reason))?;
    prefix.resize(FIXED + header_len, 0);
    file.read_exact(&mut prefix[FIXED..]).map_err(|e| corrupt(path, format!("header: {e}")))?;
    let header: SnapshotHeader =
        postcard::from_bytes(&prefix[FIXED..]).map_err(|e| corrupt(path, format!("header does not decode: {e}")))?;
    let memory_offset = prefix.len() as u64;
    let expected = memory_offset + (header.memory_mib << 20) + 32;
    if file_len != expected {
        return Err(corrupt(
            path,
            format!("{file_len} bytes, but the header describes {expected}: truncated or corrupt"),
        ));
    }
    let mut prefix_hash = blake3::Hasher::new();
    prefix_hash.update(&prefix);
    Ok(Snapshot { header, path: path.to_path_buf(), memory_offset, prefix_hash })
}

/// Checks magic, version and header length; returns the header length.
fn check_prefix(prefix: &[u8], file_len: u64) -> std::result::Result<usize, String> {
    if file_len < (FIXED + 32) as u64 || prefix.len() < FIXED {
        return Err(format!("truncated: {file_len} bytes is shorter than any snapshot"));
    }
    if &prefix[..8] != MAGIC {
        return Err("not an ftvm snapshot (bad magic)".into());
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != VERSION {
        return Err(format!("snapshot format version {version} is not supported (this ftvm reads {VERSION})"));
    }
    let header_len = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]);
    if header_len > MAX_HEADER || (FIXED as u64 + u64::from(header_len) + 32) > file_len {
        return Err(format!("header length {header_len} does not fit in the file"));
    }
    Ok(header_len as usize)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads the snapshot's memory straight into `memory`, then checks the whole-file checksum.
fn read_memory(snapshot: &Snapshot, memory: &mut [u8]) -> Result<()> {
    use std::io::Seek;
    let path = &snapshot.path;
    let io = |e: std::io::Error| corrupt(path, e.to_string());
    let mut file = crate::input_file::open(path).map_err(|e| corrupt(path, e.to_string()))?;
    file.seek(std::io::SeekFrom::Start(snapshot.memory_offset)).map_err(io)?;
    let mut hasher = snapshot.prefix_hash.clone();
    for chunk in memory.chunks_mut(8 << 20) {
        file.read_exact(chunk).map_err(io)?;
        hasher.update(chunk);
    }
    let mut trailer = [0u8; 32];
    file.read_exact(&mut trailer).map_err(io)?;
    if hasher.finalize().as_bytes() != &trailer {
        return Err(corrupt(path, "checksum mismatch: the file is corrupt"));
    }
    Ok(())
}

/// Rebuilds a machine from a snapshot: a fresh VM with the snapshot's memory and state, its
/// devices on the backends they had.
pub fn restore(snapshot: &Snapshot, serial_out: Box<dyn Write + Send>) -> Result<Machine> {
    restore_with(snapshot, snapshot.machine_config(), serial_out)
}

/// Rebuilds a machine from a snapshot for a replay: the same devices, without backends.
pub fn restore_for_replay(snapshot: &Snapshot, serial_out: Box<dyn Write + Send>) -> Result<Machine> {
    let config =
        MachineConfig { devices: DeviceSetup::Replay(snapshot.header.devices.clone()), ..snapshot.machine_config() };
    restore_with(snapshot, config, serial_out)
}

fn restore_with(snapshot: &Snapshot, config: MachineConfig, serial_out: Box<dyn Write + Send>) -> Result<Machine> {
    let mut machine = Machine::new(config, serial_out)?;
    if machine.image_digest != snapshot.header.image_digest {
        return Err(VmmError::Snapshot {
            path: snapshot.header.kernel.clone().unwrap_or_else(|| "<ftvm guest>".into()),
            reason: "the kernel image is not the one the snapshot was taken with".into(),
        });
    }
    read_memory(snapshot, machine.ram.as_mut_slice()?)?;
    machine.restore_state(&snapshot.header.state)?;
    Ok(machine)
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.snap");
        std::fs::write(&path, bytes).expect("write");
        match load(&path) {
            Ok(_) => panic!("garbage opened as a snapshot"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        assert!(error_of(b"").contains("truncated"));
        assert!(error_of(&[0u8; 100]).contains("bad magic"));
        let mut bytes = b"FTVMSNAP\x09\x00".to_vec();
        bytes.extend_from_slice(&[0; 40]);
        assert!(error_of(&bytes).contains("version 9"));
        let mut bytes = b"FTVMSNAP\x01\x00".to_vec();
        bytes.extend_from_slice(&[0xff; 40]);
        assert!(error_of(&bytes).contains("does not fit"));
    }
}
