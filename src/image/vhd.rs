//! VHD (Microsoft Virtual Hard Disk 1.0): fixed, dynamic and differencing images.
//!
//! Layout facts are in docs/image-formats.md, "VHD". Choices made here:
//! - The footer is read at EOF-512, then EOF-511 (pre-2004 images), then the copy at offset 0
//!   (dynamic/differencing only); a bad checksum makes a copy unusable.
//! - Virtual size follows qemu's creator table so qemu-img is a usable oracle: creator `vpc ` or
//!   `qemu` with a geometry below the 65535/16/255 maximum -> C*H*S*512, otherwise Current Size.
//! - A *dynamic* (non-differencing) block that is allocated reads entirely from the file: the
//!   spec requires sectors whose bitmap bit is 0 to hold zeros, which is also what qemu returns,
//!   and it saves reading a bitmap per block at open. A *differencing* block consults its bitmap
//!   (MSB first; 0 = ask the parent).
//!
//! Writing and slack (docs/image-formats.md, "VHD: allocation order"): the footer always stays at
//! the end of the file and never moves at boot. Reserved slack is zero-filled space between the end
//! of the last block and the footer (readers allow padding there). A new block is placed at the
//! first free byte after the metadata and the existing blocks; the write order is: block data ->
//! bitmap -> BAT entry, with a flush after each. In a dynamic image the whole block is written,
//! zero filled, so stale bytes never become visible (its blocks are read whole); in a differencing
//! image only the sectors written, since the bitmap sends the others to the parent. A crash leaves
//! at worst an unreferenced block that the next allocation reuses. When there is no slack and the
//! file may grow (host tools), the new footer is written at the new end first (so a valid footer is
//! at EOF at every instant), then the block over the old footer, then the BAT entry.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use static_assertions::const_assert_eq;

use super::cache::PieceCache;
use super::{be_u16, be_u32, be_u64, bytes16, hex16, put, read_u32_table, Format, Identity, ImageError, ImageFile, Layer, Mapping, ParentLink, SECTOR_BYTES};

pub const FOOTER_BYTES: usize = 512;
pub const DYN_HEADER_BYTES: usize = 1024;
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// Footer field offsets (spec table, all big-endian).
mod footer_off {
    pub const COOKIE: usize = 0;
    pub const FEATURES: usize = 8;
    pub const VERSION: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const TIMESTAMP: usize = 24;
    pub const CREATOR_APP: usize = 28;
    pub const CREATOR_VERSION: usize = 32;
    pub const CREATOR_OS: usize = 36;
    pub const ORIGINAL_SIZE: usize = 40;
    pub const CURRENT_SIZE: usize = 48;
    pub const CYLINDERS: usize = 56;
    pub const HEADS: usize = 58;
    pub const SECTORS_PER_TRACK: usize = 59;
    pub const DISK_TYPE: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const UNIQUE_ID: usize = 68;
    pub const SAVED_STATE: usize = 84;
    pub const RESERVED: usize = 85;
    pub const END: usize = RESERVED + 427;
}
const_assert_eq!(footer_off::END, FOOTER_BYTES);

/// Dynamic header field offsets (spec table, all big-endian).
mod header_off {
    pub const COOKIE: usize = 0;
    pub const DATA_OFFSET: usize = 8;
    pub const TABLE_OFFSET: usize = 16;
    pub const VERSION: usize = 24;
    pub const MAX_TABLE_ENTRIES: usize = 28;
    pub const BLOCK_SIZE: usize = 32;
    pub const CHECKSUM: usize = 36;
    pub const PARENT_UUID: usize = 40;
    pub const PARENT_TIMESTAMP: usize = 56;
    pub const PARENT_NAME: usize = 64;
    pub const LOCATORS: usize = 576;
    pub const LOCATOR_BYTES: usize = 24;
    pub const RESERVED: usize = LOCATORS + 8 * LOCATOR_BYTES;
    pub const END: usize = RESERVED + 256;
}
const_assert_eq!(header_off::END, DYN_HEADER_BYTES);

pub const DISK_FIXED: u32 = 2;
pub const DISK_DYNAMIC: u32 = 3;
pub const DISK_DIFFERENCING: u32 = 4;

pub const PLATFORM_W2RU: u32 = 0x5732_7275;
pub const PLATFORM_W2KU: u32 = 0x5732_6B75;
pub const PLATFORM_WI2R: u32 = 0x5769_3272;
pub const PLATFORM_WI2K: u32 = 0x5769_326B;
pub const PLATFORM_MACX: u32 = 0x4D61_6358;

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// The VHD checksum: one's complement of the byte sum with the checksum field taken as zero.
pub fn checksum(bytes: &[u8], checksum_off: usize) -> u32 {
    let mut sum = 0u32;
    for (i, b) in bytes.iter().enumerate() {
        if !(checksum_off..checksum_off + 4).contains(&i) {
            sum = sum.wrapping_add(*b as u32);
        }
    }
    !sum
}

/// The hard disk footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub version: u32,
    pub data_offset: u64,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
    pub disk_type: u32,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
}

