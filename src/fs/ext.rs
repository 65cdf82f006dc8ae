//! ext2/ext3/ext4 reader: superblock, group descriptors (32- and 64-byte, meta_bg), inodes,
//! extent trees of any depth, indirect blocks, and linear or htree directories.
//!
//! Directories are scanned linearly even when they carry an htree index: the index blocks
//! look like blocks holding one empty entry, and the leaves are ordinary entry blocks.
//! metadata_csum is accepted without verifying the checksums.
//!
//! vboot never changes ext metadata: creating or growing a file is done from the OS.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{allocation_refusal, UnitRanges};
use super::{path_components, DirEntry, ExtentList, File, FileKind, FsError};
use super::{read_via_extents, write_via_extents};
use crate::block::{BlockDevice, SECTOR_BYTES};

const SUPERBLOCK_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const ROOT_INODE: u32 = 2;

const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Features whose on-disk layout this reader understands (or that do not change it).
const INCOMPAT_UNDERSTOOD: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
/// Superblock copies only in group 0 and the two groups `s_backup_bgs` names.
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
/// bg_flags: the group's block bitmap was never initialised (nothing but metadata in use).
const BG_BLOCK_UNINIT: u16 = 0x2;

const MODE_TYPE_MASK: u16 = 0xF000;
const MODE_DIR: u16 = 0x4000;
const MODE_FILE: u16 = 0x8000;
const MODE_SYMLINK: u16 = 0xA000;
const FLAG_COMPRESSED: u32 = 0x4;
const FLAG_ENCRYPTED: u32 = 0x800;
const FLAG_EXTENTS: u32 = 0x8_0000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;

const XATTR_MAGIC: u32 = 0xEA02_0000;
const XATTR_INDEX_SYSTEM: u8 = 7;

const EXTENT_MAGIC: u16 = 0xF30A;
/// Linux limits extent trees to depth 5; anything deeper is damage.
const MAX_EXTENT_DEPTH: u16 = 5;
/// Bound on tree blocks read for one file, so damaged trees cannot make us walk forever.
const MAX_MAP_NODES: u32 = 1 << 20;
/// The most a directory may hold here: its entries are read whole, and a size is only a header
/// value. 16 MiB hold over 60,000 entries with 255-byte names (Linux's limit), about 1.4 million
/// with 4-byte ones (docs/filesystems.md, "ext2/3/4").
const MAX_DIR_BYTES: u64 = 16 << 20;
/// And at most this many live entries (each costs its name plus a few words in memory).
const MAX_DIR_ENTRIES: usize = 262_144;
/// An ee_len above this marks an unwritten (preallocated) extent.
const EXTENT_INIT_MAX: u16 = 32768;

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).unwrap_or(0)
}
fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0)
}

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(format!("ext: {}", msg))
}

fn read_only_message() -> FsError {
    FsError::ReadOnly(
        "ext2/3/4: vboot does not change ext metadata at boot; create, grow or rename the file \
         from the host OS (for example with vdisk on Linux)"
            .into(),
    )
}

/// Where a run of file blocks lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Data { block: u64, blocks: u64 },
    /// Never written: a hole in a sparse file.
    Hole { blocks: u64 },
    /// Allocated but unwritten (fallocate): reads as zeros whatever the blocks hold.
    Unwritten { blocks: u64 },
}

impl Piece {
    fn blocks(&self) -> u64 {
        match *self {
            Piece::Data { blocks, .. } | Piece::Hole { blocks } | Piece::Unwritten { blocks } => blocks,
        }
    }
}

fn push_piece(pieces: &mut Vec<Piece>, p: Piece) {
    if p.blocks() == 0 {
        return;
    }
    if let Some(last) = pieces.last_mut() {
        match (last, p) {
            (Piece::Data { block, blocks }, Piece::Data { block: b2, blocks: n2 }) if *block + *blocks == b2 => {
                *blocks += n2;
                return;
            }
            (Piece::Hole { blocks }, Piece::Hole { blocks: n2 }) => {
                *blocks += n2;
                return;
            }
            (Piece::Unwritten { blocks }, Piece::Unwritten { blocks: n2 }) => {
                *blocks += n2;
                return;
            }
            _ => {}
        }
    }
    pieces.push(p);
}

#[derive(Clone, Debug)]
struct Inode {
    number: u32,
    mode: u16,
    flags: u32,
    size_bytes: u64,
    i_block: [u8; 60],
}

impl Inode {
    fn kind(&self) -> u16 {
        self.mode & MODE_TYPE_MASK
    }
}

pub struct ExtVolume<D: BlockDevice> {
    dev: D,
    block_bytes: u64,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inodes_count: u64,
    inode_bytes: u64,
    desc_bytes: u64,
    group_count: u64,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    /// Blocks kept after the group descriptors for online resizing (in every group with a
    /// superblock copy).
    reserved_gdt_blocks: u64,
    /// sparse_super2: the only two groups besides group 0 with a superblock copy (0 = none).
    backup_groups: Option<[u64; 2]>,
}

