//! The records of a log: everything the world chose, each at its landmark, plus the checks.

use super::codec::{Get, Put};
use super::Corruption;
use devices::{ClockId, InputKind, Landmark, WorldEvent};
use std::fmt;

/// The kind tag of a record, its first body byte. 0 is never valid, so a zeroed region is not a
/// record. New kinds (received frames, disk completions, outputs) take new tags; a reader of this
/// version reports an unknown tag as corruption at that record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    ExitDigest = 1,
    Interrupt = 2,
    ClockRead = 3,
    World = 4,
    Checkpoint = 5,
    End = 6,
    Input = 7,
    SnapshotMark = 8,
}

impl RecordKind {
    fn from_tag(tag: u8) -> Result<Self, Corruption> {
        Ok(match tag {
            1 => RecordKind::ExitDigest,
            2 => RecordKind::Interrupt,
            3 => RecordKind::ClockRead,
            4 => RecordKind::World,
            5 => RecordKind::Checkpoint,
            6 => RecordKind::End,
            7 => RecordKind::Input,
            8 => RecordKind::SnapshotMark,
            other => return Err(Corruption::UnknownKind(other)),
        })
    }
}

/// How a recorded run ended; the last record of a complete log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    /// Deterministic exits executed in total.
    pub exits: u64,
    /// The running exit digest after the last exit, so that the final stretch (fewer than K
    /// exits since the last ExitDigest) is checked too.
    pub exit_digest: [u8; 32],
    /// The guest's exit code (power-off code, or the VMM's code for other ends).
    pub exit_code: u32,
    /// Digest of memory, vCPU and device state at the end, if the VMM computed one.
    pub state_digest: Option<[u8; 32]>,
}

/// One log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The running digest over the signatures of the exits since the last restart of the
    /// digest (the log's start, `start_exits + 1`, or the last [`Record::SnapshotMark`]) up to
    /// `exits`; its landmark is `Exit(exits)`. Written when `exits` is a multiple of K.
    ExitDigest { exits: u64, digest: [u8; 32] },
    /// An interrupt injected with KVM_INTERRUPT at `at`.
    Interrupt { at: Landmark, vector: u8 },
    /// The value a world-dependent clock read returned at `at`.
    ClockRead { at: Landmark, clock: ClockId, value: u64 },
    /// Something the world did (a poll result), applied to the board at `at`.
    World { at: Landmark, event: WorldEvent },
    /// Opaque VMM state to load at `at` instead of executing up to it (a preemption's delta
    /// checkpoint, see [`crate::DeltaCheckpoint`]).
    Checkpoint { at: Landmark, data: Vec<u8> },
    /// The run ended.
    End(End),
    /// The VMM saved a snapshot of the machine here: after exit `exits` was handled (every
    /// record that handling produced precedes the mark), before the world's events and
    /// interrupts at `Exit(exits)` (which follow it). The running exit digest restarts here:
    /// later ExitDigest records and the End cover only exits after `exits`. Its landmark is
    /// `Exit(exits)`.
    SnapshotMark { exits: u64 },
    /// Bytes a device took from the world synchronously at `at` (e.g. a disk read's data).
    Input { at: Landmark, kind: InputKind, data: Vec<u8> },
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::ExitDigest { .. } => RecordKind::ExitDigest,
            Record::Interrupt { .. } => RecordKind::Interrupt,
            Record::ClockRead { .. } => RecordKind::ClockRead,
            Record::World { .. } => RecordKind::World,
            Record::Checkpoint { .. } => RecordKind::Checkpoint,
            Record::End(_) => RecordKind::End,
            Record::Input { .. } => RecordKind::Input,
            Record::SnapshotMark { .. } => RecordKind::SnapshotMark,
        }
    }

    /// The landmark the record belongs to; `None` for End, which follows every landmark.
    pub fn landmark(&self) -> Option<Landmark> {
        match self {
            Record::ExitDigest { exits, .. } | Record::SnapshotMark { exits } => Some(Landmark::Exit(*exits)),
            Record::Interrupt { at, .. }
            | Record::ClockRead { at, .. }
            | Record::World { at, .. }
            | Record::Checkpoint { at, .. }
            | Record::Input { at, .. } => Some(*at),
            Record::End(_) => None,
        }
    }

    /// Appends the kind tag and the fixed part of the body to `out` and returns the variable
    /// tail (a checkpoint's data) for the caller to write after it, so that large payloads are
    /// never copied into the encoding buffer.
    pub(crate) fn encode_head<'a>(&'a self, out: &mut Vec<u8>) -> &'a [u8] {
        out.put_u8(self.kind() as u8);
        match self {
            Record::ExitDigest { exits, digest } => {
                out.put_u64(*exits);
                out.put_bytes(digest);
            }
            Record::Interrupt { at, vector } => {
                out.put_landmark(*at);
                out.put_u8(*vector);
            }
            Record::ClockRead { at, clock, value } => {
                out.put_landmark(*at);
                out.put_clock(*clock);
                out.put_u64(*value);
            }
            Record::World { at, event } => {
                out.put_landmark(*at);
                out.put_world_event(event);
            }
            Record::Checkpoint { at, data } => {
                out.put_landmark(*at);
                return data;
            }
            Record::Input { at, kind, data } => {
                out.put_landmark(*at);
                out.put_input_kind(*kind);
                return data;
            }
            Record::SnapshotMark { exits } => out.put_u64(*exits),
            Record::End(end) => {
                out.put_u64(end.exits);
                out.put_bytes(&end.exit_digest);
                out.put_u32(end.exit_code);
                match &end.state_digest {
                    Some(digest) => {
                        out.put_u8(1);
                        out.put_bytes(digest);
                    }
                    None => out.put_u8(0),
                }
            }
        }
        &[]
    }

    /// Decodes a record from its kind tag and body (framing already checked).
    pub(crate) fn decode(unit: &[u8]) -> Result<Record, Corruption> {
        let mut get = Get::new(unit);
        let record = match RecordKind::from_tag(get.u8("kind")?)? {
            RecordKind::ExitDigest => Record::ExitDigest { exits: get.u64("exits")?, digest: get.array("digest")? },
            RecordKind::Interrupt => Record::Interrupt { at: get.landmark()?, vector: get.u8("vector")? },
            RecordKind::ClockRead => {
                Record::ClockRead { at: get.landmark()?, clock: get.clock()?, value: get.u64("value")? }
            }
            RecordKind::World => Record::World { at: get.landmark()?, event: get.world_event()? },
            RecordKind::Checkpoint => Record::Checkpoint { at: get.landmark()?, data: get.rest().to_vec() },
            RecordKind::Input => {
                Record::Input { at: get.landmark()?, kind: get.input_kind()?, data: get.rest().to_vec() }
            }
            RecordKind::SnapshotMark => Record::SnapshotMark { exits: get.u64("exits")? },
            RecordKind::End => {
                let exits = get.u64("exits")?;
                let exit_digest = get.array("exit digest")?;
                let exit_code = get.u32("exit code")?;
                let state_digest = match get.u8("state digest flag")? {
                    0 => None,
                    1 => Some(get.array("state digest")?),
                    other => return Err(Corruption::BadField { field: "state digest flag", value: other.into() }),
                };
                Record::End(End { exits, exit_digest, exit_code, state_digest })
            }
        };
        get.finish()?;
        Ok(record)
    }
}

