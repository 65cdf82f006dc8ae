//! `chainloader` entries (issue "vboot among other boot loaders"): a real SYSLINUX on a second
//! partition started by its boot sector, the boot loader vboot-install replaced started from the
//! sector 0 it saved (Debian's mbr.bin, with the disk's current partition table), and every
//! refusal with its message and the way back to the menu.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::qemu::Qemu;
use vboot_tests::{guests, require_tool, sh, vboot_install, TempDir};

const T: Duration = Duration::from_secs(120);
/// What SYSLINUX's `KERNEL /hello.bs` prints: SYSLINUX found its partition, read its config
/// and a file, and started the boot sector in it.
const SYSLINUX_MARKER: &str = "SYSLINUX-ON-HD0-2";
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";

const P1_START: u64 = 2048;
const P1_SECTORS: u64 = 32768;
const P2_START: u64 = P1_START + P1_SECTORS;
const P2_SECTORS: u64 = 32768;
const P3_START: u64 = P2_START + P2_SECTORS;

const GRUB_CFG: &str = "\
set timeout=-1
menuentry 'SYSLINUX by root' {
    insmod chain
    set root=(hd0,2)
    chainloader +1
}
menuentry 'SYSLINUX by device' {
    chainloader (hd0,msdos2)+1
}
menuentry 'Missing partition' {
    chainloader (hd0,7)+1
}
menuentry 'Missing disk' {
    chainloader (hd1)+1
}
menuentry 'No boot signature' {
    chainloader (hd0,3)+1
}
menuentry 'A file' {
    chainloader (hd0,1)/bootmgr
}
menuentry 'No root' {
    chainloader +1
}
menuentry 'GRUB option' {
    set root=(hd0,2)
    chainloader --bpb +1
}
";

/// A 64 MiB MBR disk: (hd0,1) FAT16 with grub.cfg, active; (hd0,2) FAT16 with SYSLINUX
/// installed by `syslinux --install`, whose config boots a boot sector printing
/// [`SYSLINUX_MARKER`] (which ends QEMU with the pass code); (hd0,3) blank. Sector 0's code is
/// Debian's mbr.bin, the "previous boot loader". vboot is not installed yet.
fn host_disk(dir: &TempDir, grub_cfg: &str) -> PathBuf {
    let table = format!(
        "label: dos\nstart={}, size={}, type=6, bootable\nstart={}, size={}, type=6\nstart={}, size=8192, type=83\n",
        P1_START, P1_SECTORS, P2_START, P2_SECTORS, P3_START
    );
    host_disk_with(dir, grub_cfg, &|disk| disk::sfdisk(disk, &table), P2_START)
}

/// [`host_disk`] with another partition table, made by `partition` (grub.cfg's partition at
/// [`P1_START`]), SYSLINUX's partition at `syslinux_start`.
fn host_disk_with(dir: &TempDir, grub_cfg: &str, partition: &dyn Fn(&Path), syslinux_start: u64) -> PathBuf {
    require_tool("syslinux", "syslinux");
    assert!(Path::new(MBR_BIN).exists(), "{} is missing: install the Debian package syslinux-common", MBR_BIN);
    let disk = dir.join("disk.img");
    disk::blank(&disk, 64);
    partition(&disk);
    let p1 = dir.join("p1.img");
    disk::fat_volume(&p1, P1_SECTORS, 16, &[FileSpec::new("/boot/grub/grub.cfg", grub_cfg)]);
    disk::write_at(&disk, P1_START, &p1);
    let hello = guests::hello_boot_sector(&dir.path, "sys-hello", SYSLINUX_MARKER);
    let cfg = "SERIAL 0 115200\nDEFAULT hello\nPROMPT 0\nTIMEOUT 0\nLABEL hello\n  KERNEL /hello.bs\n";
    let p2 = dir.join("p2.img");
    disk::fat_volume(&p2, P2_SECTORS, 16, &[FileSpec::new("/syslinux.cfg", cfg), FileSpec::new("/hello.bs", hello)]);
    sh(Command::new("syslinux").arg("--install").arg(&p2));
    disk::write_at(&disk, syslinux_start, &p2);
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[..440].copy_from_slice(&std::fs::read(MBR_BIN).unwrap()[..440]);
    std::fs::write(&disk, bytes).unwrap();
    disk
}

