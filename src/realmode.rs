//! Real mode as the firmware meets it: the register image of a software interrupt, and
//! segment:offset addresses. One type serves every thunk between protected and real mode: stage2's
//! BIOS calls (`bios_call`, stage2/src/entry.s), the resident stub's guest frame and the engine's
//! BIOS calls (stage2/src/stub.s, [`crate::stub`]). The assembly gets the field offsets below as
//! `const` operands, so no offset is typed twice.

use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;

/// Carry flag: bit 0 of FLAGS. INT 13h (and most BIOS services) report failure through it.
pub const FLAG_CF: u16 = 0x0001;
/// Zero flag: bit 6 of FLAGS (INT 16h AH=01h: set when no key is waiting).
pub const FLAG_ZF: u16 = 0x0040;

/// Real-mode `seg:off` to a linear address. No 64 KiB wrap: a buffer that runs past the end of
/// its segment continues linearly (SeaBIOS does the same).
pub const fn linear(segment: u16, offset: u16) -> u64 {
    segment as u64 * 16 + offset as u64
}

/// The registers in and out of one real-mode interrupt. For a guest's INT 13h the engine fills
/// it from the real-mode stack frame, [`crate::int13::handle`] changes only the registers the
/// function defines as outputs, and the engine writes it back (patching CF into the caller's
/// saved FLAGS so IF/TF/DF survive). For a BIOS call of stage2 or the engine, the thunk loads
/// the registers, runs `int`, and stores them with the BIOS's FLAGS (16 bits: CF and ZF are what
/// callers read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Regs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
    pub ebp: u32,
    pub ds: u16,
    pub es: u16,
    pub flags: u16,
}

/// Byte offsets of [`Regs`] fields, for the assembly that loads and stores them (stage2's
/// entry.s and stub.s, through `const` operands).
pub mod regs_offset {
    use super::*;
    pub const EAX: u32 = offset_of!(Regs, eax) as u32;
    pub const EBX: u32 = offset_of!(Regs, ebx) as u32;
    pub const ECX: u32 = offset_of!(Regs, ecx) as u32;
    pub const EDX: u32 = offset_of!(Regs, edx) as u32;
    pub const ESI: u32 = offset_of!(Regs, esi) as u32;
    pub const EDI: u32 = offset_of!(Regs, edi) as u32;
    pub const EBP: u32 = offset_of!(Regs, ebp) as u32;
    pub const DS: u32 = offset_of!(Regs, ds) as u32;
    pub const ES: u32 = offset_of!(Regs, es) as u32;
    pub const FLAGS: u32 = offset_of!(Regs, flags) as u32;
    /// The whole block with its tail padding, a multiple of 4 (the thunks copy it by dwords).
    pub const SIZE: u32 = size_of::<Regs>() as u32;
}

// The layout the assembly relies on: seven dwords, two selectors, 16-bit FLAGS, padded to 36.
const_assert_eq!(regs_offset::EAX, 0);
const_assert_eq!(regs_offset::EBP, 24);
const_assert_eq!(regs_offset::DS, 28);
const_assert_eq!(regs_offset::ES, 30);
const_assert_eq!(regs_offset::FLAGS, 32);
const_assert_eq!(regs_offset::SIZE, 36);
const_assert_eq!(regs_offset::SIZE % 4, 0);

const fn low8(r: u32) -> u8 {
    r as u8
}
const fn high8(r: u32) -> u8 {
    (r >> 8) as u8
}
const fn with_low8(r: u32, v: u8) -> u32 {
    (r & !0xFF) | v as u32
}
const fn with_high8(r: u32, v: u8) -> u32 {
    (r & !0xFF00) | ((v as u32) << 8)
}
const fn with_low16(r: u32, v: u16) -> u32 {
    (r & !0xFFFF) | v as u32
}

macro_rules! reg16 {
    ($full:ident, $x:ident, $set_x:ident) => {
        pub fn $x(&self) -> u16 {
            self.$full as u16
        }
        /// Sets the 16-bit register, leaving the high half of the 32-bit register alone.
        pub fn $set_x(&mut self, v: u16) {
            self.$full = with_low16(self.$full, v);
        }
    };
}

macro_rules! reg8 {
    ($full:ident, $h:ident, $set_h:ident, $l:ident, $set_l:ident) => {
        pub fn $h(&self) -> u8 {
            high8(self.$full)
        }
        pub fn $set_h(&mut self, v: u8) {
            self.$full = with_high8(self.$full, v);
        }
        pub fn $l(&self) -> u8 {
            low8(self.$full)
        }
        pub fn $set_l(&mut self, v: u8) {
            self.$full = with_low8(self.$full, v);
        }
    };
}

impl Regs {
    reg16!(eax, ax, set_ax);
    reg16!(ebx, bx, set_bx);
    reg16!(ecx, cx, set_cx);
    reg16!(edx, dx, set_dx);
    reg16!(esi, si, set_si);
    reg16!(edi, di, set_di);
    reg8!(eax, ah, set_ah, al, set_al);
    reg8!(ebx, bh, set_bh, bl, set_bl);
    reg8!(ecx, ch, set_ch, cl, set_cl);
    reg8!(edx, dh, set_dh, dl, set_dl);

    /// The carry flag: the call failed, for the BIOS services that say so through it.
    pub fn cf(&self) -> bool {
        self.flags & FLAG_CF != 0
    }
    pub fn set_cf(&mut self, carry: bool) {
        if carry {
            self.flags |= FLAG_CF;
        } else {
            self.flags &= !FLAG_CF;
        }
    }

    /// The zero flag.
    pub fn zf(&self) -> bool {
        self.flags & FLAG_ZF != 0
    }

    /// Linear address of DS:SI (real-mode, 16-bit offset).
    pub fn ds_si_linear(&self) -> u64 {
        linear(self.ds, self.si())
    }
    /// Linear address of ES:BX.
    pub fn es_bx_linear(&self) -> u64 {
        linear(self.es, self.bx())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_word_setters_leave_the_rest_alone() {
        let mut r = Regs { eax: 0x1234_5678, ecx: 0xAABB_CCDD, ..Regs::default() };
        r.set_ah(0x01);
        assert_eq!(r.eax, 0x1234_0178);
        r.set_al(0xFF);
        assert_eq!(r.eax, 0x1234_01FF);
        r.set_cx(0x0102);
        assert_eq!(r.ecx, 0xAABB_0102);
        assert_eq!((r.ch(), r.cl()), (0x01, 0x02));
        r.flags = 0x0202;
        r.set_cf(true);
        assert_eq!(r.flags, 0x0203);
        assert!(r.cf());
        r.set_cf(false);
        assert_eq!(r.flags, 0x0202);
        assert!(!r.zf());
        r.flags |= FLAG_ZF;
        assert!(r.zf());
    }

    #[test]
    fn linear_does_not_wrap_at_64k() {
        assert_eq!(linear(0x07C0, 0), 0x7C00);
        assert_eq!(linear(0xFFFF, 0xFFFF), 0x10FFEF);
    }
}
