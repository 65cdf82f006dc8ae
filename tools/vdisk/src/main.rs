//! vdisk: create, inspect, check, map, snapshot and convert virtual disk images (raw, VHD,
//! VMDK, VDI) and their differencing chains, and add or remove write slack.
//!
//! Every command that writes either builds the new file under a temporary name and renames it
//! at the end (create, snapshot, convert) or orders its writes so that the image is valid after
//! each one (reserve, trim).

mod mkconfig;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use vboot::image::chain::{open_chain, ChainOptions, ParentLocator, StdLocator};
use vboot::image::create::{create_at, CreateOptions, Variant};
use vboot::image::disk::Source;
use vboot::image::{Disk, Format, ImageError, Layer, SECTOR_BYTES};
use vdisk::cli::{Cli, Command, OpenArgs, Output};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vdisk: {}", msg);
    ExitCode::from(2)
}

/// A progress bar for `total_bytes` of copying, on stderr, drawn only when stderr is a terminal:
/// a pipe or a log file gets no progress lines at all.
fn progress_bar(total_bytes: u64, verb: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {eta}") {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar.set_message(verb);
    bar
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn chain_options(open: &OpenArgs) -> ChainOptions {
    ChainOptions { parent_dir: open.parent_dir.clone(), lenient_cid: open.lenient_cid }
}

/// Strict chain options with only a parent directory (the commands without --lenient-cid).
fn in_dir(parent_dir: &Option<String>) -> ChainOptions {
    ChainOptions { parent_dir: parent_dir.clone(), lenient_cid: false }
}

fn open_disk(path: &str, options: &ChainOptions, writable: bool) -> Result<Disk, ImageError> {
    let (layers, warnings) = open_chain(path, &mut StdLocator { writable_leaf: writable }, options)?;
    Disk::new(layers, warnings)
}

fn variant_from_extension(path: &str) -> Option<Variant> {
    let lower = path.to_ascii_lowercase();
    let ext = lower.rsplit('.').next()?;
    Some(match ext {
        "vhd" => Variant::VhdDynamic,
        "vmdk" => Variant::VmdkMonolithicSparse,
        "vdi" => Variant::VdiDynamic,
        "img" | "raw" | "bin" => Variant::Raw,
        _ => return None,
    })
}

/// The variant a child of a `format` image is.
fn child_variant(format: Format) -> Result<Variant, String> {
    match format {
        Format::Vhd => Ok(Variant::VhdDynamic),
        Format::Vmdk => Ok(Variant::VmdkMonolithicSparse),
        Format::Vdi => Ok(Variant::VdiDynamic),
        Format::Raw => Err("raw images cannot have differencing children; convert it to VHD, VMDK or VDI first".into()),
    }
}

struct CreateArgs<'a> {
    path: &'a str,
    format: Option<Variant>,
    size: Option<u64>,
    parent: Option<&'a str>,
    reserve: u64,
    exact_size: bool,
    options: ChainOptions,
}

