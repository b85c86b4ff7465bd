//! The 8259A programmable interrupt controller pair (master at 0x20, slave at 0xa0).
//!
//! The slave's interrupt output is wired to the master's IR2, as on every PC. The model follows
//! the Intel 8259A datasheet for what an x86 guest can observe: the ICW1-ICW4 initialisation
//! sequence, OCW1 masks, OCW2 end-of-interrupt and rotation commands, OCW3 register select,
//! poll and special mask mode, auto-EOI and the special fully nested mode of the master.
//!
//! Inputs are edge-triggered (the LTIM bit of ICW1 is accepted but ignored: every device of the
//! board signals with edges or with a level whose rising edge is what matters). An edge is
//! latched in IRR and stays there until acknowledged, even if the line falls again, which is
//! how a PIT pulse is delivered.
//!
//! Determinism: the state is a pure function of the calls made; there is no time and no
//! randomness in here. [`PicState`] holds everything, so `restore(state())` is exact.

use serde::{Deserialize, Serialize};

/// The IR input of the master that the slave's output drives.
const CASCADE_LINE: u8 = 2;
/// Number of IR inputs per controller.
const LINES: u8 = 8;
/// The vector bases of a PC at reset (the BIOS convention), used until the guest sends ICW2.
const RESET_VECTOR_BASE: [u8; 2] = [0x08, 0x70];

/// Where a controller is in its initialisation sequence: which ICW the data port expects next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitStep {
    /// Initialised: data port writes are OCW1 (the interrupt mask).
    #[default]
    Ready,
    /// ICW1 seen; the next data write is ICW2 (vector base).
    Icw2,
    /// The next data write is ICW3 (cascade wiring; accepted and ignored, the wiring is fixed).
    Icw3,
    /// The next data write is ICW4 (mode: auto-EOI, special fully nested).
    Icw4,
}

/// The complete state of one 8259A.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipState {
    /// Interrupt request register: latched edges waiting for service.
    pub irr: u8,
    /// In-service register: interrupts acknowledged and not yet EOI'd.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// The current level of each input, to detect rising edges.
    pub levels: u8,
    /// Vector of IR0 (ICW2, low three bits clear).
    pub vector_base: u8,
    /// Which initialisation word the data port expects next.
    pub init_step: InitStep,
    /// ICW1 said an ICW4 follows.
    pub icw4_expected: bool,
    /// ICW1 single mode: no cascade (ICW3 skipped; on the master, IR2 is a plain input).
    pub single: bool,
    /// ICW4 auto-EOI: acknowledge does not set ISR.
    pub auto_eoi: bool,
    /// OCW2 "rotate in auto-EOI mode" is set.
    pub rotate_on_auto_eoi: bool,
    /// ICW4 special fully nested mode (only meaningful on the master).
    pub special_fully_nested: bool,
    /// OCW3: a command-port read returns ISR (true) or IRR (false).
    pub read_isr: bool,
    /// OCW3 poll command issued: the next command-port read is a poll.
    pub poll: bool,
    /// OCW3 special mask mode: masked in-service lines do not block lower priorities.
    pub special_mask: bool,
    /// The input with the highest priority (0 unless rotated).
    pub highest_priority: u8,
}

