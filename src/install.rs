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

/// Where stage1 loads stage2's low part, and the most of it that fits below 0x10000 (real mode
/// runs it with CS = 0; docs/boot-layout.md).
pub const STAGE2_LOAD_ADDRESS: u32 = 0x8000;
pub const STAGE2_LOW_MAX_SECTORS: u32 = (0x10000 - STAGE2_LOAD_ADDRESS) / SECTOR_BYTES as u32;

/// The first 36 bytes of stage2.bin (stage2/src/entry.s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Header {
    /// The whole image: what `vboot-install` writes.
    pub sectors: u32,
    pub version: [u8; 16],
    /// The low part at the start, which stage1 loads at 0x8000; it loads the rest above 1 MiB.
    pub load_sectors: u32,
}

impl Stage2Header {
    /// Parse the header of a stage2 image; `None` if it is not one, or if its counts are not
    /// ones stage1 can load (a low part of 1 to [`STAGE2_LOW_MAX_SECTORS`], inside the image).
    pub fn parse(image: &[u8]) -> Option<Stage2Header> {
        if image.len() < 36 || image[4..12] != STAGE2_MAGIC {
            return None;
        }
        let sectors = u32::from_le_bytes(image[12..16].try_into().ok()?);
        let mut version = [0u8; 16];
        version.copy_from_slice(&image[16..32]);
        let load_sectors = u32::from_le_bytes(image[32..36].try_into().ok()?);
        if load_sectors == 0 || load_sectors > STAGE2_LOW_MAX_SECTORS || load_sectors > sectors {
            return None;
        }
        Some(Stage2Header { sectors, version, load_sectors })
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
    /// Sectors of the engine blob right after stage2 (0: none).
    pub engine_sectors: u32,
    /// CRC-32 of stage2's sectors as installed (0: not recorded, by a vboot-install before it was
    /// added). `uninstall` clears the sectors only while they still hold that stage2.
    pub stage2_crc32: u32,
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
    // config_partition 24..28, flags 28..32, vboot_version 32..48, engine_sectors 48..52,
    // stage2_crc32 52..56 (zero in older records), crc32 of 0..508 at 508..512.
    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        let mut s = [0u8; SECTOR_BYTES];
        s[0..8].copy_from_slice(&RECORD_MAGIC);
        s[8..12].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        s[12..20].copy_from_slice(&self.stage2_lba.to_le_bytes());
        s[20..24].copy_from_slice(&self.stage2_sectors.to_le_bytes());
        s[24..28].copy_from_slice(&self.config_partition.to_le_bytes());
        s[28..32].copy_from_slice(&self.flags.to_le_bytes());
        s[32..48].copy_from_slice(&self.vboot_version);
        s[48..52].copy_from_slice(&self.engine_sectors.to_le_bytes());
        s[52..56].copy_from_slice(&self.stage2_crc32.to_le_bytes());
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
            engine_sectors: le32(48),
            stage2_crc32: le32(52),
        })
    }

    pub fn record_lba(&self) -> u64 {
        self.stage2_lba - 2
    }
    pub fn saved_mbr_lba(&self) -> u64 {
        self.stage2_lba - 1
    }
    /// Sectors from the record to the end of the engine: what an install wrote after sector 0.
    pub fn area_sectors(&self) -> u64 {
        2 + self.stage2_sectors as u64 + self.engine_sectors as u64
    }
}

/// Magic of the resident engine's blob, which the installer writes right after stage2.
pub const ENGINE_MAGIC: [u8; 8] = *b"VBENGBLB";

/// The engine as it sits on disk: one header sector (magic, ELF length, CRC-32 of the ELF),
/// then the stripped ELF, padded to whole sectors. stage2 finds it at `stage2_lba +
/// stage2_sectors`, loads it only when it boots an image, checks it and relocates it.
pub fn engine_blob(elf: &[u8]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec![0u8; SECTOR_BYTES];
    out[0..8].copy_from_slice(&ENGINE_MAGIC);
    out[8..12].copy_from_slice(&(elf.len() as u32).to_le_bytes());
    out[12..16].copy_from_slice(&crc32(elf).to_le_bytes());
    out.extend_from_slice(elf);
    out.resize(out.len().div_ceil(SECTOR_BYTES) * SECTOR_BYTES, 0);
    out
}

