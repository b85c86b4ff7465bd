//! The 8254 programmable interval timer, channel 0 on IRQ 0 (ports 0x40-0x43, 0x61).
//! STUB: to be completed (modes 0, 2, 3; latch; access modes; counter reads; channel 2 gate).

use serde::{Deserialize, Serialize};

pub const PIT_HZ: u64 = 1_193_182;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    pub next_deadline_ns: Option<u64>,
    pub period_ns: Option<u64>,
}

pub struct Pit {
    state: PitState,
}

impl Pit {
    pub fn new() -> Self {
        Self { state: PitState::default() }
    }
    /// A guest read; `now_ns` is the monotonic clock at this exit.
    pub fn read(&mut self, _port: u16, _now_ns: u64) -> u8 {
        0
    }
    /// A guest write; `now_ns` is the monotonic clock at this exit.
    pub fn write(&mut self, _port: u16, _value: u8, _now_ns: u64) {}
    /// When channel 0 next expires (monotonic ns), if armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.state.next_deadline_ns
    }
    /// The deadline passed: advance to the next one (periodic) or disarm (one-shot).
    /// Returns whether the output made a rising edge for IRQ 0.
    pub fn expire(&mut self) -> bool {
        match (self.state.next_deadline_ns, self.state.period_ns) {
            (Some(deadline), Some(period)) => {
                self.state.next_deadline_ns = Some(deadline + period);
                true
            }
            (Some(_), None) => {
                self.state.next_deadline_ns = None;
                true
            }
            _ => false,
        }
    }
    pub fn state(&self) -> PitState {
        self.state.clone()
    }
    pub fn restore(&mut self, state: &PitState) {
        self.state = state.clone();
    }
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}
