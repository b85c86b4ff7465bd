//! `ftvm demo`: the user's scenario on one machine (`crate::demo`); `ftvm demo --replay`: each
//! workload of our guest recorded, then replayed from its log alone, and the two final states
//! compared.

use anyhow::{bail, Context};
use std::process::ExitCode;
use vmm::session::live_machine;
use vmm::session::record::record_to_file;
use vmm::session::replay::{machine_for_log, replay, Replayed};
use vmm::{Backends, MachineConfig, RunOptions, StopReason, VcpuControl};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The record/replay demo instead: each workload of our guest recorded, then replayed from
    /// its log alone (no root needed).
    #[arg(long, conflicts_with = "plot")]
    pub replay: bool,
    /// Also draw the client's reply latency over time, with the kills, the go-live moments and
    /// the re-protection marked, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

/// `ftvm demo-storage`: gfs for the demo (run by the demo itself in its storage namespace).
#[derive(clap::Args)]
pub struct DemoStorageArgs {
    /// Where the master and the chunkservers keep their files.
    #[arg(long)]
    dir: std::path::PathBuf,
}

pub fn command(args: &DemoArgs, control: VcpuControl, keys: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    if args.replay {
        return replay_demo(control);
    }
    crate::demo::run(args.plot.as_deref(), keys)
}

pub fn storage_command(args: &DemoStorageArgs) -> anyhow::Result<ExitCode> {
    crate::demo::serve_storage(&args.dir)?;
    Ok(ExitCode::SUCCESS)
}

fn replay_demo(control: VcpuControl) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("a temporary directory for the demo's logs")?;
    for words in [&["hello"][..], &["timer", "200"], &["compute", "300"], &["clock", "200"]] {
        let line = words.join(" ");
        vmm::outln!("== ftvm run --guest {line} --record LOG");
        let config = MachineConfig { dirty_logging: true, ..MachineConfig::embedded(line.clone()) };
        let log = dir.path().join(format!("{}.log", words[0]));
        let (mut machine, world) =
            live_machine(config, Backends::console_only(Box::new(vmm::stdio::Stdout)), control.clone())
                .with_context(|| format!("booting the guest for {line}"))?;
        let started = std::time::Instant::now();
        let recording = record_to_file(&mut machine, world, &log, 1, RunOptions::default())?;
        let recorded_in = started.elapsed();
        vmm::outln!("{}", recording.end.stats);
        vmm::outln!("state-digest: {}", recording.state_digest.to_hex());
        if !matches!(recording.end.reason, StopReason::PowerOff(0)) {
            bail!("workload {line} ended with: {}", recording.end.reason);
        }

        let file = std::fs::File::open(&log).with_context(|| format!("log {}", log.display()))?;
        let mut replayer = ftlog::ReplayWorld::new(std::io::BufReader::new(file))?;
        let mut replica = machine_for_log(replayer.header(), control.clone())?;
        let started = std::time::Instant::now();
        let replayed = replay(&mut replica, &mut replayer, Default::default())?;
        let replayed_in = started.elapsed();
        let (stats, replayed_digest) = match replayed {
            Replayed::Identical { stats, state_digest } => (stats, state_digest),
            Replayed::Failed(reason) => bail!("the replay of {line} failed: {reason}"),
        };
        vmm::outln!(
            "replayed from its log ({} bytes, {} events, {} checkpoints) in {:.0} ms (recorded in {:.0} ms): state-digest {}",
            recording.log_bytes,
            stats.events(),
            stats.checkpoints,
            replayed_in.as_secs_f64() * 1e3,
            recorded_in.as_secs_f64() * 1e3,
            if replayed_digest == recording.state_digest { "identical" } else { "DIFFERENT" }
        );
        if replayed_digest != recording.state_digest {
            bail!("the replay of {line} did not reach the recorded state");
        }
    }
    Ok(ExitCode::SUCCESS)
}
