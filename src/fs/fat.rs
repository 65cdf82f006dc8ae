//! FAT12/16/32 reader.
//!
//! The result that matters is a file's [`ExtentList`]: its cluster chain turned into runs of
//! volume-relative 512-byte sectors, adjacent clusters merged. The list covers exactly the sectors
//! holding the file's bytes, i.e. `ceil(size / 512)` sectors: the tail of the last cluster past
//! the end of the file is not part of it, so an engine that stays inside the list can never touch
//! another file's data. A chain longer than the size is fine (the extra clusters are ignored); a
//! chain shorter than the size, a loop, or a cluster outside the volume is [`FsError::Corrupt`].
//!
//! FAT type is decided by cluster count, as the Microsoft specification says, never by the
//! "FAT12   " label string. Logical sectors larger than 512 bytes are supported by scaling to
//! 512-byte device sectors.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{path_components, DirEntry, ExtentList, File, FileKind, FsError, LoopCheck};
use crate::block::{BlockDevice, SECTOR_BYTES};

mod crosslink;
mod write;
pub use write::{check_long_name, FatTimestamp, MAX_FILE_BYTES};

const SECTOR: u64 = SECTOR_BYTES as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }

    /// Smallest FAT value meaning "end of chain".
    fn end_of_chain(self) -> u32 {
        match self {
            FatType::Fat12 => 0xFF8,
            FatType::Fat16 => 0xFFF8,
            FatType::Fat32 => 0x0FFF_FFF8,
        }
    }

    fn bad_cluster(self) -> u32 {
        self.end_of_chain() - 1
    }
}

/// Bytes of one directory entry.
const DIR_ENTRY_BYTES: usize = 32;
/// A FAT directory holds at most 65 536 entries (the spec's limit); longer means corruption.
const MAX_DIR_BYTES: u64 = 65_536 * DIR_ENTRY_BYTES as u64;
/// Directory nesting bound for path resolution (`..` cannot go above the root anyway).
const MAX_PATH_DEPTH: usize = 256;
/// FAT sectors fetched per read: walking a multi-gigabyte file's chain at boot stays at a few
/// hundred BIOS calls.
const FAT_CACHE_SECTORS: u64 = 64;

const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_HIDDEN: u8 = 0x02;
const ATTR_SYSTEM: u8 = 0x04;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID;

/// Windows NT's case bits in byte 12 of a short entry: the base / extension are stored upper case
/// but displayed lower case (how mtools and Windows keep "readme.txt" without an LFN).
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;

/// Geometry from the boot sector, in 512-byte device sectors.
#[derive(Clone, Debug)]
struct Geometry {
    fat_type: FatType,
    /// Device sectors per cluster.
    cluster_sectors: u64,
    /// First sector of the FAT the reader uses.
    fat_start: u64,
    /// First sector of FAT number 0 (the copies follow each other).
    fat0_start: u64,
    /// Device sectors in one FAT.
    fat_sectors: u64,
    fat_count: u8,
    /// Writes go to every FAT, unless FAT32 mirroring is off (then only to the active one).
    mirrored: bool,
    /// FAT32: the FSInfo sector (free-cluster count and allocation hint).
    fsinfo_lba: Option<u64>,
    /// FAT12/16: the fixed root directory region.
    root_dir_start: u64,
    root_dir_sectors: u64,
    /// FAT32: first cluster of the root directory.
    root_cluster: u32,
    data_start: u64,
    /// Number of data clusters; valid cluster numbers are 2..=cluster_count+1.
    cluster_count: u32,
    bpb_label: Option<String>,
}

impl Geometry {
    fn max_cluster(&self) -> u32 {
        self.cluster_count + 1
    }

    fn cluster_bytes(&self) -> u64 {
        self.cluster_sectors * SECTOR
    }

