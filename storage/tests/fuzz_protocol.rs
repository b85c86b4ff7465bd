//! Fuzzing every gfs request and reply decoder (issue 15, point 5): the frame codec (`decode`
//! on a buffer, `read_frame` on a stream that trickles) and the postcard messages the master,
//! the chunkservers and the clients decode, with arbitrary bytes and with structured mutations
//! of valid encodings (bits flipped, cut, extended, fields swapped, lengths and tags planted).
//!
//! Properties: a decode error or a clean value, never a panic (nor a stack overflow), and no
//! single allocation beyond a bound set by the bytes that arrived (postcard preallocates at
//! most 1 MiB for a sequence whatever its announced length; frames grow with what arrives). A
//! value that decodes encodes and decodes back to itself.
//!
//! The default suite runs a few thousand cases per property; `PROPTEST_CASES=1000000 cargo test
//! --release -p storage --test fuzz_protocol` runs a million each.

use ftvm_tests::fuzz::{self, largest_allocation, mutations, Trickle};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::error::{ErrorKind, RemoteError};
use storage::master::state::{FileImage, Register, State, StateImage};
use storage::oplog::{Entry, Record};
use storage::protocol::frame::{self, Kind};
use storage::protocol::*;

#[global_allocator]
static ALLOC: fuzz::Measuring = fuzz::Measuring;

/// The most a decoder may allocate at once beyond a few times what it was given: postcard's
/// preallocation cap for a sequence (1 MiB) and slack.
const PREALLOCATION: usize = (1 << 20) + 4096;

fn s() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z/._-]{0,12}", ".{0,6}"]
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(s(), 0..4)
}

fn fence() -> impl Strategy<Value = Option<Fence>> {
    proptest::option::of((s(), any::<u64>()).prop_map(|(name, generation)| Fence { name, generation }))
}

fn location() -> impl Strategy<Value = ChunkLocation> {
    (any::<u64>(), any::<u32>(), strings(), proptest::option::of(s()), any::<u64>()).prop_map(
        |(handle, version, replicas, primary, lease_ms)| ChunkLocation { handle, version, replicas, primary, lease_ms },
    )
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    let pairs = || proptest::collection::vec((any::<u64>(), any::<u32>()), 0..4);
    (
        s(),
        s(),
        any::<bool>(),
        pairs(),
        pairs(),
        proptest::collection::vec(any::<u64>(), 0..3),
        proptest::collection::vec(any::<u64>(), 0..3),
    )
        .prop_map(|(server, rack, fresh, chunks, extend, corrupt, tokens)| Heartbeat {
            server,
            rack,
            fresh,
            chunks,
            extend,
            corrupt,
            tokens,
            disk: Default::default(),
        })
}

fn master_request() -> impl Strategy<Value = MasterRequest> {
    prop_oneof![
        s().prop_map(|path| MasterRequest::Mkdir { path }),
        s().prop_map(|path| MasterRequest::Create { path }),
        s().prop_map(|path| MasterRequest::Delete { path }),
        (s(), s()).prop_map(|(from, to)| MasterRequest::Rename { from, to }),
        s().prop_map(|path| MasterRequest::List { path }),
        s().prop_map(|path| MasterRequest::Stat { path }),
        (s(), any::<u64>(), any::<bool>()).prop_map(|(path, index, for_write)| MasterRequest::GetChunk {
            path,
            index,
            for_write
        }),
        (s(), any::<u64>()).prop_map(|(path, size)| MasterRequest::ExtendSize { path, size }),
        heartbeat().prop_map(MasterRequest::Heartbeat),
        (s(), any::<u64>()).prop_map(|(server, handle)| MasterRequest::ReportCorrupt { server, handle }),
        (s(), any::<u64>(), s()).prop_map(|(name, expected, holder)| MasterRequest::CompareAndSet {
            name,
            expected,
            holder
        }),
        s().prop_map(|name| MasterRequest::GetRegister { name }),
        (s(), s()).prop_map(|(path, register)| MasterRequest::Bind { path, register }),
        (s(), any::<u64>()).prop_map(|(path, min_index)| MasterRequest::AppendChunk { path, min_index }),
        (s(), s()).prop_map(|(src, dst)| MasterRequest::Snapshot { src, dst }),
        Just(MasterRequest::Status),
        Just(MasterRequest::Fsck),
        (any::<u64>(), any::<u32>()).prop_map(|(after_lsn, max)| MasterRequest::FetchLog { after_lsn, max }),
        (s(), any::<u64>(), s()).prop_map(|(name, expected, holder)| MasterRequest::ReleaseRegister {
            name,
            expected,
            holder
        }),
    ]
}

