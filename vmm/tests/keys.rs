//! `ftvm keygen`, and `--keys` / `FT_KEYS` / `--insecure` on the commands that open network
//! channels (no KVM needed: each command stops before it would boot a VM).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

fn ftvm(args: &[&str]) -> Output {
    Command::new(FTVM).args(args).env_remove(seal::KEYS_ENV).env_remove("GFS_MASTER").output().expect("ftvm starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn keygen_makes_a_private_key_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keys = keys.to_str().unwrap();
    let made = ftvm(&["keygen", keys]);
    assert!(made.status.success(), "{}", stderr(&made));
    assert!(String::from_utf8_lossy(&made.stdout).contains("fingerprint"));
    let file = dir.path().join("keys").join(seal::KEY_FILE);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&file).unwrap();

    let again = ftvm(&["keygen", keys]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&file).unwrap(), before, "the key was overwritten");

    let forced = ftvm(&["keygen", "--force", keys]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(std::fs::read(&file).unwrap(), before);
    assert!(seal::Security::from_dir(&dir.path().join("keys")).unwrap().is_sealed());
}

#[test]
fn a_command_that_opens_a_channel_needs_keys_or_insecure() {
    let disk = ["disk", "create", "gfs:/vm/x.img", "--size", "1M", "--gfs-master", "127.0.0.1:1"];
    let backup =
        ["backup", "--join", "127.0.0.1:1", "--ft", "vm", "--gfs-master", "127.0.0.1:1", "--ft-listen", "127.0.0.1:0"];
    for args in [&disk[..], &backup[..]] {
        let out = ftvm(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("give --keys DIR") && err.contains("--insecure"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // With --insecure it goes on, and says so first; here it then finds no master.
    let out = ftvm(&[&disk[..], &["--insecure"]].concat());
    let err = stderr(&out);
    assert!(err.contains("running with --insecure"), "{err}");
    assert!(!err.contains("give --keys DIR"), "{err}");
    // A key directory from the environment is enough.
    let dir = tempfile::tempdir().unwrap();
    seal::generate(dir.path(), false).unwrap();
    let out = Command::new(FTVM).args(disk).env(seal::KEYS_ENV, dir.path()).output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("give --keys DIR") && !err.contains("--insecure"), "{err}");
    assert!(err.contains("cannot be reached") || err.contains("127.0.0.1:1"), "{err}");
    // A command with no network channel needs neither.
    let out = ftvm(&["log", "/nonexistent.log"]);
    assert!(!stderr(&out).contains("give --keys DIR"), "{}", stderr(&out));
}
