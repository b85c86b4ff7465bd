//! The live side of the pair. It runs alone (outputs leave at once) until a backup connects on
//! `--ft-listen`; the join copies memory while the guest runs, pauses it briefly for the rest
//! (see [`super::join`]), and from that landmark on the run is recorded into the channel and every output waits for the
//! backup's acknowledgement. When the backup goes silent the primary races for the register:
//! won, it releases what it held and runs alone again (a new backup can join); lost, it halts.

use super::accept::{Join, Joining};
use super::join;
use super::register::{GoLiveRegister, Race};
use super::verify::DigestingCommit;
use super::world::{LinkState, PrimaryCommit, PrimaryWorld};
use super::{ms_since, FtConfig, FtError};
use crate::control::VcpuControl;
use crate::machine::Machine;
use crate::session::record::log_header;
use crate::stats::ExitStats;
use crate::vcpu::{run, RunEnd, RunOptions, RunPosition, StopReason};
use devices::virtio::DiscardOutput;
use devices::{EventSource, HostWorld, WorldStop};
use ftlog::channel::{Hello, PrimaryEvent, PrimaryLink, Role};
use ftlog::{CommitMode, OutputCommit, PeerWatch, RecordingWorld};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the releaser looks at the backup's acknowledgements.
const RELEASE_POLL: Duration = Duration::from_millis(1);
/// How long a clean stop waits for the backup to acknowledge the log's end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How the primary's run ended.
pub enum Served {
    /// The VM stopped (powered off, a stop signal, a fault): the register was released.
    Stopped(RunEnd),
    /// The backup won the go-live race: nothing more left this side.
    LostRace { holder: String, generation: u64 },
    /// A gfs disk refused this side's write: another side won `generation` (see [`super::fence`]).
    FencedOut { generation: u64 },
}

/// The live side of VM `config.name`, holding the register at `generation`.
pub struct Primary {
    config: FtConfig,
    register: GoLiveRegister,
    generation: u64,
    control: VcpuControl,
    hello: Arc<Mutex<Hello>>,
    /// A backup is attached (or joining): the listener turns others away.
    paired: Arc<AtomicBool>,
    joins: crossbeam_channel::Receiver<Join>,
    /// Exits of every stretch of this VM's run on this side (alone, paired, followed).
    stats: ExitStats,
    /// The VM's memory as join threads read it.
    memory: join::MemorySource,
    /// The token the VM's gfs disks write with: raised to each generation this side wins.
    fence: Option<crate::gfs_disk::DiskFence>,
}

impl Primary {
    /// Starts accepting backups arriving on `port` for `machine`, live at `generation`.
    pub fn listen(
        config: FtConfig,
        register: GoLiveRegister,
        generation: u64,
        machine: &Machine,
        control: VcpuControl,
        port: super::port::FtPort,
    ) -> Result<Self, FtError> {
        crate::telemetry::vitals().name_vm(&config.name, &config.listen);
        crate::telemetry::vitals().live(generation);
        let hello = Arc::new(Mutex::new(Hello {
            role: Role::Primary,
            generation,
            listen: config.listen.clone(),
            id: config.id.clone(),
            vm: config.name.clone(),
            machine: Some(machine.description()),
            verified: config.commit == CommitMode::Verified,
        }));
        let paired = Arc::new(AtomicBool::new(false));
        let (joins_tx, joins) = crossbeam_channel::bounded(1);
        let memory = join::MemorySource::of(machine)?;
        {
            let joining = Joining {
                hello: hello.clone(),
                paired: paired.clone(),
                joins: joins_tx,
                control: control.clone(),
                channel: config.channel.clone(),
                memory: memory.clone(),
                mode: config.join,
            };
            std::thread::Builder::new()
                .name("ft-listen".into())
                .spawn(move || super::accept::accept_backups(port.links(), joining))
                .map_err(|source| FtError::Listen { addr: config.listen.clone(), source })?;
        }
        Ok(Self {
            config,
            register,
            generation,
            control,
            hello,
            paired,
            joins,
            stats: ExitStats::default(),
            memory,
            fence: None,
        })
    }

