//! Exit signatures and the running digest the primary and the backup both fold them into.
//!
//! Every deterministic exit is summarised by an [`ExitSignature`]; both sides fold the same
//! signatures in the same order, and the primary logs the digest every K exits. A backup whose
//! guest took another path notices at the next K boundary, long before any output differs.

use std::fmt;

/// The kind of a deterministic exit: the one exit type of the VMM's loop and of the log.
/// (Kind 7 was a shutdown and 255 any other exit; neither is deterministic, so neither is
/// folded.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitKind {
    PioIn = 1,
    PioOut = 2,
    MmioRead = 3,
    MmioWrite = 4,
    Hlt = 5,
    /// The guest became interruptible after the loop asked KVM to say so.
    IrqWindow = 6,
}

/// The deterministic facts of one exit. Fill what the exit has; leave the rest 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitSignature {
    pub kind: ExitKind,
    /// Guest RIP at the exit.
    pub rip: u64,
    /// I/O port or guest-physical MMIO address.
    pub addr: u64,
    /// Access size in bytes.
    pub len: u8,
    /// The value written (little-endian, zero-extended); 0 for reads and other exits.
    pub value: u64,
}

impl ExitSignature {
    /// Size of the folded encoding.
    pub const ENCODED_LEN: usize = 1 + 8 + 8 + 1 + 8;

    /// The bytes folded into the digest: fixed-width little-endian, no allocation.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.rip.to_le_bytes());
        out[9..17].copy_from_slice(&self.addr.to_le_bytes());
        out[17] = self.len;
        out[18..26].copy_from_slice(&self.value.to_le_bytes());
        out
    }
}

impl fmt::Display for ExitSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.kind {
            ExitKind::PioIn | ExitKind::PioOut => "port",
            _ => "addr",
        };
        write!(
            f,
            "{:?} rip={:#x} {place}={:#x} len={} value={:#x}",
            self.kind, self.rip, self.addr, self.len, self.value
        )
    }
}

/// blake3 over the concatenated signatures of exits `start + 1..=n`, where `start` is 0 for a
/// boot, or the exit count it was (re)started at ([`RunningDigest::starting_at`]: a log that
/// starts from a snapshot, or a snapshot mark in the log).
///
/// blake3 rather than a 64-bit chain: folding costs about a hundred nanoseconds per exit (the
/// hasher buffers 64-byte blocks), negligible at tens of thousands of exits per second, and a
/// 256-bit digest makes an accidental match of two different paths impossible in practice.
/// Taking the digest does not disturb the running state.
#[derive(Clone, Debug, Default)]
pub struct RunningDigest {
    hasher: blake3::Hasher,
    exits: u64,
    start: u64,
}

impl RunningDigest {
    pub fn new() -> Self {
        Self::default()
    }

    /// A digest whose next exit is `Exit(exits + 1)`: a run resumed from a snapshot. The digest
    /// then covers only the exits from there on.
    pub fn starting_at(exits: u64) -> Self {
        Self { hasher: blake3::Hasher::new(), exits, start: exits }
    }

    /// The exit count the digest started at: it covers exits `start() + 1..=exits()`.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Folds the next exit; returns its number (1 for the first exit).
    pub fn fold(&mut self, sig: &ExitSignature) -> u64 {
        self.hasher.update(&sig.to_bytes());
        self.exits += 1;
        self.exits
    }

    /// Exits folded so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// The digest over all exits folded so far (since [`Self::start`]).
    pub fn digest(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(value: u64) -> ExitSignature {
        ExitSignature { kind: ExitKind::PioOut, rip: 0x1000, addr: 0x3f8, len: 1, value }
    }

    #[test]
    fn digest_depends_on_every_exit_and_their_order() {
        let mut a = RunningDigest::new();
        let mut b = RunningDigest::new();
        a.fold(&sig(1));
        a.fold(&sig(2));
        b.fold(&sig(2));
        b.fold(&sig(1));
        assert_ne!(a.digest(), b.digest());
        let mut c = RunningDigest::new();
        c.fold(&sig(1));
        assert_ne!(a.digest(), c.digest());
        c.fold(&sig(2));
        assert_eq!(a.digest(), c.digest());
        assert_eq!(c.exits(), 2);
    }

    #[test]
    fn a_restarted_digest_covers_only_later_exits() {
        let mut a = RunningDigest::new();
        a.fold(&sig(1));
        a.fold(&sig(2));
        let mut b = RunningDigest::starting_at(1);
        assert_eq!((b.start(), b.exits()), (1, 1));
        assert_eq!(b.fold(&sig(2)), 2);
        let mut c = RunningDigest::new();
        c.fold(&sig(2));
        assert_eq!(b.digest(), c.digest());
        assert_ne!(a.digest(), b.digest());
    }
}
