//! A counting global allocator with a per-input limit.
//!
//! Every fuzz binary links this crate, so every allocation of the code under test goes through
//! [`Counting`]. A target calls [`start`] with the limit for this input; from then on the bytes
//! live above the baseline are counted, their peak is kept, and an allocation that would pass the
//! limit returns null: `try_reserve` reports it (the parser's `NoMemory` error, a correct
//! answer), an infallible allocation aborts the process ("memory allocation of N bytes failed"),
//! which libFuzzer reports as a crash with the input that caused it.
//!
//! libFuzzer's own memory (its corpus, its C++ heap) does not come through here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

pub struct Counting;

/// Bytes live now, counted from the start of the process (signed: memory allocated before a
/// baseline and freed after it makes the count go down, never wrong relative to the baseline).
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);
static BASE: AtomicI64 = AtomicI64::new(0);
static LIMIT: AtomicI64 = AtomicI64::new(i64::MAX);
static REFUSED: AtomicBool = AtomicBool::new(false);

#[global_allocator]
static GLOBAL: Counting = Counting;

fn grow(bytes: usize) -> bool {
    let bytes = bytes as i64;
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    if live - BASE.load(Relaxed) > LIMIT.load(Relaxed) {
        LIVE.fetch_sub(bytes, Relaxed);
        REFUSED.store(true, Relaxed);
        return false;
    }
    PEAK.fetch_max(live, Relaxed);
    true
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size() as i64, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !grow(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub((new_size - layout.size()) as i64, Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub((layout.size() - new_size) as i64, Relaxed);
        }
        p
    }
}

/// Start counting for one input: what is live now is the baseline; at most `limit_bytes` more
/// may be live at any moment.
pub fn start(limit_bytes: u64) {
    // A panic formats its message on the heap while it holds the backtrace lock; refusing that
    // allocation would deadlock the alloc-error hook on the same lock. Lift the limit first.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            stop();
            prev(info)
        }));
    });
    let live = LIVE.load(Relaxed);
    BASE.store(live, Relaxed);
    PEAK.store(live, Relaxed);
    LIMIT.store(limit_bytes.min(i64::MAX as u64) as i64, Relaxed);
    REFUSED.store(false, Relaxed);
}

/// Change the limit without moving the baseline.
pub fn set_limit(limit_bytes: u64) {
    LIMIT.store(limit_bytes.min(i64::MAX as u64) as i64, Relaxed);
}

/// Bytes live above the baseline now.
pub fn live() -> u64 {
    (LIVE.load(Relaxed) - BASE.load(Relaxed)).max(0) as u64
}

/// The most bytes live above the baseline since [`start`] or [`reset_peak`].
pub fn peak() -> u64 {
    (PEAK.load(Relaxed) - BASE.load(Relaxed)).max(0) as u64
}

/// Start a new peak from what is live now (the baseline stays).
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// Whether an allocation was refused since [`start`].
pub fn refused() -> bool {
    REFUSED.load(Relaxed)
}

/// No limit (between inputs, and for work of the harness itself).
pub fn stop() {
    LIMIT.store(i64::MAX, Relaxed);
}
