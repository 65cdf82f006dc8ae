//! Boots in QEMU + SeaBIOS of disks made the way users make them, with vboot installed by the
//! real vboot-install.

use std::time::Duration;
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::qemu::{Config, Qemu};
use vboot_tests::{vboot_install, TempDir};

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn install(disk: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["install", disk.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, out) = vboot_install(&args);
    assert!(ok, "vboot-install failed:\n{}", out);
}

#[test]
fn mbr_disk_boots_to_banner_with_memory_map_disks_and_partitions() {
    let dir = TempDir::new("boot-mbr");
    let disk = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/boot/grub/grub.cfg", "set timeout=5\n")]);
    install(&disk, &[]);
    let mut q = Qemu::boot_disk(&disk);
    let out = q.expect("Partitions of 0x80", BOOT_TIMEOUT);
    let out = if out.contains("(hd0,1)") { out } else { q.expect("(hd0,1)", BOOT_TIMEOUT) };
    assert!(out.contains("vboot 0.1.0"), "banner missing:\n{}", out);
    assert!(out.contains("Memory map (E820)"), "memory map missing:\n{}", out);
    assert!(out.contains("usable"), "no usable memory listed:\n{}", out);
    assert!(out.contains("0x80: 131072 sectors (64 MiB), EDD"), "boot disk not listed:\n{}", out);
    assert!(out.contains("by LBA reads"), "stage1 should have used LBA reads:\n{}", out);
    assert!(out.contains("Install record: grub.cfg partition 1"), "record not read:\n{}", out);
    assert!(out.contains("(hd0,1) primary start      2048 size    129024"), "partition line wrong:\n{}", out);
}

#[test]
fn logical_partitions_in_the_ebr_chain_are_listed_with_grub_numbers() {
    let dir = TempDir::new("boot-logical");
    let disk = dir.join("disk.img");
    disk::blank(&disk, 64);
    disk::sfdisk(
        &disk,
        "label: dos\nstart=2048, size=32768, type=c, bootable\nstart=34816, type=5\nstart=36864, size=8192, type=83\nstart=47104, size=8192, type=7\n",
    );
    let part = dir.join("p1.img");
    disk::fat_volume(&part, 32768, 16, &[FileSpec::new("/grub.cfg", "set timeout=1\n")]);
    disk::write_at(&disk, 2048, &part);
    install(&disk, &[]);
    let mut q = Qemu::boot_disk(&disk);
    let out = q.expect("(hd0,6)", BOOT_TIMEOUT);
    let out = if out.contains("NTFS") { out } else { q.expect("NTFS", BOOT_TIMEOUT) };
    assert!(out.contains("(MBR, 4 found)"), "{}", out);
    assert!(out.contains("(hd0,2) primary start     34816"), "{}", out);
    assert!(out.contains("(hd0,5) logical start     36864 size      8192"), "{}", out);
    assert!(out.contains("(hd0,6) logical start     47104 size      8192"), "{}", out);
}

#[test]
fn gpt_disk_with_bios_boot_partition_boots_and_lists_gpt_entries() {
    let dir = TempDir::new("boot-gpt");
    let disk = dir.join("disk.img");
    disk::blank(&disk, 64);
    disk::sgdisk(
        &disk,
        &["-a", "1", "-n", "1:34:2047", "-t", "1:ef02", "-c", "1:biosboot", "-n", "2:2048:65535", "-t", "2:0700", "-c", "2:images", "-n", "3:65536:0", "-t", "3:8300"],
    );
    let part = dir.join("p2.img");
    disk::fat_volume(&part, 65536 - 2048, 16, &[FileSpec::new("/boot/grub/grub.cfg", "set timeout=1\n")]);
    disk::write_at(&disk, 2048, &part);
    install(&disk, &[]);
    let mut q = Qemu::boot_disk(&disk);
    let out = q.expect("(hd0,3)", BOOT_TIMEOUT);
    assert!(out.contains("by LBA reads"), "{}", out);
    assert!(out.contains("(GPT, 3 found)"), "{}", out);
    assert!(out.contains("(hd0,1) gpt     start        34 size      2014 sectors  BIOS boot \"biosboot\""), "{}", out);
    assert!(out.contains("(hd0,2) gpt     start      2048"), "{}", out);
    assert!(out.contains("\"images\""), "{}", out);
    assert!(out.contains("Install record: grub.cfg partition 2"), "{}", out);
}

/// SeaBIOS always offers extensions, so the CHS path is reached through the install-time switch
/// (`--force-chs`) that makes stage1 skip AH=41h. stage2 reports which path loaded it.
#[test]
fn stage1_chs_path_loads_stage2() {
    let dir = TempDir::new("boot-chs");
    let disk = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/grub.cfg", "")]);
    install(&disk, &["--force-chs"]);
    let mut q = Qemu::boot_disk(&disk);
    let out = q.expect("Partitions of 0x80", BOOT_TIMEOUT);
    assert!(out.contains("by CHS reads"), "{}", out);
}

/// A damaged stage2 must stop stage1 with its error code on screen, not jump into garbage.
#[test]
fn stage1_refuses_a_stage2_without_signature() {
    let dir = TempDir::new("boot-badsig");
    let disk = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/grub.cfg", "")]);
    install(&disk, &[]);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(3 * 512)).unwrap();
        f.write_all(&[0u8; 512]).unwrap();
    }
    let mut cfg = Config::disk(&disk);
    cfg.sercon = true;
    let mut q = Qemu::start(&cfg);
    q.expect("vboot stage1 error S", BOOT_TIMEOUT);
    // It waits there: no reboot (which -no-reboot would turn into an exit) within a few seconds.
    assert_eq!(q.wait_exit(Duration::from_secs(3)), None, "stage1 did not wait after its error");
}

/// stage1 loads only stage2's low part; the low part reads the rest above 1 MiB itself
/// (docs/boot-layout.md). When that read fails, it says so through the BIOS and waits, rather
/// than running half a stage2.
#[test]
fn stage2_low_part_stops_with_a_message_when_the_rest_cannot_be_read() {
    let dir = TempDir::new("boot-short");
    let disk = disk::mbr_fat32_disk(&dir, 64, &[FileSpec::new("/grub.cfg", "")]);
    install(&disk, &[]);
    let bytes = std::fs::read(&disk).unwrap();
    let header = vboot::install::Stage2Header::parse(&bytes[3 * 512..]).expect("an installed stage2");
    assert!(header.load_sectors < header.sectors, "{:?}", header);
    // The low part moved to the disk's last sectors, stage1's patch pointing at it: stage1's
    // reads work, the low part's read of what follows fails (past the end of the disk).
    let mut bytes = bytes;
    let disk_sectors = bytes.len() / 512;
    let low = header.load_sectors as usize;
    let at = disk_sectors - low;
    bytes.copy_within(3 * 512..(3 + low) * 512, at * 512);
    let mut sector0: [u8; 512] = bytes[..512].try_into().unwrap();
    let mut patch = vboot::install::StagePatch::read(&sector0);
    patch.stage2_lba = at as u64;
    patch.write(&mut sector0);
    bytes[..512].copy_from_slice(&sector0);
    let short = dir.path.join("moved.img");
    std::fs::write(&short, &bytes).unwrap();
    let mut cfg = Config::disk(&short);
    cfg.sercon = true;
    let mut q = Qemu::start(&cfg);
    q.expect("cannot read the rest of stage2 from the boot disk", BOOT_TIMEOUT);
    assert_eq!(q.wait_exit(Duration::from_secs(3)), None, "the low part did not wait after its error");
}
