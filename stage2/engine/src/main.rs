//! vboot's resident engine. stage2 copies it to the top of usable RAM (hidden from the guest
//! through E820/E801/88h), relocates it, calls `engine_init` with the plan, and hooks INT 13h
//! and INT 15h to the real-mode stub, which enters `engine_dispatch` for every call that needs
//! it. A thin shell: the INT 13h semantics are `vboot::int13`, this crate supplies guest memory,
//! host-disk I/O through the original BIOS, and the memory map.
#![no_std]
#![no_main]

extern crate alloc;

mod chain;
mod exception;
mod fault;
mod guest;
mod hostdisk;
mod overlay;
mod recover;
mod report;
mod stub;

// Shared with stage2: the first MiB (lowmem.rs) and the processor and its ports (machine.rs),
// the engine's only ways to low memory and to I/O ports besides its BIOS thunk (stub.rs).
#[allow(dead_code)]
#[path = "../../src/lowmem.rs"]
mod lowmem;
#[allow(dead_code)]
#[path = "../../src/machine.rs"]
mod machine;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::LockedHeap;
use vboot::int13::{self, CdEmulation, DriveKind, DriveSet, FloppyFormat, GuestMemory, Regs};
use vboot::resident::{ah88_value, e801_values, E820Entry, Plan, PlannedKind};

use crate::guest::FlatMemory;
use crate::stub::{Stub, Vector};

// The stub's header offsets are defined once, in vboot::stub (src/stub.rs).
core::arch::global_asm!(
    include_str!("entry.s"),
    S_BACK16 = const vboot::stub::offset::BACK16,
    S_BIOS16 = const vboot::stub::offset::BIOS16,
    S_ENGINE_SAVED_ESP = const vboot::stub::offset::ENGINE_SAVED_ESP,
    S_GDT_DESC = const vboot::stub::offset::GDT_DESC,
    options(att_syntax)
);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

extern "C" {
    fn engine_pm_entry();
    fn engine_pm_resume();
}

use vboot::stub::EngineHeader;

#[link_section = ".engine_header"]
#[no_mangle]
#[used]
pub static engine_header: EngineHeader = EngineHeader {
    magic: vboot::stub::ENGINE_MAGIC,
    version: vboot::stub::ENGINE_HEADER_VERSION,
    init: engine_init,
    pm_entry: engine_pm_entry,
    pm_resume: engine_pm_resume,
};

struct State {
    drives: DriveSet<'static>,
    memory_map: Vec<E820Entry>,
    /// Each emulated drive's number and the BIOS's number for its host disk.
    host_drives: Vec<(u8, u8)>,
}

/// The engine's state: set by engine_init, then used by one call at a time.
struct StateCell(UnsafeCell<Option<State>>);
// SAFETY: the engine is single-threaded and serves one interrupt at a time (the stub chains a
// call that comes in meanwhile to the BIOS); `with_state` refuses a second borrow besides.
unsafe impl Sync for StateCell {}
static STATE: StateCell = StateCell(UnsafeCell::new(None));
/// A `with_state` borrow is alive.
static STATE_IN_USE: AtomicBool = AtomicBool::new(false);

/// Run `f` with the engine's state; the borrow lasts for the call only, and a second one while
/// it lasts is a bug (a panic).
fn with_state<R>(f: impl FnOnce(&mut Option<State>) -> R) -> R {
    assert!(!STATE_IN_USE.swap(true, Ordering::SeqCst), "the engine's state is in use already");
    // SAFETY: STATE_IN_USE was clear, so no other reference to the state exists (one that a
    // panic abandoned was given up by `state_abandoned`), and it stays set while this one lives.
    let result = f(unsafe { &mut *STATE.0.get() });
    STATE_IN_USE.store(false, Ordering::SeqCst);
    result
}

/// A panic escaped from a call that may have been using the state (recover.rs): its frames are
/// abandoned, and their borrow with them.
pub fn state_abandoned() {
    STATE_IN_USE.store(false, Ordering::SeqCst);
}

