//! Crash safety (issue 7, invariant 3 of docs/architecture.md): QEMU is killed (SIGKILL, a power
//! cut for the disk file) at random moments while the chain guest writes across a dynamic child
//! (VHD, VMDK, VDI) that allocates every new block, grain or block inside its reserved slack. After
//! each kill: `vdisk check` (and `qemu-img check` where qemu reads the child) pass, `fsck.fat -n`
//! finds the host partition clean, the parent is unchanged, every write the guest saw completed is
//! there, and every other sector reads as the parent or as what the guest wrote, nothing else. Then
//! the crashed child boots again and takes every write.
//!
//! The kill points come from a seed printed in every failure (`VBOOT_CRASH_SEED=N` repeats a run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, ChainConfig, WriteRun};
use vboot_tests::rig::Rig;
use vboot_tests::{sh, TempDir};

const T: Duration = Duration::from_secs(180);
const SECTORS: u64 = 8 * 2048;
const KILLS_PER_FORMAT: usize = 3;

/// 60 writes of 2 sectors, 270 sectors apart: a new VMDK grain every write, a new VHD block
/// (2 MiB) or VDI block (1 MiB) every few, over the whole disk.
fn config() -> ChainConfig {
    ChainConfig { flags: 0, tag: 0x5AFE_C0DE, runs: vec![WriteRun { lba: 64, writes: 60, stride: 270, sectors: 2 }] }
}

