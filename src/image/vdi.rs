//! VDI (VirtualBox): normal (dynamic), fixed (static) and differencing images, header v1.1.
//!
//! Block map values: `n < 0xFFFFFFFE` = n-th data block, `0xFFFFFFFF` = free (parent, or zeros at
//! the base), `0xFFFFFFFE` = explicit zeros that hide the parent.
//!
//! Writing and slack: a new block goes to the slot after the highest one the map uses (the file
//! order VirtualBox uses) and must lie inside the file (reserved slack after the last block) unless the file may grow
//! (host tools). The block is written whole, with the sectors the write does not cover copied from
//! the layers below (VDI has no per-sector bitmap). Order
//! (docs/image-formats.md, "VDI: allocation order"): block data -> header with the new count ->
//! map entry, flushing between, so a crash leaks a slot at worst and never lets two map entries
//! share one. A new block takes the slot after the highest one the map uses, so a slot leaked that
//! way is taken again by the next allocation (and `check` reports a count above the map's as a
//! leak, not as damage).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use static_assertions::const_assert_eq;

use super::{bytes16, hex16, le_u32, le_u64, put, read_u32_table, Format, Identity, ImageError, ImageFile, Layer, Mapping, ParentLink, SECTOR_BYTES};

pub const SIGNATURE: u32 = 0xBEDA_107F;
pub const VERSION_1_1: u32 = 0x0001_0001;
pub const BLOCK_FREE: u32 = 0xFFFF_FFFF;
pub const BLOCK_ZERO: u32 = 0xFFFF_FFFE;

pub const TYPE_NORMAL: u32 = 1;
pub const TYPE_FIXED: u32 = 2;
pub const TYPE_UNDO: u32 = 3;
pub const TYPE_DIFF: u32 = 4;

/// Field offsets of the pre-header and header v1.1 (little-endian, absolute file offsets).
pub mod off {
    pub const FILE_INFO: usize = 0x000;
    pub const SIGNATURE: usize = 0x040;
    pub const VERSION: usize = 0x044;
    pub const HEADER_SIZE: usize = 0x048;
    pub const IMAGE_TYPE: usize = 0x04C;
    pub const FLAGS: usize = 0x050;
    pub const COMMENT: usize = 0x054;
    pub const OFF_BLOCKS: usize = 0x154;
    pub const OFF_DATA: usize = 0x158;
    pub const LEGACY_GEOMETRY: usize = 0x15C;
    pub const DUMMY: usize = 0x16C;
    pub const DISK_BYTES: usize = 0x170;
    pub const BLOCK_BYTES: usize = 0x178;
    pub const BLOCK_EXTRA: usize = 0x17C;
    pub const BLOCKS: usize = 0x180;
    pub const BLOCKS_ALLOCATED: usize = 0x184;
    pub const UUID_CREATE: usize = 0x188;
    pub const UUID_MODIFY: usize = 0x198;
    pub const UUID_LINKAGE: usize = 0x1A8;
    pub const UUID_PARENT_MODIFY: usize = 0x1B8;
    pub const LCHS_GEOMETRY: usize = 0x1C8;
    /// End of the v1.1+ header (0x48 pre-header + 0x190).
    pub const END: usize = 0x1D8;
}
const_assert_eq!(off::END, 0x48 + 0x190);
const_assert_eq!(off::BLOCKS_ALLOCATED + 4, off::UUID_CREATE);

/// The header fields this code uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdiHeader {
    pub version: u32,
    pub header_size: u32,
    pub image_type: u32,
    pub flags: u32,
    pub comment: String,
    pub off_blocks: u32,
    pub off_data: u32,
    pub disk_bytes: u64,
    pub block_bytes: u32,
    pub block_extra: u32,
    pub blocks: u32,
    pub blocks_allocated: u32,
    pub uuid_create: [u8; 16],
    pub uuid_modify: [u8; 16],
    pub uuid_linkage: [u8; 16],
    pub uuid_parent_modify: [u8; 16],
}

