//! The disk's backend thread: requests leave the vCPU thread at once and complete later.
//!
//! A [`DiskQueue`] owns one thread per disk that applies, strictly in the order they were handed
//! over, the writes and flushes the output stage releases and the reads the device submits. Each
//! finished request becomes a [`WorldEvent::DiskDone`] on the completion channel (read data
//! included: the event is the bounce buffer), and the doorbell is rung so that a guest that does
//! not exit is kicked to take it. The live world delivers those events at a landmark like
//! received frames, so a recording logs each completion where the guest saw it and a replay
//! applies it at the same place without touching the disk.
//!
//! Because one thread applies everything in order, a read sees every write handed over before it;
//! writes still held by an output stage reach it as the read's patches (see
//! [`super::output::DiskRead`]).
//!
//! A write or flush the backend fails is fatal for the VM (the guest is never told a write
//! failed, see `output`): the failure is latched, nothing after it is applied, and the vCPU loop
//! stops with it ([`super::OutputStage::failure`]).

use super::disk::BlockBackend;
use super::output::{DiskRead, OutputError};
use crate::event::{Doorbell, WorldEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};

/// The longest the live world waits at a landmark for a disk completion, and only for disks that
/// usually answer within it (a local file's page cache does, a network store does not): taking
/// the completion at the exit that made the request saves the guest a halt, an interrupt and its
/// acknowledgement (several exits, each ~100 µs on a PVM host). As QEMU's adaptive polling.
pub const POLL_MAX: Duration = Duration::from_micros(1000);
/// Disks whose requests usually take longer than this are not waited for at all.
pub const QUICK_DISK: Duration = Duration::from_micros(500);

/// How busy and how quick the disks are, for the live world's short wait.
#[derive(Debug, Default)]
pub struct DiskActivity {
    /// Requests handed to backend threads and not finished, over all disks.
    outstanding: AtomicU64,
    /// Moving average (1/8 weight) of the time from handing a request over to its completion.
    service_ns: AtomicU64,
}

impl DiskActivity {
    /// How long a world may wait for the next completion now: requests are outstanding and the
    /// disks usually answer within [`QUICK_DISK`].
    pub fn worth_waiting(&self) -> Option<Duration> {
        let service = self.service_ns.load(Ordering::Relaxed);
        (self.outstanding.load(Ordering::Acquire) > 0 && service < QUICK_DISK.as_nanos() as u64).then_some(POLL_MAX)
    }

    fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.service_ns.load(Ordering::Relaxed);
        self.service_ns.store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }
}

/// The live world's end of the completion channel.
pub struct CompletionReceiver {
    pub events: crossbeam_channel::Receiver<WorldEvent>,
    pub activity: Arc<DiskActivity>,
}

/// Where completions go: the live world's channel, and the bell that wakes the vCPU for them.
#[derive(Clone)]
pub struct Completions {
    sender: crossbeam_channel::Sender<WorldEvent>,
    doorbell: Option<Doorbell>,
    activity: Arc<DiskActivity>,
}

impl Completions {
    /// A channel for completions and its receiving end, for the live world.
    pub fn channel(doorbell: Option<Doorbell>) -> (Self, CompletionReceiver) {
        let (sender, events) = crossbeam_channel::unbounded();
        let activity = Arc::new(DiskActivity::default());
        (Self { sender, doorbell, activity: Arc::clone(&activity) }, CompletionReceiver { events, activity })
    }

    fn deliver(&self, event: WorldEvent) {
        // A world that went away (the run ended) no longer needs completions.
        let _ = self.sender.send(event);
        // A world waiting for a quick disk has taken it already: a kick now would only stop the
        // guest later, at an arbitrary instruction, for nothing.
        if !self.sender.is_empty() {
            self.ring();
        }
    }

    fn ring(&self) {
        if let Some(bell) = &self.doorbell {
            bell();
        }
    }
}

enum Op {
    Write { id: u64, offset: u64, data: Vec<u8> },
    Flush { id: u64 },
    Read(DiskRead),
}

/// A request and when it was handed over.
struct Queued(Op, Instant);

