//! `vdisk mkconfig DIR`: a grub.cfg entry for every bootable image on a mounted host partition,
//! as grub-mkconfig with os-prober does for installed systems (docs/vdisk.md, "mkconfig").
//!
//! Every regular file under DIR is looked at once: an ISO with an El Torito boot image becomes a
//! `cdrom=` entry, a VHD/VMDK/VDI chain a `harddisk=` entry for its leaf only (files that are a
//! parent, or an extent of a multi-file VMDK, get none), a floppy-sized file with a boot
//! signature a `floppy=` entry, any other file of whole sectors with a boot signature a raw
//! `harddisk=` entry. A disk image counts as bootable when sector 0 of its virtual disk, read
//! through the whole chain, ends in 55AA, which is what vboot checks before it boots one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vboot::config::generate::{entries_block, merge, GeneratedEntry};
use vboot::config::BootDevice;
use vboot::eltorito::{self, CD_BLOCK_BYTES};
use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
use vboot::image::{probe, Disk, Format, ImageFile, StdFile};
use vboot::int13::FloppyFormat;
use vboot::part::has_boot_signature;

/// Directories no image lives in (filesystem bookkeeping), and how deep the walk goes.
const SKIPPED_DIRS: [&str; 3] = ["lost+found", "System Volume Information", "$RECYCLE.BIN"];
const MAX_DEPTH: usize = 32;
/// Where vboot looks for grub.cfg on its partition, in its order (docs/usage.md).
const CONFIG_PLACES: [&str; 3] = ["boot/grub/grub.cfg", "grub/grub.cfg", "grub.cfg"];

/// What the walk decided about one file.
enum Kind {
    Cdrom,
    Floppy,
    RawDisk,
    /// A VHD, VMDK or VDI chain: its layers' files (canonical paths) and its format.
    Chain { format: Format, layers: usize, files: Vec<Vec<PathBuf>> },
}

struct Candidate {
    /// From the partition's root, `/`-separated.
    path: String,
    canonical: PathBuf,
    kind: Kind,
    /// Sector 0 of the virtual disk ends in 55AA (a chain that does not still names its
    /// parents, which then get no entry of their own).
    bootable: bool,
}

/// Run `vdisk mkconfig`.
pub fn run(dir: &str, output: Option<&str>, dry_run: bool) -> Result<(), String> {
    let root = std::fs::canonicalize(dir).map_err(|e| format!("{}: {}", dir, e))?;
    if !root.is_dir() {
        return Err(format!("{} is not a directory: give the directory where the host partition is mounted", dir));
    }
    let out_path = match output {
        Some(o) => PathBuf::from(o),
        None => CONFIG_PLACES.iter().map(|p| root.join(p)).find(|p| p.is_file()).unwrap_or_else(|| root.join(CONFIG_PLACES[0])),
    };
    let mut files = Vec::new();
    walk(&root, &root, 0, &mut files);
    // Newest first: a child is made after its parent, so a chain's leaf usually comes before
    // its parents, and they are then known as parents and not opened again as chains of their
    // own (a depth-64 chain over a 100 GiB base would otherwise open the base 64 times). The
    // order only saves work: a parent met first is opened, and still gets no entry.
    let newest_first = |f: &PathBuf| std::cmp::Reverse(f.metadata().and_then(|m| m.modified()).ok());
    files.sort_by_key(newest_first);
    let output_canonical = std::fs::canonicalize(&out_path).ok();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut parents: BTreeSet<PathBuf> = BTreeSet::new();
    for file in &files {
        let canonical = std::fs::canonicalize(file).ok();
        if canonical == output_canonical || canonical.as_ref().is_some_and(|c| parents.contains(c)) {
            continue;
        }
        match classify(&root, file) {
            Ok(Some(c)) => {
                if let Kind::Chain { files, .. } = &c.kind {
                    parents.extend(files.iter().flatten().filter(|f| **f != c.canonical).cloned());
                }
                candidates.push(c);
            }
            Ok(None) => {}
            Err(why) => eprintln!("vdisk mkconfig: skipped {}: {}", file.display(), why),
        }
    }
    candidates.sort_by(|a, b| a.path.cmp(&b.path));
    let entries = entries_of(&candidates);
    let block = entries_block(&entries);
    let existing = match std::fs::read(&out_path) {
        Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text; is it a grub.cfg?", out_path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {}", out_path.display(), e)),
    };
    let text = merge(existing.as_deref(), &block).map_err(|e| format!("{}: {}", out_path.display(), e))?;
    if dry_run {
        print!("{}", text);
        eprintln!("vdisk mkconfig: {} entr{} (dry run: {} not written)", entries.len(), if entries.len() == 1 { "y" } else { "ies" }, out_path.display());
        return Ok(());
    }
    write_replacing(&out_path, text.as_bytes())?;
    for e in &entries {
        eprintln!("  {} {}={}", e.title, e.device.keyword(), e.path);
    }
    eprintln!("vdisk mkconfig: {} entr{} written to {}", entries.len(), if entries.len() == 1 { "y" } else { "ies" }, out_path.display());
    Ok(())
}

