//! VMDK: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs (flat), and
//! streamOptimized (read-only), with parent links through `parentCID` / `parentFileNameHint`.
//!
//! The descriptor is read leniently (docs/image-formats.md, "VMDK: the descriptor"): LF or CRLF,
//! comments anywhere, blanks around `=`, keys case-insensitive, quoted or bare values, parsing
//! stops at the first NUL, extent lines with up to 7 fields and file names with spaces. The file
//! name in the extent line of a *monolithic* sparse file is ignored (renamed files keep the old
//! name).
//!
//! Each extent keeps its grain directory; grain tables are read when a lookup needs them, into a
//! cache of 32 tables shared by the image's extents (docs/memory.md). At open every grain table
//! is read once and dropped, to check it and count the grains. The redundant directory is used
//! when the primary one is unusable.
//!
//! Writing (hosted sparse extents and flat extents; streamOptimized is read-only): on the first
//! write the CID is changed in place in the descriptor (same length, so nothing else moves) and
//! flushed before any data. A new grain is placed after the last used sector of the extent,
//! inside slack at the end of the file (or by growing the file on the host); the whole grain is
//! written, the part the write does not cover copied from the layers below (VMDK has no
//! per-sector bitmap), then the entry goes into the primary and the redundant grain table.
//! A grain table that does not exist yet is written (zeroed, plus the new entry) before the
//! directory entry that makes it reachable.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use static_assertions::const_assert_eq;

use super::cache::PieceCache;
use super::{le_u16, le_u32, le_u64, put, read_u32_table, Format, Identity, ImageError, ImageFile, Layer, Mapping, ParentLink, MAX_VIRTUAL_SECTORS, SECTOR_BYTES};

pub const SPARSE_MAGIC: &[u8; 4] = b"KDMV";
pub const GD_AT_END: u64 = 0xFFFF_FFFF_FFFF_FFFF;
pub const NO_PARENT_CID: u32 = 0xFFFF_FFFF;

pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;

/// Hosted sparse extent header field offsets (little-endian).
pub mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 8;
    pub const CAPACITY: usize = 12;
    pub const GRAIN_SIZE: usize = 20;
    pub const DESCRIPTOR_OFFSET: usize = 28;
    pub const DESCRIPTOR_SIZE: usize = 36;
    pub const NUM_GTES_PER_GT: usize = 44;
    pub const RGD_OFFSET: usize = 48;
    pub const GD_OFFSET: usize = 56;
    pub const OVERHEAD: usize = 64;
    pub const UNCLEAN_SHUTDOWN: usize = 72;
    pub const SINGLE_END_LINE: usize = 73;
    pub const NON_END_LINE: usize = 74;
    pub const DOUBLE_END_LINE1: usize = 75;
    pub const DOUBLE_END_LINE2: usize = 76;
    pub const COMPRESS_ALGORITHM: usize = 77;
    pub const PAD: usize = 79;
    pub const END: usize = PAD + 433;
}
const_assert_eq!(off::END, 512);

/// The sparse extent header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub compress_algorithm: u16,
}

impl SparseHeader {
    pub fn parse(b: &[u8], name: &str) -> Result<SparseHeader, ImageError> {
        if b.len() < 512 || &b[0..4] != SPARSE_MAGIC {
            return Err(ImageError::corrupt(name, "no KDMV sparse extent header"));
        }
        let h = SparseHeader {
            version: le_u32(b, off::VERSION),
            flags: le_u32(b, off::FLAGS),
            capacity: le_u64(b, off::CAPACITY),
            grain_size: le_u64(b, off::GRAIN_SIZE),
            descriptor_offset: le_u64(b, off::DESCRIPTOR_OFFSET),
            descriptor_size: le_u64(b, off::DESCRIPTOR_SIZE),
            num_gtes_per_gt: le_u32(b, off::NUM_GTES_PER_GT),
            rgd_offset: le_u64(b, off::RGD_OFFSET),
            gd_offset: le_u64(b, off::GD_OFFSET),
            overhead: le_u64(b, off::OVERHEAD),
            compress_algorithm: le_u16(b, off::COMPRESS_ALGORITHM),
        };
        if h.version == 0 || h.version > 3 {
            return Err(ImageError::unsupported(name, alloc::format!("sparse extent version {}", h.version)));
        }
        // Offsets and sizes in sectors are multiplied by 512 and added: keep them far from
        // overflow (2^40 sectors = 512 TiB, beyond any real extent).
        const MAX_SECTORS: u64 = 1 << 40;
        let offsets = [h.capacity, h.descriptor_offset, h.descriptor_size, h.rgd_offset, h.overhead, h.grain_size];
        if offsets.iter().any(|&v| v > MAX_SECTORS) || (h.gd_offset != GD_AT_END && h.gd_offset > MAX_SECTORS) {
            return Err(ImageError::corrupt(name, "sparse header offsets or sizes are impossibly large"));
        }
        if h.flags & FLAG_NEWLINE_TEST != 0 && b[off::SINGLE_END_LINE..off::DOUBLE_END_LINE2 + 1] != *b"\n \r\n" {
            return Err(ImageError::corrupt(name, "newline test bytes are damaged (file transferred in text mode?)"));
        }
        Ok(h)
    }

    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put(&mut b, off::MAGIC, SPARSE_MAGIC);
        put(&mut b, off::VERSION, &self.version.to_le_bytes());
        put(&mut b, off::FLAGS, &self.flags.to_le_bytes());
        put(&mut b, off::CAPACITY, &self.capacity.to_le_bytes());
        put(&mut b, off::GRAIN_SIZE, &self.grain_size.to_le_bytes());
        put(&mut b, off::DESCRIPTOR_OFFSET, &self.descriptor_offset.to_le_bytes());
        put(&mut b, off::DESCRIPTOR_SIZE, &self.descriptor_size.to_le_bytes());
        put(&mut b, off::NUM_GTES_PER_GT, &self.num_gtes_per_gt.to_le_bytes());
        put(&mut b, off::RGD_OFFSET, &self.rgd_offset.to_le_bytes());
        put(&mut b, off::GD_OFFSET, &self.gd_offset.to_le_bytes());
        put(&mut b, off::OVERHEAD, &self.overhead.to_le_bytes());
        put(&mut b, off::SINGLE_END_LINE, b"\n \r\n");
        put(&mut b, off::COMPRESS_ALGORITHM, &self.compress_algorithm.to_le_bytes());
        b
    }
}

/// One extent line of a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: String,
    pub sectors: u64,
    pub kind: String,
    pub file_name: Option<String>,
    pub offset_sectors: u64,
}

/// A parsed descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub create_type: String,
    pub parent_file_name_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v)
}

/// Whether the start of a file is a text descriptor.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let text: Vec<u8> = head.iter().take_while(|&&c| c != 0).map(|c| c.to_ascii_lowercase()).collect();
    if text.iter().any(|&c| c < 0x09 || (c > 0x0D && c < 0x20 && c != 0x1B)) {
        return false;
    }
    let t = String::from_utf8_lossy(&text);
    (t.trim_start().starts_with('#') && t.contains("descriptor")) || t.contains("createtype")
}

