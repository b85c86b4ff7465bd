//! The FT pair's test topology (issue 11, point 7): one machine playing a small network.
//!
//! ```text
//!   client (10.0.0.100) ──port-c──┐
//!   storage (10.0.0.10: gfs) ─port-s┤ switch: bridge br0
//!   host-a ──eth0══port-a──────────┤
//!   host-b ──eth0══port-b──────────┘
//! ```
//! Each host has an uplink bridge `br0` enslaving its veth to the switch (`eth0`) and a
//! persistent TAP `tap0` for its VMM, so the VM's frames go tap0 → host bridge → veth → switch
//! bridge, and a MAC moving from one host to the other shows in the switch's forwarding table.
//! The host's own address (10.0.0.11 on host-a, 10.0.0.12 on host-b) sits on its uplink bridge
//! and carries its VMM's logging channel and its gfs traffic. A gfs master and three
//! chunkservers run in `storage` for the `ft.NAME` register; with
//! [`FtNet::with_replicated_master`] the master is three Raft replicas instead, each in a
//! namespace of its own on the switch ([`masters`]). The VM's disk is one file both hosts see at
//! the same path (shared storage without fencing: tests only), or with [`FtNet::with_gfs_disk`]
//! the gfs file [`GFS_DISK`], fenced by register `ft.kv`.
//!
//! Everything is created per test and removed on drop, also when the test panics. Namespace
//! names carry the test's tag and the pid, so parallel runs do not collide; the fixtures of one
//! test binary run one after the other (two VMMs and a client on two cores are enough load).

mod gfs_cluster;
mod lines;
mod load;
pub mod loopback;
pub mod masters;
pub mod pair;
pub mod partition;
pub mod random;
pub mod storage_faults;

pub use lines::{match_line, number, wait_for_line};
pub use load::{contradicts_an_acknowledged_write, Exchange, KvLoad, LoadReport, Unread};

use crate::{binary, kv, NetNs, OutputHandle, Process};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The kv guest's address (the `ip=` word of `--guest kv`).
pub const GUEST_CIDR: &str = "10.0.0.2/24";
/// A fixed MAC for the guest, so a test can look for it in the switch's forwarding table.
pub const GUEST_MAC: &str = "52:54:00:f7:00:02";
/// The client namespace's address.
pub const CLIENT_CIDR: &str = "10.0.0.100/24";
/// The storage namespace's address (gfs master and chunkservers).
pub const STORAGE_IP: &str = "10.0.0.10";
/// The gfs master, reachable from both hosts.
pub const GFS_MASTER: &str = "10.0.0.10:7200";
/// The chunkservers' ports on [`STORAGE_IP`].
const CHUNKSERVER_PORTS: [u16; 3] = [7201, 7202, 7203];
/// The port of a VMM's `--ft-listen` on its host's address.
pub const FT_PORT: u16 = 7100;
/// The VM's disk on gfs (with [`FtNet::with_gfs_disk`]), fenced by register `ft.kv`.
pub const GFS_DISK: &str = "gfs:/vm/kv.img";
/// The size of the VM's disk, on a file or on gfs.
const DISK_SIZE: u64 = 64 << 20;
/// `--ft-listen` port of the VM that [`FtNet::plain_vm`] boots over a fenced gfs disk (which
/// only a VM protected under the disk's register may write).
const CHECK_PORT: u16 = 7109;
/// The bridge, in the switch and in each host.
pub const BRIDGE: &str = "br0";
/// The VM's TAP on each host.
pub const TAP: &str = "tap0";
/// How long a boot may take to say `kv: listening on`.
pub const BOOT_TIMEOUT: Duration = kv::BOOT_TIMEOUT;

/// One fixture at a time per test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// One of the two VMM hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    A,
    B,
}

