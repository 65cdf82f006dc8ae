//! The hand-off table: how an operating system finds the disks vboot emulated, after it stops
//! calling INT 13h.
//!
//! stage2 publishes one table per boot in memory that E820 marks reserved, and puts its address in
//! the INT 13h "safe hook" header at the start of the resident stub (memdisk's position, +27).
//! A reader (`vboot-attach` on Linux) walks IVT[13h] to the hook, reads the table, and validates
//! it: signature, version, length, header CRC-32, body CRC-32 (drive records, layers, extents,
//! paths), every offset in bounds, the boot ID the hook and the table share, and that the table
//! lies in a firmware-reserved range. `docs/handoff-table.md` is the specification; this module is
//! the one implementation of it (writer and reader). All fields little-endian.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use static_assertions::const_assert_eq;

use crate::crc32::crc32;
use crate::fs::Extent;

pub const SIGNATURE: [u8; 8] = *b"VBHANDOF";
/// Version 2 added write mode 3 (throwaway); the layout is version 1's, so readers take both.
pub const VERSION: u16 = 2;
/// The oldest version this reader accepts.
pub const OLDEST_VERSION: u16 = 1;
/// No reader accepts a table longer than this.
pub const MAX_TABLE_BYTES: u32 = 16 << 20;
pub const MAX_DRIVES: u16 = 16;

/// The safe-hook header at the INT 13h entry: JMP (3 bytes), "$INT13SF", vendor, previous vector,
/// flags, then (memdisk's position) the table's address and, vboot's own, the boot ID.
pub const HOOK_SIGNATURE: [u8; 8] = *b"$INT13SF";
pub const HOOK_VENDOR: [u8; 8] = *b"VBOOT   ";
pub const HOOK_BYTES: usize = 39;
pub const HOOK_PREV_VECTOR: usize = 19;
pub const HOOK_FLAGS: usize = 23;
pub const HOOK_TABLE_ADDRESS: usize = 27;
pub const HOOK_BOOT_ID: usize = 31;

/// The table header (offset 0).
#[repr(C)]
pub struct RawHeader {
    pub signature: [u8; 8],
    pub version: u16,
    pub header_bytes: u16,
    pub length: u32,
    /// CRC-32 of the header with this field zero.
    pub header_crc32: u32,
    /// CRC-32 of bytes `header_bytes..length`: drive records, layer records, extents, paths.
    pub body_crc32: u32,
    pub boot_id: u64,
    pub boot_time_unix: u64,
    pub table_address: u64,
    pub reserved_base: u64,
    pub reserved_length: u64,
    pub safe_hook_address: u32,
    pub drive_count: u16,
    pub drive_record_bytes: u16,
    pub layer_record_bytes: u16,
    pub extent_record_bytes: u16,
    pub zero: [u8; 20],
}
const_assert_eq!(size_of::<RawHeader>(), 96);

/// One emulated drive.
#[repr(C)]
pub struct RawDrive {
    pub bios_number: u8,
    pub kind: u8,
    pub write_mode: u8,
    pub filesystem: u8,
    pub host_scheme: u8,
    pub host_bios_drive: u8,
    pub partition_type_byte: u8,
    pub zero0: u8,
    pub host_mbr_signature: u32,
    pub layer_count: u32,
    pub host_disk_guid: [u8; 16],
    pub host_sectors: u64,
    pub partition_number: u32,
    pub first_layer_offset: u32,
    pub partition_start_lba: u64,
    pub partition_sectors: u64,
    pub partition_guid: [u8; 16],
    pub virtual_sectors: u64,
    pub overlay_base: u64,
    pub overlay_length: u64,
    /// `parent_dir=` of the entry (on the host partition): offset and length of a path, 0 if none.
    pub parent_dir_offset: u32,
    pub parent_dir_bytes: u32,
    pub zero1: [u8; 16],
}
const_assert_eq!(size_of::<RawDrive>(), 128);

/// One file of a drive's chain (leaf first).
#[repr(C)]
pub struct RawLayer {
    pub format: u8,
    pub zero: [u8; 3],
    pub path_offset: u32,
    pub path_bytes: u32,
    pub extent_count: u32,
    pub extents_offset: u32,
    pub zero1: u32,
    pub size_bytes: u64,
}
const_assert_eq!(size_of::<RawLayer>(), 32);

/// One run of a file on the host disk (512-byte units).
#[repr(C)]
pub struct RawExtent {
    pub file_sector: u64,
    pub host_lba: u64,
    pub sectors: u64,
}
const_assert_eq!(size_of::<RawExtent>(), 24);

