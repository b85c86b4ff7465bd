//! `disk [size=MiB] [bs=KiB] [ops=N] [seed=S]`: measures the first virtio disk from inside the
//! guest and checks every byte it reads back.
//!
//! Phases, each over the first `size` MiB of the disk: a sequential write in `bs` KiB requests
//! (no FLUSH between them, one FLUSH at the end, counted in), a sequential read, `ops` reads of
//! random 4 KiB blocks, `ops` writes of random 4 KiB blocks (each raising the block's version,
//! one FLUSH at the end, counted in), and a last sequential read of the whole area that checks
//! the versions (untimed). Every read is compared with the pattern of `pattern.rs`: a wrong,
//! stale or torn block is reported with its offset and counted.
//!
//! Output (one line each, for tests and benchmarks to parse):
//! `disk: seq-write <MiB> MiB in <us> us: <X.Y> MB/s`, likewise `seq-read`,
//! `disk: rand-read <N> x 4 KiB in <us> us: <N> IOPS`, likewise `rand-write`, then
//! `disk: result seq_write_mbps=X.Y seq_read_mbps=X.Y rand_read_iops=N rand_write_iops=N
//! verified_bytes=N mismatches=N` and the digest (over the parameters, every figure and the
//! verification counts: a replay prints the same). Power-off code 0, or 1 after a mismatch.
//!
//! Sequential figures time each request alone (two clock reads around it), so filling and
//! checking buffers is not counted; the random phases time the whole loop (4 KiB of pattern work
//! per request is a few µs against an exit's ~100).

pub mod pattern;

use crate::bootinfo::BootInfo;
use crate::clock::monotonic_ns;
use crate::cmdline::{parse_u64, CmdLine};
use crate::digest::Digest;
use crate::virtio::blk::{Blk, BlkError, MAX_REQUEST, SECTOR};
use crate::virtio::queue::dma_buffer;
use crate::virtio::{self, ID_BLOCK};
use crate::{interrupts, pic};
use alloc::vec;
use alloc::vec::Vec;
use pattern::{Params, Rng, BLOCK};

/// Power-off code when a read did not match what was written.
pub const EXIT_MISMATCH: u32 = 1;
/// Mismatches printed in full; the rest are only counted.
const SHOWN: u64 = 8;

struct Run {
    blk: Blk,
    p: Params,
    /// Version of each 4 KiB block of the area.
    versions: Vec<u8>,
    mismatches: u64,
    verified: u64,
    digest: Digest,
}

fn param(cmdline: &CmdLine, key: &'static str) -> Result<Option<u64>, &'static str> {
    match cmdline.params(key).next() {
        None => Ok(None),
        Some(v) => parse_u64(v).map(Some).ok_or(match key {
            "size" => "bad size=MiB",
            "bs" => "bad bs=KiB",
            "ops" => "bad ops=N",
            _ => "bad seed=S",
        }),
    }
}

pub fn run(boot: &BootInfo, cmdline: CmdLine) -> Result<u32, &'static str> {
    let args = (param(&cmdline, "size")?, param(&cmdline, "bs")?, param(&cmdline, "ops")?, param(&cmdline, "seed")?);
    crate::heap::init_after_image(boot)?;
    // Waits for completions run with IF=0 and halt through the gate, so no wake-up is lost.
    interrupts::disable();
    let mut blk = None;
    for (announced, mmio, id) in virtio::discover(&cmdline) {
        if id == ID_BLOCK && blk.is_none() {
            blk = Some(Blk::new(mmio, announced.irq)?);
        }
    }
    let blk = blk.ok_or("no virtio-blk device (ftvm run --disk PATH)")?;
    if blk.readonly() {
        return Err("the disk is read-only");
    }
    pic::unmask(blk.irq());
    let capacity = blk.capacity() * SECTOR as u64;
    let p = pattern::params(args.0, args.1, args.2, args.3, capacity, MAX_REQUEST as u64)?;
    println!(
        "disk: capacity {} sectors; size={} MiB bs={} KiB ops={} seed={}",
        blk.capacity(),
        p.size_mib,
        p.bs_kib,
        p.ops,
        p.seed
    );
    let blocks = (p.size_mib << 20) / BLOCK as u64;
    let mut digest = Digest::new();
    digest.u64(p.size_mib).u64(p.bs_kib).u64(p.ops).u64(p.seed);
    let mut run = Run { blk, p, versions: vec![0u8; blocks as usize], mismatches: 0, verified: 0, digest };
    let result = run.phases();
    interrupts::enable();
    match result {
        Ok(()) if run.mismatches == 0 => Ok(0),
        Ok(()) => Ok(EXIT_MISMATCH),
        Err(e) => {
            println!("disk: FATAL: request failed: {:?}", e);
            Ok(EXIT_MISMATCH + 2)
        }
    }
}

