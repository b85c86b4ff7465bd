//! Interrupt plumbing seen from ring 3: the IDT (filled here), IF control, per-IRQ counts and
//! waiting for the next interrupt through the `int 0x80` gate.
//!
//! IF is changed through operations of the DPL3 gate 0x80 (see `boot`): ring 3 has IOPL=0 on PVM
//! hosts, so `cli`/`sti` would fault there. Never use `popf` to restore IF either.

use crate::boot::{self, FTVM_IDT, KERNEL_CS, OP_DISABLE, OP_ENABLE, OP_WAIT};
use core::arch::asm;
use core::sync::atomic::Ordering;

/// The vector of IRQ 0 and IRQ 8 after `pic::init`.
pub const IRQ_BASE_MASTER: u8 = 0x20;
pub const IRQ_BASE_SLAVE: u8 = 0x28;

/// Fills the IDT with the stubs of `boot`. Call with interrupts disabled (as at entry).
pub fn init() {
    // SAFETY: IF=0 and the IDT is only read by the CPU at interrupt delivery; nothing else
    // holds a reference to it. The pages are user-writable (guest ABI: identity map with U=1).
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(FTVM_IDT) };
    for (vector, handler, dpl) in boot::gates() {
        idt.0[vector as usize] = gate(handler, dpl);
    }
}

/// A 64-bit interrupt gate (IF cleared on entry) to `handler` in the kernel code segment.
fn gate(handler: u64, dpl: u8) -> [u64; 2] {
    let type_attr = 0x8e | ((dpl as u64 & 3) << 5); // present, DPL, 64-bit interrupt gate
    let low = (handler & 0xffff) | ((KERNEL_CS as u64) << 16) | (type_attr << 40) | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Clears IF (an `and` on the saved RFLAGS in ring 0; no exit to the VMM).
#[inline(always)]
pub fn disable() {
    // SAFETY: the 0x80 gate with OP_DISABLE only clears IF in the frame; no register changes.
    // Not `nomem`: it orders the interrupt counters' accesses around it.
    unsafe { asm!("int3", in("eax") OP_DISABLE, options(nostack)) }
}

/// Sets IF. Call only once the IDT and PIC are set up.
#[inline(always)]
pub fn enable() {
    // SAFETY: the 0x80 gate with OP_ENABLE only sets IF in the frame; no register changes.
    unsafe { asm!("int3", in("eax") OP_ENABLE, options(nostack)) }
}

/// Halts until the next interrupt has been handled (or the VMM resumes the vCPU after `hlt`
/// for another reason: callers re-check their condition). Returns with IF as it was at the
/// call; call it with IF=0 to check a condition and wait without a lost-wakeup race.
#[inline(always)]
pub fn wait() {
    // SAFETY: the 0x80 gate with OP_WAIT runs `sti; hlt; cli; iretq`; no register changes.
    // Not `nomem`: the interrupt counters change meanwhile.
    unsafe { asm!("int3", in("eax") OP_WAIT, options(nostack)) }
}

/// Interrupts of IRQ `irq` (0-15) taken so far.
#[inline(always)]
pub fn count(irq: u8) -> u64 {
    boot::FTVM_IRQ_COUNTS[irq as usize].load(Ordering::Relaxed)
}
