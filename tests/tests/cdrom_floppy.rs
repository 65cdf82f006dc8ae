//! Virtual CDs from ISO files and virtual floppies (issue 8), in QEMU: boot loaders no one here
//! wrote (ISOLINUX, GRUB's rescue CD, SYSLINUX on FAT12) read their files through the hook;
//! emulated boot images; several devices at once with `boot=` choosing; refusals.

use std::time::Duration;
use vboot_tests::guests::{self, pseudo_random_bytes};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{disk, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(120);

fn boot_cfg(line: &str) -> String {
    format!("set timeout=0\nmenuentry 'guest' {{\n    vboot {}\n}}\n", line)
}

/// Boot the host disk and wait for the guest to end QEMU with "pass"; returns the output.
fn boot_expecting(host_disk: &std::path::Path, lines: &[&str]) -> String {
    boot_expecting_with(&Config::disk(host_disk), lines)
}

fn boot_expecting_with(cfg: &Config, lines: &[&str]) -> String {
    let mut q = Qemu::start(cfg);
    let status = q.wait_exit(T);
    let out = q.output();
    for l in lines {
        assert!(out.contains(l), "expected {:?} (exit {:?}):\n{}", l, status, out);
    }
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    out
}

#[test]
fn isolinux_cd_boots_and_reads_its_files_through_the_hook() {
    let dir = TempDir::new("cd-isolinux");
    let iso = guests::isolinux_iso(&dir.path, "isolinux", "GUEST-FROM-ISOLINUX", false);
    let host = vboot_host(&dir, 64, &boot_cfg("cdrom=/isolinux.iso"), &[HostImage { path: "/isolinux.iso", file: &iso, pieces: 4 }]);
    let out = boot_expecting(&host.disk, &["no emulation", "ISOLINUX 6.04", "GUEST-FROM-ISOLINUX"]);
    // ISOLINUX found its own drive through AX=4B01h; it complains when it has to search.
    assert!(!out.contains("Image checksum error") && !out.contains("No boot info table"), "{}", out);
}

/// Issue 14: INT 13h calls whose registers used to stop the engine (a CD block number near
/// 2^64, a flat buffer that wraps past 2^64) or let the BIOS write over the stub (a buffer
/// overlapping it) each fail with their status, and the engine serves the next call.
#[test]
fn hostile_int13_calls_on_the_cd_fail_and_the_engine_goes_on() {
    let dir = TempDir::new("cd-hostile");
    let iso = guests::hostile_iso(&dir.path);
    let host = vboot_host(&dir, 64, &boot_cfg("cdrom=/hostile.iso"), &[HostImage { path: "/hostile.iso", file: &iso, pieces: 2 }]);
    boot_expecting(
        &host.disk,
        &["HOSTILE start", "CALL 1: CF=1 AH=04", "CALL 2: CF=1 AH=09", "CALL 3: CF=1 AH=09", "READ: OK", "HOSTILE DONE"],
    );
}

/// ISOLINUX loads Debian's kernel and an initramfs (about 10 MiB) from the ISO through the hook,
/// and Linux starts.
#[test]
fn isolinux_cd_boots_linux() {
    let dir = TempDir::new("cd-linux");
    let iso = guests::isolinux_linux_iso(&dir.path);
    let host = vboot_host(&dir, 128, &boot_cfg("cdrom=/linux.iso"), &[HostImage { path: "/linux.iso", file: &iso, pieces: 3 }]);
    let mut cfg = Config::disk(&host.disk);
    cfg.x86_64 = true;
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    let out = q.expect(guests::LINUX_OK, Duration::from_secs(180));
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    assert!(out.contains("ISOLINUX 6.04"), "{}", out);
}

/// A catalog that asks for all of isolinux.bin (about 80 sectors from 0000:7C00): the image
/// covers stage2's own code, so the stub copies it into place at the last moment.
#[test]
fn isolinux_cd_whose_boot_image_covers_stage2_boots() {
    let dir = TempDir::new("cd-isolinux-whole");
    let iso = guests::isolinux_iso(&dir.path, "whole", "GUEST-FROM-WHOLE-ISOLINUX", true);
    let host = vboot_host(&dir, 64, &boot_cfg("cdrom=/whole.iso"), &[HostImage { path: "/whole.iso", file: &iso, pieces: 2 }]);
    let out = boot_expecting(&host.disk, &["ISOLINUX 6.04", "GUEST-FROM-WHOLE-ISOLINUX"]);
    let sectors: u32 = out
        .lines()
        .find_map(|l| l.split("no emulation, CD block ").nth(1))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|s| s.strip_suffix(" sectors"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no El Torito line:\n{}", out));
    assert!(0x7C00 + sectors * 512 > 0x8000 + 16 * 1024, "the image should cover stage2: {} sectors", sectors);
}

/// GRUB's rescue CD hashes a file in the ISO through the hook (2048-byte reads from E0h).
#[test]
fn grub_rescue_cd_hashes_a_file_inside_the_iso() {
    let dir = TempDir::new("cd-grub");
    let payload = pseudo_random_bytes(3 << 20, 0xC0FFEE);
    let want = {
        let p = dir.join("payload.bin");
        std::fs::write(&p, &payload).unwrap();
        disk::sha256(&p)
    };
    let script = "echo VBOOT-GRUB-START\nif hashsum --hash sha256 /payload.bin; then\n  echo VBOOT-GRUB-HASHED\n  outb 0xf4 0x10\nfi\necho VBOOT-GRUB-HASH-FAILED\noutb 0xf4 0x11";
    let iso = guests::grub_rescue_iso(&dir.path, "rescue", script, &[("/payload.bin", &payload)]);
    let host = vboot_host(&dir, 96, &boot_cfg("cdrom=/rescue.iso"), &[HostImage { path: "/rescue.iso", file: &iso, pieces: 3 }]);
    let out = boot_expecting(&host.disk, &["VBOOT-GRUB-HASHED"]);
    assert!(out.contains(&want), "GRUB's hash differs from sha256sum's {}:\n{}", want, out);
}

/// `harddisk=` + `cdrom=` + `boot=cdrom`: the CD boots, and its GRUB reads the hard-disk image
/// as (hd0), BIOS drive 80h, next to the file in the ISO.
#[test]
fn cd_booted_with_a_hard_disk_attached_reads_the_disk_at_80h() {
    let dir = TempDir::new("cd-with-hd");
    let hd_payload = pseudo_random_bytes(1 << 20, 0xD15C);
    let hd_dir = TempDir::new("cd-with-hd-disk");
    let hd = disk::mbr_fat32_disk(&hd_dir, 16, &[disk::FileSpec::new("/hd-payload.bin", hd_payload.clone())]);
    let want_hd = {
        let p = dir.join("hd-payload.bin");
        std::fs::write(&p, &hd_payload).unwrap();
        disk::sha256(&p)
    };
    let cd_payload = pseudo_random_bytes(1 << 20, 0xCDCD);
    let want_cd = {
        let p = dir.join("cd-payload.bin");
        std::fs::write(&p, &cd_payload).unwrap();
        disk::sha256(&p)
    };
    let script = "echo VBOOT-GRUB-START\n\
        if hashsum --hash sha256 (hd0,msdos1)/hd-payload.bin; then\n\
        \x20 if hashsum --hash sha256 /cd-payload.bin; then\n\
        \x20   echo VBOOT-GRUB-HASHED-BOTH\n\
        \x20   outb 0xf4 0x10\n\
        \x20 fi\n\
        fi\n\
        ls\n\
        echo VBOOT-GRUB-HASH-FAILED\noutb 0xf4 0x11";
    let iso = guests::grub_rescue_iso(&dir.path, "rescue-hd", script, &[("/cd-payload.bin", &cd_payload)]);
    let host = vboot_host(&dir, 96, &boot_cfg("harddisk=/hd.img cdrom=/rescue-hd.iso boot=cdrom"), &[
        HostImage { path: "/hd.img", file: &hd, pieces: 2 },
        HostImage { path: "/rescue-hd.iso", file: &iso, pieces: 2 },
    ]);
    let out = boot_expecting(&host.disk, &["VBOOT-GRUB-HASHED-BOTH"]);
    assert!(out.contains(&want_hd), "hash of the file on the hard disk ({}) missing:\n{}", want_hd, out);
    assert!(out.contains(&want_cd), "hash of the file on the CD ({}) missing:\n{}", want_cd, out);
}

/// An ISO whose boot image is a 1.44M floppy (El Torito floppy emulation): SYSLINUX on that
/// FAT12 floppy boots from drive 00h, reading it by CHS through the hook.
#[test]
fn floppy_emulation_cd_boots_its_floppy_image_at_00h() {
    let dir = TempDir::new("cd-floppy-emu");
    let floppy = guests::syslinux_floppy(&dir.path, "emu-floppy", "GUEST-FROM-EMULATED-FLOPPY");
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&floppy, tree.join("floppy.img")).unwrap();
    std::fs::write(tree.join("readme.txt"), "a CD with a floppy boot image\n").unwrap();
    let iso = guests::make_iso(&tree, &dir.join("floppy-emu.iso"), &["-b", "floppy.img", "-c", "boot.cat"]);
    let host = vboot_host(&dir, 64, &boot_cfg("cdrom=/floppy-emu.iso"), &[HostImage { path: "/floppy-emu.iso", file: &iso, pieces: 3 }]);
    boot_expecting(&host.disk, &["1440 KiB floppy emulation", "SYSLINUX 6.04", "GUEST-FROM-EMULATED-FLOPPY"]);
}

/// An ISO whose boot image is a partitioned hard disk (El Torito hard-disk emulation): its boot
/// sector runs from drive 80h, and the entry's own hard-disk image becomes 81h.
#[test]
fn hard_disk_emulation_cd_boots_its_disk_image_at_80h() {
    let dir = TempDir::new("cd-hd-emu");
    let hd = guests::hello_guest(&dir.path, "emu-hd", "GUEST-FROM-EMULATED-HARD-DISK", 8 * 2048);
    disk::sfdisk(&hd, "label: dos\nstart=2048, type=6, bootable\n");
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&hd, tree.join("hd.img")).unwrap();
    let iso = guests::make_iso(&tree, &dir.join("hd-emu.iso"), &["-hard-disk-boot", "-b", "hd.img", "-c", "boot.cat"]);
    // A hard-disk image beside it moves to 81h.
    let other = guests::hello_guest(&dir.path, "other", "WRONG-DEVICE-BOOTED", 2048);
    let host = vboot_host(&dir, 64, &boot_cfg("harddisk=/other.img cdrom=/hd-emu.iso boot=cdrom"), &[
        HostImage { path: "/hd-emu.iso", file: &iso, pieces: 1 },
        HostImage { path: "/other.img", file: &other, pieces: 1 },
    ]);
    let out = boot_expecting(&host.disk, &["hard-disk emulation (drive 80h)", "harddisk=/other.img is drive 81h", "GUEST-FROM-EMULATED-HARD-DISK"]);
    assert!(!out.contains("WRONG-DEVICE-BOOTED"), "{}", out);
}

