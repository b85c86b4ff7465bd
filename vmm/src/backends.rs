//! The host resources behind a VM's devices: TAPs, disks and the console. They are opened apart
//! from the device models and attached to a built machine at a landmark (boot, a restore, a
//! backup going live), so a machine built to replay a log can take on real backends later.

use crate::gfs_disk::{GfsAccess, GfsDisk, GfsDiskError};
use crate::machine::Machine;
use devices::virtio::{
    gfs_disk_path, AddError, BlockBackend, CompletionReceiver, Completions, DeviceDescription, DirectOutput, DiskError,
    DiskFile, DiskSpec, MacAddr, NetSpec, OutputStage, Tap, TapError, TapReader, TapWriter,
};
use devices::Doorbell;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// What attached backends deliver to the live world: received frames per net device (device
/// index, frames) and the completions of disk requests.
#[derive(Default)]
pub struct NetInputs {
    pub frames: Vec<(u8, crossbeam_channel::Receiver<Vec<u8>>)>,
    pub disk_completions: Option<CompletionReceiver>,
}

/// Why a backend could not be opened or does not fit its device.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    // Not `source`s: their message is part of this one, and a chain printed whole would say it
    // twice.
    #[error("--net tap={name}: {cause}")]
    Tap { name: String, cause: TapError },
    #[error("--disk: {0}")]
    Disk(DiskError),
    #[error("--disk: {0}")]
    GfsDisk(GfsDiskError),
    #[error(transparent)]
    TooManyDevices(#[from] AddError),
    #[error("more --net or --disk than the machine has ({nets} net and {disks} disk devices)")]
    Mapping { nets: usize, disks: usize },
    #[error("disk {path}: {found} bytes, but the machine's disk has {expected}")]
    DiskSize { path: PathBuf, expected: u64, found: u64 },
}

impl From<DiskError> for BackendError {
    fn from(error: DiskError) -> Self {
        BackendError::Disk(error)
    }
}

impl From<GfsDiskError> for BackendError {
    fn from(error: GfsDiskError) -> Self {
        BackendError::GfsDisk(error)
    }
}

/// The backends of one machine, opened and ready to attach.
pub struct Backends {
    /// `taps[i]` carries net device i's frames.
    taps: Vec<Option<TapWriter>>,
    tap_readers: Vec<TapReader>,
    net_inputs: NetInputs,
    disks: Vec<Arc<dyn BlockBackend>>,
    console: Box<dyn Write + Send>,
    /// Rung when a disk request completes (as when a frame arrives).
    doorbell: Option<Doorbell>,
}

impl Backends {
    /// No TAPs, no disks: the console alone.
    pub fn console_only(console: Box<dyn Write + Send>) -> Self {
        Self {
            taps: Vec::new(),
            tap_readers: Vec::new(),
            net_inputs: NetInputs::default(),
            disks: Vec::new(),
            console,
            doorbell: None,
        }
    }