impl Descriptor {
    pub fn parse(bytes: &[u8], name: &str) -> Result<Descriptor, ImageError> {
        let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut d = Descriptor::default();
        for (lineno, raw) in text.split('\n').enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            if ["rw", "rdonly", "noaccess"].contains(&first.as_str()) {
                d.extents.push(parse_extent_line(line).ok_or_else(|| ImageError::corrupt(name, alloc::format!("descriptor line {}: cannot read extent line `{}`", lineno + 1, line)))?);
                continue;
            }
            let (k, v) = match line.split_once('=') {
                Some(kv) => kv,
                None => continue,
            };
            let key = k.trim().to_ascii_lowercase();
            let value = unquote(v);
            match key.as_str() {
                "cid" => d.cid = Some(parse_hex_u32(value).ok_or_else(|| ImageError::corrupt(name, alloc::format!("CID `{}` is not hexadecimal", value)))?),
                "parentcid" => d.parent_cid = Some(parse_hex_u32(value).ok_or_else(|| ImageError::corrupt(name, alloc::format!("parentCID `{}` is not hexadecimal", value)))?),
                "createtype" => d.create_type = value.to_string(),
                "parentfilenamehint" => d.parent_file_name_hint = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(d)
    }

    pub fn has_parent(&self) -> bool {
        self.parent_cid.map_or(false, |c| c != NO_PARENT_CID)
    }
}

fn parse_hex_u32(v: &str) -> Option<u32> {
    let v = v.trim();
    let v = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")).unwrap_or(v);
    if v.is_empty() || v.len() > 8 {
        return None;
    }
    u32::from_str_radix(v, 16).ok()
}

fn parse_extent_line(line: &str) -> Option<ExtentLine> {
    let mut rest = line.trim();
    let next_token = |rest: &mut &str| -> Option<String> {
        let r = rest.trim_start();
        if r.is_empty() {
            return None;
        }
        if let Some(q) = r.strip_prefix('"') {
            let close = q.find('"')?;
            let tok = q[..close].to_string();
            *rest = &q[close + 1..];
            Some(tok)
        } else {
            let end = r.find(char::is_whitespace).unwrap_or(r.len());
            let tok = r[..end].to_string();
            *rest = &r[end..];
            Some(tok)
        }
    };
    let access = next_token(&mut rest)?.to_ascii_uppercase();
    let sectors: u64 = next_token(&mut rest)?.parse().ok()?;
    let kind = next_token(&mut rest)?.to_ascii_uppercase();
    let file_name = next_token(&mut rest);
    let offset_sectors = match next_token(&mut rest) {
        Some(t) => t.parse().ok()?,
        None => 0,
    };
    Some(ExtentLine { access, sectors, kind, file_name, offset_sectors })
}

/// A hosted sparse extent's tables. The grain directory stays in memory (4 bytes per 32 MiB of
/// disk with the usual 512-entry tables: 256 KiB for 2 TiB); grain tables are read when needed
/// into the image's [`PieceCache`].
struct Sparse {
    header: SparseHeader,
    gd: Vec<u32>,
    rgd: Vec<u32>,
    /// Grains that hold data (not zeroed, not unallocated), counted at open.
    allocated_grains: u64,
    /// First sector after everything in use: where the next grain or table goes.
    next_free_sector: u64,
    /// First sector after the header, descriptor and tables (where grains may start).
    meta_end_sector: u64,
}

impl Sparse {
    fn gtes(&self) -> u64 {
        self.header.num_gtes_per_gt as u64
    }
    fn compressed(&self) -> bool {
        self.header.flags & FLAG_COMPRESSED != 0
    }
    /// Whether grain-table entry `v` points at data in the file (0 is unallocated; 1 is a
    /// zeroed grain when the zeroed-grain flag is set).
    fn holds_data(&self, v: u32) -> bool {
        v > 1 || (v == 1 && self.header.flags & FLAG_ZEROED_GRAIN == 0)
    }
    /// The grain table of directory entry `gdi`: the cached copy, or read from `file` into the
    /// cache. `None` when the directory has no table there (every grain unallocated).
    fn table<'c>(&self, file: &mut dyn ImageFile, cache: &'c mut PieceCache<u32>, extent: usize, gdi: u64) -> Result<Option<&'c [u32]>, ImageError> {
        let gt_sector = match self.gd.get(gdi as usize) {
            Some(&s) if s != 0 => s as u64,
            _ => return Ok(None),
        };
        let key = table_key(extent, gdi);
        if cache.get(key).is_none() {
            let gtes = self.gtes() as usize;
            let len = file.len_bytes();
            let (slot, piece) = cache.slot_for(key);
            read_table(file, gt_sector, &mut piece[..gtes], |v| self.check_entry(len, v, gdi))?;
            cache.commit(slot, key);
        }
        Ok(cache.get(key))
    }
    fn check_entry(&self, file_len: u64, v: u32, gdi: u64) -> Result<(), String> {
        if self.holds_data(v) && (v as u64) * SECTOR_BYTES >= file_len {
            return Err(alloc::format!("grain table {} points at sector {}, past the end of the file ({} bytes)", gdi, v, file_len));
        }
        Ok(())
    }
    /// Grain-table entry of grain `g` of the extent.
    fn entry(&self, file: &mut dyn ImageFile, cache: &mut PieceCache<u32>, extent: usize, g: u64) -> Result<u32, ImageError> {
        let gtes = self.gtes();
        Ok(self.table(file, cache, extent, g / gtes)?.map_or(0, |t| t[(g % gtes) as usize]))
    }
}

/// Cache key of grain table `gdi` of extent `extent`.
fn table_key(extent: usize, gdi: u64) -> u64 {
    ((extent as u64) << 40) | gdi
}

/// Read the grain table at `gt_sector` into `out`, 2 KiB at a time, checking every entry.
fn read_table(file: &mut dyn ImageFile, gt_sector: u64, out: &mut [u32], check: impl Fn(u32) -> Result<(), String>) -> Result<(), ImageError> {
    let mut chunk = [0u8; 2048];
    let mut at = gt_sector * SECTOR_BYTES;
    for part in out.chunks_mut(chunk.len() / 4) {
        let bytes = &mut chunk[..part.len() * 4];
        file.read_at(at, bytes)?;
        for (i, v) in part.iter_mut().enumerate() {
            *v = le_u32(bytes, i * 4);
            check(*v).map_err(|e| ImageError::corrupt(file.name(), e))?;
        }
        at += bytes.len() as u64;
    }
    Ok(())
}

/// Grain tables kept in memory per image (shared by all its extents): 32 tables of the usual
/// 512 entries are 64 KiB and cover 1 GiB of disk.
const GRAIN_TABLE_SLOTS: usize = 32;

enum ExtentKind {
    Flat { file: u16, offset_bytes: u64 },
    Sparse { file: u16, sparse: Sparse },
    Zero,
}

