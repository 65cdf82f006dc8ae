//! Issue 7, boot side: every VHD, VMDK and VDI variant as the boot disk, chains of depth 1 to 64
//! mixing allocated and unallocated blocks, a tree of two children, writes into a child's slack
//! read back on the next boot, and broken chains (missing parent, wrong identity, cycle).
//!
//! Oracles: qemu-img/qemu-io make the images and read them back where qemu reads the format
//! (it reads no VHD or VDI differencing image: there the test's own model of the data, and
//! `vdisk check`, judge); `fsck.fat -n` checks the host partition after every scenario.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ChainConfig, ProbeConfig, ProbeWrite, WriteRun};
use vboot_tests::rig::{menu, Rig};
use vboot_tests::{sh, TempDir};

const T: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str], files: &[&Path]) {
    sh(Command::new("qemu-img").args(args).args(files));
}

/// `qemu-img convert` to raw: what qemu reads in the image (and its chain).
fn qemu_raw(image: &Path, sectors: u64) -> Vec<u8> {
    let out = image.with_extension("qemu.raw");
    qemu_img(&["convert", "-O", "raw"], &[image, &out]);
    let mut v = std::fs::read(&out).unwrap();
    // qemu counts a fixed VHD's footer in its virtual size; vboot does not.
    v.truncate(sectors as usize * 512);
    let _ = std::fs::remove_file(&out);
    v
}

/// `vdisk convert` to raw, for the chains qemu cannot read (VHD and VDI differencing images).
fn vdisk_raw(image: &Path) -> Vec<u8> {
    let out = image.with_extension("vdisk.raw");
    let _ = std::fs::remove_file(&out);
    sh(Command::new(vdisk()).arg("convert").arg(image).arg(&out).args(["--format", "raw"]));
    let v = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    v
}

fn vdisk() -> PathBuf {
    vboot_tests::vdisk_bin()
}

fn snapshot(parent: &Path, child: &Path, reserve: &str) {
    sh(Command::new(vdisk()).arg("snapshot").arg(parent).arg(child).args(["--reserve", reserve]));
}

fn check_raw(got: &[u8], cfg: &ProbeConfig, what: &str) {
    let tmp = std::env::temp_dir().join(format!("vboot-chains-{}-{}.raw", std::process::id(), what.replace('/', "_")));
    std::fs::write(&tmp, got).unwrap();
    let r = guests::check_probe_disk(&tmp, cfg);
    let _ = std::fs::remove_file(&tmp);
    r.unwrap_or_else(|e| panic!("{}: {}", what, e));
}

// ---- 1. every format and variant as the boot disk ---------------------------------------------

const PROBE_SECTORS: u64 = 16 * 2048;

fn probe_config() -> ProbeConfig {
    let total = PROBE_SECTORS;
    let mut cfg = ProbeConfig::new(total);
    cfg.flags = guests::FLAG_EXACT_15H | guests::FLAG_CYLINDERS_C1 | guests::FLAG_OOR_COUNT_ZERO;
    cfg.boundaries_lba = vec![4095, 4096, 8192, (total / 2) as u32 + 1];
    cfg.writes = vec![
        ProbeWrite { lba: 100, sectors: 1 },
        ProbeWrite { lba: 5000, sectors: 16 },
        ProbeWrite { lba: total as u32 - 1, sectors: 1 },
    ];
    cfg
}

/// A VMDK of several extents, as VMware splits a disk into 2 GiB pieces (here 4 MiB pieces, so
/// that more than one extent is crossed): `name`.vmdk describing `name`-s00N.vmdk (each a hosted
/// sparse extent made by qemu-img) or `name`-f00N.vmdk (flat). Returns every file.
fn split_vmdk(dir: &Path, raw: &[u8], name: &str, sparse: bool) -> Vec<(String, PathBuf)> {
    let piece_bytes = 4 * MIB as usize;
    let mut files = vec![(format!("{}.vmdk", name), dir.join(format!("{}.vmdk", name)))];
    let mut extents = String::new();
    for (i, piece) in raw.chunks(piece_bytes).enumerate() {
        let ext = format!("{}-{}{:03}.vmdk", name, if sparse { "s" } else { "f" }, i + 1);
        let path = dir.join(&ext);
        if sparse {
            let tmp = dir.join(format!("{}.piece", ext));
            std::fs::write(&tmp, piece).unwrap();
            qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"], &[&tmp, &path]);
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::write(&path, piece).unwrap();
        }
        extents.push_str(&format!(
            "RW {} {} \"{}\"{}\n",
            piece.len() / 512,
            if sparse { "SPARSE" } else { "FLAT" },
            ext,
            if sparse { "" } else { " 0" }
        ));
        files.push((ext, path));
    }
    let descriptor = format!(
        "# Disk DescriptorFile\nversion=1\nCID=5e1f0c2a\nparentCID=ffffffff\ncreateType=\"{}\"\n\n\
         # Extent description\n{}\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"16\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n",
        if sparse { "twoGbMaxExtentSparse" } else { "twoGbMaxExtentFlat" },
        extents
    );
    std::fs::write(&files[0].1, descriptor).unwrap();
    files
}