    fn cluster_lba(&self, cluster: u32) -> u64 {
        self.data_start + (cluster as u64 - 2) * self.cluster_sectors
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fn not_fat(reason: &str) -> FsError {
    FsError::NotRecognized(format!("not a FAT volume: {}", reason))
}

/// Parse and check a FAT boot sector against a device of `device_sectors`.
fn parse_boot_sector(bs: &[u8; SECTOR_BYTES], device_sectors: u64) -> Result<Geometry, FsError> {
    match &bs[3..11] {
        b"NTFS    " => return Err(not_fat("the boot sector is NTFS")),
        b"EXFAT   " => return Err(not_fat("the boot sector is exFAT")),
        _ => {}
    }
    if !(bs[0] == 0xEB || bs[0] == 0xE9) {
        return Err(not_fat(
            "the boot sector does not start with a jump instruction",
        ));
    }
    let bytes_per_sector = le16(bs, 11) as u64;
    if !bytes_per_sector.is_power_of_two() || !(512..=4096).contains(&bytes_per_sector) {
        return Err(not_fat(&format!("{} bytes per sector", bytes_per_sector)));
    }
    let scale = bytes_per_sector / SECTOR;
    let sectors_per_cluster = bs[13] as u64;
    if !sectors_per_cluster.is_power_of_two() {
        return Err(not_fat(&format!(
            "{} sectors per cluster",
            sectors_per_cluster
        )));
    }
    if bytes_per_sector * sectors_per_cluster > 256 * 1024 {
        return Err(not_fat("clusters larger than 256 KiB"));
    }
    let reserved = le16(bs, 14) as u64;
    if reserved == 0 {
        return Err(not_fat("no reserved sectors"));
    }
    let fat_count = bs[16];
    if fat_count == 0 || fat_count > 4 {
        return Err(not_fat(&format!("{} FAT copies", fat_count)));
    }
    let root_entries = le16(bs, 17) as u64;
    let total16 = le16(bs, 19) as u64;
    let media = bs[21];
    if media != 0xF0 && media < 0xF8 {
        return Err(not_fat(&format!("media byte {:#04x}", media)));
    }
    let fat_size16 = le16(bs, 22) as u64;
    let total32 = le32(bs, 32) as u64;
    let fat_size32 = le32(bs, 36) as u64;
    let total = if total16 != 0 { total16 } else { total32 };
    let fat_size = if fat_size16 != 0 {
        fat_size16
    } else {
        fat_size32
    };
    if total == 0 {
        return Err(not_fat("a total sector count of 0"));
    }
    if fat_size == 0 {
        return Err(not_fat("a FAT size of 0"));
    }
    let root_dir_sectors = (root_entries * DIR_ENTRY_BYTES as u64).div_ceil(bytes_per_sector);
    let meta = reserved + fat_count as u64 * fat_size + root_dir_sectors;
    if meta >= total {
        return Err(not_fat(
            "the FATs and root directory are larger than the volume",
        ));
    }
    let cluster_count64 = (total - meta) / sectors_per_cluster;
    let fat_type = if cluster_count64 < 4085 {
        FatType::Fat12
    } else if cluster_count64 < 65525 {
        FatType::Fat16
    } else {
        FatType::Fat32
    };
    if cluster_count64 == 0 {
        return Err(not_fat("no data clusters"));
    }
    // FAT32 cluster numbers are 28 bits; the top values are reserved.
    if cluster_count64 > 0x0FFF_FFF5 {
        return Err(not_fat("more clusters than FAT32 can address"));
    }
    let cluster_count = cluster_count64 as u32;
    let (root_cluster, active_fat, label_at) = if fat_type == FatType::Fat32 {
        if fat_size16 != 0 || root_entries != 0 {
            return Err(not_fat(
                "a FAT32-sized volume whose boot sector has FAT12/16 fields (root entries or a \
                 16-bit FAT size)",
            ));
        }
        let ext_flags = le16(bs, 40);
        let version = le16(bs, 42);
        if version != 0 {
            return Err(not_fat(&format!("FAT32 version {:#06x}", version)));
        }
        let active = if ext_flags & 0x80 != 0 {
            (ext_flags & 0x0F) as u8
        } else {
            0
        };
        if active >= fat_count {
            return Err(not_fat("the active FAT does not exist"));
        }
        (le32(bs, 44), Some(active), 71usize)
    } else {
        if root_entries == 0 {
            return Err(not_fat("a FAT12/16 volume with no root directory entries"));
        }
        (0, None, 43usize)
    };
    let fat_bits_needed = match fat_type {
        FatType::Fat12 => (cluster_count64 + 2) * 12,
        FatType::Fat16 => (cluster_count64 + 2) * 16,
        FatType::Fat32 => (cluster_count64 + 2) * 32,
    };
    if fat_size * bytes_per_sector * 8 < fat_bits_needed {
        return Err(not_fat("the FAT is too small for the number of clusters"));
    }
    let volume_sectors = total * scale;
    if volume_sectors > device_sectors {
        return Err(not_fat(&format!(
            "the boot sector says the volume has {} sectors but the partition has only {}",
            volume_sectors, device_sectors
        )));
    }
    // Volume serial follows the 0x29 signature; the label only exists with that signature.
    let sig_at = if fat_type == FatType::Fat32 { 66 } else { 38 };
    let bpb_label = if bs[sig_at] == 0x29 {
        bs.get(label_at..label_at + 11).and_then(|raw| {
            let text = short_text(raw);
            if text.is_empty() || text == "NO NAME" {
                None
            } else {
                Some(text)
            }
        })
    } else {
        None
    };
    let fsinfo = le16(bs, 48) as u64;
    let fsinfo_lba = match active_fat {
        Some(_) if fsinfo != 0 && fsinfo < reserved => Some(fsinfo * scale),
        _ => None,
    };
    let geometry = Geometry {
        fat_type,
        cluster_sectors: sectors_per_cluster * scale,
        fat_start: (reserved + active_fat.unwrap_or(0) as u64 * fat_size) * scale,
        fat0_start: reserved * scale,
        fat_sectors: fat_size * scale,
        fat_count,
        mirrored: le16(bs, 40) & 0x80 == 0 || active_fat.is_none(),
        fsinfo_lba,
        root_dir_start: (reserved + fat_count as u64 * fat_size) * scale,
        root_dir_sectors: root_dir_sectors * scale,
        root_cluster,
        data_start: meta * scale,
        cluster_count,
        bpb_label,
    };
    if fat_type == FatType::Fat32 && !(2..=geometry.max_cluster()).contains(&root_cluster) {
        return Err(not_fat(&format!(
            "root directory cluster {} is outside the volume",
            root_cluster
        )));
    }
    Ok(geometry)
}

/// Bytes of an 8.3 name field as text: code-page bytes above 0x7F are not ASCII and are shown as
/// U+FFFD (an LFN, which every tool writes for such names, carries the real name).
fn short_text(raw: &[u8]) -> String {
    // One allocation: a directory walk calls this twice per entry.
    let len = raw.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    raw[..len].iter().map(|&b| if b < 0x80 { b as char } else { '\u{FFFD}' }).collect()
}

/// The 8.3 name of a short entry, as `NAME.EXT`, with the NT lower-case bits applied.
fn short_name(entry: &[u8]) -> String {
    let mut base_raw = [0u8; 8];
    base_raw.copy_from_slice(&entry[0..8]);
    // 0x05 stands for a real 0xE5 first byte (0xE5 itself marks a deleted entry).
    if base_raw[0] == 0x05 {
        base_raw[0] = 0xE5;
    }
    let case = entry[12];
    let mut base = short_text(&base_raw);
    let mut ext = short_text(&entry[8..11]);
    if case & NT_LOWER_BASE != 0 {
        base.make_ascii_lowercase();
    }
    if case & NT_LOWER_EXT != 0 {
        ext.make_ascii_lowercase();
    }
    if ext.is_empty() {
        base
    } else {
        format!("{}.{}", base, ext)
    }
}

/// The checksum of an 11-byte short name that each LFN entry carries.
pub fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Offsets of the 13 UTF-16 units inside an LFN entry.
const LFN_UNIT_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Case-insensitive name comparison. FAT itself compares upper-cased names; this folds any
/// Unicode letter whose upper case is defined by a simple mapping.
pub fn names_equal(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_uppercase)
        .eq(b.chars().flat_map(char::to_uppercase))
}

/// A directory entry as the reader needs it.
#[derive(Clone, Debug)]
struct RawEntry {
    /// Long name when a valid LFN precedes the short entry, else the 8.3 name.
    name: String,
    short_name: String,
    attr: u8,
    first_cluster: u32,
    size_bytes: u32,
    /// The short entry as stored.
    raw: [u8; DIR_ENTRY_BYTES],
    /// Slot (32-byte index in its directory) of the short entry, and of the first LFN entry
    /// belonging to it (equal when there is no long name).
    slot: usize,
    first_slot: usize,
}

impl RawEntry {
    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// Accumulates the LFN entries that precede a short entry (they come last part first).
#[derive(Default)]
struct LfnState {
    units: Vec<u16>,
    /// The sequence number the next LFN entry must have (0 = complete or none).
    expect: u8,
    checksum: u8,
    active: bool,
    /// Slot of the first entry of the sequence.
    start_slot: usize,
}

impl LfnState {
    fn reset(&mut self) {
        self.active = false;
        self.expect = 0;
        self.units.clear();
    }

