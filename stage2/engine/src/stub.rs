//! The real-mode stub as the engine sees it: a block of low memory at a known linear address,
//! with the fields of vboot::stub::StubHeader (src/stub.rs), read and written as volatile fields
//! (the stub's real-mode code uses them between the engine's turns), and the way back to the
//! original BIOS, through the stub's thunk.

use vboot::realmode::Regs;
use vboot::stub::{FastRun, StubHeader, FAST_RUN_VALID, FAST_RUN_WRITABLE};
use volatile::{map_field, VolatilePtr};

use crate::lowmem;

// Field offsets of the stub's header, defined once in vboot::stub (src/stub.rs).
pub use vboot::stub::offset::{DAP as S_DAP, DISKETTE_TABLE as S_DISKETTE_TABLE};
pub use vboot::stub::BOUNCE_BYTES;

extern "C" {
    fn engine_bios_call(stub_linear: u32);
}

/// The installed stub. Only made from the address stage2 or the stub itself hands the engine
/// ([`Stub::at`]), so its BIOS thunk is the real one.
#[derive(Clone, Copy)]
pub struct Stub {
    linear: u32,
}

/// Which original vector to call.
#[derive(Clone, Copy)]
pub enum Vector {
    Int13,
    Int15,
}

impl Stub {
    /// The stub at `linear`.
    ///
    /// # Safety
    /// `linear` must be where stage2 installed the stub and filled its header: the address
    /// stage2 passes to `engine_init`, and the stub to `engine_dispatch`.
    pub unsafe fn at(linear: u32) -> Stub {
        Stub { linear }
    }

    fn header(&self) -> VolatilePtr<'static, StubHeader> {
        lowmem::stub_header(self.linear)
    }

    /// Where the floppy parameter table is, as the guest addresses it.
    pub fn diskette_table(&self) -> vboot::int13::FarPtr {
        vboot::int13::FarPtr { segment: (self.linear >> 4) as u16, offset: S_DISKETTE_TABLE as u16 }
    }

    /// Writes the diskette parameter table into the stub and points INT 1Eh at it.
    pub fn install_diskette_table(&self, table: &[u8; 11]) {
        let h = self.header();
        map_field!(h.diskette_table).update(|mut t| {
            t[..table.len()].copy_from_slice(table);
            t
        });
        let at = self.diskette_table();
        lowmem::write_u32(0x1E * 4, ((at.segment as u32) << 16) | at.offset as u32);
    }

    /// The caller's registers, as the stub saved them.
    pub fn frame(&self) -> Regs {
        let h = self.header();
        map_field!(h.frame).read()
    }

    /// The registers the stub gives back to the caller.
    pub fn set_frame(&self, regs: &Regs) {
        let h = self.header();
        map_field!(h.frame).write(*regs)
    }

    /// 13h or 15h: which of the stub's entries was called.
    pub fn vector(&self) -> u16 {
        let h = self.header();
        map_field!(h.vector).read()
    }

    /// No run for the fast path: the engine is about to serve a call that may change where
    /// sectors lie (docs/int13.md, "The real-mode fast path").
    pub fn clear_fast_run(&self) {
        let h = self.header();
        map_field!(h.fast_run).write(FastRun::default());
    }

    /// The run the stub may serve by itself until the engine's next call: guest drive
    /// `guest_drive`, host disk `host_drive` (the BIOS's number).
    pub fn publish_fast_run(&self, guest_drive: u8, host_drive: u8, run: &vboot::int13::StraightRun) {
        let h = self.header();
        map_field!(h.fast_run).write(FastRun {
            flags: FAST_RUN_VALID | if run.writable { FAST_RUN_WRITABLE } else { 0 },
            guest_drive,
            host_drive,
            padding: 0,
            sectors: run.blocks.min(u32::MAX as u64) as u32,
            first_lba: run.lba,
            host_lba: run.host_lba,
        });
    }

    /// For the benchmarks: `bytes` more copied through a bounce buffer.
    pub fn count_copied(&self, bytes: usize) {
        let h = self.header();
        map_field!(h.bounce_copied_bytes).update(|n| n.wrapping_add(bytes as u32));
    }

    /// Where the stub starts: the top of the conventional memory the guest may use.
    pub fn linear(&self) -> u32 {
        self.linear
    }

    pub fn bounce_linear(&self) -> u32 {
        let h = self.header();
        self.linear + map_field!(h.bounce_offset).read() as u32
    }

    /// Puts the disk address packet of a host-disk call into the stub; its linear address.
    pub fn set_dap(&self, dap: &[u8; 16]) -> u32 {
        let h = self.header();
        map_field!(h.dap).write(*dap);
        self.linear + S_DAP
    }

    /// Run the original INT 13h or INT 15h in real mode with `regs`; results come back in them.
    pub fn call_bios(&self, vector: Vector, regs: &mut Regs) {
        let h = self.header();
        let target = match vector {
            Vector::Int13 => map_field!(h.old_int13).read(),
            Vector::Int15 => map_field!(h.old_int15).read(),
        };
        map_field!(h.bios_target).write(target);
        map_field!(h.bios_regs).write(*regs);
        // SAFETY: `linear` is the installed stub (`Stub::at`): engine_bios_call goes down to real
        // mode through the stub's own descriptors and far pointers, which stage2 filled, runs
        // `bios_target` with `bios_regs`, and comes back on the engine's stack with all its state
        // (entry.s). The BIOS writes only the buffers the registers name: the stub's bounce
        // buffer, stage2's lent one, or a guest buffer (checked by vboot::int13 for an emulated
        // drive; a call passed through is the guest's own business, as without vboot).
        unsafe { engine_bios_call(self.linear) };
        // The stub's real-mode part loaded the guest's IDTR.
        crate::exception::load();
        *regs = map_field!(h.bios_regs).read();
    }
}