/// How the test reads an image back after the boot.
#[derive(Clone, Copy, PartialEq)]
enum Oracle {
    /// qemu reads the format (and its chain): qemu-img convert and qemu-img check.
    Qemu,
    /// qemu does not read it (VHD and VDI differencing images): vdisk convert.
    Vdisk,
}

struct Variant {
    title: &'static str,
    /// Every file, leaf first.
    files: Vec<(String, PathBuf)>,
    /// Files that must not change (the parents).
    unchanged: Vec<String>,
    /// What stage2 must print about the leaf ("image /vm/x: vhd dynamic").
    shown: &'static str,
    oracle: Oracle,
}

fn make_variants(dir: &Path, raw_path: &Path, vhd_vdi: bool) -> Vec<Variant> {
    let raw = std::fs::read(raw_path).unwrap();
    let p = |n: &str| dir.join(n);
    let conv = |fmt: &str, opts: &str, name: &str| {
        qemu_img(&["convert", "-O", fmt, "-o", opts], &[raw_path, &p(name)]);
        (name.to_string(), p(name))
    };
    let one = |title, file: (String, PathBuf), shown, oracle| Variant { title, files: vec![file], unchanged: vec![], shown, oracle };

    if !vhd_vdi {
        return vmdk_variants(dir, raw_path, &raw);
    }
    let mut vhd_vdi = vec![
        one("VHD fixed", conv("vpc", "subformat=fixed,force_size=on", "fixed.vhd"), "vhd fixed", Oracle::Qemu),
        one("VHD dynamic", conv("vpc", "subformat=dynamic,force_size=on", "dynamic.vhd"), "vhd dynamic", Oracle::Qemu),
    ];
    let base = conv("vpc", "subformat=dynamic,force_size=on", "vbase.vhd");
    snapshot(&base.1, &p("vchild.vhd"), "8M");
    vhd_vdi.push(Variant {
        title: "VHD differencing",
        files: vec![("vchild.vhd".into(), p("vchild.vhd")), base],
        unchanged: vec!["vbase.vhd".into()],
        shown: "vhd differencing",
        oracle: Oracle::Vdisk,
    });
    vhd_vdi.push(one("VDI dynamic", conv("vdi", "static=off", "dynamic.vdi"), "vdi dynamic", Oracle::Qemu));
    vhd_vdi.push(one("VDI fixed", conv("vdi", "static=on", "fixed.vdi"), "vdi fixed", Oracle::Qemu));
    let base = conv("vdi", "static=off", "dbase.vdi");
    snapshot(&base.1, &p("dchild.vdi"), "4M");
    vhd_vdi.push(Variant {
        title: "VDI differencing",
        files: vec![("dchild.vdi".into(), p("dchild.vdi")), base],
        unchanged: vec!["dbase.vdi".into()],
        shown: "vdi differencing",
        oracle: Oracle::Vdisk,
    });
    vhd_vdi
}

