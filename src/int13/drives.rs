//! The emulated drives, their numbers, and how the real drives' numbers move around them.

use super::chs::{floppy_geometry_by_search, geometry_from_sector0, Chs, FloppyFormat};
use super::memory::VecMemory;
use super::disk::EmulatedDisk;
use super::memory::{bda, GuestMemory};
use crate::realmode::Regs;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

/// A real-mode far pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FarPtr {
    pub segment: u16,
    pub offset: u16,
}

/// What the El Torito boot catalog said, reported back by AX=4B01h (docs/int13.md, "El Torito").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElToritoBoot {
    /// Catalog media type, bits 3:0: 0 no emulation, 1-3 floppy (1.2M, 1.44M, 2.88M), 4 hard disk.
    pub media: u8,
    /// CD LBA of the boot image; isolinux uses it when there is no boot-info table.
    pub load_rba: u32,
    /// Segment the image was loaded at (0 in the catalog means 07C0h).
    pub load_segment: u16,
    /// Number of 512-byte virtual sectors loaded.
    pub load_sectors: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// 512-byte sectors, counted in 0040:0075, numbers 80h-DFh.
    HardDisk,
    /// 512-byte sectors, counted in the equipment word, numbers 00h-7Fh.
    Floppy {
        /// AH=08h BL drive type (01h 360K, 02h 1.2M, 03h 720K, 04h 1.44M, 06h 2.88M).
        drive_type: u8,
        /// Where the engine put the diskette parameter table AH=08h/18h point ES:DI at.
        parameter_table: FarPtr,
    },
    /// No-emulation CD: 2048-byte blocks, numbers E0h-FFh, not counted anywhere in the BDA.
    Cdrom { boot: ElToritoBoot },
}

/// Which numbering a drive number belongs to. Real drives move up only within their class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveClass {
    Floppy,
    HardDisk,
    Cdrom,
}

impl DriveClass {
    pub fn of(number: u8) -> DriveClass {
        match number {
            0x00..=0x7F => DriveClass::Floppy,
            0x80..=0xDF => DriveClass::HardDisk,
            _ => DriveClass::Cdrom,
        }
    }
}

impl DriveKind {
    fn class(&self) -> DriveClass {
        match self {
            DriveKind::HardDisk => DriveClass::HardDisk,
            DriveKind::Floppy { .. } => DriveClass::Floppy,
            DriveKind::Cdrom { .. } => DriveClass::Cdrom,
        }
    }
    fn block_bytes(&self) -> u32 {
        match self {
            DriveKind::Cdrom { .. } => 2048,
            _ => 512,
        }
    }
}

/// The geometry a hard-disk image's sector 0 implies; a sector that cannot be read implies none.
fn sector0_geometry(disk: &mut Box<dyn EmulatedDisk + '_>) -> Option<Chs> {
    let mut scratch = VecMemory::zeroed(512);
    disk.read(0, 1, &mut scratch, 0).ok()?;
    geometry_from_sector0(&scratch.bytes, disk.block_count())
}

/// A floppy- or hard-disk-emulation boot image from a CD: the drive it is mapped to answers
/// AX=4B00h/4B01h with its own specification packet, and 4B00h ends the emulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdEmulation {
    /// 00h or 80h.
    pub drive: u8,
    pub boot: ElToritoBoot,
}

/// One emulated drive.
pub struct Drive<'d> {
    pub number: u8,
    pub kind: DriveKind,
    /// The geometry CHS calls and AH=08h/48h use (meaningless for a CD).
    pub geometry: Chs,
    pub disk: Box<dyn EmulatedDisk + 'd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveSetError {
    NumberInUse { number: u8 },
    WrongClass { number: u8, kind: DriveClass },
    BlockSize { number: u8, expected_bytes: u32, disk_bytes: u32 },
    EmptyDisk { number: u8 },
    FloppyGeometry { number: u8, sectors: u64 },
}

