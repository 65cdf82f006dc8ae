//! After the hardware is up: find the partitions, read grub.cfg, run the menu, boot.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::console::{self, COLUMNS, ROWS};
use crate::disk::BiosDisk;
use crate::host::{empty_table, list_partitions, load_config, Loaded};
use crate::{bios, println};
use vboot::config::Config;
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

fn draw(config: &Config, state: &MenuState) {
    let frame = menu::render(config, state, COLUMNS, ROWS);
    console::with(|c| c.draw_screen(&frame.lines, frame.highlight_row));
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
                        console::with(|c| c.clear());
                        println!("Booting '{}'", entry.title);
                        for n in &entry.skipped {
                            println!("  grub.cfg line {}: {}", n.line, n.message);
                        }
                        crate::fault::at_entry(entry);
                        entry
                            .boot_command()
                            .map_err(|e| format!("{}", e))
                            .and_then(|command| crate::entry::boot(disk, table, loaded, &path, command))
                    }
                };
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

