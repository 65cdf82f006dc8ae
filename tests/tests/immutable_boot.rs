//! `immutable` through a throwaway differencing child on disk (issue 17): the guest writes more
//! than the old 64 MiB RAM overlay could hold and reads it back, the next start finds the disk as
//! it was, and the parents never change. On FAT stage2 makes the child at the first immutable
//! boot; on NTFS a child made by `vdisk immutable-child` is emptied and reused, and without one
//! the screen says how to make it and offers the RAM overlay.
//!
//! The guest is the chain guest (tests/guest-probe/chainer.s): it hashes the whole disk before
//! and after its writes, so each boot shows both what the disk held at the start and that the
//! writes read back. Oracles: the test's own model of the disk, qemu-img (VMDK children) and
//! vdisk (VHD and VDI children, which qemu does not read), fsck.fat, sha256 of the parents.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ChainConfig, WriteRun, CHAIN_HASH_AFTER, CHAIN_HASH_BEFORE};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::rig::{menu, Rig};
use vboot_tests::{disk, sh, TempDir};

const MIB: u64 = 1 << 20;
/// The guest's disk: 72 MiB, so that its writes (66 MiB) and the hashes fit.
const SECTORS: u64 = 72 * 2048;
/// A boot of the small guest.
const T: Duration = Duration::from_secs(180);
/// A boot that writes 66 MiB: every new block or grain goes through the engine's image layer,
/// its zeros from the guest's lent buffer (docs/int13.md): about 20 s under TCG per format.
const T_BIG: Duration = Duration::from_secs(600);

/// 2112 writes of 64 sectors from 2 MiB on: 66 MiB, more than the RAM overlay's 64 MiB (which
/// also holds its index), in whole VHD blocks; then the disk hashed.
fn big_writes() -> ChainConfig {
    ChainConfig { flags: CHAIN_HASH_AFTER, tag: 0x1717, runs: vec![WriteRun { lba: 4096, writes: 2112, stride: 64, sectors: 64 }] }
}


/// The guest's configuration sector (LBA 1) in the file `image`, found with `vdisk map`:
/// replaced by `cfg`, in place, as a host tool writing the parent's data would (its identity,
/// which the child records, stays).
fn patch_config_sector(image: &Path, cfg: &ChainConfig) {
    // Lines: start_sector sectors layer file_offset file; the first run must be data from sector 0.
    let map = sh(Command::new(vboot_tests::vdisk_bin()).arg("map").arg(image));
    let first: Vec<&str> = map.lines().nth(1).unwrap_or("").split_whitespace().collect();
    let offset = match first[..] {
        ["0", sectors, "0", offset, ..] if sectors.parse::<u64>().unwrap() > guests::CHAIN_CONFIG_LBA => offset.parse::<u64>().unwrap(),
        _ => panic!("{}: sector 0 is not allocated data in the file:\n{}", image.display(), map),
    };
    let at = offset + guests::CHAIN_CONFIG_LBA * 512;
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&cfg.to_sector()).unwrap();
}

/// A raw disk of `sectors` with the chain guest at LBA 0 (configuration `cfg`) and a pattern in
/// a few places after it (so the parent is not all zeros where the guest writes).
fn guest_raw(dir: &Path, sectors: u64, cfg: &ChainConfig) -> (PathBuf, Vec<u8>) {
    let code = guests::build_chain_guest(&dir.join("chainer-build"));
    let mut raw = vec![0u8; sectors as usize * 512];
    let head = guests::chain_guest_sectors(&code, cfg);
    raw[..head.len()].copy_from_slice(&head);
    for at in [3 * MIB, sectors * 512 / 2, sectors * 512 - MIB] {
        let at = at as usize;
        raw[at..at + 64 * 1024].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 ^ 0x5A);
    }
    let path = dir.join(format!("guest-{}.img", sectors));
    std::fs::write(&path, &raw).unwrap();
    (path, raw)
}

/// Hash pass `pass` of the guest's output against `want`.
fn assert_pass(out: &str, pass: usize, want: &[u8], what: &str) {
    let passes = guests::hash_passes(out);
    let got = passes.get(pass).unwrap_or_else(|| panic!("{}: no hash pass {} in the output:\n{}", what, pass, out));
    guests::compare_hashes(got, want).unwrap_or_else(|e| panic!("{}: {}", what, e));
}

