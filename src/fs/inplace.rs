//! File bytes read and written in place through an extent list: the one path from "bytes
//! `offset..offset+len` of this file" to device sectors, used by every reader of a file's data
//! (`read_via_extents`, `write_via_extents`) and by `image::ExtentFile`, which is how stage2,
//! the engine and vboot-attach reach an image's files.
//!
//! Whole sectors go straight between the caller's buffer and the device, one request per
//! contiguous run (the device splits it by its own transfer limit: a BIOS call costs far more
//! than the bytes it carries). Only a partial first or last sector goes through a 512-byte
//! buffer, read, patched and written back.
//!
//! Invariant 1 (docs/architecture.md): a write only reaches sectors that the extent list maps
//! for this file; when an [`LbaIndex`] is given, every written sector is checked against it as
//! well, so that a damaged list (two files claiming a sector) cannot carry a write elsewhere.

use super::{ExtentList, LbaIndex};
use crate::block::{BlockDevice, BlockError, SECTOR_BYTES};

const SECTOR: u64 = SECTOR_BYTES as u64;

/// Why an in-place transfer stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InPlaceError {
    /// Byte `offset_bytes` of the file has no sector in the extent list.
    NotMapped { offset_bytes: u64 },
    /// The extent list maps byte `offset_bytes` to host sectors `lba..lba+sectors`, which the
    /// file's sector index does not own: nothing was written there.
    NotOwned { offset_bytes: u64, lba: u64, sectors: u64 },
    /// The device failed at byte `offset_bytes` of the file.
    Device { offset_bytes: u64, error: BlockError },
}

impl core::fmt::Display for InPlaceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InPlaceError::NotMapped { offset_bytes } => write!(f, "byte {} is not covered by the extent list", offset_bytes),
            InPlaceError::NotOwned { lba, sectors, .. } => {
                write!(f, "refused to write sectors {}..{}: they are not the file's own", lba, lba.saturating_add(*sectors))
            }
            InPlaceError::Device { error, .. } => write!(f, "{}", error),
        }
    }
}

/// Fill `buf` with the file's bytes from `offset_bytes`. The caller has checked the range
/// against the file's size.
pub fn read<D: BlockDevice + ?Sized>(dev: &mut D, extents: &ExtentList, offset_bytes: u64, buf: &mut [u8]) -> Result<(), InPlaceError> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset_bytes + done as u64;
        let (lba, run) = extents.lookup(pos / SECTOR).ok_or(InPlaceError::NotMapped { offset_bytes: pos })?;
        let device = |error| InPlaceError::Device { offset_bytes: pos, error };
        let skip = (pos % SECTOR) as usize;
        let whole = ((buf.len() - done) / SECTOR_BYTES) as u64;
        if skip == 0 && whole > 0 {
            let bytes = whole.min(run) as usize * SECTOR_BYTES;
            dev.read_sectors(lba, &mut buf[done..done + bytes]).map_err(device)?;
            done += bytes;
            continue;
        }
        let mut sector = [0u8; SECTOR_BYTES];
        dev.read_sectors(lba, &mut sector).map_err(device)?;
        let take = (SECTOR_BYTES - skip).min(buf.len() - done);
        buf[done..done + take].copy_from_slice(&sector[skip..skip + take]);
        done += take;
    }
    Ok(())
}

