//! The 8254 PIT, channel 0 on IRQ 0.

use crate::port::outb;

pub const INPUT_HZ: u32 = 1_193_182;
const CHANNEL0: u16 = 0x40;
const COMMAND: u16 = 0x43;

/// Channel 0 periodic (mode 2, rate generator) at about `hz`. 3 writes.
pub fn start_periodic(hz: u32) {
    let divisor = ((INPUT_HZ + hz / 2) / hz).clamp(2, 65535) as u16;
    outb(COMMAND, 0x34); // channel 0, lobyte/hibyte, mode 2, binary
    outb(CHANNEL0, divisor as u8);
    outb(CHANNEL0, (divisor >> 8) as u8);
}
