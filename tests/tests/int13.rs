//! INT 13h semantics against images laid out by tools no one here wrote: sfdisk's CHS fields
//! and mkfs.fat's floppy BPB must agree with what our AH=08h/02h/42h answer.

use std::path::{Path, PathBuf};
use std::process::Command;
use vboot::block::FileDisk;
use vboot::int13::chs::{geometry_from_mbr, ChsAddress, FloppyFormat};
use vboot::int13::{handle, BlockDisk, DriveKind, DriveSet, FarPtr, GuestMemory, Outcome, Regs, VecMemory};

struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        TempFile(std::env::temp_dir().join(format!("vboot-int13-{}-{}-{}.img", tag, std::process::id(), nanos)))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(tool: &str, package: &str, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut cmd = Command::new(tool);
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({}): install the Debian package `{}`", tool, e, package));
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{} {:?} failed: {}", tool, args, String::from_utf8_lossy(&out.stderr));
}

/// Stamps each listed sector of a (sparse) image with its own LBA.
fn stamp_sectors(path: &Path, lbas: &[u64]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for &lba in lbas {
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.write_all(&lba.to_le_bytes()).unwrap();
    }
}

const BUF: u64 = 0x20000;
const DAP: u64 = 0x7000;

fn chs_read(set: &mut DriveSet<'_>, mem: &mut VecMemory, dl: u8, a: ChsAddress) -> Vec<u8> {
    let mut r = Regs { flags: 0x0202, ..Regs::default() };
    r.set_ah(0x02);
    r.set_al(1);
    let (cx, dh) = a.to_regs();
    r.set_cx(cx);
    r.set_dh(dh);
    r.set_dl(dl);
    r.es = (BUF >> 4) as u16;
    assert_eq!(handle(set, &mut r, mem), Outcome::Handled);
    assert!(!r.cf(), "CHS read of {:?} failed with AH={:02X}", a, r.ah());
    let mut s = vec![0u8; 512];
    mem.read(BUF, &mut s).unwrap();
    s
}

fn lba_read(set: &mut DriveSet<'_>, mem: &mut VecMemory, dl: u8, lba: u64) -> Vec<u8> {
    let mut p = [0u8; 16];
    p[0] = 0x10;
    p[2] = 1;
    p[6..8].copy_from_slice(&((BUF >> 4) as u16).to_le_bytes());
    p[8..16].copy_from_slice(&lba.to_le_bytes());
    mem.write(DAP, &p).unwrap();
    let mut r = Regs { flags: 0x0202, ds: (DAP >> 4) as u16, ..Regs::default() };
    r.set_ah(0x42);
    r.set_dl(dl);
    assert_eq!(handle(set, &mut r, mem), Outcome::Handled);
    assert!(!r.cf(), "LBA read of {} failed with AH={:02X}", lba, r.ah());
    let mut s = vec![0u8; 512];
    mem.read(BUF, &mut s).unwrap();
    s
}

