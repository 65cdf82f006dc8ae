//! vboot stage2: entered in real mode by stage1, switches to protected mode (entry.s) and runs
//! `stage2_main`. A thin shell around the core library: it owns the hardware (console, BIOS
//! disks, memory) and asks `vboot` for everything else.
#![no_std]
#![no_main]

extern crate alloc;

mod bios;
mod catch;
mod console;
mod disk;
mod fault;
mod handoff;
mod heap;
mod highmem;
mod idt;
mod images;
// Shared with the engine (which includes it by path); each program uses part of it.
#[allow(dead_code)]
mod lowmem;
mod machine;
mod memmap;
mod prepare;
mod recovery;

use core::sync::atomic::Ordering;
use vboot::block::SECTOR_BYTES;
use vboot::install::StagePatch;

// The register block's offsets (vboot::realmode, src/realmode.rs) and the stub's header offsets
// (vboot::stub, src/stub.rs) are defined once in the core; regs.s turns the first into the R_*
// symbols that entry.s and stub.s both use.
core::arch::global_asm!(
    include_str!("regs.s"),
    include_str!("entry.s"),
    include_str!("stub.s"),
    S_INT13_OFF = const vboot::stub::offset::INT13_OFF,
    S_INT15_OFF = const vboot::stub::offset::INT15_OFF,
    S_TOTAL_BYTES = const vboot::stub::offset::TOTAL_BYTES,
    S_BOUNCE_OFF = const vboot::stub::offset::BOUNCE_OFF,
    S_OLD13 = const vboot::stub::offset::OLD13,
    S_OLD15 = const vboot::stub::offset::OLD15,
    S_PM_ENTRY = const vboot::stub::offset::PM_ENTRY,
    S_PM_RESUME = const vboot::stub::offset::PM_RESUME,
    S_BACK16 = const vboot::stub::offset::BACK16,
    S_BIOS16 = const vboot::stub::offset::BIOS16,
    S_RM_BACK = const vboot::stub::offset::RM_BACK,
    S_RM_BIOS = const vboot::stub::offset::RM_BIOS,
    S_GDT_DESC = const vboot::stub::offset::GDT_DESC,
    S_GDT = const vboot::stub::offset::GDT,
    S_ENGINE_ESP = const vboot::stub::offset::ENGINE_ESP,
    S_RM_SP = const vboot::stub::offset::RM_SP,
    S_BUSY = const vboot::stub::offset::BUSY,
    S_GUEST_SS = const vboot::stub::offset::GUEST_SS,
    S_GUEST_SP = const vboot::stub::offset::GUEST_SP,
    S_SAVED_IDT = const vboot::stub::offset::SAVED_IDT,
    S_BIOS_TARGET = const vboot::stub::offset::BIOS_TARGET,
    S_FRAME = const vboot::stub::offset::FRAME,
    S_VECTOR = const vboot::stub::offset::VECTOR,
    S_GUEST_FS = const vboot::stub::offset::GUEST_FS,
    S_BREGS = const vboot::stub::offset::BREGS,
    S_ENGINE_SAVED_ESP = const vboot::stub::offset::ENGINE_SAVED_ESP,
    S_GUEST_GS = const vboot::stub::offset::GUEST_GS,
    S_GUEST_ESP_HI = const vboot::stub::offset::GUEST_ESP_HI,
    S_CALLS = const vboot::stub::offset::CALLS,
    S_DAP = const vboot::stub::offset::DAP,
    S_DISKETTE_TABLE = const vboot::stub::offset::DISKETTE_TABLE,
    S_FAST_RUN = const vboot::stub::offset::FAST_RUN,
    S_FAST_CALLS = const vboot::stub::offset::FAST_CALLS,
    S_ENGINE_BIOS_CALLS = const vboot::stub::offset::ENGINE_BIOS_CALLS,
    F_FLAGS = const vboot::stub::fast_run_offset::FLAGS,
    F_GUEST_DRIVE = const vboot::stub::fast_run_offset::GUEST_DRIVE,
    F_HOST_DRIVE = const vboot::stub::fast_run_offset::HOST_DRIVE,
    F_SECTORS = const vboot::stub::fast_run_offset::SECTORS,
    F_FIRST_LBA = const vboot::stub::fast_run_offset::FIRST_LBA,
    F_HOST_LBA = const vboot::stub::fast_run_offset::HOST_LBA,
    BOUNCE_BYTES = const vboot::stub::BOUNCE_BYTES,
    FAST_RUN_VALID = const vboot::stub::FAST_RUN_VALID,
    FAST_RUN_WRITABLE = const vboot::stub::FAST_RUN_WRITABLE,
    S_CODE = const vboot::stub::CODE_OFFSET,
    R_EAX = const vboot::realmode::regs_offset::EAX,
    R_EBX = const vboot::realmode::regs_offset::EBX,
    R_ECX = const vboot::realmode::regs_offset::ECX,
    R_EDX = const vboot::realmode::regs_offset::EDX,
    R_ESI = const vboot::realmode::regs_offset::ESI,
    R_EDI = const vboot::realmode::regs_offset::EDI,
    R_EBP = const vboot::realmode::regs_offset::EBP,
    R_DS = const vboot::realmode::regs_offset::DS,
    R_ES = const vboot::realmode::regs_offset::ES,
    R_FLAGS = const vboot::realmode::regs_offset::FLAGS,
    R_SIZE = const vboot::realmode::regs_offset::SIZE,
    options(att_syntax)
);

