//! Partition discovery over real and damaged tables.
use super::*;
use crate::block::MemDisk;
use crate::crc32;

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

#[test]
fn the_boot_signature_is_55aa_at_510() {
    let mut s = [0u8; 512];
    assert!(!has_boot_signature(&s));
    s[510] = 0x55;
    s[511] = 0xAA;
    assert!(has_boot_signature(&s));
    s[511] = 0x55;
    assert!(!has_boot_signature(&s));
    assert!(!has_boot_signature(&s[..511]), "a short slice has none");
}
