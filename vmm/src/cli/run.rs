//! `ftvm run`: boot a kernel or our guest on this host's backends and run it to power-off,
//! optionally recording it or saving a snapshot on the way.

use anyhow::Context;
use clap::Args;
use devices::virtio::{DiskSpec, NetSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vmm::ft::primary::{Primary, Served};
use vmm::ft::register::GoLiveRegister;
use vmm::session::{live_machine, record};
use vmm::{run, Backends, KernelSource, MachineConfig, RunOptions, SnapshotRequest, StopReason, VcpuControl};

#[derive(Args)]
pub struct RunArgs {
    /// A 64-bit ELF kernel (entered in 64-bit mode) or a Linux bzImage.
    #[arg(long, value_name = "FILE", conflicts_with = "guest", required_unless_present = "guest")]
    kernel: Option<PathBuf>,
    /// Boot our own guest with this workload and its arguments (hello, timer N, compute [M], clock [N], tsc [N], ...).
    #[arg(long, value_name = "WORKLOAD", num_args = 1.., allow_hyphen_values = false)]
    guest: Option<Vec<String>>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = MachineConfig::DEFAULT_MEMORY_MIB)]
    memory_mib: u64,
    /// The kernel command line (with --guest, appended after the workload words).
    #[arg(long, default_value = "")]
    cmdline: String,
    /// An initial ramdisk (bzImage kernels only).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// How long an interrupt may wait for the guest to exit before the vCPU is kicked, in µs.
    #[arg(long, default_value_t = MachineConfig::DEFAULT_PREEMPT_BOUND.as_micros() as u64)]
    preempt_us: u64,
    /// Print `state-digest: <hex>` over memory, registers and devices at power-off.
    #[arg(long)]
    state_digest: bool,
    /// Save the whole machine to FILE when the run reaches this many exits, then go on.
    #[arg(long, value_name = "EXITS", requires = "snapshot")]
    snapshot_at: Option<u64>,
    /// Where --snapshot-at writes the snapshot.
    #[arg(long, value_name = "FILE", requires = "snapshot_at")]
    snapshot: Option<PathBuf>,
    /// A virtio-net device on a TAP (created if missing): tap=NAME[,mac=MAC]. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<NetSpec>,
    /// A virtio-blk device on a local file, or on a gfs file: PATH[,readonly] or
    /// gfs:/PATH[,readonly]. Repeatable.
    #[arg(long, value_name = "PATH[,readonly]")]
    disk: Vec<DiskSpec>,
    /// Record every input from the world into LOG, for `ftvm replay`.
    #[arg(long, value_name = "LOG")]
    record: Option<PathBuf>,
    /// With --record: log the running digest of exit signatures every K exits (1 names the
    /// exact exit of a divergence; larger K makes the log smaller).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    digest_every: u32,
    /// With --record: put a hash of every guest page into each checkpoint; `ftvm replay` then
    /// checks its memory after loading each one and names the pages that differ (slow: for
    /// tracing a divergence).
    #[arg(long, requires = "record")]
    verify_checkpoints: bool,
    /// Protect this VM as NAME: go live through the gfs register `ft.NAME` and accept a backup
    /// on --ft-listen (`ftvm backup` is the other side).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["record", "snapshot_at"])]
    ft: Option<String>,
    /// The gfs master (the go-live register lives there, and `--disk gfs:/PATH` disks).
    #[arg(long, value_name = "ADDR", env = "GFS_MASTER")]
    gfs_master: Option<String>,
    /// With --ft: take the register even though someone holds it (the operator's word that the
    /// holder is dead).
    #[arg(long, requires = "ft")]
    takeover: bool,
    #[command(flatten)]
    pair: super::ft::FtArgs,
}

impl RunArgs {
    /// Whether this run opens network channels: the logging channel, or gfs for its disks.
    pub fn opens_channels(&self) -> bool {
        self.ft.is_some() || self.disk.iter().any(|disk| disk.gfs_path().is_some())
    }

