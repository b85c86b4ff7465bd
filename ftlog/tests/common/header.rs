//! The log header the replay tests write: a small made-up machine.

use ftlog::LogHeader;

/// A header with an exit digest every `exit_digest_interval` exits.
pub fn header(exit_digest_interval: u32) -> LogHeader {
    LogHeader {
        machine: ftlog::MachineDescription {
            image_digest: [1; 32],
            memory_size: 16 << 20,
            cmdline: "test".into(),
            kernel_path: None,
            preemption_bound_ns: 2_000_000,
            devices: Vec::new(),
        },
        exit_digest_interval,
        created_unix_ns: 0,
        start_exits: 0,
    }
}