impl Host {
    pub fn label(self) -> &'static str {
        match self {
            Host::A => "host-a",
            Host::B => "host-b",
        }
    }

    /// The host's address on the segment (on its uplink bridge).
    pub fn ip(self) -> &'static str {
        match self {
            Host::A => "10.0.0.11",
            Host::B => "10.0.0.12",
        }
    }

    /// The name of the host's port on the switch bridge.
    pub fn switch_port(self) -> &'static str {
        match self {
            Host::A => "port-a",
            Host::B => "port-b",
        }
    }

    /// `IP:FT_PORT`, the default `--ft-listen` of a VMM on this host.
    pub fn ft_listen(self) -> String {
        self.ft_listen_on(FT_PORT)
    }

    pub fn ft_listen_on(self, port: u16) -> String {
        format!("{}:{port}", self.ip())
    }

    pub fn other(self) -> Host {
        match self {
            Host::A => Host::B,
            Host::B => Host::A,
        }
    }
}

/// How a backup finds the live side.
pub enum Join {
    /// `--join ADDR`.
    Address(String),
    /// `--ft NAME`: from the gfs register `ft.NAME`.
    Register(String),
}

/// The topology of the module comment, with gfs running.
pub struct FtNet {
    /// The gfs master (or its replicas), then the chunkservers (killed first on drop, before
    /// their namespaces go); a slot is empty while a fault test has killed its process.
    gfs: Mutex<Vec<Option<Process>>>,
    /// The master's address, or each replica's (`--peers`, in this order).
    master_addrs: Vec<String>,
    /// Each replica's own namespace; none for a single master (it runs in `storage`).
    master_namespaces: Vec<NetNs>,
    /// Every process spawned on a host, labelled, for diagnostics.
    spawned: Mutex<Vec<(String, OutputHandle)>>,
    /// Register names the primaries were started with, for diagnostics.
    registers: Mutex<Vec<String>>,
    pub client: NetNs,
    pub storage: NetNs,
    host_a: NetNs,
    host_b: NetNs,
    pub switch: NetNs,
    dir: PathBuf,
    disk: PathBuf,
    /// The VM's disk is [`GFS_DISK`], not `disk`.
    on_gfs: bool,
    _serial: MutexGuard<'static, ()>,
}

impl FtNet {
    /// Builds the topology for the test `tag` (short, unique in its binary) and starts gfs.
    pub fn new(tag: &str) -> Result<Self> {
        Self::build(tag, 1)
    }

    /// The topology with a master of `replicas` replicas (1: the single master in `storage`).
    fn build(tag: &str, replicas: usize) -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let switch = NetNs::new(&format!("{tag}-switch"))?;
        switch.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        switch.ip(&["link", "set", BRIDGE, "up"])?;

