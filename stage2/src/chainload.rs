//! `chainloader`: start the boot loader already on a disk (docs/usage.md, "Other boot loaders").
//! A partition's boot sector or a disk's MBR is read, checked and started at 0000:7C00 as a BIOS
//! or MBR code would start it; `--original-mbr` starts the sector 0 vboot-install saved. No hook
//! is installed and nothing is written: every refusal comes back before the jump.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::disk::{self, BiosDisk};
use crate::{guest, println};
use vboot::block::{BlockDevice, SECTOR_BYTES};
use vboot::config::{ChainTarget, GrubDevice};
use vboot::install;
use vboot::part::{self, handover};

/// Start `target`; returns only to say why it could not. `boot_disk` is the disk vboot started
/// from (its install record and saved sector 0).
pub fn boot(boot_disk: &mut BiosDisk, target: &ChainTarget) -> Result<(), String> {
    match target {
        ChainTarget::OriginalMbr => original_mbr(boot_disk),
        ChainTarget::FirstSector(device) => {
            let mut disk = open_disk(device)?;
            match device.partition {
                None => {
                    let sector = read_boot_sector(&mut disk, 0, device)?;
                    println!("Chainloading the MBR of {} as drive {:#04x}.", device, disk.drive);
                    guest::start_guest(&sector, disk.drive)
                }
                Some(p) => {
                    let table = part::read_partitions(&mut disk).map_err(|e| format!("chainloader {}+1: cannot read the partition table of (hd{}): {}", device, device.disk, e))?;
                    let partition = table.find(p.number).ok_or_else(|| {
                        let have: Vec<String> = table.partitions.iter().map(|p| format!("{}", p.number)).collect();
                        format!(
                            "chainloader {}+1: partition {} does not exist; (hd{}) has {}",
                            device,
                            p.number,
                            device.disk,
                            if have.is_empty() { String::from("none") } else { have.join(", ") }
                        )
                    })?;
                    if partition.is_extended() {
                        return Err(format!(
                            "chainloader {}+1: partition {} is an extended partition, a container of logical partitions (5 and up) with no boot sector of its own",
                            device, p.number
                        ));
                    }
                    let sector = read_boot_sector(&mut disk, partition.start_lba, device)?;
                    let mut sector0 = [0u8; SECTOR_BYTES];
                    disk.read_sectors(0, &mut sector0).map_err(|e| format!("chainloader {}+1: reading sector 0 of (hd{}): {}", device, device.disk, e))?;
                    let handover = handover::handover(partition, table.scheme, &sector0);
                    println!(
                        "Chainloading the boot sector of {} (start LBA {}) as drive {:#04x}, DS:SI = 0000:{:04X}.",
                        device, partition.start_lba, disk.drive, handover.si
                    );
                    guest::start_partition_boot_sector(&sector, disk.drive, &handover)
                }
            }
        }
    }
}

/// GRUB's disk N is BIOS drive 80h + N, if the BIOS answers for it (AH=08h, 41h, 48h).
fn open_disk(device: &GrubDevice) -> Result<BiosDisk, String> {
    let missing = || {
        let count = disk::hard_disk_count();
        let which = match device.bios_drive() {
            Some(drive) => format!("BIOS drive {:#04x} does not answer", drive),
            None => String::from("it is past the last BIOS drive number (0xff)"),
        };
        format!(
            "chainloader {}+1: disk (hd{}) does not exist: {} (the BIOS reports {} hard disk(s), (hd0) to (hd{}))",
            device,
            device.disk,
            which,
            count,
            count.saturating_sub(1)
        )
    };
    match device.bios_drive() {
        Some(drive) if device.disk < disk::hard_disk_count() as u32 => BiosDisk::probe(drive).ok_or_else(missing),
        _ => Err(missing()),
    }
}

/// The sector at `lba`, which must be a boot sector (55AA).
fn read_boot_sector(disk: &mut BiosDisk, lba: u64, device: &GrubDevice) -> Result<[u8; SECTOR_BYTES], String> {
    let mut sector = [0u8; SECTOR_BYTES];
    disk.read_sectors(lba, &mut sector).map_err(|e| format!("chainloader {}+1: reading its first sector (LBA {}): {}", device, lba, e))?;
    if !part::has_boot_signature(&sector) {
        return Err(format!(
            "chainloader {}+1: its first sector (LBA {}) has no boot signature (55AA): no boot loader is installed there",
            device, lba
        ));
    }
    Ok(sector)
}

/// The boot code vboot-install saved, with the disk's current partition table, started as the
/// BIOS started vboot: for this boot only (sector 0 keeps vboot).
fn original_mbr(disk: &mut BiosDisk) -> Result<(), String> {
    let (record, sector) = install::saved_boot_code(disk).map_err(|e| {
        format!(
            "chainloader --original-mbr: there is no saved original MBR ({}); vboot-install saves the sector 0 it replaces, \
             a vboot put in place with dd has none",
            e
        )
    })?;
    if !install::has_foreign_boot_code(&sector) {
        return Err(String::from(
            "chainloader --original-mbr: the saved sector 0 holds no other boot loader (its code area is empty, or vboot's own stage1): there is nothing to start",
        ));
    }
    if !part::has_boot_signature(&sector) {
        return Err(String::from("chainloader --original-mbr: sector 0 has no boot signature (55AA) to start the saved boot code with"));
    }
    println!(
        "Chainloading the original MBR saved at LBA {}, with the current partition table, as drive {:#04x} (nothing is written).",
        record.saved_mbr_lba(),
        disk.drive
    );
    guest::start_guest(&sector, disk.drive)
}
