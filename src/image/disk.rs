//! One block device over a whole chain of images.
//!
//! At open the chain is flattened into a sorted list of runs over the virtual disk: each run
//! says "these sectors come from layer L, file F, byte offset O" (or "zeros", or "inside a
//! compressed grain"). It is built top-down: the leaf maps the whole disk; the ranges it sends
//! to its parent are mapped by the parent, and so on; what reaches past the base reads as zeros.
//! Building costs one table walk per layer (plus, for VHD differencing blocks, one bitmap read
//! per allocated block); a lookup afterwards is one binary search over the runs, so it costs
//! the same for a chain of depth 1 or 64: `log2(runs)` comparisons, where `runs` counts the
//! distinct pieces of the *result*, not the layers.
//!
//! Ranges whose mapping needs an extra read (the bitmap of an allocated VHD differencing block)
//! are left as [`Source::Pending`] at open and resolved on first use: a read resolves what it
//! touches, [`Disk::resolve_all`] everything. So opening costs one table read per layer, not one
//! bitmap read per allocated block, and a resolved lookup is still one binary search.
//!
//! Writes go to the leaf. After a write the runs covering the written allocation units are
//! rebuilt and spliced in, so the map stays exact.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::{ImageError, Layer, Mapping, SECTOR_BYTES};
use crate::block::{BlockDevice, BlockError};

/// Where a run of virtual sectors comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Zero,
    /// `offset_bytes` is the file offset of the run's first sector; the rest follow contiguously.
    Data { layer: u16, file: u16, offset_bytes: u64 },
    /// Not resolved yet: layer `layer` (and possibly those below it) decides, after reading a
    /// bitmap.
    Pending { layer: u16 },
    /// Sectors inside one compressed grain.
    Compressed { layer: u16, file: u16, marker_offset_bytes: u64, grain_start_sector: u64, grain_sectors: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start_sector: u64,
    pub sectors: u64,
    pub source: Source,
}

impl Run {
    fn end(&self) -> u64 {
        self.start_sector + self.sectors
    }
    /// Whether `next` continues this run seamlessly.
    fn joins(&self, next: &Run) -> bool {
        if self.end() != next.start_sector {
            return false;
        }
        match (self.source, next.source) {
            (Source::Zero, Source::Zero) => true,
            (Source::Data { layer: l1, file: f1, offset_bytes: o1 }, Source::Data { layer: l2, file: f2, offset_bytes: o2 }) => {
                l1 == l2 && f1 == f2 && o1 + self.sectors * SECTOR_BYTES == o2
            }
            (Source::Compressed { layer: l1, marker_offset_bytes: m1, .. }, Source::Compressed { layer: l2, marker_offset_bytes: m2, .. }) => l1 == l2 && m1 == m2,
            (Source::Pending { layer: l1 }, Source::Pending { layer: l2 }) => l1 == l2,
            _ => false,
        }
    }
}

/// A chain of images as one disk. `layers[0]` is the leaf, the last one the base.
pub struct Disk {
    layers: Vec<Box<dyn Layer>>,
    runs: Vec<Run>,
    /// Deferred runs resolved so far. The main list never changes on resolution, so resolving
    /// costs no reshuffling and a lookup stays two binary searches at most.
    resolved: Resolved,
    sectors: u64,
    grain_cache: Option<(u16, u64, Vec<u8>)>,
    /// Non-fatal findings of the chain walk (timestamp mismatch, size difference).
    pub warnings: Vec<String>,
    pub read_only: bool,
}

