//! The state digest: one hash over guest memory, vCPU registers and device state, printed as
//! `state-digest: <hex>` so that a replay can be compared with its recording.

use crate::error::{kvm, Result};
use crate::machine::Machine;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

/// blake3 over memory, general and special registers, and the board's state.
pub fn state_digest(machine: &Machine) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ftvm-state-v1");
    hasher.update(machine.ram.as_slice()?);
    let regs = machine.vcpu.get_regs().map_err(kvm("read registers"))?;
    hash_regs(&mut hasher, &regs);
    let sregs = machine.vcpu.get_sregs().map_err(kvm("read special registers"))?;
    hash_sregs(&mut hasher, &sregs);
    let board = postcard::to_allocvec(&machine.board.state()).unwrap_or_default();
    hasher.update(&board);
    Ok(hasher.finalize())
}

fn hash_regs(hasher: &mut blake3::Hasher, r: &kvm_regs) {
    for value in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rip, r.rflags,
    ] {
        hasher.update(&value.to_le_bytes());
    }
}

fn hash_segment(hasher: &mut blake3::Hasher, s: &kvm_segment) {
    hasher.update(&s.base.to_le_bytes());
    hasher.update(&s.limit.to_le_bytes());
    hasher.update(&s.selector.to_le_bytes());
    hasher.update(&[s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl]);
}

/// The architectural part of the special registers (not KVM's bookkeeping such as the pending
/// interrupt bitmap or the APIC base, which differ between hosts without meaning).
fn hash_sregs(hasher: &mut blake3::Hasher, s: &kvm_sregs) {
    for segment in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
        hash_segment(hasher, segment);
    }
    for table in [&s.gdt, &s.idt] {
        hasher.update(&table.base.to_le_bytes());
        hasher.update(&table.limit.to_le_bytes());
    }
    for value in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer] {
        hasher.update(&value.to_le_bytes());
    }
}
