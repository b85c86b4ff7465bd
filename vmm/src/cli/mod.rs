//! The subcommands of `ftvm`, one a file: their arguments, and how their results are printed.

pub mod backup;
pub mod demo;
pub mod disk;
pub mod ft;
pub mod keys;
pub mod log;
pub mod replay;
pub mod restore;
pub mod run;
pub mod status;

use anyhow::bail;
use std::io::Write;
use std::process::ExitCode;
use vmm::{ExitStats, Machine, StopReason};

/// Logs to stderr: warnings by default, `-v` info, `-vv` debug, `-vvv` trace (or `FTVM_LOG`).
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FTVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| vmm::stdio::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints the power-off lines and turns the reason the run ended into ftvm's exit status.
pub fn report(
    machine: &Machine,
    reason: StopReason,
    stats: &ExitStats,
    state_digest: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(kib) = vmm::memory::vmm_resident_kib(&machine.ram) {
        tracing::info!(vmm_rss_kib = kib, guest_mib = machine.config.memory_mib, "memory of the VMM beyond guest RAM");
    }
    let mut stdout = vmm::stdio::Stdout;
    writeln!(stdout, "{stats}")?;
    if state_digest {
        writeln!(stdout, "state-digest: {}", vmm::digest::state_digest(machine)?.to_hex())?;
    }
    exit_code_for(reason)
}

/// ftvm's exit status for the way a run ended (the README lists them).
pub fn exit_code_for(reason: StopReason) -> anyhow::Result<ExitCode> {
    match reason {
        StopReason::PowerOff(code) => Ok(ExitCode::from((code & 0xff) as u8)),
        reason @ StopReason::GuestPanic { .. } => {
            vmm::errln!("ftvm: {reason}");
            Ok(ExitCode::from(101))
        }
        reason @ StopReason::Shutdown { .. } => {
            vmm::errln!("ftvm: {reason}");
            Ok(ExitCode::from(102))
        }
        reason => bail!("{reason}"),
    }
}
