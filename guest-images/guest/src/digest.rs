//! FNV-1a (64-bit) over little-endian values: the `digest:` line of every workload.

pub struct Digest(u64);

impl Digest {
    pub const fn new() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }
    /// Prints `digest: <16 hex digits>`.
    pub fn print(&self) {
        crate::println!("digest: {:016x}", self.0);
    }
}
