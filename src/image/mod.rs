//! Virtual disk image formats (raw, VHD, VMDK, VDI) and differencing chains.
//!
//! The layering, from the bytes up:
//! - [`ImageFile`]: one file of an image, addressed in bytes. At boot it is an extent list on the
//!   host disk; on the host it is a `std::fs::File` (`StdFile`, feature `std`); in unit tests a `Vec`
//!   ([`MemFile`]). Nothing below knows which.
//! - [`Layer`]: one image of a chain (one VHD, or one VMDK with all its extent files). It
//!   answers "where is virtual sector N in *this* image": file data, zeros, compressed grain, or
//!   "ask my parent" ([`Mapping`]). Each format module (`raw`, `vhd`, `vmdk`, `vdi`) implements it.
//! - [`chain`]: finds each parent starting at the leaf, checks identities, detects cycles.
//! - [`disk::Disk`]: one block device over a whole chain. A lookup walks the chain from the leaf
//!   down and remembers the last runs it found, so memory stays bounded by the layers' own tables
//!   and their caches (docs/memory.md), and sequential reads do not slow down with depth.
//!
//! Every error names the image file it is about ([`ImageError`]).
//!
//! Writing (invariants 2-4, docs/architecture.md): writes go into the leaf through
//! [`disk::Disk::write`]. A boot-time file never grows, so new blocks/grains are placed only in
//! *slack* reserved at the end of the file when it was made
//! (`create::CreateOptions::reserve_bytes`, `vdisk reserve`); without slack the write fails with
//! [`ImageError::NoSlack`]. Host files may grow instead. Each format module documents where its
//! slack sits and the order of its metadata writes (data, then bitmap, then table entry, then
//! header counters, with a flush between steps). VMDK grains and VDI blocks have no per-sector
//! bitmap, so the part of a new unit the write does not cover is copied from the layers below.
//! [`create::create_filling`] makes a child inside an existing, preallocated file (boot-time
//! `take_snapshot=`), and [`disk::Disk::discard_leaf`] empties a differencing leaf (`restore`).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

mod cache;
pub mod chain;
pub mod create;
pub mod disk;
pub mod extent_file;
pub mod onvolume;
pub mod raw;
pub mod slack;
pub mod vdi;
pub mod vhd;
pub mod vmdk;

pub use chain::{open_chain, ChainOptions, ParentLocator};
pub use disk::Disk;
pub use extent_file::{ExtentFile, ListedFile, ListedFiles};

/// Bytes per sector in every format handled here.
pub const SECTOR_BYTES: u64 = 512;
/// The largest virtual disk a layer may have: 2^52 sectors (2 EiB), far above what any format
/// makes (VHD stops below 2 TiB, VMDK near 64 TiB), so that byte counts and the sums made of
/// them (slack, sizes of children) never overflow a u64. A header that says more is damage.
pub const MAX_VIRTUAL_SECTORS: u64 = 1 << 52;

