//! vboot-install on disks made by sfdisk, sgdisk and fdisk: what it writes, what it keeps, and
//! that every refusal writes nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::{require_tool, sh, vboot_install, workspace_root, TempDir};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// An MBR disk whose sector 0 carries "someone else's" boot code, like a disk that had another
/// boot loader, so that restoring it is visible.
fn disk_with_foreign_boot_code(dir: &TempDir) -> std::path::PathBuf {
    let disk = disk::mbr_fat32_disk(dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    let mut bytes = read(&disk);
    for (i, b) in bytes[..440].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    bytes[440..444].copy_from_slice(&0xCAFEBABEu32.to_le_bytes());
    std::fs::write(&disk, bytes).unwrap();
    disk
}

#[test]
fn install_keeps_table_and_uninstall_restores_the_exact_disk() {
    let dir = TempDir::new("inst-roundtrip");
    let disk = disk_with_foreign_boot_code(&dir);
    let before = read(&disk);
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
    let after = read(&disk);
    assert_eq!(&after[0x1B8..0x200], &before[0x1B8..0x200], "signature/partition table changed");
    assert_ne!(&after[..0x1A8], &before[..0x1A8], "stage1 not written");
    assert_eq!(&after[2 * 512..3 * 512], &before[..512], "original sector 0 not saved at LBA 2");
    assert_eq!(&after[3 * 512 + 4..3 * 512 + 12], b"VBOOTST2");
    assert_eq!(&after[2048 * 512..], &before[2048 * 512..], "install touched the partition");

    let (ok, out) = vboot_install(&["status", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
    assert!(out.contains("vboot is installed") && out.contains("partition 1"), "{}", out);

    // Reinstalling must keep the *original* saved sector 0, not save vboot's own stage1.
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
    assert!(out.contains("keeping the sector 0 it saved"), "{}", out);

    let (ok, out) = vboot_install(&["uninstall", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
    assert!(read(&disk) == before, "uninstall did not give back the exact original disk");
    let (ok, out) = vboot_install(&["status", disk.to_str().unwrap()]);
    assert!(!ok && out.contains("not installed"), "{}", out);
}

#[test]
fn uninstall_keeps_a_partition_table_changed_after_install() {
    let dir = TempDir::new("inst-newtable");
    let disk = disk_with_foreign_boot_code(&dir);
    let before = read(&disk);
    assert!(vboot_install(&["install", disk.to_str().unwrap()]).0);
    // The user adds a partition after installing.
    disk::sfdisk(&disk, "label: dos\nstart=2048, size=40000, type=c, bootable\nstart=43008, type=83\n");
    let table = read(&disk)[0x1BE..0x200].to_vec();
    assert!(vboot_install(&["uninstall", disk.to_str().unwrap()]).0);
    let after = read(&disk);
    assert_eq!(&after[..0x1B8], &before[..0x1B8], "boot code not restored");
    assert_eq!(&after[0x1BE..0x200], &table[..], "the new partition table was lost");
}

fn assert_refused(dir: &TempDir, disk: &Path, args: &[&str], expect: &str) {
    let before = read(disk);
    let mut all = vec!["install", disk.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, out) = vboot_install(&all);
    assert!(!ok, "install should have been refused; output:\n{}", out);
    assert!(out.contains(expect), "message should mention {:?}:\n{}", expect, out);
    assert!(read(disk) == before, "a refused install changed the disk");
    let _ = dir;
}

#[test]
fn refuses_a_gap_too_small() {
    let dir = TempDir::new("inst-smallgap");
    let disk = dir.join("disk.img");
    disk::blank(&disk, 32);
    disk::sfdisk(&disk, "label: dos\nstart=40, type=c, bootable\n");
    assert_refused(&dir, &disk, &[], "gap after the MBR is too small");
}

#[test]
fn refuses_foreign_data_in_the_gap_unless_forced() {
    let dir = TempDir::new("inst-foreign");
    let disk = disk::mbr_fat32_disk(&dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    let mut bytes = read(&disk);
    bytes[20 * 512..20 * 512 + 16].copy_from_slice(b"OTHER LOADER....");
    std::fs::write(&disk, &bytes).unwrap();
    assert_refused(&dir, &disk, &[], "not vboot");
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap(), "--force"]);
    assert!(ok, "{}", out);
    assert!(out.contains("--force"), "{}", out);
}

#[test]
fn refuses_gpt_without_bios_boot_partition() {
    let dir = TempDir::new("inst-gpt-nobb");
    let disk = dir.join("disk.img");
    disk::blank(&disk, 32);
    disk::sgdisk(&disk, &["-n", "1:2048:0", "-t", "1:0700"]);
    assert_refused(&dir, &disk, &[], "no BIOS boot partition");
}

#[test]
fn refuses_things_that_are_not_disks() {
    let dir = TempDir::new("inst-notdisk");
    // A bare FAT volume (a partition image, or /dev/sdb1 instead of /dev/sdb).
    let vol = dir.join("vol.img");
    disk::fat_volume(&vol, 65536, 32, &[]);
    assert_refused(&dir, &vol, &[], "not a partitioned disk");
    // A blank file with no partition table.
    let blank = dir.join("blank.img");
    disk::blank(&blank, 8);
    assert_refused(&dir, &blank, &[], "no partition table");
    // A small file that is not a whole number of sectors.
    let odd = dir.join("odd.bin");
    std::fs::write(&odd, vec![1u8; 1000]).unwrap();
    assert_refused(&dir, &odd, &[], "not a whole number of 512-byte sectors");
    // A directory and a missing path.
    let (ok, out) = vboot_install(&["install", dir.path.to_str().unwrap()]);
    assert!(!ok && out.contains("is a directory"), "{}", out);
    let (ok, out) = vboot_install(&["install", dir.join("missing.img").to_str().unwrap()]);
    assert!(!ok && out.contains("No such file"), "{}", out);
}

#[test]
fn refuses_bad_options_and_missing_partitions() {
    let dir = TempDir::new("inst-opts");
    let disk = disk::mbr_fat32_disk(&dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    assert_refused(&dir, &disk, &["--partition", "3"], "there is no partition 3");
    assert_refused(&dir, &disk, &["--partition", "0"], "numbered from 1");
    // clap's wording (it was "unknown option '--bogus'" before the tools used clap).
    assert_refused(&dir, &disk, &["--bogus"], "unexpected argument '--bogus'");
}

/// The command line in the usual style: --help, --version, and exit status 2 for a wrong one.
#[test]
fn command_line_help_version_and_usage_errors() {
    let bin = workspace_root().join("target/release/vboot-install");
    let run = |args: &[&str]| Command::new(&bin).args(args).output().unwrap();
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success() && text.contains("Usage: vboot-install <COMMAND>"), "{}", text);
    for sub in ["install", "uninstall", "status"] {
        assert!(text.contains(sub), "--help lists {}: {}", sub, text);
    }
    let install_help = run(&["install", "--help"]);
    let text = String::from_utf8_lossy(&install_help.stdout);
    for opt in ["--partition <N>", "--force", "--force-chs", "--stage-dir <DIR>", "--grub-cfg <FILE>", "--no-original-mbr-entry", "--dry-run"] {
        assert!(text.contains(opt), "install --help lists {}: {}", opt, text);
    }
    let version = run(&["--version"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("vboot-install {}", env!("CARGO_PKG_VERSION")));
    for wrong in [&["install", "x.img", "--bogus"][..], &["frobnicate"], &[], &["status", "--dry-run", "x.img"]] {
        let o = run(wrong);
        assert_eq!(o.status.code(), Some(2), "{:?}: {}", wrong, String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("Usage:"), "{:?}", wrong);
    }
}

/// Installing over another boot loader's sector 0 offers a grub.cfg entry that starts it
/// (`chainloader --original-mbr`): appended once to the grub.cfg given with --grub-cfg, else
/// printed; never with --no-original-mbr-entry; a --grub-cfg that cannot be read or parsed
/// refuses the install before anything is written.
#[test]
fn installing_over_another_boot_loader_offers_an_entry_for_it() {
    use vboot::config::{BootCommand, ChainTarget, Config, MenuItem};
    let dir = TempDir::new("inst-orig-entry");
    let disk = disk_with_foreign_boot_code(&dir);
    let d = disk.to_str().unwrap();
    let (ok, out) = vboot_install(&["install", d, "--dry-run"]);
    assert!(ok && out.contains("add to grub.cfg") && out.contains("    chainloader --original-mbr\n}"), "{}", out);

    let missing = dir.file("missing.cfg");
    assert_refused(&dir, &disk, &["--grub-cfg", &missing], "--grub-cfg");
    let broken = dir.join("broken.cfg");
    std::fs::write(&broken, "menuentry 'x {\n").unwrap();
    assert_refused(&dir, &disk, &["--grub-cfg", broken.to_str().unwrap()], "it does not parse: grub.cfg line 1: unterminated single quote; nothing was written");
    let (ok, out) = vboot_install(&["install", d, "--grub-cfg", &missing, "--no-original-mbr-entry"]);
    assert!(!ok && out.contains("cannot be used with"), "{}", out);

    let cfg = dir.join("grub.cfg");
    let original = "set timeout=5\nmenuentry 'A' {\n    vboot harddisk=/a.img\n}\n";
    std::fs::write(&cfg, original).unwrap();
    let (ok, out) = vboot_install(&["install", d, "--grub-cfg", cfg.to_str().unwrap(), "--dry-run"]);
    assert!(ok && out.contains("Would append to"), "{}", out);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), original, "a dry run changed grub.cfg");
    let (ok, out) = vboot_install(&["install", d, "--grub-cfg", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("Appended to"), "{}", out);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(
        text,
        format!("{}\nmenuentry 'Previous boot loader (original MBR)' {{\n    chainloader --original-mbr\n}}\n", original)
    );
    let c = Config::parse(&text).unwrap();
    match c.entries.last() {
        Some(MenuItem::Entry(e)) => assert_eq!(e.boot_command(), Ok(BootCommand::Chainload(&ChainTarget::OriginalMbr))),
        other => panic!("{:?}", other),
    }
    let (ok, out) = vboot_install(&["status", d]);
    assert!(ok && out.contains("saved sector 0:   at LBA 2, another boot loader's code, which `chainloader --original-mbr` starts"), "{}", out);
    // A reinstall keeps the saved sector 0 and adds no second entry.
    let (ok, out) = vboot_install(&["install", d, "--grub-cfg", cfg.to_str().unwrap()]);
    assert!(ok && out.contains("already has an entry that starts the original MBR"), "{}", out);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    assert!(vboot_install(&["uninstall", d]).0);
    let (ok, out) = vboot_install(&["install", d, "--no-original-mbr-entry"]);
    assert!(ok && !out.contains("original-mbr"), "{}", out);
    // No boot code in sector 0 (a disk partitioned but never made bootable): nothing to offer.
    let blank_dir = TempDir::new("inst-orig-blank");
    let blank = disk::mbr_fat32_disk(&blank_dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    let (ok, out) = vboot_install(&["install", blank.to_str().unwrap(), "--grub-cfg", cfg.to_str().unwrap()]);
    assert!(ok && !out.contains("original-mbr") && !out.contains("Appended"), "{}", out);
    let (ok, out) = vboot_install(&["status", blank.to_str().unwrap()]);
    assert!(ok && out.contains("at LBA 2, no other boot loader's code"), "{}", out);
}

#[test]
fn dry_run_writes_nothing() {
    let dir = TempDir::new("inst-dry");
    let disk = disk::mbr_fat32_disk(&dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    let before = read(&disk);
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap(), "--dry-run"]);
    assert!(ok && out.contains("would write"), "{}", out);
    assert!(read(&disk) == before);
}

#[test]
fn works_on_disks_made_by_fdisk_and_sgdisk() {
    require_tool("fdisk", "fdisk");
    let dir = TempDir::new("inst-fdisk");
    let disk = dir.join("fdisk.img");
    disk::blank(&disk, 32);
    // fdisk's interactive dialogue: new primary partition 1 with defaults, type c, active, write.
    let mut child = Command::new("fdisk")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"o\nn\np\n1\n\n\nt\nc\na\nw\n").unwrap();
    assert!(child.wait().unwrap().success());
    let out = sh(Command::new("sfdisk").arg("--dump").arg(&disk));
    assert!(out.contains("start=        2048") && out.contains("bootable"), "{}", out);
    let (ok, out) = vboot_install(&["install", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);

    let gpt = dir.join("gpt.img");
    disk::blank(&gpt, 32);
    disk::sgdisk(&gpt, &["-n", "1:0:+1M", "-t", "1:ef02", "-n", "2:0:0", "-t", "2:0700"]);
    let (ok, out) = vboot_install(&["install", gpt.to_str().unwrap()]);
    assert!(ok, "{}", out);
    // GPT headers and entries are untouched: sgdisk still verifies the disk.
    let verify = sh(Command::new("sgdisk").arg("-v").arg(&gpt));
    assert!(verify.contains("No problems found"), "{}", verify);
    assert!(vboot_install(&["uninstall", gpt.to_str().unwrap()]).0);
}

/// `uninstall` with a stale record must refuse and write nothing, naming what is wrong.
fn assert_uninstall_refused(disk: &Path, expect: &str) {
    let before = read(disk);
    let (ok, out) = vboot_install(&["uninstall", disk.to_str().unwrap()]);
    assert!(!ok, "uninstall should have been refused; output:\n{}", out);
    assert!(out.contains("refusing to uninstall") && out.contains("nothing was written"), "{}", out);
    assert!(out.contains(expect), "message should mention {:?}:\n{}", expect, out);
    assert!(read(disk) == before, "a refused uninstall changed the disk");
}

/// Issue 14: `uninstall` zeroed the sectors its install record names without checking them.
#[test]
fn uninstall_refuses_a_stale_install_record() {
    let dir = TempDir::new("inst-stale");
    let disk = disk_with_foreign_boot_code(&dir);
    assert!(vboot_install(&["install", disk.to_str().unwrap()]).0);
    let installed = read(&disk);
    let stage2_sectors = u32::from_le_bytes(installed[512 + 20..512 + 24].try_into().unwrap()) as usize;

    // The disk was repartitioned: partition 1 now starts at sector 63, inside stage2, and holds
    // a filesystem's data there.
    disk::sfdisk(&disk, "label: dos\nstart=63, size=40000, type=c, bootable\n");
    let mut bytes = read(&disk);
    bytes[63 * 512..64 * 512].fill(0xF6);
    std::fs::write(&disk, &bytes).unwrap();
    assert_uninstall_refused(&disk, "partition 1 now starts at sector 63, inside them");

    // Partitions as before, but something wrote over the middle of stage2.
    std::fs::write(&disk, &installed).unwrap();
    let mut bytes = installed.clone();
    bytes[(3 + 100) * 512..(3 + 101) * 512].fill(0xEE);
    std::fs::write(&disk, &bytes).unwrap();
    assert_uninstall_refused(&disk, "not the");
    assert!(vboot_install(&["uninstall", disk.to_str().unwrap()]).1.contains("CRC-32"));

    // Another boot loader's core image over stage2's first sector.
    let mut bytes = installed.clone();
    bytes[3 * 512..4 * 512].fill(0x90);
    std::fs::write(&disk, &bytes).unwrap();
    assert_uninstall_refused(&disk, "sector 3 holds no vboot stage2");

    // The engine after stage2 damaged.
    let mut bytes = installed.clone();
    let engine = (3 + stage2_sectors + 5) * 512;
    bytes[engine..engine + 512].fill(0x11);
    std::fs::write(&disk, &bytes).unwrap();
    assert_uninstall_refused(&disk, "is damaged or not the one recorded");

    // Untouched, it still uninstalls.
    std::fs::write(&disk, &installed).unwrap();
    let (ok, out) = vboot_install(&["uninstall", disk.to_str().unwrap()]);
    assert!(ok, "{}", out);
}

#[test]
fn uninstall_on_gpt_refuses_a_record_outside_the_bios_boot_partition() {
    let dir = TempDir::new("inst-stale-gpt");
    let gpt = dir.join("gpt.img");
    disk::blank(&gpt, 32);
    disk::sgdisk(&gpt, &["-n", "1:0:+1M", "-t", "1:ef02", "-n", "2:0:0", "-t", "2:0700"]);
    assert!(vboot_install(&["install", gpt.to_str().unwrap()]).0);
    // The BIOS boot partition became an ordinary one (a data partition over vboot's sectors).
    disk::sgdisk(&gpt, &["-t", "1:0700"]);
    assert_uninstall_refused(&gpt, "no longer inside a BIOS boot partition");
    disk::sgdisk(&gpt, &["-t", "1:ef02"]);
    let (ok, out) = vboot_install(&["uninstall", gpt.to_str().unwrap()]);
    assert!(ok, "{}", out);
}