        let host_a = NetNs::new(&format!("{tag}-host-a"))?;
        let host_b = NetNs::new(&format!("{tag}-host-b"))?;
        for (host, ns) in [(Host::A, &host_a), (Host::B, &host_b)] {
            plug(&switch, ns, host.switch_port())?;
            ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
            ns.ip(&["link", "set", "eth0", "master", BRIDGE])?;
            ns.ip(&["tuntap", "add", "mode", "tap", "name", TAP])?;
            ns.ip(&["link", "set", TAP, "master", BRIDGE])?;
            ns.ip(&["link", "set", TAP, "up"])?;
            ns.ip(&["link", "set", BRIDGE, "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", host.ip()), "dev", BRIDGE])?;
        }
        let client = NetNs::new(&format!("{tag}-client"))?;
        plug(&switch, &client, "port-c")?;
        client.ip(&["addr", "add", CLIENT_CIDR, "dev", "eth0"])?;
        let storage = NetNs::new(&format!("{tag}-storage"))?;
        plug(&switch, &storage, "port-s")?;
        storage.ip(&["addr", "add", &format!("{STORAGE_IP}/24"), "dev", "eth0"])?;
        let (master_addrs, master_namespaces) = masters::plug_replicas(tag, &switch, replicas)?;

        let dir = std::env::temp_dir().join(format!("ftvm-ft-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let disk = dir.join("kv.img");
        let mut net = FtNet {
            gfs: Mutex::new(Vec::new()),
            master_addrs,
            master_namespaces,
            spawned: Mutex::new(Vec::new()),
            registers: Mutex::new(Vec::new()),
            client,
            storage,
            host_a,
            host_b,
            switch,
            dir,
            disk,
            on_gfs: false,
            _serial: serial,
        };
        std::fs::File::create(&net.disk)?.set_len(DISK_SIZE)?;
        net.start_gfs().with_context(|| net.gfs_output())?;
        Ok(net)
    }

    /// As [`FtNet::new`], with the VM's disk on gfs: [`GFS_DISK`], made by `ftvm disk create
    /// ... --fence kv` (the register the tests protect their VM under).
    pub fn with_gfs_disk(tag: &str) -> Result<Self> {
        Self::new(tag)?.put_disk_on_gfs()
    }

    /// Creates [`GFS_DISK`] and makes it the VM's disk.
    fn put_disk_on_gfs(mut self) -> Result<Self> {
        let size = DISK_SIZE.to_string();
        let master = self.gfs_master();
        let args = ["disk", "create", GFS_DISK, "--size", &size, "--fence", pair::NAME, "--gfs-master", &master];
        self.ftvm_to_end(Host::A, &strings(&args))?;
        self.on_gfs = true;
        Ok(self)
    }

    /// What `--gfs-master` and `--master` name: the master, or its replicas (`A,B,C`).
    pub fn gfs_master(&self) -> String {
        self.master_addrs.join(",")
    }

    /// Runs `ftvm ARGS` in `host` to its end; its standard output, or an error with its stderr.
    pub fn ftvm_to_end(&self, host: Host, args: &[String]) -> Result<String> {
        let mut command = self.host(host).command(&binary("ftvm")?);
        command.args(args);
        let output = command.output().with_context(|| format!("run {command:?}"))?;
        if !output.status.success() {
            bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The namespace of `host`.
    pub fn host(&self, host: Host) -> &NetNs {
        match host {
            Host::A => &self.host_a,
            Host::B => &self.host_b,
        }
    }

    /// The VM's disk: one file, the same path on both hosts.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// A scratch directory removed with the fixture.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Spawns `program args` in `host`; its output shows in [`FtNet::diagnostics`].
    pub fn spawn(&self, host: Host, program: &Path, args: &[String]) -> Result<Process> {
        let mut command = self.host(host).command(program);
        command.args(args);
        let process = Process::spawn(command)?;
        let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let label = format!("{} (pid {}): {name} {}", host.label(), process.pid(), args.join(" "));
        self.spawned.lock().unwrap_or_else(PoisonError::into_inner).push((label, process.output_handle()));
        Ok(process)
    }

    /// `ftvm ARGS` in `host`.
    pub fn ftvm(&self, host: Host, args: &[String]) -> Result<Process> {
        self.spawn(host, &binary("ftvm")?, args)
    }

    /// The kv guest, unprotected, on `host`'s TAP with [`GUEST_MAC`] and the shared disk;
    /// waited for until it listens. A gfs disk, fenced, is written only by a VM protected under
    /// its register: there the VM runs with `--ft kv` (alone).
    pub fn plain_vm(&self, host: Host) -> Result<Process> {
        self.plain_vm_with(host, &[])
    }

    /// As [`FtNet::plain_vm`], with `extra` at the end of its command line.
    pub fn plain_vm_with(&self, host: Host, extra: &[&str]) -> Result<Process> {
        let mut args = strings(&["run", "--guest", "kv", &format!("ip={GUEST_CIDR}"), "--net", &net_arg(true)]);
        args.push("--disk".into());
        args.push(self.disk_arg()?);
        if self.on_gfs {
            args.extend(strings(&["--ft", pair::NAME, "--gfs-master", &self.gfs_master()]));
            args.extend(strings(&["--ft-listen", &host.ft_listen_on(CHECK_PORT)]));
        }
        args.extend(strings(extra));
        let mut vm = self.ftvm(host, &args)?;
        vm.wait_for("kv: listening on", BOOT_TIMEOUT)?;
        Ok(vm)
    }

    /// The primary: `ftvm run --guest kv ip=... --net tap=tap0,mac=MAC --disk PATH --ft NAME
    /// --gfs-master ADDR --ft-listen ADDR EXTRA`, started (not waited for).
    pub fn primary(&self, host: Host, name: &str, extra: &[&str]) -> Result<Process> {
        self.registers.lock().unwrap_or_else(PoisonError::into_inner).push(format!("ft.{name}"));
        let mut args = strings(&["run", "--guest", "kv", &format!("ip={GUEST_CIDR}"), "--net", &net_arg(true)]);
        args.extend(strings(&["--disk", &self.disk_arg()?, "--ft", name]));
        // `extra` may name another master (the ft bench's unsealed one).
        if !extra.contains(&"--gfs-master") {
            args.extend(strings(&["--gfs-master", &self.gfs_master()]));
        }
        args.extend(strings(&["--ft-listen", &host.ft_listen()]));
        args.extend(strings(extra));
        self.ftvm(host, &args)
    }

    /// A backup: `ftvm backup (--join ADDR | --ft NAME) --gfs-master ADDR --ft-listen ADDR
    /// --net tap=tap0 --disk PATH EXTRA`, listening on `listen` of its host; started (not waited
    /// for).
    pub fn backup(&self, host: Host, join: &Join, listen: u16, extra: &[&str]) -> Result<Process> {
        let mut args = strings(&["backup"]);
        match join {
            Join::Address(address) => args.extend(strings(&["--join", address])),
            Join::Register(name) => args.extend(strings(&["--ft", name])),
        }
        if !extra.contains(&"--gfs-master") {
            args.extend(strings(&["--gfs-master", &self.gfs_master()]));
        }
        args.extend(strings(&["--ft-listen", &host.ft_listen_on(listen)]));
        args.extend(strings(&["--net", &net_arg(false), "--disk", &self.disk_arg()?]));
        args.extend(strings(extra));
        self.ftvm(host, &args)
    }

    fn disk_arg(&self) -> Result<String> {
        if self.on_gfs {
            return Ok(GFS_DISK.to_owned());
        }
        Ok(self.disk.to_str().context("the disk path is not UTF-8")?.to_owned())
    }

    /// Cuts `host` off from gfs (master and chunkservers): it drops what it sends there (a
    /// blackhole route), while the other host, the client and the segment stay reachable.
    pub fn cut_from_storage(&self, host: Host) -> Result<()> {
        for ip in self.storage_ips() {
            self.host(host).ip(&["route", "add", "blackhole", &format!("{ip}/32")])?;
        }
        Ok(())
    }

    /// Undoes [`FtNet::cut_from_storage`].
    pub fn restore_storage(&self, host: Host) -> Result<()> {
        for ip in self.storage_ips() {
            self.host(host).ip(&["route", "del", "blackhole", &format!("{ip}/32")])?;
        }
        Ok(())
    }

    /// Cuts the hosts off from each other (their logging channel), while both still reach the
    /// guest's segment, gfs and the client: each host silently drops what it sends to the other
    /// (a blackhole route), as a cut cable would.
    pub fn cut_link_between_hosts(&self) -> Result<()> {
        for host in [Host::A, Host::B] {
            self.host(host).ip(&["route", "add", "blackhole", &format!("{}/32", host.other().ip())])?;
        }
        Ok(())
    }

    /// Undoes [`FtNet::cut_link_between_hosts`].
    pub fn restore_link_between_hosts(&self) -> Result<()> {
        for host in [Host::A, Host::B] {
            self.host(host).ip(&["route", "del", "blackhole", &format!("{}/32", host.other().ip())])?;
        }
        Ok(())
    }

    /// Bytes that `peer`'s kernel has acknowledged on `host`'s TCP connections to it (the
    /// logging channel between the two hosts), from `ss -tin`: what reached the peer, whether
    /// its process reads it or not.
    pub fn bytes_acked_to(&self, host: Host, peer: Host) -> Result<u64> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.host(host).name, "ss", "-tin", "dst", peer.ip()])
            .output()
            .context("run ss")?;
        if !output.status.success() {
            bail!("ss failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("bytes_acked:"))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum())
    }

    /// Frames the VMM on `host` has written into its TAP so far (the TAP's receive counter):
    /// what left that host's VM for the network.
    pub fn frames_from_vm(&self, host: Host) -> Result<u64> {
        let counter = format!("/sys/class/net/{TAP}/statistics/rx_packets");
        let output = Command::new("ip")
            .args(["netns", "exec", &self.host(host).name, "cat", &counter])
            .output()
            .context("read the TAP's counter")?;
        if !output.status.success() {
            bail!("reading {counter} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim().parse().with_context(|| format!("{counter} reads {text:?}"))
    }

    /// The switch's forwarding table (`bridge fdb show br br0` in the switch namespace).
    pub fn fdb(&self) -> Result<String> {
        let output = Command::new("bridge")
            .args(["-n", &self.switch.name, "fdb", "show", "br", BRIDGE])
            .output()
            .context("run bridge fdb show")?;
        if !output.status.success() {
            bail!("bridge fdb show failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The switch port where the switch has learnt `mac`, if it has.
    pub fn fdb_port_of(&self, mac: &str) -> Result<Option<String>> {
        Ok(learnt_port(&self.fdb()?, mac))
    }

    /// Polls the switch's forwarding table until `mac` is on `host`'s port.
    pub fn wait_for_mac_on(&self, mac: &str, host: Host, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let port = self.fdb_port_of(mac)?;
            if port.as_deref() == Some(host.switch_port()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the switch has {mac} on {port:?}, not on {} ({}), after {timeout:?}",
                    host.switch_port(),
                    host.label()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One kv connection from the client namespace sending SET/GET without pause.
    pub fn kv_load(&self) -> Result<KvLoad> {
        KvLoad::start(&self.client)
    }

    /// What every process spawned on the hosts printed, the switch's table, the registers and
    /// gfs: for the message of a failing test.
    pub fn diagnostics(&self) -> String {
        let mut text = String::from("\n======== FT topology diagnostics ========\n");
        for (label, output) in self.spawned.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            text.push_str(&format!("---- {label}\n{}", tail(&output.text(), 80)));
        }
        let learnt = match self.fdb() {
            Ok(fdb) => fdb.lines().filter(|l| !l.contains("permanent")).map(|l| format!("{l}\n")).collect(),
            Err(e) => format!("{e:#}\n"),
        };
        text.push_str(&format!("---- switch fdb, learnt entries\n{learnt}"));
        for name in self.registers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let register = self.register(name).unwrap_or_else(|e| format!("{e:#}"));
            text.push_str(&format!("---- register {name}: {register}\n"));
        }
        text.push_str(&self.gfs_output());
        text
    }

    /// Appends [`FtNet::diagnostics`] to a failed scenario's error.
    pub fn explain<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            let diagnostics = self.diagnostics();
            e.context(diagnostics)
        })
    }
}

impl Drop for FtNet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.gfs_processes().clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A veth from `ns` (`eth0`, up) to the switch bridge (`port`, up).
fn plug(switch: &NetNs, ns: &NetNs, port: &str) -> Result<()> {
    switch.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
    switch.ip(&["link", "set", port, "master", BRIDGE])?;
    switch.ip(&["link", "set", port, "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])
}

/// `--net` for the VM on a host's TAP (a backup takes the MAC from the primary).
fn net_arg(with_mac: bool) -> String {
    if with_mac {
        format!("tap={TAP},mac={GUEST_MAC}")
    } else {
        format!("tap={TAP}")
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skipped = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skipped > 0 {
        out.push_str(&format!("[... {skipped} lines before]\n"));
    }
    for line in &all[skipped..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The port of a learnt (not permanent) entry for `mac` in `bridge fdb show` output.
pub fn learnt_port(fdb: &str, mac: &str) -> Option<String> {
    let mac = mac.to_ascii_lowercase();
    fdb.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&mac.as_str()) || words.contains(&"permanent") {
            return None;
        }
        let dev = words.iter().position(|w| *w == "dev")?;
        words.get(dev + 1).map(|port| (*port).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::learnt_port;

    #[test]
    fn a_learnt_entry_names_its_port_and_a_permanent_one_does_not_count() {
        let fdb = "52:54:00:f7:00:02 dev port-a master br0 permanent\n\
                   33:33:00:00:00:01 dev port-a self permanent\n\
                   52:54:00:f7:00:02 dev port-b master br0 \n";
        assert_eq!(learnt_port(fdb, "52:54:00:F7:00:02").as_deref(), Some("port-b"));
        assert_eq!(learnt_port(fdb, "52:54:00:f7:00:03"), None);
        assert_eq!(learnt_port("52:54:00:f7:00:02 dev port-a master br0 permanent\n", "52:54:00:f7:00:02"), None);
    }
}
