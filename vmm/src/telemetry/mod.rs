//! What a running VMM tells about itself: `ftvm status ADDR` (asked on its `--ft-listen` port,
//! see [`crate::ft::port`]) and `--metrics ADDR` (Prometheus text over HTTP).
//!
//! One process runs one VM, so its vital signs are one process-wide [`Vitals`] (as Firecracker
//! keeps one metrics store): the vCPU loop stores its exit count, the FT code says when this
//! side goes live, follows, is joined or halts, and while a pair runs it lends a
//! [`PairSource`] that reads the held outputs, the log position and the backup's lag on demand.
//! Everything is read when asked; nothing here waits on the vCPU.

pub mod metrics;
pub mod status;

pub use status::{LagFigures, Role, StatusReport};

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The figures of the pair that runs now, read on demand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairFigures {
    /// The log's stream position in this pairing (bytes sent by a primary, held by a backup).
    pub log_bytes: u64,
    pub held_outputs: usize,
    pub held_bytes: usize,
    pub oldest_held: Option<Duration>,
    /// The backup's replay lag as the primary measures it (a backup does not know its own).
    pub lag: Option<LagFigures>,
}

/// Reads the current pair's figures (lent by the FT code while a pair runs).
pub type PairSource = Box<dyn Fn() -> PairFigures + Send + Sync>;

/// The process's vital signs.
pub struct Vitals {
    started: Instant,
    role: AtomicU8,
    generation: AtomicU64,
    exits: AtomicU64,
    resyncs: AtomicU64,
    failovers: AtomicU64,
    joins: AtomicU64,
    /// Log bytes of the pairings that ended (the current one's come from its source).
    log_bytes_before: AtomicU64,
    names: Mutex<Names>,
    pair: Mutex<Option<PairSource>>,
    rate: Mutex<RateWindow>,
}

#[derive(Default)]
struct Names {
    vm: String,
    listen: String,
    /// The backup's address on a protected primary, the primary's on a backup.
    peer: Option<String>,
}

/// The log rate is measured between two reads at least this far apart.
const RATE_WINDOW: Duration = Duration::from_secs(1);

struct RateWindow {
    since: Instant,
    bytes: u64,
    rate: f64,
}

static VITALS: LazyLock<Vitals> = LazyLock::new(Vitals::new);

