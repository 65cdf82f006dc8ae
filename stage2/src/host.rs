//! The host side of an entry: the boot disk's partitions, where grub.cfg is, and the files a
//! `vboot` line names, opened on their filesystems and checked (docs/architecture.md, step 4).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::disk::BiosDisk;
use crate::println;
use vboot::block::Window;
use vboot::config::{Config, GrubPath};
use vboot::fs::volume::Volume;
use vboot::fs::File;
use vboot::install::InstallRecord;
use vboot::part::{self, PartitionKind, PartitionTable, Scheme};

/// What a file of a `vboot` line becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveRole {
    HardDisk,
    Cdrom,
    FloppyA,
    FloppyB,
}

impl DriveRole {
    /// As messages name it ("hard disk image /x.vhd not found ...").
    pub fn name(self) -> &'static str {
        match self {
            DriveRole::HardDisk => "hard disk",
            DriveRole::Cdrom => "CD-ROM",
            DriveRole::FloppyA => "floppy",
            DriveRole::FloppyB => "floppy B:",
        }
    }
}

/// A file of the entry: its role, the partition it is on, and where it lies.
pub struct EntryFile {
    pub role: DriveRole,
    pub partition: u32,
    pub file: File,
}

/// Where grub.cfg is looked for, in order.
pub const CONFIG_PATHS: [&str; 3] = ["/boot/grub/grub.cfg", "/grub/grub.cfg", "/grub.cfg"];
const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// The partition grub.cfg came from, and the config itself.
pub struct Loaded {
    pub partition: u32,
    pub path: String,
    pub config: Config,
}

pub(crate) fn empty_table() -> PartitionTable {
    PartitionTable { scheme: Scheme::Mbr, mbr_signature: 0, disk_guid: None, partitions: Vec::new(), gpt_header: None, warnings: Vec::new() }
}

pub(crate) fn list_partitions(disk: &mut BiosDisk) -> Result<PartitionTable, String> {
    match part::read_partitions(disk) {
        Err(e) => {
            println!("Partitions of {:#04x}: {}", disk.drive, e);
            Err(format!("cannot read the partition table of the boot disk: {}", e))
        }
        Ok(t) => {
            let scheme = match t.scheme {
                Scheme::Mbr => "MBR",
                Scheme::Gpt => "GPT",
                Scheme::Hybrid => "hybrid MBR/GPT",
            };
            println!("Partitions of {:#04x} ({}, {} found):", disk.drive, scheme, t.partitions.len());
            for w in &t.warnings {
                println!("  warning: {}", w);
            }
            for p in &t.partitions {
                let (kind, extra) = match &p.kind {
                    PartitionKind::Mbr { type_byte, active } => (
                        if p.number >= 5 { "logical" } else { "primary" },
                        format!("type {:02x}{}", type_byte, if *active { ", active" } else { "" }),
                    ),
                    PartitionKind::Gpt { name, .. } => ("gpt", format!("\"{}\"", name)),
                };
                println!(
                    "  (hd0,{}) {:<7} start {:>9} size {:>9} sectors  {} {}",
                    p.number,
                    kind,
                    p.start_lba,
                    p.sectors,
                    p.describe(),
                    extra
                );
            }
            Ok(t)
        }
    }
}

/// A partition of the boot disk as a block device.
/// (A clone of the disk, so that every volume in stage2 is a `Volume<Window<BiosDisk>>`: one copy
/// of the filesystem code, not one per borrow type.)
pub fn partition_window(disk: &BiosDisk, table: &PartitionTable, number: u32) -> Result<Window<BiosDisk>, String> {
    let p = table.find(number).ok_or_else(|| {
        let have: Vec<String> = table.partitions.iter().map(|p| format!("{}", p.number)).collect();
        format!("partition (hd0,{}) does not exist; the boot disk has {}", number, if have.is_empty() { String::from("none") } else { have.join(", ") })
    })?;
    Ok(Window { inner: disk.clone(), start_lba: p.start_lba, sectors: p.sectors })
}

