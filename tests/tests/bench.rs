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
    q.expect("READ-END", T);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    (secs, q.output())
}

/// The TSC ticks the reader guest counted around its reads ("TSC=" in its output): the guest's
/// own clock, free of QEMU's start-up and of the host's serial polling, so ratios of two reads
/// need no conversion.
fn guest_ticks(out: &str) -> f64 {
    let hex = out.lines().find_map(|l| l.trim().strip_prefix("TSC=")).unwrap_or_else(|| panic!("no TSC= line:\n{}", out));
    u64::from_str_radix(hex.trim(), 16).unwrap() as f64
}

/// `pairs` runs of `a` and `b`, alternating, so that a change of load on the machine hits both:
/// the median of the per-pair ratios ticks(a) / ticks(b), its lowest and highest, the median wall
/// seconds of each, and the last output of `b`.
struct PairedReads {
    ratio: f64,
    low: f64,
    high: f64,
    a_secs: f64,
    b_secs: f64,
    b_out: String,
}

fn paired_reads(a: &Config, b: &Config, pairs: usize) -> PairedReads {
    let (mut ratios, mut a_secs, mut b_secs, mut b_out) = (Vec::new(), Vec::new(), Vec::new(), String::new());
    for _ in 0..pairs {
        let (sa, oa) = timed_read(a);
        let (sb, ob) = timed_read(b);
        ratios.push(guest_ticks(&oa) / guest_ticks(&ob));
        a_secs.push(sa);
        b_secs.push(sb);
        b_out = ob;
    }
    let low = ratios.iter().cloned().fold(f64::MAX, f64::min);
    let high = ratios.iter().cloned().fold(0.0, f64::max);
    PairedReads { ratio: median(ratios), low, high, a_secs: median(a_secs), b_secs: median(b_secs), b_out }
}

