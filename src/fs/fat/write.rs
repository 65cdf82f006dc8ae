//! FAT metadata writes, made before the guest starts (never from inside INT 13h): create a file
//! or directory with a long name, grow or truncate a file, delete, rename, and write inside a
//! file's existing extents.
//!
//! Every FAT change goes to all FAT copies (to the active one only when FAT32 mirroring is off)
//! and the FAT32 FSInfo free count follows. Writes are ordered so that a power cut leaves at worst
//! lost clusters, which a checker reclaims, never a file pointing at clusters another file owns:
//! - growing: the new clusters are chained and linked first, the size in the entry last;
//! - shrinking and deleting: the entry changes first, the clusters are freed after;
//! - renaming within a directory: in place when the new name needs no more slots than the old
//!   one (the short entry first); otherwise the new entry is written before the old one goes;
//! - replacing a file's contents (`take_contents`): the source entry goes, the target's short
//!   entry takes its clusters in one write, the old clusters are freed;
//! - directory sectors are written last-first, so a short entry lands before its long name.
//!
//! tests/tests/powercut.rs cuts the power after every write of the changes stage2 makes
//! (docs/power-cuts.md).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    le32, lfn_checksum, names_equal, parse_dir, DirData, DirRef, FatType, FatVolume, RawEntry,
    Resolved, ATTR_DIRECTORY, ATTR_LONG_NAME, DIR_ENTRY_BYTES, LFN_UNIT_OFFSETS, MAX_DIR_BYTES,
    NT_LOWER_BASE, NT_LOWER_EXT, SECTOR,
};
use crate::block::{BlockDevice, SECTOR_BYTES};
use crate::fs::{path_components, File, FsError};

/// Attribute of a plain file that has changed since the last backup.
const ATTR_ARCHIVE: u8 = 0x20;
/// FAT files are at most 4 GiB - 1 bytes: the size field is 32 bits.
pub const MAX_FILE_BYTES: u64 = 0xFFFF_FFFF;
/// Longest long name, in UTF-16 units.
const MAX_LONG_NAME_UNITS: usize = 255;

/// Date and time stored in directory entries. FAT keeps local time with 2-second resolution,
/// years 1980-2107. stage2 sets it from the RTC; the default is the FAT epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatTimestamp {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Default for FatTimestamp {
    fn default() -> Self {
        FatTimestamp {
            year: 1980,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        }
    }
}

impl FatTimestamp {
    /// The on-disk date; out-of-range fields are clamped so the entry stays valid.
    fn date(&self) -> u16 {
        let year = self.year.clamp(1980, 2107) - 1980;
        let month = self.month.clamp(1, 12) as u16;
        let day = self.day.clamp(1, 31) as u16;
        year << 9 | month << 5 | day
    }

    fn time(&self) -> u16 {
        let hour = self.hour.min(23) as u16;
        let minute = self.minute.min(59) as u16;
        let half_seconds = (self.second.min(59) / 2) as u16;
        hour << 11 | minute << 5 | half_seconds
    }
}

/// Characters allowed in a short name besides A-Z and 0-9.
const SHORT_SPECIALS: &[u8] = b"$%'-_@~`!(){}^#&";

fn short_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || (c.is_ascii() && SHORT_SPECIALS.contains(&(c as u8)))
}

/// A long name FAT can store: not empty, not `.`/`..`, no control characters or `"*/:<>?\|`,
/// no trailing dot or space (Windows would silently drop them), at most 255 UTF-16 units.
pub fn check_long_name(name: &str) -> Result<(), FsError> {
    let bad = |why: &str| {
        Err(FsError::Unsupported(format!(
            "\"{}\" is not a valid FAT file name: {}",
            name, why
        )))
    };
    if name.is_empty() || name == "." || name == ".." {
        return bad("reserved name");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || "\"*/:<>?\\|".contains(c))
    {
        return bad(&format!("it contains {:?}", c));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return bad("it ends with a dot or a space");
    }
    if name.encode_utf16().count() > MAX_LONG_NAME_UNITS {
        return bad("longer than 255 characters");
    }
    Ok(())
}

