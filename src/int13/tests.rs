//! Host tests of the INT 13h semantics. Oracles: docs/int13.md ("Functions",
//! "Return discipline", "Where the reference implementations disagree", "Floppy formats").

use super::chs::{Chs, ChsAddress, FloppyFormat};
use super::disk::{BlockDisk, DiskError, EmulatedDisk, StraightRun};
use super::drives::{CdEmulation, DriveClass, DriveKind, DriveSet, DriveSetError, ElToritoBoot, FarPtr};
use super::memory::{bda, linear, GuestMemory, VecMemory};
use super::edd;
use crate::realmode::Regs;
use super::{fail_call, fast_run_after, handle, Outcome, Status};
use crate::block::{BlockDevice, BlockError, MemDisk};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// 1 MiB + the 64 KiB reachable through FFFF:xxxx + room for flat buffers above it.
const MEM_BYTES: usize = 0x20_0000;
const BUF: u64 = 0x1_0000; // 1000:0000
const DAP: u64 = 0x0_7000; // 0000:7000 (DS=0700h, SI=0)
const FLAT_BUF: u64 = 0x18_0000; // above 1 MiB

/// A disk whose 512-byte sector n holds n (as u32) repeated, xor a per-byte offset, so a
/// misplaced sector or byte shows.
fn pattern_disk(sectors: u64) -> MemDisk {
    let mut d = MemDisk::zeroed(sectors);
    for (lba, s) in d.bytes.chunks_mut(512).enumerate() {
        for (i, b) in s.iter_mut().enumerate() {
            *b = ((lba as u32).wrapping_mul(2654435761) >> (8 * (i % 4))) as u8 ^ (i / 4) as u8;
        }
    }
    d
}

fn sector_of(d: &MemDisk, lba: u64) -> Vec<u8> {
    d.bytes[lba as usize * 512..(lba as usize + 1) * 512].to_vec()
}

/// A block device that fails any request touching `fail_lba`.
struct FailingDevice {
    inner: MemDisk,
    fail_lba: u64,
}

impl BlockDevice for FailingDevice {
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let n = buf.len() as u64 / 512;
        if (lba..lba + n).contains(&self.fail_lba) {
            return Err(BlockError::Io { lba: self.fail_lba, status: 5 });
        }
        self.inner.read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        let n = buf.len() as u64 / 512;
        if (lba..lba + n).contains(&self.fail_lba) {
            return Err(BlockError::Io { lba: self.fail_lba, status: 5 });
        }
        self.inner.write_sectors(lba, buf)
    }
}

/// A disk of any size that holds no data (for size answers on disks too big to allocate).
struct SizedDisk {
    blocks: u64,
}

impl EmulatedDisk for SizedDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn block_bytes(&self) -> u32 {
        512
    }
    fn geometry(&self) -> Option<Chs> {
        None
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(&mut self, _: u64, _: u32, _: &mut dyn GuestMemory, _: u64) -> Result<(), DiskError> {
        Err(DiskError { done_blocks: 0, status: Status::SECTOR_NOT_FOUND })
    }
    fn write(&mut self, _: u64, _: u32, _: &mut dyn GuestMemory, _: u64) -> Result<(), DiskError> {
        Err(DiskError { done_blocks: 0, status: Status::WRITE_PROTECTED })
    }
}

fn block_disk<D: BlockDevice + 'static>(d: D, geometry: Option<Chs>, ro: bool) -> Box<dyn EmulatedDisk> {
    Box::new(BlockDisk::new(d, 512, geometry, ro).unwrap())
}

/// Memory with one real hard disk in the BDA, no floppies.
fn machine() -> VecMemory {
    let mut m = VecMemory::zeroed(MEM_BYTES);
    bda::set_hard_disk_count(&mut m, 1);
    m
}

fn hdd_set(disk: Box<dyn EmulatedDisk>) -> DriveSet<'static> {
    let mut set = DriveSet::new();
    set.add(0x80, DriveKind::HardDisk, disk).unwrap();
    set
}

/// Registers for AH=`ah` on drive `dl` with the upper halves and unrelated registers set to
/// values a function must not touch.
fn regs(ah: u8, dl: u8) -> Regs {
    let mut r = Regs {
        eax: 0xA5A5_0000,
        ebx: 0xB6B6_0000,
        ecx: 0xC7C7_0000,
        edx: 0xD8D8_0000,
        esi: 0xE9E9_0000,
        edi: 0xFAFA_1234,
        ebp: 0x1B1B_5678,
        ds: 0,
        es: 0,
        flags: 0x0202,
    };
    r.set_ah(ah);
    r.set_dl(dl);
    r
}

fn chs_regs(ah: u8, count: u8, a: ChsAddress) -> Regs {
    let mut r = regs(ah, 0x80);
    r.set_al(count);
    let (cx, dh) = a.to_regs();
    r.set_cx(cx);
    r.set_dh(dh);
    r.es = (BUF >> 4) as u16;
    r.set_bx(0);
    r
}

fn call(set: &mut DriveSet<'_>, r: &mut Regs, m: &mut VecMemory) -> Outcome {
    handle(set, r, m)
}

fn assert_ok(r: &Regs, ah: u8) {
    assert!(!r.cf(), "CF set, AH={:02X}", r.ah());
    assert_eq!(r.ah(), ah);
}

fn assert_err(r: &Regs, status: Status) {
    assert!(r.cf(), "CF clear, AH={:02X}", r.ah());
    assert_eq!(Status(r.ah()), status);
}

fn mem_bytes(m: &VecMemory, at: u64, len: usize) -> &[u8] {
    &m.bytes[at as usize..at as usize + len]
}

/// A 16-byte DAP at `DAP` for DS:SI.
fn put_dap(m: &mut VecMemory, r: &mut Regs, count: u16, seg: u16, off: u16, lba: u64) {
    let mut p = [0u8; 16];
    p[0] = 0x10;
    p[2..4].copy_from_slice(&count.to_le_bytes());
    p[4..6].copy_from_slice(&off.to_le_bytes());
    p[6..8].copy_from_slice(&seg.to_le_bytes());
    p[8..16].copy_from_slice(&lba.to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
}

fn dap_count(m: &mut VecMemory) -> u16 {
    let mut b = [0u8; 2];
    m.read(DAP + 2, &mut b).unwrap();
    u16::from_le_bytes(b)
}

fn ext_regs(ah: u8, dl: u8) -> Regs {
    regs(ah, dl)
}

// ---------------------------------------------------------------------------------------------
// Hard disk: CHS functions

/// 20 cylinders of 16/63 (an image geometry), plus a partial cylinder beyond.
const SMALL: Chs = Chs { cylinders: 20, heads: 16, sectors_per_track: 63 };
const SMALL_SECTORS: u64 = 20 * 16 * 63 + 5;

#[test]
fn chs_read_start_middle_and_last_addressable_sector() {
    let disk = pattern_disk(SMALL_SECTORS);
    let mut set = hdd_set(block_disk(disk.clone(), Some(SMALL), false));
    let mut m = machine();
    let last = SMALL.addressable_sectors() - 1;
    for (lba, count) in [(0u64, 1u8), (1000, 7), (last, 1), (last - 127, 128)] {
        let a = SMALL.from_lba(lba).unwrap();
        let mut r = chs_regs(0x02, count, a);
        assert_eq!(call(&mut set, &mut r, &mut m), Outcome::Handled);
        assert_ok(&r, 0);
        assert_eq!(r.al(), count);
        for i in 0..count as u64 {
            assert_eq!(mem_bytes(&m, BUF + i * 512, 512), &sector_of(&disk, lba + i)[..], "lba {}", lba + i);
        }
    }
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0);
}

#[test]
fn chs_multitrack_read_continues_on_the_next_head() {
    let disk = pattern_disk(SMALL_SECTORS);
    let mut set = hdd_set(block_disk(disk.clone(), Some(SMALL), false));
    let mut m = machine();
    let mut r = chs_regs(0x02, 4, ChsAddress { cylinder: 0, head: 0, sector: 62 });
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, BUF + 3 * 512, 512), &sector_of(&disk, 64)[..]);
}

#[test]
fn chs_parameter_errors_answer_01h_with_al_zero() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let ok = ChsAddress { cylinder: 1, head: 2, sector: 3 };
    let cases = [
        (0u8, ok),                                   // count 0
        (129, ok),                                   // more than SeaBIOS's 128
        (1, ChsAddress { sector: 0, ..ok }),         // sectors are 1-based
        (1, ChsAddress { sector: 64, ..ok }),        // past the track (spt 63)
        (1, ChsAddress { head: 16, ..ok }),          // past the last head
        (1, ChsAddress { cylinder: 20, ..ok }),      // past the last cylinder
    ];
    for (count, a) in cases {
        let mut r = chs_regs(0x02, count, a);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::INVALID);
        assert_eq!(r.al(), 0);
        assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0x01);
    }
    assert!(mem_bytes(&m, BUF, 512).iter().all(|&b| b == 0), "nothing was read");
}

