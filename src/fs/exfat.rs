//! exFAT reader: boot region (with its checksum), FAT chains and NoFatChain runs, the
//! allocation bitmap, the up-case table, and directory entry sets (with their checksums).
//!
//! Layout facts follow the exFAT specification (Microsoft, 2019): sector and cluster sizes are
//! powers of two given as shifts; clusters are numbered from 2; a file is an entry set
//! (File 0x85, Stream Extension 0xC0, File Name 0xC1 ...) whose checksum covers the whole set.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{allocation_refusal, UnitRanges};
use super::{path_components, DirEntry, ExtentList, File, FileKind, FsError, LoopCheck};
use super::{read_via_extents, write_via_extents};
use crate::block::{BlockDevice, SECTOR_BYTES};

const ENTRY_BYTES: usize = 32;
const TYPE_END: u8 = 0x00;
const TYPE_BITMAP: u8 = 0x81;
const TYPE_UPCASE: u8 = 0x82;
const TYPE_FILE: u8 = 0x85;
const TYPE_STREAM: u8 = 0xC0;
const TYPE_NAME: u8 = 0xC1;
const ATTR_DIRECTORY: u16 = 0x10;
const FLAG_NO_FAT_CHAIN: u8 = 0x02;
const FAT_END: u32 = 0xFFFF_FFFF;
const FAT_BAD: u32 = 0xFFFF_FFF7;
/// The most a directory may hold here. The specification allows 256 MiB, but a directory is read
/// whole and stage2's heap (up to 64 MiB, half of the machine's memory on small ones) could not
/// take that; 8 MiB are 262,144 entries: at least 13,000 files with 255-character names, about
/// 87,000 with names of up to 15 (docs/filesystems.md, "exFAT").
const MAX_DIR_BYTES: u64 = 8 << 20;
/// The up-case table: at most one UTF-16 unit for each of the 65,536 code units, twice over for
/// the compressed form's worst case.
const MAX_UPCASE_BYTES: u64 = 4 * 65536;
/// The allocation bitmap, held whole only for metadata changes (stage2 reads its bits a sector at
/// a time otherwise): 16 MiB cover 2^27 clusters, 512 GiB at 4 KiB clusters, 16 TiB at the
/// 128 KiB clusters formatters choose for large volumes.
const MAX_BITMAP_BYTES: u64 = 16 << 20;

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).unwrap_or(0)
}
fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0)
}
fn le64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
        .unwrap_or(0)
}

fn too_big(path: &str, bytes: u64) -> FsError {
    FsError::Unsupported(format!("{} is {} bytes, too large to hold in memory", path, bytes))
}

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(format!("exFAT: {}", msg))
}

/// The boot-region checksum: every byte of sectors 0..11 except VolumeFlags (106, 107) and
/// PercentInUse (112), which change without the checksum being rewritten.
pub fn boot_checksum(region: &[u8]) -> u32 {
    let mut sum = 0u32;
    for (i, &b) in region.iter().enumerate() {
        if i == 106 || i == 107 || i == 112 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(b as u32);
    }
    sum
}

/// The entry-set checksum: every byte of the set except the checksum field itself (bytes 2, 3).
pub fn entry_set_checksum(set: &[u8]) -> u16 {
    let mut sum = 0u16;
    for (i, &b) in set.iter().enumerate() {
        if i == 2 || i == 3 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(b as u16);
    }
    sum
}

/// Checksum of the (compressed) up-case table as stored.
fn table_checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |sum, &b| sum.rotate_right(1).wrapping_add(b as u32))
}

/// One file or directory as its entry set describes it.
#[derive(Clone, Debug)]
struct Record {
    name: String,
    name_utf16: Vec<u16>,
    is_dir: bool,
    first_cluster: u32,
    no_fat_chain: bool,
    data_bytes: u64,
    valid_bytes: u64,
    /// Where the entry set starts in its directory's data, and its raw bytes (for rewriting).
    set_offset: usize,
    set: Vec<u8>,
}

pub struct ExfatVolume<D: BlockDevice> {
    dev: D,
    /// Volume sectors are 512..4096 bytes; everything we hand out is in 512-byte sectors.
    sectors_per_cluster_512: u64,
    cluster_bytes: u64,
    fat_lba: u64,
    fat_sectors_512: u64,
    heap_lba: u64,
    cluster_count: u32,
    root_cluster: u32,
    bitmap_first_cluster: u32,
    bitmap_bytes: u64,
    bitmap_runs: Vec<(u32, u32)>,
    /// The allocation bitmap's clusters, loaded on the first metadata change.
    bitmap: Option<Vec<u8>>,
    fat_count: u64,
    upcase: Vec<u16>,
    cache_lba: Option<u64>,
    cache: Vec<u8>,
}

impl<D: BlockDevice> ExfatVolume<D> {
    pub fn open(mut dev: D) -> Result<Self, FsError> {
        let mut first = vec![0u8; SECTOR_BYTES];
        dev.read_sectors(0, &mut first)?;
        if first.get(3..11) != Some(b"EXFAT   ".as_slice()) {
            return Err(FsError::NotRecognized("no exFAT signature in the boot sector".into()));
        }
        if first[510] != 0x55 || first[511] != 0xAA {
            return Err(FsError::NotRecognized("exFAT boot sector lacks the 55AA signature".into()));
        }
        if first[11..64].iter().any(|&b| b != 0) {
            return Err(FsError::NotRecognized("exFAT boot sector: MustBeZero area is not zero".into()));
        }
        let sector_shift = first[108] as u32;
        let cluster_shift = first[109] as u32;
        if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
            return Err(FsError::NotRecognized(format!(
                "exFAT sector shift {} / cluster shift {} out of range",
                sector_shift, cluster_shift
            )));
        }
        let to512 = 1u64 << (sector_shift - 9);
        let sector_bytes = 1usize << sector_shift;

