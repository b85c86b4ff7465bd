//! `--commit verified` on one host over loopback, with the `tsc` workload: each value it prints
//! is a fresh RDTSC, which KVM does not log, so a backup's replay prints other bytes. In verified
//! mode the backup compares each output with the primary's and asks for a resync at the first
//! difference; the pair must stay protected through them, and a kill -9 of the primary must
//! still leave a backup that goes live and finishes the work. (The failover of a client's TCP
//! connection in verified mode is in `ft_pair.rs`.)

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::loopback::{free_addr, Master};
use ftvm_tests::Process;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);
/// Six seconds of values, one every 100 ms.
const TSC: &[&str] = &["tsc", "60"];

fn exit_code(process: &mut Process) -> Result<i32> {
    let status = process.wait(LONG)?;
    status.code().with_context(|| format!("killed by a signal ({status}):\n{}", process.output()))
}

/// The values `tsc` printed (`tsc: I VALUE`), by I.
fn values(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("tsc: ")?.split(' ');
            let (i, value) = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
            words.next().is_none().then_some((i, value))
        })
        .collect()
}

#[test]
fn tsc_in_verified_mode_causes_resyncs_the_pair_stays_protected_and_a_kill_still_fails_over() -> Result<()> {
    let master = Master::start()?;
    let (a, b) = (free_addr()?, free_addr()?);
    let mut p = master.primary("tsc", &a, TSC, &["--commit", "verified"])?;
    p.wait_for("ft: live as tsc generation 1", LONG)?;
    let mut s = master.backup(&a, &b, &[])?;
    p.wait_for("ft: protected by ", LONG)?;
    // Both sides count the resyncs, a line each.
    for n in 1..=3 {
        p.wait_for(&format!("ft: resync {n} ("), LONG)?;
        s.wait_for(&format!("ft: resync {n} ("), LONG)?;
    }
    let before = p.output();
    ensure!(!before.contains("backup lost"), "the pair broke up during the resyncs:\n{before}");
    ensure!(values(&s.output()).is_empty(), "a following backup printed console output:\n{}", s.output());
    ensure!(!values(&before).is_empty(), "the primary released no value:\n{before}");
    p.kill();
    p.wait(LONG)?; // reaped: every byte it printed has been read
                   // What the primary released up to its death (it may have released more since `before`).
    let released = values(&p.output());
    s.wait_for("ft: live at ", LONG)?;
    assert_eq!(exit_code(&mut s)?, 0, "{}", s.output());
    let out = s.output();
    ensure!(out.contains(", generation 2, "), "the backup won the next generation:\n{out}");
    // The backup finished the work from past what the primary released: it printed none of the
    // released values again, and every later one, including those the primary held across a
    // resync when it died (the resync carried them to the backup, which issued them again).
    let finished = values(&out);
    // Values are numbered 0..60; `None`: the primary released none.
    let last_released = released.last().map(|&(i, _)| i);
    ensure!(
        finished.iter().all(|&(i, _)| Some(i) > last_released),
        "the backup printed a value the primary had released:\nprimary:\n{before}\nbackup:\n{out}"
    );
    let missing: Vec<u64> =
        (last_released.map_or(0, |i| i + 1)..60).filter(|i| !finished.iter().any(|&(j, _)| j == *i)).collect();
    ensure!(
        missing.is_empty(),
        "values {missing:?} were printed by neither side (last released: {last_released:?}):\nprimary:\n{}\nbackup:\n{out}",
        p.output()
    );
    ensure!(out.contains("tsc: 60 reads, 59 forwards"), "the backup's run did not end as it should:\n{out}");
    Ok(())
}
