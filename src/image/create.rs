//! Creating images: every variant the readers handle (streamOptimized excepted), children of an
//! existing image in all three formats, and write slack reserved at creation.
//!
//! Layouts follow what qemu writes, so qemu-img can check them:
//! - VHD dynamic: footer copy @0, dynamic header @512, BAT @1536 (0xFF padded to a sector),
//!   for a child the W2ru and W2ku locators (UTF-16LE, one sector-rounded slot each) after the
//!   BAT, then the reserved slack (zeros), then the footer. Creator `vbot`, which readers treat
//!   as "trust Current Size"; by default the size is rounded up to a CHS product (like qemu) so
//!   that CHS-trusting readers see the same size. Children copy the parent's size.
//! - VDI: v1.1 header (0x180), block map @0x200, data after the map, 1 MiB blocks.
//! - VMDK hosted sparse: header, embedded descriptor (sector 1, 20 sectors), redundant GD and
//!   GTs, GD and GTs (all GTs pre-allocated), padding to a grain; 64 KiB grains.
//!
//! Every file is written front to back; the caller (vdisk) writes under a temporary name and
//! renames at the end, so a failure never leaves a half-made image under the real name.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::vdi::{VdiHeader, BLOCK_FREE, TYPE_DIFF, TYPE_FIXED, TYPE_NORMAL, VERSION_1_1};
use super::vhd::{chs_for_size, chs_round_up, encode_utf16, DynHeader, Footer, Locator, DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, PLATFORM_W2KU, PLATFORM_W2RU, UNALLOCATED, VHD_EPOCH_UNIX};
use super::vmdk::{SparseHeader, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT, NO_PARENT_CID};
use super::{random_bytes, random_uuid, Format, Identity, ImageError, ImageFile, SECTOR_BYTES};

/// Which image to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Raw,
    VhdFixed,
    VhdDynamic,
    VmdkMonolithicSparse,
    VmdkMonolithicFlat,
    VmdkTwoGbSparse,
    VmdkTwoGbFlat,
    VmdkVmfs,
    VdiDynamic,
    VdiFixed,
}

impl Variant {
    pub fn format(self) -> Format {
        match self {
            Variant::Raw => Format::Raw,
            Variant::VhdFixed | Variant::VhdDynamic => Format::Vhd,
            Variant::VdiDynamic | Variant::VdiFixed => Format::Vdi,
            _ => Format::Vmdk,
        }
    }
    /// Parse the names vdisk accepts (`vhd-dynamic`, `vmdk-monolithicSparse`, ...).
    pub fn parse(s: &str) -> Option<Variant> {
        Some(match s.to_ascii_lowercase().as_str() {
            "raw" => Variant::Raw,
            "vhd" | "vhd-dynamic" | "vpc" => Variant::VhdDynamic,
            "vhd-fixed" => Variant::VhdFixed,
            "vmdk" | "vmdk-monolithicsparse" | "monolithicsparse" => Variant::VmdkMonolithicSparse,
            "vmdk-monolithicflat" | "monolithicflat" => Variant::VmdkMonolithicFlat,
            "vmdk-twogbmaxextentsparse" | "twogbmaxextentsparse" => Variant::VmdkTwoGbSparse,
            "vmdk-twogbmaxextentflat" | "twogbmaxextentflat" => Variant::VmdkTwoGbFlat,
            "vmdk-vmfs" | "vmfs" => Variant::VmdkVmfs,
            "vdi" | "vdi-dynamic" => Variant::VdiDynamic,
            "vdi-fixed" | "vdi-static" => Variant::VdiFixed,
            _ => return None,
        })
    }
    pub const NAMES: &'static [&'static str] = &[
        "raw",
        "vhd-fixed",
        "vhd-dynamic",
        "vmdk-monolithicSparse",
        "vmdk-monolithicFlat",
        "vmdk-twoGbMaxExtentSparse",
        "vmdk-twoGbMaxExtentFlat",
        "vmdk-vmfs",
        "vdi-dynamic",
        "vdi-fixed",
    ];
}

