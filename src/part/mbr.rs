//! Logical partitions: the EBR chain inside an extended partition.

use alloc::vec::Vec;

use crate::block::{BlockDevice, SECTOR_BYTES};
use crate::bytes::le16;

use super::table::*;

/// A jump instruction and a plausible BIOS parameter block (bytes per sector 512..4096, a power of
/// two) at the start of sector 0, as every FAT, exFAT and NTFS boot sector has.
pub(super) fn looks_like_boot_sector(sector: &[u8; SECTOR_BYTES]) -> bool {
    let jump = (sector[0] == 0xEB && sector[2] == 0x90) || sector[0] == 0xE9;
    let bytes_per_sector = le16(sector, 11);
    jump && bytes_per_sector.is_power_of_two() && (512..=4096).contains(&bytes_per_sector)
}

/// Follow the EBR chain of the extended partition at `ext_start`. Each EBR's data entries are
/// relative to that EBR; its link to the next EBR is relative to the extended partition's start.
pub(super) fn read_ebr_chain<D: BlockDevice>(
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

