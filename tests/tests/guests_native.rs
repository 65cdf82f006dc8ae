//! Each guest booted with its image attached natively (SeaBIOS serves INT 13h), so that when
//! vboot serves the same images later, any difference is vboot's.

use std::time::Duration;
use vboot_tests::guests::{self, ProbeConfig, ProbeWrite};
use vboot_tests::qemu::{Config, Drive, Qemu, EXIT_PASS};
use vboot_tests::TempDir;

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Boot the probe from `drive`, require PROBE PASS and exit status 33, then check the writes.
fn run_probe(dir: &TempDir, cfg: &ProbeConfig, interface: &'static str) -> String {
    let probe = guests::build_probe(&dir.join("probe-build"));
    let disk = dir.join("probe-disk.img");
    guests::make_probe_disk(&disk, &probe, cfg);
    let mut q = Qemu::start(&Config {
        drives: vec![Drive { path: disk.clone(), interface, media_cdrom: false }],
        memory_mib: 64,
        extra: vec![],
        sercon: false,
        x86_64: false,
    });
    let status = q.wait_exit(PROBE_TIMEOUT);
    let out = q.output();
    assert!(out.contains(guests::PROBE_PASS), "the probe did not pass (exit {:?}):\n{}", status, out);
    assert_eq!(status, Some(EXIT_PASS), "the probe printed PASS but QEMU exited with {:?}:\n{}", status, out);
    println!("{}", out);
    if let Err(e) = guests::check_probe_disk(&disk, cfg) {
        panic!("the image file does not hold the probe's writes:\n{}\nprobe output:\n{}", e, out);
    }
    out
}

fn probe_config(total_sectors: u64) -> ProbeConfig {
    let mut cfg = ProbeConfig::new(total_sectors);
    let total = total_sectors as u32;
    cfg.boundaries_lba = vec![1000, total / 3, total / 3 + 1, total - 100];
    cfg.writes = vec![
        ProbeWrite { lba: 100, sectors: 1 },
        ProbeWrite { lba: 200, sectors: 3 },
        ProbeWrite { lba: total / 2 + 7, sectors: 16 },
        ProbeWrite { lba: total / 3 - 2, sectors: 4 },
        ProbeWrite { lba: total - 1, sectors: 1 },
    ];
    cfg
}

#[test]
fn probe_passes_on_a_native_virtio_disk() {
    let dir = TempDir::new("guest-probe-virtio");
    // 200 MiB: over 255 cylinders at 16 heads, so CHS reads use CL bits 7:6.
    let out = run_probe(&dir, &probe_config(200 * 2048), "virtio");
    assert!(out.contains("ok writes with read-back"), "{}", out);
}

#[test]
fn probe_passes_on_a_native_ide_disk() {
    let dir = TempDir::new("guest-probe-ide");
    run_probe(&dir, &probe_config(64 * 2048), "ide");
}

#[test]
fn probe_passes_on_a_disk_that_is_not_a_whole_number_of_cylinders() {
    let dir = TempDir::new("guest-probe-odd");
    // 150 cylinders of 16 heads x 63 sectors, and 37 sectors more that only LBA reaches.
    let total = 16 * 63 * 150 + 37;
    let out = run_probe(&dir, &probe_config(total), "virtio");
    assert!(out.contains(&format!("48h: sectors {:08X}", total)), "{}", out);
}

/// The probe must notice a read that returns the wrong sector, as a mis-mapped fragment would.
#[test]
fn probe_fails_when_a_sector_next_to_a_boundary_holds_the_wrong_data() {
    let dir = TempDir::new("guest-probe-wrong");
    let cfg = probe_config(32 * 2048);
    let probe = guests::build_probe(&dir.join("probe-build"));
    let disk = dir.join("probe-disk.img");
    guests::make_probe_disk(&disk, &probe, &cfg);
    let boundary = cfg.boundaries_lba[1] as u64;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(boundary * 512)).unwrap();
        f.write_all(&guests::pattern_sector(boundary + 1)).unwrap();
    }
    let mut q = Qemu::start(&Config::disk(&disk));
    let status = q.wait_exit(PROBE_TIMEOUT);
    let out = q.output();
    assert!(
        out.contains("PROBE FAIL: reads across the host's boundaries: a sector read does not start with its own LBA"),
        "{}",
        out
    );
    assert_eq!(status, Some(vboot_tests::qemu::EXIT_FAIL), "{}", out);
}