impl Footer {
    /// Parse and verify cookie and checksum. `Err` holds the reason, for messages.
    pub fn parse(b: &[u8]) -> Result<Footer, String> {
        use footer_off::*;
        if b.len() < FOOTER_BYTES - 1 {
            return Err("footer shorter than 511 bytes".into());
        }
        if &b[COOKIE..COOKIE + 8] != b"conectix" {
            return Err("no `conectix` cookie".into());
        }
        let stored = be_u32(b, CHECKSUM);
        let computed = checksum(&b[..b.len().min(FOOTER_BYTES)], CHECKSUM);
        if stored != computed {
            return Err(alloc::format!("footer checksum {:#010x} does not match the computed {:#010x}", stored, computed));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&b[CREATOR_APP..CREATOR_APP + 4]);
        let mut creator_os = [0u8; 4];
        creator_os.copy_from_slice(&b[CREATOR_OS..CREATOR_OS + 4]);
        Ok(Footer {
            features: be_u32(b, FEATURES),
            version: be_u32(b, VERSION),
            data_offset: be_u64(b, DATA_OFFSET),
            timestamp: be_u32(b, TIMESTAMP),
            creator_app,
            creator_version: be_u32(b, CREATOR_VERSION),
            creator_os,
            original_size: be_u64(b, ORIGINAL_SIZE),
            current_size: be_u64(b, CURRENT_SIZE),
            cylinders: be_u16(b, CYLINDERS),
            heads: b[HEADS],
            sectors_per_track: b[SECTORS_PER_TRACK],
            disk_type: be_u32(b, DISK_TYPE),
            unique_id: bytes16(b, UNIQUE_ID),
            saved_state: b.get(SAVED_STATE).copied().unwrap_or(0),
        })
    }

    pub fn to_bytes(&self) -> [u8; FOOTER_BYTES] {
        use footer_off::*;
        let mut b = [0u8; FOOTER_BYTES];
        put(&mut b, COOKIE, b"conectix");
        put(&mut b, FEATURES, &self.features.to_be_bytes());
        put(&mut b, VERSION, &self.version.to_be_bytes());
        put(&mut b, DATA_OFFSET, &self.data_offset.to_be_bytes());
        put(&mut b, TIMESTAMP, &self.timestamp.to_be_bytes());
        put(&mut b, CREATOR_APP, &self.creator_app);
        put(&mut b, CREATOR_VERSION, &self.creator_version.to_be_bytes());
        put(&mut b, CREATOR_OS, &self.creator_os);
        put(&mut b, ORIGINAL_SIZE, &self.original_size.to_be_bytes());
        put(&mut b, CURRENT_SIZE, &self.current_size.to_be_bytes());
        put(&mut b, CYLINDERS, &self.cylinders.to_be_bytes());
        b[HEADS] = self.heads;
        b[SECTORS_PER_TRACK] = self.sectors_per_track;
        put(&mut b, DISK_TYPE, &self.disk_type.to_be_bytes());
        put(&mut b, UNIQUE_ID, &self.unique_id);
        b[SAVED_STATE] = self.saved_state;
        let c = checksum(&b, CHECKSUM);
        put(&mut b, CHECKSUM, &c.to_be_bytes());
        b
    }

    /// Guest-visible size in bytes, by qemu's creator rules (module docs).
    pub fn virtual_size_bytes(&self) -> u64 {
        let chs_bytes = self.cylinders as u64 * self.heads as u64 * self.sectors_per_track as u64 * SECTOR_BYTES;
        let max_geometry = self.cylinders == 65535 && self.heads == 16 && self.sectors_per_track == 255;
        let trusts_chs = &self.creator_app == b"vpc " || &self.creator_app == b"qemu";
        if trusts_chs && !max_geometry {
            chs_bytes
        } else {
            self.current_size
        }
    }

    pub fn creator_string(&self) -> String {
        self.creator_app.iter().map(|&c| if (0x20..0x7F).contains(&c) { c as char } else { '.' }).collect()
    }
}

/// One parent locator entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locator {
    pub platform_code: u32,
    pub data_space: u32,
    pub data_length: u32,
    pub data_offset: u64,
}

/// The dynamic disk header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynHeader {
    pub data_offset: u64,
    pub table_offset: u64,
    pub version: u32,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub parent_uuid: [u8; 16],
    pub parent_timestamp: u32,
    pub parent_name: [u8; 512],
    pub locators: [Locator; 8],
}

impl DynHeader {
    pub fn parse(b: &[u8]) -> Result<DynHeader, String> {
        use header_off::*;
        if b.len() < DYN_HEADER_BYTES {
            return Err("dynamic header shorter than 1024 bytes".into());
        }
        if &b[COOKIE..COOKIE + 8] != b"cxsparse" {
            return Err("dynamic header has no `cxsparse` cookie".into());
        }
        let stored = be_u32(b, CHECKSUM);
        let computed = checksum(&b[..DYN_HEADER_BYTES], CHECKSUM);
        if stored != computed {
            return Err(alloc::format!("dynamic header checksum {:#010x} does not match the computed {:#010x}", stored, computed));
        }
        let mut parent_name = [0u8; 512];
        parent_name.copy_from_slice(&b[PARENT_NAME..PARENT_NAME + 512]);
        let mut locators = [Locator::default(); 8];
        for (i, l) in locators.iter_mut().enumerate() {
            let o = LOCATORS + i * LOCATOR_BYTES;
            *l = Locator { platform_code: be_u32(b, o), data_space: be_u32(b, o + 4), data_length: be_u32(b, o + 8), data_offset: be_u64(b, o + 16) };
        }
        Ok(DynHeader {
            data_offset: be_u64(b, DATA_OFFSET),
            table_offset: be_u64(b, TABLE_OFFSET),
            version: be_u32(b, VERSION),
            max_table_entries: be_u32(b, MAX_TABLE_ENTRIES),
            block_size: be_u32(b, BLOCK_SIZE),
            parent_uuid: bytes16(b, PARENT_UUID),
            parent_timestamp: be_u32(b, PARENT_TIMESTAMP),
            parent_name,
            locators,
        })
    }

