//! Errors of the VMM library. The `ftvm` binary turns them into one-line messages.

use std::path::PathBuf;

/// Each message includes its cause, so no variant also returns it from `source()`: a printed
/// chain (`{:#}` in the binary) names every cause once.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM: {what}: {cause}")]
    Kvm { what: &'static str, cause: kvm_ioctls::Error },
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
    Log(ftlog::LogError),
    #[error(transparent)]
    Replay(#[from] ftlog::ReplayError),
    #[error("the vCPU stopped: {0}")]
    VcpuFailed(#[from] VcpuFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ftlog::LogError> for VmmError {
    fn from(error: ftlog::LogError) -> Self {
        VmmError::Log(error)
    }
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
    move |cause| VmmError::Kvm { what, cause }
}

pub type Result<T> = std::result::Result<T, VmmError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The chain the binary prints (`{:#}`), with context on top as `ftvm` adds it.
    fn printed(error: VmmError) -> String {
        format!("{:#}", anyhow::Error::from(error).context("log /some/path"))
    }

    #[test]
    fn each_cause_is_printed_once() {
        let eisdir = || std::io::Error::from_raw_os_error(libc::EISDIR);
        let log_io = || ftlog::LogError::Io { offset: 0, cause: Arc::new(eisdir()) };
        let kvm_error = || kvm_ioctls::Error::new(libc::EINVAL);
        for (error, cause) in [
            (VmmError::Log(log_io()), "Is a directory"),
            (VmmError::Replay(ftlog::ReplayError::Log(log_io())), "Is a directory"),
            (VmmError::Io(eisdir()), "Is a directory"),
            (VmmError::Kvm { what: "run the vCPU", cause: kvm_error() }, "Invalid argument"),
            (VmmError::OpenKvm(kvm_error()), "Invalid argument"),
        ] {
            let text = printed(error);
            assert_eq!(text.matches(cause).count(), 1, "{text}");
        }
    }
}
