//! The 16550A UART on COM1 (0x3f8, IRQ 4), on vm-superio, transmit only.
//!
//! vm-superio does the register emulation; this wrapper adds what ftvm needs around it:
//! - the interrupt output as a *level* ([`Serial::interrupt_line`]) that the board feeds to the
//!   edge-triggered PIC after every port access, derived from the UART registers alone so that
//!   it is a pure function of the serialised state;
//! - a serde-serialisable [`SerialState`] mirroring vm-superio's, for checkpoints and digests;
//! - output errors that never reach the guest (a 16550 cannot report a broken host pipe) and
//!   are logged once.
//!
//! There is no input: received bytes would be world events, which do not exist for the UART yet.

use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::io::Write;
use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::Trigger;

/// vm-superio's receive FIFO size (private in the crate); `from_state` rejects more.
const FIFO_SIZE: usize = 64;

/// IER bit 0: received data available interrupt enabled.
const IER_RDA: u8 = 0x01;
/// IER bit 1: transmitter holding register empty interrupt enabled.
const IER_THRE: u8 = 0x02;
/// vm-superio keeps IIR as a set of pending-interrupt bits: THR empty.
const IIR_THRE: u8 = 0x02;
/// vm-superio IIR pending-interrupt bit: received data available.
const IIR_RDA: u8 = 0x04;

/// The trigger vm-superio calls when it raises an interrupt.
///
/// It deliberately records nothing: a trigger only reports assertions, never the de-assertion
/// that follows an IIR read or an IER write, so the level is derived from IIR and IER instead
/// (see [`Serial::interrupt_line`]). Hidden trigger state would also escape `state()`.
#[derive(Clone, Copy, Debug, Default)]
struct IrqLine;

impl Trigger for IrqLine {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

type Uart = vm_superio::Serial<IrqLine, NoEvents, Box<dyn Write + Send>>;

/// The complete UART state: every register vm-superio keeps, and its receive FIFO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl Default for SerialState {
    /// The UART at reset, as vm-superio defines it.
    fn default() -> Self {
        Self::from(&vm_superio::SerialState::default())
    }
}

impl From<&vm_superio::SerialState> for SerialState {
    fn from(state: &vm_superio::SerialState) -> Self {
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        }
    }
}

impl From<&SerialState> for vm_superio::SerialState {
    /// Truncates the receive FIFO to what vm-superio accepts, so a restore cannot fail.
    fn from(state: &SerialState) -> Self {
        let fifo_len = state.in_buffer.len().min(FIFO_SIZE);
        Self {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer[..fifo_len].to_vec(),
        }
    }
}

/// COM1: vm-superio's UART writing to the host output given at construction.
pub struct Serial {
    uart: Uart,
    /// A write to the host output failed and was logged; later failures are silent. Host-side
    /// bookkeeping, not device state: it is not part of [`SerialState`].
    output_error_logged: bool,
}

impl Serial {
    /// A UART in its reset state whose transmitted bytes go to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { uart: Uart::new(IrqLine, out), output_error_logged: false }
    }

    /// A read of register `offset` (0-7; others read as 0).
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A write of register `offset` (0-7; others are ignored).
    pub fn write(&mut self, offset: u8, value: u8) {
        match self.uart.write(offset, value) {
            Ok(()) => {}
            // The byte is lost, as on a line nobody listens to; the guest still sees the
            // transmitter empty (vm-superio raised THRE before returning the error).
            Err(SerialError::IOError(error)) => self.log_output_error(&error),
            Err(SerialError::FullFifo) => {}
            Err(SerialError::Trigger(never)) => match never {},
        }
    }

    /// The level of the UART's interrupt output: an interrupt is pending in IIR and enabled in
    /// IER (IIR is read-to-clear, which is how the guest lowers the line for THRE).
    ///
    /// Not gated by MCR OUT2 (some PCs do that on the board), like QEMU and Firecracker, so a
    /// guest that leaves OUT2 clear still gets its interrupts.
    pub fn interrupt_line(&self) -> bool {
        let state = self.uart.state();
        let iir = state.interrupt_identification;
        let ier = state.interrupt_enable;
        (iir & IIR_THRE != 0 && ier & IER_THRE != 0) || (iir & IIR_RDA != 0 && ier & IER_RDA != 0)
    }

    pub fn state(&self) -> SerialState {
        SerialState::from(&self.uart.state())
    }

    /// Replaces the UART state; the output keeps going to the same writer.
    pub fn restore(&mut self, state: &SerialState) {
        let placeholder = Uart::new(IrqLine, Box::new(std::io::sink()));
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        match Uart::from_state(&state.into(), IrqLine, NoEvents, out) {
            Ok(uart) => self.uart = uart,
            // Unreachable: the FIFO is truncated to fit and the trigger cannot fail. Keep the
            // reset UART (writing to a sink) rather than panic.
            Err(error) => tracing::error!(%error, "restoring the UART failed; output is lost"),
        }
    }

    fn log_output_error(&mut self, error: &std::io::Error) {
        if !self.output_error_logged {
            self.output_error_logged = true;
            tracing::warn!(%error, "serial output failed; bytes are dropped from now on silently");
        }
    }
}