fn log_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        s().prop_map(|path| Record::Mkdir { path }),
        (s(), s()).prop_map(|(from, to)| Record::Rename { from, to }),
        (s(), any::<u64>(), any::<u64>()).prop_map(|(path, index, handle)| Record::AddChunk { path, index, handle }),
        (any::<u64>(), any::<u32>()).prop_map(|(handle, version)| Record::SetVersion { handle, version }),
        (s(), any::<u64>(), s()).prop_map(|(name, generation, holder)| Record::CompareAndSet {
            name,
            generation,
            holder
        }),
        (s(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(path, index, old, new, version)| Record::ReplaceChunk { path, index, old, new, version }),
    ]
}

fn master_reply() -> impl Strategy<Value = MasterReply> {
    let entry = (s(), any::<bool>(), any::<u64>()).prop_map(|(name, is_dir, size)| DirEntry { name, is_dir, size });
    let replica = (s(), any::<u32>(), any::<bool>(), any::<bool>())
        .prop_map(|(server, version, stale, corrupt)| ReplicaStat { server, version, stale, corrupt });
    let chunk =
        (any::<u64>(), any::<u64>(), any::<u32>(), proptest::option::of(s()), proptest::collection::vec(replica, 0..3))
            .prop_map(|(index, handle, version, primary, replicas)| ChunkStat {
                index,
                handle,
                version,
                primary,
                replicas,
            });
    let stat = (s(), any::<bool>(), any::<u64>(), proptest::collection::vec(chunk, 0..3), proptest::option::of(s()))
        .prop_map(|(path, is_dir, size, chunks, register)| FileStat { path, is_dir, size, chunks, register });
    let server =
        (s(), s(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(addr, rack, live, chunks, last_seen_ms)| {
            ServerStatus { addr, rack, live, chunks, last_seen_ms, disk: Default::default() }
        });
    prop_oneof![
        Just(MasterReply::Done),
        proptest::collection::vec(entry, 0..4).prop_map(MasterReply::Entries),
        stat.prop_map(MasterReply::Stat),
        (any::<u64>(), proptest::option::of(location()))
            .prop_map(|(size, location)| MasterReply::Chunk { size, location }),
        (
            proptest::collection::vec(any::<u64>(), 0..3),
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..3),
            proptest::collection::vec((s(), any::<u64>()), 0..3)
        )
            .prop_map(|(extended, lease_ms, garbage, registers)| MasterReply::Heartbeat(HeartbeatReply {
                extended,
                lease_ms,
                garbage,
                registers
            })),
        (any::<u64>(), s()).prop_map(|(generation, holder)| MasterReply::Register { generation, holder }),
        (any::<u64>(), location()).prop_map(|(index, location)| MasterReply::AppendChunk { index, location }),
        (proptest::collection::vec(server, 0..3), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(servers, files, dirs, chunks)| MasterReply::Status(ClusterStatus { servers, files, dirs, chunks })
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), strings()).prop_map(
            |(files, chunks, healthy, under_replicated, missing, problems)| MasterReply::Fsck(FsckReport {
                files,
                chunks,
                healthy,
                under_replicated,
                missing,
                problems
            })
        ),
        proptest::collection::vec((any::<u64>(), log_record()).prop_map(|(lsn, record)| Entry { lsn, record }), 0..4)
            .prop_map(MasterReply::Log),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(lsn, image)| MasterReply::Checkpoint { lsn, image }),
    ]
}

