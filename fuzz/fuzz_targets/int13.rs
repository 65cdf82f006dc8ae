//! `int13::handle` with arbitrary registers and guest memory over emulated drives (hard disk,
//! floppy, no-emulation CD, a CD's emulated floppy or hard disk) whose image file is fragmented
//! on an instrumented host disk.
//!
//! Input: a configuration (drive kinds, read-only, image size up to 2^40 sectors, the image's
//! own CHS geometry, fragmentation, sector 0 of the image), then up to 8 calls, each the full
//! register image plus 32 bytes written at DS:SI before the call (a disk address packet, an
//! AH=48h buffer's size word). Checks, whatever the registers say (count 0, counts past 127,
//! 64-bit flat buffers, LBA + count overflowing, CHS past the geometry):
//! - the host disk is only ever asked for sectors inside the image file's extents (the gaps
//!   between them belong to other files: touching one is a corrupted host filesystem);
//! - an emulated drive is only asked for blocks inside it;
//! - guest memory is touched only inside what the registers describe: the BDA bytes INT 13h
//!   keeps (0040:0010, 0040:0041, 0040:0074-0075), the packet at DS:SI (read; its count fields
//!   written back), the data buffer the call names (ES:BX for CHS with AL sectors; the packet's
//!   seg:off or flat buffer for its count), in the direction of the transfer, the AH=48h and
//!   AH=4Bh result buffers at DS:SI; an access that wraps around 2^64 is outside everything;
//! - no panic (overflow checks on).
//! Guest memory is 2 MiB; the harness records every access before it answers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use vboot::block::{BlockDevice, BlockError};
use vboot::fs::{ExtentList, LbaIndex};
use vboot::int13::{
    handle, BlockDisk, CdEmulation, Chs, DiskError, DriveKind, DriveSet, ElToritoBoot, EmulatedDisk, FarPtr,
    GuestMemory, MemoryError, Regs,
};
use vboot_fuzz::Cursor;

/// Guest RAM the harness models; above it memory "cannot be reached" (an engine's answer).
const RAM_BYTES: u64 = 2 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Read,
    Write,
    Both,
}

struct Region {
    start: u128,
    end: u128,
    dir: Dir,
    what: &'static str,
}

struct Memory {
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
    allowed: Vec<Region>,
    checking: bool,
}

impl Memory {
    fn check(&self, linear: u64, len: usize, dir: Dir) {
        if !self.checking || len == 0 {
            return;
        }
        let (start, end) = (linear as u128, linear as u128 + len as u128);
        let ok = self.allowed.iter().any(|r| r.start <= start && end <= r.end && (r.dir == Dir::Both || r.dir == dir));
        if !ok {
            let regions: Vec<String> =
                self.allowed.iter().map(|r| format!("{} {:#x}..{:#x} {:?}", r.what, r.start, r.end, r.dir)).collect();
            panic!("guest memory {:?} at {:#x}+{:#x} is outside what the registers describe: {:?}", dir, linear, len, regions);
        }
    }
    fn raw_read(&self, linear: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let a = linear + done as u64;
            let (page, at) = (a / 4096, (a % 4096) as usize);
            let n = (4096 - at).min(buf.len() - done);
            match self.pages.get(&page) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[at..at + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }
    fn raw_write(&mut self, linear: u64, buf: &[u8]) {
        let mut done = 0;
        while done < buf.len() {
            let a = linear + done as u64;
            let (page, at) = (a / 4096, (a % 4096) as usize);
            let n = (4096 - at).min(buf.len() - done);
            self.pages.entry(page).or_insert_with(|| Box::new([0u8; 4096]))[at..at + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
    }
    fn reachable(linear: u64, len: usize) -> bool {
        linear.checked_add(len as u64).map_or(false, |e| e <= RAM_BYTES)
    }
}

impl GuestMemory for Memory {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.check(linear, buf.len(), Dir::Read);
        if !Self::reachable(linear, buf.len()) {
            return Err(MemoryError { linear, bytes: buf.len() });
        }
        self.raw_read(linear, buf);
        Ok(())
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.check(linear, buf.len(), Dir::Write);
        if !Self::reachable(linear, buf.len()) {
            return Err(MemoryError { linear, bytes: buf.len() });
        }
        self.raw_write(linear, buf);
        Ok(())
    }
}

/// The host disk: every access must be a sector of the image file.
struct HostDisk {
    file: LbaIndex,
    sector0_lba: u64,
    sector0: [u8; 512],
}

impl HostDisk {
    fn check(&self, lba: u64, n: u64) {
        assert!(self.file.contains(lba, n), "host sectors {}+{} are not the image file's", lba, n);
    }
}

impl BlockDevice for HostDisk {
    fn sector_count(&self) -> u64 {
        1 << 44
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.check(lba, buf.len() as u64 / 512);
        for (i, s) in buf.chunks_mut(512).enumerate() {
            let l = lba + i as u64;
            if l == self.sector0_lba {
                s.copy_from_slice(&self.sector0);
            } else {
                s.fill(l as u8);
            }
        }
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.check(lba, buf.len() as u64 / 512);
        Ok(())
    }
}

/// The image file as a block device, through its extent list, as the engine reaches it.
struct FileDevice<'h> {
    host: &'h mut HostDisk,
    extents: ExtentList,
    sectors: u64,
}

impl FileDevice<'_> {
    fn each(&mut self, lba: u64, len: usize, mut f: impl FnMut(&mut HostDisk, u64, usize, usize) -> Result<(), BlockError>) -> Result<(), BlockError> {
        let n = len as u64 / 512;
        assert!(lba.checked_add(n).map_or(false, |e| e <= self.sectors), "file sectors {}+{} asked of a {}-sector file", lba, n, self.sectors);
        let mut done = 0u64;
        while done < n {
            let (host, run) = self.extents.lookup(lba + done).expect("file sector outside the extent list");
            let k = run.min(n - done);
            f(self.host, host, (done * 512) as usize, (k * 512) as usize)?;
            done += k;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice<'_> {
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.each(lba, buf.len(), |h, host, at, len| h.read_sectors(host, &mut buf[at..at + len]))
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.each(lba, buf.len(), |h, host, at, len| h.write_sectors(host, &buf[at..at + len]))
    }
}

/// An emulated drive that checks what INT 13h asks of it.
struct Checked<D> {
    inner: D,
}

impl<D: EmulatedDisk> Checked<D> {
    fn check(&self, lba: u64, count: u32) {
        if count == 0 {
            return;
        }
        let end = lba as u128 + count as u128;
        assert!(end <= self.inner.block_count() as u128, "blocks {}+{} asked of a {}-block drive", lba, count, self.inner.block_count());
    }
}

impl<D: EmulatedDisk> EmulatedDisk for Checked<D> {
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
        self.inner.read_only()
    }
    fn read(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf: u64) -> Result<(), DiskError> {
        self.check(lba, count);
        self.inner.read(lba, count, mem, buf)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf: u64) -> Result<(), DiskError> {
        self.check(lba, count);
        self.inner.write(lba, count, mem, buf)
    }
}

