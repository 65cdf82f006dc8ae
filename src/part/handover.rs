//! The partition entry a chainloaded boot sector is handed at DS:SI.
//!
//! MBR boot code relocates itself to 0000:0600 and starts the boot sector (VBR) of the partition
//! it chose with DS:SI pointing at that partition's 16-byte entry in its copy of the table, at
//! 0000:07BE + 16 x slot; boot sectors of Windows, FreeDOS and SYSLINUX read their partition's
//! start from it. vboot's `chainloader` leaves the same (as GRUB's does: the table at 0000:07BE).

use crate::block::SECTOR_BYTES;

use super::table::{Partition, PartitionKind, Scheme};

/// Bytes of one MBR partition entry.
pub const ENTRY_BYTES: usize = 16;
/// Bytes of the four entries of a table.
pub const TABLE_BYTES: usize = 4 * ENTRY_BYTES;
/// Where the table of an MBR relocated to 0000:0600 lies, below the boot sector at 0000:7C00.
pub const TABLE_ADDR: u32 = 0x0600 + TABLE_OFFSET as u32;

const TABLE_OFFSET: usize = 446;
/// CHS fields of an entry whose partition is addressed by LBA only (cylinder 1023, head 254,
/// sector 63), as partitioning tools write past the CHS limit.
const CHS_BEYOND: [u8; 3] = [0xFE, 0xFF, 0xFF];
/// Type byte of a GPT partition handed over in an MBR-style entry (the T13 EDD-4 hybrid MBR
/// handover, as SYSLINUX's gptmbr.bin writes it).
const TYPE_GPT_HANDOVER: u8 = 0xED;
const STATUS_ACTIVE: u8 = 0x80;

/// What a partition's boot sector is handed: the table to put at [`TABLE_ADDR`] and SI, the
/// address of the partition's entry in it (DS = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    pub table: [u8; TABLE_BYTES],
    pub si: u16,
}

/// The handover for partition `p` of a disk whose sector 0 is `sector0` (its live table). A
/// primary partition of an MBR disk gets sector 0's table with SI at its own entry, as MBR code
/// passes it. A logical or GPT partition has no entry there (a logical one's EBR entry counts
/// from its EBR), so it gets an equivalent one in the first slot of an otherwise empty table:
/// active, LBA-only CHS, its type, its start LBA and length from the start of the disk
/// (saturated at 2^32 - 1 past 2 TiB, where an MBR entry cannot reach).
pub fn handover(p: &Partition, scheme: Scheme, sector0: &[u8; SECTOR_BYTES]) -> Handover {
    let mut table = [0u8; TABLE_BYTES];
    let primary = scheme == Scheme::Mbr && matches!(p.kind, PartitionKind::Mbr { .. }) && (1..=4).contains(&p.number);
    if primary {
        table.copy_from_slice(&sector0[TABLE_OFFSET..TABLE_OFFSET + TABLE_BYTES]);
        let slot = p.number as usize - 1;
        return Handover { table, si: (TABLE_ADDR as usize + slot * ENTRY_BYTES) as u16 };
    }
    let type_byte = match p.kind {
        PartitionKind::Mbr { type_byte, .. } => type_byte,
        PartitionKind::Gpt { .. } => TYPE_GPT_HANDOVER,
    };
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes();
    table[0] = STATUS_ACTIVE;
    table[1..4].copy_from_slice(&CHS_BEYOND);
    table[4] = type_byte;
    table[5..8].copy_from_slice(&CHS_BEYOND);
    table[8..12].copy_from_slice(&clamp(p.start_lba));
    table[12..16].copy_from_slice(&clamp(p.sectors));
    Handover { table, si: TABLE_ADDR as u16 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn mbr_partition(number: u32, start_lba: u64, sectors: u64, type_byte: u8) -> Partition {
        Partition { number, start_lba, sectors, kind: PartitionKind::Mbr { type_byte, active: false } }
    }

    #[test]
    fn a_primary_partition_gets_the_table_and_its_own_entry() {
        let mut s0 = [0u8; SECTOR_BYTES];
        let second = [0x00, 1, 2, 3, 0x0C, 4, 5, 6, 0x00, 0x10, 0, 0, 0x00, 0x20, 0, 0];
        s0[462..478].copy_from_slice(&second);
        s0[446] = 0x80;
        let h = handover(&mbr_partition(2, 4096, 8192, 0x0C), Scheme::Mbr, &s0);
        assert_eq!(h.si, 0x07CE);
        assert_eq!(&h.table[..], &s0[446..510]);
        assert_eq!(&h.table[16..32], &second);
    }

    #[test]
    fn logical_and_gpt_partitions_get_an_equivalent_entry() {
        let s0 = [0u8; SECTOR_BYTES];
        let h = handover(&mbr_partition(5, 36864, 8192, 0x83), Scheme::Mbr, &s0);
        assert_eq!(h.si, 0x07BE);
        assert_eq!(h.table[..16], [0x80, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF, 0x00, 0x90, 0, 0, 0x00, 0x20, 0, 0]);
        assert_eq!(h.table[16..], [0u8; 48]);
        let gpt = Partition {
            number: 2,
            start_lba: 1 << 33,
            sectors: 100,
            kind: PartitionKind::Gpt { type_guid: [0; 16], unique_guid: [0; 16], name: String::new() },
        };
        let e = handover(&gpt, Scheme::Gpt, &s0).table;
        assert_eq!(e[0], 0x80);
        assert_eq!(e[4], 0xED);
        assert_eq!(&e[8..12], &[0xFF; 4], "a start past 2 TiB saturates");
        assert_eq!(&e[12..16], &100u32.to_le_bytes());
    }
}
