//! `hostile`: a driver that breaks the virtio rules on purpose, on every virtio-net and
//! virtio-blk device it finds, to show that the VMM survives and the device goes to
//! needs-reset (DEVICE_NEEDS_RESET, status bit 0x40) and stops serving until it is reset.
//!
//! Each case starts from a reset and a proper feature negotiation (VERSION_1 only), sets up one
//! queue of 8 entries on rings of its own, then does one bad thing: a descriptor loop, a buffer
//! outside RAM or whose address wraps around, a length of almost 4 GiB, a head or a `next`
//! outside the table, an available index too far ahead, a notification of a queue that is not
//! ready or does not exist, a used ring outside RAM. It then reads Status and InterruptStatus,
//! posts a valid chain and notifies again (the device must leave it untouched), and prints
//! `hostile: <device> <case>: needs-reset (status 0x.., config interrupt yes|no), valid chain
//! ignored`. A write to the read-only configuration space is the one harmless case: it must
//! change nothing and not put the device in needs-reset. Last, each device is reset and set up
//! by the real driver, which must work again (`hostile: <device> works again after a reset`).
//!
//! `rounds=N` (default 1) runs every case N times (the lines of the first round only are printed,
//! then anything unexpected), `pause=MS` (default 0) halts that many 1 ms PIT ticks between
//! rounds: a run long enough for a backup to join a protected VM and replay rounds, with room
//! for it to keep up.
//! Output ends with `hostile: <n> cases on <m> devices, <k> needs-reset, <u> unexpected` and the
//! digest (over every case's name, status and used index, so a replay prints the same). Exit
//! code 0, 1 if something was unexpected, 2 without a virtio device.

use crate::bootinfo::BootInfo;
use crate::cmdline::parse_u64;
use crate::digest::Digest;
use crate::virtio::blk::{Blk, SECTOR};
use crate::virtio::mmio::{Mmio, F_VERSION_1, S_NEEDS_RESET};
use crate::virtio::net::Net;
use crate::virtio::queue::{dma_buffer, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{self, ID_BLOCK, ID_NET};
use crate::{interrupts, pic, pit};
use core::sync::atomic::{fence, Ordering};

/// Power-off code when the device did not react as it must.
pub const EXIT_UNEXPECTED: u32 = 1;

const QSIZE: u16 = 8;
/// Ring offsets in the rings' page (descriptor table, available ring, used ring).
const DESC: u64 = 0;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x800;
/// Far above any RAM ftvm gives a guest.
const OUTSIDE_RAM: u64 = 1 << 40;
const INT_CONFIG_CHANGE: u32 = 2;
const CONFIG: usize = 0x100;
const BLK_T_IN: u32 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Loop,
    OutsideRam,
    AddressWraps,
    HugeLength,
    HeadOutOfRange,
    NextOutOfRange,
    AvailAhead,
    NotReady,
    NoSuchQueue,
    UsedRingOutsideRam,
    ConfigWrite,
}

const CASES: [Case; 11] = [
    Case::Loop,
    Case::OutsideRam,
    Case::AddressWraps,
    Case::HugeLength,
    Case::HeadOutOfRange,
    Case::NextOutOfRange,
    Case::AvailAhead,
    Case::NotReady,
    Case::NoSuchQueue,
    Case::UsedRingOutsideRam,
    Case::ConfigWrite,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Loop => "descriptor-loop",
            Case::OutsideRam => "buffer-outside-ram",
            Case::AddressWraps => "buffer-address-wraps",
            Case::HugeLength => "huge-length",
            Case::HeadOutOfRange => "head-out-of-range",
            Case::NextOutOfRange => "next-out-of-range",
            Case::AvailAhead => "avail-index-ahead",
            Case::NotReady => "notify-queue-not-ready",
            Case::NoSuchQueue => "notify-queue-missing",
            Case::UsedRingOutsideRam => "used-ring-outside-ram",
            Case::ConfigWrite => "config-space-write",
        }
    }
}

