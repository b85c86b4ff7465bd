//! Fuzzing the logging channel's decoders (issue 15, point 5): the frame decoder
//! (`wire::decode_frame`, and `FrameReader` on a stream that trickles), the handshake's Hello
//! body, and the state transfer a joining backup reads (`TransferReader`), with arbitrary bytes
//! and with structured mutations of valid encodings. Mutations are applied to the raw stream
//! (so the length check and the CRC catch them) and also behind a re-sealed frame (length,
//! length check and CRC recomputed), so that the typed body decoders see damaged bodies too.
//!
//! Properties: an error or a clean value, never a panic; a message that decodes re-encodes to
//! exactly the bytes it came from; no single allocation beyond a bound set by the bytes that
//! arrived (the reader's 64 KiB read buffer, postcard's 1 MiB preallocation cap).
//!
//! The default suite runs a few thousand cases per property; `PROPTEST_CASES=1000000 cargo test
//! --release -p ftlog --test fuzz_wire` runs a million each.

use devices::virtio::DeviceDescription;
use ftlog::channel::transfer::{Item, TransferReader, TransferWriter, PAGE};
use ftlog::channel::wire::{decode_frame, FrameReader, Message, RecvError};
use ftlog::{Hello, MachineDescription, Role};
use ftvm_tests::fuzz::{self, largest_allocation, mutations, Trickle};
use proptest::prelude::*;

#[path = "common/framing.rs"]
mod framing;
use framing::length_check;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: fuzz::Measuring = fuzz::Measuring;

/// The frame reader's read size (it reads into a buffer of one frame plus one read).
const READ_SIZE: usize = 64 * 1024;
/// postcard's preallocation cap for a sequence, and slack.
const PREALLOCATION: usize = (1 << 20) + 4096;

fn message() -> impl Strategy<Value = Message> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        bytes().prop_map(Message::Hello),
        bytes().prop_map(Message::StateChunk),
        any::<u64>().prop_map(|total| Message::StateEnd { total }),
        bytes().prop_map(Message::Records),
        any::<u64>().prop_map(|stamp| Message::Heartbeat { stamp }),
        any::<u64>().prop_map(|position| Message::Released { position }),
        any::<u64>().prop_map(|position| Message::Ack { position }),
        any::<u64>().prop_map(|position| Message::Verified { position }),
        any::<u8>().prop_map(|reason| Message::ResyncRequest { reason }),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(sequence, digest)| Message::OutputDigest { sequence, digest }),
        (any::<u64>(), any::<u64>()).prop_map(|(exits, outputs)| Message::ResyncBegin { exits, outputs }),
        Just(Message::ResyncDone),
        bytes().prop_map(Message::ResyncHeld),
        Just(Message::Close),
    ]
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode_into(&mut out).expect("small messages encode");
    }
    out
}

/// Decodes every frame of `stream` from a buffer: each message re-encodes to its bytes.
fn decode_all(stream: &[u8]) -> Result<usize, TestCaseError> {
    let (result, largest) = largest_allocation(|| -> Result<usize, TestCaseError> {
        let mut at = 0;
        let mut count = 0;
        while let Ok(Some((message, used))) = decode_frame(&stream[at..]) {
            prop_assert!(used > 0 && used <= stream.len() - at);
            let again = message.encode().ok();
            prop_assert_eq!(again.as_deref(), Some(&stream[at..at + used]));
            at += used;
            count += 1;
        }
        Ok(count)
    });
    prop_assert!(largest <= 2 * stream.len() + 64, "{largest} bytes allocated for {} bytes", stream.len());
    result
}

/// Reads `stream` with a [`FrameReader`] trickled `step` bytes at a time: it ends with an error
/// or a clean end, having returned exactly the messages [`decode_all`] found.
fn read_all(stream: &[u8], step: usize) -> Result<usize, TestCaseError> {
    let far = Instant::now() + Duration::from_secs(60);
    let (result, largest) = largest_allocation(|| -> Result<usize, TestCaseError> {
        let mut reader = FrameReader::new(Trickle { bytes: stream, step });
        let mut count = 0;
        loop {
            match reader.next(far) {
                Ok(_) => count += 1,
                Err(RecvError::Eof { partial }) => {
                    prop_assert_eq!(reader.offset() as usize + partial, stream.len());
                    return Ok(count);
                }
                Err(RecvError::Malformed(m)) => {
                    prop_assert_eq!(m.offset, reader.offset());
                    return Ok(count);
                }
                Err(other) => {
                    prop_assert!(false, "unexpected {other}");
                }
            }
            prop_assert!(count <= stream.len());
        }
    });
    prop_assert!(largest <= stream.len() + 2 * READ_SIZE, "{largest} bytes allocated for {} bytes", stream.len());
    result
}

