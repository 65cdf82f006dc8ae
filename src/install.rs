//! The on-disk contract between stage1, stage2 and `vboot-install`.
//!
//! ```text
//! sector 0      stage1: code 0x000..0x1A8, patch area 0x1A8..0x1B8 (StagePatch),
//!               then the untouched disk signature, partition table and 0x55AA
//! record_lba    InstallRecord (one sector)                      = stage2_lba - 2
//! record_lba+1  the original sector 0, saved at install time    = stage2_lba - 1
//! stage2_lba    stage2.bin (its first bytes are a Stage2Header)
//! ```
//! On an MBR disk `record_lba` is 1 (the post-MBR gap); on a GPT disk it is the first sector of
//! the BIOS boot partition (type EF02). A plain `dd` of the build artifacts uses the defaults in
//! [`StagePatch::DEFAULT`] and has no record: stage2 then picks the grub.cfg partition itself.

use crate::block::SECTOR_BYTES;
use crate::crc32::crc32;
use static_assertions::const_assert_eq;

/// Byte offset of [`StagePatch`] inside sector 0.
pub const STAGE1_PATCH_OFFSET: usize = 0x1A8;
/// Stage1 code must end before this offset (the disk signature at 0x1B8 is never code).
pub const STAGE1_CODE_LIMIT: usize = 0x1B8;
/// Magic at the end of the patch area, so tools can tell vboot's stage1 from another MBR.
pub const STAGE1_PATCH_MAGIC: [u8; 4] = *b"VBt1";

/// Where stage1 finds stage2. Little-endian, at [`STAGE1_PATCH_OFFSET`].
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagePatch {
    pub stage2_lba: u64,
    pub stage2_sectors: u16,
    /// Bit 0: skip the INT 13h extensions check and load with CHS (AH=02h).
    pub flags: u8,
    pub version: u8,
    pub magic: [u8; 4],
}
const_assert_eq!(core::mem::size_of::<StagePatch>(), 16);
const_assert_eq!(STAGE1_PATCH_OFFSET + 16, STAGE1_CODE_LIMIT);

pub const PATCH_FLAG_FORCE_CHS: u8 = 1;

impl StagePatch {
    /// What a plain `dd` of the build artifacts gets: stage2 at LBA 3 (after room for a record
    /// and a saved MBR), and the sector count of the stage2 it was built with.
    pub const DEFAULT_STAGE2_LBA: u64 = 3;

    pub fn read(sector0: &[u8; SECTOR_BYTES]) -> StagePatch {
        let p = &sector0[STAGE1_PATCH_OFFSET..STAGE1_CODE_LIMIT];
        StagePatch {
            stage2_lba: u64::from_le_bytes(p[0..8].try_into().unwrap_or([0; 8])),
            stage2_sectors: u16::from_le_bytes([p[8], p[9]]),
            flags: p[10],
            version: p[11],
            magic: [p[12], p[13], p[14], p[15]],
        }
    }

    pub fn write(&self, sector0: &mut [u8; SECTOR_BYTES]) {
        let p = &mut sector0[STAGE1_PATCH_OFFSET..STAGE1_CODE_LIMIT];
        p[0..8].copy_from_slice(&{ self.stage2_lba }.to_le_bytes());
        p[8..10].copy_from_slice(&{ self.stage2_sectors }.to_le_bytes());
        p[10] = self.flags;
        p[11] = self.version;
        p[12..16].copy_from_slice(&self.magic);
    }

    pub fn is_vboot(&self) -> bool {
        self.magic == STAGE1_PATCH_MAGIC
    }
}

/// Magic at byte 4 of stage2.bin; stage1 refuses to jump without it.
pub const STAGE2_MAGIC: [u8; 8] = *b"VBOOTST2";
/// Offset of the magic inside stage2.bin (after a 2-byte short jump and 2 bytes of padding).
pub const STAGE2_MAGIC_OFFSET: usize = 4;

/// The first 32 bytes of stage2.bin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Header {
    pub sectors: u32,
    pub version: [u8; 16],
}

impl Stage2Header {
    /// Parse the header of a stage2 image; `None` if it is not one.
    pub fn parse(image: &[u8]) -> Option<Stage2Header> {
        if image.len() < 32 || image[4..12] != STAGE2_MAGIC {
            return None;
        }
        let sectors = u32::from_le_bytes(image[12..16].try_into().ok()?);
        let mut version = [0u8; 16];
        version.copy_from_slice(&image[16..32]);
        Some(Stage2Header { sectors, version })
    }

    pub fn version_str(&self) -> &str {
        let end = self.version.iter().position(|&b| b == 0).unwrap_or(16);
        core::str::from_utf8(&self.version[..end]).unwrap_or("?")
    }
}

pub const RECORD_MAGIC: [u8; 8] = *b"VBOOTREC";
pub const RECORD_VERSION: u32 = 1;

/// The install record, one sector at `stage2_lba - 2`. Fields little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallRecord {
    pub stage2_lba: u64,
    pub stage2_sectors: u32,
    /// GRUB partition number (1-4 primary, 5+ logical, GPT entry index + 1) holding grub.cfg;
    /// 0 means "the active partition, else the first one with a filesystem vboot reads".
    pub config_partition: u32,
    /// Bit 0: the original sector 0 is saved at `stage2_lba - 1`.
    pub flags: u32,
    pub vboot_version: [u8; 16],
}

