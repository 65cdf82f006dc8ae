//! The order of the steps of a boot, for one menu entry (docs/architecture.md, "A boot"): open
//! the files its `vboot` line names, make the host filesystem changes the options ask for, then
//! go resident and start the guest. Every refusal comes back as an error before the hook. An
//! entry with a `chainloader` line instead goes to chainload.rs (no image, no hook).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::disk::BiosDisk;
use crate::host::{open_image_file, DriveRole, EntryFile, GrubDisk, Loaded};
use crate::resident::HardDiskWrites;
use crate::{chainload, guest, media, prepare, recover, resident, screen};
use crate::println;
use vboot::config::{BootCommand, VbootOptions};
use vboot::part::PartitionTable;

/// Boot the entry at `booted` (its path in the menu) by its `vboot` or `chainloader` line.
/// Returns only to say why it could not.
pub fn boot(disk: &mut BiosDisk, table: &PartitionTable, loaded: &Loaded, booted: &[usize], command: BootCommand) -> Result<(), String> {
    for line in command.describe() {
        println!("  {}", line);
    }
    match command {
        BootCommand::Vboot(opts) => boot_image(disk, table, loaded, booted, opts),
        BootCommand::Chainload(target) => chainload::boot(disk, target),
    }
}

/// A `vboot` line: its image files become the guest's drives.
fn boot_image(disk: &mut BiosDisk, table: &PartitionTable, loaded: &Loaded, booted: &[usize], opts: &VbootOptions) -> Result<(), String> {
    let boot_disk = GrubDisk::boot(disk, table);
    let mut files = open_files(&boot_disk, loaded, opts)?;
    // Host filesystem changes for the hard-disk image happen here, before going resident.
    let mut writes = if opts.take_snapshot.is_some() { HardDiskWrites::Snapshot } else { HardDiskWrites::Normal };
    if let Some(i) = files.iter().position(|f| f.role == DriveRole::HardDisk) {
        if !opts.recover_mbr {
            let EntryFile { role, disk: host, partition, file } = files.remove(i);
            let image = prepare::HostFile::new(host, partition, file);
            // A new child (snapshot or throwaway) was made with its write slack.
            let mut slack_made = false;
            let mut image = if opts.take_snapshot.is_some() {
                slack_made = true;
                prepare::take_snapshot(&boot_disk, loaded, booted, opts, image)?
            } else {
                image
            };
            if opts.immutable {
                (image, writes) = match prepare::immutable_child(opts, image)? {
                    prepare::Immutable::Made(child) => {
                        slack_made = true;
                        (child, HardDiskWrites::Throwaway)
                    }
                    prepare::Immutable::Emptied(child) => {
                        slack_made = false;
                        (child, HardDiskWrites::Throwaway)
                    }
                    // The overlay needs no slack: nothing is written into the files.
                    prepare::Immutable::RamOverlay(image) => {
                        slack_made = true;
                        (image, HardDiskWrites::RamOverlay)
                    }
                };
            }
            if !slack_made {
                image = match prepare::ensure_slack(opts, image)? {
                    prepare::SlackOutcome::Ready(image) => image,
                    prepare::SlackOutcome::RamOverlay(image) => {
                        writes = HardDiskWrites::RamOverlay;
                        image
                    }
                };
            }
            files.insert(i, EntryFile { role, disk: image.disk, partition: image.partition, file: image.file });
        }
    }
    if opts.recover_mbr {
        return recover::recover_mbr(disk);
    }
    println!("(grub.cfg: {}{})", boot_disk.partition_name(loaded.partition), loaded.path);
    if files.iter().any(|f| f.role != DriveRole::HardDisk) {
        return media::boot(disk, opts, writes, files);
    }
    let Some(image) = files.into_iter().find(|f| f.role == DriveRole::HardDisk) else {
        return Err(String::from("this entry names no hard-disk image to boot"));
    };
    boot_hard_disk(disk, opts, writes, image)
}

/// Every file the line names, opened and checked (allocation, the BIOS's reach) before anything
/// is written.
fn open_files(boot_disk: &GrubDisk, loaded: &Loaded, opts: &VbootOptions) -> Result<Vec<EntryFile>, String> {
    let mut files = Vec::new();
    for (role, path) in [
        (DriveRole::HardDisk, &opts.harddisk),
        (DriveRole::Cdrom, &opts.cdrom),
        (DriveRole::FloppyA, &opts.floppy),
        (DriveRole::FloppyB, &opts.floppy_b),
    ] {
        let Some(path) = path else { continue };
        let opened: Vec<GrubDisk> = files.iter().map(|f: &EntryFile| f.disk.clone()).collect();
        let (host, partition, file) = open_image_file(boot_disk, &opened, loaded, role.name(), path)?;
        println!(
            "  {} image: {}{}, {} bytes in {} extent(s)",
            role.name(),
            host.partition_name(partition),
            file.path,
            file.size_bytes,
            file.extents.extents.len()
        );
        // A file the BIOS cannot reach would fail mid-boot.
        let start = host.partition(partition)?.start_lba;
        resident::check_reach(&host.bios, &file.path, &file.extents.to_host(start))?;
        files.push(EntryFile { role, disk: host, partition, file });
    }
    Ok(files)
}

/// An entry with only a hard-disk image: the image becomes 80h.
fn boot_hard_disk(disk: &mut BiosDisk, opts: &VbootOptions, writes: HardDiskWrites, image: EntryFile) -> Result<(), String> {
    let (drive, parent_dir, record, chain_bytes, first_sector) = resident::plan_hard_disk(&image.disk, opts, writes, image.partition, &image.file)?;
    if !opts.restore {
        // (With `restore` the guest reads the parent, once the engine has emptied the leaf.)
        let raw = drive.layers.len() == 1 && drive.layers[0].format == vboot::resident::PlannedFormat::Raw;
        guest::check_boot_signature(&first_sector?, &image.file.path, raw)?;
    }
    let engine = resident::load_engine(disk)?;
    match writes {
        HardDiskWrites::RamOverlay => println!(
            "  immutable: writes go to a RAM overlay of up to {} MiB and are gone at the next boot",
            vboot::resident::IMMUTABLE_OVERLAY_BYTES >> 20
        ),
        HardDiskWrites::Throwaway => println!("  immutable: writes go into {} and are gone at the next boot", image.file.path),
        _ => {}
    }
    let handoff = resident::handoff_table(alloc::vec![record]);
    resident::go_resident(&engine, alloc::vec![drive], parent_dir, opts.restore, chain_bytes, handoff)?;

    // Through the hook from here on: drive 0x80 is the image.
    let mut hooked = BiosDisk::probe(0x80).ok_or("the emulated drive 0x80 does not answer")?;
    let mut sector = [0u8; 512];
    use vboot::block::BlockDevice;
    hooked.read_sectors(0, &mut sector).map_err(|e| format!("reading the guest's boot sector: {}", e))?;
    // Checked before the hook too; this is the sector the guest gets.
    guest::check_boot_signature(&sector, &image.file.path, false)?;
    // The real disks moved up by one; the image's own disk too, when it is not the boot disk.
    let image_disk = if image.disk.bios.drive == disk.drive {
        String::new()
    } else {
        format!(", the image's disk {:#04x} is now {:#04x}", image.disk.bios.drive, image.disk.bios.drive.saturating_add(1))
    };
    println!(
        "Guest boot sector loaded from the image; hard disks: {} (the real disk is now {:#04x}{})",
        crate::disk::hard_disk_count(),
        disk.drive + 1,
        image_disk
    );
    screen::pause_if_asked(opts.pause);
    guest::start_guest(&sector, 0x80)
}