fn linear(seg: u16, off: u16) -> u128 {
    seg as u128 * 16 + off as u128
}

/// What the registers (and the packet they point at) describe for this call.
fn allowed(regs: &Regs, mem: &Memory, block_bytes: Option<u32>) -> Vec<Region> {
    let mut v = vec![
        Region { start: 0x410, end: 0x412, dir: Dir::Both, what: "BDA equipment word" },
        Region { start: 0x441, end: 0x442, dir: Dir::Both, what: "BDA floppy status" },
        Region { start: 0x474, end: 0x476, dir: Dir::Both, what: "BDA disk status and count" },
    ];
    let Some(bb) = block_bytes.map(|b| b as u128) else { return v };
    let ah = regs.ah();
    let ds_si = linear(regs.ds, regs.si());
    let data_dir = |ah: u8| if ah == 0x02 || ah == 0x42 { Dir::Write } else { Dir::Read };
    match ah {
        0x02 | 0x03 => {
            let start = linear(regs.es, regs.bx());
            v.push(Region { start, end: start + regs.al() as u128 * bb, dir: data_dir(ah), what: "ES:BX buffer" });
        }
        0x42 | 0x43 | 0x44 | 0x47 => {
            v.push(Region { start: ds_si, end: ds_si + 0x20, dir: Dir::Read, what: "packet" });
            v.push(Region { start: ds_si + 2, end: ds_si + 4, dir: Dir::Write, what: "packet count" });
            v.push(Region { start: ds_si + 0x18, end: ds_si + 0x1C, dir: Dir::Write, what: "packet long count" });
            if ah != 0x44 && ah != 0x47 && Memory::reachable(ds_si as u64, 0x20) {
                let mut p = [0u8; 0x20];
                mem.raw_read(ds_si as u64, &mut p);
                let size = p[0];
                let count = u16::from_le_bytes([p[2], p[3]]) as u128;
                let seg_off = linear(u16::from_le_bytes([p[6], p[7]]), u16::from_le_bytes([p[4], p[5]]));
                let flat = u64::from_le_bytes(p[0x10..0x18].try_into().unwrap()) as u128;
                let long = u32::from_le_bytes(p[0x18..0x1C].try_into().unwrap()) as u128;
                let short = count.min(0x7F);
                v.push(Region { start: seg_off, end: seg_off + short * bb, dir: data_dir(ah), what: "packet seg:off buffer" });
                if size >= 0x18 {
                    v.push(Region { start: flat, end: flat + short * bb, dir: data_dir(ah), what: "packet flat buffer" });
                }
                if size >= 0x20 && count == 0xFF {
                    v.push(Region { start: flat, end: flat + long * bb, dir: data_dir(ah), what: "packet flat buffer, long count" });
                }
            }
        }
        0x48 => v.push(Region { start: ds_si, end: ds_si + 0x20, dir: Dir::Both, what: "AH=48h buffer" }),
        0x4B => v.push(Region { start: ds_si, end: ds_si + 0x13, dir: Dir::Write, what: "AH=4Bh packet" }),
        _ => {}
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let config = c.u8();
    let read_only = config & 4 != 0;
    let mut sectors = (c.u64() % (1 << 40)).max(1);
    let geometry = (config & 8 != 0).then(|| Chs { cylinders: c.u32(), heads: c.u16() as u32, sectors_per_track: c.u16() as u32 });
    let kind = match config & 3 {
        0 => DriveKind::HardDisk,
        1 => DriveKind::Floppy { drive_type: 4, parameter_table: FarPtr { segment: 0xF000, offset: 0xEFC7 } },
        _ => DriveKind::Cdrom { boot: ElToritoBoot { media: 0, load_rba: c.u32(), load_segment: 0x7C0, load_sectors: 4 } },
    };
    let cd = matches!(kind, DriveKind::Cdrom { .. });
    if cd {
        sectors = (sectors / 4).max(1) * 4;
    }
    if let DriveKind::Floppy { .. } = kind {
        // Floppies need a floppy geometry: a standard size, or one memdisk's search finds.
        sectors = (sectors % (1 << 16)).max(1);
    }
    // The file's extents: up to 8 pieces in file order, placed on the host disk with gaps
    // between them (and in reverse order when config bit 4 says so).
    let pieces = (c.u8() % 8) as u64 + 1;
    let mut extents = ExtentList::default();
    let mut host = 100u64;
    let mut left = sectors;
    let mut placed = Vec::new();
    for i in 0..pieces {
        if left == 0 {
            break;
        }
        let n = if i + 1 == pieces { left } else { (c.u32() as u64 % left).max(1).min(left) };
        if n == 0 {
            break;
        }
        placed.push((host, n));
        host += n + 1 + c.u8() as u64;
        left -= n;
    }
    if config & 16 != 0 {
        let total: u64 = host;
        placed = placed.into_iter().map(|(h, n)| (total - h - n + 100, n)).collect();
    }
    for &(h, n) in &placed {
        extents.push(h, n);
    }
    if extents.total_sectors() != sectors {
        return;
    }
    let sector0: [u8; 512] = {
        let b = c.bytes(512);
        let mut s = [0u8; 512];
        s[..b.len()].copy_from_slice(b);
        s
    };
    let mut host = HostDisk { file: extents.lba_index(), sector0_lba: extents.lookup(0).unwrap().0, sector0 };
    let block_bytes = if cd { 2048 } else { 512 };
    let device = FileDevice { host: &mut host, extents, sectors };
    let Some(disk) = BlockDisk::new(device, block_bytes, geometry, read_only) else { return };
    let number = match kind {
        DriveKind::HardDisk => 0x80,
        DriveKind::Floppy { .. } => 0x00,
        DriveKind::Cdrom { .. } => 0xE0,
    };
    let mut drives = DriveSet::new();
    if drives.add(number, kind, Box::new(Checked { inner: disk })).is_err() {
        return;
    }
    let mut mem = Memory { pages: BTreeMap::new(), allowed: Vec::new(), checking: false };
    mem.raw_write(0x475, &[1]);
    mem.raw_write(0x410, &[0x41, 0]);
    drives.install_bda_counts(&mut mem);
    if !cd && config & 32 != 0 {
        // The drive is a CD's boot image, emulated: AX=4B00h/4B01h report it, 4B00h ends it.
        let media = if number == 0x80 { 4 } else { 2 };
        drives.set_cd_emulation(CdEmulation { drive: number, boot: ElToritoBoot { media, load_rba: 20, load_segment: 0, load_sectors: 4 } });
    }
    let numbers: Vec<(u8, u32)> = drives.drives().iter().map(|d| (d.number, d.disk.block_bytes())).collect();

    for _ in 0..8 {
        if c.is_empty() {
            break;
        }
        let mut regs = Regs {
            eax: c.u32(),
            ebx: c.u32(),
            ecx: c.u32(),
            edx: c.u32(),
            esi: c.u32(),
            edi: c.u32(),
            ebp: 0,
            ds: c.u16(),
            es: c.u16(),
            flags: c.u16(),
        };
        // Steer most calls at an emulated drive.
        let pick = c.u8();
        if pick & 0x80 == 0 {
            regs.set_dl(numbers[pick as usize % numbers.len()].0);
        }
        let packet = c.array::<32>();
        let ds_si = (regs.ds as u64) * 16 + regs.si() as u64;
        mem.raw_write(ds_si, &packet);
        // AH=4Bh may be answered for DL=7Fh or the emulated drive: its packet region is the
        // same whatever the drive.
        let block_bytes = if regs.ah() == 0x4B { Some(512) } else { numbers.iter().find(|(n, _)| *n == regs.dl()).map(|(_, b)| *b) };
        // `handle` first raises the BDA's drive counts back to what vboot set; a packet the guest
        // put over those bytes is read after that, so its buffer is described by the packet as
        // it is then (a finding of the 2026-12-06 run: a packet at 0040:0073).
        drives.reassert_bda_counts(&mut mem);
        mem.allowed = allowed(&regs, &mem, block_bytes);
        mem.checking = true;
        let _ = handle(&mut drives, &mut regs, &mut mem);
        mem.checking = false;
    }
});
