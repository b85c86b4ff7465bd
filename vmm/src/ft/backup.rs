//! The following side of the pair: it joins a live VM (its description and full state), replays
//! the primary's log as it arrives, and when the primary falls silent races for the register.
//! Won, it goes live at exactly the landmark where the log stops: this host's backends are
//! attached there, what the primary may not have completed is issued again, the guest's MAC
//! is announced from here, and it serves on as a primary that a new backup can join.

use super::join;
use super::primary::{Primary, Served};
use super::progress::CopyProgress;
use super::register::{GoLiveRegister, Race};
use super::verify::VerifyingCommit;
use super::world::{FollowCommit, FollowWorld};
use super::{ms_since, FtConfig, FtError};
use crate::backends::Backends;
use crate::control::VcpuControl;
use crate::gfs_disk::GfsAccess;
use crate::machine::{Machine, MachineConfig};
use crate::session::{live_world, replay};
use crate::vcpu::{run, RunEnd, RunOptions, StopReason};
use devices::virtio::announce::{announce, AnnounceSchedule};
use devices::virtio::{DeviceDescription, DiscardOutput, DiskSpec, MacAddr, NetSpec, OutputStage};
use devices::{EventSource, WorldStop};
use ftlog::channel::{BackupEvent, BackupLink, ChannelConfig, ChannelError, Hello, ResyncReason, Role};
use ftlog::{ChannelFeed, CommitLimits, CommitMode, OutputCommit, PeerWatch, ReplayWorld};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a backup keeps trying a primary that does not listen yet.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long the backup waits for the log to begin after the state.
const LOG_START_WAIT: Duration = Duration::from_secs(30);
/// How long a backup that asked for a resync waits for the primary's state to begin.
const RESYNC_WAIT: Duration = Duration::from_secs(10);

/// What a backup's follow ended in.
pub enum Followed {
    /// The primary stopped its VM cleanly and this replay reached the same end (`identical`
    /// says whether the state digests matched).
    PrimaryStopped { end: RunEnd, identical: bool },
    /// This side went live and later stopped, or lost a race.
    Served(Served),
    /// This side was asked to stop (SIGINT/SIGTERM) while it followed: it left the pair, and
    /// the primary runs on alone.
    StoppedFollowing,
}

/// Where a backup comes from and what it maps the VM's devices onto.
pub struct BackupPlan {
    /// The primary's `--ft-listen` address.
    pub join: String,
    /// This host's TAPs and disks for the VM's devices, in order (empty: the same names).
    pub nets: Vec<NetSpec>,
    pub disks: Vec<DiskSpec>,
}

