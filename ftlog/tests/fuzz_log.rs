//! Fuzzing the log format's decoders (issue 15, point 5): the header and the records as
//! `LogReader` reads them (from a file, or from the logging channel's Records messages), the
//! machine's device list in the header, and the delta checkpoints a replay decodes, with
//! arbitrary bytes and with structured mutations of valid logs. Mutations are applied to the
//! raw log (the length checks and CRCs catch them) and behind re-sealed units (length, length
//! check and CRC recomputed), so that every record body decoder sees damaged bodies.
//!
//! Properties: an error at an offset inside the input or a clean value, never a panic; a record
//! that decodes re-encodes to exactly its bytes; no single allocation beyond a bound set by the
//! bytes that arrived (a record's length is checked against what arrives before memory is
//! committed to it).
//!
//! The default suite runs a few thousand cases per property; `PROPTEST_CASES=1000000 cargo test
//! --release -p ftlog --test fuzz_log` runs a million each.

use devices::virtio::DeviceDescription;
use ftlog::{DeltaCheckpoint, End, LogHeader, LogReader, LogWriter, MachineDescription, Record, PAGE_SIZE};
use ftvm_tests::fuzz::{self, largest_allocation, mutations};
use proptest::prelude::*;

#[path = "common/framing.rs"]
mod framing;
use framing::{frame, length_check};

#[path = "common/records.rs"]
mod records;
use records::{end, record};

#[global_allocator]
static ALLOC: fuzz::Measuring = fuzz::Measuring;

/// The reader's buffer and scratch, and slack.
const READER_BUFFERS: usize = 2 * 64 * 1024 + 4096;
/// Bytes of the header before its body: magic, version, length, length check.
const HEADER_PREFIX: usize = 8 + 2 + 4 + 1;

fn device() -> impl Strategy<Value = DeviceDescription> {
    prop_oneof![
        ("[a-z0-9]{0,8}", any::<[u8; 6]>()).prop_map(|(tap, mac)| DeviceDescription::Net { tap, mac }),
        ("[a-z/.]{0,12}", any::<u64>(), any::<bool>()).prop_map(|(path, size, readonly)| DeviceDescription::Disk {
            path: path.into(),
            size,
            readonly
        }),
    ]
}

fn header() -> impl Strategy<Value = LogHeader> {
    (
        any::<[u8; 32]>(),
        any::<u64>(),
        ".{0,24}",
        proptest::option::of("[a-z/._-]{0,16}"),
        any::<u64>(),
        1u32..,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(device(), 0..3),
    )
        .prop_map(|(image_digest, memory_size, cmdline, kernel_path, bound, k, created, start, devices)| {
            LogHeader {
                machine: MachineDescription {
                    image_digest,
                    memory_size,
                    cmdline,
                    kernel_path,
                    preemption_bound_ns: bound,
                    devices,
                },
                exit_digest_interval: k,
                created_unix_ns: created,
                start_exits: start,
            }
        })
}

/// A complete log, and the offsets where its units start (0 = the header, then each record).
fn encode(header: &LogHeader, records: &[Record], end: &End) -> (Vec<u8>, Vec<usize>) {
    let mut writer = LogWriter::new(Vec::new(), header).expect("header encodes");
    let mut starts = vec![0];
    for record in records.iter().chain([&Record::End(end.clone())]) {
        starts.push(writer.offset() as usize);
        writer.write(record).expect("record encodes");
    }
    starts.push(writer.offset() as usize);
    (writer.into_inner().expect("to a Vec"), starts)
}

