//! Going resident: put the engine at the top of RAM and the stub at the top of conventional
//! memory, hide both (E820 type 2, 0040:0013 lowered), hook INT 13h and INT 15h, and hand the
//! machine to the guest's boot sector.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::disk::BiosDisk;
use crate::host::GrubDisk;
use crate::{bios, highmem, lowmem, memmap, println};
use core::mem::offset_of;
use volatile::map_field;
use vboot::config::VbootOptions;
use vboot::fs::File;
use vboot::resident::{self as plan_mod, E820Entry, Plan, PlannedDrive, PlannedFormat, PlannedKind, PlannedLayer};

/// Where the engine blob is on the boot disk: right after stage2 (set by stage2_main).
pub static ENGINE_LBA: AtomicU64 = AtomicU64::new(0);

/// Read the engine blob that vboot-install wrote after stage2 (or, started as vboot.lkrn, take
/// the one the boot loader put in memory), and check it.
pub(crate) fn load_engine(disk: &mut BiosDisk) -> Result<Vec<u8>, String> {
    use vboot::block::BlockDevice;
    if let Some(blob) = crate::lkrn::engine_blob() {
        let head: &[u8; 512] = blob.get(..512).and_then(|h| h.try_into().ok()).ok_or("vboot.lkrn holds no resident engine")?;
        let (len, crc) = vboot::install::engine_blob_header(head).ok_or("vboot.lkrn's resident engine has no blob header")?;
        let elf = blob.get(512..512 + len as usize).ok_or("vboot.lkrn's resident engine is cut short")?;
        return check_engine(elf.to_vec(), crc, "in vboot.lkrn", "copy vboot.lkrn again");
    }
    let lba = ENGINE_LBA.load(Ordering::SeqCst);
    let mut head = [0u8; 512];
    disk.read_sectors(lba, &mut head).map_err(|e| format!("reading the resident engine at sector {}: {}", lba, e))?;
    let (len, crc) = vboot::install::engine_blob_header(&head).ok_or_else(|| {
        format!(
            "no resident engine after stage2 (sector {}): install vboot with vboot-install, or dd \
             target/vboot/engine.bin right after stage2.bin",
            lba
        )
    })?;
    let mut elf = alloc::vec![0u8; (len as usize).div_ceil(512) * 512];
    disk.read_sectors(lba + 1, &mut elf).map_err(|e| format!("reading the resident engine: {}", e))?;
    elf.truncate(len as usize);
    check_engine(elf, crc, "on disk", "reinstall vboot")
}

/// The engine's ELF against its blob header's CRC-32; `place` and `remedy` for the message.
fn check_engine(elf: Vec<u8>, crc: u32, place: &str, remedy: &str) -> Result<Vec<u8>, String> {
    let computed = vboot::crc32::crc32(&elf);
    if computed != crc {
        return Err(format!(
            "the resident engine {} is damaged (CRC-32 {:#010x}, expected {:#010x}); {}",
            place, computed, crc, remedy
        ));
    }
    Ok(elf)
}

extern "C" {
    static stub_start: u8;
    static stub_image_end: u8;
    static stub_end: u8;
    static stub_guest_start: u8;
    static stub_guest_params: u8;
}

/// Where the resident stub's copy-and-jump routine and its parameters are, for a stub at
/// `stub_linear` (stage2/src/stub.s `stub_guest_start`).
pub fn stub_guest_start_offsets() -> (u32, u32) {
    let s = &raw const stub_start as u32;
    (&raw const stub_guest_start as u32 - s, &raw const stub_guest_params as u32 - s)
}

/// The stub as stage2 carries it: its header template and code (stub.s, in stage2's read-only
/// data), and the size it takes in memory with its bounce buffer and stack.
fn stub_image() -> (&'static [u8], u32) {
    let start = &raw const stub_start as u32;
    let (image_end, end) = (&raw const stub_image_end as u32, &raw const stub_end as u32);
    // SAFETY: stub.s lays the stub's bytes out from `stub_start` to `stub_image_end`, in stage2's
    // read-only data (linker.ld `.stub`), which nothing writes.
    let image = unsafe { core::slice::from_raw_parts(start as usize as *const u8, (image_end - start) as usize) };
    (image, end - start)
}

// Field offsets of the stub's header, defined once in vboot::stub (src/stub.rs).
use vboot::stub::offset::GDT as S_GDT;
const SEL_CODE32: u16 = 0x08;

const ENGINE_STACK_BYTES: u32 = 64 << 10;

use vboot::stub::{EngineHeader, EngineInit};

