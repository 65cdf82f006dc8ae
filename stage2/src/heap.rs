//! stage2's heap: above its high part, set up once by `stage2_main` and made empty again, whole,
//! after a panic abandoned a menu session (recovery.rs). Its end is where the memory that
//! highmem.rs hands out begins.

use core::sync::atomic::{AtomicU32, Ordering};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Where the heap starts and ends: set once, before any session.
static BASE: AtomicU32 = AtomicU32::new(0);
static END: AtomicU32 = AtomicU32::new(0);

/// Make `bytes` bytes at `base` the heap.
///
/// # Safety
/// The range must be usable RAM that nothing else uses, from now on.
pub unsafe fn init(base: u32, bytes: u32) {
    // SAFETY: as the caller guarantees.
    unsafe { HEAP.lock().init(base as *mut u8, bytes as usize) };
    BASE.store(base, Ordering::SeqCst);
    END.store(base + bytes, Ordering::SeqCst);
}

/// First byte above the heap: the resident engine must go above it.
pub fn end() -> u32 {
    END.load(Ordering::SeqCst)
}

extern "C" {
    /// The end of stage2's high part (linker.ld).
    static _stage2_high_end: u8;
}

/// `bytes` bytes at `at`, between stage2's end and the heap's start: where vboot.lkrn's engine
/// waits (entry.s moved it there; main.rs starts the heap above it). Panics (a bug) outside.
pub fn below_heap(at: u32, bytes: u32) -> &'static [u8] {
    let start = &raw const _stage2_high_end as u32;
    assert!(at >= start && at as u64 + bytes as u64 <= BASE.load(Ordering::SeqCst) as u64, "{:#x}+{:#x} is not below the heap", at, bytes);
    // SAFETY: the range lies between the end of stage2's code, data and .bss and the heap's
    // start (checked): no Rust object is there, and nothing writes it after entry.s, so a
    // shared slice of it stays valid.
    unsafe { core::slice::from_raw_parts(at as usize as *const u8, bytes as usize) }
}

/// Make the heap empty again, as at start.
///
/// # Safety
/// Nothing alive may point into the heap (statics hold no heap memory; the session's frames must
/// be abandoned).
pub unsafe fn reset() {
    let (base, end) = (BASE.load(Ordering::SeqCst), END.load(Ordering::SeqCst));
    // SAFETY: the caller guarantees nothing alive uses heap memory. A panic inside the allocator
    // may have left the lock taken (there is no unwinding to release it); its data is
    // re-initialised whole right after, so releasing it by force is sound.
    unsafe {
        if HEAP.is_locked() {
            HEAP.force_unlock();
        }
        HEAP.lock().init(base as *mut u8, (end - base) as usize);
    }
}