/// Print a bench test's report and keep it in target/`file`, where `cargo xtask bench` collects
/// it into docs/benchmarks.md (xtask's BENCH_REPORTS names the files).
fn publish(file: &str, report: &str) {
    println!("{}", report);
    std::fs::write(workspace_root().join("target").join(file), report).unwrap();
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
    // Seven interleaved pairs, timed by the guest: one run of three gave anything from 0.60 to
    // 0.92 on a loaded machine; single reads vary by 20% on this host.
    let reads = paired_reads(&Config::disk(&image), &Config::disk(&host.disk), 7);
    let conv = reads
        .b_out
        .lines()
        .find(|l| l.contains("conventional memory") && l.contains("->"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let counters = guests::stub_counters(&reads.b_out);
    let n = reads.a_secs;
    writeln!(report, "| read 64 MiB, native virtio disk (baseline) | {:.2} s |", n).unwrap();
    writeln!(report, "| read 64 MiB through vboot (raw image in 8 fragments on FAT32) | {:.2} s |", reads.b_secs).unwrap();
    writeln!(
        report,
        "| hook / native throughput (guest TSC, median of 7 interleaved pairs; lowest, highest) | **{:.2}** ({:.2}, {:.2}) |",
        reads.ratio, reads.low, reads.high
    )
    .unwrap();
    writeln!(report, "| memory taken | {} |", conv).unwrap();
    if let Some(c) = counters {
        breakdown(&mut report, "raw image, 64 MiB in 127-sector reads", &c);
    }

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
    let mut chain_hosts = Vec::new();
    for depth in [1usize, 8, 64] {
        let leaf = &files[depth - 1].0;
        let d = TempDir::new("bench-chain");
        let names: Vec<String> = files[..depth].iter().map(|(n, _)| format!("/{}", n)).collect();
        let imgs: Vec<HostImage> =
            files[..depth].iter().zip(&names).map(|((_, p), n)| HostImage { path: n, file: p, pieces: 1 }).collect();
        let host = vboot_host(&d, 200, &format!("set timeout=0\nmenuentry 'chain' {{\n vboot harddisk=/{} reserve=0\n}}\n", leaf), &imgs);
        chain_hosts.push((depth, host.disk.clone(), d));
    }
    // Each against its baseline in interleaved pairs: depth 1 against native, deeper chains
    // against depth 1 (so that the host's page cache holds both sides alike).
    let depth1 = Config::disk(&chain_hosts[0].1);
    let vhd = paired_reads(&Config::disk(&image), &depth1, 5);
    if let Some(c) = guests::stub_counters(&vhd.b_out) {
        breakdown(&mut report, "VHD dynamic, depth 1", &c);
    }
    writeln!(
        report,
        "| read 64 MiB through vboot, VHD dynamic, depth 1 | {:.2} s (this / native: **{:.2}**, lowest {:.2}, highest {:.2}) |",
        vhd.b_secs, vhd.ratio, vhd.low, vhd.high
    )
    .unwrap();
    for (depth, disk, _) in &chain_hosts[1..] {
        let deep = paired_reads(&depth1, &Config::disk(disk), 5);
        writeln!(
            report,
            "| read 64 MiB through vboot, VHD chain of depth {} | {:.2} s (this / depth 1: **{:.2}**, lowest {:.2}, highest {:.2}) |",
            depth, deep.b_secs, deep.ratio, deep.low, deep.high
        )
        .unwrap();
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
    writeln!(report, "| QEMU start to the guest's first line, native (baseline) | {:.2} s |", median(native_boot.clone())).unwrap();
    writeln!(report, "| stage2 banner to the guest's first line (timeout=0) | {:.2} s |", median(to_guest)).unwrap();

    publish("bench.md", &report);
}

/// Where a guest call's time goes (docs/benchmarks.md): the stub's counters after the reader
/// guest's run, per guest call.
fn breakdown(report: &mut String, what: &str, c: &guests::StubCounters) {
    let calls = (c.engine_calls + c.fast_calls).max(1) as f64;
    // A call through the engine enters protected mode and leaves it (2 switches); each BIOS call
    // the engine makes leaves protected mode and enters it again (2 more). The fast path: none.
    let switches = 2 * c.engine_calls as u64 + 2 * c.engine_bios_calls as u64;
    writeln!(
        report,
        "| per guest call, {} | {} calls: {:.1}% by the real-mode fast path; {:.2} mode switches, {:.2} BIOS calls by the engine, {:.0} bytes copied through the bounce buffer |",
        what,
        c.engine_calls + c.fast_calls,
        100.0 * c.fast_calls as f64 / calls,
        switches as f64 / calls,
        c.engine_bios_calls as f64 / calls,
        c.bounce_copied_bytes as f64 / calls
    )
    .unwrap();
}

/// QEMU start to the guest's first line: natively, a dynamic VHD of 64 MiB and of 32 GiB
/// (`reserve=0`), and the first boot that grows the default 256 MiB of slack on FAT32 against
/// `reserve=0`. Medians of three runs.
#[test]
#[ignore]
fn bench_boot_times() {
    let dir = TempDir::new("bench-boot-vhd");
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let hello = hello.as_path();
    let native = median(
        (0..3)
            .map(|_| {
                let s = Instant::now();
                let mut q = Qemu::boot_disk(hello);
                q.expect("GUEST-HELLO", T);
                s.elapsed().as_secs_f64()
            })
            .collect(),
    );
    let mut report = String::new();
    let report = &mut report;
    writeln!(report, "| QEMU start to the guest's first line, native (baseline) | {:.2} s |", native).unwrap();
    let first_line = |disk: &std::path::Path| {
        let s = Instant::now();
        let mut q = Qemu::boot_disk(disk);
        q.expect("GUEST-HELLO", T);
        s.elapsed().as_secs_f64()
    };
    let mut sized = Vec::new();
    for (name, size) in [("small.vhd", "64M"), ("big.vhd", "32G")] {
        let vhd = dir.join(name);
        vboot_tests::sh(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd).arg(size));
        vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 1M", hello.display())]);
        let d = TempDir::new("bench-boot-vhd-host");
        let path = format!("/{}", name);
        let host = vboot_host(&d, 64, &format!("set timeout=0\nmenuentry 'hello' {{\n vboot harddisk={} reserve=0\n}}\n", path), &[HostImage { path: &path, file: &vhd, pieces: 1 }]);
        let t = median((0..3).map(|_| first_line(&host.disk)).collect());
        sized.push(t);
    }
    writeln!(report, "| QEMU start to the guest's first line, dynamic VHD of 64 MiB, `reserve=0` | {:.2} s (native + {:.0} ms) |", sized[0], (sized[0] - native) * 1000.0).unwrap();
    writeln!(report, "| the same, dynamic VHD of 32 GiB | {:.2} s (**{:.2}** of the 64 MiB one) |", sized[1], sized[1] / sized[0]).unwrap();
    // Slack: every run on a fresh host, so every boot is a first boot.
    let vhd = dir.join("slack.vhd");
    vboot_tests::sh(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd).arg("1G"));
    vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 1M", hello.display())]);
    let mut slack = Vec::new();
    for reserve in ["reserve=0", ""] {
        let mut t = Vec::new();
        for _ in 0..3 {
            let d = TempDir::new("bench-boot-slack");
            let host = vboot_host(&d, 400, &format!("set timeout=0\nmenuentry 'hello' {{\n vboot harddisk=/slack.vhd {}\n}}\n", reserve), &[HostImage { path: "/slack.vhd", file: &vhd, pieces: 1 }]);
            t.push(first_line(&host.disk));
        }
        slack.push(median(t));
    }
    writeln!(report, "| first boot growing 256 MiB of slack on FAT32 (the default `reserve=`) | {:.2} s (**+{:.0} ms** over `reserve=0`, {:.2} s) |", slack[1], (slack[1] - slack[0]) * 1000.0, slack[0]).unwrap();
    publish("bench-boot.md", &report);
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
    writeln!(report, "Guest reads 64 MiB with AH=42h; figures are native time / time through vboot, both by the guest's TSC, medians of 3 interleaved runs (1.00 = native speed). Native: {:.2} s.\n", native).unwrap();
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
                n.push(guest_ticks(&timed_read(&Config::disk(&image)).1));
                let mut q = Qemu::start(&Config::disk(&host.disk));
                q.expect("depth 64", T);
                std::thread::sleep(Duration::from_millis(200));
                q.send(&[b'1' + k as u8]);
                q.expect("READ-END", T);
                assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
                t.push(guest_ticks(&q.output()));
            }
            row.push_str(&format!(" {:.2} |", median(n) / median(t)));
        }
        writeln!(report, "{}", row).unwrap();
    }
    publish("bench-formats.md", &report);
}

