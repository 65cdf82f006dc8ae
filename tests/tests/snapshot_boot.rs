//! Host-filesystem changes made at boot (issue 7): `take_snapshot=` with its grub.cfg rewrite,
//! and write slack grown before the guest starts, or the RAM-overlay offer where it cannot be.
//! The guest is the probe; the results are read back by qemu-img, vdisk, mtools and fsck.fat.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ProbeConfig, ProbeWrite};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{disk, sh, vboot_host, Host, TempDir};

const T: Duration = Duration::from_secs(120);
const TOTAL: u64 = 16 * 2048;

fn probe_config() -> ProbeConfig {
    let mut cfg = ProbeConfig::new(TOTAL);
    cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    cfg.boundaries_lba = vec![4095, 4096];
    // Away from the sectors the probe's read steps check, so a second boot passes too.
    cfg.writes = vec![ProbeWrite { lba: 1000, sectors: 1 }, ProbeWrite { lba: 9000, sectors: 16 }, ProbeWrite { lba: 20000, sectors: 3 }];
    cfg
}

/// A raw probe disk converted to `fmt` (qemu-img), at `dir/name`.
fn probe_image(dir: &TempDir, fmt: &str, opts: &str, name: &str) -> (PathBuf, ProbeConfig) {
    let cfg = probe_config();
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let img = dir.join(name);
    sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw).arg(&img));
    (img, cfg)
}