/// From an engine blob's first sector: the ELF length and its CRC-32.
pub fn engine_blob_header(sector: &[u8; SECTOR_BYTES]) -> Option<(u32, u32)> {
    if sector[0..8] != ENGINE_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([sector[8], sector[9], sector[10], sector[11]]);
    let crc = u32::from_le_bytes([sector[12], sector[13], sector[14], sector[15]]);
    (len > 0 && len < 16 << 20).then_some((len, crc))
}

/// Sectors an engine blob of an ELF of `elf_bytes` takes.
pub fn engine_blob_sectors(elf_bytes: u32) -> u64 {
    1 + (elf_bytes as u64).div_ceil(SECTOR_BYTES as u64)
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


// ---------------------------------------------------------------------------------------------
// Planning an install: every check happens here, before anything is written.

use crate::block::BlockDevice;
use crate::part::{self, PartitionKind, PartitionTable, Scheme};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// GRUB partition number holding grub.cfg; `None` picks one.
    pub config_partition: Option<u32>,
    /// Overwrite a gap or BIOS boot partition that holds data that is not an earlier vboot.
    pub force: bool,
    /// Make stage1 load stage2 with CHS reads (AH=02h) even when the BIOS has extensions.
    pub force_chs: bool,
}

/// One sector write of an install, in the order they must happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectorWrite {
    pub lba: u64,
    pub bytes: Vec<u8>,
    pub what: &'static str,
}

/// Everything an install will write, worked out and checked.
#[derive(Clone, Debug)]
pub struct InstallPlan {
    pub scheme: Scheme,
    pub record: InstallRecord,
    /// True when an earlier vboot's saved sector 0 is kept (a reinstall or an upgrade).
    pub keeps_saved_mbr: bool,
    /// The saved sector 0 holds another boot loader's code ([`has_foreign_boot_code`]), which
    /// `chainloader --original-mbr` can start.
    pub saved_boot_code: bool,
    pub notes: Vec<String>,
    /// Saved sector 0 and stage2 first, the record next, sector 0 last: an install cut short
    /// leaves the old boot code in charge.
    pub writes: Vec<SectorWrite>,
}

fn refuse(msg: String) -> Result<InstallPlan, String> {
    Err(msg)
}

/// Is `lba..lba+sectors` blank or an earlier vboot? Returns the earlier record if there is one.
fn inspect_area<D: BlockDevice>(
    disk: &mut D,
    lba: u64,
    sectors: u64,
) -> Result<(bool, Option<InstallRecord>), String> {
    let mut first = [0u8; SECTOR_BYTES];
    disk.read_sectors(lba, &mut first).map_err(|e| format!("cannot read sector {}: {}", lba, e))?;
    if let Ok(r) = InstallRecord::from_sector(&first) {
        return Ok((true, Some(r)));
    }
    let mut buf = alloc::vec![0u8; SECTOR_BYTES];
    for l in lba..lba + sectors {
        disk.read_sectors(l, &mut buf).map_err(|e| format!("cannot read sector {}: {}", l, e))?;
        if buf.iter().any(|&b| b != 0) {
            return Ok((false, None));
        }
    }
    Ok((true, None))
}

