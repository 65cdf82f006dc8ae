//! `cargo xtask demo`: what a user does, end to end. Build a host disk (MBR, FAT32) holding
//! grub.cfg and three raw disk images, install vboot on it with the real vboot-install, and
//! boot it in QEMU: the menu comes up over the serial line, entry 1 (a GRUB 2 installed inside
//! a disk image) is chosen by its timeout and hashes a file, then a second boot picks entry 2 (a
//! disk-checking guest) with a key press. With --interactive the last boot is yours.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use vboot_tests::guests::{self, ProbeConfig};
use vboot_tests::qemu::Qemu;
use vboot_tests::{vboot_host, TempDir};

const GRUB_CFG: &str = "\
# grub.cfg of the demo host disk: each entry boots a raw disk image through vboot.
set timeout=5
set default=0

menuentry 'GRUB 2 inside grub-guest.img (hashes a 4 MiB file)' {
    vboot harddisk=(hd0,1)/images/grub-guest.img
}
menuentry 'INT 13h probe inside probe.img (reads, writes, checks)' {
    vboot harddisk=/images/probe.img
}
menuentry 'Same probe, pausing before the guest starts' {
    vboot harddisk=/images/probe.img pause
}
menuentry 'A missing image (shows an error, back to the menu)' {
    vboot harddisk=/images/missing.vhd
}
";

/// Stream what the guest prints until QEMU exits or `timeout` passes.
fn stream(q: &mut Qemu, timeout: Duration) -> Option<i32> {
    let mut shown = 0;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = q.output();
        if out.len() > shown {
            print!("{}", &out[shown..]);
            let _ = std::io::stdout().flush();
            shown = out.len();
        }
        if let Some(code) = q.try_exit() {
            let out = q.output();
            print!("{}", &out[shown.min(out.len())..]);
            return Some(code);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let interactive = args.iter().any(|a| a == "--interactive");
    if args.iter().any(|a| a == "--kvm") {
        std::env::set_var("VBOOT_QEMU_ACCEL", "kvm");
    }
    let out_dir = crate::root().join("demo-out");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    std::env::set_var("VBOOT_KEEP_TMP", "1");
    let dir = TempDir::new("demo");

    println!("== Making the guest images");
    let (grub, sha) = guests::build_grub_guest(&dir.path, 4 << 20);
    let probe_bin = guests::build_probe(&dir.join("probe-build"));
    let probe = dir.join("probe.img");
    let sectors = 16 * 2048;
    guests::make_probe_disk(&probe, &probe_bin, &ProbeConfig::new(sectors));
    println!("   grub-guest.img: GRUB 2 on a FAT partition; the file it hashes has SHA-256 {}", sha);
    println!("   probe.img: {} MiB, a boot-sector program that exercises INT 13h", sectors / 2048);

    println!("== Making the host disk and installing vboot with vboot-install");
    let host = vboot_host(&dir, 128, GRUB_CFG, &[]);
    for (path, file, pieces) in [("/images/grub-guest.img", &grub, 3), ("/images/probe.img", &probe, 4)] {
        let _ = std::process::Command::new("mmd").arg("-i").arg(&host.part).arg("::/images").env("MTOOLS_SKIP_CHECK", "1").output();
        vboot_tests::disk::put_fragmented(&host.part, path, &std::fs::read(file).map_err(|e| e.to_string())?, pieces);
    }
    vboot_tests::disk::write_at(&host.disk, 2048, &host.part);
    let disk: PathBuf = out_dir.join("host-disk.img");
    std::fs::rename(&host.disk, &disk).map_err(|e| e.to_string())?;
    let status = std::process::Command::new(crate::root().join("target/release/vboot-install"))
        .arg("status")
        .arg(&disk)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("vboot-install status failed".into());
    }

    println!("\n== Boot 1: the menu's timeout boots entry 1 (GRUB 2 inside an image)\n");
    let mut q = Qemu::boot_disk(&disk);
    let code = stream(&mut q, Duration::from_secs(120));
    if !q.output().contains(&sha) || code != Some(33) {
        return Err(format!("boot 1 did not end as expected (exit {:?})", code));
    }
    println!("\n   -> GRUB printed the same SHA-256 as the host: {}", sha);

    println!("\n== Boot 2: pressing '2' picks the INT 13h probe\n");
    let mut q = Qemu::boot_disk(&disk);
    q.expect("4. A missing image", Duration::from_secs(60));
    q.send(b"2");
    let code = stream(&mut q, Duration::from_secs(120));
    if !q.output().contains("PROBE PASS") || code != Some(33) {
        return Err(format!("boot 2 did not end as expected (exit {:?})", code));
    }

    println!("\n== Done. The host disk is {}", disk.display());
    println!("   Boot it yourself (serial console on this terminal, Ctrl-A X quits):");
    println!(
        "   qemu-system-i386 -bios /usr/share/seabios/bios.bin -m 256 -nographic -drive file={},format=raw,if=virtio",
        disk.display()
    );
    if interactive {
        println!("\n== Interactive boot");
        let _ = std::process::Command::new("qemu-system-i386")
            .args(["-bios", "/usr/share/seabios/bios.bin", "-m", "256", "-nographic", "-drive"])
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .status();
    }
    Ok(())
}
