//! `recover_mbr`: put back the boot code vboot-install saved, then boot it.

use alloc::format;
use alloc::string::String;

use crate::disk::BiosDisk;
use crate::println;
use vboot::block::{BlockDevice, SECTOR_BYTES};
use vboot::install;

pub fn recover_mbr(disk: &mut BiosDisk) -> Result<(), String> {
    if crate::lkrn::started() {
        return Err(String::from(
            "recover_mbr: vboot was started as vboot.lkrn by another boot loader, not installed on this disk; \
             there is no install record and no saved boot code to put back",
        ));
    }
    let (record, restored) = install::saved_boot_code(disk)?;
    println!("recover_mbr: sector 0 of disk {:#04x} will get back the boot code saved when vboot", disk.drive);
    println!("was installed (LBA {}); the current partition table and disk signature are kept.", record.saved_mbr_lba());
    println!("vboot will then no longer start from this disk. Continue? [y/N]");
    let key = crate::wait_key();
    if key != b'y' && key != b'Y' {
        return Err(String::from("recover_mbr cancelled; nothing was written"));
    }
    disk.write_sectors(0, &restored).map_err(|e| format!("writing sector 0: {}", e))?;
    let mut check = [0u8; SECTOR_BYTES];
    disk.read_sectors(0, &mut check).map_err(|e| format!("reading sector 0 back: {}", e))?;
    if check != restored {
        return Err(String::from("sector 0 did not read back as written"));
    }
    println!("The original boot code is back in sector 0.");
    if !vboot::part::has_boot_signature(&restored) {
        return Err(String::from("the restored sector 0 has no boot signature; there is nothing to boot"));
    }
    crate::guest::start_guest(&restored, disk.drive)
}