impl fmt::Display for DriveSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriveSetError::NumberInUse { number } => {
                write!(f, "drive {:02X}h is emulated twice; give each image its own drive", number)
            }
            DriveSetError::WrongClass { number, kind } => write!(
                f,
                "drive {:02X}h cannot be a {:?}: floppies are 00h-7Fh, hard disks 80h-DFh, CDs E0h-FFh",
                number, kind
            ),
            DriveSetError::BlockSize { number, expected_bytes, disk_bytes } => write!(
                f,
                "drive {:02X}h needs {}-byte blocks but its image has {}-byte blocks",
                number, expected_bytes, disk_bytes
            ),
            DriveSetError::EmptyDisk { number } => {
                write!(f, "the image for drive {:02X}h holds no whole block", number)
            }
            DriveSetError::FloppyGeometry { number, sectors } => write!(
                f,
                "floppy image for drive {:02X}h has {} sectors, which is no floppy geometry; \
                 use a standard size such as 1474560 bytes",
                number, sectors
            ),
        }
    }
}

/// The emulated drives and the BDA counts they imply.
#[derive(Default)]
pub struct DriveSet<'d> {
    drives: Vec<Drive<'d>>,
    /// Counts written by [`DriveSet::install_bda_counts`]; `None` before that.
    hard_disks_expected: Option<u8>,
    floppies_expected: Option<u8>,
    /// The CD boot image being emulated, until the guest ends the emulation (AX=4B00h).
    emulation: Option<CdEmulation>,
}

impl<'d> DriveSet<'d> {
    pub fn new() -> Self {
        DriveSet::default()
    }

    /// Adds an emulated drive. Its CHS geometry, in order: the image's own ([`EmulatedDisk::geometry`])
    /// when INT 13h can express it; for a hard disk, what its sector 0 implies (FAT BPB or
    /// partition table), else 255 heads / 63 sectors; for a floppy, the standard format of its
    /// size, else memdisk's search, else the drive is refused.
    pub fn add(&mut self, number: u8, kind: DriveKind, mut disk: Box<dyn EmulatedDisk + 'd>)
        -> Result<(), DriveSetError> {
        if self.index_of(number).is_some() {
            return Err(DriveSetError::NumberInUse { number });
        }
        if DriveClass::of(number) != kind.class() {
            return Err(DriveSetError::WrongClass { number, kind: kind.class() });
        }
        if disk.block_bytes() != kind.block_bytes() {
            return Err(DriveSetError::BlockSize {
                number,
                expected_bytes: kind.block_bytes(),
                disk_bytes: disk.block_bytes(),
            });
        }
        if disk.block_count() == 0 {
            return Err(DriveSetError::EmptyDisk { number });
        }
        let geometry = match kind {
            DriveKind::HardDisk => {
                let image = disk.geometry().filter(Chs::is_bios_usable);
                Chs::for_disk(disk.block_count(), image.or_else(|| sector0_geometry(&mut disk)))
            }
            DriveKind::Floppy { .. } => disk
                .geometry()
                .filter(Chs::is_bios_usable)
                .or_else(|| FloppyFormat::from_size(disk.block_count() * 512).map(|f| f.geometry))
                .or_else(|| floppy_geometry_by_search(disk.block_count()))
                .ok_or(DriveSetError::FloppyGeometry { number, sectors: disk.block_count() })?,
            // CDs have no CHS; the value is never used.
            DriveKind::Cdrom { .. } => Chs::for_disk(disk.block_count(), None),
        };
        self.drives.push(Drive { number, kind, geometry, disk });
        Ok(())
    }

    /// Marks an added floppy (00h) or hard disk (80h) as the emulated boot image of a CD.
    pub fn set_cd_emulation(&mut self, emulation: CdEmulation) {
        self.emulation = Some(emulation);
    }

    pub fn cd_emulation(&self) -> Option<CdEmulation> {
        self.emulation
    }

    /// AX=4B00h on the emulated drive: it disappears, the real drives of its class move back
    /// down and the BDA count goes down by one (docs/int13.md, "El Torito").
    pub(crate) fn end_cd_emulation(&mut self, mem: &mut dyn GuestMemory) {
        let Some(e) = self.emulation.take() else { return };
        let Some(i) = self.index_of(e.drive) else { return };
        let class = self.drives[i].kind.class();
        self.drives.remove(i);
        match class {
            DriveClass::HardDisk => {
                let n = bda::hard_disk_count(mem).saturating_sub(1);
                bda::set_hard_disk_count(mem, n);
                self.hard_disks_expected = self.hard_disks_expected.map(|_| n);
            }
            DriveClass::Floppy => {
                let n = bda::floppy_count(mem).saturating_sub(1);
                bda::set_floppy_count(mem, n);
                self.floppies_expected = self.floppies_expected.map(|_| n);
            }
            DriveClass::Cdrom => {}
        }
    }

    pub fn drives(&self) -> &[Drive<'d>] {
        &self.drives
    }

    pub(crate) fn drive_mut(&mut self, index: usize) -> Option<&mut Drive<'d>> {
        self.drives.get_mut(index)
    }