fn chunk_request() -> impl Strategy<Value = ChunkRequest> {
    let leaf = prop_oneof![
        (any::<u64>(), any::<u64>(), strings()).prop_map(|(id, len, chain)| ChunkRequest::Push { id, len, chain }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), strings(), fence()).prop_map(
            |(handle, version, offset, id, secondaries, fence)| ChunkRequest::Write {
                handle,
                version,
                offset,
                id,
                secondaries,
                fence
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), fence()).prop_map(
            |(handle, version, serial, offset, id, fence)| ChunkRequest::Apply {
                handle,
                version,
                serial,
                offset,
                id,
                fence
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), strings(), fence(), any::<bool>()).prop_map(
            |(handle, version, offset, len, secondaries, fence, durable)| ChunkRequest::WriteInline {
                handle,
                version,
                offset,
                len,
                secondaries,
                fence,
                durable
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), fence(), any::<bool>()).prop_map(
            |(handle, version, serial, offset, len, fence, durable)| ChunkRequest::ApplyInline {
                handle,
                version,
                serial,
                offset,
                len,
                fence,
                durable
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(handle, version, offset, len)| ChunkRequest::Read { handle, version, offset, len }),
        (any::<u64>(), any::<u32>(), proptest::option::of(any::<u64>()), proptest::option::of(s())).prop_map(
            |(handle, version, lease_ms, register)| ChunkRequest::SetVersion { handle, version, lease_ms, register }
        ),
        (s(), any::<u64>()).prop_map(|(name, generation)| ChunkRequest::Fence(Fence { name, generation })),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), strings(), fence()).prop_map(
            |(handle, version, id, len, secondaries, fence)| ChunkRequest::Append {
                handle,
                version,
                id,
                len,
                secondaries,
                fence
            }
        ),
        any::<u64>().prop_map(|handle| ChunkRequest::Revoke { handle }),
        any::<u64>().prop_map(|handle| ChunkRequest::Info { handle }),
        (any::<u64>(), any::<u32>(), s()).prop_map(|(handle, version, source)| ChunkRequest::Replicate {
            handle,
            version,
            source
        }),
        any::<u64>().prop_map(|handle| ChunkRequest::Delete { handle }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(from, to, version)| ChunkRequest::CopyChunk {
            from,
            to,
            version
        }),
        (any::<u64>(), any::<u32>(), any::<u64>(), fence())
            .prop_map(|(handle, version, serial, fence)| ChunkRequest::Pad { handle, version, serial, fence }),
        any::<u64>().prop_map(|token| ChunkRequest::Verify { token }),
        proptest::collection::vec(any::<u64>(), 0..4).prop_map(|handles| ChunkRequest::Sync { handles }),
    ];
    leaf.prop_flat_map(|request| {
        let wrapped = ChunkRequest::Unsynced(Box::new(request.clone()));
        prop_oneof![Just(request), Just(wrapped)]
    })
}

fn chunk_reply() -> impl Strategy<Value = ChunkReply> {
    prop_oneof![
        strings().prop_map(|failed| ChunkReply::Pushed { failed }),
        strings().prop_map(|failed| ChunkReply::Written { failed }),
        Just(ChunkReply::Applied),
        any::<u64>().prop_map(|len| ChunkReply::Reading { len }),
        Just(ChunkReply::VersionSet),
        Just(ChunkReply::Fenced),
        (any::<u64>(), strings()).prop_map(|(offset, failed)| ChunkReply::Appended { offset, failed }),
        strings().prop_map(|failed| ChunkReply::ChunkFull { failed }),
        Just(ChunkReply::Revoked),
        Just(ChunkReply::Copied),
        (any::<u32>(), any::<u64>()).prop_map(|(version, len)| ChunkReply::Info { version, len }),
        Just(ChunkReply::Deleted),
        s().prop_map(|addr| ChunkReply::Verified { addr }),
        Just(ChunkReply::Synced),
    ]
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    let kinds =
        vec![ErrorKind::NotFound, ErrorKind::StaleVersion, ErrorKind::Conflict, ErrorKind::Fenced, ErrorKind::Protocol];
    (prop::sample::select(kinds), s()).prop_map(|(kind, message)| RemoteError::new(kind, message))
}

fn reply<T: std::fmt::Debug + Clone>(ok: impl Strategy<Value = T>) -> impl Strategy<Value = Reply<T>> {
    prop_oneof![ok.prop_map(Ok), remote_error().prop_map(Err)]
}

/// Decodes `bytes` as a `T` the way a connection does: an error or a value, which must survive
/// a round trip, with no allocation past the bound.
fn decode_checked<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let (decoded, largest) = largest_allocation(|| Conn::decode_msg::<T>(bytes));
    prop_assert!(
        largest <= PREALLOCATION + 4 * bytes.len(),
        "{largest} bytes allocated at once for {} bytes of input",
        bytes.len()
    );
    if let Ok(value) = decoded {
        let again = postcard::to_stdvec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Conn::decode_msg::<T>(&again).ok(), Some(value));
    }
    Ok(())
}

