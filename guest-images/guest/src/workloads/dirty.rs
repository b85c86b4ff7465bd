//! `dirty [MIB] [PAGES] [SECONDS]`: a guest that keeps writing its memory, for measuring live
//! joins (issue 13). It fills MIB MiB of the RAM after its image (every page non-zero), prints
//! `dirty: N MiB filled`, then for SECONDS seconds writes PAGES pages at each tick of a 1 kHz
//! timer, walking through the region, so that about PAGES * 4 KiB per ms are dirtied. The digest
//! covers the region's final content, which depends only on the arguments and the tick count.

use crate::bootinfo::{BootInfo, E820_RAM};
use crate::digest::Digest;
use crate::interrupts::{self, count};
use crate::{pic, pit};

extern "C" {
    static __image_end: u8;
}

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
const HZ: u32 = 1000;

pub fn run(boot: &BootInfo, mib: u64, pages_per_tick: u64, seconds: u64) -> Result<(), &'static str> {
    // Only the address of the linker symbol is taken.
    let start = (core::ptr::addr_of!(__image_end) as u64).next_multiple_of(PAGE as u64);
    let region = boot
        .e820()
        .find(|e| e.kind == E820_RAM && e.addr <= start && start < e.addr + e.size)
        .ok_or("no e820 RAM region holds the image end")?;
    let end = (region.addr + region.size).min(0x1_0000_0000);
    let bytes = mib.checked_mul(1 << 20).filter(|b| start + b <= end).ok_or("MIB does not fit in RAM")?;
    let pages = (bytes as usize) / PAGE;
    if pages == 0 {
        return Err("MIB must be at least 1");
    }
    let base = start as *mut u64;
    let write = |page: usize, value: u64| {
        // SAFETY: `page` < `pages`, and the RAM from the image end for `bytes` bytes is unused
        // by anything else (the guest ABI keeps the VMM's structures below 1 MiB).
        unsafe { core::ptr::write_volatile(base.add(page * WORDS), value) };
    };
    for page in 0..pages {
        for word in 0..WORDS {
            // SAFETY: as in `write`.
            unsafe { core::ptr::write_volatile(base.add(page * WORDS + word), (page * WORDS + word) as u64 | 1) };
        }
    }
    println!("dirty: {} MiB filled, {} pages a tick for {} s", mib, pages_per_tick, seconds);

    interrupts::disable();
    let first = count(0);
    pit::start_periodic(HZ);
    pic::unmask(0);
    let ticks = seconds * u64::from(HZ);
    let mut cursor = 0usize;
    let mut seen = 0;
    while seen < ticks {
        interrupts::wait();
        let now = count(0) - first;
        while seen < now && seen < ticks {
            seen += 1;
            for _ in 0..pages_per_tick {
                write(cursor, seen);
                cursor = (cursor + 1) % pages;
            }
        }
    }
    pic::mask(0);
    interrupts::enable();

    let mut digest = Digest::new();
    for page in 0..pages {
        // SAFETY: as in `write`.
        digest.u64(unsafe { core::ptr::read_volatile(base.add(page * WORDS)) });
    }
    println!("dirty: {} ticks", seen);
    digest.print();
    Ok(())
}