    pub(crate) fn index_of(&self, number: u8) -> Option<usize> {
        self.drives.iter().position(|d| d.number == number)
    }

    pub(crate) fn first_cdrom(&self) -> Option<usize> {
        self.drives.iter().position(|d| matches!(d.kind, DriveKind::Cdrom { .. }))
    }

    fn emulated_in_class(&self, class: DriveClass) -> u8 {
        self.drives.iter().filter(|d| d.kind.class() == class).count().min(255) as u8
    }

    /// The BIOS's own number for a drive the guest names and we do not emulate. Real floppies
    /// and hard disks move up past the emulated ones of their class (guest 81h is BIOS 80h when
    /// 80h is emulated); CD numbers are never shifted.
    pub fn bios_number(&self, guest_number: u8) -> u8 {
        let class = DriveClass::of(guest_number);
        if class == DriveClass::Cdrom {
            return guest_number;
        }
        let below = self
            .drives
            .iter()
            .filter(|d| d.kind.class() == class && d.number < guest_number)
            .count() as u8;
        guest_number - below
    }

    /// Raise 0040:0075 by the emulated hard disks and the equipment word by the emulated
    /// floppies (at least up to the highest emulated floppy number, at most 4). Call once, when hooking INT 13h.
    pub fn install_bda_counts(&mut self, mem: &mut dyn GuestMemory) {
        let hdd = bda::hard_disk_count(mem).saturating_add(self.emulated_in_class(DriveClass::HardDisk));
        bda::set_hard_disk_count(mem, hdd);
        self.hard_disks_expected = Some(hdd);
        let emulated_fdd = self.emulated_in_class(DriveClass::Floppy);
        if emulated_fdd > 0 {
            // B: alone (drive 01h) still needs a count of two to be seen.
            let highest = self.drives.iter().filter(|d| d.kind.class() == DriveClass::Floppy).map(|d| d.number + 1).max().unwrap_or(0);
            let fdd = bda::floppy_count(mem).saturating_add(emulated_fdd).max(highest).min(4);
            bda::set_floppy_count(mem, fdd);
            self.floppies_expected = Some(fdd);
        }
    }

    /// Something (the BIOS, a loader) may rewrite the counts after we set them; iPXE re-checks
    /// them on every call. We only raise them back, so a later hook that adds its own drive
    /// keeps its count.
    pub fn reassert_bda_counts(&self, mem: &mut dyn GuestMemory) {
        if let Some(n) = self.hard_disks_expected {
            if bda::hard_disk_count(mem) < n {
                bda::set_hard_disk_count(mem, n);
            }
        }
        if let Some(n) = self.floppies_expected {
            if bda::floppy_count(mem) < n {
                bda::set_floppy_count(mem, n);
            }
        }
    }

    /// After a passed-through call returns from the BIOS: give the caller back its own DL,
    /// except AH=08h (DL = number of drives of that class, ours included) and AH=15h on a hard
    /// disk that answered "fixed disk" (DX = low word of the sector count). memdisk and iPXE use
    /// exactly this exception list.
    pub fn fixup_after_chain(&self, before: &Regs, after: &mut Regs, mem: &mut dyn GuestMemory) {
        let class = DriveClass::of(before.dl());
        match (before.ah(), class) {
            (0x08, DriveClass::HardDisk) => after.set_dl(bda::hard_disk_count(mem)),
            (0x08, DriveClass::Floppy) => after.set_dl(bda::floppy_count(mem)),
            (0x15, DriveClass::HardDisk) if !after.cf() && after.ah() == 0x03 => {}
            _ => after.set_dl(before.dl()),
        }
    }
}
