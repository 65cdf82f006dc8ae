//! An image file on a host disk, read and written in place through its extent list: how stage2
//! reads a chain before boot (over the BIOS), how the engine serves the guest after boot (over
//! the original INT 13h) and how vboot-attach serves Linux (over the host block device). One
//! type for all three, generic over the sector device, so they cannot disagree on which host
//! sector holds a byte of the file.
//!
//! Invariant 1 (docs/architecture.md) is kept here: the file never grows, nothing outside its
//! size is read or written, and every written sector is checked against the file's own sectors
//! (`LbaIndex`) before the device sees it.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::chain::{find_listed, list_listed};
use super::{check_in_place, ImageError, ImageFile, ParentLocator};
use crate::block::{BlockDevice, BlockError};
use crate::fs::inplace::{self, InPlaceError};
use crate::fs::{ExtentList, LbaIndex};

/// One file of an image, in place on `device` (whose sector numbers the extents use).
pub struct ExtentFile<D> {
    device: D,
    name: String,
    size_bytes: u64,
    extents: ExtentList,
    /// The file's sectors, built once when the file is writable (the check on every write).
    owned: Option<LbaIndex>,
}

impl<D: BlockDevice> ExtentFile<D> {
    /// `name` (for messages and for resolving parent paths) of `size_bytes` bytes, stored in
    /// `extents` on `device`; writes are refused unless `writable`.
    pub fn new(device: D, name: String, size_bytes: u64, extents: ExtentList, writable: bool) -> Self {
        let owned = writable.then(|| extents.lba_index());
        ExtentFile { device, name, size_bytes, extents, owned }
    }

    /// A file found by a filesystem reader, read-only.
    pub fn for_reading(device: D, file: &crate::fs::File) -> Self {
        ExtentFile::new(device, file.path.clone(), file.size_bytes, file.extents.clone(), false)
    }

    pub fn extents(&self) -> &ExtentList {
        &self.extents
    }

    /// Whether the host sectors `lba..lba+sectors` are the file's own (always false for a
    /// read-only file: nothing may be written through it).
    pub fn owns(&self, lba: u64, sectors: u64) -> bool {
        self.owned.as_ref().is_some_and(|o| o.contains(lba, sectors))
    }

    fn error(&self, e: InPlaceError) -> ImageError {
        let offset_bytes = match e {
            InPlaceError::NotMapped { offset_bytes } | InPlaceError::NotOwned { offset_bytes, .. } | InPlaceError::Device { offset_bytes, .. } => offset_bytes,
        };
        ImageError::Io { image: self.name.clone(), offset_bytes, detail: e.to_string() }
    }
}

impl<D: BlockDevice> ImageFile for ExtentFile<D> {
    fn len_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        check_in_place(&self.name, offset_bytes, buf.len(), self.size_bytes, "read past the end of the file")?;
        inplace::read(&mut self.device, &self.extents, offset_bytes, buf).map_err(|e| self.error(e))
    }

    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        let Some(owned) = &self.owned else {
            return Err(ImageError::ReadOnly { image: self.name.clone(), detail: format!("opened for reading (a write at byte {})", offset_bytes) });
        };
        check_in_place(&self.name, offset_bytes, buf.len(), self.size_bytes, "a file never grows in place")?;
        inplace::write(&mut self.device, &self.extents, Some(owned), offset_bytes, buf).map_err(|e| self.error(e))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        if self.owned.is_none() {
            return Ok(());
        }
        self.device.flush().map_err(|e: BlockError| ImageError::Io { image: self.name.clone(), offset_bytes: 0, detail: e.to_string() })
    }

    fn host_run(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        if offset_bytes >= self.size_bytes {
            return None;
        }
        self.extents.lookup(offset_bytes / crate::block::SECTOR_BYTES as u64)
    }

    fn host_run_writable(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        let sector_bytes = crate::block::SECTOR_BYTES as u64;
        if offset_bytes % sector_bytes != 0 {
            return None;
        }
        let (lba, contiguous) = self.host_run(offset_bytes)?;
        let whole_sectors_left = (self.size_bytes - offset_bytes) / sector_bytes;
        let sectors = contiguous.min(whole_sectors_left);
        (sectors > 0 && self.owns(lba, sectors)).then_some((lba, sectors))
    }
}

/// One file of a list handed over by stage2 (the hand-off table, the engine's plan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFile {
    pub path: String,
    pub size_bytes: u64,
    /// Extents in the device's sector numbers (host-disk LBAs).
    pub extents: ExtentList,
}

