//! The FT pair over a gfs disk (issue 12, points 3 and 6), in the topology of `ftvm_tests::ft`
//! with the VM's disk the gfs file `gfs:/vm/kv.img`, fenced by register `ft.kv`:
//! - the failover under load: the backup goes live, issues the writes the primary had not
//!   completed again with its new generation, and every acknowledged SET is in the gfs file;
//! - a primary stopped in the middle of a gfs write: when it continues, that write carries the
//!   old generation, the chunkservers refuse it, and it halts with `ft: fenced out by generation
//!   G: halting` (status 75) without anything it held leaving;
//! - a primary alone whose register another VM took (`--takeover`) halts the same way at its
//!   next write, and every SET it acknowledged is in the file;
//! - `--ft` over a gfs disk that is not fenced is refused, naming the commands that fence one.

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::{number, wait_for_line, FtNet, Host, GFS_DISK, GFS_MASTER, GUEST_MAC};
use ftvm_tests::require_namespaces;
use std::time::{Duration, Instant};

/// `ftvm`'s status for a side that lost the race or was fenced out.
const HALTED: i32 = 75;
/// The line of a side whose gfs write was refused because another side won.
const FENCED_OUT: &str = "ft: fenced out by generation {n}: halting";

#[test]
fn a_primary_killed_over_a_gfs_disk_leaves_every_acknowledged_set_in_the_gfs_file() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("fgkill")?;
    net.explain(primary_killed(&net))
}

fn primary_killed(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    let before = load.replies();
    primary.kill();
    let killed = Instant::now();
    let won = took_over(&mut backup, killed, generation)?;
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;
    ensure_running(&mut backup, "backup that took over")?;
    let report = load.finish()?;
    println!("{}", report.summary());
    if let Some((gap, _)) = report.longest_gap() {
        println!("outage the client saw: {} ms; around the kill: {}", gap.as_millis(), report.around(killed));
    }
    survives_on_disk(net, &mut backup, "the backup that took over", won, &report)
}

/// The primary is cut off from gfs between two of the client's requests, so its releaser is
/// left inside the next SET's gfs write (retrying) with the replies behind it held; then it is
/// stopped (SIGSTOP), the
/// backup goes live and issues that write and the rest again with the new generation, gfs is
/// reachable again and the old primary continues: its write must be refused, and it must halt
/// with the fenced-out line, release nothing (not one frame from its TAP), and leave the file
/// holding exactly what the client saw acknowledged.
#[test]
fn a_primary_stopped_inside_a_gfs_write_is_fenced_out_when_it_continues() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("fgstop")?;
    net.explain(stopped_inside_a_write(&net))
}

/// With no answer for this long while host-a cannot reach gfs, its releaser is inside a write.
const STALLED: Duration = Duration::from_millis(500);

