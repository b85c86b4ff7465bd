//! Recording a run: the log header from the machine, a recording world around the live one,
//! the run, the End record, and the log made durable. Written once, for `ftvm run --record`,
//! the demo, the tests and the benchmarks.

use crate::error::Result;
use crate::machine::Machine;
use crate::vcpu::{run, RunEnd, RunOptions, StopReason};
use crate::{checkpoint, digest};
use devices::HostWorld;
use ftlog::{LogHeader, LogStats, RecordingWorld};
use std::io::{BufWriter, Write};
use std::path::Path;

/// What a recording produced.
pub struct Recording {
    pub end: RunEnd,
    /// The state digest at the end, as the End record holds it.
    pub state_digest: blake3::Hash,
    pub stats: LogStats,
    pub log_bytes: u64,
    /// Wall time of the run itself (without the final digest and closing the log).
    pub run_time: std::time::Duration,
}

/// The log header that names this machine, so a replayer can build the same one.
pub fn log_header(machine: &Machine, exit_digest_interval: u32, start_exits: u64) -> LogHeader {
    LogHeader {
        machine: machine.description(),
        exit_digest_interval: exit_digest_interval.max(1),
        start_exits,
        created_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    }
}

/// Runs `machine` in `world`, recording every input into `out`; returns the recording and the
/// writer, flushed.
pub fn record_to<W: Write>(
    machine: &mut Machine,
    world: HostWorld,
    out: W,
    digest_every: u32,
    options: RunOptions,
) -> Result<(Recording, W)> {
    let header = log_header(machine, digest_every, options.start.exits);
    let mut recorder = RecordingWorld::new(world, out, &header)?;
    let started = std::time::Instant::now();
    let end = run(machine, &mut recorder, options)?;
    let run_time = started.elapsed();
    let state_digest = digest::state_digest(machine)?;
    let code = match end.reason {
        StopReason::PowerOff(code) => code,
        _ => u32::MAX,
    };
    let recorded = recorder.finish(code, Some(*state_digest.as_bytes()))?;
    let (_, pages, bytes, nanos) = checkpoint::capture_totals();
    tracing::info!(
        log_bytes = recorded.log_bytes,
        events = recorded.stats.events(),
        checkpoints = recorded.stats.checkpoints,
        checkpoint_pages = pages,
        checkpoint_bytes = bytes,
        checkpoint_ms = nanos / 1_000_000,
        "log written"
    );
    let recording = Recording { end, state_digest, stats: recorded.stats, log_bytes: recorded.log_bytes, run_time };
    Ok((recording, recorded.writer))
}

/// As [`record_to`], into the file `path`, synced to disk before this returns.
pub fn record_to_file(
    machine: &mut Machine,
    world: HostWorld,
    path: &Path,
    digest_every: u32,
    options: RunOptions,
) -> Result<Recording> {
    let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("log {}: {e}", path.display()));
    let file =
        crate::input_file::create(path).map_err(|e| std::io::Error::other(format!("log {}: {e}", path.display())))?;
    let (recording, writer) = record_to(machine, world, BufWriter::new(file), digest_every, options)?;
    let file = writer.into_inner().map_err(|e| context(e.into_error()))?;
    file.sync_all().map_err(context)?;
    Ok(recording)
}
