//! `ftvm log`: the header and every record of a log, one a line.

use anyhow::Context;
use clap::Args;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct LogArgs {
    /// A log written by `ftvm run --record LOG`.
    log: PathBuf,
    /// Only records at landmarks from this exit count on.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Only records at landmarks up to this exit count.
    #[arg(long, default_value_t = u64::MAX)]
    to: u64,
}

/// The header, then each record with its byte offset.
pub fn command(args: &LogArgs) -> anyhow::Result<ExitCode> {
    let file = vmm::input_file::open(&args.log).with_context(|| format!("log {}", args.log.display()))?;
    let reader = ftlog::LogReader::new(BufReader::new(file)).with_context(|| format!("log {}", args.log.display()))?;
    let header = reader.header().clone();
    let mut out = vmm::stdio::Stdout;
    writeln!(
        out,
        "header: memory {} MiB, cmdline {:?}, kernel {}, digest every {} exits, starts after {} exits, {} device(s)",
        header.machine.memory_size >> 20,
        header.machine.cmdline,
        header.machine.kernel_name(),
        header.exit_digest_interval,
        header.start_exits,
        header.machine.devices.len()
    )?;
    for item in reader {
        let (offset, record) = item.with_context(|| format!("log {}", args.log.display()))?;
        let exits = record_exits(&record);
        if exits.is_some_and(|n| n < args.from || n > args.to) {
            continue;
        }
        match &record {
            ftlog::Record::Checkpoint { data, .. } => {
                let detail = vmm::checkpoint::describe(data, header.machine.memory_size)
                    .unwrap_or_else(|e| format!("does not decode: {e}"));
                writeln!(out, "{offset:>10}  {record}: {detail}")?;
            }
            _ => writeln!(out, "{offset:>10}  {record}")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit count a record belongs to, for filtering.
fn record_exits(record: &ftlog::Record) -> Option<u64> {
    use ftlog::Record;
    match record {
        Record::Interrupt { at, .. }
        | Record::ClockRead { at, .. }
        | Record::World { at, .. }
        | Record::Checkpoint { at, .. }
        | Record::Input { at, .. } => Some(at.exit_count()),
        Record::ExitDigest { exits, .. } | Record::SnapshotMark { exits } => Some(*exits),
        Record::End(end) => Some(end.exits),
    }
}
