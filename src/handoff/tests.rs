use super::*;
use alloc::string::ToString;
use alloc::vec;

const AT: u64 = 0x7F80_0000;

fn sample() -> Table {
    Table {
        boot_id: 0x1122_3344_5566_7788,
        boot_time_unix: 1_700_000_000,
        table_address: AT,
        reserved_base: 0x7F00_0000,
        reserved_length: 0x100_0000,
        safe_hook_address: 0x9F400 + 0x100,
        drives: vec![Drive {
            bios_number: 0x80,
            kind: DriveKind::HardDisk,
            write_mode: WriteMode::Normal,
            virtual_sectors: 131072,
            host: HostDisk { bios_drive: 0x80, scheme: HostScheme::Gpt, mbr_signature: 0, disk_guid: [7; 16], sectors: 1 << 20 },
            partition: HostPartition { number: 2, start_lba: 4096, sectors: 500_000, type_byte: 0, guid: [9; 16] },
            filesystem: Filesystem::Ext,
            overlay: None,
            parent_dir: Some("/parents".to_string()),
            layers: vec![
                Layer {
                    format: LayerFormat::Vhd,
                    size_bytes: 10 * 512 + 100,
                    path: "/images/child.vhd".to_string(),
                    extents: vec![Extent { file_sector: 0, lba: 5000, sectors: 4 }, Extent { file_sector: 4, lba: 9000, sectors: 7 }],
                },
                Layer {
                    format: LayerFormat::Vhd,
                    size_bytes: 2048,
                    path: "/images/päth with spaces.vhd".to_string(),
                    extents: vec![Extent { file_sector: 0, lba: 20000, sectors: 4 }],
                },
            ],
        }],
    }
}

/// The offset of the first extent record in `sample()`'s bytes.
fn first_extent_at(b: &[u8]) -> usize {
    let first_layer = get_u32(b, HEADER_BYTES + d::FIRST_LAYER) as usize;
    get_u32(b, first_layer + l::EXTENTS_OFFSET) as usize
}

/// Re-seal a table after a test changed a field, so the test reaches the check it aims at.
fn reseal(b: &mut [u8]) {
    let body = crc32(&b[HEADER_BYTES..]);
    put_u32(b, h::BODY_CRC, body);
    put_u32(b, HEADER_CRC_AT, 0);
    let header = crc32(&b[..HEADER_BYTES]);
    put_u32(b, HEADER_CRC_AT, header);
}

/// A version-1 table (as a loader before the throwaway child writes) still reads; a version-2
/// table carries the throwaway write mode.
#[test]
fn version_1_tables_still_read_and_version_2_says_throwaway() {
    let mut b = sample().to_bytes();
    put_u16(&mut b, h::VERSION, 1);
    reseal(&mut b);
    assert_eq!(Table::parse(&b, AT).unwrap(), sample());
    let mut t = sample();
    t.drives[0].write_mode = WriteMode::Throwaway;
    let b = t.to_bytes();
    assert_eq!(get_u16(&b, h::VERSION), 2);
    assert_eq!(Table::parse(&b, AT).unwrap().drives[0].write_mode, WriteMode::Throwaway);
}

#[test]
fn round_trip() {
    let t = sample();
    let b = t.to_bytes();
    assert_eq!(b.len() % 16, 0);
    assert_eq!(&b[..8], b"VBHANDOF");
    assert_eq!(Table::parse(&b, AT).unwrap(), t);
    // Extra bytes after the table are ignored.
    let mut longer = b.clone();
    longer.extend_from_slice(&[0xAA; 100]);
    assert_eq!(Table::parse(&longer, AT).unwrap(), t);
    // Immutable, with an overlay, and an MBR host.
    let mut t2 = sample();
    t2.drives[0].write_mode = WriteMode::Immutable;
    t2.drives[0].overlay = Some((0x7000_0000, 64 << 20));
    t2.drives[0].host = HostDisk { bios_drive: 0x80, scheme: HostScheme::Mbr, mbr_signature: 0xDEAD_BEEF, disk_guid: [0; 16], sectors: 1 << 20 };
    assert_eq!(Table::parse(&t2.to_bytes(), AT).unwrap(), t2);
}

#[test]
fn length_does_not_depend_on_addresses() {
    let mut t = sample();
    let n = t.to_bytes().len();
    t.table_address = 0x1234_0000;
    t.reserved_base = 0x1000_0000;
    t.boot_id = 1;
    assert_eq!(t.to_bytes().len(), n);
}

