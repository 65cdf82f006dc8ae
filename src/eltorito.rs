//! ISO 9660 recognition and the El Torito boot catalog (docs/int13.md, "El Torito"): is a file a
//! CD image, and which boot image does a BIOS start from it.
//!
//! Everything works on 2048-byte CD blocks handed in by a reader closure, so stage2 (reading a
//! file on the host partition) and the host tests (reading an ISO made by xorriso) share it.

use alloc::format;
use alloc::string::String;
use core::fmt;

use crate::int13::ElToritoBoot;

/// Bytes in one CD block.
pub const CD_BLOCK_BYTES: usize = 2048;
/// The primary volume descriptor: the first block of the volume descriptor set.
pub const PRIMARY_VOLUME_DESCRIPTOR_LBA: u64 = 16;
/// The El Torito boot record volume descriptor.
pub const BOOT_RECORD_LBA: u64 = 17;
/// Where a BIOS loads a boot image whose catalog entry says segment 0.
pub const DEFAULT_LOAD_SEGMENT: u16 = 0x07C0;

/// How the BIOS presents the boot image (catalog media type, bits 3:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulation {
    /// The image is loaded as it is and the CD stays a 2048-byte drive (E0h).
    NoEmulation,
    /// The image is a floppy of this many bytes (1.2M, 1.44M or 2.88M) at drive 00h.
    Floppy { bytes: u64 },
    /// The image is a partitioned hard disk at drive 80h.
    HardDisk,
}

/// The Initial/Default entry of the boot catalog: what a BIOS boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootImage {
    pub emulation: Emulation,
    /// The catalog's media type byte, bits 3:0 (0 none, 1-3 floppy, 4 hard disk).
    pub media: u8,
    /// The segment as written in the catalog (0 means [`DEFAULT_LOAD_SEGMENT`]).
    pub catalog_load_segment: u16,
    /// 512-byte virtual sectors the BIOS loads.
    pub sector_count: u16,
    /// CD LBA of the image.
    pub load_rba: u32,
}

impl BootImage {
    /// The segment the image goes to (the catalog's, or 07C0h for 0).
    pub fn load_segment(&self) -> u16 {
        if self.catalog_load_segment == 0 {
            DEFAULT_LOAD_SEGMENT
        } else {
            self.catalog_load_segment
        }
    }

    /// The BIOS drive the booted image runs from: E0h for no emulation, else the emulated drive.
    pub fn boot_drive(&self, cd_drive: u8) -> u8 {
        match self.emulation {
            Emulation::NoEmulation => cd_drive,
            Emulation::Floppy { .. } => 0x00,
            Emulation::HardDisk => 0x80,
        }
    }

    /// The facts INT 13h AX=4B01h reports back.
    pub fn eltorito_boot(&self) -> ElToritoBoot {
        ElToritoBoot {
            media: self.media,
            load_rba: self.load_rba,
            load_segment: self.catalog_load_segment,
            load_sectors: self.sector_count,
        }
    }

    /// First 512-byte sector of the image inside the ISO file.
    pub fn first_file_sector(&self) -> u64 {
        self.load_rba as u64 * (CD_BLOCK_BYTES as u64 / 512)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElToritoError {
    /// The file is smaller than the volume descriptors of any ISO.
    TooSmall { bytes: u64 },
    /// Block 16 is not an ISO 9660 primary volume descriptor.
    NotIso,
    /// No El Torito boot record at block 17.
    NoBootRecord,
    /// The catalog LBA points outside the file.
    CatalogOutside { lba: u32 },
    /// The validation entry is broken (header, keys or checksum).
    BadValidationEntry { reason: &'static str },
    /// The default entry's boot indicator is not 88h.
    NotBootable { indicator: u8 },
    /// A media type the specification does not define.
    UnknownMedia { media: u8 },
    /// The default entry loads nothing, or lies outside the file.
    BadBootImage { reason: String },
    /// The reader failed.
    Read { lba: u64, detail: String },
}

impl fmt::Display for ElToritoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElToritoError::TooSmall { bytes } => {
                write!(f, "it is {} bytes, too small to be an ISO 9660 CD image", bytes)
            }
            ElToritoError::NotIso => write!(
                f,
                "it is not an ISO 9660 CD image (no CD001 volume descriptor at 2048-byte block 16)"
            ),
            ElToritoError::NoBootRecord => write!(
                f,
                "the CD image is not bootable: it has no El Torito boot record (make it with \
                 xorriso -b or mkisofs -b)"
            ),
            ElToritoError::CatalogOutside { lba } => {
                write!(f, "its El Torito boot catalog (block {}) lies past the end of the file", lba)
            }
            ElToritoError::BadValidationEntry { reason } => {
                write!(f, "its El Torito boot catalog is damaged: {}", reason)
            }
            ElToritoError::NotBootable { indicator } => write!(
                f,
                "the CD image is not bootable: its default boot entry is marked {:02X}h, not 88h (bootable)",
                indicator
            ),
            ElToritoError::UnknownMedia { media } => {
                write!(f, "its boot image has media type {}, which El Torito does not define", media)
            }
            ElToritoError::BadBootImage { reason } => write!(f, "its boot image {}", reason),
            ElToritoError::Read { lba, detail } => write!(f, "reading CD block {}: {}", lba, detail),
        }
    }
}

