//! `ftvm run --kernel`: an ELF kernel and a bzImage (by the Linux boot protocol) are loaded and
//! entered; a missing, non-ELF or misplaced one is a one-line error and a non-zero exit, never
//! a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm")).args(args).output().expect("ftvm starts")
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
    let (_dir, kernel) = write_temp("poweroff.elf", &vmm::boot::elf::minimal_image(0x10_0000, &power_off_code(42)));
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
    let (_dir, kernel) = write_temp("far.elf", &vmm::boot::elf::minimal_image(0x4000_0000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--memory-mib", "64"]);
    assert_one_line_error(&output, "does not fit in guest memory");
}

#[test]
fn an_elf_linked_over_the_boot_structures_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("low.elf", &vmm::boot::elf::minimal_image(0x1000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel)]);
    assert_one_line_error(&output, "linked below 0x100000");
}

#[test]
fn a_truncated_elf_is_a_one_line_error() {
    let elf = vmm::boot::elf::minimal_image(0x10_0000, &power_off_code(0));
    let (_dir, kernel) = write_temp("truncated.elf", &elf[..70]);
    let output = ftvm(&["run", "--kernel", path_str(&kernel)]);
    assert_one_line_error(&output, "truncated.elf");
}

#[test]
fn guest_memory_outside_the_supported_range_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("ok.elf", &vmm::boot::elf::minimal_image(0x10_0000, &power_off_code(0)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--memory-mib", "1"]);
    assert_one_line_error(&output, "guest memory of 1 MiB");
}

/// A minimal bzImage: one setup sector with a boot-protocol 2.15 header, then a protected-mode
/// kernel whose 64-bit entry (at +0x200) runs `entry_code`.
fn bzimage_with_entry(entry_code: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects: (1 + 1) * 512 bytes of setup
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    let mut kernel = vec![0xf4u8; 0x200]; // the 32-bit entry: never used
    kernel.extend_from_slice(entry_code);
    kernel.resize(0x1000, 0xf4);
    image.extend_from_slice(&kernel);
    image
}

/// mov eax, [rsi + field]; movzx eax, byte [rax]; mov dx, 0xf4; out dx, eax; hlt — powers off
/// with the first byte at the address a zero-page field holds.
fn power_off_with_byte_at_zero_page_field(field: u32) -> Vec<u8> {
    let mut code = vec![0x8b, 0x86];
    code.extend_from_slice(&field.to_le_bytes());
    code.extend_from_slice(&[0x0f, 0xb6, 0x00, 0x66, 0xba, 0xf4, 0x00, 0xef, 0xf4]);
    code
}

const CMD_LINE_PTR: u32 = 0x228;
const RAMDISK_IMAGE: u32 = 0x218;

#[test]
fn a_bzimage_is_entered_at_its_64_bit_entry_with_the_zero_page_and_command_line() {
    let (_dir, kernel) =
        write_temp("bzImage", &bzimage_with_entry(&power_off_with_byte_at_zero_page_field(CMD_LINE_PTR)));
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--cmdline", "Zconsole=ttyS0"]);
    assert_eq!(output.status.code(), Some(i32::from(b'Z')), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_bzimage_finds_its_initrd_through_the_zero_page() {
    let (_dir, kernel) =
        write_temp("bzImage", &bzimage_with_entry(&power_off_with_byte_at_zero_page_field(RAMDISK_IMAGE)));
    let (_dir2, initrd) = write_temp("initrd", b"!initrd contents");
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--initrd", path_str(&initrd), "--memory-mib", "32"]);
    assert_eq!(output.status.code(), Some(i32::from(b'!')), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn an_initrd_with_an_elf_kernel_is_a_one_line_error() {
    let (_dir, kernel) = write_temp("ok.elf", &vmm::boot::elf::minimal_image(0x10_0000, &power_off_code(0)));
    let (_dir2, initrd) = write_temp("initrd", b"data");
    let output = ftvm(&["run", "--kernel", path_str(&kernel), "--initrd", path_str(&initrd)]);
    assert_one_line_error(&output, "needs a bzImage");
}

/// A stock Linux kernel on this project's PVM machines runs its ring-0 code in KVM's
/// instruction emulator (~2.5 M instructions/s), so it takes minutes to reach its first serial
/// output, and it cannot finish booting (see README). Give it a kernel with
/// `FTVM_LINUX_BZIMAGE=/path/to/vmlinuz cargo test --release -p vmm --test boot -- --ignored`.
#[test]
#[ignore = "needs a Linux bzImage in FTVM_LINUX_BZIMAGE and minutes of emulated ring 0"]
fn a_linux_kernel_is_loaded_and_entered() {
    let Ok(kernel) = std::env::var("FTVM_LINUX_BZIMAGE") else {
        panic!("set FTVM_LINUX_BZIMAGE to a Linux bzImage");
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args([
            "-vv",
            "run",
            "--kernel",
            &kernel,
            "--memory-mib",
            "512",
            "--cmdline",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ftvm starts");
    let seconds: u64 = std::env::var("FTVM_LINUX_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    child.kill().ok();
    let output = child.wait_with_output().expect("ftvm output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kernel loaded"), "{stderr}");
    assert!(!stdout.is_empty() || stderr.contains("unclaimed"), "the kernel made no device access in {seconds} s");
}
