//! vboot-install: put vboot on a disk (or disk image), take it off again, or say what is there.
//!
//! Every check runs before the first write (`vboot::install::plan_install`); a refusal writes
//! nothing. Writes go in an order that leaves the disk bootable by its old code until sector 0,
//! the last write, switches it to vboot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use vboot::block::{BlockDevice, FileDisk, SECTOR_BYTES};
use vboot::config::rewrite;
use vboot::install::{self, InstallOptions, SectorWrite, Stage2Header, StagePatch};
use vboot_install::cli::{Cli, Command, PACKAGED_STAGE_DIR};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with status 2; failures of the work exit 1.
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vboot-install: {}", e);
            ExitCode::FAILURE
        }
    }
}

/// The firmware files: the explicit directory, else $VBOOT_STAGE_DIR, else `../vboot` next to
/// this program when it holds stage1.bin (a source tree's target/vboot), else the packaged
/// /usr/lib/vboot.
fn stage_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if let Ok(d) = std::env::var("VBOOT_STAGE_DIR") {
        return PathBuf::from(d);
    }
    let beside = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("../vboot")));
    match beside {
        Some(d) if d.join("stage1.bin").is_file() => d,
        _ => PathBuf::from(PACKAGED_STAGE_DIR),
    }
}

fn open_disk(path: &Path, writable: bool) -> Result<FileDisk, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {}", path.display(), e))?;
    if meta.is_dir() {
        return Err(format!("{} is a directory, not a disk", path.display()));
    }
    let disk = FileDisk::open(path, writable).map_err(|e| format!("{}: {}", path.display(), e))?;
    if meta.is_file() && meta.len() % SECTOR_BYTES as u64 != 0 {
        return Err(format!(
            "{} is {} bytes, not a whole number of 512-byte sectors: not a disk image",
            path.display(),
            meta.len()
        ));
    }
    Ok(disk)
}

fn apply(disk: &mut FileDisk, writes: &[SectorWrite], dry_run: bool) -> Result<(), String> {
    for w in writes {
        println!(
            "  {} {} sector(s) at LBA {}: {}",
            if dry_run { "would write" } else { "writing" },
            w.bytes.len() / SECTOR_BYTES,
            w.lba,
            w.what
        );
        if !dry_run {
            disk.write_sectors(w.lba, &w.bytes).map_err(|e| format!("writing {}: {}", w.what, e))?;
        }
    }
    if !dry_run {
        disk.file.sync_all().map_err(|e| format!("flushing the disk: {}", e))?;
    }
    Ok(())
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Install { disk, partition, force, force_chs, stage_dir: explicit_dir, grub_cfg, no_original_mbr_entry, dry_run } => {
            let opts = InstallOptions { config_partition: partition, force, force_chs };
            let dir = stage_dir(explicit_dir);
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read(&p).map_err(|e| format!("{}: {} (build it with `cargo xtask build`, give --stage-dir, or install the vboot package)", p.display(), e))
            };
            let stage1 = read("stage1.bin")?;
            let stage2 = read("stage2.bin")?;
            let engine = read("engine.bin")?;
            let stage1: [u8; SECTOR_BYTES] = stage1
                .try_into()
                .map_err(|_| "stage1.bin must be exactly 512 bytes".to_string())?;
            if !StagePatch::read(&stage1).is_vboot() {
                return Err("stage1.bin is not vboot's stage1 (no patch area)".into());
            }
            let mut file_disk = open_disk(&disk, !dry_run)?;
            let plan = install::plan_install(&mut file_disk, &stage1, &stage2, &engine, &opts)?;
            println!("Installing vboot on {} ({:?} partition table)", disk.display(), plan.scheme);
            for n in &plan.notes {
                println!("  note: {}", n);
            }
            println!(
                "  stage2: {} sectors at LBA {}; grub.cfg partition: {}",
                plan.record.stage2_sectors,
                plan.record.stage2_lba,
                if plan.record.config_partition == 0 { "chosen at boot".to_string() } else { plan.record.config_partition.to_string() }
            );
            // Worked out before the first write: a grub.cfg that cannot be read refuses the install.
            let entry = if plan.saved_boot_code && !no_original_mbr_entry { Some(original_mbr_entry(grub_cfg.as_deref())?) } else { None };
            apply(&mut file_disk, &plan.writes, dry_run)?;
            match entry {
                Some(OriginalMbrEntry::Append { path, .. }) if dry_run => {
                    println!("Would append to {} an entry that starts the boot loader vboot replaces:\n{}", path.display(), rewrite::original_mbr_entry())
                }
                Some(OriginalMbrEntry::Append { path, text }) => {
                    replace_file(&path, &text)?;
                    println!("Appended to {} an entry that starts the boot loader vboot replaced:\n{}", path.display(), rewrite::original_mbr_entry());
                }
                Some(OriginalMbrEntry::AlreadyThere(path)) => {
                    println!("{} already has an entry that starts the original MBR (chainloader --original-mbr).", path.display())
                }
                Some(OriginalMbrEntry::Print) => println!(
                    "Sector 0 held another boot loader. To start it from vboot's menu, add to grub.cfg (or give --grub-cfg FILE):\n{}",
                    rewrite::original_mbr_entry()
                ),
                None => {}
            }
            println!("{}", if dry_run { "Dry run: nothing written." } else { "Done." });
            Ok(())
        }
        Command::Uninstall { disk, dry_run } => {
            let mut file_disk = open_disk(&disk, !dry_run)?;
            let (_, writes) = install::plan_uninstall(&mut file_disk)?;
            println!("Removing vboot from {}", disk.display());
            apply(&mut file_disk, &writes, dry_run)?;
            println!("{}", if dry_run { "Dry run: nothing written." } else { "Done: the original boot code is back." });
            Ok(())
        }
        Command::Status { disk } => status(&disk),
    }
}