const HEADER_BYTES: usize = size_of::<RawHeader>();
const DRIVE_BYTES: usize = size_of::<RawDrive>();
const LAYER_BYTES: usize = size_of::<RawLayer>();
const EXTENT_BYTES: usize = size_of::<RawExtent>();
const HEADER_CRC_AT: usize = 16;

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $v:ident = $n:literal => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v = $n),* }
        impl $name {
            pub fn from_code(c: u8) -> Option<Self> {
                match c { $($n => Some($name::$v),)* _ => None }
            }
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            const WHAT: &'static str = $what;
        }
    };
}

code_enum!(DriveKind, "drive kind" { HardDisk = 0 => "hard disk", Floppy = 1 => "floppy", Cdrom = 2 => "CD-ROM" });
code_enum!(
    /// What happens to writes.
    WriteMode, "write mode" {
    /// Writes go into the leaf image file.
    Normal = 0 => "normal",
    /// Writes go into a differencing image made at boot (`take_snapshot=`).
    Snapshot = 1 => "snapshot",
    /// Writes go to a RAM overlay; the image files never change (`immutable` where no child on
    /// disk could be had).
    Immutable = 2 => "immutable",
    /// Writes go into the leaf, a throwaway differencing child that stage2 emptied or made at
    /// this boot (`immutable`, version 2): everything in it is gone at the next start.
    Throwaway = 3 => "throwaway",
});
code_enum!(Filesystem, "filesystem" { Unknown = 0 => "unknown", Fat = 1 => "FAT", Exfat = 2 => "exFAT", Ntfs = 3 => "NTFS", Ext = 4 => "ext2/3/4" });
code_enum!(HostScheme, "host partitioning scheme" { Mbr = 1 => "MBR", Gpt = 2 => "GPT" });
code_enum!(LayerFormat, "layer format" { Raw = 0 => "raw", Vhd = 1 => "VHD", Vmdk = 2 => "VMDK", Vdi = 3 => "VDI" });

impl LayerFormat {
    pub fn from_image(f: crate::image::Format) -> LayerFormat {
        match f {
            crate::image::Format::Raw => LayerFormat::Raw,
            crate::image::Format::Vhd => LayerFormat::Vhd,
            crate::image::Format::Vmdk => LayerFormat::Vmdk,
            crate::image::Format::Vdi => LayerFormat::Vdi,
        }
    }
}

impl From<crate::fs::volume::FsKind> for Filesystem {
    fn from(k: crate::fs::volume::FsKind) -> Filesystem {
        use crate::fs::volume::FsKind;
        match k {
            FsKind::Fat => Filesystem::Fat,
            FsKind::Exfat => Filesystem::Exfat,
            FsKind::Ntfs => Filesystem::Ntfs,
            FsKind::Ext => Filesystem::Ext,
        }
    }
}

/// The disk that holds the image files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDisk {
    /// The BIOS's number for it at boot (Linux does not know it; for messages).
    pub bios_drive: u8,
    pub scheme: HostScheme,
    /// Bytes 0x1B8..0x1BC of sector 0 (also recorded on GPT disks: the protective MBR's).
    pub mbr_signature: u32,
    /// The GPT header's disk GUID, as stored on disk; zero on MBR disks.
    pub disk_guid: [u8; 16],
    /// Size in 512-byte sectors, as the BIOS reported it.
    pub sectors: u64,
}

/// The partition that holds the image files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPartition {
    /// GRUB's numbering: 1-4 primary, 5+ logical, GPT entries from 1.
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
    /// The MBR type byte; 0 on GPT.
    pub type_byte: u8,
    /// The GPT unique partition GUID as stored on disk; zero on MBR.
    pub guid: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub format: LayerFormat,
    pub size_bytes: u64,
    /// The file's path on the host partition ("/"-separated).
    pub path: String,
    /// The file's runs on the host disk; LBAs are absolute (partition start included).
    pub extents: Vec<Extent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    /// The number the guest used (0x80, 0x00, 0xE0 ...).
    pub bios_number: u8,
    pub kind: DriveKind,
    pub write_mode: WriteMode,
    /// The disk's size as the guest sees it, in 512-byte sectors.
    pub virtual_sectors: u64,
    pub host: HostDisk,
    pub partition: HostPartition,
    pub filesystem: Filesystem,
    /// Physical base and length of the memory holding the RAM overlay (immutable mode), if any.
    pub overlay: Option<(u64, u64)>,
    /// `parent_dir=`: where parents of the chain are also looked for, on the host partition.
    pub parent_dir: Option<String>,
    /// Leaf first.
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Random per boot; the safe-hook header carries the same value.
    pub boot_id: u64,
    /// The real-time clock when stage2 built the table, as Unix seconds (0 if unknown).
    pub boot_time_unix: u64,
    /// Physical address the table was placed at.
    pub table_address: u64,
    /// The E820 type-2 range that holds it.
    pub reserved_base: u64,
    pub reserved_length: u64,
    /// Physical address of the safe-hook header (the INT 13h entry).
    pub safe_hook_address: u32,
    pub drives: Vec<Drive>,
}

