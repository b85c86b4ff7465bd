//! `tsc [N]`: N reads of the time-stamp counter, one every 100 ms of the PIT, each printed on the
//! console as `tsc: I VALUE`. KVM runs RDTSC without an exit, so nothing logs the values: a
//! replay of this guest reads other ones and prints other bytes, a real source of the
//! non-determinism an FT pair in `--commit verified` mode must catch and resync.
//!
//! The digest covers only N and how many reads went forwards (normally N - 1), so that two runs
//! still agree on it.

use crate::digest::Digest;
use crate::interrupts::{self, count};
use crate::{pic, pit};

const HZ: u32 = 1000;
/// PIT ticks between two reads.
const TICKS_PER_READ: u64 = 100;

/// The time-stamp counter (allowed in ring 3: the boot code leaves CR4.TSD clear).
fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC reads a counter into EDX:EAX and has no other effect.
    unsafe { core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack)) };
    (u64::from(high) << 32) | u64::from(low)
}

pub fn run(n: u64) -> Result<(), &'static str> {
    println!("tsc: {} reads, one every {} ms", n, TICKS_PER_READ * 1000 / u64::from(HZ));
    let mut digest = Digest::new();
    digest.u64(n);
    interrupts::disable();
    let base = count(0);
    pit::start_periodic(HZ);
    pic::unmask(0);
    let mut last = 0u64;
    let mut forwards = 0u64;
    for i in 0..n {
        while count(0) - base < (i + 1) * TICKS_PER_READ {
            interrupts::wait();
        }
        let value = rdtsc();
        if i > 0 && value > last {
            forwards += 1;
        }
        last = value;
        println!("tsc: {} {}", i, value);
    }
    pic::mask(0);
    interrupts::enable();
    digest.u64(forwards);
    println!("tsc: {} reads, {} forwards", n, forwards);
    digest.print();
    Ok(())
}
