//! Memory above stage2's heap and below 4 GiB: where the resident engine goes with its stack, plan
//! and heap, and the hand-off table (resident.rs). No Rust object of stage2 is there (its code,
//! data, stack and heap end at [`crate::heap::end`]), so stage2 may use a range of it as a plain
//! byte slice, through a [`Region`]: claimed once, checked against that window, and the only
//! handle to its bytes while it lives.

use core::sync::atomic::{AtomicBool, Ordering};

/// Where the window ends: the BIOS's ROM shadow and the reset vector sit in the last 64 KiB.
const WINDOW_END: u64 = 0xFFFF_0000;

/// A [`Region`] exists.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// A range of memory above stage2's heap, stage2's to fill while it lives.
pub struct Region {
    base: u32,
    bytes: u32,
}

impl Region {
    /// `bytes` bytes at `base`. Panics (a bug in the caller) unless the range lies above stage2's
    /// heap and below 4 GiB less 64 KiB, or while another region exists.
    pub fn claim(base: u32, bytes: u32) -> Region {
        let end = base as u64 + bytes as u64;
        assert!(
            base >= crate::heap::end() && end <= WINDOW_END,
            "memory at {:#x}+{:#x} is not above stage2's heap",
            base,
            bytes
        );
        assert!(!CLAIMED.swap(true, Ordering::SeqCst), "two regions above stage2's heap at once");
        Region { base, bytes }
    }

    /// The region's bytes; `offset` into them is linear address `base + offset`.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range lies above stage2's heap and below 4 GiB (checked by `claim`), in the
        // flat address space where a linear address is a pointer, and no Rust object is there;
        // this region is the only handle to it (`CLAIMED`), and the slice borrows the region.
        unsafe { core::slice::from_raw_parts_mut(self.base as usize as *mut u8, self.bytes as usize) }
    }

    /// The bytes at linear address `at`, inside the region (panics otherwise: a bug).
    pub fn at_mut(&mut self, at: u32, bytes: u32) -> &mut [u8] {
        let start = at.checked_sub(self.base).expect("below the region") as usize;
        &mut self.bytes_mut()[start..start + bytes as usize]
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        CLAIMED.store(false, Ordering::SeqCst);
    }
}

/// A panic abandoned the session whose frames held a region without dropping it (recovery.rs):
/// nothing uses it any more, so the window may be claimed again.
pub fn release_abandoned() {
    CLAIMED.store(false, Ordering::SeqCst);
}
