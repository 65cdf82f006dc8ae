//! Raw images: virtual sector N is file bytes N*512.. . The virtual size is the file size
//! rounded down to whole sectors (a trailing partial sector is not addressable).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{Format, Identity, ImageError, ImageFile, Layer, Mapping, ParentLink, SECTOR_BYTES};

pub struct RawImage {
    file: Box<dyn ImageFile>,
    sectors: u64,
}

impl RawImage {
    pub fn open(file: Box<dyn ImageFile>) -> Result<Self, ImageError> {
        let sectors = file.len_bytes() / SECTOR_BYTES;
        Ok(RawImage { file, sectors })
    }
}

impl Layer for RawImage {
    fn memory_bytes(&self) -> u64 {
        core::mem::size_of::<Self>() as u64
    }
    fn format(&self) -> Format {
        Format::Raw
    }
    fn variant(&self) -> String {
        "raw".to_string()
    }
    fn name(&self) -> &str {
        self.file.name()
    }
    fn virtual_sectors(&self) -> u64 {
        self.sectors
    }
    fn map(&mut self, sector: u64) -> Result<(Mapping, u64), ImageError> {
        super::check_range(self.name(), sector, 1, self.sectors)?;
        Ok((Mapping::Data { file: 0, offset_bytes: sector * SECTOR_BYTES }, self.sectors - sector))
    }
    fn file_host_run(&self, _file: u16, offset_bytes: u64) -> Option<(u64, u64)> {
        self.file.host_run(offset_bytes)
    }
    fn read_file(&mut self, _file: u16, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.file.read_at(offset_bytes, buf)
    }
    fn identity(&self) -> Identity {
        Identity::default()
    }
    fn parent_link(&self) -> Option<ParentLink> {
        None
    }
    fn write(
        &mut self,
        sector: u64,
        buf: &[u8],
        _parent: &mut dyn FnMut(u64, &mut [u8]) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let sectors = buf.len() as u64 / SECTOR_BYTES;
        super::check_range(self.name(), sector, sectors, self.sectors)?;
        self.file.write_at(sector * SECTOR_BYTES, buf)
    }
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
