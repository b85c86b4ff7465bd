//! A machine: the KVM VM with its memory, its one vCPU and its board, ready to run.

use crate::backends::{AttachedBackends, BackendError};
use crate::boot::{self, layout, long_mode, LoadedKernel};
use crate::control::VcpuControl;
use crate::dirty::DirtyLog;
use crate::error::{kvm, Result, VmmError};
use crate::input_file::{self, InputFileError};
use crate::memory::GuestRam;
use devices::virtio::{DeviceDescription, MacAddr, VirtioDevices};
use devices::Board;
use ftlog::MachineDescription;
use kvm_ioctls::{Kvm, SyncReg, VcpuFd, VmFd};
use std::path::PathBuf;
use std::time::Duration;

/// Where the kernel comes from.
#[derive(Clone, Debug)]
pub enum KernelSource {
    /// A file given by the user: an ELF or a bzImage.
    File(PathBuf),
    /// Our own guest, embedded in the binary.
    Embedded,
}

impl KernelSource {
    /// The image bytes and a name for messages. A file must be a regular file that starts like
    /// an ELF or a bzImage and is at most `limit` bytes (what fits in guest RAM): both are
    /// checked before the rest of it is read.
    pub fn read(&self, limit: u64) -> Result<(std::borrow::Cow<'static, [u8]>, PathBuf)> {
        match self {
            KernelSource::File(path) => {
                let fail = |reason: String| VmmError::Kernel { path: path.clone(), reason };
                let mut file = input_file::open(path).map_err(|e| fail(e.to_string()))?;
                let mut bytes = input_file::read_head(&mut file, boot::HEAD_LEN).map_err(|e| fail(e.to_string()))?;
                boot::check_magic(&bytes).map_err(fail)?;
                input_file::read_rest_bounded(&mut file, &mut bytes, limit).map_err(|e| {
                    fail(match e {
                        InputFileError::TooLarge { size, limit } => {
                            format!("{size} bytes do not fit in {} MiB of guest memory", limit >> 20)
                        }
                        other => other.to_string(),
                    })
                })?;
                Ok((bytes.into(), path.clone()))
            }
            KernelSource::Embedded => Ok((guest_images::ftvm_guest_elf().into(), PathBuf::from("<ftvm guest>"))),
        }
    }
}

/// Everything needed to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub kernel: KernelSource,
    pub memory_mib: u64,
    pub cmdline: String,
    pub initrd: Option<PathBuf>,
    /// How long an interrupt may wait for the guest to exit before the vCPU is kicked.
    pub preempt_bound: Duration,
    /// Log dirty pages (needed for delta checkpoints while recording).
    pub dirty_logging: bool,
    /// The virtio device models, in slot order; their backends are attached separately
    /// ([`Machine::attach`]).
    pub devices: Vec<DeviceDescription>,
}

impl MachineConfig {
    pub const DEFAULT_MEMORY_MIB: u64 = 128;
    pub const DEFAULT_PREEMPT_BOUND: Duration = Duration::from_millis(2);

    /// Our embedded guest running `cmdline`, with the default memory and bound and no devices.
    pub fn embedded(cmdline: impl Into<String>) -> Self {
        Self {
            kernel: KernelSource::Embedded,
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            cmdline: cmdline.into(),
            initrd: None,
            preempt_bound: Self::DEFAULT_PREEMPT_BOUND,
            dirty_logging: false,
            devices: Vec::new(),
        }
    }

    /// The configuration that builds the machine a description names (a log's, a snapshot's, a
    /// primary's). The kernel's digest is checked when it is built ([`Machine::matches`]).
    pub fn from_description(description: &MachineDescription) -> Self {
        Self {
            kernel: description.kernel_path.as_ref().map_or(KernelSource::Embedded, |p| KernelSource::File(p.into())),
            memory_mib: description.memory_size >> 20,
            cmdline: description.cmdline.clone(),
            initrd: None,
            preempt_bound: Duration::from_nanos(description.preemption_bound_ns),
            dirty_logging: false,
            devices: description.devices.clone(),
        }
    }
}

/// A built VM. Field order matters for Drop: the vCPU and VM fds close before the memory
/// they map is unmapped.
pub struct Machine {
    pub vcpu: VcpuFd,
    pub vm: VmFd,
    pub kvm: Kvm,
    pub ram: GuestRam,
    pub board: Board,
    pub kernel_entry: u64,
    /// blake3 of the kernel image, so a log can name the guest it belongs to.
    pub image_digest: [u8; 32],
    pub config: MachineConfig,
    /// How other threads kick, pause or stop this machine's vCPU.
    pub control: VcpuControl,
    /// Pages the guest dirtied, when the configuration asks for dirty logging.
    pub dirty_log: Option<DirtyLog>,
    /// Put a hash of every page into each checkpoint (slow; for tracing a divergence).
    pub verify_checkpoints: bool,
    /// Page contents the last checkpoints carried, which the next ones are encoded against.
    pub checkpoint_bases: crate::checkpoint::PageBases,
    /// KVM fills the run page's register copies at every exit.
    sync_regs: bool,
    /// Those copies are current: the vCPU exited and nothing was written to it since.
    pub(crate) regs_synced: bool,
    /// What the attached backends need kept alive.
    pub(crate) attached: Option<AttachedBackends>,
}

