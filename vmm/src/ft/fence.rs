//! The FT pair's side of gfs disk fencing (issue 12, point 3).
//!
//! A protected VM's gfs disks are bound to its go-live register `ft.NAME`: every write carries
//! the generation this side won, and once another side wins, the chunkservers refuse it. Such a
//! refusal is not a disk failure to report: it is the news that this side is no longer live.
//! The VM halts at once with `ft: fenced out by generation G: halting` and status 75 (as a
//! lost race), releases nothing more, and the guest is never told a write failed (a write is
//! reported done when the guest issues it; see `devices::virtio::output`).
//!
//! - The primary sets its [`DiskFence`] to the generation it won before it opens its disks.
//! - A backup opens the VM's disks when it joins, with a fence at generation 0, which every
//!   chunkserver refuses: while it follows it writes nothing, and if a bug made it try, the
//!   write could not land. It raises the fence to the generation it wins before it issues the
//!   writes the primary may not have completed.

use super::primary::Served;
use super::FtError;
use crate::gfs_disk::{DiskFence, FencedOut};
use crate::vcpu::StopReason;

/// The generation a following backup's fence carries: below every generation a register
/// reaches once someone has won it, so any write with it is refused.
const FOLLOWING: u64 = 0;

/// The fence of a backup of VM `name` that follows: writes to its disks are refused until
/// [`DiskFence::set`] raises it to a generation this side won.
pub fn following_fence(name: &str) -> DiskFence {
    let fence = DiskFence::default();
    fence.set(&register_of(name), FOLLOWING);
    fence
}

/// The go-live register of VM `name`, which also fences its gfs disks.
pub fn register_of(name: &str) -> String {
    format!("ft.{name}")
}

/// The fencing refusal anywhere in `error`'s chain, or in the disk error an
/// [`FtError::Output`] carries in its message (not as a `source()`, or its cause would be
/// printed twice).
pub fn fenced_out<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a FencedOut> {
    match error.downcast_ref::<FtError>() {
        Some(FtError::Output(output)) => FencedOut::find(output),
        _ => FencedOut::find(error),
    }
}

/// The fencing refusal that ended a run, if that is why it ended.
pub fn fenced_stop(reason: &StopReason) -> Option<FencedOut> {
    match reason {
        StopReason::DeviceFailed(error) => fenced_out(error.as_ref()).cloned(),
        _ => None,
    }
}

/// Halts: prints the line and returns how the side ended.
pub fn halt(fenced: &FencedOut) -> Served {
    crate::telemetry::vitals().halted();
    crate::errln!("ft: fenced out by generation {}: halting", fenced.generation);
    super::timeline::halting();
    Served::FencedOut { generation: fenced.generation }
}

/// `result`, with a fencing refusal inside an error turned into the halt it means.
pub fn halt_if_fenced(result: Result<Served, FtError>) -> Result<Served, FtError> {
    match result {
        Err(error) => match fenced_out(&error).cloned() {
            Some(fenced) => Ok(halt(&fenced)),
            None => Err(error),
        },
        Ok(Served::Stopped(end)) => match fenced_stop(&end.reason) {
            Some(fenced) => Ok(halt(&fenced)),
            None => Ok(Served::Stopped(end)),
        },
        served => served,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::virtio::OutputError;
    use std::sync::Arc;

    fn refused_write() -> OutputError {
        let fenced = FencedOut { register: "ft.vm".into(), generation: 5, ours: 4 };
        OutputError::DiskWrite {
            device: 0,
            path: "gfs:/vm/d".into(),
            offset: 4096,
            len: 512,
            cause: std::io::Error::other(fenced),
        }
    }

    #[test]
    fn a_refused_write_is_found_in_a_stop_and_in_an_error() {
        let stop = StopReason::DeviceFailed(Arc::new(refused_write()));
        assert_eq!(fenced_stop(&stop).map(|f| f.generation), Some(5));
        let error = FtError::Output(refused_write());
        assert!(matches!(halt_if_fenced(Err(error)), Ok(Served::FencedOut { generation: 5 })));
    }

    #[test]
    fn other_failures_stay_failures() {
        let other = OutputError::DiskFlush { device: 0, path: "d".into(), cause: std::io::Error::other("EIO") };
        assert_eq!(fenced_stop(&StopReason::DeviceFailed(Arc::new(other))), None);
        assert_eq!(fenced_stop(&StopReason::StopRequested), None);
        let error = FtError::Replay("diverged".into());
        assert!(matches!(halt_if_fenced(Err(error)), Err(FtError::Replay(_))));
    }

    #[test]
    fn a_following_fence_writes_with_no_generation_anyone_won() {
        assert_eq!(following_fence("kv").get(), Some(("ft.kv".to_owned(), 0)));
    }
}
