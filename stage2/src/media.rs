//! Entries with a CD (`cdrom=`) or floppies (`floppy=`, `floppy_b=`), alone or beside the hard
//! disk: every image becomes a drive of the plan, and `boot=` picks which one starts.
//!
//! | image | drive |
//! |---|---|
//! | `cdrom=` ISO | E0h, 2048-byte blocks |
//! | its boot image, with `boot=cdrom` in floppy / hard-disk emulation | 00h / 80h (the part of the ISO it occupies) |
//! | `floppy=`, `floppy_b=` | 00h and 01h (01h and 02h after an emulated floppy), B: even without A: |
//! | `harddisk=` | 80h, or 81h after an emulated hard disk |

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::bios::{self, Regs, DAP_ADDR};
use crate::disk::BiosDisk;
use crate::images::volume_file;
use crate::lowmem;
use crate::println;
use crate::guest::start_guest;
use crate::host::{DriveRole, EntryFile, GrubDisk};
use crate::resident::{go_resident, load_engine, plan_hard_disk, stub_guest_start_offsets, HardDiskWrites};
use crate::screen::pause_if_asked;
use vboot::config::{BootDevice, VbootOptions};
use vboot::eltorito::{self, BootImage, Emulation, CD_BLOCK_BYTES};
use vboot::image::ImageFile;
use vboot::int13::FloppyFormat;
use vboot::resident::{PlannedDrive, PlannedKind, PlannedLayer};

/// The number the emulated CD gets (docs/int13.md, "El Torito").
pub const CD_DRIVE: u8 = 0xE0;

/// The hand-off table record of a CD, floppy or emulated boot image (one raw file, or a slice of
/// the ISO for an emulated boot image).
fn raw_file_record(disk: &GrubDisk, part: &vboot::part::Partition, drive: &PlannedDrive) -> vboot::handoff::Drive {
    use vboot::handoff::{Drive, DriveKind, WriteMode};
    let (host, partition, filesystem) = crate::handoff::describe_host(&disk.bios, &disk.table, part);
    let kind = match drive.kind {
        PlannedKind::Cdrom => DriveKind::Cdrom,
        PlannedKind::Floppy => DriveKind::Floppy,
        PlannedKind::HardDisk => DriveKind::HardDisk,
    };
    Drive {
        bios_number: drive.number,
        kind,
        write_mode: if drive.ram_overlay && !drive.read_only { WriteMode::Immutable } else { WriteMode::Normal },
        virtual_sectors: drive.layers.first().map(|l| l.size_bytes / 512).unwrap_or(0),
        host,
        partition,
        filesystem,
        overlay: None,
        parent_dir: None,
        layers: crate::handoff::layers(&drive.layers, &[]),
    }
}

fn raw_layer(size_bytes: u64, extents: vboot::fs::ExtentList, path: String) -> Vec<PlannedLayer> {
    alloc::vec![PlannedLayer { format: vboot::resident::PlannedFormat::Raw, size_bytes, extents, path }]
}

