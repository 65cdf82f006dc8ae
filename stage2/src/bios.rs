//! The one boundary to the BIOS: `call(vector, &mut regs)` runs `int vector` in real mode.
//!
//! Buffers handed to the BIOS live in fixed low memory (below), never cross a 64 KiB boundary
//! and are addressed as segment:offset.

/// Disk address packet for INT 13h AH=42h/43h.
pub const DAP_ADDR: u32 = 0x0600;
/// One E820 entry (24 bytes) and other small result buffers.
pub const SMALL_BUF_ADDR: u32 = 0x0800;
/// Bounce buffer for sector transfers: 0x1000..0x7000, 48 sectors.
pub const BOUNCE_ADDR: u32 = 0x1000;
pub const BOUNCE_BYTES: usize = 0x6000;

/// Registers in and out of a BIOS call. Layout shared with `bios_call` in entry.s.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct BiosRegs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
    pub ebp: u32,
    pub ds: u16,
    pub es: u16,
    pub eflags: u32,
}
static_assertions::const_assert_eq!(core::mem::size_of::<BiosRegs>(), 36);

pub const FLAG_CARRY: u32 = 1;
pub const FLAG_ZERO: u32 = 1 << 6;

impl BiosRegs {
    pub fn ah(&self) -> u8 {
        (self.eax >> 8) as u8
    }
    pub fn carry(&self) -> bool {
        self.eflags & FLAG_CARRY != 0
    }
}

extern "C" {
    fn bios_call(vector: u32, regs: *mut BiosRegs);
    fn real_mode_jump(cs_ip: u32, dl: u32, si: u32) -> !;
    #[link_name = "stage1_used_lba"]
    static STAGE1_USED_LBA: u8;
}

/// Whether stage1 loaded us with INT 13h extensions (else CHS reads).
pub fn stage1_used_lba() -> bool {
    unsafe { core::ptr::read_volatile(&raw const STAGE1_USED_LBA) != 0 }
}

/// Run `int vector` in real mode with `regs`; they come back with the BIOS's results.
pub fn call(vector: u8, regs: &mut BiosRegs) {
    // SAFETY: the thunk saves and restores all protected-mode state; buffers the BIOS writes are
    // the fixed low-memory areas above, which nothing else in stage2 uses.
    unsafe { bios_call(vector as u32, regs) }
}

/// Leave for real mode and jump to `segment:offset` with DL = `drive`. Does not return.
pub fn jump_real_mode(segment: u16, offset: u16, drive: u8) -> ! {
    jump_real_mode_with_si(segment, offset, drive, 0)
}

/// [`jump_real_mode`] with DS:SI = 0000:`si`: how MBR code hands a partition's boot sector its
/// partition entry.
pub fn jump_real_mode_with_si(segment: u16, offset: u16, drive: u8, si: u16) -> ! {
    // SAFETY: real_mode_jump never returns: it leaves protected mode for good, and stage2's
    // state is abandoned to the code at segment:offset, which the caller put in low memory.
    unsafe { real_mode_jump(((segment as u32) << 16) | offset as u32, drive as u32, si as u32) }
}

/// Segment:offset for a linear address below 1 MiB.
pub fn seg_off(linear: u32) -> (u16, u16) {
    ((linear >> 4) as u16, (linear & 0xF) as u16)
}

/// The first MiB: the only memory these helpers reach. Before the guest starts it is stage2's
/// (the IVT, the BDA and the BIOS's areas it reads or writes on purpose, its scratch buffers and
/// its low part); above it lie stage2's own code and heap, which no caller may touch this way.
const LOW_MEMORY_END: u64 = 0x10_0000;

fn check_low(linear: u32, bytes: usize) {
    assert!(linear as u64 + bytes as u64 <= LOW_MEMORY_END, "low-memory access at {:#x}+{:#x} past 1 MiB", linear, bytes);
}

/// Copy bytes out of low memory (below 1 MiB; anything else is a bug and panics).
pub fn read_low(linear: u32, out: &mut [u8]) {
    check_low(linear, out.len());
    // SAFETY: inside the first MiB (checked above), identity-mapped in our flat segments and
    // always present; `out` is a distinct Rust buffer.
    unsafe { core::ptr::copy_nonoverlapping(linear as *const u8, out.as_mut_ptr(), out.len()) }
}

/// Copy bytes into low memory (below 1 MiB; anything else is a bug and panics).
pub fn write_low(linear: u32, data: &[u8]) {
    check_low(linear, data.len());
    // SAFETY: inside the first MiB (checked above): no Rust object of stage2's high part lives
    // there, so no reference is invalidated; what is overwritten is what the caller means to.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), linear as *mut u8, data.len()) }
}

/// Wait `micros` microseconds (INT 15h AH=86h); interrupts run meanwhile, so the BIOS clock ticks.
pub fn sleep_micros(micros: u32) {
    let mut r = BiosRegs { eax: 0x8600, ecx: micros >> 16, edx: micros & 0xFFFF, ..Default::default() };
    call(0x15, &mut r);
}

/// BIOS tick counter (18.2 Hz) at 0040:006C.
pub fn ticks() -> u32 {
    unsafe { core::ptr::read_volatile(0x46C as *const u32) }
}

/// Stop the processor for good (interrupts off).
pub fn halt() -> ! {
    loop {
        unsafe { core::arch::asm!("cli; hlt") };
    }
}

/// Ask the keyboard controller to reset the machine.
pub fn reboot() -> ! {
    unsafe {
        x86::io::outb(0x64, 0xFE);
    }
    loop {
        unsafe { core::arch::asm!("cli; hlt") };
    }
}
