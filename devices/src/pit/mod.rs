//! The 8254 programmable interval timer, channel 0 on IRQ 0 (ports 0x40-0x43, 0x61).
//!
//! The counters are not stepped: each channel remembers when its count was loaded (on the
//! monotonic clock the board passes in as `now_ns`, which the event source records and
//! replays) and every observable value, the current count and the OUT pin, is computed from
//! the ticks elapsed since then. Channel 0's IRQ edges are scheduled the same way: the k-th
//! rising edge of a periodic mode is at `load + ceil(k * count * 1e9 / PIT_HZ)` ns, computed
//! exactly in u128 from the load time, so there is no rounding drift however long it runs and
//! the schedule depends only on the guest's writes and on `expire()` calls.
//!
//! Simplifications (invisible to a guest that programs the PIT the usual way): a new count
//! takes effect at once in every mode (no waiting for the end of the current period in modes 2
//! and 3, no extra CLK pulse to load it); in modes 0 and 4 a low gate does not pause counting.
//! Channels 0 and 1 have their gate tied high as on a PC, so modes 1 and 5 never trigger on
//! them. Channel 1 (DRAM refresh) and channel 2 (speaker, gated by port 0x61) are modelled by
//! the same code but drive no IRQ.

use serde::{Deserialize, Serialize};

/// The input clock of every counter.
pub const PIT_HZ: u64 = 1_193_182;

const NS_PER_S: u128 = 1_000_000_000;
/// The DRAM refresh request toggle of port 0x61 bit 4 flips every ~15 µs.
const REFRESH_PERIOD_NS: u64 = 15_085;

/// How a channel's 16-bit count is transferred through its 8-bit port (control word bits 5-4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Least significant byte only.
    Lo,
    /// Most significant byte only.
    Hi,
    /// Least then most significant byte.
    #[default]
    LoHi,
}

impl Access {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0x3 {
            1 => Some(Access::Lo),
            2 => Some(Access::Hi),
            3 => Some(Access::LoHi),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Access::Lo => 1,
            Access::Hi => 2,
            Access::LoHi => 3,
        }
    }
}

/// A count captured by a counter latch or read-back command, read out byte by byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatchedCount {
    /// The count as read (BCD-encoded in BCD mode).
    pub value: u16,
    /// In `LoHi` access the low byte has been read; the high byte comes next.
    pub low_read: bool,
}

/// The complete state of one counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// Counter mode 0-5 (6 and 7 are stored as 2 and 3, their aliases).
    pub mode: u8,
    /// How the count goes through the data port.
    pub access: Access,
    /// Count in BCD (4 decades) instead of binary.
    pub bcd: bool,
    /// The count register as written (0 stands for 65536, or 10000 in BCD).
    pub reload: u16,
    /// A count has been written since the control word (counting can run).
    pub loaded: bool,
    /// When the current counting cycle started, `None` if the counter is stopped (no count yet,
    /// half-written count in mode 0, or waiting for a gate trigger in modes 1 and 5).
    pub start_ns: Option<u64>,
    /// IRQ edges already delivered by `expire()` in this counting cycle (channel 0 only).
    pub expiries: u64,
    /// The gate input (tied high on channels 0 and 1; port 0x61 bit 0 on channel 2).
    pub gate: bool,
    /// In `LoHi` access, the low byte of a count being written.
    pub pending_low: Option<u8>,
    /// In `LoHi` access without a latch, the low byte of the live count has been read.
    pub low_read: bool,
    /// A count latched by a latch or read-back command, read before the live count.
    pub latched_count: Option<LatchedCount>,
    /// A status byte latched by a read-back command, read before any count.
    pub latched_status: Option<u8>,
    /// Status bit 6: a count was written but not yet loaded into the counting element.
    pub null_count: bool,
}

