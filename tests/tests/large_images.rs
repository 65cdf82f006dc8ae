//! Issue 13: images of real size boot, and take writes, in a machine of ordinary size.
//!
//! Each image is made by qemu-img (sparse files: the images and the host disks cost little
//! space), with the big-disk I/O guest (tests/guest-probe/bigio.s) at LBA 0, 64 KiB of 0x5A
//! written at 1 MiB by qemu-io, and booted through vboot from an exFAT host partition
//! (`reserve=8M`, so stage2 grows the leaf's write slack before boot) or an NTFS one (slack made
//! on the host with `vdisk reserve`). The guest reads the pre-filled data, reads zeros where
//! nothing was written, writes in place inside the pre-filled grain/block, writes at 16 GiB
//! (LBA 33554432, never allocated: an allocating write) and into the last 8 sectors of the disk,
//! reads every write back, re-reads all of them at the end, and checks that the rest of a newly
//! allocated grain/block reads as zeros. After the boot the images are copied out of the host
//! partition (fsck.exfat -n must pass) and read back by qemu-img (`qemu-img dd` of each range;
//! `qemu-img check` for VMDK and VDI) or, for VHD differencing chains that qemu does not read, by
//! libvhdi; `vdisk check` too; parents must be byte-identical.
//!
//! On the code of issue 13's report every large image stops the machine: the engine's heap is a
//! fixed 4 MiB and opening a chain loads every table, so COM1 shows
//! `vboot engine: internal error: ... memory allocation of N bytes failed` and "The machine is
//! stopped." Each large test has a small twin (same code path, a 4 or 8 GiB image and its
//! allocating write at 1 or 4 GiB) that passes there, which shows the test itself is right.
//!
//! The machine is too small for a chain when its tables do not fit: then stage2 must say so
//! (the contract: the error screen contains `not enough memory` and at least two sizes in
//! KiB/MiB/GiB, what the chain needs and what the machine has) and show the menu again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vboot_tests::guests::{self, BigIoConfig, BigOp};
use vboot_tests::large::{self, big_host, HostFs, Reader, GIB, MIB};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{sh, TempDir};

const T: Duration = Duration::from_secs(300);
/// qemu-io writes 64 KiB of PREFILL_BYTE here before the boot: the grain/block the in-place
/// write goes to.
const PREFILL_LBA: u64 = 2048;
const PREFILL_BYTES: u64 = 64 << 10;
const PREFILL_BYTE: u8 = 0x5A;
/// The in-place write: 8 sectors inside the pre-filled range.
const IN_PLACE_LBA: u64 = PREFILL_LBA + 8;
/// The allocating write of the large images: 16 GiB.
const ALLOC_BIG: u64 = 16 * GIB / 512;
/// The allocating write of the small twins: 1 GiB.
const ALLOC_SMALL: u64 = GIB / 512;
/// What stage2 must say when the machine is too small for the chain.
const NOT_ENOUGH_MEMORY: &str = "not enough memory";

// ---- the plan: what the guest does, and what the image holds afterwards -----------------------

struct Plan {
    cfg: BigIoConfig,
    /// (first LBA, bytes) the image must hold after the boot.
    expect: Vec<(u64, Vec<u8>)>,
    /// The disk size the guest must see, in sectors.
    total: u64,
}

/// The guest's operations on a disk of `total` sectors (see the module documentation), with
/// `fills` (LBA, sectors, byte) to read as they are before and after the writes (data other
/// layers or qemu-io put there) and `in_place` more 8-sector writes into allocated space.
fn plan(tag: u32, total: u64, alloc: u64, fills: &[(u64, u16, u8)], in_place: &[u64]) -> Plan {
    let end = total - 8;
    let mut writes = vec![IN_PLACE_LBA];
    writes.extend_from_slice(in_place);
    writes.extend([alloc, end]);
    let mut ops = vec![BigOp::Fill { lba: PREFILL_LBA, sectors: 8, byte: PREFILL_BYTE }];
    ops.extend(fills.iter().map(|&(lba, sectors, byte)| BigOp::Fill { lba, sectors, byte }));
    ops.push(BigOp::Fill { lba: alloc, sectors: 8, byte: 0 });
    ops.push(BigOp::Fill { lba: end, sectors: 8, byte: 0 });
    ops.extend(writes.iter().map(|&lba| BigOp::Write { lba, sectors: 8 }));
    ops.extend(writes.iter().map(|&lba| BigOp::Pattern { lba, sectors: 8 }));
    ops.push(BigOp::Fill { lba: PREFILL_LBA, sectors: 8, byte: PREFILL_BYTE });
    ops.push(BigOp::Fill { lba: IN_PLACE_LBA + 8, sectors: 8, byte: PREFILL_BYTE });
    ops.push(BigOp::Fill { lba: alloc + 8, sectors: 8, byte: 0 });
    let cfg = BigIoConfig { tag, ops, bench: None };
    let mut expect = vec![
        (PREFILL_LBA, vec![PREFILL_BYTE; 8 * 512]),
        (IN_PLACE_LBA + 8, vec![PREFILL_BYTE; 8 * 512]),
        (alloc + 8, vec![0u8; 8 * 512]),
    ];
    expect.extend(fills.iter().map(|&(lba, sectors, byte)| (lba, vec![byte; sectors as usize * 512])));
    for lba in writes {
        expect.push((lba, (lba..lba + 8).flat_map(|s| cfg.written(s)).collect()));
    }
    Plan { cfg, expect, total }
}

