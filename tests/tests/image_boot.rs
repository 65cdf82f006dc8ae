//! Booting VHD, VMDK and VDI images and differencing chains through the engine (first part of
//! issue 7): the guest probe inside images made by qemu-img, read back by qemu-img.

use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ProbeConfig, ProbeWrite};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{disk, sh, vboot_host, TempDir};

const T: Duration = Duration::from_secs(120);

fn probe_config(total: u64) -> ProbeConfig {
    let mut cfg = ProbeConfig::new(total);
    cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    cfg.boundaries_lba = vec![4095, 4096, (total / 2) as u32];
    cfg.writes = vec![
        ProbeWrite { lba: 100, sectors: 1 },
        ProbeWrite { lba: 5000, sectors: 16 },
        ProbeWrite { lba: total as u32 - 1, sectors: 1 },
    ];
    cfg
}

fn boot_and_check(dir: &TempDir, images: &[(&str, &std::path::Path)], leaf: &str) -> String {
    boot_with(dir, images, &format!("harddisk=/vm/{}", leaf))
}

/// Boot the probe from a host disk whose only entry has the vboot line `vboot_args`, require
/// PROBE PASS, and copy the images back out of the host disk.
fn boot_with(dir: &TempDir, images: &[(&str, &std::path::Path)], vboot_args: &str) -> String {
    let cfg_text = format!("set timeout=0\nmenuentry 'image' {{\n    vboot {}\n}}\n", vboot_args);
    let host = vboot_host(dir, 96, &cfg_text, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    for (name, file) in images {
        disk::put_fragmented(&host.part, &format!("/vm/{}", name), &std::fs::read(file).unwrap(), 3);
    }
    disk::write_at(&host.disk, 2048, &host.part);
    let mut qcfg = vboot_tests::qemu::Config::disk(&host.disk);
    qcfg.memory_mib = 256;
    let mut q = Qemu::start(&qcfg);
    let status = q.wait_exit(T);
    let out = q.output();
    assert!(out.contains(guests::PROBE_PASS), "probe failed (exit {:?}):\n{}", status, out);
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    // Give the images back, as the host disk holds them now.
    let part_now = host.current_partition(&dir.join("part-after.img"));
    for (name, file) in images {
        disk::fat_get(&part_now, &format!("/vm/{}", name), file);
    }
    out
}

fn to_raw(image: &std::path::Path, out: &std::path::Path) {
    sh(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(out));
}

/// The virtual size qemu-img gives an image, in sectors.
fn virtual_sectors(image: &std::path::Path) -> u64 {
    let out = sh(Command::new("qemu-img").args(["info", "--output=json"]).arg(image));
    let at = out.find("\"virtual-size\":").expect("virtual-size") + "\"virtual-size\":".len();
    out[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap() / 512
}

#[test]
fn probe_passes_inside_vhd_vmdk_and_vdi_images_and_writes_land_in_them() {
    let dir = TempDir::new("img-formats");
    let probe = guests::build_probe(&dir.join("probe-build"));
    for (fmt, opts, name) in [
        ("vpc", "subformat=dynamic,force_size=on", "probe.vhd"),
        ("vpc", "subformat=fixed,force_size=on", "fixed.vhd"),
        ("vmdk", "subformat=monolithicSparse", "probe.vmdk"),
        ("vdi", "static=off", "probe.vdi"),
    ] {
        // force_size keeps VHD's size exact instead of rounding it to a CHS geometry.
        let img = dir.join(name);
        let total = 16 * 2048;
        let raw = dir.join("probe.img");
        let cfg = probe_config(total);
        guests::make_probe_disk(&raw, &probe, &cfg);
        sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw).arg(&img));
        // (qemu counts a fixed VHD's footer sector in its virtual size; vboot does not.)
        if name != "fixed.vhd" {
            assert_eq!(virtual_sectors(&img), total, "{} has another size than the raw image", name);
        }
        let d = TempDir::new(&format!("img-{}", name));
        let out = boot_and_check(&d, &[(name, &img)], name);
        assert!(out.contains(&format!("image /vm/{}", name)), "{}", out);
        let back = dir.join(&format!("{}.raw", name));
        to_raw(&img, &back);
        std::fs::OpenOptions::new().write(true).open(&back).unwrap().set_len(total * 512).unwrap();
        guests::check_probe_disk(&back, &cfg).unwrap_or_else(|e| panic!("{}: {}\n{}", name, e, out));
        let check = Command::new("qemu-img").arg("check").arg(&img).output().unwrap();
        if fmt != "vpc" {
            assert!(check.status.success(), "qemu-img check {}: {}", name, String::from_utf8_lossy(&check.stdout));
        }
    }
}

