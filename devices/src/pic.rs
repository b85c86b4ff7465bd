//! The 8259A programmable interrupt controller pair (master at 0x20, slave at 0xa0).
//! STUB: to be completed (ICW/OCW handling, priorities, AEOI, cascade, masks).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    pub irr: u16,
    pub imr: u16,
    pub vector_base: [u8; 2],
}

pub struct PicPair {
    state: PicState,
}

impl PicPair {
    pub fn new() -> Self {
        Self { state: PicState { irr: 0, imr: 0, vector_base: [0x08, 0x70] } }
    }
    pub fn read(&mut self, _port: u16) -> u8 {
        0
    }
    pub fn write(&mut self, port: u16, value: u8) {
        // Minimal: remember ICW2 vector bases. Replaced by the full model.
        let _ = (port, value);
    }
    /// Sets the level of an IRQ line (0-15).
    pub fn set_irq(&mut self, line: u8, level: bool) {
        if level {
            self.state.irr |= 1 << line;
        }
    }
    /// A rising then falling edge on an IRQ line (how the PIT signals).
    pub fn pulse_irq(&mut self, line: u8) {
        self.state.irr |= 1 << line;
    }
    /// The vector the PIC would deliver now, without acknowledging it.
    pub fn pending_vector(&self) -> Option<u8> {
        let ready = self.state.irr & !self.state.imr;
        (ready != 0).then(|| {
            let line = ready.trailing_zeros() as u8;
            self.state.vector_base[(line / 8) as usize] + line % 8
        })
    }
    /// The interrupt-acknowledge cycle: the vector to deliver, moving it from IRR to in-service.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.pending_vector()?;
        let line = (self.state.irr & !self.state.imr).trailing_zeros();
        self.state.irr &= !(1 << line);
        Some(vector)
    }
    pub fn state(&self) -> PicState {
        self.state.clone()
    }
    pub fn restore(&mut self, state: &PicState) {
        self.state = state.clone();
    }
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}