struct Extent {
    start_sector: u64,
    sectors: u64,
    kind: ExtentKind,
}

pub struct VmdkImage {
    files: Vec<Box<dyn ImageFile>>,
    pub descriptor: Descriptor,
    /// Where the descriptor text lives: (file, offset, reserved bytes).
    descriptor_at: (u16, u64, u64),
    descriptor_text: Vec<u8>,
    extents: Vec<Extent>,
    /// Grain tables read so far, of every sparse extent (keys from `table_key`).
    tables: PieceCache<u32>,
    virtual_sectors: u64,
    cid_updated: bool,
}

fn open_sparse(file: &mut dyn ImageFile, header: SparseHeader, extent_sectors: u64) -> Result<Sparse, ImageError> {
    let name = file.name().to_string();
    let mut header = header;
    if header.gd_offset == GD_AT_END {
        // streamOptimized as VMware writes it: the real header is the footer at EOF-1024.
        let len = file.len_bytes();
        if len < 1536 {
            return Err(ImageError::corrupt(&name, "grain directory at end, but the file has no footer"));
        }
        let mut fb = [0u8; 512];
        file.read_at(len - 1024, &mut fb)?;
        let footer = SparseHeader::parse(&fb, &name).map_err(|_| ImageError::corrupt(&name, "grain directory at end, but no valid footer header at EOF-1024"))?;
        header.gd_offset = footer.gd_offset;
        header.rgd_offset = footer.rgd_offset;
    }
    let gs = header.grain_size;
    if gs == 0 || !gs.is_power_of_two() || gs > 0x20_0000 {
        return Err(ImageError::corrupt(&name, alloc::format!("grain size {} sectors is not a power of two up to 1 GiB", gs)));
    }
    if header.flags & FLAG_COMPRESSED != 0 && gs > 32768 {
        // A compressed grain is inflated whole into memory: keep that bounded (16 MiB).
        return Err(ImageError::unsupported(&name, alloc::format!("compressed grains of {} sectors (at most 32768 are read)", gs)));
    }
    let gtes = header.num_gtes_per_gt as u64;
    if gtes == 0 || gtes > 4096 {
        return Err(ImageError::corrupt(&name, alloc::format!("{} grain table entries per table", gtes)));
    }
    let capacity = header.capacity.max(extent_sectors);
    let grains = capacity.div_ceil(gs);
    let gd_entries = grains.div_ceil(gtes);
    if grains > (1 << 32) {
        return Err(ImageError::unsupported(&name, "extent larger than 2^32 grains"));
    }
    let len = file.len_bytes();
    let read_gd = |file: &mut dyn ImageFile, at: u64| read_u32_table(file, at.saturating_mul(SECTOR_BYTES), gd_entries as usize, false, "a VMDK grain directory");
    let primary = if header.gd_offset != 0 { read_gd(file, header.gd_offset) } else { Err(ImageError::corrupt(&name, "no grain directory offset")) };
    let redundant = if header.flags & FLAG_REDUNDANT_GT != 0 && header.rgd_offset != 0 { read_gd(file, header.rgd_offset).ok() } else { None };
    let gd = match (primary, &redundant) {
        (Ok(gd), _) => gd,
        (Err(e @ ImageError::NoMemory { .. }), _) => return Err(e),
        (Err(_), Some(rgd)) => {
            // A copy of the redundant directory, which stays as the second one: its size comes
            // from the header, so it is reserved, not assumed (fuzz finding, image_vdi target).
            let mut gd = Vec::new();
            gd.try_reserve_exact(rgd.len()).map_err(|_| ImageError::NoMemory {
                image: name.clone(),
                what: "a copy of a VMDK redundant grain directory",
                bytes: rgd.len() as u64 * 4,
            })?;
            gd.extend_from_slice(rgd);
            gd
        }
        (Err(e), None) => return Err(e),
    };
    let mut next_free = header.overhead.max(header.descriptor_offset + header.descriptor_size).max(1);
    let gt_sectors = (gtes * 4).div_ceil(SECTOR_BYTES);
    for (gdi, &e) in gd.iter().enumerate() {
        if e != 0 {
            if (e as u64 + gt_sectors) * SECTOR_BYTES > len {
                return Err(ImageError::corrupt(&name, alloc::format!("grain table {} at sector {} lies past the end of the file", gdi, e)));
            }
            next_free = next_free.max(e as u64 + gt_sectors);
        }
    }
    // The redundant tables are never read; they only must not be overwritten by new grains.
    for &e in redundant.iter().flatten() {
        if e != 0 {
            next_free = next_free.max(e as u64 + gt_sectors);
        }
    }
    let meta_end = next_free;
    let mut sparse = Sparse { header, gd, rgd: redundant.unwrap_or_default(), allocated_grains: 0, next_free_sector: next_free, meta_end_sector: meta_end };
    // One pass over every grain table, kept nowhere: it checks each entry, counts the grains in
    // use and finds where the next one goes. It reads what the old whole-table load read, in
    // 64 KiB pieces (tables are usually back to back), but holds one window, not every table.
    let compressed = sparse.compressed();
    // The extent's own metadata as sorted sector ranges, which no grain may cover: a guest write
    // into such a grain would overwrite the header, the descriptor or a grain table.
    let metadata = if compressed { Vec::new() } else { metadata_ranges(&sparse, gt_sectors, &name)? };
    let mut window = Vec::new();
    super::try_reserve(&mut window, 64 * 1024, &name, "a VMDK grain table window")?;
    let mut window_at = 0u64;
    let table_bytes = gtes * 4;
    for gdi in 0..sparse.gd.len() {
        let gt_sector = sparse.gd[gdi] as u64;
        if gt_sector == 0 {
            continue;
        }
        let at = gt_sector * SECTOR_BYTES;
        let in_window = at >= window_at && at + table_bytes <= window_at + window.len() as u64;
        if !in_window {
            let n = (64 * 1024u64).max(table_bytes).min(len - at);
            window.resize(n as usize, 0);
            file.read_at(at, &mut window)?;
            window_at = at;
        }
        let from = (at - window_at) as usize;
        for i in 0..gtes as usize {
            let v = le_u32(&window, from + i * 4);
            sparse.check_entry(len, v, gdi as u64).map_err(|e| ImageError::corrupt(&name, e))?;
            if sparse.holds_data(v) {
                sparse.allocated_grains += 1;
                if !compressed {
                    sparse.next_free_sector = sparse.next_free_sector.max(v as u64 + gs);
                    if overlapping(&metadata, v as u64, v as u64 + gs) {
                        return Err(ImageError::corrupt(
                            &name,
                            alloc::format!(
                                "grain {} of grain table {} lies at sector {}, over the image's own header, descriptor or grain tables: a write there would damage the image; `vdisk check` lists every problem",
                                i, gdi, v
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(sparse)
}

/// Sorted (start sector, end sector) of a sparse extent's metadata: the header, the embedded
/// descriptor, both grain directories and every grain table. Its size grows with the number of
/// grain tables (16 bytes per 32 MiB of disk, twice), not with the data.
fn metadata_ranges(sparse: &Sparse, gt_sectors: u64, name: &str) -> Result<Vec<(u64, u64)>, ImageError> {
    let h = &sparse.header;
    let gd_sectors = (sparse.gd.len() as u64 * 4).div_ceil(SECTOR_BYTES);
    let tables = sparse.gd.iter().chain(sparse.rgd.iter()).filter(|&&t| t != 0).count();
    let mut out: Vec<(u64, u64)> = Vec::new();
    super::try_reserve(&mut out, tables + 4, name, "the VMDK metadata check")?;
    out.push((0, 1));
    out.push((h.descriptor_offset, h.descriptor_offset.saturating_add(h.descriptor_size)));
    out.push((h.gd_offset, h.gd_offset.saturating_add(gd_sectors)));
    if !sparse.rgd.is_empty() {
        out.push((h.rgd_offset, h.rgd_offset.saturating_add(gd_sectors)));
    }
    for &t in sparse.gd.iter().chain(sparse.rgd.iter()).filter(|&&t| t != 0) {
        out.push((t as u64, t as u64 + gt_sectors));
    }
    // The same sort `check` uses (one copy of the sorting code in the firmware).
    out.sort_unstable();
    Ok(out)
}

/// Whether anything in the sorted `ranges` overlaps `start..end`.
fn overlapping(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let upto = ranges.partition_point(|r| r.0 < end);
    ranges[..upto].iter().rev().take(4).any(|r| r.1 > start)
}

impl VmdkImage {
    /// `open_other` opens another file of the image by the name stored in the descriptor; the
    /// caller resolves it against the descriptor's directory.
    pub fn open(mut file0: Box<dyn ImageFile>, open_other: &mut dyn FnMut(&str) -> Option<Box<dyn ImageFile>>) -> Result<Self, ImageError> {
        let name = file0.name().to_string();
        let len = file0.len_bytes();
        let mut head = [0u8; 512];
        file0.read_at(0, &mut head[..len.min(512) as usize])?;
        if &head[0..4] == b"COWD" {
            return Err(ImageError::unsupported(&name, "ESX vmfsSparse (COWD) extents"));
        }
        let mut files: Vec<Box<dyn ImageFile>> = Vec::new();
        let mut extents = Vec::new();
        let descriptor;
        let descriptor_at;
        let descriptor_text;
        if &head[0..4] == SPARSE_MAGIC {
            if len < 512 {
                // The rest of `head` is zeros, which would be read as header fields.
                return Err(ImageError::corrupt(&name, alloc::format!("the file is {} bytes, cut inside its 512-byte sparse extent header", len)));
            }
            let header = SparseHeader::parse(&head, &name)?;
            if header.descriptor_offset == 0 || header.descriptor_size == 0 {
                // A bare sparse extent without descriptor: capacity says it all.
                descriptor = Descriptor { create_type: "monolithicSparse".into(), ..Default::default() };
                descriptor_at = (0, 0, 0);
                descriptor_text = Vec::new();
            } else {
                let dbytes = header.descriptor_size.checked_mul(SECTOR_BYTES).filter(|&b| b <= 1 << 20).ok_or_else(|| ImageError::corrupt(&name, "embedded descriptor larger than 1 MiB"))?;
                let mut text = vec![0u8; dbytes as usize];
                file0.read_at(header.descriptor_offset * SECTOR_BYTES, &mut text)?;
                descriptor = Descriptor::parse(&text, &name)?;
                descriptor_at = (0, header.descriptor_offset * SECTOR_BYTES, dbytes);
                descriptor_text = text;
            }
            if header.capacity == 0 && !descriptor.extents.is_empty() {
                // A descriptor-only file lists other files; a monolithic one lists itself (under
                // the name it was made with), so its capacity field is damaged.
                let monolithic = ["monolithicSparse", "streamOptimized"].iter().any(|t| descriptor.create_type.eq_ignore_ascii_case(t));
                if let [only] = &descriptor.extents[..] {
                    if monolithic {
                        return Err(ImageError::corrupt(
                            &name,
                            alloc::format!("its sparse header gives a capacity of 0 sectors, while its own descriptor gives it {} sectors", only.sectors),
                        ));
                    }
                }
                return Err(ImageError::unsupported(&name, "descriptor-only sparse file with separate extents"));
            }
            let sectors = descriptor.extents.first().map(|e| e.sectors).filter(|&s| s != 0).unwrap_or(header.capacity);
            if descriptor.extents.len() > 1 {
                return Err(ImageError::unsupported(&name, "a monolithic sparse file whose embedded descriptor lists several extents"));
            }
            let sparse = open_sparse(&mut *file0, header, sectors)?;
            files.push(file0);
            extents.push(Extent { start_sector: 0, sectors, kind: ExtentKind::Sparse { file: 0, sparse } });
        } else {
            if len > 1 << 20 {
                return Err(ImageError::corrupt(&name, "not a VMDK: no sparse header and too large for a descriptor"));
            }
            let mut text = vec![0u8; len as usize];
            file0.read_at(0, &mut text)?;
            descriptor = Descriptor::parse(&text, &name)?;
            descriptor_at = (0, 0, len);
            descriptor_text = text;
            files.push(file0);
            let mut start = 0u64;
            for line in descriptor.extents.iter() {
                if line.sectors == 0 {
                    return Err(ImageError::corrupt(&name, "an extent of 0 sectors"));
                }
                let kind = match line.kind.as_str() {
                    "ZERO" => ExtentKind::Zero,
                    "FLAT" | "VMFS" | "SPARSE" => {
                        let fname = line.file_name.as_deref().ok_or_else(|| ImageError::corrupt(&name, alloc::format!("{} extent without a file name", line.kind)))?;
                        let mut f = open_other(fname).ok_or_else(|| ImageError::corrupt(&name, alloc::format!("extent file `{}` cannot be opened (looked next to the descriptor)", fname)))?;
                        let idx = u16::try_from(files.len()).map_err(|_| ImageError::unsupported(&name, "more than 65535 extents"))?;
                        // The user named the descriptor: say it, and which of its extent files
                        // is wrong.
                        let in_extent = |e: ImageError| match e {
                            ImageError::Corrupt { image, detail } if image != name => ImageError::corrupt(&name, alloc::format!("extent file {}: {}", image, detail)),
                            ImageError::Unsupported { image, detail } if image != name => ImageError::unsupported(&name, alloc::format!("extent file {}: {}", image, detail)),
                            other => other,
                        };
                        let k = (|| -> Result<ExtentKind, ImageError> { Ok(if line.kind == "SPARSE" {
                            let mut hb = [0u8; 512];
                            if f.len_bytes() < 512 {
                                return Err(ImageError::corrupt(f.name(), "sparse extent shorter than its header"));
                            }
                            f.read_at(0, &mut hb)?;
                            let header = SparseHeader::parse(&hb, f.name())?;
                            ExtentKind::Sparse { file: idx, sparse: open_sparse(&mut *f, header, line.sectors)? }
                        } else {
                            let offset_bytes = line.offset_sectors.saturating_mul(SECTOR_BYTES);
                            if offset_bytes.saturating_add(line.sectors.saturating_mul(SECTOR_BYTES)) > f.len_bytes() {
                                return Err(ImageError::corrupt(f.name(), alloc::format!("flat extent of {} sectors at sector {} is longer than the file ({} bytes)", line.sectors, line.offset_sectors, f.len_bytes())));
                            }
                            ExtentKind::Flat { file: idx, offset_bytes }
                        }) })()
                        .map_err(in_extent)?;
                        files.push(f);
                        k
                    }
                    other => return Err(ImageError::unsupported(&name, alloc::format!("extent type {}", other))),
                };
                extents.push(Extent { start_sector: start, sectors: line.sectors, kind });
                // Every sector must have a byte offset (2^64 bytes): a larger disk is damage, and
                // its byte counts would overflow (a ZERO extent is only a number).
                start = start.checked_add(line.sectors).filter(|&s| s <= MAX_VIRTUAL_SECTORS).ok_or_else(|| {
                    ImageError::corrupt(&name, alloc::format!("the extents add up to more than {} sectors (the {} sectors of `{}` make it {})", MAX_VIRTUAL_SECTORS, line.sectors, line.kind, start as u128 + line.sectors as u128))
                })?;
            }
            if extents.is_empty() {
                return Err(ImageError::corrupt(&name, "descriptor lists no extents"));
            }
        }
        let virtual_sectors = extents.iter().map(|e| e.sectors).sum();
        let gtes = extents.iter().map(|e| match &e.kind { ExtentKind::Sparse { sparse, .. } => sparse.gtes() as usize, _ => 0 }).max().unwrap_or(0);
        let slots = if gtes == 0 { 1 } else { GRAIN_TABLE_SLOTS };
        let tables = PieceCache::new(slots, gtes, &name, "VMDK grain tables")?;
        Ok(VmdkImage { files, descriptor, descriptor_at, descriptor_text, extents, tables, virtual_sectors, cid_updated: false })
    }

    fn extent_index(&self, sector: u64) -> Option<usize> {
        let i = match self.extents.binary_search_by(|e| e.start_sector.cmp(&sector)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let e = self.extents.get(i)?;
        if sector < e.start_sector + e.sectors {
            Some(i)
        } else {
            None
        }
    }

    fn is_stream_optimized(&self) -> bool {
        self.extents.iter().any(|e| matches!(&e.kind, ExtentKind::Sparse { sparse, .. } if sparse.header.flags & FLAG_COMPRESSED != 0))
    }

    /// Rewrite the hexadecimal value of descriptor key `key` (case-insensitive) in place and
    /// flush. An 8-digit value is replaced byte for byte, so nothing else in the file moves.
    fn set_descriptor_hex(&mut self, key: &str, value: u32) -> Result<(), ImageError> {
        let name = self.name().to_string();
        // Edited in place: a copy would double the descriptor (up to 1 MiB) on the first write,
        // past what `memory_bytes` promises (fuzz finding, docs/robustness.md).
        let mut text = core::mem::take(&mut self.descriptor_text);
        let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        let hex = alloc::format!("{:08x}", value);
        let mut pos = 0usize;
        let mut found = None;
        while pos < end {
            let line_end = text[pos..end].iter().position(|&c| c == b'\n').map_or(end, |p| pos + p);
            let line = &text[pos..line_end];
            let lead = line.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(line.len());
            let l = &line[lead..];
            if l.len() > key.len() && l[..key.len()].eq_ignore_ascii_case(key.as_bytes()) {
                let after = &l[key.len()..];
                let blanks = after.iter().take_while(|c| **c == b' ' || **c == b'\t').count();
                if after.get(blanks) == Some(&b'=') {
                    let vstart = pos + lead + key.len() + blanks + 1;
                    let vtext = &text[vstart..line_end];
                    let skip = vtext.iter().take_while(|c| c.is_ascii_whitespace() || **c == b'"').count();
                    let digits = vtext[skip..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
                    found = Some((vstart + skip, digits));
                    break;
                }
            }
            pos = line_end + 1;
        }
        let Some((at, digits)) = found else {
            self.descriptor_text = text;
            return Err(ImageError::corrupt(&name, alloc::format!("descriptor has no {} line to update", key)));
        };
        if digits == 8 {
            text[at..at + 8].copy_from_slice(hex.as_bytes());
        } else {
            // The value changes length: the rest of the text moves, and the area keeps its size.
            let new_end = end - digits + 8;
            if new_end as u64 > self.descriptor_at.2 || new_end > text.len() {
                self.descriptor_text = text;
                return Err(ImageError::NoSlack { image: name, needed_bytes: new_end as u64 });
            }
            text.copy_within(at + digits..end, at + 8);
            text[at..at + 8].copy_from_slice(hex.as_bytes());
            text[new_end..].fill(0);
        }
        let (fidx, off_bytes, _) = self.descriptor_at;
        let written = match self.files.get_mut(fidx as usize) {
            Some(f) => f.write_at(off_bytes, &text).and_then(|_| f.flush()),
            None => Err(ImageError::corrupt(&name, "descriptor file missing")),
        };
        self.descriptor_text = text;
        written
    }

    /// Change the CID before the first modification, so a child made from the old content can
    /// tell (docs/image-formats.md, "VMDK: CID and parentCID").
    fn bump_cid(&mut self, seed: u64) -> Result<(), ImageError> {
        if self.cid_updated || self.descriptor_text.is_empty() {
            self.cid_updated = true;
            return Ok(());
        }
        let mut s = seed;
        let mut r = [0u8; 4];
        super::random_bytes(&mut s, &mut r);
        let mut new_cid = u32::from_le_bytes(r);
        if Some(new_cid) == self.descriptor.cid || new_cid >= 0xFFFF_FFFE {
            new_cid ^= 0x5A5A_0001;
        }
        self.set_descriptor_hex("CID", new_cid)?;
        self.descriptor.cid = Some(new_cid);
        self.cid_updated = true;
        Ok(())
    }
}

impl Layer for VmdkImage {
    fn memory_bytes(&self) -> u64 {
        let directories: usize = self
            .extents
            .iter()
            .map(|e| match &e.kind {
                ExtentKind::Sparse { sparse, .. } => (sparse.gd.capacity() + sparse.rgd.capacity()) * 4 + core::mem::size_of::<Extent>(),
                _ => core::mem::size_of::<Extent>(),
            })
            .sum();
        (directories + self.descriptor_text.capacity()) as u64 + self.tables.bytes() + core::mem::size_of::<Self>() as u64
    }
    fn unallocated_bytes_known(&self) -> Option<u64> {
        let sectors: u64 = self
            .extents
            .iter()
            .map(|e| match &e.kind {
                ExtentKind::Sparse { sparse, .. } => e.sectors.saturating_sub(sparse.allocated_grains.saturating_mul(sparse.header.grain_size)),
                _ => 0,
            })
            .sum();
        Some(sectors * SECTOR_BYTES)
    }
    fn compressed_grain_bytes(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| match &e.kind {
                ExtentKind::Sparse { sparse, .. } if sparse.compressed() => sparse.header.grain_size * SECTOR_BYTES,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn variant(&self) -> String {
        if self.descriptor.create_type.is_empty() {
            "monolithicSparse".into()
        } else {
            self.descriptor.create_type.clone()
        }
    }
    fn name(&self) -> &str {
        self.files.first().map(|f| f.name()).unwrap_or("vmdk")
    }
    fn virtual_sectors(&self) -> u64 {
        self.virtual_sectors
    }
    fn file_names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.name().to_string()).collect()
    }
    fn map(&mut self, sector: u64) -> Result<(Mapping, u64), ImageError> {
        let i = self.extent_index(sector).ok_or_else(|| ImageError::OutOfRange { image: self.name().to_string(), sector, sectors: 1, disk_sectors: self.virtual_sectors })?;
        let has_parent = self.descriptor.has_parent();
        let e = &self.extents[i];
        let into = sector - e.start_sector;
        let left = e.sectors - into;
        Ok(match &e.kind {
            ExtentKind::Zero => (Mapping::Zero, left),
            ExtentKind::Flat { file, offset_bytes } => (Mapping::Data { file: *file, offset_bytes: offset_bytes + into * SECTOR_BYTES }, left),
            ExtentKind::Sparse { file, sparse } => {
                let gs = sparse.header.grain_size;
                let gtes = sparse.gtes();
                let g = into / gs;
                let in_grain = into % gs;
                let f = self.files.get_mut(*file as usize).ok_or_else(|| ImageError::corrupt("vmdk", "extent file index out of range"))?;
                let table = sparse.table(&mut **f, &mut self.tables, i, g / gtes)?;
                let v = table.map_or(0, |t| t[(g % gtes) as usize]);
                // Extend the run over following grains that map the same way (unallocated,
                // zeroed, or allocated back to back) within this grain table, and over whole
                // directory entries that have no table while the run is unallocated. No other
                // table is read for it: a longer run is found by the next lookup.
                let total_grains = e.sectors.div_ceil(gs);
                let compressed = sparse.compressed();
                let table_end = (g / gtes + 1) * gtes;
                let mut next = g + 1;
                while next < total_grains {
                    if next >= table_end {
                        let no_table = sparse.gd.get((next / gtes) as usize).map_or(true, |&t| t == 0);
                        if v == 0 && no_table {
                            next = (next / gtes + 1) * gtes;
                            continue;
                        }
                        break;
                    }
                    let w = table.map_or(0, |t| t[(next % gtes) as usize]);
                    let same = if v <= 1 { w == v } else { !compressed && w as u64 == v as u64 + (next - g) * gs };
                    if !same {
                        break;
                    }
                    next += 1;
                }
                let run = ((next.min(total_grains) - g) * gs - in_grain).min(left);
                if v == 0 {
                    (if has_parent { Mapping::Parent } else { Mapping::Zero }, run)
                } else if v == 1 && sparse.header.flags & FLAG_ZEROED_GRAIN != 0 {
                    (Mapping::Zero, run)
                } else if compressed {
                    let grain_start = e.start_sector + g * gs;
                    let grain_sectors = gs.min(e.sectors - g * gs) as u32;
                    (Mapping::Compressed { file: *file, marker_offset_bytes: v as u64 * SECTOR_BYTES, grain_start_sector: grain_start, grain_sectors }, run)
                } else {
                    (Mapping::Data { file: *file, offset_bytes: (v as u64 + in_grain) * SECTOR_BYTES }, run)
                }
            }
        })
    }
    fn file_host_run(&self, file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.files.get(file as usize)?.host_run(offset_bytes)
    }
    fn file_host_run_writable(&self, file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.files.get(file as usize)?.host_run_writable(offset_bytes)
    }
    /// A flat extent, or an allocated (not zeroed) grain of a hosted sparse extent, once the
    /// first write has changed the CID ([`Layer::write`] does that before anything else).
    fn in_place_run(&mut self, sector: u64) -> Result<Option<(u16, u64, u64)>, ImageError> {
        if !self.cid_updated || self.is_stream_optimized() || sector >= self.virtual_sectors {
            return Ok(None);
        }
        let Some(i) = self.extent_index(sector) else { return Ok(None) };
        let e = &self.extents[i];
        let into = sector - e.start_sector;
        let extent_sectors = e.sectors;
        match &e.kind {
            ExtentKind::Flat { file, offset_bytes } => Ok(Some((*file, *offset_bytes + into * SECTOR_BYTES, extent_sectors - into))),
            ExtentKind::Sparse { file, sparse } => {
                let gs = sparse.header.grain_size;
                if gs == 0 {
                    return Ok(None);
                }
                let (g, in_grain) = (into / gs, into % gs);
                let n = (gs - in_grain).min(extent_sectors - into);
                let fidx = *file;
                let zeroed_flag = sparse.header.flags & FLAG_ZEROED_GRAIN != 0;
                let ExtentKind::Sparse { sparse, .. } = &self.extents[i].kind else { return Ok(None) };
                let file = self.files.get_mut(fidx as usize).ok_or_else(|| ImageError::corrupt("vmdk", "extent file index out of range"))?;
                let v = sparse.entry(&mut **file, &mut self.tables, i, g)?;
                if v == 0 || (v == 1 && zeroed_flag) {
                    return Ok(None);
                }
                Ok(Some((fidx, (v as u64 + in_grain) * SECTOR_BYTES, n)))
            }
            _ => Ok(None),
        }
    }
    fn read_file(&mut self, file: u16, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let name = self.name().to_string();
        let f = self.files.get_mut(file as usize).ok_or_else(|| ImageError::corrupt(&name, "extent file index out of range"))?;
        f.read_at(offset_bytes, buf)
    }
    fn read_grain(&mut self, file: u16, marker_offset_bytes: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let name = self.name().to_string();
        let markers = self.extents.iter().any(|e| matches!(&e.kind, ExtentKind::Sparse { file: f, sparse } if *f == file && sparse.header.flags & FLAG_MARKERS != 0));
        let f = self.files.get_mut(file as usize).ok_or_else(|| ImageError::corrupt(&name, "extent file index out of range"))?;
        let fname = f.name().to_string();
        let len = f.len_bytes();
        let (data_at, data_len) = if markers {
            let mut m = [0u8; 12];
            f.read_at(marker_offset_bytes, &mut m)?;
            let size = le_u32(&m, 8) as u64;
            (marker_offset_bytes + 12, size)
        } else {
            (marker_offset_bytes, (out.len() as u64 * 2 + 1024).min(len.saturating_sub(marker_offset_bytes)))
        };
        if data_len == 0 || data_len > 2 * out.len() as u64 + 4096 || data_at + data_len > len {
            return Err(ImageError::corrupt(&fname, alloc::format!("compressed grain at byte {} has an impossible length {}", marker_offset_bytes, data_len)));
        }
        let mut data = vec![0u8; data_len as usize];
        f.read_at(data_at, &mut data)?;
        let plain = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&data, out.len())
            .map_err(|e| ImageError::corrupt(&fname, alloc::format!("compressed grain at byte {} does not inflate: {:?}", marker_offset_bytes, e.status)))?;
        let n = plain.len().min(out.len());
        out[..n].copy_from_slice(&plain[..n]);
        out[n..].fill(0);
        Ok(())
    }
    fn relink_parent(&mut self, parent: &Identity) -> Result<(), ImageError> {
        let cid = parent.cid.ok_or_else(|| ImageError::corrupt(self.name(), "the new parent has no CID"))?;
        if !self.descriptor.has_parent() {
            return Err(ImageError::Invalid { detail: alloc::format!("{} has no parent to relink", self.name()) });
        }
        self.set_descriptor_hex("parentCID", cid)?;
        self.descriptor.parent_cid = Some(cid);
        Ok(())
    }
    fn allocation_unit_sectors(&self) -> u64 {
        self.extents.iter().map(|e| match &e.kind { ExtentKind::Sparse { sparse, .. } => sparse.header.grain_size, _ => 1 }).max().unwrap_or(1)
    }
    fn identity(&self) -> Identity {
        Identity { uuid: None, modify_uuid: None, cid: self.descriptor.cid, timestamp: None }
    }
    fn parent_link(&self) -> Option<ParentLink> {
        if !self.descriptor.has_parent() {
            return None;
        }
        Some(ParentLink { path_candidates: self.descriptor.parent_file_name_hint.iter().cloned().collect(), uuid: None, modify_uuid: None, cid: self.descriptor.parent_cid, timestamp: None })
    }
    fn details(&self) -> Vec<(String, String)> {
        let mut d = Vec::new();
        if let Some(c) = self.descriptor.cid {
            d.push(("cid".to_string(), alloc::format!("{:08x}", c)));
        }
        if let Some(c) = self.descriptor.parent_cid {
            d.push(("parent_cid".to_string(), alloc::format!("{:08x}", c)));
        }
        if let Some(h) = &self.descriptor.parent_file_name_hint {
            d.push(("parent_file_name_hint".to_string(), h.clone()));
        }
        for e in &self.extents {
            let what = match &e.kind {
                ExtentKind::Zero => "ZERO".to_string(),
                ExtentKind::Flat { file, offset_bytes } => alloc::format!("FLAT {} at byte {}", self.files.get(*file as usize).map(|f| f.name()).unwrap_or("?"), offset_bytes),
                ExtentKind::Sparse { file, sparse } => alloc::format!(
                    "SPARSE {} v{} flags {:#x} grain {} sectors, {} grains allocated",
                    self.files.get(*file as usize).map(|f| f.name()).unwrap_or("?"),
                    sparse.header.version,
                    sparse.header.flags,
                    sparse.header.grain_size,
                    sparse.allocated_grains
                ),
            };
            d.push(("extent".to_string(), alloc::format!("sectors {}..{}: {}", e.start_sector, e.start_sector + e.sectors, what)));
        }
        d.push(("slack_bytes".to_string(), alloc::format!("{}", self.slack_bytes())));
        d
    }
    fn check(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for e in &self.extents {
            if let ExtentKind::Sparse { file, sparse } = &e.kind {
                let f = match self.files.get_mut(*file as usize) {
                    Some(f) => f,
                    None => continue,
                };
                let compressed = sparse.header.flags & FLAG_COMPRESSED != 0;
                if !compressed {
                    let gs = sparse.header.grain_size;
                    let gtes = sparse.gtes() as usize;
                    let gt_sectors = (gtes as u64 * 4).div_ceil(SECTOR_BYTES);
                    // Every grain and every table as (start sector, sectors): none may overlap.
                    // (A host-side check: this list grows with the grains in use.)
                    let mut spans: Vec<(u64, u64)> = Vec::new();
                    let mut table = vec![0u32; gtes];
                    for &gt in sparse.gd.iter().filter(|&&g| g != 0) {
                        let len = f.len_bytes();
                        if let Err(e) = read_table(&mut **f, gt as u64, &mut table, |v| sparse.check_entry(len, v, 0)) {
                            problems.push(alloc::format!("{}", e));
                            continue;
                        }
                        spans.extend(table.iter().filter(|&&v| sparse.holds_data(v)).map(|&v| (v as u64, gs)));
                    }
                    let first_grain = spans.iter().map(|s| s.0).min();
                    spans.extend(sparse.gd.iter().chain(sparse.rgd.iter()).filter(|&&g| g != 0).map(|&g| (g as u64, gt_sectors)));
                    spans.sort_unstable();
                    for w in spans.windows(2) {
                        if w[0].0 + w[0].1 > w[1].0 {
                            problems.push(alloc::format!("{}: data at sectors {} and {} overlap", f.name(), w[0].0, w[1].0));
                        }
                    }
                    if let Some(first) = first_grain {
                        if first < sparse.header.overhead {
                            problems.push(alloc::format!("{}: a grain at sector {} lies inside the metadata area (overHead {} sectors)", f.name(), first, sparse.header.overhead));
                        }
                    }
                }
                if !sparse.rgd.is_empty() {
                    let gtes = sparse.header.num_gtes_per_gt as usize;
                    let mut a = vec![0u8; gtes * 4];
                    let mut b = vec![0u8; gtes * 4];
                    // The primary entry is written first, then its redundant copy: a crash in
                    // between leaves the copy empty where the primary is set. That lag is the
                    // state an interrupted update leaves (reads use the primary); anything else
                    // that differs is damage.
                    for (i, (&p, &r)) in sparse.gd.iter().zip(sparse.rgd.iter()).enumerate() {
                        if p == 0 && r != 0 {
                            problems.push(alloc::format!("{}: grain directory entry {} is only in the redundant directory", f.name(), i));
                            continue;
                        }
                        if p == 0 || r == 0 {
                            continue;
                        }
                        if f.read_at(p as u64 * SECTOR_BYTES, &mut a).is_err() || f.read_at(r as u64 * SECTOR_BYTES, &mut b).is_err() {
                            problems.push(alloc::format!("{}: grain table {} unreadable", f.name(), i));
                            continue;
                        }
                        let differs = a.chunks(4).zip(b.chunks(4)).any(|(x, y)| x != y && y != [0u8; 4]);
                        if differs {
                            problems.push(alloc::format!("{}: grain table {} differs from its redundant copy", f.name(), i));
                        }
                    }
                }
            }
        }
        problems
    }
    fn write(
        &mut self,
        sector: u64,
        buf: &[u8],
        parent: &mut dyn FnMut(u64, &mut [u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let name = self.name().to_string();
        let sectors = buf.len() as u64 / SECTOR_BYTES;
        super::check_range(&name, sector, sectors, self.virtual_sectors)?;
        if self.is_stream_optimized() {
            return Err(ImageError::ReadOnly { image: name, detail: "streamOptimized images are read-only; convert it first".into() });
        }
        let seed = sector ^ (self.virtual_sectors << 20) ^ (buf.first().copied().unwrap_or(0) as u64) ^ self.descriptor.cid.unwrap_or(0) as u64;
        self.bump_cid(seed)?;
        let has_parent = self.descriptor.has_parent();
        let mut done = 0u64;
        while done < sectors {
            let s = sector + done;
            let i = self.extent_index(s).ok_or_else(|| ImageError::corrupt(&name, "sector in no extent"))?;
            let e = &mut self.extents[i];
            let into = s - e.start_sector;
            let extent_start = e.start_sector;
            let extent_sectors = e.sectors;
            match &mut e.kind {
                ExtentKind::Zero => return Err(ImageError::ReadOnly { image: name, detail: "a ZERO extent cannot be written".into() }),
                ExtentKind::Flat { file, offset_bytes } => {
                    let n = (extent_sectors - into).min(sectors - done);
                    let chunk = &buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
                    let at = *offset_bytes + into * SECTOR_BYTES;
                    let fidx = *file as usize;
                    self.files[fidx].write_at(at, chunk)?;
                    done += n;
                }
                ExtentKind::Sparse { file, sparse } => {
                    let gs = sparse.header.grain_size;
                    let g = into / gs;
                    let in_grain = into % gs;
                    let n = (gs - in_grain).min(extent_sectors - into).min(sectors - done);
                    let chunk = &buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
                    let fidx = *file as usize;
                    let v = sparse.entry(&mut *self.files[fidx], &mut self.tables, i, g)?;
                    let zeroed = v == 1 && sparse.header.flags & FLAG_ZEROED_GRAIN != 0;
                    if v != 0 && !zeroed {
                        self.files[fidx].write_at((v as u64 + in_grain) * SECTOR_BYTES, chunk)?;
                    } else {
                        let f = &mut self.files[fidx];
                        let grain_bytes = gs * SECTOR_BYTES;
                        let gtes = sparse.header.num_gtes_per_gt as u64;
                        let gt_sectors = (gtes * 4).div_ceil(SECTOR_BYTES);
                        let gdi = (g / gtes) as usize;
                        let missing_gt = sparse.gd.get(gdi).copied().unwrap_or(0) == 0;
                        let table_sectors = if missing_gt { gt_sectors * if sparse.rgd.is_empty() { 1 } else { 2 } } else { 0 };
                        let at_sector = sparse.next_free_sector;
                        let need_end = (at_sector + table_sectors + gs) * SECTOR_BYTES;
                        if need_end > f.len_bytes() && !f.can_grow() {
                            return Err(ImageError::NoSlack { image: f.name().to_string(), needed_bytes: grain_bytes + table_sectors * SECTOR_BYTES });
                        }
                        let grain_sector = at_sector + table_sectors;
                        let grain_no = u32::try_from(grain_sector).map_err(|_| ImageError::unsupported(&name, "sparse extents cannot exceed 2 TiB"))?;
                        let grain_virtual = extent_start + g * gs;
                        let valid = gs.min(extent_sectors - g * gs) * SECTOR_BYTES;
                        let copy_from_parent = v == 0 && has_parent;
                        super::write_new_unit(&mut **f, grain_sector * SECTOR_BYTES, grain_bytes, valid, grain_virtual, in_grain * SECTOR_BYTES, chunk, if copy_from_parent { Some(&mut *parent) } else { None })?;
                        f.flush()?;
                        let entry = (g % gtes) * 4;
                        if missing_gt {
                            let mut gt = vec![0u8; (gt_sectors * SECTOR_BYTES) as usize];
                            put(&mut gt, entry as usize, &grain_no.to_le_bytes());
                            let gt_at = at_sector as u32;
                            f.write_at(at_sector * SECTOR_BYTES, &gt)?;
                            if !sparse.rgd.is_empty() {
                                f.write_at((at_sector + gt_sectors) * SECTOR_BYTES, &gt)?;
                            }
                            f.flush()?;
                            f.write_at(sparse.header.gd_offset * SECTOR_BYTES + gdi as u64 * 4, &gt_at.to_le_bytes())?;
                            if !sparse.rgd.is_empty() {
                                f.write_at(sparse.header.rgd_offset * SECTOR_BYTES + gdi as u64 * 4, &(gt_at + gt_sectors as u32).to_le_bytes())?;
                                if let Some(r) = sparse.rgd.get_mut(gdi) {
                                    *r = gt_at + gt_sectors as u32;
                                }
                            }
                            f.flush()?;
                            if let Some(d) = sparse.gd.get_mut(gdi) {
                                *d = gt_at;
                            }
                        } else {
                            let gt = sparse.gd[gdi] as u64;
                            f.write_at(gt * SECTOR_BYTES + entry, &grain_no.to_le_bytes())?;
                            if let Some(&r) = sparse.rgd.get(gdi) {
                                if r != 0 {
                                    f.write_at(r as u64 * SECTOR_BYTES + entry, &grain_no.to_le_bytes())?;
                                }
                            }
                            f.flush()?;
                        }
                        // The cached table (if this one is cached) follows the file.
                        if let Some(t) = self.tables.get_mut(table_key(i, gdi as u64)) {
                            t[(g % gtes) as usize] = grain_no;
                        }
                        sparse.allocated_grains += 1;
                        sparse.next_free_sector = grain_sector + gs;
                    }
                    done += n;
                }
            }
        }
        Ok(())
    }
    fn discard_all(&mut self) -> Result<(), ImageError> {
        let name = self.name().to_string();
        if !self.descriptor.has_parent() {
            return Err(ImageError::Invalid { detail: alloc::format!("{} is not a differencing image; emptying it would lose data", name) });
        }
        if self.is_stream_optimized() {
            return Err(ImageError::ReadOnly { image: name, detail: "streamOptimized images are read-only".into() });
        }
        let seed = self.virtual_sectors ^ 0xD15C_A4D0 ^ self.descriptor.cid.unwrap_or(0) as u64;
        self.bump_cid(seed)?;
        self.tables.clear();
        for e in self.extents.iter_mut() {
            if let ExtentKind::Sparse { file, sparse } = &mut e.kind {
                let f = self.files.get_mut(*file as usize).ok_or_else(|| ImageError::corrupt(&name, "extent file missing"))?;
                let gtes = sparse.header.num_gtes_per_gt as u64;
                let zero = vec![0u8; (gtes * 4) as usize];
                for dir in [&sparse.gd, &sparse.rgd] {
                    for &gt in dir.iter().filter(|&&g| g != 0) {
                        f.write_at(gt as u64 * SECTOR_BYTES, &zero)?;
                    }
                }
                f.flush()?;
                sparse.allocated_grains = 0;
                sparse.next_free_sector = sparse.meta_end_sector;
            }
        }
        Ok(())
    }
    fn slack_bytes(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| match &e.kind {
                ExtentKind::Sparse { file, sparse } => self.files.get(*file as usize).map_or(0, |f| f.len_bytes().saturating_sub(sparse.next_free_sector * SECTOR_BYTES)),
                _ => 0,
            })
            .sum()
    }
}