#[test]
fn chs_request_running_past_the_addressable_area_or_disk_is_refused_whole() {
    // The addressable area ends before the disk does (5 sectors of partial cylinder).
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let last = SMALL.from_lba(SMALL.addressable_sectors() - 1).unwrap();
    let mut r = chs_regs(0x02, 2, last);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(r.al(), 0);
    assert!(mem_bytes(&m, BUF, 1024).iter().all(|&b| b == 0));

    // The disk ends inside its last cylinder: the geometry says 2 cylinders, the disk has 1.5.
    let g = Chs { cylinders: 2, heads: 2, sectors_per_track: 4 };
    let mut set = hdd_set(block_disk(pattern_disk(12), Some(g), false));
    let mut r = chs_regs(0x02, 1, g.from_lba(12).unwrap());
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    let mut r = chs_regs(0x02, 2, g.from_lba(11).unwrap());
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    let mut r = chs_regs(0x02, 1, g.from_lba(11).unwrap());
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
}

#[test]
fn chs_big_disk_reaches_only_1024_cylinders() {
    // 2000 cylinders of 255/63 without allocating them: geometry and refusal only.
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 2000 * 16065 }));
    let mut m = machine();
    let mut r = chs_regs(0x04, 1, ChsAddress { cylinder: 1023, head: 254, sector: 63 });
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    // Cylinder 1024 cannot even be encoded; CX=FFFFh with head 255 is past the last head.
    let mut r = chs_regs(0x04, 1, ChsAddress { cylinder: 1023, head: 255, sector: 63 });
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    // Multi-track past the last addressable sector.
    let mut r = chs_regs(0x04, 2, ChsAddress { cylinder: 1023, head: 254, sector: 63 });
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
}

#[test]
fn chs_write_then_read_back() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let data: Vec<u8> = (0..1536).map(|i| (i * 7 + 3) as u8).collect();
    m.write(BUF, &data).unwrap();
    let a = SMALL.from_lba(500).unwrap();
    let mut r = chs_regs(0x03, 3, a);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.al(), 3);
    m.write(BUF, &[0u8; 1536]).unwrap();
    let mut r = chs_regs(0x02, 3, a);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, BUF, 1536), &data[..]);
}

#[test]
fn chs_write_to_read_only_image_is_write_protected() {
    let disk = pattern_disk(SMALL_SECTORS);
    let mut set = hdd_set(block_disk(disk, Some(SMALL), true));
    let mut m = machine();
    let mut r = chs_regs(0x03, 1, ChsAddress { cylinder: 0, head: 0, sector: 1 });
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::WRITE_PROTECTED);
    assert_eq!(r.al(), 0);
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0x03);
}

#[test]
fn chs_verify_checks_bounds_and_touches_no_memory() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let mut r = chs_regs(0x04, 9, ChsAddress { cylinder: 3, head: 1, sector: 1 });
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.al(), 9);
    assert!(m.bytes[BUF as usize..BUF as usize + 9 * 512].iter().all(|&b| b == 0));
}

#[test]
fn chs_read_failing_midway_reports_sectors_done() {
    let disk = pattern_disk(SMALL_SECTORS);
    let dev = FailingDevice { inner: disk.clone(), fail_lba: 105 };
    let mut set = hdd_set(block_disk(dev, Some(SMALL), false));
    let mut m = machine();
    let mut r = chs_regs(0x02, 10, SMALL.from_lba(100).unwrap());
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(r.al(), 5);
    for i in 0..5 {
        assert_eq!(mem_bytes(&m, BUF + i * 512, 512), &sector_of(&disk, 100 + i)[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Hard disk: status, parameters and no-ops

#[test]
fn fail_call_reports_a_controller_failure_with_nothing_transferred() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    // AH=42h: CF, AH=20h, the packet's count 0, the status kept for AH=01h.
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 4, (BUF >> 4) as u16, 0, 10);
    let before = r;
    fail_call(&mut r, &mut m, Status::CONTROLLER_FAILURE);
    assert_err(&r, Status::CONTROLLER_FAILURE);
    assert_eq!(dap_count(&mut m), 0);
    assert_eq!((r.eax & 0xFFFF_00FF, r.ebx, r.ecx, r.edx, r.esi, r.edi), (before.eax & 0xFFFF_00FF, before.ebx, before.ecx, before.edx, before.esi, before.edi));
    let mut r = regs(0x01, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::CONTROLLER_FAILURE);
    // AH=02h: AL = 0 sectors done; a floppy's status goes to its own byte.
    let mut r = chs_regs(0x02, 3, ChsAddress { cylinder: 0, head: 0, sector: 1 });
    r.set_dl(0x00);
    fail_call(&mut r, &mut m, Status::CONTROLLER_FAILURE);
    assert_err(&r, Status::CONTROLLER_FAILURE);
    assert_eq!(r.al(), 0);
    assert_eq!(bda::last_status(&mut m, true), 0x20);
    assert_eq!(format!("{}", Status::CONTROLLER_FAILURE), "INT 13h status 20h: controller failure");
}

#[test]
fn get_last_status_reports_the_previous_call() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let mut r = regs(0x77, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    let mut r = regs(0x01, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    let mut r = regs(0x00, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = regs(0x01, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
}

#[test]
fn get_parameters_hdd_reports_maxima_and_bda_count() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    set.install_bda_counts(&mut m);
    let mut r = regs(0x08, 0x80);
    r.es = 0x1234;
    r.set_di(0x5678);
    r.set_bx(0x9ABC);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.al(), 0);
    // memdisk/iPXE: last cylinder = C - 1; CL = spt; DH = heads - 1; DL = 0040:0075.
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 19, head: 15, sector: 63 });
    assert_eq!(r.dl(), 2);
    assert_eq!((r.es, r.di(), r.bx()), (0x1234, 0x5678, 0x9ABC), "ES:DI and BX untouched for a hard disk");
}

#[test]
fn get_parameters_default_geometry_and_clamp() {
    let mut m = machine();
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 3000 * 16065 + 17 }));
    let mut r = regs(0x08, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 1023, head: 254, sector: 63 });
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 100 * 16065 }));
    let mut r = regs(0x08, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 99, head: 254, sector: 63 });
}

#[test]
fn get_disk_type_hdd_is_fixed_with_sector_count_and_cf_clear() {
    let mut m = machine();
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 0x0123_4567 }));
    let mut r = regs(0x15, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0x03);
    assert_eq!((r.cx(), r.dx()), (0x0123, 0x4567));
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0, "AH=03h is a type, not an error");
    // Clipped to FFFFFFFFh above 2 TiB (memdisk, iPXE).
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 0x1_0000_0005 }));
    let mut r = regs(0x15, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0x03);
    assert_eq!((r.cx(), r.dx()), (0xFFFF, 0xFFFF));
}

#[test]
fn hdd_no_op_functions_succeed() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    for ah in [0x00u8, 0x09, 0x0C, 0x0D, 0x10, 0x11, 0x14, 0x16] {
        let mut r = regs(ah, 0x80);
        r.set_al(0x33);
        let before = r;
        call(&mut set, &mut r, &mut m);
        assert_ok(&r, 0);
        assert_eq!(Regs { eax: before.eax & !0xFF00, ..before }, Regs { eax: r.eax, flags: before.flags, ..r }, "AH={:02X}", ah);
    }
}

#[test]
fn unknown_functions_are_refused_with_01h_and_never_chained() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    for ah in [0x05u8, 0x06, 0x17, 0x18, 0x40, 0x45, 0x46, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x50, 0xFF] {
        let mut r = regs(ah, 0x80);
        assert_eq!(call(&mut set, &mut r, &mut m), Outcome::Handled);
        assert_err(&r, Status::INVALID);
        assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0x01, "AH={:02X}", ah);
    }
}

// ---------------------------------------------------------------------------------------------
// EDD

#[test]
fn edd_installation_check() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let mut r = regs(0x41, 0x80);
    r.set_bx(0x55AA);
    r.set_al(0x5A);
    call(&mut set, &mut r, &mut m);
    // AH=30h with CF=0: CF must not come from "AH != 0".
    assert_ok(&r, 0x30);
    assert_eq!(r.bx(), 0xAA55);
    assert_eq!(r.cx(), 0x000D, "fixed-disk access, EDD, 64-bit DAP");
    assert_eq!(r.ecx >> 16, 0xC7C7);
    assert_eq!(r.al(), 0x5A);
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0);
    // memdisk requires BX=55AAh.
    let mut r = regs(0x41, 0x80);
    r.set_bx(0x1234);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    assert_eq!(r.bx(), 0x1234);
}

