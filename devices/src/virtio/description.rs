//! What a virtio device is, apart from its backend: enough to build the same device model on a
//! replaying, restored or following machine, which then attaches backends of its own host.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One virtio device of a machine, in slot order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceDescription {
    /// A network device: the TAP it had on the recording host, and its MAC address.
    Net { tap: String, mac: [u8; 6] },
    /// A disk: where it was, its size in bytes, and whether the guest may write it.
    Disk { path: PathBuf, size: u64, readonly: bool },
}