/// Work out an install of `stage1` + `stage2` onto `disk`, or say why not.
pub fn plan_install<D: BlockDevice>(
    disk: &mut D,
    stage1: &[u8; SECTOR_BYTES],
    stage2: &[u8],
    engine_blob: &[u8],
    opts: &InstallOptions,
) -> Result<InstallPlan, String> {
    let header = Stage2Header::parse(stage2)
        .ok_or_else(|| String::from("the stage2 image has no VBOOTST2 header, or one whose low part stage1 cannot load; rebuild with `cargo xtask build`"))?;
    let stage2_sectors = stage2.len().div_ceil(SECTOR_BYTES) as u64;
    if stage2_sectors > u16::MAX as u64 {
        return refuse(format!("stage2 is {} sectors; stage1 can load at most {}", stage2_sectors, u16::MAX));
    }
    let disk_sectors = disk.sector_count();
    if disk_sectors < 2048 {
        return refuse(format!(
            "the target has {} sectors ({} KiB); that is not a partitioned disk",
            disk_sectors,
            disk_sectors / 2
        ));
    }
    let mut sector0 = [0u8; SECTOR_BYTES];
    disk.read_sectors(0, &mut sector0).map_err(|e| format!("cannot read sector 0: {}", e))?;
    if crate::fs::volume::sniff_at(disk, 0).is_some() {
        return refuse(String::from(
            "sector 0 holds a filesystem boot sector: this is a partition or a superfloppy, not a \
             partitioned disk; give the whole disk (for example /dev/sdb, not /dev/sdb1)",
        ));
    }
    if !crate::part::has_boot_signature(&sector0) {
        return refuse(String::from(
            "the disk has no partition table (no 0x55AA in sector 0); partition it first \
             (sfdisk, fdisk, sgdisk) and make a filesystem for grub.cfg",
        ));
    }
    let table: PartitionTable = part::read_partitions(disk).map_err(|e| format!("{}", e))?;
    let mut notes: Vec<String> = table.warnings.clone();

    let mut blob_head = [0u8; SECTOR_BYTES];
    blob_head.copy_from_slice(engine_blob.get(..SECTOR_BYTES).ok_or("the engine blob is empty")?);
    if engine_blob_header(&blob_head).is_none() || engine_blob.len() % SECTOR_BYTES != 0 {
        return Err(String::from("engine.bin is not a vboot engine blob; rebuild with `cargo xtask build`"));
    }
    let engine_sectors = (engine_blob.len() / SECTOR_BYTES) as u64;
    // Where the record, the saved sector 0, stage2 and the engine go.
    let needed = 2 + stage2_sectors + engine_sectors;
    let record_lba = match table.scheme {
        Scheme::Mbr => {
            let first_start = table.partitions.iter().map(|p| p.start_lba).min().unwrap_or(disk_sectors);
            if 1 + needed > first_start {
                return refuse(format!(
                    "the gap after the MBR is too small: the first partition starts at sector {}, \
                     and vboot needs sectors 1 to {} ({} KiB); move the first partition to 1 MiB \
                     (sector 2048), as current partitioning tools do",
                    first_start,
                    needed,
                    needed / 2 + 1
                ));
            }
            1
        }
        Scheme::Gpt | Scheme::Hybrid => {
            let bios_boot = table.partitions.iter().find(|p| {
                matches!(&p.kind, PartitionKind::Gpt { type_guid, .. } if *type_guid == part::GPT_TYPE_BIOS_BOOT)
            });
            let Some(bb) = bios_boot else {
                return refuse(String::from(
                    "this GPT disk has no BIOS boot partition (type EF02, GUID \
                     21686148-6449-6E6F-744E-656564454649) to hold stage2; create one of at least \
                     1 MiB, e.g. `sgdisk -n 0:34:2047 -t 0:ef02 DISK`",
                ));
            };
            if bb.sectors < needed {
                return refuse(format!(
                    "the BIOS boot partition {} has {} sectors; vboot needs {}",
                    bb.number, bb.sectors, needed
                ));
            }
            bb.start_lba
        }
    };
    let stage2_lba = record_lba + 2;

    let (clean, earlier) = inspect_area(disk, record_lba, needed)?;
    if !clean {
        if !opts.force {
            return refuse(format!(
                "sectors {} to {} hold data that is not vboot (another boot loader, or data of a \
                 partitioning tool); nothing was written. Use --force to overwrite it",
                record_lba,
                record_lba + needed - 1
            ));
        }
        notes.push(format!("overwriting foreign data in sectors {}..{} (--force)", record_lba, record_lba + needed - 1));
    }

    // Which partition holds grub.cfg.
    let config_partition = match opts.config_partition {
        Some(n) => {
            let p = table.find(n).ok_or_else(|| {
                let have: Vec<String> = table.partitions.iter().map(|p| format!("{}", p.number)).collect();
                format!("there is no partition {}; this disk has {}", n, have.join(", "))
            })?;
            if p.is_extended() {
                return refuse(format!("partition {} is an extended partition container, not a filesystem", n));
            }
            if crate::fs::volume::sniff_at(disk, p.start_lba).is_none() {
                notes.push(format!("partition {} holds no filesystem vboot recognises yet", n));
            }
            n
        }
        None => {
            let active = table.partitions.iter().find(|p| matches!(p.kind, PartitionKind::Mbr { active: true, .. }));
            let mut chosen = active.map(|p| p.number);
            if chosen.is_none() {
                for p in table.partitions.iter().filter(|p| !p.is_extended()) {
                    if crate::fs::volume::sniff_at(disk, p.start_lba).is_some() {
                        chosen = Some(p.number);
                        break;
                    }
                }
            }
            match chosen {
                Some(n) => n,
                None => {
                    notes.push(String::from(
                        "no active partition and no readable filesystem found; stage2 will search at boot",
                    ));
                    0
                }
            }
        }
    };

    // The sector 0 to keep for uninstall and recover_mbr: an earlier vboot's saved copy wins.
    let mut keeps_saved_mbr = false;
    let saved_mbr: [u8; SECTOR_BYTES] = match earlier {
        // Only a record that describes this very layout points at its saved copy (fuzz
        // finding: one naming stage2 at LBA 0 made `saved_mbr_lba` underflow).
        Some(r) if r.flags & RECORD_FLAG_SAVED_MBR != 0 && r.stage2_lba == stage2_lba && StagePatch::read(&sector0).is_vboot() => {
            let mut s = [0u8; SECTOR_BYTES];
            disk.read_sectors(r.saved_mbr_lba(), &mut s).map_err(|e| format!("cannot read the saved MBR: {}", e))?;
            keeps_saved_mbr = true;
            notes.push(String::from("vboot is already installed; keeping the sector 0 it saved"));
            s
        }
        _ => sector0,
    };

    let mut version = [0u8; 16];
    version.copy_from_slice(&header.version);
    let record = InstallRecord {
        stage2_lba,
        stage2_sectors: stage2_sectors as u32,
        config_partition,
        flags: RECORD_FLAG_SAVED_MBR,
        vboot_version: version,
        engine_sectors: engine_sectors as u32,
        stage2_crc32: 0,
    };
    let patch = StagePatch {
        stage2_lba,
        // stage1 loads the low part; stage2 reads the rest itself, and the engine after it.
        stage2_sectors: header.load_sectors as u16,
        flags: if opts.force_chs { PATCH_FLAG_FORCE_CHS } else { 0 },
        version: 1,
        magic: STAGE1_PATCH_MAGIC,
    };
    let mut stage2_padded = stage2.to_vec();
    stage2_padded.resize(stage2_sectors as usize * SECTOR_BYTES, 0);
    let record = InstallRecord { stage2_crc32: crc32(&stage2_padded), ..record };
    let writes = alloc::vec![
        SectorWrite { lba: record.saved_mbr_lba(), bytes: saved_mbr.to_vec(), what: "saved original sector 0" },
        SectorWrite { lba: stage2_lba, bytes: stage2_padded, what: "stage2" },
        SectorWrite { lba: stage2_lba + stage2_sectors, bytes: engine_blob.to_vec(), what: "resident engine" },
        SectorWrite { lba: record_lba, bytes: record.to_sector().to_vec(), what: "install record" },
        SectorWrite { lba: 0, bytes: merge_stage1(stage1, &sector0, &patch).to_vec(), what: "stage1 in sector 0" },
    ];
    let saved_boot_code = has_foreign_boot_code(&saved_mbr);
    Ok(InstallPlan { scheme: table.scheme, record, keeps_saved_mbr, saved_boot_code, notes, writes })
}