fn cmd_create(args: CreateArgs) -> Result<(), String> {
    let CreateArgs { path, parent, reserve, .. } = args;
    let variant = match args.format {
        Some(v) => v,
        None => match parent {
            Some(p) => {
                let d = open_disk(p, &args.options, false).map_err(|e| e.to_string())?;
                let v = child_variant(d.layers()[0].format())?;
                if let Some(by_name) = variant_from_extension(path) {
                    if by_name.format() != v.format() {
                        return Err(format!("{} is named like a {} image, but a child of {} must be {}", path, by_name.format().as_str(), p, v.format().as_str()));
                    }
                }
                v
            }
            None => variant_from_extension(path).ok_or_else(|| format!("cannot tell the format from the name {}; give --format", path))?,
        },
    };
    let size = match (args.size, parent) {
        (Some(_), Some(_)) => return Err("--size cannot be combined with --parent: a child has its parent's size".into()),
        (Some(s), None) => s,
        (None, Some(_)) => 0,
        (None, None) => return Err("--size is required (e.g. --size 64M)".into()),
    };
    if parent.is_none() && (size == 0 || size % SECTOR_BYTES != 0) {
        return Err(format!("the size must be a positive multiple of 512 bytes, not {}", size));
    }
    let opts = CreateOptions { size_bytes: size, reserve_bytes: reserve, exact_size: args.exact_size, seed: seed(), now_unix: now_unix() };
    let extra = create_at(path, variant, &opts, parent).map_err(|e| e.to_string())?;
    let d = open_disk(path, &args.options, false).map_err(|e| format!("created {}, but it does not open: {}", path, e))?;
    println!("created {} ({} {}, {} bytes{})", path, d.layers()[0].format().as_str(), d.layers()[0].variant(), d.sectors() * SECTOR_BYTES, if parent.is_some() { ", differencing" } else { "" });
    for e in extra {
        println!("  extent file {}", e);
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = b;
    let mut rem = 0;
    while whole >= 1024 && unit < UNITS.len() - 1 {
        rem = whole % 1024;
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{} B", b)
    } else {
        format!("{}.{} {}", whole, rem * 10 / 1024, UNITS[unit])
    }
}

/// Details whose values are whole numbers; every other detail is text (docs/vdisk.md).
const NUMERIC_DETAILS: [&str; 8] =
    ["block_size_bytes", "blocks", "allocated_blocks", "slack_bytes", "current_size_bytes", "bat_entries", "timestamp", "parent_timestamp"];
/// Details that may occur more than once: always arrays, even with one element.
const LIST_DETAILS: [&str; 3] = ["extent", "warning", "parent_path"];

/// One layer of `info --json` (docs/vdisk.md).
#[derive(Serialize)]
struct LayerInfo<'a> {
    file: &'a str,
    format: &'static str,
    variant: String,
    virtual_size_bytes: u64,
    differencing: bool,
    /// The format's own facts (`Layer::details`), typed.
    #[serde(flatten)]
    details: serde_json::Map<String, Value>,
}

/// `info --json` of a chain that opens.
#[derive(Serialize)]
struct ChainInfo<'a> {
    file: &'a str,
    virtual_size_bytes: u64,
    chain_depth: usize,
    data_bytes: u64,
    map_runs: usize,
    layers: Vec<LayerInfo<'a>>,
    warnings: &'a [String],
}

/// `info --json` of an image whose chain does not open: what the image itself says.
#[derive(Serialize)]
struct UnopenedInfo<'a> {
    file: &'a str,
    error: String,
    layers: Vec<LayerInfo<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum RunKind {
    Zero,
    Data,
    Compressed,
}

/// One run of `map --json`.
#[derive(Serialize)]
struct MapRun {
    start_sector: u64,
    sectors: u64,
    kind: RunKind,
    layer: Option<u16>,
    file: Option<String>,
    offset_bytes: Option<u64>,
}

fn layer_info(l: &dyn Layer) -> LayerInfo<'_> {
    let mut details = serde_json::Map::new();
    for (key, text) in l.details() {
        let value = match text.parse::<u64>() {
            Ok(n) if NUMERIC_DETAILS.contains(&key.as_str()) => Value::from(n),
            _ => Value::String(text),
        };
        match details.get_mut(&key) {
            Some(Value::Array(values)) => values.push(value),
            Some(single) => *single = Value::Array(vec![single.take(), value]),
            None if LIST_DETAILS.contains(&key.as_str()) => {
                details.insert(key, Value::Array(vec![value]));
            }
            None => {
                details.insert(key, value);
            }
        }
    }
    LayerInfo {
        file: l.name(),
        format: l.format().as_str(),
        variant: l.variant(),
        virtual_size_bytes: l.virtual_sectors() * SECTOR_BYTES,
        differencing: l.parent_link().is_some(),
        details,
    }
}

/// Pretty-printed like qemu-img's `--output json`, with a final newline.
fn print_json(value: &impl Serialize) -> Result<(), String> {
    let out = std::io::stdout();
    let mut out = out.lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| format!("writing JSON to stdout: {}", e))?;
    writeln!(out).map_err(|e| format!("writing to stdout: {}", e))
}

