//! Guest memory as the INT 13h functions see it, and the BIOS data area fields the hook keeps.

use alloc::vec::Vec;

pub use crate::realmode::linear;

/// Guest memory at `linear..linear+bytes` cannot be reached (past the end of RAM, or above what
/// the engine maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    pub linear: u64,
    pub bytes: usize,
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "guest memory {:#x}+{:#x} cannot be reached", self.linear, self.bytes)
    }
}

/// The guest's physical memory. Linear addresses are 64-bit because an EDD 3.0 disk address
/// packet may name a flat buffer anywhere; an engine that cannot reach an address returns `Err`
/// and the call fails with a status instead of touching the wrong memory.
pub trait GuestMemory {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), MemoryError>;
    /// True when `linear` addresses are the machine's physical memory, so a disk may transfer
    /// straight into them (BIOS DMA). A scratch memory (a sector read for geometry probing, a
    /// test's vector) says false, and disks must go through `write`.
    fn is_physical(&self) -> bool {
        false
    }
    /// Whether `linear..linear+bytes` may be a disk transfer's buffer at all, asked once before
    /// the transfer starts (a disk may DMA straight into physical memory, past `write`). The
    /// resident engine refuses vboot's own memory ([`check_guest_range`]).
    fn check_buffer(&self, linear: u64, bytes: u64) -> Result<(), MemoryError> {
        let _ = (linear, bytes);
        Ok(())
    }
}

/// Whether the guest may have vboot touch `linear..linear+bytes`: it must end at or below
/// `limit` (what the engine can address) and overlap none of `reserved`, each `(base, length)`:
/// vboot's own memory (the resident engine with its heap and the hand-off table, and the stub),
/// which the guest's memory map hides. A transfer there would overwrite the engine serving it
/// (or hand its heap to a disk write), so the call fails instead.
pub fn check_guest_range(linear: u64, bytes: u64, limit: u64, reserved: &[(u64, u64)]) -> Result<(), MemoryError> {
    let err = MemoryError { linear, bytes: usize::try_from(bytes).unwrap_or(usize::MAX) };
    let end = linear.checked_add(bytes).ok_or(err)?;
    if end > limit {
        return Err(err);
    }
    let overlaps = |&(base, length): &(u64, u64)| bytes != 0 && linear < base.saturating_add(length) && base < end;
    if reserved.iter().any(overlaps) {
        return Err(err);
    }
    Ok(())
}

impl<T: GuestMemory + ?Sized> GuestMemory for &mut T {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(linear, buf)
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), MemoryError> {
        (**self).write(linear, buf)
    }
    fn is_physical(&self) -> bool {
        (**self).is_physical()
    }
    fn check_buffer(&self, linear: u64, bytes: u64) -> Result<(), MemoryError> {
        (**self).check_buffer(linear, bytes)
    }
}

/// Guest memory held in a vector starting at linear address 0. Used by tests, and by host tools
/// that want to run the INT 13h semantics against an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMemory {
    pub bytes: Vec<u8>,
}

impl VecMemory {
    pub fn zeroed(bytes: usize) -> Self {
        VecMemory { bytes: alloc::vec![0; bytes] }
    }