/// Reads one 2048-byte CD block.
pub type ReadBlock<'a> = dyn FnMut(u64, &mut [u8; CD_BLOCK_BYTES]) -> Result<(), String> + 'a;

fn read(reader: &mut ReadBlock<'_>, lba: u64, size_bytes: u64) -> Result<[u8; CD_BLOCK_BYTES], ElToritoError> {
    if (lba + 1) * CD_BLOCK_BYTES as u64 > size_bytes {
        return Err(ElToritoError::Read { lba, detail: String::from("past the end of the file") });
    }
    let mut b = [0u8; CD_BLOCK_BYTES];
    reader(lba, &mut b).map_err(|detail| ElToritoError::Read { lba, detail })?;
    Ok(b)
}

/// Is this an ISO 9660 image: a primary volume descriptor (type 1, "CD001", version 1) at block 16.
pub fn check_iso(reader: &mut ReadBlock<'_>, size_bytes: u64) -> Result<(), ElToritoError> {
    if size_bytes < (BOOT_RECORD_LBA + 1) * CD_BLOCK_BYTES as u64 {
        return Err(ElToritoError::TooSmall { bytes: size_bytes });
    }
    let pvd = read(reader, PRIMARY_VOLUME_DESCRIPTOR_LBA, size_bytes)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" || pvd[6] != 1 {
        return Err(ElToritoError::NotIso);
    }
    Ok(())
}

/// The catalog's LBA from the boot record volume descriptor (block 17).
pub fn parse_boot_record(block: &[u8; CD_BLOCK_BYTES]) -> Result<u32, ElToritoError> {
    let id = b"EL TORITO SPECIFICATION";
    if block[0] != 0 || &block[1..6] != b"CD001" || block[6] != 1 || &block[7..7 + id.len()] != id {
        return Err(ElToritoError::NoBootRecord);
    }
    Ok(u32::from_le_bytes([block[0x47], block[0x48], block[0x49], block[0x4A]]))
}