impl VdiHeader {
    pub fn parse(b: &[u8], name: &str) -> Result<VdiHeader, ImageError> {
        let bad = |d: String| ImageError::corrupt(name, d);
        if b.len() < 0x1C8 || le_u32(b, off::SIGNATURE) != SIGNATURE {
            return Err(bad("no VDI signature 0xBEDA107F at byte 0x40".into()));
        }
        let version = le_u32(b, off::VERSION);
        if version >> 16 != 1 {
            return Err(ImageError::unsupported(name, alloc::format!("VDI version {}.{} (only 1.x is read)", version >> 16, version & 0xFFFF)));
        }
        let comment_raw = &b[off::COMMENT..off::COMMENT + 256];
        let comment_len = comment_raw.iter().position(|&c| c == 0).unwrap_or(256);
        let h = VdiHeader {
            version,
            header_size: le_u32(b, off::HEADER_SIZE),
            image_type: le_u32(b, off::IMAGE_TYPE),
            flags: le_u32(b, off::FLAGS),
            comment: String::from_utf8_lossy(&comment_raw[..comment_len]).into(),
            off_blocks: le_u32(b, off::OFF_BLOCKS),
            off_data: le_u32(b, off::OFF_DATA),
            disk_bytes: le_u64(b, off::DISK_BYTES),
            block_bytes: le_u32(b, off::BLOCK_BYTES),
            block_extra: le_u32(b, off::BLOCK_EXTRA),
            blocks: le_u32(b, off::BLOCKS),
            blocks_allocated: le_u32(b, off::BLOCKS_ALLOCATED),
            uuid_create: bytes16(b, off::UUID_CREATE),
            uuid_modify: bytes16(b, off::UUID_MODIFY),
            uuid_linkage: bytes16(b, off::UUID_LINKAGE),
            uuid_parent_modify: bytes16(b, off::UUID_PARENT_MODIFY),
        };
        if !(TYPE_NORMAL..=TYPE_DIFF).contains(&h.image_type) {
            return Err(bad(alloc::format!("image type {} is not 1..4", h.image_type)));
        }
        if h.block_bytes < 512 || !h.block_bytes.is_power_of_two() {
            return Err(bad(alloc::format!("block size {} is not a power of two >= 512", h.block_bytes)));
        }
        if h.block_extra != 0 && (!h.block_extra.is_power_of_two() || h.block_extra % 512 != 0) {
            return Err(ImageError::unsupported(name, alloc::format!("per-block extra data of {} bytes", h.block_extra)));
        }
        if (h.blocks as u64) * (h.block_bytes as u64) < h.disk_bytes {
            return Err(bad(alloc::format!("{} blocks of {} bytes do not cover the disk size {}", h.blocks, h.block_bytes, h.disk_bytes)));
        }
        if h.blocks_allocated > h.blocks {
            return Err(bad(alloc::format!("{} blocks allocated out of {}", h.blocks_allocated, h.blocks)));
        }
        if (h.off_data as u64) < h.off_blocks as u64 + h.blocks as u64 * 4 {
            return Err(bad(alloc::format!("data area at byte {} overlaps the block map", h.off_data)));
        }
        // Every block must start on a sector: the engine reads data runs sector by sector
        // through the file's extents (qemu refuses such images too).
        if h.off_data % 512 != 0 || h.off_blocks % 512 != 0 {
            return Err(bad(alloc::format!(
                "its block map (byte {}) or data area (byte {}) does not start on a 512-byte sector",
                h.off_blocks, h.off_data
            )));
        }
        Ok(h)
    }