/// Why a table was refused. Each message says what was wrong, for the person at the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoffError {
    NoHook(String),
    BadSignature,
    BadVersion(u16),
    BadLength(String),
    HeaderChecksum { stored: u32, computed: u32 },
    BodyChecksum { stored: u32, computed: u32 },
    OutOfBounds(String),
    BadField(String),
    Stale(String),
    NotReserved(String),
    Read(String),
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::NoHook(s) => write!(f, "no vboot hand-off table: {}", s),
            HandoffError::BadSignature => write!(f, "hand-off table: no signature \"VBHANDOF\" at the address the INT 13h hook gives"),
            HandoffError::BadVersion(v) => {
                write!(f, "hand-off table: version {} (this reader knows versions {} to {}); use a vboot-attach as new as the loader", v, OLDEST_VERSION, VERSION)
            }
            HandoffError::BadLength(s) => write!(f, "hand-off table: bad length: {}", s),
            HandoffError::HeaderChecksum { stored, computed } => {
                write!(f, "hand-off table: header checksum mismatch (stored {:#010x}, computed {:#010x}): the table is damaged", stored, computed)
            }
            HandoffError::BodyChecksum { stored, computed } => write!(
                f,
                "hand-off table: CRC-32 over the drives, extents and paths mismatch (stored {:#010x}, computed {:#010x}): the table is damaged",
                stored, computed
            ),
            HandoffError::OutOfBounds(s) => write!(f, "hand-off table: {} lies outside the table", s),
            HandoffError::BadField(s) => write!(f, "hand-off table: {}", s),
            HandoffError::Stale(s) => write!(f, "hand-off table is stale (left from an earlier boot): {}", s),
            HandoffError::NotReserved(s) => write!(f, "hand-off table: {}", s),
            HandoffError::Read(s) => write!(f, "reading the hand-off table: {}", s),
        }
    }
}

