//! Host filesystems. Each reader opens a path and returns a [`File`] whose [`ExtentList`] maps
//! file offsets to sectors of the volume. That list is what the INT 13h engine uses to reach an
//! image file's data, so it must be exact.
//!
//! Conventions shared by every reader:
//! - A filesystem is opened over a `BlockDevice` that is the *volume* (a partition window);
//!   extents are in volume-relative 512-byte sectors. `ExtentList::to_host(partition_start_lba)`
//!   turns them into host-disk LBAs.
//! - Paths use `/` or `\`, are absolute from the volume root, and match case-insensitively.
//! - Corrupt structures are errors, never panics or endless loops.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::block::{BlockDevice, BlockError};
use alloc::format;

pub mod exfat;
pub mod ext;
pub mod fat;
pub mod inplace;
pub mod ntfs;
pub mod volume;

/// One run of a file: `sectors` sectors of the file starting at file sector `file_sector` are
/// stored contiguously starting at volume sector `lba`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub file_sector: u64,
    pub lba: u64,
    pub sectors: u64,
}

/// The runs of a file in file order, adjacent runs merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentList {
    pub extents: Vec<Extent>,
}

impl ExtentList {
    /// Append a run, merging it into the previous one when both are contiguous.
    pub fn push(&mut self, lba: u64, sectors: u64) {
        let file_sector = self.total_sectors();
        if let Some(last) = self.extents.last_mut() {
            if last.lba + last.sectors == lba {
                last.sectors += sectors;
                return;
            }
        }
        self.extents.push(Extent { file_sector, lba, sectors });
    }

    pub fn total_sectors(&self) -> u64 {
        self.extents.last().map(|e| e.file_sector + e.sectors).unwrap_or(0)
    }

    /// Volume sector holding file sector `file_sector`, and how many sectors follow it
    /// contiguously (including itself). Binary search: the same cost for 1 or 10 000 runs.
    pub fn lookup(&self, file_sector: u64) -> Option<(u64, u64)> {
        let i = match self.extents.binary_search_by(|e| e.file_sector.cmp(&file_sector)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let e = &self.extents[i];
        let into = file_sector - e.file_sector;
        if into < e.sectors {
            Some((e.lba + into, e.sectors - into))
        } else {
            None
        }
    }

    /// The same runs shifted from volume sectors to host-disk LBAs.
    pub fn to_host(&self, partition_start_lba: u64) -> ExtentList {
        ExtentList {
            extents: self
                .extents
                .iter()
                .map(|e| Extent { lba: e.lba + partition_start_lba, ..*e })
                .collect(),
        }
    }

    /// File sectors `first_sector..first_sector + sectors` as a file of their own (a boot image
    /// inside an ISO). Stops early where the file has no more sectors.
    pub fn slice(&self, first_sector: u64, sectors: u64) -> ExtentList {
        let mut out = ExtentList::default();
        let mut at = first_sector;
        let end = first_sector.saturating_add(sectors);
        while at < end {
            let Some((lba, run)) = self.lookup(at) else { break };
            let n = run.min(end - at);
            out.push(lba, n);
            at += n;
        }
        out
    }

    /// The file's sectors as LBA ranges, sorted, for the write check of invariant 1 (docs/architecture.md).
    pub fn lba_index(&self) -> LbaIndex {
        let mut ranges: Vec<(u64, u64)> = self.extents.iter().map(|e| (e.lba, e.lba + e.sectors)).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        LbaIndex { ranges: merged }
    }
}

/// Which host sectors belong to a file, built once (at boot) so that the check on every write
/// is a binary search, whatever the number of fragments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbaIndex {
    /// Half-open `start..end` LBA ranges, sorted and merged.
    ranges: Vec<(u64, u64)>,
}

impl LbaIndex {
    /// True when every sector of `lba..lba+sectors` belongs to the file (invariant 1, docs/architecture.md).
    pub fn contains(&self, lba: u64, sectors: u64) -> bool {
        let Some(end) = lba.checked_add(sectors) else { return false };
        let i = self.ranges.partition_point(|r| r.0 <= lba);
        i > 0 && end <= self.ranges[i - 1].1
    }
}

/// Loop detection for a walk along "next" links (FAT cluster chains) in O(1) memory: Brent's
/// algorithm. Feed it every element the walk visits, in order; it answers `true` at the first
/// element that proves the walk has entered a cycle. A chain whose first repeat comes after
/// `distinct` distinct elements is caught within `3 * distinct` steps, so a walk that keeps a
/// record per step (the extent list) stays bounded by the chain's real length, not by the size a
/// directory entry claims (docs/robustness.md, "Walks and allocation checks").
#[derive(Clone, Debug)]
pub struct LoopCheck {
    /// The element the walk is compared with; moved to the walk's position at every power of two.
    saved: Option<u64>,
    /// Steps since `saved` was moved, and the length of the current stretch.
    since_saved: u64,
    stretch: u64,
}

