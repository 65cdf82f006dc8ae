//! `immutable`: a RAM overlay over any emulated disk. Writes land in the engine's heap, reads
//! see them, and the image files are never written; everything is gone at the next boot. When
//! the heap is full, further writes fail with a BIOS error rather than reaching the image.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use vboot::int13::{Chs, DiskError, EmulatedDisk, GuestMemory, Status};

pub struct RamOverlay {
    inner: Box<dyn EmulatedDisk>,
    sectors: BTreeMap<u64, Box<[u8; 512]>>,
    /// The most sectors the overlay may hold (the heap it may use / 512, with room to spare).
    max_sectors: usize,
}

impl RamOverlay {
    pub fn new(inner: Box<dyn EmulatedDisk>, heap_bytes: usize) -> RamOverlay {
        // Each sector costs its 512 bytes plus the tree's bookkeeping; keep a quarter spare.
        RamOverlay { inner, sectors: BTreeMap::new(), max_sectors: heap_bytes / 640 * 3 / 4 }
    }
}

impl EmulatedDisk for RamOverlay {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }
    fn block_bytes(&self) -> u32 {
        self.inner.block_bytes()
    }
    fn geometry(&self) -> Option<Chs> {
        self.inner.geometry()
    }
    fn read_only(&self) -> bool {
        false
    }

    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        self.inner.read(lba, count, mem, buf_linear)?;
        for (&s, data) in self.sectors.range(lba..lba + count as u64) {
            mem.write(buf_linear + (s - lba) * 512, &data[..])
                .map_err(|_| DiskError { done_blocks: (s - lba) as u32, status: Status::BOUNDARY_ERROR })?;
        }
        Ok(())
    }

    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        for i in 0..count as u64 {
            let fail = |s: Status| DiskError { done_blocks: i as u32, status: s };
            if !self.sectors.contains_key(&(lba + i)) && self.sectors.len() >= self.max_sectors {
                return Err(fail(Status::WRITE_FAULT));
            }
            let mut data = Box::new([0u8; 512]);
            mem.read(buf_linear + i * 512, &mut data[..]).map_err(|_| fail(Status::BOUNDARY_ERROR))?;
            self.sectors.insert(lba + i, data);
        }
        Ok(())
    }
}
