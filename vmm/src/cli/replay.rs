//! `ftvm replay`: run a recorded guest again from its log alone.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::session::replay::{replay_file, Replayed};
use vmm::VcpuControl;

#[derive(Args)]
pub struct ReplayArgs {
    /// A log written by `ftvm run --record LOG`.
    log: PathBuf,
    /// Start from this snapshot (taken by the recorded run with --snapshot-at) instead of from
    /// boot, and replay the rest of the log.
    #[arg(long, value_name = "SNAPSHOT")]
    from: Option<PathBuf>,
}

/// Replays the log; `replay: ok, ...` and the state digest, or `replay: <why>` and status 3.
pub fn command(args: &ReplayArgs, control: VcpuControl) -> anyhow::Result<ExitCode> {
    match replay_file(&args.log, args.from.as_deref(), Box::new(vmm::stdio::Stdout), control)? {
        Replayed::Identical { stats, state_digest } => {
            vmm::outln!(
                "replay: ok, {} exits, {} events, {} checkpoints",
                stats.exits,
                stats.events(),
                stats.checkpoints
            );
            vmm::outln!("state-digest: {}", state_digest.to_hex());
            Ok(ExitCode::SUCCESS)
        }
        Replayed::Failed(reason) => {
            vmm::errln!("replay: {reason}");
            Ok(ExitCode::from(3))
        }
    }
}
