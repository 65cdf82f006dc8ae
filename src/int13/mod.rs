//! INT 13h semantics as a pure function: registers and guest memory in, registers and guest
//! memory out, over a set of emulated drives (docs/int13.md).
//!
//! The resident engine is a thin shell around [`handle`]:
//!
//! ```text
//! fill Regs from the real-mode frame
//! match handle(&mut drives, &mut regs, &mut mem) {
//!     Outcome::Handled => {}
//!     Outcome::PassThrough { dl } => {
//!         let before = regs;
//!         regs.set_dl(dl);                 // the BIOS's own number for that drive
//!         call the saved INT 13h vector with regs;
//!         drives.fixup_after_chain(&before, &mut regs, &mut mem);
//!     }
//! }
//! write Regs back, CF into the caller's saved FLAGS
//! ```
//!
//! Return discipline (docs/int13.md, "Return discipline"): CF comes from the function's result,
//! never from "AH != 0" (AH=41h answers AH=30h and AH=15h answers AH=03h, both with CF=0); only the
//! registers a function defines as outputs change; the last-status byte (0040:0074, or 0040:0041
//! for floppies) is written after every call on an emulated drive.
//!
//! Where the reference implementations disagree (docs/int13.md, the section of that name), we
//! answer:
//! - AH=08h hard disk: last cylinder = C - 1 (memdisk, iPXE), clamped to 1023; DL = 0040:0075;
//!   ES:DI untouched. AH=15h: CX:DX = exact size clipped to FFFFFFFFh, consistent with C - 1.
//! - Requests past the end of the disk: 04h (sector not found). An extended request transfers
//!   the part inside the disk and writes the count done into the packet; a CHS request is
//!   refused whole (AL = 0).
//! - AH=41h: AH=30h, CX=000Dh (fixed-disk access, EDD, 64-bit packets), BX=55AAh required
//!   (memdisk). AH=48h returns at most the 1Eh-byte form with DPTE FFFF:FFFF and no device path.
//! - Floppies: AH=15h = 02h (change line, memdisk), AH=16h = unchanged, no EDD at all.
//! - AH=16h on a hard disk answers "unchanged" (lbacache asks), AH=09h/4Eh succeed.

pub mod chs;
pub mod disk;
mod drives;
pub mod edd;
mod functions;
pub mod memory;

#[cfg(test)]
mod tests;

use core::fmt;

pub use chs::{Chs, ChsAddress, FloppyFormat};
pub use disk::{BlockDisk, DiskError, EmulatedDisk, StraightRun};
pub use drives::{CdEmulation, Drive, DriveClass, DriveKind, DriveSet, DriveSetError, ElToritoBoot, FarPtr};
pub use memory::{bda, check_guest_range, linear, GuestMemory, MemoryError, VecMemory};
// The register type is real mode's, shared with every BIOS thunk of the firmware.
pub use crate::realmode::Regs;

/// An INT 13h status code: AH on return, and the byte kept at 0040:0074 / 0040:0041.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    pub const SUCCESS: Status = Status(0x00);
    /// Invalid function or parameter.
    pub const INVALID: Status = Status(0x01);
    pub const ADDRESS_MARK_NOT_FOUND: Status = Status(0x02);
    pub const WRITE_PROTECTED: Status = Status(0x03);
    /// Sector not found: our answer for a request past the end of the disk.
    pub const SECTOR_NOT_FOUND: Status = Status(0x04);
    pub const MEDIA_CHANGED: Status = Status(0x06);
    /// Data boundary error: a seg:off transfer above 64 KiB, or a buffer we cannot reach.
    pub const BOUNDARY_ERROR: Status = Status(0x09);
    pub const UNSUPPORTED_MEDIA: Status = Status(0x0C);
    pub const INVALID_FORMAT_SECTORS: Status = Status(0x0D);
    /// Controller failure: the resident engine's answer when it failed internally (a panic,
    /// such as an allocation failure) while serving the call.
    pub const CONTROLLER_FAILURE: Status = Status(0x20);
    pub const WRITE_FAULT: Status = Status(0xCC);
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match *self {
            Status::SUCCESS => "success",
            Status::INVALID => "invalid function or parameter",
            Status::ADDRESS_MARK_NOT_FOUND => "address mark not found",
            Status::WRITE_PROTECTED => "disk is write-protected",
            Status::SECTOR_NOT_FOUND => "sector not found (past the end of the disk, or a read error)",
            Status::MEDIA_CHANGED => "media changed",
            Status::BOUNDARY_ERROR => "buffer crosses a 64 KiB boundary or cannot be reached",
            Status::UNSUPPORTED_MEDIA => "unsupported track or media type",
            Status::INVALID_FORMAT_SECTORS => "invalid number of sectors on format",
            Status::CONTROLLER_FAILURE => "controller failure",
            Status::WRITE_FAULT => "write fault",
            _ => "BIOS disk error",
        };
        write!(f, "INT 13h status {:02X}h: {}", self.0, what)
    }
}

