//! `cargo xtask fuzz`: the fuzzing campaign of docs/robustness.md.
//!
//! - `cargo xtask fuzz [--seconds N] [--targets a,b]` builds every target of `fuzz/` (nightly,
//!   cargo-fuzz, no sanitizer: the core library has no `unsafe`), then runs each for N seconds
//!   (default 60) with its committed seeds (`fuzz/seeds/T`) and its growing corpus
//!   (`fuzz/corpus/T`, not committed), and prints executions and findings per target. A finding
//!   is written to `fuzz/artifacts/T/`.
//! - `--no-trace-compares` builds the targets without libFuzzer's comparison tracing (into
//!   `fuzz/target-ntc/`, so the smoke build is left alone): about 3.5 times the executions per
//!   second for the slow targets (measured on `grubcfg`), at the cost of the guidance comparisons
//!   give towards magic values. Meant for long runs from a corpus grown with tracing on.
//! - `cargo xtask fuzz --make-seeds` regenerates `fuzz/seeds/` with the real tools (qemu-img,
//!   mkfs.*, mkntfs, xorriso, sfdisk, sgdisk, mtools, ntfscp) and the core library's own image
//!   writer where no tool makes what is needed (VHD and VDI differencing, a parent cycle).
//! - [`smoke`] (a step of `cargo xtask test`): build, then run every target over its seeds once.

use crate::{root, run};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Every target, with its dictionary.
pub const TARGETS: &[(&str, Option<&str>)] = &[
    ("part", None),
    ("fs_fat", None),
    ("fs_exfat", None),
    ("fs_ntfs", None),
    ("fs_ext", None),
    ("image_vhd", None),
    ("image_vmdk", Some("vmdk.dict")),
    ("image_vdi", None),
    ("image_chain", Some("vmdk.dict")),
    ("vmdk_descriptor", Some("vmdk.dict")),
    ("iso", None),
    ("grubcfg", Some("grubcfg.dict")),
    ("vboot_line", Some("grubcfg.dict")),
    ("config_rewrite", Some("grubcfg.dict")),
    ("handoff", None),
    ("install", None),
    ("elf", None),
    ("int13", None),
];

/// Per-input time budget: a walk that takes longer is a hang (libFuzzer's `-timeout`).
const TIMEOUT_SECONDS: u32 = 10;
const MAX_LEN: u32 = 256 * 1024;

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

pub fn command(args: &[String]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut only: Option<Vec<String>> = None;
    let mut build_kind = Build::Default;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).ok_or("--seconds needs a number")?,
            "--targets" => only = Some(it.next().ok_or("--targets needs a list")?.split(',').map(String::from).collect()),
            "--no-trace-compares" => build_kind = Build::NoTraceCompares,
            "--make-seeds" => return seeds::make(),
            "--smoke" => return smoke(),
            other => return Err(format!("fuzz: unknown option {}", other)),
        }
    }
    let targets: Vec<&(&str, Option<&str>)> =
        TARGETS.iter().filter(|(t, _)| only.as_ref().map_or(true, |o| o.iter().any(|x| x == t))).collect();
    if targets.is_empty() {
        return Err(String::from("fuzz: no such target"));
    }
    build_with(build_kind)?;
    println!("fuzz: {} target(s), {} s each{}", targets.len(), seconds,
        if build_kind == Build::NoTraceCompares { ", comparison tracing off" } else { "" });
    let mut results = Vec::new();
    for (t, dict) in targets {
        // Fork mode goes on after a crash (known findings would otherwise stop a target in its
        // first seconds); every crash input still lands in fuzz/artifacts/T/.
        let opts = [
            format!("-max_total_time={}", seconds),
            String::from("-fork=1"),
            String::from("-ignore_crashes=1"),
            String::from("-ignore_timeouts=1"),
            String::from("-ignore_ooms=1"),
        ];
        let r = run_target(t, *dict, &opts, true, build_kind)?;
        println!("{:<16} {:>12} execs {:>8}/s  corpus {:>6}  {}", t, r.execs, r.execs / seconds.max(1), r.corpus, r.finding.as_deref().unwrap_or("no finding"));
        results.push((t.to_string(), r));
    }
    println!("\ntarget           executions  findings");
    let mut found = 0;
    for (t, r) in &results {
        println!("{:<16} {:>10}  {}", t, r.execs, r.finding.as_deref().unwrap_or("-"));
        found += r.finding.is_some() as usize;
    }
    println!("{} target(s) with a finding", found);
    Ok(())
}

