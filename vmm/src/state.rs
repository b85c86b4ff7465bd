//! The machine's state apart from memory: the vCPU's registers and the board's devices, as
//! captured for checkpoints, snapshots and migration, and put back on restore.

use crate::checkpoint::CheckpointError;
use crate::error::{kvm, Result, VcpuFailure};
use crate::machine::Machine;
use devices::BoardState;
use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use serde::{Deserialize, Serialize};

/// The MSRs a 64-bit guest uses that live outside the special registers. Only these are saved:
/// some hosts (PVM among them) refuse to restore others, such as IA32_FEATURE_CONTROL.
const GUEST_MSRS: [(u32, &str); 10] = [
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0x277, "IA32_PAT"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"),
];

/// Everything KVM holds for the vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub debugregs: kvm_debugregs,
    /// The interrupt-injection bookkeeping of the run page, which decides whether the loop may
    /// inject at the next entry. KVM refreshes these at every exit; a machine restored without
    /// running needs them put back.
    pub request_interrupt_window: u8,
    pub if_flag: u8,
    pub ready_for_interrupt_injection: u8,
}

/// The machine's state apart from memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub vcpu: VcpuState,
    pub board: BoardState,
}

impl Machine {
    /// Captures the vCPU and the devices. The vCPU must not be running (it never is outside
    /// `KVM_RUN` in our single-threaded loop).
    pub fn capture_state(&mut self) -> Result<MachineState> {
        let (regs, sregs, events) = self.synced_state()?;
        let vcpu = &self.vcpu;
        let mut msrs = Msrs::from_entries(
            &GUEST_MSRS
                .iter()
                .map(|(index, _)| kvm_msr_entry { index: *index, ..Default::default() })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| VcpuFailure::MsrList)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("read MSRs"))?;
        let state = VcpuState {
            regs,
            sregs,
            xsave: vcpu.get_xsave().map_err(kvm("read XSAVE state"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("read XCRs"))?,
            // KVM stops at the first MSR it cannot read; keep those it read.
            msrs: msrs.as_slice()[..read].to_vec(),
            events,
            mp_state: vcpu.get_mp_state().map_err(kvm("read MP state"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("read debug registers"))?,
            request_interrupt_window: self.vcpu.get_kvm_run().request_interrupt_window,
            if_flag: self.vcpu.get_kvm_run().if_flag,
            ready_for_interrupt_injection: self.vcpu.get_kvm_run().ready_for_interrupt_injection,
        };
        Ok(MachineState { vcpu: state, board: self.board.state() })
    }

    /// Puts captured state back into the vCPU and the devices.
    pub fn restore_state(&mut self, state: &MachineState) -> Result<()> {
        // The run page's register copies no longer describe the vCPU.
        self.regs_synced = false;
        let s = &state.vcpu;
        let vcpu = &self.vcpu;
        vcpu.set_sregs(&s.sregs).map_err(kvm("restore special registers"))?;
        vcpu.set_regs(&s.regs).map_err(kvm("restore registers"))?;
        // SAFETY: the xsave area was produced by KVM_GET_XSAVE for a vCPU of the same kind.
        unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm("restore XSAVE state"))?;
        vcpu.set_xcrs(&s.xcrs).map_err(kvm("restore XCRs"))?;
        let msrs = Msrs::from_entries(&s.msrs).map_err(|_| VcpuFailure::MsrList)?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("restore MSRs"))?;
        if written < s.msrs.len() {
            let refused = s.msrs[written].index;
            let name = GUEST_MSRS.iter().find(|(index, _)| *index == refused).map_or("unknown", |(_, name)| name);
            return Err(VcpuFailure::MsrRefused { index: refused, name }.into());
        }
        vcpu.set_vcpu_events(&s.events).map_err(kvm("restore vCPU events"))?;
        vcpu.set_mp_state(s.mp_state).map_err(kvm("restore MP state"))?;
        vcpu.set_debug_regs(&s.debugregs).map_err(kvm("restore debug registers"))?;
        let run = self.vcpu.get_kvm_run();
        run.request_interrupt_window = s.request_interrupt_window;
        run.if_flag = s.if_flag;
        run.ready_for_interrupt_injection = s.ready_for_interrupt_injection;
        Ok(self.board.restore(&state.board).map_err(CheckpointError::DeviceState)?)
    }
}
