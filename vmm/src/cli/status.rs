//! `ftvm status ADDR`: what a running VMM is doing, asked on its `--ft-listen` port.

use anyhow::Context;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use vmm::telemetry::status;

#[derive(Args)]
pub struct StatusArgs {
    /// The VMM's --ft-listen address (a backup answers for itself on its own).
    #[arg(value_name = "ADDR")]
    addr: String,
    /// Print the report as one line of JSON (for scripts).
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    timeout_ms: u64,
}

pub fn command(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let report = status::query(&args.addr, Duration::from_millis(args.timeout_ms.max(1)))?;
    if args.json {
        let line = serde_json::to_string(&report).context("writing the report as JSON")?;
        vmm::outln!("{line}");
    } else {
        vmm::outln!("{}", status::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
