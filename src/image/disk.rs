//! One block device over a whole chain of images.
//!
//! A lookup walks the chain top-down: the leaf says where a sector is (its own data, zeros, a
//! compressed grain) or sends it to its parent, and so on; what reaches past the base reads as
//! zeros. Each step is one look into a layer's tables, which stay in memory only as far as
//! docs/memory.md says: the top-level table of each layer (VHD BAT, VDI block map, VMDK grain
//! directory) and a fixed number of second-level pieces (VMDK grain tables, VHD block bitmaps)
//! in a per-layer cache. So the memory a chain takes is fixed when it is opened
//! ([`Disk::memory_bytes`]) and never grows with what the guest writes or reads.
//!
//! Depth: a walk costs one table look per layer, so a run found at the base of a chain of depth
//! 64 costs 64 looks. The walk returns the whole run of sectors that map the same way through
//! every layer, and the last [`RECENT_RUNS`] runs are kept, so a guest reading sequentially pays
//! the walk once per run, not once per request: reads cost the same at depth 1 and 64 (the
//! bench measures it).
//!
//! Writes go to the leaf; they change one table entry (and one cached piece) and drop the
//! remembered runs that overlap the written allocation units: no work proportional to how much
//! of the disk has ever been written.

use alloc::boxed::Box;
use alloc::string::{String, ToString};

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
    /// The part of this run from `sector` on.
    fn from(&self, sector: u64) -> Run {
        let skip = sector - self.start_sector;
        let source = match self.source {
            Source::Data { layer, file, offset_bytes } => Source::Data { layer, file, offset_bytes: offset_bytes + skip * SECTOR_BYTES },
            s => s,
        };
        Run { start_sector: sector, sectors: self.sectors - skip, source }
    }
}

/// Runs remembered from earlier walks.
pub const RECENT_RUNS: usize = 32;

/// The last few runs the walk found, replaced round-robin. A fixed array: no allocation.
struct RecentRuns {
    runs: [Option<Run>; RECENT_RUNS],
    next: usize,
}

impl RecentRuns {
    fn new() -> Self {
        RecentRuns { runs: [None; RECENT_RUNS], next: 0 }
    }
    fn find(&self, sector: u64) -> Option<Run> {
        self.runs.iter().flatten().find(|r| r.start_sector <= sector && sector < r.end()).map(|r| r.from(sector))
    }
    fn remember(&mut self, run: Run) {
        self.runs[self.next] = Some(run);
        self.next = (self.next + 1) % RECENT_RUNS;
    }
    /// Forget every run that overlaps `a..b`.
    fn forget(&mut self, a: u64, b: u64) {
        for slot in self.runs.iter_mut() {
            if matches!(slot, Some(r) if r.start_sector < b && r.end() > a) {
                *slot = None;
            }
        }
    }
    fn clear(&mut self) {
        self.runs = [None; RECENT_RUNS];
    }
}

/// Map `sector` through `layers` top-down: the run of at most `limit` sectors from `sector` that
/// maps the same way through every layer. Layer numbers are offset by `first_layer`.
fn walk(layers: &mut [Box<dyn Layer>], first_layer: u16, sector: u64, limit: u64) -> Result<Run, ImageError> {
    let mut limit = limit.max(1);
    for (li, layer) in layers.iter_mut().enumerate() {
        if sector >= layer.virtual_sectors() {
            // A child larger than its parent: nothing below to fall through to.
            break;
        }
        let (m, n) = layer.map(sector)?;
        let n = n.max(1).min(limit);
        let layer = first_layer + li as u16;
        let source = match m {
            Mapping::Parent => {
                limit = n;
                continue;
            }
            Mapping::Zero => Source::Zero,
            Mapping::Data { file, offset_bytes } => Source::Data { layer, file, offset_bytes },
            Mapping::Compressed { file, marker_offset_bytes, grain_start_sector, grain_sectors } => {
                Source::Compressed { layer, file, marker_offset_bytes, grain_start_sector, grain_sectors }
            }
        };
        return Ok(Run { start_sector: sector, sectors: n, source });
    }
    Ok(Run { start_sector: sector, sectors: limit, source: Source::Zero })
}

/// The largest compressed grain a chain may need inflated at once (bounded at open by the VMDK
/// reader: 32768 sectors).
fn largest_grain_bytes(layers: &[Box<dyn Layer>]) -> u64 {
    layers.iter().map(|l| l.compressed_grain_bytes()).max().unwrap_or(0)
}

