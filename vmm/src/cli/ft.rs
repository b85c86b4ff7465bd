//! The flags both roles of the FT pair share, and what they become.

use anyhow::bail;
use clap::{Args, ValueEnum};
use ftlog::channel::ChannelConfig;
use ftlog::{CommitLimits, CommitMode};
use std::time::Duration;
use vmm::ft::join::JoinMode;
use vmm::ft::FtConfig;

/// Which word of the backup releases an output.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Commit {
    /// The backup holds the log up to the output (VMware FT's rule).
    Received,
    /// The backup replayed up to the output with an identical result (as COLO).
    Verified,
}

#[derive(Args, Clone, Debug)]
pub struct FtArgs {
    /// Where this side accepts a backup (and, on a backup, where it will once it is live).
    #[arg(long, value_name = "ADDR")]
    pub ft_listen: Option<String>,
    /// This side's id in the go-live register (default HOSTNAME:PID).
    #[arg(long, value_name = "ID")]
    pub ft_id: Option<String>,
    /// Release an output when the backup holds the log up to it (received) or has replayed it
    /// with an identical output (verified).
    #[arg(long, value_enum, default_value = "received")]
    pub commit: Commit,
    /// How often each side of the pair says it is alive.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub heartbeat_ms: u64,
    /// Silence longer than this means the peer is gone.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub timeout_ms: u64,
    /// When the backup lags by more than this, the primary waits before re-entering the guest
    /// (0: never waits).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub max_lag_ms: u64,
    /// How a backup joins this VM: copy its memory while it runs, then pause briefly for the
    /// last dirty pages (pre-copy), or pause for the whole copy (stop-and-copy).
    #[arg(long, value_enum, default_value = "pre-copy")]
    pub join_mode: JoinModeArg,
    /// Serve this VMM's figures (exits, log bytes, lag, held outputs, resyncs, failovers) at
    /// http://ADDR/metrics in the Prometheus text format, and its status at /status.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

/// See [`FtArgs::join_mode`].
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum JoinModeArg {
    PreCopy,
    StopAndCopy,
}

impl FtArgs {
    /// Starts the `--metrics` endpoint, if asked for.
    pub fn serve_metrics(&self) -> anyhow::Result<()> {
        if let Some(addr) = &self.metrics {
            // Plain HTTP (a Prometheus scraper speaks no Noise): with a cluster key, only a
            // loopback address, so the figures never cross the network unencrypted.
            let sealed = seal::installed().is_ok_and(|security| security.is_sealed());
            let loopback = addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if sealed && !loopback {
                bail!(
                    "--metrics {addr}: the metrics endpoint is plain HTTP; with a cluster key it binds only a \
                     loopback address (127.0.0.1:PORT, scraped by an agent on this host), or run with --insecure"
                );
            }
            vmm::telemetry::metrics::serve(addr)?;
        }
        Ok(())
    }

    /// The configuration of one side of VM `name` on the gfs master `master`.
    pub fn config(&self, name: &str, master: Option<&str>) -> anyhow::Result<FtConfig> {
        let Some(master) = master else {
            bail!("--ft needs the gfs master that holds its go-live register: --gfs-master ADDR (or GFS_MASTER)");
        };
        let Some(listen) = self.ft_listen.clone() else {
            bail!("--ft needs --ft-listen ADDR: where this side accepts a backup");
        };
        if self.heartbeat_ms == 0 || self.timeout_ms <= self.heartbeat_ms {
            bail!(
                "--timeout-ms ({}) must be longer than --heartbeat-ms ({}), which must not be 0",
                self.timeout_ms,
                self.heartbeat_ms
            );
        }
        let channel = ChannelConfig {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            // What `--keys` / `--insecure` installed for the process (main does it first).
            security: seal::installed()?,
            ..ChannelConfig::default()
        };
        Ok(FtConfig {
            name: name.to_owned(),
            master: master.to_owned(),
            listen,
            id: self.ft_id.clone().unwrap_or_else(FtConfig::default_id),
            commit: match self.commit {
                Commit::Received => CommitMode::Received,
                Commit::Verified => CommitMode::Verified,
            },
            channel,
            max_lag: Duration::from_millis(self.max_lag_ms),
            limits: CommitLimits::default(),
            join: match self.join_mode {
                JoinModeArg::PreCopy => JoinMode::PreCopy,
                JoinModeArg::StopAndCopy => JoinMode::StopAndCopy,
            },
        })
    }
}