/// How the targets are instrumented.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// cargo-fuzz's default coverage instrumentation, comparisons traced; `fuzz/target/`.
    Default,
    /// Without `-sanitizer-coverage-trace-compares`; `fuzz/target-ntc/`.
    NoTraceCompares,
}

impl Build {
    fn target_dir(self) -> PathBuf {
        match self {
            Build::Default => fuzz_dir().join("target"),
            Build::NoTraceCompares => fuzz_dir().join("target-ntc"),
        }
    }
}

/// Build every fuzz target (release, debug assertions and overflow checks on, no sanitizer).
pub fn build() -> Result<(), String> {
    build_with(Build::Default)
}

fn build_with(kind: Build) -> Result<(), String> {
    crate::deps::ensure_cargo_fuzz()?;
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "build", "--sanitizer", "none"]).current_dir(fuzz_dir());
    if kind == Build::NoTraceCompares {
        cmd.arg("--no-trace-compares").arg("--target-dir").arg(kind.target_dir());
    }
    crate::toolchain::without_outer_cargo(&mut cmd);
    run(&mut cmd)
}

fn binary(target: &str, kind: Build) -> Result<PathBuf, String> {
    let t = kind.target_dir();
    for entry in std::fs::read_dir(&t).map_err(|e| format!("{}: {}", t.display(), e))? {
        let p = entry.map_err(|e| e.to_string())?.path().join("release").join(target);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(format!("fuzz target {} is not built", target))
}

pub struct RunResult {
    pub execs: u64,
    pub corpus: u64,
    /// What libFuzzer reported and the input it wrote, when it found something.
    pub finding: Option<String>,
}

fn stat(out: &str, key: &str) -> Option<u64> {
    out.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
}

/// Every distinct problem in a libFuzzer log: a panic's location and message, an allocation
/// failure, a hang.
fn problems_in(text: &str) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let p = if let Some(at) = l.split("panicked at ").nth(1) {
            format!("panic at {} {}", at.trim_end_matches(':'), lines.get(i + 1).map(|m| m.trim()).unwrap_or(""))
        } else if l.contains("memory allocation of") {
            l.trim().to_string()
        } else if l.contains("ALARM: working on the last Unit") || l.contains("libFuzzer: timeout") {
            String::from("timeout (an input took longer than the per-input budget)")
        } else if l.contains("out-of-memory (used:") {
            String::from("out of memory (rss limit)")
        } else {
            continue;
        };
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    problems
}

/// Replay an input that crashed (fork mode keeps the children's output to itself) and say why.
fn classify(target: &str, input: &std::path::Path) -> String {
    let out = binary(target, Build::Default).and_then(|b| {
        Command::new(b).arg(input).arg(format!("-timeout={}", TIMEOUT_SECONDS)).arg("-rss_limit_mb=3072").output().map_err(|e| e.to_string())
    });
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            problems_in(&text).into_iter().next().unwrap_or_else(|| String::from("does not fail when replayed alone"))
        }
        Err(e) => e,
    }
}