fn check_stream(stream: &[u8], step: usize) -> Result<(), TestCaseError> {
    let decoded = decode_all(stream)?;
    let read = read_all(stream, step)?;
    prop_assert_eq!(read, decoded, "the reader and the decoder disagree");
    Ok(())
}

fn machine() -> impl Strategy<Value = Option<MachineDescription>> {
    let device = prop_oneof![
        ("[a-z0-9]{0,8}", any::<[u8; 6]>()).prop_map(|(tap, mac)| DeviceDescription::Net { tap, mac }),
        ("[a-z/.]{0,12}", any::<u64>(), any::<bool>()).prop_map(|(path, size, readonly)| DeviceDescription::Disk {
            path: path.into(),
            size,
            readonly
        }),
    ];
    proptest::option::of(
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            ".{0,16}",
            proptest::option::of("[a-z/]{0,8}"),
            any::<u64>(),
            proptest::collection::vec(device, 0..3),
        )
            .prop_map(|(image_digest, memory_size, cmdline, kernel_path, preemption_bound_ns, devices)| {
                MachineDescription { image_digest, memory_size, cmdline, kernel_path, preemption_bound_ns, devices }
            }),
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<bool>(), any::<u64>(), ".{0,12}", ".{0,12}", ".{0,12}", machine(), any::<bool>()).prop_map(
        |(primary, generation, listen, id, vm, machine, verified)| Hello {
            role: if primary { Role::Primary } else { Role::Backup },
            generation,
            listen,
            id,
            vm,
            machine,
            verified,
        },
    )
}

/// Decodes a Hello body as the handshake does: an error or a value that round-trips.
fn check_hello(body: &[u8]) -> Result<(), TestCaseError> {
    let (decoded, largest) = largest_allocation(|| postcard::from_bytes::<Hello>(body));
    prop_assert!(largest <= PREALLOCATION + 4 * body.len(), "{largest} bytes allocated for {} bytes", body.len());
    if let Ok(hello) = decoded {
        let again = postcard::to_allocvec(&hello).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(postcard::from_bytes::<Hello>(&again).ok(), Some(hello));
    }
    Ok(())
}

/// The guest memory size the transfer reader is opened with.
const MEMORY: u64 = 64 * PAGE as u64;

#[derive(Clone, Debug)]
enum TransferItem {
    Round(u32, u64, bool),
    Pages(u64, u32),
    Zero(u64, u32),
    State(Vec<u8>),
}

fn transfer_item() -> impl Strategy<Value = TransferItem> {
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(r, p, l)| TransferItem::Round(r, p, l)),
        (0u64..60, 1u32..4).prop_map(|(page, count)| TransferItem::Pages(page * PAGE as u64, count)),
        (0u64..60, 1u32..4).prop_map(|(page, count)| TransferItem::Zero(page * PAGE as u64, count)),
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(TransferItem::State),
    ]
}

fn transfer(items: &[TransferItem]) -> Vec<u8> {
    let mut w = TransferWriter::begin(Vec::new()).expect("to a Vec");
    for item in items {
        let written = match item {
            TransferItem::Round(r, p, l) => w.round(*r, *p, *l),
            TransferItem::Pages(gpa, count) => w.pages(*gpa, &vec![0x5a; *count as usize * PAGE]),
            TransferItem::Zero(gpa, count) => w.zero(*gpa, *count),
            TransferItem::State(s) => w.state(s),
        };
        written.expect("to a Vec");
    }
    w.end().expect("to a Vec")
}

