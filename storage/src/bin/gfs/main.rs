//! The `gfs` command: runs a master or a chunkserver, or acts as a client.

// Output goes through `pipesafe` (`outln!`/`errln!`), which copes with a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use storage::chunkserver::{ChunkServer, ChunkServerConfig};
use storage::master::{service, Master, MasterConfig};
use storage::{Client, Durability, StreamOpts};

/// gfs has no stop machinery of its own: a write waits for its reader, and once stdout is closed
/// (`gfs ls / | head -1`) the rest of the output is dropped and gfs ends with status 141.
static OUTPUT: pipesafe::Policy = pipesafe::Policy::plain("gfs");

/// Prints a line on stdout, like `println!` but without panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        pipesafe::out_line(&$crate::OUTPUT, &::std::format!($($arg)*))
    };
}

/// Prints a line on stderr, like `eprintln!` but without panicking on a closed pipe.
macro_rules! errln {
    ($($arg:tt)*) => {
        pipesafe::err_line(&$crate::OUTPUT, &::std::format!($($arg)*))
    };
}

mod bench;

#[derive(Parser)]
#[command(name = "gfs", version, about = "gfs: a GFS-style distributed file system")]
struct Cli {
    /// Log more (repeat for even more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Master address for client commands.
    #[arg(long, global = true, env = "GFS_MASTER")]
    master: Option<String>,
    /// Client commands: keep trying a master that cannot be reached (restarting, say) this many
    /// seconds, with backoff, before giving up.
    #[arg(long, global = true, default_value_t = 60.0)]
    retry_secs: f64,
    #[command(flatten)]
    keys: KeysArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How this process's channels are sealed.
#[derive(clap::Args)]
struct KeysArgs {
    /// The cluster's key directory (made by `gfs keygen DIR`): every connection is mutually
    /// authenticated and encrypted with its key.
    #[arg(long, global = true, env = seal::KEYS_ENV, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// Run without keys: connections are neither authenticated nor encrypted.
    #[arg(long, global = true)]
    insecure: bool,
}

impl KeysArgs {
    /// Sets this process's security from the flags.
    fn install(&self) -> Result<()> {
        seal::install(seal::Security::resolve(self.keys.as_deref(), self.insecure)?);
        Ok(())
    }
}

/// Connection settings shared by the master and the chunkservers.
#[derive(clap::Args)]
struct ServeArgs {
    /// Serve this server's figures (requests by name and outcome, their latency, chunk bytes
    /// read and written; on the master, chunkservers and chunks under-replicated or missing) at
    /// http://ADDR/metrics in the Prometheus text format. Plain HTTP: with a cluster key, only a
    /// loopback address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Close a connection that sends no request for this many seconds (silently, so a peer
    /// that keeps it for later finds it closed, not holding a stale answer).
    #[arg(long, default_value_t = 30.0)]
    idle_timeout_secs: f64,
    /// Most connections open at once from one IP address.
    #[arg(long, default_value_t = 128)]
    max_conns_per_peer: usize,
    /// Most connections open at once in all.
    #[arg(long, default_value_t = 1024)]
    max_conns: usize,
}

impl ServeArgs {
    fn serve_metrics(&self) -> Result<()> {
        let Some(addr) = &self.metrics else { return Ok(()) };
        let sealed = seal::installed().is_ok_and(|security| security.is_sealed());
        let loopback = addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
        if sealed && !loopback {
            bail!(
                "--metrics {addr}: the metrics endpoint is plain HTTP; with a cluster key it binds only a loopback \
                 address (127.0.0.1:PORT, scraped by an agent on this host), or run with --insecure"
            );
        }
        Ok(storage::metrics::serve(addr)?)
    }