#[test]
fn extended_read_short_packet() {
    let disk = pattern_disk(SMALL_SECTORS);
    let mut set = hdd_set(block_disk(disk.clone(), Some(SMALL), false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    // Reserved byte set: ignored, as SeaBIOS does.
    put_dap(&mut m, &mut r, 127, 0x1000, 0x0200, SMALL_SECTORS - 127);
    m.bytes[DAP as usize + 1] = 0xEE;
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(dap_count(&mut m), 127);
    for i in [0u64, 1, 126] {
        assert_eq!(mem_bytes(&m, BUF + 0x200 + i * 512, 512), &sector_of(&disk, SMALL_SECTORS - 127 + i)[..]);
    }
}

#[test]
fn extended_read_seg_off_buffer_does_not_wrap_at_64k() {
    let disk = pattern_disk(64);
    let mut set = hdd_set(block_disk(disk.clone(), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 2, 0x1000, 0xFF00, 5);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, linear(0x1000, 0xFF00) + 512, 512), &sector_of(&disk, 6)[..]);
}

#[test]
fn extended_read_flat_64bit_buffer() {
    let disk = pattern_disk(64);
    let mut set = hdd_set(block_disk(disk.clone(), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    let mut p = [0u8; 0x18];
    p[0] = 0x18;
    p[2] = 3;
    p[4..8].copy_from_slice(&[0xFF; 4]);
    p[8..16].copy_from_slice(&10u64.to_le_bytes());
    p[16..24].copy_from_slice(&FLAT_BUF.to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    for i in 0..3 {
        assert_eq!(mem_bytes(&m, FLAT_BUF + i * 512, 512), &sector_of(&disk, 10 + i)[..]);
    }
    assert!(mem_bytes(&m, linear(0xFFFF, 0xFFFF), 512).iter().all(|&b| b == 0));
}

#[test]
fn extended_read_flat_buffer_needs_a_24_byte_packet() {
    let mut set = hdd_set(block_disk(pattern_disk(64), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 1, 0xFFFF, 0xFFFF, 0);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
}

#[test]
fn extended_read_unreachable_flat_buffer_is_09h_with_count_done() {
    let mut set = hdd_set(block_disk(pattern_disk(64), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    let mut p = [0u8; 0x18];
    p[0] = 0x18;
    p[2] = 4;
    p[4..8].copy_from_slice(&[0xFF; 4]);
    // Two blocks fit below the end of guest memory, the third does not.
    p[16..24].copy_from_slice(&(MEM_BYTES as u64 - 1024).to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    assert_eq!(dap_count(&mut m), 2);
}

#[test]
fn extended_read_edd4_long_form() {
    let disk = pattern_disk(400);
    let mut set = hdd_set(block_disk(disk.clone(), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    let mut p = [0u8; 0x20];
    p[0] = 0x20;
    p[2] = 0xFF;
    p[8..16].copy_from_slice(&7u64.to_le_bytes());
    p[16..24].copy_from_slice(&FLAT_BUF.to_le_bytes());
    p[24..28].copy_from_slice(&300u32.to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, FLAT_BUF + 299 * 512, 512), &sector_of(&disk, 306)[..]);

    // Past the end: the long count is rewritten with what was done.
    p[8..16].copy_from_slice(&200u64.to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.set_ah(0x42);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    let mut c = [0u8; 4];
    m.read(DAP + 0x18, &mut c).unwrap();
    assert_eq!(u32::from_le_bytes(c), 200);
    assert_eq!(m.bytes[DAP as usize + 2], 0xFF);
}

#[test]
fn extended_packet_size_and_count_rules() {
    let mut set = hdd_set(block_disk(pattern_disk(300), None, false));
    let mut m = machine();
    // Packet smaller than 10h.
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 0);
    m.bytes[DAP as usize] = 0x0F;
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    // Count above 7Fh in the short form (and FFh without room for the long count).
    for count in [0x80u16, 0xFE, 0xFF, 0x100] {
        let mut r = ext_regs(0x42, 0x80);
        put_dap(&mut m, &mut r, count, 0x1000, 0, 0);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::INVALID);
    }
    // Count 0: success, nothing transferred.
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 0, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(dap_count(&mut m), 0);
    assert!(mem_bytes(&m, BUF, 512).iter().all(|&b| b == 0));
}

#[test]
fn extended_read_past_the_end_transfers_what_fits_and_rewrites_the_count() {
    let disk = pattern_disk(100);
    let mut set = hdd_set(block_disk(disk.clone(), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 8, 0x1000, 0, 96);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(dap_count(&mut m), 4);
    assert_eq!(mem_bytes(&m, BUF + 3 * 512, 512), &sector_of(&disk, 99)[..]);
    assert!(mem_bytes(&m, BUF + 4 * 512, 512).iter().all(|&b| b == 0));
    // Starting beyond the end: nothing.
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 8, 0x2000, 0, 100);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(dap_count(&mut m), 0);
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 1, 0x2000, 0, u64::MAX);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
}

#[test]
fn extended_read_failing_midway_reports_partial_count() {
    let disk = pattern_disk(300);
    // Fail inside the second 64 KiB chunk, so chunking and the block-by-block retry both run.
    let dev = FailingDevice { inner: disk.clone(), fail_lba: 10 + 128 + 17 };
    let mut set = hdd_set(block_disk(dev, None, false));
    let mut m = machine();
    let mut r = ext_regs(0x42, 0x80);
    let mut p = [0u8; 0x18];
    p[0] = 0x18;
    p[2] = 0x7F;
    p[4..8].copy_from_slice(&[0xFF; 4]);
    p[8..16].copy_from_slice(&10u64.to_le_bytes());
    p[16..24].copy_from_slice(&FLAT_BUF.to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0); // 127 blocks: 10..137, the failing block 155 is not touched
    p[2..4].copy_from_slice(&0u16.to_le_bytes());
    // Long form to get past 128 blocks in one request.
    let mut q = [0u8; 0x20];
    q[..0x18].copy_from_slice(&p);
    q[0] = 0x20;
    q[2] = 0xFF;
    q[24..28].copy_from_slice(&200u32.to_le_bytes());
    m.write(DAP, &q).unwrap();
    r.set_ah(0x42);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    let mut c = [0u8; 4];
    m.read(DAP + 0x18, &mut c).unwrap();
    assert_eq!(u32::from_le_bytes(c), 145);
    assert_eq!(mem_bytes(&m, FLAT_BUF + 144 * 512, 512), &sector_of(&disk, 154)[..]);
}

#[test]
fn extended_write_then_read_back_and_read_only() {
    let mut set = hdd_set(block_disk(pattern_disk(100), None, false));
    let mut m = machine();
    let data: Vec<u8> = (0..2048).map(|i| (i * 13 + 1) as u8).collect();
    m.write(BUF, &data).unwrap();
    let mut r = ext_regs(0x43, 0x80);
    r.set_al(0x00);
    put_dap(&mut m, &mut r, 4, 0x1000, 0, 50);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 4, 0x3000, 0, 50);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, 0x30000, 2048), &data[..]);

    let mut set = hdd_set(block_disk(pattern_disk(100), None, true));
    let mut r = ext_regs(0x43, 0x80);
    put_dap(&mut m, &mut r, 4, 0x1000, 0, 50);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::WRITE_PROTECTED);
    assert_eq!(dap_count(&mut m), 0);
}

#[test]
fn extended_verify_and_seek_check_bounds_only() {
    let mut set = hdd_set(block_disk(pattern_disk(100), None, false));
    let mut m = machine();
    let mut r = ext_regs(0x44, 0x80);
    put_dap(&mut m, &mut r, 10, 0x1000, 0, 90);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert!(mem_bytes(&m, BUF, 5120).iter().all(|&b| b == 0));
    let mut r = ext_regs(0x44, 0x80);
    put_dap(&mut m, &mut r, 11, 0x1000, 0, 90);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(dap_count(&mut m), 10);
    let mut r = ext_regs(0x47, 0x80);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 99);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = ext_regs(0x47, 0x80);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 100);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
}

/// Calls AH=48h with a buffer whose size word is `size` and the rest filled with AAh.
fn get_edd_params(set: &mut DriveSet<'_>, m: &mut VecMemory, dl: u8, size: u16) -> Regs {
    let mut fill = [0xAAu8; 0x50];
    fill[0..2].copy_from_slice(&size.to_le_bytes());
    m.write(DAP, &fill).unwrap();
    let mut r = regs(0x48, dl);
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
    call(set, &mut r, m);
    r
}

fn u16_at(m: &VecMemory, at: u64) -> u16 {
    u16::from_le_bytes([m.bytes[at as usize], m.bytes[at as usize + 1]])
}
fn u32_at(m: &VecMemory, at: u64) -> u32 {
    u32::from_le_bytes(m.bytes[at as usize..at as usize + 4].try_into().unwrap())
}
fn u64_at(m: &VecMemory, at: u64) -> u64 {
    u64::from_le_bytes(m.bytes[at as usize..at as usize + 8].try_into().unwrap())
}

#[test]
fn edd_drive_parameters_for_each_buffer_size() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    // Too small.
    for size in [0u16, 0x18, 0x19] {
        let r = get_edd_params(&mut set, &mut m, 0x80, size);
        assert_err(&r, Status::INVALID);
        assert_eq!(m.bytes[DAP as usize + 2], 0xAA, "nothing written");
    }
    // EDD 1.x form.
    for size in [0x1Au16, 0x1D] {
        let r = get_edd_params(&mut set, &mut m, 0x80, size);
        assert_ok(&r, 0);
        assert_eq!(u16_at(&m, DAP), 0x1A);
        assert_eq!(u16_at(&m, DAP + 2), 0x0003, "DMA transparent, CHS valid");
        assert_eq!((u32_at(&m, DAP + 4), u32_at(&m, DAP + 8), u32_at(&m, DAP + 12)), (20, 16, 63));
        assert_eq!(u64_at(&m, DAP + 0x10), SMALL_SECTORS);
        assert_eq!(u16_at(&m, DAP + 0x18), 512);
        assert_eq!(m.bytes[DAP as usize + 0x1A], 0xAA, "DPTE is outside a 1Ah buffer");
    }
    // EDD 2.x form and larger buffers: 1Eh returned, DPTE FFFF:FFFF, no device path.
    for size in [0x1Eu16, 0x1F, 0x42, 0x4A, 0xFFFF] {
        let r = get_edd_params(&mut set, &mut m, 0x80, size);
        assert_ok(&r, 0);
        assert_eq!(u16_at(&m, DAP), 0x1E);
        assert_eq!(u32_at(&m, DAP + 0x1A), 0xFFFF_FFFF);
        let key = u16_at(&m, DAP + 0x1E);
        if size >= 0x20 {
            assert_eq!(key, 0, "a stale BEDDh key must not survive");
        } else {
            assert_eq!(key, 0xAAAA);
        }
        assert_eq!(m.bytes[DAP as usize + 0x20], 0xAA, "nothing past the key is written");
    }
}