fn cmd_info(path: &str, output: &Output, open: &OpenArgs) -> Result<(), String> {
    let json = output.is_json();
    let mut d = match open_disk(path, &chain_options(open), false) {
        Ok(d) => d,
        Err(e) => {
            // Still show what the image itself says (its parent paths help find the parent).
            if let Some(f) = StdLocator::default().open(path) {
                let dir = vboot::image::chain::dirname(path);
                if let Ok(l) = vboot::image::open_layer(f, &mut |n: &str| StdLocator::default().open(&vboot::image::chain::join(&dir, n))) {
                    if json {
                        print_json(&UnopenedInfo { file: path, error: e.to_string(), layers: vec![layer_info(&*l)] })?;
                    } else {
                        println!("image:          {}", path);
                        println!("format:         {} {}", l.format().as_str(), l.variant());
                        for (k, v) in l.details() {
                            println!("    {:<22} {}", k, v);
                        }
                    }
                }
            }
            return Err(e.to_string());
        }
    };
    let runs = d.map_all().map_err(|e| e.to_string())?;
    let allocated: u64 = runs.iter().filter(|r| !matches!(r.source, Source::Zero)).map(|r| r.sectors).sum();
    if json {
        return print_json(&ChainInfo {
            file: path,
            virtual_size_bytes: d.sectors() * SECTOR_BYTES,
            chain_depth: d.layers().len(),
            data_bytes: allocated * SECTOR_BYTES,
            map_runs: runs.len(),
            layers: d.layers().iter().map(|l| layer_info(&**l)).collect(),
            warnings: &d.warnings,
        });
    }
    let leaf = &d.layers()[0];
    println!("image:          {}", path);
    println!("format:         {} {}", leaf.format().as_str(), leaf.variant());
    println!("virtual size:   {} ({} bytes, {} sectors)", human_bytes(d.sectors() * SECTOR_BYTES), d.sectors() * SECTOR_BYTES, d.sectors());
    println!("data in chain:  {} (the rest reads as zeros)", human_bytes(allocated * SECTOR_BYTES));
    println!("chain depth:    {}", d.layers().len());
    for (i, l) in d.layers().iter().enumerate() {
        let role = if i == 0 { "leaf" } else if i + 1 == d.layers().len() { "base" } else { "parent" };
        println!("layer {} ({}): {} [{} {}]", i, role, l.name(), l.format().as_str(), l.variant());
        for (k, v) in l.details() {
            println!("    {:<22} {}", k, v);
        }
    }
    for w in &d.warnings {
        println!("warning: {}", w);
    }
    Ok(())
}

fn cmd_check(path: &str, open: &OpenArgs) -> Result<bool, String> {
    let mut d = match open_disk(path, &chain_options(open), false) {
        Ok(d) => d,
        Err(e) => {
            println!("{}: cannot be opened: {}", path, e);
            return Ok(false);
        }
    };
    let mut problems = 0;
    for w in d.warnings.clone() {
        println!("warning: {}", w);
    }
    let names: Vec<String> = d.layers().iter().map(|l| l.name().to_string()).collect();
    for (i, l) in d.layers_mut().iter_mut().enumerate() {
        for p in l.check() {
            println!("{}: {}", names[i], p);
            problems += 1;
        }
    }
    // Every mapped range must be readable (tables point inside the files).
    let runs = match d.map_all() {
        Ok(r) => r,
        Err(e) => {
            println!("{}: {}", path, e);
            problems += 1;
            Vec::new()
        }
    };
    let mut buf = vec![0u8; 512];
    for r in runs.iter().filter(|r| !matches!(r.source, Source::Zero)) {
        for s in [r.start_sector, r.start_sector + r.sectors - 1] {
            if let Err(e) = d.read(s, &mut buf) {
                println!("sector {}: {}", s, e);
                problems += 1;
            }
        }
    }
    if problems == 0 {
        println!("{}: no problems found ({} layer(s), {} map runs)", path, d.layers().len(), runs.len());
    }
    Ok(problems == 0)
}

