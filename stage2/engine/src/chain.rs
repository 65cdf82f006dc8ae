//! VHD, VMDK and VDI images, and their differencing chains, as an emulated disk.
//!
//! stage2 resolved the chain on the host filesystem and handed over every file of it (path and
//! host extent list). Here the chain is opened again with the same core-library code, with a
//! locator that can only open those files, so both sides agree on what the chain is. Reads of
//! allocated data go from the host disk straight into the guest's buffer, like raw images;
//! everything else (zeros, compressed grains, writes that allocate) goes through `image::Disk`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vboot::image::disk::Source;
use vboot::image::{open_chain, ChainOptions, Disk, ImageError, ListedFile, ListedFiles};
use vboot::int13::{Chs, DiskError, EmulatedDisk, GuestMemory, Status, StraightRun};
use vboot::resident::PlannedDrive;

use crate::hostdisk::HostIo;

pub struct ChainDisk {
    /// Every file of the chain is an `ExtentFile` on the host disk, which says where a run of
    /// data lies there (`Disk::host_run`).
    disk: Disk,
    io: HostIo,
    sectors: u64,
    read_only: bool,
    /// Room for the largest transfer that goes through `image::Disk` (zeros, compressed grains,
    /// writes), allocated once here instead of on every INT 13h call.
    scratch: Vec<u8>,
}

/// Sectors a request is split into when it goes through `image::Disk` instead of straight to
/// the host disk.
const SCRATCH_SECTORS: u64 = 127;

impl ChainDisk {
    pub fn open(io: HostIo, d: &PlannedDrive, parent_dir: Option<String>) -> Result<ChainDisk, String> {
        let files: Vec<ListedFile> = d
            .layers
            .iter()
            .map(|l| ListedFile { path: l.path.clone(), size_bytes: l.size_bytes, extents: l.extents.clone() })
            .collect();
        let leaf = files.first().ok_or("no image")?.path.clone();
        // Opened writable even for a read-only drive: `read_only` refuses the guest's writes
        // below, and `restore` must be able to empty the leaf.
        let mut locator = ListedFiles { files, device: io, writable: true };
        let (layers, warnings) = open_chain(&leaf, &mut locator, &ChainOptions { parent_dir, lenient_cid: false })
            .map_err(|e| format!("{}", e))?;
        let disk = Disk::new(layers, warnings).map_err(|e| format!("{}", e))?;
        let sectors = disk.sectors();
        Ok(ChainDisk { disk, io, sectors, read_only: d.read_only, scratch: vec![0u8; SCRATCH_SECTORS as usize * 512] })
    }

    /// `restore`: empty the leaf, so the disk reads as its parent again.
    pub fn restore(&mut self) -> Result<(), String> {
        if self.disk.layers().len() < 2 {
            return Err(String::from("restore: the image is not a differencing image; there is nothing to go back to"));
        }
        self.disk.discard_leaf().map_err(|e| format!("restore: {}", e))
    }
}

impl EmulatedDisk for ChainDisk {
    fn block_count(&self) -> u64 {
        self.sectors
    }
    fn block_bytes(&self) -> u32 {
        512
    }
    fn geometry(&self) -> Option<Chs> {
        None
    }
    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        let mut done = 0u64;
        let count = count as u64;
        while done < count {
            let sector = lba + done;
            let fail = |s: Status| DiskError { done_blocks: done as u32, status: s };
            let run = self.disk.lookup(sector).map_err(|_| fail(Status::SECTOR_NOT_FOUND))?;
            let n = run.sectors.min(count - done).min(SCRATCH_SECTORS);
            let linear = buf_linear + done * 512;
            match run.source {
                Source::Data { layer, file, offset_bytes } if offset_bytes % 512 == 0 => {
                    let (host, contiguous) =
                        self.disk.host_run(layer, file, offset_bytes).ok_or(fail(Status::SECTOR_NOT_FOUND))?;
                    let n = n.min(contiguous);
                    self.io.guest_io(false, host, n, mem, linear).map_err(fail)?;
                    done += n;
                }
                Source::Zero => {
                    let zeros = &mut self.scratch[..n as usize * 512];
                    zeros.fill(0);
                    mem.write(linear, zeros).map_err(|_| fail(Status::BOUNDARY_ERROR))?;
                    done += n;
                }
                _ => {
                    let tmp = &mut self.scratch[..n as usize * 512];
                    self.disk.read(sector, tmp).map_err(|_| fail(Status::SECTOR_NOT_FOUND))?;
                    mem.write(linear, tmp).map_err(|_| fail(Status::BOUNDARY_ERROR))?;
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// Allocated data of one layer, for reads only: a write may allocate in the leaf or set
    /// block bitmaps, which only `image::Disk` knows how to do (the engine clears the run at
    /// its next call, so a write through it never leaves a stale run behind).
    fn straight_run(&mut self, lba: u64) -> Option<StraightRun> {
        if lba >= self.sectors {
            return None;
        }
        let run = self.disk.lookup(lba).ok()?;
        match run.source {
            Source::Data { layer, file, offset_bytes } if offset_bytes % 512 == 0 => {
                let (host_lba, contiguous) = self.disk.host_run(layer, file, offset_bytes)?;
                let blocks = run.sectors.min(contiguous);
                // Where the leaf holds the same sectors and a write there is only that write,
                // the stub may write them too (the shorter of the two runs).
                match self.disk.in_place_run(lba) {
                    Some((in_place_lba, sectors)) if !self.read_only && in_place_lba == host_lba => {
                        Some(StraightRun { lba, blocks: blocks.min(sectors), host_lba, writable: true })
                    }
                    _ => Some(StraightRun { lba, blocks, host_lba, writable: false }),
                }
            }
            _ => None,
        }
    }

    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED });
        }
        let mut done = 0u64;
        let count = count as u64;
        while done < count {
            let fail = |s: Status| DiskError { done_blocks: done as u32, status: s };
            // Data the leaf already holds, where nothing else changes: straight from the guest's
            // buffer to the host disk, like a raw image (the host sectors are the file's own).
            if let Some((host_lba, sectors)) = self.disk.in_place_run(lba + done) {
                let n = sectors.min(count - done).min(SCRATCH_SECTORS);
                self.io.guest_io(true, host_lba, n, mem, buf_linear + done * 512).map_err(fail)?;
                done += n;
                continue;
            }
            let n = (count - done).min(SCRATCH_SECTORS);
            let tmp = &mut self.scratch[..n as usize * 512];
            let linear = buf_linear + done * 512;
            mem.read(linear, tmp).map_err(|_| fail(Status::BOUNDARY_ERROR))?;
            // New blocks (VHD), grains (VMDK) or blocks (VDI) are allocated here, inside the slack
            // the file already owns, in the order of invariant 3 (docs/architecture.md); no slack
            // is a write fault. Where the guest's buffer is real memory below 1 MiB, the data
            // goes to the host from there (`with_guest_mirror`), not through the bounce buffer.
            let tmp: &[u8] = tmp;
            let direct = mem.is_physical() && linear + n * 512 <= 0x10_0000;
            let disk = &mut self.disk;
            let result = if direct {
                crate::hostdisk::with_guest_mirror(tmp, linear as u32, || disk.write(lba + done, tmp))
            } else {
                disk.write(lba + done, tmp)
            };
            result.map_err(|e| match e {
                ImageError::ReadOnly { .. } => fail(Status::WRITE_PROTECTED),
                _ => fail(Status::WRITE_FAULT),
            })?;
            done += n;
        }
        Ok(())
    }
}
