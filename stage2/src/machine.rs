//! The processor's own instructions and its I/O ports: the only firmware code that executes `in`,
//! `out`, `hlt` and `rdtsc`. Each safe function here drives one device at its fixed port (or, for
//! the cursor, one of the two the BIOS may record), so no caller can write to an arbitrary port.
//! Shared by stage2 and the engine (which includes this file by path).

use core::arch::asm;

/// The first serial port's data register; its line status register is at +5.
const COM1: u16 = 0x3F8;
const COM1_LINE_STATUS: u16 = COM1 + 5;
/// The keyboard controller's command port.
const KEYBOARD_CONTROLLER: u16 = 0x64;
/// The CRT controller's index port, colour and monochrome (its data port follows it).
const CRTC_COLOUR: u16 = 0x3D4;
const CRTC_MONO: u16 = 0x3B4;

/// # Safety
/// `port` must be one of the device registers named above, read for what that device defines.
unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller names the port; `in` touches no memory.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// `port` must be one of the device registers named above, written as that device defines.
unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller names the port and the value; `out` touches no memory.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

/// Program COM1 for polled 115200 baud 8N1 with its FIFO on. Whether a UART answers there (a
/// missing one reads back FFh from its line status register).
pub fn com1_init() -> bool {
    // SAFETY: COM1's registers, written in the order its 16550 programming model asks for; no
    // interrupt is enabled.
    unsafe {
        outb(COM1 + 1, 0x00); // no interrupts: we poll
        outb(COM1 + 3, 0x80); // divisor latch
        outb(COM1, 0x01); // 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xC7); // FIFO on
        outb(COM1 + 4, 0x03);
    }
    com1_line_status() != 0xFF
}

/// COM1's line status register: bit 0 a byte is waiting, bit 5 the transmitter takes a byte.
pub fn com1_line_status() -> u8 {
    // SAFETY: reading the line status register has no side effect on the UART.
    unsafe { inb(COM1_LINE_STATUS) }
}

/// Hand COM1 a byte to send (the caller waited for line status bit 5).
pub fn com1_send(b: u8) {
    // SAFETY: COM1's transmit register; a missing UART ignores the write.
    unsafe { outb(COM1, b) }
}

/// The byte COM1 received (the caller saw line status bit 0).
pub fn com1_receive() -> u8 {
    // SAFETY: COM1's receive register; reading it takes the byte from the UART.
    unsafe { inb(COM1) }
}

/// Move the text-mode cursor to cell `pos` through the CRT controller at `crtc` (3D4h colour,
/// 3B4h monochrome; any other port is left alone).
pub fn set_cursor(crtc: u16, pos: u16) {
    if crtc != CRTC_COLOUR && crtc != CRTC_MONO {
        return;
    }
    // SAFETY: the CRT controller's cursor location registers (0Eh high, 0Fh low) at one of its two
    // standard ports (checked above); nothing else is changed.
    unsafe {
        outb(crtc, 0x0F);
        outb(crtc + 1, pos as u8);
        outb(crtc, 0x0E);
        outb(crtc + 1, (pos >> 8) as u8);
    }
}

/// Ask the keyboard controller to reset the machine (it pulses the processor's reset line).
pub fn reboot() -> ! {
    // SAFETY: command FEh to the keyboard controller: resetting the machine is what is asked.
    unsafe { outb(KEYBOARD_CONTROLLER, 0xFE) };
    halt()
}

/// Stop the processor for good (interrupts off).
pub fn halt() -> ! {
    loop {
        // SAFETY: stopping the processor is what is asked; with interrupts off nothing resumes it.
        unsafe { asm!("cli; hlt") };
    }
}

/// The processor's time-stamp counter.
pub fn timestamp() -> u64 {
    // SAFETY: RDTSC exists on every CPU that runs the firmware (i686) and only reads the counter.
    unsafe { core::arch::x86::_rdtsc() }
}