fn cmd_map(path: &str, output: &Output, open: &OpenArgs) -> Result<(), String> {
    let mut d = open_disk(path, &chain_options(open), false).map_err(|e| e.to_string())?;
    let runs = d.map_all().map_err(|e| e.to_string())?;
    if output.is_json() {
        let json_runs: Vec<MapRun> = runs
            .iter()
            .map(|r| {
                let (kind, layer, offset_bytes) = match r.source {
                    Source::Zero => (RunKind::Zero, None, None),
                    Source::Data { layer, offset_bytes, .. } => (RunKind::Data, Some(layer), Some(offset_bytes)),
                    Source::Compressed { layer, marker_offset_bytes, .. } => (RunKind::Compressed, Some(layer), Some(marker_offset_bytes)),
                };
                let file = layer.map(|l| d.layers()[l as usize].name().to_string());
                MapRun { start_sector: r.start_sector, sectors: r.sectors, kind, layer, file, offset_bytes }
            })
            .collect();
        return print_json(&json_runs);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{:>14} {:>14}  {:<6} {:<12} {}", "start_sector", "sectors", "layer", "file_offset", "file");
    for r in &runs {
        let (layer, place, file) = match r.source {
            Source::Zero => (None, "zeros".to_string(), ""),
            Source::Data { layer, offset_bytes, .. } => (Some(layer), offset_bytes.to_string(), d.layers()[layer as usize].name()),
            Source::Compressed { layer, marker_offset_bytes, .. } => (Some(layer), format!("z@{}", marker_offset_bytes), d.layers()[layer as usize].name()),
        };
        let _ = writeln!(out, "{:>14} {:>14}  {:<6} {:<12} {}", r.start_sector, r.sectors, layer.map(|l| l.to_string()).unwrap_or_else(|| "-".into()), place, file);
    }
    Ok(())
}

fn cmd_snapshot(image: &str, new: &str, reserve: u64, options: &ChainOptions) -> Result<(), String> {
    let d = open_disk(image, options, false).map_err(|e| e.to_string())?;
    let variant = child_variant(d.layers()[0].format())?;
    drop(d);
    let opts = CreateOptions { size_bytes: 0, reserve_bytes: reserve, exact_size: false, seed: seed(), now_unix: now_unix() };
    create_at(new, variant, &opts, Some(image)).map_err(|e| e.to_string())?;
    let d = open_disk(new, options, false).map_err(|e| format!("created {}, but it does not open: {}", new, e))?;
    println!("created {} as a child of {} (chain depth {})", new, image, d.layers().len());
    Ok(())
}

/// `immutable-child`: a snapshot of IMAGE under the name stage2 looks for (docs/usage.md,
/// "Immutable"). A raw IMAGE gets a VMDK child over a flat VMDK descriptor naming it, as stage2
/// makes them on FAT.
fn cmd_immutable_child(image: &str, child: Option<&str>, reserve: u64, options: &ChainOptions) -> Result<(), String> {
    let d = open_disk(image, options, false).map_err(|e| e.to_string())?;
    let (format, sectors) = (d.layers()[0].format(), d.sectors());
    drop(d);
    let raw = format == Format::Raw;
    let default_path = vboot::image::create::immutable_child_path(image, raw);
    let path = child.unwrap_or(&default_path);
    let parent = if raw {
        let descriptor = vboot::image::create::raw_descriptor_path(image);
        if !std::path::Path::new(&descriptor).exists() {
            let raw_name = vboot::image::chain::basename(image);
            let text = vboot::image::create::raw_flat_descriptor(raw_name, sectors, seed());
            // create_new: never over a file that appeared meanwhile.
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&descriptor).map_err(|e| format!("{}: {}", descriptor, e))?;
            f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {}", descriptor, e))?;
            println!("created {}, a VMDK descriptor naming the raw {} (the child's parent; qemu-img reads the child through it)", descriptor, image);
        }
        descriptor
    } else {
        image.to_string()
    };
    cmd_snapshot(&parent, path, reserve, options)?;
    println!(
        "{} is the throwaway child for `immutable`: every start of vboot empties it; one boot can write {} into it on NTFS or ext{}",
        path,
        human_bytes(reserve),
        if child.is_some() { String::from(" (name it in the vboot line with immutable_child=, as a path on its partition)") } else { String::new() }
    );
    Ok(())
}

