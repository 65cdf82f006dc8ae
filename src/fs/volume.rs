//! One type over every host filesystem vboot reads: recognise the volume, then open files on it
//! the same way whatever it is.

use alloc::string::String;
use alloc::vec::Vec;

use super::exfat::ExfatVolume;
use super::ext::ExtVolume;
use super::fat::FatVolume;
use super::ntfs::NtfsVolume;
use super::{DirEntry, File, FsError};
use crate::block::{BlockDevice, SECTOR_BYTES};

/// Which filesystem a volume holds, told from its first sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Fat,
    Exfat,
    Ntfs,
    Ext,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Fat => "FAT",
            FsKind::Exfat => "exFAT",
            FsKind::Ntfs => "NTFS",
            FsKind::Ext => "ext2/3/4",
        }
    }
}

/// Recognise the filesystem on `dev` by its signatures; `None` when it is none of ours.
pub fn sniff<D: BlockDevice>(dev: &mut D) -> Option<FsKind> {
    let mut s = [0u8; SECTOR_BYTES * 3];
    if dev.sector_count() < 3 || dev.read_sectors(0, &mut s).is_err() {
        return None;
    }
    if &s[3..11] == b"EXFAT   " {
        return Some(FsKind::Exfat);
    }
    if &s[3..11] == b"NTFS    " {
        return Some(FsKind::Ntfs);
    }
    if fat_bpb_plausible(&s[..SECTOR_BYTES]) {
        return Some(FsKind::Fat);
    }
    if s[1024 + 56] == 0x53 && s[1024 + 57] == 0xEF {
        return Some(FsKind::Ext);
    }
    None
}

/// A FAT boot sector by its structure (the "FAT16"/"FAT32" labels are only informational):
/// sector size, cluster size, reserved sectors and FAT count all within what FAT allows. Strict
/// enough that an MBR's boot code is not taken for one.
fn fat_bpb_plausible(s: &[u8]) -> bool {
    let bytes_per_sector = u16::from_le_bytes([s[11], s[12]]);
    let sectors_per_cluster = s[13];
    let reserved_sectors = u16::from_le_bytes([s[14], s[15]]);
    let fats = s[16];
    s[510] == 0x55
        && s[511] == 0xAA
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved_sectors > 0
        && (1..=2).contains(&fats)
}

/// [`sniff`] for the volume that starts at `start_lba` of `disk`.
pub fn sniff_at<D: BlockDevice>(disk: &mut D, start_lba: u64) -> Option<FsKind> {
    let sectors = disk.sector_count().saturating_sub(start_lba);
    sniff(&mut crate::block::Window { inner: disk, start_lba, sectors })
}

pub enum Volume<D: BlockDevice> {
    Fat(FatVolume<D>),
    Exfat(ExfatVolume<D>),
    Ext(ExtVolume<D>),
    Ntfs(NtfsVolume<D>),
}

impl<D: BlockDevice> Volume<D> {
    pub fn open(mut dev: D) -> Result<Volume<D>, FsError> {
        match sniff(&mut dev) {
            Some(FsKind::Fat) => Ok(Volume::Fat(FatVolume::open(dev)?)),
            Some(FsKind::Exfat) => Ok(Volume::Exfat(ExfatVolume::open(dev)?)),
            Some(FsKind::Ext) => Ok(Volume::Ext(ExtVolume::open(dev)?)),
            Some(FsKind::Ntfs) => Ok(Volume::Ntfs(NtfsVolume::open(dev)?)),
            None => Err(FsError::NotRecognized(String::from(
                "no FAT, exFAT, NTFS or ext2/3/4 signature in the first sectors",
            ))),
        }
    }

    pub fn kind(&self) -> FsKind {
        match self {
            Volume::Fat(_) => FsKind::Fat,
            Volume::Exfat(_) => FsKind::Exfat,
            Volume::Ext(_) => FsKind::Ext,
            Volume::Ntfs(_) => FsKind::Ntfs,
        }
    }

    pub fn open_file(&mut self, path: &str) -> Result<File, FsError> {
        match self {
            Volume::Fat(v) => v.open_file(path),
            Volume::Exfat(v) => v.open_file(path),
            Volume::Ext(v) => v.open_file(path),
            Volume::Ntfs(v) => v.open_file(path),
        }
    }

    /// Check `file`'s extents against the filesystem's own allocation state before they are
    /// handed to the INT 13h engine, which writes wherever they say: a damaged filesystem whose
    /// file shares its sectors with another file or with metadata is refused, with a message
    /// naming the file and the repair tool. What each filesystem checks, what it cannot, and
    /// the cost: docs/filesystems.md.
    pub fn check_file_allocation(&mut self, file: &File) -> Result<(), FsError> {
        match self {
            Volume::Fat(v) => v.check_allocation(file),
            // `ExfatVolume::open_file` checked the bitmap already: every exFAT `File` comes from
            // it, or from `create_file`/`grow_file`, which mark the clusters they take.
            Volume::Exfat(_) => Ok(()),
            Volume::Ext(v) => v.check_allocation(file),
            Volume::Ntfs(v) => v.check_allocation(file),
        }
    }