/// Issue 13: scattered writes into a VMDK with many grains written in shuffled order (the
/// fixture of large_images' shuffled test: `bytes` of virtual disk, `grains` grains written by
/// qemu-io). The big-disk guest writes 2,000 single sectors, each into a different one of those
/// grains picked at random over the whole disk (in place: so the figures are the cost of finding
/// a grain, not of allocating one), and times its first and its last hundred writes: the TSC
/// (calibrated against 18 BIOS ticks before the run), the BIOS tick count, and the host's clock
/// between the guest's marker lines. Figures, not assertions: they show whether a write costs
/// more as the writes spread over the tables. Returns the report.
fn scattered_writes(tag: &str, bytes: u64, grains: usize) -> String {
    use vboot_tests::guests::{BigBench, BigIoConfig, BigOp};
    use vboot_tests::large::{self, HostFs};
    const WRITES: usize = 2000;
    const LIST_LBA: u64 = 64;
    let dir = TempDir::new(tag);
    let code = guests::build_bigio_guest(&dir.join("bigio-build"));
    let bench = BigBench { writes: WRITES as u32, list_lba: LIST_LBA as u32 };
    let cfg = BigIoConfig { tag: 0x13B0, ops: vec![BigOp::Fill { lba: 2048, sectors: 8, byte: 0x5A }], bench: Some(bench) };
    let head = dir.join("head.bin");
    std::fs::write(&head, guests::bigio_guest_sectors(&code, &cfg)).unwrap();
    let scratch = large::ScratchFile::new(&dir, "shuffled.vmdk", 2 << 30);
    let img = scratch.path.clone();
    let made = Instant::now();
    let avoid: Vec<u64> = (0..=32).collect();
    let order = large::shuffled_vmdk(&img, bytes, &head, &[(2048 * 512, 64 << 10, 0x5A)], grains, 0x5EED_1313, &avoid);
    // The list (in grain 0, after the guest): distinct grains of the shuffle, in random order.
    let mut x = 0x1313_2024_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut picked = std::collections::HashSet::new();
    let mut lbas = Vec::with_capacity(WRITES);
    while lbas.len() < WRITES {
        let g = order[(next() % order.len() as u64) as usize];
        if picked.insert(g) {
            lbas.push(g * 128 + next() % 128);
        }
    }
    let list = dir.join("list.bin");
    let list_bytes = guests::bigio_bench_list(&lbas);
    assert!(LIST_LBA * 512 + list_bytes.len() as u64 <= 64 << 10, "the list must stay in grain 0");
    std::fs::write(&list, &list_bytes).unwrap();
    vboot_tests::qemu_io("vmdk", img.to_str().unwrap(), &[&format!("write -q -s {} {} {}", list.display(), LIST_LBA * 512, list_bytes.len())]);
    let made = made.elapsed().as_secs_f64();
    let grub = "set timeout=0\nmenuentry 'shuffled' {\n vboot harddisk=/shuffled.vmdk reserve=8M\n}\n";
    let file_bytes = std::fs::metadata(&img).unwrap().len();
    let host = large::big_host(&dir, HostFs::Exfat, file_bytes + (64 << 20), grub, &[("shuffled.vmdk", &img)]);
    let mut qcfg = Config::disk(&host.disk);
    qcfg.memory_mib = 256;
    let mut q = Qemu::start(&qcfg);
    // Like Qemu::expect, but a machine that stopped (an internal error) ends the wait at once.
    let wait = |q: &mut Qemu, needle: &str| {
        let deadline = Instant::now() + T;
        loop {
            let out = q.output();
            if out.contains(needle) {
                return Instant::now();
            }
            if out.contains("internal error") || q.try_exit().is_some() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(500));
                panic!("no {:?}: the machine stopped or timed out:\n{}", needle, q.output());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let t0 = wait(&mut q, "BENCH-START");
    let t1 = wait(&mut q, "BENCH-100");
    let t2 = wait(&mut q, "BENCH-LAST100");
    let t3 = wait(&mut q, "BENCH-END");
    let status = q.wait_exit(T);
    let out = q.output();
    assert!(out.contains(guests::BIGIO_PASS) && status == Some(EXIT_PASS), "the guest did not pass (exit {:?}):\n{}", status, out);
    let hex = |key: &str| -> Vec<u64> {
        let line = out.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("no {:?} line:\n{}", key, out));
        line.split(['=', ' ']).filter_map(|w| u64::from_str_radix(w.trim(), 16).ok()).collect()
    };
    let tsc18 = hex("TSC18")[0] as f64;
    let ms_per_tick = 1000.0 * 65536.0 / 1_193_182.0;
    let tsc_per_ms = tsc18 / (18.0 * ms_per_tick);
    let span = |key: &str| {
        let v = hex(key);
        // "BENCH first100 ticks=XXXXXXXX tsc=XXXXXXXXXXXXXXXX": the last two numbers
        let (ticks, tsc) = (v[v.len() - 2] as f64, v[v.len() - 1] as f64);
        (tsc / tsc_per_ms / 100.0, ticks * ms_per_tick / 100.0)
    };
    let (first_tsc, first_ticks) = span("BENCH first100");
    let (last_tsc, last_ticks) = span("BENCH last100");
    let host_ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0 / 100.0;
    // The writes landed: a few of them, as qemu-img reads the image afterwards.
    let back = host.pull(&["shuffled.vmdk"]).join("shuffled.vmdk");
    vboot_tests::qemu_img_check(&back, "");
    for &lba in [lbas[0], lbas[WRITES / 2], lbas[WRITES - 1]].iter() {
        let got = large::read_range(&back, &large::Reader::Qemu("vmdk"), lba, 1, &dir.path);
        assert!(got == cfg.written(lba), "benchmark write at LBA {} is not in the image", lba);
    }
    let mut r = String::new();
    writeln!(r, "Scattered one-sector writes, each into another allocated grain, of a {} GiB VMDK with {} grains written in shuffled order (made in {:.1} s); ms per write:\n", bytes >> 30, grains, made).unwrap();
    writeln!(r, "| writes | guest TSC | BIOS ticks | host clock |\n|---|---|---|---|").unwrap();
    writeln!(r, "| first 100 | {:.2} | {:.2} | {:.2} |", first_tsc, first_ticks, host_ms(t0, t1)).unwrap();
    writeln!(r, "| last 100 of 2000 | {:.2} | {:.2} | {:.2} |", last_tsc, last_ticks, host_ms(t2, t3)).unwrap();
    writeln!(r, "| last / first (TSC) | {:.2} | | |", last_tsc / first_tsc).unwrap();
    r
}

