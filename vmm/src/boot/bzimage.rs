//! Loading a Linux bzImage by the x86 boot protocol, with an optional initrd.

use super::layout::KERNEL_MIN;
use super::LoadedKernel;
use crate::error::{Result, VmmError};
use devices::GuestMemoryMmap;
use linux_loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use std::io::Cursor;
use std::path::Path;
use vm_memory::{Bytes, GuestAddress};

/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;

/// Whether an image is a bzImage (the "HdrS" signature of the setup header at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS")
}

/// Loads the protected-mode part of a bzImage; returns the 64-bit entry and the setup header
/// the zero page needs.
pub fn load(mem: &GuestMemoryMmap, image: &[u8], name: &Path) -> Result<(LoadedKernel, setup_header)> {
    let fail = |reason: String| VmmError::Kernel { path: name.to_path_buf(), reason };
    let mut reader = Cursor::new(image);
    let loaded = BzImage::load(mem, None, &mut reader, Some(GuestAddress(KERNEL_MIN)))
        .map_err(|e| fail(format!("cannot load bzImage: {e}")))?;
    let header = loaded.setup_header.ok_or_else(|| fail("bzImage without a setup header".into()))?;
    let version = header.version;
    if version < 0x0206 {
        return Err(fail(format!("boot protocol {version:#x} is too old (need 2.06)")));
    }
    Ok((LoadedKernel { entry: loaded.kernel_load.0 + ENTRY_64_OFFSET, end: loaded.kernel_end }, header))
}

/// Puts the initrd at the highest page-aligned address below `mem_top` that the kernel allows;
/// returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_top: u64,
    kernel_end: u64,
    header: &setup_header,
    initrd: &[u8],
    path: &Path,
) -> Result<(u64, u64)> {
    let fail = |reason: String| VmmError::Initrd { path: path.to_path_buf(), reason };
    let size = initrd.len() as u64;
    let limit = u64::from(header.initrd_addr_max).min(mem_top.saturating_sub(1));
    let addr = limit.saturating_sub(size) & !0xfff;
    if addr <= kernel_end || addr + size > mem_top {
        return Err(fail(format!("{size} bytes do not fit in guest memory beside the kernel")));
    }
    mem.write_slice(initrd, GuestAddress(addr)).map_err(|e| fail(e.to_string()))?;
    Ok((addr, size))
}