impl ChipState {
    fn reset(vector_base: u8) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            levels: 0,
            vector_base,
            init_step: InitStep::Ready,
            icw4_expected: false,
            single: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            read_isr: false,
            poll: false,
            special_mask: false,
            highest_priority: 0,
        }
    }

    /// The input at priority rank `rank` (0 = highest) under the current rotation.
    fn line_at_rank(&self, rank: u8) -> u8 {
        rank.wrapping_add(self.highest_priority) % LINES
    }

    /// The rank of the highest-priority line set in `mask`, or `LINES` if none.
    fn best_rank(&self, mask: u8) -> u8 {
        (0..LINES).find(|&rank| mask & bit(self.line_at_rank(rank)) != 0).unwrap_or(LINES)
    }

    /// The input this chip would signal to the CPU (or to the master), if any.
    ///
    /// `is_master` enables the special fully nested exception: an in-service cascade line
    /// does not block further requests from the slave.
    fn requested_line(&self, is_master: bool) -> Option<u8> {
        let request_rank = self.best_rank(self.irr & !self.imr);
        if request_rank == LINES {
            return None;
        }
        let mut blocking = self.isr;
        if self.special_mask {
            blocking &= !self.imr;
        }
        if is_master && self.special_fully_nested {
            blocking &= !bit(CASCADE_LINE);
        }
        (request_rank < self.best_rank(blocking)).then(|| self.line_at_rank(request_rank))
    }

    /// Drives input `line` to `level`; a rising edge latches a request in IRR.
    fn set_line(&mut self, line: u8, level: bool) {
        let mask = bit(line);
        if level && self.levels & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.levels |= mask;
        } else {
            self.levels &= !mask;
        }
    }

    /// The acknowledge cycle for `line` on this chip.
    fn acknowledge_line(&mut self, line: u8) {
        let mask = bit(line);
        self.irr &= !mask;
        if !self.auto_eoi {
            self.isr |= mask;
        } else if self.rotate_on_auto_eoi {
            self.highest_priority = line.wrapping_add(1) % LINES;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    /// ICW1 starts initialisation. Per the datasheet it clears IMR, ISR and pending requests,
    /// restores fully nested priority, cancels special mask mode and selects IRR for reads.
    /// The edge detectors keep the current input levels: a line that is already high must go
    /// low and high again to request an interrupt.
    fn icw1(&mut self, value: u8) {
        let levels = self.levels;
        let vector_base = self.vector_base;
        *self = Self::reset(vector_base);
        self.levels = levels;
        self.icw4_expected = value & 0x01 != 0;
        self.single = value & 0x02 != 0;
        self.init_step = InitStep::Icw2;
    }

    /// OCW2: end of interrupt and priority rotation commands (bits 7-5), level in bits 2-0.
    fn ocw2(&mut self, value: u8) {
        let level = value & 0x07;
        match value >> 5 {
            // Clear / set rotate in auto-EOI mode.
            0b000 => self.rotate_on_auto_eoi = false,
            0b100 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI, optionally rotating.
            0b001 => {
                self.non_specific_eoi();
            }
            0b101 => {
                if let Some(line) = self.non_specific_eoi() {
                    self.highest_priority = line.wrapping_add(1) % LINES;
                }
            }
            // Specific EOI, optionally rotating.
            0b011 => self.isr &= !bit(level),
            0b111 => {
                self.isr &= !bit(level);
                self.highest_priority = level.wrapping_add(1) % LINES;
            }
            // Set priority: `level` becomes the lowest.
            0b110 => self.highest_priority = level.wrapping_add(1) % LINES,
            // 0b010: no operation.
            _ => {}
        }
    }

    /// Clears the highest-priority in-service bit; returns its line.
    fn non_specific_eoi(&mut self) -> Option<u8> {
        let rank = self.best_rank(self.isr);
        (rank < LINES).then(|| {
            let line = self.line_at_rank(rank);
            self.isr &= !bit(line);
            line
        })
    }

    /// OCW3: poll, register read select and special mask mode.
    fn ocw3(&mut self, value: u8) {
        self.poll = value & 0x04 != 0;
        if value & 0x02 != 0 {
            self.read_isr = value & 0x01 != 0;
        }
        if value & 0x40 != 0 {
            self.special_mask = value & 0x20 != 0;
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if !self.single {
                    InitStep::Icw3
                } else if self.icw4_expected {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.init_step = if self.icw4_expected { InitStep::Icw4 } else { InitStep::Ready };
            }
            InitStep::Icw4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.special_fully_nested = value & 0x10 != 0;
                self.init_step = InitStep::Ready;
            }
        }
    }

    /// A command-port read: a poll (which acknowledges, as the datasheet says) or IRR/ISR.
    fn read_command(&mut self, is_master: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.requested_line(is_master) {
                Some(line) => {
                    self.acknowledge_line(line);
                    0x80 | line
                }
                None => 0,
            };
        }
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The complete state of the pair, for checkpoints, snapshots and the state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    /// The controller at 0x20/0x21 (IRQ 0-7).
    pub master: ChipState,
    /// The controller at 0xa0/0xa1 (IRQ 8-15), on the master's IR2.
    pub slave: ChipState,
}

impl Default for PicState {
    fn default() -> Self {
        Self { master: ChipState::reset(RESET_VECTOR_BASE[0]), slave: ChipState::reset(RESET_VECTOR_BASE[1]) }
    }
}

