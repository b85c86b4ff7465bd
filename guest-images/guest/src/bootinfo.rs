//! What the VMM tells us in the Linux zero page (`boot_params`), per docs/guest-abi.md.

/// The zero page the VMM passed in RSI.
#[derive(Clone, Copy)]
pub struct BootInfo {
    zero_page: *const u8,
}

/// One e820 memory map entry.
#[derive(Clone, Copy, Debug)]
pub struct E820Entry {
    #[allow(dead_code)] // for the allocator to come
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;
const CMD_LINE_PTR: usize = 0x228;
const CMDLINE_SIZE: usize = 0x238;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const CMDLINE_MAX: usize = 4095;

impl BootInfo {
    /// # Safety
    /// `zero_page` must point to a `boot_params` page that stays valid and unchanged.
    pub unsafe fn new(zero_page: *const u8) -> Self {
        BootInfo { zero_page }
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: offsets are within the 4 KiB zero page (see `new`); fields may be unaligned.
        unsafe { self.zero_page.add(offset).cast::<T>().read_unaligned() }
    }

    /// The command line (up to the NUL, at most `cmdline_size` or 4095 bytes).
    pub fn cmdline(&self) -> &'static [u8] {
        let ptr = self.read::<u32>(CMD_LINE_PTR) as usize as *const u8;
        if ptr.is_null() {
            return &[];
        }
        let mut limit = self.read::<u32>(CMDLINE_SIZE) as usize;
        if limit == 0 || limit > CMDLINE_MAX {
            limit = CMDLINE_MAX;
        }
        let mut len = 0;
        // SAFETY: the VMM put a NUL-terminated string of at most 4095 bytes there, in memory
        // nothing else writes; we never read past `limit`.
        unsafe {
            while len < limit && ptr.add(len).read() != 0 {
                len += 1;
            }
            core::slice::from_raw_parts(ptr, len)
        }
    }

    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let n = (self.read::<u8>(E820_ENTRIES) as usize).min(E820_MAX);
        (0..n).map(move |i| {
            let base = E820_TABLE + 20 * i;
            E820Entry { addr: self.read(base), size: self.read(base + 8), kind: self.read(base + 16) }
        })
    }

    /// Total bytes of RAM in the e820 map.
    pub fn ram_bytes(&self) -> u64 {
        self.e820().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum()
    }
}