#[test]
fn syslinux_on_a_fat12_floppy_boots_from_drive_a() {
    let dir = TempDir::new("floppy-syslinux");
    let floppy = guests::syslinux_floppy(&dir.path, "fd", "GUEST-FROM-FLOPPY");
    let host = vboot_host(&dir, 64, &boot_cfg("floppy=/fd.img"), &[HostImage { path: "/fd.img", file: &floppy, pieces: 3 }]);
    boot_expecting(&host.disk, &["drive 00h, 80 cylinders, 2 heads, 18 sectors per track", "SYSLINUX 6.04", "GUEST-FROM-FLOPPY"]);
}

/// The floppy check guest with a hard disk and a CD attached and `boot=floppy`: every floppy
/// answer it checks is right, and its write lands in the image file at the right sector.
#[test]
fn floppy_check_guest_passes_with_every_device_attached_and_its_write_lands_in_the_file() {
    let dir = TempDir::new("floppy-check");
    let floppy = guests::floppy_check_guest(&dir.path);
    let hello = guests::hello_guest(&dir.path, "hd-hello", "WRONG-DEVICE-BOOTED", 2048);
    let iso = guests::isolinux_iso(&dir.path, "side", "WRONG-DEVICE-BOOTED", false);
    let host = vboot_host(&dir, 64, &boot_cfg("harddisk=/hd.img cdrom=/side.iso floppy=/check.img boot=floppy"), &[
        HostImage { path: "/hd.img", file: &hello, pieces: 1 },
        HostImage { path: "/side.iso", file: &iso, pieces: 1 },
        HostImage { path: "/check.img", file: &floppy, pieces: 4 },
    ]);
    let out = boot_expecting(&host.disk, &[guests::FLOPPY_PASS]);
    assert!(!out.contains("WRONG-DEVICE-BOOTED"), "{}", out);
    let part = host.current_partition(&dir.join("part-after.img"));
    let back = dir.join("check-after.img");
    disk::fat_get(&part, "/check.img", &back);
    let before = std::fs::read(&floppy).unwrap();
    let after = std::fs::read(&back).unwrap();
    assert_eq!(after.len(), before.len());
    let at = guests::FLOPPY_WRITE_LBA as usize * 512;
    assert_eq!(&after[at..at + 16], guests::FLOPPY_WRITE_MARKER, "the write is not at LBA {}", guests::FLOPPY_WRITE_LBA);
    assert!(before[..at] == after[..at], "sectors before the written one changed");
}

