//! Partition discovery: MBR primaries, logical partitions in an EBR chain, GPT (primary header with
//! a fallback to the backup), and hybrid MBRs.
//!
//! Numbering follows GRUB, because grub.cfg names partitions the way GRUB does: MBR primaries are
//! 1-4 by slot (an empty slot still uses its number), logical partitions are 5, 6, ... in EBR-chain
//! order, GPT partitions are their entry index + 1.
//!
//! Sectors are 512 bytes. Every walk is bounded, every offset read from disk is checked: a corrupt
//! table is a [`PartError`], never a panic or a hang.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::block::{BlockDevice, BlockError, SECTOR_BYTES};
use crate::crc32;

/// Which table the partitions came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
    /// A GPT whose protective MBR also lists real partitions. The GPT entries are authoritative
    /// (GRUB does the same); the MBR copies are ignored.
    Hybrid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    Mbr {
        type_byte: u8,
        active: bool,
    },
    Gpt {
        type_guid: [u8; 16],
        unique_guid: [u8; 16],
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// GRUB's number: MBR primaries 1-4 by slot, logical 5, 6, ... in EBR-chain order, GPT entry
    /// index + 1.
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
    pub kind: PartitionKind,
}

/// Which GPT header the entries were read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptHeaderUsed {
    Primary,
    /// The primary header or its entries were damaged; the backup at the end of the disk was used.
    Backup,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    /// The 32-bit disk signature at MBR offset 440.
    pub mbr_signature: u32,
    /// GPT disk GUID (GPT and hybrid only).
    pub disk_guid: Option<[u8; 16]>,
    pub partitions: Vec<Partition>,
    /// GPT and hybrid only.
    pub gpt_header: Option<GptHeaderUsed>,
    /// Things a user should hear about that did not stop discovery (damaged primary GPT, ...).
    pub warnings: Vec<String>,
}

impl PartitionTable {
    /// The partition with GRUB number `number`.
    pub fn find(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

/// MBR partition type bytes that are extended-partition containers.
pub const MBR_TYPE_EXTENDED_CHS: u8 = 0x05;
pub const MBR_TYPE_EXTENDED_LBA: u8 = 0x0F;
pub const MBR_TYPE_EXTENDED_LINUX: u8 = 0x85;
/// The protective MBR entry of a GPT disk.
pub const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;

pub fn is_extended_type(type_byte: u8) -> bool {
    matches!(
        type_byte,
        MBR_TYPE_EXTENDED_CHS | MBR_TYPE_EXTENDED_LBA | MBR_TYPE_EXTENDED_LINUX
    )
}

/// A GUID in its on-disk byte order from the text form's fields (the first three fields are stored
/// little-endian, the last eight bytes as written).
pub const fn guid_from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// 21686148-6449-6E6F-744E-656564454649: where a BIOS boot loader keeps its second stage on GPT.
pub const GPT_TYPE_BIOS_BOOT: [u8; 16] = guid_from_fields(
    0x2168_6148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B
pub const GPT_TYPE_EFI_SYSTEM: [u8; 16] = guid_from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// EBD0A0A2-B9E5-4433-87C0-68B6B72699C7: FAT, NTFS and exFAT volumes made by Windows and most tools.
pub const GPT_TYPE_MICROSOFT_BASIC_DATA: [u8; 16] = guid_from_fields(
    0xEBD0_A0A2,
    0xB9E5,
    0x4433,
    [0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7],
);
/// 0FC63DAF-8483-4772-8E79-3D69D8477DE4
pub const GPT_TYPE_LINUX_FILESYSTEM: [u8; 16] = guid_from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

const GPT_TYPE_NAMES: &[([u8; 16], &str)] = &[
    (GPT_TYPE_EFI_SYSTEM, "EFI System"),
    (GPT_TYPE_BIOS_BOOT, "BIOS boot"),
    (GPT_TYPE_MICROSOFT_BASIC_DATA, "Microsoft basic data"),
    (GPT_TYPE_LINUX_FILESYSTEM, "Linux"),
    (
        guid_from_fields(
            0xE3C9_E316,
            0x0B5C,
            0x4DB8,
            [0x81, 0x7D, 0xF9, 0x2D, 0xF0, 0x02, 0x15, 0xAE],
        ),
        "Microsoft reserved",
    ),
    (
        guid_from_fields(
            0xDE94_BBA4,
            0x06D1,
            0x4D40,
            [0xA1, 0x6A, 0xBF, 0xD5, 0x01, 0x79, 0xD6, 0xAC],
        ),
        "Windows recovery",
    ),
    (
        guid_from_fields(
            0x0657_FD6D,
            0xA4AB,
            0x43C4,
            [0x84, 0xE5, 0x09, 0x33, 0xC8, 0x4B, 0x4F, 0x4F],
        ),
        "Linux swap",
    ),
    (
        guid_from_fields(
            0xE6D6_D379,
            0xF507,
            0x44C2,
            [0xA2, 0x3C, 0x23, 0x8F, 0x2A, 0x3D, 0xF9, 0x28],
        ),
        "Linux LVM",
    ),
    (
        guid_from_fields(
            0xA19D_880F,
            0x05FC,
            0x4D3B,
            [0xA0, 0x06, 0x74, 0x3F, 0x0F, 0x84, 0x91, 0x1E],
        ),
        "Linux RAID",
    ),
    (
        guid_from_fields(
            0x4F68_BCE3,
            0xE8CD,
            0x4DB1,
            [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
        ),
        "Linux root (x86-64)",
    ),
    (
        guid_from_fields(
            0x933A_C7E1,
            0x2EB4,
            0x4F13,
            [0xB8, 0x44, 0x0E, 0x14, 0xE2, 0xAE, 0xF9, 0x15],
        ),
        "Linux home",
    ),
    (
        guid_from_fields(
            0x4846_5300,
            0x0000,
            0x11AA,
            [0xAA, 0x11, 0x00, 0x30, 0x65, 0x43, 0xEC, 0xAC],
        ),
        "Apple HFS+",
    ),
];

fn mbr_type_name(type_byte: u8) -> &'static str {
    match type_byte {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "extended",
        0x06 => "FAT16",
        0x07 => "NTFS/exFAT",
        0x0B => "FAT32",
        0x0C => "FAT32 LBA",
        0x0E => "FAT16 LBA",
        0x0F => "extended LBA",
        0x11 => "hidden FAT12",
        0x14 => "hidden FAT16 <32M",
        0x16 => "hidden FAT16",
        0x17 => "hidden NTFS/exFAT",
        0x1B => "hidden FAT32",
        0x1C => "hidden FAT32 LBA",
        0x1E => "hidden FAT16 LBA",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA9 => "NetBSD",
        0xAF => "Apple HFS",
        0xEE => "GPT protective",
        0xEF => "EFI System",
        0xFD => "Linux RAID",
        _ => "unknown",
    }
}

impl Partition {
    /// A short human name for the partition type ("FAT32 LBA", "Linux", "EFI System", ...), or
    /// "unknown".
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            PartitionKind::Mbr { type_byte, .. } => mbr_type_name(*type_byte),
            PartitionKind::Gpt { type_guid, .. } => GPT_TYPE_NAMES
                .iter()
                .find(|(g, _)| g == type_guid)
                .map(|(_, n)| *n)
                .unwrap_or("unknown"),
        }
    }

    /// An MBR extended-partition container (holds logical partitions, not a filesystem).
    pub fn is_extended(&self) -> bool {
        matches!(self.kind, PartitionKind::Mbr { type_byte, .. } if is_extended_type(type_byte))
    }
}

/// The usual text form of a GUID, upper case: `21686148-6449-6E6F-744E-656564454649`.
pub fn format_guid(g: &[u8; 16]) -> String {
    format!("{}", GuidText(g))
}

/// Displays a GUID in its text form without allocating.
pub struct GuidText<'a>(pub &'a [u8; 16]);

