//! Benchmark for "The deterministic VMM", printing ratios measured side by side in one run:
//! - exits per second through ftvm's vCPU loop, next to a bare KVM loop running the same guest
//!   code on the same machine set-up (the cost of our devices, event source and bookkeeping);
//! - time from `ftvm run --guest hello` to the guest's first serial byte and to power-off, next
//!   to the time to start the same binary for `--version` (process start-up on this host);
//! - the VMM's own resident memory beyond guest RAM.
//!
//! Run: `cargo bench -p vmm --bench exits_and_boot` (set FTVM_BENCH_EXITS to change the count).

use devices::HostWorld;
use kvm_ioctls::VcpuExit;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm::{run, KernelSource, Machine, MachineConfig, RunOptions, StopReason, VcpuControl};

/// A kernel that writes to port 0x80 `count` times, then powers off:
/// mov ecx, count; L: out 0x80, al; dec ecx; jnz L; mov dx, 0xf4; xor eax, eax; out dx, eax
fn exit_loop_code(count: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&count.to_le_bytes());
    code.extend_from_slice(&[0xe6, 0x80, 0xff, 0xc9, 0x75, 0xfa]);
    code.extend_from_slice(&[0x66, 0xba, 0xf4, 0x00, 0x31, 0xc0, 0xef, 0xf4]);
    code
}

fn machine(kernel: &std::path::Path) -> Machine {
    let config = MachineConfig {
        kernel: KernelSource::File(kernel.to_path_buf()),
        memory_mib: 16,
        ..MachineConfig::embedded("")
    };
    Machine::new(config, VcpuControl::new()).expect("machine builds")
}

fn ftvm_loop(kernel: &std::path::Path) -> (Duration, u64) {
    let mut m = machine(kernel);
    let started = Instant::now();
    let end = run(&mut m, &mut HostWorld::new(), RunOptions::default()).expect("run");
    assert!(matches!(end.reason, StopReason::PowerOff(0)), "{}", end.reason);
    (started.elapsed(), end.stats.exits)
}

fn bare_loop(kernel: &std::path::Path) -> (Duration, u64) {
    let mut m = machine(kernel);
    let started = Instant::now();
    let mut exits = 0;
    loop {
        exits += 1;
        match m.vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0xf4, _) => break,
            VcpuExit::IoOut(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
    (started.elapsed(), exits)
}

/// Milliseconds to the first byte on stdout and to the process's exit.
fn time_process(args: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ftvm starts");
    let mut stdout = child.stdout.take().expect("piped");
    let mut byte = [0u8; 1];
    let first = match stdout.read(&mut byte) {
        Ok(1) => started.elapsed().as_secs_f64() * 1e3,
        _ => f64::NAN,
    };
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).ok();
    child.wait().expect("ftvm exits");
    (first, started.elapsed().as_secs_f64() * 1e3)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let count: u32 = std::env::var("FTVM_BENCH_EXITS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let kernel = dir.path().join("exit-loop.elf");
    std::fs::write(&kernel, vmm::boot::elf::minimal_image(0x10_0000, &exit_loop_code(count))).expect("write kernel");

    println!("== exits per second ({count} port writes, rounds alternate ftvm / bare)");
    let (mut ftvm_rates, mut bare_rates) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (t, n) = ftvm_loop(&kernel);
        ftvm_rates.push(n as f64 / t.as_secs_f64());
        let (t, n) = bare_loop(&kernel);
        bare_rates.push(n as f64 / t.as_secs_f64());
    }
    let (ftvm_rate, bare_rate) = (median(ftvm_rates), median(bare_rates));
    println!("ftvm loop: {ftvm_rate:.0} exits/s ({:.1} us/exit)", 1e6 / ftvm_rate);
    println!("bare KVM loop: {bare_rate:.0} exits/s ({:.1} us/exit)", 1e6 / bare_rate);
    println!("ratio ftvm/bare: {:.3}", ftvm_rate / bare_rate);

    println!("== start-up of `ftvm run --guest hello` (median of 5, next to `ftvm --version`)");
    let (mut firsts, mut ends, mut bases) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let (first, end) = time_process(&["run", "--guest", "hello"]);
        firsts.push(first);
        ends.push(end);
        bases.push(time_process(&["--version"]).1);
    }
    let (first, end, base) = (median(firsts), median(ends), median(bases));
    println!("first serial byte: {first:.1} ms; power-off (process exit): {end:.1} ms");
    println!(
        "process start-up baseline (ftvm --version): {base:.1} ms; boot-to-power-off beyond it: {:.1} ms",
        end - base
    );

    println!("== memory");
    let output = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args(["-v", "run", "--guest", "hello", "--memory-mib", "128"])
        .output()
        .expect("ftvm runs");
    let log = String::from_utf8_lossy(&output.stderr);
    match log.lines().find_map(|l| l.split("vmm_rss_kib=").nth(1)) {
        Some(kib) => println!(
            "VMM resident memory beyond a 128 MiB guest's RAM: {} KiB",
            kib.split_whitespace().next().unwrap_or("?")
        ),
        None => println!("VMM resident memory: not reported ({})", log.trim()),
    }
}
