//! Page-aligned byte buffers for `O_DIRECT` I/O, and a small pool that keeps them for reuse so
//! a mutation does not allocate (and fault in) a fresh multi-MiB buffer each time.

use crate::sync::Unpoisoned;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Mutex;

/// Alignment `O_DIRECT` needs for the buffer address, file offset and length on the file
/// systems this runs on (the logical block size is at most 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose start is [`DIRECT_ALIGN`]-aligned.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively (like a Box<[u8]>); no aliasing pointers
// escape except through borrows tied to `&self` / `&mut self`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is safe to read from several threads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`DIRECT_ALIGN`], at least one page).
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).next_multiple_of(DIRECT_ALIGN);
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (cap >= DIRECT_ALIGN) and a power-of-two align.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, cap }
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, DIRECT_ALIGN) {
            Ok(l) => l,
            // Only reachable for sizes near isize::MAX, which no caller asks for.
            Err(_) => panic!("aligned buffer of {cap} bytes is too large"),
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `cap` initialised (zeroed at allocation) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout and not freed before.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

/// Keeps a few released buffers for the next mutation.
#[derive(Default)]
pub struct AlignedPool {
    idle: Mutex<Vec<AlignedBuf>>,
}

/// Most idle buffers kept (one per mutation that may run at once on different chunks).
const MAX_IDLE: usize = 8;

impl AlignedPool {
    /// A buffer of at least `len` bytes; its contents are unspecified.
    pub fn take(&self, len: usize) -> AlignedBuf {
        let mut idle = self.idle.lock_unpoisoned();
        match idle.iter().position(|b| b.capacity() >= len) {
            Some(i) => idle.swap_remove(i),
            None => {
                drop(idle);
                AlignedBuf::new(len)
            }
        }
    }

    pub fn give(&self, buf: AlignedBuf) {
        let mut idle = self.idle.lock_unpoisoned();
        if idle.len() < MAX_IDLE {
            idle.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_reused() {
        let pool = AlignedPool::default();
        let mut b = pool.take(5000);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.capacity(), 8192);
        b.as_mut_slice()[8191] = 7;
        let p = b.as_slice().as_ptr();
        pool.give(b);
        let again = pool.take(4096);
        assert_eq!(again.as_slice().as_ptr(), p);
        assert_eq!(again.as_slice()[8191], 7);
    }
}
