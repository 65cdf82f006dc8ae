//! A panic in stage2 (an allocation failure is one: the default alloc error handler panics) is
//! never a halt while going back to the menu is safe: the panic handler says what happened, the
//! menu session is abandoned, and the menu starts again with a fresh heap.
//!
//! How: [`menu_forever`] runs each menu session (the boot disk probed, grub.cfg read, the menu
//! loop, and any entry booted from it) under a [`RecoveryPoint`]. The panic handler ([`panic`])
//! prints `vboot: internal error: ...` and escapes to that point: the stack is reset to
//! `menu_forever`'s frame and every frame of the session is abandoned without running a
//! destructor. Then the whole heap is initialised again ([`crate::heap::reset`]): nothing of the
//! session is reachable any more (statics hold no heap memory), so nothing leaks, even when the
//! heap was exhausted, and the allocator's own lock and lists are fresh, even if the panic came
//! from inside the allocator. After a key, the menu is shown again with the abandoned entry
//! highlighted and no countdown.
//!
//! State that outlives a session, and why it is consistent after a panic:
//! - The heap: reset whole, as above. (linked_list_allocator's `LockedHeap` releases its spin lock
//!   before returning null, so an allocation failure never leaves it locked; a panic inside the
//!   allocator could, hence `force_unlock` before the reset.)
//! - The console: its row/column are kept in range by every write, and the panic handler sets
//!   the colour it prints with.
//! - Statics: `HEAP_*`, `ENGINE_LBA`, the IDT and the console are written before the first
//!   session and never again (the console's position aside); this module's own state is atomics,
//!   written before the point is armed or inside the panic handler. The claim on the memory above
//!   the heap (highmem.rs) is released with the heap: the region that held it was abandoned.
//! - The CPU and the BIOS: panics happen in protected mode between BIOS calls (the real-mode
//!   thunk is assembly and cannot panic), with interrupts off as always in protected mode, so
//!   nothing is left half-done in real mode. Fixed low-memory buffers are rewritten before use.
//! - Host disk writes: an entry abandoned between writes to the host filesystem (`reserve=`
//!   growth, `take_snapshot=` and its grub.cfg rewrite) leaves it as a power cut at that point
//!   would; those writes are ordered for that (prepare.rs), and the next session reads the
//!   filesystem and grub.cfg afresh.
//! - Memory prepared for the resident engine (its copy at the top of RAM, the stub below
//!   640 KiB) is neither reserved nor hooked until `go_resident` writes the vectors, so it is
//!   simply overwritten by the next attempt. (`engine_init` may already have pointed INT 1Eh at
//!   the stub's floppy table; a later boot of a floppy rewrites it.)
//!
//! Once the INT 13h/15h vectors point at the stub, going back is not safe: drive 80h is the
//! image and the real disk has moved, the engine's memory is hidden from the BIOS's map, and
//! the engine may have written to the image. A panic then is reported and ends in
//! [`crate::fatal`] (a key reboots), as every panic did before; so does a panic while a panic is
//! being reported.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::catch::RecoveryPoint;
use crate::console::{self, ATTR_ERROR, ATTR_NORMAL};
use crate::println;

/// Where a panic in a menu session goes back to.
static POINT: RecoveryPoint = RecoveryPoint::new();
/// Panics since the last successful recovery: 1 while one is being reported.
static PANICS: AtomicU32 = AtomicU32::new(0);
/// The INT 13h and INT 15h vectors before any session ran (stage2 hooks nothing else).
static INT13_BEFORE: AtomicU32 = AtomicU32::new(0);
static INT15_BEFORE: AtomicU32 = AtomicU32::new(0);
/// An entry is being booted; its path (top level first) is in `ENTRY_PATH`.
static IN_ENTRY: AtomicBool = AtomicBool::new(false);
const PATH_MAX: usize = 8;
static ENTRY_PATH: [AtomicUsize; PATH_MAX] = [const { AtomicUsize::new(0) }; PATH_MAX];
static ENTRY_PATH_LEN: AtomicUsize = AtomicUsize::new(0);

fn vector(n: u32) -> u32 {
    crate::lowmem::read_u32(n * 4)
}

/// Whether the resident hook is installed: INT 13h or INT 15h no longer where the BIOS put it.
pub fn hooked() -> bool {
    vector(0x13) != INT13_BEFORE.load(Ordering::SeqCst) || vector(0x15) != INT15_BEFORE.load(Ordering::SeqCst)
}

