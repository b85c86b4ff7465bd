//! `--keys DIR` / `FT_KEYS` / `--insecure`, which every command that opens a network channel
//! takes, and `ftvm keygen DIR` (the same as `gfs keygen DIR`).

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// How this process's channels (gfs connections, the logging channel) are sealed.
#[derive(clap::Args, Clone, Debug)]
pub struct KeysArgs {
    /// The cluster's key directory (made by `ftvm keygen DIR` or `gfs keygen DIR`): the logging
    /// channel and every gfs connection are mutually authenticated and encrypted with its key.
    #[arg(long, global = true, env = seal::KEYS_ENV, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Run without keys: network channels are neither authenticated nor encrypted.
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl KeysArgs {
    /// Sets this process's security from the flags (for a command that opens network channels).
    pub fn install(&self) -> anyhow::Result<seal::Security> {
        let security = seal::Security::resolve(self.keys.as_deref(), self.insecure)?;
        seal::install(security.clone());
        Ok(security)
    }
}

/// `ftvm keygen DIR`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to make the key (the directory is made if missing).
    pub dir: PathBuf,
    /// Replace an existing key (every member of the cluster then needs the new one).
    #[arg(long)]
    pub force: bool,
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let (path, key) = make(&args.dir, args.force)?;
    vmm::outln!("cluster key written to {} (fingerprint {})", path.display(), key.fingerprint());
    Ok(ExitCode::SUCCESS)
}

fn make(dir: &Path, force: bool) -> anyhow::Result<(PathBuf, seal::ClusterKey)> {
    seal::generate(dir, force).with_context(|| format!("making the cluster key in {}", dir.display()))
}