/// Boot an entry's images; `boot_disk` is the disk vboot started from (the engine is read from
/// it), each file names its own disk.
pub fn boot(boot_disk: &mut BiosDisk, opts: &VbootOptions, hard_disk_writes: HardDiskWrites, files: Vec<EntryFile>) -> Result<(), String> {
    let boot_device = opts.boot.unwrap_or(BootDevice::Harddisk);
    let mut drives: Vec<PlannedDrive> = Vec::new();
    let mut cd_boot: Option<BootImage> = None;
    // A: is 00h, or 01h when the CD's boot image is an emulated floppy; B: the one after A:.
    let mut floppy_a = 0u8;
    // The file of each drive, in the order of `drives` (for the hand-off table).
    let mut drive_files: Vec<&EntryFile> = Vec::new();

    // The CD first: booted in an emulation mode, its image takes 00h or 80h.
    for entry_file in files.iter().filter(|f| f.role == DriveRole::Cdrom) {
        let EntryFile { disk, partition: part_number, file, .. } = entry_file;
        let part = disk.partition(*part_number)?;
        let mut iso = volume_file(&disk.bios, part, file);
        let mut reader = |lba: u64, buf: &mut [u8; CD_BLOCK_BYTES]| {
            iso.read_at(lba * CD_BLOCK_BYTES as u64, buf).map_err(|e| format!("{}", e))
        };
        let size = file.size_bytes;
        eltorito::check_iso(&mut reader, size).map_err(|e| format!("cdrom={}: {}", file.path, e))?;
        let extents = file.extents.to_host(part.start_lba);
        let mut eltorito_facts = None;
        if boot_device == BootDevice::Cdrom {
            let image = eltorito::boot_image(&mut reader, size).map_err(|e| format!("cdrom={}: {}", file.path, e))?;
            let first = image.first_file_sector();
            let mode = match image.emulation {
                Emulation::NoEmulation => String::from("no emulation"),
                Emulation::Floppy { bytes } => format!("{} KiB floppy emulation (drive 00h)", bytes / 1024),
                Emulation::HardDisk => String::from("hard-disk emulation (drive 80h)"),
            };
            println!(
                "  El Torito boot image: {}, CD block {}, {} sectors, load segment {:04x}",
                mode,
                image.load_rba,
                image.sector_count,
                image.load_segment()
            );
            let emulated = |number: u8, kind: PlannedKind, sectors: u64, what: &str| PlannedDrive {
                number,
                kind,
                read_only: true,
                host_drive: disk.bios.drive,
                layers: raw_layer(sectors * 512, extents.slice(first, sectors), format!("{} ({})", file.path, what)),
                eltorito: Some(image.eltorito_boot()),
                ram_overlay: false,
            };
            match image.emulation {
                Emulation::NoEmulation => {}
                Emulation::Floppy { bytes } => {
                    drives.push(emulated(0x00, PlannedKind::Floppy, bytes / 512, "floppy emulation"));
                    drive_files.push(entry_file);
                    floppy_a = 1;
                }
                Emulation::HardDisk => {
                    let mut mbr = [0u8; 512];
                    iso.read_at(first * 512, &mut mbr).map_err(|e| format!("cdrom={}: {}", file.path, e))?;
                    let sectors = eltorito::hard_disk_image_sectors(&mbr, size / 512 - first)
                        .map_err(|e| format!("cdrom={}: {}", file.path, e))?;
                    drives.push(emulated(0x80, PlannedKind::HardDisk, sectors, "hard-disk emulation"));
                    drive_files.push(entry_file);
                }
            }
            cd_boot = Some(image);
            eltorito_facts = Some(image.eltorito_boot());
        }
        drives.push(PlannedDrive {
            number: CD_DRIVE,
            kind: PlannedKind::Cdrom,
            read_only: true,
            host_drive: disk.bios.drive,
            layers: raw_layer(size, extents, file.path.clone()),
            eltorito: eltorito_facts,
            ram_overlay: false,
        });
        drive_files.push(entry_file);
    }

    for entry_file in files.iter().filter(|f| matches!(f.role, DriveRole::FloppyA | DriveRole::FloppyB)) {
        let EntryFile { role, disk, partition: part_number, file } = entry_file;
        let part = disk.partition(*part_number)?;
        let option = if *role == DriveRole::FloppyA { "floppy=" } else { "floppy_b=" };
        let number = if *role == DriveRole::FloppyA { floppy_a } else { floppy_a + 1 };
        let format = FloppyFormat::for_image(&file.path, file.size_bytes).map_err(|e| format!("{}{}", option, e))?;
        let g = format.geometry;
        println!(
            "  {} {}: drive {:02x}h, {} cylinders, {} heads, {} sectors per track",
            option, file.path, number, g.cylinders, g.heads, g.sectors_per_track
        );
        drives.push(PlannedDrive {
            number,
            kind: PlannedKind::Floppy,
            read_only: false,
            host_drive: disk.bios.drive,
            layers: raw_layer(file.size_bytes, file.extents.to_host(part.start_lba), file.path.clone()),
            eltorito: None,
            // A floppy is a raw file, which has no differencing child: `immutable` keeps its
            // writes in RAM.
            ram_overlay: opts.immutable,
        });
        if boot_device == BootDevice::Floppy && number == 0x00 {
            // The sector the guest will start from, checked while the menu is still safe to
            // return to (after the hook a refusal needs a restart).
            let mut sector = [0u8; 512];
            volume_file(&disk.bios, part, file).read_at(0, &mut sector).map_err(|e| format!("{}{}: {}", option, file.path, e))?;
            unbootable(&sector, 0x00, &format!("{}{}", option, file.path))?;
        }
        drive_files.push(entry_file);
    }

    let mut parent_dir = None;
    let mut chain_bytes = 0u64;
    // The hand-off table describes every emulated drive.
    let mut records = Vec::new();
    for (drive, f) in drives.iter().zip(drive_files.iter()) {
        records.push(raw_file_record(&f.disk, f.disk.partition(f.partition)?, drive));
    }
    if let Some(EntryFile { disk, partition: part_number, file, .. }) = files.iter().find(|f| f.role == DriveRole::HardDisk) {
        let (mut drive, dir, mut record, bytes, first_sector) = plan_hard_disk(disk, opts, hard_disk_writes, *part_number, file)?;
        chain_bytes = bytes;
        if boot_device == BootDevice::Harddisk && !drives.iter().any(|d| d.number == 0x80) && !opts.restore {
            unbootable(&first_sector?, 0x80, &format!("harddisk={}", file.path))?;
        }
        if drives.iter().any(|d| d.number == 0x80) {
            if opts.restore {
                return Err(String::from(
                    "restore cannot be combined with a CD booted in hard-disk emulation (the hard-disk image is not drive 80h then)",
                ));
            }
            drive.number = 0x81;
            println!("  harddisk={} is drive 81h (the CD's boot image is 80h)", file.path);
        }
        record.bios_number = drive.number;
        records.push(record);
        parent_dir = dir;
        drives.push(drive);
    }

    let engine = load_engine(boot_disk)?;
    if drives.iter().any(|d| d.ram_overlay && !d.read_only) {
        println!(
            "  immutable: writes to {} go to a RAM overlay of up to {} MiB and are gone at the next boot",
            drives.iter().filter(|d| d.ram_overlay && !d.read_only).map(|d| format!("drive {:02x}h", d.number)).collect::<Vec<_>>().join(", "),
            vboot::resident::IMMUTABLE_OVERLAY_BYTES >> 20
        );
    }
    if let (HardDiskWrites::Throwaway, Some(hd)) = (hard_disk_writes, drives.iter().find(|d| d.kind == PlannedKind::HardDisk && d.eltorito.is_none())) {
        println!("  immutable: writes to drive {:02x}h go into {} and are gone at the next boot", hd.number, hd.layers.first().map(|l| l.path.as_str()).unwrap_or("?"));
    }
    let stub_linear = go_resident(&engine, drives, parent_dir, opts.restore, chain_bytes, crate::resident::handoff_table(records))?;

    // Through the hook from here on.
    match (boot_device, cd_boot) {
        (BootDevice::Cdrom, Some(image)) => match image.emulation {
            Emulation::NoEmulation => start_no_emulation(stub_linear, &image, opts.pause),
            Emulation::Floppy { .. } => start_from_drive(0x00, "the CD's floppy-emulation image", opts.pause),
            Emulation::HardDisk => start_from_drive(0x80, "the CD's hard-disk-emulation image", opts.pause),
        },
        (BootDevice::Cdrom, None) => Err(String::from("boot=cdrom needs cdrom=")),
        (BootDevice::Floppy, _) => start_from_drive(0x00, "the floppy image", opts.pause),
        (BootDevice::Harddisk, _) => start_from_drive(0x80, "the hard-disk image", opts.pause),
    }
}

