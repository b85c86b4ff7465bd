//! What the fuzz suites of the decoders share (issue 15, point 5): the case count, structured
//! mutations of valid encodings, and a global allocator that measures the largest single
//! allocation a decoder makes, so that a property can say "no allocation driven by an untrusted
//! length beyond a bound".
//!
//! The default suite runs each property a few thousand times; `PROPTEST_CASES=N` runs N each
//! (README, "Fuzzing"): `PROPTEST_CASES=1000000 cargo test --release -p ftlog --test fuzz_wire`.

use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The environment variable that sets every fuzz property's case count.
pub const CASES_VAR: &str = "PROPTEST_CASES";

/// The case count: `PROPTEST_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var(CASES_VAR).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// A proptest configuration of [`cases`]`(default)` cases. Failures are not persisted to files
/// (they are shrunk and printed; a crash found becomes a named regression test).
pub fn config(default: u32) -> ProptestConfig {
    ProptestConfig { cases: cases(default), failure_persistence: None, ..ProptestConfig::default() }
}

thread_local! {
    /// The largest allocation (or reallocation) of this thread since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; allocations then go unmeasured.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

/// The system allocator, measuring each thread's largest allocation. A test binary installs it
/// with `#[global_allocator] static ALLOC: ftvm_tests::fuzz::Measuring = ftvm_tests::fuzz::Measuring;`.
pub struct Measuring;

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only updates a
// const-initialised thread-local Cell, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`: `ptr` and `layout` come from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `work` and returns what it returned with the largest single allocation it made on this
/// thread (meaningful only in a binary that installed [`Measuring`]).
pub fn largest_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = work();
    (result, LARGEST.with(Cell::get))
}

/// One change to a valid encoding.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// One bit flipped.
    Flip { at: Index, bit: u8 },
    /// Cut at a point.
    Truncate(Index),
    /// Bytes appended.
    Extend(Vec<u8>),
    /// Bytes inserted somewhere.
    Insert { at: Index, bytes: Vec<u8> },
    /// A range removed.
    Remove { at: Index, len: usize },
    /// Two ranges of the same length exchanged (two fields swapped).
    Swap { a: Index, b: Index, len: usize },
    /// A range copied over another place.
    Duplicate { from: Index, to: Index, len: usize },
    /// A little-endian word of 1, 2, 4 or 8 bytes planted over the bytes at a place: lengths,
    /// counts, tags and indices set to the values that break decoders.
    Word { at: Index, width: u8, value: u64 },
}

/// Values that lengths, counts and indices are tried with.
pub fn interesting_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(0x7f),
        Just(0x80),
        Just(0xff),
        Just(0xffff),
        Just(0x1_0000),
        Just(0x7fff_ffff),
        Just(0xffff_ffff),
        Just(1 << 20),
        Just((1 << 20) + 1),
        Just(1 << 30),
        Just(8 << 20),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        any::<u64>(),
        0u64..64,
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || proptest::collection::vec(any::<u8>(), 1..24);
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => bytes().prop_map(Mutation::Extend),
        1 => (any::<Index>(), bytes()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => (any::<Index>(), any::<Index>(), 1usize..16).prop_map(|(a, b, len)| Mutation::Swap { a, b, len }),
        1 => (any::<Index>(), any::<Index>(), 1usize..16).prop_map(|(from, to, len)| Mutation::Duplicate { from, to, len }),
        3 => (any::<Index>(), prop::sample::select(vec![1u8, 2, 4, 8]), interesting_word())
            .prop_map(|(at, width, value)| Mutation::Word { at, width, value }),
    ]
}

/// Up to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=max)
}

/// Applies `m` to `bytes` (a mutation that needs bytes does nothing to an empty buffer).
pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        Mutation::Insert { at, bytes: more } => {
            let at = at.index(n + 1);
            bytes.splice(at..at, more.iter().copied());
        }
        _ if n == 0 => {}
        Mutation::Flip { at, bit } => bytes[at.index(n)] ^= 1 << bit,
        Mutation::Truncate(at) => bytes.truncate(at.index(n)),
        Mutation::Remove { at, len } => {
            let at = at.index(n);
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Swap { a, b, len } => {
            let len = (*len).min(n / 2);
            if len > 0 {
                let (a, b) = (a.index(n - len + 1), b.index(n - len + 1));
                let (a, b) = (a.min(b), a.max(b));
                if b >= a + len {
                    let (head, tail) = bytes.split_at_mut(b);
                    head[a..a + len].swap_with_slice(&mut tail[..len]);
                }
            }
        }
        Mutation::Duplicate { from, to, len } => {
            let len = (*len).min(n);
            let (from, to) = (from.index(n - len + 1), to.index(n - len + 1));
            bytes.copy_within(from..from + len, to);
        }
        Mutation::Word { at, width, value } => {
            let width = usize::from(*width).min(n);
            let at = at.index(n - width + 1);
            bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
    }
}

/// `bytes` with every mutation of `ms` applied in order.
pub fn mutated(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        apply(&mut bytes, m);
    }
    bytes
}

/// A reader that hands out at most `step` bytes per read, like a slow socket.
pub struct Trickle<'a> {
    pub bytes: &'a [u8],
    pub step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.max(1).min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #[test]
        fn mutations_never_panic_and_stay_small(bytes in proptest::collection::vec(any::<u8>(), 0..64), ms in mutations(6)) {
            let out = mutated(bytes.clone(), &ms);
            prop_assert!(out.len() <= bytes.len() + 6 * 24);
        }

        #[test]
        fn a_word_is_planted_little_endian(at in any::<Index>(), value in interesting_word(), n in 8usize..40) {
            let mut bytes = vec![0xaau8; n];
            apply(&mut bytes, &Mutation::Word { at, width: 8, value });
            prop_assert!(bytes.windows(8).any(|w| w == value.to_le_bytes()));
            prop_assert_eq!(bytes.len(), n);
        }

        #[test]
        fn a_swap_exchanges_two_fields(a in any::<Index>(), b in any::<Index>(), len in 1usize..8) {
            let bytes: Vec<u8> = (0..32).collect();
            let mut swapped = bytes.clone();
            apply(&mut swapped, &Mutation::Swap { a, b, len });
            let mut sorted = swapped.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, bytes);
        }
    }
}
