//! Telling the user, when nothing else can: one line to COM1 and to a text screen at the BIOS
//! cursor, without allocating and without calling the BIOS (the engine may be inside a BIOS call,
//! or its heap exhausted). Used by the panic handler (recover.rs) and the CPU-exception handler
//! (exception.rs).

use core::fmt::Write;

use crate::{lowmem, machine};

/// One line of text, cut at its capacity (no allocation: the heap may be exhausted).
pub struct Line {
    bytes: [u8; LINE_BYTES],
    len: usize,
}

const LINE_BYTES: usize = 240;

impl Line {
    pub const fn new() -> Line {
        Line { bytes: [0; LINE_BYTES], len: 0 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if self.len < LINE_BYTES {
                // Printable ASCII only: the line goes to a text screen.
                self.bytes[self.len] = if (0x20..0x7F).contains(&b) { b } else { b'?' };
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// The line on COM1 and on the screen.
pub(crate) fn show(line: &Line) {
    for &b in line.as_bytes().iter().chain(b"\r\n") {
        com1_byte(b);
    }
    screen_line(line.as_bytes());
}

/// A byte to COM1; a missing UART ignores it, and the wait for the transmitter is bounded.
fn com1_byte(b: u8) {
    for _ in 0..100_000 {
        if machine::com1_line_status() & 0x20 != 0 {
            break;
        }
    }
    machine::com1_send(b);
}

/// Write `text` on its own line at the BIOS cursor of the active page, in a text mode only (a
/// graphics mode's memory is not character cells), scrolling the page when at its bottom, and
/// move the cursor (BDA and CRT controller) below it, as INT 10h teletype output would.
fn screen_line(text: &[u8]) {
    const ATTR: u8 = 0x0C; // light red on black, as stage2 shows errors
    let mode = lowmem::read_u8(0x449) & 0x7F;
    let base: u32 = match mode {
        0..=3 => 0xB8000,
        7 => 0xB0000,
        _ => return,
    };
    let cols = lowmem::read_u16(0x44A) as u32;
    let rows = match lowmem::read_u8(0x484) as u32 + 1 {
        r @ 2..=60 => r,
        _ => 25,
    };
    if !(20..=132).contains(&cols) {
        return;
    }
    let page = (lowmem::read_u8(0x462) & 7) as u32;
    let page_base = base + lowmem::read_u16(0x44E) as u32;
    if page_base % 2 != 0 {
        return; // not a page the BIOS set up: cells are whole words
    }
    let cursor_at = 0x450 + 2 * page;
    let (mut col, mut row) = (lowmem::read_u8(cursor_at) as u32, lowmem::read_u8(cursor_at + 1) as u32);
    // The cells of this page of text-mode video memory (rows x cols from the page's start, which
    // the BIOS keeps inside the 32 KiB text window).
    let cells = lowmem::cells(page_base, (rows * cols) as usize);
    let cell = |row: u32, col: u32| cells.index((row * cols + col) as usize);
    const BLANK: u16 = 0x0720;
    let newline = |row: &mut u32, col: &mut u32| {
        *col = 0;
        if *row + 1 < rows {
            *row += 1;
            return;
        }
        cells.copy_within(cols as usize.., 0);
        for c in cells.index(((rows - 1) * cols) as usize..).iter() {
            c.write(BLANK);
        }
    };
    if row >= rows {
        row = rows - 1;
    }
    if col != 0 {
        newline(&mut row, &mut col);
    }
    for &b in text {
        if col >= cols {
            newline(&mut row, &mut col);
        }
        cell(row, col).write((ATTR as u16) << 8 | b as u16);
        col += 1;
    }
    newline(&mut row, &mut col);
    lowmem::write_u8(cursor_at, col as u8);
    lowmem::write_u8(cursor_at + 1, row as u8);
    if page == lowmem::read_u8(0x462) as u32 {
        // The CRT controller at the port the BIOS recorded (3D4h colour, 3B4h mono).
        let pos = (lowmem::read_u16(0x44E) as u32 / 2 + row * cols + col) as u16;
        machine::set_cursor(lowmem::read_u16(0x463), pos);
    }
}