/// Whether a saved sector 0 holds another boot loader's code: its code area is not all zeros
/// (a disk partitioned but never made bootable has none) and is not vboot's own stage1 (put
/// there with `dd` before vboot-install ran), so starting it starts something else.
pub fn has_foreign_boot_code(sector0: &[u8; SECTOR_BYTES]) -> bool {
    sector0[..STAGE1_CODE_LIMIT].iter().any(|&b| b != 0) && !StagePatch::read(sector0).is_vboot()
}

/// The sector 0 `uninstall` and `recover_mbr` put back: the boot code vboot-install saved, with
/// the partition table and disk signature the disk has now.
pub fn saved_boot_code<D: BlockDevice>(disk: &mut D) -> Result<(InstallRecord, [u8; SECTOR_BYTES]), String> {
    let (record, sector0) = read_installed(disk)?;
    if record.flags & RECORD_FLAG_SAVED_MBR == 0 {
        return Err(String::from("the install record has no saved sector 0 to put back"));
    }
    let mut saved = [0u8; SECTOR_BYTES];
    disk.read_sectors(record.saved_mbr_lba(), &mut saved).map_err(|e| format!("cannot read the saved MBR: {}", e))?;
    Ok((record, restore_boot_code(&saved, &sector0)))
}

/// What `uninstall` will write: the saved boot code back into sector 0 (keeping the current
/// partition table), then zeros over the record, the saved copy, stage2 and the engine.
pub fn plan_uninstall<D: BlockDevice>(disk: &mut D) -> Result<(InstallRecord, Vec<SectorWrite>), String> {
    let (record, restored) = saved_boot_code(disk)?;
    // The record's sizes come from the disk: the area they name must be one vboot-install could
    // have written (stage2 at most u16::MAX sectors, as stage1 loads it, the engine no more;
    // everything inside the
    // disk and outside every partition but a BIOS boot partition), or a damaged record would
    // zero a partition, or ask for terabytes of zeros.
    let sectors = 2 + record.stage2_sectors as u64 + record.engine_sectors as u64;
    let start = record.record_lba();
    let end = start.checked_add(sectors).filter(|&e| e <= disk.sector_count());
    let Some(_end) = end.filter(|_| record.stage2_sectors <= u16::MAX as u32 && record.engine_sectors <= u16::MAX as u32) else {
        return Err(format!(
            "the install record names {} sectors from sector {}, which is not an area vboot-install writes; not uninstalling",
            sectors, start
        ));
    };
    // Where the area lies (before the first partition, or inside the BIOS boot partition) and
    // what it holds is `check_area_is_vboots`'s to say.
    check_area_is_vboots(disk, &record).map_err(|why| {
        format!(
            "refusing to uninstall: the install record at sector {} names sectors {} to {}, but {}; \
             the record is stale (the disk changed since vboot was installed) and nothing was \
             written. Sector 0 still holds vboot's stage1: replace it with another boot loader, \
             or restore the boot code by hand",
            record.record_lba(),
            record.record_lba(),
            record.record_lba().saturating_add(record.area_sectors()).saturating_sub(1),
            why
        )
    })?;
    let clear = alloc::vec![0u8; sectors as usize * SECTOR_BYTES];
    Ok((
        record,
        alloc::vec![
            SectorWrite { lba: 0, bytes: restored.to_vec(), what: "original boot code in sector 0" },
            SectorWrite { lba: record.record_lba(), bytes: clear, what: "clear record, saved copy, stage2 and engine" },
        ],
    ))
}

