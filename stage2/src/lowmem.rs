//! The first MiB of memory: the interrupt vector table, the BIOS data area, the text screen,
//! stage2's scratch buffers and the resident stub. No Rust object of stage2 or of the engine lives
//! there (stage2's Rust code, data, stack and heap start at 1 MiB, linker.ld; the engine runs at
//! the top of RAM), so the functions here copy to and from it, or hand out volatile pointers into
//! it, without touching memory that a Rust reference covers. Each checks its range: an access past
//! 1 MiB is a bug and panics. Both firmware programs run with flat segments, so a linear address
//! is a pointer. Shared by stage2 and the engine (which includes this file by path).

use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use vboot::stub::StubHeader;
use volatile::VolatilePtr;

/// The end of the first MiB.
const END: u64 = 0x10_0000;

/// `bytes` bytes at `linear` lie inside the first MiB, and `linear` is a multiple of `align`.
fn check(linear: u32, bytes: usize, align: usize) {
    assert!(linear as u64 + bytes as u64 <= END, "low-memory access at {:#x}+{:#x} past 1 MiB", linear, bytes);
    assert!(linear as usize % align == 0, "low-memory access at {:#x} not aligned to {}", linear, align);
}

/// A pointer to `bytes` bytes at `linear`, after [`check`] (address 0, the first interrupt vector,
/// is a valid place here).
fn checked<T>(linear: u32, bytes: usize) -> *mut T {
    check(linear, bytes, align_of::<T>());
    linear as usize as *mut T
}

/// Copy bytes out of low memory.
pub fn read(linear: u32, out: &mut [u8]) {
    let from = checked::<u8>(linear, out.len());
    // SAFETY: inside the first MiB (checked), which is always mapped and holds no Rust object, so
    // `out`, a Rust buffer, does not overlap it.
    unsafe { core::ptr::copy_nonoverlapping(from, out.as_mut_ptr(), out.len()) }
}

/// Copy bytes into low memory.
pub fn write(linear: u32, data: &[u8]) {
    let to = checked::<u8>(linear, data.len());
    // SAFETY: as in `read`: no reference covers the bytes overwritten; what they were is what the
    // caller means to replace (a vector, a BDA field, a scratch buffer, the stub).
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), to, data.len()) }
}

/// Set `bytes` bytes at `linear` to `value`.
pub fn fill(linear: u32, value: u8, bytes: usize) {
    let to = checked::<u8>(linear, bytes);
    // SAFETY: as in `write`.
    unsafe { core::ptr::write_bytes(to, value, bytes) }
}

/// One byte, read as such (a BIOS data area field the BIOS may change between two reads).
pub fn read_u8(linear: u32) -> u8 {
    let at = checked::<u8>(linear, 1);
    // SAFETY: inside the first MiB (checked), always mapped, no Rust object there.
    unsafe { at.read_volatile() }
}

/// One byte, written as such.
pub fn write_u8(linear: u32, v: u8) {
    let at = checked::<u8>(linear, 1);
    // SAFETY: as in `write`.
    unsafe { at.write_volatile(v) }
}

/// A little-endian u16 (at any address: BIOS data area fields are not all aligned).
pub fn read_u16(linear: u32) -> u16 {
    u16::from_le_bytes([read_u8(linear), read_u8(linear + 1)])
}

/// A little-endian u32 (an interrupt vector, the BIOS tick count).
pub fn read_u32(linear: u32) -> u32 {
    u32::from_le_bytes([read_u8(linear), read_u8(linear + 1), read_u8(linear + 2), read_u8(linear + 3)])
}

pub fn write_u16(linear: u32, v: u16) {
    write(linear, &v.to_le_bytes());
}

pub fn write_u32(linear: u32, v: u32) {
    write(linear, &v.to_le_bytes());
}

/// `count` 16-bit cells at `linear` (a text screen's character and attribute pairs), for volatile
/// reads and writes.
pub fn cells(linear: u32, count: usize) -> VolatilePtr<'static, [u16]> {
    let bytes = count.checked_mul(2).expect("text cells past 1 MiB");
    let first = NonNull::new(checked::<u16>(linear, bytes)).expect("text cells at address 0");
    // SAFETY: the cells lie inside the first MiB and are aligned (checked), always mapped, and no
    // Rust object lives there; a VolatilePtr only ever reads and writes them as whole u16 values,
    // for which every bit pattern is valid.
    unsafe { VolatilePtr::new(NonNull::slice_from_raw_parts(first, count)) }
}

/// The header of a resident stub at `linear` (vboot::stub::StubHeader), for volatile reads and
/// writes of its fields: stage2 fills it, the stub's real-mode code and the engine share it.
pub fn stub_header(linear: u32) -> VolatilePtr<'static, StubHeader> {
    let header = NonNull::new(checked::<StubHeader>(linear, size_of::<StubHeader>())).expect("a stub at address 0");
    // SAFETY: inside the first MiB and aligned (checked), always mapped, no Rust object there; the
    // header is integers and arrays of integers only, so any bytes found there are a valid value.
    unsafe { VolatilePtr::new(header) }
}
