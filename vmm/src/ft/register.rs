//! The go-live register `ft.NAME` on the gfs master: which side of the pair is live, at which
//! generation. Going live is a compare-and-set that expects the generation this side knows, so
//! of two sides that lost each other exactly one wins.

use super::FtError;
use std::time::{Duration, Instant};
use storage::error::ErrorKind;

/// How often an unreachable master is tried again during a race.
const RETRY: Duration = Duration::from_millis(50);
/// At most one "master unreachable" warning per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);
/// How long one try of the race waits for a master that cannot be reached: not at all, the
/// race itself tries again every [`RETRY`] and says so every [`WARN_PERIOD`]. (The client's
/// default, a minute with backoff up to 2 s, would hide the warning that long and delay the
/// go-live by up to 2 s after the master is back.)
const RACE_MASTER_WAIT: Duration = Duration::ZERO;

/// How a go-live race ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Race {
    /// This side holds the register at `generation`.
    Won { generation: u64 },
    /// `holder` took it first, at `generation`.
    Lost { holder: String, generation: u64 },
}

/// This side's handle on register `ft.NAME`.
pub struct GoLiveRegister {
    client: storage::Client,
    /// The client the race's tries go through (see [`RACE_MASTER_WAIT`]).
    racing: storage::Client,
    register: String,
    holder: String,
}

impl GoLiveRegister {
    /// The register of VM `name` on the master at `master`; `holder` is what this side writes
    /// into it (`ID@FT_LISTEN_ADDR`).
    pub fn new(master: &str, name: &str, holder: String) -> Self {
        let racing = storage::Client::with_retry(
            master,
            storage::client::RetryPolicy { master_wait: RACE_MASTER_WAIT, ..Default::default() },
        );
        Self { client: storage::Client::new(master), racing, register: format!("ft.{name}"), holder }
    }

    pub fn name(&self) -> &str {
        &self.register
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The register's generation and holder now.
    pub fn current(&self) -> Result<(u64, String), FtError> {
        self.client.register(&self.register).map_err(|source| FtError::Register { name: self.register.clone(), source })
    }

    /// Goes live before the VM's first instruction: refuses a register someone holds unless
    /// `takeover` (the operator's word that the holder is dead). Returns the generation won.
    pub fn go_live_at_start(&self, takeover: bool) -> Result<u64, FtError> {
        let (generation, holder) = self.current()?;
        if !holder.is_empty() && !takeover {
            return Err(FtError::Held { name: self.register.clone(), holder, generation });
        }
        match self.race(generation) {
            Race::Won { generation } => Ok(generation),
            Race::Lost { holder, generation } => Err(FtError::Held { name: self.register.clone(), holder, generation }),
        }
    }

    /// The race after the peer went silent: compare-and-set expecting `known`. Keeps trying
    /// while the master cannot be reached (never goes live without winning). A retried call
    /// that finds the register held by this side one generation on has won: its first reply
    /// was lost.
    pub fn race(&self, known: u64) -> Race {
        let mut last_warning: Option<Instant> = None;
        loop {
            match self.racing.compare_and_set(&self.register, known, &self.holder) {
                Ok(generation) => return Race::Won { generation },
                Err(error) if error.kind() == Some(ErrorKind::Conflict) => match self.racing.register(&self.register) {
                    Ok((generation, holder)) if holder == self.holder && generation == known + 1 => {
                        return Race::Won { generation }
                    }
                    Ok((generation, holder)) => return Race::Lost { holder, generation },
                    Err(error) => self.unreachable(&error.to_string(), &mut last_warning),
                },
                Err(error) => self.unreachable(&error.to_string(), &mut last_warning),
            }
            std::thread::sleep(RETRY);
        }
    }

    fn unreachable(&self, error: &str, last_warning: &mut Option<Instant>) {
        if last_warning.is_none_or(|at| at.elapsed() >= WARN_PERIOD) {
            *last_warning = Some(Instant::now());
            tracing::warn!(register = %self.register, "go-live race: the gfs master does not answer; output stays held and the race goes on: {error}");
        }
    }

    /// Gives the register up after a clean stop (no holder, the next generation), so the next
    /// start needs no `--takeover`. Only this side's own hold at `generation` is released.
    pub fn release(&self, generation: u64) -> Result<u64, FtError> {
        self.client
            .release_register(&self.register, generation, &self.holder)
            .map_err(|source| FtError::Register { name: self.register.clone(), source })
    }
}