    fn feed(&mut self, e: &[u8], slot: usize) {
        let ord = e[0];
        let seq = ord & 0x1F;
        if ord & 0x40 != 0 {
            if seq == 0 || seq > 20 {
                self.reset();
                return;
            }
            self.units = vec![0xFFFF; seq as usize * 13];
            self.active = true;
            self.expect = seq;
            self.checksum = e[13];
            self.start_slot = slot;
        } else if !self.active || seq == 0 || seq != self.expect || e[13] != self.checksum {
            // seq 0 never follows: after the last part (1) the sequence is complete, and a
            // further LFN entry with number 0 is debris (fuzz finding, fs_fat target).
            self.reset();
            return;
        }
        let base = (seq as usize - 1) * 13;
        for (k, &off) in LFN_UNIT_OFFSETS.iter().enumerate() {
            if let Some(slot) = self.units.get_mut(base + k) {
                *slot = le16(e, off);
            }
        }
        self.expect = seq - 1;
    }

    /// The long name and its first slot if a complete sequence belongs to the short entry
    /// `short`.
    fn take(&mut self, short: &[u8]) -> Option<(String, usize)> {
        let complete = self.active && self.expect == 0;
        let mut name11 = [0u8; 11];
        name11.copy_from_slice(&short[0..11]);
        let ok = complete && lfn_checksum(&name11) == self.checksum;
        let result = if ok {
            let units = self
                .units
                .iter()
                .copied()
                .take_while(|&u| u != 0 && u != 0xFFFF);
            let name: String = char::decode_utf16(units)
                .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect();
            if name.is_empty() {
                None
            } else {
                Some((name, self.start_slot))
            }
        } else {
            None
        };
        self.reset();
        result
    }
}

/// Parse the raw bytes of a directory. Stops at the end marker. Returns entries other than
/// deleted ones, LFN parts and `.`/`..`; volume labels come back separately.
fn parse_dir(bytes: &[u8], fat_type: FatType) -> (Vec<RawEntry>, Option<String>) {
    let mut out = Vec::new();
    let mut label = None;
    let mut lfn = LfnState::default();
    for (slot, e) in bytes.chunks_exact(DIR_ENTRY_BYTES).enumerate() {
        match e[0] {
            0x00 => break,
            0xE5 => {
                lfn.reset();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LONG_NAME {
            lfn.feed(e, slot);
            continue;
        }
        if attr & ATTR_VOLUME_ID != 0 {
            lfn.reset();
            if attr & ATTR_DIRECTORY == 0 && label.is_none() {
                let text = short_text(&e[0..11]);
                if !text.is_empty() {
                    label = Some(text);
                }
            }
            continue;
        }
        let long = lfn.take(e);
        if &e[0..11] == b".          " || &e[0..11] == b"..         " {
            continue;
        }
        let short = short_name(e);
        let hi = if fat_type == FatType::Fat32 {
            (le16(e, 20) as u32) << 16
        } else {
            0
        };
        let mut raw = [0u8; DIR_ENTRY_BYTES];
        raw.copy_from_slice(e);
        let (name, first_slot) = long.unwrap_or_else(|| (short.clone(), slot));
        out.push(RawEntry {
            name,
            short_name: short,
            attr,
            first_cluster: hi | le16(e, 26) as u32,
            size_bytes: le32(e, 28),
            raw,
            slot,
            first_slot,
        });
    }
    (out, label)
}

/// Which directory: the fixed FAT12/16 root, or one stored in clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirRef {
    FixedRoot,
    Clusters(u32),
}

/// A directory's bytes and the volume sectors they came from (directory sector -> LBA).
struct DirData {
    bytes: Vec<u8>,
    runs: ExtentList,
}

/// A path looked up: its entry (None for the root), its spelling on disk, and its parent.
struct Resolved {
    entry: Option<RawEntry>,
    spelled: String,
    parent: DirRef,
    parent_path: String,
}

/// A FAT12/16/32 volume over a device that is the volume (sector 0 = boot sector).
pub struct FatVolume<D: BlockDevice> {
    dev: D,
    geo: Geometry,
    label: Option<String>,
    /// FAT sectors cached: first sector (FAT-relative) and bytes.
    fat_cache_start: u64,
    fat_cache: Vec<u8>,
    /// Bit n set: cached sector n was changed and must be written to the FATs.
    fat_cache_dirty: u64,
    /// Timestamp written into directory entries the volume creates or changes.
    clock: write::FatTimestamp,
}

impl<D: BlockDevice> FatVolume<D> {
    /// Check the boot sector and open the volume.
    pub fn open(mut dev: D) -> Result<Self, FsError> {
        let mut bs = [0u8; SECTOR_BYTES];
        dev.read_sectors(0, &mut bs)?;
        let geo = parse_boot_sector(&bs, dev.sector_count())?;
        let mut vol = FatVolume {
            dev,
            geo,
            label: None,
            fat_cache_start: 0,
            fat_cache: Vec::new(),
            fat_cache_dirty: 0,
            clock: write::FatTimestamp::default(),
        };
        // The label Windows shows is the root directory's volume entry; the boot sector copy is
        // the fallback. A damaged root directory is reported when a path is used, not here.
        let root_label = vol
            .load_dir(vol.root_ref(), "/")
            .ok()
            .and_then(|d| parse_dir(&d.bytes, vol.geo.fat_type).1);
        vol.label = root_label.or_else(|| vol.geo.bpb_label.clone());
        Ok(vol)
    }

    pub fn fat_type(&self) -> FatType {
        self.geo.fat_type
    }

    pub fn label(&self) -> Option<String> {
        self.label.clone()
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.geo.cluster_bytes()
    }

    /// Number of data clusters (valid cluster numbers are 2..=cluster_count+1).
    pub fn cluster_count(&self) -> u32 {
        self.geo.cluster_count
    }

    pub fn into_inner(self) -> D {
        self.dev
    }

    fn root_ref(&self) -> DirRef {
        match self.geo.fat_type {
            FatType::Fat32 => DirRef::Clusters(self.geo.root_cluster),
            _ => DirRef::FixedRoot,
        }
    }

    /// Byte `offset` of the active FAT.
    fn fat_byte(&mut self, offset: u64) -> Result<u8, FsError> {
        Ok(self.fat_entry_bytes::<1>(offset)?[0])
    }

    /// The `N` bytes of the active FAT at `offset`, which lie in one sector (a byte, or a FAT16
    /// or FAT32 entry: entries are aligned to their size). One cache lookup for the whole entry: the
    /// firmware walks tens of thousands of entries when a file grows, and under TCG four
    /// byte-sized lookups per entry cost most of that.
    fn fat_entry_bytes<const N: usize>(&mut self, offset: u64) -> Result<[u8; N], FsError> {
        let sector = offset / SECTOR;
        if sector >= self.geo.fat_sectors {
            return Err(FsError::Corrupt(format!("FAT offset {} is past the end of the FAT", offset)));
        }
        self.load_fat_sector(sector)?;
        let at = (offset - self.fat_cache_start * SECTOR) as usize;
        self.fat_cache
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| FsError::Corrupt(String::from("FAT cache miss")))
    }

    /// Make sure FAT sector `sector` (FAT-relative) is in the cache.
    fn load_fat_sector(&mut self, sector: u64) -> Result<(), FsError> {
        let cached_sectors = self.fat_cache.len() as u64 / SECTOR;
        if sector < self.fat_cache_start || sector >= self.fat_cache_start + cached_sectors {
            self.flush_fat()?;
            let start = sector - sector % FAT_CACHE_SECTORS;
            let count = FAT_CACHE_SECTORS.min(self.geo.fat_sectors - start);
            self.fat_cache.resize((count * SECTOR) as usize, 0);
            if let Err(e) = self
                .dev
                .read_sectors(self.geo.fat_start + start, &mut self.fat_cache)
            {
                self.fat_cache.clear();
                return Err(e.into());
            }
            self.fat_cache_start = start;
        }
        Ok(())
    }

    /// Write changed FAT sectors to every FAT copy (only the active one when FAT32 mirroring is
    /// off). Consecutive changed sectors go in one write per copy: growing a file by 256 MiB
    /// changes hundreds of FAT sectors, and under the BIOS every write is a call.
    fn flush_fat(&mut self) -> Result<(), FsError> {
        let cached = (self.fat_cache.len() / SECTOR_BYTES).min(64) as u64;
        let mut bit = 0u64;
        while bit < cached {
            if self.fat_cache_dirty & (1 << bit) == 0 {
                bit += 1;
                continue;
            }
            let mut end = bit + 1;
            while end < cached && self.fat_cache_dirty & (1 << end) != 0 {
                end += 1;
            }
            let data = &self.fat_cache[(bit * SECTOR) as usize..(end * SECTOR) as usize];
            for copy in 0..self.geo.fat_count as u64 {
                let copy_start = self.geo.fat0_start + copy * self.geo.fat_sectors;
                if !self.geo.mirrored && copy_start != self.geo.fat_start {
                    continue;
                }
                self.dev.write_sectors(copy_start + self.fat_cache_start + bit, data)?;
            }
            for b in bit..end {
                self.fat_cache_dirty &= !(1 << b);
            }
            bit = end;
        }
        // Dirty bits past the cached sectors mean nothing (the cache holds no such sector).
        self.fat_cache_dirty = 0;
        Ok(())
    }

    /// The FAT entry of `cluster` (FAT32: the low 28 bits).
    fn fat_entry(&mut self, cluster: u32) -> Result<u32, FsError> {
        let c = cluster as u64;
        Ok(match self.geo.fat_type {
            FatType::Fat12 => {
                let at = c + c / 2;
                let v = self.fat_byte(at)? as u32 | (self.fat_byte(at + 1)? as u32) << 8;
                if c & 1 == 1 {
                    v >> 4
                } else {
                    v & 0xFFF
                }
            }
            FatType::Fat16 => u16::from_le_bytes(self.fat_entry_bytes::<2>(2 * c)?) as u32,
            FatType::Fat32 => u32::from_le_bytes(self.fat_entry_bytes::<4>(4 * c)?) & 0x0FFF_FFFF,
        })
    }

    /// Check that `cluster` may appear in a chain of `what`.
    fn check_cluster(&self, cluster: u32, what: &str) -> Result<(), FsError> {
        if cluster < 2 || cluster > self.geo.max_cluster() {
            return Err(FsError::Corrupt(format!(
                "the cluster chain of {} reaches cluster {}, outside the volume (clusters 2..={})",
                what,
                cluster,
                self.geo.max_cluster()
            )));
        }
        Ok(())
    }

    /// The next cluster after `cluster`, or None at the end of the chain.
    fn next_cluster(&mut self, cluster: u32, what: &str) -> Result<Option<u32>, FsError> {
        let v = self.fat_entry(cluster)?;
        let t = self.geo.fat_type;
        if v >= t.end_of_chain() {
            Ok(None)
        } else if v == t.bad_cluster() {
            Err(FsError::Corrupt(format!(
                "the cluster chain of {} runs into a bad cluster",
                what
            )))
        } else if v == 0 {
            Err(FsError::Corrupt(format!(
                "the cluster chain of {} runs into free cluster {} (after cluster {})",
                what, v, cluster
            )))
        } else {
            self.check_cluster(v, what)?;
            Ok(Some(v))
        }
    }

    /// Sector runs of up to `max_clusters` clusters of the chain starting at `first`. With
    /// `need_all`, a chain shorter than `max_clusters` is an error; without, the chain's end
    /// stops the walk (and a chain longer than `max_clusters` is an error: used for
    /// directories, whose size is the chain's length).
    fn chain_runs(
        &mut self,
        first: u32,
        max_clusters: u64,
        need_all: bool,
        what: &str,
    ) -> Result<(ExtentList, u64), FsError> {
        let mut runs = ExtentList::default();
        let mut cluster = first;
        self.check_cluster(cluster, what)?;
        let mut walked: u64 = 0;
        let mut too_long = false;
        // A loop is caught within a few times the chain's distinct clusters, so a 2-cluster loop
        // behind a directory entry claiming 2 GiB costs a few runs, not millions.
        let mut loop_check = LoopCheck::default();
        loop {
            if loop_check.visit(cluster as u64) {
                return Err(FsError::Corrupt(format!(
                    "the cluster chain of {} loops (cluster {} comes back after {} clusters)",
                    what, cluster, walked
                )));
            }
            walked += 1;
            runs.push(self.geo.cluster_lba(cluster), self.geo.cluster_sectors);
            if walked == max_clusters {
                too_long = !need_all && self.next_cluster(cluster, what)?.is_some();
                break;
            }
            match self.next_cluster(cluster, what)? {
                Some(next) => cluster = next,
                None if need_all => {
                    return Err(FsError::Corrupt(format!(
                        "{} needs {} clusters for its size but its cluster chain ends after {}",
                        what, max_clusters, walked
                    )))
                }
                None => break,
            }
        }
        // The walk may stop (at `max_clusters`) before the loop check has seen a repeat: a
        // repeated cluster makes two runs overlap (a cluster cannot repeat inside one run, whose
        // clusters ascend). The runs are at most a few times the chain's distinct clusters.
        let mut sorted: Vec<(u64, u64)> = runs.extents.iter().map(|e| (e.lba, e.sectors)).collect();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                let cluster = (w[1].0 - self.geo.data_start) / self.geo.cluster_sectors + 2;
                return Err(FsError::Corrupt(format!(
                    "the cluster chain of {} loops (cluster {} appears twice)",
                    what, cluster
                )));
            }
        }
        if too_long {
            return Err(FsError::Corrupt(format!(
                "{} is longer than a directory can be ({} clusters)",
                what, max_clusters
            )));
        }
        Ok((runs, walked))
    }

