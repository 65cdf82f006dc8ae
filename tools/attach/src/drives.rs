//! Which drive of the hand-off table to serve, and how: `--drive` by BIOS number or kind, the
//! default (the boot hard disk 0x80, else the table's first drive), the list a refusal shows,
//! and the media that are read-only whatever the table's write mode says (a CD, and the boot
//! image of a CD in floppy or hard-disk emulation, which is a slice of the ISO).

use vboot::handoff::{Drive, DriveKind, WriteMode};

/// The CD's block size: a CD is served as whole 2048-byte blocks.
pub const CD_BLOCK_BYTES: u64 = 2048;

/// What `--drive` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveSpec {
    Number(u8),
    Kind(DriveKind),
}

impl DriveSpec {
    /// `0x80`, `128`, `0xE0`, `0x00`, or `harddisk`, `cdrom`, `floppy`.
    pub fn parse(s: &str) -> Result<DriveSpec, String> {
        match s.to_ascii_lowercase().as_str() {
            "harddisk" => return Ok(DriveSpec::Kind(DriveKind::HardDisk)),
            "cdrom" => return Ok(DriveSpec::Kind(DriveKind::Cdrom)),
            "floppy" => return Ok(DriveSpec::Kind(DriveKind::Floppy)),
            _ => {}
        }
        let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        };
        n.filter(|&n| n <= 0xFF)
            .map(|n| DriveSpec::Number(n as u8))
            .ok_or_else(|| "not a BIOS drive number (0x80, 0xE0, 0x00 ...) or a kind (harddisk, cdrom, floppy)".to_string())
    }
}

/// The hard disk vboot-attach serves when `--drive` is not given.
pub const DEFAULT_DRIVE: u8 = 0x80;

/// The drive `spec` names: a number names that drive; a kind the first of that kind in BIOS
/// order (0x80 before 0x81); none the boot hard disk 0x80, else the table's first drive.
pub fn select(drives: &[Drive], spec: Option<DriveSpec>) -> Result<&Drive, String> {
    let found = match spec {
        None => drives.iter().find(|d| d.bios_number == DEFAULT_DRIVE).or(drives.first()),
        Some(DriveSpec::Number(n)) => drives.iter().find(|d| d.bios_number == n),
        Some(DriveSpec::Kind(k)) => drives.iter().filter(|d| d.kind == k).min_by_key(|d| d.bios_number),
    };
    found.ok_or_else(|| {
        let wanted = match spec {
            None => String::from("drive"),
            Some(DriveSpec::Number(n)) => format!("drive {:#04x}", n),
            Some(DriveSpec::Kind(k)) => format!("{} drive", k.as_str()),
        };
        format!("the hand-off table has no {} (it has {})", wanted, list(drives))
    })
}

/// The table's drives in one line, for a refusal: `0x80 hard disk /vm/a.vhd, 0xe0 CD-ROM /x.iso`.
pub fn list(drives: &[Drive]) -> String {
    let each: Vec<String> = drives.iter().map(|d| format!("{:#04x} {} {}", d.bios_number, d.kind.as_str(), file(d))).collect();
    if each.is_empty() {
        String::from("no drive")
    } else {
        each.join(", ")
    }
}

/// The drive's file: the leaf of its chain.
pub fn file(d: &Drive) -> &str {
    d.layers.first().map(|l| l.path.as_str()).unwrap_or("-")
}

/// Whether `d` lies inside a CD of the table: the boot image of a CD booted in floppy or
/// hard-disk emulation (stage2 records it as a slice of the ISO's extents).
fn inside_a_cd(drives: &[Drive], d: &Drive) -> bool {
    if d.kind == DriveKind::Cdrom || d.layers.len() != 1 || d.layers[0].extents.is_empty() {
        return false;
    }
    // The CDs' host sectors as merged ranges (the index of invariant 1): a binary search per
    // extent, whatever the number of fragments, and an extent across two adjacent fragments counts.
    let cd_sectors = vboot::fs::ExtentList {
        extents: drives.iter().filter(|c| c.kind == DriveKind::Cdrom).flat_map(|c| c.layers.iter().flat_map(|l| l.extents.iter().copied())).collect(),
    }
    .lba_index();
    d.layers[0].extents.iter().all(|e| cd_sectors.contains(e.lba, e.sectors))
}