/// What the thread and the stage share.
#[derive(Default)]
struct Shared {
    /// Requests handed over and not finished.
    outstanding: Mutex<u64>,
    idle: Condvar,
    failure: Mutex<Option<Arc<OutputError>>>,
}

/// Longest wait, when the stage is dropped, for the thread to apply what it still has: a disk
/// that cannot take a write for this long is abandoned (the process is ending anyway).
const DRAIN_ON_DROP: Duration = Duration::from_secs(30);

/// One disk's backend thread and the way to it.
pub struct DiskQueue {
    device: u8,
    backend: Arc<dyn BlockBackend>,
    ops: Option<crossbeam_channel::Sender<Queued>>,
    worker: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    activity: Arc<DiskActivity>,
}

impl DiskQueue {
    /// Starts the thread of disk `device` on `backend`, completing into `completions`. If the
    /// thread cannot start, the queue is failed from the start.
    pub fn start(device: u8, backend: Arc<dyn BlockBackend>, completions: Completions) -> Self {
        Self::start_with_flush_window(device, backend, completions, FLUSH_WINDOW)
    }

    /// [`DiskQueue::start`] waiting `flush_window` for a FLUSH behind a write (tests choose one
    /// far from the scheduler's jitter).
    fn start_with_flush_window(
        device: u8,
        backend: Arc<dyn BlockBackend>,
        completions: Completions,
        flush_window: Duration,
    ) -> Self {
        let (ops, requests) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let activity = Arc::clone(&completions.activity);
        let spawned = {
            let (backend, shared) = (Arc::clone(&backend), Arc::clone(&shared));
            std::thread::Builder::new()
                .name(format!("disk-{device}"))
                .spawn(move || serve(device, backend.as_ref(), &requests, &completions, &shared, flush_window))
        };
        let worker = match spawned {
            Ok(worker) => Some(worker),
            Err(source) => {
                tracing::error!(device, %source, "the disk's backend thread could not start");
                *shared.failure.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::new(OutputError::Thread { device, cause: source }));
                None
            }
        };
        Self { device, backend, ops: worker.is_some().then_some(ops), worker, shared, activity }
    }

    pub fn backend(&self) -> &dyn BlockBackend {
        self.backend.as_ref()
    }

    pub fn write(&self, id: u64, offset: u64, data: Vec<u8>) -> Result<(), OutputError> {
        self.send(Op::Write { id, offset, data })
    }

    pub fn flush(&self, id: u64) -> Result<(), OutputError> {
        self.send(Op::Flush { id })
    }

    pub fn read(&self, read: DiskRead) -> Result<(), OutputError> {
        self.send(Op::Read(read))
    }

    /// The write or flush that failed, once one has: the VM must stop.
    pub fn failure(&self) -> Option<Arc<OutputError>> {
        self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until every request handed over has finished, for at most `timeout`; returns
    /// whether they all did.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut outstanding = self.shared.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
        while *outstanding > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            outstanding = match self.shared.idle.wait_timeout(outstanding, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    fn send(&self, op: Op) -> Result<(), OutputError> {
        if let Some(failure) = self.failure() {
            return Err(OutputError::Failed { device: self.device, first: failure });
        }
        *self.shared.outstanding.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.activity.outstanding.fetch_add(1, Ordering::AcqRel);
        let sent = self.ops.as_ref().is_some_and(|ops| ops.send(Queued(op, Instant::now())).is_ok());
        if !sent {
            self.activity.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.shared.finished();
            return Err(OutputError::NoDisk { device: self.device });
        }
        Ok(())
    }
}

impl Drop for DiskQueue {
    /// Whatever the guest wrote is applied before the disk is let go (a write the guest has not
    /// seen complete may still be one it relies on after a flush it has not issued yet; applying
    /// it is what a disk's cache would do too).
    fn drop(&mut self) {
        drop(self.ops.take());
        if !self.wait_idle(DRAIN_ON_DROP) {
            tracing::warn!(device = self.device, disk = %self.backend.name(), "disk requests still unfinished after 30 s; abandoned");
            return;
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn finished(&self) {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(PoisonError::into_inner);
        *outstanding = outstanding.saturating_sub(1);
        if *outstanding == 0 {
            self.idle.notify_all();
        }
    }

    fn failed(&self) -> bool {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

/// How long after a write was queued a disk whose durable writes are cheaper than a write and
/// a sync ([`BlockBackend::durable_write_is_cheaper`]) waits for a FLUSH behind it.
const FLUSH_WINDOW: Duration = Duration::from_micros(100);

fn serve(
    device: u8,
    backend: &dyn BlockBackend,
    requests: &crossbeam_channel::Receiver<Queued>,
    completions: &Completions,
    shared: &Shared,
    flush_window: Duration,
) {
    let ok = VIRTIO_BLK_S_OK as u8;
    let activity = &completions.activity;
    let coalesce = backend.durable_write_is_cheaper();
    // One request of lookahead: a write followed by a FLUSH already queued is written durably.
    let mut next: Option<Queued> = None;
    while let Some(Queued(op, queued)) = next.take().or_else(|| requests.recv().ok()) {
        if shared.failed() {
            // Nothing after a failed write is applied: the VM stops at the next landmark.
            activity.outstanding.fetch_sub(1, Ordering::AcqRel);
            shared.finished();
            continue;
        }
        if coalesce && matches!(op, Op::Write { .. }) {
            next = requests.try_recv().ok().or_else(|| {
                // The guest hands a write and its FLUSH over in one notification, but the vCPU
                // thread queues them one after the other, and this thread may wake in between.
                // A write queued a moment ago waits that long for its FLUSH: written durably it
                // saves the sync's round trip, many times the wait.
                let left = flush_window.checked_sub(queued.elapsed())?;
                requests.recv_timeout(left).ok()
            });
        }
        let flush_follows = matches!(next, Some(Queued(Op::Flush { .. }, _)));
        let done = match op {
            Op::Write { id, offset, data } => {
                let written = if flush_follows {
                    backend.write_durable_at(offset, &data)
                } else {
                    backend.write_at(offset, &data)
                };
                written.map(|()| WorldEvent::DiskDone { device, id, status: ok, data: Vec::new() }).map_err(|source| {
                    OutputError::DiskWrite { device, path: backend.name(), offset, len: data.len(), cause: source }
                })
            }
            Op::Flush { id } => backend
                .flush()
                .map(|()| WorldEvent::DiskDone { device, id, status: ok, data: Vec::new() })
                .map_err(|source| OutputError::DiskFlush { device, path: backend.name(), cause: source }),
            Op::Read(read) => Ok(serve_read(device, backend, read)),
        };
        activity.record(queued.elapsed());
        // Counted down before the event is sent, so a world that sees none outstanding has them all.
        activity.outstanding.fetch_sub(1, Ordering::AcqRel);
        match done {
            Ok(event) => completions.deliver(event),
            Err(error) => {
                tracing::error!(device, %error, "disk request failed: the VM stops");
                *shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(error));
                completions.ring();
            }
        }
        shared.finished();
    }
}

/// A read: the bytes of the backend with the held writes laid over them, or zeros and an I/O
/// error status for the guest when the backend fails.
fn serve_read(device: u8, backend: &dyn BlockBackend, read: DiskRead) -> WorldEvent {
    let DiskRead { id, offset, len, patches, .. } = read;
    let mut data = vec![0u8; len];
    let status = match backend.read_at(offset, &mut data) {
        Ok(()) => {
            for (at, bytes) in &patches {
                super::output::lay_over(&mut data, offset, *at, bytes);
            }
            VIRTIO_BLK_S_OK as u8
        }
        Err(error) => {
            tracing::warn!(device, %error, offset, len, "disk read failed; the guest gets an I/O error");
            data.fill(0);
            VIRTIO_BLK_S_IOERR as u8
        }
    };
    WorldEvent::DiskDone { device, id, status, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory disk that notes what it was asked, and whose first read waits for a gate (so
    /// that the requests after it are all queued when the thread comes to them).
    struct Noting {
        bytes: Mutex<Vec<u8>>,
        calls: Mutex<Vec<&'static str>>,
        gate: Mutex<Option<crossbeam_channel::Receiver<()>>>,
        cheaper: bool,
    }

    impl BlockBackend for Noting {
        fn name(&self) -> String {
            "noting".into()
        }
        fn size(&self) -> u64 {
            4096
        }
        fn readonly(&self) -> bool {
            false
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            if let Some(gate) = self.gate.lock().unwrap().take() {
                let _ = gate.recv();
            }
            self.calls.lock().unwrap().push("read");
            let bytes = self.bytes.lock().unwrap();
            buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.calls.lock().unwrap().push("write");
            self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_durable_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.calls.lock().unwrap().push("durable write");
            self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.calls.lock().unwrap().push("flush");
            Ok(())
        }
        fn durable_write_is_cheaper(&self) -> bool {
            self.cheaper
        }
    }

    /// Runs a gated read, then write, flush, write, read on a disk; returns its calls and the
    /// completions in order.
    fn run(cheaper: bool) -> (Vec<&'static str>, Vec<(u64, Vec<u8>)>) {
        let (open, gate) = crossbeam_channel::bounded(1);
        let disk = Arc::new(Noting {
            bytes: Mutex::new(vec![0; 4096]),
            calls: Mutex::default(),
            gate: Mutex::new(Some(gate)),
            cheaper,
        });
        let (completions, receiver) = Completions::channel(None);
        let queue = DiskQueue::start(0, disk.clone(), completions);
        let read = |id, offset| DiskRead { device: 0, id, offset, len: 4, patches: Vec::new() };
        queue.read(read(0, 0)).unwrap();
        queue.write(1, 0, b"abcd".to_vec()).unwrap();
        queue.flush(2).unwrap();
        queue.write(3, 4, b"efgh".to_vec()).unwrap();
        queue.read(read(4, 2)).unwrap();
        open.send(()).unwrap();
        assert!(queue.wait_idle(Duration::from_secs(5)));
        let done = receiver
            .events
            .try_iter()
            .map(|e| match e {
                WorldEvent::DiskDone { id, data, .. } => (id, data),
                other => panic!("{other:?}"),
            })
            .collect();
        let calls = disk.calls.lock().unwrap().clone();
        (calls, done)
    }

    /// A write handed over to an idle thread, and its FLUSH `gap` later; returns the disk's calls.
    fn write_then_flush_after(gap: Duration, window: Duration) -> Vec<&'static str> {
        let disk = Arc::new(Noting {
            bytes: Mutex::new(vec![0; 4096]),
            calls: Mutex::default(),
            gate: Mutex::new(None),
            cheaper: true,
        });
        let (completions, _receiver) = Completions::channel(None);
        let queue = DiskQueue::start_with_flush_window(0, disk.clone(), completions, window);
        queue.write(1, 0, b"abcd".to_vec()).unwrap();
        std::thread::sleep(gap);
        queue.flush(2).unwrap();
        assert!(queue.wait_idle(Duration::from_secs(5)));
        let calls = disk.calls.lock().unwrap().clone();
        calls
    }

    #[test]
    fn a_flush_queued_just_after_its_write_reached_the_idle_thread_still_makes_it_durable() {
        // The thread has long taken the write when the FLUSH comes: it waits for it within the
        // window, and not beyond.
        let gap = Duration::from_millis(30);
        assert_eq!(write_then_flush_after(gap, Duration::from_secs(2)), ["durable write", "flush"]);
        assert_eq!(write_then_flush_after(gap, Duration::ZERO), ["write", "flush"]);
    }

    #[test]
    fn requests_complete_in_order_and_a_write_with_its_flush_queued_behind_it_is_written_durably() {
        let expected_done = vec![(0, vec![0; 4]), (1, vec![]), (2, vec![]), (3, vec![]), (4, b"cdef".to_vec())];
        let (calls, done) = run(true);
        assert_eq!(calls, ["read", "durable write", "flush", "write", "read"]);
        assert_eq!(done, expected_done, "a read sees every write handed over before it");
        let (calls, done) = run(false);
        assert_eq!(calls, ["read", "write", "flush", "write", "read"]);
        assert_eq!(done, expected_done);
    }
}