/// A FAT32 host disk with `grub_cfg` and the images under /vm.
fn host_with(dir: &TempDir, grub_cfg: &str, images: &[(&str, &Path)]) -> Host {
    let host = vboot_host(dir, 96, grub_cfg, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    for (name, file) in images {
        disk::put_fragmented(&host.part, &format!("/vm/{}", name), &std::fs::read(file).unwrap(), 2);
    }
    disk::write_at(&host.disk, 2048, &host.part);
    host
}

fn qemu(host: &Host) -> Qemu {
    let mut qcfg = vboot_tests::qemu::Config::disk(&host.disk);
    qcfg.memory_mib = 256;
    Qemu::start(&qcfg)
}

fn pass(q: &mut Qemu) -> String {
    let status = q.wait_exit(T);
    let out = q.output();
    assert!(out.contains(guests::PROBE_PASS), "probe failed (exit {:?}):\n{}", status, out);
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    out
}

/// The host partition as it is now; fsck.fat must find nothing to fix.
fn partition_after(host: &Host, dir: &TempDir, tag: &str) -> PathBuf {
    let part = host.current_partition(&dir.join(&format!("part-{}.img", tag)));
    let out = Command::new("fsck.fat").arg("-n").arg(&part).output().expect("fsck.fat (dosfstools)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("Leaving filesystem unchanged"), "fsck.fat after {}:\n{}", tag, text);
    part
}

fn get(part: &Path, path: &str, out: &Path) -> Vec<u8> {
    disk::fat_get(part, path, out);
    std::fs::read(out).unwrap()
}

fn list(part: &Path, dir: &str) -> String {
    sh(Command::new("mdir").args(["-b", "-i"]).arg(part).arg(format!("::{}", dir)).env("MTOOLS_SKIP_CHECK", "1"))
}

/// The chain at `leaf` read through qemu-img (VMDK) or vdisk (VHD, VDI) as a raw disk, checked
/// against the probe's pattern and writes.
fn check_chain(leaf: &Path, cfg: &ProbeConfig, via_vdisk: bool) {
    let raw = leaf.with_extension("check.raw");
    if via_vdisk {
        sh(Command::new(vboot_tests::artifacts().vdisk).arg("convert").arg(leaf).arg(&raw).args(["--format", "raw"]));
    } else {
        sh(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(leaf).arg(&raw));
    }
    std::fs::OpenOptions::new().write(true).open(&raw).unwrap().set_len(TOTAL * 512).unwrap();
    guests::check_probe_disk(&raw, cfg).unwrap_or_else(|e| panic!("{}: {}", leaf.display(), e));
}

/// take_snapshot= with boot_entry=: boot 1 makes /vm/s1.vmdk, boots it, and points entry 0 at
/// it; the parent stays byte-identical. Booting the snapshot entry again is refused (the file
/// exists) with the way back to the menu; entry 0 then boots the snapshot, which holds both
/// boots' writes.
#[test]
fn take_snapshot_points_boot_entry_at_the_new_child_and_keeps_the_parent() {
    let dir = TempDir::new("snap-entry");
    let (base, cfg) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let base_bytes = std::fs::read(&base).unwrap();
    let grub = "set default=1\nset timeout=0\n\nmenuentry 'XP' {\n    vboot harddisk=/vm/base.vmdk pause\n}\n\
menuentry 'XP: take a snapshot' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=/vm/s1.vmdk boot_entry=0 reserve=4M\n}\n";
    let host = host_with(&dir, grub, &[("base.vmdk", &base)]);

    let mut q = qemu(&host);
    let out = pass(&mut q);
    assert!(out.contains("snapshot: /vm/s1.vmdk made, a VMDK child of /vm/base.vmdk"), "{}", out);
    assert!(out.contains("grub.cfg: (hd0,1)/boot/grub/grub.cfg rewritten to boot /vm/s1.vmdk"), "{}", out);
    let part = partition_after(&host, &dir, "boot1");
    assert!(get(&part, "/vm/base.vmdk", &dir.join("base-after.vmdk")) == base_bytes, "the parent changed");
    let want_cfg = grub.replace("vboot harddisk=/vm/base.vmdk pause", "vboot harddisk=/vm/s1.vmdk pause");
    assert_eq!(String::from_utf8(get(&part, "/boot/grub/grub.cfg", &dir.join("grub.cfg"))).unwrap(), want_cfg);
    let listing = list(&part, "/boot/grub");
    assert!(!listing.contains(".new") && !listing.contains(".old"), "leftovers of the rewrite: {}", listing);
    let child = dir.join("s1.vmdk");
    get(&part, "/vm/s1.vmdk", &child);
    vboot_tests::qemu_img_check(&child, "");
    check_chain(&child, &cfg, false);

    // Boot 2: the default is still the snapshot entry, whose file now exists.
    let mut q = qemu(&host);
    q.expect("already exists on (hd0,1); delete it or choose another name", T);
    q.expect("Press any key to return to the menu.", T);
    q.send(b"\r");
    let mark = q.mark();
    q.expect_from(mark, "XP: take a snapshot", T);
    q.send(b"1");
    q.expect("Paused before starting the guest", T);
    q.send(b"\r");
    let out = pass(&mut q);
    assert!(out.contains("image /vm/s1.vmdk") && out.contains("parent /vm/base.vmdk"), "{}", out);
    let part = partition_after(&host, &dir, "boot2");
    assert!(get(&part, "/vm/base.vmdk", &dir.join("base-after2.vmdk")) == base_bytes, "the parent changed");
    get(&part, "/vm/s1.vmdk", &child);
    vboot_tests::qemu_img_check(&child, "");
    check_chain(&child, &cfg, false);
}

/// take_snapshot= with new_menu_entry= on a VHD: a new entry is appended (the file is otherwise
/// unchanged), the child is a VHD that vdisk reads as the parent plus the probe's writes, and
/// the new entry boots it.
#[test]
fn take_snapshot_with_new_menu_entry_appends_an_entry_for_the_child() {
    let dir = TempDir::new("snap-new");
    let (base, cfg) = probe_image(&dir, "vpc", "subformat=dynamic,force_size=on", "base.vhd");
    let base_bytes = std::fs::read(&base).unwrap();
    let grub = "set timeout=0\nmenuentry 'DOS' {\n    vboot harddisk=/vm/base.vhd take_snapshot=/vm/snaps/day1.vhd new_menu_entry='DOS, day 1' config_file=/boot/grub/grub.cfg reserve=8M\n}\n";
    let host = host_with(&dir, grub, &[("base.vhd", &base)]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm/snaps").env("MTOOLS_SKIP_CHECK", "1"));
    disk::write_at(&host.disk, 2048, &host.part);

    let mut q = qemu(&host);
    let out = pass(&mut q);
    assert!(out.contains("image /vm/snaps/day1.vhd"), "{}", out);
    let part = partition_after(&host, &dir, "boot1");
    assert!(get(&part, "/vm/base.vhd", &dir.join("base-after.vhd")) == base_bytes, "the parent changed");
    let cfg_now = String::from_utf8(get(&part, "/boot/grub/grub.cfg", &dir.join("grub.cfg"))).unwrap();
    assert_eq!(cfg_now, format!("{}menuentry 'DOS, day 1' {{\n    vboot harddisk=/vm/snaps/day1.vhd reserve=8M\n}}\n", grub));
    let child = dir.join("snaps/day1.vhd");
    std::fs::create_dir_all(dir.join("snaps")).unwrap();
    get(&part, "/vm/snaps/day1.vhd", &child);
    vboot_tests::vdisk_check(&child, "");
    check_chain(&child, &cfg, true);

    // The new entry (index 1) boots the child.
    let cfg_file = dir.join("grub-edit.cfg");
    std::fs::write(&cfg_file, cfg_now.replace("set timeout=0\n", "set timeout=0\nset default=1\n")).unwrap();
    sh(Command::new("mcopy").args(["-o", "-i"]).arg(&part).arg(&cfg_file).arg("::/boot/grub/grub.cfg").env("MTOOLS_SKIP_CHECK", "1"));
    disk::write_at(&host.disk, 2048, &part);
    let host2 = host;
    let mut q = qemu(&host2);
    let out = pass(&mut q);
    assert!(out.contains("image /vm/snaps/day1.vhd") && out.contains("parent /vm/base.vhd"), "{}", out);
    let part = partition_after(&host2, &dir, "boot2");
    assert!(get(&part, "/vm/base.vhd", &dir.join("base-after2.vhd")) == base_bytes, "the parent changed");
}

/// Refusals before anything is written: a raw image cannot have a snapshot, a boot_entry= that
/// names no entry, and a snapshot on another partition. The host partition is unchanged.
#[test]
fn take_snapshot_refusals_write_nothing() {
    let dir = TempDir::new("snap-refuse");
    let (base, _) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let raw = dir.join("probe.img");
    let grub = "set timeout=-1\n\
menuentry 'raw' {\n    vboot harddisk=/vm/probe.img take_snapshot=/vm/s.vhd\n}\n\
menuentry 'bad index' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=/vm/s.vmdk boot_entry=9\n}\n\
menuentry 'other partition' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=(hd0,2)/s.vmdk\n}\n\
menuentry 'other config' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=/vm/s.vmdk config_file=/other.cfg\n}\n";
    let host = host_with(&dir, grub, &[("base.vmdk", &base), ("probe.img", &raw)]);
    let before = std::fs::read(&host.disk).unwrap();
    let mut q = qemu(&host);
    q.expect("4. other config", T);
    q.expect_refusals(
        "4. other config",
        &[
            (&b"1"[..], "is a raw image, which cannot have differencing children"),
            (&b"2"[..], "boot_entry=9: there is no such menu entry (the menu has 4 top-level entries"),
            (&b"3"[..], "the snapshot must be on the image's partition (hd0,1)"),
            (&b"4"[..], "config_file=(hd0,1)/other.cfg is not the grub.cfg this menu came from"),
        ],
        T,
    );
    q.kill();
    assert!(std::fs::read(&host.disk).unwrap() == before, "a refused take_snapshot changed the disk");
}

/// A sparse leaf without slack on FAT is grown before boot by reserve= (here a VMDK child made
/// by vdisk with no slack), the probe's writes allocate in it, and qemu-img reads them back.
#[test]
fn write_slack_is_grown_before_boot_on_fat() {
    let dir = TempDir::new("slack-grow");
    let (base, cfg) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let child = dir.join("child.vmdk");
    sh(Command::new(vboot_tests::artifacts().vdisk).arg("snapshot").arg(&base).arg(&child));
    let child_len = std::fs::metadata(&child).unwrap().len();
    let grub = "set timeout=0\nmenuentry 'child' {\n    vboot harddisk=/vm/child.vmdk reserve=3M\n}\n";
    let host = host_with(&dir, grub, &[("base.vmdk", &base), ("child.vmdk", &child)]);
    let mut q = qemu(&host);
    let out = pass(&mut q);
    assert!(out.contains("write slack: /vm/child.vmdk grown by 3072 KiB"), "{}", out);
    let part = partition_after(&host, &dir, "boot");
    get(&part, "/vm/child.vmdk", &child);
    assert_eq!(std::fs::metadata(&child).unwrap().len(), child_len + (3 << 20));
    vboot_tests::qemu_img_check(&child, "");
    check_chain(&child, &cfg, false);
}

/// On an NTFS host vboot cannot grow a file: a sparse image without slack gets the offer. R
/// boots with writes in RAM (the image stays byte-identical), any other key goes back.
#[test]
fn without_slack_on_ntfs_the_ram_overlay_is_offered() {
    let dir = TempDir::new("slack-ntfs");
    let (base, _) = probe_image(&dir, "vdi", "static=off", "base.vdi");
    // The base has every block allocated; its child has no blocks and no slack, so each of the
    // probe's writes needs a new block.
    let child = dir.join("child.vdi");
    sh(Command::new(vboot_tests::artifacts().vdisk).arg("snapshot").arg(&base).arg(&child));
    let grub = "set timeout=-1\nmenuentry 'child' {\n    vboot harddisk=/child.vdi\n}\n";
    let host = disk::ntfs_vboot_disk(&dir, grub, &[(&base, "/base.vdi"), (&child, "/child.vdi")]);
    let before = std::fs::read(&host).unwrap();
    let mut qcfg = vboot_tests::qemu::Config::disk(&host);
    qcfg.memory_mib = 256;
    let mut q = Qemu::start(&qcfg);
    q.expect("child", T);
    q.send(b"1");
    q.expect("has no room for new blocks, and it cannot be made", T);
    q.expect("Press R to boot with writes kept in RAM", T);
    q.send(b"x");
    q.expect("not booted: the image has no write slack", T);
    q.send(b"\r");
    let mark = q.mark();
    q.expect_from(mark, "child", T);
    q.send(b"1");
    q.expect_from(mark, "Press R to boot with writes kept in RAM", T);
    q.send(b"r");
    q.expect_from(mark, "writes go to a RAM overlay; the image is not changed", T);
    let out = pass(&mut q);
    assert!(out.contains("image /child.vdi"), "{}", out);
    assert!(std::fs::read(&host).unwrap() == before, "the host disk changed");
}

/// Put files into a fresh exFAT volume image with the core library's exFAT writer (fsck.exfat
/// checks the result), and read them back the same way.
fn exfat_put(img: &Path, path: &str, bytes: &[u8]) {
    let dev = vboot::block::FileDisk::open(img, true).unwrap();
    let mut vol = vboot::fs::exfat::ExfatVolume::open(dev).unwrap();
    let f = vol.create_file(path, bytes.len() as u64).unwrap();
    vol.write_file(&f, 0, bytes).unwrap();
}

fn exfat_get(img: &Path, path: &str) -> Vec<u8> {
    let dev = vboot::block::FileDisk::open(img, false).unwrap();
    let mut vol = vboot::fs::exfat::ExfatVolume::open(dev).unwrap();
    vol.read_to_vec(path, 1 << 30).unwrap()
}

fn fsck_exfat(img: &Path, after: &str) {
    let tool = ["/usr/sbin/fsck.exfat", "/sbin/fsck.exfat"].into_iter().find(|p| Path::new(p).exists()).expect("fsck.exfat (exfatprogs)");
    let out = Command::new(tool).arg("-n").arg(img).output().unwrap();
    assert!(out.status.success(), "fsck.exfat after {}: {}{}", after, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// On an exFAT host: take_snapshot= with config_file= alone makes the child and points the entry
/// that took the snapshot at it (keeping its reserve=), the child takes the probe's writes, and
/// fsck.exfat finds the volume clean.
#[test]
fn take_snapshot_on_an_exfat_host() {
    let dir = TempDir::new("snap-exfat");
    let (base, cfg) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let base_bytes = std::fs::read(&base).unwrap();
    let grub = "set default=1\nset timeout=0\nmenuentry 'A' {\n    vboot harddisk=/base.vmdk\n}\nmenuentry 'A: snapshot' {\n    vboot harddisk=/base.vmdk take_snapshot=/s1.vmdk config_file=/grub.cfg reserve=2M\n}\n";
    let part = dir.join("part.img");
    disk::blank(&part, 63);
    let mkfs = ["/usr/sbin/mkfs.exfat", "/sbin/mkfs.exfat"].into_iter().find(|p| Path::new(p).exists()).expect("mkfs.exfat (exfatprogs)");
    sh(Command::new(mkfs).arg(&part));
    exfat_put(&part, "/grub.cfg", grub.as_bytes());
    exfat_put(&part, "/base.vmdk", &base_bytes);
    fsck_exfat(&part, "filling");
    let host = dir.join("disk.img");
    disk::blank(&host, 64);
    disk::sfdisk(&host, "label: dos\nstart=2048, type=7, bootable\n");
    disk::write_at(&host, 2048, &part);
    let (ok, out) = vboot_tests::vboot_install(&["install", host.to_str().unwrap()]);
    assert!(ok, "{}", out);
    let mut qcfg = vboot_tests::qemu::Config::disk(&host);
    qcfg.memory_mib = 256;
    let mut q = Qemu::start(&qcfg);
    let out = pass(&mut q);
    assert!(out.contains("snapshot: /s1.vmdk made"), "{}", out);
    disk::partition_of(&host, 63 * 2048, &part);
    fsck_exfat(&part, "the boot");
    assert!(exfat_get(&part, "/base.vmdk") == base_bytes, "the parent changed");
    assert_eq!(
        String::from_utf8(exfat_get(&part, "/grub.cfg")).unwrap(),
        grub.replace("vboot harddisk=/base.vmdk take_snapshot=/s1.vmdk config_file=/grub.cfg reserve=2M", "vboot harddisk=/s1.vmdk reserve=2M")
    );
    let child = dir.join("s1.vmdk");
    std::fs::write(&child, exfat_get(&part, "/s1.vmdk")).unwrap();
    vboot_tests::qemu_img_check(&child, "");
    check_chain(&child, &cfg, false);
}

/// A grub.cfg rewrite cut off between its two renames leaves only grub.cfg.new: the menu is read
/// from it, and the next rewrite first puts it back in place.
#[test]
fn an_interrupted_grub_cfg_rewrite_is_finished() {
    let dir = TempDir::new("snap-interrupted");
    let (base, _) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let grub = "set timeout=0\nmenuentry 'snap' {\n    vboot harddisk=/vm/base.vmdk take_snapshot=/vm/s1.vmdk new_menu_entry=S1 reserve=1M\n}\n";
    let host = host_with(&dir, grub, &[("base.vmdk", &base)]);
    // As if the power went out after `grub.cfg` -> `grub.cfg.old` and before the second rename.
    let run = |args: &[&str]| {
        sh(Command::new(args[0]).args(&args[1..]).env("MTOOLS_SKIP_CHECK", "1"));
    };
    let p = host.part.to_str().unwrap();
    run(&["mren", "-i", p, "::/boot/grub/grub.cfg", "::/boot/grub/grub.cfg.new"]);
    disk::write_at(&host.disk, 2048, &host.part);
    let mut q = qemu(&host);
    let out = pass(&mut q);
    assert!(out.contains("Reading (hd0,1)/boot/grub/grub.cfg.new: /boot/grub/grub.cfg is missing (an interrupted rewrite)"), "{}", out);
    let part = partition_after(&host, &dir, "boot");
    let cfg_now = String::from_utf8(get(&part, "/boot/grub/grub.cfg", &dir.join("grub.cfg"))).unwrap();
    assert_eq!(cfg_now, format!("{}menuentry S1 {{\n    vboot harddisk=/vm/s1.vmdk reserve=1M\n}}\n", grub));
    let listing = list(&part, "/boot/grub");
    assert!(!listing.contains(".new") && !listing.contains(".old"), "leftovers: {}", listing);
}

/// parent_dir=: a child whose stored parent path does not resolve (its parent lives in another
/// directory) boots when parent_dir= names that directory, is refused without it, and a
/// parent_dir= on another partition is refused before anything is written.
#[test]
fn parent_dir_finds_a_parent_the_stored_path_misses() {
    let dir = TempDir::new("parent-dir");
    let (base, cfg) = probe_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk");
    let child = dir.join("c.vmdk");
    // Made next to its parent: the child stores "base.vmdk", which is not in /vm/kids.
    sh(Command::new(vboot_tests::artifacts().vdisk).arg("snapshot").arg(&base).arg(&child).args(["--reserve", "4M"]));
    let grub = "set timeout=-1\n\
menuentry 'with parent_dir' {\n    vboot harddisk=/vm/kids/c.vmdk parent_dir=/vm/parents\n}\n\
menuentry 'without' {\n    vboot harddisk=/vm/kids/c.vmdk\n}\n\
menuentry 'elsewhere' {\n    vboot harddisk=/vm/kids/c.vmdk parent_dir=(hd0,2)/vm/parents\n}\n";
    let host = vboot_host(&dir, 96, grub, &[]);
    for d in ["::/vm", "::/vm/parents", "::/vm/kids"] {
        sh(Command::new("mmd").arg("-i").arg(&host.part).arg(d).env("MTOOLS_SKIP_CHECK", "1"));
    }
    disk::put_fragmented(&host.part, "/vm/parents/base.vmdk", &std::fs::read(&base).unwrap(), 2);
    disk::put_fragmented(&host.part, "/vm/kids/c.vmdk", &std::fs::read(&child).unwrap(), 2);
    disk::write_at(&host.disk, 2048, &host.part);
    let before = std::fs::read(&host.disk).unwrap();
    let mut q = qemu(&host);
    q.expect("3. elsewhere", T);
    q.expect_refusals(
        "3. elsewhere",
        &[
            (&b"2"[..], "/vm/kids/c.vmdk: parent image not found"),
            (&b"3"[..], "parent_dir=(hd0,2)/vm/parents: it must be on the image's partition (hd0,1)"),
        ],
        T,
    );
    q.kill();
    assert!(std::fs::read(&host.disk).unwrap() == before, "a refused entry changed the disk");

    let mut q = qemu(&host);
    q.expect("3. elsewhere", T);
    q.send(b"1");
    let out = pass(&mut q);
    assert!(out.contains("parent /vm/parents/base.vmdk"), "{}", out);
    let part = partition_after(&host, &dir, "boot");
    assert!(get(&part, "/vm/parents/base.vmdk", &dir.join("base-after.vmdk")) == std::fs::read(&base).unwrap(), "the parent changed");
    get(&part, "/vm/kids/c.vmdk", &child);
    vboot_tests::qemu_img_check(&child, "");
    // qemu follows the stored hint "base.vmdk" next to the child: here it is.
    check_chain(&child, &cfg, false);
}