#[cfg(any(test, feature = "std"))]
impl std::error::Error for HandoffError {}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes())
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes())
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes())
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn guid(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

// Field offsets, in the order of the #[repr(C)] structs above (no padding: the sizes are asserted).
mod h {
    pub const VERSION: usize = 8;
    pub const HEADER_BYTES: usize = 10;
    pub const LENGTH: usize = 12;
    pub const BODY_CRC: usize = 20;
    pub const BOOT_ID: usize = 24;
    pub const BOOT_TIME: usize = 32;
    pub const TABLE_ADDRESS: usize = 40;
    pub const RESERVED_BASE: usize = 48;
    pub const RESERVED_LENGTH: usize = 56;
    pub const SAFE_HOOK: usize = 64;
    pub const DRIVE_COUNT: usize = 68;
    pub const DRIVE_BYTES: usize = 70;
    pub const LAYER_BYTES: usize = 72;
    pub const EXTENT_BYTES: usize = 74;
}
mod d {
    pub const NUMBER: usize = 0;
    pub const KIND: usize = 1;
    pub const WRITE_MODE: usize = 2;
    pub const FILESYSTEM: usize = 3;
    pub const SCHEME: usize = 4;
    pub const HOST_BIOS: usize = 5;
    pub const TYPE_BYTE: usize = 6;
    pub const MBR_SIG: usize = 8;
    pub const LAYER_COUNT: usize = 12;
    pub const DISK_GUID: usize = 16;
    pub const HOST_SECTORS: usize = 32;
    pub const PART_NUMBER: usize = 40;
    pub const FIRST_LAYER: usize = 44;
    pub const PART_START: usize = 48;
    pub const PART_SECTORS: usize = 56;
    pub const PART_GUID: usize = 64;
    pub const VIRTUAL_SECTORS: usize = 80;
    pub const OVERLAY_BASE: usize = 88;
    pub const OVERLAY_LENGTH: usize = 96;
    pub const PARENT_DIR_OFFSET: usize = 104;
    pub const PARENT_DIR_BYTES: usize = 108;
}
mod l {
    pub const FORMAT: usize = 0;
    pub const PATH_OFFSET: usize = 4;
    pub const PATH_BYTES: usize = 8;
    pub const EXTENT_COUNT: usize = 12;
    pub const EXTENTS_OFFSET: usize = 16;
    pub const SIZE_BYTES: usize = 24;
}

impl Table {
    /// The table's bytes, checksums filled in. Its length does not depend on the addresses, so a
    /// caller can size the room first and fill the addresses in afterwards.
    pub fn to_bytes(&self) -> Vec<u8> {
        let layer_total: usize = self.drives.iter().map(|d| d.layers.len()).sum();
        let extent_total: usize = self.drives.iter().flat_map(|d| &d.layers).map(|l| l.extents.len()).sum();
        let drives_at = HEADER_BYTES;
        let layers_at = drives_at + self.drives.len() * DRIVE_BYTES;
        let extents_at = layers_at + layer_total * LAYER_BYTES;
        let paths_at = extents_at + extent_total * EXTENT_BYTES;
        let path_total: usize = self.drives.iter().flat_map(|d| &d.layers).map(|l| l.path.len() + 1).sum::<usize>()
            + self.drives.iter().filter_map(|d| d.parent_dir.as_ref()).map(|p| p.len() + 1).sum::<usize>();
        let length = (paths_at + path_total).div_ceil(16) * 16;
        let mut b = alloc::vec![0u8; length];

        b[..8].copy_from_slice(&SIGNATURE);
        put_u16(&mut b, h::VERSION, VERSION);
        put_u16(&mut b, h::HEADER_BYTES, HEADER_BYTES as u16);
        put_u32(&mut b, h::LENGTH, length as u32);
        put_u64(&mut b, h::BOOT_ID, self.boot_id);
        put_u64(&mut b, h::BOOT_TIME, self.boot_time_unix);
        put_u64(&mut b, h::TABLE_ADDRESS, self.table_address);
        put_u64(&mut b, h::RESERVED_BASE, self.reserved_base);
        put_u64(&mut b, h::RESERVED_LENGTH, self.reserved_length);
        put_u32(&mut b, h::SAFE_HOOK, self.safe_hook_address);
        put_u16(&mut b, h::DRIVE_COUNT, self.drives.len() as u16);
        put_u16(&mut b, h::DRIVE_BYTES, DRIVE_BYTES as u16);
        put_u16(&mut b, h::LAYER_BYTES, LAYER_BYTES as u16);
        put_u16(&mut b, h::EXTENT_BYTES, EXTENT_BYTES as u16);

        let (mut layer_at, mut extent_at, mut path_at) = (layers_at, extents_at, paths_at);
        for (i, drive) in self.drives.iter().enumerate() {
            let r = drives_at + i * DRIVE_BYTES;
            b[r + d::NUMBER] = drive.bios_number;
            b[r + d::KIND] = drive.kind as u8;
            b[r + d::WRITE_MODE] = drive.write_mode as u8;
            b[r + d::FILESYSTEM] = drive.filesystem as u8;
            b[r + d::SCHEME] = drive.host.scheme as u8;
            b[r + d::HOST_BIOS] = drive.host.bios_drive;
            b[r + d::TYPE_BYTE] = drive.partition.type_byte;
            put_u32(&mut b, r + d::MBR_SIG, drive.host.mbr_signature);
            put_u32(&mut b, r + d::LAYER_COUNT, drive.layers.len() as u32);
            b[r + d::DISK_GUID..r + d::DISK_GUID + 16].copy_from_slice(&drive.host.disk_guid);
            put_u64(&mut b, r + d::HOST_SECTORS, drive.host.sectors);
            put_u32(&mut b, r + d::PART_NUMBER, drive.partition.number);
            put_u32(&mut b, r + d::FIRST_LAYER, layer_at as u32);
            put_u64(&mut b, r + d::PART_START, drive.partition.start_lba);
            put_u64(&mut b, r + d::PART_SECTORS, drive.partition.sectors);
            b[r + d::PART_GUID..r + d::PART_GUID + 16].copy_from_slice(&drive.partition.guid);
            put_u64(&mut b, r + d::VIRTUAL_SECTORS, drive.virtual_sectors);
            let (ob, ol) = drive.overlay.unwrap_or((0, 0));
            put_u64(&mut b, r + d::OVERLAY_BASE, ob);
            put_u64(&mut b, r + d::OVERLAY_LENGTH, ol);
            if let Some(p) = &drive.parent_dir {
                put_u32(&mut b, r + d::PARENT_DIR_OFFSET, path_at as u32);
                put_u32(&mut b, r + d::PARENT_DIR_BYTES, p.len() as u32);
                b[path_at..path_at + p.len()].copy_from_slice(p.as_bytes());
                path_at += p.len() + 1;
            }
            for layer in &drive.layers {
                let r = layer_at;
                b[r + l::FORMAT] = layer.format as u8;
                put_u32(&mut b, r + l::PATH_OFFSET, path_at as u32);
                put_u32(&mut b, r + l::PATH_BYTES, layer.path.len() as u32);
                put_u32(&mut b, r + l::EXTENT_COUNT, layer.extents.len() as u32);
                put_u32(&mut b, r + l::EXTENTS_OFFSET, extent_at as u32);
                put_u64(&mut b, r + l::SIZE_BYTES, layer.size_bytes);
                for e in &layer.extents {
                    put_u64(&mut b, extent_at, e.file_sector);
                    put_u64(&mut b, extent_at + 8, e.lba);
                    put_u64(&mut b, extent_at + 16, e.sectors);
                    extent_at += EXTENT_BYTES;
                }
                b[path_at..path_at + layer.path.len()].copy_from_slice(layer.path.as_bytes());
                path_at += layer.path.len() + 1;
                layer_at += LAYER_BYTES;
            }
        }
        let body = crc32(&b[HEADER_BYTES..]);
        put_u32(&mut b, h::BODY_CRC, body);
        let header = crc32(&b[..HEADER_BYTES]);
        put_u32(&mut b, HEADER_CRC_AT, header);
        b
    }

    /// Validate and decode a table read from physical address `found_at`. `bytes` may be longer
    /// than the table.
    pub fn parse(bytes: &[u8], found_at: u64) -> Result<Table, HandoffError> {
        let bad = |s: String| Err(HandoffError::BadField(s));
        if bytes.len() < 16 || bytes[..8] != SIGNATURE {
            return Err(HandoffError::BadSignature);
        }
        let version = get_u16(bytes, h::VERSION);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(HandoffError::BadVersion(version));
        }
        if bytes.len() < HEADER_BYTES {
            return Err(HandoffError::BadLength(format!("only {} bytes readable, the header alone is {}", bytes.len(), HEADER_BYTES)));
        }
        let header_bytes = get_u16(bytes, h::HEADER_BYTES) as usize;
        let length = get_u32(bytes, h::LENGTH);
        if header_bytes != HEADER_BYTES {
            return Err(HandoffError::BadLength(format!("header size {} (version 1 has {})", header_bytes, HEADER_BYTES)));
        }
        if (length as usize) < HEADER_BYTES || length > MAX_TABLE_BYTES || length % 16 != 0 {
            return Err(HandoffError::BadLength(format!(
                "{} bytes (must be a multiple of 16 between {} and {})",
                length, HEADER_BYTES, MAX_TABLE_BYTES
            )));
        }
        if length as usize > bytes.len() {
            return Err(HandoffError::BadLength(format!("{} bytes, but only {} could be read", length, bytes.len())));
        }
        let b = &bytes[..length as usize];
        let stored = get_u32(b, HEADER_CRC_AT);
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&b[..HEADER_BYTES]);
        header[HEADER_CRC_AT..HEADER_CRC_AT + 4].fill(0);
        let computed = crc32(&header);
        if stored != computed {
            return Err(HandoffError::HeaderChecksum { stored, computed });
        }
        let stored = get_u32(b, h::BODY_CRC);
        let computed = crc32(&b[HEADER_BYTES..]);
        if stored != computed {
            return Err(HandoffError::BodyChecksum { stored, computed });
        }
        let sizes = (get_u16(b, h::DRIVE_BYTES) as usize, get_u16(b, h::LAYER_BYTES) as usize, get_u16(b, h::EXTENT_BYTES) as usize);
        if sizes != (DRIVE_BYTES, LAYER_BYTES, EXTENT_BYTES) {
            return bad(format!("record sizes {:?}, version 1 has ({}, {}, {})", sizes, DRIVE_BYTES, LAYER_BYTES, EXTENT_BYTES));
        }
        let table_address = get_u64(b, h::TABLE_ADDRESS);
        if table_address != found_at {
            return Err(HandoffError::Stale(format!(
                "it says it was placed at {:#x} but was found at {:#x} (a copy, not the table this boot published)",
                table_address, found_at
            )));
        }
        let drive_count = get_u16(b, h::DRIVE_COUNT);
        if drive_count == 0 || drive_count > MAX_DRIVES {
            return bad(format!("{} drives (1 to {} expected)", drive_count, MAX_DRIVES));
        }
        let within = |what: &str, at: usize, n: usize| -> Result<(), HandoffError> {
            match at.checked_add(n) {
                Some(end) if at >= HEADER_BYTES && end <= b.len() => Ok(()),
                _ => Err(HandoffError::OutOfBounds(format!("{} ({} bytes at offset {})", what, n, at))),
            }
        };
        let mut t = Table {
            boot_id: get_u64(b, h::BOOT_ID),
            boot_time_unix: get_u64(b, h::BOOT_TIME),
            table_address,
            reserved_base: get_u64(b, h::RESERVED_BASE),
            reserved_length: get_u64(b, h::RESERVED_LENGTH),
            safe_hook_address: get_u32(b, h::SAFE_HOOK),
            drives: Vec::new(),
        };
        if t.table_address < t.reserved_base || t.table_address.saturating_add(length as u64) > t.reserved_base.saturating_add(t.reserved_length) {
            return bad(format!(
                "the table ({:#x}, {} bytes) is outside the reserved range it names ({:#x}, {} bytes)",
                t.table_address, length, t.reserved_base, t.reserved_length
            ));
        }
        within("the drive records", HEADER_BYTES, drive_count as usize * DRIVE_BYTES)?;
        for i in 0..drive_count as usize {
            let r = HEADER_BYTES + i * DRIVE_BYTES;
            let code = |at: usize| b[r + at];
            fn decode<T>(c: u8, f: fn(u8) -> Option<T>, what: &str, i: usize) -> Result<T, HandoffError> {
                f(c).ok_or_else(|| HandoffError::BadField(format!("drive {}: unknown {} {}", i, what, c)))
            }
            let layer_count = get_u32(b, r + d::LAYER_COUNT) as usize;
            if layer_count == 0 || layer_count > 1 << 16 {
                return bad(format!("drive {}: {} layers", i, layer_count));
            }
            if version < 2 && code(d::WRITE_MODE) == WriteMode::Throwaway as u8 {
                return bad(format!("drive {}: write mode {} is version 2's, the table says version {}", i, code(d::WRITE_MODE), version));
            }
            let first_layer = get_u32(b, r + d::FIRST_LAYER) as usize;
            let overlay = (get_u64(b, r + d::OVERLAY_BASE), get_u64(b, r + d::OVERLAY_LENGTH));
            let mut drive = Drive {
                bios_number: code(d::NUMBER),
                kind: decode(code(d::KIND), DriveKind::from_code, DriveKind::WHAT, i)?,
                write_mode: decode(code(d::WRITE_MODE), WriteMode::from_code, WriteMode::WHAT, i)?,
                virtual_sectors: get_u64(b, r + d::VIRTUAL_SECTORS),
                host: HostDisk {
                    bios_drive: code(d::HOST_BIOS),
                    scheme: decode(code(d::SCHEME), HostScheme::from_code, HostScheme::WHAT, i)?,
                    mbr_signature: get_u32(b, r + d::MBR_SIG),
                    disk_guid: guid(b, r + d::DISK_GUID),
                    sectors: get_u64(b, r + d::HOST_SECTORS),
                },
                partition: HostPartition {
                    number: get_u32(b, r + d::PART_NUMBER),
                    start_lba: get_u64(b, r + d::PART_START),
                    sectors: get_u64(b, r + d::PART_SECTORS),
                    type_byte: code(d::TYPE_BYTE),
                    guid: guid(b, r + d::PART_GUID),
                },
                filesystem: decode(code(d::FILESYSTEM), Filesystem::from_code, Filesystem::WHAT, i)?,
                overlay: (overlay != (0, 0)).then_some(overlay),
                parent_dir: None,
                layers: Vec::new(),
            };
            let (pd_at, pd_len) = (get_u32(b, r + d::PARENT_DIR_OFFSET) as usize, get_u32(b, r + d::PARENT_DIR_BYTES) as usize);
            if pd_at != 0 {
                within(&format!("drive {} parent_dir", i), pd_at, pd_len)?;
                let p = core::str::from_utf8(&b[pd_at..pd_at + pd_len])
                    .map_err(|_| HandoffError::BadField(format!("drive {}: parent_dir is not UTF-8", i)))?;
                drive.parent_dir = Some(String::from(p));
            }
            if drive.partition.start_lba.saturating_add(drive.partition.sectors) > drive.host.sectors {
                return bad(format!(
                    "drive {}: partition {} ({} sectors at {}) ends past the host disk ({} sectors)",
                    i, drive.partition.number, drive.partition.sectors, drive.partition.start_lba, drive.host.sectors
                ));
            }
            for j in 0..layer_count {
                let r = first_layer + j * LAYER_BYTES;
                within(&format!("drive {} layer record {}", i, j), r, LAYER_BYTES)?;
                let format = decode(b[r + l::FORMAT], LayerFormat::from_code, LayerFormat::WHAT, i)?;
                let (path_at, path_len) = (get_u32(b, r + l::PATH_OFFSET) as usize, get_u32(b, r + l::PATH_BYTES) as usize);
                within(&format!("drive {} layer {} path", i, j), path_at, path_len)?;
                let path = core::str::from_utf8(&b[path_at..path_at + path_len])
                    .map_err(|_| HandoffError::BadField(format!("drive {} layer {}: the path is not UTF-8", i, j)))?;
                let (ext_at, ext_count) = (get_u32(b, r + l::EXTENTS_OFFSET) as usize, get_u32(b, r + l::EXTENT_COUNT) as usize);
                within(&format!("drive {} layer {} extents", i, j), ext_at, ext_count.saturating_mul(EXTENT_BYTES))?;
                let size_bytes = get_u64(b, r + l::SIZE_BYTES);
                let mut extents = Vec::with_capacity(ext_count);
                let mut next_sector = 0u64;
                for k in 0..ext_count {
                    let e = ext_at + k * EXTENT_BYTES;
                    let ext = Extent { file_sector: get_u64(b, e), lba: get_u64(b, e + 8), sectors: get_u64(b, e + 16) };
                    let end = ext.lba.checked_add(ext.sectors);
                    let part_end = drive.partition.start_lba.saturating_add(drive.partition.sectors);
                    if ext.sectors == 0 || ext.file_sector < next_sector || ext.lba < drive.partition.start_lba || end.is_none_or(|e| e > part_end) {
                        return bad(format!(
                            "{} extent {} ({} sectors of file sector {} at LBA {}) is empty, out of order, or outside partition {}",
                            path, k, ext.sectors, ext.file_sector, ext.lba, drive.partition.number
                        ));
                    }
                    next_sector = ext.file_sector.checked_add(ext.sectors).ok_or_else(|| {
                        HandoffError::BadField(format!(
                            "{} extent {} ({} sectors of file sector {}) ends past sector 2^64",
                            path, k, ext.sectors, ext.file_sector
                        ))
                    })?;
                    extents.push(ext);
                }
                if next_sector < size_bytes.div_ceil(512) {
                    return bad(format!("{}: its extents cover {} sectors of its {} bytes", path, next_sector, size_bytes));
                }
                drive.layers.push(Layer { format, size_bytes, path: String::from(path), extents });
            }
            t.drives.push(drive);
        }
        Ok(t)
    }
}

