//! The vCPU loop: run the guest, hand every exit to the board, and let the world in only here.
//!
//! Between two exits a single-vCPU guest is a deterministic function of its memory and
//! registers. So everything the world chooses (clock values, timer expiry, device data) and
//! every interrupt reaches the guest at an exit, stamped with the exit's [`Landmark`]. Exits the
//! guest causes (I/O, MMIO, HLT, and interrupt windows it opens after we asked at an exit) are
//! counted: the n-th one is `Exit(n)` on every run. A kick out of `KVM_RUN` because an interrupt
//! waited too long lands at an arbitrary instruction: that is `Preempt(n)`, which a recorder
//! covers with a checkpoint and a replayer restores instead of executing.

use crate::control::Request;
use crate::error::{kvm, Result, VcpuFailure, VmmError};
use crate::kick::Kicker;
use crate::machine::Machine;
use crate::stats::ExitStats;
use devices::virtio::OutputError;
use devices::{EventSource, IoOutcome, Landmark, WorldStop};
pub use ftlog::ExitKind;
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

// kvm-ioctls has no wrapper for KVM_INTERRUPT, which only a VMM without an in-kernel irqchip
// needs.
ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// One deterministic exit, as a recorder or replayer checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub kind: ExitKind,
    /// Port or guest-physical address (0 for HLT and interrupt windows).
    pub address: u64,
    /// Access size in bytes (of one element, for string I/O).
    pub len: u8,
    /// The value written, or for reads the value the guest got (little-endian, up to 8 bytes);
    /// for string I/O of more than 8 bytes, a 64-bit FNV-1a hash of all of them.
    pub value: u64,
}

/// Why a run ended.
#[derive(Clone, Debug)]
pub enum StopReason {
    PowerOff(u32),
    Reset,
    GuestPanic {
        code: u32,
        rip: u64,
    },
    /// The guest triple-faulted.
    Shutdown {
        rip: u64,
    },
    /// The guest halted with interrupts disabled: it can never wake up.
    HaltedForever {
        rip: u64,
    },
    /// The control handle (or a signal) asked the run to stop.
    StopRequested,
    /// The control handle asked the run to pause: it can be continued from its position.
    Paused,
    /// The world stopped the run: a replay's log ended or diverged, a stream was lost.
    World(WorldStop),
    /// A device backend failed in a way the VM cannot survive.
    DeviceFailed(Arc<OutputError>),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::PowerOff(code) => write!(f, "the guest powered off with code {code}"),
            StopReason::Reset => write!(f, "the guest reset itself"),
            StopReason::GuestPanic { code, rip } => {
                write!(f, "the guest reported a fatal fault (code {code:#x}) at rip {rip:#x}")
            }
            StopReason::Shutdown { rip } => write!(f, "the guest triple-faulted (shutdown) at rip {rip:#x}"),
            StopReason::HaltedForever { rip } => {
                write!(f, "the guest halted with interrupts disabled at rip {rip:#x}: it can never wake up")
            }
            StopReason::StopRequested => f.write_str(crate::stop::stop_reason().unwrap_or("stopped by request")),
            StopReason::Paused => write!(f, "paused"),
            StopReason::World(stop) => write!(f, "{stop}"),
            StopReason::DeviceFailed(error) => write!(f, "a device failed and the VM cannot go on: {error}"),
        }
    }
}

/// Where a run stands: at boot, at a snapshot, or where an earlier run stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunPosition {
    /// Deterministic exits so far (the next exit is `Exit(exits + 1)`).
    pub exits: u64,
    /// The guest executed HLT and waits for an interrupt.
    pub halted: bool,
    /// The vCPU was last stopped by a preemption after exit `exits` (the landmark is
    /// `Preempt(exits)`, not `Exit(exits)`).
    pub preempted: bool,
    /// The world's events and the interrupt of this landmark have been delivered: the next
    /// step is entering the guest (a run whose input ended just there).
    pub delivered: bool,
}

impl RunPosition {
    /// The landmark the run stands at.
    pub fn landmark(&self) -> Landmark {
        if self.preempted {
            Landmark::Preempt(self.exits)
        } else {
            Landmark::Exit(self.exits)
        }
    }

    fn at(at: Landmark, halted: bool, delivered: bool) -> Self {
        RunPosition { exits: at.exit_count(), halted, preempted: matches!(at, Landmark::Preempt(_)), delivered }
    }
}