    /// Opens what `--net` and `--disk` name, and describes the devices they make (nets first,
    /// then disks, as the machine numbers them). `doorbell` is rung when a frame arrives. Disks
    /// on gfs are found through `GFS_MASTER` ([`Backends::open_with_gfs`] names the master).
    pub fn open(
        nets: &[NetSpec],
        disks: &[DiskSpec],
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<(Self, Vec<DeviceDescription>), BackendError> {
        Self::open_with_gfs(nets, disks, &GfsAccess::from_env(), console, doorbell)
    }

    /// As [`Backends::open`], with `gfs:/PATH` disks on the cluster `gfs` names, their writes
    /// carrying its fencing token.
    pub fn open_with_gfs(
        nets: &[NetSpec],
        disks: &[DiskSpec],
        gfs: &GfsAccess,
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<(Self, Vec<DeviceDescription>), BackendError> {
        let mut backends = Self::console_only(console);
        backends.doorbell = Some(Arc::clone(&doorbell));
        let mut descriptions = Vec::new();
        for (index, spec) in nets.iter().enumerate() {
            let mac = spec.mac.unwrap_or_else(|| MacAddr::default_for(index as u8));
            backends.open_tap(&spec.tap, index as u8, &doorbell)?;
            descriptions.push(DeviceDescription::Net { tap: spec.tap.clone(), mac: mac.0 });
        }
        for spec in disks {
            let disk = open_disk(&spec.path, spec.readonly, gfs)?;
            descriptions.push(DeviceDescription::Disk {
                path: spec.path.clone(),
                size: disk.size(),
                readonly: spec.readonly,
            });
            backends.disks.push(disk);
        }
        Ok((backends, descriptions))
    }

    /// Opens the same resources a machine with these devices had: the same TAP names and disk
    /// paths (a restore, or a backup going live on a host that sees them under those names).
    pub fn reopen(
        descriptions: &[DeviceDescription],
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<Self, BackendError> {
        Self::reopen_with_gfs(descriptions, &GfsAccess::from_env(), console, doorbell)
    }

    /// As [`Backends::reopen`], with `gfs:/PATH` disks on the cluster `gfs` names.
    pub fn reopen_with_gfs(
        descriptions: &[DeviceDescription],
        gfs: &GfsAccess,
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<Self, BackendError> {
        let mut backends = Self::console_only(console);
        backends.doorbell = Some(Arc::clone(&doorbell));
        let mut net_index = 0u8;
        for description in descriptions {
            match description {
                DeviceDescription::Net { tap, .. } => {
                    backends.open_tap(tap, net_index, &doorbell)?;
                    net_index += 1;
                }
                DeviceDescription::Disk { path, size, readonly } => {
                    let disk = open_disk(path, *readonly, gfs)?;
                    if disk.size() != *size {
                        return Err(BackendError::DiskSize { path: path.clone(), expected: *size, found: disk.size() });
                    }
                    backends.disks.push(disk);
                }
            }
        }
        Ok(backends)
    }

    /// The resources of this host for a machine described elsewhere (a backup of a primary on
    /// another host): net device i on `nets[i]`'s TAP and disk j on `disks[j]`'s file when given,
    /// otherwise under the names the description has. The MAC addresses stay the machine's.
    pub fn for_machine(
        descriptions: &[DeviceDescription],
        nets: &[NetSpec],
        disks: &[DiskSpec],
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<Self, BackendError> {
        Self::for_machine_with_gfs(descriptions, nets, disks, &GfsAccess::from_env(), console, doorbell)
    }

    /// As [`Backends::for_machine`], with `gfs:/PATH` disks on the cluster `gfs` names, their
    /// writes carrying its fencing token.
    pub fn for_machine_with_gfs(
        descriptions: &[DeviceDescription],
        nets: &[NetSpec],
        disks: &[DiskSpec],
        gfs: &GfsAccess,
        console: Box<dyn Write + Send>,
        doorbell: Doorbell,
    ) -> Result<Self, BackendError> {
        let (mut net_index, mut disk_index) = (0, 0);
        let mapped: Vec<DeviceDescription> = descriptions
            .iter()
            .map(|description| match description {
                DeviceDescription::Net { tap, mac } => {
                    let tap = nets.get(net_index).map_or_else(|| tap.clone(), |spec| spec.tap.clone());
                    net_index += 1;
                    DeviceDescription::Net { tap, mac: *mac }
                }
                DeviceDescription::Disk { path, size, readonly } => {
                    let path = disks.get(disk_index).map_or_else(|| path.clone(), |spec| spec.path.clone());
                    disk_index += 1;
                    DeviceDescription::Disk { path, size: *size, readonly: *readonly }
                }
            })
            .collect();
        if nets.len() > net_index || disks.len() > disk_index {
            return Err(BackendError::Mapping { nets: net_index, disks: disk_index });
        }
        Self::reopen_with_gfs(&mapped, gfs, console, doorbell)
    }

    /// Writers on every TAP (for announcements sent outside the output stage).
    pub fn tap_writers(&self) -> Vec<TapWriter> {
        self.taps.iter().flatten().cloned().collect()
    }

    fn open_tap(&mut self, name: &str, device: u8, doorbell: &Doorbell) -> Result<(), BackendError> {
        let tap_error = |source| BackendError::Tap { name: name.to_owned(), cause: source };
        let tap = Tap::open(name).map_err(tap_error)?;
        let (sender, receiver) = crossbeam_channel::bounded(1024);
        self.tap_readers.push(tap.spawn_reader(sender, Arc::clone(doorbell)).map_err(tap_error)?);
        self.net_inputs.frames.push((device, receiver));
        self.taps.push(Some(tap.writer()));
        Ok(())
    }
}

/// Opens a disk: `gfs:/PATH` on gfs, anything else a local file.
fn open_disk(path: &Path, readonly: bool, gfs: &GfsAccess) -> Result<Arc<dyn BlockBackend>, BackendError> {
    Ok(match gfs_disk_path(path) {
        Some(gfs_path) => Arc::new(GfsDisk::open(gfs, gfs_path, readonly)?),
        None => Arc::new(DiskFile::open(path, readonly)?),
    })
}

/// What stays with the machine while backends are attached.
pub(crate) struct AttachedBackends {
    /// Keep the TAP reader threads alive.
    _tap_readers: Vec<TapReader>,
}

impl Machine {
    /// Attaches `backends` at the current landmark: every later output goes to them at once
    /// (the output stage they had is returned, with whatever it still held), each disk gets its
    /// backend thread, disk requests the guest made before and that never completed are issued
    /// again to them (a restore, a backup going live), and the frames they receive and the disk
    /// completions are returned for the live world to deliver.
    ///
    /// A disk whose thread cannot start, or a request that cannot be issued again, is a failed
    /// disk: the run stops with it at its first landmark.
    pub fn attach(&mut self, backends: Backends) -> (NetInputs, Box<dyn OutputStage + Send>) {
        let Backends { taps, tap_readers, mut net_inputs, disks, console, doorbell } = backends;
        let (completions, receiver) = Completions::channel(doorbell);
        if !disks.is_empty() {
            net_inputs.disk_completions = Some(receiver);
        }
        let direct = DirectOutput::new(taps, disks, console, completions);
        let previous = self.board.attach_output(Box::new(direct));
        self.attached = Some(AttachedBackends { _tap_readers: tap_readers });
        if let Err(error) = self.board.resubmit_disk_requests() {
            tracing::error!(%error, "pending disk requests could not be issued again");
        }
        (net_inputs, previous)
    }

    /// Sends outputs to `stage` from the current landmark on (e.g. an FT output stage that holds
    /// them until the backup acknowledges); returns the stage they went to.
    pub fn attach_output(&mut self, stage: Box<dyn OutputStage + Send>) -> Box<dyn OutputStage + Send> {
        self.board.attach_output(stage)
    }
}