/// What a child needs to know about its parent.
#[derive(Clone, Debug, Default)]
pub struct ParentInfo {
    pub format: Option<Format>,
    pub virtual_bytes: u64,
    pub identity: Identity,
    /// Parent path relative to the child's directory (stored in W2ru / parentFileNameHint).
    pub relative_path: String,
    /// Parent path as an absolute path (stored in W2ku).
    pub absolute_path: String,
}

#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub size_bytes: u64,
    /// Zeroed slack for blocks written later (at boot), in bytes.
    pub reserve_bytes: u64,
    /// VHD: keep the exact size (Hyper-V/Azure style) instead of rounding up to CHS.
    pub exact_size: bool,
    /// Entropy for UUIDs and CIDs.
    pub seed: u64,
    /// Creation time, Unix seconds.
    pub now_unix: u64,
}

/// Creates further files of a multi-file image (VMDK extents) by bare file name, in the
/// directory of the main file.
pub type CreateOther<'a> = dyn FnMut(&str) -> Result<Box<dyn ImageFile>, ImageError> + 'a;

fn invalid(detail: impl Into<String>) -> ImageError {
    ImageError::Invalid { detail: detail.into() }
}

fn zeros(file: &mut dyn ImageFile, from: u64, len: u64) -> Result<(), ImageError> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    let end = from + len;
    while at < end {
        let n = (end - at).min(chunk.len() as u64) as usize;
        file.write_at(at, &chunk[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Make a file `len` bytes long without writing every byte when the last sector is what makes
/// the length (host files become sparse).
fn extend_to(file: &mut dyn ImageFile, len: u64) -> Result<(), ImageError> {
    if len > file.len_bytes() {
        let start = len.saturating_sub(512).max(file.len_bytes());
        zeros(file, start, len - start)?;
    }
    Ok(())
}

/// Create the image in `file` (and, for multi-file VMDK, through `create_other`). Returns the
/// names of the extra files made.
pub fn create(
    variant: Variant,
    file: &mut dyn ImageFile,
    base_name: &str,
    opts: &CreateOptions,
    parent: Option<&ParentInfo>,
    create_other: &mut CreateOther,
) -> Result<Vec<String>, ImageError> {
    let size = match parent {
        Some(p) => p.virtual_bytes,
        None => opts.size_bytes,
    };
    if size == 0 || size % SECTOR_BYTES != 0 {
        return Err(invalid(alloc::format!("the size {} is not a positive multiple of 512 bytes", size)));
    }
    if let Some(p) = parent {
        if p.format != Some(variant.format()) {
            return Err(invalid(alloc::format!(
                "a {} child needs a {} parent, the parent is {}",
                variant.format().as_str(),
                variant.format().as_str(),
                p.format.map(|f| f.as_str()).unwrap_or("unknown")
            )));
        }
    }
    let mut seed = opts.seed;
    match variant {
        Variant::Raw => {
            if parent.is_some() {
                return Err(invalid("raw images cannot have a parent"));
            }
            extend_to(file, size)?;
            Ok(Vec::new())
        }
        Variant::VhdFixed | Variant::VhdDynamic => {
            if parent.is_some() && variant == Variant::VhdFixed {
                return Err(invalid("a differencing VHD is dynamic; use vhd-dynamic with --parent"));
            }
            create_vhd(file, variant == Variant::VhdFixed, size, opts, parent, &mut seed)?;
            Ok(Vec::new())
        }
        Variant::VdiDynamic | Variant::VdiFixed => {
            if parent.is_some() && variant == Variant::VdiFixed {
                return Err(invalid("a differencing VDI is dynamic; use vdi-dynamic with --parent"));
            }
            create_vdi(file, variant == Variant::VdiFixed, size, opts, parent, &mut seed)?;
            Ok(Vec::new())
        }
        _ => create_vmdk(variant, file, base_name, size, opts, parent, &mut seed, create_other),
    }
}

fn create_vhd(file: &mut dyn ImageFile, fixed: bool, size: u64, opts: &CreateOptions, parent: Option<&ParentInfo>, seed: &mut u64) -> Result<(), ImageError> {
    let max = 2040u64 << 30;
    if size > max {
        return Err(invalid(alloc::format!("VHD images are limited to 2040 GiB ({} bytes asked)", size)));
    }
    let (current_size, geometry) = if opts.exact_size || parent.is_some() { (size, chs_for_size(size)) } else { chs_round_up(size) };
    let vhd_time = opts.now_unix.saturating_sub(VHD_EPOCH_UNIX) as u32;
    let mut footer = Footer {
        features: 2,
        version: 0x0001_0000,
        data_offset: if fixed { u64::MAX } else { 512 },
        timestamp: vhd_time,
        creator_app: *b"vbot",
        creator_version: 0x0001_0000,
        creator_os: *b"Wi2k",
        original_size: current_size,
        current_size,
        cylinders: geometry.0,
        heads: geometry.1,
        sectors_per_track: geometry.2,
        disk_type: if fixed { DISK_FIXED } else if parent.is_some() { DISK_DIFFERENCING } else { DISK_DYNAMIC },
        unique_id: random_uuid(seed),
        saved_state: 0,
    };
    if fixed {
        extend_to(file, current_size)?;
        file.write_at(current_size, &footer.to_bytes())?;
        return Ok(());
    }
    let block_size = 2u64 << 20;
    let entries = current_size.div_ceil(block_size);
    let table_offset = 1536u64;
    let bat_bytes = (entries * 4).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let mut header = DynHeader {
        data_offset: u64::MAX,
        table_offset,
        version: 0x0001_0000,
        max_table_entries: entries as u32,
        block_size: block_size as u32,
        parent_uuid: [0; 16],
        parent_timestamp: 0,
        parent_name: [0; 512],
        locators: Default::default(),
    };
    let mut next = table_offset + bat_bytes;
    let mut locator_data: Vec<(u64, Vec<u8>)> = Vec::new();
    if let Some(p) = parent {
        header.parent_uuid = p.identity.uuid.ok_or_else(|| invalid("the parent VHD has no Unique Id"))?;
        header.parent_timestamp = p.identity.timestamp.unwrap_or(0);
        let name_be = encode_utf16(super::chain::basename(&p.absolute_path), true);
        let n = name_be.len().min(512);
        header.parent_name[..n].copy_from_slice(&name_be[..n]);
        let rel = if p.relative_path.starts_with('.') { p.relative_path.replace('/', "\\") } else { alloc::format!(".\\{}", p.relative_path.replace('/', "\\")) };
        for (slot, (code, text)) in [(PLATFORM_W2RU, rel), (PLATFORM_W2KU, p.absolute_path.clone())].into_iter().enumerate() {
            let data = encode_utf16(&text, false);
            let space = (data.len() as u64).div_ceil(SECTOR_BYTES).max(1) * SECTOR_BYTES;
            header.locators[slot] = Locator { platform_code: code, data_space: space as u32, data_length: data.len() as u32, data_offset: next };
            locator_data.push((next, data));
            next += space;
        }
    }
    // Time stamp recorded for the child is the parent's modification time (what writers do).
    footer.original_size = current_size;
    let footer_at = next + opts.reserve_bytes.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let fb = footer.to_bytes();
    file.write_at(0, &fb)?;
    file.write_at(512, &header.to_bytes())?;
    let mut bat = vec![0u8; bat_bytes as usize];
    for e in bat.chunks_exact_mut(4) {
        e.copy_from_slice(&UNALLOCATED.to_be_bytes());
    }
    file.write_at(table_offset, &bat)?;
    for (at, data) in &locator_data {
        let mut slot = data.clone();
        slot.resize(((data.len() as u64).div_ceil(SECTOR_BYTES).max(1) * SECTOR_BYTES) as usize, 0);
        file.write_at(*at, &slot)?;
    }
    zeros(file, next, footer_at - next)?;
    file.write_at(footer_at, &fb)?;
    file.flush()
}

fn create_vdi(file: &mut dyn ImageFile, fixed: bool, size: u64, opts: &CreateOptions, parent: Option<&ParentInfo>, seed: &mut u64) -> Result<(), ImageError> {
    let block = 1u64 << 20;
    let blocks = size.div_ceil(block);
    if blocks > u32::MAX as u64 / 4 {
        return Err(invalid("VDI image too large"));
    }
    let off_blocks = 0x200u64;
    let off_data = off_blocks + (blocks * 4).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    let mut h = VdiHeader {
        version: VERSION_1_1,
        header_size: 0x180,
        image_type: if fixed { TYPE_FIXED } else if parent.is_some() { TYPE_DIFF } else { TYPE_NORMAL },
        flags: 0,
        comment: String::new(),
        off_blocks: off_blocks as u32,
        off_data: off_data as u32,
        disk_bytes: size,
        block_bytes: block as u32,
        block_extra: 0,
        blocks: blocks as u32,
        blocks_allocated: if fixed { blocks as u32 } else { 0 },
        uuid_create: random_uuid(seed),
        uuid_modify: random_uuid(seed),
        uuid_linkage: [0; 16],
        uuid_parent_modify: [0; 16],
    };
    if let Some(p) = parent {
        h.uuid_linkage = p.identity.uuid.ok_or_else(|| invalid("the parent VDI has no UUID"))?;
        h.uuid_parent_modify = p.identity.modify_uuid.unwrap_or([0; 16]);
    }
    let mut hb = vec![0u8; off_blocks as usize];
    h.write_into(&mut hb);
    file.write_at(0, &hb)?;
    let mut map = vec![0u8; (off_data - off_blocks) as usize];
    for (i, e) in map.chunks_exact_mut(4).enumerate().take(blocks as usize) {
        let v = if fixed { i as u32 } else { BLOCK_FREE };
        e.copy_from_slice(&v.to_le_bytes());
    }
    file.write_at(off_blocks, &map)?;
    let data_end = if fixed { off_data + blocks * block } else { off_data };
    extend_to(file, data_end)?;
    zeros(file, data_end, opts.reserve_bytes.div_ceil(SECTOR_BYTES) * SECTOR_BYTES)?;
    file.flush()
}

fn new_cid(seed: &mut u64) -> u32 {
    let mut b = [0u8; 4];
    random_bytes(seed, &mut b);
    let c = u32::from_le_bytes(b);
    if c >= 0xFFFF_FFFE {
        0x1234_5678
    } else {
        c
    }
}

fn descriptor_text(cid: u32, parent: Option<&ParentInfo>, create_type: &str, extents: &[String], sectors: u64) -> String {
    let mut s = String::new();
    s.push_str("# Disk DescriptorFile\nversion=1\n");
    s.push_str(&alloc::format!("CID={:08x}\n", cid));
    match parent {
        Some(p) => {
            s.push_str(&alloc::format!("parentCID={:08x}\n", p.identity.cid.unwrap_or(NO_PARENT_CID)));
        }
        None => s.push_str("parentCID=ffffffff\n"),
    }
    s.push_str(&alloc::format!("createType=\"{}\"\n", create_type));
    if let Some(p) = parent {
        s.push_str(&alloc::format!("parentFileNameHint=\"{}\"\n", p.relative_path));
    }
    s.push_str("\n# Extent description\n");
    for e in extents {
        s.push_str(e);
        s.push('\n');
    }
    let cylinders = (sectors / (16 * 63)).min(16383);
    s.push_str("\n# The Disk Data Base\n#DDB\n\n");
    s.push_str("ddb.virtualHWVersion = \"4\"\n");
    s.push_str(&alloc::format!("ddb.geometry.cylinders = \"{}\"\n", cylinders));
    s.push_str("ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n");
    s
}

/// Write one hosted sparse extent of `capacity` sectors. With `descriptor`, it is embedded
/// (monolithicSparse).
fn write_sparse_extent(file: &mut dyn ImageFile, capacity: u64, descriptor: Option<&str>, reserve_bytes: u64) -> Result<(), ImageError> {
    let grain = 128u64;
    let gtes = 512u64;
    let gd_entries = capacity.div_ceil(grain * gtes);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR_BYTES);
    let gt_sectors_each = gtes * 4 / SECTOR_BYTES;
    let gts_sectors = gd_entries * gt_sectors_each;
    let (desc_off, desc_size) = if descriptor.is_some() { (1u64, 20u64) } else { (0, 0) };
    let rgd = 1 + desc_size;
    let rgts = rgd + gd_sectors;
    let gd = rgts + gts_sectors;
    let gts = gd + gd_sectors;
    let overhead = (gts + gts_sectors).div_ceil(grain) * grain;
    let h = SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT,
        capacity,
        grain_size: grain,
        descriptor_offset: desc_off,
        descriptor_size: desc_size,
        num_gtes_per_gt: gtes as u32,
        rgd_offset: rgd,
        gd_offset: gd,
        overhead,
        compress_algorithm: 0,
    };
    file.write_at(0, &h.to_bytes())?;
    if let Some(d) = descriptor {
        if d.len() as u64 > desc_size * SECTOR_BYTES {
            return Err(invalid("the descriptor does not fit in its 10 KiB slot (parent path too long?)"));
        }
        let mut db = vec![0u8; (desc_size * SECTOR_BYTES) as usize];
        db[..d.len()].copy_from_slice(d.as_bytes());
        file.write_at(desc_off * SECTOR_BYTES, &db)?;
    }
    for (dir_at, tables_at) in [(rgd, rgts), (gd, gts)] {
        let mut dir = vec![0u8; (gd_sectors * SECTOR_BYTES) as usize];
        for i in 0..gd_entries {
            let v = (tables_at + i * gt_sectors_each) as u32;
            dir[(i * 4) as usize..(i * 4 + 4) as usize].copy_from_slice(&v.to_le_bytes());
        }
        file.write_at(dir_at * SECTOR_BYTES, &dir)?;
        zeros(file, tables_at * SECTOR_BYTES, gts_sectors * SECTOR_BYTES)?;
    }
    let end = overhead * SECTOR_BYTES;
    zeros(file, (gts + gts_sectors) * SECTOR_BYTES, end - (gts + gts_sectors) * SECTOR_BYTES)?;
    zeros(file, end, reserve_bytes.div_ceil(SECTOR_BYTES) * SECTOR_BYTES)?;
    file.flush()
}

/// The largest VMDK `create` makes.
const VMDK_MAX_SECTORS: u64 = 1 << 40;

#[allow(clippy::too_many_arguments)]
fn create_vmdk(
    variant: Variant,
    file: &mut dyn ImageFile,
    base_name: &str,
    size: u64,
    opts: &CreateOptions,
    parent: Option<&ParentInfo>,
    seed: &mut u64,
    create_other: &mut CreateOther,
) -> Result<Vec<String>, ImageError> {
    let sectors = size / SECTOR_BYTES;
    // What vboot's reader (and a sparse header's fields) takes: see `SparseHeader::parse`. Larger
    // sizes (a child of a huge parent) would also take gigabytes of tables.
    if sectors > VMDK_MAX_SECTORS {
        return Err(invalid(alloc::format!("VMDK images are limited to {} sectors (512 TiB); {} bytes asked", VMDK_MAX_SECTORS, size)));
    }
    let cid = new_cid(seed);
    if parent.is_some() && !matches!(variant, Variant::VmdkMonolithicSparse | Variant::VmdkTwoGbSparse) {
        return Err(invalid("flat VMDK images cannot have a parent; use vmdk-monolithicSparse or vmdk-twoGbMaxExtentSparse"));
    }
    let stem = base_name.strip_suffix(".vmdk").or_else(|| base_name.strip_suffix(".VMDK")).unwrap_or(base_name);
    let mut made = Vec::new();
    match variant {
        Variant::VmdkMonolithicSparse => {
            let d = descriptor_text(cid, parent, "monolithicSparse", &[alloc::format!("RW {} SPARSE \"{}\"", sectors, base_name)], sectors);
            write_sparse_extent(file, sectors, Some(&d), opts.reserve_bytes)?;
        }
        Variant::VmdkMonolithicFlat | Variant::VmdkVmfs => {
            let flat = alloc::format!("{}-flat.vmdk", stem);
            let mut f = create_other(&flat)?;
            extend_to(&mut *f, size)?;
            f.flush()?;
            made.push(flat.clone());
            let (ty, line) = if variant == Variant::VmdkVmfs {
                ("vmfs", alloc::format!("RW {} VMFS \"{}\"", sectors, flat))
            } else {
                ("monolithicFlat", alloc::format!("RW {} FLAT \"{}\" 0", sectors, flat))
            };
            file.write_at(0, descriptor_text(cid, None, ty, &[line], sectors).as_bytes())?;
        }
        Variant::VmdkTwoGbSparse | Variant::VmdkTwoGbFlat => {
            let max = 4_194_304u64;
            let sparse = variant == Variant::VmdkTwoGbSparse;
            let mut lines = Vec::new();
            let mut left = sectors;
            let mut n = 1;
            while left > 0 {
                let this = left.min(max);
                let name = alloc::format!("{}-{}{:03}.vmdk", stem, if sparse { 's' } else { 'f' }, n);
                let mut f = create_other(&name)?;
                if sparse {
                    // Slack goes to the last extent only.
                    write_sparse_extent(&mut *f, this, None, if left == this { opts.reserve_bytes } else { 0 })?;
                    lines.push(alloc::format!("RW {} SPARSE \"{}\"", this, name));
                } else {
                    extend_to(&mut *f, this * SECTOR_BYTES)?;
                    f.flush()?;
                    lines.push(alloc::format!("RW {} FLAT \"{}\" 0", this, name));
                }
                made.push(name);
                left -= this;
                n += 1;
            }
            let ty = if sparse { "twoGbMaxExtentSparse" } else { "twoGbMaxExtentFlat" };
            file.write_at(0, descriptor_text(cid, parent, ty, &lines, sectors).as_bytes())?;
        }
        _ => return Err(invalid("not a VMDK variant")),
    }
    file.flush()?;
    Ok(made)
}

/// An ImageFile that only records how long the file would become (dry runs).
struct Measure {
    len: u64,
}

impl ImageFile for Measure {
    fn len_bytes(&self) -> u64 {
        self.len
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let _ = offset_bytes;
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        self.len = self.len.max(offset_bytes + buf.len() as u64);
        Ok(())
    }
    fn name(&self) -> &str {
        "(measure)"
    }
    fn can_grow(&self) -> bool {
        true
    }
}

/// Create a single-file image inside an existing file that cannot grow (the boot-time
/// `take_snapshot=`: the file was made beforehand, its extents are fixed), turning all the
/// space after the metadata into write slack. Fails if the file is too small.
/// Bytes a single-file image takes with no slack: the smallest file [`create_filling`] accepts.
pub fn metadata_bytes(variant: Variant, base_name: &str, opts: &CreateOptions, parent: Option<&ParentInfo>) -> Result<u64, ImageError> {
    let mut no_extents = |_: &str| -> Result<Box<dyn ImageFile>, ImageError> { Err(invalid("only single-file images can be made in place")) };
    let mut m = Measure { len: 0 };
    let dry = CreateOptions { reserve_bytes: 0, ..opts.clone() };
    create(variant, &mut m, base_name, &dry, parent, &mut no_extents)?;
    Ok(m.len)
}

pub fn create_filling(variant: Variant, file: &mut dyn ImageFile, base_name: &str, opts: &CreateOptions, parent: Option<&ParentInfo>) -> Result<(), ImageError> {
    let mut no_extents = |_: &str| -> Result<Box<dyn ImageFile>, ImageError> { Err(invalid("only single-file images can be made in place")) };
    let mut m = Measure { len: 0 };
    let dry = CreateOptions { reserve_bytes: 0, ..opts.clone() };
    create(variant, &mut m, base_name, &dry, parent, &mut no_extents)?;
    let have = file.len_bytes();
    if have < m.len {
        return Err(ImageError::NoSlack { image: file.name().to_string(), needed_bytes: m.len });
    }
    if variant == Variant::VhdFixed || variant == Variant::VdiFixed || variant == Variant::Raw {
        return create(variant, file, base_name, &dry, parent, &mut no_extents).map(|_| ());
    }
    let filled = CreateOptions { reserve_bytes: (have - m.len) / SECTOR_BYTES * SECTOR_BYTES, ..opts.clone() };
    // The slack need not hold zeros (every allocation writes its whole block or grain), so the
    // zeros `create` writes there are skipped: at boot they would cost a write of the whole slack.
    let trailer = if variant.format() == Format::Vhd { SECTOR_BYTES } else { 0 };
    let mut skipping = SlackZerosSkipped { inner: file, from: m.len - trailer, to: have - trailer };
    create(variant, &mut skipping, base_name, &filled, parent, &mut no_extents)?;
    Ok(())
}

/// Passes writes through, except all-zero writes that lie wholly in `from..to`.
struct SlackZerosSkipped<'a> {
    inner: &'a mut dyn ImageFile,
    from: u64,
    to: u64,
}