    /// The VM's gfs disks write with `fence`, which follows the generations this side wins.
    pub fn fencing(mut self, fence: crate::gfs_disk::DiskFence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Counts `stats` (a stretch this machine ran before, e.g. following) into the run's total.
    pub fn ran_before(mut self, stats: &ExitStats) -> Self {
        self.stats.add(stats);
        self
    }

    /// The VM stopped: its end, with the exits of the whole run on this side.
    fn stopped(&self, mut end: RunEnd) -> Served {
        end.stats = self.stats.clone();
        Served::Stopped(end)
    }

    /// Runs the VM from `position` in this host's `world` until it stops, this side loses a
    /// race or its disk writes are fenced out; backups join and are lost on the way.
    pub fn serve(self, machine: &mut Machine, world: HostWorld, position: RunPosition) -> Result<Served, FtError> {
        super::fence::halt_if_fenced(self.serve_until_end(machine, world, position))
    }

    fn serve_until_end(
        mut self,
        machine: &mut Machine,
        mut world: HostWorld,
        mut position: RunPosition,
    ) -> Result<Served, FtError> {
        loop {
            let end = run(machine, &mut world, RunOptions { start: position, snapshot: None })?;
            self.stats.add(&end.stats);
            position = end.position;
            if !matches!(end.reason, StopReason::Paused) {
                // Fenced out, the register is someone else's: nothing to release.
                if super::fence::fenced_stop(&end.reason).is_none() {
                    self.release_register();
                }
                return Ok(self.stopped(end));
            }
            let Ok(join) = self.joins.try_recv() else { continue };
            let paused = Instant::now();
            let addr = join.link.backup().listen.clone();
            match self.protect(machine, world, position, join, paused, &addr)? {
                Protected::Alone { world: alone, position: at } => {
                    world = alone;
                    position = at;
                }
                Protected::Ended(served) => return Ok(served),
            }
        }
    }

    /// Joins a backup at `position` (the guest is paused), runs paired until the backup is
    /// lost or the VM stops.
    fn protect(
        &mut self,
        machine: &mut Machine,
        world: HostWorld,
        position: RunPosition,
        join: Join,
        paused: Instant,
        addr: &str,
    ) -> Result<Protected, FtError> {
        let Join { link, watch, prepared } = join;
        // Checkpoints are deltas against pages both sides have seen: the backup starts with none.
        machine.checkpoint_bases.clear();
        match join::finish(machine, position, world.monotonic_now(), &self.memory, prepared) {
            Ok(report) => tracing::info!(
                %addr,
                rounds = report.rounds,
                paused_pages = report.paused_pages,
                bytes = report.bytes,
                live_ms = report.live.as_millis() as u64,
                "join: the copy is complete"
            ),
            Err(error) => {
                tracing::warn!(%addr, "a backup went away while it joined; running alone: {error}");
                self.paired.store(false, Ordering::Release);
                return Ok(Protected::Alone { world, position });
            }
        }
        let header = log_header(machine, 1, position.exits);
        let mut recorder = RecordingWorld::new(world, link.record_sink(), &header)?;
        recorder.publish_to(watch.clone());
        let direct = machine.attach_output(Box::new(DiscardOutput::default()));
        let commit = OutputCommit::new(
            direct,
            watch.clone(),
            self.config.commit,
            self.config.channel.timeout,
            self.config.limits,
        );
        let link = Arc::new(link);
        let verified = self.config.commit == CommitMode::Verified;
        if verified {
            machine.attach_output(Box::new(DigestingCommit::new(commit.clone(), link.clone())));
        } else {
            machine.attach_output(Box::new(commit.clone()));
        }
        let state = LinkState::default();
        let helpers = Helpers::start(&link, &commit, &state, &watch, &self.control, verified);
        super::timeline::paired();
        crate::errln!("ft: protected by {addr} since {} (pause {} ms)", position.landmark(), ms_since(paused));
        crate::telemetry::vitals().protected_by(addr, pair_figures(&commit, &watch, &state));
        let mut paired = PrimaryWorld::new(
            recorder,
            commit.clone(),
            watch.clone(),
            state.clone(),
            self.control.clone(),
            self.config.max_lag,
        );
        // The log's header leaves now: the backup needs it to go live from the joined state.
        paired.push_now();
        let mut at = position;
        loop {
            let mut end = run(machine, &mut paired, RunOptions { start: at, snapshot: None })?;
            self.stats.add(&end.stats);
            at = end.position;
            let lost = state.is_lost() || matches!(end.reason, StopReason::World(WorldStop::PeerLost { .. }));
            if lost || (matches!(end.reason, StopReason::World(WorldStop::Failed(_))) && link.is_lost()) {
                // Joins the releaser: a write it had under way has ended, and if it was refused
                // by fencing, that is in `state` now and this side halts instead of racing.
                helpers.stop();
                settle_disks(&commit, &state);
                if let Some(failed) = Self::fenced_while_paired(&state, &mut end, &commit, &link) {
                    return Ok(failed);
                }
                report_lag(&state);
                let recorder = paired.into_recorder();
                return self.race_after_losing(machine, recorder.into_inner(), at, commit, link, &state);
            }
            if let Some(failed) = Self::fenced_while_paired(&state, &mut end, &commit, &link) {
                helpers.stop();
                return Ok(failed);
            }
            if matches!(end.reason, StopReason::Paused) {
                if state.resync_to_send() {
                    self.resync(machine, &mut paired, &link, &commit, at, &state);
                }
                continue; // a join refused while paired, or a spurious pause
            }
            // The VM stopped: the backup gets the End record, and what is held leaves once it
            // has acknowledged it.
            let code = match end.reason {
                StopReason::PowerOff(code) => code,
                _ => u32::MAX,
            };
            let digest = crate::digest::state_digest(machine)?;
            let finished = paired.into_recorder().finish(code, Some(*digest.as_bytes()));
            if let Err(error) = &finished {
                tracing::warn!("the log's end did not reach the backup: {error}");
            }
            let deadline = Instant::now() + CLOSE_WAIT;
            while commit.stats().held > 0 && !state.is_lost() && Instant::now() < deadline {
                let released = commit.wait_for_space(RELEASE_POLL * 10).and_then(|_| commit.release_ready());
                if let Ok(count) = &released {
                    super::timeline::released(*count);
                }
                if let Err(error) = released {
                    if super::fence::fenced_out(&error).is_some() {
                        commit.halt();
                        helpers.stop();
                        link.abort();
                        end.reason = StopReason::DeviceFailed(Arc::new(error));
                        return Ok(Protected::Ended(self.stopped(end)));
                    }
                }
            }
            if commit.stats().held > 0 {
                // The backup did not acknowledge the end: only the race decides who releases.
                helpers.stop();
                let world = HostWorld::resuming_at(0);
                return self.race_after_losing_at_stop(machine, world, commit, link, &state, end);
            }
            helpers.stop();
            report_lag(&state);
            // The digesting stage holds the link too.
            drop(machine.attach_output(Box::new(commit.clone())));
            if let Ok(link) = Arc::try_unwrap(link) {
                link.close(CLOSE_WAIT);
            }
            self.release_register();
            return Ok(Protected::Ended(self.stopped(end)));
        }
    }

    /// The backup asked for a resync (its replay diverged, or an output differed): at this
    /// pause, `at`, its full state goes out as a stop-and-copy join's would, then the log goes on
    /// from a snapshot mark there. Output stays held until the backup says it applied the state.
    /// A backup lost on the way is the watcher's to notice, as ever.
    fn resync(
        &self,
        machine: &mut Machine,
        paired: &mut PrimaryWorld,
        link: &PrimaryLink,
        commit: &PrimaryCommit,
        at: RunPosition,
        state: &LinkState,
    ) {
        if let Err(error) = paired.mark_resync(at.exits) {
            // Not at an exit landmark (a kick): the vCPU pauses again after its next exit.
            tracing::debug!("a resync cannot start at {}: {error}; trying after the next exit", at.landmark());
            state.resync_not_sent();
            return;
        }
        // What is held goes first: the backup holds it as its own, so that going live from the
        // state it gets now, it can issue again whatever this side never released.
        let held = ftlog::output_commit::carry::encode(&commit.held_outputs());
        if link.send_resync_held(&held).is_err() || link.send_resync_begin(at.exits, commit.emitted()).is_err() {
            return;
        }
        machine.checkpoint_bases.clear();
        let sent = join::prepare(&self.memory, link.transfer_sink(), join::JoinMode::StopAndCopy)
            .and_then(|prepared| join::finish(machine, at, paired.monotonic_now(), &self.memory, prepared));
        match sent {
            Ok(report) => tracing::info!(bytes = report.bytes, at = %at.landmark(), "resync: the state is sent"),
            Err(error) => tracing::warn!("resync: the state did not reach the backup: {error}"),
        }
        paired.push_now();
    }

    /// Whether the run ended because a gfs disk refused this side's write (another side is
    /// live): then nothing more is released, the backup is told nothing, and the VM halts.
    fn fenced_while_paired(
        state: &LinkState,
        end: &mut RunEnd,
        commit: &PrimaryCommit,
        link: &PrimaryLink,
    ) -> Option<Protected> {
        if let Some(failure) = state.failure() {
            // The releaser could not apply an output: that, not the stop it asked for, is why
            // the run ended.
            end.reason = StopReason::DeviceFailed(failure);
        }
        super::fence::fenced_stop(&end.reason)?;
        commit.halt();
        link.abort();
        Some(Protected::Ended(Served::Stopped(end.clone())))
    }

    /// The backup is gone: race for the register. Won, release everything held and go on alone
    /// in `world` from `position`; lost, halt.
    fn race_after_losing(
        &mut self,
        machine: &mut Machine,
        world: HostWorld,
        position: RunPosition,
        commit: PrimaryCommit,
        link: Arc<PrimaryLink>,
        state: &LinkState,
    ) -> Result<Protected, FtError> {
        let silence = state.silence_ms();
        let lost_at = Instant::now();
        link.abort();
        drop(link);
        match self.register.race(self.generation) {
            Race::Won { generation } => {
                if let Some(fence) = &self.fence {
                    fence.set(self.register.name(), generation);
                }
                super::timeline::live(generation);
                commit.release_all_and_go_direct()?;
                self.generation = generation;
                if let Ok(mut hello) = self.hello.lock() {
                    hello.generation = generation;
                }
                crate::errln!(
                    "ft: backup lost (no word for {} ms); running alone, generation {generation}",
                    u128::from(silence) + ms_since(lost_at)
                );
                self.go_direct(machine, commit);
                self.paired.store(false, Ordering::Release);
                crate::telemetry::vitals().live(generation);
                Ok(Protected::Alone { world, position })
            }
            Race::Lost { holder, generation } => {
                commit.halt();
                crate::telemetry::vitals().halted();
                crate::errln!("ft: lost the go-live race to {holder} (generation {generation}): halting");
                super::timeline::halting();
                Ok(Protected::Ended(Served::LostRace { holder, generation }))
            }
        }
    }

    /// The VM stopped but the backup never acknowledged its end: race, and release only if won.
    fn race_after_losing_at_stop(
        &mut self,
        machine: &mut Machine,
        world: HostWorld,
        commit: PrimaryCommit,
        link: Arc<PrimaryLink>,
        state: &LinkState,
        end: RunEnd,
    ) -> Result<Protected, FtError> {
        match self.race_after_losing(machine, world, end.position, commit, link, state)? {
            Protected::Alone { .. } => {
                self.release_register();
                Ok(Protected::Ended(self.stopped(end)))
            }
            ended => Ok(ended),
        }
    }

    /// Takes the output commit out of the machine's path: outputs go straight to the backends.
    fn go_direct(&self, machine: &mut Machine, commit: PrimaryCommit) {
        drop(machine.attach_output(Box::new(DiscardOutput::default())));
        match commit.into_inner() {
            Ok(direct) => {
                machine.attach_output(direct);
            }
            // Still shared or holding: keep it in the path (it passes outputs through now).
            Err(commit) => {
                machine.attach_output(Box::new(commit));
            }
        }
    }

    fn release_register(&self) {
        match self.register.release(self.generation) {
            Ok(generation) => tracing::info!(register = self.register.name(), generation, "register released"),
            Err(error) => tracing::warn!("could not release the register (the next start needs --takeover): {error}"),
        }
    }
}

enum Protected {
    /// The backup is gone and this side won: go on alone.
    Alone {
        world: HostWorld,
        position: RunPosition,
    },
    Ended(Served),
}

/// The threads that serve a paired run besides the vCPU: the releaser (outputs the backup has
/// acknowledged leave, and the backup is told how far) and the watcher (a lost backup stops the
/// vCPU at its next landmark).
struct Helpers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Helpers {
    fn start(
        link: &Arc<PrimaryLink>,
        commit: &PrimaryCommit,
        state: &LinkState,
        watch: &PeerWatch,
        control: &VcpuControl,
        verified: bool,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (link, commit, state, watch, stop, control) =
                (link.clone(), commit.clone(), state.clone(), watch.clone(), stop.clone(), control.clone());
            let spawned = std::thread::Builder::new().name("ft-release".into()).spawn(move || {
                let mut told = 0;
                while !stop.load(Ordering::Acquire) {
                    // The backup reports its replay's position on the channel's "verified"
                    // message; in received mode it serves only this figure (in verified mode
                    // it counts matched outputs instead).
                    if !verified {
                        state.replayed(watch.verified());
                    }
                    if !release_or_stop(&commit, &state, &control) {
                        return;
                    }
                    let released = commit.released_position();
                    if released > told && link.send_released(released).is_ok() {
                        told = released;
                    }
                    std::thread::sleep(RELEASE_POLL);
                }
            });
            threads.extend(spawned.ok());
        }
        {
            let (link, state, stop, control, commit) =
                (link.clone(), state.clone(), stop.clone(), control.clone(), commit.clone());
            let spawned = std::thread::Builder::new().name("ft-watch".into()).spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match link.events().recv_timeout(Duration::from_millis(20)) {
                        Ok(PrimaryEvent::BackupLost { silence, reason }) => {
                            tracing::warn!(%reason, "the backup is lost");
                            state.set_lost(silence);
                            control.kick();
                            return;
                        }
                        Ok(PrimaryEvent::BackupClosed) => {
                            state.set_lost(Duration::ZERO);
                            control.kick();
                            return;
                        }
                        Ok(PrimaryEvent::ResyncRequested(reason)) => {
                            // Its word on what it holds means nothing until it has the state.
                            commit.hold_for_resync();
                            if state.request_resync(reason) {
                                tracing::info!(reason = reason.as_str(), "the backup asked for a resync");
                                control.pause();
                            }
                        }
                        Ok(PrimaryEvent::ResyncDone) => {
                            if let Some((count, reason, took)) = state.resync_done() {
                                commit.resync_done();
                                // What was held across the resync leaves now, not at the
                                // releaser's next poll: the backup's new state is past these
                                // outputs, and it holds the copies the resync carried only
                                // until it hears they left.
                                if !release_or_stop(&commit, &state, &control) {
                                    return;
                                }
                                crate::errln!(
                                    "ft: resync {count} ({}) done in {} ms",
                                    reason.as_str(),
                                    took.as_millis()
                                );
                                crate::telemetry::vitals().resynced();
                            }
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
            threads.extend(spawned.ok());
        }
        Self { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Releases what the backup has acknowledged. A backend that fails is fatal for the VM: the
/// failure is kept in `state` and the vCPU is stopped; `false` then.
fn release_or_stop(commit: &PrimaryCommit, state: &LinkState, control: &VcpuControl) -> bool {
    match commit.release_ready() {
        Ok(count) => {
            super::timeline::released(count);
            true
        }
        Err(error) => {
            tracing::error!("a held output could not be released: {error}");
            state.set_failed(Arc::new(error));
            control.stop();
            false
        }
    }
}

/// What `ftvm status` and the metrics read of a pair while it runs.
fn pair_figures(commit: &PrimaryCommit, watch: &PeerWatch, state: &LinkState) -> crate::telemetry::PairSource {
    let (commit, watch, state) = (commit.clone(), watch.clone(), state.clone());
    Box::new(move || {
        let held = commit.stats();
        crate::telemetry::PairFigures {
            log_bytes: watch.logged(),
            held_outputs: held.held,
            held_bytes: held.held_bytes,
            oldest_held: held.oldest_held_age,
            lag: state.lag_figures(),
        }
    })
}

/// Prints how far the backup's replay trailed while it followed, if it said.
fn report_lag(state: &LinkState) {
    if let Some(line) = state.lag_line() {
        crate::errln!("{line}");
    }
}

/// Before this side races for the register, the disk writes it released have ended: one that
/// gfs refused by fencing means another side won (this side halts, fenced out), and one still
/// under way when this side wins would carry the generation it had before and be refused then.
/// A write that cannot reach gfs holds the race back, as the releaser used to while it wrote.
fn settle_disks(commit: &PrimaryCommit, state: &LinkState) {
    while !commit.with_inner(|out| out.settle(Duration::from_secs(1))) {
        tracing::warn!("the backup is lost; waiting for disk writes under way before the go-live race");
    }
    if let Some(failure) = commit.with_inner(|out| out.failure()) {
        if state.failure().is_none() {
            state.set_failed(failure);
        }
    }
}