/// The guest's first sectors with the plan's configuration, as a file for `qemu-io write -s`.
fn guest_head(dir: &Path, cfg: &BigIoConfig) -> PathBuf {
    let code = guests::build_bigio_guest(&dir.join("bigio-build"));
    let head = dir.join("guest-head.bin");
    std::fs::write(&head, guests::bigio_guest_sectors(&code, cfg)).unwrap();
    head
}

/// qemu-io commands that put the guest at LBA 0 and the pre-fill at 1 MiB.
fn head_and_prefill(head: &Path) -> Vec<String> {
    vec![
        format!("write -q -s {} 0 {}", head.display(), std::fs::metadata(head).unwrap().len()),
        format!("write -q -P 0x{:02x} {} {}", PREFILL_BYTE, PREFILL_LBA * 512, PREFILL_BYTES),
    ]
}

/// `qemu-img create` of `fmt` with `opts`; returns the disk's size in sectors, on which vdisk and
/// qemu-img must agree (qemu rounds a VHD to a CHS geometry up to 127 GiB; above that the
/// geometry saturates and the size is exact).
fn qemu_create(path: &Path, fmt: &str, opts: &str, bytes: u64) -> u64 {
    let mut args = vec!["create", "-q", "-f", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let size = bytes.to_string();
    args.extend([path.to_str().unwrap(), &size]);
    vboot_tests::qemu_img(&args);
    let total = large::vdisk_sectors(path);
    assert_eq!(total, large::qemu_sectors(path), "{}: vdisk and qemu-img disagree on the size", path.display());
    total
}

/// The guest at LBA 0 and the pre-fill at 1 MiB, by qemu-io.
fn put_head(path: &Path, fmt: &str, head: &Path) {
    let cmds = head_and_prefill(head);
    let cmds: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
    vboot_tests::qemu_io(fmt, path.to_str().unwrap(), &cmds);
}

/// A qemu-img image of `fmt` with the guest of `plan(total)` and the pre-fill.
fn qemu_image(dir: &Path, path: &Path, fmt: &str, opts: &str, bytes: u64, plan: impl Fn(u64) -> Plan) -> Plan {
    let total = qemu_create(path, fmt, opts, bytes);
    let p = plan(total);
    let head = guest_head(dir, &p.cfg);
    put_head(path, fmt, &head);
    p
}

/// Write `fill` into 8 sectors at `lba` of the chain whose leaf is `leaf`, through the image
/// library (qemu writes no VHD or VDI differencing image).
fn library_write(leaf: &Path, lba: u64, fill: u8) {
    use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
    let (layers, _) = open_chain(leaf.to_str().unwrap(), &mut StdLocator { writable_leaf: true }, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {}", leaf.display(), e));
    let mut disk = vboot::image::Disk::new(layers, vec![]).unwrap();
    disk.write(lba, &vec![fill; 8 * 512]).unwrap_or_else(|e| panic!("write into {}: {}", leaf.display(), e));
}

fn snapshot(parent: &Path, child: &Path, reserve: &str) {
    sh(Command::new(vboot_tests::vdisk_bin()).arg("snapshot").arg(parent).arg(child).args(["--reserve", reserve]));
}

fn vdisk_reserve(image: &Path, size: &str) {
    sh(Command::new(vboot_tests::vdisk_bin()).arg("reserve").arg(image).arg(size));
}

// ---- booting ------------------------------------------------------------------------------

/// The lines that say the machine stopped (the engine's or stage2's internal error and the
/// line after it, which names the failed allocation), if any.
fn stopped(out: &str) -> Option<String> {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| l.contains("internal error"))?;
    Some(lines[at..lines.len().min(at + 2)].iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n    "))
}

/// The last `n` lines of the output (the part that tells what happened).
fn tail(out: &str, n: usize) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait until QEMU exits, the machine stops with an internal error (then QEMU is killed at
/// once rather than at the timeout), or `T` passes. Returns the exit status (None if killed).
fn run_to_end(q: &mut Qemu) -> Option<i32> {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = q.try_exit() {
            return Some(s);
        }
        let out = q.output();
        if stopped(&out).is_some() {
            std::thread::sleep(Duration::from_millis(500));
            q.kill();
            return None;
        }
        if Instant::now() > deadline {
            q.kill();
            return None;
        }
    }
}

fn machine(disk: &Path, memory_mib: u32) -> Qemu {
    let mut cfg = Config::disk(disk);
    cfg.memory_mib = memory_mib;
    Qemu::start(&cfg)
}

/// The guest must pass: no internal error, BIGIO-PASS, exit status 33, and the disk size it
/// saw is `total`.
fn assert_guest_passed(title: &str, status: Option<i32>, out: &str, total: u64) {
    if let Some(line) = stopped(out) {
        panic!("{}: the machine stopped instead of booting the guest:\n    {}\n--- the end of the output ---\n{}", title, line, tail(out, 40));
    }
    assert!(
        out.contains(guests::BIGIO_PASS) && status == Some(EXIT_PASS),
        "{}: the guest did not pass (exit {:?}):\n{}",
        title,
        status,
        tail(out, 60)
    );
    assert_eq!(guests::bigio_disk_sectors(out), Some(total), "{}: the guest saw another disk size (AH=48h):\n{}", title, tail(out, 60));
}

// ---- one image on one host -----------------------------------------------------------------

struct Case<'a> {
    title: &'a str,
    fs: HostFs,
    /// Every file the host partition holds, at its root: the one grub.cfg names first.
    files: Vec<(String, PathBuf)>,
    /// Files that must not change (parents).
    unchanged: Vec<String>,
    /// The chain, leaf first, for libvhdi (VHD differencing); None: qemu reads the image.
    libvhdi_chain: Option<Vec<String>>,
    qemu_fmt: &'static str,
    plan: Plan,
    reserve: &'a str,
    /// The host partition's size; None: what the files need, with room for the slack.
    part_bytes: Option<u64>,
}

fn run_case(dir: &TempDir, c: Case) {
    let started = Instant::now();
    let leaf = c.files[0].0.clone();
    let grub = format!("set timeout=0\nmenuentry '{}' {{\n    vboot harddisk=/{} reserve={}\n}}\n", c.title, leaf, c.reserve);
    let files_bytes: u64 = c.files.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len().div_ceil(MIB) * MIB).sum();
    let part_bytes = c.part_bytes.unwrap_or(files_bytes + 64 * MIB + 3 * 8 * MIB);
    let refs: Vec<(&str, &Path)> = c.files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let host = big_host(dir, c.fs, part_bytes, &grub, &refs);
    let before: Vec<(String, Vec<u8>)> =
        c.unchanged.iter().map(|n| (n.clone(), std::fs::read(&c.files.iter().find(|(m, _)| m == n).unwrap().1).unwrap())).collect();
    eprintln!("{}: host disk built in {:.1} s", c.title, started.elapsed().as_secs_f64());

    let booting = Instant::now();
    let mut q = machine(&host.disk, 256);
    let status = run_to_end(&mut q);
    let out = q.output();
    eprintln!("{}: booted in {:.1} s", c.title, booting.elapsed().as_secs_f64());
    assert_guest_passed(c.title, status, &out, c.plan.total);
    for op in &c.plan.cfg.ops {
        assert!(out.contains(&op.ok_line()), "{}: no {:?} in the output:\n{}", c.title, op.ok_line(), tail(&out, 60));
    }

    let checking = Instant::now();
    let names: Vec<&str> = c.files.iter().map(|(n, _)| n.as_str()).collect();
    let back = host.pull(&names);
    let leaf_path = back.join(&leaf);
    vboot_tests::vdisk_check(&leaf_path, &format!("{}: ", c.title));
    if c.libvhdi_chain.is_none() && c.qemu_fmt != "vpc" {
        vboot_tests::qemu_img_check(&leaf_path, &format!("{}: ", c.title));
    }
    let reader = match &c.libvhdi_chain {
        Some(chain) => Reader::Libvhdi(chain.iter().map(|n| back.join(n)).collect()),
        None => Reader::Qemu(c.qemu_fmt),
    };
    for (lba, want) in &c.plan.expect {
        let got = large::read_range(&leaf_path, &reader, *lba, want.len() as u64 / 512, &dir.path);
        if got != *want {
            let bad = got.chunks(512).zip(want.chunks(512)).position(|(g, w)| g != w).unwrap();
            panic!("{}: after the boot, sector {} does not hold what the guest left there ({:?} reads {:02x?}...)", c.title, lba + bad as u64, reader, &got[bad * 512..bad * 512 + 16]);
        }
    }
    for (n, was) in &before {
        assert!(std::fs::read(back.join(n)).unwrap() == *was, "{}: the parent {} changed", c.title, n);
    }
    eprintln!("{}: checked in {:.1} s", c.title, checking.elapsed().as_secs_f64());
}

