//! Image files on a host volume, written before the guest starts (invariant 2,
//! docs/architecture.md): the snapshot child made in place, and the leaf's write slack grown.
//! stage2 and the power-cut tests (tests/tests/powercut.rs) run these same functions, over the BIOS
//! disk and over a disk that loses power after any write.

use alloc::format;
use alloc::string::String;

use super::create::{create_filling, CreateOptions, ParentInfo, Variant};
use super::{slack, Format, ImageError, ImageFile};
use crate::block::BlockDevice;
use crate::fs::volume::Volume;
use crate::fs::{File, FsError};

/// A file of `vol` as an image file: reads and writes go through the volume, inside the file's
/// current extents (its length never changes here).
pub struct OnVolume<'a, D: BlockDevice> {
    pub vol: &'a mut Volume<D>,
    pub file: File,
}

impl<D: BlockDevice> ImageFile for OnVolume<'_, D> {
    fn len_bytes(&self) -> u64 {
        self.file.size_bytes
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let io = |detail: String| ImageError::Io { image: self.file.path.clone(), offset_bytes, detail };
        match self.vol.read_file(&self.file, offset_bytes, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(io(String::from("past the end of the file"))),
            Err(e) => Err(io(format!("{}", e))),
        }
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        match self.vol.write_file(&self.file, offset_bytes, buf) {
            Ok(_) => Ok(()),
            Err(e) => Err(ImageError::Io { image: self.file.path.clone(), offset_bytes, detail: format!("{}", e) }),
        }
    }
    fn name(&self) -> &str {
        &self.file.path
    }
}

/// Why [`create_on_volume`] failed.
#[derive(Debug)]
pub enum CreateError {
    /// The file could not be made (nothing was written, or only lost clusters).
    File(FsError),
    /// The file exists but the image could not be written into it.
    Fill(ImageError),
}

/// Make `path` a new file of `size_bytes` on `vol` and write an empty `variant` image into it
/// (a differencing child of `parent` when given), the bytes past its metadata left as write
/// slack. The file's directory entry is written before the image: a power cut in between leaves
/// a file that is not an image yet, which no grub.cfg names (the caller rewrites grub.cfg only
/// after this returned and the new chain opened).
pub fn create_on_volume<D: BlockDevice>(
    vol: &mut Volume<D>,
    path: &str,
    size_bytes: u64,
    variant: Variant,
    base_name: &str,
    opts: &CreateOptions,
    parent: Option<&ParentInfo>,
) -> Result<File, CreateError> {
    let file = vol.create_file(path, size_bytes).map_err(CreateError::File)?;
    let mut f = OnVolume { vol, file: file.clone() };
    create_filling(variant, &mut f, base_name, opts, parent).map_err(CreateError::Fill)?;
    Ok(file)
}

/// Largest file FAT can hold, rounded down to whole sectors.
pub const FAT_MAX_FILE_BYTES: u64 = 0xFFFF_FE00;

/// Why [`grow_on_volume`] did not grow the file.
#[derive(Debug)]
pub enum GrowError {
    /// The volume has no room for the new bytes.
    NoRoom,
    /// The file is already as large as a FAT file can be.
    FatLimit,
    Fs(FsError),
    /// The file grew, but the image's trailer could not be moved.
    Image(ImageError),
}

/// Grow the `format` image at `path` on `vol` by `add_bytes` (FAT files stop at 4 GiB) with its
/// trailer (the VHD footer) at the new end, then zero the old trailer. The file takes its new
/// length in one directory-entry write, with the trailer already in place: a power cut leaves the
/// image as it was, or grown and whole. Returns the file with its new extents.
pub fn grow_on_volume<D: BlockDevice>(vol: &mut Volume<D>, path: &str, format: Format, add_bytes: u64) -> Result<File, GrowError> {
    let old = vol.open_file(path).map_err(GrowError::Fs)?;
    let old_len = old.size_bytes;
    let tail = slack::trailer(&mut OnVolume { vol: &mut *vol, file: old }, format).map_err(GrowError::Image)?;
    let mut new_len = old_len.saturating_add(add_bytes);
    if matches!(vol, Volume::Fat(_)) {
        new_len = new_len.min(FAT_MAX_FILE_BYTES);
        if new_len <= old_len {
            return Err(GrowError::FatLimit);
        }
    }
    let file = match vol.grow_file_with_tail(path, new_len, &tail) {
        Ok(f) => f,
        Err(FsError::NoSpace { .. }) => return Err(GrowError::NoRoom),
        Err(e) => return Err(GrowError::Fs(e)),
    };
    let mut f = OnVolume { vol, file: file.clone() };
    slack::retire_old_trailer(&mut f, format, old_len).map_err(GrowError::Image)?;
    Ok(file)
}