/// The chain at `leaf` as a raw disk of `SECTORS`: qemu-img for VMDK, vdisk for VHD and VDI.
fn chain_raw(leaf: &Path, via_qemu: bool) -> Vec<u8> {
    chain_raw_sectors(leaf, via_qemu, SECTORS)
}

fn chain_raw_sectors(leaf: &Path, via_qemu: bool, sectors: u64) -> Vec<u8> {
    let out = leaf.with_extension("read.raw");
    let _ = std::fs::remove_file(&out);
    if via_qemu {
        sh(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(leaf).arg(&out));
    } else {
        sh(Command::new(vboot_tests::vdisk_bin()).arg("convert").arg(leaf).arg(&out).args(["--format", "raw"]));
    }
    let mut v = std::fs::read(&out).unwrap();
    v.truncate(sectors as usize * 512);
    let _ = std::fs::remove_file(&out);
    v
}

/// For VHD, VMDK and VDI: two immutable boots from one FAT32 host. Boot 1 makes
/// /vm/base.immutable.EXT, the guest writes 66 MiB and reads them back (its hash of the whole
/// disk afterwards). Between the boots the test turns the guest's configuration in the parent
/// into "hash only" (so boot 2 does not spend minutes writing again); boot 2 then empties the
/// child and the guest's hash is the parent's, without any of boot 1's writes. The parent is
/// byte-identical across each boot, fsck.fat is clean, and the child reads as the parent plus
/// the writes after boot 1 and as the parent after boot 2 (qemu-img check/info/convert for VMDK,
/// vdisk check and convert for VHD and VDI).
#[test]
fn immutable_boots_vhd_vmdk_and_vdi_through_a_throwaway_child_that_holds_more_than_64_mib() {
    // Every format writes the full 66 MiB (about 14 minutes for the three before a write lent
    // its buffer for a new block's zeros; under a minute after). VBOOT_IMMUTABLE_FORMATS=vmdk,vdi
    // runs only those formats.
    for (fmt, opts, ext, qemu_reads_child) in [
        ("vpc", "subformat=dynamic,force_size=on", "vhd", false),
        ("vdi", "static=off", "vdi", false),
        ("vmdk", "subformat=monolithicSparse", "vmdk", true),
    ] {
        if std::env::var("VBOOT_IMMUTABLE_FORMATS").is_ok_and(|only| !only.split(',').any(|f| f == ext)) {
            continue;
        }
        let cfg = big_writes();
        let src = TempDir::new("immutable-src");
        let (raw_path, raw) = guest_raw(&src.path, SECTORS, &cfg);
        let mut written = raw.clone();
        cfg.apply(&mut written);
        // After the patch between the boots: the parent as boot 2 finds it.
        let mut raw2 = raw.clone();
        let at = guests::CHAIN_CONFIG_LBA as usize * 512;
        raw2[at..at + 512].copy_from_slice(&ChainConfig::hash_only().to_sector());
        let base = src.join(&format!("base.{}", ext));
        sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw_path).arg(&base));
        let mut base_sha = disk::sha256(&base);
        // 72 MiB of slack for the 66 MiB of writes (vboot's default would be 256 MiB).
        let entries = [("immutable", format!("harddisk=/vm/base.{} immutable reserve=72M", ext))];
        let rig = Rig::new(&format!("immutable-{}", ext), 160, &menu(&entries), &[(&format!("base.{}", ext), &base)]);
        let child_name = format!("base.immutable.{}", ext);
        for boot in 1..=2 {
            let what = format!("{} boot {}", ext, boot);
            let out = rig.start().boot_from_menu(&rig.last_title, b'1', guests::CHAIN_PASS, if boot == 1 { T_BIG } else { T });
            if boot == 1 {
                assert!(out.contains(&format!("immutable: /vm/{} made, a throwaway {} child of /vm/base.{}", child_name, ext.to_uppercase(), ext)), "{}:\n{}", what, out);
            } else {
                assert!(out.contains(&format!("immutable: /vm/{} emptied", child_name)), "{}:\n{}", what, out);
            }
            assert!(out.contains(&format!("immutable: writes go into /vm/{}", child_name)), "{}:\n{}", what, out);
            assert!(!out.contains("RAM overlay"), "{}: no RAM overlay with a child on disk:\n{}", what, out);
            // Boot 1: the writes read back. Boot 2: the parent, none of boot 1's writes.
            let want = if boot == 1 { &written } else { &raw2 };
            assert_pass(&out, 0, want, &format!("{}: the guest's hash of the disk", what));
            let back = rig.pull();
            assert_eq!(disk::sha256(&back.join(format!("base.{}", ext))), base_sha, "{}: the parent changed", what);
            let part = rig.host.current_partition(&rig.dir.join("part-child.img"));
            let child = back.join(&child_name);
            disk::fat_get(&part, &format!("/vm/{}", child_name), &child);
            if qemu_reads_child {
                vboot_tests::qemu_img_check(&child, &what);
                let info = sh(Command::new("qemu-img").arg("info").arg(&child));
                assert!(info.contains("backing file: base.vmdk"), "{}: qemu-img info:\n{}", what, info);
            } else {
                vboot_tests::vdisk_check(&child, &what);
            }
            assert!(chain_raw(&child, qemu_reads_child) == *want, "{}: the chain does not read as the guest saw it", what);
            if boot == 1 {
                // The parent, with the guest's configuration changed to "hash only", back into
                // the host partition (mcopy gives it new clusters; stage2 opens it afresh).
                let parent = back.join(format!("base.{}", ext));
                patch_config_sector(&parent, &ChainConfig::hash_only());
                base_sha = disk::sha256(&parent);
                sh(Command::new("mcopy").arg("-o").arg("-i").arg(&part).arg(&parent).arg(format!("::/vm/base.{}", ext)).env("MTOOLS_SKIP_CHECK", "1"));
                disk::write_at(&rig.host.disk, 2048, &part);
            }
        }
    }
}