// ---- 1. VMDK monolithicSparse ----------------------------------------------------------------

fn vmdk_monolithic_sparse(tag: &str, title: &str, bytes: u64, alloc: u64) {
    let dir = TempDir::new(tag);
    let img = dir.join("big.vmdk");
    let plan = qemu_image(&dir.path, &img, "vmdk", "subformat=monolithicSparse", bytes, |total| plan(0x1301, total, alloc, &[], &[]));
    let case = Case {
        title,
        fs: HostFs::Exfat,
        files: vec![("big.vmdk".into(), img)],
        unchanged: vec![],
        libvhdi_chain: None,
        qemu_fmt: "vmdk",
        plan,
        reserve: "8M",
        part_bytes: None,
    };
    run_case(&dir, case);
}

/// A 100 GiB VMDK monolithicSparse (qemu-img) on exFAT: boots, takes an in-place write, an
/// allocating write at 16 GiB and one at the end, and qemu-img reads them back.
#[test]
fn vmdk_monolithic_sparse_100_gib() {
    vmdk_monolithic_sparse("large-vmdk-100g", "VMDK monolithicSparse 100 GiB", 100 * GIB, ALLOC_BIG);
}

/// Twin of the 100 GiB test: the same with 4 GiB and the allocating write at 1 GiB.
#[test]
fn vmdk_monolithic_sparse_4_gib() {
    vmdk_monolithic_sparse("large-vmdk-4g", "VMDK monolithicSparse 4 GiB", 4 * GIB, ALLOC_SMALL);
}

