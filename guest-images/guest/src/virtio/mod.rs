//! virtio-mmio drivers: devices found from `virtio_mmio.device=<size>@<base>:<irq>` words on
//! the command line (docs/guest-abi.md), each checked by its magic, version and device ID.

pub mod blk;
pub mod mmio;
pub mod net;
pub mod queue;

use crate::cmdline::{parse_u64, CmdLine};

pub const ID_NET: u32 = 1;
pub const ID_BLOCK: u32 = 2;

/// A device announced on the command line: its window and IRQ line.
#[derive(Clone, Copy, Debug)]
pub struct Announced {
    pub base: u64,
    pub irq: u8,
}

/// Parses `4K@0xd0001000:5` (size with an optional K/M suffix, base, IRQ).
pub fn parse_announcement(value: &str) -> Option<Announced> {
    let (size, rest) = value.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    let size_ok = match size.strip_suffix(['K', 'k', 'M', 'm']) {
        Some(n) => parse_u64(n).is_some(),
        None => parse_u64(size).is_some(),
    };
    let irq = parse_u64(irq)?;
    (size_ok && irq < 16).then_some(Announced { base: parse_u64(base)?, irq: irq as u8 })
}

/// The devices on the command line with their device IDs, in order (IDs read from the
/// devices: 3 exits each).
pub fn discover(cmdline: &CmdLine) -> impl Iterator<Item = (Announced, mmio::Mmio, u32)> {
    cmdline
        .params("virtio_mmio.device")
        .filter_map(parse_announcement)
        .filter(|a| a.base >= 0x1_0000 && a.base & 0xfff == 0)
        .filter_map(|a| {
            // SAFETY: the VMM announced a virtio-mmio window at this page-aligned address;
            // nothing else in the guest touches it.
            let m = unsafe { mmio::Mmio::new(a.base) };
            m.probe().map(|id| (a, m, id))
        })
}