/// Run menu sessions for ever: `session` runs until it boots a guest (it never returns); a
/// panic inside it is reported by [`panic`] and lands here, and a new session starts, given
/// the path of the entry that was being booted, if any.
pub fn menu_forever(session: impl Fn(Option<&[usize]>)) -> ! {
    INT13_BEFORE.store(vector(0x13), Ordering::SeqCst);
    INT15_BEFORE.store(vector(0x15), Ordering::SeqCst);
    let mut resume: heapless::Vec<usize, PATH_MAX> = heapless::Vec::new();
    loop {
        let path = if resume.is_empty() { None } else { Some(&resume[..]) };
        // Returns only when a panic escaped to this point.
        let _ = POINT.run(|| session(path));
        // The heap first: the session's memory is unreachable now, and the allocator may be
        // in any state.
        // SAFETY: the session's frames are abandoned and statics hold no heap memory, so nothing
        // alive points into the heap.
        unsafe { crate::heap::reset() };
        // A region above the heap that the session held (highmem.rs) was abandoned with it.
        crate::highmem::release_abandoned();
        resume.clear();
        if IN_ENTRY.swap(false, Ordering::SeqCst) {
            let len = ENTRY_PATH_LEN.load(Ordering::SeqCst);
            for slot in &ENTRY_PATH[..len] {
                let _ = resume.push(slot.load(Ordering::SeqCst));
            }
        }
        console::set_attr(ATTR_NORMAL);
        println!("Press any key to return to the menu.");
        crate::wait_key();
        PANICS.store(0, Ordering::SeqCst);
    }
}

/// The menu is about to boot the entry at `path`.
pub fn booting(path: &[usize]) {
    let len = path.len().min(PATH_MAX);
    for (slot, &i) in ENTRY_PATH.iter().zip(&path[..len]) {
        slot.store(i, Ordering::SeqCst);
    }
    // A path too deep to keep is not resumed (the menu shows its default selection instead).
    ENTRY_PATH_LEN.store(if path.len() <= PATH_MAX { len } else { 0 }, Ordering::SeqCst);
    IN_ENTRY.store(true, Ordering::SeqCst);
}

/// The entry being booted failed with an error and the menu takes over again.
pub fn boot_failed() {
    IN_ENTRY.store(false, Ordering::SeqCst);
}

/// The panic handler's work (main.rs): report, then go back to the menu or stop.
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    let nested = PANICS.fetch_add(1, Ordering::SeqCst);
    if nested >= 2 {
        // Reporting the last panic panicked too: stop without another word.
        crate::machine::halt()
    }
    // The panic may have cut a menu drawing short, inside an inverse-video sequence.
    console::with(|c| c.serial_write("\x1b[0m"));
    console::set_attr(ATTR_ERROR);
    if nested == 1 {
        println!("\nvboot: internal error while handling an internal error: {}", info.message());
        crate::fatal("this is a bug in vboot; please report the messages above");
    }
    println!("\nvboot: internal error: {}", info.message());
    if let Some(at) = info.location() {
        // The last directory is enough to find the file (the rest is the build machine's).
        let file = at.file();
        let slash = |end: usize| file.as_bytes()[..end].iter().rposition(|&c| c == b'/');
        let short = &file[slash(file.len()).and_then(slash).map_or(0, |i| i + 1)..];
        // stage2 is built with -Zlocation-detail=file (stage2/.cargo/config.toml: one location per
        // file instead of one per line saves 25 KiB), so the line is 0: name the file alone.
        if at.line() == 0 {
            println!("  in {}", short);
        } else {
            println!("  at {}:{}", short, at.line());
        }
    }
    crate::fault::while_reporting();
    if !POINT.is_armed() {
        crate::fatal("this is a bug in vboot; please report the message above");
    }
    if hooked() {
        crate::fatal(
            "the image's INT 13h hook is already installed, so going back to the menu is not safe; \
             this is a bug in vboot, please report the message above",
        );
    }
    // Not "a bug" here: an allocation failure may just be too little memory for this entry.
    if IN_ENTRY.load(Ordering::SeqCst) {
        println!("vboot: the menu entry was abandoned; the menu comes back.");
    } else {
        println!("vboot: the menu starts again.");
    }
    console::set_attr(ATTR_NORMAL);
    // SAFETY: the point is armed, and we are on the stack of the session it runs (stage2 has one
    // stack, and the panic handler runs on top of the panicking code).
    unsafe { POINT.escape() }
}
