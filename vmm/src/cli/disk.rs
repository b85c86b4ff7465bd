//! `ftvm disk`: make VM disks on gfs, and copy disk images in and out of it.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use storage::{Client, Durability};
use vmm::gfs_disk::{GfsAccess, GfsDiskError};

/// The piece a copy moves at once; an all-zero piece is left unwritten (a hole reads as zeros).
const PIECE: usize = 4 << 20;
/// The register a disk made with `--fence NAME` is bound to is `ft.NAME`, the one `--ft NAME`
/// races for.
const FENCE_PREFIX: &str = "ft.";

#[derive(Args)]
pub struct DiskArgs {
    #[command(subcommand)]
    command: DiskCommand,
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Make a disk of SIZE bytes on gfs; never-written blocks read as zeros.
    Create {
        /// gfs:/PATH of the new disk (missing directories are made).
        disk: String,
        /// Size in bytes, or with a K, M, G or T suffix (powers of 1024); a multiple of 512.
        #[arg(long)]
        size: String,
        #[command(flatten)]
        fence: FenceArg,
        #[command(flatten)]
        gfs: GfsMasterArg,
    },
    /// Copy a local disk image into a new disk on gfs.
    Import {
        local: PathBuf,
        /// gfs:/PATH of the new disk (missing directories are made).
        disk: String,
        #[command(flatten)]
        fence: FenceArg,
        #[command(flatten)]
        gfs: GfsMasterArg,
    },
    /// Copy a disk on gfs into a local file (made or replaced).
    Export {
        /// gfs:/PATH of the disk.
        disk: String,
        local: PathBuf,
        #[command(flatten)]
        gfs: GfsMasterArg,
    },
}

#[derive(Args)]
struct FenceArg {
    /// Bind the disk to register ft.NAME before its first write, so that only a VM run with
    /// `--ft NAME` that holds the register's current generation can write it.
    #[arg(long, value_name = "NAME")]
    fence: Option<String>,
}

#[derive(Args)]
struct GfsMasterArg {
    /// The gfs master (host:port).
    #[arg(long, value_name = "ADDR", env = "GFS_MASTER")]
    gfs_master: Option<String>,
}

pub fn command(args: &DiskArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DiskCommand::Create { disk, size, fence, gfs } => {
            let path = gfs_path(disk)?;
            let size = parse_size(size)?;
            let register = fence_register(fence)?;
            let client = GfsAccess::new(gfs.gfs_master.clone()).client(path)?;
            let made = NewDisk::make(&client, path, size, register.as_deref())?;
            made.done();
            vmm::outln!("created {disk}: {size} bytes{}", fenced_by(&register));
        }
        DiskCommand::Import { local, disk, fence, gfs } => {
            let path = gfs_path(disk)?;
            let register = fence_register(fence)?;
            let mut file = vmm::input_file::open(local).with_context(|| format!("disk image {}", local.display()))?;
            let size = file.metadata().with_context(|| format!("disk image {}", local.display()))?.len();
            if size < 512 {
                bail!("disk image {}: {size} bytes is smaller than one 512-byte sector", local.display());
            }
            let client = GfsAccess::new(gfs.gfs_master.clone()).client(path)?;
            let made = NewDisk::make(&client, path, size, register.as_deref())?;
            let mut writer = client.with_durability(Durability::Flush);
            if let Some(register) = &register {
                let (generation, _) = client.register(register).map_err(|e| gfs_error(&client, path, e))?;
                writer = writer.fenced(register, generation);
            }
            copy_in(&mut file, local, &writer, path, size)?;
            made.done();
            vmm::outln!("imported {} into {disk}: {size} bytes{}", local.display(), fenced_by(&register));
        }
        DiskCommand::Export { disk, local, gfs } => {
            let path = gfs_path(disk)?;
            let client = GfsAccess::new(gfs.gfs_master.clone()).client(path)?;
            let stat = client.stat(path).map_err(|e| gfs_error(&client, path, e))?;
            if stat.is_dir {
                return Err(GfsDiskError::IsDirectory { path: path.to_owned() }.into());
            }
            copy_out(&client, path, stat.size, local)?;
            vmm::outln!("exported {disk} to {}: {} bytes", local.display(), stat.size);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The gfs path in `gfs:/PATH`.
fn gfs_path(disk: &str) -> anyhow::Result<&str> {
    match disk.strip_prefix(devices::virtio::GFS_DISK_PREFIX) {
        Some(path)
            if path.starts_with('/') && !path.trim_matches('/').is_empty() && !path.contains(char::is_control) =>
        {
            Ok(path)
        }
        _ => bail!("disk {disk:?}: expected gfs:/PATH, an absolute path on gfs"),
    }
}

fn fence_register(fence: &FenceArg) -> anyhow::Result<Option<String>> {
    let Some(name) = &fence.fence else { return Ok(None) };
    if name.is_empty() || name.len() > 200 || name.contains(|c: char| c.is_control() || c.is_whitespace()) {
        bail!("--fence {name:?}: expected a name of 1 to 200 printable characters without spaces");
    }
    Ok(Some(format!("{FENCE_PREFIX}{name}")))
}

fn fenced_by(register: &Option<String>) -> String {
    register.as_ref().map(|r| format!(", fenced by register {r}")).unwrap_or_default()
}

/// Parses a disk size: bytes, or a number with a K, M, G or T suffix (powers of 1024, `KiB`
/// and the like accepted too); a positive multiple of 512 within gfs's largest file.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--size {text:?}: expected bytes or a number with a K, M, G or T suffix, like 64M");
    let trimmed = text.trim();
    let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(bad()),
    };
    let size = number.checked_mul(1 << shift).filter(|&s| s <= storage::MAX_FILE_SIZE).ok_or_else(|| {
        anyhow::anyhow!("--size {text:?}: more than {} bytes, gfs's largest file", storage::MAX_FILE_SIZE)
    })?;
    if size == 0 || size % 512 != 0 {
        bail!("--size {text:?}: a disk is a whole number of 512-byte sectors, at least one");
    }
    Ok(size)
}