#[test]
fn edd_drive_parameters_big_disk_clears_chs_valid_and_keeps_full_cylinders() {
    let mut set = hdd_set(Box::new(SizedDisk { blocks: 3000 * 16065 }));
    let mut m = machine();
    let r = get_edd_params(&mut set, &mut m, 0x80, 0x1E);
    assert_ok(&r, 0);
    assert_eq!(u16_at(&m, DAP + 2), 0x0001);
    assert_eq!(u32_at(&m, DAP + 4), 3000);
    assert_eq!(u64_at(&m, DAP + 0x10), 3000 * 16065);
}

#[test]
fn set_hardware_configuration() {
    let mut set = hdd_set(block_disk(pattern_disk(10), None, false));
    let mut m = machine();
    let mut r = regs(0x4E, 0x80);
    r.set_al(0x03);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.al(), 0);
    let mut r = regs(0x4E, 0x80);
    r.set_al(0x07);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
}

// ---------------------------------------------------------------------------------------------
// Register preservation with random values

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// Bits of each register a function may change: (eax, ebx, ecx, edx, es+di changes allowed).
fn outputs(ah: u8, floppy: bool) -> (u32, u32, u32, u32, bool) {
    const AH: u32 = 0xFF00;
    const AX: u32 = 0xFFFF;
    const X: u32 = 0xFFFF;
    match ah {
        0x02..=0x04 => (AX, 0, 0, 0, false),
        0x08 if floppy => (AX, X, X, X, true),
        0x08 => (AX, 0, X, X, false),
        0x15 if !floppy => (AH, 0, X, X, false),
        0x41 => (AH, X, X, 0, false),
        0x4E => (AX, 0, 0, 0, false),
        0x18 if floppy => (AH, 0, 0, 0, true),
        _ => (AH, 0, 0, 0, false),
    }
}

fn check_preserved(before: &Regs, after: &Regs, ah: u8, floppy: bool) {
    let (ax, bx, cx, dx, esdi) = outputs(ah, floppy);
    let same = |a: u32, b: u32, mask: u32| a & !mask == b & !mask;
    assert!(same(before.eax, after.eax, ax), "AH={:02X} EAX {:08X} -> {:08X}", ah, before.eax, after.eax);
    assert!(same(before.ebx, after.ebx, bx), "AH={:02X} EBX", ah);
    assert!(same(before.ecx, after.ecx, cx), "AH={:02X} ECX", ah);
    assert!(same(before.edx, after.edx, dx), "AH={:02X} EDX {:08X} -> {:08X}", ah, before.edx, after.edx);
    assert_eq!(before.esi, after.esi, "AH={:02X} ESI", ah);
    assert_eq!(before.ebp, after.ebp, "AH={:02X} EBP", ah);
    assert_eq!(before.ds, after.ds, "AH={:02X} DS", ah);
    if !esdi {
        assert_eq!((before.es, before.edi), (after.es, after.edi), "AH={:02X} ES:DI", ah);
    } else {
        assert_eq!(before.edi >> 16, after.edi >> 16, "AH={:02X} high EDI", ah);
    }
    assert_eq!(before.flags & !1, after.flags & !1, "AH={:02X} FLAGS other than CF", ah);
}

fn randomised(rng: &mut XorShift, ah: u8, dl: u8) -> Regs {
    let mut r = Regs {
        eax: rng.next(),
        ebx: rng.next(),
        ecx: rng.next(),
        edx: rng.next(),
        esi: rng.next(),
        edi: rng.next(),
        ebp: rng.next(),
        ds: rng.next() as u16,
        es: rng.next() as u16,
        flags: rng.next() as u16,
    };
    r.set_ah(ah);
    r.set_dl(dl);
    r
}

#[test]
fn every_hdd_function_preserves_non_output_registers() {
    let mut set = hdd_set(block_disk(pattern_disk(SMALL_SECTORS), Some(SMALL), false));
    let mut m = machine();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..40 {
        for ah in 0u8..=0xFF {
            let mut r = randomised(&mut rng, ah, 0x80);
            match ah {
                // Valid CHS requests on even rounds, random ones on odd; ES:BX anywhere below
                // 1 MiB + 64 KiB.
                0x02..=0x04 if round % 2 == 0 => {
                    r.set_al((r.al() % 8) + 1);
                    let (cx, dh) = ChsAddress { cylinder: (round % 20) as u16, head: 3, sector: 5 }.to_regs();
                    r.set_cx(cx);
                    r.set_dh(dh);
                }
                0x41 if round % 2 == 0 => r.set_bx(0x55AA),
                0x42 | 0x43 | 0x44 | 0x47 | 0x48 => {
                    let mut p = [0u8; 16];
                    p[0] = 0x10;
                    p[2] = (round % 5) as u8;
                    p[4..8].copy_from_slice(&(0x2000_0000u32 + round * 0x100).to_le_bytes());
                    p[8..16].copy_from_slice(&(round as u64 * 31).to_le_bytes());
                    if ah == 0x48 {
                        p[0..2].copy_from_slice(&(0x18u16 + round as u16).to_le_bytes());
                    }
                    m.write(DAP, &p).unwrap();
                    r.ds = (DAP >> 4) as u16;
                    r.set_si(0);
                }
                _ => {}
            }
            let before = r;
            assert_eq!(call(&mut set, &mut r, &mut m), Outcome::Handled);
            check_preserved(&before, &r, ah, false);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drive numbering and pass-through

#[test]
fn real_hard_disks_move_up_past_the_emulated_one() {
    let set = hdd_set(block_disk(pattern_disk(10), None, false));
    assert_eq!(set.bios_number(0x81), 0x80);
    assert_eq!(set.bios_number(0x82), 0x81);
    assert_eq!(set.bios_number(0x00), 0x00, "floppies untouched");
    assert_eq!(set.bios_number(0x01), 0x01);
    assert_eq!(set.bios_number(0xE0), 0xE0, "CDs untouched");
    assert_eq!(set.bios_number(0x7F), 0x7F);
}

#[test]
fn handle_passes_other_drives_through_with_translated_dl() {
    let mut set = hdd_set(block_disk(pattern_disk(10), None, false));
    let mut m = machine();
    for (guest, bios) in [(0x81u8, 0x80u8), (0x82, 0x81), (0x00, 0x00), (0x01, 0x01), (0xE0, 0xE0), (0x9F, 0x9E)] {
        let mut r = regs(0x02, guest);
        let before = r;
        assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: bios });
        assert_eq!(r, before, "registers untouched before the chain");
    }
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0, "pass-through leaves the status to the BIOS");
    // 4Bh with DL=7Fh and no emulated CD goes to the BIOS unchanged.
    let mut r = regs(0x4B, 0x7F);
    assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: 0x7F });
}

#[test]
fn emulated_floppies_shift_real_floppies() {
    let mut set = DriveSet::new();
    set.add(0x00, floppy_kind(4), block_disk(MemDisk::zeroed(2880), Some(FLOPPY_144), false)).unwrap();
    set.add(0x80, DriveKind::HardDisk, block_disk(pattern_disk(10), None, false)).unwrap();
    assert_eq!(set.bios_number(0x01), 0x00);
    assert_eq!(set.bios_number(0x02), 0x01);
    assert_eq!(set.bios_number(0x81), 0x80);
}

#[test]
fn install_raises_bda_counts_and_reasserts_them() {
    let mut set = DriveSet::new();
    set.add(0x00, floppy_kind(4), block_disk(MemDisk::zeroed(2880), Some(FLOPPY_144), false)).unwrap();
    set.add(0x80, DriveKind::HardDisk, block_disk(pattern_disk(10), None, false)).unwrap();
    let mut m = machine();
    bda::set_hard_disk_count(&mut m, 2);
    m.write(bda::EQUIPMENT_WORD, &0x0022u16.to_le_bytes()).unwrap(); // no floppies, other bits set
    set.install_bda_counts(&mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 3);
    assert_eq!(u16_at(&m, bda::EQUIPMENT_WORD), 0x0023);
    // Something resets the counts: the next call puts them back.
    bda::set_hard_disk_count(&mut m, 0);
    bda::set_floppy_count(&mut m, 0);
    let mut r = regs(0x02, 0x81);
    call(&mut set, &mut r, &mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 3);
    assert_eq!(bda::floppy_count(&mut m), 1);
    // A later hook that adds a drive keeps its count.
    bda::set_hard_disk_count(&mut m, 4);
    call(&mut set, &mut r, &mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 4);
}