/// Issue 13's figures: a 64 GiB VMDK with 100,000 grains written in shuffled order (on the code
/// of the report it does not boot: the engine runs out of memory).
#[test]
#[ignore]
fn bench_scattered_writes_into_a_shuffled_64_gib_vmdk() {
    let r = scattered_writes("bench-shuffled-64g", 64 << 30, 100_000);
    publish("bench-large.md", &r);
}

/// The same on a 4 GiB VMDK with 4,000 shuffled grains: a baseline that boots on every version.
#[test]
#[ignore]
fn bench_scattered_writes_into_a_shuffled_4_gib_vmdk() {
    let r = scattered_writes("bench-shuffled-4g", 4 << 30, 4_000);
    publish("bench-large-4g.md", &r);
}

/// The write TSC cycles the big-disk guest printed for its operations, in order ("OK W <lba>
/// +<sectors> T=<hex>").
fn write_cycles(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.trim_start().starts_with("OK W "))
        .filter_map(|l| l.split(" T=").nth(1))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap() as f64)
        .collect()
}

/// Issue 18's fourth row: a guest write that allocates a new block, against the same write once
/// the block exists (the same bytes, in place). The big-disk guest writes, into each of six
/// unallocated blocks of a dynamic VHD (2 MiB blocks) or VDI (1 MiB blocks), one sector and then
/// the same sector again, then 64 sectors and the same 64 again, timing each AH=43h call with
/// its TSC; the figure is the median of allocating / in place. qemu-img checks the image after.
fn allocating_writes() -> String {
    use vboot_tests::guests::{BigIoConfig, BigOp};
    let mut report = String::from("| image | 1-sector write: allocating / in place | 64-sector write: allocating / in place |\n|---|---|---|\n");
    for (title, fmt, opts, ext, block_sectors) in
        [("VHD dynamic (2 MiB blocks)", "vpc", "subformat=dynamic,force_size=on", "vhd", 4096u64), ("VDI dynamic (1 MiB blocks)", "vdi", "static=off", "vdi", 2048)]
    {
        let dir = TempDir::new("bench-alloc");
        let code = guests::build_bigio_guest(&dir.join("bigio-build"));
        let mut ops = Vec::new();
        for (first_block, sectors) in [(2u64, 1u16), (8, 64)] {
            for b in first_block..first_block + 6 {
                let lba = b * block_sectors + 8;
                ops.push(BigOp::Write { lba, sectors });
                ops.push(BigOp::Write { lba, sectors });
            }
        }
        let cfg = BigIoConfig { tag: 0x18A1, ops: ops.clone(), bench: None };
        let raw = dir.join("a.raw");
        let mut bytes = guests::bigio_guest_sectors(&code, &cfg);
        bytes.resize(64 << 20, 0);
        std::fs::write(&raw, &bytes).unwrap();
        let img = dir.join(&format!("a.{}", ext));
        vboot_tests::sh(std::process::Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw).arg(&img));
        let path = format!("/a.{}", ext);
        let grub = format!("set timeout=0\nmenuentry 'alloc' {{\n vboot harddisk={} reserve=32M\n}}\n", path);
        let host = vboot_host(&dir, 160, &grub, &[HostImage { path: &path, file: &img, pieces: 1 }]);
        let mut q = Qemu::start(&Config::disk(&host.disk));
        q.expect(guests::BIGIO_PASS, T);
        assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
        let out = q.output();
        for op in &ops {
            assert!(out.contains(&op.ok_line()), "no {:?}:\n{}", op.ok_line(), out);
        }
        let cycles = write_cycles(&out);
        assert_eq!(cycles.len(), ops.len(), "one T= per write:\n{}", out);
        eprintln!("{}: TSC cycles of each write in millions (allocating, then the same in place, in turn): {:?}", title, cycles.iter().map(|c| (*c / 1e6) as u64).collect::<Vec<_>>());
        let ratio = |range: std::ops::Range<usize>| median(range.step_by(2).map(|i| cycles[i] / cycles[i + 1]).collect());
        writeln!(report, "| {} | {:.1} | {:.1} |", title, ratio(0..12), ratio(12..24)).unwrap();
        // The image as a tool we did not write sees it.
        let part = host.current_partition(&dir.join("part-after.img"));
        let back = dir.join(&format!("back.{}", ext));
        vboot_tests::sh(std::process::Command::new("mcopy").arg("-i").arg(&part).arg(format!("::{}", path)).arg(&back).env("MTOOLS_SKIP_CHECK", "1"));
        if fmt == "vdi" {
            vboot_tests::qemu_img_check(&back, "after the allocating writes: ");
        }
        let raw_back = dir.join("back.raw");
        vboot_tests::sh(std::process::Command::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(&back).arg(&raw_back));
        let data = std::fs::read(&raw_back).unwrap();
        for op in &ops {
            for s in op.lba()..op.lba() + op.sectors() as u64 {
                let at = s as usize * 512;
                assert!(data[at..at + 512] == cfg.written(s)[..], "{}: sector {} as qemu-img reads it is not what the guest wrote", title, s);
            }
            // The rest of the new block reads as zeros.
            let block = op.lba() / block_sectors * block_sectors;
            let end = (op.lba() as usize) * 512;
            assert!(data[block as usize * 512..end].iter().all(|&b| b == 0), "{}: stale bytes before sector {}", title, op.lba());
        }
    }
    report
}