/// Whether drive `drive` can start from `sector`: a hard disk needs 55AA, as a BIOS checks it;
/// old floppies may lack it, but an empty sector boots nothing.
fn unbootable(sector: &[u8; 512], drive: u8, what: &str) -> Result<(), String> {
    let signed = vboot::part::has_boot_signature(sector);
    if (drive >= 0x80 && !signed) || sector.iter().all(|&b| b == 0) {
        return Err(format!(
            "{} has no boot code in its first sector ({}): it is not bootable",
            what,
            if signed { "it is empty" } else { "no 55AA signature" }
        ));
    }
    Ok(())
}

/// Read sector 0 of an emulated drive through the hook and start it at 0000:7C00.
fn start_from_drive(drive: u8, what: &str, pause: bool) -> Result<(), String> {
    use vboot::block::BlockDevice;
    let mut guest = BiosDisk::probe(drive).ok_or_else(|| format!("the emulated drive {:02x}h does not answer", drive))?;
    let mut sector = [0u8; 512];
    guest.read_sectors(0, &mut sector).map_err(|e| format!("reading the boot sector of {}: {}", what, e))?;
    unbootable(&sector, drive, what)?;
    println!("Guest boot sector loaded from drive {:02x}h", drive);
    pause_if_asked(pause);
    start_guest(&sector, drive)
}

