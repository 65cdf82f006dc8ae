//! GPT: the primary header with its entry array, the backup as a fallback, both CRC-checked.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::block::{BlockDevice, SECTOR_BYTES};
use crate::bytes::{le32, le64};
use crate::crc32;

use super::table::*;

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

pub(super) fn read_gpt<D: BlockDevice>(disk: &mut D, disk_sectors: u64) -> Result<PartitionTable, PartError> {
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

