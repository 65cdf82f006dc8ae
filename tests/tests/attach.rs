//! The hand-off table and `vboot-attach` (issue 9): Linux, booted by SYSLINUX from inside a
//! dynamic VHD that vboot serves, finds vboot's table through /dev/mem, serves the same VHD on
//! /dev/nbd0 with the core library, mounts the guest's partition, reads a file the host put there
//! and writes a new one. The host then reads the new file out of the VHD with qemu-img and mtools,
//! and vdisk's check, libvhdi and fsck.fat find the VHD and the guest's filesystem clean. The same guest booted natively (no vboot) is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ATTACH_BIG_BYTES, ATTACH_BIG_FILE, ATTACH_FILE, ATTACH_FILE_TEXT, ATTACH_NEW_FILE, ATTACH_NEW_TEXT, ATTACH_OK};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{disk, qemu_img, sh, vboot_host, vdisk_bin, HostImage, TempDir};

const T: Duration = Duration::from_secs(300);

fn run_guest(disk: &Path) -> String {
    let mut cfg = Config::disk(disk);
    cfg.x86_64 = true;
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    let status = q.wait_exit(T);
    let out = q.output();
    assert_eq!(status, Some(EXIT_PASS), "the guest did not end through isa-debug-exit:\n{}", out);
    out
}

/// A FAT file inside a raw disk image whose first partition starts at 1 MiB, by mtools.
fn file_in_raw(raw: &Path, path: &str) -> String {
    sh(Command::new("mtype").arg("-i").arg(format!("{}@@1M", raw.display())).arg(format!("::{}", path)).env("MTOOLS_SKIP_CHECK", "1"))
}

/// The write slack `vdisk info` reports for a sparse image.
fn slack_bytes(image: &Path) -> u64 {
    let out = sh(Command::new(vdisk_bin()).arg("info").arg("--json").arg(image));
    let at = out.find("\"slack_bytes\": \"").expect("slack_bytes in vdisk info") + "\"slack_bytes\": \"".len();
    out[at..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn linux_attaches_a_dynamic_vhd_and_its_writes_land_in_the_file() {
    let dir = TempDir::new("attach-vhd");
    let raw = guests::build_attach_guest(&dir.path);
    let vhd = dir.join("guest.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw.to_str().unwrap(), vhd.to_str().unwrap()]);
    // Slack for the blocks Linux's writes allocate (DESIGN.md 4.3: nothing grows at boot).
    sh(Command::new(vdisk_bin()).arg("reserve").arg(&vhd).arg("8M"));
    let slack_before = slack_bytes(&vhd);
    let cfg = "set timeout=0\nmenuentry 'linux in a VHD' {\n    vboot harddisk=/guest.vhd\n}\n";
    let host = vboot_host(&dir, 160, cfg, &[HostImage { path: "/guest.vhd", file: &vhd, pieces: 3 }]);

    let out = run_guest(&host.disk);
    assert!(!out.contains("ATTACH-FAILED"), "{}", out);
    assert!(out.contains(ATTACH_OK), "{}", out);
    // --info showed the table stage2 published.
    assert!(out.contains("vboot hand-off table at 0x"), "{}", out);
    assert!(out.contains("layer VHD /guest.vhd"), "{}", out);
    assert!(out.contains("writes normal"), "{}", out);
    assert!(out.contains("READ-OK"), "{}", out);
    assert!(out.contains("ATTACHED /dev/nbd0"), "{}", out);
    assert!(out.contains("/dev/nbd0 detached"), "{}", out);
    assert!(out.contains("the hand-off table has no drive 0x81"), "{}", out);

    // The VHD as the host disk holds it now.
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let vhd_after = dir.join("guest-after.vhd");
    disk::fat_get(&part_now, "/guest.vhd", &vhd_after);
    // qemu-img has no check for VHD: vdisk's structural check, and libvhdi must open it.
    let check = Command::new(vdisk_bin()).arg("check").arg(&vhd_after).output().unwrap();
    assert!(check.status.success(), "vdisk check: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    let info = Command::new("vhdiinfo").arg(&vhd_after).output().expect("vhdiinfo (libvhdi-utils)");
    assert!(info.status.success(), "vhdiinfo: {}{}", String::from_utf8_lossy(&info.stdout), String::from_utf8_lossy(&info.stderr));
    let raw_after = dir.join("guest-after.raw");
    qemu_img(&["convert", "-O", "raw", vhd_after.to_str().unwrap(), raw_after.to_str().unwrap()]);
    assert_eq!(file_in_raw(&raw_after, ATTACH_NEW_FILE), ATTACH_NEW_TEXT);
    assert_eq!(file_in_raw(&raw_after, ATTACH_FILE), ATTACH_FILE_TEXT);
    let big = file_in_raw(&raw_after, ATTACH_BIG_FILE);
    assert_eq!(big.len(), ATTACH_BIG_BYTES);
    assert!(big.as_bytes().chunks(6).all(|c| c == &b"vboot\n"[..c.len()]), "{} differs from what the guest wrote", ATTACH_BIG_FILE);
    // The big file needed new blocks: they came out of the slack, as at boot.
    let slack_after = slack_bytes(&vhd_after);
    assert!(slack_after < slack_before, "no block was allocated from the slack ({} -> {} bytes)", slack_before, slack_after);
    disk::partition_of(&raw_after, 48 * 2048 - 2048, &dir.join("guest-part.img"));
    let fsck = Command::new("fsck.fat").arg("-n").arg(dir.join("guest-part.img")).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the guest's partition: {}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn without_vboot_there_is_no_table_to_attach() {
    let dir = TempDir::new("attach-native");
    let raw = guests::build_attach_guest(&dir.path);
    let out = run_guest(&raw);
    assert!(out.contains("ATTACH-FAILED: vboot-attach --info"), "{}", out);
    assert!(out.contains("no vboot hand-off table") && out.contains("this boot did not go through vboot"), "{}", out);
}