/// What a device needs for the cases: which queue gets the chains, which one is left unready,
/// and what a chain that is valid for it looks like.
#[derive(Clone, Copy)]
struct Target {
    mmio: Mmio,
    irq: u8,
    name: &'static str,
    /// The queue the chains go to (net: transmit; blk: its only queue).
    queue: u16,
    /// A queue of the device that the cases never make ready.
    unready: u16,
    blk: bool,
}

/// Memory of the raw rings and buffers: identity-mapped, so pointers are guest-physical.
struct Area {
    rings: *mut u8,
    data: *mut u8,
}

impl Area {
    fn new() -> Area {
        Area { rings: dma_buffer(4096), data: dma_buffer(4096) }
    }

    fn rings_addr(&self) -> u64 {
        self.rings as u64
    }

    fn data_addr(&self) -> u64 {
        self.data as u64
    }

    fn clear(&self) {
        // SAFETY: both areas are 4 KiB of DMA memory only this workload uses.
        unsafe {
            core::ptr::write_bytes(self.rings, 0, 4096);
            core::ptr::write_bytes(self.data, 0, 4096);
        }
    }

    fn put_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = (DESC + 16 * (index % QSIZE) as u64) as usize;
        // SAFETY: entry `index % QSIZE` of the 8-entry table at the start of the rings' page.
        unsafe {
            let d = self.rings.add(at);
            d.cast::<u64>().write_volatile(addr);
            d.add(8).cast::<u32>().write_volatile(len);
            d.add(12).cast::<u16>().write_volatile(flags);
            d.add(14).cast::<u16>().write_volatile(next);
        }
    }

    /// Puts `head` in slot `slot` of the available ring and sets its index to `idx`.
    fn offer(&self, slot: u16, head: u16, idx: u16) {
        // SAFETY: the available ring (flags, idx, 8 entries) lies at AVAIL in the rings' page.
        unsafe {
            let ring = self.rings.add(AVAIL as usize).cast::<u16>();
            ring.add(2 + (slot % QSIZE) as usize).write_volatile(head);
            fence(Ordering::SeqCst);
            ring.add(1).write_volatile(idx);
        }
        fence(Ordering::SeqCst);
    }

    fn used_idx(&self) -> u16 {
        // SAFETY: used.idx is the u16 at offset 2 of the used ring in the rings' page.
        unsafe { self.rings.add(USED as usize + 2).cast::<u16>().read_volatile() }
    }
}

pub fn run(boot: &BootInfo, cmdline: crate::cmdline::CmdLine) -> Result<u32, &'static str> {
    crate::heap::init_after_image(boot)?;
    // Waits for completions (the recovery read) run with IF=0 and halt through the gate.
    interrupts::disable();
    let mut targets = [None, None];
    for (announced, mmio, id) in virtio::discover(&cmdline) {
        let (slot, target) = match id {
            ID_NET => (0, Target { mmio, irq: announced.irq, name: "virtio-net", queue: 1, unready: 0, blk: false }),
            ID_BLOCK => (1, Target { mmio, irq: announced.irq, name: "virtio-blk", queue: 0, unready: 0, blk: true }),
            _ => continue,
        };
        if targets[slot].is_none() {
            targets[slot] = Some(target);
        }
    }
    if targets.iter().all(Option::is_none) {
        return Err("no virtio-net or virtio-blk device (ftvm run --net tap=NAME --disk PATH)");
    }
    let rounds = match cmdline.params("rounds").next() {
        None => 1,
        Some(v) => parse_u64(v).filter(|&n| n > 0).ok_or("bad rounds=N")?,
    };
    let pause = match cmdline.params("pause").next() {
        None => 0,
        Some(v) => parse_u64(v).ok_or("bad pause=MS")?,
    };
    if pause > 0 {
        pit::start_periodic(TICK_HZ);
        pic::unmask(0);
    }
    let area = Area::new();
    let mut digest = Digest::new();
    let devices = targets.iter().flatten().count();
    let (mut cases, mut needs_reset, mut unexpected) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        // Every case is printed in the first round only: later rounds (a protected VM being
        // joined by its backup meanwhile) print only what was unexpected.
        let shown = round == 0;
        if round > 0 {
            wait_ticks(pause);
        }
        for target in targets.iter().flatten() {
            for case in CASES {
                let outcome = attempt(target, &area, case)?;
                cases += 1;
                needs_reset += u64::from(outcome.needs_reset);
                digest.bytes(target.name.as_bytes()).bytes(case.name().as_bytes());
                digest.u64(outcome.status as u64).u64(outcome.used as u64);
                if shown {
                    report(target, case, &outcome);
                }
                if !outcome.expected(case) {
                    unexpected += 1;
                    println!("hostile: UNEXPECTED: {} {} in round {}", target.name, case.name(), round + 1);
                }
            }
            // The real drivers allocate rings that are never freed: once, at the end.
            if round + 1 == rounds {
                match recover(target) {
                    Ok(()) => println!("hostile: {} works again after a reset", target.name),
                    Err(e) => {
                        unexpected += 1;
                        println!("hostile: UNEXPECTED: {} does not work after a reset: {}", target.name, e);
                    }
                }
            }
        }
    }
    pic::mask(0);
    interrupts::enable();
    println!("hostile: {} cases on {} devices, {} needs-reset, {} unexpected", cases, devices, needs_reset, unexpected);
    digest.u64(cases).u64(needs_reset).u64(unexpected).print();
    Ok(if unexpected == 0 { 0 } else { EXIT_UNEXPECTED })
}