/// Write `buf` as the file's bytes from `offset_bytes`. The caller has checked the range
/// against the file's size. With `owned`, every sector is checked against it before it is
/// written (invariant 1).
pub fn write<D: BlockDevice + ?Sized>(
    dev: &mut D,
    extents: &ExtentList,
    owned: Option<&LbaIndex>,
    offset_bytes: u64,
    buf: &[u8],
) -> Result<(), InPlaceError> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset_bytes + done as u64;
        let (lba, run) = extents.lookup(pos / SECTOR).ok_or(InPlaceError::NotMapped { offset_bytes: pos })?;
        let device = |error| InPlaceError::Device { offset_bytes: pos, error };
        let check = |sectors: u64| match owned {
            Some(index) if !index.contains(lba, sectors) => Err(InPlaceError::NotOwned { offset_bytes: pos, lba, sectors }),
            _ => Ok(()),
        };
        let skip = (pos % SECTOR) as usize;
        let whole = ((buf.len() - done) / SECTOR_BYTES) as u64;
        if skip == 0 && whole > 0 {
            let sectors = whole.min(run);
            check(sectors)?;
            let bytes = sectors as usize * SECTOR_BYTES;
            dev.write_sectors(lba, &buf[done..done + bytes]).map_err(device)?;
            done += bytes;
            continue;
        }
        check(1)?;
        let take = (SECTOR_BYTES - skip).min(buf.len() - done);
        let mut sector = [0u8; SECTOR_BYTES];
        if take != SECTOR_BYTES {
            dev.read_sectors(lba, &mut sector).map_err(device)?;
        }
        sector[skip..skip + take].copy_from_slice(&buf[done..done + take]);
        dev.write_sectors(lba, &sector).map_err(device)?;
        done += take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use alloc::vec;
    use alloc::vec::Vec;

    /// A device that counts its requests, over a disk of 64 sectors.
    struct Counting {
        disk: MemDisk,
        reads: usize,
        writes: usize,
    }

    impl BlockDevice for Counting {
        fn sector_count(&self) -> u64 {
            self.disk.sector_count()
        }
        fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.reads += 1;
            self.disk.read_sectors(lba, buf)
        }
        fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
            self.writes += 1;
            self.disk.write_sectors(lba, buf)
        }
    }

    /// A 6-sector file in three runs, out of order on a 64-sector disk whose every byte says
    /// where it is.
    fn setup() -> (Counting, ExtentList) {
        let mut disk = MemDisk::zeroed(64);
        for (i, b) in disk.bytes.iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        let mut list = ExtentList::default();
        list.push(40, 2);
        list.push(10, 3);
        list.push(30, 1);
        (Counting { disk, reads: 0, writes: 0 }, list)
    }

    fn file_bytes(dev: &Counting, list: &ExtentList) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &list.extents {
            out.extend_from_slice(&dev.disk.bytes[e.lba as usize * 512..(e.lba + e.sectors) as usize * 512]);
        }
        out
    }

    #[test]
    fn reads_any_range_with_one_request_per_run_and_partial_sector() {
        let (mut dev, list) = setup();
        let whole = file_bytes(&dev, &list);
        for (offset, len) in [(0usize, 3072usize), (100, 1), (511, 2), (700, 2000), (1024, 1536), (3071, 1)] {
            let mut buf = vec![0u8; len];
            read(&mut dev, &list, offset as u64, &mut buf).unwrap();
            assert_eq!(buf, whole[offset..offset + len], "bytes {}..+{}", offset, len);
        }
        dev.reads = 0;
        let mut buf = vec![0u8; 3072];
        read(&mut dev, &list, 0, &mut buf).unwrap();
        assert_eq!(dev.reads, 3, "one request per run");
        assert_eq!(read(&mut dev, &list, 3072, &mut [0u8; 1]), Err(InPlaceError::NotMapped { offset_bytes: 3072 }));
    }

    #[test]
    fn writes_patch_partial_sectors_and_touch_nothing_else() {
        let (mut dev, list) = setup();
        let before = dev.disk.bytes.clone();
        let mut expected = file_bytes(&dev, &list);
        let data: Vec<u8> = (0..1800u32).map(|i| (i % 251) as u8 ^ 0xA5).collect();
        write(&mut dev, &list, Some(&list.lba_index()), 300, &data).unwrap();
        expected[300..2100].copy_from_slice(&data);
        assert_eq!(file_bytes(&dev, &list), expected);
        let owned = |lba: usize| list.extents.iter().any(|e| (e.lba as usize..(e.lba + e.sectors) as usize).contains(&lba));
        for lba in (0..64).filter(|&l| !owned(l)) {
            assert_eq!(dev.disk.bytes[lba * 512..lba * 512 + 512], before[lba * 512..lba * 512 + 512], "sector {}", lba);
        }
    }

    #[test]
    fn a_write_to_a_sector_the_index_does_not_own_is_refused_before_it_happens() {
        let (mut dev, list) = setup();
        let before = dev.disk.bytes.clone();
        // An index that lacks the second run, as when the list and the file disagree.
        let mut partial = ExtentList::default();
        partial.push(40, 2);
        let index = partial.lba_index();
        let err = write(&mut dev, &list, Some(&index), 1024, &[1u8; 512]).unwrap_err();
        assert_eq!(err, InPlaceError::NotOwned { offset_bytes: 1024, lba: 10, sectors: 1 });
        assert_eq!(write(&mut dev, &list, Some(&index), 1030, &[1u8; 4]).unwrap_err(), InPlaceError::NotOwned { offset_bytes: 1030, lba: 10, sectors: 1 });
        assert_eq!(dev.writes, 0);
        assert_eq!(dev.disk.bytes, before);
    }

    #[test]
    fn device_errors_say_where_in_the_file() {
        let (mut dev, list) = setup();
        dev.disk.read_only = true;
        let err = write(&mut dev, &list, None, 2048, &[0u8; 512]).unwrap_err();
        assert_eq!(err, InPlaceError::Device { offset_bytes: 2048, error: BlockError::ReadOnly });
    }
}
