//! Guest memory: one anonymous mapping registered with KVM as slot 0, starting at address 0.

use crate::error::{kvm, Result, VmmError};
use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The lowest and highest memory sizes we accept. Below 2 MiB there is no room for the boot
/// structures and a kernel; above 3 GiB RAM would collide with the MMIO windows at 0xd000_0000.
pub const MIN_MEMORY_MIB: u64 = 2;
pub const MAX_MEMORY_MIB: u64 = 3 * 1024;

pub const PAGE_SIZE: u64 = 4096;

/// Guest RAM as the VMM sees it.
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub size: u64,
}

impl GuestRam {
    /// Allocates `mib` MiB of zeroed guest memory.
    pub fn new(mib: u64) -> Result<Self> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
            return Err(VmmError::Memory {
                mib,
                reason: format!("must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB"),
            });
        }
        let size = mib << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
            .map_err(|e| VmmError::Memory { mib, reason: e.to_string() })?;
        Ok(Self { mem, size })
    }

    /// Registers the memory with the VM as slot 0, optionally with dirty-page logging.
    pub fn register(&self, vm: &VmFd, log_dirty: bool) -> Result<()> {
        for (slot, region) in self.mem.iter().enumerate() {
            let host = self
                .mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::GuestMemory { addr: region.start_addr().raw_value(), reason: e.to_string() })?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `self.mem`, which outlives the VM
            // (the Vm struct keeps both and drops the VM fd first).
            unsafe { vm.set_user_memory_region(desc) }.map_err(kvm("register guest memory"))?;
        }
        Ok(())
    }

    /// The whole of guest RAM as one byte slice, for digests and checkpoints.
    pub fn as_slice(&self) -> Result<&[u8]> {
        let host = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmmError::GuestMemory { addr: 0, reason: e.to_string() })?;
        // SAFETY: slot 0 is a single mapping of `size` bytes starting at `host` that lives as
        // long as `self`; the vCPU is not running while the VMM reads it (single-threaded loop).
        Ok(unsafe { std::slice::from_raw_parts(host, self.size as usize) })
    }

    /// The whole of guest RAM, writable, for restoring snapshots and checkpoints.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        let host = self
            .mem
            .get_host_address(GuestAddress(0))
            .map_err(|e| VmmError::GuestMemory { addr: 0, reason: e.to_string() })?;
        // SAFETY: as in as_slice; `&mut self` makes this the only VMM-side view, and the vCPU is
        // not running while the VMM restores memory.
        Ok(unsafe { std::slice::from_raw_parts_mut(host, self.size as usize) })
    }
}

/// The VMM's own resident memory in KiB: the process's RSS less the resident part of guest
/// RAM, read from /proc/self/smaps. None where /proc is not there to read.
pub fn vmm_resident_kib(ram: &GuestRam) -> Option<u64> {
    let guest_start = ram.as_slice().ok()?.as_ptr() as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut total = 0u64;
    let mut guest = 0u64;
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, _end)) = first.split_once('-').filter(|(s, _)| u64::from_str_radix(s, 16).is_ok()) {
            in_guest = u64::from_str_radix(start, 16).ok() == Some(guest_start);
        } else if first == "Rss:" {
            let kib: u64 = words.next()?.parse().ok()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    Some(total.saturating_sub(guest))
}
