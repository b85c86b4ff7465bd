//! Test-and-set registers on the master and fencing of writes by their generation.

mod common;

use common::Cluster;
use storage::error::ErrorKind;

#[test]
fn lock_command_sets_and_reports_conflicts() {
    let c = Cluster::start("lock", 1, &[]);
    assert_eq!(c.gfs_ok(&["lock", "vm1"]).trim(), "vm1 generation 0 holder");
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "0", "--holder", "hostA"]).trim(), "1");
    let out = c.gfs(&["lock", "vm1", "--expect", "0", "--holder", "hostB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostA") && err.contains("generation 1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "1", "--holder", "hostB"]).trim(), "2");
    assert_eq!(c.gfs_ok(&["lock", "vm1"]).trim(), "vm1 generation 2 holder hostB");
}

#[test]
fn writes_with_an_older_generation_are_refused() {
    let mut c = Cluster::start("fence", 3, &["--lease-secs", "2"]);
    let client = c.client();
    client.create("/disk").unwrap();
    client.bind("/disk", "vm").unwrap();
    let g1 = client.compare_and_set("vm", 0, "A").unwrap();
    let a = client.fenced("vm", g1);
    a.write_at("/disk", 0, b"written by A").unwrap();
    // Binding a file that already has data is refused.
    client.create("/other").unwrap();
    client.write_at("/other", 0, b"x").unwrap();
    assert!(client.bind("/other", "vm").is_err());

    // B wins the register: A is fenced off from then on, B writes.
    let g2 = client.compare_and_set("vm", g1, "B").unwrap();
    assert_eq!(g2, g1 + 1);
    let e = a.write_at("/disk", 0, b"A again!!!!!").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    let e = client.write_at("/disk", 0, b"no token").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    let b = client.fenced("vm", g2);
    b.write_at("/disk", 0, b"written by B").unwrap();
    let mut buf = [0u8; 12];
    client.read_at("/disk", 0, &mut buf).unwrap();
    assert_eq!(&buf, b"written by B");
    // A losing CAS names the holder and generation.
    let e = client.compare_and_set("vm", g1, "A").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Conflict));
    assert!(e.to_string().contains("\"B\"") && e.to_string().contains(&format!("generation {g2}")), "{e}");

    // Everything survives a master restart and chunkserver restarts.
    c.kill_master();
    for i in 0..3 {
        c.kill_cs(i);
    }
    c.start_master();
    for i in 0..3 {
        c.start_cs(i);
    }
    c.settle();
    assert_eq!(client.register("vm").unwrap(), (g2, "B".to_string()));
    let e = a.write_at("/disk", 0, b"A after restart").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
}
