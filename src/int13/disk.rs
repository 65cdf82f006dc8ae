//! What an emulated drive must provide: blocks in and out of guest memory.

use super::chs::Chs;
use super::memory::GuestMemory;
use super::Status;
use crate::block::{BlockDevice, BlockError, SECTOR_BYTES};
use alloc::vec::Vec;

/// A transfer that stopped early: `done_blocks` blocks reached their destination before the
/// failure, `status` is the INT 13h status to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskError {
    pub done_blocks: u32,
    pub status: Status,
}

/// Blocks of an emulated drive that lie on consecutive sectors of the host disk, one for one:
/// the resident stub serves calls inside such a run without the engine (docs/int13.md, "The
/// real-mode fast path").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StraightRun {
    /// The first block and how many follow it straight on the host disk.
    pub lba: u64,
    pub blocks: u64,
    /// Where `lba` lies on the host disk.
    pub host_lba: u64,
    /// Whether writing these blocks is a write of the same host sectors and nothing else (no
    /// allocation, no metadata, no overlay): only then may the stub write them itself.
    pub writable: bool,
}

/// The storage behind one emulated drive, in its own block size. The INT 13h layer has already
/// checked that `lba..lba+count` lies inside `block_count()`.
pub trait EmulatedDisk {
    /// Size in blocks of `block_bytes()`.
    fn block_count(&self) -> u64;
    /// 512 for hard disks and floppies, 2048 for a no-emulation CD.
    fn block_bytes(&self) -> u32;
    /// The image's own geometry (VHD footer, partition table ...), if it has one.
    fn geometry(&self) -> Option<Chs>;
    fn read_only(&self) -> bool;
    /// Copy blocks from the disk straight into guest memory at `buf_linear`.
    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError>;
    /// Copy blocks from guest memory at `buf_linear` to the disk.
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError>;
    /// The straight run that starts at block `lba`, if the blocks there lie one for one on the
    /// host disk. Only 512-byte-block disks that sit in place on the host have such runs.
    fn straight_run(&mut self, _lba: u64) -> Option<StraightRun> {
        None
    }
}

impl<T: EmulatedDisk + ?Sized> EmulatedDisk for &mut T {
    fn block_count(&self) -> u64 {
        (**self).block_count()
    }
    fn block_bytes(&self) -> u32 {
        (**self).block_bytes()
    }
    fn geometry(&self) -> Option<Chs> {
        (**self).geometry()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError> {
        (**self).read(lba, count, mem, buf_linear)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError> {
        (**self).write(lba, count, mem, buf_linear)
    }
    fn straight_run(&mut self, lba: u64) -> Option<StraightRun> {
        (**self).straight_run(lba)
    }
}

/// Status for a backing-store failure: iPXE reports 04h for every read failure; a write that
/// the device refuses is "write-protected", any other write failure a write fault.
fn status_of(e: &BlockError, writing: bool) -> Status {
    match e {
        BlockError::ReadOnly => Status::WRITE_PROTECTED,
        _ if writing => Status::WRITE_FAULT,
        _ => Status::SECTOR_NOT_FOUND,
    }
}

/// Guest memory that cannot be reached (a flat buffer above what the engine maps, or past the
/// end of memory). memdisk answers flat buffers above 4 GiB with 09h.
pub const MEMORY_UNREACHABLE: Status = Status::BOUNDARY_ERROR;

/// An [`EmulatedDisk`] over any 512-byte [`BlockDevice`], copying through a bounce buffer in
/// chunks. With `block_bytes` 2048 it presents a CD image (four device sectors per block).
pub struct BlockDisk<D> {
    pub device: D,
    block_bytes: u32,
    geometry: Option<Chs>,
    read_only: bool,
    bounce: Vec<u8>,
}

/// Bounce-buffer size: 64 KiB is the largest seg:off transfer a caller can ask for.
const BOUNCE_BYTES: usize = 64 * 1024;

impl<D: BlockDevice> BlockDisk<D> {
    /// `block_bytes` must be a multiple of 512 (512 or 2048); anything else is refused.
    pub fn new(device: D, block_bytes: u32, geometry: Option<Chs>, read_only: bool) -> Option<Self> {
        if block_bytes == 0 || !(block_bytes as usize).is_multiple_of(SECTOR_BYTES) || block_bytes as usize > BOUNCE_BYTES {
            return None;
        }
        Some(BlockDisk { device, block_bytes, geometry, read_only, bounce: alloc::vec![0; BOUNCE_BYTES] })
    }

    fn sectors_per_block(&self) -> u64 {
        self.block_bytes as u64 / SECTOR_BYTES as u64
    }

    fn blocks_per_chunk(&self) -> u32 {
        (BOUNCE_BYTES / self.block_bytes as usize) as u32
    }

    /// One chunk that fits the bounce buffer; on error, the exact number of whole blocks done.
    fn transfer_chunk(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64, writing: bool)
        -> Result<(), DiskError> {
        let bytes = count as usize * self.block_bytes as usize;
        let fail = |status| DiskError { done_blocks: 0, status };
        let first_sector = lba.checked_mul(self.sectors_per_block()).ok_or(fail(Status::SECTOR_NOT_FOUND))?;
        let buf = self.bounce.get_mut(..bytes).ok_or(fail(Status::INVALID))?;
        if writing {
            mem.read(buf_linear, buf).map_err(|_| fail(MEMORY_UNREACHABLE))?;
            self.device.write_sectors(first_sector, buf).map_err(|e| fail(status_of(&e, true)))
        } else {
            self.device.read_sectors(first_sector, buf).map_err(|e| fail(status_of(&e, false)))?;
            mem.write(buf_linear, buf).map_err(|_| fail(MEMORY_UNREACHABLE))
        }
    }

    fn transfer(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64, writing: bool)
        -> Result<(), DiskError> {
        if writing && self.read_only {
            return Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED });
        }
        let block_bytes = self.block_bytes as u64;
        let mut done = 0u32;
        while done < count {
            let n = (count - done).min(self.blocks_per_chunk());
            let at = buf_linear + done as u64 * block_bytes;
            if self.transfer_chunk(lba + done as u64, n, mem, at, writing).is_err() {
                // Redo the failed chunk block by block so the caller learns exactly how far it got.
                for i in 0..n {
                    let at = buf_linear + (done + i) as u64 * block_bytes;
                    if let Err(e) = self.transfer_chunk(lba + (done + i) as u64, 1, mem, at, writing) {
                        return Err(DiskError { done_blocks: done + i, status: e.status });
                    }
                }
            }
            done += n;
        }
        Ok(())
    }
}

impl<D: BlockDevice> EmulatedDisk for BlockDisk<D> {
    fn block_count(&self) -> u64 {
        self.device.sector_count() / self.sectors_per_block()
    }
    fn block_bytes(&self) -> u32 {
        self.block_bytes
    }
    fn geometry(&self) -> Option<Chs> {
        self.geometry
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError> {
        self.transfer(lba, count, mem, buf_linear, false)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64)
        -> Result<(), DiskError> {
        self.transfer(lba, count, mem, buf_linear, true)
    }
}