/// The validation entry and the Initial/Default entry (the first 64 bytes of the catalog).
pub fn parse_catalog(catalog: &[u8]) -> Result<BootImage, ElToritoError> {
    let v = catalog.get(..64).ok_or(ElToritoError::BadValidationEntry { reason: "the catalog is shorter than two entries" })?;
    if v[0] != 0x01 {
        return Err(ElToritoError::BadValidationEntry { reason: "the first entry is not a validation entry (header ID 01h)" });
    }
    if v[0x1E] != 0x55 || v[0x1F] != 0xAA {
        return Err(ElToritoError::BadValidationEntry { reason: "the validation entry has no 55AAh key" });
    }
    let sum = v[..32].chunks(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
    if sum != 0 {
        return Err(ElToritoError::BadValidationEntry { reason: "the validation entry's checksum is wrong" });
    }
    if v[1] != 0 {
        return Err(ElToritoError::BadValidationEntry {
            reason: "the default boot entry is not for x86 BIOS (platform ID is not 0)",
        });
    }
    let d = &v[32..64];
    if d[0] != 0x88 {
        return Err(ElToritoError::NotBootable { indicator: d[0] });
    }
    let media = d[1] & 0x0F;
    let emulation = match media {
        0 => Emulation::NoEmulation,
        1 => Emulation::Floppy { bytes: 1_228_800 },
        2 => Emulation::Floppy { bytes: 1_474_560 },
        3 => Emulation::Floppy { bytes: 2_949_120 },
        4 => Emulation::HardDisk,
        m => return Err(ElToritoError::UnknownMedia { media: m }),
    };
    Ok(BootImage {
        emulation,
        media,
        catalog_load_segment: u16::from_le_bytes([d[2], d[3]]),
        sector_count: u16::from_le_bytes([d[6], d[7]]),
        load_rba: u32::from_le_bytes([d[8], d[9], d[10], d[11]]),
    })
}

/// The boot image a BIOS would start from the ISO of `size_bytes` bytes, checked against the
/// file: the ISO must be one ([`check_iso`]), carry a boot record and a sane catalog, and the
/// image must lie inside the file and load at least one sector.
pub fn boot_image(reader: &mut ReadBlock<'_>, size_bytes: u64) -> Result<BootImage, ElToritoError> {
    check_iso(reader, size_bytes)?;
    let record = read(reader, BOOT_RECORD_LBA, size_bytes)?;
    let catalog_lba = parse_boot_record(&record)?;
    if (catalog_lba as u64 + 1) * CD_BLOCK_BYTES as u64 > size_bytes {
        return Err(ElToritoError::CatalogOutside { lba: catalog_lba });
    }
    let catalog = read(reader, catalog_lba as u64, size_bytes)?;
    let image = parse_catalog(&catalog)?;
    let start = image.load_rba as u64 * CD_BLOCK_BYTES as u64;
    let loaded_bytes = match image.emulation {
        // A BIOS loads the image's first sector; emulated media must be there whole.
        Emulation::Floppy { bytes } => bytes,
        Emulation::HardDisk => 512,
        Emulation::NoEmulation => {
            if image.sector_count == 0 {
                return Err(ElToritoError::BadBootImage { reason: String::from("loads 0 sectors") });
            }
            image.sector_count as u64 * 512
        }
    };
    if start + loaded_bytes > size_bytes {
        return Err(ElToritoError::BadBootImage {
            reason: format!(
                "(block {}, {} bytes) runs past the end of the {}-byte file",
                image.load_rba, loaded_bytes, size_bytes
            ),
        });
    }
    Ok(image)
}

/// For hard-disk emulation: how many 512-byte sectors the emulated disk has, from the image's
/// MBR (the end of its last partition), clipped to what the ISO holds after the image start.
pub fn hard_disk_image_sectors(mbr: &[u8], sectors_left_in_file: u64) -> Result<u64, ElToritoError> {
    if mbr.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return Err(ElToritoError::BadBootImage {
            reason: String::from("is a hard-disk image without an MBR signature (55AA)"),
        });
    }
    let sector: &[u8; 512] = mbr.get(..512).and_then(|s| s.try_into().ok()).ok_or_else(|| ElToritoError::BadBootImage {
        reason: String::from("is a hard-disk image shorter than one sector"),
    })?;
    let end = crate::part::mbr_slots(sector)
        .iter()
        .filter(|e| e.type_byte != 0 && e.sectors != 0)
        .map(|e| e.start_lba as u64 + e.sectors as u64)
        .max()
        .unwrap_or(0);
    if end == 0 {
        return Err(ElToritoError::BadBootImage {
            reason: String::from("is a hard-disk image whose MBR holds no partition"),
        });
    }
    Ok(end.min(sectors_left_in_file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A minimal ISO: PVD at 16, boot record at 17 naming the catalog at 18, catalog, image at 19.
    fn iso(media: u8, segment: u16, count: u16, indicator: u8, blocks: usize) -> Vec<u8> {
        let mut b = vec![0u8; blocks * CD_BLOCK_BYTES];
        let pvd = &mut b[16 * CD_BLOCK_BYTES..];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        let br = &mut b[17 * CD_BLOCK_BYTES..];
        br[1..6].copy_from_slice(b"CD001");
        br[6] = 1;
        br[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
        br[0x47..0x4B].copy_from_slice(&18u32.to_le_bytes());
        let cat = &mut b[18 * CD_BLOCK_BYTES..];
        cat[0] = 1;
        cat[0x1E] = 0x55;
        cat[0x1F] = 0xAA;
        let sum = cat[..32].chunks(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])));
        cat[0x1C..0x1E].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        cat[32] = indicator;
        cat[33] = media;
        cat[34..36].copy_from_slice(&segment.to_le_bytes());
        cat[38..40].copy_from_slice(&count.to_le_bytes());
        cat[40..44].copy_from_slice(&19u32.to_le_bytes());
        b
    }

    fn parse(bytes: &[u8]) -> Result<BootImage, ElToritoError> {
        let mut reader = |lba: u64, buf: &mut [u8; CD_BLOCK_BYTES]| -> Result<(), String> {
            let at = lba as usize * CD_BLOCK_BYTES;
            buf.copy_from_slice(bytes.get(at..at + CD_BLOCK_BYTES).ok_or("short")?);
            Ok(())
        };
        boot_image(&mut reader, bytes.len() as u64)
    }

    #[test]
    fn no_emulation_default_entry() {
        let img = parse(&iso(0, 0, 4, 0x88, 24)).unwrap();
        assert_eq!(img.emulation, Emulation::NoEmulation);
        assert_eq!((img.load_segment(), img.sector_count, img.load_rba), (0x07C0, 4, 19));
        assert_eq!(img.boot_drive(0xE0), 0xE0);
        assert_eq!(img.first_file_sector(), 76);
        let img = parse(&iso(0, 0x1000, 4, 0x88, 24)).unwrap();
        assert_eq!(img.load_segment(), 0x1000);
        assert_eq!(img.eltorito_boot().load_segment, 0x1000);
    }

    #[test]
    fn emulation_modes_and_their_drives() {
        let floppy = parse(&iso(2, 0, 1, 0x88, 19 + 720)).unwrap();
        assert_eq!(floppy.emulation, Emulation::Floppy { bytes: 1_474_560 });
        assert_eq!(floppy.boot_drive(0xE0), 0x00);
        // The 1.44M image must be inside the file.
        assert!(matches!(parse(&iso(2, 0, 1, 0x88, 24)), Err(ElToritoError::BadBootImage { .. })));
        let hd = parse(&iso(4, 0, 1, 0x88, 24)).unwrap();
        assert_eq!((hd.emulation, hd.boot_drive(0xE0)), (Emulation::HardDisk, 0x80));
        assert_eq!(parse(&iso(7, 0, 1, 0x88, 24)), Err(ElToritoError::UnknownMedia { media: 7 }));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        assert_eq!(parse(&vec![0u8; 1000]), Err(ElToritoError::TooSmall { bytes: 1000 }));
        assert_eq!(parse(&vec![0u8; 40 * CD_BLOCK_BYTES]), Err(ElToritoError::NotIso));
        let mut no_record = iso(0, 0, 4, 0x88, 24);
        no_record[17 * CD_BLOCK_BYTES + 7] = b'X';
        assert_eq!(parse(&no_record), Err(ElToritoError::NoBootRecord));
        assert_eq!(parse(&iso(0, 0, 4, 0x00, 24)), Err(ElToritoError::NotBootable { indicator: 0 }));
        assert!(matches!(parse(&iso(0, 0, 0, 0x88, 24)), Err(ElToritoError::BadBootImage { .. })));
        let mut bad_sum = iso(0, 0, 4, 0x88, 24);
        bad_sum[18 * CD_BLOCK_BYTES + 4] ^= 1;
        assert!(matches!(parse(&bad_sum), Err(ElToritoError::BadValidationEntry { .. })));
        let mut far_catalog = iso(0, 0, 4, 0x88, 24);
        far_catalog[17 * CD_BLOCK_BYTES + 0x47..17 * CD_BLOCK_BYTES + 0x4B].copy_from_slice(&500u32.to_le_bytes());
        assert_eq!(parse(&far_catalog), Err(ElToritoError::CatalogOutside { lba: 500 }));
        for e in [ElToritoError::NotIso, ElToritoError::NoBootRecord, ElToritoError::NotBootable { indicator: 0 }] {
            assert!(!alloc::format!("{}", e).is_empty());
        }
        assert!(alloc::format!("{}", ElToritoError::NoBootRecord).contains("not bootable"));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let good = iso(0, 0, 4, 0x88, 24);
        for cut in (0..good.len()).step_by(509) {
            let _ = parse(&good[..cut]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let at = 16 * CD_BLOCK_BYTES + (x as usize % (3 * CD_BLOCK_BYTES));
            b[at] = (x >> 24) as u8;
            let _ = parse(&b);
        }
    }

    #[test]
    fn hard_disk_image_size_from_its_mbr() {
        let mut mbr = [0u8; 512];
        assert!(hard_disk_image_sectors(&mbr, 1000).is_err());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(hard_disk_image_sectors(&mbr, 1000).is_err());
        mbr[0x1BE + 4] = 0x06;
        mbr[0x1BE + 8..0x1BE + 12].copy_from_slice(&63u32.to_le_bytes());
        mbr[0x1BE + 12..0x1BE + 16].copy_from_slice(&500u32.to_le_bytes());
        assert_eq!(hard_disk_image_sectors(&mbr, 1000), Ok(563));
        assert_eq!(hard_disk_image_sectors(&mbr, 400), Ok(400));
    }
}