    /// The machine these arguments describe, with the devices their backends make.
    fn machine_config(&self, devices: Vec<devices::virtio::DeviceDescription>) -> MachineConfig {
        let (kernel, cmdline) = match (&self.kernel, &self.guest) {
            (Some(path), _) => (KernelSource::File(path.clone()), self.cmdline.clone()),
            (None, words) => {
                let mut line = words.as_deref().unwrap_or_default().join(" ");
                if !self.cmdline.is_empty() {
                    line.push(' ');
                    line.push_str(&self.cmdline);
                }
                (KernelSource::Embedded, line)
            }
        };
        MachineConfig {
            kernel,
            memory_mib: self.memory_mib,
            cmdline,
            initrd: self.initrd.clone(),
            preempt_bound: Duration::from_micros(self.preempt_us),
            dirty_logging: self.record.is_some() || self.ft.is_some(),
            devices,
        }
    }
}

/// Boots, runs to power-off (rebooting on reset), prints the exit statistics.
pub fn command(args: &RunArgs, control: VcpuControl) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        start: Default::default(),
        snapshot: args
            .snapshot_at
            .zip(args.snapshot.clone())
            .map(|(at_exits, path)| SnapshotRequest { at_exits, path }),
    };
    args.pair.serve_metrics()?;
    if let Some(name) = &args.ft {
        return protected(args, name, control);
    }
    if let Some(path) = &args.snapshot {
        vmm::input_file::check_writable_target(path).with_context(|| format!("snapshot {}", path.display()))?;
    }
    loop {
        let gfs = vmm::gfs_disk::GfsAccess::new(args.gfs_master.clone());
        let (backends, devices) =
            Backends::open_with_gfs(&args.net, &args.disk, &gfs, Box::new(vmm::stdio::Stdout), control.doorbell())?;
        let (mut machine, world) = live_machine(args.machine_config(devices), backends, control.clone())?;
        machine.verify_checkpoints = args.verify_checkpoints;
        let end = match &args.record {
            Some(path) => {
                record::record_to_file(&mut machine, world, path, args.digest_every, options.clone())
                    .with_context(|| format!("recording into {}", path.display()))?
                    .end
            }
            None => {
                let mut world = world;
                run(&mut machine, &mut world, options.clone())?
            }
        };
        if matches!(end.reason, StopReason::Reset) {
            tracing::info!("the guest reset itself; rebooting");
            continue;
        }
        let code = super::report(&machine, end.reason, &end.stats, args.state_digest)?;
        options.check_snapshot_saved(&end.stats)?;
        return Ok(code);
    }
}

/// `ftvm run --ft NAME`: goes live through the register before the first instruction, then
/// runs as the primary of the pair.
fn protected(args: &RunArgs, name: &str, control: VcpuControl) -> anyhow::Result<ExitCode> {
    let config = args.pair.config(name, args.gfs_master.as_deref())?;
    let port = vmm::ft::port::FtPort::open(&config.listen)?;
    let register = GoLiveRegister::new(&config.master, name, config.holder());
    let generation = register.go_live_at_start(args.takeover)?;
    // A gfs disk bound to the register takes writes only with the generation won.
    let fence = vmm::gfs_disk::DiskFence::default();
    fence.set(register.name(), generation);
    let gfs = vmm::gfs_disk::GfsAccess::new(args.gfs_master.clone()).with_fence(fence.clone());
    let built = Backends::open_with_gfs(&args.net, &args.disk, &gfs, Box::new(vmm::stdio::Stdout), control.doorbell())
        .map_err(anyhow::Error::from)
        .and_then(|(backends, devices)| Ok(live_machine(args.machine_config(devices), backends, control.clone())?));
    let (mut machine, world) = match built {
        Ok(built) => built,
        Err(error) => {
            // Nothing ran: give the register back so the next start needs no --takeover.
            let _ = register.release(generation);
            return Err(error);
        }
    };
    vmm::errln!("ft: live as {name} generation {generation}");
    vmm::ft::timeline::live(generation);
    let primary = Primary::listen(config, register, generation, &machine, control, port)?.fencing(fence);
    match primary.serve(&mut machine, world, Default::default())? {
        Served::Stopped(end) => {
            if matches!(end.reason, StopReason::Reset) {
                anyhow::bail!("the guest reset itself; a protected VM does not reboot (start it again)");
            }
            super::report(&machine, end.reason, &end.stats, args.state_digest)
        }
        Served::LostRace { .. } | Served::FencedOut { .. } => Ok(ExitCode::from(vmm::ft::LOST_RACE_STATUS)),
    }
}