/// grub.cfg in its usual places: on the partition the install record names, else the active
/// partition, then every partition in order. (vboot.lkrn's `config=` is boot.rs's business.)
pub(crate) fn find_config(disk: &mut BiosDisk, table: &PartitionTable, record: Option<&InstallRecord>) -> Result<Loaded, String> {
    let candidates: Vec<u32> = match record.map(|r| r.config_partition).filter(|&n| n != 0) {
        Some(n) => alloc::vec![n],
        None => {
            // No record: the active partition first, then every partition in order.
            let mut v: Vec<u32> = table
                .partitions
                .iter()
                .filter(|p| matches!(p.kind, PartitionKind::Mbr { active: true, .. }))
                .map(|p| p.number)
                .collect();
            v.extend(table.partitions.iter().filter(|p| !p.is_extended()).map(|p| p.number));
            v
        }
    };
    let mut tried: Vec<String> = Vec::new();
    for number in candidates {
        let win = partition_window(disk, table, number)?;
        let mut vol = match Volume::open(win) {
            Ok(v) => v,
            Err(vboot::fs::FsError::NotRecognized(_)) => {
                tried.push(format!("(hd0,{}): no filesystem vboot reads", number));
                continue;
            }
            Err(e) => {
                tried.push(format!("(hd0,{}): {}", number, e));
                continue;
            }
        };
        for path in CONFIG_PATHS {
            // A grub.cfg rewrite cut off between its two renames leaves only NAME.new, complete
            // (Volume::replace_file).
            match vol.read_replaced(path, CONFIG_MAX_BYTES) {
                Ok((bytes, from_new)) => {
                    if from_new {
                        println!("Reading (hd0,{}){}.new: {} is missing (an interrupted rewrite)", number, path, path);
                    } else {
                        println!("Reading (hd0,{}){} ({} bytes, {})", number, path, bytes.len(), vol.kind().name());
                    }
                    let config = Config::parse_bytes(&bytes).map_err(|e| format!("(hd0,{}){}{}: {}", number, path, if from_new { ".new" } else { "" }, e))?;
                    return Ok(Loaded { partition: number, path: String::from(path), config });
                }
                Err(vboot::fs::FsError::NotFound { .. }) => {}
                Err(e) => tried.push(format!("(hd0,{}){}: {}", number, path, e)),
            }
        }
        tried.push(format!("(hd0,{}): none of {}", number, CONFIG_PATHS.join(", ")));
    }
    Err(format!("no grub.cfg found. Looked in:\n  {}", tried.join("\n  ")))
}

/// Open a file named by a grub.cfg path, on the boot disk.
pub fn open_image_file(
    disk: &mut BiosDisk,
    table: &PartitionTable,
    loaded: &Loaded,
    what: &str,
    path: &GrubPath,
) -> Result<(u32, File), String> {
    if let Some(d) = path.disk {
        if d != 0 {
            return Err(format!("{} {}: only files on the boot disk (hd0) can be used so far", what, path));
        }
    }
    let number = match path.partition {
        Some(p) => p.number,
        None if path.disk.is_some() => {
            return Err(format!("{} {}: a file needs a partition, as in (hd0,1)/file", what, path));
        }
        None => loaded.partition,
    };
    let win = partition_window(disk, table, number)?;
    let mut vol = Volume::open(win).map_err(|e| format!("{} {}: (hd0,{}): {}", what, path, number, e))?;
    let file = vol.open_file(&path.path).map_err(|e| match e {
        vboot::fs::FsError::NotFound { .. } => format!("{} image {} not found on (hd0,{})", what, path.path, number),
        other => format!("{} image {}: {}", what, path, other),
    })?;
    // Before the engine gets the extents, and before anything is written through them: a
    // cross-linked file would let the guest overwrite another file or the filesystem itself.
    vol.check_file_allocation(&file).map_err(|e| format!("{} image {}: {}", what, path, e))?;
    Ok((number, file))
}