fn cmd_convert(source: &str, target: &str, format: Option<Variant>, reserve: u64, options: &ChainOptions) -> Result<(), String> {
    let variant = match format {
        Some(v) => v,
        None => variant_from_extension(target).ok_or_else(|| format!("cannot tell the format from the name {}; give --format", target))?,
    };
    let mut src = open_disk(source, options, false).map_err(|e| e.to_string())?;
    let src_runs = src.map_all().map_err(|e| e.to_string())?;
    let size = src.sectors() * SECTOR_BYTES;
    // Exact: the target must have the source's size (VHD would otherwise round to CHS).
    let opts = CreateOptions { size_bytes: size, reserve_bytes: reserve, exact_size: true, seed: seed(), now_unix: now_unix() };
    // Build everything in a private directory next to TARGET and move it into place at the
    // end (extent files first, the main file last), so a failure or a crash never leaves a
    // half-converted TARGET.
    let target_path = std::path::Path::new(target);
    if target_path.exists() {
        return Err(format!("{} already exists; not overwriting it", target));
    }
    let target_dir = target_path.parent().map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p }).unwrap_or(std::path::Path::new("."));
    let base = target_path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| format!("{} has no file name", target))?;
    let work = target_dir.join(format!(".vdisk-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir(&work).map_err(|e| format!("cannot create {}: {}", work.display(), e))?;
    let tmp_name = work.join(&base).to_string_lossy().into_owned();
    let extra = match create_at(&tmp_name, variant, &opts, None) {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e.to_string());
        }
    };
    for e in &extra {
        if target_dir.join(e).exists() {
            let _ = std::fs::remove_dir_all(&work);
            return Err(format!("{} already exists; not overwriting it", target_dir.join(e).display()));
        }
    }
    let cleanup = |_: &[String]| {
        let _ = std::fs::remove_dir_all(&work);
    };
    let result = (|| -> Result<(), String> {
        let mut dst = open_disk(&tmp_name, options, true).map_err(|e| e.to_string())?;
        if dst.sectors() != src.sectors() {
            return Err(format!("the target would have {} sectors instead of {}", dst.sectors(), src.sectors()));
        }
        let runs: Vec<_> = src_runs.iter().filter(|r| !matches!(r.source, Source::Zero)).copied().collect();
        let total: u64 = runs.iter().map(|r| r.sectors).sum();
        let progress = progress_bar(total * SECTOR_BYTES, "converting");
        let chunk = 2048u64;
        let mut buf = vec![0u8; (chunk * SECTOR_BYTES) as usize];
        for r in runs {
            let mut s = r.start_sector;
            while s < r.start_sector + r.sectors {
                let n = chunk.min(r.start_sector + r.sectors - s);
                let b = &mut buf[..(n * SECTOR_BYTES) as usize];
                src.read(s, b).map_err(|e| e.to_string())?;
                if b.iter().any(|&x| x != 0) {
                    dst.write(s, b).map_err(|e| e.to_string())?;
                }
                s += n;
                progress.inc(n * SECTOR_BYTES);
            }
        }
        progress.finish_and_clear();
        Ok(())
    })();
    if let Err(e) = result {
        cleanup(&[]);
        return Err(e);
    }
    for e in &extra {
        std::fs::rename(work.join(e), target_dir.join(e)).map_err(|err| format!("cannot move {} into place: {}", e, err))?;
    }
    std::fs::rename(&tmp_name, target).map_err(|e| format!("cannot rename {} to {}: {}", tmp_name, target, e))?;
    let _ = std::fs::remove_dir_all(&work);
    println!("converted {} -> {} ({})", source, target, Variant::NAMES.iter().find(|n| Variant::parse(n) == Some(variant)).unwrap_or(&"?"));
    Ok(())
}