extern "C" {
    /// The end of stage2's high part (code, data, .bss) above 1 MiB, 4 KiB-aligned (linker.ld).
    static _stage2_high_end: u8;
    /// Sectors of stage2.bin in all: the engine follows them on disk (linker.ld).
    static __stage2_sectors: u8;
    /// Sectors of stage2's low part, the part stage1 loads (linker.ld).
    static __stage2_low_sectors: u8;
}

/// A linker-defined constant: its "address" is its value.
fn linker_value(symbol: *const u8) -> u32 {
    symbol as u32
}

/// The most heap stage2 takes, from the usable memory at 1 MiB.
const HEAP_MAX_BYTES: u32 = 64 << 20;


pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[no_mangle]
extern "C" fn cpu_exception(frame: &idt::ExceptionFrame) -> ! {
    // No allocation here: the exception may come before the heap exists.
    console::set_attr(console::ATTR_ERROR);
    println!(
        "\nvboot: CPU exception {} (error code {:#x}) at EIP {:#010x}, CS {:#x}, EFLAGS {:#x}",
        frame.vector,
        frame.error_code,
        frame.eip,
        frame.cs,
        frame.eflags
    );
    fatal("this is a bug in vboot; please report the line above")
}

#[no_mangle]
pub extern "C" fn stage2_main(drive: u32, patch_ptr: u32, a20_ok: u32) -> ! {
    idt::load();
    console::with(|c| c.init());
    if option_env!("VBOOT_TEST_EXCEPTION").is_some() {
        // SAFETY: a test build's deliberate invalid opcode: `cpu_exception` takes over for good.
        unsafe { core::arch::asm!("ud2") };
    }
    // Before anything uses low memory: the command line the setup code left there.
    if lkrn::started() {
        lkrn::save_command_line();
    }
    println!("vboot {} - boots operating systems from virtual disk files", VERSION);
    if a20_ok == 0 {
        fatal("the A20 line could not be enabled; memory above 1 MiB is unusable");
    }

    let map = memmap::read();
    println!("Memory map ({}), conventional memory {} KiB:", map.source, memmap::conventional_kib());
    for r in map.regions.iter() {
        println!(
            "  {:#011x} - {:#011x}  {:>8} KiB  {}",
            r.base,
            r.base + r.length,
            r.length / 1024,
            memmap::MemoryMap::kind_name(r.kind)
        );
    }
    let Some((ext_base, ext_bytes)) = map.extended_at_1mib() else {
        fatal("no usable memory at 1 MiB in the memory map");
    };
    // From 1 MiB: the protected-mode stack, then stage2's own high part (linker.ld), and as
    // vboot.lkrn the engine (entry.s).
    let heap_base = match lkrn::engine_place() {
        Some((at, bytes)) => (at + bytes).next_multiple_of(4096),
        None => linker_value(&raw const _stage2_high_end),
    };
    let heap_bytes = ext_base.saturating_add(ext_bytes).saturating_sub(heap_base);
    // At most half the range: the top stays free for the resident engine.
    let heap_bytes = heap_bytes.min(HEAP_MAX_BYTES).min(heap_bytes / 2);
    if heap_bytes < (4 << 20) {
        fatal("vboot needs at least 4 MiB of memory above 1 MiB");
    }
    // SAFETY: the range is usable RAM per the BIOS and nothing else in stage2 uses it.
    unsafe { heap::init(heap_base, heap_bytes) };

    let drive = drive as u8;
    let count = disk::hard_disk_count();
    if lkrn::started() {
        // No boot disk yet: grub.cfg's disk becomes it (lkrn.rs).
        println!("BIOS hard disks: {}", count);
    } else {
        println!("BIOS hard disks: {} (booted from {:#04x})", count, drive);
    }
    for n in 0..count.min(16) {
        let d = 0x80 + n;
        match disk::BiosDisk::probe(d) {
            Some(bd) => {
                let mib = bd.sectors * SECTOR_BYTES as u64 >> 20;
                match bd.chs {
                    Some(g) => println!(
                        "  {:#04x}: {} sectors ({} MiB), {}, CHS {}/{}/{}",
                        d,
                        bd.sectors,
                        mib,
                        if bd.edd { "EDD" } else { "no EDD" },
                        g.cylinders,
                        g.heads,
                        g.sectors_per_track
                    ),
                    None => println!("  {:#04x}: {} sectors ({} MiB), {}", d, bd.sectors, mib, if bd.edd { "EDD" } else { "no EDD" }),
                }
            }
            None => println!("  {:#04x}: not answering", d),
        }
    }

    if lkrn::started() {
        lkrn::describe();
    } else {
        show_stage1_load(patch_ptr);
    }

    // Everything from here allocates on the heap only inside a session: a panic abandons the
    // session, the heap starts afresh, and a new session shows the menu again (recovery.rs).
    recovery::menu_forever(|resume| {
        if lkrn::started() {
            // No install record: vboot.lkrn was not installed on a disk (lkrn.rs).
            let mut boot_disk = loop {
                match lkrn::boot_disk() {
                    Ok(d) => break d,
                    Err(e) => {
                        screen::show_error(&e);
                        println!("Press any key to try again.");
                        wait_key();
                    }
                }
            };
            boot::run(&mut boot_disk, None, resume)
        }
        let Some(mut boot_disk) = disk::BiosDisk::probe(drive) else {
            fatal("the boot disk does not answer INT 13h");
        };
        let record = vboot::install::read_installed(&mut boot_disk).map(|(r, _)| r);
        match &record {
            Ok(r) => println!(
                "Install record: grub.cfg partition {}",
                if r.config_partition == 0 { alloc::string::String::from("auto") } else { alloc::format!("{}", r.config_partition) }
            ),
            Err(e) => println!("Install record: {} (using defaults)", e),
        }
        boot::run(&mut boot_disk, record.ok(), resume)
    })
}