/// The PIT's rate while pausing between rounds: a tick is a millisecond.
const TICK_HZ: u32 = 1000;

/// Halts until `ticks` timer interrupts have come (IF=0: each wait ends after one interrupt).
fn wait_ticks(ticks: u64) {
    let base = interrupts::count(0);
    while interrupts::count(0) - base < ticks {
        interrupts::wait();
    }
}

struct Outcome {
    status: u32,
    needs_reset: bool,
    config_interrupt: bool,
    valid_chain_ignored: bool,
    config_unchanged: bool,
    used: u16,
}

impl Outcome {
    /// What the device must have done: needs-reset and nothing served for a bad case; nothing
    /// at all for the config write.
    fn expected(&self, case: Case) -> bool {
        if case == Case::ConfigWrite {
            !self.needs_reset && self.config_unchanged
        } else {
            self.needs_reset && self.valid_chain_ignored
        }
    }
}

fn report(target: &Target, case: Case, outcome: &Outcome) {
    if case == Case::ConfigWrite {
        println!(
            "hostile: {} {}: ignored (status {:#x}, configuration {})",
            target.name,
            case.name(),
            outcome.status,
            if outcome.config_unchanged { "unchanged" } else { "CHANGED" }
        );
    } else {
        println!(
            "hostile: {} {}: {} (status {:#x}, config interrupt {}), valid chain {}",
            target.name,
            case.name(),
            if outcome.needs_reset { "needs-reset" } else { "NO NEEDS-RESET" },
            outcome.status,
            if outcome.config_interrupt { "yes" } else { "no" },
            if outcome.valid_chain_ignored { "ignored" } else { "SERVED" }
        );
    }
}