/// Whether the sectors an install record names are still vboot's to clear: they end before the
/// first partition (MBR) or lie inside the BIOS boot partition (GPT), stage2 is there with its
/// header and the CRC-32 the record kept, and the engine blob after it passes its own CRC-32.
/// `Err` says what is wrong.
pub fn check_area_is_vboots<D: BlockDevice>(disk: &mut D, record: &InstallRecord) -> Result<(), String> {
    if record.stage2_sectors == 0 || record.stage2_sectors > u16::MAX as u32 || record.engine_sectors as u64 > engine_blob_sectors(16 << 20) {
        return Err(format!(
            "it says stage2 is {} sectors and the engine {}, which no vboot-install writes",
            record.stage2_sectors, record.engine_sectors
        ));
    }
    let start = record.record_lba();
    let end = start.checked_add(record.area_sectors()).filter(|&e| e <= disk.sector_count()).ok_or_else(|| {
        format!("they run past the end of the disk ({} sectors)", disk.sector_count())
    })?;
    let table = part::read_partitions(disk).map_err(|e| format!("the partition table cannot be read to check them ({})", e))?;
    match table.scheme {
        Scheme::Mbr => {
            if let Some(first) = table.partitions.iter().min_by_key(|p| p.start_lba) {
                if end > first.start_lba {
                    return Err(format!("partition {} now starts at sector {}, inside them", first.number, first.start_lba));
                }
            }
        }
        Scheme::Gpt | Scheme::Hybrid => {
            let inside = table.partitions.iter().any(|p| {
                matches!(&p.kind, PartitionKind::Gpt { type_guid, .. } if *type_guid == part::GPT_TYPE_BIOS_BOOT)
                    && p.start_lba <= start
                    && end <= p.start_lba.saturating_add(p.sectors)
            });
            if !inside {
                return Err(String::from("they are no longer inside a BIOS boot partition (type EF02)"));
            }
        }
    }
    let read = |disk: &mut D, lba: u64, sectors: u64| -> Result<Vec<u8>, String> {
        let mut buf = alloc::vec![0u8; sectors as usize * SECTOR_BYTES];
        disk.read_sectors(lba, &mut buf).map_err(|e| format!("sectors {} to {} cannot be read ({})", lba, lba + sectors - 1, e))?;
        Ok(buf)
    };
    let stage2 = read(disk, record.stage2_lba, record.stage2_sectors as u64)?;
    match Stage2Header::parse(&stage2) {
        Some(h) if h.sectors == record.stage2_sectors => {}
        Some(h) => return Err(format!("the stage2 there is {} sectors, not the {} recorded", h.sectors, record.stage2_sectors)),
        None => return Err(format!("sector {} holds no vboot stage2 (no VBOOTST2 header)", record.stage2_lba)),
    }
    if record.stage2_crc32 != 0 && crc32(&stage2) != record.stage2_crc32 {
        return Err(format!(
            "the stage2 there has CRC-32 {:#010x}, not the {:#010x} recorded (something else was written over it)",
            crc32(&stage2),
            record.stage2_crc32
        ));
    }
    if record.engine_sectors != 0 {
        let engine_lba = record.stage2_lba + record.stage2_sectors as u64;
        let blob = read(disk, engine_lba, record.engine_sectors as u64)?;
        let mut head = [0u8; SECTOR_BYTES];
        head.copy_from_slice(&blob[..SECTOR_BYTES]);
        let (len, crc) = engine_blob_header(&head).ok_or_else(|| format!("sector {} holds no vboot engine", engine_lba))?;
        if engine_blob_sectors(len) != record.engine_sectors as u64 || crc32(&blob[SECTOR_BYTES..SECTOR_BYTES + len as usize]) != crc {
            return Err(format!("the engine at sector {} is damaged or not the one recorded", engine_lba));
        }
    }
    Ok(())
}

