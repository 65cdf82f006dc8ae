//! Panics in the engine (an allocation failure is one) fail the request being served, not the
//! machine. The engine's `unsafe` for this lives here: the recovery point and the report the
//! panic handler keeps for stage2 (its output to COM1 and the screen is report.rs's).
//!
//! - In [`guard_dispatch`] (every INT 13h/15h call the stub passes on): the panic handler prints
//!   `vboot engine: internal error: MESSAGE; the disk request failed` on COM1 and on the screen
//!   and escapes back to the guard, which fails that call the way a BIOS fails one: INT 13h gets
//!   AH = 20h "controller failure" (the engine stands where the disk controller would), CF set,
//!   the BDA last-status byte, and nothing counted as transferred (`vboot::int13::fail_call`);
//!   INT 15h gets AH = 86h "unsupported", CF set. The guest goes on, and the next call is served
//!   as usual.
//! - In [`guard_init`] (`engine_init`, called by stage2 before anything is hooked): the message
//!   goes back to stage2 as `engine_init`'s error, and stage2 shows it and returns to its menu.
//!   The engine is copied afresh for the next attempt, so nothing of this one survives.
//! - Anywhere else, or while a panic is being reported, or when the panic left the heap's lock
//!   taken (the allocator itself panicked, so its lists may be half-updated and the next
//!   allocation would spin for ever with interrupts off): the message, then the machine stops.
//!
//! What a recovered panic leaves behind: the frames between the guard and the panic are
//! abandoned without running destructors, so whatever heap memory they owned leaks (an
//! allocation that failed took nothing, so an allocation failure leaks only what the call had
//! allocated before it). State the call was updating in place (an image's in-memory tables in
//! the middle of an allocating write, say) stays as the panic left it; every later call still
//! goes through it.

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::report::{self, Line};
use crate::stub::Stub;

#[path = "../../src/catch.rs"]
mod catch;

use catch::RecoveryPoint;

static POINT: RecoveryPoint = RecoveryPoint::new();
/// What the armed point guards: NOTHING, INIT or DISPATCH.
static GUARDING: AtomicU8 = AtomicU8::new(NOTHING);
const NOTHING: u8 = 0;
const INIT: u8 = 1;
const DISPATCH: u8 = 2;
/// Panics since the last recovery: 1 while one is being reported.
static PANICS: AtomicU32 = AtomicU32::new(0);
/// The vector of the call being served (13h or 15h), for the report.
static VECTOR: AtomicU8 = AtomicU8::new(0);

/// The report of the last panic, kept for `guard_init` to hand to stage2.
struct Report(UnsafeCell<Line>);
// SAFETY: single-threaded; written only by the panic handler, read by a guard after the escape.
unsafe impl Sync for Report {}
static REPORT: Report = Report(UnsafeCell::new(Line::new()));

/// `engine_init`'s body under the recovery point. `f` returns 0 or the length of an error
/// message it wrote to `msg`; a panic inside it returns the panic's report, written to `msg`.
pub fn guard_init(msg: &mut [u8], f: impl FnOnce(&mut [u8]) -> u32) -> u32 {
    GUARDING.store(INIT, Ordering::SeqCst);
    let result = POINT.run(|| f(msg));
    GUARDING.store(NOTHING, Ordering::SeqCst);
    match result {
        Some(n) => n,
        None => {
            PANICS.store(0, Ordering::SeqCst);
            // SAFETY: the panic handler is done with REPORT (it escaped to `run` above).
            let report = unsafe { &*REPORT.0.get() }.as_bytes();
            let n = report.len().min(msg.len());
            msg[..n].copy_from_slice(&report[..n]);
            n as u32
        }
    }
}

/// One call from the stub under the recovery point: `f` reads the stub's register frame,
/// serves the call and writes the frame back as its very last step. After a panic the frame
/// still holds the caller's registers, and the call is failed in it here.
pub fn guard_dispatch(stub: Stub, f: impl FnOnce()) {
    VECTOR.store(stub.vector() as u8, Ordering::SeqCst);
    GUARDING.store(DISPATCH, Ordering::SeqCst);
    let served = POINT.run(f).is_some();
    GUARDING.store(NOTHING, Ordering::SeqCst);
    if served {
        return;
    }
    // The panic abandoned the frames that were using the engine's state.
    crate::state_abandoned();
    let mut regs = stub.frame();
    if stub.vector() == 0x13 {
        vboot::int13::fail_call(&mut regs, &mut crate::guest::FlatMemory, vboot::int13::Status::CONTROLLER_FAILURE);
    } else {
        regs.set_ah(0x86);
        regs.flags |= 1;
    }
    stub.set_frame(&regs);
    PANICS.store(0, Ordering::SeqCst);
}

/// A bug, or an allocation that failed.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let nested = PANICS.fetch_add(1, Ordering::SeqCst);
    if nested >= 2 {
        crate::machine::halt();
    }
    let mut line = Line::new();
    if nested == 1 {
        describe(&mut line, "vboot engine: ", info);
        let _ = write!(line, "; while handling another one, so the machine is stopped");
        report::show(&line);
        crate::machine::halt();
    }
    let guarding = if POINT.is_armed() { GUARDING.load(Ordering::SeqCst) } else { NOTHING };
    match guarding {
        INIT => {
            // stage2 prints it after "vboot: ", like engine_init's other errors.
            describe(&mut line, "engine: ", info);
            let _ = write!(line, "; the drives could not be set up");
            // SAFETY: nothing else uses REPORT while the handler runs.
            unsafe { *REPORT.0.get() = line };
            crate::fault::while_reporting();
            // SAFETY: the point is armed and guards code on this very stack, below its frame.
            unsafe { POINT.escape() }
        }
        DISPATCH if !crate::HEAP.is_locked() => {
            describe(&mut line, "vboot engine: ", info);
            let what = if VECTOR.load(Ordering::SeqCst) == 0x15 { "the memory-map request failed" } else { "the disk request failed" };
            let _ = write!(line, "; {}", what);
            report::show(&line);
            crate::fault::while_reporting();
            // SAFETY: as above: armed, and the handler runs on the dispatch's stack.
            unsafe { POINT.escape() }
        }
        DISPATCH => {
            describe(&mut line, "vboot engine: ", info);
            let _ = write!(line, "; the engine's heap is damaged, so the machine is stopped");
            report::show(&line);
            crate::machine::halt();
        }
        _ => {
            describe(&mut line, "vboot engine: ", info);
            let _ = write!(line, "; the machine is stopped");
            report::show(&line);
            crate::machine::halt();
        }
    }
}

/// `PREFIXinternal error: MESSAGE (DIR/FILE:LINE)`, with the last directory of the file only.
fn describe(line: &mut Line, prefix: &str, info: &core::panic::PanicInfo) {
    let _ = write!(line, "{}internal error: {}", prefix, info.message());
    if let Some(at) = info.location() {
        let file = at.file();
        let slash = |end: usize| file.as_bytes()[..end].iter().rposition(|&c| c == b'/');
        let short = &file[slash(file.len()).and_then(slash).map_or(0, |i| i + 1)..];
        let _ = write!(line, " ({}:{})", short, at.line());
    }
}