impl ImageFile for SlackZerosSkipped<'_> {
    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.inner.read_at(offset_bytes, buf)
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        let end = offset_bytes + buf.len() as u64;
        if offset_bytes >= self.from && end <= self.to && buf.iter().all(|&b| b == 0) {
            return Ok(());
        }
        self.inner.write_at(offset_bytes, buf)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        self.inner.flush()
    }
}

/// The parent facts a child needs, taken from an open layer.
pub fn parent_info(layer: &dyn super::Layer, relative_path: &str, absolute_path: &str) -> ParentInfo {
    ParentInfo {
        format: Some(layer.format()),
        virtual_bytes: layer.virtual_sectors().saturating_mul(SECTOR_BYTES),
        identity: layer.identity(),
        relative_path: relative_path.to_string(),
        absolute_path: absolute_path.to_string(),
    }
}

/// `name` without its extension, and the extension with its dot ("" when there is none; a
/// leading dot is a hidden name, not an extension).
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => name.split_at(i),
        None => (name, ""),
    }
}

/// Where `immutable` keeps the throwaway differencing child of the image at `image_path` unless
/// `immutable_child=` says otherwise: beside it, with `.immutable` before the extension
/// (`/vm/x.vhd` -> `/vm/x.immutable.vhd`, `/vm/disk` -> `/vm/disk.immutable`). The extension
/// stays last so that tools still recognise the format by name. A raw image's child is a VMDK
/// (`/vm/x.img` -> `/vm/x.immutable.vmdk`), over [`raw_descriptor_path`] (docs/usage.md,
/// "Immutable").
pub fn immutable_child_path(image_path: &str, raw: bool) -> String {
    let name = super::chain::basename(image_path);
    let dir = &image_path[..image_path.len() - name.len()];
    let (stem, extension) = split_extension(name);
    match (raw, extension) {
        (true, _) => alloc::format!("{}{}.immutable.vmdk", dir, stem),
        (false, "") => alloc::format!("{}{}.immutable", dir, name),
        (false, _) => alloc::format!("{}{}.immutable{}", dir, stem, extension),
    }
}

