//! Boot: putting a kernel into guest memory and the vCPU into 64-bit mode at its entry point.
//!
//! The layout is the contract in `docs/guest-abi.md`; both our ELF guest and a Linux bzImage get
//! the same page tables, GDT, zero page and command line.

pub mod bzimage;
pub mod elf;
pub mod layout;
pub mod long_mode;

/// Where the kernel was put and where to start it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: u64,
    /// The first byte after the kernel image, for placing an initrd.
    pub end: u64,
}
