//! The TAP backend of virtio-net: a Linux TAP interface opened through /dev/net/tun.
//!
//! Frames are plain Ethernet frames (IFF_TAP | IFF_NO_PI, no IFF_VNET_HDR: the device offers no
//! offloads). A TAP that does not exist is created; it is not persistent, so the kernel removes it
//! once the [`Tap`], its [`TapWriter`]s and its reader thread are all gone. A TAP created
//! beforehand (`ip tuntap add NAME mode tap`) is attached to and left in place.

use crossbeam_channel::Sender;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const TUN_PATH: &str = "/dev/net/tun";
/// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
/// The largest frame read from a TAP (an MTU of 64 KiB and the Ethernet header).
const READ_BUF: usize = 65536 + 14;

/// `struct ifreq` with the flags member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        // The caller checked that the name is shorter than IFNAMSIZ.
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} must be 1 to 15 characters, without '/', ':' or spaces")]
    BadName(String),
    #[error("TAP {name}: {TUN_PATH} is missing (load the tun module: modprobe tun)")]
    NoTunDevice { name: String },
    #[error("TAP {name}: no permission to open {TUN_PATH} (run as root or with CAP_NET_ADMIN)")]
    TunPermission { name: String },
    #[error("TAP {name}: no permission to create or attach it (creating a TAP needs CAP_NET_ADMIN; or create it first with `ip tuntap add {name} mode tap user USER`)")]
    Permission { name: String },
    #[error("TAP {name}: it is in use by another process")]
    Busy { name: String },
    #[error("TAP {name}: an interface of that name exists and is not a TAP")]
    NotATap { name: String },
    // The cause is part of the message, so it is no `source` (a field of that name would be):
    // a chain printed whole would say it twice.
    #[error("TAP {name}: {what}: {cause}")]
    Io { name: String, what: &'static str, cause: io::Error },
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: Arc<File>,
}

impl Tap {
    /// Opens TAP `name`, creating it if it does not exist, and brings it up.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !super::spec::valid_ifname(name) {
            return Err(TapError::BadName(name.to_owned()));
        }
        let owned = || name.to_owned();
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => TapError::NoTunDevice { name: owned() },
            io::ErrorKind::PermissionDenied => TapError::TunPermission { name: owned() },
            _ => TapError::Io { name: owned(), what: "opening /dev/net/tun", cause: e },
        })?;
        let mut req = IfReq::new(name);
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (layout above),
        // and `file` is an open /dev/net/tun descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name: owned() },
                Some(libc::EBUSY) => TapError::Busy { name: owned() },
                Some(libc::EINVAL) => TapError::NotATap { name: owned() },
                _ => TapError::Io { name: owned(), what: "TUNSETIFF", cause: e },
            });
        }
        bring_up(name)?;
        Ok(Tap { name: owned(), file: Arc::new(file) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle that sends frames on the TAP (used by the output stage).
    pub fn writer(&self) -> TapWriter {
        TapWriter { name: self.name.clone(), file: Arc::clone(&self.file) }
    }

    /// Starts a thread that reads frames from the TAP and sends each into `frames`, then rings
    /// `doorbell` (so a running guest is kicked to take it), until the receiver is dropped or
    /// the returned handle is stopped.
    pub fn spawn_reader(
        &self,
        frames: Sender<Vec<u8>>,
        doorbell: crate::event::Doorbell,
    ) -> Result<TapReader, TapError> {
        let io_err = |what| move |source| TapError::Io { name: self.name.clone(), what, cause: source };
        let file = self.file.try_clone().map_err(io_err("duplicating the descriptor"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tap-{}", self.name))
            .spawn({
                let stop = Arc::clone(&stop);
                move || read_loop(&name, file, &frames, &doorbell, &stop)
            })
            .map_err(io_err("starting the reader thread"))?;
        Ok(TapReader { stop, thread: Some(thread) })
    }
}

/// Sends frames on a TAP.
#[derive(Clone, Debug)]
pub struct TapWriter {
    name: String,
    file: Arc<File>,
}

impl TapWriter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one frame (a TAP takes one frame per write).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = (&*self.file).write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write of {n} of {}", frame.len())));
        }
        Ok(())
    }
}

/// The reader thread of a TAP; stopped (and joined) on drop.
pub struct TapReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TapReader {
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("TAP reader thread panicked");
            }
        }
    }
}

impl Drop for TapReader {
    fn drop(&mut self) {
        self.halt();
    }
}

fn read_loop(
    name: &str,
    mut file: File,
    frames: &Sender<Vec<u8>>,
    doorbell: &crate::event::Doorbell,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; READ_BUF];
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(file.as_raw_fd(), Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(tap = name, error = %e, "TAP poll failed; reader stops");
                return;
            }
        }
        match file.read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => {
                if frames.send(buf[..n].to_vec()).is_err() {
                    return; // Nobody listens any more.
                }
                doorbell();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
            Err(e) => {
                tracing::error!(tap = name, error = %e, "TAP read failed; reader stops");
                return;
            }
        }
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Sets IFF_UP on interface `name`. Without permission to do so, a TAP that is down is only
/// warned about: whoever created it may bring it up.
fn bring_up(name: &str) -> Result<(), TapError> {
    let io_err = |what, source| TapError::Io { name: name.to_owned(), what, cause: source };
    // SAFETY: plain socket(2) call; the descriptor is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("opening a socket to set it up", io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of one `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS as _, &mut req as *mut IfReq) } < 0 {
        return Err(io_err("reading its flags", io::Error::last_os_error()));
    }
    if req.flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of one `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS as _, &mut req as *mut IfReq) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            tracing::warn!(tap = name, "TAP is down and we may not bring it up (needs CAP_NET_ADMIN)");
            return Ok(());
        }
        return Err(io_err("bringing it up", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_touching_the_system() {
        for bad in ["", "a/b", "0123456789abcdef", "has space"] {
            let err = Tap::open(bad).unwrap_err();
            assert!(matches!(err, TapError::BadName(_)), "{bad}: {err}");
        }
    }

    fn ifindex(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    /// Sends `frame` out of interface `ifindex` through an AF_PACKET socket: the TAP's reader
    /// receives it.
    fn inject(ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: plain socket(2) call; closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is fresh and owned here.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[test]
    fn a_tap_is_created_carries_frames_and_disappears() {
        if !std::path::Path::new(TUN_PATH).exists() {
            ftvm_tests::cannot_run(&format!("{TUN_PATH} is missing"));
            return;
        }
        let name = format!("ftvmt{}", std::process::id() % 1_000_000);
        let tap = match Tap::open(&name) {
            Ok(tap) => tap,
            Err(e @ (TapError::Permission { .. } | TapError::TunPermission { .. })) => {
                assert!(e.to_string().contains(&name));
                ftvm_tests::cannot_run(&e.to_string());
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(std::path::Path::new(&format!("/sys/class/net/{name}")).exists());

        // Host -> TAP -> reader thread.
        let (tx, rx) = crossbeam_channel::unbounded();
        let reader = tap.spawn_reader(tx, std::sync::Arc::new(|| {})).unwrap();
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5];
        frame.extend_from_slice(b"ftvm tap test");
        inject(ifindex(&name), &frame).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(f) if f == frame => break true,
                Ok(_) => continue, // Something else the kernel sent (IPv6 autoconfiguration...).
                Err(_) => break false,
            }
        };
        assert!(got, "injected frame never reached the reader");

        // Guest -> TAP: the write is accepted.
        tap.writer().send(&frame).unwrap();

        reader.stop();
        drop(tap);
        assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists(), "TAP not removed");
    }
}