#[test]
fn fixup_after_chain_restores_dl_except_08h_and_15h_on_hard_disks() {
    let mut set = hdd_set(block_disk(pattern_disk(10), None, false));
    let mut m = machine();
    set.install_bda_counts(&mut m); // one real + ours = 2

    // AH=02h on 81h: the BIOS saw 80h; the caller gets 81h back.
    let before = regs(0x02, 0x81);
    let mut after = before;
    after.set_dl(0x80);
    after.set_ax(0x0001);
    set.fixup_after_chain(&before, &mut after, &mut m);
    assert_eq!(after.dl(), 0x81);
    assert_eq!(after.ax(), 0x0001);

    // AH=08h: DL = number of hard disks, ours included.
    let mut after = before;
    after.set_ah(0);
    after.set_dl(1);
    let before08 = regs(0x08, 0x81);
    set.fixup_after_chain(&before08, &mut after, &mut m);
    assert_eq!(after.dl(), 2);

    // AH=15h fixed disk: DX is the low word of the size.
    let before15 = regs(0x15, 0x81);
    let mut after = before15;
    after.set_ah(0x03);
    after.set_cx(0x0001);
    after.set_dx(0x2345);
    set.fixup_after_chain(&before15, &mut after, &mut m);
    assert_eq!(after.dx(), 0x2345);
    // AH=15h "no such drive": DL is restored.
    let before15 = regs(0x15, 0x83);
    let mut after = before15;
    after.set_ah(0x00);
    after.set_dl(0x82);
    set.fixup_after_chain(&before15, &mut after, &mut m);
    assert_eq!(after.dl(), 0x83);

    // Floppies: AH=08h DL = equipment-word count; AH=15h DL restored.
    m.write(bda::EQUIPMENT_WORD, &0x0041u16.to_le_bytes()).unwrap();
    let b = regs(0x08, 0x00);
    let mut a = b;
    a.set_dl(7);
    set.fixup_after_chain(&b, &mut a, &mut m);
    assert_eq!(a.dl(), 2);
    let b = regs(0x15, 0x01);
    let mut a = b;
    a.set_ah(0x01);
    a.set_dl(0x00);
    set.fixup_after_chain(&b, &mut a, &mut m);
    assert_eq!(a.dl(), 0x01);
}

#[test]
fn drive_set_rejects_inconsistent_drives() {
    let mut set = hdd_set(block_disk(pattern_disk(10), None, false));
    assert_eq!(
        set.add(0x80, DriveKind::HardDisk, block_disk(pattern_disk(10), None, false)),
        Err(DriveSetError::NumberInUse { number: 0x80 })
    );
    assert_eq!(
        set.add(0x00, DriveKind::HardDisk, block_disk(pattern_disk(10), None, false)),
        Err(DriveSetError::WrongClass { number: 0x00, kind: DriveClass::HardDisk })
    );
    assert_eq!(
        set.add(0xE0, cd_kind(), block_disk(pattern_disk(16), None, true)),
        Err(DriveSetError::BlockSize { number: 0xE0, expected_bytes: 2048, disk_bytes: 512 })
    );
    assert_eq!(
        set.add(0x81, DriveKind::HardDisk, block_disk(MemDisk::zeroed(0), None, false)),
        Err(DriveSetError::EmptyDisk { number: 0x81 })
    );
    assert!(alloc::format!("{}", DriveSetError::NumberInUse { number: 0x80 }).contains("80h"));
}

// ---------------------------------------------------------------------------------------------
// Floppy

const FLOPPY_144: Chs = Chs { cylinders: 80, heads: 2, sectors_per_track: 18 };
const DPT: FarPtr = FarPtr { segment: 0x9F00, offset: 0x0040 };

fn floppy_kind(drive_type: u8) -> DriveKind {
    DriveKind::Floppy { drive_type, parameter_table: DPT }
}

fn floppy_set(disk: MemDisk) -> DriveSet<'static> {
    let f = FloppyFormat::from_size(disk.bytes.len() as u64).unwrap();
    let mut set = DriveSet::new();
    set.add(0x00, floppy_kind(f.drive_type), block_disk(disk, Some(f.geometry), false)).unwrap();
    set
}

#[test]
fn floppy_parameters() {
    let mut set = floppy_set(pattern_disk(2880));
    let mut m = machine();
    set.install_bda_counts(&mut m);
    let mut r = regs(0x08, 0x00);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.ax(), 0);
    assert_eq!(r.bx(), 0x0004, "BL = 1.44M type, BH = 0");
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 79, head: 1, sector: 18 });
    assert_eq!(r.dl(), 1);
    assert_eq!((r.es, r.di()), (0x9F00, 0x0040));
    assert_eq!(r.edi >> 16, 0xFAFA);
}

#[test]
fn floppy_multitrack_read_and_write() {
    let disk = pattern_disk(2880);
    let mut set = floppy_set(disk.clone());
    let mut m = machine();
    let mut r = chs_regs(0x02, 20, ChsAddress { cylinder: 2, head: 1, sector: 10 });
    r.set_dl(0x00);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.al(), 20);
    let first = (2 * 2 + 1) * 18 + 9;
    assert_eq!(mem_bytes(&m, BUF + 19 * 512, 512), &sector_of(&disk, first + 19)[..]);
    assert_eq!(m.bytes[bda::FLOPPY_LAST_STATUS as usize], 0);
    let mut r = chs_regs(0x03, 1, ChsAddress { cylinder: 79, head: 1, sector: 18 });
    r.set_dl(0x00);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = chs_regs(0x02, 2, ChsAddress { cylinder: 79, head: 1, sector: 18 });
    r.set_dl(0x00);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(m.bytes[bda::FLOPPY_LAST_STATUS as usize], 0x04, "floppy status goes to 0040:0041");
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0x00);
}

#[test]
fn floppy_type_change_line_and_refusals() {
    let mut set = floppy_set(pattern_disk(2880));
    let mut m = machine();
    // AH=15h: change line supported (memdisk), CF=0, CX:DX untouched.
    let mut r = regs(0x15, 0x00);
    r.set_cx(0x1111);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0x02);
    assert_eq!((r.cx(), r.dh()), (0x1111, 0x00));
    let mut r = regs(0x16, 0x00);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    // No EDD on floppies, and no hard-disk-only functions.
    for ah in [0x41u8, 0x42, 0x43, 0x44, 0x47, 0x48, 0x09, 0x0C, 0x0D, 0x10, 0x11, 0x14, 0x4B] {
        let mut r = regs(ah, 0x00);
        r.set_bx(0x55AA);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::INVALID);
        if ah == 0x41 {
            assert_eq!(r.bx(), 0x55AA);
        }
    }
    assert_eq!(m.bytes[bda::FLOPPY_LAST_STATUS as usize], 0x01);
}

#[test]
fn floppy_set_media_type_for_format() {
    let mut set = floppy_set(pattern_disk(2880));
    let mut m = machine();
    let mut r = regs(0x18, 0x00);
    let (cx, _) = ChsAddress { cylinder: 79, head: 0, sector: 18 }.to_regs();
    r.set_cx(cx);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!((r.es, r.di()), (0x9F00, 0x0040));
    let mut r = regs(0x18, 0x00);
    let (cx, _) = ChsAddress { cylinder: 79, head: 0, sector: 9 }.to_regs();
    r.set_cx(cx);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::UNSUPPORTED_MEDIA);
}

#[test]
fn floppy_format_track_fills_it_with_f6h() {
    let disk = pattern_disk(2880);
    let mut set = floppy_set(disk.clone());
    let mut m = machine();
    let mut r = regs(0x05, 0x00);
    r.set_al(18);
    let (cx, dh) = ChsAddress { cylinder: 40, head: 1, sector: 0 }.to_regs();
    r.set_cx(cx);
    r.set_dh(dh);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let track_lba = (40 * 2 + 1) * 18;
    r.set_ah(0x02);
    r.set_al(19);
    r.set_cx(cx | 1);
    r.es = (BUF >> 4) as u16;
    r.set_bx(0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert!(mem_bytes(&m, BUF, 18 * 512).iter().all(|&b| b == 0xF6));
    assert_eq!(mem_bytes(&m, BUF + 18 * 512, 512), &sector_of(&disk, track_lba + 18)[..]);
    // A track of another format, or past the last cylinder, is refused.
    let mut r = regs(0x05, 0x00);
    r.set_al(9);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID_FORMAT_SECTORS);
    let mut r = regs(0x05, 0x00);
    r.set_al(18);
    let (cx, dh) = ChsAddress { cylinder: 80, head: 0, sector: 0 }.to_regs();
    r.set_cx(cx);
    r.set_dh(dh);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    // Read-only image.
    let f = FloppyFormat::from_size(1_474_560).unwrap();
    let mut ro = DriveSet::new();
    ro.add(0x00, floppy_kind(4), block_disk(MemDisk::zeroed(2880), Some(f.geometry), true)).unwrap();
    let mut r = regs(0x05, 0x00);
    r.set_al(18);
    call(&mut ro, &mut r, &mut m);
    assert_err(&r, Status::WRITE_PROTECTED);
}

