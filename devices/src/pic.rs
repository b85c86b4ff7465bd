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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Linux-style initialisation: cascade, ICW4, vectors 0x20/0x28, optional auto-EOI.
    fn init(pic: &mut PicPair, auto_eoi: bool) {
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        pic.write(0x20, 0x11);
        pic.write(0x21, 0x20);
        pic.write(0x21, 0x04);
        pic.write(0x21, icw4);
        pic.write(0xa0, 0x11);
        pic.write(0xa1, 0x28);
        pic.write(0xa1, 0x02);
        pic.write(0xa1, icw4);
    }

    fn initialised(auto_eoi: bool) -> PicPair {
        let mut pic = PicPair::new();
        init(&mut pic, auto_eoi);
        pic
    }

    #[test]
    fn reset_state_uses_pc_vector_bases() {
        let mut pic = PicPair::new();
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x08));
        pic.write(0x20, 0x20);
        pic.pulse_irq(9);
        assert_eq!(pic.acknowledge(), Some(0x71));
    }

    #[test]
    fn init_sequence_sets_vector_bases_and_clears_masks() {
        let mut pic = PicPair::new();
        pic.write(0x21, 0xff);
        init(&mut pic, false);
        assert_eq!(pic.read(0x21), 0);
        assert_eq!(pic.state().master.init_step, InitStep::Ready);
        assert_eq!(pic.state().slave.init_step, InitStep::Ready);
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        pic.pulse_irq(5);
        assert_eq!(pic.pending_vector(), None, "IRQ 3 in service blocks lower priorities");
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), Some(0x2c), "the slave sits at IR2, above IRQ 3");
    }

    #[test]
    fn init_without_icw4_and_single_mode_skip_words() {
        let mut pic = PicPair::new();
        // Single mode, no ICW4: ICW2 is the last word; the next data write is the mask.
        pic.write(0x20, 0x12);
        pic.write(0x21, 0x40);
        pic.write(0x21, 0xfe);
        assert_eq!(pic.read(0x21), 0xfe);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x40));
        // Single mode: IR2 is not a cascade, a slave request arrives as vector base + 2.
        pic.write(0x21, 0x00);
        pic.write(0x20, 0x20);
        pic.pulse_irq(8);
        assert_eq!(pic.acknowledge(), Some(0x42));
    }

    #[test]
    fn icw2_ignores_low_bits() {
        let mut pic = PicPair::new();
        pic.write(0x20, 0x11);
        pic.write(0x21, 0x27);
        pic.write(0x21, 0x04);
        pic.write(0x21, 0x01);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21));
    }

    #[test]
    fn auto_eoi_does_not_set_in_service() {
        let mut pic = initialised(true);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20));
        assert_eq!(pic.isr(), 0);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x20), "no EOI needed");
        pic.pulse_irq(10);
        assert_eq!(pic.acknowledge(), Some(0x2a));
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn non_specific_eoi_clears_highest_priority_in_service() {
        let mut pic = initialised(false);
        pic.pulse_irq(4);
        assert_eq!(pic.acknowledge(), Some(0x24));
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21), "higher priority nests");
        assert_eq!(pic.isr(), 0b1_0010);
        pic.write(0x20, 0x20);
        assert_eq!(pic.isr(), 0b1_0000);
        pic.write(0x20, 0x20);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn specific_eoi_clears_the_named_line() {
        let mut pic = initialised(false);
        pic.pulse_irq(4);
        pic.acknowledge();
        pic.pulse_irq(1);
        pic.acknowledge();
        pic.write(0x20, 0x60 | 4);
        assert_eq!(pic.isr(), 0b10);
    }

    #[test]
    fn in_service_line_blocks_equal_and_lower_priority() {
        let mut pic = initialised(false);
        pic.pulse_irq(3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        pic.pulse_irq(3);
        pic.pulse_irq(5);
        assert_eq!(pic.pending_vector(), None);
        pic.write(0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x23), "lowest line first");
        pic.write(0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x25));
    }

    #[test]
    fn masked_lines_stay_pending_until_unmasked() {
        let mut pic = initialised(false);
        pic.write(0x21, 0x01);
        pic.pulse_irq(0);
        assert_eq!(pic.pending_vector(), None);
        assert_eq!(pic.read(0x20), 0x01, "IRR is read by default");
        pic.write(0x21, 0x00);
        assert_eq!(pic.pending_vector(), Some(0x20));
        // Masking the cascade line hides the whole slave.
        pic.write(0x20, 0x20);
        pic.acknowledge();
        pic.write(0x20, 0x20);
        pic.write(0x21, 0x04);
        pic.pulse_irq(14);
        assert_eq!(pic.pending_vector(), None);
        pic.write(0x21, 0x00);
        assert_eq!(pic.pending_vector(), Some(0x2e));
    }

    #[test]
    fn ocw3_selects_irr_or_isr() {
        let mut pic = initialised(false);
        pic.pulse_irq(5);
        pic.acknowledge();
        pic.pulse_irq(6);
        assert_eq!(pic.read(0x20), 0x40);
        pic.write(0x20, 0x0b);
        assert_eq!(pic.read(0x20), 0x20);
        pic.write(0x20, 0x0a);
        assert_eq!(pic.read(0x20), 0x40);
    }

    #[test]
    fn poll_acknowledges_the_highest_request() {
        let mut pic = initialised(false);
        pic.write(0x20, 0x0c);
        assert_eq!(pic.read(0x20), 0, "nothing pending");
        pic.pulse_irq(6);
        pic.write(0x20, 0x0c);
        assert_eq!(pic.read(0x20), 0x86);
        assert_eq!(pic.isr(), 0x40);
        assert_eq!(pic.read(0x20), 0, "poll mode lasts one read: IRR");
    }

    #[test]
    fn edges_not_levels_request_interrupts() {
        let mut pic = initialised(false);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), Some(0x24));
        pic.write(0x20, 0x20);
        pic.set_irq(4, true);
        assert_eq!(pic.pending_vector(), None, "a held level is not a new edge");
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.pending_vector(), Some(0x24));
    }

    #[test]
    fn pending_vector_does_not_change_state() {
        let mut pic = initialised(false);
        pic.pulse_irq(9);
        let before = pic.state();
        assert_eq!(pic.pending_vector(), Some(0x29));
        assert_eq!(pic.pending_vector(), Some(0x29));
        assert_eq!(pic.state(), before);
    }

    #[test]
    fn cascade_acknowledge_handles_both_chips() {
        let mut pic = initialised(false);
        pic.pulse_irq(11);
        assert_eq!(pic.pending_vector(), Some(0x2b));
        assert_eq!(pic.acknowledge(), Some(0x2b));
        assert_eq!(pic.isr(), 0x0804);
        // A lower-priority slave line waits for the slave's EOI; a master line above IR2 nests.
        pic.pulse_irq(12);
        assert_eq!(pic.pending_vector(), None);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pic.write(0x20, 0x20);
        // Linux order: EOI the slave, then the master.
        pic.write(0xa0, 0x20);
        assert_eq!(pic.pending_vector(), None, "master IR2 still in service");
        pic.write(0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x2c));
        assert_eq!(pic.isr(), 0x1004);
    }

    #[test]
    fn cascade_works_when_master_is_eoid_first() {
        let mut pic = initialised(false);
        pic.pulse_irq(8);
        pic.pulse_irq(9);
        assert_eq!(pic.acknowledge(), Some(0x28));
        pic.write(0x20, 0x20);
        assert_eq!(pic.pending_vector(), None, "slave IR0 in service");
        pic.write(0xa0, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x29));
    }

    #[test]
    fn special_fully_nested_lets_higher_slave_lines_through() {
        let mut pic = PicPair::new();
        pic.write(0x20, 0x11);
        pic.write(0x21, 0x20);
        pic.write(0x21, 0x04);
        pic.write(0x21, 0x11);
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), Some(0x74));
        pic.pulse_irq(9);
        assert_eq!(pic.acknowledge(), Some(0x71));
    }

    #[test]
    fn rotation_commands_change_priority() {
        let mut pic = initialised(false);
        // Set priority: IR3 lowest, so IR4 highest.
        pic.write(0x20, 0xc3);
        pic.pulse_irq(1);
        pic.pulse_irq(5);
        assert_eq!(pic.acknowledge(), Some(0x25));
        // Rotate on non-specific EOI: IR5 becomes lowest.
        pic.write(0x20, 0xa0);
        assert_eq!(pic.acknowledge(), Some(0x21));
    }

    #[test]
    fn out_of_range_lines_and_ports_are_ignored() {
        let mut pic = initialised(false);
        let before = pic.state();
        pic.set_irq(16, true);
        pic.pulse_irq(255);
        pic.set_irq(2, true);
        pic.write(0x22, 0x11);
        assert_eq!(pic.read(0x1234), 0xff);
        assert_eq!(pic.state(), before);
    }

    #[test]
    fn state_round_trip_behaves_identically() {
        let mut pic = initialised(false);
        pic.pulse_irq(10);
        pic.acknowledge();
        pic.pulse_irq(3);
        pic.write(0x21, 0x40);
        pic.write(0x20, 0x0b);
        let bytes = postcard::to_allocvec(&pic.state()).expect("serialises");
        let state: PicState = postcard::from_bytes(&bytes).expect("deserialises");
        let mut copy = PicPair::new();
        copy.restore(&state);
        assert_eq!(copy, pic);
        for p in [&mut pic, &mut copy] {
            p.write(0xa0, 0x20);
            p.write(0x20, 0x20);
        }
        assert_eq!(copy.read(0x20), pic.read(0x20));
        assert_eq!(copy.acknowledge(), pic.acknowledge());
        assert_eq!(copy, pic);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u16, u8),
        Read(u16),
        SetIrq(u8, bool),
        Pulse(u8),
        Acknowledge,
    }

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![
            4 => prop::sample::select(vec![0x20u16, 0x21, 0xa0, 0xa1]),
            1 => any::<u16>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (port(), any::<u8>()).prop_map(|(p, v)| Op::Write(p, v)),
            port().prop_map(Op::Read),
            (0u8..20, any::<bool>()).prop_map(|(l, v)| Op::SetIrq(l, v)),
            any::<u8>().prop_map(Op::Pulse),
            Just(Op::Acknowledge),
        ]
    }

    /// Applies `op`; returns what the guest or the VMM observes.
    fn apply(pic: &mut PicPair, op: &Op) -> (Option<u8>, Option<u8>) {
        let observed = match *op {
            Op::Write(port, value) => {
                pic.write(port, value);
                None
            }
            Op::Read(port) => Some(pic.read(port)),
            Op::SetIrq(line, level) => {
                pic.set_irq(line, level);
                None
            }
            Op::Pulse(line) => {
                pic.pulse_irq(line);
                None
            }
            Op::Acknowledge => {
                let pending = pic.pending_vector();
                let acked = pic.acknowledge();
                assert_eq!(pending, acked, "pending_vector predicts acknowledge");
                acked
            }
        };
        (observed, pic.pending_vector())
    }

    proptest! {
        #[test]
        fn random_guests_never_panic_and_state_round_trips(
            ops in prop::collection::vec(op(), 0..200),
            split in any::<prop::sample::Index>(),
        ) {
            let mut pic = PicPair::new();
            let split = split.index(ops.len() + 1);
            for op in &ops[..split] {
                apply(&mut pic, op);
            }
            let bytes = postcard::to_allocvec(&pic.state()).expect("serialises");
            let mut copy = PicPair::new();
            copy.restore(&postcard::from_bytes(&bytes).expect("deserialises"));
            prop_assert_eq!(&copy, &pic);
            for op in &ops[split..] {
                prop_assert_eq!(apply(&mut copy, op), apply(&mut pic, op));
            }
            prop_assert_eq!(copy.state(), pic.state());
        }
    }
}
