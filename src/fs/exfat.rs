//! exFAT reader: boot region (with its checksum), FAT chains and NoFatChain runs, the
//! allocation bitmap, the up-case table, and directory entry sets (with their checksums).
//!
//! Layout facts follow the exFAT specification (Microsoft, 2019): sector and cluster sizes are
//! powers of two given as shifts; clusters are numbered from 2; a file is an entry set
//! (File 0x85, Stream Extension 0xC0, File Name 0xC1 ...) whose checksum covers the whole set.
//!
//! The volume is read here; its metadata changes are in `exfat/write.rs`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{allocation_refusal, UnitRanges};
use super::{path_components, DirEntry, ExtentList, File, FileKind, FsError, LoopCheck};
use super::read_via_extents;
use crate::block::{BlockDevice, SECTOR_BYTES};

mod write;

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
        if self.runs_bytes(&runs) > MAX_DIR_BYTES {
            return Err(corrupt(format!("the chain from cluster {} is longer than {} MiB", first, MAX_DIR_BYTES >> 20)));
        }
        let mut out = self.read_runs(&runs)?;
        if let Some(b) = bytes {
            out.truncate(b as usize);
        }
        Ok(out)
    }

    /// Bytes in the whole clusters of `runs`.
    fn runs_bytes(&self, runs: &[(u32, u32)]) -> u64 {
        runs.iter().map(|r| r.1 as u64).sum::<u64>() * self.cluster_bytes
    }

    /// The whole clusters of `runs`, in order. The caller bounds their size first: they are
    /// read into one buffer.
    fn read_runs(&mut self, runs: &[(u32, u32)]) -> Result<Vec<u8>, FsError> {
        let mut out = vec![0u8; self.runs_bytes(runs) as usize];
        let mut pos = 0usize;
        for &(c, n) in runs {
            let len = (n as u64 * self.cluster_bytes) as usize;
            self.dev.read_sectors(self.cluster_lba(c), &mut out[pos..pos + len])?;
            pos += len;
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
        let name = utf16_to_string(&name_utf16);
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