// ---- 2. VMDK twoGbMaxExtentSparse ------------------------------------------------------------

/// The extent files of a VMDK descriptor with their first sector: (file, first LBA, sectors).
fn extents(descriptor: &Path) -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string(descriptor).unwrap();
    let mut at = 0;
    let mut v = Vec::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 4 && w[0] == "RW" {
            let n: u64 = w[1].parse().unwrap();
            v.push((w[3].trim_matches('"').to_string(), at, n));
            at += n;
        }
    }
    v
}

fn vmdk_two_gb(tag: &str, title: &str, bytes: u64, alloc: u64) {
    let dir = TempDir::new(tag);
    let desc = dir.join("split.vmdk");
    let plan = qemu_image(&dir.path, &desc, "vmdk", "subformat=twoGbMaxExtentSparse", bytes, |total| plan(0x1302, total, alloc, &[], &[]));
    let ext = extents(&desc);
    assert!(ext.len() > 2, "{}: qemu-img made {} extents", title, ext.len());
    // Write slack in the extents that take the allocating writes: stage2 grows no multi-extent
    // VMDK (vdisk reserve neither), and qemu-img makes them without slack. Sparse extents take
    // new grains at their end, so appending zeros is what slack is.
    for lba in [alloc, plan.total - 8] {
        let (name, _, _) = ext.iter().find(|(_, a, n)| lba >= *a && lba < a + n).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(dir.join(name)).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len + 8 * MIB).unwrap();
    }
    let mut files = vec![("split.vmdk".to_string(), desc.clone())];
    files.extend(ext.iter().map(|(n, _, _)| (n.clone(), dir.join(n))));
    let case = Case {
        title,
        fs: HostFs::Exfat,
        files,
        unchanged: vec![],
        libvhdi_chain: None,
        qemu_fmt: "vmdk",
        plan,
        reserve: "8M",
        part_bytes: None,
    };
    run_case(&dir, case);
}

