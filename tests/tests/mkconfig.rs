//! `vdisk mkconfig`: a partition's images found and given grub.cfg entries (a raw disk, a VMDK
//! chain of depth 3 made by qemu-img and a VHD chain of depth 3 where only the leaves get entries, a split VMDK whose
//! extent file must not get one, an ISO made by xorriso, a floppy, files that are no bootable
//! image), the file checked by GRUB's own `grub-script-check`, a second run leaving the user's
//! lines byte-identical, and every generated entry booted through vboot in QEMU.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{guests, require_tool, sh, vdisk_bin, TempDir};

const T: Duration = Duration::from_secs(120);

const USER_PART: &str = "# my own settings and entry, kept by mkconfig\nset timeout=-1\nset default=0\nmenuentry 'my own entry' {\n    vboot harddisk=/vm/dos.img pause\n}\n\n";

fn mkconfig(dir: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(vdisk_bin()).arg("mkconfig").arg(dir).args(extra).output().expect("run vdisk");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vdisk mkconfig failed:\n{}{}", stdout, stderr);
    (stdout, stderr)
}

/// The partition's files: (path from its root, file on the host).
fn stage(dir: &TempDir) -> (PathBuf, Vec<(String, String)>) {
    require_tool("qemu-img", "qemu-utils");
    let root = dir.join("part");
    for d in ["vm", "iso", "fd", "data", "boot/grub"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let raw = guests::hello_guest(&dir.path, "dos", "MK-RAW", 2048);
    std::fs::copy(&raw, root.join("vm/dos.img")).unwrap();
    // A VMDK chain of depth 3: the base holds the guest, two empty children above it.
    let base_raw = guests::hello_guest(&dir.path, "chain", "MK-CHAIN", 4096);
    sh(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "vmdk"]).arg(&base_raw).arg(root.join("vm/base.vmdk")));
    for (child, parent) in [("mid.vmdk", "base.vmdk"), ("leaf.vmdk", "mid.vmdk")] {
        sh(Command::new("qemu-img").args(["create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk"]).arg(root.join("vm").join(child)));
    }
    // A VHD chain of depth 3: qemu-img makes the dynamic base (it cannot make VHD children),
    // vdisk the two differencing children.
    let vhd_raw = guests::hello_guest(&dir.path, "vhdchain", "MK-VHD-CHAIN", 4096);
    sh(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd_raw).arg(root.join("vm/vbase.vhd")));
    for (parent, child) in [("vbase.vhd", "vmid.vhd"), ("vmid.vhd", "vleaf.vhd")] {
        sh(Command::new(vdisk_bin()).arg("snapshot").arg(root.join("vm").join(parent)).arg(root.join("vm").join(child)));
    }
    // A split flat VMDK: its extent file split-f001.vmdk is a raw disk with a boot signature.
    let split_raw = guests::hello_guest(&dir.path, "split", "MK-SPLIT", 2048);
    sh(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat"]).arg(&split_raw).arg(root.join("vm/split.vmdk")));
    // A no-emulation CD whose boot image is the guest's sector.
    let tree = dir.join("isotree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut loader = guests::hello_boot_sector(&dir.path, "cd", "MK-CD");
    loader.resize(2048, 0);
    std::fs::write(tree.join("loader.bin"), &loader).unwrap();
    guests::make_iso(&tree, &root.join("iso/live cd.iso"), &["-b", "loader.bin", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4"]);
    // A 1.44M floppy.
    let floppy = guests::hello_guest(&dir.path, "floppy", "MK-FLOPPY", 2880);
    std::fs::copy(&floppy, root.join("fd/boot.img")).unwrap();
    // No bootable image: zeros of a disk's size, a text file, a blank VHD made by qemu-img.
    std::fs::write(root.join("data/blank.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(root.join("data/readme.txt"), "not an image\n").unwrap();
    sh(Command::new("qemu-img").args(["create", "-q", "-f", "vpc"]).arg(root.join("data/empty.vhd")).arg("8M"));
    std::fs::write(root.join("boot/grub/grub.cfg"), USER_PART).unwrap();
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    (root, files)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            out.push((format!("/{}", p.strip_prefix(root).unwrap().display()), p.display().to_string()));
        }
    }
}

#[test]
fn mkconfig_finds_the_bootable_images_keeps_the_users_lines_and_each_entry_boots() {
    require_tool("grub-script-check", "grub-common");
    let dir = TempDir::new("mkconfig");
    let (root, files) = stage(&dir);
    let cfg_path = root.join("boot/grub/grub.cfg");

    let (printed, _) = mkconfig(&root, &["--dry-run"]);
    assert_eq!(std::fs::read_to_string(&cfg_path).unwrap(), USER_PART, "--dry-run writes nothing");
    let (_, report) = mkconfig(&root, &[]);
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    assert_eq!(cfg, printed, "--dry-run prints what a run writes");
    assert!(cfg.starts_with(USER_PART), "the user's lines come first, unchanged:\n{}", cfg);
    let vboot_lines: Vec<&str> = cfg.lines().map(str::trim).filter(|l| l.starts_with("vboot ")).collect();
    assert_eq!(
        vboot_lines,
        [
            "vboot harddisk=/vm/dos.img pause",
            "vboot floppy=/fd/boot.img",
            "vboot 'cdrom=/iso/live cd.iso'",
            "vboot harddisk=/vm/dos.img",
            "vboot harddisk=/vm/leaf.vmdk",
            "vboot harddisk=/vm/split.vmdk",
            "vboot harddisk=/vm/vleaf.vhd",
        ],
        "one entry per bootable image, each chain's leaf only, no extent file:\n{}\n{}",
        cfg,
        report
    );
    let check = Command::new("grub-script-check").arg(&cfg_path).output().unwrap();
    assert!(check.status.success(), "grub-script-check refuses the file:\n{}", String::from_utf8_lossy(&check.stderr));

    // A second run, with the user's own line added below the block: all of it stays.
    let with_more = format!("{}menuentry 'below' {{\n    vboot recover_mbr\n}}\n", cfg);
    std::fs::write(&cfg_path, &with_more).unwrap();
    mkconfig(&root, &[]);
    assert_eq!(std::fs::read_to_string(&cfg_path).unwrap(), with_more, "a second run changes nothing");
    std::fs::write(&cfg_path, &cfg).unwrap();

    // Boot each generated entry (2..7; entry 1 is the user's) from a FAT host partition holding
    // the same files.
    let specs: Vec<FileSpec> = files
        .iter()
        .map(|(path, local)| if path == "/boot/grub/grub.cfg" { FileSpec::new(path, cfg.clone()) } else { FileSpec::new(path, std::fs::read(local).unwrap()) })
        .collect();
    let size_mib = 64;
    let part = dir.join("host-part.img");
    disk::fat_volume(&part, size_mib * 2048 - 2048, 32, &specs);
    let host = disk::disk_from_partition(&dir, &part, size_mib);
    let (ok, out) = vboot_tests::vboot_install(&["install", host.to_str().unwrap()]);
    assert!(ok, "vboot-install failed:\n{}", out);
    for (digit, marker) in [(2u8, "MK-FLOPPY"), (3, "MK-CD"), (4, "MK-RAW"), (5, "MK-CHAIN"), (6, "MK-SPLIT"), (7, "MK-VHD-CHAIN")] {
        let mut qcfg = vboot_tests::qemu::Config::disk(&host);
        qcfg.memory_mib = 256;
        let mut q = Qemu::start(&qcfg);
        q.expect("vleaf (VHD, 3 layers)", T);
        // As the rig does: the last title is drawn just before the menu polls for keys.
        std::thread::sleep(Duration::from_millis(200));
        let mark = q.mark();
        q.send(&[b'0' + digit]);
        let status = q.wait_exit(T);
        let tail = q.output().get(mark..).unwrap_or("").to_string();
        assert!(tail.contains(marker), "entry {}: no {} (exit {:?}):\n{}", digit, marker, status, tail);
        assert_eq!(status, Some(EXIT_PASS), "{}", tail);
    }
}

/// Real sizes: a VMDK chain of depth 9 over a 100 GiB base and a 2040 GiB dynamic VHD, made by
/// qemu-img (sparse files) with the boot signature written by qemu-io: one entry each, for the
/// chain's leaf only.
#[test]
fn mkconfig_lists_real_sized_images_and_only_the_leaf_of_a_deep_chain() {
    require_tool("qemu-io", "qemu-utils");
    let dir = TempDir::new("mkconfig-big");
    let root = dir.join("part");
    let vm = root.join("vm");
    std::fs::create_dir_all(&vm).unwrap();
    let signature = |file: &Path, format: &str| {
        sh(Command::new("qemu-io").args(["-f", format, "-c", "write -P 0x55 510 1", "-c", "write -P 0xaa 511 1"]).arg(file));
    };
    sh(Command::new("qemu-img").args(["create", "-q", "-f", "vmdk"]).arg(vm.join("base.vmdk")).arg("100G"));
    signature(&vm.join("base.vmdk"), "vmdk");
    let mut parent = String::from("base.vmdk");
    for i in 1..=8 {
        let child = format!("c{}.vmdk", i);
        sh(Command::new("qemu-img").args(["create", "-q", "-f", "vmdk", "-b", &parent, "-F", "vmdk"]).arg(vm.join(&child)));
        parent = child;
    }
    sh(Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic"]).arg(vm.join("big.vhd")).arg("2040G"));
    signature(&vm.join("big.vhd"), "vpc");
    let (printed, _) = mkconfig(&root, &["--dry-run"]);
    let vboot_lines: Vec<&str> = printed.lines().map(str::trim).filter(|l| l.starts_with("vboot ")).collect();
    assert_eq!(vboot_lines, ["vboot harddisk=/vm/big.vhd", "vboot harddisk=/vm/c8.vmdk"], "{}", printed);
    assert!(printed.contains("menuentry 'c8 (VMDK, 9 layers)'"), "{}", printed);
}
