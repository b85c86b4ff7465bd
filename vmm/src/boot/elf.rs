//! Loading an ELF kernel (our guest, or any 64-bit ELF entered directly in 64-bit mode).

use super::layout::KERNEL_MIN;
use super::LoadedKernel;
use crate::error::{Result, VmmError};
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use std::path::Path;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Loads an ELF image (its bytes) into guest memory. `name` appears in errors.
pub fn load(mem: &GuestMemoryMmap, image: &[u8], name: &Path) -> Result<LoadedKernel> {
    let fail = |reason: String| VmmError::Kernel { path: name.to_path_buf(), reason };
    if image.len() < 4 || &image[..4] != b"\x7fELF" {
        return Err(fail("not an ELF file (no \\x7fELF magic)".into()));
    }
    let mut reader = Cursor::new(image);
    let loaded = Elf::load(mem, None, &mut reader, Some(GuestAddress(KERNEL_MIN))).map_err(|e| {
        fail(match e {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage) => {
                "a segment does not fit in guest memory (linked outside RAM, or RAM too small)".into()
            }
            linux_loader::loader::Error::Elf(
                linux_loader::loader::elf::Error::InvalidProgramHeaderAddress
                | linux_loader::loader::elf::Error::InvalidEntryAddress,
            ) => {
                format!("a segment is linked below {KERNEL_MIN:#x}, where ftvm keeps its boot structures")
            }
            other => format!("cannot load: {other}"),
        })
    })?;
    let entry = loaded.kernel_load.0;
    Ok(LoadedKernel { entry, end: loaded.kernel_end })
}