/// sfdisk writes start/end CHS for each partition with the geometry it assumes (255/63 for an
/// image file). Our MBR geometry guess must recover that geometry, and a CHS read at the
/// partition's start/end CHS must return the sector at its LBA.
#[test]
fn sfdisk_partition_chs_matches_our_translation() {
    let img = TempFile::new("sfdisk");
    let sectors = 200 * 16065 + 1000; // not a whole number of cylinders
    std::fs::File::create(&img.0).unwrap().set_len(sectors * 512).unwrap();
    run(
        "sfdisk",
        "fdisk",
        &["--no-reread", "--no-tell-kernel", "-q", img.0.to_str().unwrap()],
        Some("label: dos\nstart=2048, size=100000, type=6\nstart=102400, size=1000000, type=83\nstart=1200000, type=c\n"),
    );
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(&img.0).unwrap(), &mut mbr).unwrap();
    let mut stamps = Vec::new();
    for i in 0..3 {
        let e = &mbr[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
        let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
        let size = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
        stamps.push(start);
        stamps.push(start + size - 1);
    }
    stamp_sectors(&img.0, &stamps);
    let mbr = &mbr[..];
    let g = geometry_from_mbr(mbr, sectors).expect("sfdisk's MBR implies a geometry");
    assert_eq!((g.heads, g.sectors_per_track), (255, 63));

    let disk = FileDisk::open(&img.0, false).unwrap();
    let mut set = DriveSet::new();
    set.add(0x80, DriveKind::HardDisk, Box::new(BlockDisk::new(disk, 512, Some(g), true).unwrap())).unwrap();
    let mut mem = VecMemory::zeroed(0x11_0000);
    // Our AH=08h agrees with the geometry sfdisk used.
    let mut r = Regs::default();
    r.set_ah(0x08);
    r.set_dl(0x80);
    handle(&mut set, &mut r, &mut mem);
    assert!(!r.cf());
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 199, head: 254, sector: 63 });

    for i in 0..3 {
        let e = &mbr[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
        let start_lba = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
        let size = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
        let end_lba = start_lba + size - 1;
        // Partition entry CHS bytes: head, sector | cylinder bits 9:8, cylinder bits 7:0 -
        // the same packing as DH / CL / CH.
        let start = ChsAddress::from_regs(u16::from_le_bytes([e[2], e[3]]), e[1]);
        let end = ChsAddress::from_regs(u16::from_le_bytes([e[6], e[7]]), e[5]);
        assert_eq!(g.to_lba(start), Some(start_lba), "partition {} start {:?}", i + 1, start);
        assert_eq!(g.from_lba(start_lba), Some(start));
        if end_lba < g.addressable_sectors() {
            assert_eq!(g.to_lba(end), Some(end_lba), "partition {} end {:?}", i + 1, end);
        }
        let mut checks = vec![(start, start_lba)];
        if end_lba < g.addressable_sectors() {
            checks.push((end, end_lba));
        }
        for (a, lba) in checks {
            let via_chs = chs_read(&mut set, &mut mem, 0x80, a);
            let via_lba = lba_read(&mut set, &mut mem, 0x80, lba);
            assert_eq!(via_chs, via_lba);
            assert_eq!(u64::from_le_bytes(via_lba[..8].try_into().unwrap()), lba);
        }
    }
}

/// mkfs.fat writes the BPB of a 1.44M floppy with the geometry DOS expects; our floppy format
/// table and AH=08h must say the same, and CHS reads must land where DOS would compute.
#[test]
fn mkfs_fat_floppy_geometry_matches_ah08() {
    let img = TempFile::new("floppy");
    run("mkfs.fat", "dosfstools", &["-C", img.0.to_str().unwrap(), "1440"], None);
    let bytes = std::fs::read(&img.0).unwrap();
    let spt = u16::from_le_bytes([bytes[0x18], bytes[0x19]]) as u32;
    let heads = u16::from_le_bytes([bytes[0x1A], bytes[0x1B]]) as u32;
    let format = FloppyFormat::from_size(bytes.len() as u64).expect("a 1.44M image");
    assert_eq!((format.geometry.sectors_per_track, format.geometry.heads), (spt, heads));

    let disk = FileDisk::open(&img.0, false).unwrap();
    let mut set = DriveSet::new();
    let kind = DriveKind::Floppy { drive_type: format.drive_type, parameter_table: FarPtr { segment: 0x9F00, offset: 0 } };
    set.add(0x00, kind, Box::new(BlockDisk::new(disk, 512, Some(format.geometry), true).unwrap())).unwrap();
    let mut mem = VecMemory::zeroed(0x11_0000);
    set.install_bda_counts(&mut mem);
    let mut r = Regs::default();
    r.set_ah(0x08);
    handle(&mut set, &mut r, &mut mem);
    assert!(!r.cf());
    assert_eq!(r.bl(), 0x04);
    assert_eq!(r.dl(), 1);
    assert_eq!(ChsAddress::from_regs(r.cx(), r.dh()), ChsAddress { cylinder: 79, head: 1, sector: spt as u8 });

    // The root directory, where DOS finds it: reserved + FATs, converted with the BPB geometry.
    let reserved = u16::from_le_bytes([bytes[0x0E], bytes[0x0F]]) as u64;
    let fats = bytes[0x10] as u64;
    let fat_sectors = u16::from_le_bytes([bytes[0x16], bytes[0x17]]) as u64;
    let root_lba = reserved + fats * fat_sectors;
    let track = root_lba / spt as u64;
    let a = ChsAddress {
        cylinder: (track / heads as u64) as u16,
        head: (track % heads as u64) as u8,
        sector: (root_lba % spt as u64) as u8 + 1,
    };
    let got = chs_read(&mut set, &mut mem, 0x00, a);
    assert_eq!(&got[..], &bytes[root_lba as usize * 512..root_lba as usize * 512 + 512]);
}