/// The short name for `long`, the NT case bits, and whether a long-name entry is needed.
/// `taken` says whether an 11-byte short name is already used in the directory.
fn make_short_name(long: &str, taken: &dyn Fn(&[u8; 11]) -> bool) -> ([u8; 11], u8, bool) {
    let (base, ext) = match long.rfind('.') {
        Some(i) if i > 0 => (&long[..i], &long[i + 1..]),
        _ => (long, ""),
    };
    let fits = (1..=8).contains(&base.len())
        && ext.len() <= 3
        && base.chars().all(short_char_ok)
        && ext.chars().all(short_char_ok)
        && !(ext.is_empty() && long.ends_with('.'));
    if fits {
        let mut name = [b' '; 11];
        for (i, c) in base.bytes().enumerate() {
            name[i] = c.to_ascii_uppercase();
        }
        for (i, c) in ext.bytes().enumerate() {
            name[8 + i] = c.to_ascii_uppercase();
        }
        // Each part is all lower or all upper case (digits and symbols count as either): the NT
        // case bits then reproduce the name exactly and no long-name entry is needed.
        let case_of = |part: &str| {
            let lower = part.bytes().any(|c| c.is_ascii_lowercase());
            let upper = part.bytes().any(|c| c.is_ascii_uppercase());
            (lower, upper)
        };
        let (bl, bu) = case_of(base);
        let (el, eu) = case_of(ext);
        if !taken(&name) {
            if (bl && bu) || (el && eu) {
                return (name, 0, true);
            }
            let bits = if bl { NT_LOWER_BASE } else { 0 } | if el { NT_LOWER_EXT } else { 0 };
            return (name, bits, false);
        }
    }
    // Windows' basis name: drop spaces and leading dots, upper-case, anything not allowed
    // becomes '_', then a numeric tail "~N".
    let cleaned: String = long.chars().filter(|&c| c != ' ').collect();
    let cleaned = cleaned.trim_start_matches('.');
    let (base, ext) = match cleaned.rfind('.') {
        Some(i) => (&cleaned[..i], &cleaned[i + 1..]),
        None => (cleaned, ""),
    };
    let map = |c: char| {
        if short_char_ok(c) {
            c.to_ascii_uppercase() as u8
        } else {
            b'_'
        }
    };
    let mut basis: Vec<u8> = base
        .chars()
        .filter(|&c| c != '.')
        .map(map)
        .take(8)
        .collect();
    if basis.is_empty() {
        basis.push(b'_');
    }
    let ext_bytes: Vec<u8> = ext.chars().map(map).take(3).collect();
    let mut name = [b' '; 11];
    for (i, &c) in ext_bytes.iter().enumerate() {
        name[8 + i] = c;
    }
    // A directory holds at most 65 536 entries, so one of the first 65 537 tails is free.
    for n in 1u32..=999_999 {
        let tail = format!("~{}", n);
        let keep = basis.len().min(8 - tail.len());
        name[..8].fill(b' ');
        name[..keep].copy_from_slice(&basis[..keep]);
        name[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        if !taken(&name) {
            break;
        }
    }
    if name[0] == 0xE5 {
        name[0] = 0x05;
    }
    (name, 0, true)
}

/// The LFN entries for `long` in on-disk order (last part first), for short name `short`.
fn lfn_entries(long: &str, short: &[u8; 11]) -> Vec<[u8; DIR_ENTRY_BYTES]> {
    let units: Vec<u16> = long.encode_utf16().collect();
    let count = units.len().div_ceil(13);
    let sum = lfn_checksum(short);
    let mut out = Vec::with_capacity(count);
    for seq in (1..=count).rev() {
        let mut e = [0u8; DIR_ENTRY_BYTES];
        e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
        e[11] = ATTR_LONG_NAME;
        e[13] = sum;
        for (k, &off) in LFN_UNIT_OFFSETS.iter().enumerate() {
            let i = (seq - 1) * 13 + k;
            let u = match units.get(i) {
                Some(&u) => u,
                None if i == units.len() => 0,
                None => 0xFFFF,
            };
            e[off..off + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

fn set_entry_cluster(e: &mut [u8; DIR_ENTRY_BYTES], cluster: u32, fat_type: FatType) {
    let hi = if fat_type == FatType::Fat32 {
        (cluster >> 16) as u16
    } else {
        0
    };
    e[20..22].copy_from_slice(&hi.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// Split a path into its parent path and last component.
fn split_parent(path: &str) -> Result<(String, &str), FsError> {
    let parts: Vec<&str> = path_components(path).collect();
    match parts.split_last() {
        Some((&name, parents)) if name != ".." => {
            let mut parent = String::from("/");
            parent.push_str(&parents.join("/"));
            Ok((parent, name))
        }
        _ => Err(FsError::Unsupported(format!(
            "\"{}\" does not name a file",
            path
        ))),
    }
}

impl<D: BlockDevice> FatVolume<D> {
    /// Set the time written into the entries this volume creates or changes.
    pub fn set_clock(&mut self, now: FatTimestamp) {
        self.clock = now;
    }

    fn end_of_chain_value(&self) -> u32 {
        match self.geo.fat_type {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    fn put_fat_byte(&mut self, offset: u64, value: u8) -> Result<(), FsError> {
        self.put_fat_entry_bytes(offset, &[value])
    }

    /// Bytes of the active FAT at `offset`, inside one sector: a byte (FAT12 entries are written
    /// a byte at a time), or a FAT16 or FAT32 entry (entries are aligned to their size).
    fn put_fat_entry_bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FsError> {
        let sector = offset / SECTOR;
        if sector >= self.geo.fat_sectors {
            return Err(FsError::Corrupt(format!("FAT offset {} is past the end of the FAT", offset)));
        }
        self.load_fat_sector(sector)?;
        let at = (offset - self.fat_cache_start * SECTOR) as usize;
        match self.fat_cache.get_mut(at..at + bytes.len()) {
            Some(b) => b.copy_from_slice(bytes),
            None => return Err(FsError::Corrupt(String::from("FAT cache miss"))),
        }
        self.fat_cache_dirty |= 1 << (sector - self.fat_cache_start);
        Ok(())
    }

    /// Set the FAT entry of `cluster` (in the cache; `flush_fat` writes it out).
    fn set_fat_entry(&mut self, cluster: u32, value: u32) -> Result<(), FsError> {
        let c = cluster as u64;
        match self.geo.fat_type {
            FatType::Fat12 => {
                let at = c + c / 2;
                let (b0, b1) = (self.fat_byte(at)?, self.fat_byte(at + 1)?);
                let (n0, n1) = if c & 1 == 1 {
                    ((b0 & 0x0F) | ((value << 4) as u8), (value >> 4) as u8)
                } else {
                    (value as u8, (b1 & 0xF0) | ((value >> 8) as u8 & 0x0F))
                };
                self.put_fat_byte(at, n0)?;
                self.put_fat_byte(at + 1, n1)?;
            }
            FatType::Fat16 => self.put_fat_entry_bytes(2 * c, &(value as u16).to_le_bytes())?,
            FatType::Fat32 => {
                // The top four bits are reserved and must be preserved.
                let top = self.fat_entry_bytes::<4>(4 * c)?[3] & 0xF0;
                let mut b = (value & 0x0FFF_FFFF).to_le_bytes();
                b[3] |= top;
                self.put_fat_entry_bytes(4 * c, &b)?;
            }
        }
        Ok(())
    }

    /// Adjust the FAT32 FSInfo free count by `delta` and set its next-free hint. A missing or
    /// invalid FSInfo, or an "unknown" count, is left alone.
    fn update_fsinfo(&mut self, delta: i64, next_free: Option<u32>) -> Result<(), FsError> {
        let Some(lba) = self.geo.fsinfo_lba else {
            return Ok(());
        };
        let mut s = [0u8; SECTOR_BYTES];
        self.dev.read_sectors(lba, &mut s)?;
        if le32(&s, 0) != 0x4161_5252 || le32(&s, 484) != 0x6141_7272 {
            return Ok(());
        }
        let free = le32(&s, 488);
        if free != 0xFFFF_FFFF {
            let new = free as i64 + delta;
            let new = if (0..=self.geo.cluster_count as i64).contains(&new) {
                new as u32
            } else {
                0xFFFF_FFFF
            };
            s[488..492].copy_from_slice(&new.to_le_bytes());
        }
        if let Some(n) = next_free {
            s[492..496].copy_from_slice(&n.to_le_bytes());
        }
        self.dev.write_sectors(lba, &s)?;
        Ok(())
    }

    /// Find `count` free clusters, a single contiguous run if there is one (fewest extents),
    /// else the first free clusters in volume order. Returns them in chain order.
    fn find_free_clusters(&mut self, count: u64) -> Result<Vec<u32>, FsError> {
        let mut pieces: Vec<(u32, u64)> = Vec::new();
        let mut collected = 0u64;
        let mut run_start = 0u32;
        let mut run_len = 0u64;
        let max = self.geo.max_cluster();
        let mut c = 2u32;
        loop {
            let free = c <= max && self.fat_entry(c)? == 0;
            if free {
                if run_len == 0 {
                    run_start = c;
                }
                run_len += 1;
                if run_len == count {
                    return Ok((run_start..run_start + count as u32).collect());
                }
            } else if run_len > 0 {
                if collected < count {
                    let take = run_len.min(count - collected);
                    pieces.push((run_start, take));
                    collected += take;
                }
                run_len = 0;
            }
            if c > max {
                break;
            }
            c += 1;
        }
        if collected < count {
            return Err(FsError::NoSpace {
                needed_bytes: (count - collected) * self.geo.cluster_bytes(),
            });
        }
        Ok(pieces.iter().flat_map(|&(s, n)| s..s + n as u32).collect())
    }

    /// Allocate `count` clusters chained together and ended, optionally zeroed. Returns them in
    /// chain order.
    fn allocate_chain(&mut self, count: u64, zero: bool) -> Result<Vec<u32>, FsError> {
        let clusters = self.find_free_clusters(count)?;
        if zero {
            let zeros = vec![0u8; (self.geo.cluster_sectors * SECTOR) as usize];
            for &c in &clusters {
                self.dev.write_sectors(self.geo.cluster_lba(c), &zeros)?;
            }
        }
        for w in clusters.windows(2) {
            self.set_fat_entry(w[0], w[1])?;
        }
        if let Some(&last) = clusters.last() {
            let eoc = self.end_of_chain_value();
            self.set_fat_entry(last, eoc)?;
            // The chain is on disk before anything points at it.
            self.flush_fat()?;
            self.update_fsinfo(-(clusters.len() as i64), Some(last))?;
        }
        Ok(clusters)
    }

    /// Free the chain starting at `first`. Stops at the end of chain, at a free or bad cluster,
    /// or after as many clusters as the volume has (a loop).
    fn free_chain(&mut self, first: u32) -> Result<(), FsError> {
        let mut c = first;
        let mut freed = 0i64;
        for _ in 0..=self.geo.cluster_count {
            if c < 2 || c > self.geo.max_cluster() {
                break;
            }
            let next = self.fat_entry(c)?;
            if next == 0 {
                break;
            }
            self.set_fat_entry(c, 0)?;
            freed += 1;
            if next >= self.geo.fat_type.bad_cluster() {
                break;
            }
            c = next;
        }
        self.flush_fat()?;
        self.update_fsinfo(freed, None)
    }

    /// Cluster number `index` (0-based) of the chain at `first`. The caller has checked the chain
    /// is at least that long (through `open_file`).
    fn nth_cluster(&mut self, first: u32, index: u64, what: &str) -> Result<u32, FsError> {
        let mut c = first;
        for _ in 0..index {
            c = self.next_cluster(c, what)?.ok_or_else(|| {
                FsError::Corrupt(format!(
                    "the cluster chain of {} is shorter than its size",
                    what
                ))
            })?;
        }
        Ok(c)
    }

    /// Keep the first `keep` clusters of the chain at `first`, freeing the rest.
    fn cut_chain(&mut self, first: u32, keep: u64, what: &str) -> Result<(), FsError> {
        if first == 0 {
            return Ok(());
        }
        if keep == 0 {
            return self.free_chain(first);
        }
        let last = self.nth_cluster(first, keep - 1, what)?;
        let after = self.fat_entry(last)?;
        if after >= self.geo.fat_type.end_of_chain() {
            return Ok(());
        }
        let eoc = self.end_of_chain_value();
        self.set_fat_entry(last, eoc)?;
        self.flush_fat()?;
        if (2..=self.geo.max_cluster()).contains(&after) {
            self.free_chain(after)?;
        }
        Ok(())
    }

    /// Volume sector and byte offset of directory slot `slot`.
    fn slot_location(data: &DirData, slot: usize) -> Result<(u64, usize), FsError> {
        let byte = (slot * DIR_ENTRY_BYTES) as u64;
        let (lba, _) = data.runs.lookup(byte / SECTOR).ok_or_else(|| {
            FsError::Corrupt(format!("directory slot {} is outside the directory", slot))
        })?;
        Ok((lba, (byte % SECTOR) as usize))
    }

    /// Write `entries` into consecutive slots from `first_slot` (read-modify-write per sector).
    fn write_slots(
        &mut self,
        data: &DirData,
        first_slot: usize,
        entries: &[[u8; DIR_ENTRY_BYTES]],
    ) -> Result<(), FsError> {
        // The last sector first: a new name's short entry (which alone is a valid entry) lands
        // before the long-name entries in front of it, so a power cut between two sectors never
        // leaves long-name entries without their short entry.
        let mut sectors: Vec<(u64, [u8; SECTOR_BYTES])> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let (lba, at) = Self::slot_location(data, first_slot + i)?;
            if sectors.last().map(|s| s.0) != Some(lba) {
                let mut sector = [0u8; SECTOR_BYTES];
                self.dev.read_sectors(lba, &mut sector)?;
                sectors.push((lba, sector));
            }
            if let Some((_, sector)) = sectors.last_mut() {
                sector[at..at + DIR_ENTRY_BYTES].copy_from_slice(e);
            }
        }
        for (lba, sector) in sectors.iter().rev() {
            self.dev.write_sectors(*lba, sector)?;
        }
        Ok(())
    }

    /// Mark the slots `first..=last` deleted.
    fn erase_slots(&mut self, data: &DirData, first: usize, last: usize) -> Result<(), FsError> {
        for slot in first..=last {
            let at = slot * DIR_ENTRY_BYTES;
            let mut e = [0u8; DIR_ENTRY_BYTES];
            if let Some(old) = data.bytes.get(at..at + DIR_ENTRY_BYTES) {
                e.copy_from_slice(old);
            }
            e[0] = 0xE5;
            self.write_slots(data, slot, &[e])?;
        }
        Ok(())
    }

    /// Rewrite the short entry of `entry` (in directory `parent`) with `f` applied.
    fn update_entry(
        &mut self,
        parent: DirRef,
        parent_path: &str,
        entry: &RawEntry,
        f: impl FnOnce(&mut [u8; DIR_ENTRY_BYTES]),
    ) -> Result<(), FsError> {
        let data = self.load_dir(parent, parent_path)?;
        let mut raw = entry.raw;
        f(&mut raw);
        self.write_slots(&data, entry.slot, &[raw])
    }

    /// Add one cluster to directory `dir` (cluster directories only).
    fn extend_dir(&mut self, dir: DirRef, dir_path: &str) -> Result<(), FsError> {
        let DirRef::Clusters(first) = dir else {
            return Err(FsError::Unsupported(String::from(
                "the root directory is full (a FAT12/16 root directory has a fixed size)",
            )));
        };
        let data = self.load_dir(dir, dir_path)?;
        if data.bytes.len() as u64 + self.geo.cluster_bytes() > MAX_DIR_BYTES {
            return Err(FsError::Unsupported(format!(
                "directory {} is full",
                dir_path
            )));
        }
        let clusters = (data.bytes.len() as u64) / self.geo.cluster_bytes();
        let last = self.nth_cluster(first, clusters.saturating_sub(1), dir_path)?;
        let new = self.allocate_chain(1, true)?;
        self.set_fat_entry(last, new[0])?;
        self.flush_fat()
    }

    /// Write a new entry named `long` (short entry template `short_entry`, whose name field is
    /// filled in here) into directory `dir`.
    fn add_entry(
        &mut self,
        dir: DirRef,
        dir_path: &str,
        long: &str,
        short_entry: [u8; DIR_ENTRY_BYTES],
    ) -> Result<(), FsError> {
        check_long_name(long)?;
        for _attempt in 0..4 {
            let data = self.load_dir(dir, dir_path)?;
            let mut all = self.name_entries(&data, dir_path, long, short_entry, None)?;
            if let Some(slot) = find_free_slots(&data.bytes, all.len()) {
                // Slots past the end marker may hold leftovers: make sure the end stays marked.
                let after = slot + all.len();
                let end = data
                    .bytes
                    .chunks_exact(DIR_ENTRY_BYTES)
                    .position(|e| e[0] == 0);
                if let Some(end) = end {
                    let next_first = data.bytes.get(after * DIR_ENTRY_BYTES).copied();
                    if after > end && next_first.is_some_and(|b| b != 0) {
                        all.push([0u8; DIR_ENTRY_BYTES]);
                    }
                }
                return self.write_slots(&data, slot, &all);
            }
            self.extend_dir(dir, dir_path)?;
        }
        Err(FsError::Unsupported(format!(
            "no room for a new entry in {}",
            dir_path
        )))
    }

    /// The entries that name `long` (its long-name entries, then `short_entry` with the short name
    /// filled in) in the directory holding `data`; refused if the name is taken by an entry other
    /// than the one at slot `own` (the entry being renamed).
    fn name_entries(
        &self,
        data: &DirData,
        dir_path: &str,
        long: &str,
        mut short_entry: [u8; DIR_ENTRY_BYTES],
        own: Option<usize>,
    ) -> Result<Vec<[u8; DIR_ENTRY_BYTES]>, FsError> {
        let (entries, _) = parse_dir(&data.bytes, self.geo.fat_type);
        if let Some(e) = entries
            .iter()
            .find(|e| Some(e.slot) != own && (names_equal(&e.name, long) || names_equal(&e.short_name, long)))
        {
            return Err(FsError::Unsupported(format!(
                "{}/{} already exists",
                dir_path.trim_end_matches('/'),
                e.name
            )));
        }
        let taken = |n: &[u8; 11]| {
            data.bytes
                .chunks_exact(DIR_ENTRY_BYTES)
                .enumerate()
                .take_while(|(_, e)| e[0] != 0)
                .any(|(i, e)| Some(i) != own && e[0] != 0xE5 && e[11] & 0x3F != ATTR_LONG_NAME && &e[0..11] == n)
        };
        let (short, case_bits, need_lfn) = make_short_name(long, &taken);
        short_entry[0..11].copy_from_slice(&short);
        short_entry[12] = case_bits;
        let mut all = if need_lfn {
            lfn_entries(long, &short)
        } else {
            Vec::new()
        };
        all.push(short_entry);
        Ok(all)
    }

    fn new_short_entry(&self, attr: u8, cluster: u32, size: u32) -> [u8; DIR_ENTRY_BYTES] {
        let mut e = [0u8; DIR_ENTRY_BYTES];
        e[11] = attr;
        let (date, time) = (self.clock.date(), self.clock.time());
        e[14..16].copy_from_slice(&time.to_le_bytes());
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        set_entry_cluster(&mut e, cluster, self.geo.fat_type);
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    fn stamp_modified(&self, e: &mut [u8; DIR_ENTRY_BYTES]) {
        let (date, time) = (self.clock.date(), self.clock.time());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
    }

    /// The directory at `path` (which must exist and be a directory) and its spelling.
    fn resolve_dir(&mut self, path: &str) -> Result<(DirRef, String), FsError> {
        let r = self.resolve(path)?;
        match r.entry {
            None => Ok((self.root_ref(), r.spelled)),
            Some(e) if e.is_dir() => Ok((self.dir_ref_of(&e), r.spelled)),
            Some(_) => Err(FsError::NotADirectory { path: r.spelled }),
        }
    }

    /// Create an empty file at `path` (its directory must exist, the name must be new).
    pub fn create_file(&mut self, path: &str) -> Result<File, FsError> {
        let (parent, name) = split_parent(path)?;
        let (dir, dir_path) = self.resolve_dir(&parent)?;
        let entry = self.new_short_entry(ATTR_ARCHIVE, 0, 0);
        self.add_entry(dir, &dir_path, name, entry)?;
        self.open_file(path)
    }

    /// Create an empty directory at `path`.
    pub fn create_dir(&mut self, path: &str) -> Result<(), FsError> {
        let (parent, name) = split_parent(path)?;
        let (dir, dir_path) = self.resolve_dir(&parent)?;
        check_long_name(name)?;
        if let Ok(r) = self.resolve(path) {
            return Err(FsError::Unsupported(format!(
                "{} already exists",
                r.spelled
            )));
        }
        let cluster = self.allocate_chain(1, true)?[0];
        // `..` of a directory in the root says cluster 0, also on FAT32.
        let parent_cluster = match dir {
            DirRef::Clusters(c) if dir != self.root_ref() => c,
            _ => 0,
        };
        let mut dot = self.new_short_entry(ATTR_DIRECTORY, cluster, 0);
        dot[0..11].copy_from_slice(b".          ");
        let mut dotdot = self.new_short_entry(ATTR_DIRECTORY, parent_cluster, 0);
        dotdot[0..11].copy_from_slice(b"..         ");
        let mut first = vec![0u8; SECTOR_BYTES];
        first[0..32].copy_from_slice(&dot);
        first[32..64].copy_from_slice(&dotdot);
        self.dev
            .write_sectors(self.geo.cluster_lba(cluster), &first)?;
        let entry = self.new_short_entry(ATTR_DIRECTORY, cluster, 0);
        if let Err(e) = self.add_entry(dir, &dir_path, name, entry) {
            self.free_chain(cluster)?;
            return Err(e);
        }
        Ok(())
    }

    /// Make the file at `path` `new_size_bytes` long: growing allocates clusters (contiguous when
    /// the volume allows), shrinking frees them. With `zero_fill`, bytes added past the old end
    /// read as zeros; without, they hold whatever the clusters held (cheaper for large slack
    /// that the image layer will overwrite before it reads it).
    pub fn set_len(
        &mut self,
        path: &str,
        new_size_bytes: u64,
        zero_fill: bool,
    ) -> Result<File, FsError> {
        self.set_len_with_tail(path, new_size_bytes, zero_fill, &[])
    }

    /// [`FatVolume::set_len`] that grows the file with `tail` (at most one sector) as its last
    /// bytes: they are written into the new clusters after these are linked and before the
    /// directory entry takes the new size, so the file is never seen at its new length without
    /// them (a VHD's footer, which readers look for at the end of the file).
    pub fn set_len_with_tail(
        &mut self,
        path: &str,
        new_size_bytes: u64,
        zero_fill: bool,
        tail: &[u8],
    ) -> Result<File, FsError> {
        if new_size_bytes > MAX_FILE_BYTES {
            return Err(FsError::Unsupported(format!(
                "FAT files cannot be larger than 4 GiB - 1 bytes ({} asked for {})",
                path, new_size_bytes
            )));
        }
        let current = self.open_file(path)?;
        let Resolved {
            entry,
            parent,
            parent_path,
            spelled,
        } = self.resolve(path)?;
        let entry = entry.ok_or_else(|| FsError::IsADirectory {
            path: spelled.clone(),
        })?;
        let cluster_bytes = self.geo.cluster_bytes();
        let old_size = current.size_bytes;
        let old_clusters = old_size.div_ceil(cluster_bytes);
        let new_clusters = new_size_bytes.div_ceil(cluster_bytes);
        let fat_type = self.geo.fat_type;
        let first = entry.first_cluster;

        let tail_at = new_size_bytes.wrapping_sub(tail.len() as u64);
        if !tail.is_empty()
            && (tail.len() != SECTOR_BYTES || tail_at % SECTOR != 0 || tail_at < old_size.next_multiple_of(SECTOR))
        {
            return Err(FsError::Unsupported(format!(
                "{}: a tail of {} bytes at {} is not one new sector",
                spelled,
                tail.len(),
                tail_at
            )));
        }
        if new_clusters <= old_clusters {
            if zero_fill && new_size_bytes > old_size {
                self.zero_file_range(&current, old_size, new_size_bytes)?;
            }
            if !tail.is_empty() {
                let c = self.nth_cluster(first, tail_at / cluster_bytes, &spelled)?;
                self.write_tail(c, tail_at, tail)?;
            }
            let mut raw = entry.raw;
            raw[28..32].copy_from_slice(&(new_size_bytes as u32).to_le_bytes());
            if new_clusters == 0 {
                set_entry_cluster(&mut raw, 0, fat_type);
            }
            self.stamp_modified(&mut raw);
            self.update_entry(parent, &parent_path, &entry, |e| *e = raw)?;
            self.cut_chain(first, new_clusters, &spelled)?;
        } else {
            self.cut_chain(first, old_clusters, &spelled)?;
            if zero_fill {
                let old_end = old_clusters * cluster_bytes;
                self.zero_file_range(&current, old_size, old_end)?;
            }
            let added = self.allocate_chain(new_clusters - old_clusters, zero_fill)?;
            let head = added[0];
            let new_first = if old_clusters == 0 {
                head
            } else {
                let last = self.nth_cluster(first, old_clusters - 1, &spelled)?;
                self.set_fat_entry(last, head)?;
                self.flush_fat()?;
                first
            };
            if !tail.is_empty() {
                let index = tail_at / cluster_bytes;
                let c = match index.checked_sub(old_clusters) {
                    Some(i) => added[i as usize],
                    None => self.nth_cluster(first, index, &spelled)?,
                };
                self.write_tail(c, tail_at, tail)?;
            }
            let mut raw = entry.raw;
            raw[28..32].copy_from_slice(&(new_size_bytes as u32).to_le_bytes());
            set_entry_cluster(&mut raw, new_first, fat_type);
            self.stamp_modified(&mut raw);
            self.update_entry(parent, &parent_path, &entry, |e| *e = raw)?;
        }
        self.flush_fat()?;
        self.open_file(path)
    }

    /// Write the sector `tail` at file byte `at`, which lies in cluster `cluster`.
    fn write_tail(&mut self, cluster: u32, at: u64, tail: &[u8]) -> Result<(), FsError> {
        let lba = self.geo.cluster_lba(cluster) + (at % self.geo.cluster_bytes()) / SECTOR;
        self.dev.write_sectors(lba, tail)?;
        Ok(())
    }

    /// Zero bytes `from..to` of a file, within the sectors its extents already cover.
    fn zero_file_range(&mut self, file: &File, from: u64, to: u64) -> Result<(), FsError> {
        let mut pos = from;
        let mut sector = [0u8; SECTOR_BYTES];
        while pos < to {
            let file_sector = pos / SECTOR;
            let Some((lba, _)) = file.extents.lookup(file_sector) else {
                // Past the sectors the file's bytes use, but inside its last cluster.
                let cluster_bytes = self.geo.cluster_bytes();
                let Some(last) = file.extents.extents.last() else {
                    break;
                };
                let end_lba = last.lba + last.sectors;
                let cluster_end =
                    (file.extents.total_sectors() * SECTOR).div_ceil(cluster_bytes) * cluster_bytes;
                let zeros = [0u8; SECTOR_BYTES];
                let mut lba = end_lba + (file_sector - file.extents.total_sectors());
                let mut p = file_sector * SECTOR;
                while p < to.min(cluster_end) {
                    self.dev.write_sectors(lba, &zeros)?;
                    lba += 1;
                    p += SECTOR;
                }
                break;
            };
            let within = (pos % SECTOR) as usize;
            let n = ((SECTOR as usize) - within).min((to - pos) as usize);
            self.dev.read_sectors(lba, &mut sector)?;
            sector[within..within + n].fill(0);
            self.dev.write_sectors(lba, &sector)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Delete a file, or an empty directory.
    pub fn delete(&mut self, path: &str) -> Result<(), FsError> {
        let Resolved {
            entry,
            parent,
            parent_path,
            spelled,
        } = self.resolve(path)?;
        let Some(entry) = entry else {
            return Err(FsError::Unsupported(String::from(
                "the root directory cannot be deleted",
            )));
        };
        if entry.is_dir() {
            let inside = self.read_dir(self.dir_ref_of(&entry), &spelled)?;
            if !inside.is_empty() {
                return Err(FsError::Unsupported(format!(
                    "directory {} is not empty",
                    spelled
                )));
            }
        }
        let data = self.load_dir(parent, &parent_path)?;
        self.erase_slots(&data, entry.first_slot, entry.slot)?;
        if entry.first_cluster != 0 {
            self.free_chain(entry.first_cluster)?;
        }
        Ok(())
    }

    /// Give the file at `target` the contents of the file at `source`, which goes. `source`'s
    /// entry is removed first (its clusters, referenced by nothing for a moment, would be lost
    /// clusters if the power went then), then `target`'s short entry takes them and their size in
    /// one write, then `target`'s old clusters are freed: no moment has two entries sharing
    /// clusters, and `target` holds the old or the new contents.
    pub fn take_contents(&mut self, target: &str, source: &str) -> Result<(), FsError> {
        let src = self.resolve(source)?;
        let dst = self.resolve(target)?;
        let (Some(se), Some(de)) = (src.entry.clone(), dst.entry.clone()) else {
            return Err(FsError::IsADirectory { path: String::from("/") });
        };
        if se.is_dir() || de.is_dir() {
            return Err(FsError::IsADirectory { path: if se.is_dir() { src.spelled } else { dst.spelled } });
        }
        if src.parent == dst.parent && se.slot == de.slot {
            return Ok(());
        }
        let data = self.load_dir(src.parent, &src.parent_path)?;
        self.erase_slots(&data, se.first_slot, se.slot)?;
        let mut raw = de.raw;
        raw[28..32].copy_from_slice(&se.raw[28..32]);
        set_entry_cluster(&mut raw, se.first_cluster, self.geo.fat_type);
        self.stamp_modified(&mut raw);
        self.update_entry(dst.parent, &dst.parent_path, &de, |e| *e = raw)?;
        if de.first_cluster != 0 {
            self.free_chain(de.first_cluster)?;
        }
        Ok(())
    }

    /// Rename or move a file or directory. The target's directory must exist and the target
    /// name must be free (a change of case only is allowed).
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        let Resolved {
            entry,
            parent,
            parent_path,
            spelled,
        } = self.resolve(from)?;
        let Some(entry) = entry else {
            return Err(FsError::Unsupported(String::from(
                "the root directory cannot be renamed",
            )));
        };
        let (to_parent_path, to_name) = split_parent(to)?;
        let (to_dir, to_dir_path) = self.resolve_dir(&to_parent_path)?;
        check_long_name(to_name)?;
        if entry.is_dir() {
            let inside =
                to_dir_path == spelled || to_dir_path.starts_with(&format!("{}/", spelled));
            if inside {
                return Err(FsError::Unsupported(format!(
                    "{} cannot be moved inside itself ({})",
                    spelled, to
                )));
            }
        }
        // The old entry goes first when the target is the same entry (a change of case), so
        // the new one does not collide with it; otherwise the new entry is written first.
        let same_entry = to_dir == parent
            && self
                .resolve(to)
                .ok()
                .and_then(|r| r.entry)
                .is_some_and(|e| e.slot == entry.slot);
        // Like Windows, a rename keeps the entry's times.
        let template = entry.raw;
        if to_dir == parent {
            // In place when the new entries fit in the old slots: the short entry (name, clusters
            // and size in one slot) is rewritten first, then the slots before it are freed; one
            // sector write when they share a sector. A power cut leaves the old name or the new
            // one, never two entries sharing clusters.
            let data = self.load_dir(parent, &parent_path)?;
            let all = self.name_entries(&data, &to_dir_path, to_name, template, Some(entry.slot))?;
            let old_count = entry.slot + 1 - entry.first_slot;
            if all.len() <= old_count {
                let start = entry.slot + 1 - all.len();
                let mut freed = Vec::new();
                for s in entry.first_slot..start {
                    let mut e = [0u8; DIR_ENTRY_BYTES];
                    e.copy_from_slice(&data.bytes[s * DIR_ENTRY_BYTES..(s + 1) * DIR_ENTRY_BYTES]);
                    e[0] = 0xE5;
                    freed.push(e);
                }
                freed.extend_from_slice(&all);
                return self.write_slots(&data, entry.first_slot, &freed);
            }
        }
        if same_entry {
            let data = self.load_dir(parent, &parent_path)?;
            self.erase_slots(&data, entry.first_slot, entry.slot)?;
            if let Err(e) = self.add_entry(to_dir, &to_dir_path, to_name, template) {
                // Put the old entries back as they were.
                let mut old = Vec::new();
                for slot in entry.first_slot..=entry.slot {
                    let at = slot * DIR_ENTRY_BYTES;
                    let mut raw = [0u8; DIR_ENTRY_BYTES];
                    if let Some(b) = data.bytes.get(at..at + DIR_ENTRY_BYTES) {
                        raw.copy_from_slice(b);
                    }
                    old.push(raw);
                }
                self.write_slots(&data, entry.first_slot, &old)?;
                return Err(e);
            }
            return Ok(());
        }
        self.add_entry(to_dir, &to_dir_path, to_name, template)?;
        let data = self.load_dir(parent, &parent_path)?;
        self.erase_slots(&data, entry.first_slot, entry.slot)?;
        if entry.is_dir() && to_dir != parent && entry.first_cluster != 0 {
            let new_parent_cluster = match to_dir {
                DirRef::Clusters(c) if to_dir != self.root_ref() => c,
                _ => 0,
            };
            let moved = DirRef::Clusters(entry.first_cluster);
            let data = self.load_dir(moved, to)?;
            let dotdot = data
                .bytes
                .chunks_exact(DIR_ENTRY_BYTES)
                .position(|e| &e[0..11] == b"..         ");
            if let Some(slot) = dotdot {
                let mut raw = [0u8; DIR_ENTRY_BYTES];
                raw.copy_from_slice(
                    &data.bytes[slot * DIR_ENTRY_BYTES..(slot + 1) * DIR_ENTRY_BYTES],
                );
                set_entry_cluster(&mut raw, new_parent_cluster, self.geo.fat_type);
                self.write_slots(&data, slot, &[raw])?;
            }
        }
        Ok(())
    }

    /// Write `data` into the file at `offset_bytes`, inside its current size (no metadata
    /// change: the bytes go where the extent list says).
    pub fn write_file(
        &mut self,
        file: &File,
        offset_bytes: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        let end = offset_bytes.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > file.size_bytes) {
            return Err(FsError::Unsupported(format!(
                "writing {} bytes at offset {} goes past the end of {} ({} bytes); grow it first",
                data.len(),
                offset_bytes,
                file.path,
                file.size_bytes
            )));
        }
        let mut done = 0usize;
        let mut sector = [0u8; SECTOR_BYTES];
        while done < data.len() {
            let pos = offset_bytes + done as u64;
            let (lba, run) = file.extents.lookup(pos / SECTOR).ok_or_else(|| {
                FsError::Corrupt(format!("{}: no extent for byte {}", file.path, pos))
            })?;
            let within = (pos % SECTOR) as usize;
            let left = data.len() - done;
            if within == 0 && left >= SECTOR_BYTES {
                let sectors = run.min((left / SECTOR_BYTES) as u64).min(128);
                let bytes = sectors as usize * SECTOR_BYTES;
                self.dev.write_sectors(lba, &data[done..done + bytes])?;
                done += bytes;
            } else {
                let n = (SECTOR_BYTES - within).min(left);
                self.dev.read_sectors(lba, &mut sector)?;
                sector[within..within + n].copy_from_slice(&data[done..done + n]);
                self.dev.write_sectors(lba, &sector)?;
                done += n;
            }
        }
        Ok(())
    }
}

/// First slot of `count` consecutive free slots (deleted, or at/after the end marker).
fn find_free_slots(bytes: &[u8], count: usize) -> Option<usize> {
    let mut run = 0usize;
    let mut past_end = false;
    for (slot, e) in bytes.chunks_exact(DIR_ENTRY_BYTES).enumerate() {
        past_end |= e[0] == 0;
        if past_end || e[0] == 0xE5 {
            run += 1;
            if run == count {
                return Some(slot + 1 - count);
            }
        } else {
            run = 0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(long: &str, taken: &[&[u8; 11]]) -> (String, u8, bool) {
        let (n, bits, lfn) = make_short_name(long, &|n| taken.iter().any(|t| *t == n));
        (String::from_utf8(n.to_vec()).unwrap(), bits, lfn)
    }

    #[test]
    fn short_names_like_windows_makes_them() {
        assert_eq!(short("README.TXT", &[]), ("README  TXT".into(), 0, false));
        assert_eq!(
            short("readme.txt", &[]),
            ("README  TXT".into(), NT_LOWER_BASE | NT_LOWER_EXT, false)
        );
        assert_eq!(
            short("readme.TXT", &[]),
            ("README  TXT".into(), NT_LOWER_BASE, false)
        );
        assert_eq!(short("ReadMe.txt", &[]), ("README  TXT".into(), 0, true));
        assert_eq!(
            short("Windows XP.vhd", &[]),
            ("WINDOW~1VHD".into(), 0, true)
        );
        assert_eq!(
            short("Windows XP.vhd", &[b"WINDOW~1VHD"]),
            ("WINDOW~2VHD".into(), 0, true)
        );
        assert_eq!(short("a+b=c.tar.gz", &[]), ("A_B_CT~1GZ ".into(), 0, true));
        assert_eq!(short(".bashrc", &[]), ("BASHRC~1   ".into(), 0, true));
        assert_eq!(short("ünï.img", &[]), ("_N_~1   IMG".into(), 0, true));
        assert_eq!(
            short("README.TXT", &[b"README  TXT"]),
            ("README~1TXT".into(), 0, true)
        );
        let many: Vec<[u8; 11]> = (1..=9)
            .map(|n| {
                let mut a = *b"LONGNA~1BIN";
                a[7] = b'0' + n;
                a
            })
            .collect();
        let refs: Vec<&[u8; 11]> = many.iter().collect();
        assert_eq!(
            short("longname file.bin", &refs),
            ("LONGN~10BIN".into(), 0, true)
        );
    }

    #[test]
    fn long_name_checks() {
        assert!(check_long_name("Windows XP (SP3).vhd").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "x?",
            "trailing.",
            "trailing ",
            "tab\t",
        ] {
            assert!(check_long_name(bad).is_err(), "{:?}", bad);
        }
        assert!(check_long_name(&"x".repeat(255)).is_ok());
        assert!(check_long_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn lfn_entries_round_trip_through_the_reader() {
        let long = "A name of exactly twenty-six";
        let short = *b"ANAMEO~1   ";
        let mut dir = Vec::new();
        for e in lfn_entries(long, &short) {
            dir.extend_from_slice(&e);
        }
        let mut s = [0u8; 32];
        s[0..11].copy_from_slice(&short);
        s[11] = ATTR_ARCHIVE;
        dir.extend_from_slice(&s);
        let (entries, _) = parse_dir(&dir, FatType::Fat16);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, long);
        assert_eq!(entries[0].first_slot, 0);
        assert_eq!(entries[0].slot, 3);
    }

    #[test]
    fn timestamps_encode_and_clamp() {
        let t = FatTimestamp {
            year: 2026,
            month: 11,
            day: 26,
            hour: 13,
            minute: 45,
            second: 31,
        };
        assert_eq!(t.date(), (46 << 9) | (11 << 5) | 26);
        assert_eq!(t.time(), (13 << 11) | (45 << 5) | 15);
        let wild = FatTimestamp {
            year: 1970,
            month: 0,
            day: 40,
            hour: 99,
            minute: 99,
            second: 99,
        };
        assert_eq!(wild.date(), (1 << 5) | 31);
        assert_eq!(wild.time(), (23 << 11) | (59 << 5) | 29);
    }

    #[test]
    fn free_slot_search() {
        let mut dir = vec![0u8; 32 * 8];
        for slot in [0usize, 1, 3, 4] {
            dir[slot * 32] = b'A';
        }
        dir[2 * 32] = 0xE5;
        assert_eq!(find_free_slots(&dir, 1), Some(2));
        assert_eq!(find_free_slots(&dir, 2), Some(5));
        assert_eq!(find_free_slots(&dir, 3), Some(5));
        assert_eq!(find_free_slots(&dir, 4), None);
    }
}
