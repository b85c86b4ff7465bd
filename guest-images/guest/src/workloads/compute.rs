//! `compute [M]`: M million rounds of integer mixing in ring 3 with no exits, while PIT
//! channel 0 interrupts at 1000 Hz (they arrive by preemption and are only counted). The
//! checksum depends only on M; the interrupt count depends on timing.

use crate::digest::Digest;
use crate::interrupts::{self, count};
use crate::{clock, pic, pit};

/// About 1-1.5 s natively on the development machines (~7 simple ops per round, ~2e9 ops).
pub const DEFAULT_MILLIONS: u64 = 300;

/// The mixing loop: a serial dependency chain, so it can neither be vectorised nor folded.
#[inline(never)]
pub fn mix(rounds: u64) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut i: u64 = 0;
    while i < rounds {
        h = (h ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h = h.rotate_left(17).wrapping_add(0x6a09_e667_f3bc_c909);
        i += 1;
    }
    h
}

pub fn run(millions: u64) -> Result<(), &'static str> {
    let rounds = millions.checked_mul(1_000_000).ok_or("too many rounds")?;
    println!("compute: {} million rounds, PIT at 1000 Hz", millions);
    interrupts::disable();
    let base = count(0);
    let start_ns = clock::monotonic_ns();
    pit::start_periodic(1000);
    pic::unmask(0);
    interrupts::enable();

    let checksum = mix(core::hint::black_box(rounds));

    interrupts::disable();
    pic::mask(0);
    let elapsed_ns = clock::monotonic_ns() - start_ns;
    let ticks = count(0) - base;
    interrupts::enable();

    println!("compute: checksum {:016x}", checksum);
    println!("compute: {} timer interrupts, {} ms", ticks, elapsed_ns / 1_000_000);
    Digest::new().u64(checksum).print();
    Ok(())
}