/// A header with `body` behind the magic and version of `original`, correctly framed.
fn seal_header(original: &[u8], body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut out = original[..10].to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.push(length_check(len));
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn record_bytes(header: &LogHeader, record: &Record) -> Option<Vec<u8>> {
    let mut writer = LogWriter::new(Vec::new(), header).ok()?;
    let start = writer.offset() as usize;
    writer.write(record).ok()?;
    writer.into_inner().ok().map(|bytes| bytes[start..].to_vec())
}

/// Reads `bytes` as a log (required to end with End, and open-ended): every error names an
/// offset inside the input, every record re-encodes to its bytes, memory stays bounded.
fn check_log(bytes: &[u8]) -> Result<(), TestCaseError> {
    for open_ended in [false, true] {
        let (result, largest) = largest_allocation(|| -> Result<(), TestCaseError> {
            let reader = match LogReader::new(bytes) {
                Ok(reader) => reader,
                Err(e) => {
                    prop_assert!(e.offset() as usize <= bytes.len(), "{e}");
                    return Ok(());
                }
            };
            let header = reader.header().clone();
            let reader = if open_ended { reader.open_ended() } else { reader };
            let mut previous: Option<(usize, Record)> = None;
            let check = |previous: Option<(usize, Record)>, next: usize| -> Result<(), TestCaseError> {
                if let Some((at, record)) = previous {
                    let again = record_bytes(&header, &record);
                    prop_assert_eq!(again.as_deref(), Some(&bytes[at..next]), "record at {} does not re-encode", at);
                }
                Ok(())
            };
            for item in reader {
                match item {
                    Ok((offset, record)) => {
                        let offset = offset as usize;
                        prop_assert!(offset < bytes.len());
                        check(previous.take(), offset)?;
                        previous = Some((offset, record));
                    }
                    Err(e) => {
                        prop_assert!(e.offset() as usize <= bytes.len(), "{e}");
                        if let Some((at, _)) = &previous {
                            prop_assert!(e.offset() as usize > *at, "{e}");
                        }
                    }
                }
            }
            if let Some((at, record)) = previous {
                let next = at + record_bytes(&header, &record).map_or(0, |b| b.len());
                check(Some((at, record)), next.min(bytes.len()))?;
            }
            Ok(())
        });
        prop_assert!(
            largest <= 2 * bytes.len() + READER_BUFFERS,
            "{largest} bytes allocated for {} bytes",
            bytes.len()
        );
        result?;
    }
    Ok(())
}

/// Decodes `bytes` as a delta checkpoint: an error, or pages that lie inside the input.
fn check_checkpoint(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, largest) = largest_allocation(|| -> Result<(), TestCaseError> {
        if let Ok(checkpoint) = DeltaCheckpoint::decode(bytes) {
            let mut count = 0u64;
            for (gpa, _) in checkpoint.pages() {
                prop_assert_eq!(gpa % PAGE_SIZE as u64, 0);
                count += 1;
            }
            prop_assert_eq!(count, u64::from(checkpoint.page_count()));
            prop_assert!(checkpoint.machine_state.len() + checkpoint.page_hashes.len() <= bytes.len());
        }
        Ok(())
    });
    prop_assert!(largest <= 2 * bytes.len() + 4096, "{largest} bytes allocated for {} bytes", bytes.len());
    result
}

fn checkpoint() -> impl Strategy<Value = Vec<u8>> {
    let page = prop_oneof![Just(vec![0u8; PAGE_SIZE]), any::<u8>().prop_map(|b| vec![b; PAGE_SIZE])];
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..24),
        proptest::collection::vec((0u64..1024, page), 0..3),
    )
        .prop_map(|(state, hashes, pages)| {
            DeltaCheckpoint::encode(&state, &hashes, pages.iter().map(|(n, bytes)| (n * PAGE_SIZE as u64, &bytes[..])))
                .unwrap_or_default()
        })
}

proptest! {
    #![proptest_config(fuzz::config(3000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
        check_checkpoint(&bytes)?;
        let _ = MachineDescription::decode_devices(&bytes);
        // Half the time behind a valid magic and version, so the header's framing is reached.
        let bytes = if magic { [&b"FTVMLOG\0\x01\x00"[..], &bytes].concat() } else { bytes };
        check_log(&bytes)?;
    }

    #[test]
    fn mutated_logs(h in header(), records in proptest::collection::vec(record(64), 0..6), e in end(), ms in mutations(4)) {
        let (log, _) = encode(&h, &records, &e);
        check_log(&fuzz::mutated(log, &ms))?;
    }

    /// One record's kind and body mutated and re-sealed: the record decoders see bad bodies.
    #[test]
    fn mutated_records_behind_a_valid_frame(
        h in header(),
        records in proptest::collection::vec(record(64), 1..6),
        e in end(),
        which in any::<prop::sample::Index>(),
        ms in mutations(3),
    ) {
        let (log, starts) = encode(&h, &records, &e);
        // A record or the End (starts[0] is the header).
        let i = 1 + which.index(starts.len() - 2);
        let (at, next) = (starts[i], starts[i + 1]);
        let unit = fuzz::mutated(log[at + 5..next - 4].to_vec(), &ms);
        let damaged = [&log[..at], &frame(&unit)[..], &log[next..]].concat();
        check_log(&damaged)?;
    }

    /// The header's body mutated and re-sealed: the header decoder (strings, flags, devices).
    #[test]
    fn mutated_headers_behind_a_valid_frame(h in header(), e in end(), ms in mutations(4)) {
        let (log, starts) = encode(&h, &[], &e);
        let header_end = starts[1];
        let body = fuzz::mutated(log[HEADER_PREFIX..header_end - 4].to_vec(), &ms);
        let damaged = [&seal_header(&log, &body)[..], &log[header_end..]].concat();
        check_log(&damaged)?;
        let devices = postcard::to_allocvec(&h.machine.devices).unwrap_or_default();
        let _ = MachineDescription::decode_devices(&fuzz::mutated(devices, &ms));
    }

    #[test]
    fn mutated_checkpoints(bytes in checkpoint(), ms in mutations(4)) {
        prop_assert!(DeltaCheckpoint::decode(&bytes).is_ok());
        check_checkpoint(&fuzz::mutated(bytes, &ms))?;
    }
}

#[test]
fn the_measuring_allocator_sees_a_large_allocation() {
    let (v, largest) = largest_allocation(|| vec![0u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(largest >= 3 << 20, "{largest}");
}
