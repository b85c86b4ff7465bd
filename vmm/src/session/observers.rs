//! The vCPU loop's hooks for ftlog's recording world (primary) and replaying world (backup,
//! `ftvm replay`).

use crate::checkpoint;
use crate::error::Result;
use crate::machine::Machine;
use crate::vcpu::{ExitInfo, RunObserver};
use devices::{EventSource, Landmark};
use ftlog::{ExitSignature, RecordFeed, RecordingWorld, ReplayWorld};
use std::io::Write;

/// The signature of an exit as both sides fold it: what the exit was, where the guest was, and
/// what crossed the bus.
fn signature(exit: &ExitInfo, rip: u64) -> ExitSignature {
    ExitSignature { kind: exit.kind, rip, addr: exit.address, len: exit.len, value: exit.value }
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
impl<F: RecordFeed> RunObserver for ReplayWorld<F> {
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

    fn load_logged_preemption(&mut self, count: u64, machine: &mut Machine) -> Result<bool> {
        if self.next_preemption() != Some(count) {
            return Ok(false);
        }
        let bytes = self.take_checkpoint(Landmark::Preempt(count))?;
        checkpoint::apply(machine, &bytes)?;
        Ok(true)
    }

    fn checkpoint_comes_next(&mut self, count: u64) -> bool {
        self.next_preemption() == Some(count)
    }

    fn preempts_on_time(&self) -> bool {
        false
    }
}
