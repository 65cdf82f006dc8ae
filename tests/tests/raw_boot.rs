//! Booting raw images through the resident INT 13h engine (issue 4): the guest probe on a
//! fragmented image file, real guests no one here wrote (GRUB 2, SYSLINUX + Linux), `pause`,
//! `recover_mbr`, and images vboot must refuse.

use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ProbeConfig, ProbeWrite};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{disk, sh, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(90);

fn boot_cfg(line: &str) -> String {
    format!("set timeout=0\nmenuentry 'guest' {{\n    vboot {}\n}}\n", line)
}

/// Sectors of the host disk that belong to `path` on the partition at LBA 2048.
fn host_lbas(part: &std::path::Path, path: &str) -> std::collections::HashSet<u64> {
    let ext = disk::fat_extents(part, path);
    ext.extents.iter().flat_map(|e| (e.lba..e.lba + e.sectors).map(|l| l + 2048)).collect()
}

#[test]
fn probe_passes_on_a_fragmented_raw_image_and_its_writes_land_in_the_file() {
    let dir = TempDir::new("raw-probe");
    let total: u64 = 24 * 2048;
    let mut cfg = ProbeConfig::new(total);
    // vboot answers like memdisk and iPXE: the strict checks apply.
    cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    cfg.writes = vec![
        ProbeWrite { lba: 100, sectors: 1 },
        ProbeWrite { lba: 5000, sectors: 16 },
        ProbeWrite { lba: (total / 2) as u32 + 7, sectors: 9 },
        ProbeWrite { lba: total as u32 - 1, sectors: 1 },
    ];
    let probe = guests::build_probe(&dir.join("probe-build"));
    let image = dir.join("probe.img");
    guests::make_probe_disk(&image, &probe, &cfg);
    let host = vboot_host(&dir, 80, &boot_cfg("harddisk=/images/probe.img"), &[]);
    // Put the image on the partition in pieces, then tell the probe where the seams are.
    let part = dir.join("host-part.img");
    sh(Command::new("mmd").arg("-i").arg(&part).arg("::/images").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&part, "/images/probe.img", &std::fs::read(&image).unwrap(), 6);
    let ext = disk::fat_extents(&part, "/images/probe.img");
    assert!(ext.extents.len() >= 5, "the image should be fragmented: {:?}", ext.extents);
    cfg.boundaries_lba = ext
        .extents
        .iter()
        .skip(1)
        .map(|e| e.file_sector as u32)
        .filter(|&l| l > guests::PROBE_PATTERN_START_LBA + 2 && l < total as u32 - 2)
        .take(guests::PROBE_MAX_BOUNDARIES)
        .collect();
    {
        use std::io::{Seek, SeekFrom, Write};
        let (lba, _) = ext.lookup(guests::PROBE_CONFIG_LBA).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.write_all(&cfg.to_sector()).unwrap();
    }
    disk::write_at(&host.disk, 2048, &part);
    let before = std::fs::read(&host.disk).unwrap();
    let image_lbas = host_lbas(&part, "/images/probe.img");

    let mut q = Qemu::boot_disk(&host.disk);
    let status = q.wait_exit(T);
    let out = q.output();
    assert!(out.contains(guests::PROBE_PASS), "probe failed (exit {:?}):\n{}", status, out);
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    assert!(out.contains("hard disks: 2 (the real disk is now 0x81)"), "{}", out);
    assert!(out.contains("conventional memory 639 -> 635 KiB"), "{}", out);

    // The writes are in the file, and nothing outside the file changed on the host disk
    // (invariant 1, docs/architecture.md), down to the byte.
    let after = std::fs::read(&host.disk).unwrap();
    for lba in 0..(after.len() / 512) as u64 {
        if !image_lbas.contains(&lba) {
            let r = lba as usize * 512..lba as usize * 512 + 512;
            assert!(before[r.clone()] == after[r], "host sector {} outside the image changed", lba);
        }
    }
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let back = dir.join("probe-after.img");
    disk::fat_get(&part_now, "/images/probe.img", &back);
    guests::check_probe_disk(&back, &cfg).unwrap_or_else(|e| panic!("{}\n{}", e, out));
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part_now).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn grub2_inside_a_raw_image_hashes_a_file_through_the_hook() {
    let dir = TempDir::new("raw-grub");
    let (image, sha) = guests::build_grub_guest(&dir.path, 6 << 20);
    let host = vboot_host(&dir, 96, &boot_cfg("harddisk=(hd0,msdos1)/grub-guest.img"), &[HostImage {
        path: "/grub-guest.img",
        file: &image,
        pieces: 4,
    }]);
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect(guests::GRUB_HASHED, T);
    assert!(out.contains(&sha), "GRUB printed a different hash than sha256sum ({}):\n{}", sha, out);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
}

#[test]
fn syslinux_and_linux_boot_from_a_raw_image() {
    let dir = TempDir::new("raw-linux");
    let image = guests::build_syslinux_linux_guest(&dir.path);
    let host = vboot_host(&dir, 160, &boot_cfg("harddisk=/linux.img"), &[HostImage { path: "/linux.img", file: &image, pieces: 3 }]);
    let mut cfg = Config::disk(&host.disk);
    cfg.x86_64 = true;
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    let out = q.expect(guests::LINUX_OK, Duration::from_secs(180));
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    // The kernel built its memory map from vboot's INT 15h E820 answers: the stub (top 4 KiB of
    // conventional memory) and the engine (at the top of RAM) are not System RAM.
    let resident = out
        .lines()
        .find(|l| l.starts_with("Resident: "))
        .unwrap_or_else(|| panic!("no Resident line:\n{}", out));
    let engine_at = u64::from_str_radix(resident.rsplit("at 0x").next().unwrap().trim(), 16).unwrap();
    let ram: Vec<(u64, u64)> = out
        .lines()
        .filter(|l| l.starts_with("IOMEM ") && l.ends_with(": System RAM"))
        .filter_map(|l| {
            let range = l.trim_start_matches("IOMEM ").split(' ').next()?;
            let (a, b) = range.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    assert!(!ram.is_empty(), "no System RAM lines from /proc/iomem:\n{}", out);
    assert!(ram.contains(&(0x1000, 0x9dfff)), "System RAM should end at the page the stub starts in (632 KiB): {:x?}", ram);
    for (a, b) in &ram {
        assert!(*b < engine_at || *a > engine_at, "the engine at {:#x} is inside System RAM {:#x}-{:#x}", engine_at, a, b);
        assert!(*b < 0x9ec00 || *a > 0x9fbff, "the stub is inside System RAM {:#x}-{:#x}", a, b);
    }
}

/// The guest reads a key of its own once it runs: the first key must go to the pause, the second
/// to the guest. A guest started without waiting would read the first.
#[test]
fn pause_waits_for_a_key_before_the_guest_starts() {
    let dir = TempDir::new("raw-pause");
    let hello = guests::key_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let host = vboot_host(&dir, 64, &boot_cfg("harddisk=/hello.img pause"), &[HostImage { path: "/hello.img", file: &hello, pieces: 1 }]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("Press any key to boot.", T);
    q.send(b"p");
    q.expect("GUEST-HELLO", T);
    q.send(b"g");
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    let out = q.output();
    let key = format!("{}g", guests::GUEST_KEY);
    assert!(out.contains(&key), "the guest should get the second key (the pause the first):\n{}", out);
}

#[test]
fn images_that_cannot_be_booted_are_refused_with_a_reason() {
    let dir = TempDir::new("raw-refuse");
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 5000]).unwrap();
    let blank = dir.join("blank.img");
    std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
    let vhd = dir.join("disk.vhdx");
    sh(Command::new("qemu-img").args(["create", "-q", "-f", "vhdx"]).arg(&vhd).arg("4M"));
    let cfg = "set timeout=-1\n\
        menuentry 'odd' {\n vboot harddisk=/odd.img\n}\n\
        menuentry 'blank' {\n vboot harddisk=/blank.img\n}\n\
        menuentry 'vhdx' {\n vboot harddisk=/disk.vhdx\n}\n\
        menuentry 'iso' {\n vboot cdrom=/blank.img\n}\n";
    let host = vboot_host(&dir, 64, cfg, &[
        HostImage { path: "/odd.img", file: &odd, pieces: 1 },
        HostImage { path: "/blank.img", file: &blank, pieces: 1 },
        HostImage { path: "/disk.vhdx", file: &vhd, pieces: 1 },
    ]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("4. iso", T);
    q.expect_refusals(
        "4. iso",
        &[
            (&b"1"[..], "/odd.img is 5000 bytes, not a whole number of 512-byte sectors"),
            (&b"3"[..], "/disk.vhdx is a VHDX image; vboot boots raw, VHD, VMDK and VDI images"),
            (&b"4"[..], "cdrom=/blank.img: it is not an ISO 9660 CD image"),
        ],
        T,
    );
    // The boot sector is read through the image chain before the hook goes in, so a blank disk
    // is refused while the menu is still safe to return to (and the check after the hook, on the
    // sector the guest gets, is never reached).
    q.expect_refusals(
        "4. iso",
        &[(&b"2"[..], "/blank.img has no boot signature (55AA) in its first sector")],
        T,
    );
    let out = q.output();
    assert!(!out.contains("Resident: stub") && !out.contains("Press any key to reboot."), "{}", out);
}

/// `recover_mbr` puts back the sector 0 vboot-install saved (here: a boot sector that prints a
/// line) and boots it; `n` at the question writes nothing.
#[test]
fn recover_mbr_restores_and_boots_the_saved_boot_code() {
    let dir = TempDir::new("raw-recover");
    let original = guests::hello_guest(&dir.path, "orig", "ORIGINAL-MBR", 1);
    let cfg = "set timeout=-1\nmenuentry 'Recover' {\n vboot recover_mbr\n}\n";
    let part = dir.join("host-part.img");
    disk::fat_volume(&part, 64 * 2048 - 2048, 32, &[disk::FileSpec::new("/boot/grub/grub.cfg", cfg)]);
    let host_disk = disk::disk_from_partition(&dir, &part, 64);
    // The disk's own boot code before vboot: the hello sector's first 440 bytes.
    {
        let code = std::fs::read(&original).unwrap();
        let mut bytes = std::fs::read(&host_disk).unwrap();
        bytes[..440].copy_from_slice(&code[..440]);
        std::fs::write(&host_disk, bytes).unwrap();
    }
    let before = std::fs::read(&host_disk).unwrap()[..512].to_vec();
    let (ok, out) = vboot_tests::vboot_install(&["install", host_disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
    let installed = std::fs::read(&host_disk).unwrap()[..512].to_vec();

    let mut q = Qemu::boot_disk(&host_disk);
    q.expect("1. Recover", T);
    q.send(b"1");
    q.expect("Continue? [y/N]", T);
    let mark = q.mark();
    q.send(b"n");
    q.expect_from(mark, "recover_mbr cancelled; nothing was written", T);
    q.kill();
    assert_eq!(std::fs::read(&host_disk).unwrap()[..512], installed[..], "cancelling wrote sector 0");

    let mut q = Qemu::boot_disk(&host_disk);
    q.expect("1. Recover", T);
    q.send(b"1");
    q.expect("Continue? [y/N]", T);
    q.send(b"y");
    q.expect("ORIGINAL-MBR", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
    assert_eq!(std::fs::read(&host_disk).unwrap()[..512], before[..], "sector 0 is not the original");
}

/// Host partitions that are not FAT: the same path from grub.cfg to the image's extents, on
/// ext4 (made with `mkfs.ext4 -d`) and NTFS (made with `mkntfs`, filled with `ntfscp`).
#[test]
fn images_boot_from_ext4_and_ntfs_host_partitions() {
    for fs in ["ext4", "ntfs"] {
        let dir = TempDir::new(&format!("raw-host-{}", fs));
        let hello = guests::hello_guest(&dir.path, "hello", &format!("GUEST-ON-{}", fs.to_uppercase()), 2048);
        // Filled, not zeros: mkfs.ext4 -d would store zero blocks as holes, and a sparse file is
        // refused as a disk (it has no sectors of its own to write to).
        let mut bytes = std::fs::read(&hello).unwrap();
        bytes[512..].fill(0xF6);
        std::fs::write(&hello, bytes).unwrap();
        let cfg = "set timeout=0\nmenuentry 'guest' {\n    vboot harddisk=/hello.img\n}\n";
        let part = dir.join("part.img");
        let sectors: u64 = 63 * 2048;
        match fs {
            "ext4" => {
                vboot_tests::require_tool("mkfs.ext4", "e2fsprogs");
                let src = dir.join("src");
                std::fs::create_dir_all(src.join("boot/grub")).unwrap();
                std::fs::write(src.join("boot/grub/grub.cfg"), cfg).unwrap();
                std::fs::copy(&hello, src.join("hello.img")).unwrap();
                sh(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&src).arg(&part).arg(format!("{}k", sectors / 2)));
            }
            _ => {
                vboot_tests::require_tool("mkntfs", "ntfs-3g");
                vboot_tests::require_tool("ntfscp", "ntfs-3g");
                disk::blank(&part, sectors / 2048);
                sh(Command::new("mkntfs").args(["-F", "-Q", "-q", "-p", "2048", "-H", "255", "-S", "63"]).arg(&part));
                let cfg_file = dir.join("grub.cfg");
                std::fs::write(&cfg_file, cfg).unwrap();
                sh(Command::new("ntfscp").arg("-f").arg(&part).arg(&cfg_file).arg("/grub.cfg"));
                sh(Command::new("ntfscp").arg("-f").arg(&part).arg(&hello).arg("/hello.img"));
            }
        }
        let host = dir.join("disk.img");
        disk::blank(&host, 64);
        disk::sfdisk(&host, &format!("label: dos\nstart=2048, type={}, bootable\n", if fs == "ext4" { "83" } else { "7" }));
        disk::write_at(&host, 2048, &part);
        let (ok, out) = vboot_tests::vboot_install(&["install", host.to_str().unwrap()]);
        assert!(ok, "{}", out);
        let mut q = Qemu::boot_disk(&host);
        let out = q.expect(&format!("GUEST-ON-{}", fs.to_uppercase()), T);
        assert!(out.contains(if fs == "ext4" { "ext2/3/4)" } else { "NTFS)" }), "grub.cfg not read from {}:\n{}", fs, out);
        assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    }
}