/// The installed vboot's record and the current sector 0, or why there is none.
pub fn read_installed<D: BlockDevice>(disk: &mut D) -> Result<(InstallRecord, [u8; SECTOR_BYTES]), String> {
    let mut sector0 = [0u8; SECTOR_BYTES];
    disk.read_sectors(0, &mut sector0).map_err(|e| format!("cannot read sector 0: {}", e))?;
    let patch = StagePatch::read(&sector0);
    if !patch.is_vboot() {
        return Err(String::from("vboot is not installed on this disk (sector 0 holds other boot code)"));
    }
    let stage2_lba = { patch.stage2_lba };
    if stage2_lba < 3 || stage2_lba >= disk.sector_count() {
        return Err(format!("vboot's stage1 points at sector {}, which cannot hold stage2", stage2_lba));
    }
    let mut s = [0u8; SECTOR_BYTES];
    disk.read_sectors(stage2_lba - 2, &mut s).map_err(|e| format!("cannot read the install record: {}", e))?;
    let record = InstallRecord::from_sector(&s).map_err(|e| format!("{} at sector {}", e, stage2_lba - 2))?;
    if record.stage2_lba != stage2_lba {
        return Err(format!(
            "stage1 and the install record disagree about stage2 (sector {} vs {}); reinstall",
            stage2_lba, record.stage2_lba
        ));
    }
    Ok((record, sector0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with vboot installed (stage2 at LBA 3, record at 1, saved MBR at 2) and one
    /// partition from 2048, whose record names `stage2_sectors` and `engine_sectors`.
    fn installed_disk(stage2_sectors: u32, engine_sectors: u32) -> crate::block::MemDisk {
        use crate::block::{BlockDevice, MemDisk};
        let mut d = MemDisk::zeroed(8192);
        let mut s0 = [0u8; SECTOR_BYTES];
        StagePatch { stage2_lba: 3, stage2_sectors: 8, flags: 0, version: 1, magic: STAGE1_PATCH_MAGIC }.write(&mut s0);
        s0[446 + 4] = 0x0C;
        s0[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        s0[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
        s0[510] = 0x55;
        s0[511] = 0xAA;
        d.write_sectors(0, &s0).unwrap();
        let r = InstallRecord {
            stage2_lba: 3,
            stage2_sectors,
            config_partition: 1,
            flags: RECORD_FLAG_SAVED_MBR,
            vboot_version: [0; 16],
            engine_sectors,
            stage2_crc32: 0,
        };
        d.write_sectors(1, &r.to_sector()).unwrap();
        d
    }

    /// Fuzz finding (install target): a record with a valid CRC naming ~2^31 sectors made
    /// `plan_uninstall` ask for a terabyte of zeros (an abort), and one naming a few thousand
    /// would have zeroed the first partition.
    #[test]
    fn uninstall_refuses_a_record_that_names_more_than_the_gap() {
        let mut d = installed_disk(0xFFFF_0000, 0x7FFF_FFFF);
        assert!(plan_uninstall(&mut d).unwrap_err().contains("not an area vboot-install writes"));
        let mut d = installed_disk(10, 0x10_0000);
        assert!(plan_uninstall(&mut d).unwrap_err().contains("not an area vboot-install writes"));
        let mut d = installed_disk(3000, 10);
        assert!(plan_uninstall(&mut d).unwrap_err().contains("partition 1 now starts at sector 2048, inside them"));
        // An area of a size vboot-install writes passes the size check and meets the content
        // check next (this synthetic disk has no stage2 in it).
        let mut d = installed_disk(2000, 40);
        assert!(plan_uninstall(&mut d).unwrap_err().contains("holds no vboot stage2"));
    }

    /// Fuzz finding (install target): reinstalling over an earlier record that names stage2 at
    /// LBA 0 panicked computing where its saved sector 0 is.
    #[test]
    fn reinstall_ignores_a_record_that_describes_another_layout() {
        use crate::block::BlockDevice;
        let mut d = installed_disk(8, 0);
        let r = InstallRecord { stage2_lba: 0, stage2_sectors: 8, config_partition: 1, flags: RECORD_FLAG_SAVED_MBR, vboot_version: [0; 16], engine_sectors: 0, stage2_crc32: 0 };
        d.write_sectors(1, &r.to_sector()).unwrap();
        let mut stage2 = alloc::vec![0u8; 8 * SECTOR_BYTES];
        stage2[4..12].copy_from_slice(&STAGE2_MAGIC);
        stage2[12..16].copy_from_slice(&8u32.to_le_bytes());
        stage2[32..36].copy_from_slice(&2u32.to_le_bytes());
        let engine = engine_blob(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0]);
        let plan = plan_install(&mut d, &[0x90; SECTOR_BYTES], &stage2, &engine, &InstallOptions::default()).unwrap();
        assert!(!plan.keeps_saved_mbr);
        assert_eq!(plan.record.stage2_lba, 3);
    }

    #[test]
    fn record_round_trip_and_damage() {
        let r = InstallRecord {
            stage2_lba: 3,
            stage2_sectors: 200,
            config_partition: 1,
            flags: RECORD_FLAG_SAVED_MBR,
            vboot_version: *b"0.1.0\0\0\0\0\0\0\0\0\0\0\0",
            engine_sectors: 420,
            stage2_crc32: 0x1234_5678,
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
