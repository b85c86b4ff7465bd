//! Builds the guest (`guest/`, a separate cargo project) for the host target with its own
//! flags and linker script, and leaves the ELF at `$OUT_DIR/ftvm-guest.elf` for `src/lib.rs`.
//!
//! The nested cargo runs in `guest/` (so `guest/.cargo/config.toml` supplies the rustflags) with
//! an environment cleaned of everything the outer build sets for itself: target dir, rustflags,
//! profiles, jobserver, wrappers, build-script variables.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_BIN: &str = "ftvm-guest";

/// Variables the nested cargo must not inherit (besides every `CARGO_*` except `CARGO_HOME`).
const REMOVED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "MAKEFLAGS",
    "MFLAGS",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("guest");
    for path in ["Cargo.toml", "Cargo.lock", "build.rs", "link.ld", ".cargo/config.toml", "src"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }

    let target_dir = out_dir.join("guest-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest_dir)
        .args(["build", "--release", "--manifest-path"])
        .arg(guest_dir.join("Cargo.toml"))
        .args(["--target", GUEST_TARGET, "--target-dir"])
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || REMOVED_VARS.contains(&key) {
            cmd.env_remove(key);
        }
    }

    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) => fail(&format!("could not run cargo to build the guest: {e}")),
    };
    if !status.success() {
        fail(&format!(
            "building the guest failed ({status}); the compiler output is above. To build it by hand: \
             cd {} && cargo build --release --target {GUEST_TARGET}",
            guest_dir.display()
        ));
    }

    let built = target_dir.join(GUEST_TARGET).join("release").join(GUEST_BIN);
    let dest = out_dir.join("ftvm-guest.elf");
    if let Err(e) = std::fs::copy(&built, &dest) {
        fail(&format!("guest built but {} could not be copied to {}: {e}", built.display(), dest.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: guest-images: {message}");
    println!("cargo:warning=guest-images: {message}");
    std::process::exit(1);
}
