//! The clock device: one MMIO page the guest reads for monotonic and wall-clock time.
//!
//! A read is the only way our guests learn the time, and every value goes through the event
//! source so that it is recorded on the primary and replayed on the backup.

use crate::event::{ClockId, EventSource, Landmark};

/// Guest-physical base of the clock page.
pub const CLOCK_MMIO_BASE: u64 = 0xd000_0000;
pub const CLOCK_MMIO_SIZE: u64 = 0x1000;
/// Offsets of the 8-byte registers.
pub const MONOTONIC_NS: u64 = 0;
pub const WALL_NS: u64 = 8;

pub struct Clock;

impl Clock {
    /// The offset of `addr` in the clock page, if it is in it.
    pub fn offset_of(addr: u64) -> Option<u64> {
        addr.checked_sub(CLOCK_MMIO_BASE).filter(|offset| *offset < CLOCK_MMIO_SIZE)
    }

    /// A read of `data.len()` bytes at `offset`. Partial reads of a register see its low bytes
    /// (after shifting by the offset into the register); undefined offsets read as zero.
    pub fn read(&mut self, offset: u64, data: &mut [u8], at: Landmark, world: &mut dyn EventSource) {
        let register = offset & !7;
        let value = match register {
            MONOTONIC_NS => world.read_clock(at, ClockId::Monotonic),
            WALL_NS => world.read_clock(at, ClockId::Wall),
            _ => 0,
        };
        let bytes = (value >> ((offset & 7) * 8)).to_le_bytes();
        for (dst, src) in data.iter_mut().zip(bytes.iter().chain(std::iter::repeat(&0))) {
            *dst = *src;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Deadlines, WorldEvent};

    struct FixedWorld;
    impl EventSource for FixedWorld {
        fn read_clock(&mut self, _at: Landmark, clock: ClockId) -> u64 {
            match clock {
                ClockId::Monotonic => 0x1122_3344_5566_7788,
                ClockId::Wall => 42,
            }
        }
        fn poll(&mut self, _at: Landmark, _armed: Deadlines) -> Vec<WorldEvent> {
            Vec::new()
        }
        fn wait_idle(&mut self, _at: Landmark, _armed: Deadlines) {}
        fn time_until(&self, _deadline_ns: u64) -> Option<std::time::Duration> {
            None
        }
    }

    #[test]
    fn eight_byte_reads_return_each_clock() {
        let mut buf = [0u8; 8];
        Clock.read(MONOTONIC_NS, &mut buf, Landmark::Exit(1), &mut FixedWorld);
        assert_eq!(u64::from_le_bytes(buf), 0x1122_3344_5566_7788);
        Clock.read(WALL_NS, &mut buf, Landmark::Exit(2), &mut FixedWorld);
        assert_eq!(u64::from_le_bytes(buf), 42);
    }

    #[test]
    fn four_byte_reads_see_the_high_half_at_offset_four() {
        let mut buf = [0u8; 4];
        Clock.read(MONOTONIC_NS + 4, &mut buf, Landmark::Exit(1), &mut FixedWorld);
        assert_eq!(u32::from_le_bytes(buf), 0x1122_3344);
    }

    #[test]
    fn addresses_outside_the_page_are_not_the_clock() {
        assert_eq!(Clock::offset_of(CLOCK_MMIO_BASE - 1), None);
        assert_eq!(Clock::offset_of(CLOCK_MMIO_BASE + CLOCK_MMIO_SIZE), None);
        assert_eq!(Clock::offset_of(CLOCK_MMIO_BASE + 8), Some(8));
    }
}
