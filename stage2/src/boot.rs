//! After the hardware is up: find the partitions, read grub.cfg, run the menu, boot.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::console::{self, COLUMNS, ROWS};
use crate::disk::BiosDisk;
use crate::{bios, prepare, println};
use vboot::block::Window;
use vboot::config::{Config, GrubPath, VbootOptions};
use vboot::fs::volume::Volume;
use vboot::fs::File;
use vboot::install::InstallRecord;
use vboot::menu::{self, Event, KeyDecoder, MenuState, Outcome};
use vboot::part::{self, PartitionKind, PartitionTable, Scheme};

/// Where grub.cfg is looked for, in order.
pub const CONFIG_PATHS: [&str; 3] = ["/boot/grub/grub.cfg", "/grub/grub.cfg", "/grub.cfg"];
const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// The partition grub.cfg came from, and the config itself.
pub struct Loaded {
    pub partition: u32,
    pub path: &'static str,
    pub config: Config,
}

/// `resume`: the menu was restarted after a panic abandoned the entry at this path (recovery.rs).
pub fn run(disk: &mut BiosDisk, record: Option<InstallRecord>, mut resume: Option<&[usize]>) -> ! {
    let table = list_partitions(disk);
    loop {
        let loaded = match table.as_ref().map_err(|e| e.clone()).and_then(|t| load_config(disk, t, record.as_ref())) {
            Ok(l) => l,
            Err(e) => {
                show_error(&e);
                println!("Press any key to try again.");
                crate::wait_key();
                continue;
            }
        };
        let t = table.as_ref().ok().cloned().unwrap_or_else(empty_table);
        menu_loop(disk, &t, &loaded, resume.take());
    }
}

fn empty_table() -> PartitionTable {
    PartitionTable { scheme: Scheme::Mbr, mbr_signature: 0, disk_guid: None, partitions: Vec::new(), gpt_header: None, warnings: Vec::new() }
}

fn list_partitions(disk: &mut BiosDisk) -> Result<PartitionTable, String> {
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

fn load_config(disk: &mut BiosDisk, table: &PartitionTable, record: Option<&InstallRecord>) -> Result<Loaded, String> {
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
                    return Ok(Loaded { partition: number, path, config });
                }
                Err(vboot::fs::FsError::NotFound { .. }) => {}
                Err(e) => tried.push(format!("(hd0,{}){}: {}", number, path, e)),
            }
        }
        tried.push(format!("(hd0,{}): none of {}", number, CONFIG_PATHS.join(", ")));
    }
    Err(format!("no grub.cfg found. Looked in:\n  {}", tried.join("\n  ")))
}

pub fn show_error(message: &str) {
    console::console().attr = console::ATTR_ERROR;
    println!("\nvboot: {}", message);
    console::console().attr = console::ATTR_NORMAL;
}

fn draw(config: &Config, state: &MenuState) {
    let frame = menu::render(config, state, COLUMNS, ROWS);
    console::console().draw_screen(&frame.lines, frame.highlight_row);
}

/// Gather the keys typed since the last call, from the keyboard and from COM1.
fn poll_events(decoder: &mut KeyDecoder, events: &mut Vec<Event>) {
    while let Some((scan, ascii)) = console::keyboard_key() {
        events.push(menu::event_from_bios_key(scan, ascii));
    }
    let mut got_serial = false;
    while let Some(b) = console::console().serial_read() {
        decoder.feed(b, events);
        got_serial = true;
    }
    if !got_serial && decoder.pending() {
        decoder.flush(events);
    }
}

