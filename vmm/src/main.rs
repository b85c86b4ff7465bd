//! `ftvm`: run a single-vCPU VM on KVM (and, as the project grows, record, replay and protect it).

// Output goes through `vmm::stdio` (`outln!`/`errln!`), which copes with a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use devices::virtio::{DiskSpec, NetSpec};
use devices::HostWorld;
use ftlog::{RecordingWorld, ReplayWorld};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vmm::machine::DeviceSetup;
use vmm::record_replay::{log_header, machine_for_log};
use vmm::snapshot;
use vmm::{digest, run, KernelSource, Machine, MachineConfig, RunOptions, RunOutcome, RunPosition, SnapshotRequest};
use vmm::{errln, input_file, outln};

#[derive(Parser)]
#[command(name = "ftvm", version, about = "A fault-tolerant virtual machine monitor")]
struct Cli {
    /// Log what the VMM does (exits, injections, preemptions) to stderr; repeat for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (or our own guest) and run it until it powers off.
    Run(RunArgs),
    /// Run a recorded guest again from its log alone and check every exit against it.
    Replay(ReplayArgs),
    /// Print the records of a log, one a line (for reading a divergence).
    Log(LogArgs),
    /// Continue a machine saved with `run --snapshot-at`, in this new process.
    Restore(RestoreArgs),
    /// Run each workload of our own guest on this machine, one after the other.
    Demo,
}

#[derive(Args)]
struct RunArgs {
    /// A 64-bit ELF kernel (entered in 64-bit mode) or a Linux bzImage.
    #[arg(long, value_name = "FILE", conflicts_with = "guest", required_unless_present = "guest")]
    kernel: Option<PathBuf>,
    /// Boot our own guest with this workload and its arguments (hello, timer N, compute [M], clock [N]).
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
    /// A virtio-blk device on a file: PATH[,readonly]. Repeatable.
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
}

#[derive(Args)]
struct ReplayArgs {
    /// A log written by `ftvm run --record LOG`.
    log: PathBuf,
    /// Start from this snapshot (taken by the recorded run with --snapshot-at) instead of from
    /// boot, and replay the rest of the log.
    #[arg(long, value_name = "SNAPSHOT")]
    from: Option<PathBuf>,
}

#[derive(Args)]
struct LogArgs {
    /// A log written by `ftvm run --record LOG`.
    log: PathBuf,
    /// Only records at landmarks from this exit count on.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Only records at landmarks up to this exit count.
    #[arg(long, default_value_t = u64::MAX)]
    to: u64,
}

#[derive(Args)]
struct RestoreArgs {
    /// A snapshot written by `ftvm run --snapshot-at N --snapshot FILE`.
    snapshot: PathBuf,
    /// Print `state-digest: <hex>` at power-off.
    #[arg(long)]
    state_digest: bool,
}

impl RunArgs {
    fn machine_config(&self) -> MachineConfig {
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
            dirty_logging: false,
            devices: DeviceSetup::Live { nets: self.net.clone(), disks: self.disk.clone() },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(error) = vmm::kick::stop_on_signals() {
        errln!("ftvm: cannot handle SIGINT/SIGTERM: {error}");
    }
    let result = match cli.command {
        Command::Run(args) => run_command(&args),
        Command::Restore(args) => restore_command(&args),
        Command::Replay(args) => replay_command(&args),
        Command::Log(args) => log_command(&args),
        Command::Demo => demo(),
    };
    if vmm::stdio::stdout_closed() {
        return ExitCode::from(vmm::stdio::CLOSED_STDOUT_STATUS);
    }
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            errln!("ftvm: {error:#}");
            ExitCode::from(1)
        }
    };
    vmm::stop::signal_exit_status().map_or(code, ExitCode::from)
}