/// The small disk of the NTFS test: 8 MiB, a few writes.
const SMALL_SECTORS: u64 = 8 * 2048;

fn small_writes() -> ChainConfig {
    ChainConfig { flags: CHAIN_HASH_BEFORE | CHAIN_HASH_AFTER, tag: 0x2323, runs: vec![WriteRun { lba: 2048, writes: 8, stride: 1024, sectors: 16 }] }
}

/// A file of the NTFS partition image `part`, copied out with ntfscat.
fn ntfs_get(part: &Path, path: &str, out: &Path) {
    let bytes = Command::new("ntfscat").arg(part).arg(path).output().expect("ntfscat (ntfs-3g)");
    assert!(bytes.status.success(), "ntfscat {}: {}", path, String::from_utf8_lossy(&bytes.stderr));
    std::fs::write(out, &bytes.stdout).unwrap();
}

/// On an NTFS host, where vboot makes no files: a VMDK child made by `vdisk immutable-child`
/// (and written into by qemu-io, as if a boot had) is emptied and takes the guest's writes; the
/// parent stays byte-identical and the child reads as parent plus writes in qemu-img. A VDI
/// without a child gets the message naming `vdisk immutable-child` and the RAM offer: any other
/// key goes back to the menu, R boots with the writes in RAM and the VDI unchanged.
/// `immutable_child=` names a child made with `vdisk immutable-child --child` elsewhere, which is
/// used; naming a file that is not a child of the image is refused with its name.
#[test]
fn immutable_on_ntfs_reuses_the_child_vdisk_made_and_offers_ram_without_one() {
    let dir = TempDir::new("immutable-ntfs");
    let cfg = small_writes();
    let (raw_path, raw) = guest_raw(&dir.path, SMALL_SECTORS, &cfg);
    let mut written = raw.clone();
    cfg.apply(&mut written);
    let base = dir.join("base.vmdk");
    sh(Command::new("qemu-img").args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"]).arg(&raw_path).arg(&base));
    let other = dir.join("other.vdi");
    sh(Command::new("qemu-img").args(["convert", "-O", "vdi", "-o", "static=off"]).arg(&raw_path).arg(&other));
    let made = sh(Command::new(vboot_tests::vdisk_bin()).arg("immutable-child").arg(&base).args(["--reserve", "4M"]));
    assert!(made.contains("is the throwaway child for `immutable`"), "{}", made);
    let child = dir.join("base.immutable.vmdk");
    // Data a previous boot left in the child: the next start must throw it away.
    vboot_tests::qemu_io("vmdk", child.to_str().unwrap(), &["write -q -P 0x55 1M 64k"]);
    let elsewhere = dir.join("elsewhere.vmdk");
    sh(Command::new(vboot_tests::vdisk_bin()).arg("immutable-child").arg(&base).arg("--child").arg(&elsewhere).args(["--reserve", "4M"]));
    let (base_sha, other_sha) = (disk::sha256(&base), disk::sha256(&other));

    let grub = "set timeout=-1\nmenuentry 'reuse' {\n    vboot harddisk=/base.vmdk immutable\n}\nmenuentry 'none' {\n    vboot harddisk=/other.vdi immutable\n}\n\
                menuentry 'elsewhere' {\n    vboot harddisk=/base.vmdk immutable immutable_child=/elsewhere.vmdk\n}\n\
                menuentry 'wrong' {\n    vboot harddisk=/base.vmdk immutable immutable_child=/other.vdi\n}\n";
    let host = disk::ntfs_vboot_disk(
        &dir,
        grub,
        &[(&base, "/base.vmdk"), (&child, "/base.immutable.vmdk"), (&other, "/other.vdi"), (&elsewhere, "/elsewhere.vmdk")],
    );
    let start = || {
        let mut qcfg = vboot_tests::qemu::Config::disk(&host);
        qcfg.memory_mib = 256;
        Qemu::start(&qcfg)
    };

    // The child vdisk made: emptied, then written.
    let out = start().boot_from_menu("wrong", b'1', guests::CHAIN_PASS, T);
    assert!(out.contains("immutable: /base.immutable.vmdk emptied"), "{}", out);
    assert!(out.contains("immutable: writes go into /base.immutable.vmdk"), "{}", out);
    assert_pass(&out, 0, &raw, "NTFS: the disk at the start (the child's old data gone)");
    assert_pass(&out, 1, &written, "NTFS: the writes read back");
    let part_now = dir.join("part-now.img");
    disk::partition_of(&host, 63 * 2048, &part_now);
    let back = dir.join("back");
    std::fs::create_dir_all(&back).unwrap();
    for name in ["base.vmdk", "base.immutable.vmdk", "other.vdi"] {
        ntfs_get(&part_now, &format!("/{}", name), &back.join(name));
    }
    assert_eq!(disk::sha256(&back.join("base.vmdk")), base_sha, "the parent changed");
    vboot_tests::qemu_img_check(&back.join("base.immutable.vmdk"), "NTFS child: ");
    assert!(chain_raw_sectors(&back.join("base.immutable.vmdk"), true, SMALL_SECTORS) == written, "the child does not read as the parent plus the writes");

    // No child: the message and the offer.
    let mut q = start();
    q.expect("wrong", T);
    std::thread::sleep(Duration::from_millis(200));
    q.send(b"2");
    q.expect("vdisk immutable-child IMAGE", T);
    q.expect("Press R to boot with writes kept in RAM (at most 64 MiB", T);
    q.send(b"x");
    q.expect("not booted: immutable needs the throwaway child /other.immutable.vdi (vdisk immutable-child)", T);
    q.send(b"\r");
    let mark = q.mark();
    q.expect_from(mark, "wrong", T);
    std::thread::sleep(Duration::from_millis(200));
    q.send(b"2");
    q.expect_from(mark, "Press R to boot with writes kept in RAM", T);
    let mark = q.mark();
    q.send(b"r");
    let status = q.wait_exit(T);
    let out = q.output().get(mark..).unwrap_or("").to_string();
    assert!(out.contains("immutable: writes go to a RAM overlay of up to 64 MiB"), "{}", out);
    assert!(out.contains(guests::CHAIN_PASS), "{}", out);
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    assert_pass(&out, 0, &raw, "NTFS, RAM overlay: the disk at the start");
    assert_pass(&out, 1, &written, "NTFS, RAM overlay: the writes read back");
    disk::partition_of(&host, 63 * 2048, &part_now);
    ntfs_get(&part_now, "/other.vdi", &back.join("other.vdi"));
    assert_eq!(disk::sha256(&back.join("other.vdi")), other_sha, "the VDI changed under the RAM overlay");

    // immutable_child=: the child made elsewhere is used; a file that is no child is refused.
    let out = start().boot_from_menu("wrong", b'3', guests::CHAIN_PASS, T);
    assert!(out.contains("immutable: /elsewhere.vmdk emptied") && out.contains("immutable: writes go into /elsewhere.vmdk"), "{}", out);
    assert_pass(&out, 1, &written, "NTFS, immutable_child=: the writes read back");
    let mut q = start();
    q.expect("wrong", T);
    std::thread::sleep(Duration::from_millis(200));
    q.send(b"4");
    q.expect("immutable: /other.vdi is there but is not a differencing child of /base.vmdk", T);
    q.expect("Press any key to return to the menu.", T);
    drop(q);
    disk::partition_of(&host, 63 * 2048, &part_now);
    for name in ["base.vmdk", "other.vdi"] {
        ntfs_get(&part_now, &format!("/{}", name), &back.join(name));
    }
    assert_eq!(disk::sha256(&back.join("base.vmdk")), base_sha, "the parent changed");
    assert_eq!(disk::sha256(&back.join("other.vdi")), other_sha, "the file named by immutable_child= changed");
}

/// A raw image: stage2 makes a flat VMDK descriptor naming it and a VMDK child of that, which
/// qemu-img reads (a user can look at what a boot wrote). Two boots, each writing 66 MiB: the second empties the child
/// (the guest's hash at its start is the raw image's). The raw file is byte-identical throughout.
#[test]
fn immutable_on_a_raw_image_goes_through_a_vmdk_child_that_qemu_reads() {
    let src = TempDir::new("immutable-raw-src");
    // 66 MiB at each boot, as for the other formats: more than the old RAM overlay held.
    let cfg = ChainConfig { flags: CHAIN_HASH_BEFORE | CHAIN_HASH_AFTER, ..big_writes() };
    let (raw_path, raw) = guest_raw(&src.path, SECTORS, &cfg);
    let mut written = raw.clone();
    cfg.apply(&mut written);
    let raw_sha = disk::sha256(&raw_path);
    let entries = [("immutable", String::from("harddisk=/vm/disk.img immutable reserve=72M"))];
    let rig = Rig::new("immutable-raw", 200, &menu(&entries), &[("disk.img", &raw_path)]);
    for boot in 1..=2 {
        let what = format!("raw boot {}", boot);
        let out = rig.start().boot_from_menu(&rig.last_title, b'1', guests::CHAIN_PASS, T_BIG);
        if boot == 1 {
            assert!(out.contains("immutable: /vm/disk.immutable-raw.vmdk made, a VMDK descriptor naming the raw /vm/disk.img"), "{}:\n{}", what, out);
            assert!(out.contains("immutable: /vm/disk.immutable.vmdk made, a throwaway VMDK child of /vm/disk.immutable-raw.vmdk"), "{}:\n{}", what, out);
        } else {
            assert!(out.contains("immutable: /vm/disk.immutable.vmdk emptied"), "{}:\n{}", what, out);
        }
        assert!(!out.contains("RAM overlay"), "{}:\n{}", what, out);
        assert_pass(&out, 0, &raw, &format!("{}: the disk at the start", what));
        assert_pass(&out, 1, &written, &format!("{}: the writes read back", what));
        let back = rig.pull();
        assert_eq!(disk::sha256(&back.join("disk.img")), raw_sha, "{}: the raw image changed", what);
        let part = rig.host.current_partition(&rig.dir.join("part-child.img"));
        for name in ["disk.immutable-raw.vmdk", "disk.immutable.vmdk"] {
            disk::fat_get(&part, &format!("/vm/{}", name), &back.join(name));
        }
        let child = back.join("disk.immutable.vmdk");
        vboot_tests::qemu_img_check(&child, &what);
        let info = sh(Command::new("qemu-img").arg("info").arg(&child));
        assert!(info.contains("backing file: disk.immutable-raw.vmdk"), "{}: qemu-img info:\n{}", what, info);
        assert!(chain_raw_sectors(&child, true, SECTORS) == written, "{}: qemu-img does not read the child as the raw image plus the writes", what);
    }
}
