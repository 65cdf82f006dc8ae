//! The resident stub's header: the first 304 bytes of the real-mode stub that stays at the top of
//! conventional memory while a guest runs (docs/architecture.md, step 6). stage2 fills it when it
//! installs the stub (stage2/src/resident.rs), the stub's real-mode code uses it
//! (stage2/src/stub.s), and the engine reads and writes it on every call (stage2/engine/src/stub.rs,
//! stage2/engine/src/entry.s). It is defined here once: the Rust sides use the offsets below and
//! the assembly gets them as `const` operands, so no offset is typed twice.

use crate::realmode::Regs;
use core::mem::offset_of;
use static_assertions::const_assert_eq;

/// A 32-bit far pointer for `ljmp *mem` in protected mode: offset, selector, padding.
#[repr(C)]
pub struct FarPointer32 {
    pub offset: u32,
    pub selector: u16,
    pub padding: u16,
}

#[repr(C)]
pub struct StubHeader {
    /// "VBSTUB01".
    pub magic: [u8; 8],
    /// Offsets of the INT 13h and INT 15h entry points from the stub's start.
    pub int13_entry: u16,
    pub int15_entry: u16,
    /// The stub's size in memory (its private stack included), and where its bounce buffer starts.
    pub total_bytes: u16,
    pub bounce_offset: u16,
    /// The vectors the stub chains to (segment:offset, as in the interrupt table).
    pub old_int13: u32,
    pub old_int15: u32,
    /// The engine's protected-mode entry for a call, and for the return from a BIOS call.
    pub pm_entry: FarPointer32,
    pub pm_resume: FarPointer32,
    /// The stub's 16-bit protected-mode code on the way back to real mode (after a call, and
    /// for a BIOS call).
    pub back16: FarPointer32,
    pub bios16: FarPointer32,
    /// Real-mode far pointers (offset, then segment) to the same two paths.
    pub rm_back: u32,
    pub rm_bios: u32,
    /// The GDT's descriptor (limit, base) and the GDT itself: null, code32, data32, and code16 and
    /// data16 based at the stub.
    /// (limit u16, base u32 unaligned, 2 bytes of padding: the operand of `lgdt`.)
    pub gdt_descriptor: [u8; 8],
    pub gdt: [u64; 5],
    /// The engine's stack pointer, and the stub's real-mode one while the engine runs.
    pub engine_esp: u32,
    pub rm_sp: u16,
    /// 1 while a call is being served: a call that comes in meanwhile chains to the BIOS.
    pub busy: u8,
    pub busy_padding: u8,
    pub guest_ss: u16,
    pub guest_sp: u16,
    /// The caller's IDTR (limit, base), put back before returning to real mode.
    pub saved_idt: [u8; 8],
    /// Where a BIOS call from the engine goes (segment:offset).
    pub bios_target: u32,
    /// The caller's registers, in and out.
    pub frame: Regs,
    /// 13h or 15h: which of the stub's entries was called.
    pub vector: u16,
    pub guest_fs: u16,
    /// The registers of a BIOS call the engine makes.
    pub bios_regs: Regs,
    pub engine_saved_esp: u32,
    pub guest_gs: u16,
    /// The high half of the caller's ESP.
    pub guest_esp_hi: u16,
    /// Calls served, for the tests and the hand-off table's readers.
    pub calls: u32,
    /// The disk address packet of the engine's host-disk calls.
    pub dap: [u8; 16],
    /// The diskette parameter table INT 1Eh and floppy AH=08h point at.
    pub diskette_table: [u8; 16],
    /// The run the stub serves by itself (docs/int13.md, "The real-mode fast path"); the engine
    /// clears it when a call enters and publishes a new one when it leaves.
    pub fast_run: FastRun,
    /// Counters for the benchmarks (docs/benchmarks.md, "Where a guest call's time goes"):
    /// calls the fast path served, BIOS calls the engine made through the stub, and bytes the
    /// engine copied through the bounce buffer. They wrap.
    pub fast_calls: u32,
    pub engine_bios_calls: u32,
    pub bounce_copied_bytes: u32,
    pub counters_padding: [u8; 12],
}

/// A run of an emulated hard disk that lies, sector for sector, on consecutive sectors of the
/// host disk, so that an AH=42h (and, if `writable`, AH=43h) call inside it needs only the
/// original INT 13h with the LBA moved: the stub makes that call itself, in real mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastRun {
    /// [`FAST_RUN_VALID`], [`FAST_RUN_WRITABLE`]; 0 means no run.
    pub flags: u8,
    /// The drive number the guest calls, and the BIOS's own number for the host disk.
    pub guest_drive: u8,
    pub host_drive: u8,
    pub padding: u8,
    /// Guest sectors in the run.
    pub sectors: u32,
    pub first_lba: u64,
    /// Where `first_lba` lies on the host disk.
    pub host_lba: u64,
}
const_assert_eq!(core::mem::size_of::<FastRun>(), 24);

pub const FAST_RUN_VALID: u8 = 1;
pub const FAST_RUN_WRITABLE: u8 = 2;

/// The stub's bounce buffer for the engine's host transfers that cannot go straight to a guest
/// buffer below 1 MiB (image tables, a buffer above 1 MiB). Three sectors: with the header, the
/// code (the fast path included) and its 1 KiB stack, the stub fits the 4 KiB of conventional
/// memory it may take (docs/benchmarks.md, yardsticks).
pub const BOUNCE_BYTES: u32 = 1536;
const_assert_eq!(BOUNCE_BYTES % 512, 0);