/// What to do about the entry that starts the boot loader vboot replaces.
enum OriginalMbrEntry {
    /// `--grub-cfg FILE`: its new text.
    Append { path: PathBuf, text: String },
    AlreadyThere(PathBuf),
    /// No grub.cfg named: print the entry.
    Print,
}

fn original_mbr_entry(grub_cfg: Option<&Path>) -> Result<OriginalMbrEntry, String> {
    let Some(path) = grub_cfg else { return Ok(OriginalMbrEntry::Print) };
    let bytes = std::fs::read(path).map_err(|e| format!("--grub-cfg {}: {}", path.display(), e))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("--grub-cfg {}: not UTF-8 text; add the entry by hand", path.display()))?;
    match rewrite::with_original_mbr_entry(&text).map_err(|e| format!("--grub-cfg {}: {}; nothing was written", path.display(), e))? {
        Some(text) => Ok(OriginalMbrEntry::Append { path: path.to_path_buf(), text }),
        None => Ok(OriginalMbrEntry::AlreadyThere(path.to_path_buf())),
    }
}

/// Replace `path` with `text` so that it is always the old or the new file: the new text goes
/// into a file beside it, synced, then renamed over it.
fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let mut new_name = path.as_os_str().to_owned();
    new_name.push(".vboot-new");
    let new_path = PathBuf::from(new_name);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&new_path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&new_path, path)
    };
    write().map_err(|e| format!("writing {}: {} (vboot is installed; add the entry by hand)", path.display(), e))
}

fn status(path: &Path) -> Result<(), String> {
    let mut disk = open_disk(path, false)?;
    let (record, sector0) = match install::read_installed(&mut disk) {
        Ok(x) => x,
        Err(e) => {
            println!("{}: {}", path.display(), e);
            return Err("vboot is not installed".into());
        }
    };
    let patch = StagePatch::read(&sector0);
    let mut first = vec![0u8; SECTOR_BYTES];
    disk.read_sectors(record.stage2_lba, &mut first).map_err(|e| e.to_string())?;
    let header = Stage2Header::parse(&first);
    println!("{}: vboot is installed", path.display());
    println!("  version:          {}", core::str::from_utf8(&record.vboot_version).unwrap_or("?").trim_end_matches('\0'));
    println!("  stage2:           LBA {}, {} sectors", record.stage2_lba, record.stage2_sectors);
    println!("  engine:           LBA {}, {} sectors", record.stage2_lba + record.stage2_sectors as u64, record.engine_sectors);
    match header {
        Some(h) if h.sectors == record.stage2_sectors => println!("  stage2 header:    ok, version {}", h.version_str()),
        Some(h) => println!("  stage2 header:    says {} sectors, record says {}", h.sectors, record.stage2_sectors),
        None => println!("  stage2 header:    MISSING (stage2 was overwritten; reinstall)"),
    }
    println!(
        "  grub.cfg on:      {}",
        if record.config_partition == 0 { "chosen at boot".into() } else { format!("partition {}", record.config_partition) }
    );
    let saved = if record.flags & install::RECORD_FLAG_SAVED_MBR != 0 {
        let mut sector = [0u8; SECTOR_BYTES];
        disk.read_sectors(record.saved_mbr_lba(), &mut sector).map_err(|e| e.to_string())?;
        let what = if install::has_foreign_boot_code(&sector) {
            "another boot loader's code, which `chainloader --original-mbr` starts"
        } else {
            "no other boot loader's code"
        };
        format!("at LBA {}, {}", record.saved_mbr_lba(), what)
    } else {
        "none".into()
    };
    println!("  saved sector 0:   {}", saved);
    println!("  stage1 loads by:  {}", if patch.flags & install::PATCH_FLAG_FORCE_CHS != 0 { "CHS (forced)" } else { "LBA, CHS if the BIOS lacks extensions" });
    Ok(())
}