/// Joins the primary at `plan.join`, follows it, and takes over when it dies.
pub fn follow(config: FtConfig, plan: &BackupPlan, control: VcpuControl) -> Result<Followed, FtError> {
    let ours = Hello {
        role: Role::Backup,
        generation: 0,
        listen: config.listen.clone(),
        id: config.id.clone(),
        vm: config.name.clone(),
        machine: None,
        verified: false,
    };
    // Bound now: an address this host cannot take fails the join, not the go-live.
    let port = super::port::FtPort::open(&config.listen)?;
    let join_error = |source| FtError::Join { addr: plan.join.clone(), source };
    let mut link = connect(&plan.join, &ours, &config.channel).map_err(join_error)?;
    let primary = link.primary().clone();
    let config = FtConfig { name: if config.name.is_empty() { primary.vm.clone() } else { config.name }, ..config };
    if primary.vm != config.name {
        return Err(FtError::Primary {
            addr: plan.join.clone(),
            what: format!("protects VM {:?}, not {:?}", primary.vm, config.name),
        });
    }
    let description = primary
        .machine
        .clone()
        .ok_or_else(|| FtError::Primary { addr: plan.join.clone(), what: "sent no machine description".into() })?;
    // This host's resources, opened now so that going live only attaches them. Its gfs disks
    // take no write until this side has won the register (see `fence`).
    let fence = super::fence::following_fence(&config.name);
    let gfs = GfsAccess::new(Some(config.master.clone())).with_fence(fence.clone());
    let backends = Backends::for_machine_with_gfs(
        &description.devices,
        &plan.nets,
        &plan.disks,
        &gfs,
        Box::new(crate::stdio::Stdout),
        control.doorbell(),
    )?;
    let announcer = Announcer::new(&description.devices, &backends);
    let mut machine_config = MachineConfig::from_description(&description);
    // This side records once it is live and a backup joins it.
    machine_config.dirty_logging = true;
    let machine = Machine::new(machine_config.clone(), control.clone())?;
    machine.matches(&description, &format!("the primary at {}'s machine", plan.join))?;
    let state = link
        .state_reader()
        .ok_or_else(|| FtError::Primary { addr: plan.join.clone(), what: "sent no state".into() })?;
    let what = format!("the state of the primary at {}", plan.join);
    let (mut machine, saved) = join::receive(state, machine, &what, &mut CopyProgress::new())
        .map_err(|error| FtError::Primary { addr: plan.join.clone(), what: format!("joined badly: {error}") })?;
    crate::errln!("ft: following {} from {}", primary.listen, saved.position.landmark());
    crate::telemetry::vitals().name_vm(&config.name, &config.listen);

    let feed = link.feed(LOG_START_WAIT).map_err(join_error)?;
    let link = std::sync::Arc::new(link);
    let held_log = Arc::clone(&link);
    let figures = move || crate::telemetry::PairFigures { log_bytes: held_log.held(), ..Default::default() };
    crate::telemetry::vitals().following(&primary.listen, primary.generation, Box::new(figures));
    // The primary's mode, whatever this side's --commit says (and this side's once it is live).
    let verified = primary.verified;
    let config = FtConfig { commit: if verified { CommitMode::Verified } else { CommitMode::Received }, ..config };
    let check = link.output_check();
    let mut replayer = ReplayWorld::from_feed(feed);
    let mut start = saved.position;
    let mut outputs_before = 0;
    let mut resyncs = 0u64;
    let mut fell_back = false;
    let (end, mut world, commit) = loop {
        let (mut world, commit) = following(&mut machine, replayer, &link, verified, outputs_before);
        let end = run(&mut machine, &mut world, RunOptions { start, snapshot: None });
        let Some(reason) = resync_reason(&end, &mut world) else { break (end?, world, commit) };
        let asked = Instant::now();
        tracing::warn!(reason = reason.as_str(), "the replay cannot go on: asking the primary for a resync");
        let resynced = match resync(&link, world, &machine_config, &control, reason, &what)? {
            Resync::Done(resynced) => *resynced,
            // Nothing the primary released differs from what this replay did (verified mode):
            // the machine as it was can go live.
            Resync::PrimaryGone { world, why } if verified => {
                tracing::warn!("no resync ({why}): the primary is gone; racing from where the replay stopped");
                fell_back = true;
                break (end?, *world, commit);
            }
            // In received mode the primary released outputs this replay did not reproduce: a
            // machine that diverged cannot go live without contradicting them. The VM stops
            // rather than continue from a state its clients never saw.
            Resync::PrimaryGone { why, .. } => {
                return Err(FtError::Replay(format!(
                    "{} and the primary was lost before its resync arrived ({why}); a diverged backup cannot take over",
                    reason.as_str()
                )))
            }
        };
        // The old machine goes only now that the new one is complete.
        machine = resynced.machine;
        start = resynced.saved.position;
        replayer = resynced.replayer;
        outputs_before = resynced.outputs;
        check.restart_at(outputs_before);
        resyncs += 1;
        crate::errln!("ft: resync {resyncs} ({}) done in {} ms", reason.as_str(), ms_since(asked));
        crate::telemetry::vitals().resynced();
        if let Err(error) = link.send_resync_done() {
            tracing::warn!("could not tell the primary the resync is done: {error}");
        }
    };

    match &end.reason {
        StopReason::World(WorldStop::InputEnded { .. }) => {}
        StopReason::World(WorldStop::Failed(_)) if fell_back => {}
        StopReason::World(WorldStop::Failed(error)) => return Err(FtError::Replay(error.to_string())),
        StopReason::StopRequested => {
            // Not the VM's end: only this side leaves. Closing the channel tells the primary,
            // which wins the register back and runs on alone.
            link.abort();
            let why = crate::stop::stop_reason().unwrap_or("stopped");
            crate::errln!("ft: backup {why}; the primary at {} runs on alone", primary.listen);
            return Ok(Followed::StoppedFollowing);
        }
        _ => {
            // The primary's VM stopped and its log ended with it: check we reached the same end.
            let identical = match replay::finish(&machine, world.replayer(), &end)? {
                replay::Replayed::Identical { .. } => true,
                replay::Replayed::Failed(why) => {
                    tracing::warn!("the backup's end differs from the primary's: {why}");
                    false
                }
            };
            crate::errln!(
                "ft: backup at power-off: state-digest {}",
                if identical { "identical" } else { "different" }
            );
            return Ok(Followed::PrimaryStopped { end, identical });
        }
    }

    // The primary fell silent (or closed the channel): race for the register.
    let last_word = last_word_from(&link);
    commit.discard_through(link.released());
    world.stop_reporting();
    drop(link);
    let register = GoLiveRegister::new(&config.master, &config.name, config.holder());
    match register.race(primary.generation) {
        Race::Lost { holder, generation } => {
            crate::telemetry::vitals().halted();
            crate::errln!("ft: lost the go-live race to {holder} (generation {generation}): halting");
            super::timeline::halting();
            Ok(Followed::Served(Served::LostRace { holder, generation }))
        }
        Race::Won { generation } => {
            let position = end.position;
            let clock = world.replayer().monotonic_now();
            let unreleased = commit.take_unreleased();
            drop(world);
            // Before anything is written: the writes issued again carry the generation won,
            // and the old primary's are refused from now on.
            fence.set(register.name(), generation);
            super::timeline::live(generation);
            let (nets, _) = machine.attach(backends);
            if let Err(error) = reissue(&mut machine, unreleased) {
                return Ok(Followed::Served(super::fence::halt_if_fenced(Err(error))?));
            }
            announcer.start();
            crate::telemetry::vitals().took_over(generation);
            crate::errln!(
                "ft: live at {}, generation {generation}, {} ms after the last word from the primary",
                position.landmark(),
                ms_since(last_word)
            );
            let world = live_world(nets, clock);
            let primary = Primary::listen(config, register, generation, &machine, control, port)?
                .ran_before(&end.stats)
                .fencing(fence);
            Ok(Followed::Served(primary.serve(&mut machine, world, position)?))
        }
    }
}

