//! Snapshots: the whole machine, taken at an exit boundary and resumed elsewhere (`ftvm
//! restore`, and the state a joining backup receives). Written to any `Write` and read from any
//! `Read`, so the same code saves to a file and streams over a socket.
//!
//! Layout (version 2):
//!
//! ```text
//! "FTVMSNAP" | u16 format version |
//! sections: ( u8 tag | u16 structure version | u32 length | postcard bytes )* | u8 0 (end) |
//! guest memory, raw | blake3 (32 bytes) of everything before it
//! ```
//!
//! Each structure carries its own version (the machine description, the position, the vCPU
//! state, the device state), so one can change without the others; a reader names the
//! structure whose version it does not know. A file is written to a temporary name, fsynced and
//! renamed, so a crash never leaves a half snapshot under the real name.

use crate::control::VcpuControl;
use crate::error::{Result, VmmError};
use crate::machine::{Machine, MachineConfig};
use crate::state::{MachineState, VcpuState};
use crate::vcpu::RunPosition;
use devices::BoardState;
use ftlog::MachineDescription;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"FTVMSNAP";
const FORMAT_VERSION: u16 = 2;
/// A section larger than this is corruption, not a snapshot (the real ones are a few KiB).
const MAX_SECTION: u32 = 16 << 20;

/// The structures of a snapshot, each with the version this build writes and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Machine = 1,
    Position = 2,
    Vcpu = 3,
    Board = 4,
}

impl Section {
    const END: u8 = 0;

    fn version(self) -> u16 {
        match self {
            Section::Machine | Section::Position | Section::Vcpu => 1,
            // 2: each disk's pending requests (disk requests complete later, as events).
            Section::Board => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Section::Machine => "machine description",
            Section::Position => "run position",
            Section::Vcpu => "vCPU state",
            Section::Board => "device state",
        }
    }
}

/// Where the run stood, and the world's clock then (a restored machine's clock goes on from it).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct PositionSection {
    position: RunPosition,
    monotonic_ns: u64,
}

/// What a snapshot holds besides memory.
pub struct Snapshot {
    pub machine: MachineDescription,
    pub position: RunPosition,
    /// The world's monotonic clock when the snapshot was taken.
    pub monotonic_ns: u64,
    pub state: MachineState,
}

fn corrupt(what: &str, reason: impl Into<String>) -> VmmError {
    VmmError::Snapshot { path: what.into(), reason: reason.into() }
}

/// Saves the machine at `position` (an exit boundary) to the file `path`.
pub fn save(machine: &mut Machine, position: RunPosition, monotonic_ns: u64, path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| corrupt(&name, e.to_string());
    let temporary = path.with_extension("partial");
    let file =
        crate::input_file::create(&temporary).map_err(|e| corrupt(&temporary.display().to_string(), e.to_string()))?;
    let file = save_to(machine, position, monotonic_ns, BufWriter::with_capacity(1 << 20, file))?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(())
}

/// Writes the machine at `position` to `out`; returns `out`.
pub fn save_to<W: Write>(machine: &mut Machine, position: RunPosition, monotonic_ns: u64, out: W) -> Result<W> {
    // KVM finishes the last exit's I/O only at the next entry: finish it now, so that the state
    // captured is complete.
    let mut out = HashingWriter { inner: out, hasher: blake3::Hasher::new() };
    let io = |e: std::io::Error| corrupt("snapshot stream", e.to_string());
    save_state_to(machine, position, monotonic_ns, &mut out)?;
    out.write_all(machine.ram.as_slice()?).map_err(io)?;
    let digest = out.hasher.finalize();
    let mut inner = out.inner;
    inner.write_all(digest.as_bytes()).map_err(io)?;
    inner.flush().map_err(io)?;
    Ok(inner)
}

