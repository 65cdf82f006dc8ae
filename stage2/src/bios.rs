//! The one boundary to the BIOS: `call(vector, &mut regs)` runs `int vector` in real mode, through
//! the thunk in entry.s; `jump_real_mode` leaves for real mode for good. The only `unsafe` of
//! stage2 that leaves Rust for the BIOS or a guest is here.
//!
//! Buffers handed to the BIOS live in fixed low memory (below; read and written through
//! lowmem.rs), never cross a 64 KiB boundary and are addressed as segment:offset.

/// Disk address packet for INT 13h AH=42h/43h.
pub const DAP_ADDR: u32 = 0x0600;
/// One E820 entry (24 bytes) and other small result buffers.
pub const SMALL_BUF_ADDR: u32 = 0x0800;
/// Bounce buffer for sector transfers: 0x10000..0x1FE00, 127 sectors (EDD's most per call), in
/// one 64 KiB DMA page. Every BIOS call costs far more than the bytes it moves (about a
/// millisecond under TCG), so stage2's reads before boot (the FAT's cross-link pass, the engine,
/// slack growth) take as few as they can (docs/benchmarks.md, "Where the time to the guest
/// goes"). Free while stage2 runs: its low part ends below 0x10000, and what a Linux boot loader
/// put there for vboot.lkrn is used up before stage2 starts; a CD's no-emulation image is staged
/// over it only after stage2's last transfer.
pub const BOUNCE_ADDR: u32 = 0x10000;
pub const BOUNCE_BYTES: usize = 127 * 512;

/// Registers in and out of a BIOS call: real mode's one register type, whose layout `bios_call`
/// in entry.s takes from `vboot::realmode::regs_offset` (main.rs passes the offsets in).
pub use vboot::realmode::Regs;

extern "C" {
    fn bios_call(vector: u32, regs: *mut Regs);
    fn real_mode_jump(cs_ip: u32, dl: u32, si: u32) -> !;
    #[link_name = "stage1_used_lba"]
    static STAGE1_USED_LBA: u8;
    #[link_name = "stage2_preloaded"]
    static STAGE2_PRELOADED: u32;
}

/// Whether stage1 loaded us with INT 13h extensions (else CHS reads).
pub fn stage1_used_lba() -> bool {
    // SAFETY: a byte of entry.s's data, written by its real-mode code before any Rust ran.
    unsafe { core::ptr::read_volatile(&raw const STAGE1_USED_LBA) != 0 }
}

/// vboot.lkrn: the bytes a Linux boot loader left at 0x100000 (stage2's high part and the
/// engine); 0 when stage1 started stage2 (entry.s, src/lkrn.rs).
pub fn preloaded_bytes() -> u32 {
    // SAFETY: a u32 of entry.s's header, written by vboot.lkrn's real-mode setup code before
    // any Rust ran, and never again.
    unsafe { core::ptr::read_volatile(&raw const STAGE2_PRELOADED) }
}

/// The highest segment a call may pass in DS or ES: every DS:x and ES:x then lies below 1 MiB.
const MAX_SEGMENT: u16 = 0xF000;

/// Run `int vector` in real mode with `regs`; they come back with the BIOS's results. DS and ES
/// above F000h (the high memory area past 1 MiB) are a bug and panic.
pub fn call(vector: u8, regs: &mut Regs) {
    assert!(regs.ds <= MAX_SEGMENT && regs.es <= MAX_SEGMENT, "a BIOS call with a buffer past 1 MiB");
    // SAFETY: the thunk saves and restores all protected-mode state (registers, GDT, IDT, stack)
    // and touches only its own data in the low part; the buffers the BIOS writes are addressed
    // through DS or ES, so they lie below 1 MiB (checked above), where no Rust object lives.
    unsafe { bios_call(vector as u32, regs) }
}

/// Leave for real mode and jump to `segment:offset` with DL = `drive`. Does not return.
pub fn jump_real_mode(segment: u16, offset: u16, drive: u8) -> ! {
    jump_real_mode_with_si(segment, offset, drive, 0)
}

/// [`jump_real_mode`] with DS:SI = 0000:`si`: how MBR code hands a partition's boot sector its
/// partition entry.
pub fn jump_real_mode_with_si(segment: u16, offset: u16, drive: u8, si: u16) -> ! {
    // SAFETY: stage2 ends here: nothing of it runs again, so whatever the code at segment:offset
    // does to stage2's memory cannot break a Rust invariant.
    unsafe { real_mode_jump(((segment as u32) << 16) | offset as u32, drive as u32, si as u32) }
}

/// Segment:offset for a linear address below 1 MiB.
pub fn seg_off(linear: u32) -> (u16, u16) {
    ((linear >> 4) as u16, (linear & 0xF) as u16)
}

/// Wait `micros` microseconds (INT 15h AH=86h); interrupts run meanwhile, so the BIOS clock ticks.
pub fn sleep_micros(micros: u32) {
    let mut r = Regs { eax: 0x8600, ecx: micros >> 16, edx: micros & 0xFFFF, ..Default::default() };
    call(0x15, &mut r);
}

/// BIOS tick counter (18.2 Hz) at 0040:006C.
pub fn ticks() -> u32 {
    crate::lowmem::read_u32(0x46C)
}
