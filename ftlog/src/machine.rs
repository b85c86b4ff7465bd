//! The description of a machine: what a replayer, a restore or a joining backup needs to build
//! the same VM. One type, carried by the log header, the snapshot header and the FT handshake.

use devices::virtio::DeviceDescription;
use serde::{Deserialize, Serialize};

/// Which guest, in how much memory, with which command line and devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDescription {
    /// blake3 of the kernel image: a machine of another guest cannot follow this one.
    pub image_digest: [u8; 32],
    /// Guest memory in bytes.
    pub memory_size: u64,
    /// The command line the user gave (the virtio announcements are derived from `devices`).
    pub cmdline: String,
    /// The kernel file, or `None` for ftvm's embedded guest (the digest is what counts).
    pub kernel_path: Option<String>,
    /// How long an event may wait for the guest to exit before the vCPU is kicked, in ns.
    pub preemption_bound_ns: u64,
    /// The virtio devices, in slot order.
    pub devices: Vec<DeviceDescription>,
}

impl MachineDescription {
    /// The kernel's name for messages.
    pub fn kernel_name(&self) -> &str {
        self.kernel_path.as_deref().unwrap_or("<ftvm guest>")
    }

    /// The devices, encoded for a header's opaque tail (empty when there are none, so that a
    /// machine without devices encodes as logs always did).
    pub fn encode_devices(&self) -> Vec<u8> {
        if self.devices.is_empty() {
            return Vec::new();
        }
        // Encoding plain enums of strings, integers and byte arrays into a Vec cannot fail.
        postcard::to_allocvec(&self.devices).unwrap_or_default()
    }

    /// The inverse of [`Self::encode_devices`].
    pub fn decode_devices(bytes: &[u8]) -> Result<Vec<DeviceDescription>, postcard::Error> {
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        postcard::from_bytes(bytes)
    }
}
