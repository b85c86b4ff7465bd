//! The output stages on their own: what [`DirectOutput`] and [`DiscardOutput`] do with each
//! output, a boxed stage, a failed disk, and how a read sees the writes laid over it.

use super::disk::BlockBackend;
use super::disk_queue::{CompletionReceiver, Completions};
use super::output::{lay_over, DirectOutput, DiscardOutput, DiskRead, Output, OutputError, OutputStage};
use crate::event::{Landmark, WorldEvent};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AT: Landmark = Landmark::Exit(1);
const EIO: i32 = 5;

/// A console whose bytes the test reads back.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Console {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An in-memory disk; its writes can be held at a gate, then take a while and fail with EIO.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    readonly: bool,
    gate: Mutex<Option<crossbeam_channel::Receiver<()>>>,
    fail_writes: bool,
}

impl MemDisk {
    fn new(readonly: bool) -> Self {
        Self { bytes: Mutex::new(vec![0; 4096]), readonly, gate: Mutex::new(None), fail_writes: false }
    }
}

impl BlockBackend for MemDisk {
    fn name(&self) -> String {
        "mem".into()
    }
    fn size(&self) -> u64 {
        4096
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.bytes.lock().unwrap();
        buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.recv();
            // Still busy for a while once let through, so that a wait that does not wait sees it.
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.fail_writes {
            return Err(std::io::Error::from_raw_os_error(EIO));
        }
        self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn direct(disks: Vec<Arc<dyn BlockBackend>>, console: &Console) -> (DirectOutput, CompletionReceiver) {
    let (completions, receiver) = Completions::channel(None);
    (DirectOutput::new(vec![None], disks, Box::new(console.clone()), completions), receiver)
}

fn next_completion(receiver: &CompletionReceiver) -> WorldEvent {
    receiver.events.recv_timeout(Duration::from_secs(5)).expect("a completion within 5 s")
}

fn read(device: u8, offset: u64, len: usize) -> DiskRead {
    DiskRead { device, id: 9, offset, len, patches: Vec::new() }
}

#[test]
fn a_write_is_laid_over_exactly_the_bytes_of_a_read_it_overlaps() {
    // Every placement of a write around and inside a read, against a byte-by-byte model.
    for offset in [0u64, 100] {
        for buf_len in [0usize, 1, 8] {
            for at in offset.saturating_sub(12)..offset + 12 {
                for data_len in [0usize, 1, 5, 20] {
                    let data: Vec<u8> = (1..=data_len as u8).collect();
                    let mut buf = vec![0xee; buf_len];
                    lay_over(&mut buf, offset, at, &data);
                    let want: Vec<u8> = (0..buf_len as u64)
                        .map(|i| {
                            let pos = offset + i;
                            if pos >= at && pos < at + data_len as u64 {
                                data[(pos - at) as usize]
                            } else {
                                0xee
                            }
                        })
                        .collect();
                    assert_eq!(buf, want, "read {buf_len} at {offset}, write {data_len} at {at}");
                }
            }
        }
    }
}

#[test]
fn io_cause_names_the_backend_error_behind_a_failure() {
    let write = OutputError::DiskWrite {
        device: 0,
        path: "mem".into(),
        offset: 0,
        len: 1,
        cause: std::io::Error::from_raw_os_error(EIO),
    };
    assert_eq!(write.io_cause().and_then(std::io::Error::raw_os_error), Some(EIO));
    let flush = OutputError::DiskFlush { device: 0, path: "mem".into(), cause: std::io::Error::from_raw_os_error(28) };
    let later = OutputError::Failed { device: 0, first: Arc::new(flush) };
    assert_eq!(later.io_cause().and_then(std::io::Error::raw_os_error), Some(28), "the first failure's cause");
    assert!(OutputError::NoDisk { device: 3 }.io_cause().is_none());
    assert!(OutputError::ReadOnly { device: 0, path: "mem".into() }.io_cause().is_none());
}

#[test]
fn direct_output_releases_each_output_to_its_backend() {
    let console = Console::default();
    let writable = Arc::new(MemDisk::new(false));
    let disks: Vec<Arc<dyn BlockBackend>> = vec![Arc::new(MemDisk::new(true)), writable.clone()];
    let (mut stage, receiver) = direct(disks, &console);

    stage.emit(AT, Output::Console { bytes: b"hello".to_vec() }).unwrap();
    assert_eq!(console.bytes(), b"hello");
    // Net device 0 has no TAP: its frames are dropped, which is no error.
    stage.emit(AT, Output::NetFrame { device: 0, frame: vec![1; 60] }).unwrap();

    stage.emit(AT, Output::DiskWrite { device: 1, id: 4, offset: 512, data: b"abcd".to_vec() }).unwrap();
    assert!(matches!(next_completion(&receiver), WorldEvent::DiskDone { device: 1, id: 4, status: 0, .. }));
    assert_eq!(&writable.bytes.lock().unwrap()[512..516], b"abcd");
    stage.submit_read(read(1, 510, 4)).unwrap();
    match next_completion(&receiver) {
        WorldEvent::DiskDone { device: 1, id: 9, status: 0, data } => assert_eq!(data, [0, 0, b'a', b'b']),
        other => panic!("{other:?}"),
    }

    let refused = stage.emit(AT, Output::DiskWrite { device: 0, id: 5, offset: 0, data: vec![1] });
    assert!(matches!(refused, Err(OutputError::ReadOnly { device: 0, .. })), "{refused:?}");
    let missing = stage.emit(AT, Output::DiskFlush { device: 7, id: 6 });
    assert!(matches!(missing, Err(OutputError::NoDisk { device: 7 })), "{missing:?}");
    let missing = stage.submit_read(read(7, 0, 4));
    assert!(matches!(missing, Err(OutputError::NoDisk { device: 7 })), "{missing:?}");
    assert!(stage.failure().is_none());
    assert!(stage.settle(Duration::from_secs(5)));
}

#[test]
fn a_boxed_stage_waits_for_and_reports_a_failed_disk_write() {
    let (open, gate) = crossbeam_channel::bounded(1);
    let disk = MemDisk { gate: Mutex::new(Some(gate)), fail_writes: true, ..MemDisk::new(false) };
    let (direct, _receiver) = direct(vec![Arc::new(disk)], &Console::default());
    let mut stage: Box<dyn OutputStage + Send> = Box::new(direct);

    stage.emit(AT, Output::DiskWrite { device: 0, id: 0, offset: 0, data: vec![1; 512] }).unwrap();
    assert!(!stage.settle(Duration::from_millis(50)), "the write is held at the gate");
    assert!(stage.failure().is_none(), "not failed yet");
    open.send(()).unwrap();
    assert!(stage.settle(Duration::from_secs(5)), "the write finished (and failed)");

    let failure = stage.failure().expect("the failed write is latched");
    assert_eq!(failure.io_cause().and_then(std::io::Error::raw_os_error), Some(EIO), "{failure}");
    let later = stage.emit(AT, Output::DiskFlush { device: 0, id: 1 });
    assert!(matches!(later, Err(OutputError::Failed { device: 0, .. })), "{later:?}");
    let later = stage.submit_read(read(0, 0, 512));
    assert!(matches!(later, Err(OutputError::Failed { device: 0, .. })), "{later:?}");
}

#[test]
fn discard_output_drops_everything_but_a_console_it_shows() {
    let mut hidden = DiscardOutput::default();
    hidden.emit(AT, Output::Console { bytes: b"x".to_vec() }).unwrap();
    hidden.emit(AT, Output::NetFrame { device: 0, frame: vec![1] }).unwrap();
    hidden.submit_read(read(0, 0, 512)).unwrap();
    assert_eq!(hidden.dropped, 3);
    // Nothing held, nothing to fail: a replay never waits for its stage.
    assert!(hidden.failure().is_none());
    assert!(hidden.settle(Duration::ZERO));

    let console = Console::default();
    let mut shown = DiscardOutput::showing_console(Box::new(console.clone()));
    shown.emit(AT, Output::Console { bytes: b"login: ".to_vec() }).unwrap();
    assert_eq!((console.bytes(), shown.dropped), (b"login: ".to_vec(), 0));
    shown.emit(AT, Output::DiskWrite { device: 0, id: 0, offset: 0, data: vec![1] }).unwrap();
    shown.submit_read(read(0, 0, 512)).unwrap();
    assert_eq!(shown.dropped, 2);
}
