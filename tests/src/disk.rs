//! Host disks as users make them: `sfdisk`/`sgdisk` partition tables, `mkfs.fat` + mtools
//! filesystems, assembled into one image file with plain file writes (no loop mounts).

use crate::{require_tool, sh};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// A zero-filled (sparse) disk image of `size_mib` MiB.
pub fn blank(path: &Path, size_mib: u64) {
    let f = std::fs::File::create(path).expect("create disk image");
    f.set_len(size_mib * MIB).expect("size disk image");
}

/// Partition `disk` with an sfdisk script (one partition per line, as `sfdisk` reads them).
pub fn sfdisk(disk: &Path, script: &str) {
    require_tool("sfdisk", "fdisk");
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sfdisk");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sfdisk failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Run sgdisk with `args` on `disk`.
pub fn sgdisk(disk: &Path, args: &[&str]) {
    require_tool("sgdisk", "gdisk");
    sh(Command::new("sgdisk").args(args).arg(disk));
}

/// A file to put on a FAT volume.
#[derive(Clone)]
pub struct FileSpec {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl FileSpec {
    pub fn new(path: &str, bytes: impl Into<Vec<u8>>) -> FileSpec {
        FileSpec { path: path.to_string(), bytes: bytes.into() }
    }
}

/// Make a FAT volume image of `sectors` sectors (`fat_bits` 12, 16 or 32) holding `files`.
pub fn fat_volume(image: &Path, sectors: u64, fat_bits: u32, files: &[FileSpec]) {
    fat_volume_args(image, sectors, fat_bits, &[], files)
}

/// [`fat_volume`] with more `mkfs.fat` arguments (such as `-s 1` for one-sector clusters).
pub fn fat_volume_args(image: &Path, sectors: u64, fat_bits: u32, mkfs_args: &[&str], files: &[FileSpec]) {
    require_tool("mkfs.fat", "dosfstools");
    require_tool("mcopy", "mtools");
    let _ = std::fs::remove_file(image);
    sh(Command::new("mkfs.fat")
        .args(["-F", &fat_bits.to_string()])
        .args(mkfs_args)
        .arg("-C")
        .arg(image)
        .arg((sectors / 2).to_string()));
    let staging = image.with_extension("files");
    let _ = std::fs::remove_dir_all(&staging);
    let mut made_dirs = std::collections::BTreeSet::new();
    for f in files {
        let parts: Vec<&str> = f.path.trim_start_matches('/').split('/').collect();
        let mut dir = String::new();
        for p in &parts[..parts.len() - 1] {
            dir = format!("{}/{}", dir, p);
            if made_dirs.insert(dir.clone()) {
                sh(Command::new("mmd").arg("-i").arg(image).arg(format!("::{}", dir)).env("MTOOLS_SKIP_CHECK", "1"));
            }
        }
        let local: PathBuf = staging.join(parts.join("_"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(&local, &f.bytes).unwrap();
        sh(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(image)
            .arg(&local)
            .arg(format!("::/{}", parts.join("/")))
            .env("MTOOLS_SKIP_CHECK", "1"));
    }
    let _ = std::fs::remove_dir_all(&staging);
}

/// Copy a partition image into `disk` at `start_lba`.
pub fn write_at(disk: &Path, start_lba: u64, image: &Path) {
    let bytes = std::fs::read(image).expect("read partition image");
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).expect("open disk");
    f.seek(SeekFrom::Start(start_lba * 512)).unwrap();
    f.write_all(&bytes).unwrap();
}

/// Put `code` (at least the 440 bytes of an MBR's boot code; only those are used) at the start
/// of `disk`, keeping its disk signature and partition table.
pub fn write_mbr_code(disk: &Path, code: &[u8]) {
    assert!(code.len() >= 440, "MBR boot code is 440 bytes; got {}", code.len());
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).expect("open disk");
    f.write_all(&code[..440]).unwrap();
}

/// The usual test disk: MBR, one active FAT partition at 1 MiB filling the disk, with `files`:
/// FAT32 from 64 MiB up (FAT32 needs 65525 clusters), FAT16 below.
pub fn mbr_fat32_disk(dir: &crate::TempDir, size_mib: u64, files: &[FileSpec]) -> PathBuf {
    let part = dir.join("part.img");
    fat_volume(&part, size_mib * 2048 - 2048, if size_mib >= 64 { 32 } else { 16 }, files);
    let disk = disk_from_partition(dir, &part, size_mib);
    let _ = std::fs::remove_file(&part);
    disk
}

/// A 64 MiB MBR disk whose one partition (from sector 2048, type 07h, active) is NTFS made by
/// mkntfs and filled with ntfscp (which writes files out in full; mkfs.ext4 -d would leave
/// holes): `/grub.cfg` with `grub_cfg`, and each (host file, path on the volume) of `files`;
/// vboot installed by vboot-install.
pub fn ntfs_vboot_disk(dir: &crate::TempDir, grub_cfg: &str, files: &[(&Path, &str)]) -> PathBuf {
    let part = dir.join("part.img");
    require_tool("mkntfs", "ntfs-3g");
    blank(&part, 63);
    sh(Command::new("mkntfs").args(["-F", "-Q", "-q", "-p", "2048", "-H", "255", "-S", "63"]).arg(&part));
    let cfg_file = dir.join("grub.cfg");
    std::fs::write(&cfg_file, grub_cfg).unwrap();
    for (from, to) in std::iter::once((cfg_file.as_path(), "/grub.cfg")).chain(files.iter().copied()) {
        sh(Command::new("ntfscp").arg("-f").arg(&part).arg(from).arg(to));
    }
    let host = dir.join("disk.img");
    blank(&host, 64);
    sfdisk(&host, "label: dos\nstart=2048, type=7, bootable\n");
    write_at(&host, 2048, &part);
    let (ok, out) = crate::vboot_install(&["install", host.to_str().unwrap()]);
    assert!(ok, "{}", out);
    host
}

/// SHA-256 of a file, by the system's sha256sum (an oracle we did not write).
pub fn sha256(path: &Path) -> String {
    let out = sh(Command::new("sha256sum").arg(path));
    out.split_whitespace().next().unwrap_or_default().to_string()
}

/// Copy `bytes` to `path` on the FAT volume `image` so that the file is split into at least
/// `pieces` runs: fill the free space with hole-sized files separated by one-cluster spacers,
/// delete the hole files, then copy. (On FAT32 the FSInfo "next free" hint is cleared first, as a
/// disk checker would, or mtools would append after the last allocation instead of filling holes.)
pub fn put_fragmented(image: &Path, path: &str, bytes: &[u8], pieces: usize) {
    let dir = image.with_extension("frag");
    std::fs::create_dir_all(&dir).unwrap();
    let hole = (bytes.len() / pieces).max(512);
    let local = |name: &str, len: usize| {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        p
    };
    let mcopy = |src: &Path, dst: &str| {
        sh(Command::new("mcopy").arg("-o").arg("-i").arg(image).arg(src).arg(format!("::{}", dst)).env("MTOOLS_SKIP_CHECK", "1"));
    };
    let hole_file = local("hole", hole);
    let spacer = local("spacer", 4096);
    for i in 0..pieces {
        mcopy(&hole_file, &format!("/hole{}", i));
        mcopy(&spacer, &format!("/spacer{}", i));
    }
    for i in 0..pieces {
        sh(Command::new("mdel").arg("-i").arg(image).arg(format!("::/hole{}", i)).env("MTOOLS_SKIP_CHECK", "1"));
    }
    forget_fat32_next_free(image);
    let src = dir.join("payload");
    std::fs::write(&src, bytes).unwrap();
    mcopy(&src, path);
    let _ = std::fs::remove_dir_all(&dir);
}

fn forget_fat32_next_free(image: &Path) {
    let bs = std::fs::read(image).map(|b| b[..512].to_vec()).unwrap();
    if u16::from_le_bytes([bs[22], bs[23]]) != 0 {
        return; // not FAT32
    }
    let bytes_per_sector = u16::from_le_bytes([bs[11], bs[12]]) as u64;
    let fsinfo = u16::from_le_bytes([bs[48], bs[49]]) as u64;
    let mut f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.seek(SeekFrom::Start(fsinfo * bytes_per_sector + 492)).unwrap();
    f.write_all(&[0xFF; 4]).unwrap();
}

/// The extent list of `path` on the FAT volume image, read by vboot's own FAT reader (which the
/// FAT tests check against mtools' `mshowfat`).
pub fn fat_extents(image: &Path, path: &str) -> vboot::fs::ExtentList {
    let dev = vboot::block::FileDisk::open(image, false).unwrap();
    let mut vol = vboot::fs::fat::FatVolume::open(dev).unwrap();
    vol.open_file(path).unwrap().extents
}

/// Copy a file out of a FAT volume image with mtools.
pub fn fat_get(image: &Path, path: &str, out: &Path) {
    sh(Command::new("mcopy").arg("-o").arg("-i").arg(image).arg(format!("::{}", path)).arg(out).env("MTOOLS_SKIP_CHECK", "1"));
}

/// A host disk image holding a FAT partition image at 1 MiB, as [`mbr_fat32_disk`] lays it out.
pub fn disk_from_partition(dir: &crate::TempDir, part: &Path, size_mib: u64) -> PathBuf {
    let disk = dir.join("disk.img");
    blank(&disk, size_mib);
    sfdisk(&disk, "label: dos\nstart=2048, type=c, bootable\n");
    write_at(&disk, 2048, part);
    disk
}

/// Bytes of the partition at 1 MiB (`sectors` long) read back out of a disk image.
pub fn partition_of(disk: &Path, sectors: u64, out: &Path) {
    let bytes = std::fs::read(disk).unwrap();
    std::fs::write(out, &bytes[2048 * 512..(2048 + sectors as usize) * 512]).unwrap();
}
