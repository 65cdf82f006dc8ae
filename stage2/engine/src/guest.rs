//! The guest's memory as the engine reaches it: the engine runs with flat segments, so a linear
//! address is a pointer. Anything past 4 GiB, or inside vboot's own memory (the engine's range
//! and the stub, which the plan names), is refused; so is everything before `engine_init` has
//! stored those ranges. Nothing of the engine lies outside them, so a copy here never touches a
//! Rust object of the engine's.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vboot::int13::{self, GuestMemory, MemoryError};

const FLAT_LIMIT: u64 = 0x1_0000_0000;

/// At most this many of vboot's ranges (stage2 plans two: the engine's and the stub's).
const MAX_OWN: usize = 4;
/// vboot's own ranges (base, length), from the plan; unused slots are empty.
static OWN: [[AtomicU64; 2]; MAX_OWN] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MAX_OWN];
static OWN_SET: AtomicBool = AtomicBool::new(false);

/// Keep the plan's ranges of vboot's own memory (engine_init, before any guest memory is used).
pub fn set_own_ranges(ranges: &[(u64, u64)]) -> Result<(), String> {
    if ranges.len() > MAX_OWN {
        return Err(format!("engine: the plan names {} ranges of vboot's memory, at most {} are kept", ranges.len(), MAX_OWN));
    }
    for (i, slot) in OWN.iter().enumerate() {
        let (base, length) = ranges.get(i).copied().unwrap_or((0, 0));
        slot[0].store(base, Ordering::SeqCst);
        slot[1].store(length, Ordering::SeqCst);
    }
    OWN_SET.store(true, Ordering::SeqCst);
    Ok(())
}

/// Guest memory: the whole flat address space below 4 GiB but vboot's own ranges.
pub struct FlatMemory;

impl FlatMemory {
    /// `bytes` at `linear` are the guest's: below 4 GiB, and clear of vboot's ranges (which must
    /// be known by now).
    fn check(&self, linear: u64, bytes: u64) -> Result<(), MemoryError> {
        if !OWN_SET.load(Ordering::SeqCst) {
            return Err(MemoryError { linear, bytes: usize::try_from(bytes).unwrap_or(usize::MAX) });
        }
        let own = OWN.each_ref().map(|slot| (slot[0].load(Ordering::SeqCst), slot[1].load(Ordering::SeqCst)));
        int13::check_guest_range(linear, bytes, FLAT_LIMIT, &own)
    }
}

impl GuestMemory for FlatMemory {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(linear, buf.len() as u64)?;
        // SAFETY: guest memory below 4 GiB outside vboot's ranges (checked above): no Rust object
        // of the engine lives there, so `buf` does not overlap it and no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(linear as usize as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check(linear, buf.len() as u64)?;
        // SAFETY: as in `read`: the bytes overwritten are the guest's, which it asked to be.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), linear as usize as *mut u8, buf.len()) };
        Ok(())
    }
    fn is_physical(&self) -> bool {
        true
    }
    fn check_buffer(&self, linear: u64, bytes: u64) -> Result<(), MemoryError> {
        self.check(linear, bytes)
    }
}