/// `e`, met on gfs file `path`, in the words a user needs.
fn gfs_error(client: &Client, path: &str, e: storage::GfsError) -> GfsDiskError {
    GfsDiskError::from_gfs(path, client.master_addr(), e)
}

/// A disk file being made: removed again unless [`NewDisk::done`] is reached, so a failed
/// create or import leaves nothing half-made under the name.
struct NewDisk<'a> {
    client: &'a Client,
    path: &'a str,
    done: bool,
}

impl<'a> NewDisk<'a> {
    /// Creates `path` (and missing directories) at `size` bytes with nothing written, bound to
    /// `register` first if given.
    fn make(client: &'a Client, path: &'a str, size: u64, register: Option<&str>) -> Result<Self, GfsDiskError> {
        let error = |e| gfs_error(client, path, e);
        match client.stat(path) {
            Ok(_) => return Err(GfsDiskError::Exists { path: path.to_owned() }),
            Err(e) if e.kind() == Some(storage::error::ErrorKind::NotFound) => {}
            Err(e) => return Err(error(e)),
        }
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for component in &components[..components.len().saturating_sub(1)] {
            parent.push('/');
            parent.push_str(component);
            match client.mkdir(&parent) {
                Err(e) if e.kind() != Some(storage::error::ErrorKind::AlreadyExists) => return Err(error(e)),
                _ => {}
            }
        }
        client.create(path).map_err(error)?;
        let made = NewDisk { client, path, done: false };
        if let Some(register) = register {
            client.bind(path, register).map_err(error)?;
        }
        client.extend_size(path, size).map_err(error)?;
        Ok(made)
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for NewDisk<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.client.delete(self.path) {
                tracing::warn!("could not remove the half-made disk gfs:{}: {e}", self.path);
            }
        }
    }
}

/// Writes `file` (of `size` bytes) into gfs file `path`, leaving all-zero pieces unwritten,
/// and makes it durable.
fn copy_in(file: &mut std::fs::File, local: &Path, writer: &Client, path: &str, size: u64) -> anyhow::Result<()> {
    let mut piece = vec![0u8; PIECE];
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(PIECE as u64) as usize;
        file.read_exact(&mut piece[..want]).with_context(|| format!("reading {}", local.display()))?;
        if piece[..want].iter().any(|&b| b != 0) {
            writer.write_at(path, offset, &piece[..want]).map_err(|e| gfs_error(writer, path, e))?;
        }
        offset += want as u64;
    }
    writer.sync(path).map_err(|e| gfs_error(writer, path, e))?;
    Ok(())
}

/// Reads `size` bytes of gfs file `path` into `local` (made or replaced), leaving holes where
/// the disk reads zeros, and syncs it.
fn copy_out(client: &Client, path: &str, size: u64, local: &Path) -> anyhow::Result<()> {
    let mut file = vmm::input_file::create(local).with_context(|| format!("disk image {}", local.display()))?;
    file.set_len(size).with_context(|| format!("sizing {}", local.display()))?;
    let mut piece = vec![0u8; PIECE];
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(PIECE as u64) as usize;
        let got = client.read_at(path, offset, &mut piece[..want]).map_err(|e| gfs_error(client, path, e))?;
        if got < want {
            bail!("disk gfs:{path}: ended at {} bytes while being exported", offset + got as u64);
        }
        if piece[..want].iter().any(|&b| b != 0) {
            file.write_all_at(&piece[..want], offset).with_context(|| format!("writing {}", local.display()))?;
        }
        offset += want as u64;
    }
    file.flush()?;
    file.sync_all().with_context(|| format!("syncing {}", local.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        for bad in ["", "M", "0", "100", "12Q", "-1M", "1.5G", "99999999999T", "64 M"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--size {bad:?}")), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn disk_names_parse() {
        assert_eq!(gfs_path("gfs:/vm/d").unwrap(), "/vm/d");
        for bad in ["/vm/d", "gfs:vm/d", "gfs:/", "gfs:", "vm.img"] {
            assert!(gfs_path(bad).unwrap_err().to_string().contains("expected gfs:/PATH"), "{bad}");
        }
        assert_eq!(fence_register(&FenceArg { fence: Some("vm".into()) }).unwrap().as_deref(), Some("ft.vm"));
        assert!(fence_register(&FenceArg { fence: Some("a b".into()) }).is_err());
        assert!(fence_register(&FenceArg { fence: Some(String::new()) }).is_err());
    }
}
