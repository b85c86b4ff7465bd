//! Property tests of the log format: round trips, truncation and corruption detection.

use devices::virtio::DeviceDescription;
use devices::{ClockId, Landmark, WorldEvent};
use ftlog::{End, LogError, LogHeader, LogReader, LogWriter, MachineDescription, Record};
use proptest::prelude::*;

#[path = "common/framing.rs"]
mod framing;
use framing::frame;

#[path = "common/records.rs"]
mod records;
use records::{end, record};

fn header() -> impl Strategy<Value = LogHeader> {
    (
        any::<[u8; 32]>(),
        any::<u64>(),
        ".{0,40}",
        proptest::option::of("[a-z/._-]{0,30}"),
        any::<u64>(),
        1u32..,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(image_digest, memory_size, cmdline, kernel_path, bound, k, created, start, taps)| LogHeader {
            machine: MachineDescription {
                image_digest,
                memory_size,
                cmdline,
                kernel_path,
                preemption_bound_ns: bound,
                devices: taps
                    .into_iter()
                    .map(|byte| DeviceDescription::Net { tap: format!("tap{byte}"), mac: [2, 0, 0, 0, 0, byte] })
                    .collect(),
            },
            exit_digest_interval: k,
            created_unix_ns: created,
            start_exits: start,
        })
}

/// A complete log and the offsets where its units start (0 = header, then every record).
fn encode(header: &LogHeader, records: &[Record], end: &End) -> (Vec<u8>, Vec<u64>) {
    let mut writer = LogWriter::new(Vec::new(), header).expect("header");
    let mut starts = vec![0];
    for record in records.iter().chain(std::iter::once(&Record::End(end.clone()))) {
        starts.push(writer.offset());
        writer.write(record).expect("write");
    }
    (writer.into_inner().expect("flush"), starts)
}

fn read(bytes: &[u8]) -> Result<(LogHeader, Vec<(u64, Record)>), LogError> {
    let reader = LogReader::new(bytes)?;
    let header = reader.header().clone();
    Ok((header, reader.read_all()?))
}

/// The start of the unit holding byte `pos`.
fn unit_of(starts: &[u64], pos: u64) -> u64 {
    starts.iter().copied().filter(|&s| s <= pos).max().unwrap_or(0)
}

