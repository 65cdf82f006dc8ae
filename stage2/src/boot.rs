//! After the hardware is up: find the partitions, read grub.cfg, run the menu, boot.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::console::{self, COLUMNS, ROWS};
use crate::disk::BiosDisk;
use crate::host::{empty_table, find_config, list_partitions, Loaded};
use crate::{bios, println};
use vboot::config::{Config, Entry};
use vboot::install::InstallRecord;
use vboot::menu::{self, Event, KeyDecoder, MenuState, Outcome};
use vboot::part::PartitionTable;

/// `resume`: the menu was restarted after a panic abandoned the entry at this path (recovery.rs).
pub fn run(disk: &mut BiosDisk, record: Option<InstallRecord>, mut resume: Option<&[usize]>) -> ! {
    let table = list_partitions(disk);
    loop {
        let loaded = match table.as_ref().map_err(|e| e.clone()).and_then(|t| load_config(disk, t, record.as_ref())) {
            Ok(l) => l,
            Err(e) => {
                crate::screen::show_error(&e);
                println!("Press any key to try again.");
                crate::wait_key();
                continue;
            }
        };
        let t = table.as_ref().ok().cloned().unwrap_or_else(empty_table);
        menu_loop(disk, &t, &loaded, resume.take());
    }
}

/// grub.cfg: where vboot.lkrn's `config=` says, else in its usual places (host.rs); with
/// vboot.lkrn's `entry=` applied.
fn load_config(disk: &mut BiosDisk, table: &PartitionTable, record: Option<&InstallRecord>) -> Result<Loaded, String> {
    match crate::lkrn::config_path() {
        Some(path) => crate::lkrn::load_named_config(disk, table, &path),
        None => find_config(disk, table, record).map(|l| Loaded { config: crate::lkrn::with_entry(l.config), ..l }),
    }
}

fn draw(config: &Config, state: &MenuState) {
    let frame = menu::render(config, state, COLUMNS, ROWS);
    console::with(|c| {
        c.draw_screen(&frame.lines, frame.highlight_row);
        if let Some((row, column)) = frame.cursor {
            c.place_cursor(row, column);
        }
    });
}

/// A second of the countdown went by: only its line is rewritten (in place on a terminal).
fn draw_countdown(config: &Config, state: &MenuState) {
    if let Some((row, text)) = menu::countdown_update(config, state, COLUMNS, ROWS) {
        console::with(|c| c.redraw_row(row, &text));
    }
}

/// Boot `entry` (at `path` in the menu; from grub.cfg or edited at the menu).
fn boot_entry(disk: &mut BiosDisk, table: &PartitionTable, loaded: &Loaded, path: &[usize], entry: &Entry, edited: bool) -> Result<(), String> {
    crate::recovery::booting(path);
    // A terminal is cleared with the screen: the editor left its cursor inside the menu's rows.
    console::with(|c| {
        c.clear();
        c.serial_write("\x1b[2J\x1b[H");
    });
    println!("Booting '{}'{}", entry.title, if edited { " (edited at the menu)" } else { "" });
    let source = if edited { "edited line" } else { "grub.cfg line" };
    for n in &entry.skipped {
        println!("  {} {}: {}", source, n.line, n.message);
    }
    crate::fault::at_entry(entry);
    entry.boot_command().map_err(|e| format!("{}", e)).and_then(|command| crate::entry::boot(disk, table, loaded, path, command))
}

/// Gather the keys typed since the last call, from the keyboard and from COM1.
fn poll_events(decoder: &mut KeyDecoder, events: &mut Vec<Event>) {
    while let Some((scan, ascii)) = console::keyboard_key() {
        events.push(menu::event_from_bios_key(scan, ascii));
    }
    let mut got_serial = false;
    while let Some(b) = console::with(|c| c.serial_read()) {
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
        let boot_result = match core::mem::replace(&mut outcome, Outcome::None) {
            Outcome::None => None,
            Outcome::Redraw => {
                if state.is_drawn() {
                    draw(config, &state);
                }
                None
            }
            Outcome::Countdown => {
                if state.is_drawn() {
                    draw_countdown(config, &state);
                }
                None
            }
            Outcome::Boot(path) => Some(match config.entry(&path) {
                None => Err(String::from("that menu item is a submenu, not an entry")),
                Some(entry) => boot_entry(disk, table, loaded, &path, entry, false),
            }),
            Outcome::BootEdited { path, entry } => Some(boot_entry(disk, table, loaded, &path, &entry, true)),
        };
        if let Some(result) = boot_result {
            if let Err(e) = result {
                crate::recovery::boot_failed();
                crate::screen::show_error(&e);
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
        events.clear();
        poll_events(&mut decoder, &mut events);
        for &ev in events.iter() {
            // Every key read is handled before drawing; a boot ends them.
            outcome = outcome.followed_by(state.handle(config, ev));
            if outcome.is_boot() {
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
            outcome = state.handle(config, Event::Tick(ms));
        }
    }
}

