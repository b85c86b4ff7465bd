//! The demo's network: one machine playing a switch, two hosts, a client and a storage machine,
//! each a network namespace.
//!
//! ```text
//!   client  (10.0.0.100) ─eth0══port-c─┐
//!   storage (10.0.0.10)  ─eth0══port-s─┤ switch: bridge br0
//!   host-a  (10.0.0.11)  ─eth0══port-a─┤   (its forwarding table shows where the VM's MAC is)
//!   host-b  (10.0.0.12)  ─eth0══port-b─┘
//! ```
//! Each host bridges its uplink `eth0` and a TAP `tap0` for its VMM, so the VM's frames leave
//! through the port of the host it runs on. Every namespace is deleted on drop (which takes
//! its links with it).

use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::process::Command;

/// The bridge, in the switch and in each host.
pub const BRIDGE: &str = "br0";
/// The VM's TAP on each host.
pub const TAP: &str = "tap0";
/// The storage machine's address (gfs master and chunkservers).
pub const STORAGE_IP: &str = "10.0.0.10";
const CLIENT_CIDR: &str = "10.0.0.100/24";

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

    pub fn ip(self) -> &'static str {
        match self {
            Host::A => "10.0.0.11",
            Host::B => "10.0.0.12",
        }
    }

    /// The host's port on the switch.
    pub fn switch_port(self) -> &'static str {
        match self {
            Host::A => "port-a",
            Host::B => "port-b",
        }
    }

    pub fn other(self) -> Host {
        match self {
            Host::A => Host::B,
            Host::B => Host::A,
        }
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    fn new(name: String) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Output of `PROGRAM ARGS` run inside the namespace.
    pub fn output_of(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("run {program} in {}", self.name))?;
        if !output.status.success() {
            bail!("{program} {args:?} in {} failed: {}", self.name, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The five namespaces, wired.
pub struct Topology {
    // Dropped in this order: the machines first, the switch they plug into last.
    pub client: NetNs,
    pub storage: NetNs,
    host_a: NetNs,
    host_b: NetNs,
    pub switch: NetNs,
}

/// The prefix of every namespace the demo of process `pid` makes.
pub fn namespace_prefix(pid: u32) -> String {
    format!("ftvm-demo-{pid}-")
}

impl Topology {
    pub fn build() -> Result<Self> {
        let prefix = namespace_prefix(std::process::id());
        // Created one by one so that a failure half-way drops (deletes) those made before.
        let switch = NetNs::new(format!("{prefix}switch"))?;
        let host_a = NetNs::new(format!("{prefix}host-a"))?;
        let host_b = NetNs::new(format!("{prefix}host-b"))?;
        let client = NetNs::new(format!("{prefix}client"))?;
        let storage = NetNs::new(format!("{prefix}storage"))?;
        let topology = Topology { client, storage, host_a, host_b, switch };
        topology.wire().context("wiring the demo's network")?;
        Ok(topology)
    }

    fn wire(&self) -> Result<()> {
        self.switch.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        self.switch.ip(&["link", "set", BRIDGE, "up"])?;
        for host in [Host::A, Host::B] {
            let ns = self.host(host);
            self.plug(ns, host.switch_port())?;
            ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
            ns.ip(&["link", "set", "eth0", "master", BRIDGE])?;
            ns.ip(&["tuntap", "add", "mode", "tap", "name", TAP])?;
            ns.ip(&["link", "set", TAP, "master", BRIDGE])?;
            ns.ip(&["link", "set", TAP, "up"])?;
            ns.ip(&["link", "set", BRIDGE, "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", host.ip()), "dev", BRIDGE])?;
        }
        self.plug(&self.client, "port-c")?;
        self.client.ip(&["addr", "add", CLIENT_CIDR, "dev", "eth0"])?;
        self.plug(&self.storage, "port-s")?;
        self.storage.ip(&["addr", "add", &format!("{STORAGE_IP}/24"), "dev", "eth0"])
    }

    /// A veth from `ns` (`eth0`) to the switch bridge (`port`), both ends up.
    fn plug(&self, ns: &NetNs, port: &str) -> Result<()> {
        self.switch.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
        self.switch.ip(&["link", "set", port, "master", BRIDGE])?;
        self.switch.ip(&["link", "set", port, "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])
    }

    pub fn host(&self, host: Host) -> &NetNs {
        match host {
            Host::A => &self.host_a,
            Host::B => &self.host_b,
        }
    }

    /// The switch port where the switch has learnt `mac`, if it has (`bridge fdb show`).
    pub fn port_of(&self, mac: &str) -> Result<Option<String>> {
        let output = Command::new("bridge")
            .args(["-n", &self.switch.name, "fdb", "show", "br", BRIDGE])
            .output()
            .context("run bridge fdb show")?;
        if !output.status.success() {
            bail!("bridge fdb show failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(learnt_port(&String::from_utf8_lossy(&output.stdout), mac))
    }

    /// Bytes `peer` has acknowledged on `host`'s TCP connections to it (`ss -tin`): the logging
    /// channel between the two hosts.
    pub fn bytes_acked(&self, host: Host, peer: Host) -> Result<u64> {
        let text = self.host(host).output_of("ss", &["-tin", "dst", peer.ip()])?;
        Ok(text
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("bytes_acked:"))
            .filter_map(|n| n.parse::<u64>().ok())
            .sum())
    }
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

/// Moves the calling thread into the namespace `name` (sockets it opens afterwards live there).
pub fn enter_namespace(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns on a namespace descriptor we hold open; it changes the network namespace of
    // this thread only, which the caller dedicates to work in that namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::learnt_port;

    #[test]
    fn only_a_learnt_entry_names_the_port_of_a_mac() {
        let fdb = "52:54:00:f7:00:02 dev port-a master br0 permanent\n\
                   52:54:00:f7:00:02 dev port-b master br0 \n";
        assert_eq!(learnt_port(fdb, "52:54:00:F7:00:02").as_deref(), Some("port-b"));
        assert_eq!(learnt_port(fdb, "52:54:00:f7:00:03"), None);
    }
}