pub const RECORD_FLAG_SAVED_MBR: u32 = 1;

/// Why a record sector is not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    NoMagic,
    UnsupportedVersion(u32),
    BadChecksum { stored: u32, computed: u32 },
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::NoMagic => write!(f, "no vboot install record"),
            RecordError::UnsupportedVersion(v) => {
                write!(f, "install record version {} is newer than this vboot understands", v)
            }
            RecordError::BadChecksum { stored, computed } => write!(
                f,
                "install record is damaged (checksum {:#010x}, expected {:#010x}); reinstall vboot",
                stored, computed
            ),
        }
    }
}

impl InstallRecord {
    // Layout: magic 0..8, version 8..12, stage2_lba 12..20, stage2_sectors 20..24,
    // config_partition 24..28, flags 28..32, vboot_version 32..48, crc32 of 0..508 at 508..512.
    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        let mut s = [0u8; SECTOR_BYTES];
        s[0..8].copy_from_slice(&RECORD_MAGIC);
        s[8..12].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        s[12..20].copy_from_slice(&self.stage2_lba.to_le_bytes());
        s[20..24].copy_from_slice(&self.stage2_sectors.to_le_bytes());
        s[24..28].copy_from_slice(&self.config_partition.to_le_bytes());
        s[28..32].copy_from_slice(&self.flags.to_le_bytes());
        s[32..48].copy_from_slice(&self.vboot_version);
        let crc = crc32(&s[..508]);
        s[508..].copy_from_slice(&crc.to_le_bytes());
        s
    }

    pub fn from_sector(s: &[u8; SECTOR_BYTES]) -> Result<InstallRecord, RecordError> {
        if s[0..8] != RECORD_MAGIC {
            return Err(RecordError::NoMagic);
        }
        let le32 = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
        let version = le32(8);
        if version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let stored = le32(508);
        let computed = crc32(&s[..508]);
        if stored != computed {
            return Err(RecordError::BadChecksum { stored, computed });
        }
        let mut lba = [0u8; 8];
        lba.copy_from_slice(&s[12..20]);
        let mut vboot_version = [0u8; 16];
        vboot_version.copy_from_slice(&s[32..48]);
        Ok(InstallRecord {
            stage2_lba: u64::from_le_bytes(lba),
            stage2_sectors: le32(20),
            config_partition: le32(24),
            flags: le32(28),
            vboot_version,
        })
    }

    pub fn record_lba(&self) -> u64 {
        self.stage2_lba - 2
    }
    pub fn saved_mbr_lba(&self) -> u64 {
        self.stage2_lba - 1
    }
}

/// Sector 0 as it should be after putting `original` back while keeping what the user has changed
/// since: the disk signature, the partition table and the boot signature (0x1B8..0x200) of
/// `current` win; the boot code comes from `original`.
pub fn restore_boot_code(
    original: &[u8; SECTOR_BYTES],
    current: &[u8; SECTOR_BYTES],
) -> [u8; SECTOR_BYTES] {
    let mut out = *current;
    out[..STAGE1_CODE_LIMIT].copy_from_slice(&original[..STAGE1_CODE_LIMIT]);
    out
}

/// Sector 0 with vboot's stage1 code and patch area, keeping 0x1B8..0x200 of `current`.
pub fn merge_stage1(
    stage1: &[u8; SECTOR_BYTES],
    current: &[u8; SECTOR_BYTES],
    patch: &StagePatch,
) -> [u8; SECTOR_BYTES] {
    let mut out = *current;
    out[..STAGE1_CODE_LIMIT].copy_from_slice(&stage1[..STAGE1_CODE_LIMIT]);
    patch.write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_damage() {
        let r = InstallRecord {
            stage2_lba: 3,
            stage2_sectors: 200,
            config_partition: 1,
            flags: RECORD_FLAG_SAVED_MBR,
            vboot_version: *b"0.1.0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let mut s = r.to_sector();
        assert_eq!(InstallRecord::from_sector(&s), Ok(r));
        s[20] ^= 1;
        assert!(matches!(InstallRecord::from_sector(&s), Err(RecordError::BadChecksum { .. })));
        assert_eq!(InstallRecord::from_sector(&[0; 512]), Err(RecordError::NoMagic));
    }

    #[test]
    fn patch_round_trip_keeps_table() {
        let mut current = [0u8; 512];
        for (i, b) in current.iter_mut().enumerate() {
            *b = i as u8;
        }
        let stage1 = [0x90u8; 512];
        let patch = StagePatch {
            stage2_lba: 0x1234_5678_9A,
            stage2_sectors: 77,
            flags: PATCH_FLAG_FORCE_CHS,
            version: 1,
            magic: STAGE1_PATCH_MAGIC,
        };
        let merged = merge_stage1(&stage1, &current, &patch);
        assert_eq!(&merged[0x1B8..], &current[0x1B8..]);
        assert_eq!(StagePatch::read(&merged), patch);
        assert!(merged[..STAGE1_PATCH_OFFSET].iter().all(|&b| b == 0x90));
        let restored = restore_boot_code(&current, &merged);
        assert_eq!(restored, current);
    }
}