fn seed() -> u64 {
    std::env::var("VBOOT_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn vdisk() -> PathBuf {
    vboot_tests::vdisk_bin()
}

/// The chain as a raw disk: qemu-img where qemu reads the child, else vdisk.
fn chain_raw(leaf: &Path, ext: &str) -> Vec<u8> {
    let out = leaf.with_extension("raw");
    let _ = std::fs::remove_file(&out);
    if ext == "vmdk" {
        sh(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(leaf).arg(&out));
    } else {
        sh(Command::new(vdisk()).arg("convert").arg(leaf).arg(&out).args(["--format", "raw"]));
    }
    let v = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    v
}

fn checks_pass(leaf: &Path, ext: &str, seed: u64) {
    let context = format!("seed {}: ", seed);
    vboot_tests::vdisk_check(leaf, &context);
    if ext == "vmdk" {
        vboot_tests::qemu_img_check(leaf, &context);
    }
}

/// LBAs of the writes the guest reported done ("W <lba>" comes after AH=43h returned).
fn completed_writes(out: &str) -> Vec<u64> {
    out.lines().filter_map(|l| l.trim().strip_prefix("W ")).filter_map(|h| u64::from_str_radix(h.trim(), 16).ok()).collect()
}

/// Every sector reads as the parent or as the guest's write; the completed ones as the write.
fn check_content(got: &[u8], parent: &[u8], cfg: &ChainConfig, completed: &[u64], what: &str) {
    assert_eq!(got.len(), parent.len(), "{}: the chain has another size", what);
    let sectors_per_write = cfg.runs[0].sectors as u64;
    let done: std::collections::HashSet<u64> =
        completed.iter().flat_map(|&l| l..l + sectors_per_write).collect();
    let written: std::collections::HashSet<u64> = cfg.written_lbas().into_iter().collect();
    let mut bad = Vec::new();
    for lba in 0..parent.len() as u64 / 512 {
        let at = lba as usize * 512;
        let g = &got[at..at + 512];
        let old = &parent[at..at + 512];
        let new = guests::chain_written_sector(lba, cfg.tag);
        let ok = if done.contains(&lba) {
            g == new
        } else if written.contains(&lba) {
            g == new || g == old
        } else {
            g == old
        };
        if !ok {
            bad.push(format!(
                "LBA {} ({}) holds {}",
                lba,
                if done.contains(&lba) { "write completed" } else if written.contains(&lba) { "write maybe started" } else { "never written" },
                if g == old { "the parent's data" } else if g == &new[..] { "the guest's write" } else { "other bytes" }
            ));
            if bad.len() >= 8 {
                break;
            }
        }
    }
    assert!(bad.is_empty(), "{}:\n{}", what, bad.join("\n"));
}

fn crash(fmt: &str, opts: &str, ext: &str) {
    let seed = seed();
    let mut rng = seed | 1;
    let dir = TempDir::new(&format!("crash-{}-src", ext));
    let cfg = config();
    let code = guests::build_chain_guest(&dir.join("chainer-build"));
    // The parent holds the probe pattern everywhere, so a new VDI block or VMDK grain must copy
    // the parent's data around what the guest wrote.
    let raw_path = dir.join("parent.raw");
    guests::make_pattern_disk(&raw_path, SECTORS);
    let mut parent_data = std::fs::read(&raw_path).unwrap();
    let head = guests::chain_guest_sectors(&code, &cfg);
    parent_data[..head.len()].copy_from_slice(&head);
    std::fs::write(&raw_path, &parent_data).unwrap();
    let parent = dir.join(&format!("parent.{}", ext));
    sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw_path).arg(&parent));
    let child = dir.join(&format!("child.{}", ext));
    sh(Command::new(vdisk()).arg("snapshot").arg(&parent).arg(&child).args(["--reserve", "12M"]));
    let grub_cfg = format!("set timeout=0\nmenuentry 'child' {{\n    vboot harddisk=/vm/child.{}\n}}\n", ext);
    let names = [format!("parent.{}", ext), format!("child.{}", ext)];
    let images: Vec<(&str, &Path)> = vec![(&names[0], &parent), (&names[1], &child)];
    let total_writes = cfg.runs[0].writes as usize;

    let mut last_rig = None;
    let mut interrupted = 0;
    for kill in 0..KILLS_PER_FORMAT {
        let rig = Rig::new(&format!("crash-{}", ext), 96, &grub_cfg, &images);
        // Kill after the k-th completed write has been reported (plus however far the guest gets
        // before the signal lands); the first kill point is early, the others anywhere.
        let k = if kill == 0 { 1 + (next(&mut rng) % 8) as usize } else { 1 + (next(&mut rng) % total_writes as u64) as usize };
        let mut q = rig.start();
        let deadline = std::time::Instant::now() + T;
        loop {
            let out = q.output();
            if completed_writes(&out).len() >= k || out.contains("CHAIN-FAIL") || out.contains("vboot:") {
                break;
            }
            if q.try_exit().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // A random extra moment, so the kill lands anywhere in the write that follows.
        std::thread::sleep(Duration::from_millis(next(&mut rng) % 400));
        q.kill();
        let out = q.output();
        let what = format!("{} kill {} (seed {}, after write {} of {})", ext, kill + 1, seed, k, total_writes);
        assert!(!out.contains("CHAIN-FAIL") && out.contains("CHAIN-START"), "{}: the guest failed before the kill:\n{}", what, out);
        let completed = completed_writes(&out);
        eprintln!("{}: killed with {} writes reported", what, completed.len());
        if completed.len() < total_writes {
            interrupted += 1;
        }
        let back = rig.pull();
        assert!(std::fs::read(back.join(&names[0])).unwrap() == std::fs::read(&parent).unwrap(), "{}: the parent changed", what);
        let leaf = back.join(&names[1]);
        checks_pass(&leaf, ext, seed);
        check_content(&chain_raw(&leaf, ext), &parent_data, &cfg, &completed, &what);
        last_rig = Some(rig);
    }

    assert!(interrupted > 0, "{}: no kill landed before the guest's last write: the crash test tested nothing", ext);

    // The crashed child boots again and takes every write (its orphaned allocations reused).
    let rig = last_rig.unwrap();
    let out = rig.boot_pass(guests::CHAIN_PASS);
    let back = rig.pull();
    let leaf = back.join(&names[1]);
    checks_pass(&leaf, ext, seed);
    let what = format!("{} after the crash, booted again (seed {})", ext, seed);
    check_content(&chain_raw(&leaf, ext), &parent_data, &cfg, &completed_writes(&out), &what);
}

#[test]
fn vhd_child_survives_kills_during_allocating_writes() {
    crash("vpc", "subformat=dynamic,force_size=on", "vhd");
}

#[test]
fn vmdk_child_survives_kills_during_allocating_writes() {
    crash("vmdk", "subformat=monolithicSparse", "vmdk");
}

#[test]
fn vdi_child_survives_kills_during_allocating_writes() {
    crash("vdi", "static=off", "vdi");
}