fn stopped_inside_a_write(net: &FtNet) -> Result<()> {
    let UnderLoad { mut primary, mut backup, generation, mut load } = protected_under_load(net, &[], &[])?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;

    // Between two requests every write and flush has left, so after the cut the first gfs
    // operation is the next SET's write (a flush would carry no generation to refuse).
    load.pause(ANSWERS_TIMEOUT)?;
    net.cut_from_storage(Host::A)?;
    load.resume();
    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(10);
    // Every SET's reply waits on its write: the client stalls once a write cannot reach gfs.
    while load.last_reply().is_some_and(|last| last.elapsed() < STALLED) {
        ensure!(Instant::now() < deadline, "the client is still answered 10 s after host-a lost gfs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_after = load.replies();
    primary.signal(libc::SIGSTOP)?;
    let stopped = Instant::now();
    let won = took_over(&mut backup, stopped, generation)?;
    load.wait_for_replies(stalled_after + ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;

    net.restore_storage(Host::A)?;
    let written_before = net.frames_from_vm(Host::A)?;
    primary.signal(libc::SIGCONT)?;
    let status = primary.wait(TAKEOVER).context("the old primary after SIGCONT")?;
    let fenced = wait_for_line(&mut primary, FENCED_OUT, TAKEOVER)?;
    ensure!(status.code() == Some(HALTED), "the old primary exited with {status}, not {HALTED}");
    ensure!(number(&fenced[0])? == won, "the old primary was fenced out by generation {}, not {won}", fenced[0]);
    ensure!(
        !primary.output().contains("ft: lost the go-live race"),
        "the old primary raced although its write was refused:\n{}",
        primary.output()
    );
    let written_after = net.frames_from_vm(Host::A)?;
    ensure!(
        written_after == written_before,
        "the old primary wrote {} frame(s) to its TAP after it was continued",
        written_after - written_before
    );
    let before = load.replies();
    load.wait_for_replies(before + ANSWERS, ANSWERS_TIMEOUT)?;
    let report = load.finish()?;
    println!("{}", report.summary());
    println!("around the stop: {}", report.around(stopped));
    survives_on_disk(net, &mut backup, "the backup that took over", won, &report)
}

/// A protected VM running alone (no backup) whose register another VM takes with `--takeover`
/// (the operator's word, here wrong): the old VM's next gfs write is refused and it halts with
/// the fenced-out line and status 75; the client saw no failed SET, and every SET it saw
/// acknowledged is in the file (the new VM loads them all when it boots from it).
#[test]
fn a_primary_whose_register_was_taken_over_halts_at_its_next_write() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("fgtake")?;
    net.explain(taken_over(&net))
}

fn taken_over(net: &FtNet) -> Result<()> {
    let (mut old, generation) = live_primary(net, Host::A, &[])?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT)?;

    let mut new = net.primary(Host::B, NAME, &["--takeover"])?;
    let live = wait_for_line(&mut new, &format!("ft: live as {NAME} generation {{n}}"), BOOT)?;
    let won = number(&live[0])?;
    ensure!(won == generation + 1, "the new VM went live at generation {won}, expected {}", generation + 1);
    let status = old.wait(TAKEOVER).context("the old VM after the takeover")?;
    let fenced = wait_for_line(&mut old, FENCED_OUT, TAKEOVER)?;
    ensure!(status.code() == Some(HALTED), "the old VM exited with {status}, not {HALTED}");
    ensure!(number(&fenced[0])? == won, "the old VM was fenced out by generation {}, not {won}", fenced[0]);
    new.wait_for("kv: listening on", BOOT)?;

    // The connection to the old VM is dead; what it answered before must all be in the file.
    let report = load.finish_unanswered()?;
    println!("{}", report.summary());
    ensure!(report.read_back >= ANSWERS / 2, "only {} acknowledged SETs", report.read_back);
    survives_on_disk(net, &mut new, "the VM that took over", won, &report)
}

/// `--ft` with a gfs disk that no register fences is refused with the commands that make a
/// fenced copy, and the register taken for the start is given back.
#[test]
fn ft_over_an_unfenced_gfs_disk_is_refused_with_the_commands_that_fence_one() -> Result<()> {
    require_namespaces!();
    let net = FtNet::with_gfs_disk("fgplain")?;
    net.explain(unfenced(&net))
}

fn unfenced(net: &FtNet) -> Result<()> {
    let plain = "gfs:/vm/plain.img";
    let create = ["disk", "create", plain, "--size", "1M", "--gfs-master", GFS_MASTER];
    net.ftvm_to_end(Host::A, &create.map(str::to_owned))?;
    let listen = Host::A.ft_listen();
    let run = ["run", "--guest", "hello", "--disk", plain, "--ft", "plain", "--gfs-master", GFS_MASTER];
    let args: Vec<String> = run.iter().chain(&["--ft-listen", listen.as_str()]).map(|w| (*w).to_owned()).collect();
    let refused = net.ftvm_to_end(Host::A, &args).err().context("--ft over an unfenced gfs disk ran")?;
    let message = format!("{refused:#}");
    ensure!(
        message.contains("gfs:/vm/plain.img: not fenced")
            && message.contains("ftvm disk export gfs:/vm/plain.img")
            && message.contains("--fence"),
        "the refusal does not name the commands that fence the disk: {message}"
    );
    let register = net.register("ft.plain")?;
    ensure!(register == "ft.plain generation 2 holder", "the register reads {register:?} after the refusal");
    // The fenced disk itself is refused without --ft (its writes need the register).
    let bare = ["run", "--guest", "hello", "--disk", GFS_DISK, "--gfs-master", GFS_MASTER];
    let refused = net.ftvm_to_end(Host::A, &bare.map(str::to_owned)).err().context("a fenced disk ran without --ft")?;
    ensure!(format!("{refused:#}").contains("run it with --ft kv"), "{refused:#}");
    Ok(())
}
