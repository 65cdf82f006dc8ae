//! The INT 13h functions for each kind of emulated drive. Each returns `Ok(ah)` (CF=0, AH=ah)
//! or `Err(status)` (CF=1, AH=status) and changes only the registers it defines as outputs.

use super::chs::ChsAddress;
use super::disk::MEMORY_UNREACHABLE;
use super::drives::{CdEmulation, Drive, DriveClass, DriveKind, DriveSet, ElToritoBoot};
use super::edd::{self, DiskAddressPacket, DriveParameters};
use super::memory::{bda, GuestMemory};
use crate::realmode::Regs;
use super::Status;

type Answer = Result<u8, Status>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Verify,
}

/// INT 13h function numbers (AH), named as the BIOS and EDD specifications describe them
/// (docs/int13.md).
pub mod ah {
    pub const RESET: u8 = 0x00;
    pub const LAST_STATUS: u8 = 0x01;
    pub const READ_SECTORS: u8 = 0x02;
    pub const WRITE_SECTORS: u8 = 0x03;
    pub const VERIFY_SECTORS: u8 = 0x04;
    pub const FORMAT_TRACK: u8 = 0x05;
    pub const GET_PARAMETERS: u8 = 0x08;
    pub const INITIALIZE_PARAMETERS: u8 = 0x09;
    pub const SEEK: u8 = 0x0C;
    pub const ALTERNATE_RESET: u8 = 0x0D;
    pub const TEST_READY: u8 = 0x10;
    pub const RECALIBRATE: u8 = 0x11;
    pub const DIAGNOSTIC: u8 = 0x14;
    pub const GET_DRIVE_TYPE: u8 = 0x15;
    pub const MEDIA_CHANGE_STATUS: u8 = 0x16;
    pub const SET_DASD_TYPE: u8 = 0x17;
    pub const SET_MEDIA_TYPE: u8 = 0x18;
    pub const EDD_INSTALLATION_CHECK: u8 = 0x41;
    pub const EXTENDED_READ: u8 = 0x42;
    pub const EXTENDED_WRITE: u8 = 0x43;
    pub const EXTENDED_VERIFY: u8 = 0x44;
    pub const EXTENDED_SEEK: u8 = 0x47;
    pub const EXTENDED_GET_PARAMETERS: u8 = 0x48;
    pub const CD_EMULATION: u8 = 0x4B;
    pub const SET_HARDWARE_CONFIGURATION: u8 = 0x4E;
}

/// AH=15h answers in AH: the drive type.
const DRIVE_TYPE_FLOPPY_WITH_CHANGE_LINE: u8 = 0x02;
const DRIVE_TYPE_FIXED_DISK: u8 = 0x03;

pub(super) fn call(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    match drive.kind {
        DriveKind::HardDisk => hard_disk(drive, regs, mem),
        DriveKind::Floppy { .. } => floppy(drive, regs, mem),
        DriveKind::Cdrom { boot } => cdrom(drive, boot, regs, mem),
    }
}

fn hard_disk(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    use ah::*;
    match regs.ah() {
        // Reset: nothing to reset in a file. The real controllers are not reset for us; a guest
        // that resets 81h+ reaches them through pass-through.
        RESET => Ok(0),
        LAST_STATUS => last_status(mem, false),
        READ_SECTORS => chs_access(drive, regs, mem, Op::Read),
        WRITE_SECTORS => chs_access(drive, regs, mem, Op::Write),
        VERIFY_SECTORS => chs_access(drive, regs, mem, Op::Verify),
        GET_PARAMETERS => hard_disk_parameters(drive, regs, mem),
        // A file has no heads to move, so these succeed.
        INITIALIZE_PARAMETERS | SEEK | ALTERNATE_RESET | TEST_READY | RECALIBRATE | DIAGNOSTIC => Ok(0),
        GET_DRIVE_TYPE => hard_disk_type(drive, regs),
        // A fixed disk's media never changes; lbacache-style callers want "unchanged".
        MEDIA_CHANGE_STATUS => Ok(0),
        EDD_INSTALLATION_CHECK => edd_installation_check(regs),
        EXTENDED_READ => extended_access(drive, regs, mem, Op::Read),
        EXTENDED_WRITE => extended_access(drive, regs, mem, Op::Write),
        EXTENDED_VERIFY => extended_access(drive, regs, mem, Op::Verify),
        EXTENDED_SEEK => extended_seek(drive, regs, mem),
        EXTENDED_GET_PARAMETERS => extended_parameters(drive, regs, mem),
        SET_HARDWARE_CONFIGURATION => set_hardware_configuration(regs),
        _ => Err(Status::INVALID),
    }
}

