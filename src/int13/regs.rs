//! The caller's registers as the resident stub saved them.

/// Carry flag: bit 0 of FLAGS. INT 13h reports failure through it.
pub const FLAG_CF: u16 = 0x0001;

/// The register image of one INT 13h call. The engine fills it from the real-mode stack frame,
/// [`super::handle`] changes only the registers the function defines as outputs, and the engine
/// writes it back (patching CF into the caller's saved FLAGS so IF/TF/DF survive).
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

static_assertions::const_assert_eq!(core::mem::size_of::<Regs>(), 36);

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

    /// Linear address of DS:SI (real-mode, 16-bit offset).
    pub fn ds_si_linear(&self) -> u64 {
        super::memory::linear(self.ds, self.si())
    }
    /// Linear address of ES:BX.
    pub fn es_bx_linear(&self) -> u64 {
        super::memory::linear(self.es, self.bx())
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
    }
}
