//! exFAT metadata writes, made before the guest starts (never from inside INT 13h): create a
//! file, grow, truncate or delete it, hand one file's contents to another, rename or move, and
//! write inside a file's existing extents; with them the allocation bitmap and FAT chain changes
//! they need.
//!
//! Order of writes, so that an interrupted change leaks clusters at worst and never leaves two
//! files sharing one: allocate in the bitmap, link the FAT, zero the data, and only then point a
//! directory entry at the clusters. Removal goes the other way round. An entry set that fits in
//! one sector is placed in one sector, so that writing, renaming and deleting it are single
//! sector writes (docs/power-cuts.md).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    corrupt, entry_set_checksum, utf16_to_string, ExfatVolume, Record, ENTRY_BYTES, FAT_END, FLAG_NO_FAT_CHAIN,
    MAX_DIR_BYTES, TYPE_END, TYPE_FILE, TYPE_NAME, TYPE_STREAM,
};
use crate::block::{BlockDevice, SECTOR_BYTES};
use crate::fs::{path_components, write_via_extents, File, FsError};

/// The allocation bitmap, held whole only for metadata changes (stage2 reads its bits a sector at
/// a time otherwise): 16 MiB cover 2^27 clusters, 512 GiB at 4 KiB clusters, 16 TiB at the
/// 128 KiB clusters formatters choose for large volumes.
const MAX_BITMAP_BYTES: u64 = 16 << 20;
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
        let total = self.runs_bytes(&runs);
        if total > MAX_BITMAP_BYTES {
            return Err(FsError::Unsupported(format!(
                "exFAT: the allocation bitmap is {} MiB; vboot changes volumes whose bitmap is at most {} MiB \
                 (format with larger clusters)",
                total >> 20,
                MAX_BITMAP_BYTES >> 20
            )));
        }
        self.bitmap = Some(self.read_runs(&runs)?);
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
