//! BIOS disks as `BlockDevice`s: INT 13h AH=42h/43h through the bounce buffer, or CHS (AH=02h/03h)
//! when the BIOS has no extensions.

use crate::bios::{self, Regs, BOUNCE_ADDR, BOUNCE_BYTES, DAP_ADDR, SMALL_BUF_ADDR};
use crate::lowmem;
use vboot::block::{check_request, BlockDevice, BlockError, SECTOR_BYTES};

const BOUNCE_SECTORS: usize = BOUNCE_BYTES / SECTOR_BYTES;

#[derive(Clone, Copy, Debug)]
pub struct Chs {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors_per_track: u32,
}

#[derive(Clone)]
pub struct BiosDisk {
    pub drive: u8,
    pub sectors: u64,
    pub edd: bool,
    pub chs: Option<Chs>,
}

impl BiosDisk {
    /// Probe a drive: `None` if the BIOS does not know it.
    pub fn probe(drive: u8) -> Option<BiosDisk> {
        let chs = geometry(drive);
        let mut r = Regs { eax: 0x4100, ebx: 0x55AA, edx: drive as u32, ..Default::default() };
        bios::call(0x13, &mut r);
        let edd = !r.cf() && (r.ebx & 0xFFFF) == 0xAA55 && r.ecx & 1 != 0;
        let mut sectors = 0u64;
        if edd {
            let mut buf = [0u8; 0x1A];
            buf[0] = 0x1A;
            lowmem::write(SMALL_BUF_ADDR, &buf);
            let (seg, off) = bios::seg_off(SMALL_BUF_ADDR);
            let mut r = Regs { eax: 0x4800, edx: drive as u32, esi: off as u32, ds: seg, ..Default::default() };
            bios::call(0x13, &mut r);
            if !r.cf() {
                lowmem::read(SMALL_BUF_ADDR, &mut buf);
                sectors = u64::from_le_bytes([buf[16], buf[17], buf[18], buf[19], buf[20], buf[21], buf[22], buf[23]]);
            }
        }
        if sectors == 0 {
            let g = chs?;
            sectors = g.cylinders as u64 * g.heads as u64 * g.sectors_per_track as u64;
        }
        Some(BiosDisk { drive, sectors, edd, chs })
    }

    /// What the BIOS offers for this disk, for the reach check (vboot::reach).
    pub fn access(&self) -> vboot::reach::BiosAccess {
        use vboot::reach::BiosAccess;
        match (self.edd && !crate::fault::pretend_no_edd(), self.chs) {
            (false, Some(g)) => BiosAccess::Chs { cylinders: g.cylinders, heads: g.heads, sectors_per_track: g.sectors_per_track },
            _ => BiosAccess::Extensions { sectors: self.sectors },
        }
    }

    fn transfer(&mut self, write: bool, lba: u64, count: usize) -> Result<(), BlockError> {
        if self.edd {
            let dap = vboot::int13::edd::DiskAddressPacket::seg_off_request(lba, count as u16, BOUNCE_ADDR);
            lowmem::write(DAP_ADDR, &dap);
            let (dseg, doff) = bios::seg_off(DAP_ADDR);
            let ah = if write { 0x43 } else { 0x42 };
            let mut r = Regs { eax: ah << 8, edx: self.drive as u32, esi: doff as u32, ds: dseg, ..Default::default() };
            bios::call(0x13, &mut r);
            if r.cf() {
                return Err(BlockError::Io { lba, status: r.ah() as u32 });
            }
            return Ok(());
        }
        let g = self.chs.ok_or(BlockError::Io { lba, status: 0x01 })?;
        for i in 0..count as u64 {
            let l = lba + i;
            let per_cyl = (g.heads * g.sectors_per_track) as u64;
            let cyl = l / per_cyl;
            if cyl > 1023 {
                return Err(BlockError::OutOfRange { lba: l, sectors: 1, device_sectors: 1024 * per_cyl });
            }
            let head = (l % per_cyl) / g.sectors_per_track as u64;
            let sector = l % g.sectors_per_track as u64 + 1;
            let (seg, off) = bios::seg_off(BOUNCE_ADDR + (i as u32) * SECTOR_BYTES as u32);
            let ah: u32 = if write { 0x03 } else { 0x02 };
            let mut r = Regs {
                eax: (ah << 8) | 1,
                ecx: (((cyl & 0xFF) as u32) << 8) | (((cyl >> 8) as u32 & 3) << 6) | sector as u32,
                edx: ((head as u32) << 8) | self.drive as u32,
                ebx: off as u32,
                es: seg,
                ..Default::default()
            };
            bios::call(0x13, &mut r);
            if r.cf() {
                return Err(BlockError::Io { lba: l, status: r.ah() as u32 });
            }
        }
        Ok(())
    }
}

/// AH=08h: the BIOS's CHS view of a drive.
pub fn geometry(drive: u8) -> Option<Chs> {
    let mut r = Regs { eax: 0x0800, edx: drive as u32, ..Default::default() };
    bios::call(0x13, &mut r);
    if r.cf() || r.ecx & 0x3F == 0 {
        return None;
    }
    let cl = r.ecx & 0xFF;
    let ch = (r.ecx >> 8) & 0xFF;
    let dh = (r.edx >> 8) & 0xFF;
    Some(Chs { cylinders: (ch | ((cl & 0xC0) << 2)) + 1, heads: dh + 1, sectors_per_track: cl & 0x3F })
}

/// Number of hard disks the BIOS reports (BDA 0040:0075).
pub fn hard_disk_count() -> u8 {
    lowmem::read_u8(0x475)
}

impl BlockDevice for BiosDisk {
    fn sector_count(&self) -> u64 {
        self.sectors
    }

    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        crate::fault::on_disk_read(crate::recovery::hooked());
        check_request(lba, buf.len(), self.sectors)?;
        for (i, chunk) in buf.chunks_mut(BOUNCE_SECTORS * SECTOR_BYTES).enumerate() {
            let at = lba + (i * BOUNCE_SECTORS) as u64;
            self.transfer(false, at, chunk.len() / SECTOR_BYTES)?;
            lowmem::read(BOUNCE_ADDR, chunk);
        }
        Ok(())
    }

    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sectors)?;
        for (i, chunk) in buf.chunks(BOUNCE_SECTORS * SECTOR_BYTES).enumerate() {
            let at = lba + (i * BOUNCE_SECTORS) as u64;
            lowmem::write(BOUNCE_ADDR, chunk);
            self.transfer(true, at, chunk.len() / SECTOR_BYTES)?;
        }
        Ok(())
    }
}