/// The VMDK descriptor that makes the raw image at `raw_path` a parent for `immutable`'s VMDK
/// child: beside it, `/vm/x.img` -> `/vm/x.immutable-raw.vmdk`. qemu opens a VMDK child's parent
/// as a VMDK only, so the raw file is named as this descriptor's FLAT extent.
pub fn raw_descriptor_path(raw_path: &str) -> String {
    let name = super::chain::basename(raw_path);
    let dir = &raw_path[..raw_path.len() - name.len()];
    alloc::format!("{}{}.immutable-raw.vmdk", dir, split_extension(name).0)
}

/// The text of that descriptor: monolithicFlat, one FLAT extent, the raw file `raw_name` (a name
/// in the descriptor's own directory) of `sectors` sectors from its byte 0.
pub fn raw_flat_descriptor(raw_name: &str, sectors: u64, seed: u64) -> String {
    let mut seed = seed;
    let cid = new_cid(&mut seed);
    descriptor_text(cid, None, "monolithicFlat", &[alloc::format!("RW {} FLAT \"{}\" 0", sectors, raw_name)], sectors)
}

#[cfg(feature = "std")]
mod host {
    use super::*;
    use crate::image::chain::{open_chain, ChainOptions, StdLocator};
    use crate::image::StdFile;
    use std::path::{Component, Path, PathBuf};