    /// Serialise a v1.1 header with `header_size` 0x180 (what qemu writes) into `b[..0x200]`.
    pub fn write_into(&self, b: &mut [u8]) {
        let info = b"<<< vboot vdisk Disk Image >>>\n";
        put(b, off::FILE_INFO, info);
        put(b, off::SIGNATURE, &SIGNATURE.to_le_bytes());
        put(b, off::VERSION, &self.version.to_le_bytes());
        put(b, off::HEADER_SIZE, &self.header_size.to_le_bytes());
        put(b, off::IMAGE_TYPE, &self.image_type.to_le_bytes());
        put(b, off::FLAGS, &self.flags.to_le_bytes());
        let c = self.comment.as_bytes();
        put(b, off::COMMENT, &c[..c.len().min(255)]);
        put(b, off::OFF_BLOCKS, &self.off_blocks.to_le_bytes());
        put(b, off::OFF_DATA, &self.off_data.to_le_bytes());
        put(b, off::LEGACY_GEOMETRY + 12, &512u32.to_le_bytes());
        put(b, off::DISK_BYTES, &self.disk_bytes.to_le_bytes());
        put(b, off::BLOCK_BYTES, &self.block_bytes.to_le_bytes());
        put(b, off::BLOCK_EXTRA, &self.block_extra.to_le_bytes());
        put(b, off::BLOCKS, &self.blocks.to_le_bytes());
        put(b, off::BLOCKS_ALLOCATED, &self.blocks_allocated.to_le_bytes());
        put(b, off::UUID_CREATE, &self.uuid_create);
        put(b, off::UUID_MODIFY, &self.uuid_modify);
        put(b, off::UUID_LINKAGE, &self.uuid_linkage);
        put(b, off::UUID_PARENT_MODIFY, &self.uuid_parent_modify);
    }
}

pub struct VdiImage {
    file: Box<dyn ImageFile>,
    pub header: VdiHeader,
    pub map: Vec<u32>,
    block_sectors: u64,
    virtual_sectors: u64,
    /// The slot after the highest one the map uses: where the next new block goes. Found once
    /// at open, then kept up to date, so an allocating write does not scan the map.
    next_slot: u32,
}

impl VdiImage {
    pub fn open(mut file: Box<dyn ImageFile>) -> Result<Self, ImageError> {
        let name = file.name().to_string();
        let mut hb = [0u8; 0x200];
        // min() before the cast: a 32-bit usize would wrap a file length past 4 GiB.
        let n = file.len_bytes().min(0x200) as usize;
        file.read_at(0, &mut hb[..n])?;
        let header = VdiHeader::parse(&hb[..n], &name)?;
        let map = read_u32_table(&mut *file, header.off_blocks as u64, header.blocks as usize, false, "the VDI block map")?;
        let stride = header.block_bytes as u64 + header.block_extra as u64;
        // One bit per slot: two blocks in one slot would overwrite each other's data. The map
        // itself lies before the data area (the header says so), so no block can cover it.
        let mut used: Vec<u64> = Vec::new();
        super::try_reserve(&mut used, (header.blocks as usize).div_ceil(64), &name, "the VDI slot check")?;
        used.resize((header.blocks as usize).div_ceil(64), 0);
        for (i, &e) in map.iter().enumerate() {
            if e < BLOCK_ZERO && e >= header.blocks {
                return Err(ImageError::corrupt(&name, alloc::format!("block map entry {} points at slot {}, beyond the {} blocks of the disk", i, e, header.blocks)));
            }
            if e < BLOCK_ZERO {
                let (word, bit) = ((e / 64) as usize, e % 64);
                if used[word] & (1 << bit) != 0 {
                    return Err(ImageError::corrupt(
                        &name,
                        alloc::format!("block {} uses slot {}, which another block uses too: a write to one would change the other; `vdisk check` lists every problem", i, e),
                    ));
                }
                used[word] |= 1 << bit;
            }
            if e < BLOCK_ZERO {
                let end = header.off_data as u64 + (e as u64 + 1) * stride;
                if end > file.len_bytes() && header.image_type != TYPE_FIXED {
                    return Err(ImageError::corrupt(&name, alloc::format!("block {} (slot {}) ends at byte {}, past the end of the file ({} bytes)", i, e, end, file.len_bytes())));
                }
            }
        }
        let block_sectors = header.block_bytes as u64 / SECTOR_BYTES;
        // Odd sizes exist (VirtualBox GUI bug); round up like qemu so the last bytes are addressable.
        let virtual_sectors = header.disk_bytes.div_ceil(SECTOR_BYTES);
        let next_slot = map.iter().filter(|&&e| e < BLOCK_ZERO).map(|&e| e + 1).max().unwrap_or(0);
        Ok(VdiImage { file, header, map, block_sectors, virtual_sectors, next_slot })
    }