/// A parent locator that knows only the files stage2 handed over (the engine after boot,
/// vboot-attach under Linux): paths are compared normalized and without case, as stage2 found
/// them, and each opens as an [`ExtentFile`] on a copy of `device`.
pub struct ListedFiles<D> {
    pub files: Vec<ListedFile>,
    pub device: D,
    pub writable: bool,
}

impl<D: BlockDevice + Clone + 'static> ParentLocator for ListedFiles<D> {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let f = find_listed(&self.files, path, |f| f.path.as_str())?;
        Some(Box::new(ExtentFile::new(self.device.clone(), f.path.to_string(), f.size_bytes, f.extents.clone(), self.writable)))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        list_listed(&self.files, dir, |f| f.path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use alloc::rc::Rc;
    use alloc::vec;
    use core::cell::RefCell;

    /// A shared in-memory host disk (the locator hands out copies of the device).
    #[derive(Clone)]
    struct Host(Rc<RefCell<MemDisk>>);

    impl BlockDevice for Host {
        fn sector_count(&self) -> u64 {
            self.0.borrow().sector_count()
        }
        fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            self.0.borrow_mut().read_sectors(lba, buf)
        }
        fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
            self.0.borrow_mut().write_sectors(lba, buf)
        }
    }

    fn two_runs() -> ExtentList {
        let mut l = ExtentList::default();
        l.push(20, 2);
        l.push(8, 2);
        l
    }

    #[test]
    fn reads_writes_and_host_runs_follow_the_extents() {
        let host = Host(Rc::new(RefCell::new(MemDisk::zeroed(32))));
        let mut f = ExtentFile::new(host.clone(), "/img/a.vhd".into(), 1900, two_runs(), true);
        f.write_at(1000, &[7u8; 100]).unwrap();
        assert_eq!(host.0.borrow().bytes[21 * 512 + 488..21 * 512 + 512], [7u8; 24]);
        assert_eq!(host.0.borrow().bytes[8 * 512..8 * 512 + 76], [7u8; 76]);
        let mut back = [0u8; 100];
        f.read_at(1000, &mut back).unwrap();
        assert_eq!(back, [7u8; 100]);
        assert_eq!(f.host_run(0), Some((20, 2)));
        assert_eq!(f.host_run(1024), Some((8, 2)));
        assert_eq!(f.host_run(1900), None, "past the end of the file");
        assert!(f.owns(8, 2) && f.owns(20, 1) && !f.owns(10, 1));
    }

    #[test]
    fn it_never_grows_and_a_read_only_file_writes_nothing() {
        let host = Host(Rc::new(RefCell::new(MemDisk::zeroed(32))));
        let mut f = ExtentFile::new(host.clone(), "/img/a.vhd".into(), 1900, two_runs(), true);
        // Inside the last partial sector is the file's; past it is not.
        assert!(f.write_at(1900, &[1u8; 148]).is_ok());
        match f.write_at(2000, &[1u8; 49]) {
            Err(ImageError::Io { image, detail, .. }) => assert_eq!((image.as_str(), detail.as_str()), ("/img/a.vhd", "a file never grows in place")),
            other => panic!("{:?}", other),
        }
        let before = host.0.borrow().bytes.clone();
        let mut ro = ExtentFile::new(host.clone(), "/img/a.vhd".into(), 1900, two_runs(), false);
        assert!(matches!(ro.write_at(0, &[1u8; 512]), Err(ImageError::ReadOnly { .. })));
        assert!(!ro.owns(20, 1));
        assert_eq!(host.0.borrow().bytes, before);
    }

    #[test]
    fn the_listed_locator_opens_only_listed_files() {
        let host = Host(Rc::new(RefCell::new(MemDisk::zeroed(32))));
        let files = vec![ListedFile { path: "/VMs/Base.vhd".into(), size_bytes: 1024, extents: two_runs() }];
        let mut loc = ListedFiles { files, device: host, writable: false };
        let f = loc.open("/vms/./base.VHD").expect("case and dots as on FAT");
        assert_eq!((f.name(), f.len_bytes()), ("/VMs/Base.vhd", 1024));
        assert!(loc.open("/vms/other.vhd").is_none());
        assert_eq!(loc.list_dir("/vms"), vec![String::from("Base.vhd")]);
    }
}