/// A shadow master loads the image of a `MasterReply::Checkpoint` as the master's state.
fn load_image(image: &[u8]) -> Result<(), TestCaseError> {
    let (decoded, largest) = largest_allocation(|| postcard::from_bytes::<StateImage>(image));
    prop_assert!(largest <= PREALLOCATION + 4 * image.len(), "{largest} bytes allocated for {} bytes", image.len());
    if let Ok(img) = decoded {
        // Loaded, then written out again as the shadow's next checkpoint would be.
        let again =
            postcard::to_stdvec(&State::from_image(img).image()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(postcard::from_bytes::<StateImage>(&again).is_ok());
    }
    Ok(())
}

fn state_image() -> impl Strategy<Value = Vec<u8>> {
    let path = || "(/[a-c]{1,2}){1,3}";
    let file = (path(), any::<u64>(), proptest::collection::vec((0u64..4, 0u64..8), 0..3), proptest::option::of(s()))
        .prop_map(|(path, size, chunks, register)| FileImage { path, size, chunks, register });
    let register =
        (s(), any::<u64>(), s()).prop_map(|(name, generation, holder)| (name, Register { generation, holder }));
    (
        proptest::collection::vec(path(), 0..3),
        proptest::collection::vec(file, 0..3),
        proptest::collection::vec(any::<u32>(), 0..8),
        proptest::collection::vec(register, 0..2),
    )
        .prop_map(|(dirs, files, versions, registers)| {
            postcard::to_stdvec(&StateImage { dirs, files, versions, registers }).unwrap_or_default()
        })
}

/// Every decoder a server or a client runs on a message frame.
fn decode_as_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_checked::<MasterRequest>(bytes)?;
    decode_checked::<ChunkRequest>(bytes)?;
    decode_checked::<Reply<MasterReply>>(bytes)?;
    decode_checked::<Reply<ChunkReply>>(bytes)?;
    decode_checked::<Entry>(bytes)?;
    if let Ok(Ok(MasterReply::Checkpoint { image, .. })) = Conn::decode_msg::<Reply<MasterReply>>(bytes) {
        load_image(&image)?;
    }
    load_image(bytes)
}

/// Reads every frame of `stream` as a connection does, trickled `step` bytes at a time.
fn read_frames(stream: &[u8], step: usize) -> Result<(), TestCaseError> {
    let mut input = Trickle { bytes: stream, step };
    let mut buf = Vec::new();
    for _ in 0..=stream.len() {
        let (arrival, largest) = largest_allocation(|| frame::read_frame(&mut input, &mut buf));
        prop_assert!(
            largest <= 2 * stream.len() + 64 * 1024,
            "{largest} bytes allocated for a {}-byte stream",
            stream.len()
        );
        match arrival {
            Ok(frame::Arrival::Frame(Kind::Msg)) => decode_as_everything(&buf)?,
            Ok(frame::Arrival::Frame(Kind::Data)) => prop_assert!(buf.len() <= storage::DATA_FRAME),
            Ok(frame::Arrival::Closed | frame::Arrival::Quiet) | Err(_) => return Ok(()),
        }
    }
    prop_assert!(false, "more frames than bytes");
    Ok(())
}

/// Every message of `stream` through the buffer decoder, as the master's log reader does.
fn decode_frames(stream: &[u8]) -> Result<(), TestCaseError> {
    let mut at = 0;
    while let Ok((kind, payload, used)) = frame::decode(&stream[at..]) {
        prop_assert!(used > frame::HEADER && used <= stream.len() - at);
        if kind == Kind::Msg {
            decode_as_everything(payload)?;
        }
        at += used;
    }
    Ok(())
}

/// One message of each kind, postcard-encoded, then framed.
#[derive(Debug, Clone)]
struct Messages {
    payloads: Vec<Vec<u8>>,
}

