//! Telling the user, when nothing else can: one line to COM1 and to a text screen at the BIOS
//! cursor, without allocating and without calling the BIOS (the engine may be inside a BIOS call,
//! or its heap exhausted). Used by the panic handler (recover.rs) and the CPU-exception handler
//! (exception.rs).

use core::fmt::Write;

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

pub(crate) fn halt() -> ! {
    loop {
        // SAFETY: stopping the processor for good is what is asked.
        unsafe { core::arch::asm!("cli; hlt") };
    }
}

/// The line on COM1 and on the screen.
pub(crate) fn show(line: &Line) {
    for &b in line.as_bytes().iter().chain(b"\r\n") {
        com1_byte(b);
    }
    screen_line(line.as_bytes());
}

fn com1_byte(b: u8) {
    // SAFETY: port I/O on the standard COM1 UART; a missing UART ignores the writes and the
    // wait below is bounded.
    unsafe {
        for _ in 0..100_000 {
            let lsr: u8;
            core::arch::asm!("in al, dx", out("al") lsr, in("dx") 0x3FDu16, options(nomem, nostack));
            if lsr & 0x20 != 0 {
                break;
            }
        }
        core::arch::asm!("out dx, al", in("dx") 0x3F8u16, in("al") b, options(nomem, nostack));
    }
}

fn peek8(linear: u32) -> u8 {
    // SAFETY: the BIOS data area (0x400-0x4FF) is always mapped; the engine runs with flat
    // segments, so a linear address is a pointer.
    unsafe { core::ptr::read_volatile(linear as *const u8) }
}

fn peek16(linear: u32) -> u16 {
    u16::from_le_bytes([peek8(linear), peek8(linear + 1)])
}

fn poke8(linear: u32, v: u8) {
    // SAFETY: only called for the BIOS data area's cursor bytes.
    unsafe { core::ptr::write_volatile(linear as *mut u8, v) }
}

/// Write `text` on its own line at the BIOS cursor of the active page, in a text mode only (a
/// graphics mode's memory is not character cells), scrolling the page when at its bottom, and
/// move the cursor (BDA and CRT controller) below it, as INT 10h teletype output would.
fn screen_line(text: &[u8]) {
    const ATTR: u8 = 0x0C; // light red on black, as stage2 shows errors
    let mode = peek8(0x449) & 0x7F;
    let base: u32 = match mode {
        0..=3 => 0xB8000,
        7 => 0xB0000,
        _ => return,
    };
    let cols = peek16(0x44A) as u32;
    let rows = match peek8(0x484) as u32 + 1 {
        r @ 2..=60 => r,
        _ => 25,
    };
    if !(20..=132).contains(&cols) {
        return;
    }
    let page = (peek8(0x462) & 7) as u32;
    let page_base = base + peek16(0x44E) as u32;
    let cursor_at = 0x450 + 2 * page;
    let (mut col, mut row) = (peek8(cursor_at) as u32, peek8(cursor_at + 1) as u32);
    let cell = |row: u32, col: u32| (page_base + 2 * (row * cols + col)) as *mut u16;
    const BLANK: u16 = 0x0720;
    let newline = |row: &mut u32, col: &mut u32| {
        *col = 0;
        if *row + 1 < rows {
            *row += 1;
            return;
        }
        // SAFETY: the cells of this page of text-mode video memory, inside the page (rows x cols
        // from the page's start, which the BIOS keeps inside the 32 KiB text window).
        unsafe {
            for i in 0..(rows - 1) * cols {
                let v = core::ptr::read_volatile(cell(0, i + cols));
                core::ptr::write_volatile(cell(0, i), v);
            }
            for c in 0..cols {
                core::ptr::write_volatile(cell(rows - 1, c), BLANK);
            }
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
        // SAFETY: a cell of the page, as above (row < rows, col < cols).
        unsafe { core::ptr::write_volatile(cell(row, col), (ATTR as u16) << 8 | b as u16) };
        col += 1;
    }
    newline(&mut row, &mut col);
    poke8(cursor_at, col as u8);
    poke8(cursor_at + 1, row as u8);
    if page == peek8(0x462) as u32 {
        let crtc = peek16(0x463);
        let pos = (peek16(0x44E) as u32 / 2 + row * cols + col) as u16;
        // SAFETY: the CRT controller's cursor location registers (0Eh/0Fh) at the port the BIOS
        // recorded (3D4h colour, 3B4h mono); nothing else is changed.
        if crtc == 0x3D4 || crtc == 0x3B4 {
            unsafe {
                core::arch::asm!("out dx, al", in("dx") crtc, in("al") 0x0Eu8, options(nomem, nostack));
                core::arch::asm!("out dx, al", in("dx") crtc + 1, in("al") (pos >> 8) as u8, options(nomem, nostack));
                core::arch::asm!("out dx, al", in("dx") crtc, in("al") 0x0Fu8, options(nomem, nostack));
                core::arch::asm!("out dx, al", in("dx") crtc + 1, in("al") pos as u8, options(nomem, nostack));
            }
        }
    }
}