/// A parsed safe-hook header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafeHook {
    pub vendor: [u8; 8],
    /// seg:off, as in the IVT.
    pub prev_vector: u32,
    pub flags: u32,
    pub table_address: u32,
    pub boot_id: u64,
}

impl SafeHook {
    /// `bytes` from the hook's entry point; `None` without "$INT13SF" at +3.
    pub fn parse(bytes: &[u8]) -> Option<SafeHook> {
        if bytes.len() < HOOK_BYTES || bytes[3..11] != HOOK_SIGNATURE {
            return None;
        }
        let mut vendor = [0u8; 8];
        vendor.copy_from_slice(&bytes[11..19]);
        Some(SafeHook {
            vendor,
            prev_vector: get_u32(bytes, HOOK_PREV_VECTOR),
            flags: get_u32(bytes, HOOK_FLAGS),
            table_address: get_u32(bytes, HOOK_TABLE_ADDRESS),
            boot_id: get_u64(bytes, HOOK_BOOT_ID),
        })
    }

    /// Fill in a hook's fields (the JMP and the signature are already part of the stub's code).
    pub fn fill(bytes: &mut [u8], prev_vector: u32, table_address: u32, boot_id: u64) {
        put_u32(bytes, HOOK_PREV_VECTOR, prev_vector);
        put_u32(bytes, HOOK_FLAGS, 0);
        put_u32(bytes, HOOK_TABLE_ADDRESS, table_address);
        put_u64(bytes, HOOK_BOOT_ID, boot_id);
    }
}