impl Run {
    fn phases(&mut self) -> Result<(), BlkError> {
        let bytes = self.p.size_mib << 20;
        let bs = (self.p.bs_kib << 10) as usize;
        let buf_ptr = dma_buffer(bs.max(BLOCK));
        // SAFETY: a fresh DMA buffer of at least `bs` bytes that only this run uses.
        let buf = unsafe { core::slice::from_raw_parts_mut(buf_ptr, bs.max(BLOCK)) };

        let write_ns = self.sequential(&mut buf[..bs], true)?;
        let read_ns = self.sequential(&mut buf[..bs], false)?;
        let rand_read_ns = self.random(&mut buf[..BLOCK], false)?;
        let rand_write_ns = self.random(&mut buf[..BLOCK], true)?;
        // Every block again, with the versions the random writes left.
        self.sequential(&mut buf[..bs], false)?;

        let (w, r) = (pattern::mb_per_s_x10(bytes, write_ns), pattern::mb_per_s_x10(bytes, read_ns));
        let (rr, rw) = (pattern::per_second(self.p.ops, rand_read_ns), pattern::per_second(self.p.ops, rand_write_ns));
        println!("disk: seq-write {} MiB in {} us: {}.{} MB/s", self.p.size_mib, write_ns / 1000, w / 10, w % 10);
        println!("disk: seq-read {} MiB in {} us: {}.{} MB/s", self.p.size_mib, read_ns / 1000, r / 10, r % 10);
        println!("disk: rand-read {} x 4 KiB in {} us: {} IOPS", self.p.ops, rand_read_ns / 1000, rr);
        println!("disk: rand-write {} x 4 KiB in {} us: {} IOPS", self.p.ops, rand_write_ns / 1000, rw);
        println!(
            "disk: requests={} exits={} (kicks {}, acks {}, waits {})",
            self.blk.requests,
            self.blk.kicks + self.blk.acks + self.blk.waits,
            self.blk.kicks,
            self.blk.acks,
            self.blk.waits
        );
        println!(
            "disk: result seq_write_mbps={}.{} seq_read_mbps={}.{} rand_read_iops={} rand_write_iops={} verified_bytes={} mismatches={}",
            w / 10,
            w % 10,
            r / 10,
            r % 10,
            rr,
            rw,
            self.verified,
            self.mismatches
        );
        self.digest.u64(write_ns).u64(read_ns).u64(rand_read_ns).u64(rand_write_ns);
        self.digest.u64(self.verified).u64(self.mismatches);
        self.digest.print();
        Ok(())
    }

    /// The whole area in `buf.len()` requests, written or read and checked; returns the ns spent
    /// in the requests (and the final FLUSH of a write).
    fn sequential(&mut self, buf: &mut [u8], write: bool) -> Result<u64, BlkError> {
        let bytes = self.p.size_mib << 20;
        let mut spent = 0;
        let mut offset = 0;
        while offset < bytes {
            if write {
                let versions = &self.versions;
                pattern::fill(buf, self.p.seed, offset, |b| versions[b as usize]);
            }
            let start = monotonic_ns();
            if write {
                self.blk.write_unflushed(offset / SECTOR as u64, buf)?;
            } else {
                self.blk.read(offset / SECTOR as u64, buf)?;
            }
            spent += monotonic_ns() - start;
            if !write {
                self.check(buf, offset);
            }
            offset += buf.len() as u64;
        }
        if write {
            let start = monotonic_ns();
            self.blk.flush()?;
            spent += monotonic_ns() - start;
        }
        Ok(spent)
    }

    /// `ops` random 4 KiB blocks, read and checked or written (a new version each); returns the
    /// ns of the whole loop (and the final FLUSH of the writes).
    fn random(&mut self, buf: &mut [u8], write: bool) -> Result<u64, BlkError> {
        let blocks = self.versions.len() as u64;
        let mut rng = Rng::new(self.p.seed ^ if write { 0x5752 } else { 0x5244 });
        let start = monotonic_ns();
        for _ in 0..self.p.ops {
            let block = rng.block(blocks);
            let offset = block * BLOCK as u64;
            let sector = offset / SECTOR as u64;
            if write {
                let v = &mut self.versions[block as usize];
                *v = v.wrapping_add(1);
                let version = *v;
                pattern::fill(buf, self.p.seed, offset, |_| version);
                self.blk.write_unflushed(sector, buf)?;
            } else {
                self.blk.read(sector, buf)?;
                self.check(buf, offset);
            }
        }
        if write {
            self.blk.flush()?;
        }
        Ok(monotonic_ns() - start)
    }

    fn check(&mut self, buf: &[u8], offset: u64) {
        let versions = &self.versions;
        self.verified += buf.len() as u64;
        if let Some((at, expected, found)) = pattern::first_mismatch(buf, self.p.seed, offset, |b| versions[b as usize])
        {
            self.mismatches += 1;
            if self.mismatches <= SHOWN {
                println!("disk: MISMATCH at byte {}: expected {:016x}, read {:016x}", at, expected, found);
            }
        }
    }
}