impl<D: BlockDevice> ExtVolume<D> {
    pub fn open(mut dev: D) -> Result<Self, FsError> {
        let mut sb = [0u8; 1024];
        read_bytes(&mut dev, SUPERBLOCK_OFFSET, &mut sb)?;
        if le16(&sb, 56) != MAGIC {
            return Err(FsError::NotRecognized("no ext2/3/4 superblock magic".into()));
        }
        let log_block = le32(&sb, 24);
        if log_block > 6 {
            return Err(corrupt(format!("block size 1024 << {} is impossible", log_block)));
        }
        let block_bytes = 1024u64 << log_block;
        let incompat = le32(&sb, 96);
        let ro_compat = le32(&sb, 100);
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(FsError::NotRecognized("this is an external ext journal, not a filesystem".into()));
        }
        if incompat & INCOMPAT_COMPRESSION != 0 {
            return Err(FsError::Unsupported("ext: compressed filesystems (e2compr) are not read".into()));
        }
        if incompat & INCOMPAT_DIRDATA != 0 {
            return Err(FsError::Unsupported("ext: the dirdata feature (Lustre) is not read".into()));
        }
        if incompat & !INCOMPAT_UNDERSTOOD != 0 {
            return Err(FsError::Unsupported(format!(
                "ext: unknown incompatible features {:#x}",
                incompat & !INCOMPAT_UNDERSTOOD
            )));
        }
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = le32(&sb, 4) as u64;
        if is_64bit {
            blocks_count |= (le32(&sb, 0x150) as u64) << 32;
        }
        let rev = le32(&sb, 76);
        let inode_bytes = if rev == 0 { 128 } else { le16(&sb, 88) as u64 };
        let desc_bytes = if is_64bit { le16(&sb, 254) as u64 } else { 32 };
        let first_data_block = le32(&sb, 20) as u64;
        let blocks_per_group = le32(&sb, 32) as u64;
        let inodes_per_group = le32(&sb, 40) as u64;
        let inodes_count = le32(&sb, 0) as u64;
        let dev_bytes = dev.sector_count() * SECTOR_BYTES as u64;
        if blocks_count.checked_mul(block_bytes).map_or(true, |b| b > dev_bytes) {
            return Err(corrupt(format!(
                "the filesystem has {} blocks of {} bytes, more than the partition holds",
                blocks_count, block_bytes
            )));
        }
        let bits_per_block = block_bytes * 8;
        if blocks_per_group == 0
            || blocks_per_group > bits_per_block
            || inodes_per_group == 0
            || inodes_per_group > bits_per_block
            || !(128..=block_bytes).contains(&inode_bytes)
            || !inode_bytes.is_power_of_two()
            || (is_64bit && (desc_bytes < 64 || desc_bytes > block_bytes || !desc_bytes.is_power_of_two()))
            || first_data_block >= blocks_count
            || first_data_block > 1
        {
            return Err(corrupt("superblock geometry is inconsistent".into()));
        }
        let group_count = (blocks_count - first_data_block + blocks_per_group - 1) / blocks_per_group;
        if inodes_count > group_count * inodes_per_group || inodes_count < ROOT_INODE as u64 {
            return Err(corrupt("superblock inode count is inconsistent".into()));
        }
        Ok(ExtVolume {
            dev,
            block_bytes,
            blocks_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes_count,
            inode_bytes,
            desc_bytes,
            group_count,
            incompat,
            ro_compat,
            first_meta_bg: le32(&sb, 0x104) as u64,
            reserved_gdt_blocks: le16(&sb, 0xCE) as u64,
            backup_groups: (le32(&sb, 92) & COMPAT_SPARSE_SUPER2 != 0)
                .then(|| [le32(&sb, 0x24C) as u64, le32(&sb, 0x250) as u64]),
        })
    }

    pub fn into_inner(self) -> D {
        self.dev
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    fn group_has_superblock(&self, group: u64) -> bool {
        if let Some(backups) = self.backup_groups {
            return group == 0 || backups.contains(&group);
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || group <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < group {
                p *= base;
            }
            p == group
        })
    }

    fn descriptor_offset(&self, group: u64) -> u64 {
        let per_block = self.block_bytes / self.desc_bytes;
        let meta_group = group / per_block;
        let block = if self.incompat & INCOMPAT_META_BG != 0 && meta_group >= self.first_meta_bg {
            // meta_bg: each meta group's descriptors sit in its own first group.
            let first = meta_group * per_block;
            self.first_data_block
                + first * self.blocks_per_group
                + if self.group_has_superblock(first) { 1 } else { 0 }
        } else {
            self.first_data_block + 1 + meta_group
        };
        block * self.block_bytes + (group % per_block) * self.desc_bytes
    }

    /// Byte offset of an inode on the volume, from its group's descriptor.
    fn inode_offset(&mut self, number: u32) -> Result<u64, FsError> {
        if number == 0 || number as u64 > self.inodes_count {
            return Err(corrupt(format!("inode number {} is out of range", number)));
        }
        let index = number as u64 - 1;
        let group = index / self.inodes_per_group;
        if group >= self.group_count {
            return Err(corrupt(format!("inode {} lies in group {} past the last group", number, group)));
        }
        let mut desc = [0u8; 64];
        let desc_len = self.desc_bytes.min(64) as usize;
        let desc_offset = self.descriptor_offset(group);
        read_bytes(&mut self.dev, desc_offset, &mut desc[..desc_len])?;
        let mut table = le32(&desc, 8) as u64;
        if self.desc_bytes >= 64 {
            table |= (le32(&desc, 0x28) as u64) << 32;
        }
        let table_blocks = (self.inodes_per_group * self.inode_bytes + self.block_bytes - 1) / self.block_bytes;
        if table == 0 || table.saturating_add(table_blocks) > self.blocks_count {
            return Err(corrupt(format!("group {} has its inode table outside the filesystem", group)));
        }
        Ok(table * self.block_bytes + (index % self.inodes_per_group) * self.inode_bytes)
    }

    fn read_inode(&mut self, number: u32) -> Result<Inode, FsError> {
        let offset = self.inode_offset(number)?;
        let mut raw = [0u8; 128];
        read_bytes(&mut self.dev, offset, &mut raw)?;
        let mode = le16(&raw, 0);
        let mut size_bytes = le32(&raw, 4) as u64;
        // i_size_high is the directory ACL on old revisions; only trust it for files, and for
        // directories when large directories are enabled.
        if mode & MODE_TYPE_MASK == MODE_FILE || self.incompat & INCOMPAT_LARGEDIR != 0 {
            size_bytes |= (le32(&raw, 0x6C) as u64) << 32;
        }
        let mut i_block = [0u8; 60];
        i_block.copy_from_slice(&raw[0x28..0x28 + 60]);
        Ok(Inode { number, mode, flags: le32(&raw, 0x20), size_bytes, i_block })
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8]) -> Result<(), FsError> {
        if block == 0 || block >= self.blocks_count {
            return Err(corrupt(format!("block {} is outside the filesystem", block)));
        }
        read_bytes(&mut self.dev, block * self.block_bytes, buf)
    }

    /// Where each block of the inode's data lives, in file order, covering exactly its size.
    fn map_inode(&mut self, inode: &Inode) -> Result<Vec<Piece>, FsError> {
        if inode.flags & FLAG_INLINE_DATA != 0 {
            return Err(FsError::Unsupported(format!(
                "ext: inode {} keeps its data inside the inode (inline_data)",
                inode.number
            )));
        }
        // Logical block numbers are 32 bits: a larger size is damage (and near 2^64 it would
        // overflow the arithmetic below).
        let blocks = inode.size_bytes.div_ceil(self.block_bytes);
        if blocks > 1 << 32 {
            return Err(corrupt(format!(
                "inode {} says it is {} bytes, more than ext can address with {}-byte blocks",
                inode.number, inode.size_bytes, self.block_bytes
            )));
        }
        let mut pieces = Vec::new();
        let mut budget = if inode.flags & FLAG_EXTENTS != 0 {
            MAX_MAP_NODES
        } else {
            self.blocks_count.min(u32::MAX as u64) as u32
        };
        if inode.flags & FLAG_EXTENTS != 0 {
            let mut extents: Vec<(u64, u64, u64, bool)> = Vec::new();
            self.walk_extent_node(&inode.i_block, None, &mut extents, &mut budget)?;
            extents.sort_by_key(|e| e.0);
            let mut next = 0u64;
            for (logical, physical, len, unwritten) in extents {
                if logical >= blocks {
                    break; // preallocated past the end of the file
                }
                if logical < next {
                    return Err(corrupt(format!("inode {} has overlapping extents", inode.number)));
                }
                push_piece(&mut pieces, Piece::Hole { blocks: logical - next });
                let len = len.min(blocks - logical);
                push_piece(
                    &mut pieces,
                    if unwritten { Piece::Unwritten { blocks: len } } else { Piece::Data { block: physical, blocks: len } },
                );
                next = logical + len;
            }
            push_piece(&mut pieces, Piece::Hole { blocks: blocks - next });
        } else {
            let mut left = blocks;
            for i in 0..15 {
                if left == 0 {
                    break;
                }
                let ptr = le32(&inode.i_block, 4 * i) as u64;
                let level = if i < 12 { 0 } else { i as u32 - 11 };
                self.walk_indirect(ptr, level, &mut left, &mut pieces, &mut budget)?;
            }
            if left != 0 {
                return Err(corrupt(format!("inode {} is larger than its block map can address", inode.number)));
            }
        }
        Ok(pieces)
    }

    fn walk_extent_node(
        &mut self,
        node: &[u8],
        depth_expected: Option<u16>,
        out: &mut Vec<(u64, u64, u64, bool)>,
        budget: &mut u32,
    ) -> Result<(), FsError> {
        let entries = le16(node, 2) as usize;
        let depth = le16(node, 6);
        if le16(node, 0) != EXTENT_MAGIC
            || entries > le16(node, 4) as usize
            || 12 + 12 * entries > node.len()
            || depth > MAX_EXTENT_DEPTH
            || depth_expected.map_or(false, |d| d != depth)
        {
            return Err(corrupt("an extent tree node has a bad header".into()));
        }
        for k in 0..entries {
            let e = &node[12 + 12 * k..24 + 12 * k];
            let logical = le32(e, 0) as u64;
            if depth > 0 {
                let child = le32(e, 4) as u64 | (le16(e, 8) as u64) << 32;
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| corrupt("an extent tree is too large".into()))?;
                let mut buf = vec![0u8; self.block_bytes as usize];
                self.read_block(child, &mut buf)?;
                self.walk_extent_node(&buf, Some(depth - 1), out, budget)?;
            } else {
                let raw_len = le16(e, 4);
                let (len, unwritten) =
                    if raw_len > EXTENT_INIT_MAX { (raw_len - EXTENT_INIT_MAX, true) } else { (raw_len, false) };
                let physical = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                if len == 0 || physical == 0 || physical + len as u64 > self.blocks_count {
                    return Err(corrupt(format!(
                        "an extent of {} blocks at block {} lies outside the filesystem",
                        len, physical
                    )));
                }
                out.push((logical, physical, len as u64, unwritten));
                if out.len() > MAX_MAP_NODES as usize {
                    return Err(corrupt("an extent tree is too large".into()));
                }
            }
        }
        Ok(())
    }

    /// Map up to `*left` blocks below an indirect pointer of `level` (0 = a data block).
    fn walk_indirect(
        &mut self,
        ptr: u64,
        level: u32,
        left: &mut u64,
        pieces: &mut Vec<Piece>,
        budget: &mut u32,
    ) -> Result<(), FsError> {
        let per_block = self.block_bytes / 4;
        let span = per_block.pow(level);
        if ptr == 0 {
            let n = span.min(*left);
            push_piece(pieces, Piece::Hole { blocks: n });
            *left -= n;
            return Ok(());
        }
        if ptr >= self.blocks_count {
            return Err(corrupt(format!("block pointer {} is outside the filesystem", ptr)));
        }
        if level == 0 {
            // A file cannot own more blocks than the filesystem has; past that the map loops.
            *budget = budget.checked_sub(1).ok_or_else(|| corrupt("a block map is too large".into()))?;
            push_piece(pieces, Piece::Data { block: ptr, blocks: 1 });
            *left -= 1;
            return Ok(());
        }
        *budget = budget.checked_sub(1).ok_or_else(|| corrupt("a block map is too large".into()))?;
        let mut buf = vec![0u8; self.block_bytes as usize];
        self.read_block(ptr, &mut buf)?;
        for k in 0..per_block as usize {
            if *left == 0 {
                break;
            }
            self.walk_indirect(le32(&buf, 4 * k) as u64, level - 1, left, pieces, budget)?;
        }
        Ok(())
    }

    /// Entries of a directory: (name, inode, file type from the entry or 0).
    /// Entries of a directory: (name, inode, file type from the entry or 0).
    fn read_dir(&mut self, dir: &Inode, what: &str) -> Result<Vec<(String, u32, u8)>, FsError> {
        let dev_bytes = self.blocks_count * self.block_bytes;
        if dir.size_bytes > dev_bytes {
            return Err(corrupt(format!("directory {} (inode {}) is larger than the filesystem", what, dir.number)));
        }
        if dir.size_bytes > MAX_DIR_BYTES {
            return Err(FsError::Unsupported(format!(
                "ext: directory {} (inode {}) is {} bytes; vboot reads directories of up to {} MiB \
                 (split it, or run e2fsck -fD on the host partition if it is mostly empty)",
                what,
                dir.number,
                dir.size_bytes,
                MAX_DIR_BYTES >> 20
            )));
        }
        let has_type = self.incompat & INCOMPAT_FILETYPE != 0;
        let mut out = Vec::new();
        if dir.flags & FLAG_INLINE_DATA != 0 {
            // i_block starts with the parent's inode number; entries follow, and continue in
            // the system.data attribute.
            let extra = self.inline_xattr(dir)?;
            parse_dir_entries(&dir.i_block[4..], has_type, dir.number, &mut out)?;
            parse_dir_entries(&extra, has_type, dir.number, &mut out)?;
            return Ok(out);
        }
        let pieces = self.map_inode(dir)?;
        let mut buf = vec![0u8; self.block_bytes as usize];
        for p in pieces {
            let Piece::Data { block, blocks } = p else { continue };
            for b in block..block + blocks {
                self.read_block(b, &mut buf)?;
                parse_dir_entries(&buf, has_type, dir.number, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The value of the in-inode extended attribute system.data, where inline_data keeps what
    /// does not fit in i_block (empty when absent).
    fn inline_xattr(&mut self, inode: &Inode) -> Result<Vec<u8>, FsError> {
        if self.inode_bytes <= 128 {
            return Ok(Vec::new());
        }
        let mut raw = vec![0u8; self.inode_bytes as usize];
        let offset = self.inode_offset(inode.number)?;
        read_bytes(&mut self.dev, offset, &mut raw)?;
        inline_data_value(&raw, inode.number)
    }

    fn lookup(&mut self, path: &str) -> Result<(Inode, String), FsError> {
        let mut cur = self.read_inode(ROOT_INODE)?;
        let mut spelled = String::new();
        for comp in path_components(path) {
            match cur.kind() {
                MODE_DIR => {}
                MODE_SYMLINK => {
                    return Err(FsError::Unsupported(format!("ext: {} is a symbolic link; vboot does not follow links", spelled)))
                }
                _ => return Err(FsError::NotADirectory { path: spelled }),
            }
            let entries = self.read_dir(&cur, if spelled.is_empty() { "/" } else { &spelled })?;
            // ext names are case-sensitive: an exact match wins, else the first one that
            // differs only in case.
            let lower = comp.to_lowercase();
            let hit = entries
                .iter()
                .find(|e| e.0 == comp)
                .or_else(|| entries.iter().find(|e| e.0.to_lowercase() == lower))
                .filter(|e| e.0 != "." && e.0 != "..");
            spelled.push('/');
            match hit {
                Some((name, ino, _)) => {
                    spelled.push_str(name);
                    cur = self.read_inode(*ino)?;
                }
                None => {
                    spelled.push_str(comp);
                    return Err(FsError::NotFound { path: spelled });
                }
            }
        }
        if spelled.is_empty() {
            spelled.push('/');
        }
        Ok((cur, spelled))
    }

    fn file_inode(&mut self, path: &str) -> Result<(Inode, String), FsError> {
        let (inode, spelled) = self.lookup(path)?;
        match inode.kind() {
            MODE_FILE => {}
            MODE_DIR => return Err(FsError::IsADirectory { path: spelled }),
            _ => {
                return Err(FsError::Unsupported(format!(
                    "ext: {} is not a regular file (a link or a device)",
                    spelled
                )))
            }
        }
        if inode.flags & FLAG_ENCRYPTED != 0 {
            return Err(FsError::Unsupported(format!("ext: {} is encrypted (fscrypt)", spelled)));
        }
        if inode.flags & FLAG_COMPRESSED != 0 {
            return Err(FsError::Unsupported(format!("ext: {} is compressed", spelled)));
        }
        Ok((inode, spelled))
    }

    /// Open a file for use as a disk image: its exact sectors. Holes and unwritten extents are
    /// refused, because they read as zeros whatever the sectors hold, and a write there would be
    /// lost to the OS.
    pub fn open_file(&mut self, path: &str) -> Result<File, FsError> {
        let (inode, spelled) = self.file_inode(path)?;
        if inode.flags & FLAG_INLINE_DATA != 0 {
            return Err(FsError::Unsupported(format!(
                "ext: {} is stored inside its inode (inline data, like NTFS resident files) and has no sectors of its own",
                spelled
            )));
        }
        let pieces = self.map_inode(&inode)?;
        let sectors_per_block = self.block_bytes / SECTOR_BYTES as u64;
        let mut left = inode.size_bytes.div_ceil(SECTOR_BYTES as u64);
        let mut extents = ExtentList::default();
        for p in pieces {
            match p {
                Piece::Data { block, blocks } => {
                    let sectors = (blocks * sectors_per_block).min(left);
                    extents.push(block * sectors_per_block, sectors);
                    left -= sectors;
                }
                Piece::Hole { .. } => {
                    return Err(FsError::Unsupported(format!(
                        "ext: {} is sparse (has holes); write it out in full from the host OS \
                         (for example `cp --sparse=never`) before using it as a disk",
                        spelled
                    )))
                }
                Piece::Unwritten { .. } => {
                    return Err(FsError::Unsupported(format!(
                        "ext: {} has unwritten (preallocated) extents that read as zeros; write \
                         it out in full from the host OS before using it as a disk",
                        spelled
                    )))
                }
            }
        }
        Ok(File { path: spelled, size_bytes: inode.size_bytes, extents })
    }

    /// Refuse a file whose blocks are group metadata (a superblock copy, group descriptors and
    /// the blocks reserved for them, a block or inode bitmap, an inode table) or are free in
    /// their group's block bitmap (docs/filesystems.md, "ext2/3/4"). Reads every group
    /// descriptor once (flex_bg and meta_bg put metadata anywhere, the descriptors say where)
    /// and the block bitmaps of the groups the file touches.
    pub fn check_allocation(&mut self, file: &File) -> Result<(), FsError> {
        const REPAIR: &str = "e2fsck -f";
        let refuse = |detail: String| allocation_refusal(file, detail, REPAIR);
        let sectors_per_block = self.block_bytes / SECTOR_BYTES as u64;
        let blocks = UnitRanges::of_file(file, 0, sectors_per_block, 0, self.blocks_count, "block", REPAIR)?;
        let overlap = |from: u64, to: u64| blocks.overlap(from, to);
        let per_desc_block = self.block_bytes / self.desc_bytes;
        let meta_bg = self.incompat & INCOMPAT_META_BG != 0;
        // Descriptor blocks after a superblock copy: all of them without meta_bg, those of the
        // groups before first_meta_bg with it.
        let plain_desc_blocks =
            if meta_bg { self.first_meta_bg.min(self.group_count.div_ceil(per_desc_block)) } else { self.group_count.div_ceil(per_desc_block) };
        let table_blocks = (self.inodes_per_group * self.inode_bytes).div_ceil(self.block_bytes);
        let mut desc_cache: (u64, Vec<u8>) = (u64::MAX, vec![0u8; self.block_bytes as usize]);
        let mut bitmap = vec![0u8; self.block_bytes as usize];
        for group in 0..self.group_count {
            let group_first = self.first_data_block + group * self.blocks_per_group;
            let group_end = (group_first + self.blocks_per_group).min(self.blocks_count);
            let desc = self.group_descriptor(group, &mut desc_cache)?;
            let hi = |lo_at: usize, hi_at: usize| {
                le32(&desc, lo_at) as u64 | if self.desc_bytes >= 64 { (le32(&desc, hi_at) as u64) << 32 } else { 0 }
            };
            let block_bitmap = hi(0, 0x20);
            let has_superblock = self.group_has_superblock(group);
            // Block 0 comes before the superblock on 1 KiB-block filesystems (first_data_block 1)
            // and belongs to no file either.
            let sb_first = if group == 0 { 0 } else { group_first };
            let (in_meta, meta_group) = (group % per_desc_block, group / per_desc_block);
            let meta_desc = meta_bg && meta_group >= self.first_meta_bg && (in_meta <= 1 || in_meta == per_desc_block - 1);
            let metadata: [(u64, u64, &str); 6] = [
                (block_bitmap, 1, "the block bitmap"),
                (hi(4, 0x24), 1, "the inode bitmap"),
                (hi(8, 0x28), table_blocks, "the inode table"),
                (sb_first, if has_superblock { group_first + 1 - sb_first } else { 0 }, "a superblock copy"),
                (group_first + 1, if has_superblock { plain_desc_blocks + self.reserved_gdt_blocks } else { 0 }, "the group descriptors"),
                (group_first + has_superblock as u64, meta_desc as u64, "the group descriptors (meta_bg)"),
            ];
            for (first, count, what) in metadata {
                if let Some(b) = overlap(first, first.saturating_add(count)) {
                    return Err(refuse(format!("its block {} is {} of group {}", b, what, group)));
                }
            }
            let Some(first_used) = overlap(group_first, group_end) else { continue };
            if le16(&desc, 0x12) & BG_BLOCK_UNINIT != 0 {
                // No block of an uninitialised group is in use but its metadata.
                return Err(refuse(format!(
                    "its block {} lies in group {}, whose block bitmap is unused (no block allocated)",
                    first_used, group
                )));
            }
            self.read_block(block_bitmap, &mut bitmap)?;
            let i = blocks.ranges.partition_point(|b| b.1 <= group_first);
            for &(from, to) in blocks.ranges[i..].iter().take_while(|b| b.0 < group_end) {
                for b in from.max(group_first)..to.min(group_end) {
                    let bit = b - group_first;
                    if bitmap[(bit / 8) as usize] & (1 << (bit % 8)) == 0 {
                        return Err(refuse(format!("it uses block {}, which the block bitmap of group {} marks free", b, group)));
                    }
                }
            }
        }
        Ok(())
    }

    /// The descriptor of `group` (its first 64 bytes), through a one-block cache.
    fn group_descriptor(&mut self, group: u64, cache: &mut (u64, Vec<u8>)) -> Result<[u8; 64], FsError> {
        let offset = self.descriptor_offset(group);
        let block = offset / self.block_bytes;
        if cache.0 != block {
            self.read_block(block, &mut cache.1)?;
            cache.0 = block;
        }
        let at = (offset % self.block_bytes) as usize;
        let len = self.desc_bytes.min(64) as usize;
        let mut desc = [0u8; 64];
        desc[..len].copy_from_slice(&cache.1[at..at + len]);
        Ok(desc)
    }

    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (dir, spelled) = self.lookup(path)?;
        if dir.kind() != MODE_DIR {
            return Err(FsError::NotADirectory { path: spelled });
        }
        let mut out = Vec::new();
        for (name, ino, _) in self.read_dir(&dir, &spelled)? {
            if name == "." || name == ".." {
                continue;
            }
            let inode = self.read_inode(ino)?;
            let kind = match inode.kind() {
                MODE_DIR => FileKind::Directory,
                MODE_FILE => FileKind::File,
                _ => continue, // links and devices are not files vboot can use
            };
            let size_bytes = if kind == FileKind::File { inode.size_bytes } else { 0 };
            out.push(DirEntry { name, kind, size_bytes });
        }
        Ok(out)
    }

    pub fn read_file(&mut self, file: &File, offset_bytes: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        read_via_extents(&mut self.dev, file, offset_bytes, buf)
    }

    /// A whole file (up to `max_bytes`); holes and unwritten extents read as zeros.
    pub fn read_to_vec(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FsError> {
        let (inode, spelled) = self.file_inode(path)?;
        if inode.size_bytes > max_bytes {
            return Err(FsError::Unsupported(format!(
                "{} is {} bytes, more than the {} expected",
                spelled, inode.size_bytes, max_bytes
            )));
        }
        let size = usize::try_from(inode.size_bytes).map_err(|_| {
            FsError::Unsupported(format!("{} is {} bytes, too large to hold in memory", spelled, inode.size_bytes))
        })?;
        if inode.flags & FLAG_INLINE_DATA != 0 {
            // The first 60 bytes live in i_block, the rest in the system.data attribute.
            let mut data = inode.i_block.to_vec();
            data.extend_from_slice(&self.inline_xattr(&inode)?);
            data.truncate(size);
            if data.len() != size {
                return Err(corrupt(format!("{}: inline data is shorter than the file", spelled)));
            }
            return Ok(data);
        }
        let pieces = self.map_inode(&inode)?;
        let mut out = vec![0u8; size];
        let mut pos = 0usize;
        let mut block_buf = vec![0u8; self.block_bytes as usize];
        for p in pieces {
            let n_bytes = p.blocks().saturating_mul(self.block_bytes);
            match p {
                Piece::Data { block, blocks } => {
                    for b in block..block + blocks {
                        if pos >= size {
                            break;
                        }
                        self.read_block(b, &mut block_buf)?;
                        let take = (size - pos).min(block_buf.len());
                        out[pos..pos + take].copy_from_slice(&block_buf[..take]);
                        pos += take;
                    }
                }
                Piece::Hole { .. } | Piece::Unwritten { .. } => {
                    pos = (pos as u64).saturating_add(n_bytes).min(size as u64) as usize;
                }
            }
        }
        Ok(out)
    }

    /// Write `buf` at `offset_bytes` inside the file's existing extents (no metadata change).
    /// Writes past the end of the file are refused.
    pub fn write_file(&mut self, file: &File, offset_bytes: u64, buf: &[u8]) -> Result<usize, FsError> {
        write_via_extents(&mut self.dev, file, offset_bytes, buf)
    }

    /// Metadata changes are refused: see the module documentation.
    pub fn create_file(&mut self, _path: &str, _size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn grow_file(&mut self, _path: &str, _new_size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn truncate_file(&mut self, _path: &str, _new_size_bytes: u64) -> Result<File, FsError> {
        Err(read_only_message())
    }
    pub fn delete_file(&mut self, _path: &str) -> Result<(), FsError> {
        Err(read_only_message())
    }
    pub fn rename(&mut self, _from: &str, _to: &str) -> Result<(), FsError> {
        Err(read_only_message())
    }
}

/// The system.data value among the in-inode extended attributes of the whole inode `raw` (empty
/// when there is none).
fn inline_data_value(raw: &[u8], number: u32) -> Result<Vec<u8>, FsError> {
    let header = 128 + le16(raw, 128) as usize;
    if le32(raw, header) != XATTR_MAGIC {
        return Ok(Vec::new());
    }
    let entries = header + 4;
    let mut off = entries;
    // Each entry takes at least 16 bytes, which bounds the walk.
    while off + 16 <= raw.len() && le32(raw, off) != 0 {
        let name_len = raw[off] as usize;
        let index = raw[off + 1];
        let value_off = le16(raw, off + 2) as u64;
        let value_inode = le32(raw, off + 4);
        let value_len = le32(raw, off + 8) as u64;
        let name = raw
            .get(off + 16..off + 16 + name_len)
            .ok_or_else(|| corrupt(format!("inode {}: extended attribute name out of bounds", number)))?;
        if index == XATTR_INDEX_SYSTEM && name == b"data" {
            if value_inode != 0 {
                return Err(FsError::Unsupported(format!("ext: inode {} keeps inline data in a separate inode", number)));
            }
            // In u64: a 32-bit length near 4 GiB would wrap the firmware's usize.
            let start = entries as u64 + value_off;
            let end = start.checked_add(value_len);
            let value = end
                .and_then(|end| raw.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
                .ok_or_else(|| {
                    corrupt(format!("inode {}: inline data of {} bytes at byte {} lies outside the inode", number, value_len, start))
                })?;
            return Ok(value.to_vec());
        }
        off += (16 + name_len + 3) & !3;
    }
    Ok(Vec::new())
}

/// Append the live entries of one directory block (or inline region) to `out`.
fn parse_dir_entries(buf: &[u8], has_type: bool, dir: u32, out: &mut Vec<(String, u32, u8)>) -> Result<(), FsError> {
    let mut off = 0usize;
    while off + 8 <= buf.len() {
        let ino = le32(buf, off);
        let rec_len = le16(buf, off + 4) as usize;
        let (name_len, ftype) =
            if has_type { (buf[off + 6] as usize, buf[off + 7]) } else { (le16(buf, off + 6) as usize, 0) };
        if rec_len < 8 || rec_len % 4 != 0 || off + rec_len > buf.len() || 8 + name_len > rec_len {
            return Err(corrupt(format!("directory inode {} has a malformed entry", dir)));
        }
        if ino != 0 && name_len > 0 {
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(FsError::Unsupported(format!(
                    "ext: directory inode {} has more than {} entries, more than vboot reads",
                    dir, MAX_DIR_ENTRIES
                )));
            }
            out.push((String::from_utf8_lossy(&buf[off + 8..off + 8 + name_len]).into_owned(), ino, ftype));
        }
        off += rec_len;
    }
    Ok(())
}

/// Read `buf.len()` bytes at byte `offset` of the device, whatever their alignment.
fn read_bytes<D: BlockDevice>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
    let first = offset / SECTOR_BYTES as u64;
    let skip = (offset % SECTOR_BYTES as u64) as usize;
    let sectors = (skip + buf.len() + SECTOR_BYTES - 1) / SECTOR_BYTES;
    if skip == 0 && buf.len() % SECTOR_BYTES == 0 {
        dev.read_sectors(first, buf)?;
        return Ok(());
    }
    let mut tmp = vec![0u8; sectors * SECTOR_BYTES];
    dev.read_sectors(first, &mut tmp)?;
    buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn pieces_merge_by_kind() {
        let mut v = Vec::new();
        push_piece(&mut v, Piece::Data { block: 10, blocks: 2 });
        push_piece(&mut v, Piece::Data { block: 12, blocks: 3 });
        push_piece(&mut v, Piece::Hole { blocks: 0 });
        push_piece(&mut v, Piece::Hole { blocks: 4 });
        push_piece(&mut v, Piece::Hole { blocks: 1 });
        push_piece(&mut v, Piece::Data { block: 20, blocks: 1 });
        assert_eq!(
            v,
            [Piece::Data { block: 10, blocks: 5 }, Piece::Hole { blocks: 5 }, Piece::Data { block: 20, blocks: 1 }]
        );
    }

    /// A 256-byte inode whose in-inode attributes hold system.data: `value_len` bytes at 4.
    fn inode_with_inline_data(value_len: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 256];
        raw[128..130].copy_from_slice(&32u16.to_le_bytes()); // i_extra_isize
        raw[160..164].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
        let e = 164;
        raw[e] = 4; // name length
        raw[e + 1] = XATTR_INDEX_SYSTEM;
        raw[e + 2..e + 4].copy_from_slice(&24u16.to_le_bytes()); // value offset from the entries
        raw[e + 8..e + 12].copy_from_slice(&value_len.to_le_bytes());
        raw[e + 16..e + 20].copy_from_slice(b"data");
        raw[188..192].copy_from_slice(b"more");
        raw
    }

    // Issue 14: a value length near 4 GiB overflowed the firmware's 32-bit usize (a panic in
    // stage2); `cargo xtask test` runs this for i686 too.
    #[test]
    fn inline_data_length_near_4_gib_is_refused() {
        assert_eq!(inline_data_value(&inode_with_inline_data(4), 12).unwrap(), b"more");
        match inline_data_value(&inode_with_inline_data(0xFFFF_FFF0), 12) {
            Err(FsError::Corrupt(m)) => {
                assert!(m.contains("inode 12: inline data of 4294967280 bytes at byte 188 lies outside the inode"), "{}", m)
            }
            other => panic!("{:?}", other),
        }
    }

    /// A volume of 1 KiB blocks over a blank disk: enough to map inodes whose tree is in i_block.
    fn bare_volume() -> ExtVolume<crate::block::MemDisk> {
        ExtVolume {
            dev: crate::block::MemDisk::zeroed(64),
            block_bytes: 1024,
            blocks_count: 32,
            first_data_block: 1,
            blocks_per_group: 8192,
            inodes_per_group: 16,
            inodes_count: 16,
            inode_bytes: 256,
            desc_bytes: 32,
            group_count: 1,
            incompat: INCOMPAT_EXTENTS | INCOMPAT_FILETYPE,
            ro_compat: 0,
            first_meta_bg: 0,
            reserved_gdt_blocks: 0,
            backup_groups: None,
        }
    }

    // Issue 14: i_size near 2^64 overflowed `size + block - 1` (a panic in stage2, and a
    // wrapped size of a few blocks on a release host build).
    #[test]
    fn a_size_near_2_64_is_refused() {
        let mut i_block = [0u8; 60];
        i_block[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
        i_block[4..6].copy_from_slice(&4u16.to_le_bytes()); // room for 4 entries, none used
        let mut inode = Inode { number: 12, mode: MODE_FILE, flags: FLAG_EXTENTS, size_bytes: 2048, i_block };
        let mut vol = bare_volume();
        assert_eq!(vol.map_inode(&inode).unwrap(), [Piece::Hole { blocks: 2 }]);
        for size in [u64::MAX, u64::MAX - 1000, (1 << 42) + 1] {
            inode.size_bytes = size;
            match vol.map_inode(&inode) {
                Err(FsError::Corrupt(m)) => assert!(m.contains(&format!("inode 12 says it is {} bytes", size)), "{}", m),
                other => panic!("{:?}", other),
            }
        }
        inode.size_bytes = 1 << 42; // 2^32 blocks of 1 KiB: the largest size ext addresses
        assert_eq!(vol.map_inode(&inode).unwrap(), [Piece::Hole { blocks: 1 << 32 }]);
    }

    #[test]
    fn zeros_are_not_ext() {
        let d = crate::block::MemDisk::zeroed(16);
        assert!(matches!(ExtVolume::open(d), Err(FsError::NotRecognized(_))));
    }

    #[test]
    fn refuses_metadata_writes_with_a_message() {
        // A hand-made minimal superblock is not needed: the refusal does not read the disk.
        let msg = read_only_message().to_string();
        assert!(msg.contains("host OS"), "{}", msg);
    }
}
