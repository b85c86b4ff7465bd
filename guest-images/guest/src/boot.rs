//! The ring-0 part of the guest: entry, GDT, TSS and the interrupt stubs.
//!
//! Ring-0 code is emulated by PVM hosts (~2.5 M instructions/s), so it is kept tiny:
//! - `_start` (once, ~30 instructions): builds the TSS descriptor, loads GDT, TR and IDTR,
//!   and `iretq`s into `ftvm_ring3_start` at CPL3 with IF=0.
//! - IRQ stubs (vectors 0x20-0x2f): `inc qword [counter]; iretq`: 2 instructions. The PIC
//!   runs in auto-EOI mode, so no EOI write (and no exit) is needed.
//! - one DPL3 gate for ring 3, `int 0x80` with an operation in EAX (4-7 instructions):
//!   0 = wait (`sti; hlt; cli; iretq`), 1 = set IF, 2 = clear IF in the caller's RFLAGS.
//!   (`int 0x80` because the PVM host turns any other `int n` from ring 3 into #UD.)
//! - exception stubs (vectors 0-31): report `(rip & 0xffffff) << 8 | vector` on the guest
//!   panic port 0xf5 and halt.
//!
//! Why gates for IF and a TSS I/O bitmap, when IOPL=3 would do: on the PVM hosts the `iretq`
//! into ring 3 drops IOPL to 0 whatever the frame says (measured: ring 3 runs with
//! RFLAGS.IOPL=0 even when ring 0 had IOPL=3 and the frame had IOPL=3). Port I/O from ring 3
//! still works through the TSS I/O permission bitmap (ports 0-0xfff allowed), which the host's
//! instruction emulator honours; `cli`/`sti` have no bitmap, hence the gate operations. The frame still
//! asks for IOPL=3, which ordinary VMX hosts honour; the code works either way.
//!
//! Everything else, including filling the IDT (see `interrupts::init`), runs in ring 3.
//! The page tables the VMM built are user-accessible, so ring 3 can write the IDT in place;
//! the CPU reads gates from memory at delivery time.

use core::arch::global_asm;

/// Selectors of our GDT.
pub const KERNEL_CS: u16 = 0x08;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
pub const TSS_SEL: u16 = 0x28;

/// The DPL3 gate and its operations (in EAX).
pub const GATE_VECTOR: u8 = 3;
pub const OP_WAIT: u32 = 0;
pub const OP_ENABLE: u32 = 1;
pub const OP_DISABLE: u32 = 2;

/// Ports 0..IO_PORTS are allowed to ring 3 by the TSS I/O permission bitmap.
const IO_PORTS: usize = 0x1000;
/// TSS limit: 104-byte TSS, the bitmap, and the terminating 0xff byte.
const TSS_LIMIT: usize = 104 + IO_PORTS / 8;

/// The 64-bit TSS with an I/O permission bitmap; `_start` sets RSP0. In `.data` (not `.bss`)
/// because ring 0 writes it before ring 3 zeroes `.bss`.
#[repr(C, align(16))]
pub struct Tss([u8; TSS_LIMIT + 1]);

const fn tss_image() -> Tss {
    let mut t = [0u8; TSS_LIMIT + 1];
    t[102] = 104; // I/O map base
    t[TSS_LIMIT] = 0xff;
    Tss(t)
}

#[no_mangle]
#[link_section = ".data.tss"]
static mut FTVM_TSS: Tss = tss_image();

/// GDT: null, kernel code, kernel data, user data (DPL3), user code (DPL3), TSS (16 bytes,
/// filled by `_start`).
#[no_mangle]
#[link_section = ".data.gdt"]
static mut FTVM_GDT: [u64; 7] = [
    0,
    0x0020_9a00_0000_0000, // 0x08: 64-bit code, DPL0
    0x0000_9200_0000_0000, // 0x10: data, DPL0
    0x0000_f200_0000_0000, // 0x18: data, DPL3
    0x0020_fa00_0000_0000, // 0x20: 64-bit code, DPL3
    0,                     // 0x28: TSS low
    0,                     //       TSS high
];

/// The IDT: 256 16-byte gates, filled from ring 3 by `interrupts::init`.
#[repr(C, align(4096))]
pub struct Idt(pub [[u64; 2]; 256]);

#[no_mangle]
pub static mut FTVM_IDT: Idt = Idt([[0; 2]; 256]);

const KSTACK_SIZE: usize = 16 * 1024;
const USTACK_SIZE: usize = 128 * 1024;

#[repr(C, align(4096))]
struct Stack<const N: usize>([u8; N]);

#[no_mangle]
#[link_section = ".stacks.kernel"]
static mut FTVM_KSTACK: Stack<KSTACK_SIZE> = Stack([0; KSTACK_SIZE]);
#[no_mangle]
#[link_section = ".stacks.user"]
static mut FTVM_USTACK: Stack<USTACK_SIZE> = Stack([0; USTACK_SIZE]);

/// Per-IRQ interrupt counts (IRQ n = vector 0x20 + n), incremented by the ring-0 stubs.
#[no_mangle]
pub static FTVM_IRQ_COUNTS: [core::sync::atomic::AtomicU64; 16] = [const { core::sync::atomic::AtomicU64::new(0) }; 16];

extern "C" {
    /// Addresses of the exception stubs (0-31), IRQ stubs (0x20-0x2f) and the gate.
    static ftvm_stub_table: [u64; 32 + 16 + 1];
}