struct MessageBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for MessageBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Set up the drives from stage2's plan. Returns 0, or the length of an error message written
/// to `msg` (also when the engine panicked: recover.rs).
///
/// # Safety
/// As vboot::stub::EngineInit says: `plan` holds `plan_len` bytes and `msg` `msg_cap`, both
/// valid for the call; `heap` is `heap_len` bytes that are the engine's alone from now on;
/// `stub_linear` is the installed stub.
unsafe extern "C" fn engine_init(
    plan: *const u8,
    plan_len: u32,
    heap: *mut u8,
    heap_len: u32,
    stub_linear: u32,
    msg: *mut u8,
    msg_cap: u32,
) -> u32 {
    // stage2's IDT comes back when this returns; an exception in between is the engine's.
    let _stage2_idt = exception::Saved::take();
    // SAFETY: stage2's message buffer, valid and unused by anything else for the call (above).
    let msg = unsafe { core::slice::from_raw_parts_mut(msg, msg_cap as usize) };
    // SAFETY: the heap range is the engine's alone (above), inside its region at the top of RAM.
    unsafe { HEAP.lock().init(heap, heap_len as usize) };
    // SAFETY: the plan's bytes, valid and unchanged for the call (above).
    let bytes = unsafe { core::slice::from_raw_parts(plan, plan_len as usize) };
    // SAFETY: stage2 passes the stub it installed (above).
    let stub = unsafe { Stub::at(stub_linear) };
    let status = recover::guard_init(msg, |msg| init(bytes, stub, msg));
    // stage2's buffer is stage2's again; every later call goes through the stub's own.
    hostdisk::return_init_bounce();
    status
}

fn init(bytes: &[u8], stub: Stub, msg: &mut [u8]) -> u32 {
    let mut out = MessageBuf { buf: msg, len: 0 };
    let plan = match Plan::from_bytes(bytes) {
        Ok(p) => p,
        Err(e) => {
            let _ = write!(out, "engine: bad plan: {}", e);
            return out.len as u32;
        }
    };
    if let Err(e) = guest::set_own_ranges(&plan.vboot_ranges) {
        let _ = write!(out, "{}", e);
        return out.len as u32;
    }
    fault::at_init(&plan);
    if plan.init_bounce_bytes != 0 {
        hostdisk::lend_init_bounce(plan.init_bounce_linear, plan.init_bounce_bytes);
    }
    let mut drives = DriveSet::new();
    // Sectors per track of the first emulated floppy: the INT 1Eh table is written for it.
    let mut diskette_table: Option<u8> = None;
    for d in &plan.drives {
        let io = hostdisk::HostIo { stub, host_drive: d.host_drive };
        // One raw file: the direct path. Anything else is a chain for the image layer.
        let raw = d.layers.len() == 1 && d.layers[0].format == vboot::resident::PlannedFormat::Raw;
        let disk: Result<Box<dyn vboot::int13::EmulatedDisk>, String> = if raw {
            hostdisk::RawFile::new(io, d).map(|f| Box::new(f) as Box<dyn vboot::int13::EmulatedDisk>)
        } else {
            chain::ChainDisk::open(io, d, plan.parent_dir.clone()).and_then(|mut f| {
                if plan.restore && d.number == 0x80 {
                    f.restore()?;
                }
                Ok(Box::new(f) as Box<dyn vboot::int13::EmulatedDisk>)
            })
        };
        let disk = match disk {
            Ok(f) => f,
            Err(e) => {
                let _ = write!(out, "{}", e);
                return out.len as u32;
            }
        };
        let kind = match d.kind {
            PlannedKind::HardDisk => DriveKind::HardDisk,
            PlannedKind::Floppy => {
                let bytes = disk.block_count() * 512;
                let Some(format) = FloppyFormat::from_size(bytes) else {
                    let _ = write!(out, "drive {:#04x}: {} bytes is no floppy size", d.number, bytes);
                    return out.len as u32;
                };
                if diskette_table.is_none() {
                    diskette_table = Some(format.geometry.sectors_per_track as u8);
                }
                DriveKind::Floppy { drive_type: format.drive_type, parameter_table: stub.diskette_table() }
            }
            PlannedKind::Cdrom => DriveKind::Cdrom { boot: d.eltorito.unwrap_or_default() },
        };
        if let (Some(boot), PlannedKind::HardDisk | PlannedKind::Floppy) = (d.eltorito, d.kind) {
            drives.set_cd_emulation(CdEmulation { drive: d.number, boot });
        }
        let disk: Box<dyn vboot::int13::EmulatedDisk> =
            // CDs and CD boot images are read-only already (and a CD's blocks are not 512 bytes).
            // The overlay gets what stage2 sized for it, never more than is still free once the
            // image tables are in place (they were allocated when the chain was opened).
            if d.ram_overlay && !d.read_only {
                let free = HEAP.lock().free();
                Box::new(overlay::RamOverlay::new(disk, free.min(vboot::resident::IMMUTABLE_OVERLAY_BYTES as usize)))
            } else {
                disk
            };
        if let Err(e) = drives.add(d.number, kind, disk) {
            let _ = write!(out, "{}", e);
            return out.len as u32;
        }
    }
    if let Some(spt) = diskette_table {
        // DOS boot sectors copy the INT 1Eh table and patch its sectors-per-track byte; the
        // table lives in the hidden stub, so it survives the guest.
        stub.install_diskette_table(&vboot::int13::chs::diskette_parameter_table(spt));
    }
    drives.install_bda_counts(&mut FlatMemory);
    let host_drives = plan.drives.iter().map(|d| (d.number, d.host_drive)).collect();
    with_state(|state| *state = Some(State { drives, memory_map: plan.memory_map, host_drives }));
    0
}

