//! Power off (port 0xf4) and fatal error reports (port 0xf5).

use crate::port::outl;

const POWER_PORT: u16 = 0xf4;
const PANIC_PORT: u16 = 0xf5;

/// Panic-port code of a Rust panic: 0xff | line << 8. (Exceptions use their vector, < 32.)
pub const RUST_PANIC: u32 = 0xff;

/// Powers off; ftvm exits with `code & 0xff`.
pub fn off(code: u32) -> ! {
    outl(POWER_PORT, code);
    halt_forever()
}

/// Reports a fatal guest error; ftvm prints the registers and exits 101.
pub fn panic_report(code: u32) -> ! {
    outl(PANIC_PORT, code);
    halt_forever()
}

fn halt_forever() -> ! {
    crate::interrupts::disable();
    loop {
        crate::interrupts::wait();
    }
}
