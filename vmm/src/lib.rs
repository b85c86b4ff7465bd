//! The ftvm VMM: a single-vCPU KVM VM whose every input from the world arrives at a VM exit.
//!
//! - [`machine`] builds the VM: memory ([`memory`]), kernel loading ([`boot`]), CPUID ([`cpuid`]).
//! - [`vcpu`] is the run loop: exits go to the `devices` board, world events come from one
//!   `devices::EventSource`, interrupts are injected only at exits, and [`kick`] preempts a
//!   guest that does not exit while an interrupt waits.
//! - [`digest`] hashes the whole machine state, so two runs can be compared.
//! - [`input_file`] opens the files a user names without blocking and reads them within bounds;
//!   [`stdio`] is ftvm's stdout and stderr (closed pipes, blocked writes); [`stop`] makes
//!   SIGINT/SIGTERM end ftvm within a second.

// All output goes through `stdio` (`outln!`/`errln!`), which copes with a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod boot;
pub mod checkpoint;
pub mod cpuid;
pub mod digest;
pub mod dirty;
pub mod error;
pub mod input_file;
pub mod kick;
pub mod machine;
pub mod memory;
pub mod record_replay;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod stdio;
pub mod stop;
pub mod vcpu;
pub mod virtio_setup;

pub use error::{Result, VmmError};
pub use machine::{KernelSource, Machine, MachineConfig};
pub use stats::ExitStats;
pub use vcpu::{run, RunObserver, RunOptions, RunOutcome, RunPosition, Session, SnapshotRequest};
