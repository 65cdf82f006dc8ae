//! Recovery points: how a panic (an allocation failure is one) gets back to a known place instead
//! of halting. Both firmware crates are built with `panic = "abort"`, so there is no unwinding;
//! [`RecoveryPoint::run`] calls a closure through `vboot_catch` (catch.s), and the panic handler
//! calls [`RecoveryPoint::escape`], which puts the stack and the callee-saved registers back as
//! they were at that call and makes it return. Every frame in between is abandoned: nothing in
//! them is dropped (their heap memory leaks, locks they hold stay held). Callers decide what of
//! that matters; see stage2's recovery.rs and the engine's recover.rs.
//!
//! Shared by stage2 and the engine (which includes this file by path); the assembly uses only
//! register-relative addressing, so it runs in the position-independent engine as well.

use core::cell::{Cell, UnsafeCell};

core::arch::global_asm!(include_str!("catch.s"), options(att_syntax));

/// What `vboot_catch` saves: EBX, ESI, EDI, EBP and ESP (catch.s).
#[repr(C)]
struct JumpBuf([u32; 5]);

extern "C" {
    fn vboot_catch(buf: *mut JumpBuf, f: extern "C" fn(*mut u8), arg: *mut u8) -> u32;
    fn vboot_throw(buf: *const JumpBuf) -> !;
}

/// One place a panic can go back to, armed while [`RecoveryPoint::run`] runs its closure.
pub struct RecoveryPoint {
    buf: UnsafeCell<JumpBuf>,
    armed: Cell<bool>,
}

// SAFETY: the firmware is single-threaded and no interrupt handler of ours runs Rust code, so a
// recovery point is never touched from two places at once.
unsafe impl Sync for RecoveryPoint {}

/// The closure and its result, shared with the trampoline through a pointer.
struct Call<F, R> {
    f: Option<F>,
    result: Option<R>,
}

extern "C" fn trampoline<F: FnOnce() -> R, R>(arg: *mut u8) {
    // SAFETY: `arg` is the `Call<F, R>` that `run` passed to `vboot_catch`; it lives in `run`'s
    // frame for the whole call, and nothing else uses it meanwhile.
    let call = unsafe { &mut *(arg as *mut Call<F, R>) };
    if let Some(f) = call.f.take() {
        call.result = Some(f());
    }
}

impl RecoveryPoint {
    pub const fn new() -> RecoveryPoint {
        RecoveryPoint { buf: UnsafeCell::new(JumpBuf([0; 5])), armed: Cell::new(false) }
    }

    /// Whether a [`RecoveryPoint::run`] is in progress, so [`RecoveryPoint::escape`] may be used.
    pub fn is_armed(&self) -> bool {
        self.armed.get()
    }

    /// Run `f`. `Some(result)` when it returns; `None` when [`RecoveryPoint::escape`] was called
    /// while it ran (then `f`, moved into the abandoned frames, is never dropped). Not nested: a
    /// `run` inside a `run` of the same point runs `f` without a recovery point of its own.
    pub fn run<R, F: FnOnce() -> R>(&self, f: F) -> Option<R> {
        if self.armed.get() {
            return Some(f());
        }
        let mut call: Call<F, R> = Call { f: Some(f), result: None };
        self.armed.set(true);
        // SAFETY: `vboot_catch` saves the callee-saved registers and ESP in `buf`, calls the
        // trampoline with `call`, and returns 0 after it, or 1 when `vboot_throw` brought the
        // stack back to this frame; to the compiler it is an ordinary call that returns once.
        // `call` stays valid throughout (it is in this frame, which `vboot_throw` keeps).
        let thrown = unsafe { vboot_catch(self.buf.get(), trampoline::<F, R>, &mut call as *mut Call<F, R> as *mut u8) };
        self.armed.set(false);
        if thrown != 0 {
            // The closure was taken by the abandoned trampoline and no result was stored; do not
            // drop anything here either (the heap may be in no state to take it back).
            core::mem::forget(call);
            return None;
        }
        call.result
    }

    /// Abandon every frame below the [`RecoveryPoint::run`] in progress, which returns `None`.
    ///
    /// # Safety
    /// The point must be armed, and the caller must be running on the stack that `run` was
    /// called on, below its frame (the panic handler, called from inside `run`'s closure).
    pub unsafe fn escape(&self) -> ! {
        // SAFETY: the caller guarantees `buf` holds the state of a `run` that is still in
        // progress on this stack, so restoring it lands in a live frame.
        unsafe { vboot_throw(self.buf.get()) }
    }
}
