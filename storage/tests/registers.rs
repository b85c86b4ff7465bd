//! Releasing a test-and-set register: the holder lets it go at its generation, the register
//! moves to the next generation with no holder, durably, and fences the old generation.

mod common;

use common::Cluster;
use std::process::Stdio;
use std::time::Duration;
use storage::error::ErrorKind;

#[test]
fn release_frees_the_register_for_the_next_generation_across_restart() {
    let mut c = Cluster::start("release", 3, &["--lease-secs", "2"]);
    let client = c.client();
    let shadow_addr = common::free_addr();
    let log = std::fs::File::create(c.dir.join("shadow.log")).unwrap();
    let _shadow = common::KillOnDrop(
        common::gfs_command()
            .args(["master", "--dir"])
            .arg(c.dir.join("shadow"))
            .args(["--listen", &shadow_addr, "--shadow-of", &c.master_addr, "-v"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    common::wait_listening(&shadow_addr);

    client.create("/disk").unwrap();
    client.bind("/disk", "vm").unwrap();
    let g1 = client.compare_and_set("vm", 0, "A").unwrap();
    let a = client.fenced("vm", g1);
    a.write_at("/disk", 0, b"written by A").unwrap();

    // Refused: a non-holder, a wrong generation, and a register nobody ever held. Each names
    // the holder and generation, and changes nothing.
    for (expected, holder) in [(g1, "B"), (g1 + 1, "A"), (g1 - 1, "A")] {
        let e = client.release_register("vm", expected, holder).unwrap_err();
        assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{e}");
        assert!(e.to_string().contains("\"A\"") && e.to_string().contains(&format!("generation {g1}")), "{e}");
    }
    let e = client.release_register("never-set", 0, "A").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{e}");
    assert_eq!(client.register("vm").unwrap(), (g1, "A".to_string()));
    a.write_at("/disk", 0, b"A still here").unwrap();

    // The holder releases: next generation, no holder; A's token is fenced from then on.
    let released = client.release_register("vm", g1, "A").unwrap();
    assert_eq!(released, g1 + 1);
    assert_eq!(client.register("vm").unwrap(), (released, String::new()));
    let e = a.write_at("/disk", 0, b"A after its release").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    // Released twice is refused: nobody holds it now.
    let e = client.release_register("vm", g1, "A").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{e}");
    let e = client.release_register("vm", released, "").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Conflict), "{e}");

    // The shadow replays the release from the log.
    let via_shadow = storage::Client::new(&shadow_addr);
    Cluster::wait_until("the shadow sees the release", Duration::from_secs(20), || {
        via_shadow.register("vm").ok() == Some((released, String::new()))
    });
    let e = via_shadow.release_register("vm", released, "A").unwrap_err();
    assert!(e.to_string().contains("read-only shadow"), "{e}");

    // It survives a kill -9 of the master, and a fresh compare_and_set at the released
    // generation wins without any takeover.
    c.kill_master();
    c.start_master();
    c.settle();
    assert_eq!(client.register("vm").unwrap(), (released, String::new()));
    let g3 = client.compare_and_set("vm", released, "B").unwrap();
    assert_eq!(g3, released + 1);
    let b = client.fenced("vm", g3);
    b.write_at("/disk", 0, b"written by B").unwrap();
    let mut buf = [0u8; 12];
    client.read_at("/disk", 0, &mut buf).unwrap();
    assert_eq!(&buf, b"written by B");
    let e = client.fenced("vm", released).write_at("/disk", 0, b"released gen").unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
}

#[test]
fn release_command_prints_the_next_generation_or_one_line_naming_the_holder() {
    let c = Cluster::start("release-cli", 1, &[]);
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "0", "--holder", "hostA"]).trim(), "1");
    let out = c.gfs(&["release", "vm1", "--expect", "1", "--holder", "hostB"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostA") && err.contains("generation 1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(c.gfs_ok(&["release", "vm1", "--expect", "1", "--holder", "hostA"]).trim(), "2");
    assert_eq!(c.gfs_ok(&["lock", "vm1"]).trim(), "vm1 generation 2 holder");
    assert_eq!(c.gfs_ok(&["lock", "vm1", "--expect", "2", "--holder", "hostB"]).trim(), "3");
}
