//! Partition tables (MBR, EBR chains, GPT with its backup, hybrid): `part::read_partitions` over
//! a sparse disk of up to 2^40 sectors. Checks: no panic; every partition it returns lies inside
//! the disk and, except an extended container and its logical partitions, no two overlap;
//! logical numbering starts at 5; memory stays under the GPT array bound (1 MiB) plus slack.
//! When the input's last byte is odd, the harness first fixes the CRCs of both GPT headers and
//! their entry arrays, so that mutations reach the code behind the checksums.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::block::BlockDevice;
use vboot::part::{read_partitions, PartitionKind};
use vboot_fuzz::{heap, sparse::SparseDisk};

fn fix_gpt(disk: &mut SparseDisk, lba: u64) {
    let mut s = [0u8; 512];
    if disk.read_sectors(lba, &mut s).is_err() || &s[..8] != b"EFI PART" {
        return;
    }
    let entries_lba = u64::from_le_bytes(s[72..80].try_into().unwrap());
    let entries = u32::from_le_bytes(s[80..84].try_into().unwrap()) as u64;
    let entry_bytes = u32::from_le_bytes(s[84..88].try_into().unwrap()) as u64;
    let bytes = entries.saturating_mul(entry_bytes);
    if bytes <= 1 << 20 {
        let sectors = bytes.div_ceil(512);
        let mut array = vec![0u8; sectors as usize * 512];
        if disk.read_sectors(entries_lba, &mut array).is_ok() {
            let crc = vboot::crc32::crc32(&array[..bytes as usize]);
            s[88..92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let header_bytes = (u32::from_le_bytes(s[12..16].try_into().unwrap()) as usize).clamp(92, 512);
    s[16..20].fill(0);
    let crc = vboot::crc32::crc32(&s[..header_bytes]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    let _ = disk.write_sectors(lba, &s);
}

fuzz_target!(|data: &[u8]| {
    let mut disk = SparseDisk::parse(data, 512 << 40);
    if data.last().map_or(false, |b| b & 1 == 1) {
        fix_gpt(&mut disk, 1);
        let last = disk.sector_count().saturating_sub(1);
        fix_gpt(&mut disk, last);
    }
    disk.read_only = true;
    let sectors = disk.sector_count();
    heap::start(4 << 20);
    let result = read_partitions(&mut disk);
    assert!(heap::peak() <= (1 << 20) + (256 << 10), "partition table reading took {} bytes", heap::peak());
    heap::stop();
    let Ok(table) = result else { return };
    for p in &table.partitions {
        assert!(p.sectors > 0, "empty partition {} listed", p.number);
        let end = p.start_lba.checked_add(p.sectors).expect("partition end overflows");
        assert!(end <= sectors, "partition {} ends at {} past the disk ({} sectors)", p.number, end, sectors);
        if let PartitionKind::Mbr { .. } = p.kind {
            assert!(p.number >= 1);
        }
    }
    for (i, a) in table.partitions.iter().enumerate() {
        for b in table.partitions.iter().skip(i + 1) {
            assert_ne!(a.number, b.number, "two partitions numbered {}", a.number);
            let nested = (a.is_extended() && b.number >= 5) || (b.is_extended() && a.number >= 5);
            if !nested {
                let overlap = a.start_lba < b.start_lba + b.sectors && b.start_lba < a.start_lba + a.sectors;
                assert!(!overlap, "partitions {} and {} overlap", a.number, b.number);
            }
        }
    }
    // What stage2 does next with each partition: sniff its filesystem.
    for p in table.partitions.iter().take(8) {
        let _ = vboot::fs::volume::sniff_at(&mut disk, p.start_lba);
    }
});