/// Address of the three pages KVM wants for its real-mode TSS on Intel hosts; they lie in the
/// MMIO hole, above any RAM we hand out.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

impl Machine {
    /// The guest's instruction pointer now: from the run page right after an exit, else by
    /// ioctl.
    pub fn rip(&mut self) -> Result<u64> {
        if self.sync_regs && self.regs_synced {
            return Ok(self.vcpu.sync_regs().regs.rip);
        }
        Ok(self.vcpu.get_regs().map_err(kvm("read registers"))?.rip)
    }

    /// Whether the vCPU was kicked out just after a ring-3 `int3`: PVM hosts deliver that trap
    /// to the guest's IDT on the next entry and keep it in state that `KVM_GET_VCPU_EVENTS` does
    /// not report, so a checkpoint taken now would lose it. A false positive (another
    /// instruction ending in 0xcc) only delays a kick.
    pub fn stopped_after_int3(&mut self) -> Result<bool> {
        const INT3: u8 = 0xcc;
        let (regs, sregs, _) = self.synced_state()?;
        if sregs.cs.dpl != 3 || regs.rip == 0 {
            return Ok(false);
        }
        let Ok(translation) = self.vcpu.translate_gva(regs.rip - 1) else { return Ok(false) };
        if translation.valid == 0 {
            return Ok(false);
        }
        let byte = self.ram.as_slice()?.get(translation.physical_address as usize).copied();
        Ok(byte == Some(INT3))
    }

    /// Whether the vCPU was kicked out after an interrupt was queued (`KVM_INTERRUPT`) but before
    /// the guest took it. `KVM_GET_VCPU_EVENTS` reports such an interrupt, but a vCPU on a PVM
    /// host that gets it back through `KVM_SET_VCPU_EVENTS` (a replay loading a checkpoint, a
    /// backup restoring a snapshot) does not deliver it the same way, so no checkpoint or
    /// snapshot may be taken in this state: the loop lets the guest take it first.
    pub fn kicked_before_taking_an_interrupt(&mut self) -> Result<bool> {
        let (_, _, events) = self.synced_state()?;
        Ok(events.interrupt.injected != 0)
    }

    /// Registers, special registers and events, from the run page when it is current.
    pub(crate) fn synced_state(
        &mut self,
    ) -> Result<(kvm_bindings::kvm_regs, kvm_bindings::kvm_sregs, kvm_bindings::kvm_vcpu_events)> {
        if self.sync_regs && self.regs_synced {
            let synced = self.vcpu.sync_regs();
            return Ok((synced.regs, synced.sregs, synced.events));
        }
        let vcpu = &self.vcpu;
        Ok((
            vcpu.get_regs().map_err(kvm("read registers"))?,
            vcpu.get_sregs().map_err(kvm("read special registers"))?,
            vcpu.get_vcpu_events().map_err(kvm("read vCPU events"))?,
        ))
    }

    /// Completes the I/O or MMIO access of the last exit inside KVM without running guest code
    /// (KVM finishes such an access only when the vCPU re-enters): afterwards the vCPU state is
    /// complete, as a snapshot needs it. A no-op for a vCPU with nothing pending.
    pub fn complete_pending_io(&mut self) -> Result<()> {
        self.vcpu.set_kvm_immediate_exit(1);
        let result = self.vcpu.run().map(|_| ());
        self.vcpu.set_kvm_immediate_exit(0);
        self.regs_synced = true;
        match result {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(()) => Ok(()),
            Err(e) => Err(VmmError::Kvm { what: "complete the pending I/O", cause: e }),
        }
    }