/// Wrong floppy sizes, files that are no ISO and ISOs that cannot boot are refused with their
/// reason, and the menu comes back.
#[test]
fn bad_floppies_and_isos_are_refused_with_a_reason() {
    let dir = TempDir::new("cd-floppy-refuse");
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1_000_000]).unwrap();
    let noise = dir.join("noise.iso");
    std::fs::write(&noise, pseudo_random_bytes(1 << 20, 7)).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("data.txt"), "no boot image here\n").unwrap();
    let plain = guests::make_iso(&tree, &dir.join("plain.iso"), &[]);
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO-WITH-PLAIN-CD", 2048);
    let cfg = "set timeout=-1\n\
        menuentry 'odd floppy' {\n vboot floppy=/odd.img\n}\n\
        menuentry 'noise' {\n vboot cdrom=/noise.iso\n}\n\
        menuentry 'plain' {\n vboot cdrom=/plain.iso\n}\n\
        menuentry 'plain beside a disk' {\n vboot harddisk=/hello.img cdrom=/plain.iso\n}\n";
    let host = vboot_host(&dir, 64, cfg, &[
        HostImage { path: "/odd.img", file: &odd, pieces: 1 },
        HostImage { path: "/noise.iso", file: &noise, pieces: 1 },
        HostImage { path: "/plain.iso", file: &plain, pieces: 1 },
        HostImage { path: "/hello.img", file: &hello, pieces: 1 },
    ]);
    let mut q = Qemu::boot_disk(&host.disk);
    q.expect("4. plain beside a disk", T);
    q.expect_refusals(
        "4. plain beside a disk",
        &[
            (&b"1"[..], "floppy=/odd.img is 1000000 bytes, which is no floppy size. A floppy image must be exactly one of: 160K (163840)"),
            (&b"2"[..], "cdrom=/noise.iso: it is not an ISO 9660 CD image"),
            (&b"3"[..], "cdrom=/plain.iso: the CD image is not bootable: it has no El Torito boot record"),
        ],
        T,
    );
    // A CD that cannot boot is fine as a second device: the hard disk boots.
    q.send(b"4");
    q.expect("GUEST-HELLO-WITH-PLAIN-CD", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
}

