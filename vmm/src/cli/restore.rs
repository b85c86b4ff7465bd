//! `ftvm restore`: continue a saved machine in this new process.

use anyhow::bail;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::session::restore_and_run;
use vmm::{StopReason, VcpuControl};

#[derive(Args)]
pub struct RestoreArgs {
    /// A snapshot written by `ftvm run --snapshot-at N --snapshot FILE`.
    snapshot: PathBuf,
    /// Print `state-digest: <hex>` at power-off.
    #[arg(long)]
    state_digest: bool,
}

pub fn command(args: &RestoreArgs, control: VcpuControl) -> anyhow::Result<ExitCode> {
    let (machine, end) = restore_and_run(&args.snapshot, Box::new(vmm::stdio::Stdout), control)?;
    if matches!(end.reason, StopReason::Reset) {
        bail!("the guest reset itself after the restore; run it again with `ftvm run`");
    }
    super::report(&machine, end.reason, &end.stats, args.state_digest)
}
