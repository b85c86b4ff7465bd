//! The CPUID the guest sees: what the host supports, less the instructions that would let the
//! guest read randomness without an exit (RDRAND, RDSEED), which replay could not reproduce.

use crate::error::{kvm, Result};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

const LEAF_FEATURES: u32 = 1;
const ECX_RDRAND: u32 = 1 << 30;
const LEAF_EXTENDED_FEATURES: u32 = 7;
const EBX_RDSEED: u32 = 1 << 18;

pub fn guest_cpuid(kvm_fd: &Kvm) -> Result<CpuId> {
    let mut cpuid = kvm_fd.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm("read supported CPUID"))?;
    hide_randomness(&mut cpuid);
    Ok(cpuid)
}

fn hide_randomness(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        match (entry.function, entry.index) {
            (LEAF_FEATURES, _) => entry.ecx &= !ECX_RDRAND,
            (LEAF_EXTENDED_FEATURES, 0) => entry.ebx &= !EBX_RDSEED,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn rdrand_and_rdseed_are_hidden_and_nothing_else_changes() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ecx: u32::MAX, ebx: u32::MAX, ..Default::default() },
            kvm_cpuid_entry2 { function: 7, index: 0, ebx: u32::MAX, ..Default::default() },
            kvm_cpuid_entry2 { function: 7, index: 1, ebx: u32::MAX, ..Default::default() },
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("three entries fit");
        hide_randomness(&mut cpuid);
        let out = cpuid.as_slice();
        assert_eq!(out[0].ecx, !ECX_RDRAND);
        assert_eq!(out[0].ebx, u32::MAX);
        assert_eq!(out[1].ebx, !EBX_RDSEED);
        assert_eq!(out[2].ebx, u32::MAX);
    }
}
