//! `ftvm run --kernel`: a real kernel file boots; a missing, non-ELF or misplaced one is a
//! one-line error and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
}

/// A minimal ELF64 executable: one PT_LOAD segment holding `code`, loaded and entered at `addr`.
fn elf_with_code(addr: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&addr.to_le_bytes()); // entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [EHDR as u16, PHDR as u16, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [offset, addr, addr, code.len() as u64, code.len() as u64, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// mov dx, 0xf4; mov eax, code; out dx, eax; hlt — powers off at once with `code`.
fn power_off_code(code: u32) -> Vec<u8> {
    let mut bytes = vec![0x66, 0xba, 0xf4, 0x00, 0xb8];
    bytes.extend_from_slice(&code.to_le_bytes());
    bytes.extend_from_slice(&[0xef, 0xf4]);
    bytes
}

/// Writes `bytes` to a file named `name` in a fresh temporary directory (removed on drop).
fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    (dir, path)
}

fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(!output.status.success(), "expected failure, got {:?}", output.status);
    assert_ne!(output.status.code(), Some(101), "a panic is not an error message");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn an_elf_kernel_is_entered_in_64_bit_mode_and_its_power_off_code_is_the_exit_status() {
    let (_dir, kernel) = write_temp("poweroff.elf", &elf_with_code(0x10_0000, &power_off_code(42)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--memory-mib", "16"]);
    assert_eq!(output.status.code(), Some(42), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("exits: 1 (io 1, mmio 0, hlt 0"), "{stdout}");
}

#[test]
fn a_missing_kernel_is_a_one_line_error() {
    let output = ftvm(&["run", "--kernel", "/nonexistent/ftvm-kernel"]);
    assert_one_line_error(&output, "/nonexistent/ftvm-kernel: no such file");
}

#[test]
fn a_file_that_is_not_elf_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("not-elf", b"#!/bin/sh\necho this is not a kernel\n");
    let output = ftvm(&["run", "--kernel", path_str(&kernel)]);
    assert_one_line_error(&output, "not an ELF file");
}

#[test]
fn an_elf_linked_outside_guest_memory_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("far.elf", &elf_with_code(0x4000_0000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--memory-mib", "64"]);
    assert_one_line_error(&output, "does not fit in guest memory");
}

#[test]
fn an_elf_linked_over_the_boot_structures_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("low.elf", &elf_with_code(0x1000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel)]);
    assert_one_line_error(&output, "linked below 0x100000");
}

#[test]
fn a_truncated_elf_is_a_one_line_error() {
    let elf = elf_with_code(0x10_0000, &power_off_code(0));
    let (_dir, kernel) = write_temp("truncated.elf", &elf[..70]);
    let output = ftvm(&["run", "--kernel", path_str(&kernel)]);
    assert_one_line_error(&output, "truncated.elf");
}

#[test]
fn guest_memory_outside_the_supported_range_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("ok.elf", &elf_with_code(0x10_0000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--memory-mib", "1"]);
    assert_one_line_error(&output, "guest memory of 1 MiB");
}
