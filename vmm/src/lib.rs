//! The ftvm VMM: a single-vCPU KVM VM whose every input from the world arrives at a VM exit.
//!
//! - [`machine`] builds the VM: memory ([`memory`]), kernel loading ([`boot`]), CPUID ([`cpuid`]),
//!   the device models; [`backends`] opens the host resources behind them (TAPs, disks, the
//!   console) and attaches them at a landmark.
//! - [`vcpu`] is the run loop: exits go to the `devices` board, world events come from one
//!   `devices::EventSource`, interrupts are injected only at exits, and [`kick`] preempts a
//!   guest that does not exit while an interrupt waits. [`control`] is how other threads kick,
//!   pause or stop it. A run returns where it stopped, and can be continued from there.
//! - [`session`] assembles runs: live, recorded, replayed, restored, gone live.
//! - [`state`], [`checkpoint`] and [`snapshot`] capture the machine; [`digest`] hashes it, so two
//!   runs can be compared.
//! - [`input_file`] opens the files a user names without blocking and reads them within bounds;
//!   [`stdio`] is ftvm's stdout and stderr (closed pipes, blocked writes); [`stop`] makes
//!   SIGINT/SIGTERM end ftvm within a second.
//! - [`plot`] draws a client's reply latency over a series of failovers (`ftvm demo --plot`,
//!   the FT benchmark).

// All output goes through `stdio` (`outln!`/`errln!`), which copes with a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backends;
pub mod boot;
pub mod checkpoint;
pub mod control;
pub mod cpuid;
pub mod digest;
pub mod dirty;
pub mod error;
pub mod ft;
pub mod gfs_disk;
pub mod input_file;
pub mod kick;
pub mod machine;
pub mod memory;
pub mod plot;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod stdio;
pub mod stop;
pub mod telemetry;
pub mod vcpu;

pub use backends::Backends;
pub use control::VcpuControl;
pub use error::{Result, VmmError};
pub use machine::{KernelSource, Machine, MachineConfig};
pub use stats::ExitStats;
pub use vcpu::{run, RunEnd, RunObserver, RunOptions, RunPosition, RunWorld, SnapshotRequest, StopReason};