#[test]
fn every_floppy_function_preserves_non_output_registers() {
    let mut set = floppy_set(pattern_disk(2880));
    let mut m = machine();
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    for _ in 0..20 {
        for ah in 0u8..=0xFF {
            let mut r = randomised(&mut rng, ah, 0x00);
            let before = r;
            call(&mut set, &mut r, &mut m);
            check_preserved(&before, &r, ah, true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CD (no emulation)

const BOOT: ElToritoBoot = ElToritoBoot { media: 0, load_rba: 0x1234, load_segment: 0x07C0, load_sectors: 4 };

fn cd_kind() -> DriveKind {
    DriveKind::Cdrom { boot: BOOT }
}

fn cd_set(disk: MemDisk) -> DriveSet<'static> {
    let mut set = DriveSet::new();
    set.add(0xE0, cd_kind(), Box::new(BlockDisk::new(disk, 2048, None, true).unwrap())).unwrap();
    set
}

#[test]
fn cd_reads_in_2048_byte_blocks() {
    let disk = pattern_disk(4 * 40);
    let mut set = cd_set(disk.clone());
    let mut m = machine();
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 2, 0x1000, 0, 16);
    let before = r;
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!((r.dl(), r.si()), (before.dl(), before.si()), "GRUB's cdboot.S never reloads DL or SI");
    assert_eq!(mem_bytes(&m, BUF, 512), &sector_of(&disk, 64)[..]);
    assert_eq!(mem_bytes(&m, BUF + 4095 - 511, 512), &sector_of(&disk, 71)[..]);
    // 32 CD sectors = 64 KiB is the seg:off ceiling; 33 is a boundary error (SeaBIOS 09h).
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 32, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 33, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    // Past the end, in CD blocks.
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 4, 0x1000, 0, 38);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!(dap_count(&mut m), 2);
}

#[test]
fn cd_refuses_chs_and_writes() {
    let mut set = cd_set(pattern_disk(4 * 40));
    let mut m = machine();
    for ah in [0x02u8, 0x03, 0x04, 0x05, 0x08, 0x15, 0x16] {
        let mut r = chs_regs(ah, 1, ChsAddress { cylinder: 0, head: 0, sector: 1 });
        r.set_dl(0xE0);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::INVALID);
    }
    let mut r = ext_regs(0x43, 0xE0);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::WRITE_PROTECTED);
    assert_eq!(m.bytes[bda::DISK_LAST_STATUS as usize], 0x03);
}

#[test]
fn cd_edd_answers() {
    let mut set = cd_set(pattern_disk(4 * 40));
    let mut m = machine();
    let mut r = regs(0x41, 0xE0);
    r.set_bx(0x55AA);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0x30);
    let r = get_edd_params(&mut set, &mut m, 0xE0, 0x4A);
    assert_ok(&r, 0);
    assert_eq!(u16_at(&m, DAP), 0x1E);
    assert_eq!(u16_at(&m, DAP + 2), 0x0075);
    assert_eq!(u64_at(&m, DAP + 0x10), 40);
    assert_eq!(u16_at(&m, DAP + 0x18), 2048);
}

#[test]
fn cd_status_packet_for_its_drive_and_for_7fh() {
    let mut set = cd_set(pattern_disk(4 * 40));
    let mut m = machine();
    for (dl, al) in [(0xE0u8, 0x01u8), (0x7F, 0x01), (0xE0, 0x00)] {
        m.write(DAP, &[0xAA; 0x20]).unwrap();
        let mut r = regs(0x4B, dl);
        r.set_al(al);
        r.ds = (DAP >> 4) as u16;
        r.set_si(0);
        assert_eq!(call(&mut set, &mut r, &mut m), Outcome::Handled);
        assert_ok(&r, 0);
        assert_eq!(r.dl(), dl);
        let p = mem_bytes(&m, DAP, 0x14);
        assert_eq!(p[0], 0x13);
        assert_eq!(p[1], 0x00, "no emulation");
        assert_eq!(p[2], 0xE0, "isolinux checks the drive field against its DL");
        assert_eq!(u32::from_le_bytes(p[4..8].try_into().unwrap()), 0x1234);
        assert_eq!(u16::from_le_bytes([p[0x0C], p[0x0D]]), 0x07C0);
        assert_eq!(u16::from_le_bytes([p[0x0E], p[0x0F]]), 4);
        assert_eq!(p[0x13], 0xAA, "13h bytes only");
    }
    // The CD keeps answering after "terminate".
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let mut r = regs(0x4B, 0xE0);
    r.set_al(0x02);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    // Boot catalog (4Dh) is not served (as SeaBIOS and memdisk).
    let mut r = regs(0x4D, 0xE0);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
}

#[test]
fn cd_is_not_counted_and_does_not_shift_drives() {
    let mut set = cd_set(pattern_disk(4 * 40));
    let mut m = machine();
    set.install_bda_counts(&mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 1);
    assert_eq!(set.bios_number(0x80), 0x80);
    assert_eq!(set.bios_number(0xE1), 0xE1);
    let mut r = regs(0x02, 0x80);
    assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: 0x80 });
}

#[test]
fn every_cd_function_preserves_non_output_registers() {
    let mut set = cd_set(pattern_disk(4 * 40));
    let mut m = machine();
    let mut rng = XorShift(0x0F0F_1E1E_2D2D_3C3C);
    for _ in 0..20 {
        for ah in 0u8..=0xFF {
            let mut r = randomised(&mut rng, ah, 0xE0);
            let before = r;
            call(&mut set, &mut r, &mut m);
            check_preserved(&before, &r, ah, false);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry chosen at DriveSet::add

#[test]
fn hard_disk_geometry_comes_from_the_partition_table_without_an_image_geometry() {
    // A DOS-era MBR: one partition from cylinder 0 head 1 to the end of cylinder 99, 16/32.
    let g = Chs { cylinders: 100, heads: 16, sectors_per_track: 32 };
    let mut disk = MemDisk::zeroed(100 * 16 * 32);
    let mbr = &mut disk.bytes[..512];
    let (scx, sdh) = g.from_lba(32).unwrap().to_regs();
    let (ecx, edh) = g.from_lba(100 * 16 * 32 - 1).unwrap().to_regs();
    mbr[0x1BE + 1..0x1BE + 4].copy_from_slice(&[sdh, scx as u8, (scx >> 8) as u8]);
    mbr[0x1BE + 4] = 0x06;
    mbr[0x1BE + 5..0x1BE + 8].copy_from_slice(&[edh, ecx as u8, (ecx >> 8) as u8]);
    mbr[0x1BE + 8..0x1BE + 12].copy_from_slice(&32u32.to_le_bytes());
    mbr[0x1BE + 12..0x1BE + 16].copy_from_slice(&(100u32 * 16 * 32 - 32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let mut set = hdd_set(block_disk(disk.clone(), None, false));
    assert_eq!(set.drives()[0].geometry, g);
    let mut m = machine();
    let mut r = regs(0x08, 0x80);
    call(&mut set, &mut r, &mut m);
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 99, head: 15, sector: 32 });
    // The image's own geometry wins over the partition table.
    let own = Chs { cylinders: 50, heads: 32, sectors_per_track: 32 };
    let set = hdd_set(block_disk(disk, Some(own), false));
    assert_eq!(set.drives()[0].geometry, own);
}

#[test]
fn floppy_geometry_by_size_search_or_refusal() {
    let mut set = DriveSet::new();
    set.add(0x00, floppy_kind(4), block_disk(MemDisk::zeroed(2880), None, false)).unwrap();
    assert_eq!(set.drives()[0].geometry, FLOPPY_144);
    set.add(0x01, floppy_kind(0x10), block_disk(MemDisk::zeroed(82 * 2 * 21), None, false)).unwrap();
    assert_eq!(set.drives()[1].geometry, Chs { cylinders: 82, heads: 2, sectors_per_track: 21 });
    assert_eq!(
        set.add(0x02, floppy_kind(4), block_disk(MemDisk::zeroed(7), None, false)).err(),
        Some(DriveSetError::FloppyGeometry { number: 0x02, sectors: 7 })
    );
}

// ---------------------------------------------------------------------------------------------
// CD boot images in floppy or hard-disk emulation

const FLOPPY_EMULATION: ElToritoBoot = ElToritoBoot { media: 2, load_rba: 40, load_segment: 0, load_sectors: 1 };

#[test]
fn floppy_emulation_answers_4bh_and_terminate_removes_the_drive() {
    let mut set = floppy_set(pattern_disk(2880));
    set.add(0xE0, cd_kind(), Box::new(BlockDisk::new(pattern_disk(4 * 40), 2048, None, true).unwrap())).unwrap();
    set.set_cd_emulation(CdEmulation { drive: 0x00, boot: FLOPPY_EMULATION });
    let mut m = machine();
    set.install_bda_counts(&mut m);
    assert_eq!(bda::floppy_count(&mut m), 1);
    for dl in [0x00u8, 0x7F] {
        m.write(DAP, &[0xAA; 0x20]).unwrap();
        let mut r = regs(0x4B, dl);
        r.set_al(0x01);
        r.ds = (DAP >> 4) as u16;
        r.set_si(0);
        assert_eq!(call(&mut set, &mut r, &mut m), Outcome::Handled);
        assert_ok(&r, 0);
        let p = mem_bytes(&m, DAP, 0x14);
        assert_eq!(&p[..4], &[0x13, 0x02, 0x00, 0x00], "size, media 1.44M, drive 00h, controller");
        assert_eq!(u32::from_le_bytes(p[4..8].try_into().unwrap()), 40);
        assert_eq!(u16::from_le_bytes([p[0x0E], p[0x0F]]), 1);
        assert_eq!(ChsAddress::from_regs(u16::from_le_bytes([p[0x11], p[0x10]]), p[0x12]), ChsAddress { cylinder: 79, head: 1, sector: 18 });
        assert_eq!(p[0x13], 0xAA);
    }
    // The CD itself still says "no emulation" for its own number.
    let mut r = regs(0x4B, 0xE0);
    r.set_al(0x01);
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, DAP, 3), &[0x13, 0x00, 0xE0]);
    // Terminate: the packet once more, then drive 00h is the BIOS's again and the count drops.
    let mut r = regs(0x4B, 0x00);
    r.set_al(0x00);
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, DAP, 3), &[0x13, 0x02, 0x00]);
    assert_eq!(bda::floppy_count(&mut m), 0);
    let mut r = chs_regs(0x02, 1, ChsAddress { cylinder: 0, head: 0, sector: 1 });
    r.set_dl(0x00);
    assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: 0x00 });
    // The ISO stays reachable.
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    // No emulation left: 4Bh with DL=00h is not ours any more.
    let mut r = regs(0x4B, 0x00);
    r.set_al(0x01);
    assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: 0x00 });
    let mut r = regs(0x4B, 0x00);
    r.set_al(0x02);
    let _ = call(&mut set, &mut r, &mut m);
}