/// A short hex prefix of a digest, for messages.
pub(crate) fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::ExitDigest { exits, digest } => {
                write!(f, "exit digest {} at Exit({exits})", short_hex(digest))
            }
            Record::Interrupt { at, vector } => write!(f, "interrupt {vector:#04x} at {at}"),
            Record::ClockRead { at, clock, value } => {
                write!(f, "{clock:?} clock read = {value} at {at}")
            }
            Record::World { at, event: WorldEvent::NetFrame { device, frame } } => {
                write!(f, "frame of {} bytes for net device {device} at {at}", frame.len())
            }
            Record::World { at, event: WorldEvent::DiskDone { device, id, status, data } } => {
                write!(f, "completion of request {id} of disk {device} (status {status}, {} bytes) at {at}", data.len())
            }
            Record::World { at, event } => write!(f, "world event {event:?} at {at}"),
            Record::Input { at, kind, data } => {
                write!(f, "{kind:?} input of {} bytes at {at}", data.len())
            }
            Record::Checkpoint { at, data } => {
                write!(f, "checkpoint of {} bytes at {at}", data.len())
            }
            Record::SnapshotMark { exits } => write!(f, "snapshot mark at Exit({exits})"),
            Record::End(end) => write!(
                f,
                "end after {} exits (exit code {}, exit digest {})",
                end.exits,
                end.exit_code,
                short_hex(&end.exit_digest)
            ),
        }
    }
}

/// The order of landmarks in a log: `Exit(n) < Preempt(n) < Exit(n + 1)`. (Landmark's derived
/// `Ord` compares the variant first, which is not the execution order.)
pub fn landmark_key(at: Landmark) -> (u64, u8) {
    match at {
        Landmark::Exit(n) => (n, 0),
        Landmark::Preempt(n) => (n, 1),
    }
}
