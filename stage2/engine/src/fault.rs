//! Fault injection for the QEMU tests (tests/tests/faults.rs), only with the cargo feature
//! `fault-injection` (`cargo xtask build-faults`, target/vboot-faults/). The release engine has
//! none of it: these functions are empty there.
//!
//! In that build:
//! - INT 13h AH=F0h on an emulated drive allocates 1.75 GiB (far more than the engine's heap);
//! - INT 13h AH=F1h on an emulated drive panics, and panics again while that is reported;
//! - INT 13h AH=F2h on an emulated drive executes `ud2` (CPU exception 6, invalid opcode), and
//!   AH=F3h loads DS with selector FFF8h, past the GDT (exception 13, general protection, with
//!   error code FFF8h): the engine's exception screen (exception.rs);
//! - `engine_init` allocates 1.75 GiB when a file of the plan has `engine-init-oom` in its name,
//!   and executes `ud2` when one has `engine-init-ud2` (the engine's IDT during init).

#[cfg(feature = "fault-injection")]
mod injected {
    use core::sync::atomic::{AtomicBool, Ordering};

    static DOUBLE_PANIC: AtomicBool = AtomicBool::new(false);

    fn impossible_allocation() {
        let v: alloc::vec::Vec<u8> = alloc::vec::Vec::with_capacity(0x7000_0000);
        core::hint::black_box(v);
    }

    pub fn int13(ah: u8) {
        match ah {
            0xF0 => impossible_allocation(),
            0xF1 => {
                DOUBLE_PANIC.store(true, Ordering::SeqCst);
                panic!("injected fault: INT 13h AH=F1h");
            }
            // SAFETY: faults at once and never returns; the handler stops the machine.
            0xF2 => unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) },
            // SAFETY: as above (general protection).
            0xF3 => unsafe { core::arch::asm!("mov ax, 0xFFF8", "mov ds, ax", options(nostack, noreturn)) },
            _ => {}
        }
    }

    pub fn at_init(plan: &vboot::resident::Plan) {
        let named = |p: &str| p.to_ascii_lowercase().contains("engine-init-oom");
        if plan.drives.iter().flat_map(|d| d.layers.iter()).any(|l| named(&l.path)) {
            impossible_allocation();
        }
        if plan.drives.iter().flat_map(|d| d.layers.iter()).any(|l| l.path.to_ascii_lowercase().contains("engine-init-ud2")) {
            // SAFETY: faults at once; the engine's exception handler stops the machine.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) }
        }
    }

    pub fn while_reporting() {
        if DOUBLE_PANIC.swap(false, Ordering::SeqCst) {
            panic!("injected fault: a panic while reporting a panic");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use injected::*;

/// An INT 13h call with this AH arrived for an emulated drive.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn int13(_ah: u8) {}

/// `engine_init` read the plan.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn at_init(_plan: &vboot::resident::Plan) {}

/// The panic handler has the panic's message.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn while_reporting() {}