fn linear(vector: u32) -> u64 {
    ((vector >> 16) as u64) * 16 + (vector & 0xFFFF) as u64
}

/// Find this boot's table from physical memory: IVT[13h] -> the chain of safe hooks -> the one with
/// vendor "VBOOT   " -> its table. `read(address, buf)` reads physical memory; `reserved` lists
/// the firmware's reserved ranges (base, length) as the OS got them. Returns the table.
pub fn locate(read: &mut dyn FnMut(u64, &mut [u8]) -> Result<(), String>, reserved: &[(u64, u64)]) -> Result<Table, HandoffError> {
    let mut ivt = [0u8; 4];
    read(0x13 * 4, &mut ivt).map_err(HandoffError::Read)?;
    let mut vector = u32::from_le_bytes(ivt);
    let mut seen = Vec::new();
    let hook = loop {
        let at = linear(vector);
        let mut entry = [0u8; HOOK_BYTES];
        if at >= 0x10_0000 || seen.contains(&at) || seen.len() > 16 || read(at, &mut entry).is_err() {
            return Err(HandoffError::NoHook(format!(
                "INT 13h ({:04x}:{:04x}) leads to no vboot hook after {} safe hook(s): this boot did not go through vboot",
                vector >> 16,
                vector & 0xFFFF,
                seen.len()
            )));
        }
        seen.push(at);
        match SafeHook::parse(&entry) {
            Some(h) if h.vendor == HOOK_VENDOR => break h,
            Some(h) => vector = h.prev_vector,
            None => {
                return Err(HandoffError::NoHook(format!(
                    "INT 13h ({:04x}:{:04x}) is not vboot's hook (no $INT13SF header there, after {} safe hook(s)): this boot did not go through vboot",
                    vector >> 16,
                    vector & 0xFFFF,
                    seen.len() - 1
                )))
            }
        }
    };
    let at = hook.table_address as u64;
    let mut head = [0u8; HEADER_BYTES];
    read(at, &mut head).map_err(|e| HandoffError::Read(format!("{:#x}: {}", at, e)))?;
    if head[..8] != SIGNATURE {
        return Err(HandoffError::BadSignature);
    }
    let length = get_u32(&head, h::LENGTH);
    if (length as usize) < HEADER_BYTES || length > MAX_TABLE_BYTES {
        return Err(HandoffError::BadLength(format!("{} bytes", length)));
    }
    let mut bytes = alloc::vec![0u8; length as usize];
    read(at, &mut bytes).map_err(|e| HandoffError::Read(format!("{:#x}: {}", at, e)))?;
    let table = Table::parse(&bytes, at)?;
    if table.boot_id != hook.boot_id {
        return Err(HandoffError::Stale(format!(
            "its boot ID {:016x} is not this boot's ({:016x}, from the INT 13h hook)",
            table.boot_id, hook.boot_id
        )));
    }
    check_reserved(&table, length as u64, reserved)?;
    Ok(table)
}

