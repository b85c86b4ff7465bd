//! `ftvm status ADDR` and `--metrics ADDR` on a pair over loopback: each side answers for itself
//! on its `--ft-listen` port, before and after a failover, and the metrics follow.

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::loopback::{free_addr, Master};
use ftvm_tests::{binary, with_keys};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(90);
/// Long enough to outlive the test's questions (the VMMs are killed on drop).
const TIMER: &[&str] = &["timer", "60000"];

/// `ftvm status ADDR ARGS`: its stdout, or why it failed.
fn status(addr: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut command = Command::new(binary("ftvm")?);
    Ok(with_keys(&mut command)?.arg("status").arg(addr).args(args).output()?)
}

fn status_json(addr: &str) -> Result<Value> {
    let out = status(addr, &["--json"])?;
    ensure!(out.status.success(), "ftvm status {addr} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("ftvm status --json printed no JSON")
}

/// Polls `ftvm status ADDR --json` until `done` holds for the report.
fn status_until(addr: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + LONG;
    loop {
        let report = status_json(addr)?;
        if done(&report) {
            return Ok(report);
        }
        ensure!(Instant::now() < deadline, "{addr} never reported {what}: {report}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(addr: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: ftvm\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The value of metric `name` (a line `name value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn status_and_metrics_follow_each_side_through_a_failover() -> Result<()> {
    let master = Master::start()?;
    let (a, b, metrics_a, metrics_b) = (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let mut p = master.primary("st", &a, TIMER, &["--metrics", &metrics_a])?;
    p.wait_for("ft: live as st generation 1", LONG)?;
    let alone = status_json(&a)?;
    ensure!(alone["role"] == "live" && alone["protected"] == false, "{alone}");

    let mut s = master.backup(&a, &b, &["--metrics", &metrics_b])?;
    p.wait_for("ft: protected by ", LONG)?;
    let primary = status_until(&a, "a backup", |r| r["protected"] == true)?;
    ensure!(primary["vm"] == "st" && primary["generation"] == 1, "{primary}");
    ensure!(primary["peer"] == b.as_str(), "the primary names its backup {b}: {primary}");
    ensure!(primary["exits"].as_u64() > Some(0), "{primary}");
    ensure!(primary["landmark"].as_str().is_some_and(|l| l.starts_with("Exit(")), "{primary}");
    // The lag and the log grow as the pair runs.
    let primary =
        status_until(&a, "the backup's lag", |r| r["backup_lag"].is_object() && r["log_bytes"].as_u64() > Some(0))?;
    ensure!(primary["backup_lag"]["p99_ms"].as_f64().is_some(), "{primary}");
    let backup = status_json(&b)?;
    ensure!(backup["role"] == "following" && backup["generation"] == 1, "the backup answers for itself: {backup}");
    ensure!(backup["peer"] == a.as_str(), "the backup names its primary {a}: {backup}");

    // Without the cluster key, nothing is told.
    let stranger = Command::new(binary("ftvm")?).args(["status", &a, "--insecure"]).env_remove("FT_KEYS").output()?;
    let said = String::from_utf8_lossy(&stranger.stderr);
    ensure!(!stranger.status.success() && !String::from_utf8_lossy(&stranger.stdout).contains("generation"), "{said}");
    ensure!(said.contains("gave no status"), "a status asker without the key learns nothing: {said}");

    let text = status(&a, &[])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(text.contains("role:        live, protected"), "{text}");
    ensure!(text.contains(&format!("backup:      {b}")), "{text}");

    let scraped = scrape(&metrics_a)?;
    ensure!(metric(&scraped, "ftvm_protected") == Some(1.0), "{scraped}");
    ensure!(metric(&scraped, "ftvm_exits_total").is_some_and(|n| n > 0.0), "{scraped}");
    ensure!(metric(&scraped, "ftvm_backup_lag_p99_seconds").is_some(), "{scraped}");
    ensure!(metric(&scrape(&metrics_b)?, "ftvm_following") == Some(1.0), "the backup's metrics");

    p.kill();
    s.wait_for("ft: live at ", LONG)?;
    let taken_over = status_until(&b, "live", |r| r["role"] == "live")?;
    ensure!(taken_over["generation"] == 2 && taken_over["failovers"] == 1, "{taken_over}");
    ensure!(taken_over["protected"] == false, "no backup yet after the failover: {taken_over}");
    let scraped = scrape(&metrics_b)?;
    ensure!(metric(&scraped, "ftvm_failovers_total") == Some(1.0), "{scraped}");
    ensure!(metric(&scraped, "ftvm_live") == Some(1.0), "{scraped}");
    Ok(())
}

#[test]
fn status_of_an_address_where_no_vmm_listens_says_so() -> Result<()> {
    let addr = free_addr()?;
    let out = status(&addr, &[])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains(&format!("no VMM answers on {addr}")), "{stderr}");
    let out = status("not-an-address", &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1) && stderr.contains("not-an-address is not an address"), "{stderr}");
    Ok(())
}
