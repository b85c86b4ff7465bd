//! The global allocator: power-of-two size classes (16 B .. 2 GiB) with one free list each,
//! over a region of RAM handed over once by [`init`] (the `kv` workload gives it most of the
//! RAM above the image). Blocks below a page are carved from whole pages; pages and larger
//! blocks come from a bump pointer that always stays page-aligned, so every block of class
//! `c` is aligned to `min(c, 4096)`. Freed blocks go back to their class's list and are reused
//! by the next allocation of that class; nothing is ever returned to the bump region.
//!
//! Single-threaded (the guest has one vCPU and the interrupt stubs never allocate). Memory is
//! identity-mapped, so a block's address is also its guest-physical address (virtio uses that).
//! Before `init` every allocation fails (workloads other than `kv` never allocate).

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

const MIN_SHIFT: u32 = 4;
const PAGE: usize = 4096;
const CLASSES: usize = 32;

struct State {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
    in_use: usize,
}

pub struct Heap(UnsafeCell<State>);

// SAFETY: one vCPU, and no interrupt handler allocates: accesses never overlap.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(State { next: 0, end: 0, free: [0; CLASSES], in_use: 0 }));

/// Hands `[start, end)` to the allocator. Call once, before the first allocation.
///
/// # Safety
/// The range must be RAM that nothing else uses, identity-mapped and writable.
pub unsafe fn init(start: usize, end: usize) {
    // SAFETY: single-threaded; no allocation is in progress (see the caller's contract).
    let s = unsafe { &mut *HEAP.0.get() };
    s.next = start.next_multiple_of(PAGE);
    s.end = end & !(PAGE - 1);
}

extern "C" {
    static __image_end: u8;
}

/// Gives the heap the RAM from the end of the image to the end of its e820 region; returns its
/// size in bytes. For the workloads that allocate (`kv`, `disk`); call once.
pub fn init_after_image(boot: &crate::bootinfo::BootInfo) -> Result<usize, &'static str> {
    // Only the address of the linker symbol is taken.
    let start = core::ptr::addr_of!(__image_end) as u64;
    let region = boot
        .e820()
        .find(|e| e.kind == crate::bootinfo::E820_RAM && e.addr <= start && start < e.addr + e.size)
        .ok_or("no e820 RAM region holds the image end")?;
    let end = (region.addr + region.size).min(0x1_0000_0000);
    // SAFETY: RAM after the image (stacks included) up to the end of its region is unused:
    // nothing below 1 MiB is used, and the VMM's structures are below 1 MiB (guest ABI).
    unsafe { init(start as usize, end as usize) };
    Ok((end - start) as usize)
}

/// Bytes in allocated blocks (rounded to their classes) and bytes never handed out yet.
pub fn usage() -> (usize, usize) {
    // SAFETY: single-threaded; a plain read of the counters.
    let s = unsafe { &*HEAP.0.get() };
    (s.in_use, s.end.saturating_sub(s.next))
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let class = size.checked_next_power_of_two()?.trailing_zeros() - MIN_SHIFT;
    (layout.align() <= PAGE && (class as usize) < CLASSES).then_some(class as usize)
}

const fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

impl State {
    fn bump(&mut self, size: usize) -> usize {
        // `next` stays page-aligned: every bumped size is a multiple of PAGE.
        if self.end - self.next < size {
            return 0;
        }
        let block = self.next;
        self.next += size;
        block
    }

    fn pop(&mut self, class: usize) -> usize {
        let block = self.free[class];
        if block != 0 {
            // SAFETY: a free block's first word holds the next free block of its class.
            self.free[class] = unsafe { (block as *const usize).read() };
        }
        block
    }

    fn push(&mut self, class: usize, block: usize) {
        // SAFETY: `block` is a free block of at least 16 bytes, aligned to 16, owned by us.
        unsafe { (block as *mut usize).write(self.free[class]) };
        self.free[class] = block;
    }

    fn alloc(&mut self, class: usize) -> usize {
        let mut block = self.pop(class);
        if block == 0 {
            let size = class_size(class);
            if size >= PAGE {
                block = self.bump(size);
            } else {
                let page = self.bump(PAGE);
                if page == 0 {
                    return 0;
                }
                // Keep the first block, free the others.
                for b in (page + size..page + PAGE).step_by(size).rev() {
                    self.push(class, b);
                }
                block = page;
            }
        }
        if block != 0 {
            self.in_use += class_size(class);
        }
        block
    }
}

// SAFETY: blocks never overlap (each is handed out once until it is freed); every block of a
// class is aligned to min(class size, PAGE) >= the layout's alignment (checked in class_of).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            return null_mut();
        };
        // SAFETY: single-threaded (see the Sync impl).
        let s = unsafe { &mut *self.0.get() };
        s.alloc(class) as *mut u8
    }

    /// Blocks taken fresh from the never-used RAM after the image read as zero already (the
    /// VMM maps guest RAM as anonymous zeroed memory, and nothing wrote there before the heap
    /// was given it): only recycled blocks are cleared. This keeps `kv`'s socket buffers (a few
    /// MiB) from being touched page by page at start, a long stretch of ring-3 work with no
    /// exit in which the guest is preempted.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            return null_mut();
        };
        // SAFETY: single-threaded (see the Sync impl).
        let s = unsafe { &mut *self.0.get() };
        let fresh_before = s.next;
        let block = s.alloc(class);
        if block != 0 && !(class_size(class) >= PAGE && block >= fresh_before) {
            // SAFETY: the block is ours and at least layout.size() bytes long.
            unsafe { core::ptr::write_bytes(block as *mut u8, 0, layout.size()) };
        }
        block as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(class) = class_of(&layout) {
            // SAFETY: single-threaded (see the Sync impl).
            let s = unsafe { &mut *self.0.get() };
            s.in_use -= class_size(class);
            s.push(class, ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's layout contract carries over (same alignment, nonzero size).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class_of(&layout).is_some() && class_of(&layout) == class_of(&new_layout) {
            return ptr;
        }
        // SAFETY: as for alloc; the old block is valid for layout.size() bytes.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