#[test]
#[ignore]
fn bench_allocating_writes() {
    let report = allocating_writes();
    publish("bench-alloc.md", &report);
}

/// Where the time to the guest goes: the host's clock when each of stage2's milestone lines
/// first appears on the serial line (polled every 0.5 ms), for a 64 MiB dynamic VHD with
/// `reserve=0`, against the native boot of the same guest; medians of 3 runs. Returns the report.
fn boot_timeline() -> String {
    const MILESTONES: [(&str, &str); 7] = [
        ("vboot 0.1", "stage2's banner (SeaBIOS, stage1, stage2 loaded)"),
        ("Reading (hd0,1)/boot/grub/grub.cfg", "partitions listed, grub.cfg found"),
        ("write slack for the image", "grub.cfg read, the entry chosen"),
        ("extent(s)", "the image file opened and its FAT allocation checked"),
        ("tables and caches of the chain", "the chain opened"),
        ("Resident:", "the engine loaded and initialised, the stub installed"),
        ("GUEST-HELLO", "the guest's first line"),
    ];
    let dir = TempDir::new("bench-timeline");
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let vhd = dir.join("small.vhd");
    vboot_tests::sh(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd).arg("64M"));
    vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 1M", hello.display())]);
    let host = vboot_host(&dir, 64, "set timeout=0\nmenuentry 'hello' {\n vboot harddisk=/small.vhd reserve=0\n}\n", &[HostImage { path: "/small.vhd", file: &vhd, pieces: 1 }]);
    // Milliseconds from QEMU's start to the first appearance of each needle.
    let times = |disk: &std::path::Path, needles: &[&str]| -> Vec<f64> {
        let start = Instant::now();
        let q = Qemu::boot_disk(disk);
        let mut at = vec![f64::NAN; needles.len()];
        while at.iter().any(|t| t.is_nan()) {
            let out = q.raw_output();
            let now = start.elapsed().as_secs_f64() * 1000.0;
            for (i, n) in needles.iter().enumerate() {
                if at[i].is_nan() && out.contains(n) {
                    at[i] = now;
                }
            }
            assert!(start.elapsed() < T, "no {:?} in:\n{}", needles, out);
            std::thread::sleep(Duration::from_micros(500));
        }
        at
    };
    let native = median((0..3).map(|_| times(&hello, &["GUEST-HELLO"])[0]).collect());
    let needles: Vec<&str> = MILESTONES.iter().map(|m| m.0).collect();
    let runs: Vec<Vec<f64>> = (0..3).map(|_| times(&host.disk, &needles)).collect();
    let mut report = String::from("| milestone | ms after QEMU's start | ms since the one before |\n|---|---:|---:|\n");
    writeln!(report, "| native: the guest's first line (baseline) | {:.0} | |", native).unwrap();
    let mut before = 0.0;
    for (i, (_, what)) in MILESTONES.iter().enumerate() {
        let t = median(runs.iter().map(|r| r[i]).collect());
        writeln!(report, "| {} | {:.0} | {:.0} |", what, t, t - before).unwrap();
        before = t;
    }
    writeln!(report, "| vboot's cost: the guest's first line, vboot - native | **{:.0}** | |", before - native).unwrap();
    report
}

