//! CPU exceptions inside the engine. The stub enters the engine in protected mode with the
//! guest's real-mode IDTR still loaded (base 0, limit 3FFh: the interrupt vector table), so
//! without an IDT of its own an exception would read IVT bytes as gate descriptors, fault again
//! and reset the machine (a triple fault) with nothing on screen. The engine loads its own IDT
//! whenever it runs: on each call from the stub ([`load`] in `engine_dispatch`), again after each
//! trip through the original BIOS (whose real-mode part reloads the saved IDTR), and for
//! `engine_init`, where stage2's IDT is put back when init returns ([`Saved`]).
//!
//! An exception is a bug in vboot (or memory it relies on was overwritten): the engine's state
//! cannot be trusted any more, so the handler does not try to fail the request the way a panic
//! does (recover.rs). It prints `vboot engine: CPU exception N ...` with the address on COM1
//! and on the screen, then stops the processor (docs/robustness.md, "CPU exceptions").

use core::fmt::Write;

core::arch::global_asm!(
    r#"
.section .text.engine_exceptions, "ax"
.code32
.macro ENGINE_EXC_NOERR n
engine_exc_\n:
    push $0
    push $\n
    jmp engine_exc_common
.endm
.macro ENGINE_EXC_ERR n
engine_exc_\n:
    push $\n
    jmp engine_exc_common
.endm
ENGINE_EXC_NOERR 0
ENGINE_EXC_NOERR 1
ENGINE_EXC_NOERR 2
ENGINE_EXC_NOERR 3
ENGINE_EXC_NOERR 4
ENGINE_EXC_NOERR 5
ENGINE_EXC_NOERR 6
ENGINE_EXC_NOERR 7
ENGINE_EXC_ERR 8
ENGINE_EXC_NOERR 9
ENGINE_EXC_ERR 10
ENGINE_EXC_ERR 11
ENGINE_EXC_ERR 12
ENGINE_EXC_ERR 13
ENGINE_EXC_ERR 14
ENGINE_EXC_NOERR 15
ENGINE_EXC_NOERR 16
ENGINE_EXC_ERR 17
ENGINE_EXC_NOERR 18
ENGINE_EXC_NOERR 19
engine_exc_common:
    cld
    push %esp
    call engine_cpu_exception
1:  cli
    hlt
    jmp 1b

.section .data.rel.ro.engine_exception_stubs, "aw"
.balign 4
.global engine_exception_stubs
engine_exception_stubs:
    .long engine_exc_0, engine_exc_1, engine_exc_2, engine_exc_3, engine_exc_4
    .long engine_exc_5, engine_exc_6, engine_exc_7, engine_exc_8, engine_exc_9
    .long engine_exc_10, engine_exc_11, engine_exc_12, engine_exc_13, engine_exc_14
    .long engine_exc_15, engine_exc_16, engine_exc_17, engine_exc_18, engine_exc_19
"#,
    options(att_syntax)
);

const VECTORS: usize = 20;

extern "C" {
    /// The stubs' addresses, relocated with the rest of the image by stage2.
    static engine_exception_stubs: [u32; VECTORS];
}

static mut IDT: [u64; VECTORS] = [0; VECTORS];

/// The selector of the flat 32-bit code segment, in the stub's GDT and in stage2's alike.
const SEL_CODE32: u64 = 0x08;

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u32,
}

/// Load the engine's IDT (building it the first time: the gates hold relocated addresses).
pub fn load() {
    // SAFETY: single-threaded with interrupts off; the IDT is only written here, with gates to
    // the stubs above, which the CPU may use from the `lidt` on.
    unsafe {
        let idt = &raw mut IDT;
        if (*idt)[0] == 0 {
            for (gate, &handler) in (*idt).iter_mut().zip((*&raw const engine_exception_stubs).iter()) {
                // 32-bit interrupt gate, present, DPL 0.
                let handler = handler as u64;
                *gate = (handler & 0xFFFF) | (SEL_CODE32 << 16) | (0x8E << 40) | ((handler >> 16) << 48);
            }
        }
        let pointer = Pointer { limit: (VECTORS * 8 - 1) as u16, base: idt as u32 };
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack));
    }
}

/// The IDTR found when the engine was entered from stage2 (`engine_init`), put back on drop.
pub struct Saved(Pointer);

impl Saved {
    pub fn take() -> Saved {
        let mut p = Pointer { limit: 0, base: 0 };
        // SAFETY: stores the IDTR into `p`.
        unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut p, options(nostack)) };
        load();
        Saved(p)
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        // SAFETY: the IDTR stage2 had when it called in.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) &self.0, options(readonly, nostack)) };
    }
}

/// What the stubs push, lowest address first.
#[repr(C)]
pub struct Frame {
    vector: u32,
    error_code: u32,
    eip: u32,
    cs: u32,
    eflags: u32,
}

#[no_mangle]
extern "C" fn engine_cpu_exception(frame: &Frame) -> ! {
    // No allocation, no panic machinery: whatever failed may have damaged them.
    let base = &raw const crate::engine_header as u32;
    let mut line = crate::report::Line::new();
    let _ = write!(
        line,
        "vboot engine: CPU exception {} (error code {:#x}) at EIP {:#010x} (engine at {:#x} + {:#x}), EFLAGS {:#x}; the machine is stopped",
        frame.vector,
        frame.error_code,
        frame.eip,
        base,
        frame.eip.wrapping_sub(base),
        frame.eflags
    );
    crate::report::show(&line);
    crate::report::halt()
}