fn floppy(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    use ah::*;
    match regs.ah() {
        // Never cascades into a floppy controller that may not exist.
        RESET => Ok(0),
        LAST_STATUS => last_status(mem, true),
        READ_SECTORS => chs_access(drive, regs, mem, Op::Read),
        WRITE_SECTORS => chs_access(drive, regs, mem, Op::Write),
        VERIFY_SECTORS => chs_access(drive, regs, mem, Op::Verify),
        FORMAT_TRACK => format_track(drive, regs),
        GET_PARAMETERS => floppy_parameters(drive, regs, mem),
        // Floppy with change line; CX:DX are left alone (setting them sends Win98SE's DOS into
        // a reset loop, memdisk notes).
        GET_DRIVE_TYPE => Ok(DRIVE_TYPE_FLOPPY_WITH_CHANGE_LINE),
        // An image never changes under the guest.
        MEDIA_CHANGE_STATUS => Ok(0),
        // The image's format is fixed: there is no DASD type to set.
        SET_DASD_TYPE => Ok(0),
        SET_MEDIA_TYPE => floppy_set_media_type(drive, regs),
        // No EDD on floppies: ELTORITO.SYS-style drivers take a floppy with extended reads for
        // a CD. The hard-disk-only functions are refused too.
        _ => Err(Status::INVALID),
    }
}

fn cdrom(drive: &mut Drive<'_>, boot: ElToritoBoot, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    use ah::*;
    match regs.ah() {
        RESET | ALTERNATE_RESET | TEST_READY | RECALIBRATE | DIAGNOSTIC => Ok(0),
        LAST_STATUS => last_status(mem, false),
        EDD_INSTALLATION_CHECK => edd_installation_check(regs),
        EXTENDED_READ => extended_access(drive, regs, mem, Op::Read),
        EXTENDED_WRITE => Err(Status::WRITE_PROTECTED),
        EXTENDED_VERIFY => extended_access(drive, regs, mem, Op::Verify),
        EXTENDED_SEEK => extended_seek(drive, regs, mem),
        EXTENDED_GET_PARAMETERS => extended_parameters(drive, regs, mem),
        CD_EMULATION => cd_specification(drive, boot, regs, mem),
        SET_HARDWARE_CONFIGURATION => set_hardware_configuration(regs),
        // CHS on 2048-byte media (02h-05h, 08h) and everything else.
        _ => Err(Status::INVALID),
    }
}

/// AH=08h on a hard disk: the CHS maxima and the number of hard disks.
fn hard_disk_parameters(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    let (cx, dh) = drive.geometry.max_address_regs();
    regs.set_ax(0);
    regs.set_cx(cx);
    regs.set_dh(dh);
    regs.set_dl(bda::hard_disk_count(mem));
    Ok(0)
}

/// AH=08h on a floppy: also the drive type and the parameter table (ES:DI).
fn floppy_parameters(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    let DriveKind::Floppy { drive_type, parameter_table } = drive.kind else {
        return Err(Status::INVALID);
    };
    let (cx, dh) = drive.geometry.max_address_regs();
    regs.set_ax(0);
    regs.set_bx(drive_type as u16);
    regs.set_cx(cx);
    regs.set_dh(dh);
    regs.set_dl(bda::floppy_count(mem));
    regs.es = parameter_table.segment;
    regs.set_di(parameter_table.offset);
    Ok(0)
}