impl fmt::Display for GuidText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9]
        )?;
        for b in &g[10..16] {
            write!(f, "{:02X}", b)?;
        }
        Ok(())
    }
}

/// Parse the text form of a GUID (either case, with the four dashes) to on-disk bytes.
pub fn parse_guid(text: &str) -> Option<[u8; 16]> {
    let t = text.as_bytes();
    if t.len() != 36 || t[8] != b'-' || t[13] != b'-' || t[18] != b'-' || t[23] != b'-' {
        return None;
    }
    let hex: Vec<u8> = t.iter().copied().filter(|&c| c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut text_order = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let s = core::str::from_utf8(pair).ok()?;
        text_order[i] = u8::from_str_radix(s, 16).ok()?;
    }
    let t = text_order;
    Some([
        t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
        t[14], t[15],
    ])
}

/// Why a GPT header (primary or backup) could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GptFault {
    Unreadable(BlockError),
    NoSignature,
    BadHeaderSize(u32),
    HeaderCrc {
        stored: u32,
        computed: u32,
    },
    WrongSelfLba {
        expected: u64,
        found: u64,
    },
    BadUsableRange {
        first_lba: u64,
        last_lba: u64,
    },
    BadEntrySize(u32),
    /// More entry bytes than any real table holds; refused rather than allocated.
    EntriesTooLarge {
        entries: u32,
        entry_bytes: u32,
    },
    EntriesOutsideDisk {
        lba: u64,
    },
    EntriesCrc {
        stored: u32,
        computed: u32,
    },
}

