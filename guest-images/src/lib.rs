//! The guests ftvm boots: our own small x86-64 guest, built from `guest/` by `build.rs` and
//! embedded here as an ELF image (linked at 1 MiB, static, no relocations).
//!
//! The guest follows docs/guest-abi.md: entered at CPL0 in long mode, it loads its own GDT,
//! TSS and IDT (a few dozen emulated ring-0 instructions), drops to ring 3 and runs the
//! workload named by the first word of the command line (words containing `=` are parameters
//! and are skipped). Every workload prints its results on COM1, then one line
//! `digest: <16 hex digits>` (FNV-1a over its result values), then powers off (port 0xf4):
//!
//! | command line | what it does | exit code |
//! |---|---|---|
//! | `hello` (or empty) | prints `ftvm guest: hello from ring 3`, RAM size and the command line | 0 |
//! | `timer [N]` (N=100) | PIT channel 0 periodic at 1000 Hz; halts until each of exactly N timer interrupts, printing `timer: k/N` every N/10 ticks | 0 |
//! | `compute [M]` (M=300) | M million rounds of integer mixing in ring 3 (~1-1.5 s natively, no exits) while the PIT interrupts at 1000 Hz; prints `compute: checksum <hex>` (independent of interrupt timing) and the number of timer interrupts | 0 |
//! | `clock [N]` (N=1000) | N reads of the monotonic clock between two wall-clock reads; prints `clock: <n> reads, <ns> ns elapsed` and the wall time | 0 |
//! | `fault` | prints a line, then executes `ud2` in ring 3: the guest reports `(rip & 0xffffff) << 8 \| 6` on the panic port | ftvm's guest-panic code (101) |
//! | `kv ip=A.B.C.D/N [port=P] [gw=A.B.C.D]` | a key-value server on TCP (port 7000) over the first virtio-net device, logging every SET/DEL to the first virtio disk before replying; prints `kv: listening on A.B.C.D:P, N keys loaded` and serves until killed (no digest) | 2 without its devices or with bad parameters, 3 if a disk write fails |
//! | `disk [size=MiB] [bs=KiB] [ops=N] [seed=S]` | on the first virtio disk: sequential write and read of `size` MiB (16) in `bs` KiB requests (256), `ops` (1000) random 4 KiB reads and writes; every byte read is checked against a pattern of seed, offset and block version; prints `disk: result seq_write_mbps=X.Y seq_read_mbps=X.Y rand_read_iops=N rand_write_iops=N verified_bytes=N mismatches=N` | 0, 1 after a mismatch, 3 if a request fails, 2 without a writable disk |
//! | `hostile [rounds=N] [pause=MS]` | on every virtio-net and virtio-blk device: bad descriptors (loops, buffers outside RAM, huge lengths, indices out of range, an available index too far ahead, notifications of queues that are not ready or missing, a used ring outside RAM) and a write to the read-only config space; prints `hostile: <device> <case>: needs-reset (status 0x4f, config interrupt yes), valid chain ignored` per case, `hostile: <device> works again after a reset`, then `hostile: <n> cases on <m> devices, <k> needs-reset, <u> unexpected`; `rounds=N` repeats every case N times (lines of the first round only), `pause=MS` halts between rounds | 0, 1 if a device did not react as it must, 2 without a device |
//! | anything else, or a bad argument | prints an error | 2 |
//!
//! Digests: `hello` over the banner, `timer` over N and the tick count seen after each
//! interrupt, `compute` over the checksum, `clock` over every clock value read (so two runs
//! agree only if the clock device returned the same values, as in a replay).
//!
//! Faults: a CPU exception writes `(rip & 0xffffff) << 8 | vector` to the panic port 0xf5; a
//! Rust panic prints its message and writes `0xff | line << 8`.
//!
//! Costs on the PVM development hosts: ~100 µs per exit (one per serial byte, clock read, PIC
//! or PIT write). Per interrupt, ring 0 runs 2 instructions (`inc [counter]; iretq`, auto-EOI
//! PIC); each wait for an interrupt runs 7 more (`int3` gate). Ring 3 reaches the gate with
//! `int3` (vector 3), so a VMM must not enable `KVM_GUESTDBG_USE_SW_BP` for this guest.

static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ftvm-guest.elf"));

/// The ELF image of our own guest (see `guest/`).
pub fn ftvm_guest_elf() -> &'static [u8] {
    GUEST_ELF
}

/// The workloads the guest knows (the first word of its command line).
pub const WORKLOADS: &[&str] = &["hello", "timer", "compute", "clock", "fault", "kv", "disk", "hostile"];

/// The guest's exit code for an unknown workload or a bad argument.
pub const EXIT_USAGE: u8 = 2;

/// FNV-1a (64-bit) of the guest image: identifies the guest build (e.g. in snapshots).
pub fn ftvm_guest_digest() -> u64 {
    fnv1a(GUEST_ELF)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The value of the last `digest: <16 hex digits>` line in the guest's serial output.
pub fn parse_digest(serial_output: &str) -> Option<u64> {
    serial_output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("digest: "))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn guest_is_a_static_x86_64_executable_loaded_at_1_mib() {
        let elf = ftvm_guest_elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELF64");
        assert_eq!(u16_at(elf, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 18), 62, "EM_X86_64");
        assert_eq!(u64_at(elf, 24), 0x10_0000, "entry at 1 MiB");
        let (phoff, phentsize, phnum) = (u64_at(elf, 32) as usize, u16_at(elf, 54) as usize, u16_at(elf, 56));
        let mut loads = 0;
        for i in 0..phnum as usize {
            let ph = &elf[phoff + i * phentsize..];
            let kind = u32_at(ph, 0);
            assert!(![2, 3, 7].contains(&kind), "PT_DYNAMIC, PT_INTERP or PT_TLS present");
            if kind == 1 {
                loads += 1;
                let (paddr, filesz, memsz) = (u64_at(ph, 24), u64_at(ph, 32), u64_at(ph, 40));
                assert!(paddr >= 0x10_0000 && filesz <= memsz && paddr + memsz < 0x1000_0000);
            }
        }
        assert!(loads >= 1);
    }

    #[test]
    fn guest_digest_is_stable() {
        assert_eq!(ftvm_guest_digest(), ftvm_guest_digest());
        assert_ne!(ftvm_guest_digest(), fnv1a(&[]));
    }

    #[test]
    fn digest_lines_parse() {
        let out = "timer: 10/10\ndigest: 00000000deadbeef\n";
        assert_eq!(parse_digest(out), Some(0xdead_beef));
        assert_eq!(parse_digest("no digest"), None);
    }
}
