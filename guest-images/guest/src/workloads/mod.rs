//! The workloads, chosen by the first word of the command line (see ../../../src/lib.rs).
//! Each prints its results, then `digest: <16 hex digits>`, and returns the power-off code.

mod clock;
mod compute;
mod dirty;
mod disk;
mod hello;
mod hostile;
mod kv;
mod timer;
mod tsc;

use crate::bootinfo::BootInfo;
use crate::cmdline::{parse_u64, CmdLine};

/// Power-off code for a bad command line.
pub const EXIT_USAGE: u32 = 2;

const USAGE: &str = "workloads: hello | timer [N] | compute [M] | clock [N] | tsc [N] | dirty [MIB] [PAGES] [S] | kv ip=A.B.C.D/N [port=P] [gw=A.B.C.D] | disk [size=MiB] [bs=KiB] [ops=N] [seed=S] | hostile [rounds=N] [pause=MS]";

pub fn run(boot: &BootInfo, cmdline: CmdLine) -> u32 {
    let mut words = cmdline.words();
    let name = words.next().unwrap_or("hello");
    let result = match name {
        "hello" => hello::run(boot, cmdline),
        "timer" => number_arg(&mut words, 100).and_then(timer::run),
        "compute" => number_arg(&mut words, compute::DEFAULT_MILLIONS).and_then(compute::run),
        "clock" => number_arg(&mut words, 1000).and_then(clock::run),
        "tsc" => number_arg(&mut words, 100).and_then(tsc::run),
        "dirty" => {
            numbers(&mut words, [64, 16, 10]).and_then(|[mib, pages, seconds]| dirty::run(boot, mib, pages, seconds))
        }
        "fault" => fault(),
        "kv" => no_more_args(&mut words).and_then(|()| kv::run(boot, cmdline)),
        "disk" => match no_more_args(&mut words).and_then(|()| disk::run(boot, cmdline)) {
            Ok(code) => return code,
            Err(message) => Err(message),
        },
        "hostile" => match no_more_args(&mut words).and_then(|()| hostile::run(boot, cmdline)) {
            Ok(code) => return code,
            Err(message) => Err(message),
        },
        _ => {
            println!("ftvm guest: unknown workload '{}'; {}", name, USAGE);
            return EXIT_USAGE;
        }
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            println!("ftvm guest: {}: {}; {}", name, message, USAGE);
            EXIT_USAGE
        }
    }
}

/// `fault`: executes `ud2` in ring 3, so that the exception stub reports vector 6 and the RIP on
/// the panic port (for testing the VMM's guest-panic path). Never returns.
fn fault() -> Result<(), &'static str> {
    println!("fault: executing ud2 in ring 3");
    // SAFETY: deliberately raises #UD; the exception stub reports it and halts for good.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// The next argument as a number, `default` if there is none.
fn number_arg<'a>(words: &mut impl Iterator<Item = &'a str>, default: u64) -> Result<u64, &'static str> {
    let value = match words.next() {
        None => default,
        Some(word) => parse_u64(word).ok_or("bad number")?,
    };
    if words.next().is_some() {
        return Err("too many arguments");
    }
    Ok(value)
}

/// The next arguments as numbers, each `default` where there is none.
fn numbers<'a, const N: usize>(
    words: &mut impl Iterator<Item = &'a str>,
    defaults: [u64; N],
) -> Result<[u64; N], &'static str> {
    let mut values = defaults;
    for value in &mut values {
        match words.next() {
            None => break,
            Some(word) => *value = parse_u64(word).ok_or("bad number")?,
        }
    }
    no_more_args(words).map(|()| values)
}

fn no_more_args<'a>(words: &mut impl Iterator<Item = &'a str>) -> Result<(), &'static str> {
    match words.next() {
        None => Ok(()),
        Some(_) => Err("too many arguments"),
    }
}