/// Runs one case on a freshly reset device.
fn attempt(t: &Target, area: &Area, case: Case) -> Result<Outcome, &'static str> {
    area.clear();
    let m = t.mmio;
    m.negotiate(F_VERSION_1, F_VERSION_1)?;
    let base = area.rings_addr();
    let used_ring = if case == Case::UsedRingOutsideRam { OUTSIDE_RAM } else { base + USED };
    if case != Case::NotReady || t.queue != t.unready {
        m.setup_rings(t.queue, QSIZE, [base + DESC, base + AVAIL, used_ring]);
    }
    // DRIVER_OK; a refused used ring already put the device in needs-reset (not an error here).
    let _ = m.driver_ok();
    let data = area.data_addr();
    // Bad chains are device-readable throughout (as a request's header is), so that the one
    // thing wrong with each is the case's.
    let config_before = m.read(CONFIG);
    match case {
        Case::Loop => {
            area.put_desc(0, data, 16, DESC_F_NEXT, 1);
            area.put_desc(1, data + 16, 16, DESC_F_NEXT, 0);
            area.offer(0, 0, 1);
        }
        Case::OutsideRam => {
            area.put_desc(0, OUTSIDE_RAM, 64, 0, 0);
            area.offer(0, 0, 1);
        }
        Case::AddressWraps => {
            area.put_desc(0, u64::MAX - 15, 64, 0, 0);
            area.offer(0, 0, 1);
        }
        Case::HugeLength => {
            area.put_desc(0, data, 0xffff_f000, 0, 0);
            area.offer(0, 0, 1);
        }
        Case::HeadOutOfRange => area.offer(0, 200, 1),
        Case::NextOutOfRange => {
            area.put_desc(0, data, 16, DESC_F_NEXT, 0x7fff);
            area.offer(0, 0, 1);
        }
        Case::AvailAhead => area.offer(0, 0, QSIZE + 3),
        Case::NotReady | Case::NoSuchQueue | Case::UsedRingOutsideRam => {}
        Case::ConfigWrite => m.write(CONFIG, 0xdead_beef),
    }
    let notified = match case {
        Case::NotReady => t.unready,
        Case::NoSuchQueue => 7,
        _ => t.queue,
    };
    if case != Case::ConfigWrite {
        m.notify(notified);
    }
    let status = m.status();
    let config_interrupt = m.interrupt_status() & INT_CONFIG_CHANGE != 0;
    m.ack_interrupt();
    let config_unchanged = m.read(CONFIG) == config_before;
    // A valid chain now: a device in needs-reset must leave it untouched. (After the harmless
    // config write the device is fine; that it serves is shown by the recovery at the end.)
    if case != Case::ConfigWrite {
        let slot = match case {
            Case::AvailAhead => QSIZE + 3,
            Case::NotReady | Case::NoSuchQueue | Case::UsedRingOutsideRam => 0,
            _ => 1,
        };
        post_valid_chain(t, area, slot);
        m.notify(t.queue);
    }
    let used = area.used_idx();
    let valid_chain_ignored = used == 0;
    m.ack_interrupt();
    m.reset();
    Ok(Outcome {
        status,
        needs_reset: status & S_NEEDS_RESET != 0,
        config_interrupt,
        valid_chain_ignored,
        config_unchanged,
        used,
    })
}

/// A well-formed chain at descriptors 2..: a 60-byte frame for net, a one-sector read of sector 0
/// for blk, offered as available entry `slot`.
fn post_valid_chain(t: &Target, area: &Area, slot: u16) {
    let data = area.data_addr();
    if t.blk {
        // SAFETY: the first 16 bytes of the data page hold the request header.
        unsafe {
            area.data.cast::<u32>().write_volatile(BLK_T_IN);
            area.data.add(4).cast::<u32>().write_volatile(0);
            area.data.add(8).cast::<u64>().write_volatile(0);
        }
        area.put_desc(2, data, 16, DESC_F_NEXT, 3);
        area.put_desc(3, data + 512, SECTOR as u32, DESC_F_WRITE | DESC_F_NEXT, 4);
        area.put_desc(4, data + 1024, 1, DESC_F_WRITE, 0);
    } else {
        area.put_desc(2, data, 12 + 60, 0, 0);
    }
    area.offer(slot, 2, slot.wrapping_add(1));
}

/// Resets the device and sets it up with the real driver, which must work.
fn recover(t: &Target) -> Result<(), &'static str> {
    t.mmio.reset();
    if t.blk {
        let mut blk = Blk::new(t.mmio, t.irq)?;
        pic::unmask(t.irq);
        let buf = dma_buffer(SECTOR);
        // SAFETY: a fresh DMA buffer of one sector.
        let sector = unsafe { core::slice::from_raw_parts_mut(buf, SECTOR) };
        let result = blk.read(0, sector).map_err(|_| "reading sector 0 failed");
        pic::mask(t.irq);
        result
    } else {
        Net::new(t.mmio, t.irq).map(|_| ())
    }
}
