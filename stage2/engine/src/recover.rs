//! Panics in the engine (an allocation failure is one) fail the request being served, not the
//! machine. The engine's `unsafe` for this lives here: the recovery point, the panic handler,
//! and its output to COM1 and to the text screen.
//!
//! - In [`guard_dispatch`] (every INT 13h/15h call the stub passes on): the panic handler prints
//!   `vboot engine: internal error: MESSAGE; the disk request failed` on COM1 and on the screen
//!   and escapes back to the guard, which fails that call the way a BIOS fails one: INT 13h gets
//!   AH = 20h "controller failure" (the engine stands where the disk controller would), CF set,
//!   the BDA last-status byte, and nothing counted as transferred (`vboot::int13::fail_call`);
//!   INT 15h gets AH = 86h "unsupported", CF set. The guest goes on, and the next call is served
//!   as usual.
//! - In [`guard_init`] (`engine_init`, called by stage2 before anything is hooked): the message
//!   goes back to stage2 as `engine_init`'s error, and stage2 shows it and returns to its menu.
//!   The engine is copied afresh for the next attempt, so nothing of this one survives.
//! - Anywhere else, or while a panic is being reported, or when the panic left the heap's lock
//!   taken (the allocator itself panicked, so its lists may be half-updated and the next
//!   allocation would spin for ever with interrupts off): the message, then the machine stops.
//!
//! What a recovered panic leaves behind: the frames between the guard and the panic are
//! abandoned without running destructors, so whatever heap memory they owned leaks (an
//! allocation that failed took nothing, so an allocation failure leaks only what the call had
//! allocated before it). State the call was updating in place (an image's in-memory tables in
//! the middle of an allocating write, say) stays as the panic left it; every later call still
//! goes through it.

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::stub::Stub;

#[path = "../../src/catch.rs"]
mod catch;

use catch::RecoveryPoint;

static POINT: RecoveryPoint = RecoveryPoint::new();
/// What the armed point guards: NOTHING, INIT or DISPATCH.
static GUARDING: AtomicU8 = AtomicU8::new(NOTHING);
const NOTHING: u8 = 0;
const INIT: u8 = 1;
const DISPATCH: u8 = 2;
/// Panics since the last recovery: 1 while one is being reported.
static PANICS: AtomicU32 = AtomicU32::new(0);
/// The vector of the call being served (13h or 15h), for the report.
static VECTOR: AtomicU8 = AtomicU8::new(0);

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
    fn as_bytes(&self) -> &[u8] {
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

/// The report of the last panic, kept for `guard_init` to hand to stage2.
struct Report(UnsafeCell<Line>);
// SAFETY: single-threaded; written only by the panic handler, read by a guard after the escape.
unsafe impl Sync for Report {}
static REPORT: Report = Report(UnsafeCell::new(Line::new()));

/// `engine_init`'s body under the recovery point. `f` returns 0 or the length of an error
/// message it wrote to `msg`; a panic inside it returns the panic's report, written to `msg`.
pub fn guard_init(msg: &mut [u8], f: impl FnOnce(&mut [u8]) -> u32) -> u32 {
    GUARDING.store(INIT, Ordering::SeqCst);
    let result = POINT.run(|| f(msg));
    GUARDING.store(NOTHING, Ordering::SeqCst);
    match result {
        Some(n) => n,
        None => {
            PANICS.store(0, Ordering::SeqCst);
            // SAFETY: the panic handler is done with REPORT (it escaped to `run` above).
            let report = unsafe { &*REPORT.0.get() }.as_bytes();
            let n = report.len().min(msg.len());
            msg[..n].copy_from_slice(&report[..n]);
            n as u32
        }
    }
}

/// One call from the stub under the recovery point: `f` reads the stub's register frame,
/// serves the call and writes the frame back as its very last step. After a panic the frame
/// still holds the caller's registers, and the call is failed in it here.
pub fn guard_dispatch(stub: Stub, f: impl FnOnce()) {
    VECTOR.store(stub.vector() as u8, Ordering::SeqCst);
    GUARDING.store(DISPATCH, Ordering::SeqCst);
    let served = POINT.run(f).is_some();
    GUARDING.store(NOTHING, Ordering::SeqCst);
    if served {
        return;
    }
    let mut regs = stub.frame();
    if stub.vector() == 0x13 {
        vboot::int13::fail_call(&mut regs, &mut crate::guest_memory(), vboot::int13::Status::CONTROLLER_FAILURE);
    } else {
        regs.set_ah(0x86);
        regs.flags |= 1;
    }
    stub.set_frame(&regs);
    PANICS.store(0, Ordering::SeqCst);
}

/// A bug, or an allocation that failed.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let nested = PANICS.fetch_add(1, Ordering::SeqCst);
    if nested >= 2 {
        halt();
    }
    let mut line = Line::new();
    if nested == 1 {
        describe(&mut line, "vboot engine: ", info);
        let _ = write!(line, "; while handling another one, so the machine is stopped");
        show(&line);
        halt();
    }
    let guarding = if POINT.is_armed() { GUARDING.load(Ordering::SeqCst) } else { NOTHING };
    match guarding {
        INIT => {
            // stage2 prints it after "vboot: ", like engine_init's other errors.
            describe(&mut line, "engine: ", info);
            let _ = write!(line, "; the drives could not be set up");
            // SAFETY: nothing else uses REPORT while the handler runs.
            unsafe { *REPORT.0.get() = line };
            crate::fault::while_reporting();
            // SAFETY: the point is armed and guards code on this very stack, below its frame.
            unsafe { POINT.escape() }
        }
        DISPATCH if !crate::HEAP.is_locked() => {
            describe(&mut line, "vboot engine: ", info);
            let what = if VECTOR.load(Ordering::SeqCst) == 0x15 { "the memory-map request failed" } else { "the disk request failed" };
            let _ = write!(line, "; {}", what);
            show(&line);
            crate::fault::while_reporting();
            // SAFETY: as above: armed, and the handler runs on the dispatch's stack.
            unsafe { POINT.escape() }
        }
        DISPATCH => {
            describe(&mut line, "vboot engine: ", info);
            let _ = write!(line, "; the engine's heap is damaged, so the machine is stopped");
            show(&line);
            halt();
        }
        _ => {
            describe(&mut line, "vboot engine: ", info);
            let _ = write!(line, "; the machine is stopped");
            show(&line);
            halt();
        }
    }
}

/// `PREFIXinternal error: MESSAGE (DIR/FILE:LINE)`, with the last directory of the file only.
fn describe(line: &mut Line, prefix: &str, info: &core::panic::PanicInfo) {
    let _ = write!(line, "{}internal error: {}", prefix, info.message());
    if let Some(at) = info.location() {
        let file = at.file();
        let slash = |end: usize| file.as_bytes()[..end].iter().rposition(|&c| c == b'/');
        let short = &file[slash(file.len()).and_then(slash).map_or(0, |i| i + 1)..];
        let _ = write!(line, " ({}:{})", short, at.line());
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
