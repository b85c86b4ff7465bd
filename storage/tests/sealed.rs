//! Every gfs connection is sealed with the cluster key: a client without it, or with another,
//! is refused at the handshake and both sides say so; what crosses the wire is not readable.

mod common;

use common::{Cluster, GFS};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn master_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir.join("master.log")).unwrap_or_default()
}

/// `gfs ls /` against the cluster's master with the given key flags (and no FT_KEYS).
fn ls_with(c: &Cluster, flags: &[&str]) -> std::process::Output {
    Command::new(GFS)
        .env_remove(seal::KEYS_ENV)
        .args(flags)
        .args(["--master", &c.master_addr, "--retry-secs", "0", "ls", "/"])
        .output()
        .unwrap()
}

fn wait_for_line(c: &Cluster, needle: &str) -> String {
    let mut log = String::new();
    Cluster::wait_until(&format!("the master's log line {needle:?}"), Duration::from_secs(10), || {
        log = master_log(c);
        log.contains(needle)
    });
    log
}

#[test]
fn a_client_without_the_key_is_refused_and_both_sides_say_so() {
    let c = Cluster::start("sealed-nokey", 1, &[]);
    let out = ls_with(&c, &["--insecure"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running with --insecure"), "the client says it runs without keys: {err}");
    assert!(err.contains("opened a sealed channel") && err.contains("--insecure"), "{err}");
    wait_for_line(&c, "did not open a sealed channel");
    // The cluster itself still serves its members.
    c.gfs_ok(&["ls", "/"]);
}

#[test]
fn a_client_with_another_key_is_refused_and_both_sides_say_so() {
    let c = Cluster::start("sealed-otherkey", 1, &[]);
    let other = common::temp_dir("sealed-other-key");
    seal::generate(&other, true).unwrap();
    let out = ls_with(&c, &["--keys", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("keys differ"), "{err}");
    assert_eq!(err.trim_end().lines().filter(|l| l.starts_with("gfs:")).count(), 1, "{err}");
    wait_for_line(&c, "does not hold this cluster's key");
}

#[test]
fn what_crosses_the_wire_is_not_readable() {
    let c = Cluster::start("sealed-wire", 1, &[]);
    // A proxy in front of the master keeps a copy of every byte either way.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let master = c.master_addr.clone();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for client in proxy.incoming().flatten() {
                let upstream = TcpStream::connect(&master).unwrap();
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                {
                    let seen = seen.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
    }
    let secret = "/a-directory-name-no-stranger-may-read";
    let out = common::gfs_command().args(["--master", &proxy_addr, "mkdir", secret]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = c.gfs_ok(&["ls", "/"]);
    assert!(listing.contains("a-directory-name-no-stranger-may-read"), "{listing}");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 100, "the proxy saw the exchange ({} bytes)", seen.len());
    assert!(
        !seen.windows(secret.len() - 1).any(|w| w == &secret.as_bytes()[1..]),
        "the path crossed the wire in the clear"
    );
}

#[test]
fn a_server_needs_keys_or_insecure_and_says_when_it_runs_insecure() {
    let dir = common::temp_dir("sealed-flags");
    let addr = common::free_addr();
    let master = |extra: &[&str]| {
        let mut command = Command::new(GFS);
        command.env_remove(seal::KEYS_ENV).args(extra).args(["master", "--listen", &addr, "--dir"]);
        command.arg(dir.join("master"));
        command
    };
    let out = master(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give --keys DIR") && err.contains("--insecure"), "{err}");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "a master without keys listened");

    let log = dir.join("insecure.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = master(&["--insecure"]).stderr(file).spawn().unwrap();
    let _master = common::KillOnDrop(child);
    common::wait_listening(&addr);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("running with --insecure"), "{said}");
}

#[test]
fn a_chunkserver_with_another_key_is_refused_and_both_sides_say_so() {
    let c = Cluster::start("sealed-cs", 1, &[]);
    let other = common::temp_dir("sealed-cs-other-key");
    seal::generate(&other, true).unwrap();
    let log = c.dir.join("stranger.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(GFS)
        .env_remove(seal::KEYS_ENV)
        .arg("--keys")
        .arg(&other)
        .args(["chunkserver", "--master", &c.master_addr, "--listen", &common::free_addr(), "--heartbeat-ms", "100"])
        .arg("--dir")
        .arg(other.join("data"))
        .stderr(file)
        .spawn()
        .unwrap();
    let _stranger = common::KillOnDrop(child);
    wait_for_line(&c, "does not hold this cluster's key");
    Cluster::wait_until("the stranger's own log line", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("keys differ")
    });
    let status = c.gfs_ok(&["status"]);
    assert_eq!(status.lines().filter(|l| l.starts_with("chunkserver ")).count(), 1, "{status}");
}