    fn block_offset(&self, slot: u32) -> u64 {
        let stride = self.header.block_bytes as u64 + self.header.block_extra as u64;
        self.header.off_data as u64 + slot as u64 * stride + self.header.block_extra as u64
    }

    /// File end of the allocated data area: where slot `blocks_allocated` starts.
    fn data_end(&self) -> u64 {
        self.block_offset(self.header.blocks_allocated) - self.header.block_extra as u64
    }
}

/// How far ahead `map` looks for blocks that continue a run.
const MAP_SCAN_BLOCKS: u64 = 4096;

impl Layer for VdiImage {
    fn memory_bytes(&self) -> u64 {
        (self.map.capacity() * 4) as u64 + core::mem::size_of::<Self>() as u64
    }
    fn format(&self) -> Format {
        Format::Vdi
    }
    fn variant(&self) -> String {
        match self.header.image_type {
            TYPE_NORMAL => "dynamic",
            TYPE_FIXED => "fixed",
            TYPE_UNDO => "undo",
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
        let block = sector / self.block_sectors;
        let sib = sector % self.block_sectors;
        let diff = self.header.image_type == TYPE_DIFF || self.header.image_type == TYPE_UNDO;
        let entry = self.map.get(block as usize).copied().unwrap_or(BLOCK_FREE);
        let mut next = block + 1;
        // The run is looked for at most MAP_SCAN_BLOCKS ahead: a lookup stays cheap on a 2 TiB
        // map, and a longer run is simply found again by the next lookup.
        let scan_end = block.saturating_add(MAP_SCAN_BLOCKS);
        while let Some(&w) = self.map.get(next as usize).filter(|_| next < scan_end) {
            let same = if entry >= BLOCK_ZERO { w == entry } else { self.header.block_extra == 0 && w as u64 == entry as u64 + (next - block) };
            if !same {
                break;
            }
            next += 1;
        }
        let mut run = (next * self.block_sectors - sector).min(self.virtual_sectors - sector);
        let m = match entry {
            BLOCK_FREE if diff => Mapping::Parent,
            BLOCK_FREE | BLOCK_ZERO => Mapping::Zero,
            slot => Mapping::Data { file: 0, offset_bytes: self.block_offset(slot) + sib * SECTOR_BYTES },
        };
        // A fixed image shorter than its last block (`read_file`) reads as zeros past its end. The
        // engine reads data runs straight through the file's extents, which end where the file
        // does, so the map itself must say "zeros" there; a run that straddles the end stops at it.
        if let Mapping::Data { offset_bytes, .. } = m {
            if self.header.image_type == TYPE_FIXED {
                let len = self.file.len_bytes();
                if offset_bytes >= len {
                    return Ok((Mapping::Zero, run));
                }
                run = run.min((len - offset_bytes).div_ceil(SECTOR_BYTES));
            }
        }
        Ok((m, run))
    }
    fn file_host_run(&self, _file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.file.host_run(offset_bytes)
    }
    fn file_host_run_writable(&self, _file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.file.host_run_writable(offset_bytes)
    }
    /// An allocated block: [`Layer::write`] writes its data and nothing else.
    fn in_place_run(&mut self, sector: u64) -> Result<Option<(u16, u64, u64)>, ImageError> {
        if sector >= self.virtual_sectors {
            return Ok(None);
        }
        let block = sector / self.block_sectors;
        let sib = sector % self.block_sectors;
        match self.map.get(block as usize).copied() {
            Some(entry) if entry < BLOCK_ZERO => {
                let sectors = (self.block_sectors - sib).min(self.virtual_sectors - sector);
                Ok(Some((0, self.block_offset(entry) + sib * SECTOR_BYTES, sectors)))
            }
            _ => Ok(None),
        }
    }
    fn read_file(&mut self, _file: u16, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        // A static image made by truncate (qemu) is a sparse file that may be shorter than its
        // last block: those bytes read as zeros.
        let len = self.file.len_bytes();
        if offset_bytes >= len && self.header.image_type == TYPE_FIXED {
            buf.fill(0);
            return Ok(());
        }
        if offset_bytes + buf.len() as u64 > len && self.header.image_type == TYPE_FIXED {
            let have = (len - offset_bytes) as usize;
            let (a, b) = buf.split_at_mut(have);
            b.fill(0);
            return self.file.read_at(offset_bytes, a);
        }
        self.file.read_at(offset_bytes, buf)
    }
    fn relink_parent(&mut self, parent: &Identity) -> Result<(), ImageError> {
        if self.parent_link().is_none() {
            return Err(ImageError::Invalid { detail: alloc::format!("{} has no parent to relink", self.name()) });
        }
        if let Some(u) = parent.uuid {
            self.file.write_at(off::UUID_LINKAGE as u64, &u)?;
            self.header.uuid_linkage = u;
        }
        if let Some(u) = parent.modify_uuid {
            self.file.write_at(off::UUID_PARENT_MODIFY as u64, &u)?;
            self.header.uuid_parent_modify = u;
        }
        self.file.flush()
    }
    fn allocation_unit_sectors(&self) -> u64 {
        self.block_sectors
    }
    fn identity(&self) -> Identity {
        Identity { uuid: Some(self.header.uuid_create), modify_uuid: Some(self.header.uuid_modify), cid: None, timestamp: None }
    }
    fn parent_link(&self) -> Option<ParentLink> {
        if self.header.image_type != TYPE_DIFF && self.header.image_type != TYPE_UNDO {
            return None;
        }
        Some(ParentLink { path_candidates: Vec::new(), uuid: Some(self.header.uuid_linkage), modify_uuid: Some(self.header.uuid_parent_modify), cid: None, timestamp: None })
    }
    fn details(&self) -> Vec<(String, String)> {
        let h = &self.header;
        let mut d = vec![
            ("version".to_string(), alloc::format!("{}.{}", h.version >> 16, h.version & 0xFFFF)),
            ("block_size_bytes".to_string(), alloc::format!("{}", h.block_bytes)),
            ("blocks".to_string(), alloc::format!("{}", h.blocks)),
            ("allocated_blocks".to_string(), alloc::format!("{}", h.blocks_allocated)),
            ("uuid".to_string(), hex16(&h.uuid_create)),
            ("modify_uuid".to_string(), hex16(&h.uuid_modify)),
            ("slack_bytes".to_string(), alloc::format!("{}", self.slack_bytes())),
        ];
        if self.parent_link().is_some() {
            d.push(("parent_uuid".to_string(), hex16(&h.uuid_linkage)));
            d.push(("parent_modify_uuid".to_string(), hex16(&h.uuid_parent_modify)));
        }
        if !h.comment.is_empty() {
            d.push(("comment".to_string(), h.comment.clone()));
        }
        d
    }
    fn check(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut owner: Vec<Option<usize>> = vec![None; self.header.blocks as usize];
        let mut count = 0u32;
        for (i, &e) in self.map.iter().enumerate() {
            if e >= BLOCK_ZERO {
                continue;
            }
            count += 1;
            if e >= self.header.blocks_allocated {
                problems.push(alloc::format!("block {} uses slot {}, beyond the {} allocated slots", i, e, self.header.blocks_allocated));
            }
            match owner.get_mut(e as usize) {
                Some(Some(first)) => problems.push(alloc::format!("blocks {} and {} share slot {}", first, i, e)),
                Some(slot) => *slot = Some(i),
                None => {}
            }
        }
        // A count above what the map uses is a leak, not damage: a crash between the count and the
        // map entry leaves one (docs/image-formats.md, "VDI: allocation order"), and the next
        // allocation reuses it.
        if count > self.header.blocks_allocated {
            problems.push(alloc::format!("header says {} blocks are allocated, the map uses {}", self.header.blocks_allocated, count));
        }
        if self.header.uuid_create == [0; 16] {
            problems.push("the image UUID is null".into());
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
        let diff = self.header.image_type == TYPE_DIFF || self.header.image_type == TYPE_UNDO;
        let mut done = 0u64;
        while done < sectors {
            let s = sector + done;
            let block = s / self.block_sectors;
            let sib = s % self.block_sectors;
            let n = (self.block_sectors - sib).min(sectors - done);
            let chunk = &buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
            let entry = self.map.get(block as usize).copied().ok_or_else(|| ImageError::corrupt(&name, "block past the map"))?;
            if entry < BLOCK_ZERO {
                self.file.write_at(self.block_offset(entry) + sib * SECTOR_BYTES, chunk)?;
            } else {
                // The slot after the highest one in use: slots an interrupted allocation
                // counted but never mapped (a leak) are taken again rather than lost.
                let slot = self.next_slot;
                let block_bytes = self.header.block_bytes as u64;
                let start = self.block_offset(slot);
                let end = start + block_bytes;
                if end > self.file.len_bytes() && !self.file.can_grow() {
                    return Err(ImageError::NoSlack { image: name, needed_bytes: block_bytes + self.header.block_extra as u64 });
                }
                let block_first = block * self.block_sectors;
                let valid = self.block_sectors.min(self.virtual_sectors - block_first) * SECTOR_BYTES;
                if self.header.block_extra != 0 {
                    // Zeroed a piece at a time: the header allows up to 2 GiB of extra data per
                    // block, and a write must not take more than a fixed buffer (fuzz finding).
                    let extra = self.header.block_extra as u64;
                    let zeros = vec![0u8; extra.min(64 * 1024) as usize];
                    let mut done_extra = 0u64;
                    while done_extra < extra {
                        let n = (extra - done_extra).min(zeros.len() as u64);
                        self.file.write_at(start - extra + done_extra, &zeros[..n as usize])?;
                        done_extra += n;
                    }
                }
                let copy_from_parent = entry == BLOCK_FREE && diff;
                super::write_new_unit(&mut *self.file, start, block_bytes, valid, block_first, sib * SECTOR_BYTES, chunk, if copy_from_parent { Some(&mut *parent) } else { None })?;
                self.file.flush()?;
                if slot + 1 > self.header.blocks_allocated {
                    self.file.write_at(off::BLOCKS_ALLOCATED as u64, &(slot + 1).to_le_bytes())?;
                    self.file.flush()?;
                    self.header.blocks_allocated = slot + 1;
                }
                self.file.write_at(self.header.off_blocks as u64 + block * 4, &slot.to_le_bytes())?;
                self.file.flush()?;
                if let Some(e) = self.map.get_mut(block as usize) {
                    *e = slot;
                }
                self.next_slot = slot + 1;
            }
            done += n;
        }
        Ok(())
    }
    fn discard_all(&mut self) -> Result<(), ImageError> {
        if self.parent_link().is_none() {
            return Err(ImageError::Invalid { detail: alloc::format!("{} is not a differencing image; emptying it would lose data", self.name()) });
        }
        // Map first, count last: a crash in between leaves a count that is too high, which
        // only leaks slots (docs/image-formats.md, "VDI: allocation order").
        // 16 KiB per write from one fixed buffer: a 2 TiB map (8 MiB) is 512 writes, no copy.
        let mut free = [0u8; 16 * 1024];
        free.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&BLOCK_FREE.to_le_bytes()));
        let mut at = 0usize;
        let total = self.map.len() * 4;
        while at < total {
            let n = (total - at).min(free.len());
            self.file.write_at(self.header.off_blocks as u64 + at as u64, &free[..n])?;
            at += n;
        }
        self.file.flush()?;
        self.map.iter_mut().for_each(|e| *e = BLOCK_FREE);
        self.next_slot = 0;
        self.file.write_at(off::BLOCKS_ALLOCATED as u64, &0u32.to_le_bytes())?;
        self.file.flush()?;
        self.header.blocks_allocated = 0;
        Ok(())
    }
    fn slack_bytes(&self) -> u64 {
        self.file.len_bytes().saturating_sub(self.data_end())
    }
}