/// What the engine must do after [`handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call was for an emulated drive and `regs`/memory hold its answer.
    Handled,
    /// The call is for a real drive: chain to the saved vector with DL = `dl` (the BIOS's own
    /// number for the drive the guest named), then call [`DriveSet::fixup_after_chain`].
    PassThrough { dl: u8 },
}

/// DL for AX=4B0xh meaning "whichever drive is emulated".
const ANY_EMULATED_DRIVE: u8 = 0x7F;

/// Serve one INT 13h call.
pub fn handle(drives: &mut DriveSet<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Outcome {
    drives.reassert_bda_counts(mem);
    let dl = regs.dl();
    if regs.ah() == functions::ah::CD_EMULATION {
        if let Some(e) = drives.cd_emulation().filter(|e| dl == e.drive || dl == ANY_EMULATED_DRIVE) {
            let result = functions::emulation_status(drives, e, regs, mem);
            let floppy = DriveClass::of(e.drive) == DriveClass::Floppy;
            finish(regs, mem, floppy, result);
            return Outcome::Handled;
        }
    }
    let index = match drives.index_of(dl) {
        Some(i) => i,
        // AX=4B0xh with DL=7Fh means "any emulation"; a CD we serve must answer it, or the BIOS
        // answers with its own, unrelated state.
        None if regs.ah() == functions::ah::CD_EMULATION && dl == ANY_EMULATED_DRIVE => match drives.first_cdrom() {
            Some(i) => i,
            None => return Outcome::PassThrough { dl },
        },
        None => return Outcome::PassThrough { dl: drives.bios_number(dl) },
    };
    let Some(drive) = drives.drive_mut(index) else {
        return Outcome::PassThrough { dl };
    };
    let floppy = matches!(drive.kind, DriveKind::Floppy { .. });
    let result = functions::call(drive, regs, mem);
    finish(regs, mem, floppy, result);
    Outcome::Handled
}

/// After a call [`handle`] served: the straight run the stub may serve the guest's next call
/// from (docs/int13.md, "The real-mode fast path"), with the guest's drive number. Only after a
/// successful AH=42h/43h with a seg:off packet on an emulated hard disk: the run that starts
/// where the call ended (a guest reads on from there), else the one where it started.
pub fn fast_run_after(drives: &mut DriveSet<'_>, before: &Regs, after: &Regs, mem: &mut dyn GuestMemory) -> Option<(u8, StraightRun)> {
    let ah = before.ah();
    if (ah != functions::ah::EXTENDED_READ && ah != functions::ah::EXTENDED_WRITE) || after.flags & 1 != 0 {
        return None;
    }
    let dl = before.dl();
    let drive = drives.drive_mut(drives.index_of(dl)?)?;
    if drive.kind != DriveKind::HardDisk {
        return None;
    }
    let at = before.ds_si_linear();
    let request = edd::DiskAddressPacket::read(mem, at).ok()?.request(at, 512).ok()?;
    if request.form != edd::DapForm::SegOff {
        return None;
    }
    let blocks = drive.disk.block_count();
    let read_only = drive.disk.read_only();
    let next = request.lba.checked_add(request.count as u64)?;
    let run = drive.disk.straight_run(next).or_else(|| drive.disk.straight_run(request.lba))?;
    // The stub counts a run's sectors in 32 bits, and a run never passes the disk's end.
    let end = run.lba.checked_add(run.blocks)?.min(blocks);
    let sectors = end.checked_sub(run.lba)?.min(u32::MAX as u64);
    if sectors == 0 {
        return None;
    }
    Some((dl, StraightRun { blocks: sectors, writable: run.writable && !read_only, ..run }))
}

/// Fail a call that could not be served at all (the resident engine failed internally while
/// serving it): `status` in AH, CF set, the last-status byte written, and nothing counted as
/// transferred (AL = 0 for AH=02h/03h/04h, the packet's block count 0 for AH=42h/43h/44h).
pub fn fail_call(regs: &mut Regs, mem: &mut dyn GuestMemory, status: Status) {
    match regs.ah() {
        functions::ah::READ_SECTORS..=functions::ah::VERIFY_SECTORS => regs.set_al(0),
        functions::ah::EXTENDED_READ..=functions::ah::EXTENDED_VERIFY => {
            let at = regs.ds_si_linear();
            // The count field of whichever form the caller used; any block size is fine here.
            if let Ok(req) = edd::DiskAddressPacket::read(mem, at).and_then(|p| p.request(at, 1)) {
                req.write_back_count(mem, 0);
            }
        }
        _ => {}
    }
    let floppy = DriveClass::of(regs.dl()) == DriveClass::Floppy;
    finish(regs, mem, floppy, Err(status));
}

fn finish(regs: &mut Regs, mem: &mut dyn GuestMemory, floppy: bool, result: Result<u8, Status>) {
    match result {
        Ok(ah) => {
            regs.set_ah(ah);
            regs.set_cf(false);
            bda::set_last_status(mem, floppy, Status::SUCCESS.0);
        }
        Err(status) => {
            regs.set_ah(status.0);
            regs.set_cf(true);
            bda::set_last_status(mem, floppy, status.0);
        }
    }
}
