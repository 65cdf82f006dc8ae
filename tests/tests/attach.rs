//! The hand-off table and `vboot-attach` (issue 9). Linux, booted by SYSLINUX from inside an image
//! that vboot serves, finds vboot's table through /dev/mem, serves the same image on /dev/nbd0
//! with the core library, mounts the guest's partition, reads a file the host put there and writes
//! new ones (`guests::build_attach_guest` lists every step, refusals included). The host then
//! reads the new files out of the image with qemu-img and mtools; qemu-img check (VDI, VMDK) or
//! vdisk check and libvhdi (VHD, which qemu-img cannot check), and fsck.fat, find it clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, DebianInitramfs, ATTACH_BIG_BYTES, ATTACH_BIG_FILE, ATTACH_FILE, ATTACH_FILE_TEXT, ATTACH_NEW_FILE, ATTACH_NEW_TEXT, ATTACH_OK};
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

/// The write slack `vdisk info` reports for a sparse image (the leaf's, for a chain).
fn slack_bytes(image: &Path) -> u64 {
    let out = sh(Command::new(vdisk_bin()).arg("info").arg("--json").arg(image));
    // A JSON number since vdisk writes its JSON with serde (it was a string before).
    let key = "\"slack_bytes\": ";
    let at = out.find(key).expect("slack_bytes in vdisk info") + key.len();
    out[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn structure_check(image: &Path, format: &str) {
    let check = if format == "vpc" {
        // qemu-img has no check for VHD: vdisk's structural check, and libvhdi must open it.
        let info = Command::new("vhdiinfo").arg(image).output().expect("vhdiinfo (libvhdi-utils)");
        assert!(info.status.success(), "vhdiinfo: {}{}", String::from_utf8_lossy(&info.stdout), String::from_utf8_lossy(&info.stderr));
        Command::new(vdisk_bin()).arg("check").arg(image).output().unwrap()
    } else {
        Command::new("qemu-img").arg("check").arg(image).output().unwrap()
    };
    assert!(check.status.success(), "check of {}: {}{}", image.display(), String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
}

/// Every step of the guest passed, each refusal with its message.
fn assert_guest_steps(out: &str, write_mode: &str) {
    // What the tool said, for the log (shown with --nocapture or on failure).
    for l in out.lines().filter(|l| l.starts_with("STEP") || l.starts_with("READ-") || l.contains("vboot-attach") || l.contains("hand-off") || l.starts_with("drive ")) {
        eprintln!("guest: {}", l);
    }
    assert!(!out.contains("ATTACH-FAILED"), "{}", out);
    assert!(out.contains(ATTACH_OK), "{}", out);
    assert!(out.contains("did not appear within 1 s"), "no refusal without the host disk's driver:\n{}", out);
    assert!(out.contains("vboot hand-off table at 0x"), "{}", out);
    assert!(out.contains(&format!("writes {}", write_mode)), "{}", out);
    assert!(out.contains("is mounted read-write on /host"), "no refusal with the host partition mounted:\n{}", out);
    assert!(out.contains("Begin: Attaching the vboot disk 0x80") && out.contains("LOCAL-TOP-OK"), "{}", out);
    assert!(out.contains("ATTACHED /dev/nbd0") && out.contains("READ-OK") && out.contains("REREAD-OK"), "{}", out);
    assert!(out.contains("/dev/nbd0 detached"), "{}", out);
    // systemd spares root storage daemons named '@...' at shutdown.
    assert!(out.contains("SERVER @vboot-attach --timeout 20"), "{}", out);
    assert!(out.contains("the hand-off table has no drive 0x81"), "{}", out);
    assert!(out.contains("the table is damaged"), "no refusal of a damaged table:\n{}", out);
    assert!(out.contains("hand-off table is stale") && out.contains("boot ID"), "no refusal of a stale table:\n{}", out);
}

/// Boot `images` (leaf first, in /vm/ on the host partition) with `vboot_args`, run the attach
/// guest, give the images back as the host disk holds them afterwards.
fn boot_attach(dir: &TempDir, images: &[(&str, &Path)], vboot_args: &str) -> (String, Vec<PathBuf>) {
    let cfg = format!("set timeout=0\nmenuentry 'linux in an image' {{\n    vboot {}\n}}\n", vboot_args);
    let host = vboot_host(dir, 160, &cfg, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    for (name, file) in images {
        disk::put_fragmented(&host.part, &format!("/vm/{}", name), &std::fs::read(file).unwrap(), 3);
    }
    disk::write_at(&host.disk, 2048, &host.part);
    let out = run_guest(&host.disk);
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let after = images
        .iter()
        .map(|(name, _)| {
            let p = dir.join(&format!("after-{}", name));
            disk::fat_get(&part_now, &format!("/vm/{}", name), &p);
            p
        })
        .collect();
    (out, after)
}

/// The guest's files, read from the image (the leaf of a chain) by qemu-img and mtools; fsck.fat
/// on the guest's partition.
fn check_guest_files(dir: &TempDir, image: &Path) {
    let raw_after = dir.join("guest-after.raw");
    qemu_img(&["convert", "-O", "raw", image.to_str().unwrap(), raw_after.to_str().unwrap()]);
    assert_eq!(file_in_raw(&raw_after, ATTACH_NEW_FILE), ATTACH_NEW_TEXT);
    assert_eq!(file_in_raw(&raw_after, ATTACH_FILE), ATTACH_FILE_TEXT);
    let big = file_in_raw(&raw_after, ATTACH_BIG_FILE);
    assert_eq!(big.len(), ATTACH_BIG_BYTES);
    assert!(big.as_bytes().chunks(6).all(|c| c == &b"vboot\n"[..c.len()]), "{} differs from what the guest wrote", ATTACH_BIG_FILE);
    let part = dir.join("guest-part.img");
    disk::partition_of(&raw_after, 48 * 2048 - 2048, &part);
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the guest's partition: {}", String::from_utf8_lossy(&fsck.stdout));
}

/// The attach guest converted to `format` (qemu-img's name, with `options`) plus 8 MiB of slack.
fn guest_image(dir: &TempDir, format: &str, options: &str, name: &str, host_partition: &str) -> PathBuf {
    let raw = guests::build_attach_guest(&dir.path, host_partition);
    let image = dir.join(name);
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([raw.to_str().unwrap(), image.to_str().unwrap()]);
    qemu_img(&args);
    // Slack for the blocks Linux's writes allocate (vboot-attach never grows a file).
    sh(Command::new(vdisk_bin()).arg("reserve").arg(&image).arg("8M"));
    image
}

fn attach_round_trip(tag: &str, format: &str, options: &str, name: &str) {
    let dir = TempDir::new(tag);
    let image = guest_image(&dir, format, options, name, "vda1");
    let slack_before = slack_bytes(&image);
    // reserve=0: stage2 adds no slack before boot, so the slack can only shrink by what the
    // writes through vboot-attach allocate.
    let (out, after) = boot_attach(&dir, &[(name, &image)], &format!("harddisk=/vm/{} reserve=0", name));
    assert_guest_steps(&out, "normal");
    assert!(out.contains(&format!("/vm/{} ", name)), "the table names the image:\n{}", out);
    structure_check(&after[0], format);
    check_guest_files(&dir, &after[0]);
    // The big file needed new blocks: they came out of the slack, as at boot.
    let slack_after = slack_bytes(&after[0]);
    assert!(slack_after < slack_before, "no block was allocated from the slack ({} -> {} bytes)", slack_before, slack_after);
}

#[test]
fn linux_attaches_a_dynamic_vhd_and_its_writes_land_in_the_file() {
    attach_round_trip("attach-vhd", "vpc", "subformat=dynamic", "guest.vhd");
}

#[test]
fn linux_attaches_a_dynamic_vdi() {
    attach_round_trip("attach-vdi", "vdi", "", "guest.vdi");
}

#[test]
fn linux_attaches_a_vmdk_chain_and_writes_go_into_the_child() {
    let dir = TempDir::new("attach-vmdk-chain");
    let base = guest_image(&dir, "vmdk", "subformat=monolithicSparse", "base.vmdk", "vda1");
    let child = dir.join("child.vmdk");
    sh(Command::new(vdisk_bin()).arg("snapshot").arg(&base).arg(&child).args(["--reserve", "8M"]));
    let base_sha = disk::sha256(&base);
    let (out, after) = boot_attach(&dir, &[("child.vmdk", &child), ("base.vmdk", &base)], "harddisk=/vm/child.vmdk");
    assert_guest_steps(&out, "normal");
    assert!(out.contains("layer VMDK /vm/child.vmdk") && out.contains("layer VMDK /vm/base.vmdk"), "{}", out);
    assert_eq!(disk::sha256(&after[1]), base_sha, "the parent changed");
    // qemu-img follows the child's parentFileNameHint, relative to the child.
    std::fs::copy(&after[1], dir.join("base.vmdk")).unwrap();
    let leaf = dir.join("child.vmdk");
    std::fs::copy(&after[0], &leaf).unwrap();
    structure_check(&leaf, "vmdk");
    check_guest_files(&dir, &leaf);
}

/// `immutable` (issue 17): stage2 makes the throwaway child /vm/guest.immutable.vmdk, the
/// hand-off table names it as the leaf with write mode 3, and vboot-attach writes into that same
/// child instead of a RAM overlay of its own: the guest's new files are in the child on the host
/// (qemu-img reads it with its parent), and the image itself is byte-identical.
#[test]
fn immutable_writes_go_into_the_throwaway_child_and_the_image_is_unchanged() {
    let dir = TempDir::new("attach-immutable");
    let image = guest_image(&dir, "vmdk", "subformat=monolithicSparse", "guest.vmdk", "vda1");
    let sha = disk::sha256(&image);
    let (out, after) = boot_attach(&dir, &[("guest.vmdk", &image)], "harddisk=/vm/guest.vmdk immutable reserve=16M");
    // The guest's own checks passed: the writes read back after a remount, from the child.
    assert_guest_steps(&out, "throwaway");
    assert!(out.contains("immutable: /vm/guest.immutable.vmdk made"), "{}", out);
    assert!(out.contains("immutable: writes go into the throwaway child"), "{}", out);
    assert!(out.contains("layer VMDK /vm/guest.immutable.vmdk") && out.contains("layer VMDK /vm/guest.vmdk"), "{}", out);
    assert_eq!(disk::sha256(&after[0]), sha, "an immutable image changed");
    // The child, beside its parent as qemu-img looks for it.
    let part_now = dir.join("part-after.img");
    let child = dir.join("guest.immutable.vmdk");
    disk::fat_get(&part_now, "/vm/guest.immutable.vmdk", &child);
    std::fs::copy(&after[0], dir.join("guest.vmdk")).unwrap();
    structure_check(&child, "vmdk");
    check_guest_files(&dir, &child);
}

/// The pivot (issue 17), [`pivot_scenario`] with a dynamic VHD.
#[test]
fn after_the_pivot_the_host_partition_is_usable_while_linux_runs() {
    let dir = TempDir::new("attach-pivot");
    let raw = guests::build_attach_pivot_guest(&dir.path, "vda1", "guest.vhd", "decoy.vhd");
    let image = dir.join("guest.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw.to_str().unwrap(), image.to_str().unwrap()]);
    // Slack for the 50 MiB the guest writes into its own disk, and their FAT's blocks.
    sh(Command::new(vdisk_bin()).arg("reserve").arg(&image).arg("72M"));
    pivot_scenario(&dir, &[("guest.vhd", &image)], "vpc");
}

/// The pivot of a chain, [`pivot_scenario`] with a VMDK child over its parent: the server checks
/// the parent's sectors too and serves both through the filesystem; the parent is unchanged.
#[test]
fn the_pivot_of_a_vmdk_chain_takes_the_parent_along() {
    let dir = TempDir::new("attach-pivot-chain");
    let raw = guests::build_attach_pivot_guest(&dir.path, "vda1", "child.vmdk", "decoy.vmdk");
    let base = dir.join("base.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw.to_str().unwrap(), base.to_str().unwrap()]);
    let child = dir.join("child.vmdk");
    sh(Command::new(vdisk_bin()).arg("snapshot").arg(&base).arg(&child).args(["--reserve", "72M"]));
    let base_sha = disk::sha256(&base);
    let after = pivot_scenario(&dir, &[("child.vmdk", &child), ("base.vmdk", &base)], "vmdk");
    assert_eq!(disk::sha256(&after[1]), base_sha, "the parent changed");
}

/// Linux booted from `images` (leaf first, in /vm/ on a FAT32 host partition; qemu-img's
/// `format`) attaches it (raw host-disk extents, the host partition mounted read-only), reads the
/// image through the mount and then writes 4 MiB through the server underneath that page cache
/// (after the pivot single sectors of it are rewritten: without the pivot's page-cache drop the
/// rest of their pages would come back stale), has `--pivot` refused for a copy of the leaf
/// (same size, other sectors), a file on a tmpfs and a read-write host mount, the server still
/// serving after each; pivots to the leaf through /host, which is read-write afterwards, and a
/// second pivot is refused; then writes 50 MiB of new files onto the host partition while it
/// writes 50 MiB into its own disk; then attaches read-only and pivots without a remount. The
/// host finds the host filesystem and the image clean, and every file the guest wrote with the
/// SHA-256 the guest printed, read back by mtools (from the host partition, and from the image
/// through qemu-img convert). Gives the images as they are on the host partition afterwards.
fn pivot_scenario(dir: &TempDir, images: &[(&str, &Path)], format: &str) -> Vec<PathBuf> {
    let leaf = images[0].0;
    let decoy_name = format!("decoy.{}", leaf.rsplit('.').next().unwrap());
    let cfg = format!("set timeout=0\nmenuentry 'linux in an image' {{\n    vboot harddisk=/vm/{} reserve=0\n}}\n", leaf);
    let host = vboot_host(dir, 320, &cfg, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    for (name, file) in images {
        disk::put_fragmented(&host.part, &format!("/vm/{}", name), &std::fs::read(file).unwrap(), 3);
    }
    // The decoy: the leaf's bytes, elsewhere on the partition.
    disk::put_fragmented(&host.part, &format!("/vm/{}", decoy_name), &std::fs::read(images[0].1).unwrap(), 2);
    let decoy_sha = disk::sha256(images[0].1);
    disk::write_at(&host.disk, 2048, &host.part);
    let served = images.iter().map(|(n, _)| format!("/vm/{}", n)).collect::<Vec<_>>().join(" <- ");

    let started = std::time::Instant::now();
    let out = run_guest(&host.disk);
    eprintln!("pivot guest ran {:?}", started.elapsed());
    for l in out.lines().filter(|l| l.starts_with("STEP") || l.contains("vboot-attach") || l.starts_with("SHA") || l.starts_with("STILL-") || l.starts_with("SERVER-") || l.starts_with("HOST-MOUNT") || l.starts_with("WRITES-")) {
        eprintln!("guest: {}", l);
    }
    assert!(!out.contains("ATTACH-FAILED"), "{}", out);
    assert!(out.contains(guests::PIVOT_OK), "{}", out);
    // Each refusal with its message, and the server serving after it.
    assert!(out.contains("no vboot-attach server is running"), "no refusal without a server:\n{}", out);
    let decoy = format!("the file given for /vm/{} is not where the hand-off table says (file sector 0 is at host sector", leaf);
    assert!(out.contains(&decoy), "no refusal of the decoy:\n{}", out);
    assert!(out.contains("not on the host partition of a served drive"), "no refusal of a file on a tmpfs:\n{}", out);
    assert!(out.contains("is mounted read-write on /host while /dev/nbd0 still writes the image's sectors"), "no refusal with /host read-write:\n{}", out);
    for step in ["attach", "decoy", "tmpfs", "read-write", "pivot"] {
        assert!(out.contains(&format!("STILL-SERVING after {}", step)), "{}", out);
    }
    let pivoted = format!("/dev/nbd0 now serves {} through the host filesystem (the leaf read-write; extents checked with FIBMAP in ", served);
    assert!(out.contains(&pivoted), "{}", out);
    assert!(out.contains("); the host disk is closed"), "{}", out);
    assert!(out.contains("pivoted before"), "no refusal of a second pivot:\n{}", out);
    assert!(out.contains("/dev/nbd0 detached"), "{}", out);
    // A read-only drive pivots without a remount.
    let pivoted = format!("/dev/nbd0 now serves {} through the host filesystem (read-only; extents checked with FIBMAP in ", served);
    assert!(out.contains(&pivoted), "{}", out);
    assert!(out.contains("the server does not write the image; /host may be remounted read-write"), "{}", out);
    assert!(out.contains("STILL-SERVING after read-only"), "{}", out);
    let sha: std::collections::HashMap<String, String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SHA "))
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(p, h)| (p.to_string(), h.to_string()))
        .collect();
    assert_eq!(sha.len(), 5, "{}", out);
    let pre = out.lines().find_map(|l| l.strip_prefix("SHA-EXPECTED /g/PRE.BIN ")).map(|h| h.trim().to_string());
    assert!(pre.is_some() && pre.as_ref() == sha.get("/g/PRE.BIN"), "{}", out);
    // The server's open files: the host disk before, the image file after.
    assert!(out.contains("SERVER-FILES before /dev/vda \n"), "{}", out);
    let mut open_after: Vec<String> = images.iter().map(|(n, _)| format!("/host/vm/{} ", n)).collect();
    open_after.sort();
    assert!(out.contains(&format!("SERVER-FILES after {}\n", open_after.concat())), "{}", out);

    // The host partition: fsck.fat clean, the guest's files read back by mtools, the decoy
    // unchanged.
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part_now).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the host partition: {}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
    let half_bytes = (guests::PIVOT_WRITE_MIB / 2) << 20;
    for name in ["A.BIN", "B.BIN"] {
        let got = dir.join(&format!("host-{}", name));
        disk::fat_get(&part_now, &format!("/new/{}", name), &got);
        assert_eq!(std::fs::metadata(&got).unwrap().len(), half_bytes, "/new/{}", name);
        assert_eq!(Some(&disk::sha256(&got)), sha.get(&format!("/host/new/{}", name)), "/new/{} on the host partition", name);
        let _ = std::fs::remove_file(&got);
    }
    let decoy = dir.join("decoy-after");
    disk::fat_get(&part_now, &format!("/vm/{}", decoy_name), &decoy);
    assert_eq!(disk::sha256(&decoy), decoy_sha, "the decoy changed");

    // The images, under their own names in a directory of their own (qemu-img finds a parent
    // beside its child): structurally clean, the guest's files in its second partition, fsck.fat
    // clean.
    let after_dir = dir.join("after");
    std::fs::create_dir_all(&after_dir).unwrap();
    let after: Vec<PathBuf> = images
        .iter()
        .map(|(name, _)| {
            let p = after_dir.join(name);
            disk::fat_get(&part_now, &format!("/vm/{}", name), &p);
            p
        })
        .collect();
    let _ = std::fs::remove_file(&part_now);
    structure_check(&after[0], format);
    let raw_after = dir.join("guest-after.raw");
    qemu_img(&["convert", "-O", "raw", after[0].to_str().unwrap(), raw_after.to_str().unwrap()]);
    assert_eq!(file_in_raw(&raw_after, ATTACH_FILE), ATTACH_FILE_TEXT);
    let part2 = dir.join("guest-part2.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&raw_after).unwrap();
        let mut buf = vec![0u8; (guests::PIVOT_GUEST_PART2_MIB << 20) as usize];
        f.read_exact_at(&mut buf, guests::PIVOT_GUEST_PART2_START_LBA * 512).unwrap();
        std::fs::write(&part2, &buf).unwrap();
    }
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part2).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the guest's second partition: {}", String::from_utf8_lossy(&fsck.stdout));
    // PRE.BIN was written before the pivot, under the page cache of the image read through /host.
    for name in ["G1.BIN", "G2.BIN", "PRE.BIN"] {
        let got = dir.join(&format!("guest-{}", name));
        disk::fat_get(&part2, &format!("/{}", name), &got);
        assert_eq!(std::fs::metadata(&got).unwrap().len(), if name == "PRE.BIN" { 4 << 20 } else { half_bytes }, "/{}", name);
        assert_eq!(Some(&disk::sha256(&got)), sha.get(&format!("/g/{}", name)), "/{} in the image", name);
    }
    after
}

#[test]
fn without_vboot_there_is_no_table_to_attach() {
    let dir = TempDir::new("attach-native");
    let raw = guests::build_attach_guest(&dir.path, "vda1");
    let out = run_guest(&raw);
    assert!(out.contains("ATTACH-FAILED: vboot-attach --info"), "{}", out);
    assert!(out.contains("no vboot hand-off table") && out.contains("this boot did not go through vboot"), "{}", out);
}

#[test]
fn linux_finds_a_gpt_host_disk_by_its_guid() {
    let dir = TempDir::new("attach-gpt");
    let image = guest_image(&dir, "vpc", "subformat=dynamic", "guest.vhd", "vda2");
    // A GPT host: BIOS boot partition for vboot, the images on partition 2 (FAT32).
    let host = dir.join("gpt-host.img");
    disk::blank(&host, 160);
    disk::sgdisk(&host, &["-a", "1", "-n", "1:34:2047", "-t", "1:ef02", "-n", "2:2048:0", "-t", "2:0700"]);
    let sectors = 160 * 2048 - 34 - 2048 + 1;
    let part = dir.join("p2.img");
    let cfg = "set timeout=0\nmenuentry 'linux in an image' {\n    vboot harddisk=/vm/guest.vhd\n}\n";
    disk::fat_volume(&part, sectors, 32, &[disk::FileSpec::new("/boot/grub/grub.cfg", cfg)]);
    sh(Command::new("mmd").arg("-i").arg(&part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&part, "/vm/guest.vhd", &std::fs::read(&image).unwrap(), 3);
    disk::write_at(&host, 2048, &part);
    let (ok, msg) = vboot_tests::vboot_install(&["install", host.to_str().unwrap()]);
    assert!(ok, "{}", msg);
    let out = run_guest(&host);
    assert_guest_steps(&out, "normal");
    assert!(out.contains("host disk GPT ") && out.contains("partition 2 ("), "{}", out);
    let part_now = dir.join("p2-after.img");
    disk::partition_of(&host, sectors, &part_now);
    let after = dir.join("after-guest.vhd");
    disk::fat_get(&part_now, "/vm/guest.vhd", &after);
    structure_check(&after, "vpc");
    check_guest_files(&dir, &after);
}

/// The image on the second disk, `(hd1,1)`, vboot on the first: the hand-off table names the
/// second disk (its MBR signature, its size, BIOS drive 0x81 as the BIOS numbered it before the
/// hook), vboot-attach finds it as /dev/vdb and refuses while /dev/vdb1 is mounted; the writes
/// land in the file on the second disk.
#[test]
fn linux_attaches_an_image_on_the_second_disk() {
    let dir = TempDir::new("attach-second-disk");
    let image = guest_image(&dir, "vpc", "subformat=dynamic", "guest.vhd", "vdb1");
    let cfg = "set timeout=0\nmenuentry 'linux in an image' {\n    vboot harddisk=(hd1,1)/vm/guest.vhd\n}\n";
    let host = vboot_host(&dir, 64, cfg, &[]);
    let data_dir = TempDir::new("attach-second-disk-data");
    let data_mib = 128;
    let sectors = data_mib * 2048 - 2048;
    let part = data_dir.join("part.img");
    disk::fat_volume(&part, sectors, 32, &[]);
    sh(Command::new("mmd").arg("-i").arg(&part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&part, "/vm/guest.vhd", &std::fs::read(&image).unwrap(), 3);
    let data = disk::disk_from_partition(&data_dir, &part, data_mib);
    let signature = u32::from_le_bytes(std::fs::read(&data).unwrap()[440..444].try_into().unwrap());
    let boot_disk_before = disk::sha256(&host.disk);

    let mut cfg = Config::disk(&host.disk);
    cfg.drives.push(vboot_tests::qemu::Drive::virtio(&data));
    cfg.x86_64 = true;
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    let status = q.wait_exit(T);
    let out = q.output();
    assert_eq!(status, Some(EXIT_PASS), "the guest did not end through isa-debug-exit:\n{}", out);
    assert_guest_steps(&out, "normal");
    let host_line = format!("host disk MBR signature {:08x} ({} sectors, BIOS 0x81), partition 1 ({} sectors at 2048, FAT)", signature, data_mib * 2048, sectors);
    assert!(out.contains(&host_line), "the table does not name the second disk ({}):\n{}", host_line, out);

    let part_now = data_dir.join("part-after.img");
    disk::partition_of(&data, sectors, &part_now);
    let after = dir.join("after-guest.vhd");
    disk::fat_get(&part_now, "/vm/guest.vhd", &after);
    structure_check(&after, "vpc");
    check_guest_files(&dir, &after);
    assert_eq!(disk::sha256(&host.disk), boot_disk_before, "the boot disk changed; the image is on the second disk");
}

/// The demo of issue 9, also run by `cargo xtask demo-debian` (it needs root for the chroot and
/// downloads Debian with debootstrap once, into target/guest-cache; about 3 minutes):
/// [`debian_in_a_vhd`] with initramfs-tools, `update-initramfs -u` putting vboot-attach and the
/// package's hook and local-top script into the initramfs.
#[test]
fn debian_installed_in_a_vhd_boots_to_a_login_prompt() {
    debian_in_a_vhd(DebianInitramfs::Tools, RootDevice::Nbd);
}

/// The same Debian with `vboot.direct=1` and its root filesystem named by its device-mapper
/// device (`root=/dev/mapper/vboot-nbd0p2`, and so in fstab): the package's local-top script
/// loads dm-mod and attaches with `--direct`, udev and systemd run on a root whose in-place
/// sectors go straight to the host disk, the host partition cannot be mounted beside it (the
/// table holds it), and systemd powers off; the host finds the file in the VHD and e2fsck finds the
/// filesystem clean.
#[test]
fn debian_with_its_root_on_the_direct_device_boots_to_a_login_prompt() {
    debian_in_a_vhd(DebianInitramfs::Tools, RootDevice::Direct);
}

/// Which device the Debian's root filesystem is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootDevice {
    /// /dev/nbd0p2: vboot-attach's NBD device.
    Nbd,
    /// /dev/mapper/vboot-nbd0p2: `vboot.direct=1`.
    Direct,
}

/// The same Debian with Debian's `dracut` package instead of initramfs-tools: the vboot
/// package's dracut module (tools/attach/dracut/90vboot-attach) is in the initramfs `dracut -f
/// --regenerate-all` makes, and systemd's initramfs attaches the image from dracut's initqueue.
/// Run by `cargo xtask demo-debian --dracut`: dracut takes minutes here (a generic initramfs),
/// too long for every `cargo xtask test`.
#[test]
#[ignore = "Debian with dracut: minutes of dracut under TCG; run by `cargo xtask demo-debian --dracut`"]
fn debian_with_dracut_in_a_vhd_boots_to_a_login_prompt() {
    debian_in_a_vhd(DebianInitramfs::Dracut, RootDevice::Nbd);
}

/// Debian bookworm (a cached debootstrap, [`guests::debian_rootfs_tarball`]) with the vboot
/// package installed by `dpkg -i` and its initramfs made by `initramfs`, in a dynamic VHD booted
/// through vboot with `root=/dev/nbd0p2`, to a login prompt; root logs in, mounts the host
/// partition read-only and pivots (`vboot-attach --pivot`, the server started in the initramfs),
/// writes a file onto the host partition, shows the root mount and the command line, writes a
/// file and powers off through systemd; the host finds both files (the first on the host
/// partition, the second in the VHD) and e2fsck finds the root filesystem clean.
fn debian_in_a_vhd(initramfs: DebianInitramfs, root_device: RootDevice) {
    let started = std::time::Instant::now();
    let dracut = initramfs == DebianInitramfs::Dracut;
    let direct = root_device == RootDevice::Direct;
    let root_dev = if direct { "/dev/mapper/vboot-nbd0p2" } else { "/dev/nbd0p2" };
    let root_args = if direct { "root=/dev/mapper/vboot-nbd0p2 vboot.direct=1" } else { "root=/dev/nbd0p2 vboot.attach=1" };
    let dir = TempDir::new(if dracut { "attach-debian-dracut" } else if direct { "attach-debian-direct" } else { "attach-debian" });
    let tarball = guests::debian_rootfs_tarball(initramfs);
    eprintln!("demo: root filesystem ready after {:?}", started.elapsed());
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    sh(Command::new("tar").arg("-C").arg(&root).arg("-xf").arg(&tarball));

    // vboot as a Debian user installs it: the package (vboot-attach, the initramfs-tools hook and
    // script, the dracut module), then update-initramfs or dracut below. Nothing is copied in by
    // hand.
    let deb = vboot_tests::debian_package();
    std::fs::copy(&deb, root.join("tmp/vboot.deb")).unwrap();
    sh(Command::new("chroot").arg(&root).args(["dpkg", "-i", "/tmp/vboot.deb"]));
    std::fs::remove_file(root.join("tmp/vboot.deb")).unwrap();
    let installed = sh(Command::new("chroot").arg(&root).args(["dpkg-query", "-W", "-f", "${Status} ${Version}", "vboot"]));
    assert!(installed.starts_with("install ok installed"), "{}", installed);
    std::fs::write(root.join("etc/fstab"), format!("{} / ext4 errors=remount-ro 0 1\n", root_dev)).unwrap();
    std::fs::write(root.join("etc/hostname"), "vboot-debian\n").unwrap();
    sh(Command::new("chroot").arg(&root).args(["passwd", "-d", "root"]));
    let make_initramfs: &[&str] =
        if dracut { &["dracut", "-f", "--regenerate-all"] } else { &["update-initramfs", "-u", "-k", "all"] };
    let (ok, said) = guests::chroot_with_proc(&root, make_initramfs);
    assert!(ok, "{} failed:\n{}", make_initramfs[0], said);
    assert!(!said.contains("vboot-attach not found"), "the package's hook did not find vboot-attach:\n{}", said);
    eprintln!("demo: initramfs made by {} after {:?}", make_initramfs[0], started.elapsed());
    let boot_file = |prefix: &str| {
        std::fs::read_dir(root.join("boot"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no /boot/{}*", prefix))
    };
    let (vmlinuz, initrd) = (boot_file("vmlinuz-"), boot_file("initrd.img-"));
    if dracut {
        // The module is in: the binary, the attach script, the cmdline hook, nbd.ko, and the
        // flag that makes systemd's initramfs run the initqueue.
        let rel = format!("/boot/{}", initrd.file_name().unwrap().to_str().unwrap());
        let listing = sh(Command::new("chroot").arg(&root).args(["lsinitrd", &rel]));
        for want in [
            "usr/sbin/vboot-attach",
            "usr/sbin/vboot-attach-dracut",
            "hooks/cmdline/90-parse-vboot-attach.sh",
            "kernel/drivers/block/nbd.ko",
            "usr/lib/dracut/need-initqueue",
        ] {
            assert!(listing.contains(want), "the dracut initramfs has no {}:\n{}", want, listing);
        }
    } else {
        let listing = sh(Command::new("sh").arg("-c").arg(format!("zcat -f '{}' | cpio -t 2>/dev/null || true", initrd.display())));
        eprintln!("demo: initramfs has vboot-attach: {}", listing.contains("sbin/vboot-attach"));
    }

    // The guest disk: SYSLINUX on a FAT16 /boot at 1 MiB, the root filesystem (ext4) after it.
    let boot_mib = 128u64;
    let root_mib = 1400u64;
    let raw = dir.join("debian.img");
    disk::blank(&raw, 1 + boot_mib + root_mib);
    disk::sfdisk(&raw, &format!("label: dos\nstart=2048, size={}, type=6, bootable\nstart={}, type=83\n", boot_mib * 2048, 2048 + boot_mib * 2048));
    let cfg = format!("SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {} console=ttyS0 panic=-1\n", root_args);
    let p1 = dir.join("p1.img");
    disk::fat_volume(
        &p1,
        boot_mib * 2048,
        16,
        &[
            disk::FileSpec::new("/vmlinuz", std::fs::read(&vmlinuz).unwrap()),
            disk::FileSpec::new("/initrd.img", std::fs::read(&initrd).unwrap()),
            disk::FileSpec::new("/syslinux.cfg", cfg.as_str()),
        ],
    );
    sh(Command::new("syslinux").arg("--install").arg(&p1));
    disk::write_at(&raw, 2048, &p1);
    let p2 = dir.join("p2.img");
    sh(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&root).arg(&p2).arg(format!("{}M", root_mib)));
    disk::write_at(&raw, 2048 + boot_mib * 2048, &p2);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&p2);
    disk::write_mbr_code(&raw, &std::fs::read("/usr/lib/syslinux/mbr/mbr.bin").unwrap());
    let vhd = dir.join("debian.vhd");
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw.to_str().unwrap(), vhd.to_str().unwrap()]);
    let _ = std::fs::remove_file(&raw);
    sh(Command::new(vdisk_bin()).arg("reserve").arg(&vhd).arg("128M"));
    eprintln!("demo: VHD ready ({} MiB) after {:?}", std::fs::metadata(&vhd).unwrap().len() >> 20, started.elapsed());

    let cfg = "set timeout=0\nmenuentry 'Debian in a VHD' {\n    vboot harddisk=/debian.vhd\n}\n";
    let host = vboot_host(&dir, 2048, cfg, &[vboot_tests::HostImage { path: "/debian.vhd", file: &vhd, pieces: 3 }]);
    let _ = std::fs::remove_file(&vhd);
    let mut qcfg = Config::disk(&host.disk);
    qcfg.x86_64 = true;
    qcfg.memory_mib = 1024;
    let boot_at = std::time::Instant::now();
    let mut q = Qemu::start(&qcfg);
    q.expect("vboot-debian login:", Duration::from_secs(900));
    eprintln!("demo: login prompt {:?} after QEMU started", boot_at.elapsed());
    let mark = q.mark();
    q.send(b"root\n");
    q.expect_from(mark, "#", Duration::from_secs(120));
    // The pivot after switch-root, from the real root, with the server started in the initramfs
    // (its root is the old one; the control socket is abstract and the files are passed as
    // descriptors): the host partition mounted read-only, pivoted, then written.
    if direct {
        // The host partition cannot even be mounted read-only while the table holds it (so no
        // pivot: attach without --direct for that); the dm device's slaves are the NBD device
        // and the host partition.
        q.send(b"mkdir -p /mnt/host ; mount -o ro /dev/vda1 /mnt/host ; echo mount-rc=$? ; for d in /sys/block/dm-*; do echo \"DM $(cat $d/dm/name) slaves: $(ls $d/slaves | tr '\\n' ' ')\"; done ; findmnt -n -o SOURCE / ; cat /proc/cmdline ; echo debian-was-here > /root/hello.txt ; sync ; systemctl poweroff\n");
    } else {
        q.send(b"mkdir -p /mnt/host && mount -o ro /dev/vda1 /mnt/host && vboot-attach --pivot /mnt/host/debian.vhd ; echo pivot-rc=$? ; echo host-was-here > /mnt/host/HOST.TXT ; findmnt -n -o SOURCE / ; cat /proc/cmdline ; echo debian-was-here > /root/hello.txt ; sync ; systemctl poweroff\n");
    }
    let status = q.wait_exit(Duration::from_secs(300));
    let out = q.output();
    eprintln!("demo: QEMU ended with {:?} {:?} after it started", status, boot_at.elapsed());
    let shown = out.get(mark..).unwrap_or("");
    for l in shown.lines().filter(|l| l.contains("vboot-attach") || l.starts_with("pivot-rc") || l.contains("/mnt/host")) {
        eprintln!("guest: {}", l);
    }
    assert!(shown.contains(&format!("\n{}", root_dev)), "the root filesystem is not on {}:\n{}", root_dev, out);
    assert!(shown.contains(root_args), "no kernel command line shown:\n{}", out);
    if direct {
        assert!(shown.contains("mount-rc=32") || shown.contains("mount-rc=1"), "the host partition was mounted beside the table:\n{}", out);
        let slaves = shown.lines().find(|l| l.starts_with("DM vboot-nbd0p2 slaves:")).unwrap_or_else(|| panic!("no dm device for the root:\n{}", out));
        assert!(slaves.contains("vda1"), "the root's dm device does not send sectors to the host partition: {}", slaves);
    } else {
        assert!(shown.contains("now serves /debian.vhd through the host filesystem (the leaf read-write;") && shown.contains("pivot-rc=0"), "no pivot:\n{}", out);
    }
    if dracut {
        // systemd's status line from dracut's initramfs: the initqueue that ran the attach.
        assert!(out.contains("dracut initqueue hook"), "not dracut's initramfs:\n{}", out);
    }

    // The host reads the file out of the VHD; the root filesystem is clean.
    let part_now = host.current_partition(&dir.join("host-part-after.img"));
    let vhd_after = dir.join("debian-after.vhd");
    disk::fat_get(&part_now, "/debian.vhd", &vhd_after);
    if !direct {
        let host_file = dir.join("host-after.txt");
        disk::fat_get(&part_now, "/HOST.TXT", &host_file);
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host-was-here\n", "the file written onto the host partition after the pivot");
    }
    // systemd unmounted the host partition once the server had ended (after the root filesystem).
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part_now).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the host partition: {}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
    let _ = std::fs::remove_file(&part_now);
    let raw_after = dir.join("debian-after.img");
    qemu_img(&["convert", "-O", "raw", vhd_after.to_str().unwrap(), raw_after.to_str().unwrap()]);
    let bytes = std::fs::read(&raw_after).unwrap();
    let from = ((2048 + boot_mib * 2048) * 512) as usize;
    std::fs::write(&p2, &bytes[from..from + (root_mib << 20) as usize]).unwrap();
    drop(bytes);
    let cat = sh(Command::new("debugfs").arg("-R").arg("cat /root/hello.txt").arg(&p2));
    assert!(cat.contains("debian-was-here"), "{}", cat);
    let fsck = Command::new("e2fsck").args(["-f", "-n"]).arg(&p2).output().unwrap();
    assert!(fsck.status.success(), "e2fsck -f -n: {}", String::from_utf8_lossy(&fsck.stdout));
    eprintln!("demo: done in {:?}", started.elapsed());
}

/// A live CD finds its medium: an ISOLINUX CD (xorriso) booting Debian's kernel, with a floppy
/// image (mkfs.fat) beside it and no hard disk, booted through vboot with `cdrom=` and `floppy=`.
/// Its initramfs serves the CD with `vboot-attach --drive cdrom` and Linux's iso9660 driver reads
/// its files; the device is read-only. `--drive floppy` serves the floppy, which vfat reads and
/// writes; the host finds the new file in the image and fsck.fat finds it clean. Without
/// `--drive` the CD is served (no hard disk); `--all` serves both
/// (`guests::build_attach_live_cd` lists the steps).
#[test]
fn a_live_cd_finds_its_medium_and_its_floppy() {
    let dir = TempDir::new("attach-live-cd");
    let big = guests::pseudo_random_bytes(300_000, 41);
    let iso = guests::build_attach_live_cd(&dir.path, ("/vboot/big.bin", &big));
    let floppy = dir.join("a.img");
    disk::fat_volume(&floppy, 2880, 12, &[disk::FileSpec::new(guests::LIVE_FLOPPY_FILE, guests::LIVE_FLOPPY_TEXT)]);
    let iso_sha = disk::sha256(&iso);
    let cfg = "set timeout=0\nmenuentry 'live CD' {\n    vboot cdrom=/live.iso floppy=/a.img boot=cdrom\n}\n";
    let images = [HostImage { path: "/live.iso", file: &iso, pieces: 3 }, HostImage { path: "/a.img", file: &floppy, pieces: 2 }];
    let host = vboot_host(&dir, 160, cfg, &images);
    let out = run_guest(&host.disk);
    for l in out.lines().filter(|l| l.starts_with("STEP") || l.contains("vboot-attach") || l.starts_with("drive ") || l.contains("-ON ")) {
        eprintln!("guest: {}", l);
    }
    assert!(!out.contains("ATTACH-FAILED"), "{}", out);
    assert!(out.contains(ATTACH_OK), "{}", out);
    // --info lists both drives, with what the tool does with writes.
    assert!(out.contains("drive 0xe0 CD-ROM /live.iso, ") && out.contains("served read-only (a CD)"), "{}", out);
    assert!(out.contains("drive 0x00 floppy /a.img, 1.41 MiB (1474560 bytes), writes normal, served read-write"), "{}", out);
    // The CD: the ISO's whole 2048-byte blocks, read-only; read through iso9660.
    let iso_bytes = std::fs::metadata(&iso).unwrap().len() / 2048 * 2048;
    assert!(out.contains(&format!("CD-ON /dev/nbd0 ro=1 bytes={}", iso_bytes)), "{}", out);
    assert!(out.contains("CD-READ-OK") && out.contains("CD-WRITE-REFUSED") && out.contains("FLOPPY-OK"), "{}", out);
    assert!(out.contains("FLOPPY-ON /dev/nbd0 ro=0"), "{}", out);
    // No hard disk: the default is the table's first drive, the CD.
    assert!(out.contains(&format!("DEFAULT-ON /dev/nbd0 bytes={}", iso_bytes)), "{}", out);
    assert!(out.contains("the hand-off table has no drive 0x80 (it has 0xe0 CD-ROM /live.iso, 0x00 floppy /a.img)"), "{}", out);
    assert!(out.contains("ALL-ON /dev/nbd0 /dev/nbd1"), "{}", out);

    let part_now = host.current_partition(&dir.join("part-after.img"));
    let iso_after = dir.join("live-after.iso");
    disk::fat_get(&part_now, "/live.iso", &iso_after);
    assert_eq!(disk::sha256(&iso_after), iso_sha, "the ISO changed");
    let floppy_after = dir.join("a-after.img");
    disk::fat_get(&part_now, "/a.img", &floppy_after);
    let new = sh(Command::new("mtype").arg("-i").arg(&floppy_after).arg(format!("::{}", guests::LIVE_FLOPPY_NEW_FILE)).env("MTOOLS_SKIP_CHECK", "1"));
    assert_eq!(new, guests::LIVE_FLOPPY_NEW_TEXT);
    let fsck = Command::new("fsck.fat").arg("-n").arg(&floppy_after).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the floppy: {}", String::from_utf8_lossy(&fsck.stdout));
}

/// `immutable`'s one throwaway layer, from the BIOS to Linux: a write a boot loader makes through
/// INT 13h before the kernel starts is seen by Linux under vboot-attach, because both write into
/// the same throwaway child; at the next start it is gone. The guest's MBR
/// (tests/guest-probe/mbrwrite.s) reports whether its marker sector already holds the marker,
/// writes it through INT 13h and starts SYSLINUX; Linux attaches the disk and prints that sector
/// as /dev/nbd0 holds it. qemu-img reads the marker out of the child after the first boot; the
/// image itself never changes. (Mutation-checked: with the engine's RAM overlay instead of the
/// child, Linux reads zeros there.)
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
    let saw = format!("LINUX-SAW {}", guests::MBR_MARK);

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
    let at = guests::MBR_MARK_LBA as usize * 512;
    assert_eq!(&bytes[at..at + guests::MBR_MARK.len()], guests::MBR_MARK.as_bytes(), "the child does not hold the MBR's write");

    // Second start: the child was emptied, so the sector is as the image has it again.
    let out = run_guest(&host.disk);
    assert!(out.contains("MBR-MARK-NONE"), "the write of the first start survived it:\n{}", out);
    assert!(!out.contains("MBR-MARK-SEEN"), "{}", out);
    assert!(out.contains(&saw), "{}", out);
    let part_now = host.current_partition(&dir.join("part-after-2.img"));
    disk::fat_get(&part_now, "/vm/guest.vmdk", &look.join("guest.vmdk"));
    assert_eq!(disk::sha256(&look.join("guest.vmdk")), sha, "the immutable image changed");
}

/// `vboot-attach --direct` (issue 18): Linux, booted through vboot from a dynamic VHD on a FAT32
/// host partition, gets /dev/mapper/vboot-nbd0 and vboot-nbd0p1, whose tables send the VHD's
/// allocated blocks straight to the host partition and the rest through /dev/nbd0
/// (`guests::build_attach_direct_guest` lists every step). In the guest: the dm devices' slaves
/// are the host partition and the NBD device, and reading the whole disk through the dm device
/// reads most of it from the host disk (the test fails if everything went through NBD); a
/// rewrite in place, a new small file and a 3 MiB file of random bytes (new blocks, through
/// NBD) read back after a remount. On the host: vhdiinfo and `vdisk check` clean, the files
/// read out of the image by qemu-img and mtools with the SHA-256 the guest printed, fsck.fat
/// clean on the guest's partition and on the host partition, new blocks came out of the slack.
#[test]
fn direct_maps_the_vhd_blocks_onto_the_host_disk_and_the_rest_through_nbd() {
    direct_scenario("attach-direct", "vpc", "subformat=dynamic", "guest.vhd", true);
}

/// [`direct_maps_the_vhd_blocks_onto_the_host_disk_and_the_rest_through_nbd`] with a VMDK, whose
/// grains are in place only once the first write changed the CID: `--direct` makes it at attach.
#[test]
fn direct_maps_the_vmdk_grains_once_the_cid_changed() {
    let out = direct_scenario("attach-direct-vmdk", "vmdk", "subformat=monolithicSparse", "guest.vmdk", false);
    assert!(out.contains("the VMDK leaf's CID changed now"), "{}", out);
}

/// The `--direct` guest booted from `name` (the guest converted to `format` with `options`, 8 MiB
/// of slack) and every check; with `cd`, the entry has an ISO too (`cdrom=`), which the guest
/// attaches with `--direct` as well. Gives the guest's output.
fn direct_scenario(tag: &str, format: &str, options: &str, name: &str, cd: bool) -> String {
    let dir = TempDir::new(tag);
    let raw = guests::build_attach_direct_guest(&dir.path, "vda1");
    let image = dir.join(name);
    qemu_img(&["convert", "-f", "raw", "-O", format, "-o", options, raw.to_str().unwrap(), image.to_str().unwrap()]);
    sh(Command::new(vdisk_bin()).arg("reserve").arg(&image).arg("8M"));
    let slack_before = slack_bytes(&image);
    let cd_args = if cd { " cdrom=/vm/data.iso" } else { "" };
    let cfg = format!("set timeout=0\nmenuentry 'linux in an image' {{\n    vboot harddisk=/vm/{} reserve=0{}\n}}\n", name, cd_args);
    let host = vboot_host(&dir, 160, &cfg, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&host.part, &format!("/vm/{}", name), &std::fs::read(&image).unwrap(), 3);
    let cd_bytes = guests::pseudo_random_bytes(24 << 20, 180);
    if cd {
        let tree = dir.join("cd-tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join(guests::DIRECT_CD_FILE.trim_start_matches('/')), &cd_bytes).unwrap();
        let iso = guests::make_iso(&tree, &dir.join("data.iso"), &[]);
        disk::put_fragmented(&host.part, "/vm/data.iso", &std::fs::read(&iso).unwrap(), 2);
    }
    disk::write_at(&host.disk, 2048, &host.part);
    let out = run_guest(&host.disk);
    for l in out.lines().filter(|l| l.starts_with("STEP") || l.starts_with("READ-") || l.starts_with("DM") || l.starts_with("NO-DM") || l.contains("vboot-attach") || l.starts_with("SHA")) {
        eprintln!("guest: {}", l);
    }
    assert!(!out.contains("ATTACH-FAILED"), "{}", out);
    assert!(out.contains(guests::DIRECT_OK), "{}", out);
    // Without dm-mod: the NBD device kept, and said so.
    assert!(out.contains("--direct failed: opening /dev/mapper/control") && out.contains("/dev/nbd0 is attached without it"), "{}", out);
    assert!(out.contains("--direct: /dev/vda1 is mounted on /host"), "no refusal with the host partition mounted:\n{}", out);
    assert!(out.contains("Begin: Attaching the vboot disk 0x80") && out.contains("LOCAL-TOP-DIRECT-OK"), "{}", out);
    // Both dm devices sit on the host partition and the NBD device, read-write, then read-only.
    for (prefix, ro) in [("DM", 0), ("DM-RO", 1)] {
        for name in ["vboot-nbd0", "vboot-nbd0p1"] {
            let line = format!("{} {} slaves: nbd0 vda1 ro={}", prefix, name, ro);
            assert!(out.contains(&line), "no `{}`:\n{}", line, out);
        }
    }
    // The whole disk read (five times) through the dm device: most of it from the host disk.
    let direct = out.lines().find(|l| l.starts_with("READ-DIRECT ")).expect("READ-DIRECT");
    let field = |l: &str, k: &str| -> f64 { l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{}=", k))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} in {}", k, l)) };
    let (host_sectors, nbd_sectors) = (field(direct, "host-sectors"), field(direct, "nbd-sectors"));
    // "/dev/mapper/vboot-nbd0 (253:0): N of M sectors straight to /dev/vda1, ..."
    let whole = out.lines().find_map(|l| l.strip_prefix("vboot-attach: /dev/mapper/vboot-nbd0 (")).expect("the whole disk's table in the output");
    let words: Vec<&str> = whole.split_whitespace().collect();
    let (planned, disk_sectors): (f64, f64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert!(planned > disk_sectors / 2.0, "only {} of the disk's sectors go direct:\n{}", planned, out);
    assert!(host_sectors >= 5.0 * planned && host_sectors + nbd_sectors == 5.0 * disk_sectors, "the dm device read {} sectors from the host disk and {} through NBD, {} planned direct:\n{}", host_sectors, nbd_sectors, planned, out);
    let secs = |tag: &str| {
        let l = out.lines().find(|l| l.starts_with(tag)).unwrap_or_else(|| panic!("no {}", tag));
        field(l, "to") - field(l, "from")
    };
    eprintln!("read {} MiB: native {:.2} s, --direct {:.2} s, /dev/nbd0 {:.2} s", field(direct, "mib"), secs("READ-NATIVE "), secs("READ-DIRECT "), secs("READ-NBD "));
    assert!(out.contains("CLAIMED-OK"), "{}", out);
    assert!(out.contains("in use (mounted?): unmount first; nothing was detached"), "no refusal of --detach while mounted:\n{}", out);
    assert!(out.contains("removed /dev/mapper/vboot-nbd0p1, /dev/mapper/vboot-nbd0") && out.contains("/dev/nbd0 detached"), "{}", out);
    let rewritten = format!("{}{}", guests::DIRECT_REWRITE, &ATTACH_FILE_TEXT[guests::DIRECT_REWRITE.len()..]);
    assert!(out.contains(&format!("REREAD {} {}", ATTACH_FILE, rewritten)), "{}", out);
    let sha_of = |tag: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{} {} ", tag, guests::DIRECT_RANDOM_FILE))).map(|h| h.trim().to_string()).unwrap_or_else(|| panic!("no {}:\n{}", tag, out));
    // The blocks the random file allocated through NBD went direct once the server loaded the
    // tables again: it was read back from the host disk.
    let reloaded = out.lines().filter(|l| l.contains("--direct: /dev/mapper/vboot-nbd0 loaded again: ")).last().unwrap_or_else(|| panic!("the tables were not loaded again:\n{}", out));
    let after_reload: f64 = reloaded.split("loaded again: ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(after_reload > planned, "{}", reloaded);
    let rand_host: f64 = out.lines().find_map(|l| l.strip_prefix("RAND-HOST-SECTORS ")).and_then(|n| n.trim().parse().ok()).expect("RAND-HOST-SECTORS");
    assert!(rand_host >= (guests::DIRECT_RANDOM_BYTES / 512) as f64, "{} read back with {} sectors from the host disk", guests::DIRECT_RANDOM_FILE, rand_host);
    let sha = sha_of("SHA");
    assert_eq!(sha, sha_of("SHA-WRITTEN"), "the random file read back differs from what was written");
    if cd {
        // The ISO wholly in place: a read-only table on the host partition alone.
        assert!(out.contains("DM-CD vboot-nbd0 slaves: vda1 ro=1"), "{}", out);
        let cd_file = dir.join("cd-file.bin");
        std::fs::write(&cd_file, &cd_bytes).unwrap();
        let want = format!("SHA-CD {} {}", guests::DIRECT_CD_FILE, disk::sha256(&cd_file));
        assert!(out.contains(&want), "no `{}`:\n{}", want, out);
        // `--all --direct`: a device-mapper device for each drive, the disk's partition readable.
        assert!(out.contains("ALL-ON /dev/mapper/vboot-nbd0 /dev/mapper/vboot-nbd1") && out.contains("ALL-DIRECT-OK"), "{}", out);
        eprintln!("read {} MiB of the CD: native {:.2} s, --direct {:.2} s", field(out.lines().find(|l| l.starts_with("READ-CD-DIRECT ")).unwrap(), "mib"), secs("READ-CD-NATIVE "), secs("READ-CD-DIRECT "));
    }
    let fill_sha = out.lines().find_map(|l| l.strip_prefix(&format!("SHA {} ", guests::DIRECT_FILL_FILE))).map(|h| h.trim().to_string());
    let fill = dir.join("fill.bin");
    std::fs::write(&fill, guests::pseudo_random_bytes(guests::DIRECT_FILL_BYTES, 18)).unwrap();
    assert_eq!(fill_sha, Some(disk::sha256(&fill)), "{} read through the dm device differs", guests::DIRECT_FILL_FILE);

    // The host: the partition clean, the image clean and holding the guest's files.
    let part_now = host.current_partition(&dir.join("part-after.img"));
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part_now).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the host partition: {}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
    let after = dir.join(&format!("after-{}", name));
    disk::fat_get(&part_now, &format!("/vm/{}", name), &after);
    structure_check(&after, format);
    assert!(slack_bytes(&after) < slack_before, "no block was allocated from the slack");
    let raw_after = dir.join("guest-after.raw");
    qemu_img(&["convert", "-O", "raw", after.to_str().unwrap(), raw_after.to_str().unwrap()]);
    assert_eq!(file_in_raw(&raw_after, ATTACH_FILE), rewritten);
    assert_eq!(file_in_raw(&raw_after, ATTACH_NEW_FILE), ATTACH_NEW_TEXT);
    let part = dir.join("guest-part.img");
    disk::partition_of(&raw_after, 48 * 2048 - 2048, &part);
    let random = dir.join("rand-after.bin");
    disk::fat_get(&part, guests::DIRECT_RANDOM_FILE, &random);
    assert_eq!(std::fs::metadata(&random).unwrap().len(), guests::DIRECT_RANDOM_BYTES as u64);
    assert_eq!(disk::sha256(&random), sha, "{} in the image differs from what the guest wrote", guests::DIRECT_RANDOM_FILE);
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat -n on the guest's partition: {}", String::from_utf8_lossy(&fsck.stdout));
    out
}
