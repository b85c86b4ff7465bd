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
    Checkpoint(crate::checkpoint::CheckpointError),
    #[error("{what} is of another guest: {reason}")]
    WrongGuest { what: String, reason: String },
    #[error("log: {0}")]
    Log(ftlog::LogError),
    #[error(transparent)]
    Replay(#[from] ftlog::ReplayError),
    #[error("the vCPU stopped: {0}")]
    VcpuFailed(VcpuFailure),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<ftlog::LogError> for VmmError {
    fn from(error: ftlog::LogError) -> Self {
        VmmError::Log(error)
    }
}

impl From<crate::checkpoint::CheckpointError> for VmmError {
    fn from(error: crate::checkpoint::CheckpointError) -> Self {
        VmmError::Checkpoint(error)
    }
}

impl From<VcpuFailure> for VmmError {
    fn from(failure: VcpuFailure) -> Self {
        VmmError::VcpuFailed(failure)
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
    fn printed(error: impl std::error::Error + Send + Sync + 'static) -> String {
        format!("{:#}", anyhow::Error::from(error).context("log /some/path"))
    }

    /// Where `error`'s whole chain says `cause` more than once, or a link's message holds the
    /// next link's (which the chain printer prints after it anyway): the printed chain.
    fn said_twice(error: impl std::error::Error + Send + Sync + 'static, cause: &str) -> Option<String> {
        let mut link: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut repeats = false;
        while let Some(outer) = link {
            if let Some(inner) = outer.source() {
                repeats |= outer.to_string().contains(&inner.to_string());
            }
            link = outer.source();
        }
        let text = printed(error);
        (repeats || text.matches(cause).count() != 1).then_some(text)
    }

    /// Every error whose message says its cause (here and in the crates below: ftlog, devices,
    /// seal) names it once when `ftvm` prints the whole chain: "Connection refused (os error
    /// 111): Connection refused (os error 111)" came back each time a variant kept both.
    #[test]
    fn each_cause_is_printed_once() {
        let eisdir = || std::io::Error::from_raw_os_error(libc::EISDIR);
        let log_io = || ftlog::LogError::Io { offset: 0, cause: Arc::new(eisdir()) };
        let kvm_error = || kvm_ioctls::Error::new(libc::EINVAL);
        let postcard_error = || postcard::from_bytes::<u64>(&[]).unwrap_err();
        let postcard_text = postcard_error().to_string();
        let lz4_error = lz4_flex::block::decompress_size_prepended(&[8, 0, 0, 0, 0xf0]).unwrap_err();
        let lz4_text = lz4_error.to_string();
        let mut twice = Vec::new();
        let disk_write = || devices::virtio::OutputError::DiskWrite {
            device: 0,
            path: "gfs:/vm/d".into(),
            offset: 0,
            len: 512,
            cause: eisdir(),
        };
        for (error, cause) in [
            (VmmError::Log(log_io()), "Is a directory"),
            (VmmError::Replay(ftlog::ReplayError::Log(log_io())), "Is a directory"),
            (VmmError::Io(eisdir()), "Is a directory"),
            (VmmError::Kvm { what: "run the vCPU", cause: kvm_error() }, "Invalid argument"),
            (VmmError::OpenKvm(kvm_error()), "Invalid argument"),
            (VmmError::from(crate::checkpoint::CheckpointError::Encode(postcard_error())), postcard_text.as_str()),
            (VmmError::from(crate::checkpoint::CheckpointError::Decode(postcard_error())), postcard_text.as_str()),
            (VmmError::from(crate::checkpoint::CheckpointError::Decompress(lz4_error)), lz4_text.as_str()),
            (VmmError::from(VcpuFailure::InternalError { rip: 0x1000 }), "KVM internal error"),
            (VmmError::from(VcpuFailure::MsrRefused { index: 0x10, name: "TSC" }), "refused to restore MSR"),
        ] {
            twice.extend(said_twice(error, cause));
        }

        let tap = |cause| devices::virtio::TapError::Io { name: "tap0".into(), what: "TUNSETIFF", cause };
        twice.extend(said_twice(
            crate::backends::BackendError::Tap { name: "tap0".into(), cause: tap(eisdir()) },
            "Is a directory",
        ));
        twice.extend(said_twice(tap(eisdir()), "Is a directory"));
        twice.extend(said_twice(
            devices::virtio::DiskError::Io { path: "/d".into(), cause: eisdir() },
            "Is a directory",
        ));
        twice.extend(said_twice(disk_write(), "Is a directory"));
        let failed_earlier = devices::virtio::OutputError::Failed { device: 0, first: Arc::new(disk_write()) };
        twice.extend(said_twice(failed_earlier, "Is a directory"));

        use crate::telemetry::status::StatusError;
        let refused = || std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let addr = || "127.0.0.1:9".to_string();
        twice.extend(said_twice(StatusError::Connect { addr: addr(), cause: refused() }, "Connection refused"));
        twice.extend(said_twice(StatusError::Address { addr: addr(), cause: refused() }, "Connection refused"));
        twice.extend(said_twice(StatusError::Io { addr: addr(), cause: refused() }, "Connection refused"));
        let not_json = serde_json::from_str::<u8>("{").unwrap_err();
        let not_json_text = not_json.to_string();
        twice.extend(said_twice(StatusError::Malformed { addr: addr(), cause: not_json }, &not_json_text));
        twice.extend(said_twice(
            seal::SealError::Io { context: "answering 127.0.0.1:9".into(), cause: refused() },
            "Connection refused",
        ));

        use crate::ft::{join::JoinError, FtError};
        use ftlog::channel::{transfer::TransferError, wire::RecvError, ChannelError};
        twice.extend(said_twice(FtError::from(log_io()), "Is a directory"));
        twice.extend(said_twice(FtError::from(disk_write()), "Is a directory"));
        twice.extend(said_twice(JoinError::Gone(refused()), "Connection refused"));
        twice.extend(said_twice(JoinError::Transfer(TransferError::Io(refused())), "Connection refused"));
        twice.extend(said_twice(ChannelError::from(refused()), "Connection refused"));
        twice.extend(said_twice(RecvError::from(refused()), "Connection refused"));
        twice.extend(said_twice(TransferError::from(refused()), "Connection refused"));
        twice.extend(said_twice(ftlog::recorder::RecordingFailed(log_io()), "Is a directory"));
        assert!(twice.is_empty(), "causes said twice:\n{}", twice.join("\n"));
    }
}