/// Why an image could not be opened, read or written. Every variant carries the image's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The host file could not be read or written.
    Io { image: String, offset_bytes: u64, detail: String },
    /// The bytes do not form a valid image of the format (bad checksum, table out of range...).
    Corrupt { image: String, detail: String },
    /// A valid image using a feature this code does not handle.
    Unsupported { image: String, detail: String },
    /// No candidate path led to an openable parent.
    ParentNotFound { image: String, expected: String, tried: Vec<String> },
    /// A parent was found but its identity does not match what the child recorded.
    ParentMismatch { image: String, parent: String, detail: String },
    /// Following parents came back to an image already in the chain.
    Cycle { image: String, chain: Vec<String> },
    /// A write needs a new block but the file has no slack left for it.
    NoSlack { image: String, needed_bytes: u64 },
    /// The image (or this layer of the chain) must not be written.
    ReadOnly { image: String, detail: String },
    /// The request reaches past the end of the virtual disk.
    OutOfRange { image: String, sector: u64, sectors: u64, disk_sectors: u64 },
    /// Bad input from the user (size, option).
    Invalid { detail: String },
    /// A disk image of a format vboot does not read (VHDX, QCOW2).
    ForeignFormat { image: String, format: &'static str },
    /// The image's tables need more memory than there is (`what` says which table).
    NoMemory { image: String, what: &'static str, bytes: u64 },
}

impl ImageError {
    pub fn corrupt(image: &str, detail: impl Into<String>) -> Self {
        ImageError::Corrupt { image: image.to_string(), detail: detail.into() }
    }
    pub fn unsupported(image: &str, detail: impl Into<String>) -> Self {
        ImageError::Unsupported { image: image.to_string(), detail: detail.into() }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Io { image, offset_bytes, detail } => {
                write!(f, "{}: I/O error at byte {}: {}", image, offset_bytes, detail)
            }
            ImageError::Corrupt { image, detail } => write!(f, "{}: damaged image: {}", image, detail),
            ImageError::Unsupported { image, detail } => write!(f, "{}: not supported: {}", image, detail),
            ImageError::ParentNotFound { image, expected, tried } => {
                write!(f, "{}: parent image not found (expected {}); looked at:", image, expected)?;
                if tried.is_empty() {
                    write!(f, " nothing (no usable parent path stored, no parent_dir given)")?;
                }
                for t in tried {
                    write!(f, "\n  {}", t)?;
                }
                Ok(())
            }
            ImageError::ParentMismatch { image, parent, detail } => {
                write!(f, "{}: parent {} is not the image it was made from: {}", image, parent, detail)
            }
            ImageError::Cycle { image, chain } => {
                write!(f, "{}: the parent chain loops back to an image already in it:", image)?;
                for c in chain {
                    write!(f, " {} ->", c)?;
                }
                write!(f, " {}", image)
            }
            ImageError::NoSlack { image, needed_bytes } => write!(
                f,
                "{}: no reserved space left for a new block ({} bytes needed); add slack with `vdisk reserve`",
                image, needed_bytes
            ),
            ImageError::ReadOnly { image, detail } => write!(f, "{}: read-only: {}", image, detail),
            ImageError::OutOfRange { image, sector, sectors, disk_sectors } => write!(
                f,
                "{}: sectors {}..{} are past the end of the virtual disk ({} sectors)",
                image,
                sector,
                sector.saturating_add(*sectors),
                disk_sectors
            ),
            ImageError::Invalid { detail } => write!(f, "{}", detail),
            ImageError::ForeignFormat { image, format } => {
                write!(f, "{} is a {} image; vboot boots raw, VHD, VMDK and VDI images", image, format)
            }
            ImageError::NoMemory { image, what, bytes } => write!(
                f,
                "{}: not enough memory for {} ({} KiB); a machine with more RAM can open it",
                image,
                what,
                bytes.div_ceil(1024)
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ImageError {}

/// `sectors` from `sector` must lie inside a disk of `disk_sectors` (each format's `map` and
/// `write` check their arguments with this).
pub(crate) fn check_range(image: &str, sector: u64, sectors: u64, disk_sectors: u64) -> Result<(), ImageError> {
    if sector.checked_add(sectors).map_or(true, |e| e > disk_sectors) {
        return Err(ImageError::OutOfRange { image: image.into(), sector, sectors, disk_sectors });
    }
    Ok(())
}

/// One file of an image, addressed in bytes.
pub trait ImageFile {
    fn len_bytes(&self) -> u64;
    /// Fill `buf` from `offset_bytes`. Reading past the end of the file is an error.
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError>;
    /// Write `buf` at `offset_bytes`. Implementations may refuse to grow the file (the boot-time
    /// one must: its extent list is fixed).
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError>;
    /// The path the file was opened by, for messages and for resolving relative parent paths.
    fn name(&self) -> &str;
    /// Make earlier writes durable before later ones (the ordering points of invariant 3,
    /// docs/architecture.md).
    fn flush(&mut self) -> Result<(), ImageError> {
        Ok(())
    }
    /// Whether writes past the end may extend the file (host files yes, boot-time files never).
    fn can_grow(&self) -> bool {
        false
    }
    /// Last modification time (Unix seconds), where the file system gives one.
    fn mtime_unix(&self) -> Option<u64> {
        None
    }
    /// For a file kept in place on a host disk ([`ExtentFile`]): the host sector holding byte
    /// `offset_bytes` and how many sectors follow it contiguously, so the engine can move the
    /// guest's data between the host disk and the guest's buffer without a copy.
    fn host_run(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        let _ = offset_bytes;
        None
    }
    /// [`ImageFile::host_run`] for a write: only for a file opened for writing, and never past
    /// the file's last whole sector (the extents may go on to the end of a cluster). The sectors
    /// are the file's own (invariant 1, docs/architecture.md).
    fn host_run_writable(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        let _ = offset_bytes;
        None
    }
}

impl ImageFile for Box<dyn ImageFile> {
    fn len_bytes(&self) -> u64 {
        (**self).len_bytes()
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        (**self).read_at(offset_bytes, buf)
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        (**self).write_at(offset_bytes, buf)
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        (**self).flush()
    }
    fn can_grow(&self) -> bool {
        (**self).can_grow()
    }
    fn mtime_unix(&self) -> Option<u64> {
        (**self).mtime_unix()
    }
    fn host_run(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        (**self).host_run(offset_bytes)
    }
    fn host_run_writable(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        (**self).host_run_writable(offset_bytes)
    }
}

/// The check of a file read or written in place through its host extents (the engine's and
/// vboot-attach's `ExtentFile`, which never grow): `offset_bytes..+len` must lie inside the
/// file's whole sectors. The sum is checked, not wrapped: an offset near 2^64 comes from a
/// damaged header (a VHD parent locator) and must be an error like any other out-of-file read.
pub fn check_in_place(name: &str, offset_bytes: u64, len: usize, size_bytes: u64, detail: &str) -> Result<(), ImageError> {
    let limit = size_bytes.div_ceil(SECTOR_BYTES).saturating_mul(SECTOR_BYTES);
    match offset_bytes.checked_add(len as u64) {
        Some(end) if end <= limit => Ok(()),
        _ => Err(ImageError::Io { image: name.to_string(), offset_bytes, detail: detail.to_string() }),
    }
}

/// An image file held in memory (unit tests, RAM overlays). It grows on writes past its end
/// unless `fixed_len` is set, which mimics the boot-time file.
#[derive(Clone, Debug, Default)]
pub struct MemFile {
    pub name: String,
    pub bytes: Vec<u8>,
    pub fixed_len: bool,
}

impl MemFile {
    pub fn new(name: &str, bytes: Vec<u8>) -> Self {
        MemFile { name: name.to_string(), bytes, fixed_len: false }
    }
}

impl ImageFile for MemFile {
    fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let src = usize::try_from(offset_bytes)
            .ok()
            .and_then(|start| self.bytes.get(start..start.checked_add(buf.len())?));
        match src {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ImageError::Io {
                image: self.name.clone(),
                offset_bytes,
                detail: alloc::format!("read of {} bytes past the end of the file ({} bytes)", buf.len(), self.bytes.len()),
            }),
        }
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        let end = offset_bytes.checked_add(buf.len() as u64).and_then(|e| usize::try_from(e).ok());
        let end = match end {
            Some(e) if !self.fixed_len || e <= self.bytes.len() => e,
            _ => {
                return Err(ImageError::Io {
                    image: self.name.clone(),
                    offset_bytes,
                    detail: "write past the end of a file that cannot grow".into(),
                })
            }
        };
        if end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        self.bytes[end - buf.len()..end].copy_from_slice(buf);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn can_grow(&self) -> bool {
        !self.fixed_len
    }
}

#[cfg(feature = "std")]
mod std_file {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// A host file.
    pub struct StdFile {
        pub file: std::fs::File,
        pub name: String,
        pub len_bytes: u64,
    }

    impl StdFile {
        pub fn open(path: &str, writable: bool) -> Result<Self, ImageError> {
            let io = |e: std::io::Error| ImageError::Io { image: path.to_string(), offset_bytes: 0, detail: e.to_string() };
            let mut file = std::fs::OpenOptions::new().read(true).write(writable).open(path).map_err(io)?;
            let len_bytes = file.seek(SeekFrom::End(0)).map_err(io)?;
            Ok(StdFile { file, name: path.to_string(), len_bytes })
        }
        pub fn create(path: &str) -> Result<Self, ImageError> {
            let io = |e: std::io::Error| ImageError::Io { image: path.to_string(), offset_bytes: 0, detail: e.to_string() };
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(io)?;
            Ok(StdFile { file, name: path.to_string(), len_bytes: 0 })
        }
        pub fn set_len(&mut self, len_bytes: u64) -> Result<(), ImageError> {
            self.file.set_len(len_bytes).map_err(|e| ImageError::Io { image: self.name.clone(), offset_bytes: len_bytes, detail: e.to_string() })?;
            self.len_bytes = len_bytes;
            Ok(())
        }
    }

    impl ImageFile for StdFile {
        fn len_bytes(&self) -> u64 {
            self.len_bytes
        }
        fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
            let io = |detail: String| ImageError::Io { image: self.name.clone(), offset_bytes, detail };
            if offset_bytes.checked_add(buf.len() as u64).map_or(true, |e| e > self.len_bytes) {
                return Err(io(format!("read of {} bytes past the end of the file ({} bytes)", buf.len(), self.len_bytes)));
            }
            self.file
                .seek(SeekFrom::Start(offset_bytes))
                .and_then(|_| self.file.read_exact(buf))
                .map_err(|e| io(e.to_string()))
        }
        fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
            let r = self.file.seek(SeekFrom::Start(offset_bytes)).and_then(|_| self.file.write_all(buf));
            r.map_err(|e| ImageError::Io { image: self.name.clone(), offset_bytes, detail: e.to_string() })?;
            self.len_bytes = self.len_bytes.max(offset_bytes + buf.len() as u64);
            Ok(())
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn can_grow(&self) -> bool {
            true
        }
        fn mtime_unix(&self) -> Option<u64> {
            let m = self.file.metadata().ok()?.modified().ok()?;
            Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
        }
        fn flush(&mut self) -> Result<(), ImageError> {
            self.file.sync_data().map_err(|e| ImageError::Io { image: self.name.clone(), offset_bytes: 0, detail: e.to_string() })
        }
    }
}

#[cfg(feature = "std")]
pub use std_file::StdFile;

/// Which container format an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Vhd,
    Vmdk,
    Vdi,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vmdk => "vmdk",
            Format::Vdi => "vdi",
        }
    }
}

