//! Text console: VGA text mode mirrored on COM1, keys from the keyboard (INT 16h) and COM1, so
//! vboot can be driven entirely over a serial line.

use crate::bios::{self, Regs};
use crate::{lowmem, machine};
use core::fmt;
use volatile::VolatilePtr;

/// The colour text screen (mode 3) at B800:0000: a character and its attribute per cell.
const VGA_TEXT: u32 = 0xB8000;
const CRTC: u16 = 0x3D4;
pub const COLUMNS: usize = 80;
pub const ROWS: usize = 25;

/// The text screen's cells, row by row.
fn screen() -> VolatilePtr<'static, [u16]> {
    lowmem::cells(VGA_TEXT, COLUMNS * ROWS)
}

fn cell(attr: u8, b: u8) -> u16 {
    ((attr as u16) << 8) | b as u16
}

pub const ATTR_NORMAL: u8 = 0x07;
pub const ATTR_HIGHLIGHT: u8 = 0x70;
pub const ATTR_ERROR: u8 = 0x0C;

pub struct Console {
    row: usize,
    col: usize,
    pub attr: u8,
    serial: bool,
}

static mut CONSOLE: Console = Console { row: 0, col: 0, attr: ATTR_NORMAL, serial: false };

/// Run `f` with the console. The borrow lasts for the call only.
#[allow(static_mut_refs)]
pub fn with<R>(f: impl FnOnce(&mut Console) -> R) -> R {
    // SAFETY: stage2 is single-threaded and runs with interrupts off in protected mode. The only
    // way in while an outer call holds the console is the panic or CPU-exception path, which never
    // returns into the outer call (recovery.rs abandons its frames), so the two borrows are never
    // used interleaved.
    f(unsafe { &mut CONSOLE })
}

/// Text from now on in `attr` (ATTR_NORMAL, ATTR_ERROR ...).
pub fn set_attr(attr: u8) {
    with(|c| c.attr = attr);
}

impl Console {
    pub fn init(&mut self) {
        self.serial = machine::com1_init();
        self.clear();
    }

    pub fn clear(&mut self) {
        for c in screen().iter() {
            c.write(cell(ATTR_NORMAL, b' '));
        }
        self.row = 0;
        self.col = 0;
        self.update_cursor();
    }

    fn serial_byte(&mut self, b: u8) {
        if !self.serial {
            return;
        }
        // A real UART sends a byte in under 100 us at 115200 baud; an emulated one may take
        // longer when its host side is busy. Never overwrite a byte still waiting to go.
        for _ in 0..5_000_000 {
            if machine::com1_line_status() & 0x20 != 0 {
                break;
            }
        }
        machine::com1_send(b);
    }

    fn scroll(&mut self) {
        let screen = screen();
        screen.copy_within(COLUMNS.., 0);
        for c in screen.index(COLUMNS * (ROWS - 1)..).iter() {
            c.write(cell(ATTR_NORMAL, b' '));
        }
        self.row = ROWS - 1;
    }

    pub fn put_byte(&mut self, b: u8) {
        match b {
            b'\n' => {
                self.serial_byte(b'\r');
                self.serial_byte(b'\n');
                self.col = 0;
                self.row += 1;
            }
            b'\r' => {
                self.serial_byte(b'\r');
                self.col = 0;
            }
            _ => {
                self.serial_byte(b);
                if self.col >= COLUMNS {
                    self.col = 0;
                    self.row += 1;
                }
                if self.row >= ROWS {
                    self.scroll();
                }
                screen().index(self.row * COLUMNS + self.col).write(cell(self.attr, b));
                self.col += 1;
            }
        }
        if self.row >= ROWS {
            self.scroll();
        }
    }

    fn update_cursor(&self) {
        let pos = (self.row * COLUMNS + self.col.min(COLUMNS - 1)) as u16;
        machine::set_cursor(CRTC, pos);
    }

    /// Raw bytes to the serial line only (ANSI sequences for a serial menu).
    pub fn serial_write(&mut self, s: &str) {
        for b in s.bytes() {
            self.serial_byte(b);
        }
    }