impl ChannelState {
    fn new(gate: bool) -> Self {
        Self { gate, ..Self::default() }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    /// The count in ticks (the reload value, with 0 meaning the full modulus).
    fn count_ticks(&self) -> u64 {
        let count = if self.bcd { from_bcd(self.reload) } else { u64::from(self.reload) };
        if count == 0 {
            self.modulus()
        } else {
            count
        }
    }

    /// Whole input-clock ticks since counting started, `None` if stopped.
    fn elapsed_ticks(&self, now_ns: u64) -> Option<u64> {
        let start = self.start_ns?;
        let ns = u128::from(now_ns.saturating_sub(start));
        Some(u64::try_from(ns * u128::from(PIT_HZ) / NS_PER_S).unwrap_or(u64::MAX))
    }

    /// The value of the counting element now.
    fn current_count(&self, now_ns: u64) -> u64 {
        let count = self.count_ticks();
        let Some(elapsed) = self.elapsed_ticks(now_ns) else {
            return count % self.modulus();
        };
        match self.mode {
            // Periodic: counts down from the count to 1 and reloads (mode 3 by twos).
            2 => count - elapsed % count,
            3 => count - elapsed.wrapping_mul(2) % count,
            // One-shot modes keep counting down through zero, wrapping.
            _ => {
                let modulus = self.modulus();
                (count % modulus + modulus - elapsed % modulus) % modulus
            }
        }
    }

    /// The OUT pin now.
    fn output(&self, now_ns: u64) -> bool {
        let Some(elapsed) = self.elapsed_ticks(now_ns) else {
            // Stopped: mode 0 drives OUT low from its control word on; the others idle high.
            return self.mode != 0;
        };
        let count = self.count_ticks();
        match self.mode {
            0 | 1 => elapsed >= count,
            2 => elapsed % count != count - 1,
            3 => elapsed % count < count.div_ceil(2),
            _ => elapsed != count,
        }
    }

    /// The next rising edge of OUT (as an IRQ 0 would see it), on the monotonic clock.
    fn next_rising_edge(&self) -> Option<u64> {
        let start = self.start_ns?;
        let count = u128::from(self.count_ticks());
        let ticks = match self.mode {
            2 | 3 => count * (u128::from(self.expiries) + 1),
            // Modes 0 and 1 rise at terminal count; 4 and 5 pulse low for one tick there.
            0 | 1 if self.expiries == 0 => count,
            4 | 5 if self.expiries == 0 => count + 1,
            _ => return None,
        };
        let offset = (ticks * NS_PER_S).div_ceil(u128::from(PIT_HZ));
        Some(u64::try_from(u128::from(start) + offset).unwrap_or(u64::MAX))
    }

    fn status(&self, now_ns: u64) -> u8 {
        u8::from(self.output(now_ns)) << 7
            | u8::from(self.null_count) << 6
            | self.access.bits() << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    /// A control word for this channel (not a latch or read-back command): new mode, counting
    /// stops until a count is written.
    fn program(&mut self, access: Access, mode: u8, bcd: bool) {
        *self = Self {
            mode: if mode >= 6 { mode - 4 } else { mode },
            access,
            bcd,
            gate: self.gate,
            null_count: true,
            ..Self::default()
        };
    }

    fn latch_count(&mut self, now_ns: u64) {
        if self.latched_count.is_none() {
            let value = self.encode(self.current_count(now_ns));
            self.latched_count = Some(LatchedCount { value, low_read: false });
        }
    }

    fn latch_status(&mut self, now_ns: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(now_ns));
        }
    }

    /// The 16 bits a read returns for `count` (BCD-encoded in BCD mode).
    fn encode(&self, count: u64) -> u16 {
        let count = count % self.modulus();
        if self.bcd {
            to_bcd(count)
        } else {
            u16::try_from(count).unwrap_or(0)
        }
    }

    fn write_count_byte(&mut self, value: u8, now_ns: u64) {
        match self.access {
            Access::Lo => self.load(u16::from(value), now_ns),
            Access::Hi => self.load(u16::from(value) << 8, now_ns),
            Access::LoHi => match self.pending_low.take() {
                None => {
                    self.pending_low = Some(value);
                    self.null_count = true;
                    // Mode 0: writing the first byte stops the count (datasheet).
                    if self.mode == 0 {
                        self.start_ns = None;
                    }
                }
                Some(low) => self.load(u16::from_le_bytes([low, value]), now_ns),
            },
        }
    }

    /// A complete count was written: counting restarts from it now (or, in the gate-triggered
    /// modes, at the next gate rising edge).
    fn load(&mut self, reload: u16, now_ns: u64) {
        self.reload = reload;
        self.loaded = true;
        self.null_count = false;
        self.expiries = 0;
        self.start_ns = (!gate_triggered(self.mode)).then_some(now_ns);
    }

    /// A read of the channel's data port: latched status, then latched count, then live count.
    fn read_byte(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some(mut latch) = self.latched_count {
            let (byte, done) = self.select_byte(latch.value, &mut latch.low_read);
            self.latched_count = (!done).then_some(latch);
            return byte;
        }
        let value = self.encode(self.current_count(now_ns));
        let mut low_read = self.low_read;
        let (byte, _) = self.select_byte(value, &mut low_read);
        self.low_read = low_read;
        byte
    }