/// Guess the format from the file's bytes, falling back to the name's extension for VHD fixed
/// (whose only signature is the footer) and raw.
pub fn probe(file: &mut dyn ImageFile) -> Result<Format, ImageError> {
    let len = file.len_bytes();
    let mut head = [0u8; 512];
    let n = len.min(512) as usize;
    file.read_at(0, &mut head[..n])?;
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd);
    }
    for (magic, format) in [(&b"vhdxfile"[..], "VHDX"), (&b"QFI\xfb"[..], "QCOW2")] {
        if head.starts_with(magic) {
            return Err(ImageError::ForeignFormat { image: file.name().to_string(), format });
        }
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        return Ok(Format::Vmdk);
    }
    if n >= 0x48 && head[0x40..0x44] == [0x7F, 0x10, 0xDA, 0xBE] {
        return Ok(Format::Vdi);
    }
    if vmdk::looks_like_descriptor(&head[..n]) {
        return Ok(Format::Vmdk);
    }
    if len >= 512 {
        let mut tail = [0u8; 8];
        for back in [512u64, 511] {
            if len >= back {
                file.read_at(len - back, &mut tail)?;
                if &tail == b"conectix" {
                    return Ok(Format::Vhd);
                }
            }
        }
    }
    Ok(Format::Raw)
}

