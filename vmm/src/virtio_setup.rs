//! The VM's virtio devices and their backends: TAPs and disk files for a live run, nothing for
//! a replay (whose device inputs come from the log and whose outputs are only compared).

use crate::error::{Result, VmmError};
use devices::virtio::{
    DirectOutput, DiskFile, DiskSpec, MacAddr, NetSpec, Output, OutputError, OutputStage, Tap, TapReader, VirtioDevices,
};
use devices::{Doorbell, Landmark};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// What a device is, independent of its backend: enough to build the same device again on a
/// replaying or restored machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceDescription {
    Net { tap: String, mac: [u8; 6] },
    Disk { path: PathBuf, size: u64, readonly: bool },
}

/// The devices as built, with what keeps their backends alive.
pub struct BuiltDevices {
    pub virtio: VirtioDevices,
    pub output: Box<dyn OutputStage + Send>,
    pub descriptions: Vec<DeviceDescription>,
    /// Received frames per net device, for the live world to deliver.
    pub net_frames: Vec<(u8, crossbeam_channel::Receiver<Vec<u8>>)>,
    pub tap_readers: Vec<TapReader>,
}

/// Opens the TAPs and disk files of a live run; `doorbell` is rung when a frame arrives.
pub fn build_live(nets: &[NetSpec], disks: &[DiskSpec], doorbell: Doorbell) -> Result<BuiltDevices> {
    let mut virtio = VirtioDevices::new();
    let mut descriptions = Vec::new();
    let mut writers = Vec::new();
    let mut net_frames = Vec::new();
    let mut tap_readers = Vec::new();
    for (index, spec) in nets.iter().enumerate() {
        let tap = Tap::open(&spec.tap).map_err(|e| VmmError::Device(format!("--net tap={}: {e}", spec.tap)))?;
        let mac = spec.mac.unwrap_or_else(|| MacAddr::default_for(index as u8));
        let device = virtio.add_net(mac).map_err(|e| VmmError::Device(e.to_string()))?;
        let (sender, receiver) = crossbeam_channel::bounded(1024);
        tap_readers.push(
            tap.spawn_reader(sender, Arc::clone(&doorbell))
                .map_err(|e| VmmError::Device(format!("--net tap={}: {e}", spec.tap)))?,
        );
        net_frames.push((device, receiver));
        writers.push(Some(tap.writer()));
        descriptions.push(DeviceDescription::Net { tap: spec.tap.clone(), mac: mac.0 });
    }
    let mut files = Vec::new();
    for spec in disks {
        let file = DiskFile::open(&spec.path, spec.readonly).map_err(|e| VmmError::Device(format!("--disk: {e}")))?;
        virtio.add_blk(file.size(), spec.readonly).map_err(|e| VmmError::Device(e.to_string()))?;
        descriptions.push(DeviceDescription::Disk {
            path: spec.path.clone(),
            size: file.size(),
            readonly: spec.readonly,
        });
        files.push(Arc::new(file));
    }
    Ok(BuiltDevices {
        virtio,
        output: Box::new(DirectOutput::new(writers, files)),
        descriptions,
        net_frames,
        tap_readers,
    })
}

/// The same devices without backends, for a replay.
pub fn build_for_replay(descriptions: &[DeviceDescription]) -> Result<BuiltDevices> {
    let mut virtio = VirtioDevices::new();
    for description in descriptions {
        match description {
            DeviceDescription::Net { mac, .. } => virtio.add_net(MacAddr(*mac)),
            DeviceDescription::Disk { size, readonly, .. } => virtio.add_blk(*size, *readonly),
        }
        .map_err(|e| VmmError::Device(e.to_string()))?;
    }
    Ok(BuiltDevices {
        virtio,
        output: Box::new(DiscardOutput::default()),
        descriptions: descriptions.to_vec(),
        net_frames: Vec::new(),
        tap_readers: Vec::new(),
    })
}

/// A replay's outputs: the primary already released them, so they are counted and dropped.
#[derive(Default)]
pub struct DiscardOutput {
    pub outputs: u64,
}

impl OutputStage for DiscardOutput {
    fn emit(&mut self, _at: Landmark, _output: Output) -> std::result::Result<(), OutputError> {
        self.outputs += 1;
        Ok(())
    }

    fn read_disk(&mut self, device: u8, _offset: u64, _buf: &mut [u8]) -> std::result::Result<(), OutputError> {
        // A replay takes disk reads from the log (the event source never asks the backend).
        Err(OutputError::NoDisk { device })
    }
}