/// A real-mode far pointer (offset low, segment high) with its segment set to `segment`.
fn with_segment(far: u32, segment: u16) -> u32 {
    (far & 0xFFFF) | (segment as u32) << 16
}

/// A GDT descriptor with its base set to `base` (bits 16-39 and 56-63).
fn with_base(descriptor: u64, base: u32) -> u64 {
    let base = base as u64;
    (descriptor & !0xFF00_00FF_FFFF_0000) | (base & 0xFF_FFFF) << 16 | (base >> 24) << 56
}

/// Where the guest's writes to the hard-disk image go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardDiskWrites {
    /// Into the leaf, the image as the line names it.
    Normal,
    /// Into the child `take_snapshot=` made.
    Snapshot,
    /// Into `immutable`'s throwaway child (the leaf now), emptied or made at this start.
    Throwaway,
    /// Into the engine's RAM overlay (`immutable` without a child, or no write slack).
    RamOverlay,
}

pub(crate) fn handoff_table(drives: Vec<vboot::handoff::Drive>) -> vboot::handoff::Table {
    let (boot_id, boot_time_unix) = crate::handoff::boot_stamp();
    vboot::handoff::Table { boot_id, boot_time_unix, drives, ..Default::default() }
}

/// The hard-disk image of an entry (and its differencing chain) as drive 0x80 of the plan, with
/// the `parent_dir=` the engine must use, its hand-off table record, and the heap the engine
/// needs for the chain's tables and caches (docs/memory.md).
pub(crate) fn plan_hard_disk(
    host: &GrubDisk,
    opts: &VbootOptions,
    writes: HardDiskWrites,
    part_number: u32,
    file: &File,
) -> Result<(PlannedDrive, Option<String>, vboot::handoff::Drive, u64, Result<[u8; 512], String>), String> {
    let (disk, part) = (&host.bios, host.partition(part_number)?);
    if file.size_bytes == 0 {
        return Err(format!("{} is empty", file.path));
    }
    // Walk the chain from the leaf up, on the image's partition, as the engine will again.
    let parent_dir = crate::images::parent_dir_on(opts, host.number, part_number)?;
    let mut locator = crate::images::FsLocator::new(disk, part, alloc::vec![(file.path.clone(), file.clone())]);
    let (layers, warnings) = locator.open_chain(&file.path, &parent_dir)?;
    for w in &warnings {
        println!("  warning: {}", w);
    }
    let raw = layers.len() == 1 && layers[0].format() == vboot::image::Format::Raw;
    for (i, l) in layers.iter().enumerate() {
        println!(
            "  {} {}: {} ({} sectors)",
            if i == 0 { "image" } else { "parent" },
            l.name(),
            if raw { String::from("raw") } else { format!("{} {}", l.format().as_str(), l.variant()) },
            l.virtual_sectors()
        );
    }
    if opts.restore && layers.len() < 2 {
        return Err(format!(
            "restore: {} is not a differencing image (it has no parent), so there is nothing to restore it to",
            file.path
        ));
    }
    if opts.restore {
        println!("  restore: {} will be emptied; the disk reads as its parent again", file.path);
    }
    let formats: Vec<(String, vboot::handoff::LayerFormat)> =
        layers.iter().map(|l| (String::from(l.name()), vboot::handoff::LayerFormat::from_image(l.format()))).collect();
    let virtual_sectors = layers[0].virtual_sectors();
    let chain_bytes = vboot::image::disk::chain_memory_bytes(&layers);
    println!("  tables and caches of the chain: {} KiB", chain_bytes.div_ceil(1024));
    let chain_files = locator.chain_files(&layers);
    // The guest's boot sector, read now through the chain: a disk that cannot start (blank,
    // not an image at all, unreadable first sector) is refused while the menu is still safe to
    // return to; after the hook it would take a restart.
    let first_sector = vboot::image::Disk::new(layers, Vec::new()).and_then(|mut d| {
        let mut sector = [0u8; 512];
        d.read(0, &mut sector).map(|_| sector)
    });
    let first_sector = first_sector.map_err(|e| format!("reading the first sector of {}: {}", file.path, e));
    if raw && file.size_bytes % 512 != 0 {
        return Err(format!(
            "{} is {} bytes, not a whole number of 512-byte sectors, so it cannot be a raw disk image",
            file.path, file.size_bytes
        ));
    }
    // Every file of the chain (parents, and the leaf as slack or a snapshot left it) within
    // what the BIOS can reach; the leaf was checked before anything was written.
    for (path, f) in &chain_files {
        check_reach(disk, path, &f.extents.to_host(part.start_lba))?;
    }
    // The leaf was checked when the menu entry opened it (a snapshot child or grown slack comes
    // from free clusters); its parents are checked here, together (one pass over a FAT).
    let parents: Vec<&File> = chain_files.iter().filter(|(path, _)| *path != file.path).map(|(_, f)| f).collect();
    locator.check_allocation(&parents)?;
    let files: Vec<PlannedLayer> = if raw {
        alloc::vec![PlannedLayer { format: PlannedFormat::Raw, size_bytes: file.size_bytes, extents: file.extents.to_host(part.start_lba), path: file.path.clone() }]
    } else {
        chain_files
            .iter()
            .map(|(path, f)| PlannedLayer { format: PlannedFormat::Image, size_bytes: f.size_bytes, extents: f.extents.to_host(part.start_lba), path: path.clone() })
            .collect()
    };
    // The engine reads the files through the original INT 13h, by the BIOS's own number of
    // the disk they are on.
    let drive = PlannedDrive {
        number: 0x80,
        kind: PlannedKind::HardDisk,
        read_only: false,
        host_drive: disk.drive,
        layers: files,
        eltorito: None,
        ram_overlay: writes == HardDiskWrites::RamOverlay,
    };
    let record = {
        use vboot::handoff::{Drive, DriveKind, WriteMode};
        let (host, partition, filesystem) = crate::handoff::describe_host(disk, &host.table, part);
        let write_mode = match writes {
            HardDiskWrites::Normal => WriteMode::Normal,
            HardDiskWrites::Snapshot => WriteMode::Snapshot,
            HardDiskWrites::Throwaway => WriteMode::Throwaway,
            HardDiskWrites::RamOverlay => WriteMode::Immutable,
        };
        Drive {
            bios_number: drive.number,
            kind: DriveKind::HardDisk,
            write_mode,
            virtual_sectors,
            host,
            partition,
            filesystem,
            overlay: None,
            parent_dir: parent_dir.clone(),
            layers: crate::handoff::layers(&drive.layers, &formats),
        }
    };
    Ok((drive, parent_dir, record, chain_bytes, first_sector))
}

