//! The log header: which guest, booted how, recorded with which parameters.

use super::codec::{read_exact_into, read_full, Get, Put};
use super::{length_check, Corruption, LogError, MAX_HEADER_LEN};
use crate::machine::MachineDescription;
use std::io::Read;

/// Identifies an ftvm log.
pub const MAGIC: [u8; 8] = *b"FTVMLOG\0";

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes before the header body: magic, version, length, length check.
const PREFIX_LEN: usize = 8 + 2 + 4 + 1;

/// What a replayer needs to start the same guest the same way, and the recording parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// The machine the log was recorded on.
    pub machine: MachineDescription,
    /// K: an ExitDigest record is written every K exits. Never 0.
    pub exit_digest_interval: u32,
    /// Deterministic exits before the first one in this log: 0 for a boot, the snapshot's
    /// position for a run resumed from one (the first exit in the log is `Exit(start_exits + 1)`).
    pub start_exits: u64,
    /// When recording started, nanoseconds since the Unix epoch (information only: replay takes
    /// all time from the clock records).
    pub created_unix_ns: u64,
}

impl LogHeader {
    /// The complete encoded header, framing included. Fails if the strings make it larger than
    /// a reader accepts ([`MAX_HEADER_LEN`]).
    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        let machine = &self.machine;
        let mut out = Vec::with_capacity(PREFIX_LEN + 128 + machine.cmdline.len());
        out.put_bytes(&MAGIC);
        out.put_u16(FORMAT_VERSION);
        out.put_u32(0); // length, patched below
        out.put_u8(0); // length check, patched below
        out.put_bytes(&machine.image_digest);
        out.put_u64(machine.memory_size);
        out.put_u64(machine.preemption_bound_ns);
        out.put_u32(self.exit_digest_interval);
        out.put_u64(self.created_unix_ns);
        out.put_u64(self.start_exits);
        put_string(&mut out, &machine.cmdline);
        match &machine.kernel_path {
            Some(path) => {
                out.put_u8(1);
                put_string(&mut out, path);
            }
            None => out.put_u8(0),
        }
        // The devices go last, as an opaque tail: a log of a machine without devices ends here.
        out.put_bytes(&machine.encode_devices());
        let body_len = out.len() - PREFIX_LEN;
        let len = match u32::try_from(body_len) {
            Ok(len) if len <= MAX_HEADER_LEN => len,
            _ => return Err(LogError::TooLarge { offset: 0, len: body_len as u64, max: MAX_HEADER_LEN }),
        };
        out[10..14].copy_from_slice(&len.to_le_bytes());
        out[14] = length_check(len);
        let crc = crc32c::crc32c(&out);
        out.put_u32(crc);
        Ok(out)
    }

    /// Reads and validates a header from the start of a log; returns it with its encoded size.
    pub fn read_from<R: Read>(reader: &mut R) -> Result<(LogHeader, u64), LogError> {
        let mut unit = vec![0u8; PREFIX_LEN];
        let got = read_full(reader, &mut unit[..8]).map_err(|e| LogError::io(0, e))?;
        if let Some(i) = (0..got).find(|&i| unit[i] != MAGIC[i]) {
            return Err(LogError::BadMagic { offset: i as u64 });
        }
        if got < 8 {
            return Err(LogError::Truncated { offset: 0 });
        }
        let got = read_full(reader, &mut unit[8..]).map_err(|e| LogError::io(8, e))?;
        if got < PREFIX_LEN - 8 {
            return Err(LogError::Truncated { offset: 0 });
        }
        let corrupt = |reason| LogError::Corrupt { offset: 0, reason };
        let len = u32::from_le_bytes([unit[10], unit[11], unit[12], unit[13]]);
        if unit[14] != length_check(len) {
            return Err(corrupt(Corruption::LengthCheck));
        }
        if len == 0 || len > MAX_HEADER_LEN {
            return Err(corrupt(Corruption::BadLength { len, max: MAX_HEADER_LEN }));
        }
        let complete =
            read_exact_into(reader, len as usize + 4, &mut unit).map_err(|e| LogError::io(PREFIX_LEN as u64, e))?;
        if !complete {
            return Err(LogError::Truncated { offset: 0 });
        }
        let (covered, crc) = unit.split_at(unit.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(covered);
        if stored != computed {
            return Err(corrupt(Corruption::Checksum { stored, computed }));
        }
        // Only now is the version trusted: a damaged version byte is corruption, not a new format.
        let version = u16::from_le_bytes([unit[8], unit[9]]);
        if version != FORMAT_VERSION {
            return Err(LogError::UnsupportedVersion { offset: 8, found: version });
        }
        let header = decode_body(&covered[PREFIX_LEN..]).map_err(corrupt)?;
        Ok((header, unit.len() as u64))
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Saturating: an over-long string makes the header exceed MAX_HEADER_LEN, rejected above.
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_bytes(s.as_bytes());
}

fn decode_body(body: &[u8]) -> Result<LogHeader, Corruption> {
    let mut get = Get::new(body);
    let image_digest = get.array("image digest")?;
    let memory_size = get.u64("memory size")?;
    let preemption_bound_ns = get.u64("preemption bound")?;
    let exit_digest_interval = get.u32("exit digest interval")?;
    if exit_digest_interval == 0 {
        return Err(Corruption::BadField { field: "exit digest interval", value: 0 });
    }
    let created_unix_ns = get.u64("creation time")?;
    let start_exits = get.u64("start exits")?;
    let cmdline = get.string("command line")?;
    let kernel_path = match get.u8("kernel path flag")? {
        0 => None,
        1 => Some(get.string("kernel path")?),
        other => return Err(Corruption::BadField { field: "kernel path flag", value: other.into() }),
    };
    let devices = MachineDescription::decode_devices(get.rest()).map_err(|_| Corruption::BadDevices)?;
    Ok(LogHeader {
        machine: MachineDescription { image_digest, memory_size, cmdline, kernel_path, preemption_bound_ns, devices },
        exit_digest_interval,
        created_unix_ns,
        start_exits,
    })
}