impl fmt::Display for GptFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptFault::Unreadable(e) => write!(f, "cannot be read ({})", e),
            GptFault::NoSignature => write!(f, "has no \"EFI PART\" signature"),
            GptFault::BadHeaderSize(n) => write!(f, "has an impossible header size of {} bytes", n),
            GptFault::HeaderCrc { stored, computed } => write!(
                f,
                "has a bad header CRC32 (stored {:08x}, computed {:08x})",
                stored, computed
            ),
            GptFault::WrongSelfLba { expected, found } => {
                write!(
                    f,
                    "says it is at LBA {} but was read from LBA {}",
                    found, expected
                )
            }
            GptFault::BadUsableRange {
                first_lba,
                last_lba,
            } => write!(
                f,
                "has an impossible usable range {}..={} for this disk",
                first_lba, last_lba
            ),
            GptFault::BadEntrySize(n) => {
                write!(
                    f,
                    "has a partition entry size of {} bytes (at least 128 needed)",
                    n
                )
            }
            GptFault::EntriesTooLarge {
                entries,
                entry_bytes,
            } => write!(
                f,
                "declares {} entries of {} bytes, more than a partition table can hold",
                entries, entry_bytes
            ),
            GptFault::EntriesOutsideDisk { lba } => {
                write!(
                    f,
                    "places its partition entries at LBA {}, outside the disk",
                    lba
                )
            }
            GptFault::EntriesCrc { stored, computed } => write!(
                f,
                "has a bad partition-entries CRC32 (stored {:08x}, computed {:08x})",
                stored, computed
            ),
        }
    }
}

/// Why partition discovery failed. The Display text is meant for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartError {
    Block(BlockError),
    /// The sector (0 for the MBR, or an EBR) does not end in 55 AA.
    NoSignature {
        lba: u64,
        found: u16,
    },
    /// A slot's status byte is neither 0x00 nor 0x80: sector 0 is probably a filesystem boot sector
    /// of an unpartitioned disk, not an MBR.
    BadStatusByte {
        slot: u8,
        value: u8,
    },
    /// `sectors == 0` means the first LBA lies after the last one (GPT) or the start is 0 (MBR).
    BadRange {
        number: u32,
        start_lba: u64,
        sectors: u64,
    },
    OutsideDisk {
        number: u32,
        start_lba: u64,
        sectors: u64,
        disk_sectors: u64,
    },
    Overlap {
        first: u32,
        second: u32,
    },
    /// The chain of extended boot records is damaged.
    EbrChain {
        ebr_lba: u64,
        reason: &'static str,
    },
    /// The protective MBR announces a GPT but neither header is usable.
    Gpt {
        primary: GptFault,
        backup: GptFault,
    },
}

impl From<BlockError> for PartError {
    fn from(e: BlockError) -> Self {
        PartError::Block(e)
    }
}

