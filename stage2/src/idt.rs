//! The protected-mode IDT for the CPU exceptions (vectors 0-19), shared by stage2 and the engine
//! (which includes this file by path). Each stub pushes a dummy error code where the CPU pushes
//! none, then the vector, and calls the crate's own `cpu_exception(&ExceptionFrame) -> !`, which
//! reports and never returns: without an IDT of our own an exception would triple-fault (the
//! machine resets and the report is lost). docs/robustness.md, "CPU exceptions".

core::arch::global_asm!(
    r#"
.section .text.vboot_exceptions, "ax"
.code32
.macro VBOOT_EXC_NOERR n
vboot_exc_\n:
    push $0
    push $\n
    jmp vboot_exc_common
.endm
.macro VBOOT_EXC_ERR n
vboot_exc_\n:
    push $\n
    jmp vboot_exc_common
.endm
VBOOT_EXC_NOERR 0
VBOOT_EXC_NOERR 1
VBOOT_EXC_NOERR 2
VBOOT_EXC_NOERR 3
VBOOT_EXC_NOERR 4
VBOOT_EXC_NOERR 5
VBOOT_EXC_NOERR 6
VBOOT_EXC_NOERR 7
VBOOT_EXC_ERR 8
VBOOT_EXC_NOERR 9
VBOOT_EXC_ERR 10
VBOOT_EXC_ERR 11
VBOOT_EXC_ERR 12
VBOOT_EXC_ERR 13
VBOOT_EXC_ERR 14
VBOOT_EXC_NOERR 15
VBOOT_EXC_NOERR 16
VBOOT_EXC_ERR 17
VBOOT_EXC_NOERR 18
VBOOT_EXC_NOERR 19
vboot_exc_common:
    cld
    push %esp
    call cpu_exception
1:  cli
    hlt
    jmp 1b

.section .data.rel.ro.vboot_exception_stubs, "aw"
.balign 4
vboot_exception_stubs:
    .long vboot_exc_0, vboot_exc_1, vboot_exc_2, vboot_exc_3, vboot_exc_4
    .long vboot_exc_5, vboot_exc_6, vboot_exc_7, vboot_exc_8, vboot_exc_9
    .long vboot_exc_10, vboot_exc_11, vboot_exc_12, vboot_exc_13, vboot_exc_14
    .long vboot_exc_15, vboot_exc_16, vboot_exc_17, vboot_exc_18, vboot_exc_19
"#,
    options(att_syntax)
);

const VECTORS: usize = 20;
/// The flat 32-bit code segment in both GDTs (stage2/src/entry.s, stage2/src/stub.s).
const SEL_CODE32: u64 = 0x08;

extern "C" {
    static vboot_exception_stubs: [u32; VECTORS];
}

static mut IDT: [u64; VECTORS] = [0; VECTORS];

/// An IDTR value.
#[repr(C, packed)]
pub struct Pointer {
    pub limit: u16,
    pub base: u32,
}

/// What the stubs push, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub vector: u32,
    pub error_code: u32,
    pub eip: u32,
    pub cs: u32,
    pub eflags: u32,
}

/// Load the IDT, building it the first time (in the engine the stubs' addresses are relocated
/// when it is copied, so the gates are made where it runs).
pub fn load() {
    // SAFETY: single-threaded, interrupts off in protected mode; the IDT is written only here,
    // with 32-bit interrupt gates (present, DPL 0) to the stubs above, which the CPU may use
    // from the `lidt` on.
    unsafe {
        let idt = &raw mut IDT;
        if (*idt)[0] == 0 {
            for (gate, &handler) in (*idt).iter_mut().zip((*&raw const vboot_exception_stubs).iter()) {
                let handler = handler as u64;
                *gate = (handler & 0xFFFF) | (SEL_CODE32 << 16) | (0x8E << 40) | ((handler >> 16) << 48);
            }
        }
        let pointer = Pointer { limit: (VECTORS * 8 - 1) as u16, base: idt as u32 };
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack));
    }
}
