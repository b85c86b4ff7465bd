//! The vCPU loop: run the guest, hand every exit to the board, and let the world in only here.
//!
//! Between two exits a single-vCPU guest is a deterministic function of its memory and
//! registers. So everything the world chooses (clock values, timer expiry, device data) and
//! every interrupt reaches the guest at an exit, stamped with the exit's [`Landmark`]. Exits the
//! guest causes (I/O, MMIO, HLT) are counted: the n-th one is `Exit(n)` on every run. A kick out
//! of `KVM_RUN` because an interrupt waited too long lands at an arbitrary instruction: that is
//! `Preempt(n)`, which a recorder covers with a checkpoint.

use crate::error::{kvm, Result, VmmError};
use crate::kick::Kicker;
use crate::machine::Machine;
use crate::stats::ExitStats;
use devices::{EventSource, IoOutcome, Landmark};
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::time::Duration;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

// kvm-ioctls has no wrapper for KVM_INTERRUPT, which only a VMM without an in-kernel irqchip
// needs.
ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// The kind of a deterministic exit and what the guest put on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
}

/// One deterministic exit, as a recorder or replayer checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub kind: ExitKind,
    /// Port or guest-physical address (0 for HLT).
    pub address: u64,
    pub len: u8,
    /// For writes, the value written (little-endian, up to 8 bytes).
    pub value: u64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    PowerOff(u32),
    Reset,
    GuestPanic { code: u32, rip: u64 },
    /// The guest triple-faulted.
    Shutdown { rip: u64 },
    /// The world (e.g. a replaying log) or an observer stopped the run.
    Stopped(String),
}

/// Where a run starts: at boot, or where a snapshot or checkpoint left off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunPosition {
    /// Deterministic exits so far (the next exit is `Exit(exits + 1)`).
    pub exits: u64,
    /// The guest executed HLT at the last exit and waits for an interrupt.
    pub halted: bool,
}

