//! Failure after failure (issue 13, point 4), in the topology of `ftvm_tests::ft` with the VM's
//! disk on gfs (`gfs:/vm/kv.img`, fenced by register `ft.kv`): the kv VM serves a client that
//! sends SET/GET without pause on one connection while, cycle after cycle, the live side is
//! killed (`kill -9`), the other takes over, a new backup starts on the dead side's host and
//! joins by live pre-copy, and the cycle ends once the VM is protected again.
//!
//! Per cycle it prints the outage the client saw (longest gap between replies from the kill to
//! the new backup's start), the time from the kill to protected again, and the join pause. At
//! the end:
//! - acknowledged SETs lost: every acknowledged SET must read back from the live VM (on the
//!   client's connection) and from the gfs file, the guest booted again from it after the live
//!   side stopped cleanly; a key missing from either counts once;
//! - split brains: any time two VMMs released output at once, judged from their own timestamped
//!   lines (`ft: output released from T (generation G)`, `ft: halting; output last released at
//!   T`; a killed VMM's span ends when SIGKILL is sent to it) by the judge of the partition
//!   tests, and a reply that contradicts an acknowledged write (the client stops with an error
//!   on the first one).
//!
//! Both must be 0. The default suite runs [`DEFAULT_CYCLES`]; `tests/soak.sh N` runs N
//! (`FTVM_SOAK_CYCLES=N cargo test --release -p ftvm-tests --test ft_soak -- --ignored --nocapture`).

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::partition::{overlaps, release_span, unix_now, ReleaseSpan};
use ftvm_tests::ft::{contradicts_an_acknowledged_write, number, wait_for_line};
use ftvm_tests::ft::{FtNet, Host, Join, KvLoad, LoadReport, Unread, FT_PORT};
use ftvm_tests::{require_namespaces, Process};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DEFAULT_CYCLES: usize = 3;
/// Replies the client must get between two events of a cycle.
const REPLIES_BETWEEN: usize = 100;
/// A primary whose backup was killed at the end of the soak.
const ALONE: &str = "ft: backup lost (no word for {n} ms); running alone, generation {n}";

#[test]
fn the_vm_on_a_gfs_disk_survives_three_failures_in_a_row() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("ftsoak")?;
    net.explain(soak(&net, DEFAULT_CYCLES))
}

/// The soak with `FTVM_SOAK_CYCLES` cycles (see `tests/soak.sh`).
#[test]
#[ignore = "long: run by tests/soak.sh N"]
fn soak_for_the_cycles_asked() -> Result<()> {
    require_namespaces!();
    let cycles = std::env::var("FTVM_SOAK_CYCLES").unwrap_or_else(|_| "100".into());
    let cycles = cycles.parse().with_context(|| format!("FTVM_SOAK_CYCLES={cycles:?} is not a number"))?;
    let net = FtNet::with_gfs_disk("ftsoakn")?;
    net.explain(soak(&net, cycles))
}

/// A VMM of the soak.
struct Vmm {
    process: Process,
    host: Host,
    /// Its `--ft-listen`.
    listen: String,
}

impl Vmm {
    fn label(&self) -> String {
        format!("{} pid {}", self.host.label(), self.process.pid())
    }
}

/// What one cycle measured.
struct Cycle {
    number: usize,
    killed: Instant,
    /// The new backup's start.
    rejoin: Instant,
    /// From the kill to the live side's `ft: protected by` line.
    reprotected: Duration,
    /// The join's pause, from that line.
    pause: u64,
}

struct Soak<'a> {
    net: &'a FtNet,
    live: Vmm,
    backup: Vmm,
    generation: u64,
    /// VMMs killed, with the time SIGKILL was sent (Unix seconds): their output spans end there.
    killed: Vec<(Vmm, f64)>,
    /// When the last backup was killed, at the end.
    backup_killed_at: Option<f64>,
    cycles: Vec<Cycle>,
}

