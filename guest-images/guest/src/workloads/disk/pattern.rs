//! What `disk` writes and expects back, and its parameters: pure code, tested on the host by
//! `guest-images/tests/disk_logic.rs`, which includes this file by path.
//!
//! Every 8-byte word of the disk gets a value derived from the seed, the word's byte offset and
//! the version of its 4 KiB block (0 after the sequential write, raised by each random write), so
//! a block read from the wrong place, a stale block or a torn one all show up as a mismatch.

/// The unit of the random phases and of block versions.
pub const BLOCK: usize = 4096;

/// The value of the word at byte `offset` (a multiple of 8) for `seed` and block `version`.
pub fn word(seed: u64, offset: u64, version: u8) -> u64 {
    // splitmix64 of the three: cheap, and any change of any input changes the word.
    let mut z = seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(version) << 56 | 0x00d1_5c00);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` (a whole number of words) with the pattern of the bytes at `offset`, whose 4 KiB
/// blocks have the versions `version(block index)`.
pub fn fill(buf: &mut [u8], seed: u64, offset: u64, version: impl Fn(u64) -> u8) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let at = offset + 8 * i as u64;
        chunk.copy_from_slice(&word(seed, at, version(at / BLOCK as u64)).to_le_bytes());
    }
}

/// The first word of `buf` (read from `offset`) that differs from the pattern: (byte offset on
/// the disk, expected, found).
pub fn first_mismatch(buf: &[u8], seed: u64, offset: u64, version: impl Fn(u64) -> u8) -> Option<(u64, u64, u64)> {
    buf.chunks_exact(8).enumerate().find_map(|(i, chunk)| {
        let at = offset + 8 * i as u64;
        let expected = word(seed, at, version(at / BLOCK as u64));
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let found = u64::from_le_bytes(bytes);
        (found != expected).then_some((at, expected, found))
    })
}

/// xorshift64*: the random offsets, the same for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A block index below `blocks` (> 0).
    pub fn block(&mut self, blocks: u64) -> u64 {
        self.next() % blocks
    }
}

/// The parameters: `size=MiB` of the disk used, `bs=KiB` per sequential request, `ops=N` random
/// reads and as many random writes, `seed=S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub size_mib: u64,
    pub bs_kib: u64,
    pub ops: u64,
    pub seed: u64,
}

pub const DEFAULT_SIZE_MIB: u64 = 16;
pub const DEFAULT_BS_KIB: u64 = 256;
pub const DEFAULT_OPS: u64 = 1000;
pub const DEFAULT_SEED: u64 = 1;

/// Checks the parameters against the disk (`capacity_bytes`) and the largest request the driver
/// makes (`max_request` bytes). `size=` defaults to the smaller of 16 MiB and the disk.
pub fn params(
    size: Option<u64>,
    bs: Option<u64>,
    ops: Option<u64>,
    seed: Option<u64>,
    capacity_bytes: u64,
    max_request: u64,
) -> Result<Params, &'static str> {
    let whole_mib = capacity_bytes >> 20;
    let size_mib = match size {
        None if whole_mib == 0 => return Err("the disk is smaller than 1 MiB"),
        None => DEFAULT_SIZE_MIB.min(whole_mib),
        Some(0) => return Err("size=MiB must be at least 1"),
        Some(s) if s > whole_mib => return Err("size=MiB is larger than the disk"),
        Some(s) => s,
    };
    let bs_kib = bs.unwrap_or(DEFAULT_BS_KIB);
    if bs_kib == 0 || bs_kib * 1024 > max_request {
        return Err("bs=KiB must be 1..=256 (the largest request the driver makes)");
    }
    if (size_mib << 10) % bs_kib != 0 {
        return Err("size=MiB must be a whole number of bs=KiB blocks");
    }
    let ops = ops.unwrap_or(DEFAULT_OPS);
    if ops > 10_000_000 {
        return Err("ops=N must be at most 10000000");
    }
    Ok(Params { size_mib, bs_kib, ops, seed: seed.unwrap_or(DEFAULT_SEED) })
}

/// `bytes` moved in `ns` as MB/s (10^6 bytes) times 10, for one decimal.
pub fn mb_per_s_x10(bytes: u64, ns: u64) -> u64 {
    (u128::from(bytes) * 10_000 / u128::from(ns.max(1))) as u64
}

/// `ops` done in `ns` as operations per second.
pub fn per_second(ops: u64, ns: u64) -> u64 {
    (u128::from(ops) * 1_000_000_000 / u128::from(ns.max(1))) as u64
}