fn init_logging(verbose: u8) {
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

/// `ftvm run`: boots, runs to power-off (rebooting on reset), prints the exit statistics.
fn run_command(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.snapshot {
        input_file::check_writable_target(path).with_context(|| format!("snapshot {}", path.display()))?;
    }
    let mut config = args.machine_config();
    config.dirty_logging = args.record.is_some();
    let options = RunOptions {
        start: RunPosition::default(),
        snapshot: args
            .snapshot_at
            .zip(args.snapshot.clone())
            .map(|(at_exits, path)| SnapshotRequest { at_exits, path }),
    };
    loop {
        let mut machine = Machine::new(config.clone(), Box::new(vmm::stdio::Stdout))?;
        machine.verify_checkpoints = args.verify_checkpoints;
        let (outcome, stats) = match &args.record {
            Some(path) => {
                let file = input_file::create(path).with_context(|| format!("log {}", path.display()))?;
                let header = log_header(&machine, args.digest_every, 0);
                let mut recorder = RecordingWorld::new(host_world(&mut machine, 0), BufWriter::new(file), &header)
                    .with_context(|| format!("log {}", path.display()))?;
                let (outcome, stats) = run(&mut machine, &mut recorder, options.clone())?;
                let state_digest = *digest::state_digest(&machine)?.as_bytes();
                let code = match outcome {
                    RunOutcome::PowerOff(code) => code,
                    _ => u32::MAX,
                };
                let recorded =
                    recorder.finish(code, Some(state_digest)).with_context(|| format!("log {}", path.display()))?;
                let file = recorded.writer.into_inner().map_err(|e| e.into_error())?;
                file.sync_all().with_context(|| format!("log {}", path.display()))?;
                let (_, pages, bytes, nanos) = vmm::checkpoint::capture_totals();
                tracing::info!(
                    log_bytes = recorded.log_bytes,
                    events = recorded.stats.events(),
                    checkpoints = recorded.stats.checkpoints,
                    checkpoint_pages = pages,
                    checkpoint_bytes = bytes,
                    checkpoint_ms = nanos / 1_000_000,
                    "log written"
                );
                (outcome, stats)
            }
            None => {
                let mut world = host_world(&mut machine, 0);
                run(&mut machine, &mut world, options.clone())?
            }
        };
        if outcome == RunOutcome::Reset {
            tracing::info!("the guest reset itself; rebooting");
            continue;
        }
        let code = report(&machine, outcome, &stats, args.state_digest)?;
        options.check_snapshot_saved(&stats)?;
        return Ok(code);
    }
}

/// The live world of this host, its clock at `monotonic_ns`, with the machine's TAPs attached.
fn host_world(machine: &mut Machine, monotonic_ns: u64) -> HostWorld {
    let mut world = HostWorld::resuming_at(monotonic_ns);
    for (device, frames) in machine.net_frames.drain(..) {
        world.attach_net(device, frames);
    }
    world
}

/// `ftvm replay`: builds the recorded machine and runs it from the log alone.
fn replay_command(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let file = input_file::open(&args.log).with_context(|| format!("log {}", args.log.display()))?;
    let mut replayer = ReplayWorld::new(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("log {}", args.log.display()))?;
    let (mut machine, start) = match &args.from {
        None => (machine_for_log(replayer.header(), Box::new(vmm::stdio::Stdout))?, RunPosition::default()),
        Some(path) => {
            let snapshot = snapshot::load(path)?;
            let machine = snapshot::restore_for_replay(&snapshot, Box::new(vmm::stdio::Stdout))?;
            if machine.image_digest != replayer.header().image_digest {
                bail!("snapshot {} is of another guest than log {}", path.display(), args.log.display());
            }
            let position = snapshot.header.position;
            if let Err(error) = replayer.skip_to_snapshot(position.exits) {
                return replay_failed(&error.to_string());
            }
            (machine, position)
        }
    };
    let result = run(&mut machine, &mut replayer, RunOptions { start, snapshot: None });
    let (outcome, _stats) = match result {
        Ok(done) => done,
        Err(vmm::VmmError::Replay(error)) => return replay_failed(&error.to_string()),
        Err(other) => return Err(other.into()),
    };
    let code = match &outcome {
        RunOutcome::PowerOff(code) => Some(*code),
        RunOutcome::Stopped(reason) if replayer.error().is_some() => return replay_failed(reason),
        _ => None,
    };
    let state_digest = digest::state_digest(&machine)?;
    if let Err(error) = replayer.finish(code, Some(*state_digest.as_bytes())) {
        return replay_failed(&error.to_string());
    }
    let stats = replayer.stats();
    outln!("replay: ok, {} exits, {} events, {} checkpoints", stats.exits, stats.events(), stats.checkpoints);
    outln!("state-digest: {}", state_digest.to_hex());
    Ok(ExitCode::SUCCESS)
}

/// `ftvm log`: the header, then each record with its byte offset.
fn log_command(args: &LogArgs) -> anyhow::Result<ExitCode> {
    let file = input_file::open(&args.log).with_context(|| format!("log {}", args.log.display()))?;
    let reader = ftlog::LogReader::new(BufReader::new(file)).with_context(|| format!("log {}", args.log.display()))?;
    let header = reader.header().clone();
    outln!(
        "header: memory {} MiB, cmdline {:?}, kernel {}, digest every {} exits, starts after {} exits, {} device(s)",
        header.memory_size >> 20,
        header.cmdline,
        header.kernel_path.as_deref().unwrap_or("<ftvm guest>"),
        header.exit_digest_interval,
        header.start_exits,
        vmm::record_replay::recorded_devices(&header)?.len()
    );
    for item in reader {
        let (offset, record) = item.with_context(|| format!("log {}", args.log.display()))?;
        let exits = record_exits(&record);
        if exits.is_some_and(|n| n < args.from || n > args.to) {
            continue;
        }
        match &record {
            ftlog::Record::Checkpoint { data, .. } => {
                let detail = vmm::checkpoint::describe(data, header.memory_size)
                    .unwrap_or_else(|e| format!("does not decode: {e}"));
                outln!("{offset:>10}  {record}: {detail}");
            }
            _ => outln!("{offset:>10}  {record}"),
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

fn replay_failed(reason: &str) -> anyhow::Result<ExitCode> {
    errln!("replay: {reason}");
    Ok(ExitCode::from(3))
}

/// `ftvm restore`: rebuilds the machine from a snapshot and runs it on.
fn restore_command(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let snapshot = snapshot::load(&args.snapshot)?;
    let mut machine = snapshot::restore(&snapshot, Box::new(vmm::stdio::Stdout))?;
    tracing::info!(took = ?started.elapsed(), exits = snapshot.header.position.exits, "snapshot restored");
    let mut world = host_world(&mut machine, snapshot.header.monotonic_ns);
    let options = RunOptions { start: snapshot.header.position, snapshot: None };
    let (outcome, stats) = run(&mut machine, &mut world, options)?;
    if outcome == RunOutcome::Reset {
        bail!("the guest reset itself after the restore; run it again with `ftvm run`");
    }
    report(&machine, outcome, &stats, args.state_digest)
}

/// Prints the power-off lines and turns the outcome into ftvm's exit status.
fn report(
    machine: &Machine,
    outcome: RunOutcome,
    stats: &vmm::ExitStats,
    state_digest: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(kib) = vmm::memory::vmm_resident_kib(&machine.ram) {
        tracing::info!(vmm_rss_kib = kib, guest_mib = machine.config.memory_mib, "memory of the VMM beyond guest RAM");
    }
    outln!("{stats}");
    if state_digest {
        outln!("state-digest: {}", digest::state_digest(machine)?.to_hex());
    }
    exit_code_for(outcome)
}

fn exit_code_for(outcome: RunOutcome) -> anyhow::Result<ExitCode> {
    match outcome {
        RunOutcome::PowerOff(code) => Ok(ExitCode::from((code & 0xff) as u8)),
        RunOutcome::GuestPanic { code, rip } => {
            errln!("ftvm: the guest reported a fatal fault (code {code:#x}) at rip {rip:#x}");
            Ok(ExitCode::from(101))
        }
        RunOutcome::Shutdown { rip } => {
            errln!("ftvm: the guest triple-faulted (shutdown) at rip {rip:#x}");
            Ok(ExitCode::from(102))
        }
        RunOutcome::Stopped(reason) => bail!("{reason}"),
        RunOutcome::DeviceFailed(reason) => {
            bail!("a device failed and the VM cannot go on: {reason}")
        }
        RunOutcome::Reset => unreachable!("resets reboot the guest"),
    }
}

/// `ftvm demo`: each workload of our guest on this machine, recorded, then replayed from its
/// log alone, and the two final states compared.
fn demo() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("a temporary directory for the demo's logs")?;
    for words in [&["hello"][..], &["timer", "200"], &["compute", "300"], &["clock", "200"]] {
        let line = words.join(" ");
        outln!("== ftvm run --guest {line} --record LOG");
        let config = MachineConfig {
            kernel: KernelSource::Embedded,
            memory_mib: MachineConfig::DEFAULT_MEMORY_MIB,
            cmdline: line.clone(),
            initrd: None,
            preempt_bound: MachineConfig::DEFAULT_PREEMPT_BOUND,
            dirty_logging: true,
            devices: DeviceSetup::default(),
        };
        let log = dir.path().join(format!("{}.log", words[0]));
        let mut machine = Machine::new(config, Box::new(vmm::stdio::Stdout))
            .with_context(|| format!("booting the guest for {line}"))?;
        let header = log_header(&machine, 1, 0);
        let file = File::create(&log).with_context(|| format!("log {}", log.display()))?;
        let mut recorder = RecordingWorld::new(HostWorld::new(), BufWriter::new(file), &header)?;
        let started = std::time::Instant::now();
        let (outcome, stats) = run(&mut machine, &mut recorder, RunOptions::default())?;
        let recorded_in = started.elapsed();
        let recorded_digest = digest::state_digest(&machine)?;
        let code = if let RunOutcome::PowerOff(code) = outcome { code } else { u32::MAX };
        let done = recorder.finish(code, Some(*recorded_digest.as_bytes()))?;
        done.writer.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        outln!("{stats}");
        outln!("state-digest: {}", recorded_digest.to_hex());
        if outcome != RunOutcome::PowerOff(0) {
            bail!("workload {line} ended with {outcome:?}");
        }

        let file = File::open(&log).with_context(|| format!("log {}", log.display()))?;
        let mut replayer = ReplayWorld::new(BufReader::new(file))?;
        let mut replica = machine_for_log(replayer.header(), Box::new(std::io::sink()))?;
        let started = std::time::Instant::now();
        run(&mut replica, &mut replayer, RunOptions::default())?;
        let replayed_in = started.elapsed();
        let replayed_digest = digest::state_digest(&replica)?;
        replayer.finish(Some(code), Some(*replayed_digest.as_bytes()))?;
        let log_stats = replayer.stats();
        outln!(
            "replayed from its log ({} bytes, {} events, {} checkpoints) in {:.0} ms (recorded in {:.0} ms): state-digest {}",
            done.log_bytes,
            log_stats.events(),
            log_stats.checkpoints,
            replayed_in.as_secs_f64() * 1e3,
            recorded_in.as_secs_f64() * 1e3,
            if replayed_digest == recorded_digest { "identical" } else { "DIFFERENT" }
        );
        if replayed_digest != recorded_digest {
            bail!("the replay of {line} did not reach the recorded state");
        }
    }
    Ok(ExitCode::SUCCESS)
}