proptest! {
    #[test]
    fn every_record_round_trips(h in header(), r in record(200)) {
        let mut writer = LogWriter::new(Vec::new(), &h).unwrap();
        writer.write(&r).unwrap();
        let bytes = writer.into_inner().unwrap();
        let reader = LogReader::new(&bytes[..]).unwrap().open_ended();
        prop_assert_eq!(reader.header(), &h);
        let records: Vec<Record> = reader.map(|item| item.unwrap().1).collect();
        prop_assert_eq!(records, vec![r]);
    }

    #[test]
    fn whole_logs_round_trip(h in header(), records in proptest::collection::vec(record(200), 0..20), e in end()) {
        let (bytes, starts) = encode(&h, &records, &e);
        let (got_header, got) = read(&bytes).unwrap();
        prop_assert_eq!(got_header, h);
        let mut expected = records.clone();
        expected.push(Record::End(e));
        prop_assert_eq!(got.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), expected);
        prop_assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), starts[1..].to_vec());
    }

    #[test]
    fn any_truncation_is_reported_at_or_before_the_cut(
        h in header(), records in proptest::collection::vec(record(200), 0..8), e in end(), cut in any::<prop::sample::Index>()
    ) {
        let (bytes, starts) = encode(&h, &records, &e);
        let cut = cut.index(bytes.len()); // strictly shorter than the log
        match read(&bytes[..cut]) {
            Err(LogError::Truncated { offset }) => {
                prop_assert!(offset <= cut as u64);
                prop_assert_eq!(offset, unit_of(&starts, cut as u64));
            }
            other => prop_assert!(false, "cut at {cut}: {other:?}"),
        }
    }

    #[test]
    fn any_flipped_byte_is_detected_where_it_is(
        h in header(), records in proptest::collection::vec(record(200), 0..8), e in end(),
        pos in any::<prop::sample::Index>(), xor in 1u8..,
    ) {
        let (mut bytes, starts) = encode(&h, &records, &e);
        let pos = pos.index(bytes.len());
        bytes[pos] ^= xor;
        match read(&bytes) {
            Err(LogError::BadMagic { offset }) => prop_assert_eq!(offset, pos as u64),
            Err(LogError::Corrupt { offset, .. }) => prop_assert_eq!(offset, unit_of(&starts, pos as u64)),
            other => prop_assert!(false, "flip at {pos}: {other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), h in header()) {
        let _ = read(&bytes);
        let mut log = h.encode().unwrap();
        log.extend_from_slice(&bytes);
        let _ = read(&log);
    }
}

#[test]
fn every_cut_and_every_flip_of_one_log() {
    let h = LogHeader {
        machine: MachineDescription {
            image_digest: [7; 32],
            memory_size: 64 << 20,
            cmdline: "console=ttyS0".into(),
            kernel_path: Some("guest.elf".into()),
            preemption_bound_ns: 2_000_000,
            devices: Vec::new(),
        },
        exit_digest_interval: 64,
        created_unix_ns: 1,
        start_exits: 0,
    };
    let records = vec![
        Record::ClockRead { at: Landmark::Exit(1), clock: ClockId::Monotonic, value: 12345 },
        Record::World { at: Landmark::Exit(1), event: WorldEvent::PitExpired },
        Record::Interrupt { at: Landmark::Exit(1), vector: 0x20 },
        Record::Checkpoint { at: Landmark::Preempt(1), data: vec![1, 2, 3] },
        Record::ExitDigest { exits: 64, digest: [9; 32] },
        Record::SnapshotMark { exits: 64 },
    ];
    let e = End { exits: 64, exit_digest: [9; 32], exit_code: 0, state_digest: None };
    let (bytes, starts) = encode(&h, &records, &e);
    for cut in 0..bytes.len() {
        match read(&bytes[..cut]) {
            Err(LogError::Truncated { offset }) => {
                assert_eq!(offset, unit_of(&starts, cut as u64), "cut {cut}")
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    for pos in 0..bytes.len() {
        for xor in [0x01, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= xor;
            match read(&damaged) {
                Err(LogError::BadMagic { offset }) => assert_eq!(offset, pos as u64),
                Err(LogError::Corrupt { offset, .. }) => {
                    assert_eq!(offset, unit_of(&starts, pos as u64), "pos {pos}")
                }
                other => panic!("flip at {pos}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_log_without_end_is_truncated_unless_open_ended() {
    let h = LogHeader {
        machine: MachineDescription {
            image_digest: [0; 32],
            memory_size: 1 << 20,
            cmdline: String::new(),
            kernel_path: None,
            preemption_bound_ns: 0,
            devices: Vec::new(),
        },
        exit_digest_interval: 1,
        created_unix_ns: 0,
        start_exits: 0,
    };
    let mut writer = LogWriter::new(Vec::new(), &h).unwrap();
    writer.write(&Record::Interrupt { at: Landmark::Exit(3), vector: 8 }).unwrap();
    let end_offset = writer.offset();
    let bytes = writer.into_inner().unwrap();
    match read(&bytes) {
        Err(LogError::Truncated { offset }) => assert_eq!(offset, end_offset),
        other => panic!("{other:?}"),
    }
    let open = LogReader::new(&bytes[..]).unwrap().open_ended();
    assert_eq!(open.read_all().unwrap().len(), 1);
}

#[test]
fn a_newer_version_and_records_after_end_are_reported() {
    let h = LogHeader {
        machine: MachineDescription {
            image_digest: [0; 32],
            memory_size: 0,
            cmdline: "x".into(),
            kernel_path: None,
            preemption_bound_ns: 0,
            devices: Vec::new(),
        },
        exit_digest_interval: 4,
        created_unix_ns: 0,
        start_exits: 0,
    };
    // A version 2 header with a correct checksum is a newer format, not corruption.
    let mut header = h.encode().unwrap();
    header[8] = 2;
    let crc_at = header.len() - 4;
    let crc = crc32c::crc32c(&header[..crc_at]);
    header[crc_at..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(LogReader::new(&header[..]), Err(LogError::UnsupportedVersion { offset: 8, found: 2 })));

    let e = End { exits: 0, exit_digest: [0; 32], exit_code: 0, state_digest: None };
    let (mut bytes, _) = encode(&h, &[], &e);
    let after = bytes.len() as u64;
    let mut more = LogWriter::new(Vec::new(), &h).unwrap();
    more.write(&Record::Interrupt { at: Landmark::Exit(1), vector: 1 }).unwrap();
    let more = more.into_inner().unwrap();
    let header_len = h.encode().unwrap().len();
    bytes.extend_from_slice(&more[header_len..]);
    match read(&bytes) {
        Err(LogError::Corrupt { offset, reason: ftlog::Corruption::AfterEnd }) => assert_eq!(offset, after),
        other => panic!("{other:?}"),
    }
}

/// Throughput of encoding and decoding small records (run with --release --ignored).
#[test]
#[ignore]
fn throughput() {
    let h = LogHeader {
        machine: MachineDescription {
            image_digest: [0; 32],
            memory_size: 0,
            cmdline: String::new(),
            kernel_path: None,
            preemption_bound_ns: 0,
            devices: Vec::new(),
        },
        exit_digest_interval: 64,
        created_unix_ns: 0,
        start_exits: 0,
    };
    let n = 4_000_000u64;
    let t = std::time::Instant::now();
    let mut writer = LogWriter::new(Vec::with_capacity(128 << 20), &h).unwrap();
    for i in 0..n {
        writer.write(&Record::ClockRead { at: Landmark::Exit(i), clock: ClockId::Monotonic, value: i }).unwrap();
    }
    let bytes = writer.into_inner().unwrap();
    let enc = t.elapsed();
    let t = std::time::Instant::now();
    let mut count = 0usize;
    for item in LogReader::new(&bytes[..]).unwrap().open_ended() {
        item.unwrap();
        count += 1;
    }
    let dec = t.elapsed();
    assert_eq!(count as u64, n);
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "{} records, {mb:.0} MB: encode {:.0} MB/s ({:.0} ns/record), decode {:.0} MB/s ({:.0} ns/record)",
        n,
        mb / enc.as_secs_f64(),
        enc.as_nanos() as f64 / n as f64,
        mb / dec.as_secs_f64(),
        dec.as_nanos() as f64 / n as f64
    );
}

#[test]
fn a_snapshot_mark_has_the_documented_layout_and_is_checked() {
    let h = LogHeader {
        machine: MachineDescription {
            image_digest: [3; 32],
            memory_size: 1 << 20,
            cmdline: String::new(),
            kernel_path: None,
            preemption_bound_ns: 0,
            devices: Vec::new(),
        },
        exit_digest_interval: 8,
        created_unix_ns: 0,
        start_exits: 0,
    };
    let mark = Record::SnapshotMark { exits: 0x0102_0304_0506_0708 };
    assert_eq!(mark.kind() as u8, 8);
    assert_eq!(mark.landmark(), Some(Landmark::Exit(0x0102_0304_0506_0708)));
    assert_eq!(mark.to_string(), format!("snapshot mark at Exit({})", 0x0102_0304_0506_0708u64));
    let mut writer = LogWriter::new(Vec::new(), &h).unwrap();
    let header_len = writer.offset() as usize;
    writer.write(&mark).unwrap();
    let bytes = writer.into_inner().unwrap();
    // Still a version 1 log: kind 8 is an addition, not a format change.
    assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
    let mut body = vec![8u8];
    body.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&bytes[header_len..], &frame(&body)[..]);

    // Well-framed bodies that are too short or too long are corruption at that record.
    let header = h.encode().unwrap();
    for bad in [vec![8u8], vec![8, 1, 2, 3, 4, 5, 6, 7], {
        let mut long = body.clone();
        long.push(0);
        long
    }] {
        let mut log = header.clone();
        log.extend_from_slice(&frame(&bad));
        match LogReader::new(&log[..]).unwrap().open_ended().read_all() {
            Err(LogError::Corrupt { offset, reason }) => {
                assert_eq!(offset, header.len() as u64);
                assert!(
                    matches!(reason, ftlog::Corruption::Short("exits") | ftlog::Corruption::TrailingBytes(1)),
                    "{reason:?}"
                );
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // An unknown kind (the next one after the mark) is still corruption, not a new record.
    let mut log = header.clone();
    log.extend_from_slice(&frame(&[9, 0]));
    assert!(matches!(
        LogReader::new(&log[..]).unwrap().open_ended().read_all(),
        Err(LogError::Corrupt { reason: ftlog::Corruption::UnknownKind(9), .. })
    ));
}
