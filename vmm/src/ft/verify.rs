//! Verified mode (`--commit verified`, as COLO): the primary sends a digest of every output it
//! holds, numbered from the pair's start; the backup compares each output of its replay with it
//! ([`ftlog::channel::OutputCheck`]) and says how many matched; only those leave the primary.
//! A difference makes the backup ask for a resync.

use super::world::{FollowCommit, PrimaryCommit};
use devices::virtio::{DiskRead, Output, OutputError, OutputStage};
use devices::Landmark;
use ftlog::channel::{OutputCheck, PrimaryLink};
use std::sync::Arc;

/// The digest of one output: its kind, device, place and bytes.
pub fn output_digest(output: &Output) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    match output {
        Output::NetFrame { device, frame } => {
            hasher.update(&[1, *device]);
            hasher.update(frame);
        }
        Output::DiskWrite { device, offset, data, .. } => {
            hasher.update(&[2, *device]);
            hasher.update(&offset.to_le_bytes());
            hasher.update(data);
        }
        Output::DiskFlush { device, .. } => {
            hasher.update(&[3, *device]);
        }
        Output::Console { bytes } => {
            hasher.update(&[4]);
            hasher.update(bytes);
        }
    }
    *hasher.finalize().as_bytes()
}

/// The primary's output stage in verified mode: the output commit, and each output's digest
/// sent to the backup.
pub struct DigestingCommit {
    commit: PrimaryCommit,
    link: Arc<PrimaryLink>,
}

impl DigestingCommit {
    pub fn new(commit: PrimaryCommit, link: Arc<PrimaryLink>) -> Self {
        Self { commit, link }
    }
}

impl OutputStage for DigestingCommit {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        let digest = output_digest(&output);
        self.commit.emit(at, output)?;
        // A lost backup is noticed by the channel's watcher; the output stays held until then.
        let _ = self.link.send_output_digest(self.commit.emitted(), digest);
        Ok(())
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        self.commit.submit_read(read)
    }

    fn failure(&self) -> Option<Arc<OutputError>> {
        self.commit.failure()
    }
}

/// The backup's output stage in verified mode: each output of the replay is compared with the
/// primary's, then held as in received mode (for re-issue at go-live).
pub struct VerifyingCommit {
    commit: FollowCommit,
    check: Arc<OutputCheck>,
}

impl VerifyingCommit {
    pub fn new(commit: FollowCommit, check: Arc<OutputCheck>) -> Self {
        Self { commit, check }
    }
}

impl OutputStage for VerifyingCommit {
    fn emit(&mut self, at: Landmark, output: Output) -> Result<(), OutputError> {
        self.check.ours(output_digest(&output));
        self.commit.emit(at, output)
    }

    fn submit_read(&mut self, read: DiskRead) -> Result<(), OutputError> {
        self.commit.submit_read(read)
    }

    fn failure(&self) -> Option<Arc<OutputError>> {
        self.commit.failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_tell_outputs_apart_by_kind_device_place_and_bytes() {
        let outputs = [
            Output::Console { bytes: b"tsc: 1 100".to_vec() },
            Output::Console { bytes: b"tsc: 1 101".to_vec() },
            Output::NetFrame { device: 0, frame: b"tsc: 1 100".to_vec() },
            Output::NetFrame { device: 1, frame: b"tsc: 1 100".to_vec() },
            Output::DiskWrite { device: 0, id: 1, offset: 0, data: vec![7; 512] },
            Output::DiskWrite { device: 0, id: 2, offset: 512, data: vec![7; 512] },
            Output::DiskFlush { device: 0, id: 3 },
            Output::DiskFlush { device: 1, id: 4 },
        ];
        let digests: std::collections::HashSet<_> = outputs.iter().map(output_digest).collect();
        assert_eq!(digests.len(), outputs.len());
        assert_eq!(output_digest(&outputs[0]), output_digest(&outputs[0].clone()));
    }
}