/// Map `start..end` through `layers` top-down into `out` (unsorted). With `defer`, ranges that
/// need a bitmap read become `Pending` runs; layer numbers are offset by `first_layer`.
fn flatten(layers: &mut [Box<dyn Layer>], first_layer: u16, start: u64, end: u64, defer: bool, out: &mut Vec<Run>) -> Result<(), ImageError> {
    let mut pending: Vec<(u64, u64)> = vec![(start, end)];
    for (li, layer) in layers.iter_mut().enumerate() {
        if pending.is_empty() {
            break;
        }
        let layer_no = first_layer + li as u16;
        let layer_sectors = layer.virtual_sectors();
        let mut next: Vec<(u64, u64)> = Vec::new();
        for (s, e) in pending {
            let mut cur = s;
            while cur < e {
                if cur >= layer_sectors {
                    // A child larger than its parent: nothing below to fall through to.
                    out.push(Run { start_sector: cur, sectors: e - cur, source: Source::Zero });
                    break;
                }
                if defer {
                    if let Some(run) = layer.map_deferred(cur)? {
                        let n = run.max(1).min(e - cur);
                        out.push(Run { start_sector: cur, sectors: n, source: Source::Pending { layer: layer_no } });
                        cur += n;
                        continue;
                    }
                }
                let (m, run) = layer.map(cur)?;
                let n = run.max(1).min(e - cur);
                let source = match m {
                    Mapping::Parent => {
                        match next.last_mut() {
                            Some(last) if last.1 == cur => last.1 = cur + n,
                            _ => next.push((cur, cur + n)),
                        }
                        cur += n;
                        continue;
                    }
                    Mapping::Zero => Source::Zero,
                    Mapping::Data { file, offset_bytes } => Source::Data { layer: layer_no, file, offset_bytes },
                    Mapping::Compressed { file, marker_offset_bytes, grain_start_sector, grain_sectors } => {
                        Source::Compressed { layer: layer_no, file, marker_offset_bytes, grain_start_sector, grain_sectors }
                    }
                };
                out.push(Run { start_sector: cur, sectors: n, source });
                cur += n;
            }
        }
        pending = next;
    }
    for (s, e) in pending {
        out.push(Run { start_sector: s, sectors: e - s, source: Source::Zero });
    }
    Ok(())
}

fn sort_and_merge(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_unstable_by_key(|r| r.start_sector);
    let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs {
        match merged.last_mut() {
            Some(last) if last.joins(&r) => last.sectors += r.sectors,
            _ => merged.push(r),
        }
    }
    merged
}

/// Read `buf` from the layers *below* the leaf (copy-on-write source). Walks the layers per
/// run, which is fine: it only happens when a new block or grain is allocated.
fn read_below(layers: &mut [Box<dyn Layer>], sector: u64, buf: &mut [u8]) -> Result<(), ImageError> {
    let sectors = buf.len() as u64 / SECTOR_BYTES;
    let mut runs = Vec::new();
    flatten(layers, 0, sector, sector + sectors, false, &mut runs)?;
    let runs = sort_and_merge(runs);
    let mut cache = None;
    read_runs(layers, &runs, &BTreeMap::new(), sector, buf, &mut cache)
}

/// Resolved contents of deferred runs, keyed by the pending run's start: (its end, runs).
type Resolved = BTreeMap<u64, (u64, Vec<Run>)>;

/// The run holding `sector` in a sorted run list.
fn find(runs: &[Run], sector: u64) -> Option<&Run> {
    let i = match runs.binary_search_by(|r| r.start_sector.cmp(&sector)) {
        Ok(i) => i,
        Err(0) => return None,
        Err(i) => i - 1,
    };
    runs.get(i).filter(|r| sector < r.end())
}

fn read_runs(
    layers: &mut [Box<dyn Layer>],
    runs: &[Run],
    resolved: &Resolved,
    lba: u64,
    buf: &mut [u8],
    grain_cache: &mut Option<(u16, u64, Vec<u8>)>,
) -> Result<(), ImageError> {
    let sectors = buf.len() as u64 / SECTOR_BYTES;
    let mut done = 0u64;
    while done < sectors {
        let cur = lba + done;
        let mut run = *find(runs, cur).ok_or_else(|| ImageError::corrupt("disk", "map does not cover the request"))?;
        if let Source::Pending { .. } = run.source {
            let outer_end = run.end();
            let sub = match resolved.get(&run.start_sector) {
                Some((end, sub)) if *end == outer_end => sub,
                _ => return Err(ImageError::corrupt("disk", "internal: read of an unresolved range")),
            };
            let inner = *find(sub, cur).ok_or_else(|| ImageError::corrupt("disk", "resolved range does not cover the request"))?;
            run = Run { start_sector: inner.start_sector, sectors: inner.end().min(outer_end) - inner.start_sector, source: inner.source };
        }
        let n = (run.end() - cur).min(sectors - done);
        let out = &mut buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
        read_segment(layers, &run, cur, out, grain_cache)?;
        done += n;
    }
    Ok(())
}