/// The world and output stage a backup follows in, from `replayer`, with `outputs_before` outputs
/// of the primary covered by the state it starts from (0 at the join, the count at a resync).
fn following(
    machine: &mut Machine,
    replayer: ReplayWorld<ChannelFeed>,
    link: &Arc<BackupLink>,
    verified: bool,
    outputs_before: u64,
) -> (FollowWorld, FollowCommit) {
    // Everything the replayed guest emits is held, and dropped once the primary says it left.
    let unbounded = CommitLimits { max_bytes: usize::MAX, max_outputs: usize::MAX };
    let watch = PeerWatch::new();
    let mode = if verified { CommitMode::Verified } else { CommitMode::Received };
    let commit: FollowCommit =
        OutputCommit::new(DiscardOutput::default(), watch.clone(), mode, Duration::ZERO, unbounded);
    commit.continue_numbering_after(outputs_before);
    let world = FollowWorld::new(replayer, commit.clone(), watch, link.released_marker());
    if verified {
        machine.attach_output(Box::new(VerifyingCommit::new(commit.clone(), link.output_check())));
        return (world.verifying(link.output_check()), commit);
    }
    machine.attach_output(Box::new(commit.clone()));
    let (reporter, receiver) = (Arc::clone(link), Arc::clone(link));
    // In received mode the replayed position rides the channel's "verified" message, which the
    // primary then uses only for its lag figure.
    let world = world.reporting_replay(
        move |position| {
            // A full queue loses a report; the next one says more.
            let _ = reporter.send_verified(position);
        },
        move || receiver.held(),
    );
    (world, commit)
}

/// Why the replay that ended as `end` asks for a resync, if it does: its exit digests differ
/// from the primary's, or (verified mode) one of its outputs does.
fn resync_reason(end: &Result<RunEnd, crate::error::VmmError>, world: &mut FollowWorld) -> Option<ResyncReason> {
    let failed = match end {
        Ok(end) => matches!(end.reason, StopReason::World(WorldStop::Failed(_))),
        Err(_) => true,
    };
    if !failed {
        return None;
    }
    if world.replayer().error().is_some_and(|error| error.divergence().is_some()) {
        return Some(ResyncReason::Diverged);
    }
    world.output_mismatch().map(|_| ResyncReason::OutputDiffered)
}

/// What a resync gave the backup.
struct Resynced {
    machine: Machine,
    saved: crate::snapshot::Snapshot,
    replayer: ReplayWorld<ChannelFeed>,
    /// Outputs the primary had emitted before the resync's landmark.
    outputs: u64,
}

/// How a resync ended.
enum Resync {
    Done(Box<Resynced>),
    /// The primary went away before its state arrived whole: the replay is handed back as it
    /// was.
    PrimaryGone {
        world: Box<FollowWorld>,
        why: String,
    },
}

