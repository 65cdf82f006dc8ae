//! Partition discovery: MBR primaries, logical partitions in an EBR chain, GPT (primary header with
//! a fallback to the backup), and hybrid MBRs.
//!
//! Numbering follows GRUB, because grub.cfg names partitions the way GRUB does: MBR primaries are
//! 1-4 by slot (an empty slot still uses its number), logical partitions are 5, 6, ... in EBR-chain
//! order, GPT partitions are their entry index + 1.
//!
//! Sectors are 512 bytes. Every walk is bounded, every offset read from disk is checked: a corrupt
//! table is a [`PartError`], never a panic or a hang.

mod gpt;
mod guid;
pub mod handover;
mod mbr;
mod table;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;

use crate::block::BlockDevice;
use crate::bytes::le32;

pub use guid::{format_guid, guid_from_fields, parse_guid, GuidText};
pub use guid::{GPT_TYPE_BIOS_BOOT, GPT_TYPE_EFI_SYSTEM, GPT_TYPE_LINUX_FILESYSTEM, GPT_TYPE_MICROSOFT_BASIC_DATA};
pub use table::*;
use gpt::read_gpt;
use mbr::{looks_like_boot_sector, read_ebr_chain};

/// Whether `sector` ends in the boot signature 55AA (bytes 510 and 511), as a BIOS requires of a
/// sector it starts and as an MBR or a boot sector carries it. A short slice has none.
pub fn has_boot_signature(sector: &[u8]) -> bool {
    sector.get(table::MBR_SIGNATURE_OFFSET..table::MBR_SIGNATURE_OFFSET + 2) == Some(&[0x55, 0xAA][..])
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