/// Run one target: over its seeds (and, when `grow`, its growing corpus) with `extra` options.
fn run_target(target: &str, dict: Option<&str>, extra: &[String], grow: bool, kind: Build) -> Result<RunResult, String> {
    let dir = fuzz_dir();
    let seeds = dir.join("seeds").join(target);
    let artifacts = dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(binary(target, kind)?);
    if grow {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        cmd.arg(&corpus);
    }
    cmd.arg(&seeds);
    // Inputs of findings that were fixed (docs/robustness.md) are part of every run.
    let regressions = root().join("tests/data/fuzz-regressions").join(target);
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    cmd.arg(format!("-timeout={}", TIMEOUT_SECONDS))
        .arg(format!("-max_len={}", MAX_LEN))
        .arg("-rss_limit_mb=3072")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(extra);
    if let Some(d) = dict {
        cmd.arg(format!("-dict={}", dir.join("dict").join(d).display()));
    }
    let listing = |d: &std::path::Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d).map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
        v.retain(|p| p.file_name().map_or(false, |n| !n.to_string_lossy().ends_with(".log")));
        v
    };
    let before = listing(&artifacts);
    let out = cmd.output().map_err(|e| format!("cannot run fuzz target {}: {}", target, e))?;
    let new_artifacts: Vec<PathBuf> = listing(&artifacts).into_iter().filter(|p| !before.contains(p)).collect();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Plain runs end with final stats; fork mode (the campaign) prints "#N: cov: ..." lines.
    let execs = stat(&text, "stat::number_of_executed_units:")
        .or_else(|| text.lines().rev().find_map(|l| l.strip_prefix('#')?.split(':').next()?.parse().ok()))
        .unwrap_or(0);
    let corpus = if grow {
        std::fs::read_dir(dir.join("corpus").join(target)).map(|d| d.count() as u64).unwrap_or(0)
    } else {
        std::fs::read_dir(&seeds).map(|d| d.count() as u64).unwrap_or(0)
    };
    let mut problems = problems_in(&text);
    let lines: Vec<&str> = text.lines().collect();
    let mut inputs: Vec<String> = lines.iter().filter_map(|l| l.split("Test unit written to ").nth(1)).map(|f| f.trim().to_string()).collect();
    // Fork mode: the children's messages stay in their own logs; replay what they wrote.
    let mut by_problem: Vec<(String, usize)> = Vec::new();
    // At most 20 are replayed (a hang takes the whole time budget to show).
    let unexplained: Vec<&PathBuf> = new_artifacts.iter().filter(|a| !inputs.contains(&a.display().to_string())).take(20).collect();
    for a in unexplained {
        let p = classify(target, a);
        match by_problem.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 += 1,
            None => by_problem.push((p, 1)),
        }
        inputs.push(a.display().to_string());
    }
    for (p, n) in by_problem {
        let p = format!("{} ({} input{})", p, n, if n == 1 { "" } else { "s" });
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    let finding = if problems.is_empty() && (out.status.success() || !new_artifacts.is_empty() || grow) {
        None
    } else {
        let log = artifacts.join("last-run.log");
        let _ = std::fs::write(&log, &text);
        if problems.is_empty() {
            problems.push(String::from("the target failed"));
        }
        let shown = match inputs.len() {
            0 => String::from("no input written"),
            1 => inputs[0].clone(),
            n => format!("{} and {} more in {}", inputs[0], n - 1, artifacts.display()),
        };
        Some(format!("{}; input: {} (log: {})", problems.join(" | "), shown, log.display()))
    };
    Ok(RunResult { execs, corpus, finding })
}

/// The step of `cargo xtask test`: build the targets and run each over its committed seeds once
/// (`-runs=0`). Fails on any finding.
pub fn smoke() -> Result<(), String> {
    let start = Instant::now();
    build()?;
    let built = start.elapsed();
    let mut seeds = 0;
    let mut failures = Vec::new();
    for (t, dict) in TARGETS {
        let r = run_target(t, *dict, &[String::from("-runs=0")], false, Build::Default)?;
        seeds += r.corpus;
        if let Some(f) = r.finding {
            failures.push(format!("{}: {}", t, f));
        }
    }
    println!(
        "fuzz smoke: {} targets over {} seeds; build {:.0} s, runs {:.0} s",
        TARGETS.len(),
        seeds,
        built.as_secs_f64(),
        (start.elapsed() - built).as_secs_f64()
    );
    // The plain closing line test runners print: targets whose seeds ran clean.
    println!("fuzz-smoke: {} passed, {} failed", TARGETS.len() - failures.len(), failures.len());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("fuzz smoke found problems:\n{}", failures.join("\n")))
    }
}

mod seeds;
