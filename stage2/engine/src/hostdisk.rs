//! A raw image file as an emulated disk: virtual sector -> file sector -> host LBA through the
//! file's extent list, then the original INT 13h (AH=42h/43h) on the host disk. Host sectors are
//! read straight into the guest's buffer when it lies below 1 MiB, else through the stub's
//! bounce buffer.

use alloc::format;
use alloc::string::String;
use vboot::fs::ExtentList;
use vboot::int13::{Chs, DiskError, EmulatedDisk, GuestMemory, Regs, Status};
use vboot::resident::PlannedDrive;

use crate::stub::{Stub, Vector, BOUNCE_BYTES};

/// At most this many sectors per AH=42h call (EDD's limit, and 127 * 512 + 15 fits a segment).
const MAX_SECTORS_PER_CALL: u64 = 127;

pub struct RawFile {
    stub: Stub,
    host_drive: u8,
    extents: ExtentList,
    sectors: u64,
    read_only: bool,
}

impl RawFile {
    pub fn new(stub: Stub, d: &PlannedDrive) -> Result<RawFile, String> {
        let layer = d.layers.first().ok_or_else(|| format!("drive {:#04x} has no image", d.number))?;
        if d.layers.len() != 1 || layer.format != 0 {
            return Err(format!("{}: only raw images are served by this engine", layer.path));
        }
        if layer.size_bytes % 512 != 0 {
            return Err(format!(
                "{} is {} bytes, not a whole number of 512-byte sectors",
                layer.path, layer.size_bytes
            ));
        }
        let sectors = layer.size_bytes / 512;
        if layer.extents.total_sectors() < sectors {
            return Err(format!("{}: its extent list covers less than the file", layer.path));
        }
        Ok(RawFile { stub, host_drive: d.host_drive, extents: layer.extents.clone(), sectors, read_only: d.read_only })
    }

    /// One AH=42h/43h call on the host disk into `buf_linear` (below 1 MiB).
    fn host_io(&self, write: bool, host_lba: u64, sectors: u64, buf_linear: u32) -> Result<(), Status> {
        let mut dap = [0u8; 16];
        dap[0] = 0x10;
        dap[2..4].copy_from_slice(&(sectors as u16).to_le_bytes());
        dap[4..6].copy_from_slice(&((buf_linear & 0xF) as u16).to_le_bytes());
        dap[6..8].copy_from_slice(&((buf_linear >> 4) as u16).to_le_bytes());
        dap[8..16].copy_from_slice(&host_lba.to_le_bytes());
        let dap_linear = self.stub.dap_linear();
        unsafe { core::ptr::copy_nonoverlapping(dap.as_ptr(), dap_linear as *mut u8, 16) };
        let mut r = Regs {
            eax: if write { 0x4300 } else { 0x4200 },
            edx: self.host_drive as u32,
            esi: dap_linear & 0xF,
            ds: (dap_linear >> 4) as u16,
            ..Regs::default()
        };
        self.stub.call_bios(Vector::Int13, &mut r);
        if r.flags & 1 != 0 {
            return Err(match r.ah() {
                0 => Status::SECTOR_NOT_FOUND,
                s => Status(s),
            });
        }
        Ok(())
    }

    fn transfer(&mut self, write: bool, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        let mut done: u32 = 0;
        let fail = |done: u32, status: Status| DiskError { done_blocks: done, status };
        while done < count {
            let (host_lba, run) =
                self.extents.lookup(lba + done as u64).ok_or(fail(done, Status::SECTOR_NOT_FOUND))?;
            let want = run.min((count - done) as u64).min(MAX_SECTORS_PER_CALL);
            let linear = buf_linear + done as u64 * 512;
            // Straight into the guest's buffer only when it is real memory below 1 MiB; a scratch
            // memory (engine_init's geometry probe reads sector 0 into one) goes through the bounce
            // buffer, or the BIOS would write into whatever physical address it names.
            let direct = mem.is_physical() && linear + want * 512 <= 0x10_0000;
            let n = if direct { want } else { want.min((BOUNCE_BYTES / 512) as u64) };
            let bytes = (n * 512) as usize;
            if write && !self.extents.contains_lbas(host_lba, n) {
                // DESIGN.md invariant 1: never write a host sector outside the image file.
                return Err(fail(done, Status::WRITE_FAULT));
            }
            let target = if direct { linear as u32 } else { self.stub.bounce_linear() };
            if write && !direct {
                let mut tmp = [0u8; BOUNCE_BYTES as usize];
                mem.read(linear, &mut tmp[..bytes]).map_err(|_| fail(done, Status::BOUNDARY_ERROR))?;
                unsafe { core::ptr::copy_nonoverlapping(tmp.as_ptr(), target as *mut u8, bytes) };
            }
            self.host_io(write, host_lba, n, target).map_err(|s| fail(done, s))?;
            if !write && !direct {
                let mut tmp = [0u8; BOUNCE_BYTES as usize];
                unsafe { core::ptr::copy_nonoverlapping(target as *const u8, tmp.as_mut_ptr(), bytes) };
                mem.write(linear, &tmp[..bytes]).map_err(|_| fail(done, Status::BOUNDARY_ERROR))?;
            }
            done += n as u32;
        }
        Ok(())
    }
}

impl EmulatedDisk for RawFile {
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
        self.transfer(false, lba, count, mem, buf_linear)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf_linear: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED });
        }
        self.transfer(true, lba, count, mem, buf_linear)
    }
}