#[test]
fn hard_disk_emulation_terminate_moves_the_real_disks_back() {
    let mut set = hdd_set(block_disk(pattern_disk(4000), None, false));
    set.set_cd_emulation(CdEmulation { drive: 0x80, boot: ElToritoBoot { media: 4, ..FLOPPY_EMULATION } });
    let mut m = machine();
    set.install_bda_counts(&mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 2);
    assert_eq!(set.bios_number(0x81), 0x80);
    let mut r = regs(0x4B, 0x80);
    r.set_al(0x00);
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(mem_bytes(&m, DAP, 3), &[0x13, 0x04, 0x80]);
    assert_eq!(bda::hard_disk_count(&mut m), 1);
    set.reassert_bda_counts(&mut m);
    assert_eq!(bda::hard_disk_count(&mut m), 1, "the lowered count is not raised back");
    assert_eq!(set.bios_number(0x80), 0x80);
}

#[test]
fn floppy_equipment_word_counts_emulated_floppies_and_keeps_other_bits() {
    let mut set = floppy_set(pattern_disk(2880));
    let f = FloppyFormat::from_size(737_280).unwrap();
    set.add(0x01, floppy_kind(f.drive_type), block_disk(pattern_disk(1440), Some(f.geometry), false)).unwrap();
    let mut m = machine();
    m.bytes[bda::EQUIPMENT_WORD as usize] = 0x2C; // no floppy, other bits set
    set.install_bda_counts(&mut m);
    assert_eq!(m.bytes[bda::EQUIPMENT_WORD as usize], 0x2C | 0x41, "bit 0, and bits 7:6 = 2 - 1");
    let mut r = regs(0x08, 0x01);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!((r.bl(), r.dl()), (0x03, 2), "720K type, two floppies");
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 79, head: 1, sector: 9 });
}

#[test]
fn floppy_b_alone_is_counted_as_the_second_drive() {
    let f = FloppyFormat::from_size(1_474_560).unwrap();
    let mut set = DriveSet::new();
    set.add(0x01, floppy_kind(f.drive_type), block_disk(pattern_disk(2880), Some(f.geometry), false)).unwrap();
    let mut m = machine();
    set.install_bda_counts(&mut m);
    assert_eq!(bda::floppy_count(&mut m), 2);
    let mut r = regs(0x08, 0x01);
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(r.dl(), 2);
    // Drive 00h is not ours: it goes to the BIOS unchanged.
    let mut r = regs(0x02, 0x00);
    assert_eq!(call(&mut set, &mut r, &mut m), Outcome::PassThrough { dl: 0x00 });
}

// ---------------------------------------------------------------------------------------------
// Issue 14: guest registers that halted the engine, and buffers in vboot's own memory

/// An emulated disk that logs every transfer it is asked for.
struct Logged {
    inner: Box<dyn EmulatedDisk>,
    calls: alloc::rc::Rc<core::cell::RefCell<Vec<(u64, u32)>>>,
}

impl EmulatedDisk for Logged {
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
        self.calls.borrow_mut().push((lba, count));
        self.inner.read(lba, count, mem, buf)
    }
    fn write(&mut self, lba: u64, count: u32, mem: &mut dyn GuestMemory, buf: u64) -> Result<(), DiskError> {
        self.calls.borrow_mut().push((lba, count));
        self.inner.write(lba, count, mem, buf)
    }
}

#[test]
fn cd_read_at_an_lba_past_2_62_never_reaches_the_disk() {
    // The engine's disk turns CD blocks into sectors (lba * 4): asked for 0 blocks at LBA 2^62,
    // it overflowed and the engine stopped. Nothing in range must mean no call at all.
    let calls = alloc::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
    let cd = BlockDisk::new(pattern_disk(4 * 40), 2048, None, true).unwrap();
    let mut set = DriveSet::new();
    set.add(0xE0, cd_kind(), Box::new(Logged { inner: Box::new(cd), calls: calls.clone() })).unwrap();
    let mut m = machine();
    for lba in [1u64 << 62, u64::MAX, 40] {
        let mut r = ext_regs(0x42, 0xE0);
        put_dap(&mut m, &mut r, 4, 0x1000, 0, lba);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::SECTOR_NOT_FOUND);
        assert_eq!(dap_count(&mut m), 0);
    }
    assert!(calls.borrow().is_empty(), "the disk was asked for {:?}", calls.borrow());
    let mut r = ext_regs(0x42, 0xE0);
    put_dap(&mut m, &mut r, 4, 0x1000, 0, 38);
    call(&mut set, &mut r, &mut m);
    assert_err(&r, Status::SECTOR_NOT_FOUND);
    assert_eq!((dap_count(&mut m), calls.borrow().clone()), (2, alloc::vec![(38, 2)]), "the part inside the disk is still read");
}

#[test]
fn a_flat_buffer_that_wraps_past_2_64_is_09h() {
    // A flat buffer 32 KiB below 2^64 with a 127-sector read: the buffer's end wrapped, and the
    // engine's transfer (`linear + done * 512`) overflowed. The disk must not be asked at all.
    let calls = alloc::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
    let mut set = hdd_set(Box::new(Logged { inner: block_disk(pattern_disk(256), None, false), calls: calls.clone() }));
    calls.borrow_mut().clear(); // the geometry probe's read of sector 0
    let mut m = machine();
    // Up to one ending exactly at 2^64: all refused before the disk is asked, the count left as
    // given (as for a seg:off buffer over 64 KiB).
    for (count, flat) in [(127u8, u64::MAX - 0x8000), (1, u64::MAX - 0x1FE), (0x7F, u64::MAX), (1, u64::MAX - 0x1FF)] {
        let mut r = ext_regs(0x42, 0x80);
        let mut p = [0u8; 0x18];
        p[0] = 0x18;
        p[2] = count;
        p[4..8].copy_from_slice(&[0xFF; 4]);
        p[16..24].copy_from_slice(&flat.to_le_bytes());
        m.write(DAP, &p).unwrap();
        r.ds = (DAP >> 4) as u16;
        r.set_si(0);
        call(&mut set, &mut r, &mut m);
        assert_err(&r, Status::BOUNDARY_ERROR);
        assert_eq!(dap_count(&mut m), count as u16);
        assert!(calls.borrow().is_empty(), "{:#x}: the disk was asked for {:?}", flat, calls.borrow());
    }
}

/// Guest memory as the engine sees it: vboot's ranges (the stub, the engine) are refused
/// through `check_guest_range`, as `FlatMemory` does.
struct EngineMemory {
    inner: VecMemory,
    vboot: Vec<(u64, u64)>,
}

impl GuestMemory for EngineMemory {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), super::MemoryError> {
        super::check_guest_range(linear, buf.len() as u64, MEM_BYTES as u64, &self.vboot)?;
        self.inner.read(linear, buf)
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> Result<(), super::MemoryError> {
        super::check_guest_range(linear, buf.len() as u64, MEM_BYTES as u64, &self.vboot)?;
        self.inner.write(linear, buf)
    }
    fn check_buffer(&self, linear: u64, bytes: u64) -> Result<(), super::MemoryError> {
        super::check_guest_range(linear, bytes, MEM_BYTES as u64, &self.vboot)
    }
}

const STUB: (u64, u64) = (0x9_F000, 0x1000);
const ENGINE: (u64, u64) = (0x1C_0000, 0x2_0000);

fn engine_memory() -> EngineMemory {
    let mut inner = machine();
    for (base, len) in [STUB, ENGINE] {
        inner.bytes[base as usize..(base + len) as usize].fill(0x5A);
    }
    EngineMemory { inner, vboot: alloc::vec![STUB, ENGINE] }
}