#[test]
fn layout_offsets_match_the_document() {
    let b = sample().to_bytes();
    assert_eq!(get_u16(&b, 8), 2, "version at 8");
    assert_eq!(get_u16(&b, 10), 96, "header size at 10");
    assert_eq!(get_u32(&b, 12) as usize, b.len(), "length at 12");
    assert_eq!(get_u64(&b, 40), AT, "table address at 40");
    assert_eq!(get_u16(&b, 68), 1, "drive count at 68");
    let r = 96;
    assert_eq!(b[r], 0x80);
    assert_eq!(b[r + 4], 2, "GPT host");
    assert_eq!(get_u64(&b, r + 48), 4096, "partition start at drive+48");
    assert_eq!(first_extent_at(&b), 96 + 128 + 2 * 32, "extents right after the layer records");
}

fn refused(b: &[u8]) -> String {
    Table::parse(b, AT).unwrap_err().to_string()
}

#[test]
fn every_corruption_is_refused_with_its_message() {
    let good = sample().to_bytes();

    let mut b = good.clone();
    b[0] = b'X';
    assert!(refused(&b).contains("no signature"));

    let mut b = good.clone();
    put_u16(&mut b, h::VERSION, 3);
    assert!(refused(&b).contains("version 3"));
    let mut b = good.clone();
    put_u16(&mut b, h::VERSION, 0);
    assert!(refused(&b).contains("version 0"));

    assert!(refused(&good[..good.len() - 16]).contains("only"), "truncated read");
    assert!(refused(&good[..40]).contains("header alone"));

    let mut b = good.clone();
    put_u32(&mut b, h::LENGTH, 20);
    assert!(refused(&b).contains("bad length"));
    let mut b = good.clone();
    put_u32(&mut b, h::LENGTH, good.len() as u32 + 1);
    assert!(refused(&b).contains("multiple of 16"));
    let mut b = good.clone();
    put_u32(&mut b, h::LENGTH, MAX_TABLE_BYTES + 16);
    assert!(refused(&b).contains("bad length"));

    // A flipped header byte, with the body intact.
    let mut b = good.clone();
    b[h::BOOT_TIME] ^= 1;
    assert!(refused(&b).contains("header checksum mismatch"));

    // A flipped extent byte: the body CRC.
    let mut b = good.clone();
    let e = first_extent_at(&b);
    b[e + 8] ^= 0x40;
    assert!(refused(&b).contains("CRC-32 over the drives, extents and paths"), "{}", refused(&b));
    // A flipped path byte.
    let mut b = good.clone();
    let n = b.len();
    b[n - 20] ^= 0x01;
    assert!(refused(&b).contains("CRC-32"));
    let mut b = good.clone();
    let n = b.len();
    b[n - 30] ^= 0x01;
    assert!(refused(&b).contains("CRC-32"));

    // Found somewhere else than it says.
    assert!(Table::parse(&good, AT + 4096).unwrap_err().to_string().contains("stale"));
}