/// Handler addresses for the IDT: `(vector, address, dpl)`.
pub fn gates() -> impl Iterator<Item = (u8, u64, u8)> {
    // SAFETY: `ftvm_stub_table` is an immutable table of 49 addresses defined in the asm below.
    let table = unsafe { &*core::ptr::addr_of!(ftvm_stub_table) };
    (0..32u8)
        .filter(|v| *v != GATE_VECTOR)
        .map(move |v| (v, table[v as usize], 0))
        .chain((0..16u8).map(move |i| (0x20 + i, table[32 + i as usize], 0)))
        .chain(core::iter::once((GATE_VECTOR, table[48], 3)))
}

global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
    .code64
_start:
    cli
    lea rsp, [rip + {kstack} + {kstack_size}]
    lea rax, [rip + {tss}]
    mov [rax + 4], rsp                  /* TSS.RSP0 */
    /* TSS descriptor: limit, type 0x89 (present, 64-bit TSS available), base = rax */
    mov rdx, rax
    shl rdx, 16
    mov rcx, 0x000000ffffff0000
    and rdx, rcx                        /* base[23:0] -> bits 16..39 */
    mov rcx, rax
    shr rcx, 24
    shl rcx, 56                         /* base[31:24] -> bits 56..63 */
    or rdx, rcx
    mov rcx, 0x0000890000000000 + {tss_limit}
    or rdx, rcx
    lea rcx, [rip + {gdt}]
    mov [rcx + 0x28], rdx
    shr rax, 32
    mov [rcx + 0x30], rax               /* base[63:32] */
    lgdt [rip + ftvm_gdt_ptr]
    mov eax, {tss_sel}
    ltr ax
    lidt [rip + ftvm_idt_ptr]
    /* IOPL=3 now, at CPL0: PVM's iretq keeps the current IOPL instead of the frame's. */
    push 0x3002
    popfq
    /* iretq to ring 3: SS, RSP, RFLAGS (IOPL=3, IF=0; PVM drops the IOPL), CS, RIP */
    push {user_ds}
    lea rax, [rip + {ustack} + {ustack_size}]
    push rax
    push 0x3002
    push {user_cs}
    lea rax, [rip + ftvm_ring3_start]
    push rax
    mov rdi, rsi                        /* zero page */
    iretq

    /* Ring 3 from here: zero .bss (not the stacks), then call guest_main(zero_page). */
    .section .text.ftvm_ring3_start, "ax"
ftvm_ring3_start:
    mov rbx, rdi
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    xor eax, eax
    cld
    rep stosb
    mov rdi, rbx
    call {main}
1:  ud2
    jmp 1b

    .section .rodata.ftvm_descriptor_ptrs, "a"
    .balign 16
    .word 0, 0, 0
ftvm_gdt_ptr:
    .word 7 * 8 - 1
    .quad {gdt}
    .word 0, 0, 0
ftvm_idt_ptr:
    .word 256 * 16 - 1
    .quad {idt}

    /* Exception stubs: report (rip & 0xffffff) << 8 | vector on port 0xf5. */
    .section .text.ftvm_stubs, "ax"
    .macro ftvm_exc vec, rip_off
ftvm_exc_\vec:
    mov eax, dword ptr [rsp + \rip_off]
    shl eax, 8
    or eax, \vec
    mov edx, 0xf5
    out dx, eax
2:  cli
    hlt
    jmp 2b
    .endm
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    ftvm_exc \v, 0
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
    ftvm_exc \v, 8
    .endr

    /* IRQ stubs: count and return. The PIC is in auto-EOI mode. */
    .macro ftvm_irq n
ftvm_irq_\n:
    inc qword ptr [rip + {counts} + 8 * \n]
    iretq
    .endm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    ftvm_irq \n
    .endr

    /* The gate (int 0x80 from ring 3), operation in eax. */
ftvm_gate:
    cmp eax, {op_enable}
    je 3f
    ja 4f
    /* OP_WAIT: enable interrupts and halt until one arrives. `sti` delays interrupts by one
       instruction, so none is lost between a ring-3 check made with IF=0 and the hlt; `cli`
       right after keeps a second interrupt out of the same wait. iretq restores the caller's
       RFLAGS (usually IF=0). */
    sti
    hlt
    cli
    iretq
3:  /* OP_ENABLE: set IF in the caller's RFLAGS */
    or qword ptr [rsp + 16], 0x200
    iretq
4:  /* OP_DISABLE (and anything else): clear IF in the caller's RFLAGS */
    and qword ptr [rsp + 16], -0x201
    iretq

    .section .rodata.ftvm_stub_table, "a"
    .balign 8
    .global ftvm_stub_table
ftvm_stub_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad ftvm_exc_\v
    .endr
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .quad ftvm_irq_\n
    .endr
    .quad ftvm_gate
    .text
"#,
    kstack = sym FTVM_KSTACK,
    kstack_size = const KSTACK_SIZE,
    ustack = sym FTVM_USTACK,
    ustack_size = const USTACK_SIZE,
    tss = sym FTVM_TSS,
    gdt = sym FTVM_GDT,
    idt = sym FTVM_IDT,
    counts = sym FTVM_IRQ_COUNTS,
    tss_sel = const TSS_SEL,
    tss_limit = const TSS_LIMIT,
    op_enable = const OP_ENABLE,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    main = sym crate::guest_main,
);