/// Reads a transfer as a joining backup does, pages into a memory of [`MEMORY`] bytes.
fn read_transfer(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, largest) = largest_allocation(|| -> Result<(), TestCaseError> {
        let mut memory = vec![0u8; MEMORY as usize];
        let Ok(mut reader) = TransferReader::open(bytes, MEMORY) else { return Ok(()) };
        for _ in 0..=bytes.len() {
            match reader.next_item() {
                Ok(Item::Pages { gpa, count }) => {
                    let end = gpa as usize + count as usize * PAGE;
                    prop_assert!(end as u64 <= MEMORY, "pages at {gpa:#x} x{count} accepted outside memory");
                    if reader.read_bytes(&mut memory[gpa as usize..end]).is_err() {
                        return Ok(());
                    }
                }
                Ok(Item::Zero { gpa, count }) => {
                    prop_assert!(gpa + u64::from(count) * PAGE as u64 <= MEMORY);
                }
                Ok(Item::State { len }) => {
                    if reader.read_state(len).is_err() {
                        return Ok(());
                    }
                }
                Ok(Item::Round { .. }) => {}
                Ok(Item::End) => {
                    let _ = reader.finish();
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
        prop_assert!(false, "more items than bytes");
        Ok(())
    });
    prop_assert!(
        largest <= MEMORY as usize + 2 * bytes.len() + 64 * 1024,
        "{largest} bytes allocated for {} bytes",
        bytes.len()
    );
    result
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), step in 1usize..80) {
        check_stream(&bytes, step)?;
        check_hello(&bytes)?;
        read_transfer(&bytes)?;
    }

    /// Valid frames, then the stream mutated: the framing's checks catch it where it is.
    #[test]
    fn mutated_streams(messages in proptest::collection::vec(message(), 1..6), ms in mutations(4), step in 1usize..80) {
        let wire = encode(&messages);
        prop_assert_eq!(decode_all(&wire)?, messages.len());
        check_stream(&fuzz::mutated(wire, &ms), step)?;
    }

    /// One frame's type and body mutated and re-sealed: the typed decoders see bad bodies.
    #[test]
    fn mutated_bodies_behind_a_valid_frame(
        messages in proptest::collection::vec(message(), 1..5),
        which in any::<prop::sample::Index>(),
        ms in mutations(3),
        step in 1usize..80,
    ) {
        let i = which.index(messages.len());
        let mut wire = Vec::new();
        for (j, m) in messages.iter().enumerate() {
            let frame = m.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            if j == i {
                // The unit (type byte and body) between the 5 head bytes and the CRC.
                let unit = fuzz::mutated(frame[5..frame.len() - 4].to_vec(), &ms);
                wire.extend_from_slice(&framing::frame(&unit));
            } else {
                wire.extend_from_slice(&frame);
            }
        }
        check_stream(&wire, step)?;
    }

    #[test]
    fn mutated_hellos(h in hello(), ms in mutations(4)) {
        let body = postcard::to_allocvec(&h).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(postcard::from_bytes::<Hello>(&body).ok(), Some(h));
        let body = fuzz::mutated(body, &ms);
        check_hello(&body)?;
        // And framed as the handshake reads it.
        check_stream(&framing::frame(&[&[1u8][..], &body].concat()), 7)?;
    }

    #[test]
    fn mutated_transfers(items in proptest::collection::vec(transfer_item(), 0..6), ms in mutations(4)) {
        let bytes = transfer(&items);
        read_transfer(&bytes)?;
        read_transfer(&fuzz::mutated(bytes, &ms))?;
    }
}

/// A frame head announcing a chunk far past the bound is refused before anything is waited for
/// or allocated (the reader holds no more than what arrived).
#[test]
fn a_huge_announced_length_allocates_nothing() {
    for kind in 0u8..=14 {
        let len = u32::MAX - 1;
        let mut head = len.to_le_bytes().to_vec();
        head.push(length_check(len));
        head.push(kind);
        let ((), largest) = largest_allocation(|| {
            let far = Instant::now() + Duration::from_secs(5);
            let mut reader = FrameReader::new(&head[..]);
            assert!(matches!(reader.next(far), Err(RecvError::Malformed(_))), "kind {kind}");
        });
        assert!(largest <= 2 * READ_SIZE, "{largest}");
    }
}

#[test]
fn the_measuring_allocator_sees_a_large_allocation() {
    let (v, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(largest >= 3 << 20, "{largest}");
}