/// Called by the stub (through engine_pm_entry) for every INT 13h and the INT 15h memory calls.
/// A panic while serving the call fails that call (recover.rs).
///
/// # Safety
/// `stub_linear` is the installed stub: the stub passes its own address (stub.s).
#[no_mangle]
unsafe extern "C" fn engine_dispatch(stub_linear: u32) {
    exception::load();
    // SAFETY: the stub's own address, as the caller guarantees.
    let stub = unsafe { Stub::at(stub_linear) };
    // Whatever this call does (a write that allocates, a panic), the stub must not go on
    // serving a run published before it.
    stub.clear_fast_run();
    hostdisk::forget_guest_mirror();
    recover::guard_dispatch(stub, || {
        let mut regs = stub.frame();
        with_state(|st| {
            let st = st.as_mut().unwrap_or_else(|| panic!("engine used before engine_init"));
            match stub.vector() {
                0x13 => int13_call(st, stub, &mut regs),
                0x15 => int15_call(st, stub, &mut regs),
                _ => {}
            }
        });
        // The last step: recover.rs relies on the frame being untouched until here.
        stub.set_frame(&regs);
    })
}

fn int13_call(st: &mut State, stub: Stub, regs: &mut Regs) {
    if cfg!(feature = "fault-injection") && st.drives.drives().iter().any(|d| d.number == regs.dl()) {
        fault::int13(regs.ah());
    }
    let mut mem = FlatMemory;
    st.drives.reassert_bda_counts(&mut mem);
    let before = *regs;
    let outcome = int13::handle(&mut st.drives, regs, &mut mem);
    // With fault injection every call must reach the engine, so nothing is published.
    if outcome == int13::Outcome::Handled && !cfg!(feature = "fault-injection") {
        if let Some((guest_drive, run)) = int13::fast_run_after(&mut st.drives, &before, regs, &mut mem) {
            if let Some(&(_, host_drive)) = st.host_drives.iter().find(|(n, _)| *n == guest_drive) {
                stub.publish_fast_run(guest_drive, host_drive, &run);
            }
        }
    }
    if let int13::Outcome::PassThrough { dl } = outcome {
        let before = *regs;
        regs.set_dl(dl);
        stub.call_bios(Vector::Int13, regs);
        let flags = regs.flags;
        st.drives.fixup_after_chain(&before, regs, &mut mem);
        regs.flags = (before.flags & !1) | (flags & 1);
    }
}

const SMAP: u32 = 0x534D_4150;

/// The memory calls answered from the map stage2 computed, with vboot's ranges reserved.
fn int15_call(st: &mut State, stub: Stub, regs: &mut Regs) {
    let map = &st.memory_map;
    if regs.eax == 0xE820 {
        let index = regs.ebx as usize;
        if regs.edx != SMAP || regs.ecx < 20 || index >= map.len() {
            regs.eax = (regs.eax & 0xFFFF_00FF) | 0x8600;
            regs.flags |= 1;
            return;
        }
        let e = map[index];
        let mut entry = [0u8; 24];
        entry[0..8].copy_from_slice(&e.base.to_le_bytes());
        entry[8..16].copy_from_slice(&e.length.to_le_bytes());
        entry[16..20].copy_from_slice(&e.kind.to_le_bytes());
        entry[20..24].copy_from_slice(&1u32.to_le_bytes());
        let size = if regs.ecx >= 24 { 24 } else { 20 };
        let dest = int13::linear(regs.es, regs.di());
        if FlatMemory.write(dest, &entry[..size]).is_err() {
            regs.flags |= 1;
            return;
        }
        regs.eax = SMAP;
        regs.ecx = size as u32;
        regs.ebx = if index + 1 < map.len() { (index + 1) as u32 } else { 0 };
        regs.flags &= !1;
        return;
    }
    if regs.ax() == 0xE801 {
        let (below16, above16) = e801_values(map);
        regs.set_ax(below16);
        regs.set_cx(below16);
        regs.set_bx(above16);
        regs.set_dx(above16);
        regs.flags &= !1;
        return;
    }
    if regs.ah() == 0x88 {
        regs.set_ax(ah88_value(map));
        regs.flags &= !1;
        return;
    }
    stub.call_bios(Vector::Int15, regs);
}