mod boot;
mod chainload;
mod entry;
mod guest;
mod host;
mod lkrn;
mod screen;
mod recover;
mod media;
mod resident;

/// Where stage1 found stage2 (its patch area) and so the engine after it.
fn show_stage1_load(patch_ptr: u32) {
    let patch = read_patch(patch_ptr);
    let stage2_sectors = linker_value(&raw const __stage2_sectors);
    println!(
        "stage2 loaded from LBA {} ({} sectors, {} of them by stage1) by {} reads",
        { patch.stage2_lba },
        stage2_sectors,
        linker_value(&raw const __stage2_low_sectors),
        if bios::stage1_used_lba() { "LBA" } else { "CHS" }
    );
    resident::ENGINE_LBA.store({ patch.stage2_lba } + stage2_sectors as u64, Ordering::SeqCst);
}

fn read_patch(patch_ptr: u32) -> StagePatch {
    let mut sector = [0u8; SECTOR_BYTES];
    // stage1 is still at 0x7C00; patch_ptr points into it.
    if (0x7C00..0x7E00).contains(&patch_ptr) {
        lowmem::read(0x7C00, &mut sector);
    }
    StagePatch::read(&sector)
}

/// Show a message on both consoles, wait for a key, reboot. Never returns, never triple-faults.
pub fn fatal(message: &str) -> ! {
    console::set_attr(console::ATTR_ERROR);
    println!("\nvboot: fatal error: {}", message);
    console::set_attr(console::ATTR_NORMAL);
    println!("Press any key to reboot.");
    wait_key();
    machine::reboot()
}

/// Block until a key arrives on the keyboard or the serial line; returns its ASCII byte.
pub fn wait_key() -> u8 {
    loop {
        if let Some((_, ascii)) = console::keyboard_key() {
            return ascii;
        }
        if let Some(b) = console::with(|c| c.serial_read()) {
            return b;
        }
        bios::sleep_micros(10_000);
    }
}

/// A bug, or an allocation that failed: back to the menu when that is safe (recovery.rs).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    recovery::panic(info)
}
