//! The real-mode stub as the engine sees it: a block of low memory at a known linear address,
//! with the fields of vboot::stub::StubHeader (src/stub.rs), and the way back to the original BIOS.

use vboot::realmode::Regs;

// Field offsets of the stub's header, defined once in vboot::stub (src/stub.rs).
pub use vboot::stub::offset::{
    BIOS_TARGET as S_BIOS_TARGET, BOUNCE_OFF as S_BOUNCE_OFF, BREGS as S_BREGS, DAP as S_DAP,
    DISKETTE_TABLE as S_DISKETTE_TABLE, FRAME as S_FRAME, OLD13 as S_OLD13, OLD15 as S_OLD15, VECTOR as S_VECTOR,
};
pub const BOUNCE_BYTES: u32 = 1024;

extern "C" {
    fn engine_bios_call(stub_linear: u32);
}

#[derive(Clone, Copy)]
pub struct Stub {
    pub linear: u32,
}

/// Which original vector to call.
#[derive(Clone, Copy)]
pub enum Vector {
    Int13,
    Int15,
}

impl Stub {
    pub fn ptr<T>(&self, offset: u32) -> *mut T {
        (self.linear + offset) as *mut T
    }

    /// Where the floppy parameter table is, as the guest addresses it.
    pub fn diskette_table(&self) -> vboot::int13::FarPtr {
        vboot::int13::FarPtr { segment: (self.linear >> 4) as u16, offset: S_DISKETTE_TABLE as u16 }
    }

    /// Writes the diskette parameter table into the stub and points INT 1Eh at it.
    pub fn install_diskette_table(&self, table: &[u8; 11]) {
        let at = self.diskette_table();
        unsafe {
            core::ptr::copy_nonoverlapping(table.as_ptr(), self.ptr::<u8>(S_DISKETTE_TABLE), table.len());
            core::ptr::write_volatile((0x1E * 4) as *mut u32, ((at.segment as u32) << 16) | at.offset as u32);
        }
    }

    pub fn read_u16(&self, offset: u32) -> u16 {
        unsafe { core::ptr::read_volatile(self.ptr::<u16>(offset)) }
    }

    pub fn frame(&self) -> Regs {
        unsafe { core::ptr::read_volatile(self.ptr::<Regs>(S_FRAME)) }
    }

    pub fn set_frame(&self, regs: &Regs) {
        unsafe { core::ptr::write_volatile(self.ptr::<Regs>(S_FRAME), *regs) }
    }

    pub fn vector(&self) -> u16 {
        self.read_u16(S_VECTOR)
    }

    pub fn bounce_linear(&self) -> u32 {
        self.linear + self.read_u16(S_BOUNCE_OFF) as u32
    }

    pub fn dap_linear(&self) -> u32 {
        self.linear + S_DAP
    }

    /// Run the original INT 13h or INT 15h in real mode with `regs`; results come back in them.
    pub fn call_bios(&self, vector: Vector, regs: &mut Regs) {
        let from = match vector {
            Vector::Int13 => S_OLD13,
            Vector::Int15 => S_OLD15,
        };
        unsafe {
            let target: u32 = core::ptr::read_volatile(self.ptr::<u32>(from));
            core::ptr::write_volatile(self.ptr::<u32>(S_BIOS_TARGET), target);
            core::ptr::write_volatile(self.ptr::<Regs>(S_BREGS), *regs);
            engine_bios_call(self.linear);
            // The stub's real-mode part loaded the guest's IDTR.
            crate::exception::load();
            *regs = core::ptr::read_volatile(self.ptr::<Regs>(S_BREGS));
        }
    }
}
