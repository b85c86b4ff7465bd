//! Parsing of the `--net` and `--disk` arguments and of MAC addresses, with errors that say what
//! is wrong.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The default MAC of net device `index`: locally administered, unicast, "FTVM" inside.
    pub fn default_for(index: u8) -> Self {
        MacAddr([0x02, b'F', b'T', b'V', b'M', index])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("bad MAC address {0:?}: expected six hex bytes separated by ':', like 02:46:54:56:4d:00")]
    BadMac(String),
    #[error("bad MAC address {0}: it is a multicast address (lowest bit of the first byte set)")]
    MulticastMac(String),
    #[error("bad MAC address {0}: all zeros is no station's address")]
    ZeroMac(String),
    #[error("--net {0:?}: expected tap=NAME[,mac=MAC]")]
    BadNet(String),
    #[error("--net {spec:?}: TAP name {name:?} must be 1 to 15 characters, without '/', ':', or spaces")]
    BadTapName { spec: String, name: String },
    #[error("--disk {0:?}: expected PATH[,readonly]")]
    BadDisk(String),
    #[error("--disk {0:?}: a gfs disk is gfs:/PATH[,readonly], with an absolute gfs path")]
    BadGfsDisk(String),
}

impl FromStr for MacAddr {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::BadMac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        // Broadcast (ff:..:ff) is a multicast address too.
        if mac[0] & 1 != 0 {
            return Err(SpecError::MulticastMac(s.to_owned()));
        }
        if mac == [0; 6] {
            return Err(SpecError::ZeroMac(s.to_owned()));
        }
        Ok(MacAddr(mac))
    }
}

/// `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: Option<MacAddr>,
}

/// Whether `name` can name a Linux network interface.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl FromStr for NetSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut tap = None;
        let mut mac = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("tap", name)) if tap.is_none() => {
                    if !valid_ifname(name) {
                        return Err(SpecError::BadTapName { spec: s.to_owned(), name: name.to_owned() });
                    }
                    tap = Some(name.to_owned());
                }
                Some(("mac", m)) if mac.is_none() => mac = Some(m.parse()?),
                _ => return Err(SpecError::BadNet(s.to_owned())),
            }
        }
        let tap = tap.ok_or_else(|| SpecError::BadNet(s.to_owned()))?;
        Ok(NetSpec { tap, mac })
    }
}

/// `--disk PATH[,readonly]`, where PATH is a local file or `gfs:/PATH`, a file on gfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
}

/// What names a disk on gfs rather than a local file (a local file of that name is `./gfs:...`).
pub const GFS_DISK_PREFIX: &str = "gfs:";

/// The gfs path of a disk named `gfs:/PATH` (in a `--disk` or a device description), if it is
/// one.
pub fn gfs_disk_path(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix(GFS_DISK_PREFIX)
}

impl DiskSpec {
    /// The gfs path of this disk, if it is on gfs.
    pub fn gfs_path(&self) -> Option<&str> {
        gfs_disk_path(&self.path)
    }
}

impl FromStr for DiskSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (path, readonly) = match s.rsplit_once(',') {
            Some((path, "readonly")) | Some((path, "ro")) => (path, true),
            Some(_) => return Err(SpecError::BadDisk(s.to_owned())),
            None => (s, false),
        };
        if path.is_empty() {
            return Err(SpecError::BadDisk(s.to_owned()));
        }
        if let Some(gfs) = path.strip_prefix(GFS_DISK_PREFIX) {
            if !gfs.starts_with('/') || gfs.trim_matches('/').is_empty() || gfs.chars().any(char::is_control) {
                return Err(SpecError::BadGfsDisk(s.to_owned()));
            }
        }
        Ok(DiskSpec { path: PathBuf::from(path), readonly })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let mac: MacAddr = "02:aB:0:ff:10:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0xab, 0, 0xff, 0x10, 1]);
        assert_eq!(mac.to_string(), "02:ab:00:ff:10:01");
        assert_eq!(MacAddr::default_for(3).to_string(), "02:46:54:56:4d:03");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:zz",
            "02:00:00:00:00:123",
            "02-00-00-00-00-00",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(SpecError::BadMac(bad.into())), "{bad}");
        }
        assert!(matches!("01:00:5e:00:00:01".parse::<MacAddr>(), Err(SpecError::MulticastMac(_))));
        assert!(matches!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>(), Err(SpecError::MulticastMac(_))));
        assert!(matches!("00:00:00:00:00:00".parse::<MacAddr>(), Err(SpecError::ZeroMac(_))));
    }

    #[test]
    fn net_specs_parse() {
        let spec: NetSpec = "tap=ftvm0,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(spec.tap, "ftvm0");
        assert_eq!(spec.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!("tap=t".parse::<NetSpec>().unwrap().mac, None);
        assert!(matches!("mac=02:00:00:00:00:01".parse::<NetSpec>(), Err(SpecError::BadNet(_))));
        assert!(matches!("tap=a,tap=b".parse::<NetSpec>(), Err(SpecError::BadNet(_))));
        assert!(matches!("tap=0123456789abcdef".parse::<NetSpec>(), Err(SpecError::BadTapName { .. })));
        let err = "tap=t,mac=nope".parse::<NetSpec>().unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            "/d/a.img,readonly".parse::<DiskSpec>().unwrap(),
            DiskSpec { path: "/d/a.img".into(), readonly: true }
        );
        assert_eq!("a.img".parse::<DiskSpec>().unwrap(), DiskSpec { path: "a.img".into(), readonly: false });
        assert!(matches!("a.img,rw".parse::<DiskSpec>(), Err(SpecError::BadDisk(_))));
        assert!(matches!(",readonly".parse::<DiskSpec>(), Err(SpecError::BadDisk(_))));
    }

    #[test]
    fn gfs_disk_specs_parse() {
        let spec: DiskSpec = "gfs:/vm/disk0,readonly".parse().unwrap();
        assert_eq!(spec, DiskSpec { path: "gfs:/vm/disk0".into(), readonly: true });
        assert_eq!(spec.gfs_path(), Some("/vm/disk0"));
        assert_eq!("gfs:/d".parse::<DiskSpec>().unwrap().gfs_path(), Some("/d"));
        assert_eq!("./gfs:/d".parse::<DiskSpec>().unwrap().gfs_path(), None);
        assert_eq!("disk.img".parse::<DiskSpec>().unwrap().gfs_path(), None);
        for bad in ["gfs:", "gfs:vm/disk0", "gfs:/", "gfs://", "gfs:/a\nb,readonly", "gfs:,readonly"] {
            let err = bad.parse::<DiskSpec>().unwrap_err();
            assert_eq!(err, SpecError::BadGfsDisk(bad.to_owned()), "{bad:?}");
            assert!(err.to_string().contains("gfs:/PATH"), "{err}");
        }
    }
}
