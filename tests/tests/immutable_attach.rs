//! `immutable`'s one throwaway layer, from the BIOS to Linux (issue 17): a write a boot loader
//! makes through INT 13h before the kernel starts is seen by Linux under vboot-attach, because
//! both write into the same throwaway child; at the next start it is gone. The guest's MBR
//! (tests/guest-probe/mbrwrite.s) reports whether its marker sector already holds the marker,
//! writes it through INT 13h and starts SYSLINUX; Linux attaches the disk and prints that sector
//! as /dev/nbd0 holds it. qemu-img reads the marker out of the child after the first boot; the
//! image itself never changes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, MBR_MARK, MBR_MARK_LBA};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{disk, qemu_img, sh, vboot_host, TempDir};

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

#[test]
fn a_write_through_int13h_before_linux_is_seen_by_linux_and_gone_at_the_next_start() {
    let dir = TempDir::new("immutable-attach");
    let raw = guests::build_mbr_write_attach_guest(&dir.join("guest"));
    let image = dir.join("guest.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw.to_str().unwrap(), image.to_str().unwrap()]);
    let sha = disk::sha256(&image);
    let cfg = "set timeout=0\nmenuentry 'linux, immutable' {\n    vboot harddisk=/vm/guest.vmdk immutable reserve=16M\n}\n";
    let host = vboot_host(&dir, 160, cfg, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&host.part, "/vm/guest.vmdk", &std::fs::read(&image).unwrap(), 3);
    disk::write_at(&host.disk, 2048, &host.part);
    let saw = format!("LINUX-SAW {}", MBR_MARK);

    // First start: the child is new; the MBR's write is there for Linux.
    let out = run_guest(&host.disk);
    assert!(out.contains("immutable: writes go into the throwaway child"), "{}", out);
    assert!(out.contains("MBR-MARK-NONE") && out.contains("MBR-MARK-WRITTEN"), "{}", out);
    assert!(out.contains(&saw), "Linux did not see the write the MBR made through INT 13h:\n{}", out);
    // The write is in the child on the host, as qemu-img reads the child over its parent.
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let look = dir.join("look");
    std::fs::create_dir_all(&look).unwrap();
    disk::fat_get(&part_now, "/vm/guest.vmdk", &look.join("guest.vmdk"));
    disk::fat_get(&part_now, "/vm/guest.immutable.vmdk", &look.join("guest.immutable.vmdk"));
    assert_eq!(disk::sha256(&look.join("guest.vmdk")), sha, "the immutable image changed");
    qemu_img(&["check", look.join("guest.immutable.vmdk").to_str().unwrap()]);
    let seen = dir.join("seen.raw");
    qemu_img(&["convert", "-O", "raw", look.join("guest.immutable.vmdk").to_str().unwrap(), seen.to_str().unwrap()]);
    let bytes = std::fs::read(&seen).unwrap();
    let at = MBR_MARK_LBA as usize * 512;
    assert_eq!(&bytes[at..at + MBR_MARK.len()], MBR_MARK.as_bytes(), "the child does not hold the MBR's write");

    // Second start: the child was emptied, so the sector is as the image has it again.
    let out = run_guest(&host.disk);
    assert!(out.contains("MBR-MARK-NONE"), "the write of the first start survived it:\n{}", out);
    assert!(!out.contains("MBR-MARK-SEEN"), "{}", out);
    assert!(out.contains(&saw), "{}", out);
    let part_now = host.current_partition(&dir.join("part-after-2.img"));
    disk::fat_get(&part_now, "/vm/guest.vmdk", &look.join("guest.vmdk"));
    assert_eq!(disk::sha256(&look.join("guest.vmdk")), sha, "the immutable image changed");
}