/// Read `out` (starting at virtual sector `cur`, inside `run`).
fn read_segment(layers: &mut [Box<dyn Layer>], run: &Run, cur: u64, out: &mut [u8], grain_cache: &mut Option<(u16, u64, Vec<u8>)>) -> Result<(), ImageError> {
    let into = cur - run.start_sector;
    match run.source {
        Source::Zero => out.fill(0),
        Source::Pending { .. } => return Err(ImageError::corrupt("disk", "internal: nested unresolved range")),
        Source::Data { layer, file, offset_bytes } => {
            let l = layers.get_mut(layer as usize).ok_or_else(|| ImageError::corrupt("disk", "layer index out of range"))?;
            l.read_file(file, offset_bytes + into * SECTOR_BYTES, out)?;
        }
        Source::Compressed { layer, file, marker_offset_bytes, grain_start_sector, grain_sectors } => {
            let hit = matches!(grain_cache, Some((l, m, _)) if *l == layer && *m == marker_offset_bytes);
            if !hit {
                let l = layers.get_mut(layer as usize).ok_or_else(|| ImageError::corrupt("disk", "layer index out of range"))?;
                let mut g = vec![0u8; grain_sectors as usize * SECTOR_BYTES as usize];
                l.read_grain(file, marker_offset_bytes, &mut g)?;
                *grain_cache = Some((layer, marker_offset_bytes, g));
            }
            let g = grain_cache.as_ref().map(|c| c.2.as_slice()).unwrap_or(&[]);
            let from = ((cur - grain_start_sector) * SECTOR_BYTES) as usize;
            let src = g.get(from..from + out.len()).ok_or_else(|| ImageError::corrupt("disk", "read past a compressed grain"))?;
            out.copy_from_slice(src);
        }
    }
    Ok(())
}

