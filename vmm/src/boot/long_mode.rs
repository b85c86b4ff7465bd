//! The CPU state for entering a kernel directly in 64-bit mode: identity page tables, a boot GDT,
//! and the segment and control registers that go with them.

use super::layout::{BOOT_GDT, BOOT_STACK_TOP, CMDLINE, PAGE_DIRECTORIES, PAGE_DIRECTORY_COUNT, PDPT, PML4, ZERO_PAGE};
use crate::error::{kvm, Result, VmmError};
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NX: u64 = 1 << 11;

/// Boot GDT entries: null, 64-bit code, data (selectors 0x08 and 0x10).
const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

/// Writes page tables identity-mapping 0..4 GiB with 2 MiB pages (user-accessible, so a
/// ring-3 guest can use them as they are) and the boot GDT.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let flags = PRESENT | WRITABLE | USER;
    put(mem, PML4, PDPT | flags)?;
    for dir in 0..PAGE_DIRECTORY_COUNT {
        let table = PAGE_DIRECTORIES + dir * 0x1000;
        put(mem, PDPT + dir * 8, table | flags)?;
        for entry in 0..512u64 {
            let addr = (dir << 30) | (entry << 21);
            put(mem, table + entry * 8, addr | flags | HUGE)?;
        }
    }
    for (i, descriptor) in GDT.iter().enumerate() {
        put(mem, BOOT_GDT + i as u64 * 8, *descriptor)?;
    }
    Ok(())
}

fn put(mem: &GuestMemoryMmap, addr: u64, value: u64) -> Result<()> {
    mem.write_obj(value, GuestAddress(addr)).map_err(|e| VmmError::GuestMemory { addr, reason: e.to_string() })
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// Puts the vCPU in 64-bit mode at CPL 0 at `entry`, with RSI (and RDI for our guest) pointing
/// at the zero page and the command line.
pub fn enter_long_mode(vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("read special registers"))?;
    let code = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.cr3 = PML4;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NX;
    vcpu.set_sregs(&sregs).map_err(kvm("enter 64-bit mode"))?;

    let regs =
        kvm_regs { rip: entry, rflags: 0x2, rsp: BOOT_STACK_TOP, rsi: ZERO_PAGE, rdi: CMDLINE, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm("set entry registers"))?;
    Ok(())
}
