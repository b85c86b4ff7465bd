//! The clock device: one MMIO page at 0xd000_0000 (above 2 GiB, so the address is always
//! in a register). Each read is one exit. This is the guest's only source of time.

use core::arch::asm;

const CLOCK_BASE: u64 = 0xd000_0000;
const MONOTONIC: u64 = CLOCK_BASE;
const WALL: u64 = CLOCK_BASE + 8;

#[inline(always)]
fn read64(addr: u64) -> u64 {
    let value: u64;
    // SAFETY: the clock page is identity-mapped user-accessible by the VMM; one 8-byte load
    // exits to the device. Not `pure`: every call must perform its own read.
    unsafe { asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack, preserves_flags)) }
    value
}

/// Nanoseconds since the VM started.
pub fn monotonic_ns() -> u64 {
    read64(MONOTONIC)
}

/// Nanoseconds since the Unix epoch (UTC).
pub fn wall_ns() -> u64 {
    read64(WALL)
}
