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
        out.extend_from_slice(&entry.position.to_le_bytes());
        let (kind, n) = match entry.at {
            Landmark::Exit(n) => (0u8, n),
            Landmark::Preempt(n) => (1u8, n),
        };
        out.push(kind);
        out.extend_from_slice(&n.to_le_bytes());
        match &entry.output {
            Output::NetFrame { device, frame } => {
                out.extend_from_slice(&[0, *device]);
                put_bytes(&mut out, frame);
            }
            Output::DiskWrite { device, id, offset, data } => {
                out.extend_from_slice(&[1, *device]);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                put_bytes(&mut out, data);
            }
            Output::DiskFlush { device, id } => {
                out.extend_from_slice(&[2, *device]);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Output::Console { bytes } => {
                out.push(3);
                put_bytes(&mut out, bytes);
            }
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // An output's payload is bounded far below 4 GiB (a frame, one disk request, console bytes).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The held outputs `bytes` encodes, or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Vec<HeldOutput>, CarryError> {
    let mut cursor = Cursor { bytes, at: 0 };
    let mut held = Vec::new();
    while cursor.at < bytes.len() {
        let position = cursor.u64()?;
        let kind_at = cursor.at;
        let at = match (cursor.u8()?, cursor.u64()?) {
            (0, n) => Landmark::Exit(n),
            (1, n) => Landmark::Preempt(n),
            (kind, _) => return Err(CarryError::LandmarkKind { kind, at: kind_at }),
        };
        let output_at = cursor.at;
        let output = match cursor.u8()? {
            0 => Output::NetFrame { device: cursor.u8()?, frame: cursor.bytes()? },
            1 => Output::DiskWrite {
                device: cursor.u8()?,
                id: cursor.u64()?,
                offset: cursor.u64()?,
                data: cursor.bytes()?,
            },
            2 => Output::DiskFlush { device: cursor.u8()?, id: cursor.u64()? },
            3 => Output::Console { bytes: cursor.bytes()? },
            kind => return Err(CarryError::OutputKind { kind, at: output_at }),
        };
        held.push(HeldOutput { position, at, output });
    }
    Ok(held)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CarryError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(CarryError::Truncated(self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, CarryError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, CarryError> {
        let at = self.at;
        let word = self.take(8)?.try_into().map_err(|_| CarryError::Truncated(at))?;
        Ok(u64::from_le_bytes(word))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, CarryError> {
        let at = self.at;
        let len: [u8; 4] = self.take(4)?.try_into().map_err(|_| CarryError::Truncated(at))?;
        Ok(self.take(u32::from_le_bytes(len) as usize)?.to_vec())
    }
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
