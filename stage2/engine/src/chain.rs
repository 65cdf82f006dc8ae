//! VHD, VMDK and VDI images, and their differencing chains, as an emulated disk.
//!
//! stage2 resolved the chain on the host filesystem and handed over every file of it (path and
//! host extent list). Here the chain is opened again with the same core-library code, with a
//! locator that can only open those files, so both sides agree on what the chain is. Reads of
//! allocated data go from the host disk straight into the guest's buffer, like raw images;
//! everything else (zeros, compressed grains, writes that allocate) goes through `image::Disk`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vboot::fs::{ExtentList, LbaIndex};
use vboot::image::disk::Source;
use vboot::image::{chain, open_chain, ChainOptions, Disk, ImageError, ImageFile, ParentLocator};
use vboot::int13::{Chs, DiskError, EmulatedDisk, GuestMemory, Status};
use vboot::resident::PlannedDrive;

use crate::hostdisk::HostIo;

/// One file of the chain, read and written in place through its extents.
pub struct ExtentFile {
    io: HostIo,
    name: String,
    size_bytes: u64,
    extents: ExtentList,
    lbas: LbaIndex,
}

impl ExtentFile {
    fn lba_of(&self, sector: u64) -> Result<(u64, u64), ImageError> {
        self.extents.lookup(sector).ok_or_else(|| ImageError::Io {
            image: self.name.clone(),
            offset_bytes: sector * 512,
            detail: "outside the file's extent list".into(),
        })
    }

    fn io_err(&self, offset: u64, s: Status) -> ImageError {
        ImageError::Io { image: self.name.clone(), offset_bytes: offset, detail: format!("{}", s) }
    }
}

impl ImageFile for ExtentFile {
    fn len_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        vboot::image::check_in_place(&self.name, offset_bytes, buf.len(), self.size_bytes, "read past the end of the file")?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset_bytes + done as u64;
            let (lba, run) = self.lba_of(pos / 512)?;
            let skip = (pos % 512) as usize;
            let whole = ((buf.len() - done) / 512) as u64;
            if skip == 0 && whole > 0 {
                // Whole sectors straight into `buf`, one extent run at a time (read_host splits
                // them by its bounce buffer: the table reads at init take few BIOS calls).
                let bytes = whole.min(run) as usize * 512;
                self.io.read_host(lba, &mut buf[done..done + bytes]).map_err(|s| self.io_err(pos, s))?;
                done += bytes;
                continue;
            }
            let mut sector = [0u8; 512];
            self.io.read_host(lba, &mut sector).map_err(|s| self.io_err(pos, s))?;
            let take = (512 - skip).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&sector[skip..skip + take]);
            done += take;
        }
        Ok(())
    }

    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        vboot::image::check_in_place(&self.name, offset_bytes, buf.len(), self.size_bytes, "a boot-time file never grows")?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset_bytes + done as u64;
            let (lba, run) = self.lba_of(pos / 512)?;
            let skip = (pos % 512) as usize;
            let whole = ((buf.len() - done) / 512) as u64;
            if skip == 0 && whole > 0 {
                // Whole sectors go out as one transfer per extent run (each BIOS call costs far
                // more than the bytes it carries: new blocks are written 1 MiB at a time).
                let n = whole.min(run);
                if !self.lbas.contains(lba, n) {
                    return Err(self.io_err(pos, Status::WRITE_FAULT));
                }
                let bytes = n as usize * 512;
                self.io.write_host(lba, &buf[done..done + bytes]).map_err(|s| self.io_err(pos, s))?;
                done += bytes;
                continue;
            }
            let take = (512 - skip).min(buf.len() - done);
            let mut sector = [0u8; 512];
            if skip != 0 || take != 512 {
                self.io.read_host(lba, &mut sector).map_err(|s| self.io_err(pos, s))?;
            }
            sector[skip..skip + take].copy_from_slice(&buf[done..done + take]);
            // Invariant 1 (docs/architecture.md): the sector is the file's own.
            if !self.lbas.contains(lba, 1) {
                return Err(self.io_err(pos, Status::WRITE_FAULT));
            }
            self.io.write_host(lba, &sector).map_err(|s| self.io_err(pos, s))?;
            done += take;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Opens only the files stage2 handed over.
struct PlanLocator {
    files: Vec<(String, u64, ExtentList)>,
    io: HostIo,
}

impl PlanLocator {
    fn find(&self, path: &str) -> Option<&(String, u64, ExtentList)> {
        chain::find_listed(&self.files, path, |(p, _, _)| p.as_str())
    }
}

impl ParentLocator for PlanLocator {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let (name, size, extents) = self.find(path)?.clone();
        Some(Box::new(ExtentFile { io: self.io, name, size_bytes: size, lbas: extents.lba_index(), extents }))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        chain::list_listed(&self.files, dir, |(p, _, _)| p.as_str())
    }
}

pub struct ChainDisk {
    disk: Disk,
    io: HostIo,
    /// Host extents of each (layer, file) of the chain.
    files: Vec<Vec<ExtentList>>,
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
        let files: Vec<(String, u64, ExtentList)> =
            d.layers.iter().map(|l| (l.path.clone(), l.size_bytes, l.extents.clone())).collect();
        let leaf = files.first().ok_or("no image")?.0.clone();
        let mut locator = PlanLocator { files, io };
        let (layers, warnings) = open_chain(&leaf, &mut locator, &ChainOptions { parent_dir, lenient_cid: false })
            .map_err(|e| format!("{}", e))?;
        let disk = Disk::new(layers, warnings).map_err(|e| format!("{}", e))?;
        let mut table = Vec::new();
        for layer in disk.layers() {
            let mut per = Vec::new();
            for name in layer.file_names() {
                let (_, _, ext) = locator
                    .find(&name)
                    .ok_or_else(|| format!("{}: file {} was not handed over by stage2", leaf, name))?;
                per.push(ext.clone());
            }
            table.push(per);
        }
        let sectors = disk.sectors();
        Ok(ChainDisk { disk, io, files: table, sectors, read_only: d.read_only, scratch: vec![0u8; SCRATCH_SECTORS as usize * 512] })
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
                    let ext = self
                        .files
                        .get(layer as usize)
                        .and_then(|l| l.get(file as usize))
                        .ok_or(fail(Status::SECTOR_NOT_FOUND))?;
                    let (host, contiguous) = ext.lookup(offset_bytes / 512).ok_or(fail(Status::SECTOR_NOT_FOUND))?;
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

    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED });
        }
        let mut done = 0u64;
        let count = count as u64;
        while done < count {
            let n = (count - done).min(SCRATCH_SECTORS);
            let tmp = &mut self.scratch[..n as usize * 512];
            let fail = |s: Status| DiskError { done_blocks: done as u32, status: s };
            mem.read(buf_linear + done * 512, tmp).map_err(|_| fail(Status::BOUNDARY_ERROR))?;
            // New blocks (VHD), grains (VMDK) or blocks (VDI) are allocated here, inside the slack
            // the file already owns, in the order of invariant 3 (docs/architecture.md); no slack
            // is a write fault.
            self.disk.write(lba + done, tmp).map_err(|e| match e {
                ImageError::ReadOnly { .. } => fail(Status::WRITE_PROTECTED),
                _ => fail(Status::WRITE_FAULT),
            })?;
            done += n;
        }
        Ok(())
    }
}