    /// The byte of `value` the access mode gives next; returns it and whether the value is
    /// fully read.
    fn select_byte(&self, value: u16, low_read: &mut bool) -> (u8, bool) {
        let [low, high] = value.to_le_bytes();
        match self.access {
            Access::Lo => (low, true),
            Access::Hi => (high, true),
            Access::LoHi if *low_read => {
                *low_read = false;
                (high, true)
            }
            Access::LoHi => {
                *low_read = true;
                (low, false)
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now_ns: u64) {
        let rising = gate && !self.gate;
        self.gate = gate;
        // A gate rising edge (re)starts the count in modes 1, 2, 3 and 5.
        if rising && self.loaded && matches!(self.mode, 1 | 2 | 3 | 5) {
            self.start_ns = Some(now_ns);
            self.expiries = 0;
        }
    }
}

/// Modes 1 and 5 start counting on a gate rising edge, not when the count is written.
fn gate_triggered(mode: u8) -> bool {
    matches!(mode, 1 | 5)
}

/// Decodes four BCD digits; invalid nibbles (a-f) count with their binary value, which is
/// harmless and never panics.
fn from_bcd(value: u16) -> u64 {
    let [low, high] = value.to_le_bytes();
    let digits = [high >> 4, high & 0xf, low >> 4, low & 0xf];
    digits.iter().fold(0, |acc, &d| acc * 10 + u64::from(d))
}

/// Encodes a value below 10000 as four BCD digits.
fn to_bcd(value: u64) -> u16 {
    (0..4).fold(0u16, |acc, i| {
        let digit = (value / 10u64.pow(i)) % 10;
        acc | (u16::try_from(digit).unwrap_or(0) << (4 * i))
    })
}

/// The complete state of the timer, for checkpoints, snapshots and the state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Counters 0 (IRQ 0), 1 (refresh, unused) and 2 (speaker, gated by port 0x61).
    pub channels: [ChannelState; 3],
    /// Port 0x61 bit 1: speaker data enable (stored for read-back; there is no speaker).
    pub speaker_data: bool,
}

impl Default for PitState {
    fn default() -> Self {
        Self {
            channels: [ChannelState::new(true), ChannelState::new(true), ChannelState::new(false)],
            speaker_data: false,
        }
    }
}

/// The 8254 and the PIT-related bits of port 0x61.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pit {
    state: PitState,
}

impl Pit {
    pub fn new() -> Self {
        Self::default()
    }

    /// A guest read; `now_ns` is the monotonic clock at this exit.
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channel_mut(port).read_byte(now_ns),
            0x61 => self.read_port_b(now_ns),
            // The control word register cannot be read.
            _ => 0xff,
        }
    }

    /// A guest write; `now_ns` is the monotonic clock at this exit.
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            0x40..=0x42 => self.channel_mut(port).write_count_byte(value, now_ns),
            0x43 => self.write_control(value, now_ns),
            0x61 => self.write_port_b(value, now_ns),
            _ => {}
        }
    }

    /// When channel 0 next expires (monotonic ns), if armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.state.channels[0].next_rising_edge()
    }

    /// The deadline passed: advance to the next one (periodic) or disarm (one-shot).
    /// Returns whether the output made a rising edge for IRQ 0.
    pub fn expire(&mut self) -> bool {
        if self.next_deadline().is_none() {
            return false;
        }
        let channel = &mut self.state.channels[0];
        channel.expiries = channel.expiries.saturating_add(1);
        true
    }

    pub fn state(&self) -> PitState {
        self.state.clone()
    }

    pub fn restore(&mut self, state: &PitState) {
        self.state = state.clone();
    }

    /// The channel whose data port is `port` (0x40-0x42).
    fn channel_mut(&mut self, port: u16) -> &mut ChannelState {
        let index = usize::from(port.wrapping_sub(0x40)).min(2);
        &mut self.state.channels[index]
    }

    fn write_control(&mut self, value: u8, now_ns: u64) {
        let select = value >> 6;
        if select == 3 {
            self.read_back(value, now_ns);
            return;
        }
        let channel = &mut self.state.channels[usize::from(select)];
        match Access::from_bits(value >> 4) {
            None => channel.latch_count(now_ns),
            Some(access) => channel.program(access, (value >> 1) & 0x7, value & 1 != 0),
        }
    }

    /// The read-back command: bit 5 clear latches counts, bit 4 clear latches status, of the
    /// channels selected by bits 1-3.
    fn read_back(&mut self, value: u8, now_ns: u64) {
        for (index, channel) in self.state.channels.iter_mut().enumerate() {
            if value & (2 << index) == 0 {
                continue;
            }
            if value & 0x20 == 0 {
                channel.latch_count(now_ns);
            }
            if value & 0x10 == 0 {
                channel.latch_status(now_ns);
            }
        }
    }

    /// Port 0x61: bit 0 channel 2 gate, bit 1 speaker data, bit 4 refresh toggle, bit 5
    /// channel 2 output.
    fn read_port_b(&self, now_ns: u64) -> u8 {
        let channel2 = &self.state.channels[2];
        let refresh = (now_ns / REFRESH_PERIOD_NS) & 1 == 1;
        u8::from(channel2.gate)
            | u8::from(self.state.speaker_data) << 1
            | u8::from(refresh) << 4
            | u8::from(channel2.output(now_ns)) << 5
    }

    fn write_port_b(&mut self, value: u8, now_ns: u64) {
        self.state.speaker_data = value & 0x02 != 0;
        self.state.channels[2].set_gate(value & 0x01 != 0, now_ns);
    }
}

#[cfg(test)]
mod tests;