    fn range(&self, linear: u64, len: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let err = MemoryError { linear, bytes: len };
        let start = usize::try_from(linear).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for VecMemory {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(linear, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(linear, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
}

pub(crate) fn read_u8(mem: &mut dyn GuestMemory, linear: u64) -> Result<u8, MemoryError> {
    let mut b = [0u8; 1];
    mem.read(linear, &mut b)?;
    Ok(b[0])
}
pub(crate) fn read_u16(mem: &mut dyn GuestMemory, linear: u64) -> Result<u16, MemoryError> {
    let mut b = [0u8; 2];
    mem.read(linear, &mut b)?;
    Ok(u16::from_le_bytes(b))
}
pub(crate) fn write_u8(mem: &mut dyn GuestMemory, linear: u64, v: u8) -> Result<(), MemoryError> {
    mem.write(linear, &[v])
}
pub(crate) fn write_u16(mem: &mut dyn GuestMemory, linear: u64, v: u16) -> Result<(), MemoryError> {
    mem.write(linear, &v.to_le_bytes())
}

/// BIOS data area fields (segment 0040h) that an INT 13h hook reads or keeps up to date.
/// Accessed through [`GuestMemory`] so the engine and the tests share one code path.
pub mod bda {
    use super::*;

    /// Equipment word: bit 0 = floppy drives present, bits 7:6 = floppy count - 1.
    pub const EQUIPMENT_WORD: u64 = 0x410;
    /// Conventional memory in KiB (INT 12h).
    pub const BASE_MEMORY_KIB: u64 = 0x413;
    /// Floppy last-status byte.
    pub const FLOPPY_LAST_STATUS: u64 = 0x441;
    /// Fixed-disk last-status byte (SeaBIOS also uses it for CDs).
    pub const DISK_LAST_STATUS: u64 = 0x474;
    /// Number of fixed disks.
    pub const HARD_DISK_COUNT: u64 = 0x475;

    pub fn hard_disk_count(mem: &mut dyn GuestMemory) -> u8 {
        read_u8(mem, HARD_DISK_COUNT).unwrap_or(0)
    }
    pub fn set_hard_disk_count(mem: &mut dyn GuestMemory, count: u8) {
        let _ = write_u8(mem, HARD_DISK_COUNT, count);
    }

    /// Floppy drives the equipment word announces (0-4).
    pub fn floppy_count(mem: &mut dyn GuestMemory) -> u8 {
        let word = read_u16(mem, EQUIPMENT_WORD).unwrap_or(0);
        floppy_count_of(word)
    }
    pub fn floppy_count_of(equipment_word: u16) -> u8 {
        if equipment_word & 1 == 0 {
            0
        } else {
            ((equipment_word >> 6) & 3) as u8 + 1
        }
    }
    /// Rewrites bits 0 and 7:6 for `count` floppies (clamped to 4), keeping the other bits.
    pub fn set_floppy_count(mem: &mut dyn GuestMemory, count: u8) {
        let word = read_u16(mem, EQUIPMENT_WORD).unwrap_or(0);
        let _ = write_u16(mem, EQUIPMENT_WORD, with_floppy_count(word, count));
    }
    pub fn with_floppy_count(equipment_word: u16, count: u8) -> u16 {
        let cleared = equipment_word & !0x00C1;
        match count.min(4) {
            0 => cleared,
            n => cleared | 1 | (((n - 1) as u16) << 6),
        }
    }

    pub fn last_status(mem: &mut dyn GuestMemory, floppy: bool) -> u8 {
        read_u8(mem, if floppy { FLOPPY_LAST_STATUS } else { DISK_LAST_STATUS }).unwrap_or(0)
    }
    pub fn set_last_status(mem: &mut dyn GuestMemory, floppy: bool, status: u8) {
        let _ = write_u8(mem, if floppy { FLOPPY_LAST_STATUS } else { DISK_LAST_STATUS }, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_refuses_out_of_range() {
        let mut m = VecMemory::zeroed(16);
        assert!(m.write(14, &[1, 2]).is_ok());
        assert!(m.write(15, &[1, 2]).is_err());
        assert!(m.read(u64::MAX, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn guest_ranges_stay_out_of_vboot_memory_and_below_the_limit() {
        let vboot = [(0x9_F000, 0x1000), (0x7F0_0000, 0x10_0000)];
        let ok = |linear: u64, bytes: u64| check_guest_range(linear, bytes, 1 << 32, &vboot).is_ok();
        assert!(ok(0x7C00, 512));
        assert!(ok(0x9_EE00, 0x200), "ends right where the stub starts");
        assert!(!ok(0x9_EE00, 0x201));
        assert!(!ok(0x9_FFFF, 1));
        assert!(ok(0xA_0000, 0x1000), "starts right after the stub");
        assert!(!ok(0x7E0_0000, 0x20_0000), "covers the engine");
        assert!(!ok(0x7F8_0000, 16), "inside the engine");
        assert!(ok(0x7C00, 0) && ok(0x7F8_0000, 0), "an empty buffer touches nothing");
        assert!(ok(0xFFFF_F000, 0x1000) && !ok(0xFFFF_F000, 0x1001), "the engine reaches 4 GiB, no more");
        assert_eq!(
            check_guest_range(u64::MAX - 0xFF, 0x200, u64::MAX, &[]),
            Err(MemoryError { linear: u64::MAX - 0xFF, bytes: 0x200 }),
            "a range past 2^64 does not wrap"
        );
    }

    #[test]
    fn equipment_word_floppy_bits() {
        assert_eq!(bda::floppy_count_of(0x0000), 0);
        assert_eq!(bda::floppy_count_of(0x0001), 1);
        assert_eq!(bda::floppy_count_of(0x0041), 2);
        assert_eq!(bda::with_floppy_count(0xFF3E, 1), 0xFF3F);
        assert_eq!(bda::with_floppy_count(0x0041 | 0x0200, 0), 0x0200);
        assert_eq!(bda::with_floppy_count(0, 9), 0x00C1);
    }
}