impl Disk {
    /// Build the disk over `layers` (leaf first). The virtual size is the leaf's.
    pub fn new(mut layers: Vec<Box<dyn Layer>>, warnings: Vec<String>) -> Result<Disk, ImageError> {
        let leaf = layers.first().ok_or(ImageError::Invalid { detail: "an image chain needs at least one image".into() })?;
        let sectors = leaf.virtual_sectors();
        let mut runs = Vec::new();
        flatten(&mut layers, 0, 0, sectors, true, &mut runs)?;
        Ok(Disk { layers, runs: sort_and_merge(runs), resolved: BTreeMap::new(), sectors, grain_cache: None, warnings, read_only: false })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }
    /// The flattened map (for `vdisk map` and the boot engine).
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Resolve every deferred range and fold the results into the main list (for `vdisk map`,
    /// or to take all bitmap reads up front).
    pub fn resolve_all(&mut self) -> Result<(), ImageError> {
        let mut runs = Vec::new();
        flatten(&mut self.layers, 0, 0, self.sectors, false, &mut runs)?;
        self.runs = sort_and_merge(runs);
        self.resolved.clear();
        Ok(())
    }

    /// Resolve the deferred ranges that overlap `a..b`.
    pub fn resolve(&mut self, a: u64, b: u64) -> Result<(), ImageError> {
        let mut i = match self.runs.binary_search_by(|r| r.start_sector.cmp(&a)) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        while let Some(r) = self.runs.get(i).copied() {
            if r.start_sector >= b {
                break;
            }
            i += 1;
            let layer = match r.source {
                Source::Pending { layer } if r.end() > a => layer,
                _ => continue,
            };
            if matches!(self.resolved.get(&r.start_sector), Some((end, _)) if *end == r.end()) {
                continue;
            }
            let mut fresh = Vec::new();
            let below = self.layers.get_mut(layer as usize..).ok_or_else(|| ImageError::corrupt("disk", "layer index out of range"))?;
            flatten(below, layer, r.start_sector, r.end(), false, &mut fresh)?;
            self.resolved.insert(r.start_sector, (r.end(), sort_and_merge(fresh)));
        }
        Ok(())
    }

    /// The run holding `sector`, resolved if it was deferred (the piece of the resolution that
    /// holds `sector`).
    pub fn lookup_resolved(&mut self, sector: u64) -> Result<Option<Run>, ImageError> {
        self.resolve(sector, sector + 1)?;
        let run = match self.lookup(sector) {
            Some(r) => *r,
            None => return Ok(None),
        };
        if let Source::Pending { .. } = run.source {
            let sub = self.resolved.get(&run.start_sector).map(|(_, v)| v.as_slice()).unwrap_or(&[]);
            return Ok(find(sub, sector).map(|i| Run { start_sector: i.start_sector, sectors: i.end().min(run.end()) - i.start_sector, source: i.source }));
        }
        Ok(Some(run))
    }

    /// The run holding `sector`: one binary search. It may be [`Source::Pending`]; use
    /// [`Disk::lookup_resolved`] to settle it.
    pub fn lookup(&self, sector: u64) -> Option<&Run> {
        find(&self.runs, sector)
    }

    fn check(&self, lba: u64, bytes: usize) -> Result<u64, ImageError> {
        let name = self.layers.first().map(|l| l.name().to_string()).unwrap_or_default();
        if bytes as u64 % SECTOR_BYTES != 0 {
            return Err(ImageError::Invalid { detail: alloc::format!("a transfer of {} bytes is not whole sectors", bytes) });
        }
        let n = bytes as u64 / SECTOR_BYTES;
        if lba.checked_add(n).map_or(true, |e| e > self.sectors) {
            return Err(ImageError::OutOfRange { image: name, sector: lba, sectors: n, disk_sectors: self.sectors });
        }
        Ok(n)
    }

    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let n = self.check(lba, buf.len())?;
        self.resolve(lba, lba + n)?;
        read_runs(&mut self.layers, &self.runs, &self.resolved, lba, buf, &mut self.grain_cache)
    }

    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), ImageError> {
        let n = self.check(lba, buf.len())?;
        if self.read_only {
            let name = self.layers.first().map(|l| l.name().to_string()).unwrap_or_default();
            return Err(ImageError::ReadOnly { image: name, detail: "the disk was opened read-only".into() });
        }
        let (leaf, below) = self.layers.split_at_mut(1);
        let leaf = &mut leaf[0];
        let unit = leaf.allocation_unit_sectors().max(1);
        let result = leaf.write(lba, buf, &mut |s, b| read_below(below, s, b));
        // Refresh even after a failure: part of the request may have been placed.
        let a = lba / unit * unit;
        let b = (lba + n).div_ceil(unit).saturating_mul(unit).min(self.sectors);
        self.grain_cache = None;
        self.refresh(a, b)?;
        result
    }

    /// Empty the leaf (it must be a differencing image): the disk reads as its parent again.
    pub fn discard_leaf(&mut self) -> Result<(), ImageError> {
        let leaf = self.layers.first_mut().ok_or(ImageError::Invalid { detail: "empty chain".into() })?;
        leaf.discard_all()?;
        self.grain_cache = None;
        let mut runs = Vec::new();
        flatten(&mut self.layers, 0, 0, self.sectors, true, &mut runs)?;
        self.runs = sort_and_merge(runs);
        self.resolved.clear();
        Ok(())
    }

    /// Rebuild the runs of `a..b` and splice them in.
    fn refresh(&mut self, a: u64, b: u64) -> Result<(), ImageError> {
        let mut fresh = Vec::new();
        flatten(&mut self.layers, 0, a, b, false, &mut fresh)?;
        self.splice(a, b, fresh);
        Ok(())
    }

    /// Replace the runs of `a..b` with `fresh` (which covers exactly `a..b`).
    fn splice(&mut self, a: u64, b: u64, fresh: Vec<Run>) {
        // Resolutions of deferred runs cut by the splice no longer match their runs.
        let stale: Vec<u64> = self.resolved.iter().filter(|(start, (end, _))| **start < b && *end > a).map(|(s, _)| *s).collect();
        for k in stale {
            self.resolved.remove(&k);
        }
        let mut out: Vec<Run> = Vec::with_capacity(self.runs.len() + fresh.len() + 2);
        for r in self.runs.iter() {
            if r.end() <= a || r.start_sector >= b {
                out.push(*r);
                continue;
            }
            if r.start_sector < a {
                out.push(Run { start_sector: r.start_sector, sectors: a - r.start_sector, source: r.source });
            }
            if r.end() > b {
                let skip = b - r.start_sector;
                let source = match r.source {
                    Source::Data { layer, file, offset_bytes } => Source::Data { layer, file, offset_bytes: offset_bytes + skip * SECTOR_BYTES },
                    s => s,
                };
                out.push(Run { start_sector: b, sectors: r.end() - b, source });
            }
        }
        out.extend(fresh);
        self.runs = sort_and_merge(out);
    }
}

fn to_block_error(e: ImageError, lba: u64) -> BlockError {
    match e {
        ImageError::OutOfRange { sector, sectors, disk_sectors, .. } => BlockError::OutOfRange { lba: sector, sectors, device_sectors: disk_sectors },
        ImageError::ReadOnly { .. } => BlockError::ReadOnly,
        ImageError::Invalid { .. } => BlockError::UnalignedBuffer { bytes: 0 },
        _ => BlockError::Io { lba, status: 0 },
    }
}

impl BlockDevice for Disk {
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.read(lba, buf).map_err(|e| to_block_error(e, lba))
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.write(lba, buf).map_err(|e| to_block_error(e, lba))
    }
}
