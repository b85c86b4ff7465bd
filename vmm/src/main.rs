//! `ftvm`: run a single-vCPU VM on KVM, record and replay it, protect it. This file parses the
//! command line and dispatches; each subcommand lives in `cli/`, and the work in the library.

// Output goes through `vmm::stdio` (`outln!`/`errln!`), which copes with a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod demo;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ftvm", version, about = "A fault-tolerant virtual machine monitor")]
struct Cli {
    /// Log what the VMM does (exits, injections, preemptions) to stderr; repeat for more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    keys: cli::keys::KeysArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (or our own guest) and run it until it powers off.
    Run(cli::run::RunArgs),
    /// Run a recorded guest again from its log alone and check every exit against it.
    Replay(cli::replay::ReplayArgs),
    /// Print the records of a log, one a line (for reading a divergence).
    Log(cli::log::LogArgs),
    /// Follow a protected VM (`run --ft`) from this host and take over when its host dies.
    Backup(cli::backup::BackupArgs),
    /// Continue a machine saved with `run --snapshot-at`, in this new process.
    Restore(cli::restore::RestoreArgs),
    /// The whole promise on this machine, as root: a VM on a gfs disk, protected by a backup on
    /// a second host, its primary killed twice while a client is served (`--replay`: the
    /// record/replay demo).
    Demo(cli::demo::DemoArgs),
    /// gfs for `ftvm demo` (a master and three chunkservers in one process).
    #[command(hide = true)]
    DemoStorage(cli::demo::DemoStorageArgs),
    /// Make VM disks on gfs; copy disk images in and out of gfs.
    Disk(cli::disk::DiskArgs),
    /// Ask a running VMM (its --ft-listen address) what it is doing: role, generation,
    /// landmark, backup, lag, log rate, held outputs, resyncs.
    Status(cli::status::StatusArgs),
    /// Make the cluster key in DIR (mode 0600), as `gfs keygen DIR` does: give every gfs
    /// server and client and every VMM of the cluster a copy, and `--keys DIR` (or FT_KEYS=DIR).
    Keygen(cli::keys::KeygenArgs),
}

impl Command {
    /// Whether this command opens network channels (gfs connections, the logging channel).
    fn opens_channels(&self) -> bool {
        match self {
            Command::Run(args) => args.opens_channels(),
            Command::Backup(_) | Command::DemoStorage(_) | Command::Disk(_) | Command::Status(_) => true,
            // The demo seals its own cluster (with --keys DIR, or a key it makes).
            Command::Demo(_) => false,
            Command::Replay(_) | Command::Log(_) | Command::Restore(_) | Command::Keygen(_) => false,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.verbose);
    let control = vmm::VcpuControl::new();
    // The live demo handles its own signals: it must unwind to remove what it made.
    let handles_own_signals = matches!(&cli.command, Command::Demo(args) if !args.replay);
    if !handles_own_signals {
        if let Err(error) = vmm::stop::stop_on_signals(&control) {
            vmm::errln!("ftvm: cannot handle SIGINT/SIGTERM: {error}");
        }
    }
    if cli.command.opens_channels() {
        if let Err(error) = cli.keys.install() {
            vmm::errln!("ftvm: {error:#}");
            return ExitCode::from(1);
        }
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::command(&args, control),
        Command::Restore(args) => cli::restore::command(&args, control),
        Command::Backup(args) => cli::backup::command(&args, control),
        Command::Replay(args) => cli::replay::command(&args, control),
        Command::Log(args) => cli::log::command(&args),
        Command::Demo(args) => cli::demo::command(&args, control, cli.keys.keys.as_deref()),
        Command::DemoStorage(args) => cli::demo::storage_command(&args),
        Command::Disk(args) => cli::disk::command(&args),
        Command::Status(args) => cli::status::command(&args),
        Command::Keygen(args) => cli::keys::keygen(&args),
    };
    if vmm::stdio::stdout_closed() {
        return ExitCode::from(vmm::stdio::CLOSED_STDOUT_STATUS);
    }
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            vmm::errln!("ftvm: {error:#}");
            ExitCode::from(1)
        }
    };
    vmm::stop::signal_exit_status().map_or(code, ExitCode::from)
}
