//! Sector-addressed storage: the one interface every layer above the BIOS talks to.

use alloc::vec::Vec;
use core::fmt;

/// Bytes in a hard-disk sector. CDs (2048-byte blocks) are converted at the image layer.
pub const SECTOR_BYTES: usize = 512;

/// Why a sector transfer failed. Each variant says enough for a user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// The request reaches past the end of the device.
    OutOfRange { lba: u64, sectors: u64, device_sectors: u64 },
    /// The buffer is not a whole number of sectors.
    UnalignedBuffer { bytes: usize },
    /// The device refused a write.
    ReadOnly,
    /// The underlying device (BIOS call, host file) reported an error.
    Io { lba: u64, status: u32 },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { lba, sectors, device_sectors } => write!(
                f,
                "sectors {}..{} are past the end of the device ({} sectors)",
                lba,
                lba.saturating_add(*sectors),
                device_sectors
            ),
            BlockError::UnalignedBuffer { bytes } => {
                write!(f, "a transfer of {} bytes is not a whole number of 512-byte sectors", bytes)
            }
            BlockError::ReadOnly => write!(f, "the device is read-only"),
            BlockError::Io { lba, status } => {
                write!(f, "disk error at sector {} (status {:#04x})", lba, status)
            }
        }
    }
}

/// A disk addressed in 512-byte sectors.
pub trait BlockDevice {
    /// Size of the device in sectors.
    fn sector_count(&self) -> u64;
    /// Read `buf.len() / 512` sectors starting at `lba`.
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Write `buf.len() / 512` sectors starting at `lba`.
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Make the writes so far durable before any later one (the ordering points of invariant 3,
    /// docs/architecture.md). Devices that write through have nothing to do.
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }
}

/// Check that `buf` holds whole sectors and that `lba..` lies inside a device of `device_sectors`.
/// Returns the number of sectors in the request.
pub fn check_request(lba: u64, buf_bytes: usize, device_sectors: u64) -> Result<u64, BlockError> {
    if buf_bytes % SECTOR_BYTES != 0 {
        return Err(BlockError::UnalignedBuffer { bytes: buf_bytes });
    }
    let sectors = (buf_bytes / SECTOR_BYTES) as u64;
    match lba.checked_add(sectors) {
        Some(end) if end <= device_sectors => Ok(sectors),
        _ => Err(BlockError::OutOfRange { lba, sectors, device_sectors }),
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &mut T {
    fn sector_count(&self) -> u64 {
        (**self).sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        (**self).write_sectors(lba, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
}

/// A disk held in memory. Used by tests and for RAM overlays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemDisk {
    pub bytes: Vec<u8>,
    pub read_only: bool,
}

impl MemDisk {
    /// A zero-filled disk of `sectors` sectors.
    pub fn zeroed(sectors: u64) -> Self {
        MemDisk { bytes: alloc::vec![0; sectors as usize * SECTOR_BYTES], read_only: false }
    }
    /// Wrap bytes; a trailing partial sector is dropped from the addressable range.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemDisk { bytes, read_only: false }
    }
}

impl BlockDevice for MemDisk {
    fn sector_count(&self) -> u64 {
        (self.bytes.len() / SECTOR_BYTES) as u64
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sector_count())?;
        let start = lba as usize * SECTOR_BYTES;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_request(lba, buf.len(), self.sector_count())?;
        let start = lba as usize * SECTOR_BYTES;
        self.bytes[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

/// A window of sectors inside another device: a partition, or a file's single extent.
pub struct Window<D> {
    pub inner: D,
    pub start_lba: u64,
    pub sectors: u64,
}

impl<D: BlockDevice> BlockDevice for Window<D> {
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sectors)?;
        self.inner.read_sectors(self.start_lba + lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sectors)?;
        self.inner.write_sectors(self.start_lba + lba, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.inner.flush()
    }
}

#[cfg(feature = "std")]
mod host_file {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// A disk image file or block device on the host.
    pub struct FileDisk {
        pub file: File,
        pub sectors: u64,
        pub writable: bool,
    }

    impl FileDisk {
        pub fn open(path: &std::path::Path, writable: bool) -> std::io::Result<Self> {
            let mut file = std::fs::OpenOptions::new().read(true).write(writable).open(path)?;
            let bytes = file.seek(SeekFrom::End(0))?;
            Ok(FileDisk { file, sectors: bytes / SECTOR_BYTES as u64, writable })
        }
    }

    impl BlockDevice for FileDisk {
        fn sector_count(&self) -> u64 {
            self.sectors
        }
        fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            check_request(lba, buf.len(), self.sectors)?;
            self.file
                .seek(SeekFrom::Start(lba * SECTOR_BYTES as u64))
                .and_then(|_| self.file.read_exact(buf))
                .map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
        }
        fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
            if !self.writable {
                return Err(BlockError::ReadOnly);
            }
            check_request(lba, buf.len(), self.sectors)?;
            self.file
                .seek(SeekFrom::Start(lba * SECTOR_BYTES as u64))
                .and_then(|_| self.file.write_all(buf))
                .map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
        }
    }
}

#[cfg(feature = "std")]
pub use host_file::FileDisk;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memdisk_round_trip_and_bounds() {
        let mut d = MemDisk::zeroed(4);
        let data = [0xABu8; 1024];
        d.write_sectors(2, &data).unwrap();
        let mut back = [0u8; 1024];
        d.read_sectors(2, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            d.read_sectors(3, &mut back),
            Err(BlockError::OutOfRange { lba: 3, sectors: 2, device_sectors: 4 })
        );
        assert_eq!(d.read_sectors(0, &mut [0u8; 100]), Err(BlockError::UnalignedBuffer { bytes: 100 }));
    }

    #[test]
    fn window_offsets_and_limits() {
        let mut d = MemDisk::zeroed(10);
        {
            let mut w = Window { inner: &mut d, start_lba: 5, sectors: 3 };
            w.write_sectors(1, &[7u8; 512]).unwrap();
            assert!(w.write_sectors(3, &[7u8; 512]).is_err());
        }
        assert_eq!(d.bytes[6 * 512], 7);
        assert_eq!(d.bytes[5 * 512], 0);
    }
}
