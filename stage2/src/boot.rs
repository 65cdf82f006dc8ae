//! After the hardware is up: find the partitions, read grub.cfg, run the menu, boot.

use crate::disk::BiosDisk;
use crate::println;
use vboot::install::InstallRecord;

pub fn run(_disk: &mut BiosDisk, _record: Option<InstallRecord>) -> ! {
    println!("vboot: nothing more to do yet.");
    crate::fatal("no boot menu yet")
}
