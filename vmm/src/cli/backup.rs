//! `ftvm backup`: follow a protected VM from another host and take over when it dies.

use super::ft::FtArgs;
use anyhow::{bail, Context};
use clap::Args;
use devices::virtio::{DiskSpec, NetSpec};
use std::process::ExitCode;
use vmm::ft::backup::{follow, BackupPlan, Followed};
use vmm::ft::primary::Served;
use vmm::ft::register::GoLiveRegister;
use vmm::VcpuControl;

#[derive(Args)]
pub struct BackupArgs {
    /// The primary's --ft-listen address.
    #[arg(long, value_name = "ADDR", required_unless_present = "ft")]
    join: Option<String>,
    /// The VM's name: find the live side from the gfs register `ft.NAME` (instead of --join).
    #[arg(long, value_name = "NAME")]
    ft: Option<String>,
    /// The gfs master (the go-live register lives there, and `gfs:/PATH` disks).
    #[arg(long, value_name = "ADDR", env = "GFS_MASTER")]
    gfs_master: Option<String>,
    /// This host's TAP for the VM's net device i (the i-th --net), tap=NAME; the MAC stays the VM's.
    #[arg(long, value_name = "tap=NAME")]
    net: Vec<NetSpec>,
    /// This host's file for the VM's disk j (the j-th --disk): PATH[,readonly] or
    /// gfs:/PATH[,readonly] (on the cluster of --gfs-master).
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<DiskSpec>,
    /// Print `state-digest: <hex>` when the VM powers off.
    #[arg(long)]
    state_digest: bool,
    #[command(flatten)]
    pair: FtArgs,
}

pub fn command(args: &BackupArgs, control: VcpuControl) -> anyhow::Result<ExitCode> {
    args.pair.serve_metrics()?;
    let name = args.ft.clone().unwrap_or_default();
    let config = args.pair.config(&name, args.gfs_master.as_deref())?;
    let join = match (&args.join, &args.ft) {
        (Some(addr), _) => addr.clone(),
        (None, Some(name)) => live_side(&config.master, name)?,
        (None, None) => bail!("give --join ADDR or --ft NAME"),
    };
    let plan = BackupPlan { join, nets: args.net.clone(), disks: args.disk.clone() };
    match follow(config, &plan, control)? {
        Followed::PrimaryStopped { end, identical } => {
            if !identical {
                vmm::errln!("ftvm: the backup's end differs from the primary's");
                return Ok(ExitCode::from(1));
            }
            super::exit_code_for(end.reason)
        }
        Followed::Served(Served::Stopped(end)) => {
            let reason = end.reason;
            if args.state_digest {
                tracing::info!("the state digest is printed by the side that ran the VM to its end");
            }
            super::exit_code_for(reason)
        }
        Followed::StoppedFollowing => {
            // The signal asked exactly for this: not a VM stopped by it (130/143).
            vmm::stop::signal_answered();
            Ok(ExitCode::SUCCESS)
        }
        Followed::Served(Served::LostRace { .. } | Served::FencedOut { .. }) => {
            Ok(ExitCode::from(vmm::ft::LOST_RACE_STATUS))
        }
    }
}

/// The live side's --ft-listen address, from the holder of register `ft.NAME` (`ID@ADDR`).
fn live_side(master: &str, name: &str) -> anyhow::Result<String> {
    let register = GoLiveRegister::new(master, name, String::new());
    let (generation, holder) = register.current().with_context(|| format!("finding the live side of {name}"))?;
    match holder.rsplit_once('@') {
        Some((_, addr)) if !addr.is_empty() => Ok(addr.to_owned()),
        _ => bail!(
            "register ft.{name} (generation {generation}) names no live side: is the VM running with --ft {name}?"
        ),
    }
}