/// How a run ended: why, where (a run can be continued from there with another world and
/// other backends), and what it did.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub reason: StopReason,
    pub position: RunPosition,
    pub stats: ExitStats,
}

/// What a recorder or replayer needs to see of a run. All methods default to doing nothing.
pub trait RunObserver {
    /// A deterministic exit, after the board handled it: for reads, `exit.value` is what the
    /// guest got, so a replayer notices a changed clock value at the very exit that read it.
    /// `rip` is the guest's instruction pointer (0 unless [`RunObserver::wants_rip`]).
    fn on_exit(&mut self, _count: u64, _exit: &ExitInfo, _rip: u64) -> Result<()> {
        Ok(())
    }
    /// Whether `on_exit` needs the instruction pointer (one register read per exit).
    fn wants_rip(&self) -> bool {
        false
    }
    /// At the top of the loop after exit `exits` was handled, before the world's events there:
    /// a replayer passes the recording's snapshot mark here, and says so.
    fn at_boundary(&mut self, _exits: u64) -> Result<bool> {
        Ok(false)
    }
    /// A snapshot of the machine was saved at this boundary: a recorder marks its log there, so
    /// a replay can start from the snapshot.
    fn on_snapshot(&mut self, _exits: u64) -> Result<()> {
        Ok(())
    }
    /// An interrupt was injected at `at`.
    fn on_interrupt(&mut self, _at: Landmark, _vector: u8) -> Result<()> {
        Ok(())
    }
    /// The guest was stopped at an arbitrary instruction (`Preempt(n)`), before any event is
    /// applied there: a recorder takes its checkpoint now.
    fn on_preempt(&mut self, _at: Landmark, _machine: &mut Machine) -> Result<()> {
        Ok(())
    }
    /// Called before each entry into the guest after `count` deterministic exits. A replayer
    /// whose log has `Preempt(count)` next loads that checkpoint into the machine and returns
    /// true: the loop then continues at `Preempt(count)` without running the guest.
    fn load_logged_preemption(&mut self, _count: u64, _machine: &mut Machine) -> Result<bool> {
        Ok(false)
    }
    /// Whether the next thing the world has for exit count `count` is a preemption checkpoint
    /// (a replayer whose log has `Preempt(count)` next). An interrupt injected just before it
    /// is then not queued in KVM: the checkpoint holds the state after the guest took it.
    fn checkpoint_comes_next(&mut self, _count: u64) -> bool {
        false
    }
    /// Whether the loop arms its own preemption timer. A replayer does not: its preemptions
    /// come from the log.
    fn preempts_on_time(&self) -> bool {
        true
    }
}

/// The world of a run as the loop sees it: the event source that answers the guest's questions
/// and the observer of its exits, in one object (a recorder is both).
pub trait RunWorld: EventSource + RunObserver {}
impl<T: EventSource + RunObserver + ?Sized> RunWorld for T {}

/// A plain run on this host: nothing to record.
impl RunObserver for devices::HostWorld {}

/// Save a snapshot when the run reaches this many exits.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    pub at_exits: u64,
    pub path: PathBuf,
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub start: RunPosition,
    pub snapshot: Option<SnapshotRequest>,
}

