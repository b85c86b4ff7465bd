//! The 16550A UART on COM1 (0x3f8, IRQ 4), on vm-superio, transmit only.
//! STUB: to be completed on vm_superio::Serial.

use serde::{Deserialize, Serialize};
use std::io::Write;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub registers: Vec<u8>,
}

pub struct Serial {
    out: Box<dyn Write + Send>,
}

impl Serial {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out }
    }
    /// A read of register `offset` (0-7).
    pub fn read(&mut self, offset: u8) -> u8 {
        if offset == 5 {
            0x60
        } else {
            0
        }
    }
    /// A write of register `offset` (0-7).
    pub fn write(&mut self, offset: u8, value: u8) {
        if offset == 0 {
            let _ = self.out.write_all(&[value]);
            let _ = self.out.flush();
        }
    }
    /// The level of the UART's interrupt output.
    pub fn interrupt_line(&self) -> bool {
        false
    }
    pub fn state(&self) -> SerialState {
        SerialState::default()
    }
    pub fn restore(&mut self, _state: &SerialState) {}
}