/// Where the stub's code starts: right after the header.
pub const CODE_OFFSET: u32 = 0x130;
const_assert_eq!(core::mem::size_of::<StubHeader>() as u32, CODE_OFFSET);

macro_rules! offsets {
    ($($name:ident = $field:ident;)*) => {
        /// Byte offsets of the header's fields, for the Rust sides and the assembly.
        pub mod offset {
            use super::*;
            $(pub const $name: u32 = offset_of!(StubHeader, $field) as u32;)*
        }
    };
}

offsets! {
    INT13_OFF = int13_entry;
    INT15_OFF = int15_entry;
    TOTAL_BYTES = total_bytes;
    BOUNCE_OFF = bounce_offset;
    OLD13 = old_int13;
    OLD15 = old_int15;
    PM_ENTRY = pm_entry;
    PM_RESUME = pm_resume;
    BACK16 = back16;
    BIOS16 = bios16;
    RM_BACK = rm_back;
    RM_BIOS = rm_bios;
    GDT_DESC = gdt_descriptor;
    GDT = gdt;
    ENGINE_ESP = engine_esp;
    RM_SP = rm_sp;
    BUSY = busy;
    GUEST_SS = guest_ss;
    GUEST_SP = guest_sp;
    SAVED_IDT = saved_idt;
    BIOS_TARGET = bios_target;
    FRAME = frame;
    VECTOR = vector;
    GUEST_FS = guest_fs;
    BREGS = bios_regs;
    ENGINE_SAVED_ESP = engine_saved_esp;
    GUEST_GS = guest_gs;
    GUEST_ESP_HI = guest_esp_hi;
    CALLS = calls;
    DAP = dap;
    DISKETTE_TABLE = diskette_table;
    FAST_RUN = fast_run;
    FAST_CALLS = fast_calls;
    ENGINE_BIOS_CALLS = engine_bios_calls;
    BOUNCE_COPIED_BYTES = bounce_copied_bytes;
}

/// Byte offsets inside [`FastRun`], for the stub's assembly.
pub mod fast_run_offset {
    use super::FastRun;
    use core::mem::offset_of;
    pub const FLAGS: u32 = offset_of!(FastRun, flags) as u32;
    pub const GUEST_DRIVE: u32 = offset_of!(FastRun, guest_drive) as u32;
    pub const HOST_DRIVE: u32 = offset_of!(FastRun, host_drive) as u32;
    pub const SECTORS: u32 = offset_of!(FastRun, sectors) as u32;
    pub const FIRST_LBA: u32 = offset_of!(FastRun, first_lba) as u32;
    pub const HOST_LBA: u32 = offset_of!(FastRun, host_lba) as u32;
}

/// Byte offsets of [`Regs`] fields inside `frame` and `bios_regs` (defined with the type).
pub use crate::realmode::regs_offset;

// The layout as the stub's data directives lay it out (stage2/src/stub.s emits the header with
// `.fill` between these points): a change here must keep them in order.
const_assert_eq!(offset::OLD13, 0x10);
const_assert_eq!(offset::PM_ENTRY, 0x18);
const_assert_eq!(offset::BACK16, 0x28);
const_assert_eq!(offset::GDT_DESC, 0x40);
const_assert_eq!(offset::GDT, 0x48);
const_assert_eq!(offset::ENGINE_ESP, 0x70);
const_assert_eq!(offset::FRAME, 0x88);
const_assert_eq!(offset::BREGS, 0xB0);
const_assert_eq!(offset::DAP, 0xE0);
const_assert_eq!(offset::DISKETTE_TABLE, 0xF0);
const_assert_eq!(offset::FAST_RUN, 0x100);
const_assert_eq!(offset::FAST_CALLS, 0x118);

/// `engine_init(plan, plan_bytes, heap, heap_bytes, stub_linear, message, message_bytes)`:
/// 0, or the length of the error message it wrote. The caller guarantees that the plan and the
/// message buffer are valid for the call, that the heap is the engine's alone from then on, and
/// that `stub_linear` is the stub it installed.
pub type EngineInit = unsafe extern "C" fn(*const u8, u32, *mut u8, u32, u32, *mut u8, u32) -> u32;

/// The first bytes of the relocated engine (stage2/engine/src/main.rs `engine_header`), which
/// stage2 reads after copying it (stage2/src/resident.rs). The function pointers are relocated
/// with the rest of the image, so they hold the addresses where the engine now runs.
#[repr(C)]
pub struct EngineHeader {
    pub magic: [u8; 8],
    pub version: u32,
    pub init: EngineInit,
    /// The stub's protected-mode entry for a call, and for the return from a BIOS call.
    pub pm_entry: unsafe extern "C" fn(),
    pub pm_resume: unsafe extern "C" fn(),
}

pub const ENGINE_MAGIC: [u8; 8] = *b"VBENGINE";
pub const ENGINE_HEADER_VERSION: u32 = 1;
// On the firmware's 32-bit target: magic, version, then three 4-byte code addresses.
#[cfg(target_pointer_width = "32")]
const_assert_eq!(core::mem::size_of::<EngineHeader>(), 24);
