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

/// How many bytes from the start of an image tell what it is (a bzImage's "HdrS" ends at 0x206).
pub const HEAD_LEN: usize = 0x206;

/// Checks that an image starts like one ftvm can load, from its first [`HEAD_LEN`] bytes, so that
/// anything else is refused before the rest of it is read.
pub fn check_magic(head: &[u8]) -> Result<(), String> {
    if elf::has_magic(head) || bzimage::is_bzimage(head) {
        Ok(())
    } else {
        Err("not an ELF file (no \\x7fELF magic) nor a bzImage (no \"HdrS\" at 0x202)".into())
    }
}
