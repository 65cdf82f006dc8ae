//! vboot-install: put vboot on a disk (or disk image), take it off again, or say what is there.
//!
//! Every check runs before the first write (`vboot::install::plan_install`); a refusal writes
//! nothing. Writes go in an order that leaves the disk bootable by its old code until sector 0,
//! the last write, switches it to vboot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vboot::block::{BlockDevice, FileDisk, SECTOR_BYTES};
use vboot::install::{self, InstallOptions, SectorWrite, Stage2Header, StagePatch};

const USAGE: &str = "\
usage: vboot-install install DISK [--partition N] [--force] [--force-chs] [--stage-dir DIR] [--dry-run]
       vboot-install uninstall DISK [--dry-run]
       vboot-install status DISK

DISK is a whole disk: a block device (/dev/sdb) or a disk image file.

install      write stage1 into sector 0 (keeping the disk signature and partition table) and
             stage2 into the gap after the MBR, or into the BIOS boot partition (EF02) on GPT
  --partition N   the partition holding grub.cfg, GRUB numbering (1-4 primary, 5+ logical,
                  GPT entries from 1); default: the active partition, else the first partition
                  with a filesystem vboot reads
  --force         overwrite data in the gap or BIOS boot partition that is not an earlier vboot
  --force-chs     make stage1 load stage2 with CHS reads, for BIOSes with broken extensions
  --stage-dir DIR where stage1.bin, stage2.bin and engine.bin are (default: ../vboot next to this program,
                  i.e. target/vboot, or $VBOOT_STAGE_DIR)
  --dry-run       check and show what would be written, write nothing
uninstall    put back the sector 0 saved at install time (keeping the current partition table)
             and clear the gap
status       show what is installed, its version and where";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vboot-install: {}", e);
            ExitCode::FAILURE
        }
    }
}

struct Args {
    command: String,
    disk: PathBuf,
    opts: InstallOptions,
    stage_dir: Option<PathBuf>,
    dry_run: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let command = it.next().ok_or_else(|| USAGE.to_string())?.clone();
    if command == "--help" || command == "-h" || command == "help" {
        println!("{}", USAGE);
        std::process::exit(0);
    }
    if !["install", "uninstall", "status"].contains(&command.as_str()) {
        return Err(format!("unknown command '{}'\n{}", command, USAGE));
    }
    let mut disk = None;
    let mut opts = InstallOptions::default();
    let mut stage_dir = None;
    let mut dry_run = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--partition" if command == "install" => {
                let v = it.next().ok_or("--partition needs a number")?;
                let n: u32 = v.parse().map_err(|_| format!("--partition {}: not a partition number", v))?;
                if n == 0 {
                    return Err("--partition 0: partitions are numbered from 1, as in GRUB".into());
                }
                opts.config_partition = Some(n);
            }
            "--force" if command == "install" => opts.force = true,
            "--force-chs" if command == "install" => opts.force_chs = true,
            "--stage-dir" if command == "install" => {
                stage_dir = Some(PathBuf::from(it.next().ok_or("--stage-dir needs a directory")?))
            }
            "--dry-run" if command != "status" => dry_run = true,
            s if s.starts_with('-') => return Err(format!("unknown option '{}' for {}\n{}", s, command, USAGE)),
            s => {
                if disk.is_some() {
                    return Err(format!("unexpected argument '{}': give one DISK", s));
                }
                disk = Some(PathBuf::from(s));
            }
        }
    }
    let disk = disk.ok_or_else(|| format!("{} needs a DISK\n{}", command, USAGE))?;
    Ok(Args { command, disk, opts, stage_dir, dry_run })
}

fn stage_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    if let Ok(d) = std::env::var("VBOOT_STAGE_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("../vboot")))
        .unwrap_or_else(|| PathBuf::from("target/vboot"))
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

fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    match a.command.as_str() {
        "install" => {
            let dir = stage_dir(a.stage_dir);
            let read = |name: &str| {
                let p = dir.join(name);
                std::fs::read(&p).map_err(|e| format!("{}: {} (build it with `cargo xtask build`)", p.display(), e))
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
            let mut disk = open_disk(&a.disk, !a.dry_run)?;
            let plan = install::plan_install(&mut disk, &stage1, &stage2, &engine, &a.opts)?;
            println!("Installing vboot on {} ({:?} partition table)", a.disk.display(), plan.scheme);
            for n in &plan.notes {
                println!("  note: {}", n);
            }
            println!(
                "  stage2: {} sectors at LBA {}; grub.cfg partition: {}",
                plan.record.stage2_sectors,
                plan.record.stage2_lba,
                if plan.record.config_partition == 0 { "chosen at boot".to_string() } else { plan.record.config_partition.to_string() }
            );
            apply(&mut disk, &plan.writes, a.dry_run)?;
            println!("{}", if a.dry_run { "Dry run: nothing written." } else { "Done." });
            Ok(())
        }
        "uninstall" => {
            let mut disk = open_disk(&a.disk, !a.dry_run)?;
            let (_, writes) = install::plan_uninstall(&mut disk)?;
            println!("Removing vboot from {}", a.disk.display());
            apply(&mut disk, &writes, a.dry_run)?;
            println!("{}", if a.dry_run { "Dry run: nothing written." } else { "Done: the original boot code is back." });
            Ok(())
        }
        _ => status(&a.disk),
    }
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
    println!("  saved sector 0:   {}", if record.flags & install::RECORD_FLAG_SAVED_MBR != 0 { format!("at LBA {}", record.saved_mbr_lba()) } else { "none".into() });
    println!("  stage1 loads by:  {}", if patch.flags & install::PATCH_FLAG_FORCE_CHS != 0 { "CHS (forced)" } else { "LBA, CHS if the BIOS lacks extensions" });
    Ok(())
}