/// Fold a child into its parent. Copying is idempotent and the child keeps all its data until
/// the end, so the chain reads the same at every instant; after an interruption the same
/// command finishes the job. Last, the child is relinked to the changed parent (VHD time
/// stamp, VMDK parentCID), so it stays usable; deleting it drops the snapshot.
fn cmd_merge(child: &str, parent_dir: &Option<String>) -> Result<(), String> {
    // The parent's CID changes with its first write (VMDK): an interrupted merge must reopen.
    let lenient = ChainOptions { parent_dir: parent_dir.clone(), lenient_cid: true };
    let (layers, warnings) = open_chain(child, &mut StdLocator::default(), &lenient).map_err(|e| e.to_string())?;
    for w in &warnings {
        eprintln!("warning: {}", w);
    }
    let mut child_disk = Disk::new(layers, Vec::new()).map_err(|e| e.to_string())?;
    if child_disk.layers().len() < 2 {
        return Err(format!("{} is not a differencing image: there is nothing to merge into", child));
    }
    let parent_path = child_disk.layers()[1].name().to_string();
    // Ranges the child decides itself (its data, and explicit zeros that hide the parent).
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    {
        let l = &mut child_disk.layers_mut()[0];
        let total = l.virtual_sectors();
        let mut s = 0;
        while s < total {
            let (m, run) = l.map(s).map_err(|e| e.to_string())?;
            let n = run.max(1).min(total - s);
            if m != vboot::image::Mapping::Parent {
                match ranges.last_mut() {
                    Some(last) if last.0 + last.1 == s => last.1 += n,
                    _ => ranges.push((s, n)),
                }
            }
            s += n;
        }
    }
    let mut parent_disk = open_disk(&parent_path, &in_dir(parent_dir), true)
        .map_err(|e| format!("cannot open the parent {} for writing: {}", parent_path, e))?;
    let last = ranges.last().map(|r| r.0 + r.1).unwrap_or(0);
    if last > parent_disk.sectors() {
        return Err(format!("{} has data past the end of its parent {} ({} sectors)", child, parent_path, parent_disk.sectors()));
    }
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let progress = progress_bar(total * SECTOR_BYTES, "merging");
    let chunk = 2048u64;
    let mut buf = vec![0u8; (chunk * SECTOR_BYTES) as usize];
    for (start, len) in ranges {
        let mut s = start;
        while s < start + len {
            let n = chunk.min(start + len - s);
            let b = &mut buf[..(n * SECTOR_BYTES) as usize];
            child_disk.read(s, b).map_err(|e| e.to_string())?;
            parent_disk.write(s, b).map_err(|e| format!("writing into {} failed: {} (nothing is lost: {} still holds its data; run the merge again)", parent_path, e, child))?;
            s += n;
            progress.inc(n * SECTOR_BYTES);
        }
    }
    progress.finish_and_clear();
    drop(parent_disk);
    drop(child_disk);
    // Relink the child to what its parent is now.
    let (players, _) = open_chain(&parent_path, &mut StdLocator::default(), &lenient).map_err(|e| e.to_string())?;
    let pid = players[0].identity();
    drop(players);
    let (mut clayers, _) = open_chain(child, &mut StdLocator { writable_leaf: true }, &lenient).map_err(|e| e.to_string())?;
    match clayers[0].relink_parent(&pid) {
        Ok(()) => {}
        Err(vboot::image::ImageError::Unsupported { .. }) => {}
        Err(e) => return Err(format!("merged, but relinking {} failed: {}", child, e)),
    }
    drop(clayers);
    open_disk(child, &ChainOptions::default(), false).map_err(|e| format!("merged, but {} does not reopen: {}", child, e))?;
    println!("merged {} ({} sectors) into {}", child, total, parent_path);
    println!("{} still reads the same; delete it to drop the snapshot. Other children of {} (if any) no longer match it.", child, parent_path);
    Ok(())
}