impl Default for LoopCheck {
    fn default() -> Self {
        LoopCheck { saved: None, since_saved: 0, stretch: 1 }
    }
}

impl LoopCheck {
    /// Record the walk's next element; `true` when it repeats one seen before (a cycle).
    pub fn visit(&mut self, element: u64) -> bool {
        if self.saved == Some(element) {
            return true;
        }
        if self.saved.is_none() || self.since_saved == self.stretch {
            self.saved = Some(element);
            self.since_saved = 0;
            self.stretch = self.stretch.saturating_mul(2);
        }
        self.since_saved += 1;
        false
    }
}

/// A file's sectors in a filesystem's allocation units (clusters, blocks), for the allocation
/// checks before boot ([`volume::Volume::check_file_allocation`]): one half-open range per extent,
/// sorted, none overlapping.
pub(crate) struct UnitRanges {
    pub ranges: Vec<(u64, u64)>,
}

impl UnitRanges {
    /// Unit `first_unit` starts at volume sector `base_lba`, each unit is `sectors_per_unit`
    /// sectors, and units end before `units_end`. A file outside them, or using a unit twice,
    /// is refused with `repair` as the advice.
    pub fn of_file(
        file: &File,
        base_lba: u64,
        sectors_per_unit: u64,
        first_unit: u64,
        units_end: u64,
        unit: &str,
        repair: &str,
    ) -> Result<UnitRanges, FsError> {
        let mut ranges = Vec::with_capacity(file.extents.extents.len());
        for e in &file.extents.extents {
            let rel = e.lba.checked_sub(base_lba).filter(|_| e.sectors > 0);
            let range = rel.and_then(|rel| {
                let end = rel.checked_add(e.sectors)?.div_ceil(sectors_per_unit) + first_unit;
                Some((rel / sectors_per_unit + first_unit, end)).filter(|_| end <= units_end)
            });
            ranges.push(range.ok_or_else(|| {
                allocation_refusal(file, format!("sectors {}+{} lie outside the {}s of the volume", e.lba, e.sectors, unit), repair)
            })?);
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                return Err(allocation_refusal(file, format!("it uses {} {} twice", unit, w[1].0), repair));
            }
        }
        Ok(UnitRanges { ranges })
    }

    /// The first of the file's units inside `from..to`, if any.
    pub fn overlap(&self, from: u64, to: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.1 <= from);
        self.ranges.get(i).filter(|r| r.0 < to).map(|r| r.0.max(from))
    }
}

/// The refusal of a file whose extents the filesystem's allocation state contradicts: names the
/// file and the tool that repairs the host partition.
pub(crate) fn allocation_refusal(file: &File, detail: String, repair: &str) -> FsError {
    FsError::Corrupt(format!("{}: {}; run {} on the host partition before using it", file.path, detail, repair))
}

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
}

/// An open file: its size and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// The path as the directory entries spell it (original case).
    pub path: String,
    pub size_bytes: u64,
    pub extents: ExtentList,
}

/// A name inside a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
    pub size_bytes: u64,
}

/// Filesystem errors, each naming what it was looking at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    Block(BlockError),
    /// Not this filesystem, or a boot sector/superblock that makes no sense.
    NotRecognized(String),
    NotFound { path: String },
    NotADirectory { path: String },
    IsADirectory { path: String },
    /// The on-disk structures contradict each other (cycle, out-of-volume cluster, ...).
    Corrupt(String),
    /// A valid feature this reader will not handle (compressed NTFS file, ...).
    Unsupported(String),
    /// A metadata change this filesystem cannot make at boot.
    ReadOnly(String),
    NoSpace { needed_bytes: u64 },
}

impl From<BlockError> for FsError {
    fn from(e: BlockError) -> Self {
        FsError::Block(e)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Block(e) => write!(f, "{}", e),
            FsError::NotRecognized(s) => write!(f, "not a filesystem vboot reads: {}", s),
            FsError::NotFound { path } => write!(f, "{} not found", path),
            FsError::NotADirectory { path } => write!(f, "{} is not a directory", path),
            FsError::IsADirectory { path } => write!(f, "{} is a directory, not a file", path),
            FsError::Corrupt(s) => write!(f, "filesystem is damaged: {}", s),
            FsError::Unsupported(s) => write!(f, "unsupported: {}", s),
            FsError::ReadOnly(s) => write!(f, "{}", s),
            FsError::NoSpace { needed_bytes } => {
                write!(f, "not enough free space on the host filesystem ({} bytes needed)", needed_bytes)
            }
        }
    }
}