#[test]
fn bad_fields_are_refused_even_when_checksums_match() {
    let good = sample().to_bytes();
    let check = |f: &dyn Fn(&mut Vec<u8>), want: &str| {
        let mut b = good.clone();
        f(&mut b);
        reseal(&mut b);
        let msg = refused(&b);
        assert!(msg.contains(want), "wanted {:?} in {:?}", want, msg);
    };
    let r = HEADER_BYTES;
    check(&|b| put_u16(b, h::DRIVE_COUNT, 0), "0 drives");
    check(&|b| put_u16(b, h::DRIVE_COUNT, 40), "40 drives");
    check(&|b| put_u16(b, h::DRIVE_COUNT, 16), "the drive records");
    check(&|b| put_u16(b, h::LAYER_BYTES, 40), "record sizes");
    check(&|b| b[r + d::KIND] = 9, "unknown drive kind 9");
    check(&|b| b[r + d::WRITE_MODE] = 7, "unknown write mode 7");
    check(
        &|b| {
            put_u16(b, h::VERSION, 1);
            b[r + d::WRITE_MODE] = WriteMode::Throwaway as u8
        },
        "write mode 3 is version 2's",
    );
    check(&|b| b[r + d::FILESYSTEM] = 99, "unknown filesystem 99");
    check(&|b| b[r + d::SCHEME] = 0, "unknown host partitioning scheme 0");
    check(&|b| put_u32(b, r + d::LAYER_COUNT, 0), "0 layers");
    check(&|b| put_u32(b, r + d::LAYER_COUNT, 3), "outside the table");
    check(&|b| put_u32(b, r + d::FIRST_LAYER, 0xFFFF_FFF0), "outside the table");
    check(&|b| put_u32(b, r + d::FIRST_LAYER, 8), "outside the table");
    check(&|b| put_u64(b, r + d::HOST_SECTORS, 1000), "ends past the host disk");
    check(&|b| put_u64(b, h::RESERVED_LENGTH, 16), "outside the reserved range");
    let layer = get_u32(&good, r + d::FIRST_LAYER) as usize;
    check(&|b| b[layer + l::FORMAT] = 5, "unknown layer format 5");
    check(&|b| put_u32(b, layer + l::PATH_BYTES, 1 << 30), "path");
    check(&|b| put_u32(b, layer + l::EXTENT_COUNT, 0x0FFF_FFFF), "extents");
    check(&|b| put_u32(b, layer + l::EXTENT_COUNT, 1), "its extents cover 4 sectors");
    check(&|b| put_u64(b, layer + l::SIZE_BYTES, 1 << 40), "its extents cover");
    let e = first_extent_at(&good);
    check(&|b| put_u64(b, e + 16, 0), "is empty, out of order");
    check(&|b| put_u64(b, e + 24, 0), "is empty, out of order");
    check(&|b| put_u64(b, e + 8, 100), "outside partition 2");
    check(&|b| put_u64(b, e + 8, u64::MAX - 1), "outside partition 2");
    // Issue 14: file_sector + sectors overflowed (a panic in vboot-attach).
    let last = e + EXTENT_BYTES;
    check(&|b| put_u64(b, last, u64::MAX - 2), "/images/child.vhd extent 1 (7 sectors of file sector 18446744073709551613) ends past sector 2^64");
    let path_at = get_u32(&good, layer + l::PATH_OFFSET) as usize;
    check(&|b| b[path_at] = 0xFF, "not UTF-8");
    check(&|b| put_u32(b, r + d::PARENT_DIR_BYTES, 5000), "parent_dir");
    let pd_at = get_u32(&good, r + d::PARENT_DIR_OFFSET) as usize;
    check(&|b| b[pd_at + 1] = 0xC3, "parent_dir is not UTF-8");
}

#[test]
fn corrupt_input_never_panics() {
    let good = sample().to_bytes();
    let mut seed = 12345u64;
    for i in 0..3000 {
        let mut b = good.clone();
        let mut r = [0u8; 8];
        crate::image::random_bytes(&mut seed, &mut r);
        let at = (u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize) % b.len();
        b[at] = r[4];
        if i % 2 == 0 {
            reseal(&mut b);
        }
        let _ = Table::parse(&b, AT);
        let n = (r[5] as usize * 7) % b.len();
        let _ = Table::parse(&b[..n], AT);
    }
}

/// Physical memory for `locate`: IVT, a hook chain, the table.
struct Mem {
    bytes: Vec<(u64, Vec<u8>)>,
}
impl Mem {
    fn read(&self, at: u64, buf: &mut [u8]) -> Result<(), String> {
        for (base, b) in &self.bytes {
            if at >= *base && at + buf.len() as u64 <= base + b.len() as u64 {
                let o = (at - base) as usize;
                buf.copy_from_slice(&b[o..o + buf.len()]);
                return Ok(());
            }
        }
        Err(format!("nothing at {:#x}", at))
    }
}

fn hook_bytes(vendor: &[u8; 8], prev: u32, table: u32, boot_id: u64) -> Vec<u8> {
    let mut h = vec![0xEB, 0x25, 0x90];
    h.extend_from_slice(b"$INT13SF");
    h.extend_from_slice(vendor);
    h.resize(HOOK_BYTES, 0);
    SafeHook::fill(&mut h, prev, table, boot_id);
    h
}

fn memory(ivt13: u32, hooks: Vec<(u64, Vec<u8>)>, table: Vec<u8>) -> Mem {
    let mut ivt = vec![0u8; 0x400];
    ivt[0x4C..0x50].copy_from_slice(&ivt13.to_le_bytes());
    let mut bytes = vec![(0, ivt), (AT, table)];
    bytes.extend(hooks);
    Mem { bytes }
}

