//! Handing the machine to the guest: its boot sector at 0000:7C00, entered in real mode.

use alloc::format;
use alloc::string::String;

use crate::{bios, lowmem, println};
use vboot::part::handover::Handover;

/// A hard disk starts from its first sector, which must end in 55AA. `raw`: the file was read
/// as a raw image because it has no VHD, VMDK or VDI signature, which the message says, since
/// a damaged image file ends up here too.
pub fn check_boot_signature(sector: &[u8; 512], path: &str, raw: bool) -> Result<(), String> {
    if vboot::part::has_boot_signature(sector) {
        return Ok(());
    }
    Err(format!(
        "{} has no boot signature (55AA) in its first sector: it is not a bootable disk image \
         (an empty or unpartitioned image?){}",
        path,
        if raw { "; it was read as a raw image: no VHD, VMDK or VDI header was found in it" } else { "" }
    ))
}

/// Put the boot sector at 0000:7C00 and jump to it in real mode, as a BIOS would.
pub fn start_guest(sector: &[u8; 512], drive: u8) -> ! {
    println!("Starting the guest.");
    put_boot_sector(sector);
    bios::jump_real_mode(0, 0x7C00, drive)
}

/// A partition's boot sector, started as MBR code starts it: at 0000:7C00, with the partition
/// table where a relocated MBR has it and DS:SI at the partition's entry (`vboot::part::handover`).
pub fn start_partition_boot_sector(sector: &[u8; 512], drive: u8, handover: &Handover) -> ! {
    println!("Starting the boot sector.");
    put_boot_sector(sector);
    // After the last BIOS call: the table lies in stage2's scratch area below 0x0800.
    lowmem::write(vboot::part::handover::TABLE_ADDR, &handover.table);
    bios::jump_real_mode_with_si(0, 0x7C00, drive, handover.si)
}

fn put_boot_sector(sector: &[u8; 512]) {
    lowmem::write(0x7C00, sector);
    // Leave the BIOS cursor below our text, so the guest's output does not overwrite it.
    let mut r = bios::Regs { eax: 0x0200, ebx: 0, edx: 24 << 8, ..Default::default() };
    bios::call(0x10, &mut r);
}

