//! The board: every device of the VM behind one port-I/O and MMIO dispatcher.

use crate::clock::Clock;
use crate::event::{Deadlines, EventSource, Landmark, WorldEvent};
use crate::pic::{PicPair, PicState};
use crate::pit::{Pit, PitState};
use crate::power::{Power, PowerAction};
use crate::serial::{Serial, SerialState};
use crate::virtio::{DiscardOutput, Output, OutputError, OutputStage, VirtioDevices, VirtioState};
use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// IRQ lines of the legacy devices.
pub const PIT_IRQ: u8 = 0;
pub const SERIAL_IRQ: u8 = 4;

/// What the vCPU loop must do after an I/O exit.
#[derive(Clone, Debug)]
pub enum IoOutcome {
    Continue,
    /// The guest powered off with this code.
    PowerOff(u32),
    /// The guest asked for a reset.
    Reset,
    /// The guest reported a fatal fault with this code.
    GuestPanic(u32),
    /// A backend failed in a way the VM cannot survive (a disk write that did not happen).
    Fatal(Arc<OutputError>),
}

/// All device state, for checkpoints, snapshots and the state digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardState {
    pub pic: PicState,
    pub pit: PitState,
    pub serial: SerialState,
    pub virtio: VirtioState,
}

/// The devices of one VM.
pub struct Board {
    pic: PicPair,
    pit: Pit,
    serial: Serial,
    clock: Clock,
    power: Power,
    virtio: VirtioDevices,
    /// Guest memory, which virtio devices read and write (only at exits).
    mem: GuestMemoryMmap,
    /// Where transmitted frames, disk writes and console bytes go.
    output: Box<dyn OutputStage + Send>,
    /// What the UART transmitted at the current exit, on its way to the output stage.
    console: ConsoleBuffer,
    /// Counts of accesses that no device claimed, for the exit statistics and debugging.
    pub unclaimed_accesses: u64,
}

impl Board {
    /// The board with these virtio device models and no backends: its outputs are dropped until
    /// [`Board::attach_output`] gives it a stage.
    pub fn new(mem: GuestMemoryMmap, virtio: VirtioDevices) -> Self {
        let console = ConsoleBuffer::default();
        Self {
            pic: PicPair::new(),
            pit: Pit::new(),
            serial: Serial::new(Box::new(console.clone())),
            clock: Clock,
            power: Power,
            virtio,
            mem,
            output: Box::new(DiscardOutput::default()),
            console,
            unclaimed_accesses: 0,
        }
    }

    /// Makes `output` the stage every later output goes to (at a landmark: between two exits),
    /// and returns the stage it replaces, with whatever that one still holds.
    pub fn attach_output(&mut self, output: Box<dyn OutputStage + Send>) -> Box<dyn OutputStage + Send> {
        std::mem::replace(&mut self.output, output)
    }

    /// The stage outputs go to now.
    pub fn output_mut(&mut self) -> &mut (dyn OutputStage + Send) {
        self.output.as_mut()
    }

    /// `virtio_mmio.device=...` words announcing the virtio devices on the kernel command line.
    pub fn virtio_cmdline(&self) -> String {
        self.virtio.cmdline_fragment()
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
                self.emit_console(at)
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
        } else if self.virtio.mmio_read(addr, data) {
            self.route_virtio_interrupts();
        } else {
            self.unclaimed_accesses += 1;
            tracing::trace!(addr, "read from unclaimed MMIO address");
            data.fill(0xff);
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8], at: Landmark, world: &mut dyn EventSource) -> IoOutcome {
        match self.virtio.mmio_write(addr, data, &self.mem, at, world, self.output.as_mut()) {
            Ok(true) => {
                self.route_virtio_interrupts();
                IoOutcome::Continue
            }
            Ok(false) => {
                self.unclaimed_accesses += 1;
                tracing::trace!(addr, "write to unclaimed or read-only MMIO address");
                IoOutcome::Continue
            }
            Err(error) => IoOutcome::Fatal(Arc::new(error)),
        }
    }

    /// Timers the devices have armed.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines { pit: self.pit.next_deadline() }
    }

    /// Applies something the world did. An error is a completion the VM cannot take (a corrupt
    /// log): the run stops with it.
    pub fn apply(&mut self, event: WorldEvent) -> Result<(), Arc<OutputError>> {
        match event {
            WorldEvent::PitExpired => {
                if self.pit.expire() {
                    self.pic.pulse_irq(PIT_IRQ);
                }
            }
            WorldEvent::NetFrame { device, frame } => {
                self.virtio.apply_frame(device, frame, &self.mem);
                self.route_virtio_interrupts();
            }
            WorldEvent::DiskDone { device, id, status, data } => {
                let applied = self.virtio.apply_disk_done(device, id, status, &data, &self.mem);
                self.route_virtio_interrupts();
                applied.map_err(Arc::new)?;
            }
        }
        Ok(())
    }

    /// Issues every pending disk request again through the current output stage: call it right
    /// after attaching new backends (a restore, a backup going live).
    pub fn resubmit_disk_requests(&mut self) -> Result<(), Arc<OutputError>> {
        self.virtio.resubmit_disk_requests(&self.mem, self.output.as_mut()).map_err(Arc::new)
    }

    /// Disk requests in flight (taken from the guest, not completed).
    pub fn pending_disk_requests(&self) -> usize {
        self.virtio.pending_disk_requests()
    }

    /// The disk write or flush that failed, once one has: the VM cannot go on.
    pub fn output_failure(&self) -> Option<Arc<OutputError>> {
        self.output.failure()
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
        BoardState {
            pic: self.pic.state(),
            pit: self.pit.state(),
            serial: self.serial.state(),
            virtio: self.virtio.state(),
        }
    }

    /// Puts device state back; a state that does not fit this board's devices is refused.
    pub fn restore(&mut self, state: &BoardState) -> Result<(), String> {
        self.virtio.restore(&state.virtio).map_err(|e| e.to_string())?;
        self.pic.restore(&state.pic);
        self.pit.restore(&state.pit);
        self.serial.restore(&state.serial);
        Ok(())
    }

    /// Hands what the UART transmitted at this exit to the output stage.
    fn emit_console(&mut self, at: Landmark) -> IoOutcome {
        let bytes = self.console.take();
        if bytes.is_empty() {
            return IoOutcome::Continue;
        }
        match self.output.emit(at, Output::Console { bytes }) {
            Ok(()) => IoOutcome::Continue,
            Err(error) => IoOutcome::Fatal(Arc::new(error)),
        }
    }

    fn route_serial_interrupt(&mut self) {
        self.pic.set_irq(SERIAL_IRQ, self.serial.interrupt_line());
    }

    /// Virtio interrupts are level-triggered: the line follows the device's interrupt status.
    fn route_virtio_interrupts(&mut self) {
        for (irq, level) in self.virtio.interrupt_lines() {
            self.pic.set_irq(irq, level);
        }
    }
}

/// Where the UART's transmitted bytes wait until the board hands them to the output stage, at
/// the same exit.
#[derive(Clone, Default)]
struct ConsoleBuffer(Arc<Mutex<Vec<u8>>>);

impl ConsoleBuffer {
    fn take(&self) -> Vec<u8> {
        match self.0.lock() {
            Ok(mut bytes) => std::mem::take(&mut *bytes),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl std::io::Write for ConsoleBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut bytes) => bytes.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fill(data: &mut [u8], byte: u8) {
    data.fill(0);
    if let Some(first) = data.first_mut() {
        *first = byte;
    }
}
