//! The master addresses a client was given (`A,B,C`: a single master, or the replicas of a
//! replicated one) and which of them to ask first: the one that answered last, or the leader a
//! replica named when it refused.

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Masters {
    /// As given, for messages.
    given: String,
    addrs: Vec<String>,
    /// Index of the one to ask first.
    current: AtomicUsize,
}

impl Masters {
    /// Parses a comma-separated list.
    pub fn parse(given: &str) -> Masters {
        let mut addrs: Vec<String> = given.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if addrs.is_empty() {
            // Keep the (bad) address as given so that connecting says what is wrong with it.
            addrs.push(given.to_string());
        }
        Masters { given: given.to_string(), addrs, current: AtomicUsize::new(0) }
    }

    pub fn given(&self) -> &str {
        &self.given
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The one to ask now, with its index.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.addrs.len();
        (i, &self.addrs[i])
    }

    /// The one at `failed` did not do: try the next (unless another thread moved on already).
    pub fn next_after(&self, failed: usize) {
        let _ = self.current.compare_exchange(
            failed,
            (failed + 1) % self.addrs.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A replica named `leader` as the leader: ask it next. False if it is not one of ours.
    pub fn follow(&self, leader: &str) -> bool {
        match self.addrs.iter().position(|a| a == leader) {
            Some(i) => {
                self.current.store(i, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_round_the_list_and_follows_a_named_leader() {
        let m = Masters::parse("a:1, b:2,c:3");
        assert_eq!(m.current(), (0, "a:1"));
        m.next_after(0);
        assert_eq!(m.current(), (1, "b:2"));
        // Another thread already moved on from 0: no second step.
        m.next_after(0);
        assert_eq!(m.current(), (1, "b:2"));
        assert!(m.follow("c:3"));
        assert_eq!(m.current(), (2, "c:3"));
        m.next_after(2);
        assert_eq!(m.current(), (0, "a:1"));
        assert!(!m.follow("d:4"));
        assert_eq!(Masters::parse("x:1").len(), 1);
    }
}