/// Split a path on `/` and `\`, dropping empty parts and `.`.
pub fn path_components(path: &str) -> impl Iterator<Item = &str> {
    path.split(|c| c == '/' || c == '\\').filter(|p| !p.is_empty() && *p != ".")
}

// Byte access to a file through its extent list, shared by the readers (the transfer itself is
// `inplace`, the same path image files take).

fn in_place_error(file: &File, e: inplace::InPlaceError) -> FsError {
    match e {
        inplace::InPlaceError::Device { error, .. } => FsError::from(error),
        other => FsError::Corrupt(format!("{}: {}", file.path, other)),
    }
}

/// Copy file bytes through an extent list; stops at the end of the file and says how many
/// bytes it copied.
pub fn read_via_extents<D: BlockDevice>(
    dev: &mut D,
    file: &File,
    offset_bytes: u64,
    buf: &mut [u8],
) -> Result<usize, FsError> {
    if offset_bytes >= file.size_bytes {
        return Ok(0);
    }
    let want = (buf.len() as u64).min(file.size_bytes - offset_bytes) as usize;
    inplace::read(dev, &file.extents, offset_bytes, &mut buf[..want]).map_err(|e| in_place_error(file, e))?;
    Ok(want)
}

/// Write file bytes through an extent list; partial sectors are read, patched and rewritten.
pub fn write_via_extents<D: BlockDevice>(dev: &mut D, file: &File, offset_bytes: u64, buf: &[u8]) -> Result<usize, FsError> {
    let end = offset_bytes.checked_add(buf.len() as u64).unwrap_or(u64::MAX);
    if end > file.size_bytes {
        return Err(FsError::Unsupported(format!(
            "{}: a write up to byte {} would pass the end of the file ({} bytes)",
            file.path, end, file.size_bytes
        )));
    }
    inplace::write(dev, &file.extents, None, offset_bytes, buf).map_err(|e| in_place_error(file, e))?;
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_list_slice_spans_fragments() {
        let mut l = ExtentList::default();
        l.push(100, 8);
        l.push(500, 8);
        l.push(900, 8);
        let s = l.slice(6, 12);
        assert_eq!(s.total_sectors(), 12);
        assert_eq!(s.lookup(0), Some((106, 2)));
        assert_eq!(s.lookup(2), Some((500, 8)));
        assert_eq!(s.lookup(10), Some((900, 2)));
        assert_eq!(s.lookup(12), None);
        assert_eq!(l.slice(20, 100).total_sectors(), 4, "stops at the end of the file");
        assert_eq!(l.slice(30, 1).total_sectors(), 0);
    }

    #[test]
    fn extent_list_merges_and_looks_up() {
        let mut l = ExtentList::default();
        l.push(100, 8);
        l.push(108, 8); // contiguous: merged
        l.push(50, 4);
        assert_eq!(l.extents.len(), 2);
        assert_eq!(l.total_sectors(), 20);
        assert_eq!(l.lookup(0), Some((100, 16)));
        assert_eq!(l.lookup(15), Some((115, 1)));
        assert_eq!(l.lookup(16), Some((50, 4)));
        assert_eq!(l.lookup(20), None);
        let index = l.lba_index();
        assert!(index.contains(104, 12));
        assert!(!index.contains(104, 13));
        assert!(index.contains(50, 4));
        assert!(!index.contains(49, 1));
        assert!(!index.contains(54, 1));
        assert_eq!(l.to_host(2048).lookup(16), Some((2098, 4)));
    }

    #[test]
    fn loop_check_finds_cycles_early_and_accepts_chains() {
        // next(i) for a chain of `tail` elements entering a cycle of `cycle` elements.
        fn steps_to_detect(tail: u64, cycle: u64) -> Option<u64> {
            let mut check = LoopCheck::default();
            let mut at = 0u64;
            for step in 0..10_000_000u64 {
                if check.visit(at) {
                    return Some(step);
                }
                at = if at + 1 < tail + cycle { at + 1 } else { tail };
            }
            None
        }
        for (tail, cycle) in [(0, 1), (0, 2), (1, 1), (5, 2), (1000, 3), (3, 1000), (4096, 4096), (100_000, 7)] {
            let steps = steps_to_detect(tail, cycle).expect("cycle found");
            assert!(steps <= 3 * (tail + cycle) + 2, "tail {} cycle {}: {} steps", tail, cycle, steps);
        }
        // A chain without a cycle is never called one.
        let mut check = LoopCheck::default();
        assert!((0..1_000_000u64).all(|i| !check.visit(i)));
    }

    #[test]
    fn path_split() {
        let v: Vec<&str> = path_components("/boot\\grub//grub.cfg").collect();
        assert_eq!(v, ["boot", "grub", "grub.cfg"]);
    }
}