    /// All bytes of a directory, and where they are.
    fn load_dir(&mut self, dir: DirRef, what: &str) -> Result<DirData, FsError> {
        let (runs, total_sectors) = match dir {
            DirRef::FixedRoot => {
                let mut l = ExtentList::default();
                l.push(self.geo.root_dir_start, self.geo.root_dir_sectors);
                (l, self.geo.root_dir_sectors)
            }
            DirRef::Clusters(first) => {
                let max = (MAX_DIR_BYTES / self.geo.cluster_bytes()).max(1);
                let max = max.min(self.geo.cluster_count as u64);
                let (runs, clusters) = self.chain_runs(first, max, false, what)?;
                (runs, clusters * self.geo.cluster_sectors)
            }
        };
        let mut bytes = vec![0u8; (total_sectors * SECTOR) as usize];
        for e in &runs.extents {
            let at = (e.file_sector * SECTOR) as usize;
            let len = (e.sectors * SECTOR) as usize;
            let dst = bytes.get_mut(at..at + len).ok_or_else(|| {
                FsError::Corrupt(String::from("directory run outside its buffer"))
            })?;
            self.dev.read_sectors(e.lba, dst)?;
        }
        Ok(DirData { bytes, runs })
    }

    fn read_dir(&mut self, dir: DirRef, what: &str) -> Result<Vec<RawEntry>, FsError> {
        let data = self.load_dir(dir, what)?;
        Ok(parse_dir(&data.bytes, self.geo.fat_type).0)
    }