        // Sectors 0..11 carry the checksum; sector 11 repeats it.
        let mut region = vec![0u8; 12 * sector_bytes];
        dev.read_sectors(0, &mut region)?;
        let sum = boot_checksum(&region[..11 * sector_bytes]);
        let stored = &region[11 * sector_bytes..];
        if stored.chunks_exact(4).any(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) != sum) {
            return Err(corrupt("boot region checksum does not match (run fsck.exfat)".into()));
        }

        let volume_sectors = le64(&first, 72);
        let fat_offset = le32(&first, 80) as u64;
        let fat_length = le32(&first, 84) as u64;
        let heap_offset = le32(&first, 88) as u64;
        let cluster_count = le32(&first, 92);
        let root_cluster = le32(&first, 96);
        let flags = le16(&first, 106);
        let fats = first[110] as u64;
        let dev_sectors = dev.sector_count();
        let vol_512 = volume_sectors.checked_mul(to512).unwrap_or(u64::MAX);
        if vol_512 > dev_sectors {
            return Err(corrupt(format!(
                "volume claims {} sectors but the partition has {}",
                vol_512, dev_sectors
            )));
        }
        let fat_need_bytes = (cluster_count as u64 + 2) * 4;
        if !(1..=2).contains(&fats)
            || fat_offset < 24
            || fat_length.saturating_mul(sector_bytes as u64) < fat_need_bytes
            || heap_offset < fat_offset + fat_length * fats
            || cluster_count == 0
            || cluster_count > 0xFFFF_FFF5
            || heap_offset + ((cluster_count as u64) << cluster_shift) > volume_sectors
            || root_cluster < 2
            || root_cluster as u64 > cluster_count as u64 + 1
        {
            return Err(corrupt("boot sector geometry is inconsistent".into()));
        }
        // VolumeFlags bit 0 (ActiveFat) selects the second FAT when there are two.
        let active = if fats == 2 && flags & 1 != 0 { 1 } else { 0 };
        let mut vol = ExfatVolume {
            dev,
            sectors_per_cluster_512: to512 << cluster_shift,
            cluster_bytes: (sector_bytes as u64) << cluster_shift,
            fat_lba: (fat_offset + active * fat_length) * to512,
            fat_sectors_512: fat_length * to512,
            heap_lba: heap_offset * to512,
            cluster_count,
            root_cluster,
            bitmap_first_cluster: 0,
            bitmap_bytes: 0,
            bitmap_runs: Vec::new(),
            bitmap: None,
            fat_count: fats,
            upcase: Vec::new(),
            cache_lba: None,
            cache: vec![0u8; SECTOR_BYTES],
        };
        vol.load_root_metadata()?;
        Ok(vol)
    }

    pub fn into_inner(self) -> D {
        self.dev
    }

    /// Size of a cluster in bytes.
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_bytes
    }

    fn load_root_metadata(&mut self) -> Result<(), FsError> {
        let root = self.read_chain_bytes(self.root_cluster, None, false)?;
        let mut upcase: Option<(u32, u64, u32)> = None;
        for e in root.chunks_exact(ENTRY_BYTES) {
            match e[0] {
                TYPE_END => break,
                // Bit 0 of BitmapFlags says which FAT the bitmap belongs to; with one FAT it is 0.
                TYPE_BITMAP if self.bitmap_bytes == 0 => {
                    self.bitmap_first_cluster = le32(e, 20);
                    self.bitmap_bytes = le64(e, 24);
                }
                TYPE_UPCASE => upcase = Some((le32(e, 20), le64(e, 24), le32(e, 4))),
                _ => {}
            }
        }
        let bitmap_need = (self.cluster_count as u64).div_ceil(8);
        // One bit per cluster; a longer stream (up to its last cluster) is tolerated, a length
        // beyond that is damage that would only make the walk longer.
        if self.bitmap_bytes < bitmap_need || self.bitmap_bytes > bitmap_need + self.cluster_bytes {
            return Err(corrupt(format!(
                "the allocation bitmap entry says {} bytes for {} clusters",
                self.bitmap_bytes, self.cluster_count
            )));
        }
        self.bitmap_runs = self.cluster_runs(self.bitmap_first_cluster, Some(self.bitmap_bytes), false)?;
        let (first, bytes, sum) =
            upcase.ok_or_else(|| corrupt("the root directory has no up-case table entry".into()))?;
        if bytes == 0 || bytes > MAX_UPCASE_BYTES {
            return Err(corrupt(format!("up-case table length {} is impossible", bytes)));
        }
        let raw = self.read_chain_bytes(first, Some(bytes), false)?;
        if table_checksum(&raw) != sum {
            return Err(corrupt("up-case table checksum does not match".into()));
        }
        self.upcase = expand_upcase(&raw);
        Ok(())
    }

    fn upcase_unit(&self, c: u16) -> u16 {
        self.upcase.get(c as usize).copied().unwrap_or(c)
    }

    fn names_equal(&self, a: &[u16], b: &[u16]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| self.upcase_unit(x) == self.upcase_unit(y))
    }

    fn check_cluster(&self, c: u32) -> Result<(), FsError> {
        if c < 2 || c as u64 > self.cluster_count as u64 + 1 {
            return Err(corrupt(format!("cluster {} is outside the cluster heap", c)));
        }
        Ok(())
    }

    fn cluster_lba(&self, c: u32) -> u64 {
        self.heap_lba + (c as u64 - 2) * self.sectors_per_cluster_512
    }

    fn read_cached(&mut self, lba: u64) -> Result<&[u8], FsError> {
        if self.cache_lba != Some(lba) {
            self.cache_lba = None;
            self.dev.read_sectors(lba, &mut self.cache)?;
            self.cache_lba = Some(lba);
        }
        Ok(&self.cache)
    }

    fn fat_entry(&mut self, c: u32) -> Result<u32, FsError> {
        let byte = c as u64 * 4;
        let sector = byte / SECTOR_BYTES as u64;
        if sector >= self.fat_sectors_512 {
            return Err(corrupt(format!("cluster {} has no FAT entry", c)));
        }
        let lba = self.fat_lba + sector;
        let off = (byte % SECTOR_BYTES as u64) as usize;
        Ok(le32(self.read_cached(lba)?, off))
    }

    fn cluster_allocated(&mut self, c: u32) -> Result<bool, FsError> {
        let bit = (c - 2) as u64;
        if let Some(bm) = &self.bitmap {
            return Ok(bm.get((bit / 8) as usize).map_or(false, |b| b & (1 << (bit % 8)) != 0));
        }
        let byte = bit / 8;
        if byte >= self.bitmap_bytes {
            return Ok(false);
        }
        let mut bitmap_cluster = byte / self.cluster_bytes;
        let within = byte % self.cluster_bytes;
        let mut bc = None;
        for &(first, n) in &self.bitmap_runs {
            if bitmap_cluster < n as u64 {
                bc = Some(first + bitmap_cluster as u32);
                break;
            }
            bitmap_cluster -= n as u64;
        }
        let bc = bc.ok_or_else(|| corrupt("the allocation bitmap is shorter than its length".into()))?;
        let lba = self.cluster_lba(bc) + within / SECTOR_BYTES as u64;
        let v = self.read_cached(lba)?[(within % SECTOR_BYTES as u64) as usize];
        Ok(v & (1 << (bit % 8)) != 0)
    }

    /// The cluster runs `(first, count)` of a stream of `bytes` bytes (`None`: follow the FAT
    /// chain to its end, for the root directory).
    fn cluster_runs(
        &mut self,
        first: u32,
        bytes: Option<u64>,
        no_fat_chain: bool,
    ) -> Result<Vec<(u32, u32)>, FsError> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        // div_ceil: a DataLength near 2^64 (damage) must not wrap to a few clusters.
        let wanted = bytes.map(|b| b.div_ceil(self.cluster_bytes));
        if wanted == Some(0) {
            return Ok(runs);
        }
        self.check_cluster(first)?;
        if no_fat_chain {
            let n = wanted.unwrap_or(1);
            let last = first as u64 + n - 1;
            if last > self.cluster_count as u64 + 1 {
                return Err(corrupt(format!(
                    "a contiguous stream of {} clusters from cluster {} runs past the heap",
                    n, first
                )));
            }
            runs.push((first, n as u32));
            return Ok(runs);
        }
        // Without a length (the root directory) the chain's end is its length: a directory's.
        let limit = match wanted {
            Some(_) => self.cluster_count as u64,
            None => (MAX_DIR_BYTES / self.cluster_bytes).max(1),
        };
        let mut c = first;
        let mut count = 0u64;
        // Runs are kept per step: a loop must be caught early, not after `wanted` steps.
        let mut loop_check = LoopCheck::default();
        loop {
            self.check_cluster(c)?;
            if loop_check.visit(c as u64) {
                return Err(corrupt(format!("the FAT chain from cluster {} loops (cluster {} comes back)", first, c)));
            }
            count += 1;
            if count > limit {
                return Err(corrupt(match wanted {
                    Some(_) => format!("the FAT chain from cluster {} loops", first),
                    None => format!("the root directory's chain (from cluster {}) is longer than {} MiB", first, MAX_DIR_BYTES >> 20),
                }));
            }
            match runs.last_mut() {
                Some((s, n)) if *s as u64 + *n as u64 == c as u64 => *n += 1,
                _ => runs.push((c, 1)),
            }
            if Some(count) == wanted {
                break;
            }
            let next = self.fat_entry(c)?;
            if next == FAT_END {
                if wanted.is_some() {
                    return Err(corrupt(format!(
                        "the FAT chain from cluster {} ends after {} of {} clusters",
                        first,
                        count,
                        wanted.unwrap_or(0)
                    )));
                }
                break;
            }
            if next == FAT_BAD {
                return Err(corrupt(format!("the FAT chain from cluster {} reaches a bad cluster", first)));
            }
            c = next;
        }
        Ok(runs)
    }

    fn read_chain_bytes(&mut self, first: u32, bytes: Option<u64>, no_fat_chain: bool) -> Result<Vec<u8>, FsError> {
        if let Some(b) = bytes {
            if b > MAX_DIR_BYTES {
                return Err(corrupt(format!("a metadata stream of {} bytes is too large", b)));
            }
        }
        let runs = self.cluster_runs(first, bytes, no_fat_chain)?;
        let total: u64 = runs.iter().map(|r| r.1 as u64).sum::<u64>() * self.cluster_bytes;
        if total > MAX_DIR_BYTES {
            return Err(corrupt(format!("the chain from cluster {} is longer than {} MiB", first, MAX_DIR_BYTES >> 20)));
        }
        let mut out = vec![0u8; total as usize];
        let mut pos = 0usize;
        for (c, n) in runs {
            let len = (n as u64 * self.cluster_bytes) as usize;
            self.dev.read_sectors(self.cluster_lba(c), &mut out[pos..pos + len])?;
            pos += len;
        }
        if let Some(b) = bytes {
            out.truncate(b as usize);
        }
        Ok(out)
    }

    fn read_dir_records(&mut self, dir: Option<&Record>) -> Result<Vec<Record>, FsError> {
        let data = match dir {
            None => self.read_chain_bytes(self.root_cluster, None, false)?,
            Some(r) => self.read_chain_bytes(r.first_cluster, Some(r.data_bytes), r.no_fat_chain)?,
        };
        parse_entry_sets(&data)
    }

    /// The records from the root's child down to `path` (empty for the root itself).
    fn lookup_chain(&mut self, path: &str) -> Result<(Vec<Record>, String), FsError> {
        let mut chain: Vec<Record> = Vec::new();
        let mut spelled = String::new();
        for comp in path_components(path) {
            if let Some(r) = chain.last() {
                if !r.is_dir {
                    return Err(FsError::NotADirectory { path: spelled });
                }
            }
            let want: Vec<u16> = comp.encode_utf16().collect();
            let records = self.read_dir_records(chain.last())?;
            let found = records.into_iter().find(|r| self.names_equal(&r.name_utf16, &want));
            spelled.push('/');
            match found {
                Some(r) => {
                    spelled.push_str(&r.name);
                    chain.push(r);
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
        Ok((chain, spelled))
    }

    fn lookup(&mut self, path: &str) -> Result<(Option<Record>, String), FsError> {
        let (mut chain, spelled) = self.lookup_chain(path)?;
        Ok((chain.pop(), spelled))
    }

    fn file_record(&mut self, path: &str) -> Result<(Record, String), FsError> {
        match self.lookup(path)? {
            (Some(r), p) if !r.is_dir => Ok((r, p)),
            (_, p) => Err(FsError::IsADirectory { path: p }),
        }
    }

    fn extents_of(&mut self, r: &Record) -> Result<ExtentList, FsError> {
        let runs = self.cluster_runs(r.first_cluster, Some(r.data_bytes), r.no_fat_chain)?;
        let mut list = ExtentList::default();
        let mut left = r.data_bytes.div_ceil(SECTOR_BYTES as u64);
        for (c, n) in runs {
            let sectors = (n as u64 * self.sectors_per_cluster_512).min(left);
            if sectors == 0 {
                break;
            }
            list.push(self.cluster_lba(c), sectors);
            left -= sectors;
        }
        Ok(list)
    }

    /// Open a file for use as a disk image: its exact sectors. A file whose valid data length
    /// is shorter than its size is refused, because the tail past it reads as zeros on every OS
    /// whatever the sectors hold.
    pub fn open_file(&mut self, path: &str) -> Result<File, FsError> {
        let (r, spelled) = self.file_record(path)?;
        if r.valid_bytes < r.data_bytes {
            return Err(FsError::Unsupported(format!(
                "exFAT: {} has only {} of its {} bytes written (valid data length); \
                 write the whole file from the host OS first",
                spelled, r.valid_bytes, r.data_bytes
            )));
        }
        let extents = self.extents_of(&r)?;
        let file = File { path: spelled, size_bytes: r.data_bytes, extents };
        self.check_allocation(&file)?;
        Ok(file)
    }

    /// Refuse a file whose clusters the allocation bitmap marks free, or that lie in the bitmap
    /// itself (docs/filesystems.md, "exFAT"). [`ExfatVolume::open_file`] runs it; it reads the
    /// bitmap a sector at a time.
    pub fn check_allocation(&mut self, file: &File) -> Result<(), FsError> {
        const REPAIR: &str = "fsck.exfat or chkdsk";
        let spc = self.sectors_per_cluster_512;
        let clusters = UnitRanges::of_file(file, self.heap_lba, spc, 2, self.cluster_count as u64 + 2, "cluster", REPAIR)?;
        for &(first, count) in &self.bitmap_runs {
            if let Some(c) = clusters.overlap(first as u64, first as u64 + count as u64) {
                return Err(allocation_refusal(file, format!("its cluster {} lies in the allocation bitmap", c), REPAIR));
            }
        }
        for &(from, to) in &clusters.ranges {
            for c in from as u32..to as u32 {
                if !self.cluster_allocated(c)? {
                    let detail = format!("it uses cluster {}, which the allocation bitmap marks free", c);
                    return Err(allocation_refusal(file, detail, REPAIR));
                }
            }
        }
        Ok(())
    }

    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (dir, spelled) = self.lookup(path)?;
        if let Some(r) = &dir {
            if !r.is_dir {
                return Err(FsError::NotADirectory { path: spelled });
            }
        }
        let records = self.read_dir_records(dir.as_ref())?;
        Ok(records
            .into_iter()
            .map(|r| DirEntry {
                name: r.name,
                kind: if r.is_dir { FileKind::Directory } else { FileKind::File },
                size_bytes: if r.is_dir { 0 } else { r.data_bytes },
            })
            .collect())
    }

    /// Read file bytes at `offset_bytes` through the file's extent list. Returns the bytes read
    /// (short at the end of the file, 0 past it).
    pub fn read_file(&mut self, file: &File, offset_bytes: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        read_via_extents(&mut self.dev, file, offset_bytes, buf)
    }

    /// A whole file (up to `max_bytes`), with bytes past the valid data length as zeros.
    pub fn read_to_vec(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FsError> {
        let (r, spelled) = self.file_record(path)?;
        if r.data_bytes > max_bytes {
            return Err(FsError::Unsupported(format!(
                "{} is {} bytes, more than the {} expected",
                spelled, r.data_bytes, max_bytes
            )));
        }
        let extents = self.extents_of(&r)?;
        let file = File { path: spelled, size_bytes: r.data_bytes, extents };
        let size = usize::try_from(r.data_bytes).map_err(|_| too_big(&file.path, r.data_bytes))?;
        let mut out = vec![0u8; r.valid_bytes.min(r.data_bytes) as usize];
        let n = read_via_extents(&mut self.dev, &file, 0, &mut out)?;
        out.truncate(n);
        out.resize(size, 0);
        Ok(out)
    }
}

// ---------------------------------------------------------------- metadata writes
//
// Order of writes, so that an interrupted change leaks clusters at worst and never leaves two
// files sharing one: allocate in the bitmap, link the FAT, zero the data, and only then point a
// directory entry at the clusters. Removal goes the other way round. An entry set that fits in
// one sector is placed in one sector, so that writing, renaming and deleting it are single
// sector writes (docs/power-cuts.md).

/// vboot runs before any OS and has no trustworthy clock, so new entries carry a fixed time
/// (2024-01-01 00:00:00, DOS format) rather than a wrong "now".
const FIXED_TIMESTAMP: u32 = ((2024 - 1980) << 25) | (1 << 21) | (1 << 16);
const FLAG_ALLOCATION_POSSIBLE: u8 = 0x01;
const ATTR_ARCHIVE: u16 = 0x20;
const MAX_NAME_UNITS: usize = 255;
const ZERO_CHUNK_BYTES: usize = 32 * 1024;

/// Batches FAT updates that fall in the same sector into one read and one write.
struct FatWriter {
    lba: Option<u64>,
    buf: Vec<u8>,
}

impl<D: BlockDevice> ExfatVolume<D> {
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), FsError> {
        self.cache_lba = None;
        self.dev.write_sectors(lba, buf)?;
        Ok(())
    }

    fn check_writable(&self) -> Result<(), FsError> {
        if self.fat_count != 1 {
            return Err(FsError::Unsupported(
                "exFAT: this volume has two FATs (TexFAT); vboot changes only single-FAT volumes".into(),
            ));
        }
        Ok(())
    }

    fn load_bitmap(&mut self) -> Result<(), FsError> {
        if self.bitmap.is_some() {
            return Ok(());
        }
        let runs = self.bitmap_runs.clone();
        let total = runs.iter().map(|r| r.1 as u64).sum::<u64>() * self.cluster_bytes;
        if total > MAX_BITMAP_BYTES {
            return Err(FsError::Unsupported(format!(
                "exFAT: the allocation bitmap is {} MiB; vboot changes volumes whose bitmap is at most {} MiB \
                 (format with larger clusters)",
                total >> 20,
                MAX_BITMAP_BYTES >> 20
            )));
        }
        let mut data = vec![0u8; total as usize];
        let mut pos = 0usize;
        for (c, n) in runs {
            let len = (n as u64 * self.cluster_bytes) as usize;
            self.dev.read_sectors(self.cluster_lba(c), &mut data[pos..pos + len])?;
            pos += len;
        }
        self.bitmap = Some(data);
        Ok(())
    }

    fn is_free(&self, c: u32) -> bool {
        let bit = (c - 2) as u64;
        self.bitmap.as_ref().and_then(|bm| bm.get((bit / 8) as usize)).map_or(false, |b| b & (1 << (bit % 8)) == 0)
    }

    /// Volume sector holding byte `byte` of the bitmap.
    fn bitmap_sector_lba(&self, byte: u64) -> Result<u64, FsError> {
        let mut cluster_index = byte / self.cluster_bytes;
        for &(first, n) in &self.bitmap_runs {
            if cluster_index < n as u64 {
                let c = first + cluster_index as u32;
                return Ok(self.cluster_lba(c) + (byte % self.cluster_bytes) / SECTOR_BYTES as u64);
            }
            cluster_index -= n as u64;
        }
        Err(corrupt("the allocation bitmap is shorter than its length".into()))
    }

    /// Mark clusters `first..first+count` used or free, on disk and in memory.
    fn set_bitmap(&mut self, first: u32, count: u32, used: bool) -> Result<(), FsError> {
        if count == 0 {
            return Ok(());
        }
        self.load_bitmap()?;
        let bm = self.bitmap.as_mut().ok_or_else(|| corrupt("allocation bitmap not loaded".into()))?;
        let start_bit = (first - 2) as u64;
        let end_bit = start_bit + count as u64;
        if (end_bit + 7) / 8 > bm.len() as u64 {
            return Err(corrupt("a cluster lies past the allocation bitmap".into()));
        }
        for bit in start_bit..end_bit {
            let b = &mut bm[(bit / 8) as usize];
            if used {
                *b |= 1 << (bit % 8);
            } else {
                *b &= !(1 << (bit % 8));
            }
        }
        let first_sector = start_bit / 8 / SECTOR_BYTES as u64;
        let last_sector = (end_bit - 1) / 8 / SECTOR_BYTES as u64;
        for s in first_sector..=last_sector {
            let lba = self.bitmap_sector_lba(s * SECTOR_BYTES as u64)?;
            let from = (s as usize) * SECTOR_BYTES;
            let sector = self
                .bitmap
                .as_ref()
                .and_then(|bm| bm.get(from..from + SECTOR_BYTES))
                .map(|x| x.to_vec())
                .ok_or_else(|| corrupt("allocation bitmap sector out of range".into()))?;
            self.write_sectors(lba, &sector)?;
        }
        Ok(())
    }

    fn fat_set(&mut self, w: &mut FatWriter, c: u32, value: u32) -> Result<(), FsError> {
        let byte = c as u64 * 4;
        let sector = byte / SECTOR_BYTES as u64;
        if sector >= self.fat_sectors_512 {
            return Err(corrupt(format!("cluster {} has no FAT entry", c)));
        }
        let lba = self.fat_lba + sector;
        if w.lba != Some(lba) {
            self.fat_flush(w)?;
            self.dev.read_sectors(lba, &mut w.buf)?;
            w.lba = Some(lba);
        }
        let off = (byte % SECTOR_BYTES as u64) as usize;
        w.buf[off..off + 4].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn fat_flush(&mut self, w: &mut FatWriter) -> Result<(), FsError> {
        if let Some(lba) = w.lba.take() {
            let buf = core::mem::take(&mut w.buf);
            let r = self.write_sectors(lba, &buf);
            w.buf = buf;
            r?;
        }
        Ok(())
    }

    /// Write a FAT chain through `runs` (in order), linked from `prev` when given.
    fn write_chain(&mut self, prev: Option<u32>, runs: &[(u32, u32)]) -> Result<(), FsError> {
        let mut w = FatWriter { lba: None, buf: vec![0u8; SECTOR_BYTES] };
        let mut last = prev;
        for &(first, n) in runs {
            for c in first..first + n {
                if let Some(p) = last {
                    self.fat_set(&mut w, p, c)?;
                }
                last = Some(c);
            }
        }
        if let Some(p) = last {
            self.fat_set(&mut w, p, FAT_END)?;
        }
        self.fat_flush(&mut w)
    }

    fn clear_fat(&mut self, runs: &[(u32, u32)]) -> Result<(), FsError> {
        let mut w = FatWriter { lba: None, buf: vec![0u8; SECTOR_BYTES] };
        for &(first, n) in runs {
            for c in first..first + n {
                self.fat_set(&mut w, c, 0)?;
            }
        }
        self.fat_flush(&mut w)
    }

    /// Free space on the volume, from the allocation bitmap.
    pub fn free_bytes(&mut self) -> Result<u64, FsError> {
        Ok(self.free_clusters()? * self.cluster_bytes)
    }

    fn free_clusters(&mut self) -> Result<u64, FsError> {
        self.load_bitmap()?;
        Ok((2..self.cluster_count + 2).filter(|&c| self.is_free(c)).count() as u64)
    }

    /// Allocate `count` clusters (marked used in the bitmap): right after `after` if those are
    /// free, else one contiguous run anywhere, else the first free clusters found.
    fn allocate(&mut self, count: u64, after: Option<u32>) -> Result<Vec<(u32, u32)>, FsError> {
        self.load_bitmap()?;
        let last = self.cluster_count as u64 + 1;
        let count32 = u32::try_from(count).map_err(|_| FsError::NoSpace { needed_bytes: count * self.cluster_bytes })?;
        let run_free = |vol: &Self, start: u64| -> bool {
            start >= 2 && start + count - 1 <= last && (start..start + count).all(|c| vol.is_free(c as u32))
        };
        let mut chosen: Option<u32> = None;
        if let Some(a) = after {
            if run_free(self, a as u64 + 1) {
                chosen = Some(a + 1);
            }
        }
        if chosen.is_none() {
            let mut c = 2u64;
            let mut run_start = 2u64;
            let mut run_len = 0u64;
            while c <= last {
                if self.is_free(c as u32) {
                    if run_len == 0 {
                        run_start = c;
                    }
                    run_len += 1;
                    if run_len == count {
                        chosen = Some(run_start as u32);
                        break;
                    }
                } else {
                    run_len = 0;
                }
                c += 1;
            }
        }
        let runs = match chosen {
            Some(start) => vec![(start, count32)],
            None => {
                let mut runs: Vec<(u32, u32)> = Vec::new();
                let mut got = 0u64;
                let mut c = 2u64;
                while got < count && c <= last {
                    if self.is_free(c as u32) {
                        match runs.last_mut() {
                            Some((s, n)) if *s as u64 + *n as u64 == c => *n += 1,
                            _ => runs.push((c as u32, 1)),
                        }
                        got += 1;
                    }
                    c += 1;
                }
                if got < count {
                    return Err(FsError::NoSpace { needed_bytes: (count - got) * self.cluster_bytes });
                }
                runs
            }
        };
        for &(s, n) in &runs {
            self.set_bitmap(s, n, true)?;
        }
        Ok(runs)
    }

    /// Change a stream's allocation from `old` to `new` clusters. Returns its new first cluster
    /// and NoFatChain flag (a contiguous stream that cannot stay contiguous gets a FAT chain).
    fn resize_stream(&mut self, first: u32, no_fat_chain: bool, old: u64, new: u64) -> Result<(u32, bool), FsError> {
        if new == old {
            return Ok((first, no_fat_chain));
        }
        if old == 0 {
            let runs = self.allocate(new, None)?;
            if runs.len() == 1 {
                return Ok((runs[0].0, true));
            }
            self.write_chain(None, &runs)?;
            return Ok((runs[0].0, false));
        }
        let runs = self.cluster_runs(first, Some(old * self.cluster_bytes), no_fat_chain)?;
        if new < old {
            let mut keep = new;
            let mut kept: Vec<(u32, u32)> = Vec::new();
            let mut freed: Vec<(u32, u32)> = Vec::new();
            for (s, n) in runs {
                let k = keep.min(n as u64) as u32;
                if k > 0 {
                    kept.push((s, k));
                }
                if k < n {
                    freed.push((s + k, n - k));
                }
                keep -= k as u64;
            }
            if !no_fat_chain {
                if let Some(&(s, n)) = kept.last() {
                    let mut w = FatWriter { lba: None, buf: vec![0u8; SECTOR_BYTES] };
                    self.fat_set(&mut w, s + n - 1, FAT_END)?;
                    self.fat_flush(&mut w)?;
                }
                self.clear_fat(&freed)?;
            }
            for (s, n) in freed {
                self.set_bitmap(s, n, false)?;
            }
            return Ok(if new == 0 { (0, false) } else { (first, no_fat_chain) });
        }
        let last_cluster = runs.last().map(|&(s, n)| s + n - 1).ok_or_else(|| corrupt("empty cluster run".into()))?;
        let added = self.allocate(new - old, Some(last_cluster))?;
        if no_fat_chain && added.len() == 1 && added[0].0 == last_cluster + 1 {
            return Ok((first, true));
        }
        if no_fat_chain {
            // The FAT entries of a contiguous stream are undefined: write its chain first.
            self.write_chain(None, &runs)?;
        }
        self.write_chain(Some(last_cluster), &added)?;
        Ok((first, false))
    }

    /// Cluster runs of a directory's data (the root's chain, or a subdirectory's stream).
    fn dir_runs(&mut self, dir: Option<&Record>) -> Result<Vec<(u32, u32)>, FsError> {
        match dir {
            None => self.cluster_runs(self.root_cluster, None, false),
            Some(r) => self.cluster_runs(r.first_cluster, Some(r.data_bytes), r.no_fat_chain),
        }
    }

    /// Write `bytes` at byte `offset` of a directory's data, sector by sector.
    fn write_dir_bytes(&mut self, dir: Option<&Record>, offset: usize, bytes: &[u8]) -> Result<(), FsError> {
        let runs = self.dir_runs(dir)?;
        let mut done = 0usize;
        let mut sector = vec![0u8; SECTOR_BYTES];
        while done < bytes.len() {
            let pos = (offset + done) as u64;
            let mut cluster_index = pos / self.cluster_bytes;
            let mut lba = None;
            for &(s, n) in &runs {
                if cluster_index < n as u64 {
                    lba = Some(self.cluster_lba(s + cluster_index as u32) + (pos % self.cluster_bytes) / SECTOR_BYTES as u64);
                    break;
                }
                cluster_index -= n as u64;
            }
            let lba = lba.ok_or_else(|| corrupt("a directory entry lies past its directory".into()))?;
            let skip = (pos % SECTOR_BYTES as u64) as usize;
            let take = (SECTOR_BYTES - skip).min(bytes.len() - done);
            self.dev.read_sectors(lba, &mut sector)?;
            sector[skip..skip + take].copy_from_slice(&bytes[done..done + take]);
            self.write_sectors(lba, &sector)?;
            done += take;
        }
        Ok(())
    }

    /// Rewrite a record's stream fields (and set checksum) in its parent directory.
    fn store_record(&mut self, parent: Option<&Record>, r: &mut Record) -> Result<(), FsError> {
        let flags = FLAG_ALLOCATION_POSSIBLE | if r.no_fat_chain && r.first_cluster != 0 { FLAG_NO_FAT_CHAIN } else { 0 };
        let stream = r.set.get_mut(32..64).ok_or_else(|| corrupt("entry set too short".into()))?;
        stream[1] = flags;
        stream[8..16].copy_from_slice(&r.valid_bytes.to_le_bytes());
        stream[20..24].copy_from_slice(&r.first_cluster.to_le_bytes());
        stream[24..32].copy_from_slice(&r.data_bytes.to_le_bytes());
        let sum = entry_set_checksum(&r.set);
        r.set[2..4].copy_from_slice(&sum.to_le_bytes());
        let (offset, set) = (r.set_offset, r.set.clone());
        self.write_dir_bytes(parent, offset, &set)
    }

    fn name_hash(&self, name: &[u16]) -> u16 {
        let mut hash = 0u16;
        for &u in name {
            for b in self.upcase_unit(u).to_le_bytes() {
                hash = hash.rotate_right(1).wrapping_add(b as u16);
            }
        }
        hash
    }

    /// A complete entry set: File, Stream Extension and File Name entries, checksummed.
    /// `file_fields` are bytes 4..32 of the File entry (attributes and timestamps).
    fn build_set(&self, name: &[u16], file_fields: &[u8; 28], r: &Record) -> Vec<u8> {
        let name_entries = (name.len() + 14) / 15;
        let mut set = vec![0u8; 32 * (2 + name_entries)];
        set[0] = TYPE_FILE;
        set[1] = (1 + name_entries) as u8;
        set[4..32].copy_from_slice(file_fields);
        set[32] = TYPE_STREAM;
        set[32 + 1] = FLAG_ALLOCATION_POSSIBLE | if r.no_fat_chain && r.first_cluster != 0 { FLAG_NO_FAT_CHAIN } else { 0 };
        set[32 + 3] = name.len() as u8;
        set[32 + 4..32 + 6].copy_from_slice(&self.name_hash(name).to_le_bytes());
        set[32 + 8..32 + 16].copy_from_slice(&r.valid_bytes.to_le_bytes());
        set[32 + 20..32 + 24].copy_from_slice(&r.first_cluster.to_le_bytes());
        set[32 + 24..32 + 32].copy_from_slice(&r.data_bytes.to_le_bytes());
        for (k, chunk) in name.chunks(15).enumerate() {
            let e = 64 + 32 * k;
            set[e] = TYPE_NAME;
            for (j, &u) in chunk.iter().enumerate() {
                set[e + 2 + 2 * j..e + 4 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let sum = entry_set_checksum(&set);
        set[2..4].copy_from_slice(&sum.to_le_bytes());
        set
    }

    /// Offset of `entries` consecutive free slots in the directory at the end of `chain`,
    /// growing the directory by a zeroed cluster when it has none.
    fn find_slots(&mut self, chain: &mut [Record], entries: usize) -> Result<usize, FsError> {
        for _attempt in 0..2 {
            let data = match chain.last() {
                None => self.read_chain_bytes(self.root_cluster, None, false)?,
                Some(r) => self.read_chain_bytes(r.first_cluster, Some(r.data_bytes), r.no_fat_chain)?,
            };
            // A set that fits in one sector goes in one sector: it is then written, renamed and
            // deleted by single sector writes, which a power cut cannot tear (a set cut in two
            // has a wrong checksum, or secondary entries without their file entry).
            let per_sector = SECTOR_BYTES / ENTRY_BYTES;
            let whole = entries <= per_sector;
            let mut run_start = 0usize;
            let mut run_len = 0usize;
            for (k, e) in data.chunks_exact(ENTRY_BYTES).enumerate() {
                if whole && k % per_sector == 0 {
                    run_len = 0;
                }
                if e[0] & 0x80 == 0 {
                    if run_len == 0 {
                        run_start = k;
                    }
                    run_len += 1;
                    if run_len == entries {
                        // Readers stop at the first end-of-directory entry: end markers skipped
                        // over become unused entries first (harmless if the set never follows).
                        let gap: Vec<usize> = (0..run_start).filter(|&j| data[j * ENTRY_BYTES] == TYPE_END).collect();
                        for j in gap {
                            self.write_dir_bytes(chain.last(), j * ENTRY_BYTES, &[TYPE_FILE & 0x7F])?;
                        }
                        return Ok(run_start * ENTRY_BYTES);
                    }
                } else {
                    run_len = 0;
                }
            }
            self.grow_dir(chain)?;
        }
        Err(corrupt("a directory has no room after growing".into()))
    }

    fn grow_dir(&mut self, chain: &mut [Record]) -> Result<(), FsError> {
        let (last, parents) = match chain.split_last_mut() {
            None => {
                let runs = self.cluster_runs(self.root_cluster, None, false)?;
                let tail = runs.last().map(|&(s, n)| s + n - 1).ok_or_else(|| corrupt("empty root".into()))?;
                let new = self.allocate(1, Some(tail))?;
                self.zero_cluster(new[0].0)?;
                return self.write_chain(Some(tail), &new);
            }
            Some(x) => x,
        };
        if last.data_bytes.saturating_add(self.cluster_bytes) > MAX_DIR_BYTES {
            return Err(FsError::NoSpace { needed_bytes: self.cluster_bytes });
        }
        let old = last.data_bytes / self.cluster_bytes;
        let (first, nfc) = self.resize_stream(last.first_cluster, last.no_fat_chain, old, old + 1)?;
        let runs = self.cluster_runs(first, Some((old + 1) * self.cluster_bytes), nfc)?;
        let tail = runs.last().map(|&(s, n)| s + n - 1).ok_or_else(|| corrupt("empty directory".into()))?;
        self.zero_cluster(tail)?;
        last.first_cluster = first;
        last.no_fat_chain = nfc;
        last.data_bytes += self.cluster_bytes;
        last.valid_bytes = last.data_bytes;
        self.store_record(parents.last(), last)
    }

    fn zero_cluster(&mut self, c: u32) -> Result<(), FsError> {
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(self.cluster_bytes as usize)];
        let per = (zeros.len() / SECTOR_BYTES) as u64;
        let lba = self.cluster_lba(c);
        let mut s = 0;
        while s < self.sectors_per_cluster_512 {
            self.write_sectors(lba + s, &zeros)?;
            s += per;
        }
        Ok(())
    }

    /// Zero bytes `start..end` of a file through its extent list.
    fn zero_file_range(&mut self, file: &File, start: u64, end: u64) -> Result<(), FsError> {
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64) as usize;
            write_via_extents(&mut self.dev, file, pos, &zeros[..n])?;
            pos += n as u64;
        }
        self.cache_lba = None;
        Ok(())
    }

    fn file_of(&mut self, r: &Record, path: String) -> Result<File, FsError> {
        let extents = self.extents_of(r)?;
        Ok(File { path, size_bytes: r.data_bytes, extents })
    }

    fn validate_name(&self, name: &str) -> Result<Vec<u16>, FsError> {
        let units: Vec<u16> = name.encode_utf16().collect();
        let bad = units.is_empty()
            || units.len() > MAX_NAME_UNITS
            || name == "."
            || name == ".."
            || units.iter().any(|&u| u < 0x20 || "\"*/:<>?\\|".encode_utf16().any(|x| x == u));
        if bad {
            return Err(FsError::Unsupported(format!(
                "exFAT: \"{}\" is not a valid file name (1 to 255 characters, none of \" * / : < > ? \\ |)",
                name
            )));
        }
        Ok(units)
    }

    /// The parent directory chain of `path` and the last component, checked to be absent
    /// (unless `allow_existing` names the same entry, for a case-only rename).
    fn parent_of(&mut self, path: &str) -> Result<(Vec<Record>, String, Vec<u16>), FsError> {
        let comps: Vec<&str> = path_components(path).collect();
        let (name, parents) = comps.split_last().ok_or_else(|| FsError::IsADirectory { path: "/".into() })?;
        let mut parent_path = String::new();
        for p in parents {
            parent_path.push('/');
            parent_path.push_str(p);
        }
        let (chain, spelled) = self.lookup_chain(&parent_path)?;
        if let Some(r) = chain.last() {
            if !r.is_dir {
                return Err(FsError::NotADirectory { path: spelled });
            }
        }
        let units = self.validate_name(name)?;
        Ok((chain, spelled, units))
    }

    fn exists_in(&mut self, chain: &[Record], name: &[u16]) -> Result<Option<Record>, FsError> {
        let records = self.read_dir_records(chain.last())?;
        Ok(records.into_iter().find(|r| self.names_equal(&r.name_utf16, name)))
    }

    fn join(parent_spelled: &str, name: &[u16]) -> String {
        let mut p = String::from(parent_spelled.trim_end_matches('/'));
        p.push('/');
        p.push_str(&utf16_to_string(name));
        p
    }

    /// Create a file of `size_bytes` zero bytes in an existing directory. Its clusters are
    /// contiguous (NoFatChain) when the volume has such a run free.
    pub fn create_file(&mut self, path: &str, size_bytes: u64) -> Result<File, FsError> {
        self.check_writable()?;
        let (mut chain, parent_spelled, name) = self.parent_of(path)?;
        let spelled = Self::join(&parent_spelled, &name);
        if self.exists_in(&chain, &name)?.is_some() {
            return Err(FsError::Unsupported(format!("exFAT: {} already exists", spelled)));
        }
        let clusters = size_bytes.div_ceil(self.cluster_bytes);
        if clusters > self.free_clusters()? {
            return Err(FsError::NoSpace { needed_bytes: size_bytes });
        }
        let (first, nfc) = self.resize_stream(0, false, 0, clusters)?;
        let mut r = Record {
            name: utf16_to_string(&name),
            name_utf16: name.clone(),
            is_dir: false,
            first_cluster: first,
            no_fat_chain: nfc,
            data_bytes: size_bytes,
            valid_bytes: size_bytes,
            set_offset: 0,
            set: Vec::new(),
        };
        let file = self.file_of(&r, spelled)?;
        self.zero_file_range(&file, 0, size_bytes)?;
        let mut fields = [0u8; 28];
        fields[0..2].copy_from_slice(&ATTR_ARCHIVE.to_le_bytes());
        for k in 0..3 {
            fields[4 + 4 * k..8 + 4 * k].copy_from_slice(&FIXED_TIMESTAMP.to_le_bytes());
        }
        r.set = self.build_set(&name, &fields, &r);
        r.set_offset = self.find_slots(&mut chain, r.set.len() / ENTRY_BYTES)?;
        let set = r.set.clone();
        self.write_dir_bytes(chain.last(), r.set_offset, &set)?;
        Ok(file)
    }

    fn file_chain(&mut self, path: &str) -> Result<(Vec<Record>, Record, String), FsError> {
        let (mut chain, spelled) = self.lookup_chain(path)?;
        let r = chain.pop().ok_or_else(|| FsError::IsADirectory { path: "/".into() })?;
        if r.is_dir {
            return Err(FsError::IsADirectory { path: spelled });
        }
        Ok((chain, r, spelled))
    }

    /// Grow a file to `new_size_bytes`; the new bytes (and any unwritten tail) are zeros.
    pub fn grow_file(&mut self, path: &str, new_size_bytes: u64) -> Result<File, FsError> {
        self.grow_file_with_tail(path, new_size_bytes, &[])
    }

    /// [`ExfatVolume::grow_file`] whose new last bytes are `tail` (inside the new bytes), written
    /// before the directory entry takes the new size: the file is never seen at its new length
    /// without them (a VHD's footer, which readers look for at the end of the file).
    pub fn grow_file_with_tail(&mut self, path: &str, new_size_bytes: u64, tail: &[u8]) -> Result<File, FsError> {
        self.check_writable()?;
        let (chain, mut r, spelled) = self.file_chain(path)?;
        if new_size_bytes < r.data_bytes {
            return Err(FsError::Unsupported(format!(
                "exFAT: {} is {} bytes; growing it to {} would shrink it",
                spelled, r.data_bytes, new_size_bytes
            )));
        }
        let old = r.data_bytes.div_ceil(self.cluster_bytes);
        let new = new_size_bytes.div_ceil(self.cluster_bytes);
        if new - old > self.free_clusters()? {
            return Err(FsError::NoSpace { needed_bytes: (new - old) * self.cluster_bytes });
        }
        let (first, nfc) = self.resize_stream(r.first_cluster, r.no_fat_chain, old, new)?;
        r.first_cluster = first;
        r.no_fat_chain = nfc;
        r.data_bytes = new_size_bytes;
        let file = self.file_of(&r, spelled)?;
        let tail_at = new_size_bytes.saturating_sub(tail.len() as u64).max(r.valid_bytes);
        self.zero_file_range(&file, r.valid_bytes, tail_at)?;
        write_via_extents(&mut self.dev, &file, tail_at, &tail[tail.len() - (new_size_bytes - tail_at) as usize..])?;
        self.cache_lba = None;
        r.valid_bytes = new_size_bytes;
        self.store_record(chain.last(), &mut r)?;
        Ok(file)
    }

    /// Shrink a file to `new_size_bytes`, freeing the clusters past it.
    pub fn truncate_file(&mut self, path: &str, new_size_bytes: u64) -> Result<File, FsError> {
        self.check_writable()?;
        let (chain, mut r, spelled) = self.file_chain(path)?;
        if new_size_bytes > r.data_bytes {
            return Err(FsError::Unsupported(format!(
                "exFAT: {} is {} bytes; truncating it to {} would grow it",
                spelled, r.data_bytes, new_size_bytes
            )));
        }
        let old = r.data_bytes.div_ceil(self.cluster_bytes);
        let new = new_size_bytes.div_ceil(self.cluster_bytes);
        // Point the entry at the shorter stream first, then release the clusters.
        let old_first = r.first_cluster;
        let old_nfc = r.no_fat_chain;
        r.data_bytes = new_size_bytes;
        r.valid_bytes = r.valid_bytes.min(new_size_bytes);
        if new == 0 {
            r.first_cluster = 0;
            r.no_fat_chain = false;
        }
        self.store_record(chain.last(), &mut r)?;
        self.resize_stream(old_first, old_nfc, old, new)?;
        self.file_of(&r, spelled)
    }

    /// Delete a file (not a directory) and free its clusters.
    pub fn delete_file(&mut self, path: &str) -> Result<(), FsError> {
        self.check_writable()?;
        let (chain, r, _) = self.file_chain(path)?;
        self.mark_deleted(chain.last(), &r)?;
        let clusters = r.data_bytes.div_ceil(self.cluster_bytes);
        if clusters > 0 {
            self.resize_stream(r.first_cluster, r.no_fat_chain, clusters, 0)?;
        }
        Ok(())
    }

    /// Give the file at `target` the contents of the file at `source`, which goes: `source`'s set
    /// is deleted (its clusters, referenced by nothing for a moment, would be leaked space if the
    /// power went then), `target`'s set takes them in one rewrite (its file and stream entries
    /// share a sector in every set vboot writes), and `target`'s old clusters are freed.
    pub fn take_contents(&mut self, target: &str, source: &str) -> Result<(), FsError> {
        self.check_writable()?;
        let (src_parents, src, _) = self.file_chain(source)?;
        let (dst_parents, mut dst, _) = self.file_chain(target)?;
        if same_location(&src_parents, &dst_parents) && src.set_offset == dst.set_offset {
            return Ok(());
        }
        self.mark_deleted(src_parents.last(), &src)?;
        let (old_first, old_nfc, old_bytes) = (dst.first_cluster, dst.no_fat_chain, dst.data_bytes);
        dst.first_cluster = src.first_cluster;
        dst.no_fat_chain = src.no_fat_chain;
        dst.data_bytes = src.data_bytes;
        dst.valid_bytes = src.valid_bytes;
        self.store_record(dst_parents.last(), &mut dst)?;
        let clusters = old_bytes.div_ceil(self.cluster_bytes);
        if clusters > 0 {
            self.resize_stream(old_first, old_nfc, clusters, 0)?;
        }
        Ok(())
    }

    fn mark_deleted(&mut self, parent: Option<&Record>, r: &Record) -> Result<(), FsError> {
        let mut set = r.set.clone();
        for e in set.chunks_exact_mut(ENTRY_BYTES) {
            e[0] &= 0x7F;
        }
        self.write_dir_bytes(parent, r.set_offset, &set)
    }

    /// Rename or move a file or directory. The target must not exist (a change of case only
    /// is allowed).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        self.check_writable()?;
        let (from_chain, from_spelled) = self.lookup_chain(from)?;
        let (src_parent, r) = match from_chain.split_last() {
            Some((r, parents)) => (parents.to_vec(), r.clone()),
            None => return Err(FsError::Unsupported("exFAT: the root directory cannot be renamed".into())),
        };
        let (mut to_chain, to_parent_spelled, name) = self.parent_of(to)?;
        let same_dir = same_location(&src_parent, &to_chain);
        if let Some(existing) = self.exists_in(&to_chain, &name)? {
            if !(same_dir && existing.set_offset == r.set_offset) {
                return Err(FsError::Unsupported(format!(
                    "exFAT: {} already exists",
                    Self::join(&to_parent_spelled, &name)
                )));
            }
        }
        if r.is_dir && r.first_cluster != 0 && to_chain.iter().any(|p| p.first_cluster == r.first_cluster) {
            return Err(FsError::Unsupported(format!("exFAT: cannot move {} into itself", from_spelled)));
        }
        let mut fields = [0u8; 28];
        fields.copy_from_slice(r.set.get(4..32).ok_or_else(|| corrupt("entry set too short".into()))?);
        let mut set = self.build_set(&name, &fields, &r);
        if same_dir && set.len() <= r.set.len() {
            // In place, the old set's surplus entries marked unused: one sector write when the
            // set lies in one sector (as every set vboot writes does), so a power cut leaves
            // the old name or the new one.
            let mut surplus = r.set[set.len()..].to_vec();
            for e in surplus.chunks_exact_mut(ENTRY_BYTES) {
                e[0] &= 0x7F;
            }
            set.extend_from_slice(&surplus);
            return self.write_dir_bytes(src_parent.last(), r.set_offset, &set);
        }
        // New entry first, then the old one goes: a crash leaves two names, not none.
        let offset = self.find_slots(&mut to_chain, set.len() / ENTRY_BYTES)?;
        self.write_dir_bytes(to_chain.last(), offset, &set)?;
        // When source and target are one directory, growing it changed its record: use the
        // updated one.
        let parent = if same_dir { to_chain.last().cloned() } else { src_parent.last().cloned() };
        self.mark_deleted(parent.as_ref(), &r)
    }

    /// Write `buf` at `offset_bytes` inside the file's existing extents (no metadata change).
    /// Writes past the end of the file are refused.
    pub fn write_file(&mut self, file: &File, offset_bytes: u64, buf: &[u8]) -> Result<usize, FsError> {
        let n = write_via_extents(&mut self.dev, file, offset_bytes, buf)?;
        self.cache_lba = None;
        Ok(n)
    }
}

/// True when two directory chains name the same directory.
fn same_location(a: &[Record], b: &[Record]) -> bool {
    match (a.last(), b.last()) {
        (None, None) => true,
        (Some(x), Some(y)) => x.first_cluster == y.first_cluster && x.set_offset == y.set_offset,
        _ => false,
    }
}

fn utf16_to_string(units: &[u16]) -> String {
    char::decode_utf16(units.iter().copied()).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

/// Expand the up-case table: a run `FFFF n` stands for `n` characters that map to themselves.
fn expand_upcase(raw: &[u8]) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::with_capacity(65536);
    let mut units = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    while out.len() < 65536 {
        let Some(u) = units.next() else { break };
        if u == 0xFFFF {
            let Some(n) = units.next() else { break };
            for _ in 0..n {
                if out.len() >= 65536 {
                    break;
                }
                out.push(out.len() as u16);
            }
        } else {
            out.push(u);
        }
    }
    out
}

fn parse_entry_sets(data: &[u8]) -> Result<Vec<Record>, FsError> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + ENTRY_BYTES <= data.len() {
        let t = data[i];
        if t == TYPE_END {
            break;
        }
        if t != TYPE_FILE {
            i += ENTRY_BYTES;
            continue;
        }
        let secondary = data[i + 1] as usize;
        if !(2..=18).contains(&secondary) {
            return Err(corrupt(format!("a file entry set declares {} secondary entries", secondary)));
        }
        let set = data
            .get(i..i + ENTRY_BYTES * (secondary + 1))
            .ok_or_else(|| corrupt("a file entry set runs past the end of its directory".into()))?;
        if entry_set_checksum(set) != le16(set, 2) {
            return Err(corrupt("a directory entry set checksum does not match (run fsck.exfat)".into()));
        }
        let stream = &set[32..64];
        if stream[0] != TYPE_STREAM {
            return Err(corrupt("a file entry is not followed by a stream extension".into()));
        }
        let name_len = stream[3] as usize;
        let mut name_utf16: Vec<u16> = Vec::with_capacity(name_len);
        for e in set[64..].chunks_exact(ENTRY_BYTES) {
            if e[0] != TYPE_NAME {
                break;
            }
            for k in 0..15 {
                if name_utf16.len() < name_len {
                    name_utf16.push(le16(e, 2 + 2 * k));
                }
            }
        }
        if name_len == 0 || name_utf16.len() != name_len {
            return Err(corrupt("a file entry set has a missing or short name".into()));
        }
        let name: String = char::decode_utf16(name_utf16.iter().copied())
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        let data_bytes = le64(stream, 24);
        let valid_bytes = le64(stream, 8);
        if valid_bytes > data_bytes {
            return Err(corrupt(format!("{}: valid data length exceeds the data length", name)));
        }
        out.push(Record {
            name,
            name_utf16,
            is_dir: le16(set, 4) & ATTR_DIRECTORY != 0,
            first_cluster: le32(stream, 20),
            no_fat_chain: stream[1] & FLAG_NO_FAT_CHAIN != 0,
            data_bytes,
            valid_bytes,
            set_offset: i,
            set: set.to_vec(),
        });
        i += set.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_skip_their_own_fields() {
        let mut set = [0u8; 96];
        set[0] = TYPE_FILE;
        set[1] = 2;
        let a = entry_set_checksum(&set);
        set[2] = 0x12;
        set[3] = 0x34;
        assert_eq!(entry_set_checksum(&set), a);
        set[5] = 1;
        assert_ne!(entry_set_checksum(&set), a);

        let mut region = vec![0u8; 512 * 11];
        let b = boot_checksum(&region);
        region[106] = 1;
        region[112] = 50;
        assert_eq!(boot_checksum(&region), b);
    }

    #[test]
    fn upcase_runs_expand_to_identity() {
        // 'a'..'c' identity via a run of 97, then 'a'->'A'.
        let mut raw = Vec::new();
        for u in [0xFFFFu16, 97, 65, 66] {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        let t = expand_upcase(&raw);
        assert_eq!(t.len(), 99);
        assert_eq!(t[96], 96);
        assert_eq!(t[97], 65);
        assert_eq!(t[98], 66);
    }

    /// A volume of 4 KiB clusters over a blank disk: enough to walk cluster runs.
    fn bare_volume() -> ExfatVolume<crate::block::MemDisk> {
        ExfatVolume {
            dev: crate::block::MemDisk::zeroed(256),
            sectors_per_cluster_512: 8,
            cluster_bytes: 4096,
            fat_lba: 24,
            fat_sectors_512: 8,
            heap_lba: 64,
            cluster_count: 20,
            root_cluster: 2,
            bitmap_first_cluster: 2,
            bitmap_bytes: 3,
            bitmap_runs: Vec::new(),
            bitmap: None,
            fat_count: 1,
            upcase: Vec::new(),
            cache_lba: None,
            cache: vec![0u8; SECTOR_BYTES],
        }
    }

    // Issue 14: a FAT chain loop behind a large DataLength is found by the loop check within a
    // few clusters, not after walking (and recording) as many clusters as the length says.
    #[test]
    fn a_fat_chain_loop_is_found_within_a_few_clusters() {
        let mut vol = bare_volume();
        let fat = 24 * SECTOR_BYTES;
        vol.dev.bytes[fat + 3 * 4..fat + 4 * 4].copy_from_slice(&4u32.to_le_bytes());
        vol.dev.bytes[fat + 4 * 4..fat + 5 * 4].copy_from_slice(&3u32.to_le_bytes());
        match vol.cluster_runs(3, Some(19 * 4096), false) {
            Err(FsError::Corrupt(m)) => assert!(m.contains("loops (cluster 3 comes back)"), "{}", m),
            other => panic!("{:?}", other),
        }
    }

    // Issue 14: a DataLength near 2^64 overflowed `bytes + cluster - 1` (a panic in stage2; on a
    // release host build it wrapped to an empty file).
    #[test]
    fn a_data_length_near_2_64_is_refused() {
        let mut vol = bare_volume();
        assert_eq!(vol.cluster_runs(3, Some(8192), true).unwrap(), [(3, 2)]);
        for bytes in [u64::MAX, u64::MAX - 4000] {
            match vol.cluster_runs(3, Some(bytes), true) {
                Err(FsError::Corrupt(m)) => assert!(m.contains("clusters from cluster 3 runs past the heap"), "{}", m),
                other => panic!("{:?}", other),
            }
            // Through the FAT: the chain ends (entry 0) long before.
            assert!(matches!(vol.cluster_runs(3, Some(bytes), false), Err(FsError::Corrupt(_))));
            let r = Record {
                name: "big.vhd".into(),
                name_utf16: Vec::new(),
                is_dir: false,
                first_cluster: 3,
                no_fat_chain: true,
                data_bytes: bytes,
                valid_bytes: bytes,
                set_offset: 0,
                set: Vec::new(),
            };
            assert!(matches!(vol.extents_of(&r), Err(FsError::Corrupt(_))));
        }
    }

    #[test]
    fn garbage_is_not_exfat() {
        let d = crate::block::MemDisk::zeroed(64);
        assert!(matches!(ExfatVolume::open(d), Err(FsError::NotRecognized(_))));
    }
}