impl fmt::Display for PartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartError::Block(e) => write!(f, "cannot read the partition table: {}", e),
            PartError::NoSignature { lba: 0, found } => write!(
                f,
                "no partition table: sector 0 does not end in 55 AA (found {:02X} {:02X})",
                found & 0xFF,
                found >> 8
            ),
            PartError::NoSignature { lba, found } => write!(
                f,
                "damaged logical partition chain: the extended boot record at LBA {} does not end \
                 in 55 AA (found {:02X} {:02X})",
                lba,
                found & 0xFF,
                found >> 8
            ),
            PartError::BadStatusByte { slot, value } => write!(
                f,
                "no partition table: MBR slot {} has status byte {:#04x} (only 0x00 or 0x80 are \
                 valid); sector 0 is probably the boot sector of an unpartitioned disk",
                slot, value
            ),
            PartError::BadRange {
                number,
                start_lba,
                sectors,
            } => write!(
                f,
                "partition {} has an impossible range (start LBA {}, {} sectors)",
                number, start_lba, sectors
            ),
            PartError::OutsideDisk {
                number,
                start_lba,
                sectors,
                disk_sectors,
            } => write!(
                f,
                "partition {} (LBA {}..{}) reaches past the end of the disk ({} sectors)",
                number,
                start_lba,
                start_lba.saturating_add(*sectors),
                disk_sectors
            ),
            PartError::Overlap { first, second } => {
                write!(f, "partitions {} and {} overlap", first, second)
            }
            PartError::EbrChain { ebr_lba, reason } => write!(
                f,
                "damaged logical partition chain at the extended boot record at LBA {}: {}",
                ebr_lba, reason
            ),
            PartError::Gpt { primary, backup } => write!(
                f,
                "GPT disk with no usable partition table: the primary header {}, and the backup \
                 header {}",
                primary, backup
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PartError {}

/// Upper bound on logical partitions followed through an EBR chain. Linux and GRUB have no fixed
/// limit; no partitioning tool makes more than a few dozen.
pub const MAX_LOGICAL_PARTITIONS: usize = 256;

/// Refuse GPT entry arrays larger than this (the usual one is 16 KiB).
const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// One 16-byte slot of an MBR or EBR.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MbrSlot {
    pub(crate) status: u8,
    pub(crate) type_byte: u8,
    pub(crate) start_lba: u32,
    pub(crate) sectors: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

const MBR_SLOTS_OFFSET: usize = 446;
const MBR_SIGNATURE_OFFSET: usize = 510;
const MBR_DISK_SIGNATURE_OFFSET: usize = 440;

pub(crate) fn mbr_slots(sector: &[u8; SECTOR_BYTES]) -> [MbrSlot; 4] {
    let slot = |i: usize| {
        let at = MBR_SLOTS_OFFSET + i * 16;
        MbrSlot {
            status: sector[at],
            type_byte: sector[at + 4],
            start_lba: le32(sector, at + 8),
            sectors: le32(sector, at + 12),
        }
    };
    [slot(0), slot(1), slot(2), slot(3)]
}

fn read_sector<D: BlockDevice>(disk: &mut D, lba: u64) -> Result<[u8; SECTOR_BYTES], BlockError> {
    let mut s = [0u8; SECTOR_BYTES];
    disk.read_sectors(lba, &mut s)?;
    Ok(s)
}

fn check_signature(sector: &[u8; SECTOR_BYTES], lba: u64) -> Result<(), PartError> {
    let found = le16(sector, MBR_SIGNATURE_OFFSET);
    if found != 0xAA55 {
        return Err(PartError::NoSignature { lba, found });
    }
    Ok(())
}

/// Read the partition table of `disk`.
pub fn read_partitions<D: BlockDevice>(disk: &mut D) -> Result<PartitionTable, PartError> {
    let disk_sectors = disk.sector_count();
    let mbr = read_sector(disk, 0)?;
    check_signature(&mbr, 0)?;
    let slots = mbr_slots(&mbr);
    for (i, s) in slots.iter().enumerate() {
        if s.type_byte != 0 && s.status != 0 && s.status != 0x80 {
            return Err(PartError::BadStatusByte {
                slot: i as u8 + 1,
                value: s.status,
            });
        }
    }
    let mbr_signature = le32(&mbr, MBR_DISK_SIGNATURE_OFFSET);

    let protective = slots.iter().any(|s| s.type_byte == MBR_TYPE_GPT_PROTECTIVE);
    if protective {
        let others = slots
            .iter()
            .any(|s| s.type_byte != 0 && s.type_byte != MBR_TYPE_GPT_PROTECTIVE);
        let scheme = if others { Scheme::Hybrid } else { Scheme::Gpt };
        let mut table = read_gpt(disk, disk_sectors)?;
        table.scheme = scheme;
        table.mbr_signature = mbr_signature;
        check_layout(&table.partitions, disk_sectors)?;
        return Ok(table);
    }

    let mut partitions = Vec::new();
    let mut extended: Option<(u64, u64)> = None;
    for (i, s) in slots.iter().enumerate() {
        if s.type_byte == 0 || s.sectors == 0 {
            continue;
        }
        let number = i as u32 + 1;
        if s.start_lba == 0 {
            return Err(PartError::BadRange {
                number,
                start_lba: 0,
                sectors: s.sectors as u64,
            });
        }
        if is_extended_type(s.type_byte) && extended.is_none() {
            extended = Some((s.start_lba as u64, s.sectors as u64));
        }
        partitions.push(Partition {
            number,
            start_lba: s.start_lba as u64,
            sectors: s.sectors as u64,
            kind: PartitionKind::Mbr {
                type_byte: s.type_byte,
                active: s.status == 0x80,
            },
        });
    }
    // Check the primaries first so a bogus extended partition is reported as such, not as a
    // broken EBR somewhere past the end of the disk.
    check_layout(&partitions, disk_sectors)?;
    if let Some((ext_start, ext_sectors)) = extended {
        read_ebr_chain(disk, ext_start, ext_sectors, &mut partitions)?;
        check_layout(&partitions, disk_sectors)?;
    }
    let mut warnings = Vec::new();
    // mkfs.fat, mkntfs and friends leave the slot area zero, so an unpartitioned disk reads as an
    // empty MBR; say so, since the caller may want to open the whole disk as one volume.
    if partitions.is_empty() && looks_like_boot_sector(&mbr) {
        warnings.push(String::from(
            "sector 0 is a filesystem boot sector with an empty partition table: the disk is \
             probably not partitioned",
        ));
    }
    Ok(PartitionTable {
        scheme: Scheme::Mbr,
        mbr_signature,
        disk_guid: None,
        partitions,
        gpt_header: None,
        warnings,
    })
}

/// A jump instruction and a plausible BIOS parameter block (bytes per sector 512..4096, a power of
/// two) at the start of sector 0, as every FAT, exFAT and NTFS boot sector has.
fn looks_like_boot_sector(sector: &[u8; SECTOR_BYTES]) -> bool {
    let jump = (sector[0] == 0xEB && sector[2] == 0x90) || sector[0] == 0xE9;
    let bytes_per_sector = le16(sector, 11);
    jump && bytes_per_sector.is_power_of_two() && (512..=4096).contains(&bytes_per_sector)
}

/// Follow the EBR chain of the extended partition at `ext_start`. Each EBR's data entries are
/// relative to that EBR; its link to the next EBR is relative to the extended partition's start.
fn read_ebr_chain<D: BlockDevice>(
    disk: &mut D,
    ext_start: u64,
    ext_sectors: u64,
    partitions: &mut Vec<Partition>,
) -> Result<(), PartError> {
    let ext_end = ext_start.saturating_add(ext_sectors);
    let mut visited: Vec<u64> = Vec::new();
    let mut ebr_lba = ext_start;
    let mut number: u32 = 5;
    loop {
        if visited.contains(&ebr_lba) {
            return Err(PartError::EbrChain {
                ebr_lba,
                reason: "the chain loops back on itself",
            });
        }
        if visited.len() >= MAX_LOGICAL_PARTITIONS {
            return Err(PartError::EbrChain {
                ebr_lba,
                reason: "the chain is longer than any partitioning tool makes",
            });
        }
        if ebr_lba < ext_start || ebr_lba >= ext_end {
            return Err(PartError::EbrChain {
                ebr_lba,
                reason: "the chain leaves the extended partition",
            });
        }
        visited.push(ebr_lba);
        let ebr = read_sector(disk, ebr_lba)?;
        check_signature(&ebr, ebr_lba)?;
        let slots = mbr_slots(&ebr);
        // Like GRUB, every non-empty, non-link slot is a logical partition and takes a number,
        // even one with zero length (which is then not listed), so numbers match GRUB's.
        for s in slots.iter() {
            if s.type_byte == 0 || is_extended_type(s.type_byte) {
                continue;
            }
            let this_number = number;
            number += 1;
            if s.sectors == 0 {
                continue;
            }
            if s.start_lba == 0 {
                return Err(PartError::BadRange {
                    number: this_number,
                    start_lba: ebr_lba,
                    sectors: s.sectors as u64,
                });
            }
            partitions.push(Partition {
                number: this_number,
                start_lba: ebr_lba + s.start_lba as u64,
                sectors: s.sectors as u64,
                kind: PartitionKind::Mbr {
                    type_byte: s.type_byte,
                    active: s.status == 0x80,
                },
            });
        }
        match slots.iter().find(|s| is_extended_type(s.type_byte)) {
            Some(link) => ebr_lba = ext_start + link.start_lba as u64,
            None => return Ok(()),
        }
    }
}

/// Every partition inside the disk and no two overlapping (an extended container may of course
/// hold the logical partitions, which start at 5).
fn check_layout(partitions: &[Partition], disk_sectors: u64) -> Result<(), PartError> {
    for p in partitions {
        match p.start_lba.checked_add(p.sectors) {
            Some(end) if end <= disk_sectors => {}
            _ => {
                return Err(PartError::OutsideDisk {
                    number: p.number,
                    start_lba: p.start_lba,
                    sectors: p.sectors,
                    disk_sectors,
                })
            }
        }
    }
    for (i, a) in partitions.iter().enumerate() {
        for b in partitions.iter().skip(i + 1) {
            let container_and_logical =
                (a.is_extended() && b.number >= 5) || (b.is_extended() && a.number >= 5);
            if container_and_logical {
                continue;
            }
            if a.start_lba < b.start_lba + b.sectors && b.start_lba < a.start_lba + a.sectors {
                return Err(PartError::Overlap {
                    first: a.number,
                    second: b.number,
                });
            }
        }
    }
    Ok(())
}

const GPT_HEADER_MIN_BYTES: u32 = 92;
const GPT_ENTRY_MIN_BYTES: u32 = 128;

struct GptHeader {
    disk_guid: [u8; 16],
    entry_bytes: u32,
}

/// Read and validate the GPT header at `lba`, then its entry array. Returns the header and the
/// raw entry bytes.
fn read_gpt_at<D: BlockDevice>(
    disk: &mut D,
    lba: u64,
    disk_sectors: u64,
) -> Result<(GptHeader, Vec<u8>), GptFault> {
    let sector = read_sector(disk, lba).map_err(GptFault::Unreadable)?;
    if &sector[0..8] != b"EFI PART" {
        return Err(GptFault::NoSignature);
    }
    let header_bytes = le32(&sector, 12);
    if header_bytes < GPT_HEADER_MIN_BYTES || header_bytes as usize > SECTOR_BYTES {
        return Err(GptFault::BadHeaderSize(header_bytes));
    }
    let stored = le32(&sector, 16);
    let mut copy = sector;
    copy[16..20].copy_from_slice(&[0; 4]);
    let computed = crc32::crc32(&copy[..header_bytes as usize]);
    if stored != computed {
        return Err(GptFault::HeaderCrc { stored, computed });
    }
    let my_lba = le64(&sector, 24);
    if my_lba != lba {
        return Err(GptFault::WrongSelfLba {
            expected: lba,
            found: my_lba,
        });
    }
    let first_usable = le64(&sector, 40);
    let last_usable = le64(&sector, 48);
    if first_usable > last_usable || last_usable >= disk_sectors {
        return Err(GptFault::BadUsableRange {
            first_lba: first_usable,
            last_lba: last_usable,
        });
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&sector[56..72]);
    let entries_lba = le64(&sector, 72);
    let entries = le32(&sector, 80);
    let entry_bytes = le32(&sector, 84);
    let entries_crc = le32(&sector, 88);
    if entry_bytes < GPT_ENTRY_MIN_BYTES {
        return Err(GptFault::BadEntrySize(entry_bytes));
    }
    let array_bytes = entries as u64 * entry_bytes as u64;
    if array_bytes > MAX_GPT_ENTRIES_BYTES {
        return Err(GptFault::EntriesTooLarge {
            entries,
            entry_bytes,
        });
    }
    let array_sectors = array_bytes.div_ceil(SECTOR_BYTES as u64);
    match entries_lba.checked_add(array_sectors) {
        Some(end) if entries_lba >= 1 && end <= disk_sectors => {}
        _ => return Err(GptFault::EntriesOutsideDisk { lba: entries_lba }),
    }
    let mut array = vec![0u8; (array_sectors as usize) * SECTOR_BYTES];
    disk.read_sectors(entries_lba, &mut array)
        .map_err(GptFault::Unreadable)?;
    array.truncate(array_bytes as usize);
    let computed = crc32::crc32(&array);
    if computed != entries_crc {
        return Err(GptFault::EntriesCrc {
            stored: entries_crc,
            computed,
        });
    }
    Ok((
        GptHeader {
            disk_guid,
            entry_bytes,
        },
        array,
    ))
}

fn read_gpt<D: BlockDevice>(disk: &mut D, disk_sectors: u64) -> Result<PartitionTable, PartError> {
    let last_lba = disk_sectors.saturating_sub(1);
    let mut warnings = Vec::new();
    let (header, array, used) = match read_gpt_at(disk, 1, disk_sectors) {
        Ok((h, a)) => (h, a, GptHeaderUsed::Primary),
        Err(primary) => match read_gpt_at(disk, last_lba, disk_sectors) {
            Ok((h, a)) => {
                warnings.push(format!(
                    "the primary GPT header {}; using the backup header at LBA {}",
                    primary, last_lba
                ));
                (h, a, GptHeaderUsed::Backup)
            }
            Err(backup) => return Err(PartError::Gpt { primary, backup }),
        },
    };
    let mut partitions = Vec::new();
    for (index, entry) in array.chunks_exact(header.entry_bytes as usize).enumerate() {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&entry[0..16]);
        if type_guid == [0u8; 16] {
            continue;
        }
        let mut unique_guid = [0u8; 16];
        unique_guid.copy_from_slice(&entry[16..32]);
        let number = index as u32 + 1;
        let first_lba = le64(entry, 32);
        let last_lba = le64(entry, 40);
        if last_lba < first_lba || first_lba == 0 {
            return Err(PartError::BadRange {
                number,
                start_lba: first_lba,
                sectors: 0,
            });
        }
        let name_units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name: String = char::decode_utf16(name_units.iter().copied())
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        partitions.push(Partition {
            number,
            start_lba: first_lba,
            // last_lba - first_lba cannot overflow (checked above); + 1 can only for last = MAX.
            sectors: (last_lba - first_lba).saturating_add(1),
            kind: PartitionKind::Gpt {
                type_guid,
                unique_guid,
                name,
            },
        });
    }
    Ok(PartitionTable {
        scheme: Scheme::Gpt,
        mbr_signature: 0,
        disk_guid: Some(header.disk_guid),
        partitions,
        gpt_header: Some(used),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;

    fn set_slot(
        disk: &mut MemDisk,
        sector_lba: u64,
        slot: usize,
        status: u8,
        ty: u8,
        start: u32,
        len: u32,
    ) {
        let at = sector_lba as usize * 512 + 446 + slot * 16;
        disk.bytes[at] = status;
        disk.bytes[at + 4] = ty;
        disk.bytes[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        disk.bytes[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
        let sig = sector_lba as usize * 512 + 510;
        disk.bytes[sig] = 0x55;
        disk.bytes[sig + 1] = 0xAA;
    }

    fn mbr_disk() -> MemDisk {
        let mut d = MemDisk::zeroed(10_000);
        d.bytes[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        set_slot(&mut d, 0, 0, 0x80, 0x0C, 2048, 1000);
        set_slot(&mut d, 0, 2, 0x00, 0x05, 4000, 5000);
        // Logical 5 at 4000+63, link to the EBR at 4000+2000.
        set_slot(&mut d, 4000, 0, 0, 0x83, 63, 1000);
        set_slot(&mut d, 4000, 1, 0, 0x05, 2000, 1100);
        set_slot(&mut d, 6000, 0, 0, 0x07, 63, 1000);
        d
    }

    #[test]
    fn mbr_with_logicals() {
        let mut d = mbr_disk();
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.scheme, Scheme::Mbr);
        assert_eq!(t.mbr_signature, 0x1234_5678);
        let got: Vec<(u32, u64, u64, &str)> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start_lba, p.sectors, p.describe()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 2048, 1000, "FAT32 LBA"),
                (3, 4000, 5000, "extended"),
                (5, 4063, 1000, "Linux"),
                (6, 6063, 1000, "NTFS/exFAT"),
            ]
        );
        assert_eq!(
            t.find(1).unwrap().kind,
            PartitionKind::Mbr {
                type_byte: 0x0C,
                active: true
            }
        );
        assert!(t.find(2).is_none());
    }

    #[test]
    fn ebr_loop_is_an_error() {
        let mut d = mbr_disk();
        // Second EBR links back to the first.
        set_slot(&mut d, 6000, 1, 0, 0x05, 0, 1100);
        let e = read_partitions(&mut d).unwrap_err();
        assert!(
            matches!(e, PartError::EbrChain { ebr_lba: 4000, .. }),
            "{:?}",
            e
        );
        assert!(format!("{}", e).contains("loops"));
        // Self-link.
        let mut d = mbr_disk();
        set_slot(&mut d, 6000, 1, 0, 0x0F, 2000, 1100);
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::EbrChain { ebr_lba: 6000, .. })
        ));
    }

    #[test]
    fn ebr_link_outside_extended_and_missing_signature() {
        let mut d = mbr_disk();
        set_slot(&mut d, 6000, 1, 0, 0x05, 0xFFFF_FFF0, 10);
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::EbrChain { .. })
        ));
        let mut d = mbr_disk();
        d.bytes[6000 * 512 + 510] = 0;
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::NoSignature { lba: 6000, .. })
        ));
    }

    #[test]
    fn long_ebr_chain_is_bounded() {
        // 300 EBRs one after another: more than MAX_LOGICAL_PARTITIONS.
        let mut d = MemDisk::zeroed(2000);
        set_slot(&mut d, 0, 0, 0, 0x05, 100, 1800);
        for i in 0..300u32 {
            let ebr = 100 + i as u64 * 5;
            set_slot(&mut d, ebr, 0, 0, 0x83, 1, 2);
            set_slot(&mut d, ebr, 1, 0, 0x05, (i + 1) * 5, 5);
        }
        let e = read_partitions(&mut d).unwrap_err();
        assert!(matches!(e, PartError::EbrChain { .. }), "{:?}", e);
    }

    #[test]
    fn mbr_errors() {
        let mut d = MemDisk::zeroed(100);
        assert_eq!(
            read_partitions(&mut d),
            Err(PartError::NoSignature { lba: 0, found: 0 })
        );
        set_slot(&mut d, 0, 0, 0, 0x83, 10, 200);
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::OutsideDisk { number: 1, .. })
        ));
        let mut d = MemDisk::zeroed(100);
        set_slot(&mut d, 0, 0, 0, 0x83, 10, 20);
        set_slot(&mut d, 0, 3, 0, 0x83, 29, 20);
        assert_eq!(
            read_partitions(&mut d),
            Err(PartError::Overlap {
                first: 1,
                second: 4
            })
        );
        let mut d = MemDisk::zeroed(100);
        set_slot(&mut d, 0, 1, 0x29, 0x83, 10, 20);
        let e = read_partitions(&mut d).unwrap_err();
        assert_eq!(
            e,
            PartError::BadStatusByte {
                slot: 2,
                value: 0x29
            }
        );
        assert!(format!("{}", e).contains("unpartitioned"));
        // Huge values must not overflow.
        let mut d = MemDisk::zeroed(100);
        set_slot(&mut d, 0, 0, 0, 0x83, u32::MAX, u32::MAX);
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::OutsideDisk { .. })
        ));
        // A disk of zero sectors.
        let mut d = MemDisk::zeroed(0);
        assert!(matches!(read_partitions(&mut d), Err(PartError::Block(_))));
    }

    /// A minimal valid GPT written by this test (entries of `entry_bytes`).
    fn gpt_disk(entry_bytes: u32) -> MemDisk {
        let sectors = 4096u64;
        let mut d = MemDisk::zeroed(sectors);
        set_slot(&mut d, 0, 0, 0, 0xEE, 1, (sectors - 1) as u32);
        let entries = 128u32;
        let array_bytes = (entries * entry_bytes) as usize;
        let array_sectors = array_bytes.div_ceil(512) as u64;
        let mut array = vec![0u8; array_bytes];
        let put =
            |array: &mut Vec<u8>, i: usize, ty: [u8; 16], first: u64, last: u64, name: &str| {
                let e = &mut array[i * entry_bytes as usize..];
                e[0..16].copy_from_slice(&ty);
                e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
                e[32..40].copy_from_slice(&first.to_le_bytes());
                e[40..48].copy_from_slice(&last.to_le_bytes());
                for (k, u) in name.encode_utf16().enumerate() {
                    e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
                }
            };
        put(
            &mut array,
            0,
            GPT_TYPE_BIOS_BOOT,
            34 + array_sectors,
            34 + array_sectors + 99,
            "bios",
        );
        put(&mut array, 2, GPT_TYPE_EFI_SYSTEM, 1000, 1999, "ESP é");
        let array_crc = crc32::crc32(&array);
        let write_header = |d: &mut MemDisk, my: u64, alt: u64, entries_lba: u64| {
            let mut h = [0u8; 512];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 2 - array_sectors).to_le_bytes());
            h[56..72].copy_from_slice(&[0xAB; 16]);
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&entries.to_le_bytes());
            h[84..88].copy_from_slice(&entry_bytes.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let c = crc32::crc32(&h[..92]);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            let at = my as usize * 512;
            d.bytes[at..at + 512].copy_from_slice(&h);
            let at = entries_lba as usize * 512;
            d.bytes[at..at + array.len()].copy_from_slice(&array);
        };
        write_header(&mut d, 1, sectors - 1, 2);
        write_header(&mut d, sectors - 1, 1, sectors - 1 - array_sectors);
        d
    }

    #[test]
    fn gpt_entries_of_any_size() {
        for entry_bytes in [128u32, 256, 136] {
            let mut d = gpt_disk(entry_bytes);
            let t = read_partitions(&mut d).unwrap();
            assert_eq!(t.scheme, Scheme::Gpt);
            assert_eq!(t.gpt_header, Some(GptHeaderUsed::Primary));
            assert_eq!(t.disk_guid, Some([0xAB; 16]));
            assert_eq!(t.partitions.len(), 2);
            let p3 = t.find(3).unwrap();
            assert_eq!(
                (p3.start_lba, p3.sectors, p3.describe()),
                (1000, 1000, "EFI System")
            );
            match &p3.kind {
                PartitionKind::Gpt {
                    name, unique_guid, ..
                } => {
                    assert_eq!(name, "ESP é");
                    assert_eq!(unique_guid, &[3u8; 16]);
                }
                k => panic!("{:?}", k),
            }
            assert_eq!(t.find(1).unwrap().describe(), "BIOS boot");
        }
    }

    #[test]
    fn gpt_falls_back_to_backup_and_reports_both_faults() {
        let mut d = gpt_disk(128);
        d.bytes[512 + 40] ^= 1; // header CRC now wrong
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.gpt_header, Some(GptHeaderUsed::Backup));
        assert_eq!(t.partitions.len(), 2);
        assert!(t.warnings[0].contains("header CRC32"), "{:?}", t.warnings);

        let mut d = gpt_disk(128);
        d.bytes[2 * 512 + 100] ^= 1; // primary entries damaged
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.gpt_header, Some(GptHeaderUsed::Backup));
        assert!(t.warnings[0].contains("entries CRC32"), "{:?}", t.warnings);

        d.bytes[4095 * 512] = b'X';
        let e = read_partitions(&mut d).unwrap_err();
        assert!(matches!(
            e,
            PartError::Gpt {
                primary: GptFault::EntriesCrc { .. },
                backup: GptFault::NoSignature
            }
        ));
        let msg = format!("{}", e);
        assert!(msg.contains("primary") && msg.contains("backup"), "{}", msg);
    }

    #[test]
    fn hybrid_uses_gpt_entries() {
        let mut d = gpt_disk(128);
        set_slot(&mut d, 0, 0, 0, 0xEE, 1, 999);
        set_slot(&mut d, 0, 1, 0x80, 0x0C, 1000, 1000);
        let t = read_partitions(&mut d).unwrap();
        assert_eq!(t.scheme, Scheme::Hybrid);
        assert_eq!(t.find(3).unwrap().describe(), "EFI System");
        assert!(t.find(2).is_none());
    }

    #[test]
    fn gpt_garbage_never_panics() {
        // Flip each byte of the primary header and the first entry in turn; whatever happens,
        // it is a value (and the backup normally saves the day).
        let base = gpt_disk(128);
        for at in (512..1024).chain(1024..1024 + 128) {
            for v in [0x00u8, 0xFF, 0x80] {
                let mut d = base.clone();
                d.bytes[at] = v;
                let _ = read_partitions(&mut d);
            }
        }
        // Both headers with huge entry counts / sizes, with valid CRCs.
        let mut d = gpt_disk(128);
        for lba in [1usize, 4095] {
            let h = &mut d.bytes[lba * 512..lba * 512 + 512];
            h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
            h[84..88].copy_from_slice(&u32::MAX.to_le_bytes());
            h[16..20].copy_from_slice(&[0; 4]);
            let c = crc32::crc32(&h[..92]);
            h[16..20].copy_from_slice(&c.to_le_bytes());
        }
        assert!(matches!(
            read_partitions(&mut d),
            Err(PartError::Gpt {
                primary: GptFault::EntriesTooLarge { .. },
                ..
            })
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..300 {
            let mut d = MemDisk::zeroed(64);
            for b in d.bytes.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            d.bytes[510] = 0x55;
            d.bytes[511] = 0xAA;
            // Make slot statuses valid often so the parsing goes deeper.
            if seed & 1 == 0 {
                for s in 0..4 {
                    d.bytes[446 + s * 16] = 0;
                    d.bytes[446 + s * 16 + 8..446 + s * 16 + 12]
                        .copy_from_slice(&((seed >> (s * 4)) as u32 % 64).to_le_bytes());
                }
            }
            let _ = read_partitions(&mut d);
        }
    }

    #[test]
    fn guid_text_round_trip() {
        assert_eq!(
            format_guid(&GPT_TYPE_BIOS_BOOT),
            "21686148-6449-6E6F-744E-656564454649"
        );
        assert_eq!(
            parse_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            Some(GPT_TYPE_EFI_SYSTEM)
        );
        assert_eq!(parse_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93"), None);
        assert_eq!(parse_guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93g"), None);
        assert_eq!(parse_guid("c12a7328+f81f-11d2-ba4b-00a0c93ec93b"), None);
    }
}
