//! `timer N`: PIT channel 0 periodic at 1000 Hz; take exactly N timer interrupts, waiting for
//! each with the `int 0x80` gate (so the vCPU halts between ticks).
//!
//! Ring 3 checks and waits with IF=0, so each wait returns after at most one interrupt (in
//! practice; see `boot`) and the count is exact. The digest covers N and the sequence of tick
//! counts observed after each interrupt: normally 1, 2, ..., N.

use crate::digest::Digest;
use crate::interrupts::{self, count};
use crate::{clock, pic, pit};

const HZ: u32 = 1000;

pub fn run(n: u64) -> Result<(), &'static str> {
    println!("timer: {} ticks at {} Hz", n, HZ);
    let mut digest = Digest::new();
    digest.u64(n);
    let step = (n / 10).max(1);

    interrupts::disable();
    let base = count(0);
    let start_ns = clock::monotonic_ns();
    pit::start_periodic(HZ);
    pic::unmask(0);
    let mut seen = 0;
    let mut waits = 0u64;
    while seen < n {
        interrupts::wait();
        waits += 1;
        let now = count(0) - base;
        if now != seen {
            if now / step != seen / step || now >= n {
                println!("timer: {}/{}", now, n);
            }
            seen = now;
            digest.u64(seen);
        }
    }
    pic::mask(0);
    let elapsed_ns = clock::monotonic_ns() - start_ns;
    interrupts::enable();

    println!("timer: {} ticks, {} waits, {} us", seen, waits, elapsed_ns / 1000);
    digest.print();
    Ok(())
}