fn vmdk_variants(dir: &Path, raw_path: &Path, raw: &[u8]) -> Vec<Variant> {
    let p = |n: &str| dir.join(n);
    let conv = |fmt: &str, opts: &str, name: &str| {
        qemu_img(&["convert", "-O", fmt, "-o", opts], &[raw_path, &p(name)]);
        (name.to_string(), p(name))
    };
    let one = |title, file: (String, PathBuf), shown, oracle| Variant { title, files: vec![file], unchanged: vec![], shown, oracle };
    let mut vmdk = vec![one("VMDK monolithicSparse", conv("vmdk", "subformat=monolithicSparse", "sparse.vmdk"), "vmdk monolithicSparse", Oracle::Qemu)];
    conv("vmdk", "subformat=monolithicFlat", "flat.vmdk");
    vmdk.push(Variant {
        title: "VMDK monolithicFlat",
        files: vec![("flat.vmdk".into(), p("flat.vmdk")), ("flat-flat.vmdk".into(), p("flat-flat.vmdk"))],
        unchanged: vec![],
        shown: "vmdk monolithicFlat",
        oracle: Oracle::Qemu,
    });
    vmdk.push(Variant {
        title: "VMDK twoGbMaxExtentSparse",
        files: split_vmdk(dir, raw, "gsparse", true),
        unchanged: vec![],
        shown: "vmdk twoGbMaxExtentSparse",
        oracle: Oracle::Qemu,
    });
    vmdk.push(Variant {
        title: "VMDK twoGbMaxExtentFlat",
        files: split_vmdk(dir, raw, "gflat", false),
        unchanged: vec![],
        shown: "vmdk twoGbMaxExtentFlat",
        oracle: Oracle::Qemu,
    });
    // A child made by qemu-img (no slack), given slack by `vdisk reserve`.
    let base = conv("vmdk", "subformat=monolithicSparse", "mbase.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", "mbase.vmdk"], &[&p("mchild.vmdk")]);
    sh(Command::new(vdisk()).arg("reserve").arg(p("mchild.vmdk")).arg("1M"));
    vmdk.push(Variant {
        title: "VMDK differencing",
        files: vec![("mchild.vmdk".into(), p("mchild.vmdk")), base],
        unchanged: vec!["mbase.vmdk".into()],
        shown: "vmdk monolithicSparse",
        oracle: Oracle::Qemu,
    });
    vmdk
}

/// Boot each variant from its own menu entry on one shared host disk, then check every image.
fn boot_variants(tag: &str, variants: &[Variant], cfg: &ProbeConfig) {
    let entries: Vec<(&str, String)> = variants.iter().map(|v| (v.title, format!("harddisk=/vm/{}", v.files[0].0))).collect();
    let all: Vec<(&str, &Path)> = variants.iter().flat_map(|v| v.files.iter().map(|(n, p)| (n.as_str(), p.as_path()))).collect();
    let total_bytes: u64 = all.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    let rig = Rig::new(tag, total_bytes / MIB * 3 / 2 + 48, &menu(&entries), &all);
    let before: Vec<(String, Vec<u8>)> =
        all.iter().map(|(n, p)| (n.to_string(), std::fs::read(p).unwrap())).collect();
    for (i, v) in variants.iter().enumerate() {
        let started = std::time::Instant::now();
        let out = rig.boot_entry(i as u8 + 1, guests::PROBE_PASS);
        eprintln!("{}: booted in {:.1} s", v.title, started.elapsed().as_secs_f64());
        let shown = format!("image /vm/{}: {}", v.files[0].0, v.shown);
        assert!(out.contains(&shown), "{}: stage2 should show {:?}:\n{}", v.title, shown, out);
    }
    let out = rig.pull();
    for v in variants {
        let leaf = out.join(&v.files[0].0);
        let got = match v.oracle {
            Oracle::Qemu => {
                qemu_check_if_it_can(&leaf);
                qemu_raw(&leaf, PROBE_SECTORS)
            }
            Oracle::Vdisk => vdisk_raw(&leaf),
        };
        vboot_tests::vdisk_check(&leaf, "");
        check_raw(&got, cfg, v.title);
        for n in &v.unchanged {
            let was = &before.iter().find(|(b, _)| b == n).unwrap().1;
            assert!(&std::fs::read(out.join(n)).unwrap() == was, "{}: the parent {} changed", v.title, n);
        }
    }
}

/// qemu-img check knows VMDK and VDI, not VHD.
fn qemu_check_if_it_can(image: &Path) {
    if image.extension().and_then(|e| e.to_str()) != Some("vhd") {
        vboot_tests::qemu_img_check(image, "");
    }
}

