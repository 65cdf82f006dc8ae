//! The boot menu as pure logic: a state machine fed with key and timer events, a decoder that
//! turns serial-console bytes (ANSI escape sequences) and BIOS keyboard codes into those events,
//! and a renderer that turns the state into lines of text. The firmware only reads keys, keeps
//! time, prints lines and acts on [`Outcome::Boot`].
//!
//! Firmware loop:
//! ```text
//! let mut menu = MenuState::new(&config);
//! menu.set_screen_height(25);
//! let mut outcome = menu.start(&config);          // timeout=0: Boot at once
//! loop {
//!     match outcome {
//!         Outcome::Redraw | Outcome::ShowEntry(_) => print(render(&config, &menu, 80, 25).lines),
//!         Outcome::Boot(path) => {
//!             show boot_summary(&config, &path) with render_message; on Err or a failed boot,
//!             show the message, wait for a key, then outcome = menu.back_to_menu()
//!         }
//!         Outcome::None => {}
//!     }
//!     outcome = menu.handle(&config, next_event());  // keys, or Tick(ms) every ~100 ms
//! }
//! ```
//!
//! Keys: Up/Down/Home/End/PgUp/PgDn move; Enter boots an entry or opens a submenu; Right opens
//! a submenu; Esc, Left or Backspace go back up; digit n boots (or opens) item n of the current
//! menu, 0 meaning 10; `e` shows the entry's lines and parsed options, where Enter boots and
//! any other key returns. The first key stops the countdown (and shows a hidden menu).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::config::{Config, MenuItem, TimeoutStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    PageUp,
    PageDown,
    Enter,
    /// A digit key, 0-9: `n` picks item n (1-based), `0` picks item 10.
    Digit(u8),
    /// The `e` key: show the highlighted entry's lines and options.
    Edit,
    /// Escape (or backspace): leave a submenu or the entry view.
    Back,
    /// Time passed since the last tick, in milliseconds.
    Tick(u32),
    /// Any other key: stops the countdown, nothing else.
    AnyKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    None,
    Redraw,
    /// Boot the entry at this path of indices (top level first).
    Boot(Vec<usize>),
    /// The entry view for this path is now on screen; draw it with [`render`].
    ShowEntry(Vec<usize>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    List,
    Entry(Vec<usize>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MenuState {
    /// Indices of the submenus opened, top level first; empty at the top.
    submenu_path: Vec<usize>,
    selected: usize,
    scroll_top: usize,
    page_rows: usize,
    /// Time left before the default boots; `None` when not counting.
    countdown_ms: Option<u32>,
    countdown_stopped: bool,
    /// False while `timeout_style=hidden|countdown` keeps the menu off screen.
    visible: bool,
    style: TimeoutStyle,
    screen: Screen,
    /// First line of the entry view shown.
    entry_scroll: usize,
    default_path: Option<Vec<usize>>,
}

/// Rows for menu items on a screen `height` lines tall (the rest is title and footer).
pub fn list_rows(height: usize) -> usize {
    height.saturating_sub(HEADER_ROWS + FOOTER_ROWS).max(1)
}

const HEADER_ROWS: usize = 2;
const FOOTER_ROWS: usize = 3;

impl MenuState {
    pub fn new(config: &Config) -> MenuState {
        let default_path = config.default_path();
        let countdown_ms = match (config.timeout_secs, &default_path) {
            (Some(s), Some(_)) if s >= 0 => Some((s as u32).saturating_mul(1000)),
            _ => None,
        };
        let style = config.timeout_style;
        let visible = countdown_ms.is_none() || style == TimeoutStyle::Menu;
        let mut state = MenuState {
            submenu_path: Vec::new(),
            // The top-level item on the way to the default: a default inside a submenu
            // highlights the submenu, as GRUB does.
            selected: default_path.as_ref().and_then(|p| p.first().copied()).unwrap_or(0),
            scroll_top: 0,
            page_rows: list_rows(25),
            countdown_ms,
            countdown_stopped: false,
            visible,
            style,
            screen: Screen::List,
            entry_scroll: 0,
            default_path,
        };
        state.keep_selection_visible();
        state
    }

    /// Adapt paging and scrolling to the screen height the menu is drawn on.
    pub fn set_screen_height(&mut self, height: usize) {
        self.page_rows = list_rows(height);
        self.keep_selection_visible();
    }

    /// The first outcome: `Boot` at once for `timeout=0`, else `Redraw`.
    pub fn start(&mut self, config: &Config) -> Outcome {
        match self.handle(config, Event::Tick(0)) {
            Outcome::None => Outcome::Redraw,
            other => other,
        }
    }

    /// After a boot attempt failed (and its error was shown): back to the list, no countdown.
    pub fn back_to_menu(&mut self) -> Outcome {
        self.screen = Screen::List;
        self.stop_countdown();
        self.visible = true;
        Outcome::Redraw
    }

    /// A fresh state for a menu shown again after a boot attempt was abandoned (the loader
    /// restarted its menu): like [`MenuState::back_to_menu`], with the entry at `path`
    /// highlighted (its submenus open) when `config` still has an entry there.
    pub fn resume_at(&mut self, config: &Config, path: &[usize]) -> Outcome {
        if let (Some(MenuItem::Entry(_)), Some((&last, submenus))) = (config.item(path), path.split_last()) {
            self.submenu_path = submenus.to_vec();
            self.selected = last;
            self.scroll_top = 0;
            self.keep_selection_visible();
        }
        self.back_to_menu()
    }

    pub fn screen(&self) -> &Screen {
        &self.screen
    }

    pub fn submenu_path(&self) -> &[usize] {
        &self.submenu_path
    }

    /// Index of the highlighted item in the current (sub)menu.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// Path of the highlighted item from the top.
    pub fn selected_path(&self) -> Vec<usize> {
        let mut p = self.submenu_path.clone();
        p.push(self.selected);
        p
    }

    /// Whole seconds left, rounded up (what the footer shows); `None` when not counting.
    pub fn countdown_secs(&self) -> Option<u32> {
        self.countdown_ms.map(|ms| ms.div_ceil(1000))
    }

    pub fn countdown_stopped(&self) -> bool {
        self.countdown_stopped
    }

    pub fn is_visible(&self) -> bool {
        self.visible
    }

    pub fn default_path(&self) -> Option<&[usize]> {
        self.default_path.as_deref()
    }

    fn stop_countdown(&mut self) {
        if self.countdown_ms.take().is_some() {
            self.countdown_stopped = true;
        }
    }

    fn keep_selection_visible(&mut self) {
        if self.selected < self.scroll_top {
            self.scroll_top = self.selected;
        } else if self.selected >= self.scroll_top + self.page_rows {
            self.scroll_top = self.selected + 1 - self.page_rows;
        }
    }

    fn current_len(&self, config: &Config) -> usize {
        config.items_at(&self.submenu_path).map_or(0, |items| items.len())
    }

    pub fn handle(&mut self, config: &Config, event: Event) -> Outcome {
        if let Event::Tick(ms) = event {
            return self.tick(config, ms);
        }
        let was_counting = self.countdown_ms.is_some();
        self.stop_countdown();
        if !self.visible {
            // The first key only brings the hidden menu up.
            self.visible = true;
            return Outcome::Redraw;
        }
        let outcome = match self.screen.clone() {
            Screen::List => self.list_key(config, event),
            Screen::Entry(path) => self.entry_key(event, path),
        };
        match outcome {
            Outcome::None if was_counting => Outcome::Redraw,
            other => other,
        }
    }

    fn tick(&mut self, config: &Config, ms: u32) -> Outcome {
        let before = match self.countdown_ms {
            Some(r) => r,
            None => return Outcome::None,
        };
        let after = before.saturating_sub(ms);
        if after > 0 {
            self.countdown_ms = Some(after);
            return if before.div_ceil(1000) != after.div_ceil(1000) {
                Outcome::Redraw
            } else {
                Outcome::None
            };
        }
        self.countdown_ms = None;
        let path = match self.default_path.clone() {
            Some(p) => p,
            None => return Outcome::Redraw,
        };
        match config.item(&path) {
            Some(MenuItem::Entry(_)) => Outcome::Boot(path),
            Some(MenuItem::Submenu(_)) => {
                // A submenu cannot boot; open it and wait for a choice.
                self.visible = true;
                self.open_submenu(path);
                Outcome::Redraw
            }
            None => {
                self.visible = true;
                Outcome::Redraw
            }
        }
    }

    /// Enter a submenu; on the way to the default, highlight the next step towards it.
    fn open_submenu(&mut self, path: Vec<usize>) {
        self.selected = match &self.default_path {
            Some(d) if d.len() > path.len() && d.starts_with(&path) => d[path.len()],
            _ => 0,
        };
        self.submenu_path = path;
        self.scroll_top = 0;
        self.keep_selection_visible();
    }

    fn select(&mut self, index: usize) -> Outcome {
        if index == self.selected {
            return Outcome::None;
        }
        self.selected = index;
        self.keep_selection_visible();
        Outcome::Redraw
    }

    fn activate(&mut self, config: &Config) -> Outcome {
        let path = self.selected_path();
        match config.item(&path) {
            Some(MenuItem::Entry(_)) => Outcome::Boot(path),
            Some(MenuItem::Submenu(_)) => {
                self.open_submenu(path);
                Outcome::Redraw
            }
            None => Outcome::None,
        }
    }

    fn list_key(&mut self, config: &Config, event: Event) -> Outcome {
        let len = self.current_len(config);
        let last = len.saturating_sub(1);
        match event {
            Event::Up => self.select(self.selected.saturating_sub(1)),
            Event::Down => self.select((self.selected + 1).min(last)),
            Event::Home => self.select(0),
            Event::End => self.select(last),
            Event::PageUp => self.select(self.selected.saturating_sub(self.page_rows)),
            Event::PageDown => self.select(self.selected.saturating_add(self.page_rows).min(last)),
            Event::Enter => self.activate(config),
            Event::Right => match config.item(&self.selected_path()) {
                Some(MenuItem::Submenu(_)) => self.activate(config),
                _ => Outcome::None,
            },
            Event::Digit(d) => {
                let index = if d == 0 { 9 } else { usize::from(d) - 1 };
                if index >= len {
                    return Outcome::None;
                }
                self.selected = index;
                self.keep_selection_visible();
                match self.activate(config) {
                    Outcome::None => Outcome::Redraw,
                    other => other,
                }
            }
            Event::Edit => {
                let path = self.selected_path();
                match config.item(&path) {
                    Some(MenuItem::Entry(_)) => {
                        self.screen = Screen::Entry(path.clone());
                        self.entry_scroll = 0;
                        Outcome::ShowEntry(path)
                    }
                    _ => Outcome::None,
                }
            }
            Event::Back | Event::Left => match self.submenu_path.pop() {
                Some(index) => {
                    self.selected = index;
                    self.scroll_top = 0;
                    self.keep_selection_visible();
                    Outcome::Redraw
                }
                None => Outcome::None,
            },
            Event::AnyKey | Event::Tick(_) => Outcome::None,
        }
    }

    fn entry_key(&mut self, event: Event, path: Vec<usize>) -> Outcome {
        match event {
            Event::Enter => {
                self.screen = Screen::List;
                Outcome::Boot(path)
            }
            Event::Up => {
                self.entry_scroll = self.entry_scroll.saturating_sub(1);
                Outcome::Redraw
            }
            Event::Down => {
                // The renderer clamps; the bound only keeps the number sane.
                self.entry_scroll = (self.entry_scroll + 1).min(10_000);
                Outcome::Redraw
            }
            Event::PageUp => {
                self.entry_scroll = self.entry_scroll.saturating_sub(self.page_rows);
                Outcome::Redraw
            }
            Event::PageDown => {
                self.entry_scroll = (self.entry_scroll + self.page_rows).min(10_000);
                Outcome::Redraw
            }
            Event::Home => {
                self.entry_scroll = 0;
                Outcome::Redraw
            }
            _ => {
                self.screen = Screen::List;
                Outcome::Redraw
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input decoding.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    Ground,
    Escape,
    /// `ESC [`, with the first numeric parameter so far; later parameters are modifiers
    /// (Ctrl, Shift) and are not kept.
    Csi {
        number: u16,
        first_done: bool,
    },
    /// `ESC O`
    Ss3,
}

/// Turns bytes from a serial console into events. A lone ESC is ambiguous until the next byte
/// arrives; call [`KeyDecoder::flush`] when no byte followed for a while (say 50 ms) to emit
/// it as `Back`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDecoder {
    state: DecodeState,
    last_was_cr: bool,
}

impl Default for KeyDecoder {
    fn default() -> Self {
        KeyDecoder::new()
    }
}

impl KeyDecoder {
    pub fn new() -> KeyDecoder {
        KeyDecoder { state: DecodeState::Ground, last_was_cr: false }
    }

    /// True while a sequence is incomplete (the firmware should call `flush` after a pause).
    pub fn pending(&self) -> bool {
        self.state != DecodeState::Ground
    }

    pub fn flush(&mut self, out: &mut Vec<Event>) {
        match self.state {
            DecodeState::Ground => {}
            DecodeState::Escape => out.push(Event::Back),
            _ => out.push(Event::AnyKey),
        }
        self.state = DecodeState::Ground;
    }

    pub fn feed(&mut self, byte: u8, out: &mut Vec<Event>) {
        match self.state {
            DecodeState::Ground => self.ground(byte, out),
            DecodeState::Escape => match byte {
                b'[' => self.state = DecodeState::Csi { number: 0, first_done: false },
                b'O' => self.state = DecodeState::Ss3,
                0x1b => out.push(Event::Back),
                _ => {
                    out.push(Event::Back);
                    self.state = DecodeState::Ground;
                    self.ground(byte, out);
                }
            },
            DecodeState::Csi { number, first_done } => {
                // Each byte is handled in constant time and the number saturates, so a
                // never-ending parameter string costs nothing and ends at its final byte.
                match byte {
                    b'0'..=b'9' if !first_done => {
                        let number = number.saturating_mul(10).saturating_add(u16::from(byte - b'0'));
                        self.state = DecodeState::Csi { number, first_done };
                    }
                    b'0'..=b'9' | b';' | b':' => {
                        self.state = DecodeState::Csi { number, first_done: true };
                    }
                    0x40..=0x7e => {
                        self.state = DecodeState::Ground;
                        out.push(match byte {
                            b'A' => Event::Up,
                            b'B' => Event::Down,
                            b'C' => Event::Right,
                            b'D' => Event::Left,
                            b'H' => Event::Home,
                            b'F' => Event::End,
                            b'~' => match number {
                                1 | 7 => Event::Home,
                                4 | 8 => Event::End,
                                5 => Event::PageUp,
                                6 => Event::PageDown,
                                _ => Event::AnyKey,
                            },
                            _ => Event::AnyKey,
                        });
                    }
                    _ => {
                        self.state = DecodeState::Ground;
                        out.push(Event::AnyKey);
                    }
                }
            }
            DecodeState::Ss3 => {
                self.state = DecodeState::Ground;
                out.push(match byte {
                    b'A' => Event::Up,
                    b'B' => Event::Down,
                    b'C' => Event::Right,
                    b'D' => Event::Left,
                    b'H' => Event::Home,
                    b'F' => Event::End,
                    b'M' => Event::Enter,
                    _ => Event::AnyKey,
                });
            }
        }
    }

    fn ground(&mut self, byte: u8, out: &mut Vec<Event>) {
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match byte {
            0x1b => self.state = DecodeState::Escape,
            b'\r' => out.push(Event::Enter),
            // Terminals send CR, LF or CR LF for Enter: one key either way.
            b'\n' if after_cr => {}
            b'\n' => out.push(Event::Enter),
            b'0'..=b'9' => out.push(Event::Digit(byte - b'0')),
            b'e' => out.push(Event::Edit),
            // Emacs-style keys, which GRUB also takes.
            0x10 => out.push(Event::Up),
            0x0e => out.push(Event::Down),
            0x08 | 0x7f => out.push(Event::Back),
            _ => out.push(Event::AnyKey),
        }
    }
}

/// The event for a key from BIOS INT 16h (AH = scan code, AL = ASCII).
pub fn event_from_bios_key(scan: u8, ascii: u8) -> Event {
    match (scan, ascii) {
        (_, 0x0d) => Event::Enter,
        (_, 0x1b) => Event::Back,
        (_, 0x08) => Event::Back,
        (_, b'e') => Event::Edit,
        (_, d @ b'0'..=b'9') => Event::Digit(d - b'0'),
        (_, 0x10) => Event::Up,
        (_, 0x0e) => Event::Down,
        // Extended keys come with ASCII 00h or E0h.
        (0x48, 0x00 | 0xe0) => Event::Up,
        (0x50, 0x00 | 0xe0) => Event::Down,
        (0x4b, 0x00 | 0xe0) => Event::Left,
        (0x4d, 0x00 | 0xe0) => Event::Right,
        (0x47, 0x00 | 0xe0) => Event::Home,
        (0x4f, 0x00 | 0xe0) => Event::End,
        (0x49, 0x00 | 0xe0) => Event::PageUp,
        (0x51, 0x00 | 0xe0) => Event::PageDown,
        _ => Event::AnyKey,
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering.

/// Lines to print, top to bottom, exactly `height` of them, none longer than `width`
/// characters. `highlight_row` is the row of the selected item, for consoles that can show it
/// in inverse video; the row is also marked with `>` for those that cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub lines: Vec<String>,
    pub highlight_row: Option<usize>,
}

/// Text safe to print: control characters (tabs included) become spaces, cut to `width`.
fn fit(text: &str, width: usize) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(width).collect()
}

/// Break text into lines of at most `width` characters, at blanks where possible, so long
/// error messages stay readable instead of being cut off.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let clean: Vec<char> = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if width == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest: &[char] = &clean;
    let mut first = true;
    while rest.len() > width {
        let cut = match rest[..=width].iter().rposition(|c| *c == ' ') {
            Some(0) | None => width,
            Some(i) => i,
        };
        out.push(rest[..cut].iter().collect::<String>().trim_end().to_string());
        rest = &rest[cut..];
        // Continuation lines start at the next word, not at the blank that ended the last.
        while rest.first() == Some(&' ') {
            rest = &rest[1..];
        }
        first = false;
    }
    if first || !rest.is_empty() {
        out.push(rest.iter().collect());
    }
    out
}

fn separator(width: usize, label: &str) -> String {
    if label.is_empty() || width < label.len() + 8 {
        return "-".repeat(width);
    }
    let left = 4;
    let right = width - left - label.len() - 2;
    format!("{} {} {}", "-".repeat(left - 1), label, "-".repeat(right + 1))
}

fn countdown_line(config: &Config, state: &MenuState, style_hint: &str) -> String {
    match state.countdown_secs() {
        None => String::new(),
        Some(secs) => {
            let title = state.default_path().and_then(|p| config.item(p)).map(|i| i.title()).unwrap_or("");
            format!("Booting '{}' in {} s. {}", title, secs, style_hint)
        }
    }
}

pub fn render(config: &Config, state: &MenuState, width: usize, height: usize) -> Frame {
    let mut lines: Vec<String> = Vec::new();
    let mut highlight_row = None;
    let list_rows = list_rows(height);

    if !state.visible {
        // timeout_style=hidden shows nothing, countdown only its line, until a key or the end.
        let mut lines = vec![String::new(); height];
        if state.style == TimeoutStyle::Countdown {
            if let Some(last) = lines.last_mut() {
                *last = fit(&countdown_line(config, state, "Press any key for the menu."), width);
            }
        }
        return Frame { lines, highlight_row: None };
    }

    match &state.screen {
        Screen::List => {
            let mut title = String::from("vboot");
            let mut items: &[MenuItem] = &config.entries;
            for i in &state.submenu_path {
                if let Some(MenuItem::Submenu(s)) = items.get(*i) {
                    title.push_str(" > ");
                    title.push_str(&s.title);
                    items = &s.items;
                }
            }
            lines.push(fit(&title, width));
            let top = state.scroll_top.min(items.len().saturating_sub(1));
            // The state's scroll assumes its own page size; keep the highlight on screen for ours.
            let top = if state.selected >= top + list_rows { state.selected + 1 - list_rows } else { top };
            lines.push(separator(width, if top > 0 { "more above" } else { "" }));
            if items.is_empty() {
                lines.push(fit("  (no menu entries in grub.cfg)", width));
            }
            for (i, item) in items.iter().enumerate().skip(top).take(list_rows) {
                let mark = if i == state.selected { '>' } else { ' ' };
                if i == state.selected {
                    highlight_row = Some(lines.len());
                }
                let suffix = if item.is_submenu() { "  (submenu)" } else { "" };
                lines.push(fit(&format!("{} {:>2}. {}{}", mark, i + 1, item.title(), suffix), width));
            }
            while lines.len() < HEADER_ROWS + list_rows {
                lines.push(String::new());
            }
            let more_below = top + list_rows < items.len();
            lines.push(separator(width, if more_below { "more below" } else { "" }));
            let back = if state.submenu_path.is_empty() { "" } else { "  Esc: back" };
            lines.push(fit(
                &format!("Up/Down: select  Enter: boot  e: show entry  1-9: boot number{}", back),
                width,
            ));
            lines.push(fit(&countdown_line(config, state, "Press any key to stop."), width));
        }
        Screen::Entry(path) => {
            let mut body: Vec<String> = Vec::new();
            match config.entry(path) {
                None => body.push("(this entry no longer exists)".to_string()),
                Some(e) => {
                    lines.push(fit(
                        &format!(
                            "Entry {}: {}",
                            path.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join("."),
                            e.title
                        ),
                        width,
                    ));
                    for l in &e.lines {
                        body.push(format!("    {}", l));
                    }
                    body.push(String::new());
                    match e.boot_command() {
                        Ok(command) => {
                            body.push("What vboot will do:".to_string());
                            for d in command.describe() {
                                body.push(format!("    {}", d));
                            }
                        }
                        Err(problem) => body.push(format!("Cannot boot: {}", problem)),
                    }
                    for n in &e.skipped {
                        body.push(format!("Note: line {}: {}", n.line, n.message));
                    }
                }
            }
            if lines.is_empty() {
                lines.push(String::from("Entry"));
            }
            let body: Vec<String> = body.iter().flat_map(|l| wrap(l, width)).collect();
            let max_scroll = body.len().saturating_sub(list_rows);
            let top = state.entry_scroll.min(max_scroll);
            lines.push(separator(width, if top > 0 { "more above" } else { "" }));
            for l in body.iter().skip(top).take(list_rows) {
                lines.push(l.clone());
            }
            while lines.len() < HEADER_ROWS + list_rows {
                lines.push(String::new());
            }
            lines.push(separator(width, if top < max_scroll { "more below" } else { "" }));
            lines.push(fit("Enter: boot  Esc: back to the menu  Up/Down: scroll", width));
            lines.push(String::new());
        }
    }
    // Very small screens: keep the top (title and list) and drop what does not fit.
    lines.truncate(height);
    while lines.len() < height {
        lines.push(String::new());
    }
    if highlight_row.is_some_and(|r| r >= height) {
        highlight_row = None;
    }
    Frame { lines, highlight_row }
}

/// A full screen of text: a title, a separator, the body lines (cut to fit) and a footer at
/// the bottom. For the screens around the menu: the summary shown before booting, a grub.cfg
/// syntax error, a boot that failed.
pub fn render_message(title: &str, body: &[String], footer: &str, width: usize, height: usize) -> Frame {
    let mut lines = vec![fit(title, width), separator(width, "")];
    let room = height.saturating_sub(lines.len() + 1);
    lines.extend(body.iter().flat_map(|l| wrap(l, width)).take(room));
    lines.truncate(height.saturating_sub(1));
    while lines.len() + 1 < height {
        lines.push(String::new());
    }
    if height > 0 {
        lines.push(fit(footer, width));
    }
    Frame { lines, highlight_row: None }
}

/// What is about to happen, for the screen shown before booting the entry at `path`: its
/// options in words and the commands of its body that vboot skipped. `Err` carries the lines
/// explaining why it cannot boot.
pub fn boot_summary(config: &Config, path: &[usize]) -> Result<Vec<String>, Vec<String>> {
    let entry = match config.entry(path) {
        Some(e) => e,
        None => return Err(vec!["This menu item is not an entry that can boot.".to_string()]),
    };
    let mut lines = vec![format!("Booting '{}'", entry.title), String::new()];
    let notes = entry.skipped.iter().map(|n| format!("Note: line {}: {}", n.line, n.message));
    match entry.boot_command() {
        Ok(command) => {
            lines.extend(command.describe().into_iter().map(|d| format!("  {}", d)));
            lines.extend(notes);
            Ok(lines)
        }
        Err(problem) => {
            lines.push(format!("Cannot boot: {}", problem));
            lines.extend(notes);
            Err(lines)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Config {
        Config::parse(s).unwrap()
    }

    const FOUR: &str = "menuentry A { vboot harddisk=/a.vhd }\nmenuentry B { vboot cdrom=/b.iso }\n\
                        submenu S {\n menuentry S1 { vboot floppy=/1.img }\n menuentry S2 {}\n}\nmenuentry D {\n insmod x\n}\n";

    fn run(state: &mut MenuState, config: &Config, events: &[Event]) -> Vec<Outcome> {
        events.iter().map(|e| state.handle(config, *e)).collect()
    }

    #[test]
    fn timeout_counts_down_and_boots_default() {
        let c = cfg(&format!("set timeout=2\nset default=1\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Redraw);
        assert_eq!(m.selected(), 1);
        assert_eq!(m.countdown_secs(), Some(2));
        assert_eq!(m.handle(&c, Event::Tick(400)), Outcome::None);
        assert_eq!(m.countdown_secs(), Some(2));
        assert_eq!(m.handle(&c, Event::Tick(700)), Outcome::Redraw);
        assert_eq!(m.countdown_secs(), Some(1));
        assert_eq!(m.handle(&c, Event::Tick(5000)), Outcome::Boot(vec![1]));
        assert_eq!(m.countdown_secs(), None);
        assert_eq!(m.handle(&c, Event::Tick(5000)), Outcome::None);
    }

    #[test]
    fn any_key_stops_the_countdown() {
        let c = cfg(&format!("set timeout=5\n{}", FOUR));
        let mut m = MenuState::new(&c);
        m.start(&c);
        assert_eq!(m.handle(&c, Event::AnyKey), Outcome::Redraw);
        assert!(m.countdown_stopped());
        assert_eq!(m.countdown_secs(), None);
        assert_eq!(m.handle(&c, Event::Tick(10_000)), Outcome::None);
        // Up at the top: nothing moves, and the countdown is already stopped.
        assert_eq!(m.handle(&c, Event::Up), Outcome::None);
        assert_eq!(m.handle(&c, Event::Down), Outcome::Redraw);
        assert_eq!(m.selected(), 1);
    }

    #[test]
    fn timeout_zero_and_minus_one() {
        let c = cfg(&format!("set timeout=0\nset default=B\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Boot(vec![1]));

        let c = cfg(&format!("set timeout=-1\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Redraw);
        assert_eq!(m.countdown_secs(), None);
        assert!(!m.countdown_stopped());
        assert_eq!(m.handle(&c, Event::Tick(1_000_000)), Outcome::None);

        // No timeout set: wait, like GRUB.
        let c = cfg(FOUR);
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Redraw);
        assert_eq!(m.countdown_secs(), None);
    }

    #[test]
    fn navigation() {
        let c = cfg(FOUR);
        let mut m = MenuState::new(&c);
        assert_eq!(
            run(&mut m, &c, &[Event::End, Event::Down, Event::Home, Event::PageDown, Event::PageUp]),
            vec![Outcome::Redraw, Outcome::None, Outcome::Redraw, Outcome::Redraw, Outcome::Redraw]
        );
        assert_eq!(m.selected(), 0);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Boot(vec![0]));
        m.handle(&c, Event::Down);
        m.handle(&c, Event::Down);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Redraw);
        assert_eq!(m.submenu_path(), &[2]);
        assert_eq!(m.selected(), 0);
        m.handle(&c, Event::Down);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Boot(vec![2, 1]));
        assert_eq!(m.handle(&c, Event::Back), Outcome::Redraw);
        assert_eq!((m.submenu_path(), m.selected()), (&[][..], 2));
        assert_eq!(m.handle(&c, Event::Back), Outcome::None);
        assert_eq!(m.handle(&c, Event::Right), Outcome::Redraw);
        assert_eq!(m.submenu_path(), &[2]);
        assert_eq!(m.handle(&c, Event::Left), Outcome::Redraw);
        assert_eq!(m.handle(&c, Event::Up), Outcome::Redraw);
        assert_eq!(m.handle(&c, Event::Right), Outcome::None);
    }

    #[test]
    fn resume_at_highlights_the_abandoned_entry_without_a_countdown() {
        let c = cfg(&format!("set timeout=5\nset default=0\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.resume_at(&c, &[2, 1]), Outcome::Redraw);
        assert_eq!((m.submenu_path(), m.selected()), (&[2][..], 1));
        assert_eq!(m.countdown_secs(), None);
        assert!(m.is_visible());
        assert_eq!(m.handle(&c, Event::Tick(10_000)), Outcome::None);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Boot(vec![2, 1]));
        // A path that is no longer an entry (grub.cfg changed): the default selection stays.
        for gone in [&[7][..], &[2][..], &[]] {
            let mut m = MenuState::new(&c);
            m.resume_at(&c, gone);
            assert_eq!((m.submenu_path(), m.selected()), (&[][..], 0));
            assert_eq!(m.countdown_secs(), None);
        }
    }

    #[test]
    fn digits_pick_and_boot() {
        let c = cfg(&format!("set timeout=9\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.handle(&c, Event::Digit(2)), Outcome::Boot(vec![1]));
        assert!(m.countdown_stopped());
        assert_eq!(m.handle(&c, Event::Digit(3)), Outcome::Redraw);
        assert_eq!(m.submenu_path(), &[2]);
        assert_eq!(m.handle(&c, Event::Digit(1)), Outcome::Boot(vec![2, 0]));
        assert_eq!(m.handle(&c, Event::Digit(9)), Outcome::None);
        assert_eq!(m.handle(&c, Event::Digit(0)), Outcome::None);
    }

    #[test]
    fn entry_view() {
        let c = cfg(FOUR);
        let mut m = MenuState::new(&c);
        m.handle(&c, Event::End);
        assert_eq!(m.handle(&c, Event::Edit), Outcome::ShowEntry(vec![3]));
        assert_eq!(m.screen(), &Screen::Entry(vec![3]));
        let f = render(&c, &m, 100, 12);
        assert_eq!(f.lines[0], "Entry 4: D");
        assert_eq!(f.lines[2], "    insmod x");
        assert_eq!(f.lines[4], "Cannot boot: menu entry 'D' has no vboot line, so there is nothing to boot");
        assert_eq!(f.lines[5], "Note: line 8: `insmod` skipped: vboot runs only the vboot line");
        assert_eq!(m.handle(&c, Event::Back), Outcome::Redraw);
        assert_eq!(m.screen(), &Screen::List);
        m.handle(&c, Event::Edit);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Boot(vec![3]));
        assert_eq!(m.screen(), &Screen::List);
        // No entry view for a submenu.
        m.handle(&c, Event::Up);
        assert_eq!(m.handle(&c, Event::Edit), Outcome::None);
    }

    #[test]
    fn default_in_a_submenu() {
        let c = cfg(&format!("set timeout=1\nset default=2>1\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.selected(), 2);
        assert_eq!(m.submenu_path(), &[] as &[usize]);
        assert_eq!(m.handle(&c, Event::Tick(1000)), Outcome::Boot(vec![2, 1]));
        // Opening the submenu by hand highlights the default inside it.
        let mut m = MenuState::new(&c);
        assert_eq!(m.handle(&c, Event::Enter), Outcome::Redraw);
        assert_eq!((m.submenu_path(), m.selected()), (&[2][..], 1));

        // A default naming the submenu itself opens it when the time is up.
        let c = cfg(&format!("set timeout=1\nset default=S\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.handle(&c, Event::Tick(1000)), Outcome::Redraw);
        assert_eq!(m.submenu_path(), &[2]);
    }

    #[test]
    fn hidden_and_countdown_styles() {
        let c = cfg(&format!("set timeout=3\nset timeout_style=hidden\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert!(!m.is_visible());
        assert!(render(&c, &m, 40, 10).lines.iter().all(|l| l.is_empty()));
        // The first key shows the menu and does nothing else.
        assert_eq!(m.handle(&c, Event::Down), Outcome::Redraw);
        assert!(m.is_visible());
        assert_eq!(m.selected(), 0);
        assert_eq!(m.countdown_secs(), None);

        let c = cfg(&format!("set timeout=3\nset timeout_style=countdown\n{}", FOUR));
        let mut m = MenuState::new(&c);
        let f = render(&c, &m, 80, 10);
        assert_eq!(f.lines[9], "Booting 'A' in 3 s. Press any key for the menu.");
        assert!(f.lines[..9].iter().all(|l| l.is_empty()));
        assert_eq!(m.handle(&c, Event::Tick(3000)), Outcome::Boot(vec![0]));

        // Without a timeout the style does not hide anything.
        let c = cfg(&format!("set timeout_style=hidden\n{}", FOUR));
        assert!(MenuState::new(&c).is_visible());
    }

    #[test]
    fn back_to_menu_after_failed_boot() {
        let c = cfg(&format!("set timeout=0\n{}", FOUR));
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Boot(vec![0]));
        assert_eq!(m.back_to_menu(), Outcome::Redraw);
        assert_eq!(m.handle(&c, Event::Tick(10_000)), Outcome::None);
        assert_eq!(m.screen(), &Screen::List);
    }

    #[test]
    fn empty_menu() {
        let c = cfg("set timeout=0\n");
        let mut m = MenuState::new(&c);
        assert_eq!(m.start(&c), Outcome::Redraw);
        assert_eq!(
            run(&mut m, &c, &[Event::Enter, Event::Down, Event::End, Event::Digit(1), Event::Edit]),
            vec![Outcome::None; 5]
        );
        let f = render(&c, &m, 40, 8);
        assert_eq!(f.lines[2], "  (no menu entries in grub.cfg)");
        assert_eq!(f.highlight_row, None);
    }

    #[test]
    fn render_list() {
        let c = cfg(&format!("set timeout=5\nset default=1\n{}", FOUR));
        let m = MenuState::new(&c);
        let f = render(&c, &m, 50, 10);
        assert_eq!(
            f.lines,
            vec![
                "vboot",
                "--------------------------------------------------",
                "   1. A",
                ">  2. B",
                "   3. S  (submenu)",
                "   4. D",
                "",
                "--------------------------------------------------",
                "Up/Down: select  Enter: boot  e: show entry  1-9: ",
                "Booting 'B' in 5 s. Press any key to stop.",
            ]
        );
        assert_eq!(f.highlight_row, Some(3));
    }

    #[test]
    fn render_submenu_and_scroll() {
        let mut s = String::from("submenu 'Many' {\n");
        for i in 0..30 {
            s.push_str(&format!(" menuentry 'E{}' {{}}\n", i));
        }
        s.push_str("}\n");
        let c = cfg(&s);
        let mut m = MenuState::new(&c);
        m.set_screen_height(10);
        m.handle(&c, Event::Enter);
        m.handle(&c, Event::End);
        let f = render(&c, &m, 40, 10);
        assert_eq!(f.lines[0], "vboot > Many");
        assert_eq!(f.lines[1], "--- more above -------------------------");
        assert_eq!(f.lines[2], "  26. E25");
        assert_eq!(f.lines[6], "> 30. E29");
        assert_eq!(f.highlight_row, Some(6));
        assert_eq!(f.lines[7], "-".repeat(40));
        assert!(render(&c, &m, 80, 10).lines[8].ends_with("Esc: back"));
        m.handle(&c, Event::Home);
        let f = render(&c, &m, 40, 10);
        assert_eq!(f.lines[2], ">  1. E0");
        assert_eq!(f.lines[7], "--- more below -------------------------");
        m.handle(&c, Event::PageDown);
        assert_eq!(m.selected(), 5);
        // Rendering on a smaller screen than the state was told still shows the highlight.
        let f = render(&c, &m, 40, 6);
        assert_eq!(f.lines.len(), 6);
        assert_eq!(f.highlight_row, Some(2));
        assert_eq!(f.lines[2], ">  6. E5");
    }

    #[test]
    fn render_fits_width_and_height() {
        let c = cfg("menuentry 'A very long title\twith a tab that goes on and on' {}\n");
        let m = MenuState::new(&c);
        for (w, h) in [(10, 3), (20, 1), (80, 25), (0, 0)] {
            let f = render(&c, &m, w, h);
            assert_eq!(f.lines.len(), h);
            assert!(f.lines.iter().all(|l| l.chars().count() <= w && !l.contains('\t')), "{:?}", f.lines);
        }
        assert_eq!(render(&c, &m, 30, 10).lines[2], ">  1. A very long title with a");
    }

    #[test]
    fn render_entry_with_options() {
        let c = cfg("menuentry 'XP' {\n  insmod ntfs\n  vboot harddisk=(hd0,1)/xp.vhd pause\n}\n");
        let mut m = MenuState::new(&c);
        m.handle(&c, Event::Edit);
        let more_below = format!("--- more below {}", "-".repeat(65));
        let f = render(&c, &m, 80, 12);
        assert_eq!(
            f.lines,
            vec![
                "Entry 1: XP".to_string(),
                "-".repeat(80),
                "    insmod ntfs".into(),
                "    vboot harddisk=(hd0,1)/xp.vhd pause".into(),
                "".into(),
                "What vboot will do:".into(),
                "    hard disk (BIOS drive 0x80): (hd0,1)/xp.vhd".into(),
                "    boot from: harddisk (default)".into(),
                "    pause: wait for a key before starting the guest".into(),
                more_below,
                "Enter: boot  Esc: back to the menu  Up/Down: scroll".into(),
                "".into(),
            ]
        );
        assert_eq!(f.highlight_row, None);
        m.handle(&c, Event::PageDown);
        let f = render(&c, &m, 80, 12);
        assert_eq!(f.lines[1], format!("--- more above {}", "-".repeat(65)));
        assert_eq!(f.lines[8], "Note: line 2: `insmod` skipped: vboot runs only the vboot line");
        assert_eq!(f.lines[9], "-".repeat(80));
    }

    #[test]
    fn message_screens() {
        let f = render_message(
            "grub.cfg error",
            &["grub.cfg line 3: unterminated single quote".into()],
            "Press a key",
            30,
            6,
        );
        assert_eq!(
            f.lines,
            vec![
                "grub.cfg error",
                &"-".repeat(30),
                "grub.cfg line 3: unterminated",
                "single quote",
                "",
                "Press a key"
            ]
        );
        let long: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let f = render_message("t", &long, "f", 10, 5);
        assert_eq!(f.lines, vec!["t", "----------", "0", "1", "f"]);
        assert_eq!(render_message("t", &long, "f", 10, 1).lines, vec!["f"]);
        assert!(render_message("t", &long, "f", 10, 0).lines.is_empty());
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("", 10), vec![""]);
        assert_eq!(wrap("abc def ghi", 7), vec!["abc def", "ghi"]);
        assert_eq!(wrap("abc  def", 4), vec!["abc", "def"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\tb", 10), vec!["a b"]);
        assert!(wrap("x", 0).is_empty());
        for (text, w) in [("one two three four five", 5), ("   lead", 3), ("a b c", 1)] {
            assert!(wrap(text, w).iter().all(|l| l.chars().count() <= w), "{:?}", wrap(text, w));
        }
    }

    #[test]
    fn boot_summaries() {
        let c = cfg(FOUR);
        assert_eq!(
            boot_summary(&c, &[1]),
            Ok(vec![
                "Booting 'B'".to_string(),
                String::new(),
                "  CD-ROM (BIOS drive 0xE0): /b.iso".into(),
                "  boot from: cdrom (default)".into(),
            ])
        );
        assert_eq!(
            boot_summary(&c, &[3]),
            Err(vec![
                "Booting 'D'".to_string(),
                String::new(),
                "Cannot boot: menu entry 'D' has no vboot line, so there is nothing to boot".into(),
                "Note: line 8: `insmod` skipped: vboot runs only the vboot line".into(),
            ])
        );
        assert!(boot_summary(&c, &[2]).is_err());
        assert!(boot_summary(&c, &[9]).is_err());
    }

    /// Random bytes through the decoder into the menu, rendering after each outcome: no
    /// panic, every frame the requested size, and the selection always inside its menu.
    #[test]
    fn random_input_never_panics() {
        let c = cfg(&format!("set timeout=3\nset timeout_style=countdown\n{}", FOUR));
        let mut seed: u32 = 0xdead_beef;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        const BYTES: &[u8] = b"\x1b[AB~5;0123456789eOHF\r\nx\x7f";
        for _ in 0..200 {
            let mut m = MenuState::new(&c);
            let mut d = KeyDecoder::new();
            let mut events = Vec::new();
            for _ in 0..50 {
                let r = next();
                if r % 7 == 0 {
                    events.push(Event::Tick(r % 2000));
                } else if r % 11 == 0 {
                    d.flush(&mut events);
                } else {
                    d.feed(BYTES[(r as usize >> 8) % BYTES.len()], &mut events);
                }
            }
            for e in events {
                let outcome = m.handle(&c, e);
                if let Outcome::Boot(path) = &outcome {
                    assert!(c.entry(path).is_some(), "boot of a non-entry {:?}", path);
                    m.back_to_menu();
                }
                let len = c.items_at(m.submenu_path()).map(|i| i.len()).unwrap();
                assert!(m.selected() < len);
                let f = render(&c, &m, 40, 8);
                assert_eq!(f.lines.len(), 8);
            }
        }
    }

    fn decode(bytes: &[u8]) -> Vec<Event> {
        let mut d = KeyDecoder::new();
        let mut out = Vec::new();
        for b in bytes {
            d.feed(*b, &mut out);
        }
        d.flush(&mut out);
        out
    }

    #[test]
    fn decoder_sequences() {
        use Event::*;
        assert_eq!(decode(b"\x1b[A\x1b[B\x1b[C\x1b[D"), vec![Up, Down, Right, Left]);
        assert_eq!(decode(b"\x1bOA\x1bOB\x1bOH\x1bOF\x1bOM"), vec![Up, Down, Home, End, Enter]);
        assert_eq!(
            decode(b"\x1b[H\x1b[F\x1b[1~\x1b[4~\x1b[5~\x1b[6~\x1b[7~\x1b[8~\x1b[3~"),
            vec![Home, End, Home, End, PageUp, PageDown, Home, End, AnyKey]
        );
        assert_eq!(decode(b"\x1b[1;5A\x1b[5;2~"), vec![Up, PageUp]);
        assert_eq!(decode(b"\r\n\r\n\nx"), vec![Enter, Enter, Enter, AnyKey]);
        assert_eq!(decode(b"\n\r"), vec![Enter, Enter]);
        assert_eq!(decode(b"0719e"), vec![Digit(0), Digit(7), Digit(1), Digit(9), Edit]);
        assert_eq!(decode(b"\x10\x0e\x7f\x08E"), vec![Up, Down, Back, Back, AnyKey]);
    }

    #[test]
    fn decoder_lone_escape() {
        use Event::*;
        let mut d = KeyDecoder::new();
        let mut out = Vec::new();
        d.feed(0x1b, &mut out);
        assert!(out.is_empty() && d.pending());
        d.flush(&mut out);
        assert_eq!(out, vec![Back]);
        assert!(!d.pending());
        // ESC followed by an ordinary key: both keys.
        assert_eq!(decode(b"\x1be"), vec![Back, Edit]);
        assert_eq!(decode(b"\x1b\x1b"), vec![Back, Back]);
        assert_eq!(decode(b"\x1b\x1b[A"), vec![Back, Up]);
        assert_eq!(decode(b"\x1b"), vec![Back]);
    }

    #[test]
    fn decoder_garbage_is_bounded() {
        use Event::*;
        assert_eq!(decode(b"\x1b[\x01"), vec![AnyKey]);
        assert_eq!(decode(b"\x1b[99999999999999999999999A"), vec![Up]);
        assert_eq!(decode(b"\x1b[99999999999999999999999~"), vec![AnyKey]);
        assert_eq!(decode(b"\x1b[12"), vec![AnyKey]);
        assert_eq!(decode(b"\x1bOz"), vec![AnyKey]);
        assert_eq!(decode(b"\x1b[Z"), vec![AnyKey]);
    }

    #[test]
    fn bios_keys() {
        assert_eq!(event_from_bios_key(0x48, 0x00), Event::Up);
        assert_eq!(event_from_bios_key(0x50, 0xe0), Event::Down);
        assert_eq!(event_from_bios_key(0x1c, 0x0d), Event::Enter);
        assert_eq!(event_from_bios_key(0x01, 0x1b), Event::Back);
        assert_eq!(event_from_bios_key(0x12, b'e'), Event::Edit);
        assert_eq!(event_from_bios_key(0x03, b'2'), Event::Digit(2));
        assert_eq!(event_from_bios_key(0x49, 0x00), Event::PageUp);
        assert_eq!(event_from_bios_key(0x51, 0x00), Event::PageDown);
        assert_eq!(event_from_bios_key(0x47, 0x00), Event::Home);
        assert_eq!(event_from_bios_key(0x4f, 0x00), Event::End);
        assert_eq!(event_from_bios_key(0x4b, 0x00), Event::Left);
        assert_eq!(event_from_bios_key(0x4d, 0x00), Event::Right);
        assert_eq!(event_from_bios_key(0x1e, b'a'), Event::AnyKey);
        // An arrow scan code with a real character is that character, not the arrow.
        assert_eq!(event_from_bios_key(0x48, b'8'), Event::Digit(8));
    }
}