    /// Builds the VM with its device models and no backends (its outputs are dropped until
    /// [`Machine::attach`]); `control` is the handle other threads reach its vCPU through.
    pub fn new(config: MachineConfig, control: VcpuControl) -> Result<Self> {
        let ram = GuestRam::new(config.memory_mib)?;
        let (image, name) = config.kernel.read(ram.size)?;
        let virtio = device_models(&config.devices)?;
        let guest_cmdline = match virtio.cmdline_fragment() {
            fragment if fragment.is_empty() => config.cmdline.clone(),
            fragment if config.cmdline.is_empty() => fragment,
            fragment => format!("{} {fragment}", config.cmdline),
        };
        let kernel = Self::load_kernel(&ram, &image, &name, &config, &guest_cmdline)?;

        let kvm_fd = Kvm::new().map_err(VmmError::OpenKvm)?;
        let vm = kvm_fd.create_vm().map_err(kvm("create VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS).map_err(kvm("set TSS address"))?;
        let dirty_log = if config.dirty_logging { Some(DirtyLog::new(&vm, ram.size)?) } else { None };
        ram.register(&vm, config.dirty_logging)?;
        let mut vcpu = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
        // Where the host can, KVM copies registers, special registers and events into the run
        // page at every exit: reading them then costs no ioctl (each costs ~20 µs under PVM).
        let sync_regs = kvm_fd.check_extension(kvm_ioctls::Cap::SyncRegs);
        if sync_regs {
            for reg in [SyncReg::Register, SyncReg::SystemRegister, SyncReg::VcpuEvents] {
                vcpu.set_sync_valid_reg(reg);
            }
        }
        let cpuid = crate::cpuid::guest_cpuid(&kvm_fd)?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
        long_mode::enter_long_mode(&vcpu, kernel.entry)?;
        tracing::debug!(entry = format_args!("{:#x}", kernel.entry), end = kernel.end, "kernel loaded");

        let board = Board::new(ram.mem.clone(), virtio);
        Ok(Self {
            vcpu,
            vm,
            kvm: kvm_fd,
            ram,
            board,
            kernel_entry: kernel.entry,
            image_digest: *blake3::hash(&image).as_bytes(),
            config,
            control,
            dirty_log,
            sync_regs,
            regs_synced: false,
            checkpoint_bases: Default::default(),
            verify_checkpoints: false,
            attached: None,
        })
    }

    /// The description a log, a snapshot or a joining backup carries of this machine.
    pub fn description(&self) -> MachineDescription {
        MachineDescription {
            image_digest: self.image_digest,
            memory_size: self.ram.size,
            cmdline: self.config.cmdline.clone(),
            kernel_path: match &self.config.kernel {
                KernelSource::File(path) => Some(path.display().to_string()),
                KernelSource::Embedded => None,
            },
            preemption_bound_ns: self.config.preempt_bound.as_nanos() as u64,
            devices: self.config.devices.clone(),
        }
    }

    /// Checks that this machine runs the guest `description` names (`what` says whose, for the
    /// message).
    pub fn matches(&self, description: &MachineDescription, what: &str) -> Result<()> {
        if self.image_digest != description.image_digest {
            return Err(VmmError::WrongGuest {
                what: what.to_string(),
                reason: format!("the kernel {} differs from the one it was made with", description.kernel_name()),
            });
        }
        Ok(())
    }

    fn load_kernel(
        ram: &GuestRam,
        image: &[u8],
        name: &std::path::Path,
        config: &MachineConfig,
        cmdline: &str,
    ) -> Result<LoadedKernel> {
        long_mode::write_tables(&ram.mem)?;
        if boot::bzimage::is_bzimage(image) {
            let (kernel, header) = boot::bzimage::load(&ram.mem, image, name)?;
            let initrd = match &config.initrd {
                Some(path) => {
                    let bytes = input_file::read_bounded(path, ram.size).map_err(|e| VmmError::Initrd {
                        path: path.clone(),
                        reason: match e {
                            InputFileError::TooLarge { size, .. } => {
                                format!("{size} bytes do not fit in {} MiB of guest memory", ram.size >> 20)
                            }
                            other => other.to_string(),
                        },
                    })?;
                    Some(boot::bzimage::load_initrd(&ram.mem, ram.size, kernel.end, &header, &bytes, path)?)
                }
                None => None,
            };
            layout::write_boot_info(&ram.mem, ram.size, cmdline, Some(header), initrd)?;
            Ok(kernel)
        } else {
            if let Some(path) = &config.initrd {
                return Err(VmmError::Initrd {
                    path: path.clone(),
                    reason: "an initrd needs a bzImage kernel; this kernel is an ELF".into(),
                });
            }
            let kernel = boot::elf::load(&ram.mem, image, name)?;
            layout::write_boot_info(&ram.mem, ram.size, cmdline, None, None)?;
            Ok(kernel)
        }
    }
}

/// The virtio device models a machine with these devices has, without backends.
fn device_models(descriptions: &[DeviceDescription]) -> Result<VirtioDevices> {
    let mut virtio = VirtioDevices::new();
    for description in descriptions {
        match description {
            DeviceDescription::Net { mac, .. } => virtio.add_net(MacAddr(*mac)),
            DeviceDescription::Disk { size, readonly, .. } => virtio.add_blk(*size, *readonly),
        }
        .map_err(BackendError::from)?;
    }
    Ok(virtio)
}
