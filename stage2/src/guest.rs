//! Handing the machine to the guest: its boot sector at 0000:7C00, entered in real mode.

use alloc::format;
use alloc::string::String;

use crate::{bios, lowmem, println};

/// A hard disk starts from its first sector, which must end in 55AA. `raw`: the file was read
/// as a raw image because it has no VHD, VMDK or VDI signature, which the message says, since
/// a damaged image file ends up here too.
pub fn check_boot_signature(sector: &[u8; 512], path: &str, raw: bool) -> Result<(), String> {
    if sector[510] == 0x55 && sector[511] == 0xAA {
        return Ok(());
    }
    Err(format!(
        "{} has no boot signature (55AA) in its first sector: it is not a bootable disk image \
         (an empty or unpartitioned image?){}",
        path,
        if raw { "; it was read as a raw image: no VHD, VMDK or VDI header was found in it" } else { "" }
    ))
}

/// The hand-off table for this boot, with the drive records of the emulated drives.
/// Put the boot sector at 0000:7C00 and jump to it in real mode, as a BIOS would.
pub fn start_guest(sector: &[u8; 512], drive: u8) -> ! {
    println!("Starting the guest.");
    lowmem::write(0x7C00, sector);
    // Leave the BIOS cursor below our text, so the guest's output does not overwrite it.
    let mut r = bios::Regs { eax: 0x0200, ebx: 0, edx: 24 << 8, ..Default::default() };
    bios::call(0x10, &mut r);
    bios::jump_real_mode(0, 0x7C00, drive)
}