/// Asks the primary for its full state again and loads it into a new machine: the old one is
/// left as it was until the new one is complete (a transfer cut half-way leaves the backup as
/// it was). The log goes on in the same feed from the snapshot mark at the resync's landmark.
fn resync(
    link: &BackupLink,
    mut world: FollowWorld,
    machine_config: &MachineConfig,
    control: &VcpuControl,
    reason: ResyncReason,
    what: &str,
) -> Result<Resync, FtError> {
    let deadline = Instant::now() + RESYNC_WAIT;
    while let Err(error) = link.request_resync(reason) {
        if Instant::now() >= deadline {
            return Ok(Resync::PrimaryGone {
                world: Box::new(world),
                why: format!("the request was not sent: {error}"),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Records keep coming until the primary pauses for the resync: they are of no use now, and
    // the receiver must not block on a full feed before it reaches the resync.
    let resync = loop {
        if let Some(resync) = link.take_resync(Duration::from_millis(1)) {
            break resync;
        }
        let feed = world.replayer().feed_mut();
        while feed.drop_one() {}
        if feed.has_ended() || Instant::now() >= deadline {
            return Ok(Resync::PrimaryGone { world: Box::new(world), why: "the primary sent no state".into() });
        }
    };
    let fresh = Machine::new(machine_config.clone(), control.clone())?;
    let (machine, saved) = match join::receive(resync.state, fresh, what, &mut CopyProgress::new()) {
        Ok(received) => received,
        Err(error) => {
            return Ok(Resync::PrimaryGone {
                world: Box::new(world),
                why: format!("the state did not arrive whole: {error}"),
            })
        }
    };
    let mut replayer = ReplayWorld::from_feed(world.into_replayer().into_feed());
    replayer
        .skip_to_snapshot(resync.exits)
        .map_err(|error| FtError::Replay(format!("{} and the resync failed: {error}", reason.as_str())))?;
    Ok(Resync::Done(Box::new(Resynced { machine, saved, replayer, outputs: resync.outputs })))
}

/// Connects to the primary, trying again for [`CONNECT_WAIT`] while nobody listens there yet
/// (a backup started before its primary, or while the primary is still booting).
fn connect(addr: &str, ours: &Hello, channel: &ChannelConfig) -> Result<BackupLink, ChannelError> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match BackupLink::connect(addr, ours, channel) {
            Err(ChannelError::Io(error))
                if error.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline =>
            {
                tracing::debug!(%addr, "the primary does not listen yet; trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// When the primary last said anything, from the channel's report of its loss.
fn last_word_from(link: &BackupLink) -> Instant {
    let now = Instant::now();
    while let Ok(event) = link.events().try_recv() {
        if let BackupEvent::PrimaryLost { silence, .. } = event {
            return now.checked_sub(silence).unwrap_or(now);
        }
    }
    now
}

/// Issues again what the primary may not have completed: frames after its last release marker
/// (TCP tolerates duplicates) and every write it had not reported released, in order.
fn reissue(machine: &mut Machine, unreleased: Vec<ftlog::HeldOutput>) -> Result<(), FtError> {
    if unreleased.is_empty() {
        return Ok(());
    }
    tracing::info!(outputs = unreleased.len(), "issuing again what the primary may not have completed");
    let mut direct = machine.attach_output(Box::new(DiscardOutput::default()));
    let result = unreleased.into_iter().try_for_each(|held| direct.emit(held.at, held.output));
    machine.attach_output(direct);
    Ok(result?)
}

/// Announces the guest's MACs from this host after it went live (RARP, as QEMU's
/// announce-self), so the switches learn their new port.
struct Announcer {
    frames: Vec<(MacAddr, devices::virtio::TapWriter)>,
}

impl Announcer {
    fn new(devices: &[DeviceDescription], backends: &Backends) -> Self {
        let macs = devices.iter().filter_map(|d| match d {
            DeviceDescription::Net { mac, .. } => Some(MacAddr(*mac)),
            DeviceDescription::Disk { .. } => None,
        });
        Self { frames: macs.zip(backends.tap_writers()).collect() }
    }

    fn start(self) {
        if self.frames.is_empty() {
            return;
        }
        let spawned = std::thread::Builder::new().name("ft-announce".into()).spawn(move || {
            for (mac, mut tap) in self.frames {
                let sent = announce(&[mac], AnnounceSchedule::default(), |frame| tap.send(frame));
                tracing::info!(%mac, sent, "MAC announced from this host");
            }
        });
        if let Err(error) = spawned {
            tracing::warn!("could not start the MAC announcer: {error}");
        }
    }
}