/// The table must lie inside one range the firmware reported reserved: memory the OS never
/// reused, and where no earlier boot's leftovers can be taken for this boot's table.
pub fn check_reserved(table: &Table, length: u64, reserved: &[(u64, u64)]) -> Result<(), HandoffError> {
    let (start, end) = (table.table_address, table.table_address + length);
    if reserved.iter().any(|&(b, l)| b <= start && end <= b.saturating_add(l)) {
        return Ok(());
    }
    Err(HandoffError::NotReserved(format!(
        "the table at {:#x}..{:#x} is not in memory the firmware reported reserved; it is from an earlier boot or the map was changed",
        start, end
    )))
}

/// A table written more than a day after the kernel started (`kernel_boot_unix`, Linux's `btime`)
/// cannot be this boot's. A day of slack: the RTC may keep local time rather than UTC, and the
/// menu may wait. A table without a time (0) passes.
pub fn check_boot_time(table: &Table, kernel_boot_unix: u64) -> Result<(), HandoffError> {
    if table.boot_time_unix != 0 && table.boot_time_unix > kernel_boot_unix.saturating_add(86400) {
        return Err(HandoffError::Stale(format!(
            "it was written at Unix time {}, more than a day after this kernel started ({})",
            table.boot_time_unix, kernel_boot_unix
        )));
    }
    Ok(())
}

/// Unix seconds from the CMOS real-time clock's fields (binary, not BCD), read as UTC.
pub fn unix_seconds(year: u32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<u64> {
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year } as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days as u64 * 86400 + hour as u64 * 3600 + minute as u64 * 60 + second as u64)
}

#[cfg(test)]
mod tests;