    /// `target` relative to directory `from` (both absolute).
    pub fn relative_path(from: &Path, target: &Path) -> String {
        let a: Vec<Component> = from.components().collect();
        let b: Vec<Component> = target.components().collect();
        let common = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..a.len() {
            out.push("..");
        }
        for c in &b[common..] {
            out.push(c.as_os_str());
        }
        out.to_string_lossy().into_owned()
    }

    fn abs(p: &str) -> Result<PathBuf, ImageError> {
        std::fs::canonicalize(p).map_err(|e| ImageError::Io { image: p.to_string(), offset_bytes: 0, detail: e.to_string() })
    }

    /// Facts about the image at `parent_path` (its whole chain must open) as seen from a child
    /// to be created at `child_path`.
    pub fn parent_info_for(parent_path: &str, child_path: &str) -> Result<ParentInfo, ImageError> {
        let (layers, _) = open_chain(parent_path, &mut StdLocator::default(), &ChainOptions::default())?;
        let parent_abs = abs(parent_path)?;
        let child_dir = Path::new(child_path).parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d }).unwrap_or(Path::new("."));
        let child_dir = abs(&child_dir.to_string_lossy())?;
        let rel = relative_path(&child_dir, &parent_abs);
        let leaf = layers.first().ok_or_else(|| invalid("empty chain"))?;
        Ok(parent_info(&**leaf, &rel, &parent_abs.to_string_lossy()))
    }

    /// Create an image at `path` (never overwriting). The main file is written under a
    /// temporary name and renamed at the end; on failure every file made is removed.
    pub fn create_at(path: &str, variant: Variant, opts: &CreateOptions, parent_path: Option<&str>) -> Result<Vec<String>, ImageError> {
        if Path::new(path).exists() {
            return Err(invalid(alloc::format!("{} already exists; not overwriting it", path)));
        }
        let parent = match parent_path {
            Some(p) => Some(parent_info_for(p, path)?),
            None => None,
        };
        let p = Path::new(path);
        let dir = p.parent().map(|d| d.to_path_buf()).unwrap_or_default();
        let base = p.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| invalid(alloc::format!("{} has no file name", path)))?;
        let tmp = dir.join(alloc::format!(".{}.vdisk-tmp", base));
        let tmp_s = tmp.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&tmp);
        let mut made: Vec<PathBuf> = Vec::new();
        let result = (|| {
            let mut main = StdFile::create(&tmp_s)?;
            let mut other = |name: &str| -> Result<Box<dyn ImageFile>, ImageError> {
                let q = dir.join(name);
                if q.exists() {
                    return Err(invalid(alloc::format!("{} already exists; not overwriting it", q.display())));
                }
                made.push(q.clone());
                Ok(Box::new(StdFile::create(&q.to_string_lossy())?))
            };
            let extra = create(variant, &mut main, &base, opts, parent.as_ref(), &mut other)?;
            main.flush()?;
            std::fs::rename(&tmp, p).map_err(|e| ImageError::Io { image: path.to_string(), offset_bytes: 0, detail: e.to_string() })?;
            Ok(extra)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            for m in &made {
                let _ = std::fs::remove_file(m);
            }
        }
        result
    }
}

#[cfg(feature = "std")]
pub use host::{create_at, parent_info_for, relative_path};
