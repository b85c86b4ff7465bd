//! Loading an ELF kernel (our guest, or any 64-bit ELF entered directly in 64-bit mode).

use super::layout::KERNEL_MIN;
use super::LoadedKernel;
use crate::error::{Result, VmmError};
use devices::GuestMemoryMmap;
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use std::path::Path;
use vm_memory::GuestAddress;

/// Whether `image` starts with the ELF magic.
pub fn has_magic(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// Loads an ELF image (its bytes) into guest memory. `name` appears in errors.
pub fn load(mem: &GuestMemoryMmap, image: &[u8], name: &Path) -> Result<LoadedKernel> {
    let fail = |reason: String| VmmError::Kernel { path: name.to_path_buf(), reason };
    if !has_magic(image) {
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

/// A minimal ELF64 executable: one read+execute PT_LOAD segment holding `code`, loaded and
/// entered at `entry`. For tests, benchmarks and host probes that need a kernel of a few bytes.
pub fn minimal_image(entry: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let offset = u64::from(EHDR + PHDR);
    let mut elf = Vec::with_capacity(offset as usize + code.len());
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, little-endian, v1
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // version
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // program headers follow
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [EHDR, PHDR, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [offset, entry, entry, code.len() as u64, code.len() as u64, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}