    /// [`Volume::check_file_allocation`] for several files at once (a chain's parents): on FAT
    /// one pass over the FAT for all of them instead of one each, and two of them sharing a
    /// cluster is refused too.
    pub fn check_files_allocation(&mut self, files: &[&File]) -> Result<(), FsError> {
        // Two files of the set over the same sectors: the bitmaps cannot tell (both are marked
        // used), their extents can.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for f in files {
            ranges.extend(f.extents.extents.iter().map(|e| (e.lba, e.lba.saturating_add(e.sectors))));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].1 > w[1].0 {
                let sector = w[1].0;
                let mut holders =
                    files.iter().filter(|f| f.extents.extents.iter().any(|e| e.lba <= sector && sector - e.lba < e.sectors));
                let (first, second) = (holders.next(), holders.next());
                let (Some(first), other) = (first, second) else { continue };
                let detail = match other {
                    Some(o) => alloc::format!("its sector {} is also a sector of {}", sector, o.path),
                    None => alloc::format!("it uses sector {} twice", sector),
                };
                return Err(super::allocation_refusal(first, detail, "the filesystem's checker (fsck, chkdsk)"));
            }
        }
        if let Volume::Fat(v) = self {
            return v.check_allocation_of(files);
        }
        files.iter().try_for_each(|f| self.check_file_allocation(f))
    }

    pub fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        match self {
            Volume::Fat(v) => v.list_dir(path),
            Volume::Exfat(v) => v.list_dir(path),
            Volume::Ext(v) => v.list_dir(path),
            Volume::Ntfs(v) => v.list_dir(path),
        }
    }

    pub fn read_file(&mut self, file: &File, offset_bytes: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        match self {
            Volume::Fat(v) => v.read_file(file, offset_bytes, buf),
            Volume::Exfat(v) => v.read_file(file, offset_bytes, buf),
            Volume::Ext(v) => v.read_file(file, offset_bytes, buf),
            Volume::Ntfs(v) => v.read_file(file, offset_bytes, buf),
        }
    }

    pub fn read_to_vec(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FsError> {
        match self {
            Volume::Fat(v) => v.read_to_vec(path, max_bytes),
            Volume::Exfat(v) => v.read_to_vec(path, max_bytes),
            Volume::Ext(v) => v.read_to_vec(path, max_bytes),
            Volume::Ntfs(v) => v.read_to_vec(path, max_bytes),
        }
    }

    // Writes, made before the guest starts (invariant 2, docs/architecture.md). FAT and exFAT take them;
    // NTFS and ext refuse them with a message that says so.

    /// Create a file of `size_bytes` at `path` (its directory must exist, the name must be new).
    /// On FAT the new bytes are whatever the clusters held (the image layer writes what it
    /// reads); exFAT zeroes them (its valid-data length must cover the file).
    pub fn create_file(&mut self, path: &str, size_bytes: u64) -> Result<File, FsError> {
        match self {
            Volume::Fat(v) => {
                v.create_file(path)?;
                v.set_len(path, size_bytes, false)
            }
            Volume::Exfat(v) => v.create_file(path, size_bytes),
            Volume::Ext(v) => v.create_file(path, size_bytes),
            Volume::Ntfs(v) => v.create_file(path, size_bytes),
        }
    }

    /// Grow the file at `path` to `new_size_bytes` (never shrinks it). Same fill as
    /// [`Volume::create_file`].
    pub fn grow_file(&mut self, path: &str, new_size_bytes: u64) -> Result<File, FsError> {
        self.grow_file_with_tail(path, new_size_bytes, &[])
    }

    /// [`Volume::grow_file`] whose new last bytes are `tail` (at most one sector, inside the new
    /// bytes), written before the file takes its new size: a power cut leaves the file at its old
    /// length or at its new one with `tail` at the end, never at its new length without it.
    pub fn grow_file_with_tail(&mut self, path: &str, new_size_bytes: u64, tail: &[u8]) -> Result<File, FsError> {
        match self {
            Volume::Fat(v) => {
                let f = v.open_file(path)?;
                if new_size_bytes < f.size_bytes {
                    return Err(FsError::Unsupported(alloc::format!("{} is {} bytes; growing it to {} would shrink it", path, f.size_bytes, new_size_bytes)));
                }
                v.set_len_with_tail(path, new_size_bytes, false, tail)
            }
            Volume::Exfat(v) => v.grow_file_with_tail(path, new_size_bytes, tail),
            Volume::Ext(v) => v.grow_file(path, new_size_bytes),
            Volume::Ntfs(v) => v.grow_file(path, new_size_bytes),
        }
    }

    /// Write `data` inside the file's current size (no metadata change).
    pub fn write_file(&mut self, file: &File, offset_bytes: u64, data: &[u8]) -> Result<usize, FsError> {
        match self {
            Volume::Fat(v) => v.write_file(file, offset_bytes, data).map(|()| data.len()),
            Volume::Exfat(v) => v.write_file(file, offset_bytes, data),
            Volume::Ext(v) => v.write_file(file, offset_bytes, data),
            Volume::Ntfs(v) => v.write_file(file, offset_bytes, data),
        }
    }

    /// Rename `from` to `to`; `to` must not exist.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        match self {
            Volume::Fat(v) => v.rename(from, to),
            Volume::Exfat(v) => v.rename(from, to),
            Volume::Ext(v) => v.rename(from, to),
            Volume::Ntfs(v) => v.rename(from, to),
        }
    }

    /// Give the file at `target` the contents of the file at `source`, which goes, so that a
    /// power cut leaves `target` with its old or its new contents and at worst lost clusters
    /// (the commit is one directory-entry write). FAT and exFAT only.
    pub fn take_contents(&mut self, target: &str, source: &str) -> Result<(), FsError> {
        match self {
            Volume::Fat(v) => v.take_contents(target, source),
            Volume::Exfat(v) => v.take_contents(target, source),
            Volume::Ext(_) | Volume::Ntfs(_) => Err(FsError::ReadOnly(alloc::format!("{}: vboot changes files only on FAT and exFAT", target))),
        }
    }

    pub fn delete_file(&mut self, path: &str) -> Result<(), FsError> {
        match self {
            Volume::Fat(v) => v.delete(path),
            Volume::Exfat(v) => v.delete_file(path),
            Volume::Ext(v) => v.delete_file(path),
            Volume::Ntfs(v) => v.delete_file(path),
        }
    }

    /// The contents of `path`, or of `path.new` when `path` is missing: a [`Volume::replace_file`]
    /// cut off between its two renames leaves only the new copy, complete. The flag says the
    /// `.new` copy was read. (How the loader reads grub.cfg, and what a rewrite starts from.)
    pub fn read_replaced(&mut self, path: &str, max_bytes: u64) -> Result<(Vec<u8>, bool), FsError> {
        match self.read_to_vec(path, max_bytes) {
            Err(FsError::NotFound { .. }) => {
                let new = alloc::format!("{}.new", path);
                match self.read_to_vec(&new, max_bytes) {
                    Ok(bytes) => Ok((bytes, true)),
                    Err(FsError::NotFound { .. }) => Err(FsError::NotFound { path: String::from(path) }),
                    Err(e) => Err(e),
                }
            }
            other => other.map(|b| (b, false)),
        }
    }

    /// Replace a file's contents so that a power cut leaves the old or the new contents, never a
    /// mix: the new bytes go into `NAME.new` first (read back and compared), then `NAME` takes
    /// them over in one directory-entry write ([`Volume::take_contents`]). A leftover `NAME.new`
    /// (a cut before that write) is deleted first. Older vboot versions renamed `NAME` away first:
    /// a reader that finds no `NAME` reads `NAME.new` ([`Volume::read_replaced`]), and this
    /// renames it back before anything else. docs/power-cuts.md has every cut point.
    pub fn replace_file(&mut self, path: &str, bytes: &[u8]) -> Result<(), String> {
        let new = alloc::format!("{}.new", path);
        let old = alloc::format!("{}.old", path);
        let fail = |what: &str, e: FsError| alloc::format!("rewriting {}: {}: {}", path, what, e);
        // Finish a replacement that was cut off between its two renames.
        if let Err(FsError::NotFound { .. }) = self.open_file(path) {
            self.rename(&new, path).map_err(|e| fail("finishing an interrupted rewrite", e))?;
        }
        for leftover in [&new, &old] {
            match self.delete_file(leftover) {
                Ok(()) | Err(FsError::NotFound { .. }) => {}
                Err(e) => return Err(fail("removing a leftover", e)),
            }
        }
        let f = self.create_file(&new, bytes.len() as u64).map_err(|e| fail("creating the new copy", e))?;
        self.write_file(&f, 0, bytes).map_err(|e| fail("writing the new copy", e))?;
        let back = self.read_to_vec(&new, bytes.len() as u64 + 1).map_err(|e| fail("reading the new copy back", e))?;
        if back != bytes {
            return Err(alloc::format!("rewriting {}: the new copy {} does not read back as written; the old file is unchanged", path, new));
        }
        self.take_contents(path, &new).map_err(|e| fail("putting the new contents in place", e))
    }

    pub fn into_inner(self) -> D {
        match self {
            Volume::Fat(v) => v.into_inner(),
            Volume::Exfat(v) => v.into_inner(),
            Volume::Ext(v) => v.into_inner(),
            Volume::Ntfs(v) => v.into_inner(),
        }
    }
}