fn vboot_memory_untouched(m: &EngineMemory) -> bool {
    [STUB, ENGINE].iter().all(|&(base, len)| m.inner.bytes[base as usize..(base + len) as usize].iter().all(|&b| b == 0x5A))
}

fn dap_in(m: &mut EngineMemory, r: &mut Regs, count: u16, seg: u16, off: u16, lba: u64, flat: Option<u64>) {
    let mut p = [0u8; 0x18];
    p[0] = if flat.is_some() { 0x18 } else { 0x10 };
    p[2..4].copy_from_slice(&count.to_le_bytes());
    p[4..6].copy_from_slice(&off.to_le_bytes());
    p[6..8].copy_from_slice(&seg.to_le_bytes());
    p[8..16].copy_from_slice(&lba.to_le_bytes());
    p[16..24].copy_from_slice(&flat.unwrap_or(0).to_le_bytes());
    m.write(DAP, &p).unwrap();
    r.ds = (DAP >> 4) as u16;
    r.set_si(0);
}

#[test]
fn buffers_in_vboot_memory_are_refused_with_09h() {
    let disk = pattern_disk(SMALL_SECTORS);
    let mut set = hdd_set(block_disk(disk.clone(), Some(SMALL), false));
    let mut m = engine_memory();
    let two_sectors_before_stub = linear(0x9EC0, 0);
    // CHS read whose second sector lands on the stub: refused whole, AL = 0.
    let mut r = chs_regs(0x02, 3, SMALL.from_lba(5).unwrap());
    r.es = (two_sectors_before_stub >> 4) as u16;
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    assert_eq!(r.al(), 0);
    // Ending right where the stub starts is fine.
    let mut r = chs_regs(0x02, 2, SMALL.from_lba(5).unwrap());
    r.es = (two_sectors_before_stub >> 4) as u16;
    handle(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(&m.inner.bytes[0x9_EC00..0x9_EE00], &sector_of(&disk, 5)[..]);
    // AH=42h: a seg:off buffer on the stub, a flat one inside the engine; nothing counted.
    let mut r = ext_regs(0x42, 0x80);
    dap_in(&mut m, &mut r, 4, 0x9F00, 0x0100, 0, None);
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    assert_eq!(u16::from_le_bytes([m.inner.bytes[DAP as usize + 2], m.inner.bytes[DAP as usize + 3]]), 0);
    let mut r = ext_regs(0x42, 0x80);
    dap_in(&mut m, &mut r, 8, 0xFFFF, 0xFFFF, 0, Some(ENGINE.0 + 0x1000));
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    // AH=43h from the engine's heap would write vboot's memory into the image.
    let mut r = ext_regs(0x43, 0x80);
    dap_in(&mut m, &mut r, 2, 0xFFFF, 0xFFFF, 7, Some(ENGINE.0 - 512));
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::BOUNDARY_ERROR);
    assert_eq!(set.drives().len(), 1);
    // The packet or the AH=48h result buffer in the stub: 01h, as for any unreadable packet.
    let mut r = ext_regs(0x42, 0x80);
    r.ds = (STUB.0 >> 4) as u16;
    r.set_si(0);
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    let mut r = ext_regs(0x48, 0x80);
    r.ds = (STUB.0 >> 4) as u16;
    r.set_si(0x10);
    handle(&mut set, &mut r, &mut m);
    assert_err(&r, Status::INVALID);
    assert!(vboot_memory_untouched(&m));
    // A flat buffer just past the engine works.
    let mut r = ext_regs(0x42, 0x80);
    dap_in(&mut m, &mut r, 1, 0xFFFF, 0xFFFF, 9, Some(ENGINE.0 + ENGINE.1));
    handle(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    let at = (ENGINE.0 + ENGINE.1) as usize;
    assert_eq!(&m.inner.bytes[at..at + 512], &sector_of(&disk, 9)[..]);
}

#[test]
fn the_packet_a_bios_caller_builds_reads_back_as_the_request() {
    let p = edd::DiskAddressPacket::seg_off_request(0x1_2345_6789, 48, 0x1000);
    let mut raw = [0u8; 0x20];
    raw[..16].copy_from_slice(&p);
    let req = edd::DiskAddressPacket::from_bytes(&raw).request(0x600, 512).unwrap();
    assert_eq!((req.lba, req.count, req.buffer_linear), (0x1_2345_6789, 48, 0x1000));
    assert_eq!(req.form, edd::DapForm::SegOff);
}

// ---------------------------------------------------------------------------------------------
// The real-mode fast path: which run the engine publishes after a call

/// A disk whose blocks lie on the host in two straight runs, 0..100 at host 5000 and 100..300
/// at host 9000, both writable unless `in_place_writes` is false.
struct TwoRunDisk {
    in_place_writes: bool,
    read_only: bool,
}

impl EmulatedDisk for TwoRunDisk {
    fn block_count(&self) -> u64 {
        300
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
    fn read(&mut self, _: u64, _: u32, _: &mut dyn GuestMemory, _: u64) -> Result<(), DiskError> {
        Ok(())
    }
    fn write(&mut self, _: u64, _: u32, _: &mut dyn GuestMemory, _: u64) -> Result<(), DiskError> {
        Ok(())
    }
    fn straight_run(&mut self, lba: u64) -> Option<StraightRun> {
        // The second run claims more blocks than the disk has: the caller clips it.
        let (start, end, host) = match lba {
            0..=99 => (0, 100, 5000),
            100..=299 => (100, 1000, 9000),
            _ => return None,
        };
        Some(StraightRun { lba, blocks: end - lba, host_lba: host + (lba - start), writable: self.in_place_writes })
    }
}

fn fast_set(in_place_writes: bool, read_only: bool) -> DriveSet<'static> {
    hdd_set(Box::new(TwoRunDisk { in_place_writes, read_only }))
}

/// One AH=`ah` call of `count` blocks at `lba`, then what the engine would publish.
fn served_then_published(set: &mut DriveSet<'_>, ah: u8, count: u16, lba: u64) -> Option<(u8, StraightRun)> {
    let mut m = machine();
    let mut r = ext_regs(ah, 0x80);
    put_dap(&mut m, &mut r, count, 0x1000, 0, lba);
    let before = r;
    call(set, &mut r, &mut m);
    fast_run_after(set, &before, &r, &mut m)
}

#[test]
fn fast_run_is_the_one_where_a_read_ends() {
    let mut set = fast_set(true, false);
    let (dl, run) = served_then_published(&mut set, 0x42, 10, 20).unwrap();
    assert_eq!(dl, 0x80);
    assert_eq!(run, StraightRun { lba: 30, blocks: 70, host_lba: 5030, writable: true });
    // Ending at the boundary: the next run; clipped to the disk's end.
    let (_, run) = served_then_published(&mut set, 0x42, 10, 90).unwrap();
    assert_eq!(run, StraightRun { lba: 100, blocks: 200, host_lba: 9000, writable: true });
    // Ending at the disk's end: the run where the call started.
    let (_, run) = served_then_published(&mut set, 0x43, 10, 290).unwrap();
    assert_eq!(run, StraightRun { lba: 290, blocks: 10, host_lba: 9190, writable: true });
}

#[test]
fn fast_run_is_read_only_on_a_read_only_drive_or_where_writes_are_not_in_place() {
    let (_, run) = served_then_published(&mut fast_set(false, false), 0x42, 1, 0).unwrap();
    assert!(!run.writable);
    let (_, run) = served_then_published(&mut fast_set(true, true), 0x42, 1, 0).unwrap();
    assert!(!run.writable);
}

#[test]
fn no_fast_run_after_other_calls_failures_or_other_packet_forms() {
    let mut set = fast_set(true, false);
    // A failed call (past the end) publishes nothing.
    assert_eq!(served_then_published(&mut set, 0x42, 10, 400), None);
    // Verify, seek, CHS: nothing.
    assert_eq!(served_then_published(&mut set, 0x44, 10, 0), None);
    let mut m = machine();
    let mut r = chs_regs(0x02, 1, ChsAddress { cylinder: 0, head: 0, sector: 1 });
    let before = r;
    call(&mut set, &mut r, &mut m);
    assert_eq!(fast_run_after(&mut set, &before, &r, &mut m), None);
    // A real drive (81h is passed through): nothing.
    let mut r = ext_regs(0x42, 0x81);
    put_dap(&mut m, &mut r, 1, 0x1000, 0, 0);
    assert_eq!(fast_run_after(&mut set, &r.clone(), &r, &mut m), None);
    // The flat-buffer form: the stub only knows seg:off packets.
    let mut r = ext_regs(0x42, 0x80);
    put_dap(&mut m, &mut r, 1, 0xFFFF, 0xFFFF, 0);
    m.bytes[DAP as usize] = 0x18;
    m.write(DAP + 0x10, &0x20000u64.to_le_bytes()).unwrap();
    let before = r;
    call(&mut set, &mut r, &mut m);
    assert_ok(&r, 0);
    assert_eq!(fast_run_after(&mut set, &before, &r, &mut m), None);
}

#[test]
fn no_fast_run_for_a_disk_without_straight_runs() {
    let mut set = hdd_set(block_disk(pattern_disk(64), None, false));
    assert_eq!(served_then_published(&mut set, 0x42, 1, 0), None);
}