fn install(disk: &Path, extra: &[&str]) -> String {
    let mut args = vec!["install", disk.to_str().unwrap(), "--partition", "1"];
    args.extend_from_slice(extra);
    let (ok, out) = vboot_install(&args);
    assert!(ok, "vboot-install failed:\n{}", out);
    out
}

fn start(disk: &Path) -> Qemu {
    let mut cfg = vboot_tests::qemu::Config::disk(disk);
    cfg.memory_mib = 256;
    Qemu::start(&cfg)
}

/// A host disk made by `make` in a new directory `tag`, with vboot installed; booted, menu entry
/// `key` prints [`SYSLINUX_MARKER`]. Returns what came after the key.
fn syslinux_boot(tag: &str, make: impl Fn(&TempDir) -> PathBuf, menu_line: &str, key: u8) -> String {
    let dir = TempDir::new(tag);
    let disk = make(&dir);
    install(&disk, &[]);
    start(&disk).boot_from_menu(menu_line, key, SYSLINUX_MARKER, T)
}

#[test]
fn set_root_and_chainloader_plus_one_start_syslinux() {
    let tail = syslinux_boot("chain-root", |dir| host_disk(dir, GRUB_CFG), "GRUB option", b'1');
    assert!(tail.contains("Chainloading the boot sector of (hd0,2) (start LBA 34816) as drive 0x80, DS:SI = 0000:07CE"), "{}", tail);
    assert!(tail.contains("insmod"), "the skipped insmod should be mentioned:\n{}", tail);
}

#[test]
fn chainloader_naming_the_partition_starts_syslinux() {
    let tail = syslinux_boot("chain-device", |dir| host_disk(dir, GRUB_CFG), "GRUB option", b'2');
    assert!(tail.contains("chainload: the boot sector of partition (hd0,msdos2)"), "{}", tail);
}

/// A logical partition has no entry in sector 0: its boot sector gets an equivalent one, with
/// its start LBA from the start of the disk, which SYSLINUX boots from.
#[test]
fn a_logical_partition_gets_an_equivalent_entry() {
    let title = "SYSLINUX in a logical partition";
    let logical_start = P2_START + 2048;
    let table = format!(
        "label: dos\nstart={}, size={}, type=6, bootable\nstart={}, type=5\nstart={}, size={}, type=6\n",
        P1_START, P1_SECTORS, P2_START, logical_start, P2_SECTORS
    );
    let cfg = format!("set timeout=-1\nmenuentry '{}' {{\n    chainloader (hd0,5)+1\n}}\n", title);
    let tail = syslinux_boot("chain-logical", |dir| host_disk_with(dir, &cfg, &|disk| disk::sfdisk(disk, &table), logical_start), title, b'1');
    assert!(tail.contains("Chainloading the boot sector of (hd0,5) (start LBA 36864) as drive 0x80, DS:SI = 0000:07BE"), "{}", tail);
}

