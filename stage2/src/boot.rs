//! After the hardware is up: find the partitions, read grub.cfg, run the menu, boot.

use crate::disk::BiosDisk;
use crate::println;
use vboot::install::InstallRecord;
use vboot::part::{self, PartitionKind, Scheme};

pub fn run(disk: &mut BiosDisk, _record: Option<InstallRecord>) -> ! {
    list_partitions(disk);
    println!("vboot: nothing more to do yet.");
    crate::fatal("no boot menu yet")
}

fn list_partitions(disk: &mut BiosDisk) {
    match part::read_partitions(disk) {
        Err(e) => println!("Partitions of {:#04x}: {}", disk.drive, e),
        Ok(t) => {
            let scheme = match t.scheme {
                Scheme::Mbr => "MBR",
                Scheme::Gpt => "GPT",
                Scheme::Hybrid => "hybrid MBR/GPT",
            };
            println!("Partitions of {:#04x} ({}, {} found):", disk.drive, scheme, t.partitions.len());
            for w in &t.warnings {
                println!("  warning: {}", w);
            }
            for p in &t.partitions {
                let (kind, extra) = match &p.kind {
                    PartitionKind::Mbr { type_byte, active } => (
                        if p.number >= 5 { "logical" } else { "primary" },
                        alloc::format!("type {:02x}{}", type_byte, if *active { ", active" } else { "" }),
                    ),
                    PartitionKind::Gpt { name, .. } => ("gpt", alloc::format!("\"{}\"", name)),
                };
                println!(
                    "  (hd0,{}) {:<7} start {:>9} size {:>9} sectors  {} {}",
                    p.number,
                    kind,
                    p.start_lba,
                    p.sectors,
                    p.describe(),
                    extra
                );
            }
        }
    }
}