/// Writes everything of a snapshot but guest memory (the format header and the sections) to
/// `out`: the state a joining backup receives after the memory it was sent while the guest ran.
pub fn save_state_to<W: Write>(
    machine: &mut Machine,
    position: RunPosition,
    monotonic_ns: u64,
    out: &mut W,
) -> Result<()> {
    // KVM finishes the last exit's I/O only at the next entry: finish it now, so that the state
    // captured is complete.
    machine.complete_pending_io()?;
    let state = machine.capture_state()?;
    let io = |e: std::io::Error| corrupt("snapshot stream", e.to_string());
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io)?;
    write_section(out, Section::Machine, &machine.description())?;
    write_section(out, Section::Position, &PositionSection { position, monotonic_ns })?;
    write_section(out, Section::Vcpu, &state.vcpu)?;
    write_section(out, Section::Board, &state.board)?;
    out.write_all(&[Section::END]).map_err(io)
}

fn write_section<W: Write, T: Serialize>(out: &mut W, section: Section, value: &T) -> Result<()> {
    let bytes =
        postcard::to_allocvec(value).map_err(|e| corrupt("snapshot", format!("encode {}: {e}", section.name())))?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_SECTION)
        .ok_or_else(|| corrupt("snapshot", format!("the {} is too large", section.name())))?;
    let io = |e: std::io::Error| corrupt("snapshot stream", e.to_string());
    out.write_all(&[section as u8]).map_err(io)?;
    out.write_all(&section.version().to_le_bytes()).map_err(io)?;
    out.write_all(&len.to_le_bytes()).map_err(io)?;
    out.write_all(&bytes).map_err(io)
}

/// A snapshot whose header has been read and checked; its memory is still in the stream, read
/// straight into the new machine's memory by [`SnapshotReader::restore`] and verified as it is
/// read.
pub struct SnapshotReader<R: Read> {
    input: HashingReader<R>,
    what: String,
    pub snapshot: Snapshot,
}

/// Opens the snapshot file `path` and reads its header. A file whose length differs from what
/// its header describes is refused before anything is built.
pub fn load(path: &Path) -> Result<SnapshotReader<BufReader<File>>> {
    let name = path.display().to_string();
    let file = crate::input_file::open(path).map_err(|e| corrupt(&name, e.to_string()))?;
    let file_len = file.metadata().map_err(|e| corrupt(&name, e.to_string()))?.len();
    let reader = read_from(BufReader::with_capacity(1 << 20, file), &name)?;
    let expected = reader.input.read + reader.snapshot.machine.memory_size + 32;
    if file_len != expected {
        return Err(corrupt(
            &name,
            format!("{file_len} bytes, but the header describes {expected}: truncated or corrupt"),
        ));
    }
    Ok(reader)
}

/// Reads a snapshot's header from `input` (`what` names it in messages).
pub fn read_from<R: Read>(input: R, what: &str) -> Result<SnapshotReader<R>> {
    let mut input = HashingReader { inner: input, hasher: blake3::Hasher::new(), read: 0 };
    let snapshot = read_state_from(&mut input, what)?;
    Ok(SnapshotReader { input, what: what.to_string(), snapshot })
}

/// Reads what [`save_state_to`] wrote: a snapshot without its memory.
pub fn read_state_from<R: Read>(mut input: R, what: &str) -> Result<Snapshot> {
    let mut prefix = [0u8; 10];
    read_exactly(&mut input, &mut prefix, what, "the format header")?;
    if &prefix[..8] != MAGIC {
        return Err(corrupt(what, "not an ftvm snapshot (bad magic)"));
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            what,
            format!("snapshot format version {version} is not supported (this ftvm reads {FORMAT_VERSION})"),
        ));
    }
    let machine: MachineDescription = read_section(&mut input, Section::Machine, what)?;
    let position: PositionSection = read_section(&mut input, Section::Position, what)?;
    let vcpu: VcpuState = read_section(&mut input, Section::Vcpu, what)?;
    let board: BoardState = read_section(&mut input, Section::Board, what)?;
    let mut end = [0u8; 1];
    read_exactly(&mut input, &mut end, what, "the end of the sections")?;
    if end[0] != Section::END {
        return Err(corrupt(what, format!("unknown section {} after the device state", end[0])));
    }
    Ok(Snapshot {
        machine,
        position: position.position,
        monotonic_ns: position.monotonic_ns,
        state: MachineState { vcpu, board },
    })
}