/// A VMDK differencing child made by `vdisk snapshot` with write slack: reads fall through to
/// the parent, the probe's writes allocate grains in the child, and the parent never changes.
#[test]
fn a_differencing_child_reads_its_parent_and_takes_the_writes() {
    let dir = TempDir::new("img-chain");
    let total = 16 * 2048;
    let cfg = probe_config(total);
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let base = dir.join("base.vmdk");
    sh(Command::new("qemu-img").args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"]).arg(&raw).arg(&base));
    let child = dir.join("child.vmdk");
    let vdisk = vboot_tests::artifacts().vdisk;
    sh(Command::new(&vdisk).arg("snapshot").arg(&base).arg(&child).args(["--reserve", "4M"]));
    let base_before = std::fs::read(&base).unwrap();
    let out = boot_and_check(&dir, &[("base.vmdk", &base), ("child.vmdk", &child)], "child.vmdk");
    assert!(out.contains("parent /vm/base.vmdk"), "{}", out);
    assert!(std::fs::read(&base).unwrap() == base_before, "the parent image changed");
    // qemu follows parentFileNameHint next to the child.
    let back = dir.join("chain.raw");
    to_raw(&child, &back);
    guests::check_probe_disk(&back, &cfg).unwrap_or_else(|e| panic!("{}\n{}", e, out));
    let check = Command::new("qemu-img").arg("check").arg(&child).output().unwrap();
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));
}

/// `restore` empties the child before the guest starts: data written into the child on the host
/// (with qemu-io) is gone, the probe sees the parent's pattern there, and afterwards qemu-img
/// finds child and parent identical. On an image without a parent it is refused.
#[test]
fn restore_empties_the_child_and_is_refused_on_a_base_image() {
    let dir = TempDir::new("img-restore");
    let total = 16 * 2048;
    let mut cfg = probe_config(total);
    cfg.writes = vec![];
    cfg.boundaries_lba = vec![2048, 2100, 2175];
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let base = dir.join("base.vmdk");
    sh(Command::new("qemu-img").args(["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"]).arg(&raw).arg(&base));
    let child = dir.join("child.vmdk");
    sh(Command::new(vboot_tests::artifacts().vdisk).arg("snapshot").arg(&base).arg(&child).args(["--reserve", "4M"]));
    sh(Command::new("qemu-io").args(["-f", "vmdk", "-c", "write -P 0x55 1M 64k"]).arg(&child));
    let same = |a: &std::path::Path, b: &std::path::Path| {
        Command::new("qemu-img").args(["compare", "-q"]).arg(a).arg(b).status().unwrap().success()
    };
    assert!(!same(&base, &child), "qemu-io should have changed the child");
    let base_before = std::fs::read(&base).unwrap();
    let out = boot_with(&dir, &[("base.vmdk", &base), ("child.vmdk", &child)], "harddisk=/vm/child.vmdk restore");
    assert!(out.contains("restore: /vm/child.vmdk will be emptied"), "{}", out);
    assert!(same(&base, &child), "after restore the child still differs from its parent");
    assert!(std::fs::read(&base).unwrap() == base_before, "restore changed the parent");
    let check = Command::new("qemu-img").arg("check").arg(&child).output().unwrap();
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));

    // On the base image itself: a message and back to the menu.
    let d2 = TempDir::new("img-restore-base");
    let cfg_text = "set timeout=0\nmenuentry 'image' {\n    vboot harddisk=/vm/base.vmdk restore\n}\n";
    let host = vboot_host(&d2, 96, cfg_text, &[]);
    sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
    disk::put_fragmented(&host.part, "/vm/base.vmdk", &std::fs::read(&base).unwrap(), 1);
    disk::write_at(&host.disk, 2048, &host.part);
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect("Press any key to return to the menu.", T);
    assert!(out.contains("is not a differencing image (it has no parent)"), "{}", out);
}

/// `immutable`: the probe's writes are visible during the boot (it reads them back), and the
/// image files, a raw one (writes in a VMDK child over a flat descriptor naming it) and a VHD
/// chain (writes in a VHD child), are byte-identical afterwards (tests/tests/immutable_boot.rs
/// has the rest).
#[test]
fn immutable_keeps_the_writes_in_a_throwaway_child_and_the_images_unchanged() {
    let dir = TempDir::new("img-immutable");
    let total = 16 * 2048;
    let cfg = probe_config(total);
    let probe = guests::build_probe(&dir.join("probe-build"));
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let before = std::fs::read(&raw).unwrap();
    let out = boot_with(&dir, &[("probe.img", &raw)], "harddisk=/vm/probe.img immutable");
    assert!(out.contains("immutable: /vm/probe.immutable-raw.vmdk made, a VMDK descriptor naming the raw /vm/probe.img"), "{}", out);
    assert!(out.contains("immutable: /vm/probe.immutable.vmdk made, a throwaway VMDK child of /vm/probe.immutable-raw.vmdk"), "{}", out);
    assert!(out.contains("ok writes with read-back"), "{}", out);
    assert!(std::fs::read(&raw).unwrap() == before, "immutable: the raw image changed");

    let base = dir.join("base.vhd");
    sh(Command::new("qemu-img").args(["convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&raw).arg(&base));
    let child = dir.join("child.vhd");
    sh(Command::new(vboot_tests::artifacts().vdisk).arg("snapshot").arg(&base).arg(&child));
    let (b0, c0) = (std::fs::read(&base).unwrap(), std::fs::read(&child).unwrap());
    let d2 = TempDir::new("img-immutable-chain");
    let out = boot_with(&d2, &[("base.vhd", &base), ("child.vhd", &child)], "harddisk=/vm/child.vhd immutable");
    assert!(out.contains("immutable: /vm/child.immutable.vhd made, a throwaway VHD child of /vm/child.vhd"), "{}", out);
    assert!(out.contains("ok writes with read-back"), "{}", out);
    assert!(std::fs::read(&base).unwrap() == b0 && std::fs::read(&child).unwrap() == c0, "immutable: the chain changed");
}