/// The host-side check finds writes that did not land, and stray writes.
#[test]
fn check_probe_disk_reports_missing_and_stray_writes() {
    let dir = TempDir::new("guest-probe-check");
    let disk = dir.join("d.img");
    let mut cfg = ProbeConfig::new(256);
    cfg.writes = vec![ProbeWrite { lba: 100, sectors: 2 }];
    guests::make_pattern_disk(&disk, 256);
    let err = guests::check_probe_disk(&disk, &cfg).unwrap_err();
    assert!(err.contains("LBA 100 should hold the written sector"), "{}", err);
    let mut bytes = std::fs::read(&disk).unwrap();
    for lba in [100u64, 101, 150] {
        bytes[lba as usize * 512..][..512].copy_from_slice(&guests::written_sector(lba));
    }
    std::fs::write(&disk, &bytes).unwrap();
    let err = guests::check_probe_disk(&disk, &cfg).unwrap_err();
    assert_eq!(err, "LBA 150 should hold the pattern sector");
    bytes[150 * 512..][..512].copy_from_slice(&guests::pattern_sector(150));
    std::fs::write(&disk, &bytes).unwrap();
    guests::check_probe_disk(&disk, &cfg).unwrap();
}

#[test]
fn grub_hashes_a_multi_megabyte_file_like_the_host() {
    let dir = TempDir::new("guest-grub");
    let (image, sha) = guests::build_grub_guest(&dir.path, 6 * 1024 * 1024 + 1234);
    let mut q = Qemu::start(&Config::disk(&image));
    let status = q.wait_exit(Duration::from_secs(120));
    let out = q.output();
    println!("{}", out);
    assert!(out.contains(guests::GRUB_START), "GRUB did not run its grub.cfg:\n{}", out);
    assert!(out.contains(&sha), "GRUB's SHA-256 of the payload is not the host's {}:\n{}", sha, out);
    assert!(out.contains(guests::GRUB_HASHED), "{}", out);
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
}

/// Boot `image` on virtio with qemu-system-x86_64 (the Debian kernel is 64-bit); returns (exit
/// status, serial output).
fn boot_x86_64(image: &std::path::Path, timeout: Duration) -> (Option<i32>, String) {
    let mut cfg = vboot_tests::qemu::Config::disk(image);
    cfg.x86_64 = true;
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    let status = q.wait_exit(timeout);
    (status, q.output())
}

#[test]
fn syslinux_boots_a_debian_kernel_whose_initramfs_prints_its_line() {
    let dir = TempDir::new("guest-linux");
    let image = guests::build_syslinux_linux_guest(&dir.path);
    let (status, out) = boot_x86_64(&image, Duration::from_secs(120));
    println!("{}", out);
    assert!(out.contains(guests::LINUX_OK), "Linux did not print {} (exit {:?}):\n{}", guests::LINUX_OK, status, out);
    assert_eq!(status, Some(EXIT_PASS), "/init should end QEMU through isa-debug-exit:\n{}", out);
}

/// The strict flags (for emulators that answer like memdisk and iPXE) reject SeaBIOS's own
/// answers, so each of them really checks something.
#[test]
fn probe_strict_flags_reject_seabios_answers() {
    let cases = [
        (guests::FLAG_EXACT_15H, "PROBE FAIL: AH=15h disk type: CX:DX is not the disk's sector count"),
        (guests::FLAG_CYLINDERS_C1, "PROBE FAIL: AH=08h geometry: the CHS geometry leaves too many sectors out"),
        (guests::FLAG_OOR_COUNT_ZERO, "PROBE FAIL: AH=42h past the end of the disk fails: the DAP block count was not rewritten to 0"),
    ];
    for (flag, failure) in cases {
        let dir = TempDir::new("guest-probe-strict");
        let mut cfg = probe_config(8 * 2048);
        cfg.flags = flag;
        let probe = guests::build_probe(&dir.join("probe-build"));
        let disk = dir.join("probe-disk.img");
        guests::make_probe_disk(&disk, &probe, &cfg);
        let mut q = Qemu::start(&Config::disk(&disk));
        let status = q.wait_exit(PROBE_TIMEOUT);
        let out = q.output();
        assert!(out.contains(failure), "flag {}: want {:?}:\n{}", flag, failure, out);
        assert_eq!(status, Some(vboot_tests::qemu::EXIT_FAIL), "{}", out);
    }
}