extern "C" {
    /// The end of stage2's low part, the only part below 1 MiB (linker.ld).
    static _stage2_low_end: u8;
}

/// CD blocks per AH=42h call (32 KiB: well inside a segment).
const BLOCKS_PER_READ: u32 = 16;

/// A no-emulation boot image: read through the hook from the CD into free conventional memory
/// (above stage2's low part, or at its load address when that is above it already), then the stub
/// copies it to its load segment and jumps there: the image may cover stage2 itself.
fn start_no_emulation(stub_linear: u32, image: &BootImage, pause: bool) -> Result<(), String> {
    let bytes = image.sector_count as u32 * 512;
    let dest = image.load_segment() as u32 * 16;
    let free_start = ((&raw const _stage2_low_end as u32) + 0xF) & !0xF;
    // The image is read in whole CD blocks, so up to 1536 bytes more than it asks land after it.
    let read_bytes = bytes.div_ceil(CD_BLOCK_BYTES as u32) * CD_BLOCK_BYTES as u32;
    let source = free_start.max(dest);
    if dest < 0x500 || dest + bytes > stub_linear || source + read_bytes > stub_linear {
        return Err(format!(
            "the CD's boot image wants {} sectors at load segment {:04x}, which does not fit the \
             conventional memory vboot can hand over ({:04x}:0000 to {:04x}:0000 for the image, \
             {} KiB to stage it above vboot's own code)",
            image.sector_count,
            image.load_segment(),
            0x50,
            stub_linear >> 4,
            stub_linear.saturating_sub(free_start.max(dest)) / 1024
        ));
    }
    let blocks = read_bytes / CD_BLOCK_BYTES as u32;
    let mut done = 0u32;
    while done < blocks {
        let n = (blocks - done).min(BLOCKS_PER_READ);
        let buffer = source + done * CD_BLOCK_BYTES as u32;
        let dap = vboot::int13::edd::DiskAddressPacket::seg_off_request((image.load_rba + done) as u64, n as u16, buffer);
        lowmem::write(DAP_ADDR, &dap);
        let (dseg, doff) = bios::seg_off(DAP_ADDR);
        let mut r = Regs { eax: 0x4200, edx: CD_DRIVE as u32, esi: doff as u32, ds: dseg, ..Default::default() };
        bios::call(0x13, &mut r);
        if r.cf() {
            return Err(format!(
                "reading the CD's boot image (block {}): INT 13h status {:02X}h",
                image.load_rba + done,
                r.ah()
            ));
        }
        done += n;
    }
    println!("Boot image read from the CD (drive {:02x}h)", CD_DRIVE);
    pause_if_asked(pause);
    let (code_off, params_off) = stub_guest_start_offsets();
    // SeaBIOS's form of the entry point: 0000:7C00 when the load address fits a segment.
    let (cs, ip) = if dest <= 0xFFFF { (0u16, dest as u16) } else { (image.load_segment(), 0u16) };
    let params = stub_linear + params_off;
    lowmem::write(params, &((source >> 4) as u16).to_le_bytes());
    lowmem::write(params + 2, &image.load_segment().to_le_bytes());
    lowmem::write(params + 4, &(bytes.div_ceil(16) as u16).to_le_bytes());
    lowmem::write(params + 6, &ip.to_le_bytes());
    lowmem::write(params + 8, &cs.to_le_bytes());
    println!("Starting the guest.");
    let mut r = Regs { eax: 0x0200, ebx: 0, edx: 24 << 8, ..Default::default() };
    bios::call(0x10, &mut r);
    bios::jump_real_mode((stub_linear >> 4) as u16, code_off as u16, CD_DRIVE)
}
