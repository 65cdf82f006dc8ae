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
//! Writes go to the leaf. After a write the runs covering the written allocation units are
//! rebuilt and spliced in, so the map stays exact.

use alloc::boxed::Box;
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
            _ => false,
        }
    }
}

/// A chain of images as one disk. `layers[0]` is the leaf, the last one the base.
pub struct Disk {
    layers: Vec<Box<dyn Layer>>,
    runs: Vec<Run>,
    sectors: u64,
    grain_cache: Option<(u16, u64, Vec<u8>)>,
    /// Non-fatal findings of the chain walk (timestamp mismatch, size difference).
    pub warnings: Vec<String>,
    pub read_only: bool,
}

/// Map `start..end` through `layers` top-down into `out` (unsorted).
fn flatten(layers: &mut [Box<dyn Layer>], start: u64, end: u64, out: &mut Vec<Run>) -> Result<(), ImageError> {
    let mut pending: Vec<(u64, u64)> = vec![(start, end)];
    for (li, layer) in layers.iter_mut().enumerate() {
        if pending.is_empty() {
            break;
        }
        let layer_no = li as u16;
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
    flatten(layers, sector, sector + sectors, &mut runs)?;
    let runs = sort_and_merge(runs);
    let mut cache = None;
    read_runs(layers, &runs, sector, buf, &mut cache)
}

fn read_runs(
    layers: &mut [Box<dyn Layer>],
    runs: &[Run],
    lba: u64,
    buf: &mut [u8],
    grain_cache: &mut Option<(u16, u64, Vec<u8>)>,
) -> Result<(), ImageError> {
    let sectors = buf.len() as u64 / SECTOR_BYTES;
    let mut done = 0u64;
    let mut idx = match runs.binary_search_by(|r| r.start_sector.cmp(&lba)) {
        Ok(i) => i,
        Err(i) => i.saturating_sub(1),
    };
    while done < sectors {
        let cur = lba + done;
        while runs.get(idx).map_or(false, |r| r.end() <= cur) {
            idx += 1;
        }
        let run = *runs.get(idx).ok_or_else(|| ImageError::corrupt("disk", "map does not cover the request"))?;
        let n = (run.end() - cur).min(sectors - done);
        let into = cur - run.start_sector;
        let out = &mut buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
        match run.source {
            Source::Zero => out.fill(0),
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
        done += n;
    }
    Ok(())
}

impl Disk {
    /// Build the disk over `layers` (leaf first). The virtual size is the leaf's.
    pub fn new(mut layers: Vec<Box<dyn Layer>>, warnings: Vec<String>) -> Result<Disk, ImageError> {
        let leaf = layers.first().ok_or(ImageError::Invalid { detail: "an image chain needs at least one image".into() })?;
        let sectors = leaf.virtual_sectors();
        let mut runs = Vec::new();
        flatten(&mut layers, 0, sectors, &mut runs)?;
        Ok(Disk { layers, runs: sort_and_merge(runs), sectors, grain_cache: None, warnings, read_only: false })
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

    /// The run holding `sector`: one binary search.
    pub fn lookup(&self, sector: u64) -> Option<&Run> {
        let i = match self.runs.binary_search_by(|r| r.start_sector.cmp(&sector)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        self.runs.get(i).filter(|r| sector < r.end())
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
        self.check(lba, buf.len())?;
        read_runs(&mut self.layers, &self.runs, lba, buf, &mut self.grain_cache)
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

    /// Rebuild the runs of `a..b` and splice them in.
    fn refresh(&mut self, a: u64, b: u64) -> Result<(), ImageError> {
        let mut fresh = Vec::new();
        flatten(&mut self.layers, a, b, &mut fresh)?;
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
        Ok(())
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