/// Add or remove slack at the end of a sparse leaf. VHD keeps its footer at the end: when
/// growing, the footer is written at the new end first (a valid footer at EOF at every
/// instant); when shrinking, the footer is written at its new place, then the file is cut.
fn resize_slack(path: &str, add: Option<u64>) -> Result<(), String> {
    let options = ChainOptions::default();
    let d = open_disk(path, &options, false).map_err(|e| e.to_string())?;
    let leaf = &d.layers()[0];
    let format = leaf.format();
    let variant = leaf.variant();
    let slack = leaf.slack_bytes();
    if d.layers()[0].name() != path {
        return Err("internal: leaf name mismatch".into());
    }
    let sparse = match format {
        Format::Vhd => variant != "fixed",
        Format::Vdi => variant != "fixed",
        Format::Vmdk => variant == "monolithicSparse",
        Format::Raw => false,
    };
    if !sparse {
        if variant == "twoGbMaxExtentSparse" {
            return Err(format!("{} is split into several extent files; give --reserve when creating it (the slack goes to the last extent)", path));
        }
        return Err(format!("{} is a {} {} image: it has no allocation tables, so it needs no slack", path, format.as_str(), variant));
    }
    drop(d);
    let io = |e: std::io::Error| format!("{}: {}", path, e);
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    use std::io::{Read, Seek, SeekFrom};
    let (new_len, trailer) = match add {
        Some(bytes) => {
            let bytes = bytes.div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
            (len + bytes, bytes)
        }
        None => (len - slack, slack),
    };
    if format == Format::Vhd {
        let mut footer = vec![0u8; 512];
        f.seek(SeekFrom::Start(len - 512)).map_err(io)?;
        f.read_exact(&mut footer).map_err(io)?;
        f.seek(SeekFrom::Start(new_len - 512)).map_err(io)?;
        f.write_all(&footer).map_err(io)?;
        f.sync_data().map_err(io)?;
        if add.is_some() {
            // The old footer becomes slack: zero it.
            f.seek(SeekFrom::Start(len - 512)).map_err(io)?;
            f.write_all(&[0u8; 512]).map_err(io)?;
        }
    }
    f.set_len(new_len).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    let d = open_disk(path, &options, false).map_err(|e| format!("{} no longer opens after the change: {}", path, e))?;
    match add {
        Some(_) => println!("{}: added {} of slack (now {})", path, human_bytes(trailer), human_bytes(d.layers()[0].slack_bytes())),
        None => println!("{}: removed {} of slack", path, human_bytes(trailer)),
    }
    Ok(())
}

fn cmd_relink(path: &str, parent_dir: &Option<String>) -> Result<(), String> {
    let lenient = ChainOptions { parent_dir: parent_dir.clone(), lenient_cid: true };
    let (mut layers, warnings) = open_chain(path, &mut StdLocator { writable_leaf: true }, &lenient).map_err(|e| e.to_string())?;
    for w in &warnings {
        eprintln!("was: {}", w);
    }
    if layers.len() < 2 {
        return Err(format!("{} is not a differencing image", path));
    }
    let pid = layers[1].identity();
    let parent = layers[1].name().to_string();
    layers[0].relink_parent(&pid).map_err(|e| e.to_string())?;
    drop(layers);
    open_disk(path, &ChainOptions::default(), false).map_err(|e| format!("relinked, but {} still does not open: {}", path, e))?;
    println!("{} now expects {} as it is now", path, parent);
    Ok(())
}

fn cmd_restore(path: &str, open: &OpenArgs) -> Result<(), String> {
    let mut d = open_disk(path, &chain_options(open), true).map_err(|e| e.to_string())?;
    d.discard_leaf().map_err(|e| e.to_string())?;
    println!("{}: emptied; it reads as {} again ({} of slack free)", path, d.layers().get(1).map(|l| l.name()).unwrap_or("its parent"), human_bytes(d.layers()[0].slack_bytes()));
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors: clap prints them with the usage and exits with status 2.
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Create { file, format, size, parent, reserve, exact_size, parent_dir } => cmd_create(CreateArgs {
            path: file,
            format: *format,
            size: *size,
            parent: parent.as_deref(),
            reserve: reserve.unwrap_or(0),
            exact_size: *exact_size,
            options: in_dir(parent_dir),
        }),
        Command::Info { file, output, open } => cmd_info(file, output, open),
        Command::Check { file, open } => match cmd_check(file, open) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Map { file, output, open } => cmd_map(file, output, open),
        Command::Snapshot { image, new, reserve, parent_dir } => cmd_snapshot(image, new, reserve.unwrap_or(0), &in_dir(parent_dir)),
        Command::ImmutableChild { image, child, reserve, parent_dir } => cmd_immutable_child(image, child.as_deref(), *reserve, &in_dir(parent_dir)),
        Command::Convert { source, target, format, reserve, parent_dir, exact_size: _ } => cmd_convert(source, target, *format, reserve.unwrap_or(0), &in_dir(parent_dir)),
        Command::Merge { child, parent_dir } => cmd_merge(child, parent_dir),
        Command::Restore { child, open } => cmd_restore(child, open),
        Command::Relink { child, parent_dir } => cmd_relink(child, parent_dir),
        Command::Reserve { file, size } => resize_slack(file, Some(*size)),
        Command::Trim { file } => resize_slack(file, None),
        Command::Mkconfig { dir, output, dry_run } => mkconfig::run(dir, output.as_deref(), *dry_run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
