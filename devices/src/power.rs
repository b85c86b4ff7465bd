//! The power device: power-off with an exit code, guest panic report, and reset.

/// Port: a write powers the VM off with the written value as exit code.
pub const POWER_OFF_PORT: u16 = 0xf4;
/// Port: a write reports a fatal guest fault with the written code.
pub const PANIC_PORT: u16 = 0xf5;
/// The PCI reset control register; writing 0x06 or 0x0e resets the machine.
pub const RESET_PORT: u16 = 0xcf9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Off(u32),
    Panic(u32),
    Reset,
}

pub struct Power;

impl Power {
    /// A guest write of `data` (1, 2 or 4 bytes, little-endian) to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PowerAction> {
        let mut bytes = [0u8; 4];
        let len = data.len().min(4);
        bytes[..len].copy_from_slice(&data[..len]);
        let value = u32::from_le_bytes(bytes);
        match port {
            POWER_OFF_PORT => Some(PowerAction::Off(value)),
            PANIC_PORT => Some(PowerAction::Panic(value)),
            RESET_PORT if value & 0x04 != 0 => Some(PowerAction::Reset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_carries_the_written_code() {
        assert_eq!(Power.write(POWER_OFF_PORT, &[3]), Some(PowerAction::Off(3)));
        assert_eq!(Power.write(POWER_OFF_PORT, &300u32.to_le_bytes()), Some(PowerAction::Off(300)));
    }

    #[test]
    fn reset_needs_the_reset_bit() {
        assert_eq!(Power.write(RESET_PORT, &[0x06]), Some(PowerAction::Reset));
        assert_eq!(Power.write(RESET_PORT, &[0x02]), None);
    }
}
