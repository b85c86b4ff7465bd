//! Verified mode on the backup (issue 11 point 3, "as COLO"): the primary sends the digest of
//! each output it holds ([`super::Message::OutputDigest`], numbered from the pair's start); the
//! backup's replay produces its own outputs in the same order. Each output is compared as soon
//! as both digests are there, whichever arrives last, and the backup tells the primary how many
//! outputs matched ([`super::Message::Verified`] carries that count in this mode): the primary
//! releases an output only once its number is covered. The first difference latches a mismatch;
//! the replay then stops and asks for a resync.

use super::wire::Message;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The comparison of the primary's outputs with the replay's; shared by the channel's receiver
/// (the primary's digests) and the replay's output stage (its own).
pub struct OutputCheck {
    inner: Mutex<Inner>,
    queue: Sender<Message>,
}

#[derive(Default)]
struct Inner {
    /// Digests not matched yet, oldest first: the primary's and the replay's. One of the two is
    /// always empty once [`Inner::settle`] has run.
    theirs: VecDeque<(u64, [u8; 32])>,
    ours: VecDeque<[u8; 32]>,
    /// Outputs matched so far (the number of the last one).
    matched: u64,
    /// The last count told to the primary.
    told: u64,
    mismatch: Option<String>,
}

impl Inner {
    fn settle(&mut self) {
        while self.mismatch.is_none() {
            let (Some(&(sequence, theirs)), Some(&ours)) = (self.theirs.front(), self.ours.front()) else { break };
            let expected = self.matched + 1;
            if sequence != expected {
                self.mismatch = Some(format!("the primary's output {sequence} came where {expected} was due"));
            } else if theirs != ours {
                self.mismatch = Some(format!("output {sequence} differs from the primary's"));
            } else {
                self.matched = expected;
            }
            self.theirs.pop_front();
            self.ours.pop_front();
        }
    }
}

impl OutputCheck {
    /// Reports go out on `queue` (the backup's send queue).
    pub fn new(queue: Sender<Message>) -> Self {
        Self { inner: Mutex::new(Inner::default()), queue }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation leaves the queues consistent; a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The primary's digest of its output `sequence`.
    pub fn theirs(&self, sequence: u64, digest: [u8; 32]) {
        let mut inner = self.lock();
        inner.theirs.push_back((sequence, digest));
        inner.settle();
        self.tell(&mut inner);
    }

    /// The digest of the replay's next output.
    pub fn ours(&self, digest: [u8; 32]) {
        let mut inner = self.lock();
        inner.ours.push_back(digest);
        inner.settle();
        self.tell(&mut inner);
    }

    /// Tells the primary how many outputs matched, if that grew (a full queue: the next call
    /// tries again).
    pub fn tell_pending(&self) {
        let mut inner = self.lock();
        self.tell(&mut inner);
    }

    fn tell(&self, inner: &mut Inner) {
        if inner.matched > inner.told && self.queue.try_send(Message::Verified { position: inner.matched }).is_ok() {
            inner.told = inner.matched;
        }
    }

    /// The first difference seen, if any.
    pub fn mismatch(&self) -> Option<String> {
        self.lock().mismatch.clone()
    }

    /// Outputs matched so far.
    pub fn matched(&self) -> u64 {
        self.lock().matched
    }

    /// A resync's state is applied: the primary had emitted `outputs` outputs before it, all of
    /// which its state covers. Comparison starts again after them, from a clean slate.
    pub fn restart_at(&self, outputs: u64) {
        let mut inner = self.lock();
        inner.ours.clear();
        inner.theirs.retain(|&(sequence, _)| sequence > outputs);
        inner.matched = outputs;
        inner.told = inner.told.min(outputs);
        inner.mismatch = None;
        inner.settle();
        self.tell(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> (OutputCheck, crossbeam_channel::Receiver<Message>) {
        let (queue, sent) = crossbeam_channel::bounded(16);
        (OutputCheck::new(queue), sent)
    }

    fn told(sent: &crossbeam_channel::Receiver<Message>) -> Vec<u64> {
        sent.try_iter()
            .filter_map(|m| match m {
                Message::Verified { position } => Some(position),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn outputs_match_in_order_whichever_side_comes_first() {
        let (check, sent) = check();
        check.theirs(1, [1; 32]);
        check.ours([1; 32]);
        check.ours([2; 32]);
        assert_eq!(check.matched(), 1, "output 2 has no digest from the primary yet");
        check.theirs(2, [2; 32]);
        assert_eq!(check.matched(), 2);
        assert_eq!(told(&sent), vec![1, 2]);
        assert_eq!(check.mismatch(), None);
    }

    #[test]
    fn a_differing_output_latches_a_mismatch_and_nothing_more_is_verified() {
        let (check, sent) = check();
        check.theirs(1, [1; 32]);
        check.ours([9; 32]);
        check.theirs(2, [2; 32]);
        check.ours([2; 32]);
        assert!(check.mismatch().is_some_and(|m| m.contains("output 1")));
        assert_eq!(check.matched(), 0);
        assert!(told(&sent).is_empty());
        // A resync's state covers the first 5 outputs: comparison starts again after them.
        check.theirs(6, [6; 32]);
        check.restart_at(5);
        assert_eq!(told(&sent), vec![5]);
        check.ours([6; 32]);
        assert_eq!(check.matched(), 6);
        assert_eq!(check.mismatch(), None);
    }
}