/// A 500 GiB VMDK twoGbMaxExtentSparse (qemu-img: a descriptor and 250 extent files, all on the
/// exFAT host partition's root): boots, takes the writes (the allocating one at 16 GiB lands in
/// the ninth extent, the last one in the last extent), and qemu-img reads them back.
#[test]
fn vmdk_two_gb_max_extent_sparse_500_gib() {
    vmdk_two_gb("large-split-500g", "VMDK twoGbMaxExtentSparse 500 GiB", 500 * GIB, ALLOC_BIG);
}

/// Twin: 8 GiB (four extents), the allocating write at 4 GiB (the third extent).
#[test]
fn vmdk_two_gb_max_extent_sparse_8_gib() {
    vmdk_two_gb("large-split-8g", "VMDK twoGbMaxExtentSparse 8 GiB", 8 * GIB, 4 * GIB / 512);
}

// ---- 3. VHD dynamic ----------------------------------------------------------------------------

fn vhd_dynamic(tag: &str, title: &str, bytes: u64, alloc: u64, fs: HostFs) {
    let dir = TempDir::new(tag);
    let img = dir.join("big.vhd");
    let plan = qemu_image(&dir.path, &img, "vpc", "subformat=dynamic", bytes, |total| plan(0x1303, total, alloc, &[], &[]));
    let part_bytes = match fs {
        HostFs::Exfat => None,
        // NTFS: stage2 grows no file there; the slack is made on the host.
        HostFs::Ntfs => {
            vdisk_reserve(&img, "8M");
            Some(1 << 40)
        }
    };
    let case = Case {
        title,
        fs,
        files: vec![("big.vhd".into(), img)],
        unchanged: vec![],
        libvhdi_chain: None,
        qemu_fmt: "vpc",
        plan,
        reserve: "8M",
        part_bytes,
    };
    run_case(&dir, case);
}

/// A 2040 GiB VHD dynamic (qemu-img, the largest VHD qemu makes) on exFAT: boots, takes the
/// writes, and qemu-img reads them back.
#[test]
fn vhd_dynamic_2040_gib() {
    vhd_dynamic("large-vhd-2040g", "VHD dynamic 2040 GiB", 2040 * GIB, ALLOC_BIG, HostFs::Exfat);
}

/// Twin: a 4 GiB VHD dynamic, the allocating write at 1 GiB.
#[test]
fn vhd_dynamic_4_gib() {
    vhd_dynamic("large-vhd-4g", "VHD dynamic 4 GiB", 4 * GIB, ALLOC_SMALL, HostFs::Exfat);
}

// ---- 4. a VHD differencing chain of depth 8 --------------------------------------------------

/// The chain: `base.vhd` (qemu-img, dynamic, with the guest and the pre-fill) and seven children
/// `c1.vhd`..`c7.vhd` made by `vdisk snapshot --reserve 6M`; child k holds 0x60+k in 8 sectors
/// at LBA 4096 + 8k, and the leaf c7 also holds 0x77 in the in-place write's sectors, so the
/// in-place write finds its block allocated in the leaf and reads of 1 MiB fall through it.
fn vhd_chain(tag: &str, title: &str, bytes: u64, alloc: u64) {
    let dir = TempDir::new(tag);
    let fills: Vec<(u64, u16, u8)> = (1..=7u64).map(|k| (4096 + 8 * k, 8, 0x60 + k as u8)).collect();
    let base = dir.join("base.vhd");
    let plan = qemu_image(&dir.path, &base, "vpc", "subformat=dynamic", bytes, |total| plan(0x1304, total, alloc, &fills, &[]));
    let mut files = vec![("base.vhd".to_string(), base)];
    for k in 1..=7u64 {
        let name = format!("c{}.vhd", k);
        let path = dir.join(&name);
        snapshot(&files.last().unwrap().1, &path, "6M");
        library_write(&path, 4096 + 8 * k, 0x60 + k as u8);
        files.push((name, path));
    }
    library_write(&files[7].1, IN_PLACE_LBA, 0x77);
    files.reverse();
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let case = Case {
        title,
        fs: HostFs::Exfat,
        files,
        unchanged: names[1..].to_vec(),
        libvhdi_chain: Some(names),
        qemu_fmt: "vpc",
        plan,
        reserve: "8M",
        part_bytes: None,
    };
    run_case(&dir, case);
}

