//! Master memory per chunk, measured with a counting allocator: builds the master's state
//! through the same log records it replays (files, chunks, version bumps) and fills every
//! chunk's replica slots, then divides the heap growth by the number of chunks.
//!
//! Run: `cargo run --release -p storage --example master_mem -- [files] [chunks_per_file]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use storage::master::state::State;
use storage::oplog::Record;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let mut args = std::env::args().skip(1);
    let files: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let per_file: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut s = State::default();
    let apply = |s: &mut State, r: Record| {
        if let Err(e) = s.apply(&r) {
            eprintln!("apply failed: {e}");
            std::process::exit(1);
        }
    };
    apply(&mut s, Record::Mkdir { path: "/vm".into() });
    for f in 0..files {
        apply(&mut s, Record::CreateFile { path: format!("/vm/disk{f:06}") });
    }
    let before = LIVE.load(Ordering::Relaxed);
    let mut handle = 0u64;
    for f in 0..files {
        for i in 0..per_file {
            handle += 1;
            let path = format!("/vm/disk{f:06}");
            apply(&mut s, Record::AddChunk { path: path.clone(), index: i, handle });
            apply(&mut s, Record::SetVersion { handle, version: 2 });
            if let Some(c) = s.chunks.get_mut(handle) {
                c.set_replicas(&[0, 1, 2]);
            }
        }
    }
    let after = LIVE.load(Ordering::Relaxed);
    let chunks = files * per_file;
    println!(
        "master memory per chunk: {:.1} bytes ({} chunks in {} files, 3 replicas each; heap grew {} bytes)",
        (after - before) as f64 / chunks as f64,
        chunks,
        files,
        after - before
    );
}