#[test]
#[ignore]
fn bench_boot_timeline() {
    let report = boot_timeline();
    publish("bench-timeline.md", &report);
}

/// Issue 18's fifth row: Linux on its own disk through vboot-attach against a disk of the same
/// size attached natively (/dev/vdb, a raw file), in the same boot, each measurement on the native
/// disk and then on the attached one (guests::build_attach_bench_guest;
/// tests/guest-probe/iobench.rs stands in for fio, whose Debian package needs the ceph and gluster
/// libraries). The guest is in a dynamic VHD on a FAT32 host, and is measured twice: served by
/// the NBD server alone (/dev/nbd0), and with `--direct` (/dev/mapper/vboot-nbd0: the runs the
/// image holds in place go straight to the host disk). Ratios of throughput, median of `boots`
/// boots of 2 rounds each, with the lowest and highest pair.
fn attach_io(boots: usize) -> String {
    const MODES: [(&str, &str); 4] = [
        ("seq-read", "sequential read, 1 MiB, page cache"),
        ("seq-write", "sequential write, 1 MiB, page cache, fsync"),
        ("rand-read", "4 KiB random read, O_DIRECT"),
        ("rand-write", "4 KiB random write, O_DIRECT"),
    ];
    let throughput = |line: &str| -> (String, String, f64) {
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("no {} in {:?}", key, line)).to_string();
        let bytes: f64 = field("bytes=").parse().unwrap();
        let ns: f64 = field("ns=").parse().unwrap();
        (field("mode="), field("dev="), bytes / ns.max(1.0) * 1e9 / (1 << 20) as f64)
    };
    let mut report = String::new();
    for (direct, served, device) in [(false, "vboot-attach", "/dev/nbd0"), (true, "vboot-attach --direct", "/dev/mapper/vboot-nbd0")] {
        let dir = TempDir::new("bench-attach");
        let raw = guests::build_attach_bench_guest(&dir.path, 2, direct);
        let image = dir.join("guest.vhd");
        vboot_tests::qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw.to_str().unwrap(), image.to_str().unwrap()]);
        // The measured 32 MiB are allocated before the boot, with the bytes they already hold
        // (the kernel and initramfs among them), so that their blocks are in place in the image
        // when vboot-attach maps it (`--direct` maps what is in place then).
        let (from, len) = ((guests::ATTACH_BENCH_OFFSET_MIB << 20) as usize, (guests::ATTACH_BENCH_LENGTH_MIB << 20) as usize);
        let held = dir.join("range.bin");
        std::fs::write(&held, &std::fs::read(&raw).unwrap()[from..from + len]).unwrap();
        let range = format!("write -q -s {} {} {}", held.display(), from, len);
        vboot_tests::qemu_io("vpc", image.to_str().unwrap(), &[&range]);
        vboot_tests::sh(std::process::Command::new(vboot_tests::vdisk_bin()).arg("reserve").arg(&image).arg("8M"));
        let rows_from = report.len();
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        let mut native_mib_s: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        for _ in 0..boots {
            let d = TempDir::new("bench-attach-run");
            let cfg = "set timeout=0\nmenuentry 'linux' {\n    vboot harddisk=/guest.vhd\n}\n";
            let host = vboot_host(&d, 160, cfg, &[HostImage { path: "/guest.vhd", file: &image, pieces: 3 }]);
            let scratch = d.join("scratch.img");
            std::fs::File::create(&scratch).unwrap().set_len(48 << 20).unwrap();
            let mut qcfg = Config::disk(&host.disk);
            qcfg.drives.push(vboot_tests::qemu::Drive::virtio(&scratch));
            qcfg.x86_64 = true;
            qcfg.memory_mib = 256;
            let mut q = Qemu::start(&qcfg);
            assert_eq!(q.wait_exit(Duration::from_secs(600)), Some(EXIT_PASS), "{}", q.output());
            let out = q.output();
            assert!(out.contains(guests::ATTACH_BENCH_OK), "the attach bench guest did not finish:\n{}", out);
            let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("IOBENCH") || l.starts_with("PREPARED")).collect();
            let prepared = lines.iter().position(|l| l.starts_with("PREPARED")).expect("PREPARED");
            assert_eq!(prepared, 2, "two preparing writes:\n{}", out);
            for pair in lines[prepared + 1..].chunks(2) {
                let (mode, native_dev, native) = throughput(pair[0]);
                let (mode_b, attach_dev, attach) = throughput(pair[1]);
                assert!(mode == mode_b && native_dev == "/dev/vdb" && attach_dev == device, "unpaired: {:?}", pair);
                let i = MODES.iter().position(|(m, _)| *m == mode).unwrap();
                ratios[i].push(attach / native);
                native_mib_s[i].push(native);
            }
        }
        for (i, (_, what)) in MODES.iter().enumerate() {
            let low = ratios[i].iter().cloned().fold(f64::MAX, f64::min);
            let high = ratios[i].iter().cloned().fold(0.0, f64::max);
            writeln!(
                report,
                "| Linux over {} ({}) / native, {} | **{:.2}** (pairs {:.2}-{:.2}; native {:.1} MiB/s) |",
                served,
                device,
                what,
                median(ratios[i].clone()),
                low,
                high,
                median(native_mib_s[i].clone())
            )
            .unwrap();
        }
        eprint!("{}", &report[rows_from..]);
    }
    report
}

#[test]
#[ignore]
fn bench_attach_io() {
    let report = attach_io(2);
    publish("bench-attach.md", &report);
}