/// `path` (its extents in disk LBAs) must lie within what the BIOS reaches on `disk`
/// (docs/bios-reach.md).
pub(crate) fn check_reach(disk: &BiosDisk, path: &str, extents_host: &vboot::fs::ExtentList) -> Result<(), String> {
    vboot::reach::check_file(path, extents_host, &disk.access())
}

/// Relocate the engine, install the stub, hook the vectors. After this, INT 13h for 0x80 is the
/// image.
/// Returns the stub's linear address.
pub(crate) fn go_resident(
    engine_elf: &[u8],
    drives: Vec<PlannedDrive>,
    parent_dir: Option<String>,
    restore: bool,
    chain_bytes: u64,
    mut handoff: vboot::handoff::Table,
) -> Result<u32, String> {
    let image_bytes = vboot::elf::image_bytes(engine_elf)?;
    let image_bytes = (image_bytes + 0xFFF) & !0xFFF;

    // The stub: top of conventional memory.
    let (stub, stub_total) = stub_image();
    let stub_kib = stub_total.div_ceil(1024);
    let base_kib = memmap::conventional_kib() as u32;
    if base_kib < 64 + stub_kib {
        return Err(format!("conventional memory is only {} KiB", base_kib));
    }
    let new_kib = base_kib - stub_kib;
    let stub_linear = new_kib * 1024;
    let stub_seg = (stub_linear >> 4) as u16;

    // The engine: top of the highest usable range below 4 GiB, clear of stage2's heap.
    let map = memmap::read();
    let mut e820: Vec<E820Entry> =
        map.regions.iter().map(|r| E820Entry { base: r.base, length: r.length, kind: r.kind }).collect();
    e820.sort_by_key(|e| e.base);
    let mut plan = Plan {
        memory_map: Vec::new(),
        drives,
        parent_dir,
        restore,
        // stage2's bounce buffer is idle while engine_init runs (stage2 makes no BIOS call then).
        init_bounce_linear: bios::BOUNCE_ADDR,
        init_bounce_bytes: bios::BOUNCE_BYTES as u32,
        vboot_ranges: Vec::new(),
    };
    // The plan's own size depends on the map it carries; size it with the final entry count.
    let plan_estimate = plan.to_bytes().len() as u32 + (e820.len() as u32 + 4) * 20 + 4096;
    // The hand-off table goes at the end of the engine's range, on a 4 KiB boundary.
    let handoff_room = (handoff.to_bytes().len() as u32 + 0xFFF) & !0xFFF;
    // The engine's heap is sized from what it will open (docs/memory.md), not fixed.
    // One overlay's worth however many drives have one: they share the engine's heap.
    let ram_overlay = plan.drives.iter().any(|d| d.ram_overlay && !d.read_only);
    let heap_wanted = vboot::resident::engine_heap_bytes(chain_bytes, plan_estimate as u64, ram_overlay);
    let fixed = handoff_room as u64 + image_bytes as u64 + ENGINE_STACK_BYTES as u64 + ((plan_estimate as u64 + 0xFFF) & !0xFFF);
    let total64 = (fixed + heap_wanted + 0xFFFF) & !0xFFFF;
    let heap_end = crate::heap::end();
    // The largest usable range above stage2's heap and below 4 GiB: what the engine could have.
    let room = |e: &E820Entry| -> u64 {
        let end = (e.base + e.length).min(0xFFFF_0000);
        let base = e.base.max(heap_end as u64);
        end.saturating_sub(base) & !0xFFFF
    };
    let largest = e820.iter().filter(|e| e.kind == plan_mod::E820_USABLE && e.base + e.length > 0x10_0000).map(room).max().unwrap_or(0);
    if total64 > largest || total64 > u32::MAX as u64 {
        return Err(format!(
            "not enough memory to boot this entry: the resident engine needs {} KiB ({} KiB of tables and caches for the image chain, {} KiB for its RAM overlay, {} KiB for its code, stack and buffers), but this machine has {} KiB free above vboot's own memory. Boot it on a machine with more RAM, or shorten the chain (vdisk merge).",
            total64.div_ceil(1024),
            chain_bytes.div_ceil(1024),
            if ram_overlay { vboot::resident::IMMUTABLE_OVERLAY_BYTES / 1024 } else { 0 },
            (total64 - chain_bytes.min(total64) - if ram_overlay { vboot::resident::IMMUTABLE_OVERLAY_BYTES } else { 0 }).div_ceil(1024),
            largest / 1024
        ));
    }
    let total = total64 as u32;
    let region = e820
        .iter()
        .filter(|e| e.kind == plan_mod::E820_USABLE && e.base >= 0x10_0000)
        .filter_map(|e| {
            let end = (e.base + e.length).min(0xFFFF_0000);
            let base = end.checked_sub(total as u64)? & !0xFFFF;
            (base >= e.base && base >= heap_end as u64).then_some(base)
        })
        .max()
        .ok_or_else(|| format!("not enough memory to boot this entry: no free range holds the resident engine ({} KiB)", total / 1024))?
        as u32;

    let mut guest_map = plan_mod::reserve(&e820, region as u64, total as u64);
    // From the 4 KiB page the stub starts in: an OS that maps memory by pages must see the stub's
    // page as not RAM (Linux's /dev/mem reads RAM pages of the first MiB as zeros, and
    // vboot-attach finds the hand-off table through the stub). The part of that page below the
    // stub stays conventional memory for real-mode code (0040:0013 says so).
    let stub_page = (stub_linear & !0xFFF) as u64;
    guest_map = plan_mod::reserve(&guest_map, stub_page, stub_linear as u64 + (stub_kib * 1024) as u64 - stub_page);
    plan.memory_map = guest_map;
    // The engine refuses guest buffers here (the estimate's 4 KiB margin holds these 36 bytes).
    plan.vboot_ranges = alloc::vec![(region as u64, total as u64), (stub_linear as u64, (stub_kib * 1024) as u64)];
    let plan_bytes = plan.to_bytes();
    if plan_bytes.len() as u32 > ((plan_estimate + 0xFFF) & !0xFFF) {
        return Err(String::from("internal: the plan outgrew its room"));
    }

    // Copy and relocate the engine; the plan goes after its stack.
    let mut memory = highmem::Region::claim(region, total);
    vboot::elf::load_relocated(engine_elf, &mut memory.bytes_mut()[..image_bytes as usize], region)?;
    let engine = memory.bytes_mut();
    let word = |at: usize| u32::from_le_bytes([engine[at], engine[at + 1], engine[at + 2], engine[at + 3]]);
    if engine[..8] != vboot::stub::ENGINE_MAGIC || word(offset_of!(EngineHeader, version)) != vboot::stub::ENGINE_HEADER_VERSION {
        return Err(String::from("internal: the embedded engine has no header"));
    }
    let (init, pm_entry, pm_resume) =
        (word(offset_of!(EngineHeader, init)), word(offset_of!(EngineHeader, pm_entry)), word(offset_of!(EngineHeader, pm_resume)));
    let stack_top = region + image_bytes + ENGINE_STACK_BYTES;
    let plan_at = stack_top;
    let heap_at = plan_at + ((plan_estimate + 0xFFF) & !0xFFF);
    memory.at_mut(plan_at, plan_bytes.len() as u32).copy_from_slice(&plan_bytes);

    // Copy the stub and fill in its addresses.
    lowmem::write(stub_linear, stub);
    lowmem::fill(stub_linear + stub.len() as u32, 0, (stub_total - stub.len() as u32) as usize);
    let h = lowmem::stub_header(stub_linear);
    map_field!(h.old_int13).write(lowmem::read_u32(0x13 * 4));
    map_field!(h.old_int15).write(lowmem::read_u32(0x15 * 4));
    map_field!(h.pm_entry.offset).write(pm_entry);
    map_field!(h.pm_entry.selector).write(SEL_CODE32);
    map_field!(h.pm_resume.offset).write(pm_resume);
    map_field!(h.pm_resume.selector).write(SEL_CODE32);
    map_field!(h.rm_back).update(|far| with_segment(far, stub_seg));
    map_field!(h.rm_bios).update(|far| with_segment(far, stub_seg));
    map_field!(h.gdt_descriptor).update(|mut d| {
        d[2..6].copy_from_slice(&(stub_linear + S_GDT).to_le_bytes());
        d
    });
    map_field!(h.engine_esp).write(stack_top);
    // engine_init may call the BIOS before any guest interrupt has set these: the stub's
    // own stack top and the real-mode IVT.
    map_field!(h.rm_sp).write((stub_total - 16) as u16);
    map_field!(h.saved_idt).update(|mut d| {
        d[..2].copy_from_slice(&0x3FFu16.to_le_bytes());
        d[2..6].copy_from_slice(&0u32.to_le_bytes());
        d
    });
    // The code16 and data16 descriptors are based at the stub.
    map_field!(h.gdt).update(|mut gdt| {
        gdt[3] = with_base(gdt[3], stub_linear);
        gdt[4] = with_base(gdt[4], stub_linear);
        gdt
    });

    let handoff_at = region + total - handoff_room;
    let heap_len = handoff_at - heap_at;
    // The RAM overlay lives somewhere in the engine's heap (its layout is the engine's own).
    for d in handoff.drives.iter_mut().filter(|d| d.write_mode == vboot::handoff::WriteMode::Immutable) {
        d.overlay = Some((heap_at as u64, heap_len as u64));
    }
    let int13_entry = stub_linear + map_field!(h.int13_entry).read() as u32;
    let reserved = (region as u64, total as u64);
    crate::handoff::place(&mut handoff, &mut memory, handoff_at, handoff_room, reserved, int13_entry, lowmem::read_u32(0x13 * 4))?;

    let mut msg = [0u8; 256];
    // SAFETY: `init` is the entry point the engine's header names, in the image just relocated in
    // place from the CRC-checked blob, whose magic and version were checked above; it has
    // EngineInit's signature (vboot::stub). It is handed the plan and the message buffer here,
    // valid for the call, its heap inside its own region (which stage2 does not touch while the
    // engine runs), and the stub just installed.
    let n = unsafe {
        let init = core::mem::transmute::<usize, EngineInit>(init as usize);
        init(plan_bytes.as_ptr(), plan_bytes.len() as u32, heap_at as *mut u8, heap_len, stub_linear, msg.as_mut_ptr(), msg.len() as u32)
    };
    if n != 0 {
        return Err(String::from_utf8_lossy(&msg[..n as usize]).into_owned());
    }

    // Hook. Interrupts are off in protected mode, so nothing sees a half-written vector.
    let int13_off = map_field!(h.int13_entry).read();
    let int15_off = map_field!(h.int15_entry).read();
    lowmem::write_u32(0x13 * 4, ((stub_seg as u32) << 16) | int13_off as u32);
    lowmem::write_u32(0x15 * 4, ((stub_seg as u32) << 16) | int15_off as u32);
    lowmem::write_u16(0x413, new_kib as u16);
    println!(
        "Resident: stub {} KiB at {:04x}:0000 (conventional memory {} -> {} KiB), engine {} KiB at {:#x}",
        stub_kib,
        stub_seg,
        base_kib,
        new_kib,
        total / 1024,
        region
    );
    Ok(stub_linear)
}
