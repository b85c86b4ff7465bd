//! The ftvm guest: a tiny ring-0 part (`boot`) and workloads in ring-3 Rust.
//! See docs/guest-abi.md for the machine and ../../src/lib.rs for the workloads.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod bootinfo;
mod clock;
mod cmdline;
mod digest;
mod heap;
mod interrupts;
mod mem;
mod pic;
mod pit;
mod port;
mod power;
#[macro_use]
mod serial;
mod virtio;
mod workloads;

use bootinfo::BootInfo;
use cmdline::CmdLine;

/// Ring-3 entry, called by `boot` with IF=0 and `.bss` zeroed.
extern "C" fn guest_main(zero_page: *const u8) -> ! {
    interrupts::init();
    pic::init();
    interrupts::enable();
    // SAFETY: the VMM passes the zero page in RSI (guest ABI); nothing writes it afterwards.
    let boot = unsafe { BootInfo::new(zero_page) };
    let cmdline = CmdLine::new(boot.cmdline());
    let code = workloads::run(&boot, cmdline);
    interrupts::disable();
    power::off(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    interrupts::disable();
    let line = info.location().map_or(0, |l| l.line());
    match info.location() {
        Some(l) => println!("guest panic at {}:{}: {}", l.file(), l.line(), info.message()),
        None => println!("guest panic: {}", info.message()),
    }
    power::panic_report(power::RUST_PANIC | (line << 8))
}
