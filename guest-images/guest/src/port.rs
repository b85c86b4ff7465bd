//! Port I/O from ring 3 (IOPL=3). Every access is a VM exit (~84 µs on PVM hosts): count them.

use core::arch::asm;

#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: we run with IOPL=3; port writes to the board's devices have no memory effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags)) }
}

#[allow(dead_code)] // for the drivers to come
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; a port read has no memory effects in the guest.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}