/// What an acknowledge cycle would do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Delivery {
    master_line: u8,
    /// The slave line being delivered through the cascade, `None` if the master delivers its
    /// own line or if the slave has nothing (a spurious IRQ 15).
    slave_line: Option<u8>,
    vector: u8,
}

/// The cascaded 8259A pair of the PC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PicPair {
    state: PicState,
}

impl PicPair {
    pub fn new() -> Self {
        Self::default()
    }

    /// A guest read of port 0x20, 0x21, 0xa0 or 0xa1 (any other port reads as 0xff).
    pub fn read(&mut self, port: u16) -> u8 {
        let value = match port {
            0x20 => self.state.master.read_command(true),
            0xa0 => self.state.slave.read_command(false),
            0x21 => self.state.master.imr,
            0xa1 => self.state.slave.imr,
            _ => 0xff,
        };
        // A poll read acknowledges; the slave's output may have changed.
        self.update_cascade();
        value
    }

    /// A guest write of port 0x20, 0x21, 0xa0 or 0xa1 (any other port is ignored).
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            0x20 => self.state.master.write_command(value),
            0xa0 => self.state.slave.write_command(value),
            0x21 => self.state.master.write_data(value),
            0xa1 => self.state.slave.write_data(value),
            _ => {}
        }
        self.update_cascade();
    }

    /// Sets the level of an IRQ line (0-15); a rising edge requests an interrupt.
    /// Lines outside 0-15 are ignored, as is driving IRQ 2, which is the cascade input.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            0..=7 if line != CASCADE_LINE => self.state.master.set_line(line, level),
            8..=15 => {
                self.state.slave.set_line(line - LINES, level);
                self.update_cascade();
            }
            _ => {}
        }
    }

    /// A rising then falling edge on an IRQ line (how the PIT signals).
    pub fn pulse_irq(&mut self, line: u8) {
        self.set_irq(line, true);
        self.set_irq(line, false);
    }

    /// The vector the PIC would deliver now, without acknowledging it.
    pub fn pending_vector(&self) -> Option<u8> {
        self.delivery().map(|delivery| delivery.vector)
    }

    /// The interrupt-acknowledge cycle: the vector to deliver, moving it from IRR to in-service
    /// on the master and, for IRQ 8-15, on the slave too.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let delivery = self.delivery()?;
        self.state.master.acknowledge_line(delivery.master_line);
        if let Some(line) = delivery.slave_line {
            self.state.slave.acknowledge_line(line);
        }
        self.update_cascade();
        Some(delivery.vector)
    }

    pub fn state(&self) -> PicState {
        self.state.clone()
    }

    pub fn restore(&mut self, state: &PicState) {
        self.state = state.clone();
    }

    /// Pending requests of both chips (slave in the high byte), for diagnostics.
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.state.master.irr, self.state.slave.irr])
    }

    /// In-service bits of both chips (slave in the high byte), for diagnostics.
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.state.master.isr, self.state.slave.isr])
    }

    /// Masks of both chips (slave in the high byte), for diagnostics.
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.state.master.imr, self.state.slave.imr])
    }

    /// Whether the master's IR2 is a cascade input (ICW1 did not select single mode).
    fn cascaded(&self) -> bool {
        !self.state.master.single
    }

    /// The single source of truth for both `pending_vector` and `acknowledge`, so that they
    /// can never disagree.
    fn delivery(&self) -> Option<Delivery> {
        let master = &self.state.master;
        let master_line = master.requested_line(true)?;
        if master_line != CASCADE_LINE || !self.cascaded() {
            return Some(Delivery { master_line, slave_line: None, vector: vector(master.vector_base, master_line) });
        }
        let slave = &self.state.slave;
        let slave_line = slave.requested_line(false);
        Some(Delivery {
            master_line,
            slave_line,
            // The slave withdrew its request after the master latched it: spurious IRQ 15.
            vector: vector(slave.vector_base, slave_line.unwrap_or(LINES - 1)),
        })
    }

    /// Propagates the slave's interrupt output to the master's IR2.
    fn update_cascade(&mut self) {
        let output = self.state.slave.requested_line(false).is_some();
        self.state.master.set_line(CASCADE_LINE, output);
    }
}

fn bit(line: u8) -> u8 {
    1u8.wrapping_shl(u32::from(line))
}

fn vector(base: u8, line: u8) -> u8 {
    base.wrapping_add(line)
}

#[cfg(test)]
mod tests;
