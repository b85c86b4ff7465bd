//! The board: every device of the VM behind one port-I/O and MMIO dispatcher.

use crate::clock::Clock;
use crate::event::{Deadlines, EventSource, Landmark, WorldEvent};
use crate::pic::{PicPair, PicState};
use crate::pit::{Pit, PitState};
use crate::power::{Power, PowerAction};
use crate::serial::{Serial, SerialState};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// IRQ lines of the legacy devices.
pub const PIT_IRQ: u8 = 0;
pub const SERIAL_IRQ: u8 = 4;

/// What the vCPU loop must do after an I/O exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    Continue,
    /// The guest powered off with this code.
    PowerOff(u32),
    /// The guest asked for a reset.
    Reset,
    /// The guest reported a fatal fault with this code.
    GuestPanic(u32),
}

/// All device state, for checkpoints, snapshots and the state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardState {
    pub pic: PicState,
    pub pit: PitState,
    pub serial: SerialState,
}

/// The devices of one VM.
pub struct Board {
    pic: PicPair,
    pit: Pit,
    serial: Serial,
    clock: Clock,
    power: Power,
    /// Counts of accesses that no device claimed, for the exit statistics and debugging.
    pub unclaimed_accesses: u64,
}

impl Board {
    pub fn new(serial_out: Box<dyn Write + Send>) -> Self {
        Self {
            pic: PicPair::new(),
            pit: Pit::new(),
            serial: Serial::new(serial_out),
            clock: Clock,
            power: Power,
            unclaimed_accesses: 0,
        }
    }

    pub fn pio_read(&mut self, port: u16, data: &mut [u8], at: Landmark, world: &mut dyn EventSource) {
        match port {
            0x20..=0x21 | 0xa0..=0xa1 => fill(data, self.pic.read(port)),
            0x40..=0x43 | 0x61 => {
                let now = world.read_clock(at, crate::ClockId::Monotonic);
                fill(data, self.pit.read(port, now));
            }
            0x3f8..=0x3ff => fill(data, self.serial.read((port - 0x3f8) as u8)),
            _ => {
                self.unclaimed_accesses += 1;
                tracing::trace!(port, "read from unclaimed port");
                data.fill(0xff);
            }
        }
        self.route_serial_interrupt();
    }

    pub fn pio_write(&mut self, port: u16, data: &[u8], at: Landmark, world: &mut dyn EventSource) -> IoOutcome {
        let byte = data.first().copied().unwrap_or(0);
        let outcome = match port {
            0x20..=0x21 | 0xa0..=0xa1 => {
                self.pic.write(port, byte);
                IoOutcome::Continue
            }
            0x40..=0x43 | 0x61 => {
                let now = world.read_clock(at, crate::ClockId::Monotonic);
                self.pit.write(port, byte, now);
                IoOutcome::Continue
            }
            0x3f8..=0x3ff => {
                self.serial.write((port - 0x3f8) as u8, byte);
                IoOutcome::Continue
            }
            0xf4 | 0xf5 | 0xcf9 => match self.power.write(port, data) {
                Some(PowerAction::Off(code)) => IoOutcome::PowerOff(code),
                Some(PowerAction::Panic(code)) => IoOutcome::GuestPanic(code),
                Some(PowerAction::Reset) => IoOutcome::Reset,
                None => IoOutcome::Continue,
            },
            _ => {
                self.unclaimed_accesses += 1;
                tracing::trace!(port, "write to unclaimed port");
                IoOutcome::Continue
            }
        };
        self.route_serial_interrupt();
        outcome
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8], at: Landmark, world: &mut dyn EventSource) {
        if let Some(offset) = Clock::offset_of(addr) {
            self.clock.read(offset, data, at, world);
        } else {
            self.unclaimed_accesses += 1;
            tracing::trace!(addr, "read from unclaimed MMIO address");
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&mut self, addr: u64, _data: &[u8], _at: Landmark, _world: &mut dyn EventSource) -> IoOutcome {
        self.unclaimed_accesses += 1;
        tracing::trace!(addr, "write to unclaimed or read-only MMIO address");
        IoOutcome::Continue
    }

    /// Timers the devices have armed.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines { pit: self.pit.next_deadline() }
    }

    /// Applies something the world did.
    pub fn apply(&mut self, event: &WorldEvent) {
        match event {
            WorldEvent::PitExpired => {
                if self.pit.expire() {
                    self.pic.pulse_irq(PIT_IRQ);
                }
            }
            WorldEvent::NetFrame { device, .. } => {
                tracing::warn!(device, "frame for a net device this board does not have; dropped");
            }
        }
    }

    /// Whether the PIC has an interrupt for the CPU.
    pub fn interrupt_pending(&self) -> bool {
        self.pic.pending_vector().is_some()
    }

    /// The interrupt-acknowledge cycle: the vector to inject now, if any.
    pub fn acknowledge_interrupt(&mut self) -> Option<u8> {
        self.pic.acknowledge()
    }

    pub fn state(&self) -> BoardState {
        BoardState { pic: self.pic.state(), pit: self.pit.state(), serial: self.serial.state() }
    }

    pub fn restore(&mut self, state: &BoardState) {
        self.pic.restore(&state.pic);
        self.pit.restore(&state.pit);
        self.serial.restore(&state.serial);
    }

    fn route_serial_interrupt(&mut self) {
        self.pic.set_irq(SERIAL_IRQ, self.serial.interrupt_line());
    }
}

fn fill(data: &mut [u8], byte: u8) {
    data.fill(0);
    if let Some(first) = data.first_mut() {
        *first = byte;
    }
}
