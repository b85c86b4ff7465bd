//! Replaying a log: the recorded machine rebuilt from the log's header (or from a snapshot the
//! recording took), run from the log alone, and its end checked against the recorded one.

use crate::control::VcpuControl;
use crate::digest;
use crate::error::{Result, VmmError};
use crate::machine::{Machine, MachineConfig};
use crate::snapshot;
use crate::vcpu::{run, RunEnd, RunOptions, RunPosition, StopReason};
use devices::virtio::DiscardOutput;
use devices::WorldStop;
use ftlog::{LogHeader, LogReader, LogStats, RecordFeed, ReplayWorld};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// How a replay went.
pub enum Replayed {
    /// The replay reached the recorded end, with the same exits, exit digest, exit code and
    /// state digest.
    Identical { stats: LogStats, state_digest: blake3::Hash },
    /// The replay diverged, or the log is damaged: why, as `ftvm replay` prints it after
    /// `replay: `.
    Failed(String),
}

/// The machine a log was recorded on, with its device models and no backends.
pub fn machine_for_log(header: &LogHeader, control: VcpuControl) -> Result<Machine> {
    let machine = Machine::new(MachineConfig::from_description(&header.machine), control)?;
    machine.matches(&header.machine, "the log")?;
    Ok(machine)
}

/// Replays the log file `log`, from boot or, with `from`, from a snapshot its recording took;
/// what the replayed guest prints goes to `console` (its other outputs were the recording's).
pub fn replay_file(
    log: &Path,
    from: Option<&Path>,
    console: Box<dyn std::io::Write + Send>,
    control: VcpuControl,
) -> Result<Replayed> {
    let file =
        crate::input_file::open(log).map_err(|e| std::io::Error::other(format!("log {}: {e}", log.display())))?;
    let mut replayer = ReplayWorld::new(BufReader::with_capacity(1 << 20, file))?;
    let (mut machine, start) = match from {
        None => (machine_for_log(replayer.header(), control)?, RunPosition::default()),
        Some(path) => {
            let (machine, snapshot) = snapshot::load(path)?.restore(control)?;
            if machine.image_digest != replayer.header().machine.image_digest {
                return Err(VmmError::WrongGuest {
                    what: format!("snapshot {}", path.display()),
                    reason: format!("it is not of the guest log {} was recorded with", log.display()),
                });
            }
            if let Err(error) = replayer.skip_to_snapshot(snapshot.position.exits) {
                return Ok(Replayed::Failed(error.to_string()));
            }
            (machine, snapshot.position)
        }
    };
    machine.attach_output(Box::new(DiscardOutput::showing_console(console)));
    replay(&mut machine, &mut replayer, start)
}

/// Runs `machine` from `start` in `replayer` to the end of the recording, and checks the end.
pub fn replay<F: RecordFeed>(
    machine: &mut Machine,
    replayer: &mut ReplayWorld<F>,
    start: RunPosition,
) -> Result<Replayed> {
    let end = match run(machine, replayer, RunOptions { start, snapshot: None }) {
        Ok(end) => end,
        Err(VmmError::Replay(error)) => return Ok(Replayed::Failed(error.to_string())),
        Err(other) => return Err(other),
    };
    finish(machine, replayer, &end)
}

/// Checks a replay's end against the recorded one.
pub fn finish<F: RecordFeed>(machine: &Machine, replayer: &mut ReplayWorld<F>, end: &RunEnd) -> Result<Replayed> {
    let code = match &end.reason {
        StopReason::PowerOff(code) => Some(*code),
        StopReason::World(WorldStop::RecordingEnds { .. }) => None,
        StopReason::World(other) => return Ok(Replayed::Failed(other.to_string())),
        _ => None,
    };
    let state_digest = digest::state_digest(machine)?;
    if let Err(error) = replayer.finish(code, Some(*state_digest.as_bytes())) {
        return Ok(Replayed::Failed(error.to_string()));
    }
    Ok(Replayed::Identical { stats: replayer.stats(), state_digest })
}

/// A reader of the log file `path` that accepts a log without its End (one still being
/// written, or cut short): its replay stops where the records stop.
pub fn open_ended_log(path: &Path) -> Result<LogReader<BufReader<File>>> {
    let file =
        crate::input_file::open(path).map_err(|e| std::io::Error::other(format!("log {}: {e}", path.display())))?;
    Ok(LogReader::new(BufReader::new(file))?.open_ended())
}
