//! The 8259A PIC pair, programmed for vectors 0x20/0x28 in auto-EOI mode: the interrupt
//! stubs need no EOI write, which saves one exit per interrupt.

use crate::interrupts::{IRQ_BASE_MASTER, IRQ_BASE_SLAVE};
use crate::port::outb;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

/// Current masks (bit n set = IRQ n masked), mirrored here so changes need one write only.
static MASK: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0xffff);

/// ICW1-ICW4 for both chips, then all lines masked except the cascade (IRQ 2).
/// 10 writes. Call with interrupts disabled.
pub fn init() {
    outb(MASTER_CMD, 0x11); // ICW1: edge, cascade, ICW4 follows
    outb(MASTER_DATA, IRQ_BASE_MASTER); // ICW2
    outb(MASTER_DATA, 0x04); // ICW3: slave on IRQ 2
    outb(MASTER_DATA, 0x03); // ICW4: 8086 mode, auto-EOI
    outb(SLAVE_CMD, 0x11);
    outb(SLAVE_DATA, IRQ_BASE_SLAVE);
    outb(SLAVE_DATA, 0x02); // ICW3: cascade identity 2
    outb(SLAVE_DATA, 0x03);
    let mask: u16 = !(1 << 2); // all masked but the cascade
    outb(MASTER_DATA, mask as u8); // OCW1
    outb(SLAVE_DATA, (mask >> 8) as u8);
    MASK.store(mask, core::sync::atomic::Ordering::Relaxed);
}

/// Writes only the chip whose mask byte changed.
fn set_mask(mask: u16) {
    let old = MASK.swap(mask, core::sync::atomic::Ordering::Relaxed);
    if old & 0xff != mask & 0xff {
        outb(MASTER_DATA, mask as u8);
    }
    if old >> 8 != mask >> 8 {
        outb(SLAVE_DATA, (mask >> 8) as u8);
    }
}

pub fn unmask(irq: u8) {
    set_mask(MASK.load(core::sync::atomic::Ordering::Relaxed) & !(1 << irq));
}

pub fn mask(irq: u8) {
    set_mask(MASK.load(core::sync::atomic::Ordering::Relaxed) | (1 << irq));
}