    pub fn to_bytes(&self) -> [u8; DYN_HEADER_BYTES] {
        use header_off::*;
        let mut b = [0u8; DYN_HEADER_BYTES];
        put(&mut b, COOKIE, b"cxsparse");
        put(&mut b, DATA_OFFSET, &self.data_offset.to_be_bytes());
        put(&mut b, TABLE_OFFSET, &self.table_offset.to_be_bytes());
        put(&mut b, VERSION, &self.version.to_be_bytes());
        put(&mut b, MAX_TABLE_ENTRIES, &self.max_table_entries.to_be_bytes());
        put(&mut b, BLOCK_SIZE, &self.block_size.to_be_bytes());
        put(&mut b, PARENT_UUID, &self.parent_uuid);
        put(&mut b, PARENT_TIMESTAMP, &self.parent_timestamp.to_be_bytes());
        put(&mut b, PARENT_NAME, &self.parent_name);
        for (i, l) in self.locators.iter().enumerate() {
            let o = LOCATORS + i * LOCATOR_BYTES;
            put(&mut b, o, &l.platform_code.to_be_bytes());
            put(&mut b, o + 4, &l.data_space.to_be_bytes());
            put(&mut b, o + 8, &l.data_length.to_be_bytes());
            put(&mut b, o + 16, &l.data_offset.to_be_bytes());
        }
        let c = checksum(&b, CHECKSUM);
        put(&mut b, CHECKSUM, &c.to_be_bytes());
        b
    }
}

/// CHS geometry from the spec appendix (rounds down). Returns (cylinders, heads, sectors/track).
pub fn chs_for_size(size_bytes: u64) -> (u16, u8, u8) {
    let mut ts = size_bytes / SECTOR_BYTES;
    if ts > 65535 * 16 * 255 {
        ts = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if ts >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = ts / spt;
    } else {
        let mut s = 17;
        let mut c = ts / s;
        let mut h = (c + 1023) / 1024;
        if h < 4 {
            h = 4;
        }
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = ts / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = ts / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// Smallest CHS-exact size >= `size_bytes` (qemu's default rounding, so every reader agrees).
pub fn chs_round_up(size_bytes: u64) -> (u64, (u16, u8, u8)) {
    let want_sectors = size_bytes.div_ceil(SECTOR_BYTES);
    let max = 65535u64 * 16 * 255;
    if want_sectors >= max {
        return (size_bytes, (65535, 16, 255));
    }
    // qemu: grow the sector count until the geometry covers it.
    let mut total = want_sectors;
    loop {
        let (c, h, s) = chs_for_size(total * SECTOR_BYTES);
        let chs = c as u64 * h as u64 * s as u64;
        if chs >= want_sectors {
            return (chs * SECTOR_BYTES, (c, h, s));
        }
        if total >= max {
            return (size_bytes, (65535, 16, 255));
        }
        total += 1;
    }
}

fn decode_utf16(bytes: &[u8], big_endian: bool) -> String {
    let units = bytes.chunks_exact(2).map(|c| if big_endian { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) });
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    char::decode_utf16(units).map(|r| r.unwrap_or('\u{FFFD}')).collect()
}

/// Parent Unicode Name: UTF-16BE per spec, but some images store LE (libvhdi #22): an ASCII
/// first character stored LE shows as a non-zero byte followed by a zero byte.
pub fn decode_parent_name(raw: &[u8; 512]) -> String {
    let little = raw[0] != 0 && raw[1] == 0;
    decode_utf16(raw, !little)
}

pub fn encode_utf16(s: &str, big_endian: bool) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() }).collect()
}

