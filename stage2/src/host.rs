//! The host side of an entry: the boot disk's partitions, where grub.cfg is, and the files a
//! `vboot` line names, on any BIOS hard disk, opened on their filesystems and checked
//! (docs/architecture.md, step 4; disk numbering in docs/usage.md, "Paths and disks").

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
use vboot::part::{self, Partition, PartitionKind, PartitionTable, Scheme};

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

/// A file of the entry: its role, the disk and partition it is on, and where it lies.
pub struct EntryFile {
    pub role: DriveRole,
    pub disk: GrubDisk,
    pub partition: u32,
    pub file: File,
}

/// GRUB's number N of BIOS hard disk `drive`: (hdN) is drive 80h + N as the BIOS numbered the
/// disks before vboot, as chainloader (chainload.rs) and GRUB number them.
pub fn grub_disk_number(drive: u8) -> u32 {
    drive.saturating_sub(0x80) as u32
}

/// A BIOS hard disk that holds files of an entry: GRUB's (hdN), the BIOS disk (drive 80h + N)
/// and its partition table.
#[derive(Clone)]
pub struct GrubDisk {
    pub number: u32,
    pub bios: BiosDisk,
    pub table: PartitionTable,
}

impl GrubDisk {
    /// The disk vboot started from (grub.cfg's disk), with the table the menu read.
    pub fn boot(disk: &BiosDisk, table: &PartitionTable) -> GrubDisk {
        GrubDisk { number: grub_disk_number(disk.drive), bios: disk.clone(), table: table.clone() }
    }

    /// `(hdN,M)`, as messages name a partition of this disk.
    pub fn partition_name(&self, partition: u32) -> String {
        format!("(hd{},{})", self.number, partition)
    }

    pub fn partition(&self, number: u32) -> Result<&Partition, String> {
        find_partition(self.bios.drive, &self.table, number)
    }

    /// Partition `number` as a block device.
    pub fn window(&self, number: u32) -> Result<Window<BiosDisk>, String> {
        partition_window(&self.bios, &self.table, number)
    }

    /// The filesystem of partition `number`.
    pub fn volume(&self, number: u32) -> Result<Volume<Window<BiosDisk>>, String> {
        Volume::open(self.window(number)?).map_err(|e| format!("{}: {}", self.partition_name(number), e))
    }
}

