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

#[path = "../../src/idt.rs"]
mod idt;

pub use idt::load;
use idt::{ExceptionFrame, Pointer};

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

#[no_mangle]
extern "C" fn cpu_exception(frame: &ExceptionFrame) -> ! {
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
    crate::machine::halt()
}