/// Why `d` is served read-only whatever `--read-only` says, if it is.
pub fn read_only_medium(drives: &[Drive], d: &Drive) -> Option<&'static str> {
    if d.kind == DriveKind::Cdrom {
        Some("a CD")
    } else if inside_a_cd(drives, d) {
        Some("the boot image of a CD")
    } else {
        None
    }
}

/// What vboot-attach does with writes to `d` (for `--info`).
pub fn serve_mode(drives: &[Drive], d: &Drive) -> String {
    match read_only_medium(drives, d) {
        Some(why) => format!("read-only ({})", why),
        None if d.write_mode == WriteMode::Immutable => String::from("read-write into a RAM overlay"),
        None if d.write_mode == WriteMode::Throwaway => String::from("read-write into the throwaway child"),
        None => String::from("read-write"),
    }
}

/// The bytes the NBD device has: a CD's whole 2048-byte blocks, else the disk the guest saw.
pub fn served_bytes(d: &Drive) -> u64 {
    match d.kind {
        DriveKind::Cdrom => d.layers.first().map_or(0, |l| l.size_bytes) / CD_BLOCK_BYTES * CD_BLOCK_BYTES,
        _ => d.virtual_sectors * 512,
    }
}

/// `1.41 MiB`, `120 MiB`, `3.0 GiB` (integer arithmetic: float formatting would grow the binary).
pub fn human(bytes: u64) -> String {
    // `bytes` in units of `unit / scale`, rounded.
    let scaled = |unit: u64, scale: u128| ((bytes as u128 * scale + unit as u128 / 2) / unit as u128) as u64;
    if bytes >= 1 << 30 {
        let t = scaled(1 << 30, 10);
        format!("{}.{} GiB", t / 10, t % 10)
    } else if bytes >= 10 << 20 {
        format!("{} MiB", scaled(1 << 20, 1))
    } else {
        let h = scaled(1 << 20, 100);
        format!("{}.{:02} MiB", h / 100, h % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vboot::fs::Extent;
    use vboot::handoff::{Filesystem, HostDisk, HostPartition, HostScheme, Layer, LayerFormat};

    fn drive(n: u8, kind: DriveKind, path: &str, size: u64, lba: u64) -> Drive {
        Drive {
            bios_number: n,
            kind,
            write_mode: WriteMode::Normal,
            virtual_sectors: size / 512,
            host: HostDisk { bios_drive: 0x80, scheme: HostScheme::Mbr, mbr_signature: 1, disk_guid: [0; 16], sectors: 1 << 20 },
            partition: HostPartition { number: 1, start_lba: 2048, sectors: 1 << 19, type_byte: 0x0C, guid: [0; 16] },
            filesystem: Filesystem::Fat,
            overlay: None,
            parent_dir: None,
            layers: vec![Layer { format: LayerFormat::Raw, size_bytes: size, path: path.into(), extents: vec![Extent { file_sector: 0, lba, sectors: size.div_ceil(512) }] }],
        }
    }

    /// The table of `vboot harddisk=/vm/d.vhd cdrom=/iso/x.iso floppy=/fd/a.img`: stage2 lists
    /// the CD first, then the floppy, then the hard disk.
    fn three() -> Vec<Drive> {
        vec![
            drive(0xE0, DriveKind::Cdrom, "/iso/x.iso", 10 * 2048 + 512, 10000),
            drive(0x00, DriveKind::Floppy, "/fd/a.img", 1_474_560, 20000),
            drive(0x80, DriveKind::HardDisk, "/vm/d.vhd", 8 << 20, 30000),
        ]
    }

    fn spec(s: &str) -> Option<DriveSpec> {
        Some(DriveSpec::parse(s).unwrap())
    }

    #[test]
    fn drive_by_number_or_kind() {
        let t = three();
        assert_eq!(select(&t, None).unwrap().bios_number, 0x80, "the default is the boot hard disk");
        assert_eq!(select(&t, spec("0x80")).unwrap().bios_number, 0x80);
        assert_eq!(select(&t, spec("128")).unwrap().bios_number, 0x80);
        assert_eq!(select(&t, spec("0xE0")).unwrap().kind, DriveKind::Cdrom);
        assert_eq!(select(&t, spec("0x00")).unwrap().kind, DriveKind::Floppy);
        assert_eq!(select(&t, spec("0")).unwrap().kind, DriveKind::Floppy);
        assert_eq!(select(&t, spec("cdrom")).unwrap().bios_number, 0xE0);
        assert_eq!(select(&t, spec("FLOPPY")).unwrap().bios_number, 0x00);
        assert_eq!(select(&t, spec("harddisk")).unwrap().bios_number, 0x80);
        // Without a hard disk the default is the first drive: a live CD finds its medium.
        assert_eq!(select(&t[..2], None).unwrap().bios_number, 0xE0);
        // Of two floppies, `floppy` is A:.
        let mut two = t.clone();
        two.insert(0, drive(0x01, DriveKind::Floppy, "/fd/b.img", 1_474_560, 40000));
        assert_eq!(select(&two, spec("floppy")).unwrap().bios_number, 0x00);
        assert_eq!(select(&two, spec("0x01")).unwrap().layers[0].path, "/fd/b.img");
    }

    #[test]
    fn a_drive_the_table_lacks_is_refused_with_the_list() {
        let t = three();
        let list = "(it has 0xe0 CD-ROM /iso/x.iso, 0x00 floppy /fd/a.img, 0x80 hard disk /vm/d.vhd)";
        assert_eq!(select(&t, spec("0x81")).unwrap_err(), format!("the hand-off table has no drive 0x81 {}", list));
        let e = select(&t[1..], spec("cdrom")).unwrap_err();
        assert_eq!(e, "the hand-off table has no CD-ROM drive (it has 0x00 floppy /fd/a.img, 0x80 hard disk /vm/d.vhd)");
        assert!(select(&t[..1], spec("harddisk")).unwrap_err().contains("no hard disk drive (it has 0xe0 CD-ROM /iso/x.iso)"));
        for bad in ["0x100", "cd", "", "hd0"] {
            assert!(DriveSpec::parse(bad).is_err(), "{}", bad);
        }
    }

    #[test]
    fn cds_and_their_boot_images_are_read_only() {
        let mut t = three();
        // A CD booted in floppy emulation: its image is a slice of the ISO, at 00h.
        t[1] = drive(0x00, DriveKind::Floppy, "/iso/x.iso (floppy emulation)", 1_474_560, 10004);
        t[1].layers[0].extents[0].sectors = 4;
        assert_eq!(read_only_medium(&t, &t[0]), Some("a CD"));
        assert_eq!(read_only_medium(&t, &t[1]), Some("the boot image of a CD"));
        assert_eq!(read_only_medium(&t, &t[2]), None);
        // An ISO in thousands of fragments whose boot image spans two of them that happen to
        // lie back to back on the disk: still inside the CD.
        let cd_lba = t[0].layers[0].extents[0].lba;
        t[0].layers[0].extents = (0..3000u64).map(|i| Extent { file_sector: i * 4, lba: cd_lba + if i < 2 { i * 4 } else { i * 8 }, sectors: 4 }).collect();
        t[1].layers[0].extents = vec![Extent { file_sector: 0, lba: cd_lba + 2, sectors: 4 }];
        assert_eq!(read_only_medium(&t, &t[1]), Some("the boot image of a CD"));
        t[1].layers[0].extents[0].lba = cd_lba + 14;
        assert_eq!(read_only_medium(&t, &t[1]), None, "a gap between two fragments is not the CD's");
        let floppy = three();
        assert_eq!(read_only_medium(&floppy, &floppy[1]), None, "a floppy image is writable");
        assert_eq!(serve_mode(&floppy, &floppy[1]), "read-write");
        assert_eq!(serve_mode(&floppy, &floppy[0]), "read-only (a CD)");
        // The CD is its whole 2048-byte blocks; the rest is the disk the guest saw.
        assert_eq!(served_bytes(&floppy[0]), 10 * 2048);
        assert_eq!(served_bytes(&floppy[1]), 1_474_560);
        assert_eq!(human(1_474_560), "1.41 MiB");
        assert_eq!(human(16_330_752), "16 MiB");
        assert_eq!(human(120 << 20), "120 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(human((3 << 30) - (1 << 24)), "3.0 GiB");
    }
}
