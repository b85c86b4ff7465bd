//! Runs as the user starts them, assembled from the machine, a world and backends: a plain live
//! run, a recording ([`record`]), a replay from a log ([`replay`]), a restore from a snapshot,
//! and a run continued from where another stopped with another world ([`go_live`]). The `ftvm`
//! binary, the tests and the benchmarks all go through here.

pub mod observers;
pub mod record;
pub mod replay;

use crate::backends::{Backends, NetInputs};
use crate::control::VcpuControl;
use crate::error::Result;
use crate::machine::{Machine, MachineConfig};
use crate::snapshot;
use crate::vcpu::{run, RunEnd, RunOptions, RunPosition};
use devices::HostWorld;
use std::io::Write;
use std::path::Path;

/// The live world of this host, its monotonic clock reading `monotonic_ns` now, delivering the
/// frames the attached backends receive.
pub fn live_world(nets: NetInputs, monotonic_ns: u64) -> HostWorld {
    let mut world = HostWorld::resuming_at(monotonic_ns);
    for (device, frames) in nets.frames {
        world.attach_net(device, frames);
    }
    if let Some(completions) = nets.disk_completions {
        world.attach_disks(completions);
    }
    world
}

/// Builds a machine with `backends` attached and returns it with the live world that delivers
/// their input.
pub fn live_machine(config: MachineConfig, backends: Backends, control: VcpuControl) -> Result<(Machine, HostWorld)> {
    let mut machine = Machine::new(config, control)?;
    let (nets, _) = machine.attach(backends);
    Ok((machine, live_world(nets, 0)))
}

/// Continues a machine that stopped at `position` in another world (a replay whose input
/// ended) as a live machine of this host: the monotonic clock carries on from
/// `monotonic_ns` (so it never goes backwards and timers keep their deadlines), the backends
/// are attached at this landmark, and the run goes on from exactly where it stood.
pub fn go_live(machine: &mut Machine, backends: Backends, position: RunPosition, monotonic_ns: u64) -> Result<RunEnd> {
    let (nets, _) = machine.attach(backends);
    let mut world = live_world(nets, monotonic_ns);
    tracing::info!(at = %position.landmark(), monotonic_ns, "going live");
    run(machine, &mut world, RunOptions { start: position, snapshot: None })
}

/// Restores the snapshot file `path` and runs it on this host, on the backends it had.
pub fn restore_and_run(path: &Path, console: Box<dyn Write + Send>, control: VcpuControl) -> Result<(Machine, RunEnd)> {
    let started = std::time::Instant::now();
    let reader = snapshot::load(path)?;
    let backends = Backends::reopen(&reader.snapshot.machine.devices, console, control.doorbell())?;
    let (mut machine, snapshot) = reader.restore(control)?;
    tracing::info!(took = ?started.elapsed(), exits = snapshot.position.exits, "snapshot restored");
    let (nets, _) = machine.attach(backends);
    let mut world = live_world(nets, snapshot.monotonic_ns);
    let end = run(&mut machine, &mut world, RunOptions { start: snapshot.position, snapshot: None })?;
    Ok((machine, end))
}
