//! The BIOS's reach (issue 14, docs/bios-reach.md): a file whose sectors lie beyond what the
//! machine's BIOS can address is refused before anything is written, with the limit and the
//! file's last sector, and the menu comes back; the same file boots where the BIOS reaches it.
//!
//! SeaBIOS always offers the INT 13h extensions, so the refusal is driven with the
//! fault-injection firmware (`vboot_fault bios-no-edd`: the reach check sees the disk as a BIOS
//! without extensions would, through the CHS geometry SeaBIOS reports with AH=08h; reading goes
//! on with the extensions). The image lives on a second partition 8.5 GiB into a sparse 9 GiB
//! disk, past the 1024-cylinder CHS limit (about 7.8 GiB).

use std::time::Duration;
use vboot_tests::disk::{blank, fat_volume, sfdisk, write_at, FileSpec};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{fault_stage_dir, guests, sh, vboot_install_from, TempDir};

const T: Duration = Duration::from_secs(60);
/// The second partition starts 8.5 GiB into the disk.
const FAR_LBA: u64 = 17 * 1024 * 1024;
const PART_SECTORS: u64 = 131072;

/// The parts of the sparse disk that hold anything: the MBR gap with both partitions' copies
/// of vboot, and the two partitions.
fn written_parts(disk: &std::path::Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let mut near = vec![0u8; ((2048 + PART_SECTORS) * 512) as usize];
    f.read_exact_at(&mut near, 0).unwrap();
    let mut far = vec![0u8; (PART_SECTORS * 512) as usize];
    f.read_exact_at(&mut far, FAR_LBA * 512).unwrap();
    near.extend(far);
    near
}

#[test]
fn a_file_past_the_chs_limit_is_refused_before_any_write_and_boots_where_the_bios_reaches_it() {
    let dir = TempDir::new("bios-reach");
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let cfg = "set timeout=-1\n\
               menuentry 'No extensions' {\n    vboot_fault bios-no-edd\n    vboot harddisk=(hd0,2)/hello.img\n}\n\
               menuentry 'Extensions' {\n    vboot harddisk=(hd0,2)/hello.img\n}\n";
    let near = dir.join("near.img");
    fat_volume(&near, PART_SECTORS, 32, &[FileSpec::new("/boot/grub/grub.cfg", cfg)]);
    let far = dir.join("far.img");
    fat_volume(&far, PART_SECTORS, 32, &[]);
    sh(std::process::Command::new("mcopy").arg("-i").arg(&far).arg(&hello).arg("::/hello.img").env("MTOOLS_SKIP_CHECK", "1"));
    let disk = dir.join("disk.img");
    blank(&disk, 9 * 1024);
    sfdisk(&disk, &format!("label: dos\nstart=2048, size={}, type=c, bootable\nstart={}, size={}, type=c\n", PART_SECTORS, FAR_LBA, PART_SECTORS));
    write_at(&disk, 2048, &near);
    write_at(&disk, FAR_LBA, &far);
    let (ok, out) = vboot_install_from(&fault_stage_dir(), &["install", disk.to_str().unwrap()]);
    assert!(ok, "vboot-install: {}", out);
    let before = written_parts(&disk);

    let mut q = Qemu::boot_disk(&disk);
    q.expect("2. Extensions", T);
    let mark = q.mark();
    q.send(b"1");
    let out = q.expect_from(mark, "Press any key", T);
    assert!(
        out.contains("/hello.img cannot be booted on this machine: it ends at disk sector "),
        "the refusal names the file and its last sector:\n{}",
        out
    );
    // SeaBIOS describes a big disk as 1023 cylinders of 255 heads of 63 sectors.
    assert!(out.contains("this BIOS has no INT 13h extensions, so it reaches only 1023 cylinders x 255 heads x 63 sectors"), "and the limit:\n{}", out);
    assert!(!out.contains("Starting the guest"), "{}", out);
    // Back to the menu; the same file, reached through the extensions, boots.
    let mark = q.mark();
    q.send(b" ");
    q.expect_from(mark, "2. Extensions", T);
    let mark = q.mark();
    q.send(b"2");
    q.expect_from(mark, "GUEST-HELLO", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    drop(q);
    // The refused entry wrote nothing: the only change on the disk is what the boot that went
    // through wrote (reserve= slack is not grown for a raw image).
    assert!(before == written_parts(&disk), "the disk changed");
}