/// Heapsort: slices' own sort costs the firmware several KiB of code (stage2 has a size limit,
/// linker.ld); this one a few hundred bytes, in O(n log n) and no allocation.
pub(crate) fn sort_small(v: &mut [u32]) {
    fn sift_down(v: &mut [u32], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    for i in (0..v.len() / 2).rev() {
        sift_down(v, i, v.len());
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

pub struct VhdImage {
    file: Box<dyn ImageFile>,
    pub footer: Footer,
    /// Where the footer in use sits (EOF-512 or EOF-511).
    pub footer_offset: u64,
    pub header: Option<DynHeader>,
    pub bat: Vec<u32>,
    block_sectors: u64,
    bitmap_bytes: u64,
    virtual_sectors: u64,
    /// First byte after all metadata and blocks: where the next block goes.
    next_free_bytes: u64,
    warnings: Vec<String>,
    /// Block bitmaps read so far (a fixed number of them: see BITMAP_CACHE_BYTES).
    bitmaps: Option<PieceCache<u8>>,
    parent_paths: Vec<String>,
}

impl VhdImage {
    pub fn open(mut file: Box<dyn ImageFile>) -> Result<Self, ImageError> {
        let name = file.name().to_string();
        let len = file.len_bytes();
        let mut warnings = Vec::new();
        let mut reasons = Vec::new();
        let mut found = None;
        for back in [512u64, 511] {
            if len < back {
                continue;
            }
            let mut b = [0u8; FOOTER_BYTES];
            let n = back as usize;
            file.read_at(len - back, &mut b[..n])?;
            match Footer::parse(&b[..n]) {
                Ok(f) => {
                    found = Some((f, len - back));
                    break;
                }
                Err(e) => reasons.push(alloc::format!("at EOF-{}: {}", back, e)),
            }
        }
        if found.is_none() && len >= 512 {
            let mut b = [0u8; FOOTER_BYTES];
            file.read_at(0, &mut b)?;
            match Footer::parse(&b) {
                Ok(f) if f.disk_type == DISK_DYNAMIC || f.disk_type == DISK_DIFFERENCING => {
                    warnings.push(alloc::format!("the footer at the end of the file is unusable ({}); using the copy at offset 0", reasons.join("; ")));
                    found = Some((f, len.saturating_sub(512)));
                }
                Ok(_) => reasons.push("copy at 0 is not a dynamic disk footer".into()),
                Err(e) => reasons.push(alloc::format!("copy at 0: {}", e)),
            }
        }
        let (footer, footer_offset) = found.ok_or_else(|| ImageError::corrupt(&name, alloc::format!("no valid VHD footer: {}", reasons.join("; "))))?;
        let virtual_bytes = footer.virtual_size_bytes();
        let virtual_sectors = virtual_bytes / SECTOR_BYTES;
        let mut img = VhdImage {
            file,
            footer,
            footer_offset,
            header: None,
            bat: Vec::new(),
            block_sectors: 0,
            bitmap_bytes: 0,
            virtual_sectors,
            next_free_bytes: 0,
            warnings,
            bitmaps: None,
            parent_paths: Vec::new(),
        };
        match img.footer.disk_type {
            DISK_FIXED => {
                if virtual_bytes > footer_offset {
                    return Err(ImageError::corrupt(&name, alloc::format!("fixed disk of {} bytes but only {} bytes of data before the footer", virtual_bytes, footer_offset)));
                }
            }
            DISK_DYNAMIC | DISK_DIFFERENCING => img.open_dynamic()?,
            t => return Err(ImageError::unsupported(&name, alloc::format!("VHD disk type {} (only 2 fixed, 3 dynamic, 4 differencing exist in practice)", t))),
        }
        Ok(img)
    }

    fn open_dynamic(&mut self) -> Result<(), ImageError> {
        let name = self.file.name().to_string();
        let hoff = self.footer.data_offset;
        if hoff.checked_add(DYN_HEADER_BYTES as u64).map_or(true, |e| e > self.footer_offset) {
            return Err(ImageError::corrupt(&name, alloc::format!("dynamic header offset {} is outside the file", hoff)));
        }
        let mut hb = [0u8; DYN_HEADER_BYTES];
        self.file.read_at(hoff, &mut hb)?;
        let h = DynHeader::parse(&hb).map_err(|e| ImageError::corrupt(&name, e))?;
        let bs = h.block_size as u64;
        if bs < 512 || !bs.is_power_of_two() || bs > (1 << 30) {
            return Err(ImageError::corrupt(&name, alloc::format!("block size {} is not a power of two between 512 and 1 GiB", bs)));
        }
        self.block_sectors = bs / SECTOR_BYTES;
        self.bitmap_bytes = (self.block_sectors.div_ceil(8)).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        let needed = self.virtual_sectors.div_ceil(self.block_sectors);
        if (h.max_table_entries as u64) < needed {
            return Err(ImageError::corrupt(&name, alloc::format!("BAT has {} entries but the disk size needs {}", h.max_table_entries, needed)));
        }
        self.bat = read_u32_table(&mut *self.file, h.table_offset, h.max_table_entries as usize, true, "the VHD block allocation table")?;
        let slots = (BITMAP_CACHE_BYTES / self.bitmap_bytes).clamp(1, BITMAP_CACHE_SLOTS);
        self.bitmaps = Some(PieceCache::new(slots as usize, self.bitmap_bytes as usize, &name, "VHD block bitmaps")?);
        let bat_end = h.table_offset + (h.max_table_entries as u64 * 4).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        let mut next = (hoff + DYN_HEADER_BYTES as u64).max(bat_end);
        if self.footer.disk_type == DISK_DIFFERENCING {
            for l in h.locators.iter() {
                if l.platform_code != 0 {
                    // PlatformDataSpace is bytes in practice and sectors per the spec; only the
                    // DataLength bytes matter, so reserve whichever reading covers them.
                    let space = if l.data_space >= l.data_length { l.data_space as u64 } else { (l.data_space as u64).saturating_mul(512) };
                    let end = l.data_offset.saturating_add(space.max(l.data_length as u64));
                    if end <= self.footer_offset {
                        next = next.max(end.div_ceil(SECTOR_BYTES) * SECTOR_BYTES);
                    }
                }
            }
        }
        let block_total = self.bitmap_bytes + bs;
        // The image's own metadata, which no block may cover: a guest write there would
        // overwrite the footer copy, the header, the BAT or a parent locator.
        let mut metadata: Vec<(u64, u64, &str)> = alloc::vec![
            (0, FOOTER_BYTES as u64, "the footer copy at the start"),
            (hoff, hoff + DYN_HEADER_BYTES as u64, "the dynamic header"),
            (h.table_offset, bat_end, "the block allocation table"),
        ];
        if self.footer.disk_type == DISK_DIFFERENCING {
            for l in h.locators.iter().filter(|l| l.platform_code != 0 && l.data_length != 0) {
                metadata.push((l.data_offset, l.data_offset.saturating_add(l.data_length as u64), "a parent locator"));
            }
        }
        for (i, &e) in self.bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let start = e as u64 * SECTOR_BYTES;
            let end = start + block_total;
            if end > self.footer_offset {
                return Err(ImageError::corrupt(&name, alloc::format!("BAT entry {} points at sector {}, whose block ends past the footer at byte {} (truncated image?)", i, e, self.footer_offset)));
            }
            if let Some((_, _, what)) = metadata.iter().find(|(a, b, _)| start < *b && *a < end) {
                return Err(ImageError::corrupt(
                    &name,
                    alloc::format!("BAT entry {} puts block {} at sector {}, over {}: a write there would damage the image; `vdisk check` lists every problem", i, i, e, what),
                ));
            }
            next = next.max(end);
        }
        // Blocks must not overlap each other either: a guest write to one would change another.
        // (Sorted starts, each at least a whole block after the one before.)
        let mut starts: Vec<u32> = Vec::new();
        super::try_reserve(&mut starts, self.bat.iter().filter(|&&e| e != UNALLOCATED).count(), &name, "the VHD block overlap check")?;
        starts.extend(self.bat.iter().copied().filter(|&e| e != UNALLOCATED));
        sort_small(&mut starts);
        if let Some(pair) = starts.windows(2).find(|p| (p[1] as u64 - p[0] as u64) * SECTOR_BYTES < block_total) {
            let block_at = |sector: u32| self.bat.iter().position(|&e| e == sector).unwrap_or(0);
            let (first, second) = (block_at(pair[0]), if pair[0] == pair[1] { self.bat.iter().rposition(|&e| e == pair[1]).unwrap_or(0) } else { block_at(pair[1]) });
            return Err(ImageError::corrupt(
                &name,
                alloc::format!(
                    "BAT entries {} and {} put their blocks at sectors {} and {}, which overlap: a write to one would change the other; `vdisk check` lists every problem",
                    first.min(second),
                    first.max(second),
                    pair[0],
                    pair[1]
                ),
            ));
        }
        self.next_free_bytes = next;
        self.header = Some(h);
        if self.footer.disk_type == DISK_DIFFERENCING {
            self.parent_paths = self.read_parent_paths();
        }
        Ok(())
    }

    fn read_parent_paths(&mut self) -> Vec<String> {
        let h = match &self.header {
            Some(h) => h.clone(),
            None => return Vec::new(),
        };
        let mut relative = Vec::new();
        let mut absolute = Vec::new();
        for l in h.locators.iter() {
            if l.platform_code == 0 || l.data_length == 0 || l.data_length > 64 * 1024 {
                continue;
            }
            let mut data = vec![0u8; l.data_length as usize];
            if self.file.read_at(l.data_offset, &mut data).is_err() {
                self.warnings.push(alloc::format!("parent locator at byte {} lies outside the file; ignored", l.data_offset));
                continue;
            }
            let text = match l.platform_code {
                PLATFORM_W2RU | PLATFORM_W2KU => decode_utf16(&data, false),
                PLATFORM_WI2R | PLATFORM_WI2K => data.iter().take_while(|&&c| c != 0).map(|&c| c as char).collect(),
                PLATFORM_MACX => {
                    let s: String = String::from_utf8_lossy(&data).trim_end_matches('\0').into();
                    s.strip_prefix("file://localhost").or_else(|| s.strip_prefix("file://")).unwrap_or(&s).to_string()
                }
                _ => continue,
            };
            if text.is_empty() {
                continue;
            }
            match l.platform_code {
                PLATFORM_W2RU | PLATFORM_WI2R => relative.push(text),
                _ => absolute.push(text),
            }
        }
        let mut out = relative;
        out.extend(absolute);
        let pname = decode_parent_name(&h.parent_name);
        if !pname.is_empty() {
            out.push(pname);
        }
        out.dedup();
        out
    }

    fn bitmap(&mut self, block: u32, bat_entry: u32) -> Result<&mut [u8], ImageError> {
        let name = self.file.name().to_string();
        let cache = self.bitmaps.as_mut().ok_or_else(|| ImageError::corrupt(&name, "block bitmap of a fixed disk"))?;
        if cache.get(block as u64).is_none() {
            let (slot, piece) = cache.slot_for(block as u64);
            self.file.read_at(bat_entry as u64 * SECTOR_BYTES, piece)?;
            cache.commit(slot, block as u64);
        }
        cache.get_mut(block as u64).ok_or_else(|| ImageError::corrupt(&name, "block bitmap cache"))
    }

    fn write_bat_entry(&mut self, block: u32, value: u32) -> Result<(), ImageError> {
        let table = self.header.as_ref().map(|h| h.table_offset).unwrap_or(0);
        self.file.write_at(table + block as u64 * 4, &value.to_be_bytes())?;
        self.file.flush()?;
        if let Some(e) = self.bat.get_mut(block as usize) {
            *e = value;
        }
        Ok(())
    }

    /// Write `buf` (whole sectors, all inside block `block`) at sector-in-block `sib`.
    fn write_in_block(&mut self, block: u32, sib: u64, buf: &[u8]) -> Result<(), ImageError> {
        let name = self.file.name().to_string();
        let sectors = buf.len() as u64 / SECTOR_BYTES;
        let entry = *self.bat.get(block as usize).ok_or_else(|| ImageError::corrupt(&name, "block index past the BAT"))?;
        let block_bytes = self.block_sectors * SECTOR_BYTES;
        if entry == UNALLOCATED {
            let need = self.bitmap_bytes + block_bytes;
            let at = self.next_free_bytes;
            let end = at + need;
            if end > self.footer_offset {
                if !self.file_can_grow() {
                    return Err(ImageError::NoSlack { image: name, needed_bytes: need });
                }
                // Growing: the new footer goes to the new end first, so EOF always has a footer.
                let f = self.footer.to_bytes();
                self.file.write_at(end, &f)?;
                self.file.flush()?;
                self.footer_offset = end;
            }
            if self.footer.disk_type == DISK_DIFFERENCING {
                // Only the sectors written: the bitmap sends every other sector of the block to
                // the parent, so whatever the slack holds there is never read. (Zero-filling a
                // 2 MiB block costs seconds at boot, where each host write is a BIOS call.)
                self.file.write_at(at + self.bitmap_bytes + sib * SECTOR_BYTES, buf)?;
            } else {
                // A dynamic image's allocated block is read whole (bitmap-less, as qemu reads
                // it), so it is written whole: zeros around the data, never stale slack bytes.
                super::write_new_unit(&mut *self.file, at + self.bitmap_bytes, block_bytes, block_bytes, 0, sib * SECTOR_BYTES, buf, None)?;
            }
            self.file.flush()?;
            let mut bitmap = vec![0u8; self.bitmap_bytes as usize];
            set_bits(&mut bitmap, sib, sectors);
            self.file.write_at(at, &bitmap)?;
            self.file.flush()?;
            let sector_no = u32::try_from(at / SECTOR_BYTES).map_err(|_| ImageError::unsupported(&name, "VHD files cannot exceed 2 TiB"))?;
            self.write_bat_entry(block, sector_no)?;
            self.next_free_bytes = end;
            if let Some(c) = self.bitmaps.as_mut() {
                c.forget(block as u64);
            }
        } else {
            let base = entry as u64 * SECTOR_BYTES;
            let bits_to_set = !all_set(self.bitmap(block, entry)?, sib, sectors);
            self.file.write_at(base + self.bitmap_bytes + sib * SECTOR_BYTES, buf)?;
            // The flush orders the data before the bitmap that makes it visible; with every
            // bit already set there is nothing to order, and the guest's own flush makes the
            // data durable (a flush per write, a sync of the host disk in vboot-attach, took
            // 60% of its 4 KiB random writes: docs/benchmarks.md).
            if bits_to_set {
                self.file.flush()?;
                let bitmap = self.bitmap(block, entry)?;
                set_bits(bitmap, sib, sectors);
                // Written from the cached piece itself: no copy of the bitmap. If the write
                // fails, the cached piece says more than the file: forget it.
                let result = self.file.write_at(base, self.bitmaps.as_ref().and_then(|c| c.get(block as u64)).unwrap_or(&[]));
                let result = result.and_then(|_| self.file.flush());
                if result.is_err() {
                    if let Some(c) = self.bitmaps.as_mut() {
                        c.forget(block as u64);
                    }
                }
                result?;
            }
        }
        Ok(())
    }

    fn file_can_grow(&self) -> bool {
        self.file.len_bytes() == self.footer_offset + FOOTER_BYTES as u64 && self.file.can_grow()
    }
}

fn set_bits(bitmap: &mut [u8], first: u64, count: u64) {
    for s in first..first + count {
        if let Some(b) = bitmap.get_mut((s / 8) as usize) {
            *b |= 0x80 >> (s % 8);
        }
    }
}

fn all_set(bitmap: &[u8], first: u64, count: u64) -> bool {
    (first..first + count).all(|s| bit(bitmap, s))
}

/// Bitmaps kept per image: at most this many bytes of them, and at most BITMAP_CACHE_SLOTS.
const BITMAP_CACHE_BYTES: u64 = 64 * 1024;
const BITMAP_CACHE_SLOTS: u64 = 32;
/// How far ahead `map` looks for unallocated blocks that continue a run.
const MAP_SCAN_BLOCKS: u64 = 4096;

fn bit(bitmap: &[u8], s: u64) -> bool {
    bitmap.get((s / 8) as usize).map_or(false, |b| b & (0x80 >> (s % 8)) != 0)
}

impl Layer for VhdImage {
    fn memory_bytes(&self) -> u64 {
        (self.bat.capacity() * 4) as u64 + self.bitmaps.as_ref().map_or(0, |c| c.bytes()) + core::mem::size_of::<Self>() as u64
    }
    fn format(&self) -> Format {
        Format::Vhd
    }
    fn variant(&self) -> String {
        match self.footer.disk_type {
            DISK_FIXED => "fixed",
            DISK_DYNAMIC => "dynamic",
            _ => "differencing",
        }
        .to_string()
    }
    fn name(&self) -> &str {
        self.file.name()
    }
    fn virtual_sectors(&self) -> u64 {
        self.virtual_sectors
    }
    fn map(&mut self, sector: u64) -> Result<(Mapping, u64), ImageError> {
        super::check_range(self.name(), sector, 1, self.virtual_sectors)?;
        if self.footer.disk_type == DISK_FIXED {
            return Ok((Mapping::Data { file: 0, offset_bytes: sector * SECTOR_BYTES }, self.virtual_sectors - sector));
        }
        let block = sector / self.block_sectors;
        let sib = sector % self.block_sectors;
        let left_in_block = (self.block_sectors - sib).min(self.virtual_sectors - sector);
        let entry = self.bat.get(block as usize).copied().unwrap_or(UNALLOCATED);
        let diff = self.footer.disk_type == DISK_DIFFERENCING;
        if entry == UNALLOCATED {
            let mut next = block + 1;
            let scan_end = block.saturating_add(MAP_SCAN_BLOCKS);
            while next < scan_end && self.bat.get(next as usize) == Some(&UNALLOCATED) {
                next += 1;
            }
            let run = (next * self.block_sectors - sector).min(self.virtual_sectors - sector);
            return Ok((if diff { Mapping::Parent } else { Mapping::Zero }, run));
        }
        let data_off = entry as u64 * SECTOR_BYTES + self.bitmap_bytes + sib * SECTOR_BYTES;
        if !diff {
            return Ok((Mapping::Data { file: 0, offset_bytes: data_off }, left_in_block));
        }
        let bm = self.bitmap(block as u32, entry)?;
        let present = bit(bm, sib);
        let mut run = 1;
        while run < left_in_block && bit(bm, sib + run) == present {
            run += 1;
        }
        Ok((if present { Mapping::Data { file: 0, offset_bytes: data_off } } else { Mapping::Parent }, run))
    }
    fn map_deferred(&mut self, sector: u64) -> Result<Option<u64>, ImageError> {
        if self.footer.disk_type != DISK_DIFFERENCING || sector >= self.virtual_sectors {
            return Ok(None);
        }
        let block = sector / self.block_sectors;
        if self.bat.get(block as usize).copied().unwrap_or(UNALLOCATED) == UNALLOCATED {
            return Ok(None);
        }
        let left_in_block = (self.block_sectors - sector % self.block_sectors).min(self.virtual_sectors - sector);
        Ok(Some(left_in_block))
    }
    fn file_host_run(&self, _file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.file.host_run(offset_bytes)
    }
    fn file_host_run_writable(&self, _file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.file.host_run_writable(offset_bytes)
    }
    /// A fixed disk's data; in an allocated block, the sectors whose bitmap bits are set
    /// already ([`Layer::write`] sets the others, a metadata write).
    fn in_place_run(&mut self, sector: u64) -> Result<Option<(u16, u64, u64)>, ImageError> {
        if sector >= self.virtual_sectors {
            return Ok(None);
        }
        if self.footer.disk_type == DISK_FIXED {
            return Ok(Some((0, sector * SECTOR_BYTES, self.virtual_sectors - sector)));
        }
        let block = sector / self.block_sectors;
        let sib = sector % self.block_sectors;
        let entry = self.bat.get(block as usize).copied().unwrap_or(UNALLOCATED);
        if entry == UNALLOCATED {
            return Ok(None);
        }
        let left_in_block = (self.block_sectors - sib).min(self.virtual_sectors - sector);
        let bitmap_bytes = self.bitmap_bytes;
        let bm = self.bitmap(block as u32, entry)?;
        let mut run = 0;
        while run < left_in_block && bit(bm, sib + run) {
            run += 1;
        }
        Ok((run > 0).then_some((0, entry as u64 * SECTOR_BYTES + bitmap_bytes + sib * SECTOR_BYTES, run)))
    }
    fn read_file(&mut self, _file: u16, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.file.read_at(offset_bytes, buf)
    }
    fn identity(&self) -> Identity {
        Identity { uuid: Some(self.footer.unique_id), modify_uuid: None, cid: None, timestamp: self.file.mtime_unix().map(|t| t.saturating_sub(VHD_EPOCH_UNIX) as u32) }
    }
    fn parent_link(&self) -> Option<ParentLink> {
        if self.footer.disk_type != DISK_DIFFERENCING {
            return None;
        }
        let h = self.header.as_ref()?;
        Some(ParentLink { path_candidates: self.parent_paths.clone(), uuid: Some(h.parent_uuid), modify_uuid: None, cid: None, timestamp: Some(h.parent_timestamp) })
    }
    fn details(&self) -> Vec<(String, String)> {
        let f = &self.footer;
        let mut d = vec![
            ("creator".to_string(), alloc::format!("{} {}.{}", f.creator_string(), f.creator_version >> 16, f.creator_version & 0xFFFF)),
            ("current_size_bytes".to_string(), alloc::format!("{}", f.current_size)),
            ("geometry_chs".to_string(), alloc::format!("{}/{}/{}", f.cylinders, f.heads, f.sectors_per_track)),
            ("unique_id".to_string(), hex16(&f.unique_id)),
            ("timestamp".to_string(), alloc::format!("{}", f.timestamp)),
        ];
        if let Some(h) = &self.header {
            d.push(("block_size_bytes".to_string(), alloc::format!("{}", h.block_size)));
            d.push(("bat_entries".to_string(), alloc::format!("{}", h.max_table_entries)));
            d.push(("allocated_blocks".to_string(), alloc::format!("{}", self.bat.iter().filter(|&&e| e != UNALLOCATED).count())));
            d.push(("slack_bytes".to_string(), alloc::format!("{}", self.slack_bytes())));
            if f.disk_type == DISK_DIFFERENCING {
                d.push(("parent_uuid".to_string(), hex16(&h.parent_uuid)));
                d.push(("parent_timestamp".to_string(), alloc::format!("{}", h.parent_timestamp)));
                d.push(("parent_name".to_string(), decode_parent_name(&h.parent_name)));
                for p in &self.parent_paths {
                    d.push(("parent_path".to_string(), p.clone()));
                }
            }
        }
        for w in &self.warnings {
            d.push(("warning".to_string(), w.clone()));
        }
        d
    }
    fn check(&mut self) -> Vec<String> {
        let mut problems = self.warnings.clone();
        let len = self.file.len_bytes();
        if self.footer.disk_type != DISK_FIXED {
            let mut b = [0u8; FOOTER_BYTES];
            if self.file.read_at(0, &mut b).is_ok() {
                match Footer::parse(&b) {
                    Ok(f) if f == self.footer => {}
                    Ok(_) => problems.push("the footer copy at offset 0 differs from the footer at the end".into()),
                    Err(e) => problems.push(alloc::format!("footer copy at offset 0: {}", e)),
                }
            }
            let total = self.bitmap_bytes + self.block_sectors * SECTOR_BYTES;
            let mut starts: Vec<(u64, usize)> = self.bat.iter().enumerate().filter(|(_, &e)| e != UNALLOCATED).map(|(i, &e)| (e as u64 * SECTOR_BYTES, i)).collect();
            starts.sort_unstable();
            for w in starts.windows(2) {
                if w[0].0 + total > w[1].0 {
                    problems.push(alloc::format!("blocks {} and {} overlap in the file", w[0].1, w[1].1));
                }
            }
            if let (Some(h), Some(first)) = (&self.header, starts.first()) {
                let bat_end = h.table_offset + h.max_table_entries as u64 * 4;
                if first.0 < bat_end {
                    problems.push(alloc::format!("block {} lies inside the header/BAT area", first.1));
                }
            }
        }
        if self.footer_offset + FOOTER_BYTES as u64 != len && self.footer_offset + 511 != len {
            problems.push("the footer is not at the end of the file".into());
        }
        if self.footer.saved_state != 0 {
            problems.push("the image has a saved VM state (Saved State flag set)".into());
        }
        problems
    }
    fn write(
        &mut self,
        sector: u64,
        buf: &[u8],
        _parent: &mut dyn FnMut(u64, &mut [u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let sectors = buf.len() as u64 / SECTOR_BYTES;
        super::check_range(self.name(), sector, sectors, self.virtual_sectors)?;
        if self.footer.disk_type == DISK_FIXED {
            return self.file.write_at(sector * SECTOR_BYTES, buf);
        }
        let mut done = 0u64;
        while done < sectors {
            let s = sector + done;
            let block = s / self.block_sectors;
            let sib = s % self.block_sectors;
            let n = (self.block_sectors - sib).min(sectors - done);
            let chunk = &buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
            self.write_in_block(block as u32, sib, chunk)?;
            done += n;
        }
        Ok(())
    }
    fn relink_parent(&mut self, parent: &Identity) -> Result<(), ImageError> {
        let name = self.name().to_string();
        if self.footer.disk_type != DISK_DIFFERENCING {
            return Err(ImageError::Invalid { detail: alloc::format!("{} has no parent to relink", name) });
        }
        let hoff = self.footer.data_offset;
        let h = self.header.as_mut().ok_or_else(|| ImageError::corrupt(&name, "no dynamic header"))?;
        if let Some(u) = parent.uuid {
            h.parent_uuid = u;
        }
        if let Some(t) = parent.timestamp {
            h.parent_timestamp = t;
        }
        let bytes = h.to_bytes();
        self.file.write_at(hoff, &bytes)?;
        self.file.flush()
    }
    fn allocation_unit_sectors(&self) -> u64 {
        // A new block of a dynamic disk reads as data whole; a differencing block only where
        // its bitmap says so, which the written sectors cover.
        if self.footer.disk_type == DISK_DYNAMIC {
            self.block_sectors.max(1)
        } else {
            1
        }
    }
    fn discard_all(&mut self) -> Result<(), ImageError> {
        if self.footer.disk_type != DISK_DIFFERENCING {
            return Err(ImageError::Invalid { detail: alloc::format!("{} is not a differencing image; emptying it would lose data", self.name()) });
        }
        let table = self.header.as_ref().map(|h| h.table_offset).unwrap_or(0);
        // Blocks are dropped front to back, 16 KiB of BAT at a time from one fixed buffer; a
        // crash leaves a partly emptied but consistent image.
        let free = [0xFFu8; 16 * 1024];
        let total = self.bat.len() * 4;
        let mut at = 0usize;
        while at < total {
            let n = (total - at).min(free.len());
            self.file.write_at(table + at as u64, &free[..n])?;
            at += n;
        }
        self.file.flush()?;
        self.bat.iter_mut().for_each(|e| *e = UNALLOCATED);
        if let Some(c) = self.bitmaps.as_mut() {
            c.clear();
        }
        // Everything after the metadata is free again.
        let allocated_end = self.next_free_bytes;
        let h = self.header.clone().ok_or_else(|| ImageError::corrupt(self.file.name(), "no dynamic header"))?;
        let bat_end = h.table_offset + (h.max_table_entries as u64 * 4).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        let mut next = (self.footer.data_offset + DYN_HEADER_BYTES as u64).max(bat_end);
        for l in h.locators.iter().filter(|l| l.platform_code != 0) {
            let space = if l.data_space >= l.data_length { l.data_space as u64 } else { (l.data_space as u64).saturating_mul(512) };
            let end = l.data_offset.saturating_add(space.max(l.data_length as u64));
            if end <= self.footer_offset {
                next = next.max(end.div_ceil(SECTOR_BYTES) * SECTOR_BYTES);
            }
        }
        self.next_free_bytes = next.min(allocated_end);
        Ok(())
    }
    fn slack_bytes(&self) -> u64 {
        if self.footer.disk_type == DISK_FIXED {
            0
        } else {
            self.footer_offset.saturating_sub(self.next_free_bytes)
        }
    }
}
