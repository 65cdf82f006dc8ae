//! The partition entry a chainloaded boot sector is handed at DS:SI.
//!
//! MBR boot code starts the boot sector (VBR) of the partition it chose with DS:SI pointing at
//! that partition's 16-byte entry in the table; boot sectors of Windows, FreeDOS and SYSLINUX
//! read their partition's start from it. vboot's `chainloader` hands over the same.

use crate::block::SECTOR_BYTES;

use super::table::{Partition, PartitionKind, Scheme};

/// Bytes of one MBR partition entry.
pub const ENTRY_BYTES: usize = 16;
/// Where GRUB's `chainloader` leaves the entry (DS:SI = 0000:07BE), as vboot does: the slot of
/// partition 1 in an MBR relocated to 0000:0600, below the boot sector at 0000:7C00.
pub const ENTRY_ADDR: u32 = 0x07BE;

const TABLE_OFFSET: usize = 446;
/// CHS fields of an entry whose partition is addressed by LBA only (cylinder 1023, head 254,
/// sector 63), as partitioning tools write past the CHS limit.
const CHS_BEYOND: [u8; 3] = [0xFE, 0xFF, 0xFF];
/// Type byte of a GPT partition handed over in an MBR-style entry (the T13 EDD-4 hybrid MBR
/// handover, as SYSLINUX's gptmbr.bin writes it).
const TYPE_GPT_HANDOVER: u8 = 0xED;
const STATUS_ACTIVE: u8 = 0x80;

/// The entry for partition `p` of a disk whose sector 0 is `sector0` (its live table). A primary
/// partition of an MBR disk gets its own entry, as MBR code passes it. A logical or GPT partition
/// has none in sector 0 (a logical one's EBR entry counts from its EBR), so it gets an equivalent
/// one: active, LBA-only CHS, its type, its start LBA and length from the start of the disk
/// (saturated at 2^32 - 1 past 2 TiB, where an MBR entry cannot reach).
pub fn boot_entry(p: &Partition, scheme: Scheme, sector0: &[u8; SECTOR_BYTES]) -> [u8; ENTRY_BYTES] {
    let mut entry = [0u8; ENTRY_BYTES];
    let primary = scheme == Scheme::Mbr && matches!(p.kind, PartitionKind::Mbr { .. }) && (1..=4).contains(&p.number);
    if primary {
        let at = TABLE_OFFSET + (p.number as usize - 1) * ENTRY_BYTES;
        entry.copy_from_slice(&sector0[at..at + ENTRY_BYTES]);
        return entry;
    }
    let type_byte = match p.kind {
        PartitionKind::Mbr { type_byte, .. } => type_byte,
        PartitionKind::Gpt { .. } => TYPE_GPT_HANDOVER,
    };
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes();
    entry[0] = STATUS_ACTIVE;
    entry[1..4].copy_from_slice(&CHS_BEYOND);
    entry[4] = type_byte;
    entry[5..8].copy_from_slice(&CHS_BEYOND);
    entry[8..12].copy_from_slice(&clamp(p.start_lba));
    entry[12..16].copy_from_slice(&clamp(p.sectors));
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn mbr_partition(number: u32, start_lba: u64, sectors: u64, type_byte: u8) -> Partition {
        Partition { number, start_lba, sectors, kind: PartitionKind::Mbr { type_byte, active: false } }
    }

    #[test]
    fn a_primary_partition_gets_its_own_entry() {
        let mut s0 = [0u8; SECTOR_BYTES];
        let second = [0x00, 1, 2, 3, 0x0C, 4, 5, 6, 0x00, 0x10, 0, 0, 0x00, 0x20, 0, 0];
        s0[462..478].copy_from_slice(&second);
        assert_eq!(boot_entry(&mbr_partition(2, 4096, 8192, 0x0C), Scheme::Mbr, &s0), second);
    }

    #[test]
    fn logical_and_gpt_partitions_get_an_equivalent_entry() {
        let s0 = [0u8; SECTOR_BYTES];
        let e = boot_entry(&mbr_partition(5, 36864, 8192, 0x83), Scheme::Mbr, &s0);
        assert_eq!(e, [0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF, 0x00, 0x90, 0, 0, 0x00, 0x20, 0, 0]);
        let gpt = Partition {
            number: 2,
            start_lba: 1 << 33,
            sectors: 100,
            kind: PartitionKind::Gpt { type_guid: [0; 16], unique_guid: [0; 16], name: String::new() },
        };
        let e = boot_entry(&gpt, Scheme::Gpt, &s0);
        assert_eq!(e[0], 0x80);
        assert_eq!(e[4], 0xED);
        assert_eq!(&e[8..12], &[0xFF; 4], "a start past 2 TiB saturates");
        assert_eq!(&e[12..16], &100u32.to_le_bytes());
    }
}
