//! `cargo xtask <command>`: everything that is more than one cargo call.
//!
//! - `build`  stage1 + stage2 (nightly, -Zbuild-std) into target/vboot/, host tools into
//!            target/release/
//! - `test`   installs what is missing, builds, then runs every test (host and QEMU), the core's
//!            unit tests also as i686 code (`test-i686` runs only those)
//! - `demo`   installs what is missing, builds, makes a host disk with images, installs vboot
//!            with vboot-install and boots it in QEMU
//! - `bench`  the yardsticks of docs/benchmarks.md
//! - `demo-debian` a whole Debian in a VHD, root on vboot-attach's NBD device (issue 9);
//!            `--dracut` the same Debian with dracut instead of initramfs-tools
//! - `build-faults` the firmware with fault injection, into target/vboot-faults/ (for
//!            tests/tests/faults.rs, which runs it itself)
//! - `deps`   only install what is missing
//! - `fuzz`   the fuzzing campaign (docs/robustness.md): every target for N seconds
//! - `deb`    the Debian package target/debian/vboot_<version>_amd64.deb (docs/packaging.md)
//! - `man`    man pages and shell completions of the host tools, into target/man/ and
//!            target/completions/ (`build` runs it too)

mod deb;
mod deps;
mod demo;
mod firmware;
mod fuzz;
mod man;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <build|man|deb|build-faults|test|test-i686|demo|demo-debian|bench|deps|fuzz> [options]
\
         \n\
         build            build stage1, stage2, vboot.lkrn (target/vboot/) and the host tools\n\
                          (target/release/), their man pages and shell completions (as `man`)\n\
         man              man pages (target/man/) and bash/zsh/fish completions (target/completions/)\n\
         deb [--no-build] build, then target/debian/vboot_VERSION_amd64.deb, checked by lintian\n\
         test [ARGS..]    install missing tools, build, run every test; ARGS go to `cargo test`\n\
         test-i686        only the core library's unit tests as 32-bit code, with overflow checks\n\
         demo [--kvm] [--interactive]\n\
                          build a host disk with images, install vboot on it, boot it in QEMU\n\
         bench [--kvm] [--record-only]\n\
                          measure size, memory and speed figures into docs/benchmarks.md\n\
         demo-debian [--dracut]\n\
                          debootstrap Debian into a VHD, boot it through vboot with root on\n\
                          vboot-attach's /dev/nbd0 (as root; downloads Debian; ~3 min);\n\
                          --dracut: the Debian uses dracut, not initramfs-tools (~6 min)\n\
         build-faults     build the firmware with fault injection into target/vboot-faults/\n\
                          (tests/tests/faults.rs runs this itself)\n\
         deps             install the toolchain component and Debian packages the tests need\n\
         fuzz [--seconds N] [--targets a,b]\n\
                          run every fuzz target of fuzz/ for N seconds (default 60) and print\n\
                          executions and findings (installs cargo-fuzz when missing)\n\
         fuzz --make-seeds  regenerate fuzz/seeds/ with qemu-img, mkfs.*, xorriso ...\n\
         fuzz --smoke     build the fuzz targets and run each over its seeds (part of `test`)"
    );
    ExitCode::from(2)
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Run a command, failing with its name if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{:?}", cmd);
    let status = cmd.status().map_err(|e| format!("cannot start {}: {}", shown, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed with {}", shown, status))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { return usage() };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "build" => firmware::build_all(),
        "man" => man::generate(),
        "deb" => deb::command(rest),
        "build-faults" => firmware::build_fault_firmware(),
        "deps" => deps::ensure_all(),
        "fuzz" => fuzz::command(rest),
        "test" => test(rest),
        "test-i686" => deps::ensure_all().and_then(|_| test_core_i686()),
        "demo" => deps::ensure_all().and_then(|_| firmware::build_all()).and_then(|_| demo::run(rest)),
        "bench" => deps::ensure_all().and_then(|_| firmware::build_all()).and_then(|_| bench(rest)),
        "demo-debian" => deps::ensure_all().and_then(|_| firmware::build_all()).and_then(|_| demo_debian(rest)),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {}", e);
            ExitCode::FAILURE
        }
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    deps::ensure_all()?;
    firmware::build_all()?;
    test_core_i686()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(["test", "--workspace", "--release"]).args(extra);
    run(&mut cmd)?;
    // Every fuzz target over its committed seeds and the inputs of fixed findings, once
    // (docs/robustness.md): about a minute, nearly all of it building the targets (plus ~4 min
    // once on a fresh machine to install cargo-fuzz); the campaign itself is `cargo xtask fuzz`.
    fuzz::smoke()
}

/// `demo-debian`: the Debian-in-a-VHD test of tests/tests/attach.rs; with `--dracut` the one whose
/// Debian uses dracut instead of initramfs-tools (ignored by `cargo test`: dracut alone takes
/// minutes here).
fn demo_debian(extra: &[String]) -> Result<(), String> {
    let (test, ignored): (&str, &[&str]) = match extra {
        [] => ("debian_installed_in_a_vhd", &[]),
        [flag] if flag == "--dracut" => ("debian_with_dracut_in_a_vhd", &["--ignored"]),
        _ => return Err(format!("demo-debian takes only --dracut, not {:?}", extra)),
    };
    run(Command::new("cargo")
        .current_dir(root())
        .args(["test", "--release", "-p", "vboot-tests", "--test", "attach", test, "--", "--nocapture"])
        .args(ignored))
}

