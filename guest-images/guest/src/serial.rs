//! COM1 output. The board's UART is always ready to transmit, so we write THR directly without
//! polling LSR: one exit per byte.

use crate::port::outb;
use core::fmt;

const THR: u16 = 0x3f8;

pub struct Serial;

impl Serial {
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            outb(THR, b);
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Serial, format_args!($($arg)*));
    }};
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}