/// A GPT partition has no MBR entry: its boot sector gets an equivalent one (type EDh).
#[test]
fn a_gpt_partition_gets_an_equivalent_entry() {
    let title = "SYSLINUX on GPT";
    let cfg = format!("set timeout=-1\nmenuentry '{}' {{\n    chainloader (hd0,gpt3)+1\n}}\n", title);
    let gpt = |disk: &Path| {
        let (grub_end, syslinux_end) = ((P2_START - 1).to_string(), (P2_START + P2_SECTORS - 1).to_string());
        disk::sgdisk(disk, &["-a", "1", "-n", "1:34:2047", "-t", "1:ef02", "-n", &format!("2:{}:{}", P1_START, grub_end), "-t", "2:0700"]);
        disk::sgdisk(disk, &["-n", &format!("3:{}:{}", P2_START, syslinux_end), "-t", "3:0700"]);
    };
    let dir = TempDir::new("chain-gpt");
    let disk = host_disk_with(&dir, &cfg, &gpt, P2_START);
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap(), "--partition", "2"]);
    assert!(ok, "{}", out);
    let tail = start(&disk).boot_from_menu(title, b'1', SYSLINUX_MARKER, T);
    assert!(tail.contains("Chainloading the boot sector of (hd0,gpt3) (start LBA 34816) as drive 0x80, DS:SI = 0000:07BE"), "{}", tail);
}

/// A second disk is BIOS drive 81h: its MBR (Debian's mbr.bin, which starts its active
/// partition) and its partition's boot sector both start SYSLINUX from it with DL = 81h.
#[test]
fn the_second_disk_is_drive_81h() {
    let dir = TempDir::new("chain-hd1");
    let cfg = "set timeout=-1\nmenuentry 'Disk 1' {\n    chainloader (hd1)+1\n}\nmenuentry 'Disk 1, partition 2' {\n    set root=(hd1,2)\n    chainloader +1\n}\n";
    let host = host_disk(&dir, cfg);
    install(&host, &[]);
    let second_dir = TempDir::new("chain-hd1-disk");
    let table = format!("label: dos\nstart={}, size={}, type=6\nstart={}, size={}, type=6, bootable\n", P1_START, P1_SECTORS, P2_START, P2_SECTORS);
    let second = host_disk_with(&second_dir, "", &|disk| disk::sfdisk(disk, &table), P2_START);
    for (key, expect) in [(b'1', "Chainloading the MBR of (hd1) as drive 0x81."), (b'2', "Chainloading the boot sector of (hd1,2) (start LBA 34816) as drive 0x81, DS:SI = 0000:07CE")] {
        let mut cfg = vboot_tests::qemu::Config::disk(&host);
        cfg.drives.push(vboot_tests::qemu::Drive::virtio(&second));
        let tail = Qemu::start(&cfg).boot_from_menu("Disk 1, partition 2", key, SYSLINUX_MARKER, T);
        assert!(tail.contains(expect), "{}", tail);
    }
}

#[test]
fn refusals_name_the_problem_and_lead_back_to_the_menu() {
    let dir = TempDir::new("chain-refusals");
    let disk = host_disk(&dir, GRUB_CFG);
    install(&disk, &[]);
    let mut q = start(&disk);
    q.expect("GRUB option", T);
    q.expect_refusals(
        "GRUB option",
        &[
            (b"3", "chainloader (hd0,7)+1: partition 7 does not exist; (hd0) has 1, 2, 3"),
            (b"4", "chainloader (hd1)+1: disk (hd1) does not exist: BIOS drive 0x81 does not answer"),
            (b"5", "chainloader (hd0,3)+1: its first sector (LBA 67584) has no boot signature (55AA)"),
            (b"6", "chainloader `(hd0,1)/bootmgr`: loading files is not supported, only +1"),
            (b"7", "chainloader `+1` has no device: root is not set"),
            (b"8", "chainloader option `--bpb` is GRUB's and not supported by vboot"),
        ],
        T,
    );
    // And the menu still boots.
    let tail = q.boot_from_menu("GRUB option", b'2', SYSLINUX_MARKER, T);
    assert!(tail.contains("Chainloading"), "{}", tail);
}