/// A VHD differencing chain of depth 8 (seven children by `vdisk snapshot`) over a 1 TiB VHD
/// dynamic base on exFAT: boots; reads fall through every layer; the writes land in the leaf
/// (libvhdi reads them back); the parents stay byte-identical.
#[test]
fn vhd_chain_of_depth_8_over_1_tib() {
    vhd_chain("large-vhdchain-1t", "VHD chain of depth 8 over 1 TiB", 1 << 40, ALLOC_BIG);
}

/// Twin: the same chain over a 4 GiB base, the allocating write at 1 GiB.
#[test]
fn vhd_chain_of_depth_8_over_4_gib() {
    vhd_chain("large-vhdchain-4g", "VHD chain of depth 8 over 4 GiB", 4 * GIB, ALLOC_SMALL);
}

// ---- 5. VDI dynamic ---------------------------------------------------------------------------

fn vdi_dynamic(tag: &str, title: &str, bytes: u64, alloc: u64) {
    let dir = TempDir::new(tag);
    let img = dir.join("big.vdi");
    let plan = qemu_image(&dir.path, &img, "vdi", "static=off", bytes, |total| plan(0x1305, total, alloc, &[], &[]));
    let case = Case {
        title,
        fs: HostFs::Exfat,
        files: vec![("big.vdi".into(), img)],
        unchanged: vec![],
        libvhdi_chain: None,
        qemu_fmt: "vdi",
        plan,
        reserve: "8M",
        part_bytes: None,
    };
    run_case(&dir, case);
}

/// A 2 TiB VDI dynamic (qemu-img; 2^32 sectors, one more than 32-bit LBAs reach) on exFAT:
/// boots, takes the writes, and qemu-img reads them back.
#[test]
fn vdi_dynamic_2_tib() {
    vdi_dynamic("large-vdi-2t", "VDI dynamic 2 TiB", 2 << 40, ALLOC_BIG);
}

/// Twin: a 4 GiB VDI dynamic, the allocating write at 1 GiB.
#[test]
fn vdi_dynamic_4_gib() {
    vdi_dynamic("large-vdi-4g", "VDI dynamic 4 GiB", 4 * GIB, ALLOC_SMALL);
}

// ---- 6. a VMDK with many grains written in shuffled order ------------------------------------

fn shuffled(tag: &str, title: &str, bytes: u64, grains: usize, alloc: u64) {
    let dir = TempDir::new(tag);
    let total = bytes / 512;
    let made = Instant::now();
    // The grains the guest looks at are known only after the shuffle, and the guest's
    // configuration is written with the rest: shuffle first with a placeholder head, then put the
    // real head in (grain 0 is allocated by then, so that is an in-place qemu-io write).
    let placeholder = dir.join("placeholder.bin");
    std::fs::write(&placeholder, vec![0u8; (guests::BIGIO_SECTORS * 512) as usize]).unwrap();
    let avoid: Vec<u64> = (0..=PREFILL_LBA / 128 + 16).chain([alloc / 128, (total - 8) / 128]).collect();
    // In /dev/shm while qemu-io writes (its zero-filled grains cost no disk I/O there).
    let scratch = large::ScratchFile::new(&dir, "shuffled.vmdk", 2 * GIB);
    let img = scratch.path.clone();
    let order = large::shuffled_vmdk(&img, bytes, &placeholder, &[(PREFILL_LBA * 512, PREFILL_BYTES, PREFILL_BYTE)], grains, 0x5EED_1313, &avoid);
    let created = made.elapsed();
    let picks = [0, grains / 2, grains - 1, 12_345 % grains];
    let mut fills: Vec<(u64, u16, u8)> = Vec::new();
    for (i, &k) in picks.iter().enumerate() {
        fills.push((order[k] * 128, 1, large::shuffled_marker(k)));
        if i < 2 {
            fills.push((order[k] * 128 + 1, 7, 0));
        }
    }
    let plan = plan(0x1306, total, alloc, &fills, &[order[grains / 3] * 128 + 8]);
    let head = guest_head(&dir.path, &plan.cfg);
    vboot_tests::qemu_io("vmdk", img.to_str().unwrap(), &[&head_and_prefill(&head)[0]]);
    eprintln!(
        "{}: {} grains written by qemu-io in shuffled order in {:.1} s ({} MiB allocated on the host)",
        title,
        grains,
        created.as_secs_f64(),
        large::data_ranges(&img).iter().map(|r| r.1).sum::<u64>() >> 20
    );
    let case = Case {
        title,
        fs: HostFs::Exfat,
        files: vec![("shuffled.vmdk".into(), img)],
        unchanged: vec![],
        libvhdi_chain: None,
        qemu_fmt: "vmdk",
        plan,
        reserve: "8M",
        part_bytes: None,
    };
    run_case(&dir, case);
}

