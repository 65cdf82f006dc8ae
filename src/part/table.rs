//! What partition discovery finds and how it fails: the types shared by the MBR and GPT readers.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::block::{BlockDevice, BlockError, SECTOR_BYTES};
use crate::bytes::{le16, le32};

use super::guid::GPT_TYPE_NAMES;

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


pub(super) fn mbr_type_name(type_byte: u8) -> &'static str {
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
pub(super) const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// One 16-byte slot of an MBR or EBR.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MbrSlot {
    pub(crate) status: u8,
    pub(crate) type_byte: u8,
    pub(crate) start_lba: u32,
    pub(crate) sectors: u32,
}

pub(super) const MBR_SLOTS_OFFSET: usize = 446;
pub(super) const MBR_SIGNATURE_OFFSET: usize = 510;
pub(super) const MBR_DISK_SIGNATURE_OFFSET: usize = 440;

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

pub(super) fn read_sector<D: BlockDevice>(disk: &mut D, lba: u64) -> Result<[u8; SECTOR_BYTES], BlockError> {
    let mut s = [0u8; SECTOR_BYTES];
    disk.read_sectors(lba, &mut s)?;
    Ok(s)
}

pub(super) fn check_signature(sector: &[u8; SECTOR_BYTES], lba: u64) -> Result<(), PartError> {
    let found = le16(sector, MBR_SIGNATURE_OFFSET);
    if found != 0xAA55 {
        return Err(PartError::NoSignature { lba, found });
    }
    Ok(())
}

