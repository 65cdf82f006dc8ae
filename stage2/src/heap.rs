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
