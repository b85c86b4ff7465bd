//! Recording and replaying a run: the vCPU loop's hooks for ftlog's recording world (primary)
//! and replaying world (backup, `ftvm replay`).

use crate::checkpoint;
use crate::error::{Result, VmmError};
use crate::machine::{KernelSource, Machine, MachineConfig};
use crate::vcpu::{ExitInfo, ExitKind, RunObserver};
use devices::{EventSource, Landmark};
use ftlog::{ExitSignature, LogHeader, RecordingWorld, ReplayWorld};
use std::io::{Read, Write};
use std::time::Duration;

/// The signature of an exit as both sides fold it: what the exit was, where the guest was, and
/// what crossed the bus.
fn signature(exit: &ExitInfo, rip: u64) -> ExitSignature {
    let kind = match exit.kind {
        ExitKind::IoIn => ftlog::ExitKind::PioIn,
        ExitKind::IoOut => ftlog::ExitKind::PioOut,
        ExitKind::MmioRead => ftlog::ExitKind::MmioRead,
        ExitKind::MmioWrite => ftlog::ExitKind::MmioWrite,
        ExitKind::Hlt => ftlog::ExitKind::Hlt,
        ExitKind::IrqWindow => ftlog::ExitKind::IrqWindow,
    };
    ExitSignature { kind, rip, addr: exit.address, len: exit.len, value: exit.value }
}

/// The primary: every exit folded into the digest, every interrupt and every preemption
/// checkpoint written to the log.
impl<S: EventSource, W: Write> RunObserver for RecordingWorld<S, W> {
    fn on_exit(&mut self, _count: u64, exit: &ExitInfo, rip: u64) -> Result<()> {
        self.record_exit(&signature(exit, rip))?;
        Ok(())
    }

    fn wants_rip(&self) -> bool {
        true
    }

    fn on_interrupt(&mut self, at: Landmark, vector: u8) -> Result<()> {
        Ok(self.record_interrupt(at, vector)?)
    }

    fn on_snapshot(&mut self, exits: u64) -> Result<()> {
        self.mark_snapshot(exits)?;
        Ok(self.flush()?)
    }

    fn on_preempt(&mut self, at: Landmark, machine: &mut Machine) -> Result<()> {
        let bytes = checkpoint::capture(machine)?;
        Ok(self.record_checkpoint(at, &bytes)?)
    }
}

/// The replayer: every exit checked against the recording, preempted stretches loaded from
/// their checkpoints, never a kick of its own.
impl<R: Read> RunObserver for ReplayWorld<R> {
    fn on_exit(&mut self, _count: u64, exit: &ExitInfo, rip: u64) -> Result<()> {
        self.check_exit(&signature(exit, rip))?;
        Ok(())
    }

    fn wants_rip(&self) -> bool {
        true
    }

    fn on_interrupt(&mut self, at: Landmark, vector: u8) -> Result<()> {
        Ok(self.expect_interrupt(at, vector)?)
    }

    fn at_boundary(&mut self, exits: u64) -> Result<bool> {
        Ok(self.pass_snapshot_mark(exits)?)
    }

    fn replace_run(&mut self, count: u64, machine: &mut Machine) -> Result<bool> {
        if self.next_preemption() != Some(count) {
            return Ok(false);
        }
        let bytes = self.take_checkpoint(Landmark::Preempt(count))?;
        checkpoint::apply(machine, &bytes)?;
        Ok(true)
    }

    fn kicks(&self) -> bool {
        false
    }
}

/// The log header that names this machine, so a replayer can build the same one.
pub fn log_header(machine: &Machine, exit_digest_interval: u32, start_exits: u64) -> LogHeader {
    LogHeader {
        image_digest: machine.image_digest,
        memory_size: machine.ram.size,
        cmdline: machine.config.cmdline.clone(),
        kernel_path: match &machine.config.kernel {
            KernelSource::File(path) => Some(path.display().to_string()),
            KernelSource::Embedded => None,
        },
        preemption_bound_ns: machine.config.preempt_bound.as_nanos() as u64,
        exit_digest_interval: exit_digest_interval.max(1),
        start_exits,
        machine: postcard::to_allocvec(&machine.devices).unwrap_or_default(),
        created_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    }
}

/// The virtio devices a log was recorded with (none for a log without a description).
pub fn recorded_devices(header: &LogHeader) -> Result<Vec<crate::virtio_setup::DeviceDescription>> {
    if header.machine.is_empty() {
        return Ok(Vec::new());
    }
    postcard::from_bytes(&header.machine)
        .map_err(|e| VmmError::Checkpoint(format!("the log's machine description does not decode: {e}")))
}

/// The machine a log was recorded on. Checks that the kernel is the recorded one.
pub fn machine_for_log(header: &LogHeader, serial_out: Box<dyn Write + Send>) -> Result<Machine> {
    let config = MachineConfig {
        kernel: header.kernel_path.as_ref().map_or(KernelSource::Embedded, |p| KernelSource::File(p.into())),
        memory_mib: header.memory_size >> 20,
        cmdline: header.cmdline.clone(),
        initrd: None,
        preempt_bound: Duration::from_nanos(header.preemption_bound_ns),
        dirty_logging: false,
        devices: crate::machine::DeviceSetup::Replay(recorded_devices(header)?),
    };
    let machine = Machine::new(config, serial_out)?;
    if machine.image_digest != header.image_digest {
        return Err(VmmError::Checkpoint(format!(
            "the kernel {} is not the one this log was recorded with",
            header.kernel_path.as_deref().unwrap_or("<ftvm guest>")
        )));
    }
    Ok(machine)
}
