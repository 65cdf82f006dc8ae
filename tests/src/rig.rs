//! A host disk with images under /vm and a grub.cfg, booted as many times as a test needs, and
//! the images read back out of it afterwards (with `fsck.fat -n` on the host partition).

use crate::qemu::{Qemu, EXIT_PASS};
use crate::{disk, sh, vboot_host, Host, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const T: Duration = Duration::from_secs(120);

/// A host disk with images under /vm and a grub.cfg, booted as often as a test needs. Images
/// of 1 MiB and more are put in 2 fragments each, smaller ones in one piece.
pub struct Rig {
    pub dir: TempDir,
    pub host: Host,
    pub names: Vec<String>,
    /// The last menu entry's title: once it is on screen, the menu reads keys.
    pub last_title: String,
}

impl Rig {
    pub fn new(tag: &str, size_mib: u64, grub_cfg: &str, images: &[(&str, &Path)]) -> Rig {
        let dir = TempDir::new(tag);
        let host = vboot_host(&dir, size_mib, grub_cfg, &[]);
        sh(Command::new("mmd").arg("-i").arg(&host.part).arg("::/vm").env("MTOOLS_SKIP_CHECK", "1"));
        for (name, file) in images {
            let bytes = std::fs::read(file).unwrap();
            if bytes.len() >= 1 << 20 {
                disk::put_fragmented(&host.part, &format!("/vm/{}", name), &bytes, 2);
            } else {
                sh(Command::new("mcopy").arg("-o").arg("-i").arg(&host.part).arg(file).arg(format!("::/vm/{}", name)).env("MTOOLS_SKIP_CHECK", "1"));
            }
        }
        disk::write_at(&host.disk, 2048, &host.part);
        let last_title = grub_cfg.rsplit("menuentry '").next().and_then(|t| t.split('\'').next()).unwrap_or("").to_string();
        Rig { dir, host, names: images.iter().map(|(n, _)| n.to_string()).collect(), last_title }
    }

    pub fn start(&self) -> Qemu {
        let mut cfg = crate::qemu::Config::disk(&self.host.disk);
        cfg.memory_mib = 256;
        Qemu::start(&cfg)
    }

    /// Boot the only (or default) entry and wait for the guest to end QEMU with the pass code.
    pub fn boot_pass(&self, needle: &str) -> String {
        let mut q = self.start();
        let status = q.wait_exit(T);
        let out = q.output();
        assert!(out.contains(needle), "no {:?} (exit {:?}):\n{}", needle, status, out);
        assert_eq!(status, Some(EXIT_PASS), "{}", out);
        out
    }

    /// Boot menu entry `digit` (the menu waits: timeout=-1) and wait for the pass code.
    pub fn boot_entry(&self, digit: u8, needle: &str) -> String {
        self.start().boot_from_menu(&self.last_title, b'0' + digit, needle, T)
    }

    /// The images as the host disk holds them now, copied into `out/` under their own names (so
    /// relative parent links still resolve there), after `fsck.fat -n` passed on the partition.
    pub fn pull(&self) -> PathBuf {
        let part = self.host.current_partition(&self.dir.join("part-now.img"));
        fsck_clean(&part);
        let out = self.dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        for n in &self.names {
            disk::fat_get(&part, &format!("/vm/{}", n), &out.join(n));
        }
        out
    }
}

pub fn fsck_clean(part: &Path) {
    let fsck = Command::new("fsck.fat").arg("-n").arg(part).output().expect("run fsck.fat (dosfstools)");
    assert!(
        fsck.status.success(),
        "fsck.fat -n finds the host partition damaged:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// A grub.cfg that waits in the menu, one entry per (title, vboot arguments).
pub fn menu(entries: &[(&str, String)]) -> String {
    let mut s = String::from("set timeout=-1\n");
    for (title, args) in entries {
        s.push_str(&format!("menuentry '{}' {{\n    vboot {}\n}}\n", title, args));
    }
    s
}

