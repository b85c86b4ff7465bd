//! Real disk faults for a chunkserver's data directory (issue 15, point 4): a file system
//! filled to the last byte (ENOSPC), and an ext4 file system on a loop device that the kernel
//! shuts down (`EXT4_IOC_SHUTDOWN`, as xfstests' `godown` does: every read, write and sync then
//! fails with EIO). This machine's kernel has neither device-mapper nor fault injection, so a
//! dm `error` target is not available. Mounting needs root.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The sparse image behind a [`LoopExt4`]: room for a few 64 MiB chunks.
const IMAGE_BYTES: u64 = 256 << 20;

/// An ext4 file system on a loop device over a sparse image, mounted at `dir`; unmounted
/// (lazily: a chunkserver may still hold files there) and detached when dropped, also when the
/// test that made it fails.
pub struct LoopExt4 {
    dir: PathBuf,
    device: String,
    mounted: bool,
}

impl LoopExt4 {
    /// Makes the image at `image`, attaches it to a free loop device, makes an ext4 file system
    /// there and mounts it at `dir` (created if missing).
    pub fn mount(image: &Path, dir: &Path) -> Result<LoopExt4> {
        let what = || format!("an ext4 file system on a loop device over {} at {}", image.display(), dir.display());
        std::fs::create_dir_all(dir).with_context(what)?;
        std::fs::File::create(image).and_then(|f| f.set_len(IMAGE_BYTES)).with_context(what)?;
        let out = Command::new("losetup").args(["-f", "--show"]).arg(image).output().context("run losetup")?;
        if !out.status.success() {
            bail!("{}: losetup: {}", what(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // From here on, dropping `disk` detaches the device whatever fails next.
        let mut disk = LoopExt4 { dir: dir.to_path_buf(), device, mounted: false };
        run(Command::new("mkfs.ext4").args(["-q", &disk.device])).with_context(what)?;
        run(Command::new("mount").arg(&disk.device).arg(dir)).with_context(what)?;
        disk.mounted = true;
        Ok(disk)
    }

    /// Where the file system is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shuts the file system down: from now on the kernel fails every read, write and sync on
    /// it with EIO, as a dying disk would.
    pub fn fail_with_io_errors(&self) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        // _IOR('X', 125, __u32) from linux/ext4.h; flag 2: EXT4_GOING_FLAGS_NOLOGFLUSH.
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        let root = std::fs::File::open(&self.dir).with_context(|| format!("open {}", self.dir.display()))?;
        let flags: u32 = 2;
        // SAFETY: the descriptor is open for the duration of the call and `flags` is a valid
        // u32 the ioctl only reads.
        let r = unsafe { libc::ioctl(root.as_raw_fd(), EXT4_IOC_SHUTDOWN as _, &flags) };
        if r != 0 {
            bail!("EXT4_IOC_SHUTDOWN on {}: {}", self.dir.display(), std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
        // Detaches now, or (still busy) as soon as the last user lets go.
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

fn run(command: &mut Command) -> Result<()> {
    let out = command.output().with_context(|| format!("run {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Fills the file system holding `dir` to the last byte; returns the filler file.
pub fn fill(dir: &Path) -> Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = vec![0x5au8; 1 << 20];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
        }
    }
    // The last partial megabyte too.
    while f.write(&[0x5a; 4096]).is_ok_and(|n| n > 0) {}
    Ok(path)
}