fn read_section<R: Read, T: DeserializeOwned>(input: &mut R, section: Section, what: &str) -> Result<T> {
    let mut head = [0u8; 7];
    read_exactly(input, &mut head, what, section.name())?;
    if head[0] != section as u8 {
        return Err(corrupt(
            what,
            format!("expected the {} (section {}), found section {}", section.name(), section as u8, head[0]),
        ));
    }
    let version = u16::from_le_bytes([head[1], head[2]]);
    if version != section.version() {
        return Err(corrupt(
            what,
            format!("{} version {version} is not supported (this ftvm reads {})", section.name(), section.version()),
        ));
    }
    let len = u32::from_le_bytes([head[3], head[4], head[5], head[6]]);
    if len > MAX_SECTION {
        return Err(corrupt(what, format!("the {} claims {len} bytes: header length does not fit", section.name())));
    }
    // Grows with the bytes that arrive, not with what the length claims.
    let mut bytes = Vec::new();
    input.by_ref().take(u64::from(len)).read_to_end(&mut bytes).map_err(|e| corrupt(what, e.to_string()))?;
    if bytes.len() != len as usize {
        return Err(corrupt(what, format!("truncated in the {}", section.name())));
    }
    postcard::from_bytes(&bytes).map_err(|e| corrupt(what, format!("the {} does not decode: {e}", section.name())))
}

fn read_exactly<R: Read>(input: &mut R, buf: &mut [u8], what: &str, part: &str) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(what, format!("truncated in {part}")),
        _ => corrupt(what, e.to_string()),
    })
}

impl<R: Read> SnapshotReader<R> {
    /// Builds the machine the snapshot describes (device models, no backends), reads the memory
    /// straight into it, checks the checksum, and loads the vCPU and device state.
    pub fn restore(self, control: VcpuControl) -> Result<(Machine, Snapshot)> {
        let config = MachineConfig::from_description(&self.snapshot.machine);
        let machine = Machine::new(config, control)?;
        self.restore_into(machine)
    }

    /// As [`Self::restore`], into a machine already built from the same description (a backup
    /// built before the state arrived).
    pub fn restore_into(mut self, mut machine: Machine) -> Result<(Machine, Snapshot)> {
        machine.matches(&self.snapshot.machine, &format!("snapshot {}", self.what))?;
        if machine.ram.size != self.snapshot.machine.memory_size {
            return Err(corrupt(&self.what, "the machine's memory size differs from the snapshot's"));
        }
        let what = self.what.clone();
        let memory = machine.ram.as_mut_slice()?;
        for chunk in memory.chunks_mut(8 << 20) {
            read_exactly(&mut self.input, chunk, &what, "guest memory")?;
        }
        let digest = self.input.hasher.finalize();
        let mut trailer = [0u8; 32];
        self.input.inner.read_exact(&mut trailer).map_err(|e| corrupt(&what, format!("checksum: {e}")))?;
        if digest.as_bytes() != &trailer {
            return Err(corrupt(&what, "checksum mismatch: the file is corrupt"));
        }
        machine.restore_state(&self.snapshot.state)?;
        Ok((machine, self.snapshot))
    }
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

struct HashingReader<R: Read> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
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
        let mut bytes = b"FTVMSNAP\x02\x00".to_vec();
        bytes.extend_from_slice(&[1, 1, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(error_of(&bytes).contains("does not fit"));
        let mut bytes = b"FTVMSNAP\x02\x00".to_vec();
        bytes.extend_from_slice(&[1, 7, 0, 0, 0, 0, 0]);
        assert!(error_of(&bytes).contains("machine description version 7"), "{}", error_of(&bytes));
        let mut bytes = b"FTVMSNAP\x02\x00".to_vec();
        bytes.extend_from_slice(&[1, 1, 0, 100, 0, 0, 0, 1, 2]);
        assert!(error_of(&bytes).contains("truncated"));
    }
}