    /// One byte from COM1, if one is waiting.
    pub fn serial_read(&mut self) -> Option<u8> {
        if self.serial && machine::com1_line_status() & 1 != 0 {
            Some(machine::com1_receive())
        } else {
            None
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // VGA shows code page 437; map anything outside ASCII to '?'.
            self.put_byte(if b.is_ascii() { b } else { b'?' });
        }
        self.update_cursor();
        Ok(())
    }
}

/// A key from the keyboard as (scan code, ASCII), if one is waiting (INT 16h AH=01h, AH=00h).
pub fn keyboard_key() -> Option<(u8, u8)> {
    let mut r = Regs { eax: 0x0100, ..Default::default() };
    bios::call(0x16, &mut r);
    if r.zf() {
        return None;
    }
    let mut r = Regs { eax: 0x0000, ..Default::default() };
    bios::call(0x16, &mut r);
    Some(((r.eax >> 8) as u8, r.eax as u8))
}

impl Console {
    /// Replace the whole screen with `lines`, row `highlight` in inverse video. On the serial
    /// line: clear, home, the lines, with ANSI inverse video for the highlight.
    pub fn draw_screen(&mut self, lines: &[alloc::string::String], highlight: Option<usize>) {
        for row in 0..ROWS {
            let text = lines.get(row).map(|s| s.as_bytes()).unwrap_or(&[]);
            let attr = if highlight == Some(row) { ATTR_HIGHLIGHT } else { ATTR_NORMAL };
            for (col, c) in screen().index(row * COLUMNS..(row + 1) * COLUMNS).iter().enumerate() {
                let b = text.get(col).copied().filter(|b| b.is_ascii()).unwrap_or(b' ');
                c.write(cell(attr, b));
            }
        }
        self.row = ROWS - 1;
        self.col = 0;
        self.serial_write("\x1b[2J\x1b[H");
        for (row, line) in lines.iter().enumerate() {
            if highlight == Some(row) {
                self.serial_write("\x1b[7m");
                self.serial_write(line);
                self.serial_write("\x1b[0m");
            } else {
                self.serial_write(line.trim_end());
            }
            self.serial_write("\r\n");
        }
        self.update_cursor();
    }

    /// Rewrite row `row` of the screen `draw_screen` drew last (all `ROWS` of it), in normal
    /// video. A terminal is left below the screen by `draw_screen`: the cursor goes up to the
    /// row, the row is written over and erased to its end, and the cursor goes back down, so
    /// the row changes in place instead of the whole screen being sent again.
    pub fn redraw_row(&mut self, row: usize, text: &str) {
        let row = row.min(ROWS - 1);
        let text = text.as_bytes();
        for (col, c) in screen().index(row * COLUMNS..(row + 1) * COLUMNS).iter().enumerate() {
            let b = text.get(col).copied().filter(|b| b.is_ascii()).unwrap_or(b' ');
            c.write(cell(ATTR_NORMAL, b));
        }
        let up = ROWS - row;
        self.serial_csi(up, b'A');
        self.serial_byte(b'\r');
        for &b in text.iter().filter(|b| b.is_ascii()) {
            self.serial_byte(b);
        }
        self.serial_write("\x1b[K");
        for _ in 0..up {
            self.serial_write("\r\n");
        }
    }

    /// The text cursor at (`row`, `col`) of the screen `draw_screen` drew last: on the VGA
    /// screen, and on a terminal (moved there from below the screen).
    pub fn place_cursor(&mut self, row: usize, col: usize) {
        self.row = row.min(ROWS - 1);
        self.col = col.min(COLUMNS - 1);
        self.update_cursor();
        self.serial_csi(ROWS - self.row, b'A');
        self.serial_byte(b'\r');
        if self.col > 0 {
            self.serial_csi(self.col, b'C');
        }
    }

    /// `ESC [ n final` on the serial line (a cursor move by `n`).
    fn serial_csi(&mut self, n: usize, final_byte: u8) {
        self.serial_write("\x1b[");
        let mut digits = [0u8; 20];
        let mut len = 0;
        let mut n = n;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in digits[..len].iter().rev() {
            self.serial_byte(d);
        }
        self.serial_byte(final_byte);
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write;
        $crate::console::with(|c| { let _ = write!(c, $($arg)*); });
    }};
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{ $crate::print!($($arg)*); $crate::print!("\n"); }};
}
