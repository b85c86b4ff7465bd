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
    #[error(transparent)]
    Device(#[from] crate::backends::BackendError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{what} is of another guest: {reason}")]
    WrongGuest { what: String, reason: String },
    #[error("log: {0}")]
    Log(#[from] ftlog::LogError),
    #[error("{0}")]
    Replay(#[from] ftlog::ReplayError),
    #[error("the vCPU stopped: {0}")]
    VcpuFailed(#[from] VcpuFailure),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why the vCPU cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum VcpuFailure {
    #[error("KVM internal error (its emulator could not run the guest) at rip {rip:#x}")]
    InternalError { rip: u64 },
    #[error("unexpected exit {what} at rip {rip:#x}")]
    UnexpectedExit { what: String, rip: u64 },
    #[error("the MSR list does not fit KVM's structure")]
    MsrList,
    #[error("this host refused to restore MSR {index:#x} ({name})")]
    MsrRefused { index: u32, name: &'static str },
}

/// Wraps a KVM ioctl error with what the VMM was doing.
pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

pub type Result<T> = std::result::Result<T, VmmError>;
