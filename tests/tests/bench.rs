//! Benchmarks, not tests: `cargo xtask bench` runs them (they are #[ignore]d in `cargo test`).
//! Figures are ratios measured in one run, absolute times only beside their baseline; the
//! results go to target/bench.md for the README.

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{guests, vboot_host, workspace_root, HostImage, TempDir};

const T: Duration = Duration::from_secs(300);

/// Seconds between READ-START and READ-END as the host sees them on the serial line.
fn timed_read(cfg: &Config) -> (f64, String) {
    let mut q = Qemu::start(cfg);
    q.expect("READ-START", T);
    let start = Instant::now();
    let out = q.expect("READ-END", T);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    (secs, out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore]
fn bench_all() {
    let dir = TempDir::new("bench");
    let mut report = String::new();
    let accel = std::env::var("VBOOT_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    writeln!(report, "Measured with QEMU {} (accelerator {}), SeaBIOS, disks on virtio-blk.\n", qemu_version(), accel).unwrap();

    // Sizes.
    let stage1 = std::fs::read(workspace_root().join("target/vboot/stage1.bin")).unwrap();
    let stage2 = std::fs::metadata(workspace_root().join("target/vboot/stage2.bin")).unwrap().len();
    let code = stage1[..0x1A8].iter().rposition(|&b| b != 0).map(|p| p + 1).unwrap_or(0);
    writeln!(report, "| what | figure |\n|---|---|").unwrap();
    writeln!(report, "| stage1 code | {} of 424 bytes (0x000-0x1A7; patch area 0x1A8-0x1B7) |", code).unwrap();
    writeln!(report, "| stage2.bin | {} bytes ({} KiB, {} sectors) |", stage2, stage2 / 1024, stage2 / 512).unwrap();
    let engine = std::fs::metadata(workspace_root().join("target/vboot/engine.bin")).unwrap().len();
    writeln!(report, "| engine.bin (loaded when an image boots) | {} bytes ({} KiB) |", engine, engine / 1024).unwrap();

    // Read throughput: the same 64 MiB image read natively and through the hook.
    let sectors = 64 * 2048;
    let image = guests::reader_guest(&dir.path, sectors);
    let host = vboot_host(
        &dir,
        160,
        "set timeout=0\nmenuentry 'reader' {\n vboot harddisk=/reader.img\n}\n",
        &[HostImage { path: "/reader.img", file: &image, pieces: 8 }],
    );
    let mut native = Vec::new();
    let mut hooked = Vec::new();
    let mut conv = String::new();
    for _ in 0..3 {
        native.push(timed_read(&Config::disk(&image)).0);
        let (t, out) = timed_read(&Config::disk(&host.disk));
        hooked.push(t);
        if let Some(line) = out.lines().find(|l| l.contains("conventional memory") && l.contains("->")) {
            conv = line.trim().to_string();
        }
    }
    let (n, h) = (median(native), median(hooked));
    writeln!(report, "| read 64 MiB, native virtio disk (baseline) | {:.2} s |", n).unwrap();
    writeln!(report, "| read 64 MiB through vboot (raw image in 8 fragments on FAT32) | {:.2} s |", h).unwrap();
    writeln!(report, "| hook / native throughput | **{:.2}** |", n / h).unwrap();
    writeln!(report, "| memory taken | {} |", conv).unwrap();

    // The same data as a VHD dynamic image, alone and under 7 and 63 empty differencing children:
    // reads fall through the chain.
    let vhd_dir = TempDir::new("bench-vhd");
    let base = vhd_dir.join("d0.vhd");
    vboot_tests::sh(std::process::Command::new("qemu-img").args(["convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&image).arg(&base));
    let vdisk = vboot_tests::artifacts().vdisk;
    let mut files: Vec<(String, std::path::PathBuf)> = vec![("d0.vhd".into(), base.clone())];
    for i in 1..64 {
        let child = vhd_dir.join(&format!("d{}.vhd", i));
        vboot_tests::sh(std::process::Command::new(&vdisk).arg("snapshot").arg(&files[i - 1].1).arg(&child));
        files.push((format!("d{}.vhd", i), child));
    }
    let mut depth_times = Vec::new();
    for depth in [1usize, 8, 64] {
        let leaf = &files[depth - 1].0;
        let d = TempDir::new("bench-chain");
        let names: Vec<String> = files[..depth].iter().map(|(n, _)| format!("/{}", n)).collect();
        let imgs: Vec<HostImage> =
            files[..depth].iter().zip(&names).map(|((_, p), n)| HostImage { path: n, file: p, pieces: 1 }).collect();
        let host = vboot_host(&d, 200, &format!("set timeout=0\nmenuentry 'chain' {{\n vboot harddisk=/{} reserve=0\n}}\n", leaf), &imgs);
        let mut t = Vec::new();
        for _ in 0..3 {
            t.push(timed_read(&Config::disk(&host.disk)).0);
        }
        depth_times.push((depth, median(t)));
    }
    let d1 = depth_times[0].1;
    writeln!(report, "| read 64 MiB through vboot, VHD dynamic, depth 1 | {:.2} s (native / this: {:.2}) |", d1, n / d1).unwrap();
    for (depth, t) in &depth_times[1..] {
        writeln!(report, "| read 64 MiB through vboot, VHD chain of depth {} | {:.2} s (depth 1 / this: **{:.2}**) |", depth, t, d1 / t).unwrap();
    }

    // Time from the first stage2 line to the guest's first line (timeout=0), against the time
    // from QEMU start to the same guest's first line when booted natively.
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let dir2 = TempDir::new("bench-boot");
    let host2 = vboot_host(
        &dir2,
        64,
        "set timeout=0\nmenuentry 'hello' {\n vboot harddisk=/hello.img\n}\n",
        &[HostImage { path: "/hello.img", file: &hello, pieces: 1 }],
    );
    let mut to_guest = Vec::new();
    let mut native_boot = Vec::new();
    for _ in 0..3 {
        let mut q = Qemu::boot_disk(&host2.disk);
        q.expect("vboot 0.1.0", T);
        let s = Instant::now();
        q.expect("GUEST-HELLO", T);
        to_guest.push(s.elapsed().as_secs_f64());
        let mut q = Qemu::boot_disk(&hello);
        let s = Instant::now();
        q.expect("GUEST-HELLO", T);
        native_boot.push(s.elapsed().as_secs_f64());
    }
    writeln!(report, "| QEMU start to the guest's first line, native (baseline) | {:.2} s |", median(native_boot)).unwrap();
    writeln!(report, "| stage2 banner to the guest's first line (timeout=0) | {:.2} s |", median(to_guest)).unwrap();

    println!("{}", report);
    std::fs::write(workspace_root().join("target/bench.md"), &report).unwrap();
}

fn qemu_version() -> String {
    let out = std::process::Command::new("qemu-system-i386").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").replace("QEMU emulator version ", "")
}

/// Guest read throughput through the hook for each format and at chain depth 1, 8 and 64 (the
/// same 64 MiB of data in the base, under 0, 7 or 63 empty differencing children made by
/// `vdisk snapshot`), as ratios against the native disk, measured alternately with it. One host disk
/// per format holds the 64-deep chain; its menu boots the depth-1, -8 and -64 leaves.
#[test]
#[ignore]
fn bench_formats() {
    let dir = TempDir::new("bench-formats");
    let sectors = 64 * 2048;
    let image = guests::reader_guest(&dir.path, sectors);
    let native = median((0..3).map(|_| timed_read(&Config::disk(&image)).0).collect());
    let vdisk = vboot_tests::artifacts().vdisk;
    let mut report = String::new();
    writeln!(report, "Guest reads 64 MiB with AH=42h; figures are native time / time through vboot (1.00 = native speed). Native: {:.2} s.\n", native).unwrap();
    writeln!(report, "| format | depth 1 | depth 8 | depth 64 |\n|---|---|---|---|").unwrap();
    for (title, fmt, opts, ext) in [
        ("VHD fixed", "vpc", "subformat=fixed,force_size=on", "vhd"),
        ("VHD dynamic", "vpc", "subformat=dynamic,force_size=on", "vhd"),
        ("VMDK monolithicSparse", "vmdk", "subformat=monolithicSparse", "vmdk"),
        ("VMDK monolithicFlat", "vmdk", "subformat=monolithicFlat", "vmdk"),
        ("VDI dynamic", "vdi", "static=off", "vdi"),
    ] {
        let d = TempDir::new("bench-format");
        let base = d.join(&format!("d0.{}", ext));
        vboot_tests::sh(std::process::Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&image).arg(&base));
        let mut files: Vec<(String, std::path::PathBuf)> = vec![(format!("d0.{}", ext), base.clone())];
        if fmt == "vmdk" && opts.contains("Flat") {
            files.push(("d0-flat.vmdk".into(), d.join("d0-flat.vmdk")));
        }
        for i in 1..64 {
            let child = d.join(&format!("d{}.{}", i, ext));
            let parent = d.join(&format!("d{}.{}", i - 1, ext));
            vboot_tests::sh(std::process::Command::new(&vdisk).arg("snapshot").arg(&parent).arg(&child));
            files.push((format!("d{}.{}", i, ext), child));
        }
        let names: Vec<String> = files.iter().map(|(n, _)| format!("/{}", n)).collect();
        let imgs: Vec<HostImage> = files.iter().zip(&names).map(|((_, p), n)| HostImage { path: n, file: p, pieces: 1 }).collect();
        let cfg = [1, 8, 64].iter().fold(String::from("set timeout=-1\n"), |s, depth| {
            // reserve=0: a read benchmark; no write slack is added before boot.
            s + &format!("menuentry 'depth {}' {{\n vboot harddisk=/d{}.{} reserve=0\n}}\n", depth, depth - 1, ext)
        });
        let host = vboot_host(&d, 200, &cfg, &imgs);
        let mut row = format!("| {} |", title);
        for (k, _) in [1, 8, 64].iter().enumerate() {
            // Native and hooked runs alternate, so a change of load on the machine hits both.
            let mut t = Vec::new();
            let mut n = Vec::new();
            for _ in 0..3 {
                n.push(timed_read(&Config::disk(&image)).0);
                let mut q = Qemu::start(&Config::disk(&host.disk));
                q.expect("depth 64", T);
                std::thread::sleep(Duration::from_millis(200));
                q.send(&[b'1' + k as u8]);
                q.expect("READ-START", T);
                let start = Instant::now();
                let out = q.expect("READ-END", T);
                t.push(start.elapsed().as_secs_f64());
                assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
            }
            row.push_str(&format!(" {:.2} |", median(n) / median(t)));
        }
        writeln!(report, "{}", row).unwrap();
    }
    println!("{}", report);
    std::fs::write(workspace_root().join("target/bench-formats.md"), &report).unwrap();
}
