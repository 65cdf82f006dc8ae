//! Started as vboot.lkrn by another boot loader (docs/boot-layout.md, "vboot.lkrn"): the engine
//! is in memory rather than on disk, there is no install record, and the command line says where
//! grub.cfg is (`config=`) or every BIOS hard disk is searched for it (docs/usage.md).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::disk::BiosDisk;
use crate::host::{self, Loaded};
use crate::{bios, lowmem, println};
use vboot::config::{Config, GrubPath};
use vboot::fs::volume::Volume;
use vboot::lkrn::{CommandLine, COMMAND_LINE_ADDR, COMMAND_LINE_MAX};
use vboot::part::PartitionTable;

/// As for the grub.cfg stage2 finds itself (host.rs).
const CONFIG_MAX_BYTES: u64 = 1 << 20;

extern "C" {
    /// The end of stage2's high part, where entry.s put the engine (linker.ld).
    static _stage2_high_end: u8;
    /// The high part's bytes, which come before the engine at 0x100000 (linker.ld).
    static __stage2_high_bytes: u8;
}

/// The command line, copied out of low memory once: the buffer there is scratch space later.
/// (Atomics: a static that outlives every menu session, with no heap memory in it.)
static COMMAND_LINE: [AtomicU8; COMMAND_LINE_MAX + 1] = [const { AtomicU8::new(0) }; COMMAND_LINE_MAX + 1];

/// Whether a Linux boot loader started vboot.lkrn (rather than stage1 starting stage2).
pub fn started() -> bool {
    bios::preloaded_bytes() != 0
}

/// The engine blob's bytes and where they are, once entry.s moved them (started as vboot.lkrn).
pub fn engine_place() -> Option<(u32, u32)> {
    if !started() {
        return None;
    }
    let high = &raw const __stage2_high_bytes as u32;
    Some((&raw const _stage2_high_end as u32, bios::preloaded_bytes().saturating_sub(high)))
}

/// engine.bin as the boot loader loaded it (its blob header first), when started as vboot.lkrn.
pub fn engine_blob() -> Option<&'static [u8]> {
    let (at, bytes) = engine_place()?;
    Some(crate::heap::below_heap(at, bytes))
}

/// Keep the command line the setup code left at [`COMMAND_LINE_ADDR`]; before anything else
/// uses low memory.
pub fn save_command_line() {
    let mut buf = [0u8; COMMAND_LINE_MAX + 1];
    lowmem::read(COMMAND_LINE_ADDR, &mut buf);
    for (cell, b) in COMMAND_LINE.iter().zip(buf) {
        cell.store(b, Ordering::SeqCst);
    }
}

pub fn command_line_text() -> String {
    let bytes: Vec<u8> = COMMAND_LINE.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    vboot::lkrn::command_line_text(&bytes)
}

pub fn command_line() -> CommandLine {
    CommandLine::parse(&command_line_text())
}

/// Say what the command line asks for, what it cannot take and what it ignores.
pub fn describe() {
    let cl = command_line();
    println!("Started as vboot.lkrn by a boot loader; command line: {}", command_line_text());
    if let Some(p) = &cl.config {
        println!("  config={}: grub.cfg from there", p);
    }
    if let Some(e) = &cl.entry {
        println!("  entry={}: booted without waiting", e);
    }
    for e in &cl.errors {
        println!("  {} (ignored)", e);
    }
    if !cl.ignored.is_empty() {
        println!("  not vboot's, ignored: {}", cl.ignored.join(" "));
    }
}

/// The disk to take as vboot's boot disk, the one grub.cfg is on: the one `config=` names, else
/// the first BIOS hard disk with a grub.cfg in one of the usual places.
pub fn boot_disk() -> Result<BiosDisk, String> {
    let cl = command_line();
    if let Some(p) = &cl.config {
        if let Some(drive) = cl.config_drive() {
            return BiosDisk::probe(drive).ok_or_else(|| format!("config={}: BIOS disk {:#04x} does not answer", p, drive));
        }
    }
    let count = crate::disk::hard_disk_count().min(16);
    let mut tried: Vec<String> = Vec::new();
    for drive in 0x80..0x80 + count {
        let Some(mut disk) = BiosDisk::probe(drive) else {
            tried.push(format!("{:#04x}: does not answer", drive));
            continue;
        };
        let found = host::list_partitions(&mut disk).and_then(|t| match &cl.config {
            Some(path) => load_named_config(&mut disk, &t, path).map(|_| ()),
            None => host::find_config(&mut disk, &t, None).map(|_| ()),
        });
        match found {
            Ok(()) => return Ok(disk),
            Err(e) => tried.push(format!("{:#04x}: {}", drive, e.replace('\n', "\n    "))),
        }
    }
    Err(format!(
        "no grub.cfg on any BIOS hard disk; give its place on vboot.lkrn's command line, as in \
         config=(hd0,1)/boot/grub/grub.cfg. Looked at:\n  {}",
        if tried.is_empty() { String::from("(no hard disks)") } else { tried.join("\n  ") }
    ))
}

/// The grub.cfg `config=` names, when started as vboot.lkrn with one.
pub fn config_path() -> Option<GrubPath> {
    if !started() {
        return None;
    }
    command_line().config
}

/// `entry=`, when started as vboot.lkrn with one: that entry boots without the menu's wait.
pub fn with_entry(mut config: Config) -> Config {
    if started() {
        command_line().apply(&mut config);
    }
    config
}

/// The grub.cfg `config=` names, on the boot disk ([`boot_disk`]): on its partition, or without
/// one on the first partition that has the file.
pub fn load_named_config(disk: &mut BiosDisk, table: &PartitionTable, path: &GrubPath) -> Result<Loaded, String> {
    let numbers: Vec<u32> = match path.partition {
        Some(p) => alloc::vec![p.number],
        None => table.partitions.iter().filter(|p| !p.is_extended()).map(|p| p.number).collect(),
    };
    let disk_number = host::grub_disk_number(disk.drive);
    let mut tried: Vec<String> = Vec::new();
    for number in numbers {
        let win = host::partition_window(disk, table, number).map_err(|e| format!("config={}: {}", path, e))?;
        let mut vol = match Volume::open(win) {
            Ok(v) => v,
            Err(e) => {
                tried.push(format!("(hd{},{}): {}", disk_number, number, e));
                continue;
            }
        };
        match vol.read_replaced(&path.path, CONFIG_MAX_BYTES) {
            Ok((bytes, from_new)) => {
                println!("Reading (hd{},{}){}{} ({} bytes, {}), as config= says", disk_number, number, path.path, if from_new { ".new" } else { "" }, bytes.len(), vol.kind().name());
                let config = Config::parse_bytes(&bytes).map_err(|e| format!("(hd{},{}){}: {}", disk_number, number, path.path, e))?;
                return Ok(Loaded { partition: number, path: path.path.clone(), config: with_entry(config) });
            }
            Err(vboot::fs::FsError::NotFound { .. }) => tried.push(format!("(hd{},{}){}: not found", disk_number, number, path.path)),
            Err(e) => tried.push(format!("(hd{},{}){}: {}", disk_number, number, path.path, e)),
        }
    }
    Err(format!(
        "config={}: no such grub.cfg ({}). Correct the command line in the boot loader that started vboot.lkrn.",
        path,
        if tried.is_empty() { String::from("the disk has no partitions") } else { tried.join("; ") }
    ))
}
