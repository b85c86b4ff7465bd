//! Held outputs carried from the primary to the backup at a resync.
//!
//! A resync gives the backup a machine that is past every output the primary emitted before the
//! resync's landmark, and some of those may still be held on the primary (nothing leaves while
//! the state is copied). If the primary died before releasing them, a backup that went live from
//! that state would have no copy of them to issue again: a console line or a disk write would
//! be lost. So the primary sends what it holds with the resync, and the backup's stage holds it,
//! with the primary's stamps, exactly as if its own replay had produced it.
//!
//! ```text
//! entry: position u64 | landmark kind u8 (0 Exit, 1 Preempt) | landmark n u64 | output
//! output: 0 NetFrame: device u8 | len u32 | frame
//!         1 DiskWrite: device u8 | id u64 | offset u64 | len u32 | data
//!         2 DiskFlush: device u8 | id u64
//!         3 Console: len u32 | bytes
//! ```
//! Little-endian; the entries follow one another with nothing between them. Every length is
//! checked against the bytes left before anything is allocated.

use super::HeldOutput;
use crate::format::codec::{Get, Put};
use devices::virtio::Output;
use devices::Landmark;

/// What is wrong with a carried list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CarryError {
    #[error("the held outputs end in the middle of an entry at byte {0}")]
    Truncated(usize),
    #[error("unknown landmark kind {kind} at byte {at}")]
    LandmarkKind { kind: u8, at: usize },
    #[error("unknown output kind {kind} at byte {at}")]
    OutputKind { kind: u8, at: usize },
}

/// The held outputs as bytes, in order.
pub fn encode(held: &[HeldOutput]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in held {
        out.put_u64(entry.position);
        out.put_landmark(entry.at);
        match &entry.output {
            Output::NetFrame { device, frame } => {
                out.put_bytes(&[0, *device]);
                put_payload(&mut out, frame);
            }
            Output::DiskWrite { device, id, offset, data } => {
                out.put_bytes(&[1, *device]);
                out.put_u64(*id);
                out.put_u64(*offset);
                put_payload(&mut out, data);
            }
            Output::DiskFlush { device, id } => {
                out.put_bytes(&[2, *device]);
                out.put_u64(*id);
            }
            Output::Console { bytes } => {
                out.put_u8(3);
                put_payload(&mut out, bytes);
            }
        }
    }
    out
}

fn put_payload(out: &mut Vec<u8>, bytes: &[u8]) {
    // An output's payload is bounded far below 4 GiB (a frame, one disk request, console bytes).
    out.put_u32(bytes.len() as u32);
    out.put_bytes(bytes);
}

/// The held outputs `bytes` encodes, or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Vec<HeldOutput>, CarryError> {
    let mut get = Get::new(bytes);
    let mut held = Vec::new();
    while get.offset() < bytes.len() {
        held.push(entry(&mut get)?);
    }
    Ok(held)
}

/// One entry; a field that runs past the end is named by the byte it started at.
fn entry(get: &mut Get) -> Result<HeldOutput, CarryError> {
    // A failed read leaves the cursor where the field began.
    let truncated = |get: &Get| CarryError::Truncated(get.offset());
    let u8 = |get: &mut Get| get.u8("held output").map_err(|_| truncated(get));
    let u64 = |get: &mut Get| get.u64("held output").map_err(|_| truncated(get));
    let payload = |get: &mut Get| -> Result<Vec<u8>, CarryError> {
        let len = get.u32("held output").map_err(|_| truncated(get))?;
        Ok(get.take(len as usize, "held output").map_err(|_| truncated(get))?.to_vec())
    };
    let position = u64(get)?;
    let kind_at = get.offset();
    let at = match (u8(get)?, u64(get)?) {
        (0, n) => Landmark::Exit(n),
        (1, n) => Landmark::Preempt(n),
        (kind, _) => return Err(CarryError::LandmarkKind { kind, at: kind_at }),
    };
    let output_at = get.offset();
    let output = match u8(get)? {
        0 => Output::NetFrame { device: u8(get)?, frame: payload(get)? },
        1 => Output::DiskWrite { device: u8(get)?, id: u64(get)?, offset: u64(get)?, data: payload(get)? },
        2 => Output::DiskFlush { device: u8(get)?, id: u64(get)? },
        3 => Output::Console { bytes: payload(get)? },
        kind => return Err(CarryError::OutputKind { kind, at: output_at }),
    };
    Ok(HeldOutput { position, at, output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn landmark() -> impl Strategy<Value = Landmark> {
        prop_oneof![any::<u64>().prop_map(Landmark::Exit), any::<u64>().prop_map(Landmark::Preempt)]
    }

    fn output() -> impl Strategy<Value = Output> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (any::<u8>(), bytes()).prop_map(|(device, frame)| Output::NetFrame { device, frame }),
            (any::<u8>(), any::<u64>(), any::<u64>(), bytes())
                .prop_map(|(device, id, offset, data)| Output::DiskWrite { device, id, offset, data }),
            (any::<u8>(), any::<u64>()).prop_map(|(device, id)| Output::DiskFlush { device, id }),
            bytes().prop_map(|bytes| Output::Console { bytes }),
        ]
    }

    fn held() -> impl Strategy<Value = Vec<HeldOutput>> {
        let entry =
            (any::<u64>(), landmark(), output()).prop_map(|(position, at, output)| HeldOutput { position, at, output });
        proptest::collection::vec(entry, 0..12)
    }

    proptest! {
        #[test]
        fn held_outputs_come_back_as_they_were_sent(held in held()) {
            prop_assert_eq!(decode(&encode(&held)), Ok(held));
        }

        #[test]
        fn a_cut_list_is_an_error_not_a_shorter_list(held in held(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&held);
            prop_assume!(!bytes.is_empty());
            let cut = cut.index(bytes.len());
            // A cut at an entry's boundary is a valid shorter list; anywhere else must fail.
            let boundaries: Vec<usize> =
                (0..=held.len()).map(|n| encode(&held[..n]).len()).collect();
            let decoded = decode(&bytes[..cut]);
            if boundaries.contains(&cut) {
                prop_assert!(decoded.is_ok());
            } else {
                prop_assert!(matches!(decoded, Err(CarryError::Truncated(_))), "{:?}", decoded);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating_it() {
        let mut bytes =
            encode(&[HeldOutput { position: 1, at: Landmark::Exit(1), output: Output::Console { bytes: vec![b'x'] } }]);
        let len_at = bytes.len() - 5;
        bytes[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(CarryError::Truncated(len_at + 4)));
    }
}