#[test]
fn every_vhd_and_vdi_variant_boots_the_probe_and_takes_its_writes() {
    let dir = TempDir::new("chains-vhdvdi-src");
    let probe = guests::build_probe(&dir.join("probe-build"));
    let cfg = probe_config();
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let vhd_vdi = make_variants(&dir.path, &raw, true);
    boot_variants("chains-vhdvdi", &vhd_vdi, &cfg);
}

#[test]
fn every_vmdk_variant_boots_the_probe_and_takes_its_writes() {
    let dir = TempDir::new("chains-vmdk-src");
    let probe = guests::build_probe(&dir.join("probe-build"));
    let cfg = probe_config();
    let raw = dir.join("probe.img");
    guests::make_probe_disk(&raw, &probe, &cfg);
    let vmdk = make_variants(&dir.path, &raw, false);
    boot_variants("chains-vmdk", &vmdk, &cfg);
}


// ---- 2. chains of depth 1, 2, 8 and 64 --------------------------------------------------------

const CHAIN_SECTORS: u64 = 8 * 2048;

/// A raw disk of `sectors` with the chain guest at LBA 0 (configuration `cfg`) and zeros after.
fn chain_guest_raw(dir: &Path, sectors: u64, cfg: &ChainConfig) -> (PathBuf, Vec<u8>) {
    let code = guests::build_chain_guest(&dir.join("chainer-build"));
    let mut raw = vec![0u8; sectors as usize * 512];
    let head = guests::chain_guest_sectors(&code, cfg);
    raw[..head.len()].copy_from_slice(&head);
    let path = dir.join("chain-guest.img");
    std::fs::write(&path, &raw).unwrap();
    (path, raw)
}

/// What layer `i` of a test chain writes: (byte offset, bytes, fill byte). Layers overwrite parts
/// of each other, partial grains and blocks included; the last MiB is never written, so reads
/// there fall through every layer to unallocated space in the base.
fn layer_writes(i: u64) -> Vec<(u64, u64, u8)> {
    let fill = (i % 250 + 1) as u8;
    let a = 4096 + (i * 37 % 48) * 64 * 1024 + (i % 3) * 512;
    let b = 2 * MIB + (i * 11 % 24) * 32 * 1024;
    vec![(a, 3 * 1024 + (i % 5) * 20 * 1024, fill), (b, 512 * (1 + i % 7), fill ^ 0x80)]
}

/// The guest's hashes (one pass) against `want`, with the output in the message.
fn assert_hashes(out: &str, pass: usize, want: &[u8], what: &str) {
    let passes = guests::hash_passes(out);
    let got = passes.get(pass).unwrap_or_else(|| panic!("{}: no hash pass {} in the output:\n{}", what, pass, out));
    guests::compare_hashes(got, want).unwrap_or_else(|e| panic!("{}: {}", what, e));
}

/// VMDK chains made by qemu-img and written into by qemu-io (the base has unallocated grains,
/// each layer writes its own pattern over part of the ones below). The depth-d chain is the
/// first d files of one 64-deep chain, booted from four menu entries on one host disk; the
/// guest's hash of the whole disk must match qemu-img convert of the leaf, and no file changes.
#[test]
fn vmdk_chains_of_depth_1_2_8_and_64_read_as_qemu_reads_them() {
    let dir = TempDir::new("chains-depth-src");
    let (raw, _) = chain_guest_raw(&dir.path, CHAIN_SECTORS, &ChainConfig::hash_only());
    let name = |i: u64| format!("l{}.vmdk", i);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for i in 0..64u64 {
        let path = dir.join(&name(i));
        if i == 0 {
            qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"], &[&raw, &path]);
        } else {
            qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", &name(i - 1)], &[&path]);
        }
        let cmds: Vec<String> = layer_writes(i).iter().map(|(off, len, fill)| format!("write -q -P {} {} {}", fill, off, len)).collect();
        let cmds: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
        vboot_tests::qemu_io("vmdk", path.to_str().unwrap(), &cmds);
        files.push((name(i), path));
    }
    let depths = [1usize, 2, 8, 64];
    let entries: Vec<(&str, String)> =
        // reserve=0: no write slack is added before boot, so the read-only boots change no file.
        depths.iter().map(|d| ("depth", format!("harddisk=/vm/{} reserve=0", name(*d as u64 - 1)))).collect();
    let images: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let rig = Rig::new("chains-depth", 64, &menu(&entries), &images);
    for (k, d) in depths.iter().enumerate() {
        let out = rig.boot_entry(k as u8 + 1, guests::CHAIN_PASS);
        assert_eq!(out.matches("\n  parent /vm/").count(), d - 1, "depth {}: stage2 should list {} parents:\n{}", d, d - 1, out);
        let want = qemu_raw(&files[d - 1].1, CHAIN_SECTORS);
        assert_hashes(&out, 0, &want, &format!("VMDK chain of depth {}", d));
    }
    let out = rig.pull();
    for (n, p) in &files {
        assert!(std::fs::read(out.join(n)).unwrap() == std::fs::read(p).unwrap(), "{} changed during a read-only boot", n);
    }
}