/// Where one virtual sector of a layer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// In file `file` of the layer at byte `offset_bytes`; following sectors of the run are
    /// contiguous in that file.
    Data { file: u16, offset_bytes: u64 },
    /// Reads as zeros and hides any parent (VDI ZERO block, VMDK zeroed grain, base image hole).
    Zero,
    /// Not stored in this layer: ask the parent (zeros at the base).
    Parent,
    /// Inside a compressed grain (streamOptimized VMDK). `marker_offset_bytes` is the grain
    /// marker, `grain_start_sector` the virtual sector where the grain begins, `grain_sectors`
    /// its uncompressed length.
    Compressed { file: u16, marker_offset_bytes: u64, grain_start_sector: u64, grain_sectors: u32 },
}

/// What a layer says about its own identity and its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// VHD footer Unique Id / VDI uuidCreate (16 opaque bytes), if the format has one.
    pub uuid: Option<[u8; 16]>,
    /// VDI uuidModify.
    pub modify_uuid: Option<[u8; 16]>,
    /// VMDK CID.
    pub cid: Option<u32>,
    /// VHD: parent's modification time (VHD epoch) is compared against this layer's file time.
    pub timestamp: Option<u32>,
}

/// What a differencing layer records about its parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentLink {
    /// Paths stored in the child, in the format's preferred order (already decoded).
    pub path_candidates: Vec<String>,
    pub uuid: Option<[u8; 16]>,
    pub modify_uuid: Option<[u8; 16]>,
    pub cid: Option<u32>,
    pub timestamp: Option<u32>,
}