/// The core library's unit tests as 32-bit code with overflow checks, like the firmware runs it:
/// on the 64-bit host a `usize` never overflows where stage2's does. Its own target directory
/// (`target/i686-unknown-linux-gnu/`) keeps the host build untouched by the flags.
fn test_core_i686() -> Result<(), String> {
    let started = std::time::Instant::now();
    run(Command::new("cargo")
        .current_dir(root())
        // The dev profile: it builds in a third of the release time and keeps debug assertions;
        // overflow checks are on there anyway, RUSTFLAGS says so explicitly.
        .args(["test", "--package", "vboot", "--lib", "--features", "std", "--target", deps::I686_TARGET])
        .env("RUSTFLAGS", "-C overflow-checks=on"))?;
    eprintln!("xtask: i686 unit tests took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
    // --record-only: put the reports of the bench tests run last (target/bench*.md) into the
    // docs without running them again (after running one of them by hand, say).
    if extra.iter().any(|a| a == "--record-only") {
        return record_bench_in_docs();
    }
    // The image layer on the host: lookups and reads at chain depth 1, 8 and 64.
    run(Command::new("cargo").current_dir(root()).args([
        "test", "--release", "-p", "vboot-tests", "--test", "image_formats", "bench_depth", "--", "--ignored", "--nocapture",
    ]))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["test", "--release", "-p", "vboot-tests", "--test", "bench", "--", "--ignored", "--nocapture", "--test-threads=1"]);
    if extra.iter().any(|a| a == "--kvm") {
        cmd.env("VBOOT_QEMU_ACCEL", "kvm");
    }
    run(&mut cmd)?;
    record_bench_in_docs()
}

/// The bench's reports (target/bench*.md, one per bench test), in the order of docs/benchmarks.md's
/// yardsticks, with what each holds.
const BENCH_REPORTS: [(&str, &str); 9] = [
    ("bench.md", "Sizes, memory, reads through the hook and at chain depth"),
    ("bench-boot.md", "Time to the guest, image size, first boot growing slack"),
    ("bench-timeline.md", "Where the time to the guest goes"),
    ("bench-alloc.md", "Allocating writes"),
    ("bench-attach.md", "Linux over vboot-attach"),
    ("bench-formats.md", "Per format and chain depth"),
    ("bench-large.md", "Scattered writes into a shuffled 64 GiB VMDK"),
    ("bench-large-4g.md", "Scattered writes into a shuffled 4 GiB VMDK"),
    ("bench-depth.md", "The chain walk at depth, on the host"),
];
const BENCH_BEGIN: &str = "<!-- cargo xtask bench: begin (generated, replaced by each run) -->";
const BENCH_END: &str = "<!-- cargo xtask bench: end -->";

/// Put this run's reports into docs/benchmarks.md between the markers, with the date and the
/// machine, replacing the previous run's.
fn record_bench_in_docs() -> Result<(), String> {
    // When the reports were written (the main one's time), which --record-only may follow later.
    let main_report = root().join("target/bench.md");
    let mut date_cmd = Command::new("date");
    if main_report.exists() {
        date_cmd.arg("-r").arg(&main_report);
    }
    let date = date_cmd.args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().map_err(|e| format!("date: {}", e))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())).unwrap_or_else(|| "unknown processor".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut section = format!(
        "{}\n## Latest run of `cargo xtask bench` ({}; {}, {} cores)\n\nWritten by `cargo xtask bench`; the sections above are earlier runs, kept with what changed between them.\n",
        BENCH_BEGIN,
        String::from_utf8_lossy(&date.stdout).trim(),
        cpu,
        cores
    );
    for (file, title) in BENCH_REPORTS {
        let Ok(text) = std::fs::read_to_string(root().join("target").join(file)) else { continue };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        // Each report is table rows, some with a leading sentence and a header of their own;
        // give a table without one the usual header.
        section.push_str(&format!("\n### {}\n\n", title));
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let starts_table = line.starts_with('|') && (i == 0 || !lines[i - 1].starts_with('|'));
            let has_header = lines.get(i + 1).is_some_and(|next| next.starts_with("|---"));
            if starts_table && !has_header {
                section.push_str("| what | figure |\n|---|---|\n");
            }
            section.push_str(line);
            section.push('\n');
        }
    }
    section.push_str(BENCH_END);
    let path = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).map_err(|e| format!("read {}: {}", path.display(), e))?;
    let updated = match (doc.find(BENCH_BEGIN), doc.find(BENCH_END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &doc[..b], section, &doc[e + BENCH_END.len()..]),
        _ => format!("{}\n{}\n", doc.trim_end(), section),
    };
    std::fs::write(&path, updated).map_err(|e| format!("write {}: {}", path.display(), e))?;
    eprintln!("xtask: the figures are in docs/benchmarks.md, \"Latest run of `cargo xtask bench`\"");
    Ok(())
}