/// A 64 GiB VMDK monolithicSparse with 100,000 grains written by qemu-io in shuffled order (so
/// the grains lie in the file in another order than on the disk): boots; the guest reads the
/// markers of four of them, writes in place into one, writes at 16 GiB and at the end; qemu-img
/// reads it all back.
#[test]
fn vmdk_64_gib_with_100000_shuffled_grains() {
    shuffled("large-shuffled-64g", "VMDK 64 GiB, 100000 shuffled grains", 64 * GIB, 100_000, ALLOC_BIG);
}

/// Twin: 4 GiB with 4,000 shuffled grains, the allocating write at 1 GiB.
#[test]
fn vmdk_4_gib_with_4000_shuffled_grains() {
    shuffled("large-shuffled-4g", "VMDK 4 GiB, 4000 shuffled grains", 4 * GIB, 4_000, ALLOC_SMALL);
}

// ---- 7. an NTFS host partition of 1 TiB ------------------------------------------------------

/// A 2040 GiB VHD dynamic on a 1 TiB NTFS host partition (a sparse host disk; mkntfs, ntfscp;
/// the write slack made on the host by `vdisk reserve`, as stage2 grows no file on NTFS): boots,
/// takes the writes, and qemu-img reads them back (copied out with ntfscat).
#[test]
fn vhd_dynamic_2040_gib_on_a_1_tib_ntfs_host() {
    vhd_dynamic("large-ntfs-2040g", "VHD dynamic 2040 GiB on NTFS", 2040 * GIB, ALLOC_BIG, HostFs::Ntfs);
}

/// Twin: a 4 GiB VHD dynamic on the same 1 TiB NTFS host (so the host's size is not what the
/// large test trips over).
#[test]
fn vhd_dynamic_4_gib_on_a_1_tib_ntfs_host() {
    vhd_dynamic("large-ntfs-4g", "VHD dynamic 4 GiB on NTFS", 4 * GIB, ALLOC_SMALL, HostFs::Ntfs);
}

// ---- 8. a machine too small for the chain ---------------------------------------------------

/// How many sizes ("41 MiB", "30720KiB", "2 GiB") a text names.
fn sizes_named(text: &str) -> usize {
    let b = text.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.' || b[j] == b',') {
                j += 1;
            }
            let rest = text[j..].trim_start_matches(' ');
            if ["KiB", "MiB", "GiB", "KB", "MB", "GB"].iter().any(|u| rest.starts_with(u)) {
                n += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    n
}

/// A VDI chain of depth 4 (`base.vdi` by qemu-img with the guest, c1..c3 by `vdisk snapshot`)
/// over a base of `bytes`, and a 4 GiB VDI `small.vdi` with its own guest, on one exFAT host;
/// the menu waits. Returns (dir, host, plan of the chain, plan of small.vdi).
fn vdi_chain_host(tag: &str, bytes: u64, alloc: u64) -> (TempDir, large::BigHost, Plan, Plan) {
    let dir = TempDir::new(tag);
    let base = dir.join("base.vdi");
    let chain_plan = qemu_image(&dir.path, &base, "vdi", "static=off", bytes, |total| plan(0x1307, total, alloc, &[], &[]));
    let mut files = vec![("base.vdi".to_string(), base)];
    for k in 1..=3 {
        let name = format!("c{}.vdi", k);
        let path = dir.join(&name);
        snapshot(&files.last().unwrap().1, &path, "0");
        files.push((name, path));
    }
    let small_dir = dir.join("small");
    std::fs::create_dir_all(&small_dir).unwrap();
    let small = dir.join("small.vdi");
    let small_plan = qemu_image(&small_dir, &small, "vdi", "static=off", 4 * GIB, |total| plan(0x1308, total, ALLOC_SMALL, &[], &[]));
    files.push(("small.vdi".to_string(), small));
    let grub = "set timeout=-1\n\
menuentry 'chain' {\n    vboot harddisk=/c3.vdi reserve=8M\n}\n\
menuentry 'small' {\n    vboot harddisk=/small.vdi reserve=8M\n}\n";
    let files_bytes: u64 = files.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len().div_ceil(MIB) * MIB).sum();
    let refs: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let host = big_host(&dir, HostFs::Exfat, files_bytes + 96 * MIB, grub, &refs);
    (dir, host, chain_plan, small_plan)
}