/// Disk (hdN) of a path: the boot disk as the menu has it when N names it, else BIOS drive
/// 80h + N with its partition table read now. `what` (the option and path as written) starts
/// the messages.
pub fn open_grub_disk(boot: &GrubDisk, number: u32, what: &str) -> Result<GrubDisk, String> {
    if number == boot.number {
        return Ok(boot.clone());
    }
    let count = crate::disk::hard_disk_count();
    let drive = u8::try_from(0x80 + number as u64).ok().filter(|_| number < count as u32);
    let Some(mut disk) = drive.and_then(BiosDisk::probe) else {
        return Err(format!(
            "{}: disk (hd{}) does not exist: the BIOS reports {} hard disk(s), (hd0) to (hd{}) (GRUB counts disks from 0: (hd0) is BIOS drive 0x80)",
            what,
            number,
            count,
            count.saturating_sub(1)
        ));
    };
    let table = list_partitions(&mut disk).map_err(|e| format!("{}: {}", what, e))?;
    Ok(GrubDisk { number, bios: disk, table })
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
            Err(format!("cannot read the partition table of (hd{}) (BIOS drive {:#04x}): {}", grub_disk_number(disk.drive), disk.drive, e))
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
                    "  (hd{},{}) {:<7} start {:>9} size {:>9} sectors  {} {}",
                    grub_disk_number(disk.drive),
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

/// Partition `number` of the disk at BIOS `drive` with partition table `table`.
fn find_partition(drive: u8, table: &PartitionTable, number: u32) -> Result<&Partition, String> {
    table.find(number).ok_or_else(|| {
        let have: Vec<String> = table.partitions.iter().map(|p| format!("{}", p.number)).collect();
        let disk = grub_disk_number(drive);
        format!(
            "partition (hd{},{}) does not exist; (hd{}) has {}",
            disk,
            number,
            disk,
            if have.is_empty() { String::from("no partitions") } else { have.join(", ") }
        )
    })
}

/// A partition of a disk as a block device.
/// (A clone of the disk, so that every volume in stage2 is a `Volume<Window<BiosDisk>>`: one copy
/// of the filesystem code, not one per borrow type.)
pub fn partition_window(disk: &BiosDisk, table: &PartitionTable, number: u32) -> Result<Window<BiosDisk>, String> {
    let p = find_partition(disk.drive, table, number)?;
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
    let disk_number = grub_disk_number(disk.drive);
    let mut tried: Vec<String> = Vec::new();
    for number in candidates {
        let win = partition_window(disk, table, number)?;
        let mut vol = match Volume::open(win) {
            Ok(v) => v,
            Err(vboot::fs::FsError::NotRecognized(_)) => {
                tried.push(format!("(hd{},{}): no filesystem vboot reads", disk_number, number));
                continue;
            }
            Err(e) => {
                tried.push(format!("(hd{},{}): {}", disk_number, number, e));
                continue;
            }
        };
        for path in CONFIG_PATHS {
            // A grub.cfg rewrite cut off between its two renames leaves only NAME.new, complete
            // (Volume::replace_file).
            match vol.read_replaced(path, CONFIG_MAX_BYTES) {
                Ok((bytes, from_new)) => {
                    if from_new {
                        println!("Reading (hd{},{}){}.new: {} is missing (an interrupted rewrite)", disk_number, number, path, path);
                    } else {
                        println!("Reading (hd{},{}){} ({} bytes, {})", disk_number, number, path, bytes.len(), vol.kind().name());
                    }
                    let config = Config::parse_bytes(&bytes).map_err(|e| format!("(hd{},{}){}{}: {}", disk_number, number, path, if from_new { ".new" } else { "" }, e))?;
                    return Ok(Loaded { partition: number, path: String::from(path), config });
                }
                Err(vboot::fs::FsError::NotFound { .. }) => {}
                Err(e) => tried.push(format!("(hd{},{}){}: {}", disk_number, number, path, e)),
            }
        }
        tried.push(format!("(hd{},{}): none of {}", disk_number, number, CONFIG_PATHS.join(", ")));
    }
    Err(format!("no grub.cfg found. Looked in:\n  {}", tried.join("\n  ")))
}

/// Open a file named by a grub.cfg path, on whichever BIOS hard disk it names (the grub.cfg
/// partition when it names none). `opened`: disks the entry's other files are on, not read
/// again. Returns the disk, the partition number and the file.
pub fn open_image_file(boot: &GrubDisk, opened: &[GrubDisk], loaded: &Loaded, what: &str, path: &GrubPath) -> Result<(GrubDisk, u32, File), String> {
    let known = |d: u32| opened.iter().find(|o| o.number == d).cloned();
    let (host, number) = match (path.disk, path.partition) {
        (None, _) => (boot.clone(), loaded.partition),
        (Some(d), None) => {
            return Err(format!(
                "{} {}: a file needs a partition, as in (hd{},1){}: vboot does not read a disk without a partition table (a \"superfloppy\") as a filesystem",
                what, path, d, path.path
            ));
        }
        (Some(d), Some(p)) => match known(d) {
            Some(disk) => (disk, p.number),
            None => (open_grub_disk(boot, d, &format!("{} {}", what, path))?, p.number),
        },
    };
    let win = host.window(number).map_err(|e| format!("{} {}: {}", what, path, e))?;
    let place = host.partition_name(number);
    let mut vol = Volume::open(win).map_err(|e| format!("{} {}: {}: {}", what, path, place, e))?;
    let file = vol.open_file(&path.path).map_err(|e| match e {
        vboot::fs::FsError::NotFound { .. } => format!("{} image {} not found on {}", what, path.path, place),
        other => format!("{} image {}: {}", what, path, other),
    })?;
    // Before the engine gets the extents, and before anything is written through them: a
    // cross-linked file would let the guest overwrite another file or the filesystem itself.
    vol.check_file_allocation(&file).map_err(|e| format!("{} image {}: {}", what, path, e))?;
    Ok((host, number, file))
}