    fn limits(&self) -> Result<storage::protocol::conn::ServeLimits> {
        if self.max_conns_per_peer == 0 || self.max_conns == 0 {
            bail!("--max-conns and --max-conns-per-peer must be at least 1");
        }
        let idle_timeout = secs(self.idle_timeout_secs)?;
        if idle_timeout.is_zero() {
            bail!("--idle-timeout-secs must be above 0");
        }
        Ok(storage::protocol::conn::ServeLimits {
            idle_timeout,
            per_peer: self.max_conns_per_peer,
            total: self.max_conns,
            security: None,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Make the cluster key in DIR (mode 0600): give every master, chunkserver, client and VMM
    /// of the cluster a copy, and `--keys DIR` (or env FT_KEYS=DIR).
    Keygen {
        dir: PathBuf,
        /// Replace an existing key (every member then needs the new one).
        #[arg(long)]
        force: bool,
    },
    /// Run the master.
    Master {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        listen: String,
        /// Lease length in seconds (extended by heartbeats while the chunk is written; bounds
        /// the stall of writes to a chunk whose primary died, and a restarted master's wait).
        #[arg(long, default_value_t = storage::master::DEFAULT_LEASE.as_secs_f64())]
        lease_secs: f64,
        /// Checkpoint after this many log records.
        #[arg(long, default_value_t = 10_000)]
        checkpoint_every: u64,
        /// Consider a chunkserver down after this many seconds without a heartbeat.
        #[arg(long, default_value_t = 10.0)]
        dead_after_secs: f64,
        /// Replicas per chunk.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Run as a read-only shadow that tails the master at this address.
        #[arg(long, conflicts_with = "peers")]
        shadow_of: Option<String>,
        /// Run as one replica of a master replicated with Raft: every replica's address
        /// (A,B,C, this one's --listen included; 3 or 5 of them). Writes go to the elected
        /// leader; the others refuse them, naming it.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// Raft clock tick in milliseconds (a new leader 10 to 20 ticks after the old one
        /// fell silent).
        #[arg(long, default_value_t = storage::master::DEFAULT_RAFT_TICK.as_millis() as u64)]
        raft_tick_ms: u64,
        /// Keep deleted files in /.trash this long before collecting them (0: delete at once).
        #[arg(long, default_value_t = 259_200.0)]
        gc_delay_secs: f64,
        /// Look for under-replicated chunks this often (0: never).
        #[arg(long, default_value_t = 1.0)]
        repair_interval_secs: f64,
        /// Move replicas from the fullest to the emptiest chunkservers this often (0: never).
        #[arg(long, default_value_t = 60.0)]
        rebalance_interval_secs: f64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Run a chunkserver.
    Chunkserver {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        listen: String,
        /// Address the master and clients reach this server at (needed when --listen is a
        /// wildcard such as 0.0.0.0:7001).
        #[arg(long)]
        advertise: Option<String>,
        #[arg(long, default_value = "default")]
        rack: String,
        /// Heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u64,
        /// Do not fdatasync chunk data before acknowledging a mutation.
        #[arg(long)]
        no_sync: bool,
        /// Read and write chunk data through the page cache instead of with O_DIRECT.
        #[arg(long)]
        buffered_io: bool,
        /// Seconds between full background scrub passes over every replica (0: never).
        #[arg(long, default_value_t = 3600.0)]
        scrub_interval_secs: f64,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// List a directory.
    Ls { path: String },
    /// Create a directory.
    Mkdir { path: String },
    /// Create an empty file.
    Touch { path: String },
    /// Copy a local file into gfs.
    Put {
        local: PathBuf,
        remote: String,
        /// Have replicas acknowledge each piece from memory, then make the whole file durable
        /// with one sync per chunk at the end (by default every piece is fdatasynced on every
        /// replica before it is acknowledged). Either way the file is durable when put exits 0.
        #[arg(long)]
        sync: bool,
    },
    /// Copy a gfs file to a local file.
    Get { remote: String, local: PathBuf },
    /// Print a gfs file.
    Cat { remote: String },
    /// Remove a file or an empty directory.
    Rm { path: String },
    /// Rename a file or directory.
    Mv { from: String, to: String },
    /// Show size, chunks, replicas and their versions.
    Stat { path: String },
    /// Write stdin at an offset of an existing file.
    Write {
        remote: String,
        #[arg(long)]
        offset: u64,
        /// Fencing token NAME:GENERATION to stamp on the write.
        #[arg(long)]
        fence: Option<String>,
        /// As `put --sync`: acknowledged from memory, made durable once at the end.
        #[arg(long)]
        sync: bool,
    },
    /// Show a test-and-set register, or set it with --expect and --holder (prints the new
    /// generation; fails naming the current holder and generation if --expect is not current).
    Lock {
        name: String,
        #[arg(long, requires = "holder")]
        expect: Option<u64>,
        #[arg(long, requires = "expect")]
        holder: Option<String>,
    },
    /// Let go of a test-and-set register held by --holder at generation --expect: it moves to
    /// the next generation with no holder (prints it; fails naming the current holder and
    /// generation otherwise).
    Release {
        name: String,
        #[arg(long)]
        expect: u64,
        #[arg(long)]
        holder: String,
    },
    /// Append stdin as one record (created if missing); prints the record's offset.
    Append {
        remote: String,
        /// Fencing token NAME:GENERATION to stamp on the append.
        #[arg(long)]
        fence: Option<String>,
    },
    /// Copy-on-write snapshot of a file or directory tree.
    Snapshot { src: String, dst: String },
    /// Chunkservers and overall counts.
    Status,
    /// Check every chunk for live, healthy replicas (exit 1 if any chunk has none).
    Fsck,
    /// Fence writes to an empty file by a register.
    Bind { path: String, register: String },
    /// Measure loopback TCP throughput (one stream), for comparison with gfs.
    BenchNet {
        #[arg(long, default_value_t = 2048)]
        mib: u64,
    },
    /// Measure record append throughput.
    BenchAppend {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        records: usize,
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        #[arg(long, default_value = "/bench-append")]
        path: String,
    },
    /// Measure compare_and_set latency (each one logged and fsynced before the answer).
    BenchLock {
        #[arg(long, default_value_t = 500)]
        ops: usize,
        #[arg(long, default_value = "bench-lock")]
        name: String,
    },
    /// Measure master metadata operations per second.
    BenchMeta {
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        #[arg(long, default_value = "/bench-meta")]
        dir: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("storage={level},gfs={level},seal={level}")));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| pipesafe::Stderr(&OUTPUT)).init();
    let result = run(cli);
    // Whatever went wrong after the reader left (`gfs cat` stopping mid-file) is not news to it.
    if pipesafe::stdout_closed() {
        return ExitCode::from(pipesafe::CLOSED_STDOUT_STATUS);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("gfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn client(master: &Option<String>, retry_secs: f64) -> Result<Client> {
    let retry = storage::client::RetryPolicy { master_wait: secs(retry_secs)?, ..Default::default() };
    match master {
        Some(m) => Ok(Client::with_retry(m, retry)),
        None => bail!("no master address: pass --master ADDR or set GFS_MASTER"),
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Keygen { dir, force } => {
            let (path, key) = seal::generate(dir, *force)?;
            outln!("cluster key written to {} (fingerprint {})", path.display(), key.fingerprint());
            return Ok(());
        }
        // Measures bare loopback TCP: speaks to nobody but itself.
        Cmd::BenchNet { .. } => {}
        _ => cli.keys.install()?,
    }
    match cli.cmd {
        // Done above, before any key is needed.
        Cmd::Keygen { .. } => Ok(()),
        Cmd::Master {
            dir,
            listen,
            lease_secs,
            checkpoint_every,
            dead_after_secs,
            replicas,
            repair_interval_secs,
            rebalance_interval_secs,
            gc_delay_secs,
            shadow_of,
            peers,
            raft_tick_ms,
            serve,
        } => {
            let mut cfg = MasterConfig::new(dir, listen);
            cfg.peers = peers;
            if raft_tick_ms == 0 {
                bail!("--raft-tick-ms must be at least 1");
            }
            cfg.raft_tick = Duration::from_millis(raft_tick_ms);
            cfg.lease = secs(lease_secs)?;
            cfg.checkpoint_every = checkpoint_every.max(1);
            cfg.dead_after = secs(dead_after_secs)?;
            cfg.replicas = replicas.max(1);
            cfg.repair_interval = (repair_interval_secs > 0.0).then(|| secs(repair_interval_secs)).transpose()?;
            cfg.rebalance_interval =
                (rebalance_interval_secs > 0.0).then(|| secs(rebalance_interval_secs)).transpose()?;
            cfg.gc_delay = (gc_delay_secs > 0.0).then(|| secs(gc_delay_secs)).transpose()?;
            cfg.shadow_of = shadow_of;
            cfg.limits = serve.limits()?;
            let m = Master::open(cfg).context("starting the master")?;
            let addr = service::serve(m).context("starting the master")?;
            outln!("gfs master listening on {addr}");
            serve.serve_metrics()?;
            park()
        }
        Cmd::Chunkserver {
            dir,
            listen,
            advertise,
            rack,
            heartbeat_ms,
            no_sync,
            buffered_io,
            scrub_interval_secs,
            serve,
        } => {
            let master = cli.master.context("chunkserver needs --master ADDR (or GFS_MASTER)")?;
            let mut cfg = ChunkServerConfig::new(dir, master, listen);
            cfg.rack = rack;
            cfg.advertise = advertise;
            cfg.heartbeat = Duration::from_millis(heartbeat_ms.max(10));
            cfg.sync = !no_sync;
            cfg.direct_io = !buffered_io;
            cfg.scrub_interval = Some(secs(scrub_interval_secs)?).filter(|d| !d.is_zero());
            cfg.limits = serve.limits()?;
            let cs = ChunkServer::start(cfg).context("starting the chunkserver")?;
            outln!("gfs chunkserver listening on {}", cs.addr);
            serve.serve_metrics()?;
            park()
        }
        Cmd::Ls { path } => {
            for e in client(&cli.master, cli.retry_secs)?.list(&path)? {
                if e.is_dir {
                    outln!("d {:>14} {}/", "-", e.name);
                } else {
                    outln!("f {:>14} {}", e.size, e.name);
                }
            }
            Ok(())
        }
        Cmd::Mkdir { path } => Ok(client(&cli.master, cli.retry_secs)?.mkdir(&path)?),
        Cmd::Touch { path } => Ok(client(&cli.master, cli.retry_secs)?.create(&path)?),
        Cmd::Put { local, remote, sync } => {
            let c = client(&cli.master, cli.retry_secs)?;
            let c = if sync { c.with_durability(Durability::Flush) } else { c };
            // A directory opens fine on Linux and fails only when read: refuse it up front.
            let meta = std::fs::metadata(&local).with_context(|| format!("reading {}", local.display()))?;
            if !meta.is_file() {
                bail!("{} is not a regular file", local.display());
            }
            let mut f = std::fs::File::open(&local).with_context(|| format!("opening {}", local.display()))?;
            c.put(&remote, &mut f)?;
            Ok(())
        }
        Cmd::Get { remote, local } => {
            let c = client(&cli.master, cli.retry_secs)?;
            c.open(&remote)?; // fail before creating the local file if the remote one is missing
            let f = std::fs::File::create(&local).with_context(|| format!("creating {}", local.display()))?;
            let mut w = std::io::BufWriter::new(f);
            c.read_to(&remote, &mut w)?;
            use std::io::Write;
            w.flush().with_context(|| format!("writing {}", local.display()))?;
            Ok(())
        }
        Cmd::Cat { remote } => {
            let c = client(&cli.master, cli.retry_secs)?;
            c.read_to(&remote, &mut pipesafe::CheckedStdout(&OUTPUT))?;
            Ok(())
        }
        Cmd::Rm { path } => Ok(client(&cli.master, cli.retry_secs)?.delete(&path)?),
        Cmd::Mv { from, to } => Ok(client(&cli.master, cli.retry_secs)?.rename(&from, &to)?),
        Cmd::Stat { path } => {
            let st = client(&cli.master, cli.retry_secs)?.stat(&path)?;
            outln!("path: {}", st.path);
            outln!("type: {}", if st.is_dir { "directory" } else { "file" });
            if !st.is_dir {
                outln!("size: {}", st.size);
                if let Some(register) = &st.register {
                    outln!("fenced by register: {register}");
                }
                outln!("chunks: {}", st.chunks.len());
                for ch in &st.chunks {
                    let reps: Vec<String> = ch
                        .replicas
                        .iter()
                        .map(|r| {
                            let tag = match (r.stale, r.corrupt) {
                                (true, _) => "(stale)",
                                (false, true) => "(corrupt)",
                                _ => "",
                            };
                            format!("{}@v{}{tag}", r.server, r.version)
                        })
                        .collect();
                    outln!(
                        "chunk {} handle {} version {} primary {} replicas {}",
                        ch.index,
                        ch.handle,
                        ch.version,
                        ch.primary.as_deref().unwrap_or("-"),
                        if reps.is_empty() { "-".to_string() } else { reps.join(" ") }
                    );
                }
            }
            Ok(())
        }
        Cmd::Write { remote, offset, fence, sync } => {
            let mut c = client(&cli.master, cli.retry_secs)?;
            if let Some(f) = fence {
                let (name, generation) = parse_fence(&f)?;
                c = c.fenced(&name, generation);
            }
            if sync {
                c = c.with_durability(Durability::Flush);
            }
            c.open(&remote)?; // fail before reading stdin if the file is missing
            let stdin = std::io::stdin();
            c.write_stream(&remote, offset, &mut stdin.lock(), StreamOpts::default())?;
            c.sync(&remote)?;
            Ok(())
        }
        Cmd::Lock { name, expect, holder } => {
            let c = client(&cli.master, cli.retry_secs)?;
            match (expect, holder) {
                (Some(e), Some(h)) => outln!("{}", c.compare_and_set(&name, e, &h)?),
                _ => {
                    let (generation, holder) = c.register(&name)?;
                    outln!("{name} generation {generation} holder {holder}");
                }
            }
            Ok(())
        }
        Cmd::Release { name, expect, holder } => {
            outln!("{}", client(&cli.master, cli.retry_secs)?.release_register(&name, expect, &holder)?);
            Ok(())
        }
        Cmd::Append { remote, fence } => {
            let mut c = client(&cli.master, cli.retry_secs)?;
            if let Some(f) = fence {
                let (name, generation) = parse_fence(&f)?;
                c = c.fenced(&name, generation);
            }
            let mut data = Vec::new();
            use std::io::Read;
            std::io::stdin().take(storage::MAX_RECORD + 1).read_to_end(&mut data).context("reading stdin")?;
            if data.len() as u64 > storage::MAX_RECORD {
                bail!("a record holds at most {} bytes", storage::MAX_RECORD);
            }
            match c.create(&remote) {
                Ok(()) => {}
                Err(e) if e.kind() == Some(storage::error::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
            outln!("{}", c.append(&remote, &data)?);
            Ok(())
        }
        Cmd::Snapshot { src, dst } => Ok(client(&cli.master, cli.retry_secs)?.snapshot(&src, &dst)?),
        Cmd::Status => {
            let s = client(&cli.master, cli.retry_secs)?.status()?;
            outln!("files {} dirs {} chunks {}", s.files, s.dirs, s.chunks);
            for cs in &s.servers {
                outln!(
                    "chunkserver {} rack {} {} chunks {} last heartbeat {} ms ago",
                    cs.addr,
                    cs.rack,
                    if cs.live { "up" } else { "DOWN" },
                    cs.chunks,
                    cs.last_seen_ms
                );
            }
            Ok(())
        }
        Cmd::Fsck => {
            let r = client(&cli.master, cli.retry_secs)?.fsck()?;
            for p in &r.problems {
                outln!("{p}");
            }
            outln!(
                "files {} chunks {}: {} healthy, {} under-replicated, {} missing",
                r.files,
                r.chunks,
                r.healthy,
                r.under_replicated,
                r.missing
            );
            if r.missing > 0 {
                bail!("{} chunks have no live healthy replica", r.missing);
            }
            Ok(())
        }
        Cmd::Bind { path, register } => Ok(client(&cli.master, cli.retry_secs)?.bind(&path, &register)?),
        Cmd::BenchNet { mib } => bench::net(mib),
        Cmd::BenchAppend { threads, records, size, path } => {
            bench::append(&client(&cli.master, cli.retry_secs)?, threads, records, size, &path)
        }
        Cmd::BenchLock { ops, name } => bench::lock(&client(&cli.master, cli.retry_secs)?, ops, &name),
        Cmd::BenchMeta { threads, ops, dir } => bench::meta(&client(&cli.master, cli.retry_secs)?, threads, ops, &dir),
    }
}

fn parse_fence(f: &str) -> Result<(String, u64)> {
    f.rsplit_once(':')
        .and_then(|(n, g)| Some((n.to_string(), g.parse::<u64>().ok()?)))
        .context("--fence wants NAME:GENERATION")
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).context("bad duration")
}

fn park() -> Result<()> {
    loop {
        std::thread::park();
    }
}
