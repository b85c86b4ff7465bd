//! Which guest pages changed since the last checkpoint, from KVM's dirty log.
//!
//! Plain dirty logging write-protects every page again at each `KVM_GET_DIRTY_LOG`, so the
//! guest's next write to each page it keeps using (its stack, an interrupt counter) faults;
//! under PVM a fault costs about as much as an exit, and a compute-bound guest is preempted a
//! thousand times a second. With `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` the bits accumulate until
//! we clear them: each checkpoint carries every page dirtied since the last clear (a superset
//! of what changed since the last checkpoint, which a replay applies harmlessly), and pages are
//! write-protected again only when that set grows past [`REPROTECT_ABOVE_PAGES`].

use crate::error::{kvm, Result, VmmError};
use kvm_bindings::{kvm_clear_dirty_log, kvm_dirty_log, kvm_enable_cap, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2};
use kvm_ioctls::VmFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::{ioctl_iow_nr, ioctl_iowr_nr};

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, kvm_bindings::KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, kvm_bindings::KVMIO, 0x42, kvm_dirty_log);

/// Above this many accumulated pages (64 KiB), clear and re-protect them.
pub const REPROTECT_ABOVE_PAGES: u64 = 16;

const MANUAL_PROTECT_ENABLE: u64 = 1;

/// The dirty-page log of guest memory slot 0.
pub struct DirtyLog {
    manual: bool,
    memory_size: usize,
}

impl DirtyLog {
    /// Turns on manual protection where the host has it; call before registering memory.
    pub fn new(vm: &VmFd, memory_size: u64) -> Result<Self> {
        let supported = vm.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into()) as u64;
        let manual = supported & MANUAL_PROTECT_ENABLE != 0;
        if manual {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                args: [MANUAL_PROTECT_ENABLE, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap).map_err(kvm("enable manual dirty-log protection"))?;
        }
        tracing::debug!(manual, "dirty logging");
        Ok(Self { manual, memory_size: memory_size as usize })
    }

    /// The pages to put in a checkpoint now, as a bitmap of 4 KiB pages.
    pub fn take(&mut self, vm: &VmFd) -> Result<Vec<u64>> {
        let bitmap = vm.get_dirty_log(0, self.memory_size).map_err(kvm("read the dirty-page log"))?;
        if self.manual {
            let pages: u64 = bitmap.iter().map(|word| u64::from(word.count_ones())).sum();
            if pages > REPROTECT_ABOVE_PAGES {
                self.clear(vm, &bitmap)?;
            }
        }
        Ok(bitmap)
    }

    fn clear(&self, vm: &VmFd, bitmap: &[u64]) -> Result<()> {
        clear_pages(vm, self.memory_size, bitmap)
    }

    /// A handle on this log that another thread can read while the vCPU runs (a live copy of
    /// guest memory).
    pub fn share(&self, vm: &VmFd) -> Result<SharedDirtyLog> {
        // SAFETY: dup of a descriptor this process owns; the result is checked before use.
        let fd = unsafe { libc::dup(vm.as_raw_fd()) };
        if fd < 0 {
            return Err(VmmError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by dup and is owned by nobody else.
        let vm = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SharedDirtyLog { vm, manual: self.manual, memory_size: self.memory_size })
    }
}

/// KVM's dirty log of slot 0, read and reset from a thread other than the vCPU's: the VM's
/// descriptor, duplicated, is all the ioctls need, and KVM serializes them against the vCPU.
///
/// While it is used, nobody else may take the log (the [`DirtyLog`] of checkpoints is idle
/// while a primary runs alone, which is when a backup joins).
pub struct SharedDirtyLog {
    vm: OwnedFd,
    manual: bool,
    memory_size: usize,
}

impl SharedDirtyLog {
    /// The pages the vCPU wrote since the last call, as a bitmap of 4 KiB pages; those pages
    /// are write-protected again, so a write after this call shows up in the next one.
    pub fn take(&self) -> Result<Vec<u64>> {
        let pages = self.memory_size / crate::memory::PAGE_SIZE as usize;
        let mut bitmap = vec![0u64; pages.div_ceil(64)];
        let mut log = kvm_dirty_log { slot: 0, ..Default::default() };
        log.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
        // SAFETY: the bitmap has one bit per page of slot 0, rounded up to whole u64 words as
        // KVM writes it, and outlives the call.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_GET_DIRTY_LOG(), &log) };
        if ret != 0 {
            return Err(VmmError::Kvm { what: "read the dirty-page log", cause: kvm_ioctls::Error::last() });
        }
        // Without manual protection the read itself reset and re-protected the pages.
        if self.manual && bitmap.iter().any(|word| *word != 0) {
            clear_pages(&self.vm, self.memory_size, &bitmap)?;
        }
        Ok(bitmap)
    }
}

/// Resets the dirty bits of the pages set in `bitmap` and write-protects them again.
fn clear_pages(vm: &impl AsRawFd, memory_size: usize, bitmap: &[u64]) -> Result<()> {
    let mut bits = bitmap.to_vec();
    let mut clear = kvm_clear_dirty_log {
        slot: 0,
        num_pages: (memory_size / crate::memory::PAGE_SIZE as usize) as u32,
        first_page: 0,
        ..Default::default()
    };
    clear.__bindgen_anon_1.dirty_bitmap = bits.as_mut_ptr().cast();
    // SAFETY: the bitmap holds one bit per page of the slot (num_pages bits, rounded up to
    // whole u64 words by get_dirty_log) and outlives the call.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
    if ret != 0 {
        return Err(VmmError::Kvm { what: "clear the dirty-page log", cause: kvm_ioctls::Error::last() });
    }
    Ok(())
}
