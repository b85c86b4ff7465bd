//! The block-backend interface: what virtio-blk and the output stage need of a disk, whatever
//! holds it (a local file today, a gfs file next).
//!
//! Positional reads and writes take `&self`, so one backend can be shared (behind an `Arc`) by
//! the device's reads and the output stage's writes.

use std::io;

/// A disk as the VM's devices see it.
pub trait BlockBackend: Send + Sync {
    /// A name for messages (a path, `gfs:/vm/disk0`, ...).
    fn name(&self) -> String;

    /// Size in bytes (the device exposes the whole 512-byte sectors of it).
    fn size(&self) -> u64;

    fn readonly(&self) -> bool;

    /// Fills `buf` from byte `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at byte `offset`; a read-only backend refuses with `EROFS`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes every write so far durable.
    fn flush(&self) -> io::Result<()>;

    /// Writes `data` at byte `offset` and makes it durable at once: the disk's thread does so for
    /// a write the guest follows with a FLUSH right away (as a group commit does), when
    /// [`BlockBackend::durable_write_is_cheaper`]. The FLUSH still follows it, for the writes before.
    fn write_durable_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(offset, data)?;
        self.flush()
    }

    /// Whether [`BlockBackend::write_durable_at`] costs less than a write and a flush (one round
    /// trip to every replica instead of two, on a network store).
    fn durable_write_is_cheaper(&self) -> bool {
        false
    }
}