/// AH=15h on a hard disk: a fixed disk, its size in sectors in CX:DX.
fn hard_disk_type(drive: &mut Drive<'_>, regs: &mut Regs) -> Answer {
    let sectors = drive.disk.block_count().min(u32::MAX as u64) as u32;
    regs.set_cx((sectors >> 16) as u16);
    regs.set_dx(sectors as u16);
    Ok(DRIVE_TYPE_FIXED_DISK)
}

/// AH=18h: DOS FORMAT asks for the parameter table of the format it wants; only the image's
/// own format has one.
fn floppy_set_media_type(drive: &mut Drive<'_>, regs: &mut Regs) -> Answer {
    let DriveKind::Floppy { parameter_table, .. } = drive.kind else {
        return Err(Status::INVALID);
    };
    let asked = ChsAddress::from_regs(regs.cx(), 0);
    let g = drive.geometry;
    if asked.cylinder as u32 + 1 != g.bios_cylinders() || asked.sector as u32 != g.sectors_per_track {
        return Err(Status::UNSUPPORTED_MEDIA);
    }
    regs.es = parameter_table.segment;
    regs.set_di(parameter_table.offset);
    Ok(0)
}

/// AH=48h: the EDD drive parameters at DS:SI, for a hard disk or a CD.
fn extended_parameters(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    let total = drive.disk.block_count();
    let parameters = match drive.kind {
        DriveKind::Cdrom { .. } => DriveParameters {
            size_bytes: 0,
            info_flags: edd::INFO_DMA_TRANSPARENT
                | edd::INFO_REMOVABLE
                | edd::INFO_CHANGE_LINE
                | edd::INFO_LOCKABLE
                | edd::INFO_GEOMETRY_IS_MAXIMUM,
            cylinders: u32::MAX,
            heads: u32::MAX,
            sectors_per_track: u32::MAX,
            total_sectors: total,
            bytes_per_sector: 2048,
            dpte: edd::DPTE_NONE,
        },
        _ => {
            let g = drive.geometry;
            let mut flags = edd::INFO_DMA_TRANSPARENT;
            if total <= super::chs::EDD_CHS_VALID_LIMIT_SECTORS {
                flags |= edd::INFO_CHS_VALID;
            }
            DriveParameters {
                size_bytes: 0,
                info_flags: flags,
                cylinders: g.cylinders,
                heads: g.heads,
                sectors_per_track: g.sectors_per_track,
                total_sectors: total,
                bytes_per_sector: 512,
                dpte: edd::DPTE_NONE,
            }
        }
    };
    parameters.write_to(mem, regs.ds_si_linear())?;
    Ok(0)
}

/// AX=4B00h/4B01h on the CD's own drive: status, or terminate. There is no emulation to end for
/// a no-emulation CD, so both answer the packet and the drive stays.
fn cd_specification(drive: &mut Drive<'_>, boot: ElToritoBoot, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    if regs.al() > 1 {
        return Err(Status::INVALID);
    }
    let packet = specification_packet(drive.number, boot);
    mem.write(regs.ds_si_linear(), &packet).map_err(|_| Status::INVALID)?;
    Ok(0)
}

/// AX=4B00h/4B01h for the drive a CD boot image is emulated on: the packet with its media type,
/// drive number and CHS maxima; 4B00h then ends the emulation.
pub(super) fn emulation_status(drives: &mut DriveSet<'_>, e: CdEmulation, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    let al = regs.al();
    if al > 1 {
        return Err(Status::INVALID);
    }
    let geometry = drives.drives().iter().find(|d| d.number == e.drive).map(|d| d.geometry);
    let mut packet = specification_packet(e.drive, e.boot);
    if let Some(g) = geometry {
        let (cx, dh) = g.max_address_regs();
        packet[0x10] = (cx >> 8) as u8;
        packet[0x11] = cx as u8;
        packet[0x12] = dh;
    }
    mem.write(regs.ds_si_linear(), &packet).map_err(|_| Status::INVALID)?;
    if al == 0 {
        drives.end_cd_emulation(mem);
    }
    Ok(0)
}