const RESERVED: &[(u64, u64)] = &[(0x9F000, 0x61000), (0x7F00_0000, 0x100_0000)];

#[test]
fn locate_follows_the_hook_chain() {
    let t = sample();
    // Another safe hook (say a later memdisk) in front of ours.
    let ours = hook_bytes(&HOOK_VENDOR, 0xF000_E3FE, AT as u32, t.boot_id);
    let theirs = hook_bytes(b"MEMDISK ", 0x9F40_0000, 0, 0);
    let m = memory(0x9E00_0000, vec![(0x9F400, ours), (0x9E000, theirs)], t.to_bytes());
    let found = locate(&mut |a, b| m.read(a, b), RESERVED).unwrap();
    assert_eq!(found, t);
}

#[test]
fn locate_refusals() {
    let t = sample();
    let ours = || hook_bytes(&HOOK_VENDOR, 0xF000_E3FE, AT as u32, t.boot_id);
    let err = |m: Mem, reserved: &[(u64, u64)]| locate(&mut |a, b| m.read(a, b), reserved).unwrap_err().to_string();

    // INT 13h goes straight to the BIOS: not a vboot boot.
    let m = memory(0xF000_E3FE, vec![(0xFE3FE - 3, vec![0; 64])], t.to_bytes());
    let e = err(m, RESERVED);
    assert!(e.contains("this boot did not go through vboot"), "{}", e);

    // A chain of foreign safe hooks that ends at the BIOS.
    let theirs = hook_bytes(b"MEMDISK ", 0xF000_E3FE, 0, 0);
    let m = memory(0x9E00_0000, vec![(0x9E000, theirs)], t.to_bytes());
    assert!(err(m, RESERVED).contains("after 1 safe hook"));

    // A hook loop.
    let a = hook_bytes(b"OTHER   ", 0x9E10_0000, 0, 0);
    let b = hook_bytes(b"OTHER   ", 0x9E00_0000, 0, 0);
    let m = memory(0x9E00_0000, vec![(0x9E000, a), (0x9E100, b)], t.to_bytes());
    assert!(err(m, RESERVED).contains("no vboot hook"));

    // The table from an earlier boot: another boot ID than the hook's.
    let mut old = t.clone();
    old.boot_id = 42;
    let m = memory(0x9F40_0000, vec![(0x9F400, ours())], old.to_bytes());
    let e = err(m, RESERVED);
    assert!(e.contains("stale") && e.contains("boot ID"), "{}", e);

    // The table not in reserved memory.
    let m = memory(0x9F40_0000, vec![(0x9F400, ours())], t.to_bytes());
    assert!(err(m, &[(0x9F000, 0x61000)]).contains("not in memory the firmware reported reserved"));

    // Damaged.
    let mut bad = t.to_bytes();
    let n = bad.len();
    bad[n - 40] ^= 0xFF;
    let m = memory(0x9F40_0000, vec![(0x9F400, ours())], bad);
    assert!(err(m, RESERVED).contains("damaged"));

    // No signature where the hook points.
    let m = memory(0x9F40_0000, vec![(0x9F400, ours())], vec![0; 4096]);
    assert!(err(m, RESERVED).contains("no signature"));
}

#[test]
fn rtc_to_unix() {
    assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0), Some(0));
    assert_eq!(unix_seconds(2000, 3, 1, 0, 0, 0), Some(951_868_800));
    assert_eq!(unix_seconds(2023, 11, 14, 22, 13, 20), Some(1_700_000_000));
    assert_eq!(unix_seconds(2026, 2, 30, 0, 0, 0).is_some(), true, "the RTC is trusted for the day");
    assert_eq!(unix_seconds(1969, 12, 31, 0, 0, 0), None);
    assert_eq!(unix_seconds(2020, 13, 1, 0, 0, 0), None);
}

#[test]
fn boot_time_check() {
    let mut t = sample();
    let kernel = t.boot_time_unix + 30;
    assert!(check_boot_time(&t, kernel).is_ok());
    assert!(check_boot_time(&t, t.boot_time_unix - 3600).is_ok(), "an RTC in local time, ahead of UTC");
    let e = check_boot_time(&t, t.boot_time_unix - 2 * 86400).unwrap_err().to_string();
    assert!(e.contains("stale") && e.contains("more than a day after"), "{}", e);
    t.boot_time_unix = 0;
    assert!(check_boot_time(&t, 1).is_ok(), "no time recorded");
}