/// This process's vital signs.
pub fn vitals() -> &'static Vitals {
    &VITALS
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a single assignment: a panic elsewhere leaves the value usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Vitals {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            role: AtomicU8::new(Role::Starting as u8),
            generation: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            joins: AtomicU64::new(0),
            log_bytes_before: AtomicU64::new(0),
            names: Mutex::new(Names::default()),
            pair: Mutex::new(None),
            rate: Mutex::new(RateWindow { since: now, bytes: 0, rate: 0.0 }),
        }
    }

    /// The VM's name in the go-live register and this side's `--ft-listen` address.
    pub fn name_vm(&self, vm: &str, listen: &str) {
        let mut names = lock(&self.names);
        names.vm = vm.to_owned();
        names.listen = listen.to_owned();
    }

    /// The vCPU loop reached deterministic exit `exits` (the landmark `Exit(exits)`).
    pub fn exit_reached(&self, exits: u64) {
        self.exits.store(exits, Ordering::Relaxed);
    }

    /// This side is live at `generation`, without a backup for now.
    pub fn live(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
        self.role.store(Role::Live as u8, Ordering::Relaxed);
        self.end_pair();
    }

    /// This side went live after following: a failover.
    pub fn took_over(&self, generation: u64) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
        self.live(generation);
    }

    /// A backup at `backup` joined this live side; `source` reads the pair's figures.
    pub fn protected_by(&self, backup: &str, source: PairSource) {
        self.joins.fetch_add(1, Ordering::Relaxed);
        lock(&self.names).peer = Some(backup.to_owned());
        *lock(&self.pair) = Some(source);
    }

    /// This side follows the primary at `primary` (live at `generation`).
    pub fn following(&self, primary: &str, generation: u64, source: PairSource) {
        self.generation.store(generation, Ordering::Relaxed);
        self.role.store(Role::Following as u8, Ordering::Relaxed);
        lock(&self.names).peer = Some(primary.to_owned());
        *lock(&self.pair) = Some(source);
    }

    /// A resync of the pair completed (counted on both sides).
    pub fn resynced(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The pair ended (the backup or the primary is gone): its log bytes join the total.
    pub fn end_pair(&self) {
        if let Some(source) = lock(&self.pair).take() {
            self.log_bytes_before.fetch_add(source().log_bytes, Ordering::Relaxed);
        }
        lock(&self.names).peer = None;
    }

    /// This side lost the go-live race or was fenced out: it releases nothing more.
    pub fn halted(&self) {
        self.end_pair();
        self.role.store(Role::Halted as u8, Ordering::Relaxed);
    }

    /// What this side does now.
    pub fn role(&self) -> Role {
        Role::from_code(self.role.load(Ordering::Relaxed))
    }

    /// Everything, as of now.
    pub fn report(&self) -> StatusReport {
        let pair = lock(&self.pair).as_ref().map(|source| source()).unwrap_or_default();
        let log_bytes = self.log_bytes_before.load(Ordering::Relaxed) + pair.log_bytes;
        let log_rate = self.log_rate(log_bytes);
        let names = lock(&self.names);
        let role = Role::from_code(self.role.load(Ordering::Relaxed));
        let exits = self.exits.load(Ordering::Relaxed);
        StatusReport {
            vm: names.vm.clone(),
            listen: names.listen.clone(),
            pid: std::process::id(),
            role,
            protected: role == Role::Live && names.peer.is_some(),
            generation: self.generation.load(Ordering::Relaxed),
            landmark: format!("Exit({exits})"),
            exits,
            peer: names.peer.clone(),
            backup_lag: pair.lag,
            log_bytes,
            log_rate_bytes_per_s: log_rate,
            held_outputs: pair.held_outputs,
            held_bytes: pair.held_bytes,
            oldest_held_ms: pair.oldest_held.map(|age| age.as_secs_f64() * 1e3),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            joins: self.joins.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Bytes per second over the last window of at least [`RATE_WINDOW`] (since the start
    /// until then).
    fn log_rate(&self, bytes: u64) -> f64 {
        let mut window = lock(&self.rate);
        let elapsed = window.since.elapsed();
        if elapsed >= RATE_WINDOW {
            window.rate = bytes.saturating_sub(window.bytes) as f64 / elapsed.as_secs_f64();
            window.since = Instant::now();
            window.bytes = bytes;
        } else if window.bytes == 0 && elapsed > Duration::ZERO {
            window.rate = bytes as f64 / elapsed.as_secs_f64();
        }
        window.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_lends_its_figures_and_its_log_bytes_stay_counted_after_it_ends() {
        let vitals = Vitals::new();
        vitals.name_vm("kv", "10.0.0.11:7100");
        vitals.live(1);
        vitals.exit_reached(42);
        let report = vitals.report();
        assert_eq!((report.role, report.protected, report.generation, report.exits), (Role::Live, false, 1, 42));
        assert_eq!(report.landmark, "Exit(42)");

        let figures = PairFigures { log_bytes: 1000, held_outputs: 3, held_bytes: 180, ..PairFigures::default() };
        vitals.protected_by("10.0.0.12:7100", Box::new(move || figures.clone()));
        let report = vitals.report();
        assert!(report.protected);
        assert_eq!(report.peer.as_deref(), Some("10.0.0.12:7100"));
        assert_eq!((report.held_outputs, report.held_bytes, report.log_bytes, report.joins), (3, 180, 1000, 1));

        vitals.live(2); // the backup was lost, this side won the race
        let report = vitals.report();
        assert!(!report.protected);
        assert_eq!((report.generation, report.held_outputs, report.log_bytes), (2, 0, 1000));
    }

    #[test]
    fn a_backup_that_goes_live_counts_a_failover() {
        let vitals = Vitals::new();
        vitals.following("10.0.0.11:7100", 1, Box::new(PairFigures::default));
        assert_eq!(vitals.report().role, Role::Following);
        vitals.resynced();
        vitals.took_over(2);
        let report = vitals.report();
        assert_eq!((report.role, report.generation, report.failovers, report.resyncs), (Role::Live, 2, 1, 1));
        assert_eq!(report.peer, None);
        vitals.halted();
        assert_eq!(vitals.report().role, Role::Halted);
    }
}