/// AX=4B01h specification packet, 13h bytes (docs/int13.md, "El Torito").
pub(super) fn specification_packet(drive_number: u8, boot: ElToritoBoot) -> [u8; 0x13] {
    let mut p = [0u8; 0x13];
    p[0] = 0x13;
    // The CD's own drive (E0h) is always "no emulation"; an emulated drive reports its media.
    p[1] = if DriveClass::of(drive_number) == DriveClass::Cdrom { 0 } else { boot.media };
    p[2] = drive_number;
    p[3] = 0; // controller index
    p[4..8].copy_from_slice(&boot.load_rba.to_le_bytes());
    // 08h device spec, 0Ah cache segment: 0.
    p[0x0C..0x0E].copy_from_slice(&boot.load_segment.to_le_bytes());
    p[0x0E..0x10].copy_from_slice(&boot.load_sectors.to_le_bytes());
    // 10h-12h CHS: emulation modes only.
    p
}

fn last_status(mem: &mut dyn GuestMemory, floppy: bool) -> Answer {
    match bda::last_status(mem, floppy) {
        0 => Ok(0),
        s => Err(Status(s)),
    }
}

fn edd_installation_check(regs: &mut Regs) -> Answer {
    if regs.bx() != 0x55AA {
        return Err(Status::INVALID);
    }
    regs.set_bx(0xAA55);
    regs.set_cx(edd::EDD_SUBSETS);
    Ok(edd::EDD_VERSION_3_0)
}

/// AH=4Eh: there is no hardware to configure; EDD-4 sub-functions 0-6 succeed with AL=0.
fn set_hardware_configuration(regs: &mut Regs) -> Answer {
    if regs.al() > 6 {
        return Err(Status::INVALID);
    }
    regs.set_al(0);
    Ok(0)
}

/// Guest memory that reads as one repeated byte: the source of a formatted track.
struct FillByte(u8);

impl GuestMemory for FillByte {
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), super::memory::MemoryError> {
        buf.fill(self.0);
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), super::memory::MemoryError> {
        Err(super::memory::MemoryError { linear, bytes: buf.len() })
    }
}

/// Byte a freshly formatted floppy sector holds (DPT fill byte).
const FORMAT_FILL_BYTE: u8 = 0xF6;

/// AH=05h on a floppy: DOS FORMAT rewrites every track. The image's format cannot change, so
/// only a track of the image's own sectors-per-track is accepted; it is filled with F6h.
fn format_track(drive: &mut Drive<'_>, regs: &mut Regs) -> Answer {
    let g = drive.geometry;
    if regs.al() as u32 != g.sectors_per_track {
        return Err(Status::INVALID_FORMAT_SECTORS);
    }
    let track = ChsAddress::from_regs(regs.cx() & 0xFFC0 | 1, regs.dh());
    let lba = g.to_lba(track).ok_or(Status::INVALID)?;
    if lba + g.sectors_per_track as u64 > drive.disk.block_count() {
        return Err(Status::SECTOR_NOT_FOUND);
    }
    if drive.disk.read_only() {
        return Err(Status::WRITE_PROTECTED);
    }
    drive
        .disk
        .write(lba, g.sectors_per_track, &mut FillByte(FORMAT_FILL_BYTE), 0)
        .map_err(|e| e.status)?;
    Ok(0)
}