/// The core library's El Torito reader against xorriso's own report of the catalog, for ISOs
/// xorriso made in every emulation mode (host only, no QEMU).
#[test]
fn eltorito_reader_agrees_with_xorriso_report() {
    use std::process::Command;
    use vboot::eltorito::{self, Emulation, CD_BLOCK_BYTES};
    let dir = TempDir::new("eltorito-oracle");
    let floppy = dir.join("fd.img");
    std::fs::write(&floppy, vec![0xF6u8; 1_474_560]).unwrap();
    let hd = guests::hello_guest(&dir.path, "hd", "X", 4096);
    disk::sfdisk(&hd, "label: dos\nstart=64, type=6, bootable\n");
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(&floppy, tree.join("fd.img")).unwrap();
    std::fs::copy(&hd, tree.join("hd.img")).unwrap();
    std::fs::write(tree.join("loader.bin"), vec![0x90u8; 6000]).unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("noemul", vec!["-b", "loader.bin", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4"]),
        // xorriso's default load size: the whole file, in 512-byte sectors rounded up to 4.
        ("noemul-whole", vec!["-b", "loader.bin", "-c", "boot.cat", "-no-emul-boot"]),
        ("floppy", vec!["-b", "fd.img", "-c", "boot.cat"]),
        ("harddisk", vec!["-hard-disk-boot", "-b", "hd.img", "-c", "boot.cat"]),
    ];
    for (name, args) in cases {
        let iso = guests::make_iso(&tree, &dir.join(&format!("{}.iso", name)), &args);
        let report = String::from_utf8_lossy(
            &Command::new("xorriso").arg("-indev").arg(&iso).args(["-report_el_torito", "plain"]).output().unwrap().stdout,
        )
        .into_owned();
        // "El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4          34"
        let line = report.lines().find(|l| l.starts_with("El Torito boot img")).unwrap_or_else(|| panic!("{}", report));
        let f: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
        let (emul, seg, size, lba) = (f[3], u16::from_str_radix(f[4].trim_start_matches("0x"), 16).unwrap(), f[6].parse::<u16>().unwrap(), f[7].parse::<u32>().unwrap());
        let bytes = std::fs::read(&iso).unwrap();
        let mut reader = |lba: u64, buf: &mut [u8; CD_BLOCK_BYTES]| -> Result<(), String> {
            let at = lba as usize * CD_BLOCK_BYTES;
            buf.copy_from_slice(bytes.get(at..at + CD_BLOCK_BYTES).ok_or("short")?);
            Ok(())
        };
        let image = eltorito::boot_image(&mut reader, bytes.len() as u64).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let want_emulation = match emul {
            "none" => Emulation::NoEmulation,
            "fd1.4" => Emulation::Floppy { bytes: 1_474_560 },
            "hd" => Emulation::HardDisk,
            other => panic!("unexpected emulation {} in {}", other, report),
        };
        assert_eq!(image.emulation, want_emulation, "{}: {}", name, report);
        assert_eq!((image.catalog_load_segment, image.sector_count, image.load_rba), (seg, size, lba), "{}: {}", name, report);
        // The boot image's first bytes are where the reader says.
        let first = image.first_file_sector() as usize * 512;
        let source = match emul {
            "none" => vec![0x90u8; 512],
            "fd1.4" => vec![0xF6u8; 512],
            _ => std::fs::read(&hd).unwrap()[..512].to_vec(),
        };
        assert_eq!(&bytes[first..first + 512], &source[..], "{}: boot image not at block {}", name, image.load_rba);
    }
    // Without -b there is no boot record: not bootable, but still an ISO.
    let plain = guests::make_iso(&tree, &dir.join("plain.iso"), &[]);
    let bytes = std::fs::read(&plain).unwrap();
    let mut reader = |lba: u64, buf: &mut [u8; CD_BLOCK_BYTES]| -> Result<(), String> {
        let at = lba as usize * CD_BLOCK_BYTES;
        buf.copy_from_slice(bytes.get(at..at + CD_BLOCK_BYTES).ok_or("short")?);
        Ok(())
    };
    assert_eq!(eltorito::check_iso(&mut reader, bytes.len() as u64), Ok(()));
    assert_eq!(eltorito::boot_image(&mut reader, bytes.len() as u64), Err(eltorito::ElToritoError::NoBootRecord));
}

/// `cdrom=`, `floppy=` and `floppy_b=` together with `boot=cdrom`: GRUB from the CD sees both
/// floppies, (fd0) = drive 00h and (fd1) = drive 01h, and hashes a file on each FAT12 image.
#[test]
fn cd_booted_with_two_floppies_reads_both() {
    let dir = TempDir::new("cd-with-floppies");
    let mut wants = Vec::new();
    let mut floppies = Vec::new();
    for (name, seed, kib) in [("a", 0xAAAAu64, 1440u64), ("b", 0xBBBB, 720)] {
        let payload = pseudo_random_bytes(300 << 10, seed);
        let local = dir.join(&format!("{}.bin", name));
        std::fs::write(&local, &payload).unwrap();
        wants.push(disk::sha256(&local));
        let img = dir.join(&format!("{}.img", name));
        disk::fat_volume(&img, kib * 2, 12, &[disk::FileSpec::new(&format!("/{}.bin", name), payload)]);
        floppies.push(img);
    }
    let script = "echo VBOOT-GRUB-START\n\
        if hashsum --hash sha256 (fd0)/a.bin; then\n\
        \x20 if hashsum --hash sha256 (fd1)/b.bin; then\n\
        \x20   echo VBOOT-GRUB-HASHED-FLOPPIES\n\
        \x20   outb 0xf4 0x10\n\
        \x20 fi\n\
        fi\n\
        ls\n\
        echo VBOOT-GRUB-HASH-FAILED\noutb 0xf4 0x11";
    let iso = guests::grub_rescue_iso(&dir.path, "rescue-fd", script, &[]);
    let host = vboot_host(&dir, 96, &boot_cfg("cdrom=/rescue-fd.iso floppy=/a.img floppy_b=/b.img boot=cdrom"), &[
        HostImage { path: "/rescue-fd.iso", file: &iso, pieces: 1 },
        HostImage { path: "/a.img", file: &floppies[0], pieces: 2 },
        HostImage { path: "/b.img", file: &floppies[1], pieces: 2 },
    ]);
    let out = boot_expecting(&host.disk, &["drive 00h, 80 cylinders, 2 heads, 18 sectors", "drive 01h, 80 cylinders, 2 heads, 9 sectors", "VBOOT-GRUB-HASHED-FLOPPIES"]);
    for want in &wants {
        assert!(out.contains(want.as_str()), "hash {} missing:\n{}", want, out);
    }
}

/// `immutable` on a floppy: the check guest reads its write back (from the RAM overlay) and
/// the image file stays byte-identical.
#[test]
fn immutable_floppy_keeps_the_write_in_ram() {
    let dir = TempDir::new("floppy-immutable");
    let floppy = guests::floppy_check_guest(&dir.path);
    let host = vboot_host(&dir, 64, &boot_cfg("floppy=/check.img immutable"), &[HostImage { path: "/check.img", file: &floppy, pieces: 2 }]);
    // The overlay's heap needs RAM above stage2's.
    let mut cfg = Config::disk(&host.disk);
    cfg.memory_mib = 256;
    boot_expecting_with(&cfg, &[guests::FLOPPY_PASS]);
    let part = host.current_partition(&dir.join("part-after.img"));
    let back = dir.join("check-after.img");
    disk::fat_get(&part, "/check.img", &back);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&floppy).unwrap(), "the floppy image changed under immutable");
}