/// Write `writes` into the leaf of the chain at `leaf` with the image library (qemu does not
/// write VHD or VDI differencing images), and into `model`, the raw disk the chain must read as.
fn write_through_library(leaf: &Path, writes: &[(u64, u64, u8)], model: &mut [u8]) {
    use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
    let (layers, _) = open_chain(leaf.to_str().unwrap(), &mut StdLocator { writable_leaf: true }, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {}", leaf.display(), e));
    let mut disk = vboot::image::Disk::new(layers, vec![]).unwrap();
    for (off, len, fill) in writes {
        // Whole sectors: read, patch, write back.
        let first = off / 512;
        let last = (off + len).div_ceil(512);
        let mut buf = vec![0u8; ((last - first) * 512) as usize];
        disk.read(first, &mut buf).unwrap();
        let at = (off - first * 512) as usize;
        buf[at..at + *len as usize].fill(*fill);
        disk.write(first, &buf).unwrap_or_else(|e| panic!("write into {}: {}", leaf.display(), e));
        model[*off as usize..(*off + *len) as usize].fill(*fill);
    }
}

/// VHD and VDI chains of depth 8 (vdisk snapshot; each layer written through the image
/// library): the guest's hash must match the test's own model of the data.
#[test]
fn vhd_and_vdi_chains_of_depth_8_read_as_written() {
    let dir = TempDir::new("chains-vhdvdi-depth-src");
    let (raw, base_model) = chain_guest_raw(&dir.path, CHAIN_SECTORS, &ChainConfig::hash_only());
    let mut entries = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut models = Vec::new();
    for (fmt, opts, ext) in [("vpc", "subformat=dynamic,force_size=on", "vhd"), ("vdi", "static=off", "vdi")] {
        let mut model = base_model.clone();
        for i in 0..8u64 {
            let n = format!("c{}.{}", i, ext);
            let path = dir.join(&n);
            if i == 0 {
                qemu_img(&["convert", "-O", fmt, "-o", opts], &[&raw, &path]);
            } else {
                snapshot(&files.last().unwrap().1, &path, "0");
            }
            // The base keeps its unallocated blocks beyond 2 MiB: only the children write there.
            let writes: Vec<(u64, u64, u8)> = layer_writes(i).into_iter().filter(|w| i > 0 || w.0 < 2 * MIB).collect();
            write_through_library(&path, &writes, &mut model);
            files.push((n, path));
        }
        entries.push((ext, format!("harddisk=/vm/c7.{}", ext)));
        models.push(model);
    }
    let images: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let rig = Rig::new("chains-vhdvdi-depth", 64, &menu(&entries), &images);
    for (k, model) in models.iter().enumerate() {
        let out = rig.boot_entry(k as u8 + 1, guests::CHAIN_PASS);
        assert_eq!(out.matches("\n  parent /vm/").count(), 7, "{}", out);
        assert_hashes(&out, 0, model, entries[k].0);
    }
    let out = rig.pull();
    for (n, _) in &files {
        vboot_tests::vdisk_check(&out.join(n), "");
    }
}

// ---- 3 and 4. a tree of two children; writes into slack read back on the next boot -------------

/// Sectors the tree children write (the same sectors in both, with different contents, plus some
/// only B writes): across several blocks/grains of each format, all new in the child, so every
/// first write allocates inside the child's slack.
fn tree_config(tag: u32, extra: bool) -> ChainConfig {
    let mut runs = vec![
        WriteRun { lba: 2048, writes: 24, stride: 100, sectors: 4 },
        WriteRun { lba: 12000, writes: 2, stride: 3000, sectors: 1 },
    ];
    if extra {
        runs.push(WriteRun { lba: 9000, writes: 3, stride: 130, sectors: 2 });
    }
    ChainConfig { flags: guests::CHAIN_HASH_BEFORE | guests::CHAIN_HASH_AFTER, tag, runs }
}

/// Put `sector` at LBA 1 of the image `child` (its own configuration for the chain guest): with
/// qemu-io where qemu writes the format, else with the image library.
fn put_config(child: &Path, ext: &str, cfg: &ChainConfig, model: &mut [u8]) {
    let sector = cfg.to_sector();
    if ext == "vmdk" {
        let f = child.with_extension("cfg.bin");
        std::fs::write(&f, sector).unwrap();
        vboot_tests::qemu_io("vmdk", child.to_str().unwrap(), &[&format!("write -q -s {} 512 512", f.display())]);
        model[512..1024].copy_from_slice(&sector);
    } else {
        use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
        let (layers, _) = open_chain(child.to_str().unwrap(), &mut StdLocator { writable_leaf: true }, &ChainOptions::default()).unwrap();
        let mut disk = vboot::image::Disk::new(layers, vec![]).unwrap();
        disk.write(1, &sector).unwrap();
        model[512..1024].copy_from_slice(&sector);
    }
}

/// Two children A and B of one parent, each with its own menu entry, booted A, B, A. Each boot
/// hashes the disk, writes, hashes again: B must not see A's writes, and A's second boot must
/// find its first boot's writes (placed in slack) and not B's. Afterwards each child reads as its
/// own writes over the parent, the parent is unchanged byte for byte, and every checker passes.
fn tree(fmt: &str, opts: &str, ext: &str) {
    let dir = TempDir::new(&format!("tree-{}-src", ext));
    let (raw, base) = chain_guest_raw(&dir.path, CHAIN_SECTORS, &ChainConfig::hash_only());
    let parent = dir.join(&format!("parent.{}", ext));
    qemu_img(&["convert", "-O", fmt, "-o", opts], &[&raw, &parent]);
    let mut want = Vec::new();
    let mut files = vec![(format!("parent.{}", ext), parent.clone())];
    for (name, cfg) in [("a", tree_config(0xA1A1_A1A1, false)), ("b", tree_config(0xB2B2_B2B2, true))] {
        let n = format!("{}.{}", name, ext);
        let child = dir.join(&n);
        if ext == "vmdk" {
            qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", &format!("parent.{}", ext)], &[&child]);
        } else {
            snapshot(&parent, &child, "0");
        }
        let mut before = base.clone();
        put_config(&child, ext, &cfg, &mut before);
        sh(Command::new(vdisk()).arg("reserve").arg(&child).arg("12M"));
        let mut after = before.clone();
        cfg.apply(&mut after);
        want.push((before, after));
        files.push((n, child));
    }
    let entries = vec![("child A", format!("harddisk=/vm/a.{}", ext)), ("child B", format!("harddisk=/vm/b.{}", ext))];
    let images: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let rig = Rig::new(&format!("tree-{}", ext), 96, &menu(&entries), &images);
    for (entry, first) in [(0usize, true), (1, true), (0, false)] {
        let what = format!("{} child {} boot {}", ext, ["A", "B"][entry], if first { 1 } else { 2 });
        let out = rig.boot_entry(entry as u8 + 1, guests::CHAIN_PASS);
        let (before, after) = &want[entry];
        assert_hashes(&out, 0, if first { before } else { after }, &format!("{}, before its writes", what));
        assert_hashes(&out, 1, after, &format!("{}, after its writes", what));
    }
    let out = rig.pull();
    assert!(std::fs::read(out.join(&files[0].0)).unwrap() == std::fs::read(&parent).unwrap(), "{}: the parent changed", ext);
    for (k, (n, _)) in files[1..].iter().enumerate() {
        let leaf = out.join(n);
        vboot_tests::vdisk_check(&leaf, "");
        let got = if ext == "vmdk" {
            vboot_tests::qemu_img_check(&leaf, "");
            qemu_raw(&leaf, CHAIN_SECTORS)
        } else {
            vdisk_raw(&leaf)
        };
        assert!(got == want[k].1, "{}: {} does not read as the parent plus its own writes", ext, n);
    }
}

#[test]
fn vmdk_tree_children_see_only_their_own_writes_across_boots() {
    tree("vmdk", "subformat=monolithicSparse", "vmdk");
}

#[test]
fn vhd_tree_children_see_only_their_own_writes_across_boots() {
    tree("vpc", "subformat=dynamic,force_size=on", "vhd");
}

#[test]
fn vdi_tree_children_see_only_their_own_writes_across_boots() {
    tree("vdi", "static=off", "vdi");
}

// ---- streamOptimized: read-only at boot ------------------------------------------------------

/// A streamOptimized VMDK boots and reads like any other (compressed grains inflated in the
/// engine), but it cannot take writes: the guest's write fails with BIOS status 03h (write
/// protected), nothing is written, and the image is unchanged byte for byte.
#[test]
fn stream_optimized_vmdk_boots_read_only_and_refuses_writes_with_status_03() {
    let dir = TempDir::new("chains-stream-src");
    let cfg = ChainConfig {
        flags: guests::CHAIN_HASH_BEFORE,
        tag: 0x57AE_A400,
        runs: vec![WriteRun { lba: 3000, writes: 1, stride: 1, sectors: 1 }],
    };
    let (raw, _) = chain_guest_raw(&dir.path, CHAIN_SECTORS, &cfg);
    // Data to inflate: the probe pattern in the second MiB.
    let mut bytes = std::fs::read(&raw).unwrap();
    for lba in 2048..4096u64 {
        bytes[lba as usize * 512..(lba as usize + 1) * 512].copy_from_slice(&guests::pattern_sector(lba));
    }
    std::fs::write(&raw, &bytes).unwrap();
    let img = dir.join("stream.vmdk");
    qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"], &[&raw, &img]);
    let rig = Rig::new("chains-stream", 48, &menu(&[("stream", "harddisk=/vm/stream.vmdk".to_string())]), &[("stream.vmdk", &img)]);
    let mut q = rig.start();
    q.expect(&rig.last_title, T);
    q.send(b"1");
    let status = q.wait_exit(T);
    let out = q.output();
    assert!(out.contains("image /vm/stream.vmdk: vmdk streamOptimized"), "{}", out);
    assert_hashes(&out, 0, &bytes, "streamOptimized");
    assert!(out.contains("CHAIN-FAIL 00000003 at 00000BB8"), "the write should fail with status 03h:\n{}", out);
    assert_eq!(status, Some(vboot_tests::qemu::EXIT_FAIL), "{}", out);
    let back = rig.pull();
    assert!(std::fs::read(back.join("stream.vmdk")).unwrap() == std::fs::read(&img).unwrap(), "the streamOptimized image changed");
}

// ---- 5. broken chains --------------------------------------------------------------------------

/// Replace the `CID`/`parentCID` lines and add a `parentFileNameHint` in a VMDK descriptor file.
fn set_vmdk_parent(descriptor: &Path, parent_cid: &str, hint: &str) {
    let text = std::fs::read_to_string(descriptor).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("parentCID=") {
            out.push_str(&format!("parentCID={}\nparentFileNameHint=\"{}\"\n", parent_cid, hint));
        } else if !line.starts_with("parentFileNameHint=") {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(descriptor, out).unwrap();
}

fn vmdk_cid(descriptor: &Path) -> String {
    let text = std::fs::read_to_string(descriptor).unwrap();
    text.lines().find_map(|l| l.strip_prefix("CID=")).expect("CID line").trim().to_string()
}

/// A missing parent, a parent with another UUID (VHD, VDI), a VMDK parent whose CID changed,
/// and a cycle of two VMDKs: each entry gives an error screen naming the file, and a key leads
/// back to the menu; the last entry still boots. One QEMU run walks through all of them.
#[test]
fn broken_chains_give_an_error_screen_naming_the_file_and_return_to_the_menu() {
    let dir = TempDir::new("chains-broken-src");
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let p = |n: &str| dir.join(n);
    let mut images: Vec<(String, PathBuf)> = vec![("hello.img".into(), hello.clone())];

    // A child whose parent is not on the partition.
    qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"], &[&hello, &p("lost.vmdk")]);
    qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", "lost.vmdk"], &[&p("orphan.vmdk")]);
    images.push(("orphan.vmdk".into(), p("orphan.vmdk")));

    // VHD and VDI children whose parent was replaced by another image of the same content.
    for (fmt, opts, ext) in [("vpc", "subformat=dynamic,force_size=on", "vhd"), ("vdi", "static=off", "vdi")] {
        let base = p(&format!("base.{}", ext));
        qemu_img(&["convert", "-O", fmt, "-o", opts], &[&hello, &base]);
        let child = p(&format!("child.{}", ext));
        snapshot(&base, &child, "1M");
        std::fs::remove_file(&base).unwrap();
        qemu_img(&["convert", "-O", fmt, "-o", opts], &[&hello, &base]);
        images.push((format!("child.{}", ext), child));
        images.push((format!("base.{}", ext), base));
    }

    // A VMDK child whose parent was written after it was made (qemu gives the parent a new CID).
    qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=monolithicSparse"], &[&hello, &p("mbase.vmdk")]);
    qemu_img(&["create", "-q", "-f", "vmdk", "-F", "vmdk", "-b", "mbase.vmdk"], &[&p("mchild.vmdk")]);
    vboot_tests::qemu_io("vmdk", p("mbase.vmdk").to_str().unwrap(), &["write -q -P 7 64k 4k"]);
    images.push(("mchild.vmdk".into(), p("mchild.vmdk")));
    images.push(("mbase.vmdk".into(), p("mbase.vmdk")));

    // Two VMDKs, each the other's parent.
    qemu_img(&["convert", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"], &[&hello, &p("ca.vmdk")]);
    qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "-F", "vmdk", "-b", "ca.vmdk"], &[&p("cb.vmdk")]);
    set_vmdk_parent(&p("ca.vmdk"), &vmdk_cid(&p("cb.vmdk")), "cb.vmdk");
    for n in ["ca.vmdk", "ca-s001.vmdk", "cb.vmdk", "cb-s001.vmdk"] {
        images.push((n.into(), p(n)));
    }

    let cases: [(&str, &str, &[&str]); 5] = [
        ("missing parent", "orphan.vmdk", &["/vm/orphan.vmdk: parent image not found", "/vm/lost.vmdk: not found"]),
        ("VHD parent with another UUID", "child.vhd", &["/vm/child.vhd: parent image not found", "/vm/base.vhd: its Unique Id is"]),
        ("VDI parent with another UUID", "child.vdi", &["/vm/child.vdi: parent image not found", "/vm/base.vdi: its UUID"]),
        ("VMDK parent with another CID", "mchild.vmdk", &["/vm/mchild.vmdk: parent /vm/mbase.vmdk is not the image it was made from: its CID is"]),
        ("a cycle", "cb.vmdk", &["the parent chain loops back to an image already in it", "/vm/ca.vmdk", "/vm/cb.vmdk"]),
    ];
    let mut entries: Vec<(&str, String)> = cases.iter().map(|(t, leaf, _)| (*t, format!("harddisk=/vm/{}", leaf))).collect();
    entries.push(("a good entry", "harddisk=/vm/hello.img".to_string()));
    let list: Vec<(&str, &Path)> = images.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let rig = Rig::new("chains-broken", 64, &menu(&entries), &list);
    let before: Vec<Vec<u8>> = images.iter().map(|(_, p)| std::fs::read(p).unwrap()).collect();

    let mut q = rig.start();
    q.expect(&rig.last_title, T);
    for (i, (title, _, needles)) in cases.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(200));
        let mark = q.mark();
        q.send(&[b'1' + i as u8]);
        let screen = q.expect_from(mark, "Press any key to return to the menu.", T);
        for n in *needles {
            assert!(screen.contains(n), "{}: the error screen should say {:?}:\n{}", title, n, screen);
        }
        assert!(!screen.contains("Starting the guest"), "{}: booted anyway:\n{}", title, screen);
        let mark = q.mark();
        q.send(b" ");
        q.expect_from(mark, &rig.last_title, T);
    }
    std::thread::sleep(Duration::from_millis(200));
    q.send(b"6");
    q.expect("GUEST-HELLO", T);
    assert_eq!(q.wait_exit(T), Some(vboot_tests::qemu::EXIT_PASS), "{}", q.output());
    let back = rig.pull();
    for ((n, _), b) in images.iter().zip(&before) {
        assert!(&std::fs::read(back.join(n)).unwrap() == b, "{} changed", n);
    }
}