/// Boot entry 2 (small.vdi) from the menu and require the guest to pass.
fn boot_small(q: &mut Qemu, small: &Plan) {
    let mark = q.mark();
    q.send(b"2");
    let status = run_to_end(q);
    let out = q.output();
    assert_guest_passed("small.vdi after the refusal", status, out.get(mark..).unwrap_or(""), small.total);
}

/// A 64 MiB machine and a 2 TiB VDI chain of depth 4 (children by `vdisk snapshot`; each layer's
/// block map alone is 8 MiB): stage2 refuses the entry with an error screen that says
/// `not enough memory` and names what is needed and what there is (two sizes in KiB/MiB/GiB),
/// the menu comes back, and another entry (a 4 GiB VDI) then boots and passes.
#[test]
fn a_machine_too_small_for_a_2_tib_vdi_chain_says_so_and_shows_the_menu_again() {
    let (_dir, host, _chain, small) = vdi_chain_host("large-small-machine", 2 << 40, ALLOC_BIG);
    let mut q = machine(&host.disk, 64);
    q.expect("2. small", T);
    std::thread::sleep(Duration::from_millis(200));
    let mark = q.mark();
    q.send(b"1");
    let deadline = Instant::now() + T;
    let screen = loop {
        let out = q.output();
        let after = out.get(mark..).unwrap_or("").to_string();
        if after.contains("Press any key to return to the menu.") {
            break after;
        }
        if let Some(line) = stopped(&after) {
            std::thread::sleep(Duration::from_millis(500));
            panic!(
                "the machine stopped instead of refusing the chain with {:?}:\n    {}\n--- the output after pressing 1 ---\n{}",
                NOT_ENOUGH_MEMORY,
                line,
                tail(q.output().get(mark..).unwrap_or(""), 40)
            );
        }
        if after.contains(guests::BIGIO_PASS) || q.try_exit().is_some() || Instant::now() > deadline {
            panic!("expected an error screen saying {:?}; got:\n{}", NOT_ENOUGH_MEMORY, tail(q.output().get(mark..).unwrap_or(""), 40));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lower = screen.to_lowercase();
    let at = lower.find(NOT_ENOUGH_MEMORY).unwrap_or_else(|| panic!("the error screen does not say {:?}:\n{}", NOT_ENOUGH_MEMORY, tail(&screen, 40)));
    // The message: from the start of its line to the prompt (it may wrap over lines).
    let from = screen[..at].rfind('\n').map_or(0, |n| n + 1);
    let message = &screen[from..screen.rfind("Press any key to return to the menu.").unwrap()];
    assert!(sizes_named(message) >= 2, "the message should name what the chain needs and what the machine has (two sizes in KiB/MiB/GiB):\n{}", message);
    let mark = q.mark();
    q.send(b" ");
    q.expect_from(mark, "2. small", T);
    std::thread::sleep(Duration::from_millis(200));
    boot_small(&mut q, &small);
    host.fsck("the refusal and the boot of small.vdi");
}

/// Twin: the same host layout with the chain over a 4 GiB base, in the same 64 MiB machine:
/// entry 1 boots the depth-4 chain and the guest passes.
#[test]
fn a_4_gib_vdi_chain_of_depth_4_boots_in_a_64_mib_machine() {
    let (_dir, host, chain, _small) = vdi_chain_host("large-small-machine-4g", 4 * GIB, ALLOC_SMALL);
    let mut q = machine(&host.disk, 64);
    q.expect("2. small", T);
    std::thread::sleep(Duration::from_millis(200));
    let mark = q.mark();
    q.send(b"1");
    let status = run_to_end(&mut q);
    let out = q.output();
    assert_guest_passed("VDI chain of depth 4 over 4 GiB in 64 MiB", status, out.get(mark..).unwrap_or(""), chain.total);
}

#[test]
fn sizes_named_counts_sizes() {
    assert_eq!(sizes_named("not enough memory: needs 41 MiB, has 30720 KiB free"), 2);
    assert_eq!(sizes_named("not enough memory for this chain (33,5 MiB; 31MiB)"), 2);
    assert_eq!(sizes_named("c3.vdi is 2 TiB"), 0);
    assert_eq!(sizes_named("x2 MiB"), 0);
}