fn messages() -> impl Strategy<Value = Messages> {
    let one = prop_oneof![
        master_request().prop_map(|m| postcard::to_stdvec(&m).unwrap_or_default()),
        chunk_request().prop_map(|m| postcard::to_stdvec(&m).unwrap_or_default()),
        reply(master_reply()).prop_map(|m| postcard::to_stdvec(&m).unwrap_or_default()),
        reply(chunk_reply()).prop_map(|m| postcard::to_stdvec(&m).unwrap_or_default()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(one, 1..4).prop_map(|payloads| Messages { payloads })
}

fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let kind = if i % 5 == 4 { Kind::Data } else { Kind::Msg };
        frame::encode(kind, p, &mut out).expect("small frames encode");
    }
    out
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn arbitrary_bytes_as_frames_and_messages(bytes in proptest::collection::vec(any::<u8>(), 0..512), step in 1usize..64) {
        decode_as_everything(&bytes)?;
        decode_frames(&bytes)?;
        read_frames(&bytes, step)?;
    }

    /// Mutated payloads re-framed with a good checksum: every message decoder sees damaged
    /// messages, not only frames the checksum already refuses.
    #[test]
    fn mutated_messages_behind_a_valid_frame(m in messages(), ms in mutations(4), which in any::<prop::sample::Index>(), step in 1usize..64) {
        let mut payloads = m.payloads;
        let i = which.index(payloads.len());
        for p in &payloads {
            decode_as_everything(p)?;
        }
        payloads[i] = fuzz::mutated(std::mem::take(&mut payloads[i]), &ms);
        let stream = framed(&payloads);
        decode_frames(&stream)?;
        read_frames(&stream, step)?;
    }

    /// Mutated streams of frames: lengths, checksums and kinds damaged too.
    #[test]
    fn mutated_frame_streams(m in messages(), ms in mutations(4), step in 1usize..64) {
        let stream = fuzz::mutated(framed(&m.payloads), &ms);
        decode_frames(&stream)?;
        read_frames(&stream, step)?;
    }

    /// A checkpoint image a master sends a shadow, mutated, inside its reply.
    #[test]
    fn mutated_checkpoint_images(image in state_image(), lsn in any::<u64>(), ms in mutations(4)) {
        load_image(&image)?;
        let image = fuzz::mutated(image, &ms);
        load_image(&image)?;
        let reply: Reply<MasterReply> = Ok(MasterReply::Checkpoint { lsn, image });
        decode_as_everything(&postcard::to_stdvec(&reply).map_err(|e| TestCaseError::fail(e.to_string()))?)?;
    }

    #[test]
    fn valid_messages_round_trip(request in master_request(), chunk in chunk_request(), r in reply(master_reply()), c in reply(chunk_reply())) {
        for bytes in [postcard::to_stdvec(&request), postcard::to_stdvec(&chunk), postcard::to_stdvec(&r), postcard::to_stdvec(&c)] {
            let bytes = bytes.map_err(|e| TestCaseError::fail(e.to_string()))?;
            decode_as_everything(&bytes)?;
        }
        prop_assert_eq!(Conn::decode_msg::<ChunkRequest>(&postcard::to_stdvec(&chunk).unwrap_or_default()).ok(), Some(chunk));
    }
}

/// The postcard tag of `ChunkRequest::Unsynced`.
fn unsynced_tag() -> u8 {
    let bytes =
        postcard::to_stdvec(&ChunkRequest::Unsynced(Box::new(ChunkRequest::Revoke { handle: 0 }))).unwrap_or_default();
    bytes[0]
}

/// Found reading the decoders for this suite (the fuzzers' inputs are too short to nest deep
/// enough): `Unsynced` nests a `ChunkRequest`, and postcard has no depth limit, so a frame of
/// repeated Unsynced tags made a chunkserver recurse until its stack overflowed (the whole
/// process aborted, for a frame well within the 8 MiB limit). Now nesting is refused at the
/// second level.
#[test]
fn deeply_nested_unsynced_requests_are_an_error_not_a_stack_overflow() {
    let tag = unsynced_tag();
    let inner = postcard::to_stdvec(&ChunkRequest::Revoke { handle: 7 }).unwrap_or_default();
    for depth in [2usize, 3, 100, 10_000, 1 << 20] {
        let mut bytes = vec![tag; depth];
        bytes.extend_from_slice(&inner);
        // A thread with a small stack, as a server's connection threads may have.
        let decoded = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || Conn::decode_msg::<ChunkRequest>(&bytes).map_err(|e| e.to_string()))
            .expect("thread")
            .join()
            .expect("no panic");
        assert!(decoded.is_err(), "depth {depth}: nested Unsynced accepted: {decoded:?}");
    }
    // One level is what the protocol uses.
    let mut one = vec![tag];
    one.extend_from_slice(&inner);
    assert_eq!(
        Conn::decode_msg::<ChunkRequest>(&one).ok(),
        Some(ChunkRequest::Unsynced(Box::new(ChunkRequest::Revoke { handle: 7 })))
    );
}

/// A frame that announces a huge sequence allocates at most postcard's cap, not the length.
#[test]
fn an_announced_length_does_not_drive_an_allocation() {
    // Sync { handles } with a varint length of 2^32 - 1 and no elements.
    let mut bytes = postcard::to_stdvec(&ChunkRequest::Sync { handles: vec![] }).unwrap_or_default();
    bytes.pop();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (decoded, largest) = largest_allocation(|| Conn::decode_msg::<ChunkRequest>(&bytes));
    assert!(decoded.is_err());
    assert!(largest <= PREALLOCATION, "{largest}");
}

/// The bound above means something only if the allocator measures.
#[test]
fn the_measuring_allocator_sees_a_large_allocation() {
    let (v, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(largest >= 3 << 20, "{largest}");
}