/// Read `buf` from `layers` (a chain or the part of one below the leaf), from virtual `sector`.
fn read_layers(
    layers: &mut [Box<dyn Layer>],
    first_layer: u16,
    sector: u64,
    buf: &mut [u8],
    grain_cache: &mut Option<(u16, u64, Vec<u8>)>,
    mut recent: Option<&mut RecentRuns>,
) -> Result<(), ImageError> {
    let sectors = buf.len() as u64 / SECTOR_BYTES;
    let mut done = 0u64;
    while done < sectors {
        let cur = sector + done;
        let run = match recent.as_deref().and_then(|r| r.find(cur)) {
            Some(r) => r,
            None => {
                let r = walk(layers, first_layer, cur, sectors - done)?;
                if let Some(recent) = recent.as_deref_mut() {
                    recent.remember(r);
                }
                r
            }
        };
        let n = run.sectors.min(sectors - done);
        let out = &mut buf[(done * SECTOR_BYTES) as usize..((done + n) * SECTOR_BYTES) as usize];
        read_segment(&mut layers[..], first_layer, &run, out, grain_cache)?;
        done += n;
    }
    Ok(())
}

/// Read `out` from the start of `run`.
fn read_segment(
    layers: &mut [Box<dyn Layer>],
    first_layer: u16,
    run: &Run,
    out: &mut [u8],
    grain_cache: &mut Option<(u16, u64, Vec<u8>)>,
) -> Result<(), ImageError> {
    let layer_at = |layers: &mut [Box<dyn Layer>], layer: u16| -> Result<usize, ImageError> {
        let i = layer.checked_sub(first_layer).map(usize::from).filter(|&i| i < layers.len());
        i.ok_or_else(|| ImageError::corrupt("disk", "layer index out of range"))
    };
    match run.source {
        Source::Zero => out.fill(0),
        Source::Data { layer, file, offset_bytes } => {
            let i = layer_at(layers, layer)?;
            layers[i].read_file(file, offset_bytes, out)?;
        }
        Source::Compressed { layer, file, marker_offset_bytes, grain_start_sector, grain_sectors } => {
            let hit = matches!(grain_cache, Some((l, m, _)) if *l == layer && *m == marker_offset_bytes);
            if !hit {
                let i = layer_at(layers, layer)?;
                let bytes = grain_sectors as usize * SECTOR_BYTES as usize;
                // One buffer, sized for the largest grain at open, reused for every grain.
                let mut g = match grain_cache.take() {
                    Some((_, _, g)) => g,
                    None => Vec::new(),
                };
                g.resize(bytes, 0);
                layers[i].read_grain(file, marker_offset_bytes, &mut g)?;
                *grain_cache = Some((layer, marker_offset_bytes, g));
            }
            let g = grain_cache.as_ref().map(|c| c.2.as_slice()).unwrap_or(&[]);
            let from = ((run.start_sector - grain_start_sector) * SECTOR_BYTES) as usize;
            let src = g.get(from..from + out.len()).ok_or_else(|| ImageError::corrupt("disk", "read past a compressed grain"))?;
            out.copy_from_slice(src);
        }
    }
    Ok(())
}

/// A chain of images as one disk. `layers[0]` is the leaf, the last one the base.
pub struct Disk {
    layers: Vec<Box<dyn Layer>>,
    sectors: u64,
    recent: RecentRuns,
    grain_cache: Option<(u16, u64, Vec<u8>)>,
    /// Non-fatal findings of the chain walk (timestamp mismatch, size difference).
    pub warnings: Vec<String>,
    pub read_only: bool,
}

impl Disk {
    /// Build the disk over `layers` (leaf first). The virtual size is the leaf's. Nothing is
    /// read here: each layer already holds its top-level table.
    pub fn new(layers: Vec<Box<dyn Layer>>, warnings: Vec<String>) -> Result<Disk, ImageError> {
        let leaf = layers.first().ok_or(ImageError::Invalid { detail: "an image chain needs at least one image".into() })?;
        let sectors = leaf.virtual_sectors();
        // The grain buffer is taken now, at its largest, so reads never allocate it later.
        let grain = largest_grain_bytes(&layers);
        let grain_cache = if grain > 0 {
            let mut g = Vec::new();
            super::try_reserve(&mut g, grain as usize, leaf.name(), "the buffer for a compressed grain")?;
            g.resize(grain as usize, 0);
            Some((u16::MAX, u64::MAX, g))
        } else {
            None
        };
        Ok(Disk { layers, sectors, recent: RecentRuns::new(), grain_cache, warnings, read_only: false })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        self.recent.clear();
        self.grain_cache = self.grain_cache.take().map(|(_, _, g)| (u16::MAX, u64::MAX, g));
        &mut self.layers
    }