    fn dir_ref_of(&self, entry: &RawEntry) -> DirRef {
        // A `..`-style zero cluster means the root directory.
        if entry.first_cluster == 0 {
            self.root_ref()
        } else {
            DirRef::Clusters(entry.first_cluster)
        }
    }

    /// Resolve `path`.
    fn resolve(&mut self, path: &str) -> Result<Resolved, FsError> {
        // Stack of (directory, entry that names it) from the root down.
        let mut stack: Vec<RawEntry> = Vec::new();
        let mut parts = path_components(path).peekable();
        while let Some(part) = parts.next() {
            if part == ".." {
                stack.pop();
                continue;
            }
            if stack.len() >= MAX_PATH_DEPTH {
                return Err(FsError::NotFound {
                    path: String::from(path),
                });
            }
            let dir = match stack.last() {
                Some(e) => self.dir_ref_of(e),
                None => self.root_ref(),
            };
            let here = dir_path(&stack);
            let entries = self.read_dir(dir, &here)?;
            let found = entries
                .into_iter()
                .find(|e| names_equal(&e.name, part) || names_equal(&e.short_name, part));
            match found {
                Some(e) => {
                    if parts.peek().is_some() && !e.is_dir() {
                        let mut p = here.clone();
                        if !p.ends_with('/') {
                            p.push('/');
                        }
                        p.push_str(&e.name);
                        return Err(FsError::NotADirectory { path: p });
                    }
                    stack.push(e);
                }
                None => {
                    return Err(FsError::NotFound {
                        path: String::from(path),
                    })
                }
            }
        }
        let spelled = dir_path(&stack);
        let entry = stack.pop();
        let parent = match stack.last() {
            Some(e) => self.dir_ref_of(e),
            None => self.root_ref(),
        };
        Ok(Resolved {
            entry,
            spelled,
            parent,
            parent_path: dir_path(&stack),
        })
    }

    /// Open a file and compute its extent list.
    pub fn open_file(&mut self, path: &str) -> Result<File, FsError> {
        let Resolved { entry, spelled, .. } = self.resolve(path)?;
        let entry = match entry {
            Some(e) if !e.is_dir() => e,
            _ => return Err(FsError::IsADirectory { path: spelled }),
        };
        let size = entry.size_bytes as u64;
        let mut extents = ExtentList::default();
        if size > 0 {
            if entry.first_cluster == 0 {
                return Err(FsError::Corrupt(format!(
                    "{} has {} bytes but no clusters",
                    spelled, size
                )));
            }
            let clusters = size.div_ceil(self.geo.cluster_bytes());
            if clusters > self.geo.cluster_count as u64 {
                return Err(FsError::Corrupt(format!(
                    "{} claims {} bytes, more than the whole volume",
                    spelled, size
                )));
            }
            let (runs, _) = self.chain_runs(entry.first_cluster, clusters, true, &spelled)?;
            // Keep exactly the sectors that hold the file's bytes.
            let mut remaining = size.div_ceil(SECTOR);
            for e in &runs.extents {
                if remaining == 0 {
                    break;
                }
                let take = e.sectors.min(remaining);
                extents.push(e.lba, take);
                remaining -= take;
            }
        }
        Ok(File {
            path: spelled,
            size_bytes: size,
            extents,
        })
    }