fn soak(net: &FtNet, cycles: usize) -> Result<()> {
    let UnderLoad { primary, backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    let mut soak = Soak {
        net,
        live: Vmm { process: primary, host: Host::A, listen: Host::A.ft_listen() },
        backup: Vmm { process: backup, host: Host::B, listen: Host::B.ft_listen() },
        generation,
        killed: Vec::new(),
        backup_killed_at: None,
        cycles: Vec::new(),
    };
    let run = (1..=cycles).try_for_each(|cycle| soak.cycle(cycle, &mut load).with_context(|| format!("cycle {cycle}")));
    // The backup goes first, so the live side runs alone at the next generation and then
    // stops cleanly, releasing the register for the guest booted again from the disk.
    soak.kill_backup()?;
    let (spans, mut split_brains) = soak.judge()?;
    let ended = run.and_then(|()| load.finish_counting_unread());
    let (report, unread_live) = match ended {
        Ok(ended) => ended,
        Err(error) => {
            let text = format!("{error:#}");
            if contradicts_an_acknowledged_write(&text) {
                split_brains.push(format!("a reply contradicts an acknowledged write: {text}"));
            }
            soak.print_outcome(&spans, &split_brains, None);
            return Err(error);
        }
    };
    println!("{}", report.summary());
    soak.print_cycles(&report);
    let alone = wait_for_line(&mut soak.live.process, ALONE, TAKEOVER)?;
    let alone = number(&alone[1])?;
    let (unread_disk, loaded) = unread_on_disk(net, &mut soak.live.process, "the live side", alone, &report)?;
    println!(
        "the guest booted again from the gfs file loaded {loaded} keys ({} acknowledged)",
        report.acknowledged_sets()
    );
    let lost = soak.print_outcome(&spans, &split_brains, Some((&report, &unread_live, &unread_disk)));
    ensure!(lost == 0 && split_brains.is_empty(), "acknowledged SETs lost {lost}, split brains {}", split_brains.len());
    Ok(())
}

impl Soak<'_> {
    /// Kills the live side, waits for the backup to take over, starts a new backup on the dead
    /// side's host and waits until it protects the VM; the client must answer in between.
    fn cycle(&mut self, cycle: usize, load: &mut KvLoad) -> Result<()> {
        // A pair that split on its own (a side silent for the channel's timeout on a loaded
        // machine) is not what a cycle measures: the soak stops there and says so.
        ensure_running(&mut self.live.process, "live side")?;
        ensure_running(&mut self.backup.process, "backup")?;
        let lines = self.live.process.output();
        ensure!(!lines.contains("ft: backup lost"), "the live side lost its backup before the kill");
        let before = load.replies();
        let killed = Instant::now();
        // Its span ends when SIGKILL is sent: reaping a VMM (its guest memory freed) takes a while.
        self.live.process.signal(libc::SIGKILL)?;
        let killed_at = unix_now();
        self.live.process.kill();
        self.generation = took_over(&mut self.backup.process, killed, self.generation)?;
        register_names(self.net, self.backup.host, port_of(&self.backup.listen)?, self.generation)?;
        load.wait_for_replies(before + REPLIES_BETWEEN, ANSWERS_TIMEOUT)?;

        // The dead host gets a new backup, on a port no earlier backup used there.
        let (dead_host, live_listen) = (self.live.host, self.backup.listen.clone());
        let port = FT_PORT + cycle as u16;
        let rejoin = Instant::now();
        let join = Join::Address(live_listen.clone());
        let new_backup = join_backup(self.net, dead_host, port, &join, &mut self.backup.process, &live_listen)?;
        let new_backup = Vmm { process: new_backup, host: dead_host, listen: dead_host.ft_listen_on(port) };
        let protected = wait_for_line(
            &mut self.backup.process,
            &format!("ft: protected by {} since {{landmark}} (pause {{n}} ms)", new_backup.listen),
            Duration::from_secs(1),
        )?;
        let reprotected = killed.elapsed();
        let pause = number(&protected[1])?;
        println!(
            "cycle {cycle}: {} live at generation {}, protected again by {} {} ms after the kill (join pause {pause} ms)",
            self.backup.host.label(),
            self.generation,
            dead_host.label(),
            reprotected.as_millis()
        );
        self.cycles.push(Cycle { number: cycle, killed, rejoin, reprotected, pause });
        let new_live = std::mem::replace(&mut self.backup, new_backup);
        let dead = std::mem::replace(&mut self.live, new_live);
        self.killed.push((dead, killed_at));
        load.wait_for_replies(load.replies() + REPLIES_BETWEEN, ANSWERS_TIMEOUT)?;
        ensure_running(&mut self.live.process, "live side")
    }

    fn kill_backup(&mut self) -> Result<()> {
        self.backup.process.signal(libc::SIGKILL)?;
        self.backup_killed_at = Some(unix_now());
        self.backup.process.kill();
        Ok(())
    }

    /// Every VMM's span of released output (killed ones end at their kill, the live one now)
    /// and the times two of them released output at once.
    fn judge(&self) -> Result<(Vec<ReleaseSpan>, Vec<String>)> {
        let now = unix_now();
        let mut spans = Vec::new();
        let running = [(&self.live, now), (&self.backup, self.backup_killed_at.unwrap_or(now))];
        for (vmm, ended) in self.killed.iter().map(|(vmm, at)| (vmm, *at)).chain(running) {
            spans.extend(release_span(&vmm.label(), &vmm.process.output(), ended)?);
        }
        let split_brains = overlaps(&spans);
        Ok((spans, split_brains))
    }

    fn print_cycles(&self, report: &LoadReport) {
        println!("cycle | outage the client saw | kill to protected again | join pause");
        for cycle in &self.cycles {
            let outage = report.longest_gap_within(cycle.killed, Some(cycle.rejoin)).unwrap_or_default();
            println!(
                "{:>5} | {:>18} ms | {:>20} ms | {:>7} ms",
                cycle.number,
                outage.as_millis(),
                cycle.reprotected.as_millis(),
                cycle.pause
            );
        }
    }

    /// Prints the split brains, the closest hand-over of output between two VMMs, and the
    /// final line; returns the acknowledged SETs lost (`read`: the report and the keys that did
    /// not read back live and from the disk, when the soak got that far).
    fn print_outcome(
        &self,
        spans: &[ReleaseSpan],
        split_brains: &[String],
        read: Option<(&LoadReport, &[Unread], &[Unread])>,
    ) -> usize {
        for split in split_brains {
            println!("SPLIT BRAIN: {split}");
        }
        let mut ordered: Vec<&ReleaseSpan> = spans.iter().collect();
        ordered.sort_by(|a, b| a.from.total_cmp(&b.from));
        let closest = ordered.windows(2).map(|pair| pair[1].from - pair[0].until).min_by(f64::total_cmp);
        if let Some(closest) = closest {
            println!(
                "{} VMMs released output; the closest hand-over: {:.1} ms from one's last release to the next one's first",
                spans.len(),
                closest * 1e3
            );
        }
        let cycles = self.cycles.len();
        let Some((report, live, disk)) = read else {
            println!(
                "after {cycles} cycles: acknowledged SETs lost: not read back, split brains: {}",
                split_brains.len()
            );
            return 0;
        };
        for unread in live.iter().take(5) {
            println!("lost on the live VM: {unread}");
        }
        for unread in disk.iter().take(5) {
            println!("lost on the disk: {unread}");
        }
        let lost: BTreeSet<&str> = live.iter().chain(disk).map(|unread| unread.key.as_str()).collect();
        println!(
            "after {cycles} cycles: {} acknowledged SETs, acknowledged SETs lost: {} ({} on the live VM, {} on the \
             disk), split brains: {}",
            report.acknowledged_sets(),
            lost.len(),
            live.len(),
            disk.len(),
            split_brains.len()
        );
        lost.len()
    }
}

fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).context("no port in the address")
}