/// Regular files under `dir`, symbolic links not followed.
fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        eprintln!("vdisk mkconfig: cannot read directory {}; skipped", dir.display());
        return;
    };
    for entry in rd.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        let path = entry.path();
        if kind.is_dir() && depth < MAX_DEPTH && !SKIPPED_DIRS.iter().any(|s| entry.file_name() == *s) {
            walk(root, &path, depth + 1, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// What `file` is, `None` when it is no image (quietly: most files on a partition are not), an
/// error when it looks like one but cannot be booted (said on stderr).
fn classify(root: &Path, file: &Path) -> Result<Option<Candidate>, String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size < 512 {
        return Ok(None);
    }
    let rel = file.strip_prefix(root).map_err(|_| String::from("outside the partition"))?;
    let path = format!("/{}", rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
    let canonical = std::fs::canonicalize(file).map_err(|e| e.to_string())?;
    let candidate = |kind| Ok(Some(Candidate { path: path.clone(), canonical: canonical.clone(), kind, bootable: true }));
    let host = File::open(file).map_err(|e| e.to_string())?;
    let mut reader = |lba: u64, block: &mut [u8; CD_BLOCK_BYTES]| host.read_exact_at(block, lba * CD_BLOCK_BYTES as u64).map_err(|e| e.to_string());
    if eltorito::check_iso(&mut reader, size).is_ok() {
        return match eltorito::boot_image(&mut reader, size) {
            Ok(_) => candidate(Kind::Cdrom),
            Err(e) => Err(format!("an ISO that a BIOS cannot boot: {}", e)),
        };
    }
    let name = file.to_string_lossy().into_owned();
    let mut image = StdFile::open(&name, false).map_err(|e| e.to_string())?;
    let format = match probe(&mut image) {
        Ok(f) => f,
        // VHDX, QCOW2: say so, vboot refuses them by name too.
        Err(e) => return Err(e.to_string()),
    };
    let mut sector0 = [0u8; 512];
    if format == Format::Raw {
        image.read_at(0, &mut sector0).map_err(|e| e.to_string())?;
        if !has_boot_signature(&sector0) {
            return Ok(None);
        }
        if FloppyFormat::from_size(size).is_some() {
            return candidate(Kind::Floppy);
        }
        if size % 512 != 0 {
            return Err(format!("{} bytes is not a whole number of 512-byte sectors", size));
        }
        return candidate(Kind::RawDisk);
    }
    drop(image);
    let (layers, _) = open_chain(&name, &mut StdLocator::default(), &ChainOptions::default()).map_err(|e| e.to_string())?;
    let files: Vec<Vec<PathBuf>> = layers
        .iter()
        .map(|l| l.file_names().iter().map(|n| std::fs::canonicalize(n).unwrap_or_else(|_| PathBuf::from(n))).collect())
        .collect();
    let depth = layers.len();
    let mut disk = Disk::new(layers, Vec::new()).map_err(|e| e.to_string())?;
    disk.read(0, &mut sector0).map_err(|e| e.to_string())?;
    let kind = Kind::Chain { format, layers: depth, files };
    Ok(Some(Candidate { path, canonical, kind, bootable: has_boot_signature(&sector0) }))
}

/// The entries: every candidate that no chain uses as a parent or as one of its files, in path
/// order.
fn entries_of(candidates: &[Candidate]) -> Vec<GeneratedEntry> {
    let mut used: BTreeSet<&Path> = BTreeSet::new();
    for c in candidates {
        if let Kind::Chain { files, .. } = &c.kind {
            for (i, layer) in files.iter().enumerate() {
                for (j, f) in layer.iter().enumerate() {
                    // The leaf's own descriptor is the candidate itself.
                    if i > 0 || j > 0 || f != &c.canonical {
                        used.insert(f);
                    }
                }
            }
        }
    }
    candidates
        .iter()
        .filter(|c| c.bootable && !used.contains(c.canonical.as_path()))
        .map(|c| {
            let stem = Path::new(&c.path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let (device, what) = match &c.kind {
                Kind::Cdrom => (BootDevice::Cdrom, String::from("CD")),
                Kind::Floppy => (BootDevice::Floppy, String::from("floppy")),
                Kind::RawDisk => (BootDevice::Harddisk, String::from("raw disk")),
                Kind::Chain { format, layers: 1, .. } => (BootDevice::Harddisk, format.as_str().to_ascii_uppercase()),
                Kind::Chain { format, layers, .. } => (BootDevice::Harddisk, format!("{}, {} layers", format.as_str().to_ascii_uppercase(), layers)),
            };
            GeneratedEntry { title: format!("{} ({})", stem, what), device, path: c.path.clone() }
        })
        .collect()
}

/// Replace `path` with `bytes` so that a crash leaves the old file or the new one: a temporary
/// file beside it, flushed, then renamed over it.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{}: no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
    let tmp = dir.join(format!(".{}.vdisk-new", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {}", path.display(), e)
    })
}