/// One image of a chain.
pub trait Layer {
    fn format(&self) -> Format;
    /// Short variant name for `info` ("dynamic", "monolithicSparse", ...).
    fn variant(&self) -> String;
    /// The image's main file name (descriptor for multi-file VMDK).
    fn name(&self) -> &str;
    fn virtual_sectors(&self) -> u64;
    /// Names of the layer's files in the order of `Mapping::Data::file` (the boot engine maps
    /// each to its extent list on the host disk).
    fn file_names(&self) -> Vec<String> {
        alloc::vec![self.name().to_string()]
    }
    /// Mapping of `sector` and how many sectors from it on map the same way (at least 1,
    /// never past the end of the disk; Data runs are contiguous in the file).
    fn map(&mut self, sector: u64) -> Result<(Mapping, u64), ImageError>;
    /// When mapping `sector` would need an extra read (a VHD differencing block's bitmap),
    /// return how many sectors that read would settle, without reading; `None` when `map` is
    /// cheap. The chain map defers such ranges until they are first used, so opening a large
    /// chain does not read one bitmap per allocated block.
    fn map_deferred(&mut self, sector: u64) -> Result<Option<u64>, ImageError> {
        let _ = sector;
        Ok(None)
    }
    /// [`ImageFile::host_run`] of the layer's file number `file`.
    fn file_host_run(&self, file: u16, offset_bytes: u64) -> Option<(u64, u64)>;
    /// [`ImageFile::host_run_writable`] of the layer's file number `file`.
    fn file_host_run_writable(&self, file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        let _ = (file, offset_bytes);
        None
    }
    /// The sectors from `sector` on that a write would change in place and nothing else: data
    /// this layer already holds, with no bitmap, table or header to update. The file, the byte
    /// offset of `sector` in it, and how many sectors follow contiguously in the file. `None`
    /// (the default) sends every write through [`Layer::write`].
    fn in_place_run(&mut self, sector: u64) -> Result<Option<(u16, u64, u64)>, ImageError> {
        let _ = sector;
        Ok(None)
    }
    /// Read from the layer's file number `file` (0 for single-file formats).
    fn read_file(&mut self, file: u16, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError>;
    /// Inflate the compressed grain whose marker is at `marker_offset_bytes` into `out`
    /// (streamOptimized VMDK only).
    fn read_grain(&mut self, file: u16, marker_offset_bytes: u64, out: &mut [u8]) -> Result<(), ImageError> {
        let _ = (file, marker_offset_bytes, out);
        Err(ImageError::unsupported(self.name(), "compressed data in a format without compression"))
    }
    /// Sectors that one allocation covers (a VDI block, a VMDK grain); 1 for per-sector bitmaps.
    /// After a write the map of the chain is refreshed over whole units.
    fn allocation_unit_sectors(&self) -> u64 {
        1
    }
    fn identity(&self) -> Identity;
    /// `Some` when this is a differencing image.
    fn parent_link(&self) -> Option<ParentLink>;
    /// Extra facts for `info` (key, value).
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Consistency problems found by looking at the whole image (`vdisk check`).
    fn check(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Write whole sectors into this layer. `parent` reads the sectors below this layer (for
    /// copy-on-write of formats without a per-sector bitmap). Returns the virtual sector ranges
    /// whose mapping changed, so the caller can forget the runs it remembered there.
    fn write(
        &mut self,
        sector: u64,
        buf: &[u8],
        parent: &mut dyn FnMut(u64, &mut [u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let _ = (sector, buf, parent);
        Err(ImageError::ReadOnly { image: self.name().to_string(), detail: alloc::format!("writing {} {} images is not implemented", self.format().as_str(), self.variant()) })
    }
    /// Record `parent` (the identity of this image's parent as it is now) as the expected
    /// parent: VHD parent time stamp, VMDK parentCID, VDI parent modification UUID. Used after
    /// the parent was changed on purpose (merge, repair).
    fn relink_parent(&mut self, parent: &Identity) -> Result<(), ImageError> {
        let _ = parent;
        Err(ImageError::unsupported(self.name(), "relinking this kind of image"))
    }
    /// Empty a differencing image back to "everything comes from the parent" (the boot-time
    /// `restore`). Only tables change; the space of the dropped blocks becomes slack again.
    /// The order keeps the image valid after each write (tables before counters).
    fn discard_all(&mut self) -> Result<(), ImageError> {
        Err(ImageError::unsupported(self.name(), "emptying this kind of image"))
    }
    /// Bytes of reserved slack still available for new blocks.
    fn slack_bytes(&self) -> u64 {
        0
    }
    /// The most heap this layer holds while it is used: its top-level table plus its caches at
    /// their fullest (docs/memory.md). Fixed at open; reads and writes never take more.
    fn memory_bytes(&self) -> u64;
    /// Bytes of the virtual disk not stored in this layer, when the layer knows it without a
    /// walk (VMDK counts its grains at open); `None` makes `slack::unallocated_bytes` walk.
    fn unallocated_bytes_known(&self) -> Option<u64> {
        None
    }
    /// Bytes of the largest compressed grain a read may inflate (0 without compression).
    fn compressed_grain_bytes(&self) -> u64 {
        0
    }
}

/// Open one image (without its parents). `open_other` opens further files of the same image
/// (VMDK extents) by a path already resolved against the image's directory.
pub fn open_layer(
    mut file: Box<dyn ImageFile>,
    open_other: &mut dyn FnMut(&str) -> Option<Box<dyn ImageFile>>,
) -> Result<Box<dyn Layer>, ImageError> {
    let format = probe(&mut *file)?;
    let layer: Box<dyn Layer> = match format {
        Format::Raw => Box::new(raw::RawImage::open(file)?),
        Format::Vhd => Box::new(vhd::VhdImage::open(file)?),
        Format::Vdi => Box::new(vdi::VdiImage::open(file)?),
        Format::Vmdk => Box::new(vmdk::VmdkImage::open(file, open_other)?),
    };
    if layer.virtual_sectors() > MAX_VIRTUAL_SECTORS {
        return Err(ImageError::corrupt(
            layer.name(),
            alloc::format!("a virtual disk of {} sectors is larger than {} (2 EiB)", layer.virtual_sectors(), MAX_VIRTUAL_SECTORS),
        ));
    }
    Ok(layer)
}

// ---- small byte helpers used by the format modules (bounds-checked: input comes from disk) ----

pub(crate) use crate::bytes::{be16 as be_u16, be32 as be_u32, be64 as be_u64, le16 as le_u16, le32 as le_u32, le64 as le_u64};
pub(crate) fn bytes16(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(off..off + 16) {
        a.copy_from_slice(s);
    }
    a
}
pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// A UUID as 32 hex digits in stored byte order (formats disagree on display order; compare
/// and show opaque bytes).
pub fn hex16(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if i == 4 || i == 6 || i == 8 || i == 10 {
            s.push('-');
        }
        s.push_str(&alloc::format!("{:02x}", b));
    }
    s
}

/// Bytes moved per step when a new block or grain is filled, so that a write at boot needs a
/// bounded buffer whatever the block size: 127 sectors, the most one BIOS call moves (EDD), so
/// that the engine writes a step of zeros from a 127-sector guest buffer it borrows in one call,
/// not two (docs/int13.md, "Zeros from the guest's buffer").
const FILL_CHUNK_BYTES: u64 = 127 * 512;

/// Write a newly allocated unit (VHD block, VDI block, VMDK grain) of `unit_bytes` at
/// `at_bytes`: `data` lands at `data_off` inside it; the rest is copied from the layers below
/// (`parent`, given the virtual sector of the unit's part, for formats without a per-sector
/// bitmap) or zero. Only the first `valid_bytes` of the unit exist on the virtual disk (the last
/// unit of an odd-sized disk); the tail is zero.
pub(crate) fn write_new_unit(
    file: &mut dyn ImageFile,
    at_bytes: u64,
    unit_bytes: u64,
    valid_bytes: u64,
    first_sector: u64,
    data_off: u64,
    data: &[u8],
    mut parent: Option<&mut dyn FnMut(u64, &mut [u8]) -> Result<(), ImageError>>,
) -> Result<(), ImageError> {
    let data_off = data_off.min(unit_bytes);
    let data_end = (data_off + data.len() as u64).min(unit_bytes);
    let mut buf = alloc::vec![0u8; FILL_CHUNK_BYTES.min(unit_bytes) as usize];
    // The unit's bytes `from..to` that are not the caller's data: the parent's, or zeros.
    let mut fill = |file: &mut dyn ImageFile, from: u64, to: u64| -> Result<(), ImageError> {
        let mut off = from;
        while off < to {
            let n = FILL_CHUNK_BYTES.min(to - off);
            let chunk = &mut buf[..n as usize];
            chunk.fill(0);
            if let Some(p) = parent.as_mut() {
                let valid = valid_bytes.saturating_sub(off).min(n);
                if valid > 0 {
                    p(first_sector + off / SECTOR_BYTES, &mut chunk[..valid as usize])?;
                }
            }
            file.write_at(at_bytes + off, chunk)?;
            off += n;
        }
        Ok(())
    };
    fill(&mut *file, 0, data_off)?;
    // The data itself in one write, from the caller's buffer: where that buffer also lies in
    // guest memory, the boot engine can write it to the host without a copy.
    if data_end > data_off {
        file.write_at(at_bytes + data_off, &data[..(data_end - data_off) as usize])?;
    }
    fill(&mut *file, data_end, unit_bytes)
}

/// Make room for `additional` more elements in `v`, or say which table of `image` did not fit.
/// Tables sized by an image's header are allocated this way, so a huge (or damaged) header is an
/// error the user reads, not an allocation failure that stops the machine.
pub(crate) fn try_reserve<T>(v: &mut Vec<T>, additional: usize, image: &str, what: &'static str) -> Result<(), ImageError> {
    v.try_reserve_exact(additional).map_err(|_| ImageError::NoMemory {
        image: image.to_string(),
        what,
        bytes: (additional as u64).saturating_mul(core::mem::size_of::<T>() as u64),
    })
}

/// Read a table of `count` u32 values at `offset_bytes` in big- or little-endian. The table is
/// read 16 KiB at a time straight into its vector, so the peak is the table itself.
pub(crate) fn read_u32_table(
    file: &mut dyn ImageFile,
    offset_bytes: u64,
    count: usize,
    big_endian: bool,
    what: &'static str,
) -> Result<Vec<u32>, ImageError> {
    let bytes_len = (count as u64).checked_mul(4).ok_or_else(|| ImageError::corrupt(file.name(), "table too large"))?;
    if offset_bytes.checked_add(bytes_len).map_or(true, |e| e > file.len_bytes()) {
        return Err(ImageError::corrupt(
            file.name(),
            alloc::format!("{} ({} entries at byte {}) reaches past the end of the file ({} bytes)", what, count, offset_bytes, file.len_bytes()),
        ));
    }
    let mut out: Vec<u32> = Vec::new();
    try_reserve(&mut out, count, file.name(), what)?;
    let mut chunk = [0u8; 16 * 1024];
    let mut at = offset_bytes;
    let mut left = bytes_len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        file.read_at(at, &mut chunk[..n])?;
        out.extend(chunk[..n].chunks_exact(4).map(|c| {
            let a = [c[0], c[1], c[2], c[3]];
            if big_endian {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        }));
        at += n as u64;
        left -= n;
    }
    Ok(out)
}

/// Pseudo-random bytes for UUIDs and CIDs: the caller provides entropy (host: time + pid;
/// boot: TSC), mixed with splitmix64 so consecutive seeds differ everywhere.
pub fn random_bytes(seed: &mut u64, out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A v4-style random UUID from `seed`.
pub fn random_uuid(seed: &mut u64) -> [u8; 16] {
    let mut u = [0u8; 16];
    random_bytes(seed, &mut u);
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    u
}

#[cfg(test)]
mod tests;
