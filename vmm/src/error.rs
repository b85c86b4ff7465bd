//! Errors of the VMM library. The `ftvm` binary turns them into one-line messages.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {mib} MiB: {reason}")]
    Memory { mib: u64, reason: String },
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("guest memory access at {addr:#x}: {reason}")]
    GuestMemory { addr: u64, reason: String },
    #[error("snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    #[error("{0}")]
    Device(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("log: {0}")]
    Log(#[from] ftlog::LogError),
    #[error("{0}")]
    Replay(#[from] ftlog::ReplayError),
    #[error("the vCPU stopped: {0}")]
    VcpuFailed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Wraps a KVM ioctl error with what the VMM was doing.
pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

pub type Result<T> = std::result::Result<T, VmmError>;