    /// The most heap this disk holds while it is used: every layer's tables and caches at their
    /// fullest, plus the compressed-grain buffer. Fixed at open (docs/memory.md).
    pub fn memory_bytes(&self) -> u64 {
        chain_memory_bytes(&self.layers)
    }

    /// The run holding `sector`: where it and the sectors after it come from, as far as they map
    /// the same way (at most to the end of the disk).
    pub fn lookup(&mut self, sector: u64) -> Result<Run, ImageError> {
        if sector >= self.sectors {
            let name = self.layers.first().map(|l| l.name().to_string()).unwrap_or_default();
            return Err(ImageError::OutOfRange { image: name, sector, sectors: 1, disk_sectors: self.sectors });
        }
        if let Some(r) = self.recent.find(sector) {
            return Ok(r);
        }
        let run = walk(&mut self.layers, 0, sector, self.sectors - sector)?;
        self.recent.remember(run);
        Ok(run)
    }

    /// Where a [`Source::Data`] run lies on the host disk when its file is kept in place there
    /// ([`super::ExtentFile`]): the host sector of byte `offset_bytes` of file `file` of layer
    /// `layer`, and how many sectors follow contiguously. `None` for other files.
    pub fn host_run(&self, layer: u16, file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.layers.get(layer as usize)?.file_host_run(file, offset_bytes)
    }

    /// Where a write at `sector` may go straight to the host disk: the leaf holds the sectors
    /// and a write there changes only them ([`Layer::in_place_run`]), in a file kept in place on
    /// a host disk and opened for writing. The host sector of `sector` and how many sectors from
    /// it qualify. `None` when the disk is read-only or the write must go through
    /// [`Disk::write`] (it allocates, sets a bitmap, or the file is not on a host disk).
    pub fn in_place_run(&mut self, sector: u64) -> Option<(u64, u64)> {
        if self.read_only || sector >= self.sectors {
            return None;
        }
        let leaf = self.layers.first_mut()?;
        let (file, offset_bytes, sectors) = leaf.in_place_run(sector).ok()??;
        let (host_lba, contiguous) = leaf.file_host_run_writable(file, offset_bytes)?;
        let sectors = sectors.min(contiguous).min(self.sectors - sector);
        (sectors > 0).then_some((host_lba, sectors))
    }

    /// The whole map, run by run (`vdisk map`, `convert`, `info`): one walk over the disk, so it
    /// costs time and memory in proportion to the number of runs.
    pub fn map_all(&mut self) -> Result<Vec<Run>, ImageError> {
        let mut out: Vec<Run> = Vec::new();
        let mut sector = 0;
        while sector < self.sectors {
            let r = walk(&mut self.layers, 0, sector, self.sectors - sector)?;
            match out.last_mut() {
                Some(last) if last.joins(&r) => last.sectors += r.sectors,
                _ => out.push(r),
            }
            sector += r.sectors;
        }
        Ok(out)
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
        read_layers(&mut self.layers, 0, lba, buf, &mut self.grain_cache, Some(&mut self.recent))
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
        let grain_cache = &mut self.grain_cache;
        let result = leaf.write(lba, buf, &mut |s, b| read_layers(below, 1, s, b, grain_cache, None));
        // Forget even after a failure: part of the request may have been placed.
        let a = lba / unit * unit;
        let b = (lba + n).div_ceil(unit).saturating_mul(unit).min(self.sectors);
        self.recent.forget(a, b);
        result
    }

    /// Empty the leaf (it must be a differencing image): the disk reads as its parent again.
    pub fn discard_leaf(&mut self) -> Result<(), ImageError> {
        let leaf = self.layers.first_mut().ok_or(ImageError::Invalid { detail: "empty chain".into() })?;
        leaf.discard_all()?;
        self.recent.clear();
        Ok(())
    }
}

/// What [`Disk::memory_bytes`] says for a chain about to be opened (stage2 sizes the resident
/// engine's heap with it before the engine opens the same chain).
pub fn chain_memory_bytes(layers: &[Box<dyn Layer>]) -> u64 {
    let tables: u64 = layers.iter().map(|l| l.memory_bytes()).sum();
    tables + largest_grain_bytes(layers) + core::mem::size_of::<Disk>() as u64
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