/// vboot-install appends the entry for the boot loader it replaced (mbr.bin) to the grub.cfg it
/// is given; booting it runs mbr.bin with the partition table the disk has *now* (partition 2
/// made active after the install: the saved sector 0 still says 1, whose boot sector is
/// mkfs.fat's "not a bootable disk"), so SYSLINUX starts; and the disk is byte for byte the
/// same after that boot.
#[test]
fn the_original_mbr_runs_with_the_current_partition_table_and_nothing_is_written() {
    let dir = TempDir::new("chain-original");
    let disk = host_disk(&dir, GRUB_CFG);
    // grub.cfg out of the disk's first partition and back, as from a mounted partition.
    let offset = format!("{}@@{}", disk.display(), P1_START * 512);
    let local_cfg = dir.join("grub.cfg");
    sh(Command::new("mcopy").args(["-o", "-i", &offset, "::/boot/grub/grub.cfg"]).arg(&local_cfg).env("MTOOLS_SKIP_CHECK", "1"));
    let out = install(&disk, &["--grub-cfg", local_cfg.to_str().unwrap()]);
    assert!(out.contains("Appended to") && out.contains("chainloader --original-mbr"), "{}", out);
    sh(Command::new("mcopy").args(["-o", "-i", &offset]).arg(&local_cfg).arg("::/boot/grub/grub.cfg").env("MTOOLS_SKIP_CHECK", "1"));
    let mut bytes = std::fs::read(&disk).unwrap();
    assert_eq!(&bytes[2 * 512..2 * 512 + 440], &std::fs::read(MBR_BIN).unwrap()[..440], "mbr.bin not saved");
    assert_eq!(bytes[2 * 512 + 446], 0x80, "the saved copy has partition 1 active");
    // Partition 2 becomes the active one, after the install.
    bytes[446] = 0x00;
    bytes[462] = 0x80;
    std::fs::write(&disk, &bytes).unwrap();

    let before = std::fs::read(&disk).unwrap();
    let last = "Previous boot loader (original MBR)";
    let tail = start(&disk).boot_from_menu(last, b'9', SYSLINUX_MARKER, T);
    assert!(tail.contains("Chainloading the original MBR saved at LBA 2, with the current partition table, as drive 0x80"), "{}", tail);
    assert!(std::fs::read(&disk).unwrap() == before, "booting the original MBR changed the disk");
}

/// No saved sector 0 to start: vboot put in place with dd (no install record), and a disk whose
/// sector 0 had no boot code before vboot-install (where it offers no entry either).
#[test]
fn original_mbr_refusals() {
    let cfg = "set timeout=-1\nmenuentry 'Original' {\n    chainloader --original-mbr\n}\n";
    let dir = TempDir::new("chain-no-saved");
    let blank = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/boot/grub/grub.cfg", cfg)]);
    let out = install(&blank, &[]);
    assert!(!out.contains("original-mbr"), "no entry is offered for a sector 0 without boot code:\n{}", out);
    let mut q = start(&blank);
    q.expect("Original", T);
    q.expect_refusals("Original", &[(b"1", "chainloader --original-mbr: the saved sector 0 holds no other boot loader")], T);
    drop(q);

    let dir = TempDir::new("chain-dd");
    let dd = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/boot/grub/grub.cfg", cfg)]);
    let root = vboot_tests::workspace_root().join("target/vboot");
    let stage1 = std::fs::read(root.join("stage1.bin")).unwrap();
    let stage2 = std::fs::read(root.join("stage2.bin")).unwrap();
    let engine = std::fs::read(root.join("engine.bin")).unwrap();
    let mut bytes = std::fs::read(&dd).unwrap();
    // docs/install.md: stage1's code, stage2 at LBA 3, the engine right after it.
    bytes[..440].copy_from_slice(&stage1[..440]);
    bytes[3 * 512..3 * 512 + stage2.len()].copy_from_slice(&stage2);
    let engine_at = 3 * 512 + stage2.len();
    bytes[engine_at..engine_at + engine.len()].copy_from_slice(&engine);
    std::fs::write(&dd, bytes).unwrap();
    let mut q = start(&dd);
    q.expect("Original", T);
    q.expect_refusals("Original", &[(b"1", "chainloader --original-mbr: there is no saved original MBR (no vboot install record")], T);
}
