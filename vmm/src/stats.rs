//! Counts of what the vCPU loop did, printed at power-off.

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// All deterministic exits: io + mmio + hlt + irq-window.
    pub exits: u64,
    pub io: u64,
    pub mmio: u64,
    pub hlt: u64,
    /// Exits KVM took to tell us the guest can take an interrupt now.
    pub irq_window: u64,
    pub interrupts_injected: u64,
    /// Times the vCPU was kicked out because an interrupt waited too long.
    pub preemptions: u64,
    /// Snapshots saved at `--snapshot-at` (not printed: a run that asked for one and saved none
    /// says so itself).
    pub snapshots_saved: u64,
}

impl ExitStats {
    /// Counts one deterministic exit.
    pub fn count(&mut self, kind: crate::vcpu::ExitKind) {
        use crate::vcpu::ExitKind;
        self.exits += 1;
        match kind {
            ExitKind::PioIn | ExitKind::PioOut => self.io += 1,
            ExitKind::MmioRead | ExitKind::MmioWrite => self.mmio += 1,
            ExitKind::Hlt => self.hlt += 1,
            ExitKind::IrqWindow => self.irq_window += 1,
        }
    }

    /// Adds the counts of another stretch of the same run (a run continued in another world).
    pub fn add(&mut self, other: &ExitStats) {
        self.exits += other.exits;
        self.io += other.io;
        self.mmio += other.mmio;
        self.hlt += other.hlt;
        self.irq_window += other.irq_window;
        self.interrupts_injected += other.interrupts_injected;
        self.preemptions += other.preemptions;
        self.snapshots_saved += other.snapshots_saved;
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exits: {} (io {}, mmio {}, hlt {}, irq-window {}), interrupts injected: {}, preemptions: {}",
            self.exits, self.io, self.mmio, self.hlt, self.irq_window, self.interrupts_injected, self.preemptions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_off_line_has_the_documented_shape() {
        let stats = ExitStats {
            exits: 10,
            io: 7,
            mmio: 2,
            hlt: 1,
            interrupts_injected: 3,
            preemptions: 4,
            ..Default::default()
        };
        assert_eq!(
            stats.to_string(),
            "exits: 10 (io 7, mmio 2, hlt 1, irq-window 0), interrupts injected: 3, preemptions: 4"
        );
    }
}
