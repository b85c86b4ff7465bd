//! The gfs master replicated with Raft (issue 16) in the FT topology: three `gfs master
//! --peers` replicas, each in a namespace of its own plugged into the switch (10.0.0.20-22,
//! port 7200), so that one can be cut off from the others by the network (blackhole routes
//! both ways) while the client still reaches every one of them. The chunkservers, the VMMs and
//! the clients are given all three addresses and find the leader themselves.

use super::{plug, FtNet};
use crate::{binary, NetNs};
use anyhow::{bail, Context, Result};
use std::process::Output;
use std::time::{Duration, Instant};

/// The replicas of a replicated master.
pub const MASTER_REPLICAS: usize = 3;
/// The port every replica listens on, at its own address.
const REPLICA_PORT: u16 = 7200;
/// The register a leader probe reads (a read every leader answers and a follower refuses).
const LEADER_PROBE: &str = "ftvm-test-leader-probe";

/// Replica `i`'s address on the segment.
fn replica_ip(i: usize) -> String {
    format!("10.0.0.{}", 20 + i)
}

/// The master's addresses and the replicas' namespaces for a master of `replicas` replicas:
/// one replica is the single master in `storage` (no namespace of its own).
pub(super) fn plug_replicas(tag: &str, switch: &NetNs, replicas: usize) -> Result<(Vec<String>, Vec<NetNs>)> {
    if replicas <= 1 {
        return Ok((vec![super::GFS_MASTER.to_owned()], Vec::new()));
    }
    let mut addrs = Vec::new();
    let mut namespaces = Vec::new();
    for i in 0..replicas {
        let ns = NetNs::new(&format!("{tag}-m{i}"))?;
        plug(switch, &ns, &format!("port-m{i}"))?;
        ns.ip(&["addr", "add", &format!("{}/24", replica_ip(i)), "dev", "eth0"])?;
        addrs.push(format!("{}:{REPLICA_PORT}", replica_ip(i)));
        namespaces.push(ns);
    }
    Ok((addrs, namespaces))
}

/// What one replica answered a client that asked it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// It answered as the leader.
    Leads,
    /// It refused with `NotLeader` (the message names the leader it knows, if any).
    NotLeader(String),
    /// Anything else: not reachable, or another error (the message).
    Failed(String),
}

impl FtNet {
    /// The topology with the master replicated: [`MASTER_REPLICAS`] replicas, one of them
    /// leading before this returns.
    pub fn with_replicated_master(tag: &str) -> Result<Self> {
        Self::build(tag, MASTER_REPLICAS)
    }

    /// As [`FtNet::with_replicated_master`], with the VM's disk on gfs, as
    /// [`FtNet::with_gfs_disk`].
    pub fn with_gfs_disk_on_replicated_master(tag: &str) -> Result<Self> {
        Self::build(tag, MASTER_REPLICAS)?.put_disk_on_gfs()
    }

    /// The master's replicas (1 for a single master).
    pub fn master_replicas(&self) -> usize {
        self.master_addrs.len()
    }

    /// Replica `i`'s address.
    pub fn replica_addr(&self, i: usize) -> &str {
        &self.master_addrs[i]
    }

    /// `gfs --master ADDR --retry-secs 0 ARGS` against replica `i` alone, from the client
    /// namespace: it neither waits nor goes to another replica.
    fn gfs_at_replica(&self, i: usize, args: &[&str]) -> Result<Output> {
        let mut command = self.client.command(&binary("gfs")?);
        command.args(["--master", self.replica_addr(i), "--retry-secs", "0"]).args(args);
        command.output().with_context(|| format!("run {command:?}"))
    }

    fn answer(output: &Output) -> ReplicaAnswer {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if output.status.success() {
            ReplicaAnswer::Leads
        } else if stderr.contains("not the leader") {
            ReplicaAnswer::NotLeader(stderr)
        } else {
            ReplicaAnswer::Failed(stderr)
        }
    }

    /// Whether replica `i` answers a read as the leader (a read of a register, which only a
    /// leader answers).
    pub fn ask_replica(&self, i: usize) -> Result<ReplicaAnswer> {
        Ok(Self::answer(&self.gfs_at_replica(i, &["lock", LEADER_PROBE])?))
    }

    /// What replica `i` alone answers when asked to create `path`: [`ReplicaAnswer::Leads`]
    /// if it created it.
    pub fn write_at_replica(&self, i: usize, path: &str) -> Result<ReplicaAnswer> {
        Ok(Self::answer(&self.gfs_at_replica(i, &["touch", path])?))
    }

    /// Replica `i`'s own view of the namespace (`files F dirs D chunks C`), which every
    /// replica answers, leader or not.
    pub fn replica_counts(&self, i: usize) -> Result<String> {
        let output = self.gfs_at_replica(i, &["status"])?;
        if !output.status.success() {
            bail!("gfs status at replica {i}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// The replica that answers as the leader, other than `except`, polled for up to
    /// `timeout`.
    pub fn master_leader(&self, timeout: Duration, except: Option<usize>) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut answers = Vec::new();
            for i in (0..self.master_replicas()).filter(|&i| Some(i) != except) {
                let answer = self.ask_replica(i)?;
                if answer == ReplicaAnswer::Leads {
                    return Ok(i);
                }
                answers.push(answer);
            }
            if Instant::now() > deadline {
                bail!("no master replica leads after {timeout:?} (leaving out {except:?}): {answers:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts replica `i` off from the other replicas, both ways (blackhole routes in its
    /// namespace first, so that nothing it says after this reaches them, then in theirs); the
    /// client, the hosts and the chunkservers still reach it.
    pub fn cut_replica(&self, i: usize) -> Result<()> {
        self.replica_routes("add", i)
    }

    /// Undoes [`FtNet::cut_replica`].
    pub fn heal_replica(&self, i: usize) -> Result<()> {
        self.replica_routes("del", i)
    }

    fn replica_routes(&self, action: &str, i: usize) -> Result<()> {
        let replica = self.master_namespaces.get(i).with_context(|| format!("replica {i} has no namespace"))?;
        let others: Vec<usize> = (0..self.master_namespaces.len()).filter(|&j| j != i).collect();
        for &j in &others {
            replica.ip(&["route", action, "blackhole", &format!("{}/32", replica_ip(j))])?;
        }
        for &j in &others {
            self.master_namespaces[j].ip(&["route", action, "blackhole", &format!("{}/32", replica_ip(i))])?;
        }
        Ok(())
    }
}
