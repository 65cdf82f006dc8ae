//! Fault injection for the QEMU tests (tests/tests/faults.rs), only with the cargo feature
//! `fault-injection`, which `cargo xtask build-faults` turns on for a separate build in
//! target/vboot-faults/. The release firmware has none of it: these functions are empty there.
//!
//! In that build, a line `vboot_fault KIND` inside a menu entry (any other build skips it as a
//! command it does not run) makes booting the entry fail on purpose:
//! - `stage2-oom`: allocate 1 MiB blocks until the heap is exhausted (an allocation failure with
//!   the whole heap in use);
//! - `stage2-oom-after-hook`: the same, at the first disk read after the resident hook is in;
//! - `stage2-double-panic`: a panic, then another one while the first is being reported;
//! - `stage2-ud2`, `stage2-divide-error`, `stage2-gp`: a CPU exception in stage2 (6: `ud2`;
//!   0: `div` by zero; 13: DS loaded with selector FFF8h, past the GDT, error code FFF8h), for
//!   the exception screen (main.rs `cpu_exception`);
//! - `stage2-ud2-after-hook`: `ud2` at the first disk read after the resident hook is in (after
//!   `engine_init` ran, whose trips through the BIOS must not leave stage2 without its IDT);
//! - `bios-no-edd`: the BIOS reach check (vboot::reach) treats the boot disk as if its BIOS had
//!   no INT 13h extensions (CHS only), while stage2 keeps reading with them.

#[cfg(feature = "fault-injection")]
mod injected {
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU8, Ordering};

    const NONE: u8 = 0;
    const AFTER_HOOK: u8 = 1;
    const DOUBLE_PANIC: u8 = 2;
    const UD2_AFTER_HOOK: u8 = 3;
    static ARMED: AtomicU8 = AtomicU8::new(NONE);
    static NO_EDD: AtomicU8 = AtomicU8::new(0);

    pub fn pretend_no_edd() -> bool {
        NO_EDD.load(Ordering::SeqCst) != 0
    }

    fn exhaust_heap() -> ! {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block: Vec<u8> = Vec::with_capacity(1 << 20);
            block.push(1);
            hoard.push(block);
            core::hint::black_box(&mut hoard);
        }
    }

    pub fn at_entry(entry: &vboot::config::Entry) {
        ARMED.store(NONE, Ordering::SeqCst);
        NO_EDD.store(0, Ordering::SeqCst);
        for line in &entry.lines {
            let mut words = line.split_whitespace();
            if words.next() != Some("vboot_fault") {
                continue;
            }
            match words.next() {
                Some("stage2-oom") => exhaust_heap(),
                // SAFETY: faults at once and never returns; `cpu_exception` takes over for good.
                Some("stage2-ud2") => unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) },
                // SAFETY: as above (divide error).
                Some("stage2-divide-error") => unsafe {
                    core::arch::asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", options(nomem, nostack, noreturn))
                },
                // SAFETY: as above (general protection).
                Some("stage2-gp") => unsafe { core::arch::asm!("mov ax, 0xFFF8", "mov ds, ax", options(nostack, noreturn)) },
                Some("bios-no-edd") => NO_EDD.store(1, Ordering::SeqCst),
                Some("stage2-oom-after-hook") => ARMED.store(AFTER_HOOK, Ordering::SeqCst),
                Some("stage2-ud2-after-hook") => ARMED.store(UD2_AFTER_HOOK, Ordering::SeqCst),
                Some("stage2-double-panic") => {
                    ARMED.store(DOUBLE_PANIC, Ordering::SeqCst);
                    panic!("injected fault: stage2-double-panic");
                }
                _ => {}
            }
        }
    }

    pub fn on_disk_read(hooked: bool) {
        if !hooked {
            return;
        }
        match ARMED.load(Ordering::SeqCst) {
            AFTER_HOOK => {
                ARMED.store(NONE, Ordering::SeqCst);
                exhaust_heap();
            }
            UD2_AFTER_HOOK => {
                ARMED.store(NONE, Ordering::SeqCst);
                // SAFETY: faults at once; `cpu_exception` takes over.
                unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) }
            }
            _ => {}
        }
    }

    pub fn while_reporting() {
        if ARMED.swap(NONE, Ordering::SeqCst) == DOUBLE_PANIC {
            panic!("injected fault: a panic while reporting a panic");
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use injected::*;

/// Booting `entry` begins.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn at_entry(_entry: &vboot::config::Entry) {}

/// Whether the reach check must act as if the BIOS had no INT 13h extensions.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn pretend_no_edd() -> bool {
    false
}

/// A BIOS disk is read; `hooked`: the image is hooked into INT 13h already.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn on_disk_read(_hooked: bool) {}

/// The panic handler has printed the panic's message.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn while_reporting() {}