fn menu_loop(disk: &mut BiosDisk, table: &PartitionTable, loaded: &Loaded, resume: Option<&[usize]>) {
    let config = &loaded.config;
    for n in &config.notices {
        println!("grub.cfg line {}: {}", n.line, n.message);
    }
    let mut state = MenuState::new(config);
    state.set_screen_height(ROWS);
    let mut decoder = KeyDecoder::new();
    let mut outcome = match resume {
        Some(path) => state.resume_at(config, path),
        None => state.start(config),
    };
    let mut last_ticks = bios::ticks();
    let mut events: Vec<Event> = Vec::new();
    loop {
        match core::mem::replace(&mut outcome, Outcome::None) {
            Outcome::None => {}
            Outcome::Redraw | Outcome::ShowEntry(_) => {
                if state.is_visible() {
                    draw(config, &state);
                }
            }
            Outcome::Boot(path) => {
                let result = match config.entry(&path) {
                    None => Err(String::from("that menu item is a submenu, not an entry")),
                    Some(entry) => {
                        crate::recovery::booting(&path);
                        console::console().clear();
                        println!("Booting '{}'", entry.title);
                        for n in &entry.skipped {
                            println!("  grub.cfg line {}: {}", n.line, n.message);
                        }
                        crate::fault::at_entry(entry);
                        entry
                            .boot_options()
                            .map_err(|e| format!("{}", e))
                            .and_then(|opts| boot_entry(disk, table, loaded, &path, opts))
                    }
                };
                if let Err(e) = result {
                    crate::recovery::boot_failed();
                    show_error(&e);
                    if crate::recovery::hooked() {
                        // The image already answers as drive 80h and the real disks moved up:
                        // a menu read now would read the image as the host disk. A restart
                        // brings the menu back from the real disk.
                        crate::fatal("the image was already attached as drive 80h when this happened; vboot restarts the machine to show the menu again");
                    }
                    println!("Press any key to return to the menu.");
                    crate::wait_key();
                    outcome = state.back_to_menu();
                    last_ticks = bios::ticks();
                }
                continue;
            }
        }
        events.clear();
        poll_events(&mut decoder, &mut events);
        for &ev in events.iter() {
            let o = state.handle(config, ev);
            if o != Outcome::None {
                outcome = o;
                break;
            }
        }
        if outcome != Outcome::None {
            continue;
        }
        bios::sleep_micros(20_000);
        let now = bios::ticks();
        let elapsed_ticks = now.wrapping_sub(last_ticks);
        if elapsed_ticks > 0 {
            last_ticks = now;
            // 18.2065 ticks per second: 54.9 ms each.
            let ms = elapsed_ticks.min(0x10000) * 10_000 / 182;
            let before = state.countdown_secs();
            let o = state.handle(config, Event::Tick(ms));
            if o != Outcome::None || state.countdown_secs() != before {
                outcome = if o == Outcome::None { Outcome::Redraw } else { o };
            }
        }
    }
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

fn boot_entry(disk: &mut BiosDisk, table: &PartitionTable, loaded: &Loaded, booted: &[usize], opts: &VbootOptions) -> Result<(), String> {
    for line in opts.describe() {
        println!("  {}", line);
    }
    let mut files = Vec::new();
    for (what, p) in [("hard disk", &opts.harddisk), ("CD-ROM", &opts.cdrom), ("floppy", &opts.floppy), ("floppy B:", &opts.floppy_b)] {
        if let Some(p) = p {
            let (number, f) = open_image_file(disk, table, loaded, what, p)?;
            println!("  {} image: (hd0,{}){}, {} bytes in {} extent(s)", what, number, f.path, f.size_bytes, f.extents.extents.len());
            // Before anything is written: a file the BIOS cannot reach would fail mid-boot.
            let start = table.find(number).ok_or("partition vanished")?.start_lba;
            crate::resident::check_reach(disk, &f.path, &f.extents.to_host(start))?;
            files.push((what, number, f));
        }
    }
    // Host filesystem changes for the hard-disk image happen here, before going resident.
    let mut opts = opts.clone();
    if let Some(i) = files.iter().position(|(what, _, _)| *what == "hard disk") {
        if !opts.recover_mbr {
            let (what, partition, file) = files.remove(i);
            let image = prepare::HostFile::new(partition, file);
            let image = if opts.take_snapshot.is_some() {
                // The new child was made with its write slack.
                prepare::take_snapshot(disk, table, loaded, booted, &opts, image)?
            } else {
                match prepare::ensure_slack(disk, table, &opts, image)? {
                    prepare::SlackOutcome::Ready(image) => image,
                    prepare::SlackOutcome::RamOverlay(image) => {
                        opts.immutable = true;
                        image
                    }
                }
            };
            files.insert(i, (what, image.partition, image.file));
        }
    }
    crate::resident::boot(disk, table, loaded, &opts, files)
}