/// AH=02h/03h/04h. AL = sectors done on return, also on failure.
fn chs_access(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory, op: Op) -> Answer {
    let count = regs.al();
    regs.set_al(0);
    let addr = ChsAddress::from_regs(regs.cx(), regs.dh());
    // SeaBIOS's limits: 1-128 sectors (64 KiB), sectors are 1-based.
    if count == 0 || count > 128 || addr.sector == 0 {
        return Err(Status::INVALID);
    }
    // A start outside the geometry (head, sector, or cylinder past the CHS-addressable area).
    let lba = drive.geometry.to_lba(addr).ok_or(Status::INVALID)?;
    // Multi-track requests continue linearly, but never past what CHS can address or past the
    // disk; those are refused whole.
    let limit = drive.geometry.addressable_sectors().min(drive.disk.block_count());
    match lba.checked_add(count as u64) {
        Some(end) if end <= limit => {}
        _ => return Err(Status::SECTOR_NOT_FOUND),
    }
    if op != Op::Verify && mem.check_buffer(regs.es_bx_linear(), count as u64 * drive.disk.block_bytes() as u64).is_err() {
        return Err(MEMORY_UNREACHABLE);
    }
    let result = match op {
        Op::Read => drive.disk.read(lba, count as u32, mem, regs.es_bx_linear()),
        Op::Write if drive.disk.read_only() => return Err(Status::WRITE_PROTECTED),
        Op::Write => drive.disk.write(lba, count as u32, mem, regs.es_bx_linear()),
        Op::Verify => Ok(()),
    };
    match result {
        Ok(()) => {
            regs.set_al(count);
            Ok(0)
        }
        Err(e) => {
            regs.set_al(e.done_blocks.min(count as u32) as u8);
            Err(e.status)
        }
    }
}

/// AH=42h/43h/44h. The part of the request inside the disk is transferred; if the request runs
/// past the end, or the disk fails, the packet's count says how many blocks were done.
fn extended_access(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory, op: Op) -> Answer {
    let packet_linear = regs.ds_si_linear();
    let dap = DiskAddressPacket::read(mem, packet_linear)?;
    let req = dap.request(packet_linear, drive.disk.block_bytes())?;
    if req.count == 0 {
        return Ok(0);
    }
    if op == Op::Write && drive.disk.read_only() {
        req.write_back_count(mem, 0);
        return Err(Status::WRITE_PROTECTED);
    }
    let total = drive.disk.block_count();
    let in_range = total.saturating_sub(req.lba).min(req.count as u64) as u32;
    let bytes = in_range as u64 * drive.disk.block_bytes() as u64;
    if op != Op::Verify && mem.check_buffer(req.buffer_linear, bytes).is_err() {
        req.write_back_count(mem, 0);
        return Err(MEMORY_UNREACHABLE);
    }
    let result = match op {
        // Nothing inside the disk: the disk is not asked at all (an LBA near 2^64 would
        // overflow its own sector arithmetic).
        _ if in_range == 0 => Ok(()),
        Op::Read => drive.disk.read(req.lba, in_range, mem, req.buffer_linear),
        Op::Write => drive.disk.write(req.lba, in_range, mem, req.buffer_linear),
        Op::Verify => Ok(()),
    };
    if let Err(e) = result {
        req.write_back_count(mem, e.done_blocks.min(in_range));
        return Err(e.status);
    }
    if in_range < req.count {
        req.write_back_count(mem, in_range);
        return Err(Status::SECTOR_NOT_FOUND);
    }
    Ok(0)
}

/// AH=47h: nothing moves; only the address is checked.
fn extended_seek(drive: &mut Drive<'_>, regs: &mut Regs, mem: &mut dyn GuestMemory) -> Answer {
    let packet_linear = regs.ds_si_linear();
    let dap = DiskAddressPacket::read(mem, packet_linear)?;
    let req = dap.request(packet_linear, drive.disk.block_bytes())?;
    if req.lba >= drive.disk.block_count() {
        return Err(Status::SECTOR_NOT_FOUND);
    }
    Ok(0)
}