    /// The entries of a directory (without `.`, `..`, deleted entries and volume labels).
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let Resolved { entry, spelled, .. } = self.resolve(path)?;
        let dir = match &entry {
            None => self.root_ref(),
            Some(e) if e.is_dir() => self.dir_ref_of(e),
            Some(_) => return Err(FsError::NotADirectory { path: spelled }),
        };
        let entries = self.read_dir(dir, &spelled)?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                kind: if e.is_dir() {
                    FileKind::Directory
                } else {
                    FileKind::File
                },
                size_bytes: if e.is_dir() { 0 } else { e.size_bytes as u64 },
                name: e.name,
            })
            .collect())
    }

    /// Read file bytes from `offset_bytes` into `buf` through the file's extent list. Returns the
    /// number of bytes read (short at the end of the file).
    pub fn read_file(
        &mut self,
        file: &File,
        offset_bytes: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        if offset_bytes >= file.size_bytes {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(file.size_bytes - offset_bytes) as usize;
        let mut done = 0usize;
        let mut sector_buf = [0u8; SECTOR_BYTES];
        while done < want {
            let pos = offset_bytes + done as u64;
            let file_sector = pos / SECTOR;
            let within = (pos % SECTOR) as usize;
            let (lba, run) = file.extents.lookup(file_sector).ok_or_else(|| {
                FsError::Corrupt(format!(
                    "{}: no extent for file sector {}",
                    file.path, file_sector
                ))
            })?;
            let left = want - done;
            if within == 0 && left >= SECTOR_BYTES {
                // Whole sectors straight into the caller's buffer, at most 128 per request (the
                // size of one BIOS extended read).
                let sectors = run.min((left / SECTOR_BYTES) as u64).min(128);
                let bytes = sectors as usize * SECTOR_BYTES;
                self.dev.read_sectors(lba, &mut buf[done..done + bytes])?;
                done += bytes;
            } else {
                self.dev.read_sectors(lba, &mut sector_buf)?;
                let n = (SECTOR_BYTES - within).min(left);
                buf[done..done + n].copy_from_slice(&sector_buf[within..within + n]);
                done += n;
            }
        }
        Ok(done)
    }

    /// The whole file, refused if it is larger than `max_bytes`.
    pub fn read_to_vec(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FsError> {
        let file = self.open_file(path)?;
        if file.size_bytes > max_bytes {
            return Err(FsError::Unsupported(format!(
                "{} is {} bytes, larger than the {} bytes allowed here",
                file.path, file.size_bytes, max_bytes
            )));
        }
        let mut v = vec![0u8; file.size_bytes as usize];
        let n = self.read_file(&file, 0, &mut v)?;
        v.truncate(n);
        Ok(v)
    }
}

/// "/a/b" for a stack of entries (the root is "/").
fn dir_path(stack: &[RawEntry]) -> String {
    if stack.is_empty() {
        return String::from("/");
    }
    let mut s = String::new();
    for e in stack {
        s.push('/');
        s.push_str(&e.name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long-name entry numbered 0 after a complete sequence (fuzz finding, fs_fat target:
    /// `seq - 1` wrapped).
    #[test]
    fn a_long_name_part_numbered_zero_after_a_complete_sequence_is_debris() {
        let mut lfn = LfnState::default();
        let mut e = [0u8; 32];
        e[0] = 0x41; // last part, number 1
        e[11] = 0x0F;
        e[13] = 0x5A;
        lfn.feed(&e, 0);
        assert!(lfn.active && lfn.expect == 0);
        e[0] = 0x00; // number 0, same checksum
        lfn.feed(&e, 1);
        assert!(!lfn.active);
    }
    use crate::block::MemDisk;

    /// A hand-built FAT12 volume: 2048 sectors, 1 sector per cluster, 2 FATs of 6 sectors,
    /// 224 root entries (14 sectors). Data (cluster 2) starts at sector 27.
    struct Builder {
        disk: MemDisk,
        root_used: usize,
    }

    const DATA_START: u64 = 27;

    impl Builder {
        fn new() -> Self {
            let mut disk = MemDisk::zeroed(2048);
            let b = &mut disk.bytes;
            b[0] = 0xEB;
            b[1] = 0x3C;
            b[2] = 0x90;
            b[3..11].copy_from_slice(b"TESTFAT ");
            b[11..13].copy_from_slice(&512u16.to_le_bytes());
            b[13] = 1;
            b[14..16].copy_from_slice(&1u16.to_le_bytes());
            b[16] = 2;
            b[17..19].copy_from_slice(&224u16.to_le_bytes());
            b[19..21].copy_from_slice(&2048u16.to_le_bytes());
            b[21] = 0xF8;
            b[22..24].copy_from_slice(&6u16.to_le_bytes());
            b[38] = 0x29;
            b[43..54].copy_from_slice(b"BPB LABEL  ");
            b[510] = 0x55;
            b[511] = 0xAA;
            let mut me = Builder { disk, root_used: 0 };
            me.set_fat(0, 0xFF8);
            me.set_fat(1, 0xFFF);
            me
        }

        fn set_fat(&mut self, cluster: u32, value: u32) {
            for fat in 0..2 {
                let base = 512 + fat * 6 * 512;
                let at = base + (cluster as usize * 3) / 2;
                let b = &mut self.disk.bytes;
                if cluster & 1 == 0 {
                    b[at] = value as u8;
                    b[at + 1] = (b[at + 1] & 0xF0) | ((value >> 8) as u8 & 0x0F);
                } else {
                    b[at] = (b[at] & 0x0F) | ((value << 4) as u8);
                    b[at + 1] = (value >> 4) as u8;
                }
            }
        }

        fn chain(&mut self, clusters: &[u32]) {
            for w in clusters.windows(2) {
                self.set_fat(w[0], w[1]);
            }
            if let Some(&last) = clusters.last() {
                self.set_fat(last, 0xFFF);
            }
        }

        fn fill_cluster(&mut self, cluster: u32, byte: u8) {
            let at = (DATA_START as usize + cluster as usize - 2) * 512;
            self.disk.bytes[at..at + 512].fill(byte);
        }

        fn raw_entry(&mut self, entry: [u8; 32]) {
            let at = (13 * 512) + self.root_used * 32;
            self.disk.bytes[at..at + 32].copy_from_slice(&entry);
            self.root_used += 1;
        }

        fn entry(&mut self, name11: &[u8; 11], attr: u8, cluster: u32, size: u32) {
            let mut e = [0u8; 32];
            e[0..11].copy_from_slice(name11);
            e[11] = attr;
            e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
            self.raw_entry(e);
        }

        fn lfn(&mut self, long: &str, short: &[u8; 11]) {
            let units: Vec<u16> = long.encode_utf16().collect();
            let parts = units.len().div_ceil(13);
            let sum = lfn_checksum(short);
            for seq in (1..=parts).rev() {
                let mut e = [0u8; 32];
                e[0] = seq as u8 | if seq == parts { 0x40 } else { 0 };
                e[11] = ATTR_LONG_NAME;
                e[13] = sum;
                for (k, &off) in LFN_UNIT_OFFSETS.iter().enumerate() {
                    let i = (seq - 1) * 13 + k;
                    let u = match i.cmp(&units.len()) {
                        core::cmp::Ordering::Less => units[i],
                        core::cmp::Ordering::Equal => 0,
                        core::cmp::Ordering::Greater => 0xFFFF,
                    };
                    e[off..off + 2].copy_from_slice(&u.to_le_bytes());
                }
                self.raw_entry(e);
            }
        }

        fn open(self) -> FatVolume<MemDisk> {
            FatVolume::open(self.disk).unwrap()
        }
    }

    fn corrupt_message(r: Result<File, FsError>) -> String {
        match r {
            Err(FsError::Corrupt(m)) => m,
            other => panic!("expected Corrupt, got {:?}", other),
        }
    }

    #[test]
    fn fragmented_file_extents_and_bytes() {
        let mut b = Builder::new();
        b.chain(&[2, 3, 7, 8, 4]);
        for (i, c) in [2u32, 3, 7, 8, 4].iter().enumerate() {
            b.fill_cluster(*c, i as u8 + 1);
        }
        b.entry(b"DATA    BIN", 0x20, 2, 4 * 512 + 100);
        let mut v = b.open();
        assert_eq!(v.fat_type(), FatType::Fat12);
        assert_eq!(v.label().as_deref(), Some("BPB LABEL"));
        let f = v.open_file("\\data.BIN").unwrap();
        assert_eq!(f.path, "/DATA.BIN");
        let runs: Vec<(u64, u64, u64)> = f
            .extents
            .extents
            .iter()
            .map(|e| (e.file_sector, e.lba, e.sectors))
            .collect();
        assert_eq!(runs, [(0, 27, 2), (2, 32, 2), (4, 29, 1)]);
        let data = v.read_to_vec("/DATA.BIN", 1 << 20).unwrap();
        assert_eq!(data.len(), 2148);
        assert!(data[..512].iter().all(|&x| x == 1));
        assert!(data[2048..].iter().all(|&x| x == 5));
        // Unaligned read across a run boundary.
        let mut buf = [0u8; 10];
        assert_eq!(v.read_file(&f, 1019, &mut buf).unwrap(), 10);
        assert_eq!(buf, [2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
        assert_eq!(v.read_file(&f, 2140, &mut buf).unwrap(), 8);
        assert_eq!(v.read_file(&f, 5000, &mut buf).unwrap(), 0);
        assert!(matches!(
            v.read_to_vec("/DATA.BIN", 100),
            Err(FsError::Unsupported(_))
        ));
    }

    #[test]
    fn chain_longer_than_size_is_cut_to_the_file_sectors() {
        let mut b = Builder::new();
        b.chain(&[10, 11, 12, 13]);
        b.entry(b"SHORT   TXT", 0x20, 10, 513);
        let mut v = b.open();
        let f = v.open_file("short.txt").unwrap();
        assert_eq!(f.extents.total_sectors(), 2);
        assert_eq!(f.extents.extents.len(), 1);
    }

    #[test]
    fn empty_file_has_no_extents() {
        let mut b = Builder::new();
        b.entry(b"EMPTY      ", 0x20, 0, 0);
        let mut v = b.open();
        let f = v.open_file("/empty").unwrap();
        assert_eq!(f.size_bytes, 0);
        assert!(f.extents.extents.is_empty());
        assert_eq!(v.read_to_vec("/empty", 10).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn cycle_is_an_error() {
        let mut b = Builder::new();
        b.chain(&[5, 6]);
        b.set_fat(6, 5);
        b.entry(b"LOOP       ", 0x20, 5, 10 * 512);
        let mut v = b.open();
        let m = corrupt_message(v.open_file("/loop"));
        assert!(m.contains("loops") && m.contains("/LOOP"), "{}", m);
        // A cluster pointing at itself.
        let mut b = Builder::new();
        b.set_fat(5, 5);
        b.entry(b"SELF       ", 0x20, 5, 3 * 512);
        assert!(corrupt_message(b.open().open_file("/self")).contains("loops"));
    }

    /// Issue 14: a loop behind a size that claims nearly the whole volume is reported after a
    /// few clusters (the runs built are at most the clusters walked), not after the size's 1,900.
    #[test]
    fn loop_behind_a_large_size_is_found_early() {
        let mut b = Builder::new();
        b.chain(&[5, 6, 7]);
        b.set_fat(7, 6);
        b.entry(b"BIGLOOP    ", 0x20, 5, 1900 * 512);
        let m = corrupt_message(b.open().open_file("/bigloop"));
        let walked: u64 = m.split("after ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).expect(&m);
        assert!(m.contains("loops") && walked <= 3 * 3, "{}", m);
    }

    #[test]
    fn cluster_outside_volume_is_an_error() {
        let mut b = Builder::new();
        b.chain(&[5, 4000]);
        b.entry(b"FAR        ", 0x20, 5, 1024);
        let m = corrupt_message(b.open().open_file("/far"));
        assert!(m.contains("4000") && m.contains("outside"), "{}", m);
        let mut b = Builder::new();
        b.entry(b"FIRST      ", 0x20, 3000, 10);
        assert!(corrupt_message(b.open().open_file("/first")).contains("outside"));
        let mut b = Builder::new();
        b.entry(b"ONE        ", 0x20, 1, 10);
        assert!(corrupt_message(b.open().open_file("/one")).contains("outside"));
    }

    #[test]
    fn size_longer_than_chain_is_an_error() {
        let mut b = Builder::new();
        b.chain(&[5, 6]);
        b.entry(b"BIG        ", 0x20, 5, 3 * 512);
        let m = corrupt_message(b.open().open_file("/big"));
        assert!(
            m.contains("needs 3 clusters") && m.contains("ends after 2"),
            "{}",
            m
        );
        // Free cluster inside a chain.
        let mut b = Builder::new();
        b.set_fat(5, 6);
        b.entry(b"HOLE       ", 0x20, 5, 3 * 512);
        assert!(corrupt_message(b.open().open_file("/hole")).contains("free cluster"));
        // Larger than the whole volume.
        let mut b = Builder::new();
        b.chain(&[5]);
        b.entry(b"HUGE       ", 0x20, 5, u32::MAX);
        assert!(corrupt_message(b.open().open_file("/huge")).contains("whole volume"));
        // Bytes but no cluster.
        let mut b = Builder::new();
        b.entry(b"NONE       ", 0x20, 0, 5);
        assert!(corrupt_message(b.open().open_file("/none")).contains("no clusters"));
    }

    #[test]
    fn directory_cycle_is_an_error() {
        let mut b = Builder::new();
        b.chain(&[20, 21]);
        b.set_fat(21, 20);
        b.entry(b"SUB        ", ATTR_DIRECTORY, 20, 0);
        let mut v = b.open();
        match v.list_dir("/sub") {
            Err(FsError::Corrupt(m)) => assert!(m.contains("loops"), "{}", m),
            other => panic!("{:?}", other),
        }
    }

    #[test]
    fn long_names_checksums_and_labels() {
        let mut b = Builder::new();
        b.entry(b"MY VOLUME  ", ATTR_VOLUME_ID, 0, 0);
        b.lfn("Windows XP Disk.vhd", b"WINDOW~1VHD");
        b.entry(b"WINDOW~1VHD", 0x20, 0, 0);
        // A long name whose checksum belongs to another short name: ignored.
        b.lfn("Stale Name.txt", b"OTHER   TXT");
        b.entry(b"STALE~1 TXT", 0x20, 0, 0);
        // A deleted entry between LFN and short entry breaks the sequence.
        b.lfn("Deleted Between.txt", b"DELETE~1TXT");
        b.raw_entry({
            let mut e = [0u8; 32];
            e[0] = 0xE5;
            e
        });
        b.entry(b"DELETE~1TXT", 0x20, 0, 0);
        // NT lower-case bits.
        let mut e = [0u8; 32];
        e[0..11].copy_from_slice(b"README  TXT");
        e[11] = 0x20;
        e[12] = NT_LOWER_BASE | NT_LOWER_EXT;
        b.raw_entry(e);
        b.lfn("Ünïcode Änd Ω.img", b"UNICOD~1IMG");
        b.entry(b"UNICOD~1IMG", 0x20, 0, 0);
        b.entry(b"DIR        ", ATTR_DIRECTORY, 0, 0);
        let mut v = b.open();
        assert_eq!(v.label().as_deref(), Some("MY VOLUME"));
        let names: Vec<String> = v
            .list_dir("/")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            [
                "Windows XP Disk.vhd",
                "STALE~1.TXT",
                "DELETE~1.TXT",
                "readme.txt",
                "Ünïcode Änd Ω.img",
                "DIR"
            ]
        );
        assert_eq!(
            v.open_file("/WINDOWS XP DISK.VHD").unwrap().path,
            "/Windows XP Disk.vhd"
        );
        assert_eq!(
            v.open_file("/window~1.vhd").unwrap().path,
            "/Windows XP Disk.vhd"
        );
        assert_eq!(
            v.open_file("/üNÏCODE äND ω.IMG").unwrap().path,
            "/Ünïcode Änd Ω.img"
        );
        assert_eq!(v.open_file("/README.TXT").unwrap().path, "/readme.txt");
        assert!(matches!(
            v.open_file("/Stale Name.txt"),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            v.open_file("/dir"),
            Err(FsError::IsADirectory { .. })
        ));
        assert!(matches!(
            v.open_file("/"),
            Err(FsError::IsADirectory { .. })
        ));
        assert!(matches!(
            v.open_file("/readme.txt/x"),
            Err(FsError::NotADirectory { .. })
        ));
        assert!(matches!(
            v.list_dir("/readme.txt"),
            Err(FsError::NotADirectory { .. })
        ));
        // `..` from the root stays at the root; `.` is ignored.
        assert_eq!(
            v.open_file("/dir/../../././readme.txt").unwrap().path,
            "/readme.txt"
        );
    }

    #[test]
    fn full_fixed_root_refuses_new_entries() {
        let mut b = Builder::new();
        for i in 0..223u32 {
            let mut name = *b"F       BIN";
            name[1..4].copy_from_slice(format!("{:03}", i).as_bytes());
            b.entry(&name, 0x20, 0, 0);
        }
        let mut v = b.open();
        // One slot left: an 8.3 upper-case name fits, a long name (2 slots) does not.
        v.create_file("/LAST.BIN").unwrap();
        match v.create_file("/Another long name.bin") {
            Err(FsError::Unsupported(m)) => assert!(m.contains("root directory is full"), "{}", m),
            other => panic!("{:?}", other.map(|f| f.path)),
        }
        assert_eq!(v.list_dir("/").unwrap().len(), 224);
    }

    #[test]
    fn bad_boot_sectors_are_not_recognized() {
        let reason = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Builder::new();
            f(&mut b.disk.bytes);
            match FatVolume::open(b.disk) {
                Err(FsError::NotRecognized(r)) => r,
                Err(e) => panic!("{:?}", e),
                Ok(_) => panic!("accepted"),
            }
        };
        assert!(reason(&|b| b[0] = 0).contains("jump"));
        assert!(reason(&|b| b[12] = 3).contains("bytes per sector"));
        assert!(reason(&|b| b[13] = 3).contains("sectors per cluster"));
        assert!(reason(&|b| b[16] = 0).contains("FAT copies"));
        assert!(reason(&|b| b[21] = 0x12).contains("media"));
        assert!(reason(&|b| b[19..21].copy_from_slice(&[0, 0])).contains("total sector"));
        assert!(
            reason(&|b| b[19..21].copy_from_slice(&2060u16.to_le_bytes()))
                .contains("partition has only")
        );
        assert!(reason(&|b| {
            b[22] = 0;
            b[38] = 0
        })
        .contains("FAT size"));
        assert!(reason(&|b| b[22] = 1).contains("too small"));
        assert!(reason(&|b| b[3..11].copy_from_slice(b"NTFS    ")).contains("NTFS"));
        assert!(matches!(
            FatVolume::open(MemDisk::zeroed(100)),
            Err(FsError::NotRecognized(_))
        ));
        assert!(matches!(
            FatVolume::open(MemDisk::zeroed(0)),
            Err(FsError::Block(_))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let template = {
            let mut b = Builder::new();
            b.chain(&[2, 3, 4]);
            b.lfn("A long file name.bin", b"ALONGF~1BIN");
            b.entry(b"ALONGF~1BIN", 0x20, 2, 1400);
            b.entry(b"SUB        ", ATTR_DIRECTORY, 5, 0);
            b.chain(&[5]);
            b.disk
        };
        for round in 0..400 {
            let mut d = template.clone();
            // Scribble over the FAT, the root directory, and (sometimes) the boot sector.
            for _ in 0..40 {
                let r = next();
                let region = match round % 3 {
                    0 => 512..512 + 6 * 512,
                    1 => 13 * 512..27 * 512,
                    _ => 0..64,
                };
                let at = region.start + (r as usize >> 8) % region.len();
                d.bytes[at] = r as u8;
            }
            if let Ok(mut v) = FatVolume::open(d) {
                // Metadata writes on a damaged volume: errors, never panics or hangs.
                if round % 2 == 0 {
                    let _ = v.set_len("/A long file name.bin", 5000, true);
                    let _ = v.create_file("/sub/new file.txt");
                    let _ = v.rename("/A long file name.bin", "/sub/moved.bin");
                    let _ = v.delete("/sub/moved.bin");
                    let _ = v.create_dir("/sub/dir");
                }
                for p in ["/A long file name.bin", "/sub", "/sub/x", "/"] {
                    if let Ok(f) = v.open_file(p) {
                        let mut buf = vec![0u8; 4096];
                        let _ = v.read_file(&f, 0, &mut buf);
                    }
                    let _ = v.list_dir(p);
                }
            }
        }
    }
}