/// Two UARTs are equal when their device state is; where their output goes does not matter.
impl PartialEq for Serial {
    fn eq(&self, other: &Self) -> bool {
        self.state() == other.state()
    }
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").field("state", &self.state()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const THR: u8 = 0;
    const IER: u8 = 1;
    const IIR: u8 = 2;
    const LCR: u8 = 3;
    const LSR: u8 = 5;

    /// A writer the test can look into after handing it to the UART.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().expect("not poisoned").clone()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    fn capturing() -> (Serial, Capture) {
        let capture = Capture::default();
        (Serial::new(Box::new(capture.clone())), capture)
    }

    #[test]
    fn bytes_written_to_thr_come_out() {
        let (mut serial, out) = capturing();
        for &byte in b"hello\n" {
            serial.write(THR, byte);
        }
        assert_eq!(out.bytes(), b"hello\n");
    }

    #[test]
    fn lsr_says_transmitter_empty() {
        let (mut serial, _) = capturing();
        serial.write(THR, b'x');
        assert_eq!(serial.read(LSR) & 0x60, 0x60);
    }

    #[test]
    fn divisor_latch_programming_does_not_output_bytes() {
        let (mut serial, out) = capturing();
        serial.write(LCR, 0x80);
        serial.write(0, 0x01);
        serial.write(1, 0x00);
        assert_eq!((serial.read(0), serial.read(1)), (0x01, 0x00));
        serial.write(LCR, 0x03);
        assert!(out.bytes().is_empty());
        assert_eq!(serial.state().baud_divisor_low, 0x01);
        serial.write(THR, b'a');
        assert_eq!(out.bytes(), b"a");
    }

    #[test]
    fn interrupt_line_follows_thre() {
        let (mut serial, _) = capturing();
        assert!(!serial.interrupt_line());
        serial.write(THR, b'a');
        assert!(!serial.interrupt_line(), "THRE interrupt not enabled");
        serial.write(IER, IER_THRE);
        assert!(serial.interrupt_line(), "enabling THRE with an empty THR interrupts");
        assert_eq!(serial.read(IIR) & 0x0f, IIR_THRE);
        assert!(!serial.interrupt_line(), "reading IIR acknowledges THRE");
        serial.write(THR, b'b');
        assert!(serial.interrupt_line(), "the next byte leaves THR empty again");
        serial.write(IER, 0);
        assert!(!serial.interrupt_line(), "disabling the interrupt lowers the line");
    }

    #[test]
    fn output_errors_do_not_panic() {
        let mut serial = Serial::new(Box::new(Broken));
        serial.write(IER, IER_THRE);
        serial.write(THR, b'a');
        serial.write(THR, b'b');
        assert!(serial.output_error_logged);
        assert_eq!(serial.read(LSR) & 0x60, 0x60);
        assert!(serial.interrupt_line());
    }

    #[test]
    fn any_register_access_is_harmless() {
        let (mut serial, _) = capturing();
        for offset in 0..=u8::MAX {
            for value in [0x00, 0x5a, 0x80, 0xff] {
                serial.write(offset, value);
                let _ = serial.read(offset);
            }
        }
    }

    #[test]
    fn state_round_trip_behaves_identically() {
        let (mut serial, out) = capturing();
        serial.write(LCR, 0x83);
        serial.write(0, 0x0c);
        serial.write(LCR, 0x03);
        serial.write(7, 0x42);
        serial.write(IER, IER_THRE);
        let bytes = postcard::to_allocvec(&serial.state()).expect("serialises");
        let state: SerialState = postcard::from_bytes(&bytes).expect("deserialises");

        let (mut copy, copy_out) = capturing();
        copy.restore(&state);
        assert_eq!(copy, serial);
        assert_eq!(copy.interrupt_line(), serial.interrupt_line());
        assert_eq!(copy.read(IIR), serial.read(IIR));
        assert_eq!(copy.read(7), 0x42);

        // Restoring keeps the writer.
        serial.restore(&state);
        serial.write(THR, b'z');
        copy.write(THR, b'z');
        assert_eq!(out.bytes(), b"z");
        assert_eq!(copy_out.bytes(), b"z");
        assert_eq!(copy, serial);
    }

    #[test]
    fn restore_tolerates_an_oversized_fifo() {
        let (mut serial, _) = capturing();
        let state = SerialState { in_buffer: vec![0; 1000], ..SerialState::default() };
        serial.restore(&state);
        assert_eq!(serial.state().in_buffer.len(), FIFO_SIZE);
    }

    #[test]
    fn default_state_is_the_reset_uart() {
        let (serial, _) = capturing();
        assert_eq!(serial.state(), SerialState::default());
    }
}