/// What a recorder or replayer needs to see of a run. All methods default to doing nothing, so
/// a plain run passes [`NoObserver`].
pub trait RunObserver {
    /// A deterministic exit, before the board handles it.
    fn on_exit(&mut self, _count: u64, _exit: &ExitInfo, _vcpu: &VcpuFd) -> Result<()> {
        Ok(())
    }
    /// At the top of the loop, after exit `position.exits` was handled and before the world
    /// gets its say at that exit: the one point where the machine can be snapshotted and
    /// later resumed exactly.
    fn at_boundary(&mut self, _position: RunPosition, _machine: &mut Machine, _world: &dyn EventSource) -> Result<()> {
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
    fn replace_run(&mut self, _count: u64, _machine: &mut Machine) -> Result<bool> {
        Ok(false)
    }
    /// A replayer never kicks the vCPU: its preemptions come from the log.
    fn kicks(&self) -> bool {
        true
    }
}

/// The observer of a plain run.
pub struct NoObserver;
impl RunObserver for NoObserver {}

/// Runs the machine from boot until it powers off, resets, faults or is stopped.
pub fn run(
    machine: &mut Machine,
    world: &mut dyn EventSource,
    observer: &mut dyn RunObserver,
) -> Result<(RunOutcome, ExitStats)> {
    run_from(machine, world, observer, RunPosition::default())
}

/// Runs the machine from `start` (a restored snapshot's position).
pub fn run_from(
    machine: &mut Machine,
    world: &mut dyn EventSource,
    observer: &mut dyn RunObserver,
    start: RunPosition,
) -> Result<(RunOutcome, ExitStats)> {
    let kicker = if observer.kicks() {
        let immediate_exit = &mut machine.vcpu.get_kvm_run().immediate_exit as *mut u8;
        Some(Kicker::for_this_thread(immediate_exit)?)
    } else {
        None
    };
    let bound = machine.config.preempt_bound;
    let mut stats = ExitStats::default();
    let mut count = start.exits;
    let mut at = Landmark::Exit(count);
    let mut halted = start.halted;

    loop {
        if let Landmark::Exit(exits) = at {
            observer.at_boundary(RunPosition { exits, halted }, machine, &*world)?;
        }
        if let Some(reason) = world.stop_reason() {
            return Ok((RunOutcome::Stopped(reason), stats));
        }
        deliver_world_events(machine, world, at);
        if halted {
            if let Some(outcome) = wait_for_interrupt(machine, world, at)? {
                return Ok((outcome, stats));
            }
            halted = false;
        }
        inject_pending_interrupt(machine, observer, at, &mut stats)?;

        if observer.replace_run(count, machine)? {
            at = Landmark::Preempt(count);
            stats.preemptions += 1;
            continue;
        }
        if let Some(kicker) = &kicker {
            arm_kick(kicker, machine, world, bound)?;
        }

        let exit = machine.vcpu.run();
        let (info, outcome) = match exit {
            Err(e) if e.errno() == libc::EINTR => {
                machine.vcpu.set_kvm_immediate_exit(0);
                stats.preemptions += 1;
                at = Landmark::Preempt(count);
                observer.on_preempt(at, machine)?;
                continue;
            }
            Err(e) => return Err(VmmError::Kvm { what: "run the vCPU", source: e }),
            Ok(VcpuExit::Intr) => {
                stats.preemptions += 1;
                at = Landmark::Preempt(count);
                observer.on_preempt(at, machine)?;
                continue;
            }
            Ok(VcpuExit::IrqWindowOpen) => {
                // The guest opened its interrupt window at an instruction we did not choose:
                // treat it like a kick.
                stats.irq_window += 1;
                stats.exits += 1;
                machine.vcpu.get_kvm_run().request_interrupt_window = 0;
                at = Landmark::Preempt(count);
                observer.on_preempt(at, machine)?;
                continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let info = ExitInfo { kind: ExitKind::IoOut, address: port.into(), len: data.len() as u8, value: le_value(data) };
                stats.io += 1;
                (info, Some(port))
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.io += 1;
                count += 1;
                at = Landmark::Exit(count);
                let info = ExitInfo { kind: ExitKind::IoIn, address: port.into(), len: data.len() as u8, value: 0 };
                // The data slice borrows the vCPU's run page; the observer needs the vCPU too,
                // so answer into a local buffer and copy back.
                let mut buf = [0u8; 8];
                let len = data.len().min(8);
                observer.on_exit(count, &info, &machine.vcpu)?;
                machine.board.pio_read(port, &mut buf[..len], at, world);
                copy_to_run(&mut machine.vcpu, &buf[..len]);
                stats.exits += 1;
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.mmio += 1;
                count += 1;
                at = Landmark::Exit(count);
                let info = ExitInfo { kind: ExitKind::MmioRead, address: addr, len: data.len() as u8, value: 0 };
                let mut buf = [0u8; 8];
                let len = data.len().min(8);
                observer.on_exit(count, &info, &machine.vcpu)?;
                machine.board.mmio_read(addr, &mut buf[..len], at, world);
                copy_to_run(&mut machine.vcpu, &buf[..len]);
                stats.exits += 1;
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let info = ExitInfo { kind: ExitKind::MmioWrite, address: addr, len: data.len() as u8, value: le_value(data) };
                stats.mmio += 1;
                let value = info.value.to_le_bytes();
                let value = &value[..usize::from(info.len).min(8)];
                count += 1;
                at = Landmark::Exit(count);
                stats.exits += 1;
                observer.on_exit(count, &info, &machine.vcpu)?;
                match machine.board.mmio_write(addr, value, at, world) {
                    IoOutcome::Continue => continue,
                    other => return finish(machine, other, stats),
                }
            }
            Ok(VcpuExit::Hlt) => {
                stats.hlt += 1;
                let info = ExitInfo { kind: ExitKind::Hlt, address: 0, len: 0, value: 0 };
                halted = true;
                (info, None)
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Ok((RunOutcome::Shutdown { rip }, stats));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(VmmError::VcpuFailed(format!(
                    "entry failed: hardware reason {reason:#x} on host cpu {cpu}"
                )))
            }
            Ok(VcpuExit::InternalError) => {
                let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(VmmError::VcpuFailed(format!(
                    "KVM internal error (its emulator could not run the guest) at rip {rip:#x}"
                )));
            }
            Ok(other) => {
                let what = format!("{other:?}");
                let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(VmmError::VcpuFailed(format!("unexpected exit {what} at rip {rip:#x}")));
            }
        };

        // Port writes and HLT: count the exit, show it to the observer, then act on it.
        count += 1;
        at = Landmark::Exit(count);
        stats.exits += 1;
        observer.on_exit(count, &info, &machine.vcpu)?;
        if let Some(port) = outcome {
            // The bytes written are the little-endian value the exit signature already holds.
            let value = info.value.to_le_bytes();
            match machine.board.pio_write(port, &value[..usize::from(info.len).min(8)], at, world) {
                IoOutcome::Continue => {}
                other => return finish(machine, other, stats),
            }
        }
    }
}

fn finish(machine: &mut Machine, outcome: IoOutcome, stats: ExitStats) -> Result<(RunOutcome, ExitStats)> {
    let outcome = match outcome {
        IoOutcome::PowerOff(code) => RunOutcome::PowerOff(code),
        IoOutcome::Reset => RunOutcome::Reset,
        IoOutcome::GuestPanic(code) => {
            let rip = machine.vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            RunOutcome::GuestPanic { code, rip }
        }
        IoOutcome::Continue => unreachable!("finish is only called for outcomes that end the run"),
    };
    Ok((outcome, stats))
}

fn deliver_world_events(machine: &mut Machine, world: &mut dyn EventSource, at: Landmark) {
    for event in world.poll(at, machine.board.deadlines()) {
        machine.board.apply(&event);
    }
}

/// The guest executed HLT: wait, as the CPU would, until an interrupt can wake it.
fn wait_for_interrupt(machine: &mut Machine, world: &mut dyn EventSource, at: Landmark) -> Result<Option<RunOutcome>> {
    while !machine.board.interrupt_pending() {
        if machine.vcpu.get_kvm_run().if_flag == 0 {
            let rip = machine.vcpu.get_regs().map_err(kvm("read registers"))?.rip;
            return Ok(Some(RunOutcome::Stopped(format!(
                "the guest halted with interrupts disabled at rip {rip:#x}: it can never wake up"
            ))));
        }
        world.wait_idle(at, machine.board.deadlines());
        if let Some(reason) = world.stop_reason() {
            return Ok(Some(RunOutcome::Stopped(reason)));
        }
        deliver_world_events(machine, world, at);
    }
    Ok(None)
}

/// Injects the PIC's interrupt if the guest can take it now; otherwise asks KVM to exit as soon
/// as it can.
fn inject_pending_interrupt(
    machine: &mut Machine,
    observer: &mut dyn RunObserver,
    at: Landmark,
    stats: &mut ExitStats,
) -> Result<()> {
    if !machine.board.interrupt_pending() {
        return Ok(());
    }
    let run = machine.vcpu.get_kvm_run();
    if run.ready_for_interrupt_injection == 0 || run.if_flag == 0 {
        run.request_interrupt_window = 1;
        return Ok(());
    }
    run.request_interrupt_window = 0;
    let Some(vector) = machine.board.acknowledge_interrupt() else {
        return Ok(());
    };
    let irq = kvm_interrupt { irq: vector.into() };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which is valid for the
    // call; the fd is a vCPU fd.
    let ret = unsafe { ioctl_with_ref(&machine.vcpu, KVM_INTERRUPT(), &irq) };
    if ret != 0 {
        return Err(VmmError::Kvm { what: "inject an interrupt", source: kvm_ioctls::Error::last() });
    }
    stats.interrupts_injected += 1;
    observer.on_interrupt(at, vector)
}

/// Arms the kick for when the earliest timer is due plus the bound; or at once plus the bound if
/// an interrupt already waits for the guest to open its window.
fn arm_kick(kicker: &Kicker, machine: &Machine, world: &dyn EventSource, bound: Duration) -> Result<()> {
    let wait = if machine.board.interrupt_pending() {
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

fn le_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let len = data.len().min(8);
    bytes[..len].copy_from_slice(&data[..len]);
    u64::from_le_bytes(bytes)
}
