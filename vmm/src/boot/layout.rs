//! The fixed guest-physical layout below 1 MiB (see docs/guest-abi.md).

use crate::error::{Result, VmmError};
use devices::GuestMemoryMmap;
use linux_loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

pub const BOOT_GDT: u64 = 0x500;
pub const ZERO_PAGE: u64 = 0x7000;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PAGE_DIRECTORIES: u64 = 0xb000;
/// Four page directories map 4 GiB with 2 MiB pages.
pub const PAGE_DIRECTORY_COUNT: u64 = 4;
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// Kernels load at or above 1 MiB; below is ours.
pub const KERNEL_MIN: u64 = 0x10_0000;
/// The boot stack for kernels that want one at entry (Linux sets its own).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Writes the command line and the zero page (boot_params) that both guests read.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    setup_header: Option<linux_loader::bootparam::setup_header>,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(VmmError::Cmdline(format!(
            "{} bytes is too long (at most {} bytes)",
            cmdline.len(),
            CMDLINE_MAX - 1
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(VmmError::Cmdline("contains a NUL byte".into()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write(mem, CMDLINE, &bytes)?;

    let mut params = boot_params::default();
    if let Some(header) = setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = (CMDLINE_MAX - 1) as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let e820 = [
        (0, 0x9_fc00, E820_RAM),
        (0x9_fc00, 0x10_0000 - 0x9_fc00, E820_RESERVED),
        (0x10_0000, mem_size - 0x10_0000, E820_RAM),
    ];
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, r#type: *type_ };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| VmmError::GuestMemory { addr: ZERO_PAGE, reason: e.to_string() })
}

pub(crate) fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr)).map_err(|e| VmmError::GuestMemory { addr, reason: e.to_string() })
}