impl RunOptions {
    /// An error if these options asked for a snapshot that the run (its `stats`) never saved:
    /// the run ended before reaching the requested exit.
    pub fn check_snapshot_saved(&self, stats: &ExitStats) -> Result<()> {
        match &self.snapshot {
            Some(request) if stats.snapshots_saved == 0 => Err(VmmError::Snapshot {
                path: request.path.clone(),
                reason: format!(
                    "not written: the run ended after {} exits, before --snapshot-at {}",
                    self.start.exits + stats.exits,
                    request.at_exits
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Runs the machine until it powers off, resets, faults, is stopped or paused, or its world
/// has no more to say. The returned position is where it stood: [`run`] again from there, with
/// the same world or another one (a backup going live), continues the same execution.
pub fn run(machine: &mut Machine, world: &mut dyn RunWorld, options: RunOptions) -> Result<RunEnd> {
    // A stop signal is answered here; the watchdog gives the caller time to close its log after.
    let _phase = crate::stop::RunPhase::enter();
    let control = machine.control.clone();
    let bound = machine.config.preempt_bound;
    let kicker = if world.preempts_on_time() {
        let immediate_exit = &mut machine.vcpu.get_kvm_run().immediate_exit as *mut u8;
        Some(Kicker::for_this_thread(immediate_exit)?)
    } else {
        None
    };
    // Declared after the kicker so that it is dropped (detaching the timer) before it.
    let _attached = match &kicker {
        Some(kicker) => control.attach(kicker, bound),
        None => control.attach_without_timer(),
    };
    let mut snapshot = options.snapshot;
    let mut stats = ExitStats::default();
    let mut count = options.start.exits;
    let mut at = options.start.landmark();
    let mut halted = options.start.halted;
    // String I/O moves up to a page per exit; one buffer serves every exit.
    let mut payload = Vec::with_capacity(4096);
    let end = |reason, at, halted, stats| Ok(RunEnd { reason, position: RunPosition::at(at, halted, false), stats });
    let mut delivered = options.start.delivered;

    loop {
        if !std::mem::take(&mut delivered) {
            if let Landmark::Exit(exits) = at {
                let position = RunPosition { exits, halted, ..Default::default() };
                let pending = snapshot.is_some();
                at_boundary(machine, world, position, &mut snapshot)?;
                stats.snapshots_saved += u64::from(pending && snapshot.is_none());
            }
            if let Some(reason) = stop_here(machine, world) {
                return end(reason, at, halted, stats);
            }
            if let Some(reason) = deliver_world_events(machine, world, at) {
                return end(reason, at, halted, stats);
            }
            if halted {
                if let Some(reason) = wait_for_interrupt(machine, world, at)? {
                    return end(reason, at, halted, stats);
                }
                halted = false;
            }
            inject_pending_interrupt(machine, world, at, &mut stats)?;
            // The world may have said its last word at this landmark (an event, an interrupt):
            // stop before the guest runs on, where another world can take over.
            if let Some(stop @ WorldStop::InputEnded { .. }) = world.stop_reason() {
                return Ok(RunEnd {
                    reason: StopReason::World(stop),
                    position: RunPosition::at(at, false, true),
                    stats,
                });
            }
        }

        if world.load_logged_preemption(count, machine)? {
            at = Landmark::Preempt(count);
            stats.preemptions += 1;
            continue;
        }
        if let Some(kicker) = &kicker {
            arm_kick(kicker, machine, world, bound)?;
        }

        let info = match enter_guest_settled(machine, &mut payload, kicker.as_ref())? {
            Entered::Exit(info) => info,
            Entered::Kicked => {
                machine.vcpu.set_kvm_immediate_exit(0);
                stats.preemptions += 1;
                at = Landmark::Preempt(count);
                tracing::debug!(%at, "vCPU kicked out: an event waited longer than the bound");
                world.on_preempt(at, machine)?;
                continue;
            }
            Entered::Shutdown { rip } => return end(StopReason::Shutdown { rip }, at, halted, stats),
        };

        count += 1;
        at = Landmark::Exit(count);
        crate::telemetry::vitals().exit_reached(count);
        stats.count(info.kind);
        let (outcome, info) = handle_exit(machine, world, info, at, &mut payload, &mut halted);
        let rip = if world.wants_rip() { machine.rip()? } else { 0 };
        tracing::trace!(%at, kind = ?info.kind, address = format_args!("{:#x}", info.address), len = info.len, value = format_args!("{:#x}", info.value), "exit");
        world.on_exit(count, &info, rip)?;
        if let Some(reason) = stop_reason_of(machine, outcome) {
            return end(reason, at, halted, stats);
        }
    }
}

/// Whether the run stops at this landmark: the world has no more to say, or the control handle
/// asked.
fn stop_here(machine: &Machine, world: &dyn RunWorld) -> Option<StopReason> {
    if let Some(stop) = world.stop_reason() {
        return Some(StopReason::World(stop));
    }
    // A disk write the backend failed (on its own thread) stops the VM at the next landmark.
    if let Some(error) = machine.board.output_failure() {
        return Some(StopReason::DeviceFailed(error));
    }
    if crate::stop::stop_requested() {
        return Some(StopReason::StopRequested);
    }
    match machine.control.take_request() {
        Some(Request::Stop) => Some(StopReason::StopRequested),
        Some(Request::Pause) => Some(StopReason::Paused),
        None => None,
    }
}

/// The exit boundary: where a replayer passes the recording's snapshot marks and where a
/// requested snapshot is taken.
fn at_boundary(
    machine: &mut Machine,
    world: &mut dyn RunWorld,
    position: RunPosition,
    snapshot: &mut Option<SnapshotRequest>,
) -> Result<()> {
    if world.at_boundary(position.exits)? {
        // Where the recording took a snapshot, its checkpoints start from no bases.
        machine.checkpoint_bases.clear();
    }
    if let Some(request) = snapshot.take_if(|request| position.exits >= request.at_exits) {
        machine.complete_pending_io()?;
        crate::snapshot::save(machine, position, world.monotonic_now(), &request.path)?;
        world.on_snapshot(position.exits)?;
        machine.checkpoint_bases.clear();
        tracing::info!(exits = position.exits, path = %request.path.display(), "snapshot saved");
    }
    Ok(())
}

/// Hands a deterministic exit to the board. Returns what the run must do next and the exit as
/// a recorder or replayer sees it (for reads, with the value the guest got).
fn handle_exit(
    machine: &mut Machine,
    world: &mut dyn RunWorld,
    info: ExitInfo,
    at: Landmark,
    payload: &mut [u8],
    halted: &mut bool,
) -> (IoOutcome, ExitInfo) {
    let element = usize::from(info.len.max(1));
    let outcome = match info.kind {
        ExitKind::PioIn => {
            for chunk in payload.chunks_mut(element) {
                machine.board.pio_read(info.address as u16, chunk, at, world);
            }
            copy_to_run(&mut machine.vcpu, payload);
            IoOutcome::Continue
        }
        ExitKind::PioOut => payload
            .chunks(element)
            .map(|chunk| machine.board.pio_write(info.address as u16, chunk, at, world))
            .find(|outcome| !matches!(outcome, IoOutcome::Continue))
            .unwrap_or(IoOutcome::Continue),
        ExitKind::MmioRead => {
            machine.board.mmio_read(info.address, payload, at, world);
            copy_to_run(&mut machine.vcpu, payload);
            IoOutcome::Continue
        }
        ExitKind::MmioWrite => machine.board.mmio_write(info.address, payload, at, world),
        ExitKind::Hlt => {
            *halted = true;
            IoOutcome::Continue
        }
        ExitKind::IrqWindow => {
            machine.vcpu.get_kvm_run().request_interrupt_window = 0;
            IoOutcome::Continue
        }
    };
    let info = match info.kind {
        ExitKind::PioIn | ExitKind::MmioRead => ExitInfo { value: signature_value(payload), ..info },
        _ => info,
    };
    (outcome, info)
}

/// How one `KVM_RUN` ended.
enum Entered {
    /// A deterministic exit (its data in the payload buffer).
    Exit(ExitInfo),
    /// The vCPU was kicked out.
    Kicked,
    /// The guest triple-faulted.
    Shutdown { rip: u64 },
}

/// After a kick that landed where the vCPU state is incomplete (see
/// [`Machine::stopped_after_int3`]) the guest is re-entered at once, as if the kick had not
/// happened: no landmark, no event, nothing a replay could see. It is kicked again shortly.
const RETRY_KICK_AFTER: Duration = Duration::from_micros(50);

/// `KVM_RUN` until an exit, a kick at a point that can be checkpointed, or a shutdown.
fn enter_guest_settled(machine: &mut Machine, payload: &mut Vec<u8>, kicker: Option<&Kicker>) -> Result<Entered> {
    loop {
        let entered = enter_guest(machine, payload)?;
        if let (Entered::Kicked, Some(kicker)) = (&entered, kicker) {
            if machine.stopped_after_int3()? {
                machine.vcpu.set_kvm_immediate_exit(0);
                kicker.arm(RETRY_KICK_AFTER)?;
                tracing::trace!("kick landed just after an int3; re-entering");
                continue;
            }
            if machine.kicked_before_taking_an_interrupt()? {
                machine.vcpu.set_kvm_immediate_exit(0);
                kicker.arm(RETRY_KICK_AFTER)?;
                tracing::trace!("kick landed before the guest took the injected interrupt; re-entering");
                continue;
            }
        }
        return Ok(entered);
    }
}

/// One `KVM_RUN`.
fn enter_guest(machine: &mut Machine, payload: &mut Vec<u8>) -> Result<Entered> {
    payload.clear();
    let result = machine.vcpu.run();
    machine.regs_synced = true;
    let exit = match result {
        Err(e) if e.errno() == libc::EINTR => return Ok(Entered::Kicked),
        Err(e) => return Err(VmmError::Kvm { what: "run the vCPU", cause: e }),
        Ok(exit) => exit,
    };
    let info = match exit {
        VcpuExit::Intr => return Ok(Entered::Kicked),
        VcpuExit::Shutdown => {
            let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            return Ok(Entered::Shutdown { rip });
        }
        VcpuExit::IoOut(port, data) => {
            payload.extend_from_slice(data);
            ExitInfo { kind: ExitKind::PioOut, address: port.into(), len: 0, value: 0 }
        }
        VcpuExit::IoIn(port, data) => {
            payload.resize(data.len(), 0);
            ExitInfo { kind: ExitKind::PioIn, address: port.into(), len: 0, value: 0 }
        }
        VcpuExit::MmioRead(addr, data) => {
            payload.resize(data.len(), 0);
            ExitInfo { kind: ExitKind::MmioRead, address: addr, len: 0, value: 0 }
        }
        VcpuExit::MmioWrite(addr, data) => {
            payload.extend_from_slice(data);
            ExitInfo { kind: ExitKind::MmioWrite, address: addr, len: 0, value: 0 }
        }
        VcpuExit::Hlt => ExitInfo { kind: ExitKind::Hlt, address: 0, len: 0, value: 0 },
        VcpuExit::IrqWindowOpen => ExitInfo { kind: ExitKind::IrqWindow, address: 0, len: 0, value: 0 },
        other => {
            let what = format!("{other:?}");
            let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            return Err(VmmError::VcpuFailed(if what == "InternalError" {
                VcpuFailure::InternalError { rip }
            } else {
                VcpuFailure::UnexpectedExit { what, rip }
            }));
        }
    };
    Ok(Entered::Exit(ExitInfo {
        len: element_size(&mut machine.vcpu, payload.len()),
        value: signature_value(payload),
        ..info
    }))
}

/// The size of one element of the access: the I/O size for port I/O (string I/O moves several),
/// the whole access for MMIO.
fn element_size(vcpu: &mut VcpuFd, total: usize) -> u8 {
    let run = vcpu.get_kvm_run();
    if run.exit_reason == kvm_bindings::KVM_EXIT_IO {
        // SAFETY: the exit reason says the io member of the union is the live one.
        unsafe { run.__bindgen_anon_1.io.size }
    } else {
        total.min(255) as u8
    }
}

/// The bytes that crossed the bus, as the exit signature holds them: up to 8 bytes as a
/// little-endian value, more as their FNV-1a hash.
fn signature_value(data: &[u8]) -> u64 {
    if data.len() <= 8 {
        let mut bytes = [0u8; 8];
        bytes[..data.len()].copy_from_slice(data);
        u64::from_le_bytes(bytes)
    } else {
        data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
    }
}

/// What an exit's outcome means for the run: nothing (go on), or why it ends.
fn stop_reason_of(machine: &mut Machine, outcome: IoOutcome) -> Option<StopReason> {
    match outcome {
        IoOutcome::Continue => None,
        IoOutcome::PowerOff(code) => Some(StopReason::PowerOff(code)),
        IoOutcome::Reset => Some(StopReason::Reset),
        IoOutcome::GuestPanic(code) => {
            let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            Some(StopReason::GuestPanic { code, rip })
        }
        IoOutcome::Fatal(error) => Some(StopReason::DeviceFailed(error)),
    }
}

/// Applies what the world did by now; a completion the board cannot take (a corrupt log) stops
/// the run.
fn deliver_world_events(machine: &mut Machine, world: &mut dyn RunWorld, at: Landmark) -> Option<StopReason> {
    let mut failed = None;
    for event in world.poll(at, machine.board.deadlines()) {
        if let Err(error) = machine.board.apply(event) {
            failed.get_or_insert(StopReason::DeviceFailed(error));
        }
    }
    failed
}

/// The guest executed HLT: wait, as the CPU would, until an interrupt can wake it.
fn wait_for_interrupt(machine: &mut Machine, world: &mut dyn RunWorld, at: Landmark) -> Result<Option<StopReason>> {
    while !machine.board.interrupt_pending() {
        if machine.vcpu.get_kvm_run().if_flag == 0 {
            let rip = machine.vcpu.get_regs().map_err(kvm("read registers"))?.rip;
            return Ok(Some(StopReason::HaltedForever { rip }));
        }
        world.wait_idle(at, machine.board.deadlines());
        if let Some(reason) = stop_here(machine, world) {
            return Ok(Some(reason));
        }
        if let Some(reason) = deliver_world_events(machine, world, at) {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// Injects the PIC's interrupt if the guest can take it now; otherwise it waits for the next
/// exit, or for the kick that [`arm_kick`] arms for it.
///
/// No interrupt-window exit is ever requested: on a PVM host the exit that follows a guest's
/// IRET from emulated ring 0 comes at the IRET on one run and at the next HLT on another, from
/// the same state, so it cannot be a landmark both sides of a log agree on. A kick is: it is
/// recorded with a checkpoint.
fn inject_pending_interrupt(
    machine: &mut Machine,
    world: &mut dyn RunWorld,
    at: Landmark,
    stats: &mut ExitStats,
) -> Result<()> {
    let run = machine.vcpu.get_kvm_run();
    run.request_interrupt_window = 0;
    if !machine.board.interrupt_pending() {
        return Ok(());
    }
    if run.ready_for_interrupt_injection == 0 || run.if_flag == 0 {
        tracing::trace!(%at, "interrupt pending, guest not interruptible: it waits for the next exit or kick");
        return Ok(());
    }
    let Some(vector) = machine.board.acknowledge_interrupt() else {
        return Ok(());
    };
    stats.interrupts_injected += 1;
    world.on_interrupt(at, vector)?;
    if world.checkpoint_comes_next(at.exit_count()) {
        // The recording was preempted after the guest took this interrupt: the checkpoint
        // loaded next already holds its effect. Queuing it in KVM as well would have a PVM host
        // deliver it a second time (it keeps a queued interrupt where the checkpoint's vCPU
        // events cannot clear it).
        tracing::debug!(%at, vector = format_args!("{vector:#x}"), "interrupt taken in the checkpoint that follows");
        return Ok(());
    }
    let irq = kvm_interrupt { irq: vector.into() };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which is valid for the
    // call; the fd is a vCPU fd.
    let ret = unsafe { ioctl_with_ref(&machine.vcpu, KVM_INTERRUPT(), &irq) };
    if ret != 0 {
        return Err(VmmError::Kvm { what: "inject an interrupt", cause: kvm_ioctls::Error::last() });
    }
    tracing::debug!(%at, vector = format_args!("{vector:#x}"), "interrupt injected");
    Ok(())
}

/// Arms the kick for when the earliest timer is due plus the bound, or for the bound from now
/// when a backend has input waiting or an interrupt waits for a guest that cannot take it yet
/// (it is injected at the next exit, or at the kick).
fn arm_kick(kicker: &Kicker, machine: &Machine, world: &dyn RunWorld, bound: Duration) -> Result<()> {
    let wait = if world.input_pending() || machine.board.interrupt_pending() {
        Some(Duration::ZERO)
    } else {
        machine.board.deadlines().earliest().and_then(|deadline| world.time_until(deadline))
    };
    match wait {
        Some(wait) => kicker.arm(wait + bound)?,
        None => kicker.disarm()?,
    }
    Ok(())
}

/// Puts the answer to an IN or MMIO read into the run page, where KVM picks it up on re-entry.
fn copy_to_run(vcpu: &mut VcpuFd, answer: &[u8]) {
    let run = vcpu.get_kvm_run();
    match run.exit_reason {
        kvm_bindings::KVM_EXIT_IO => {
            // SAFETY: the exit reason says the io member of the union is the live one.
            let io = unsafe { run.__bindgen_anon_1.io };
            let len = (io.size as usize * io.count as usize).min(answer.len());
            let base = run as *mut kvm_bindings::kvm_run as *mut u8;
            // SAFETY: data_offset points inside the kvm_run mapping (the kernel guarantees it),
            // which holds at least size*count bytes there.
            unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), base.add(io.data_offset as usize), len) };
        }
        kvm_bindings::KVM_EXIT_MMIO => {
            // SAFETY: the exit reason says the mmio member of the union is the live one.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            let len = (mmio.len as usize).min(answer.len()).min(mmio.data.len());
            mmio.data[..len].copy_from_slice(&answer[..len]);
        }
        _ => {}
    }
}
