//! The hand-off table (`vboot::handoff`, `docs/handoff-table.md`): what stage2 knows about the host
//! disk and partition, the boot's ID and time, and placing the table in the engine's reserved
//! range with its address in the stub's safe-hook header.

use alloc::string::String;
use alloc::vec::Vec;

use crate::bios::{self, Regs};
use crate::disk::BiosDisk;
use crate::highmem::Region;
use crate::{lowmem, machine};
use vboot::block::Window;
use vboot::handoff::{self, Filesystem, HostDisk, HostPartition, HostScheme, Layer, LayerFormat, SafeHook, Table};
use vboot::image::chain;
use vboot::part::{Partition, PartitionKind, PartitionTable, Scheme};
use vboot::resident::PlannedLayer;

/// The host disk and partition holding the image files, as a reader finds them again.
pub fn describe_host(disk: &BiosDisk, table: &PartitionTable, part: &Partition) -> (HostDisk, HostPartition, Filesystem) {
    let scheme = if table.scheme == Scheme::Gpt { HostScheme::Gpt } else { HostScheme::Mbr };
    let host = HostDisk {
        bios_drive: disk.drive,
        scheme,
        mbr_signature: table.mbr_signature,
        disk_guid: table.disk_guid.unwrap_or([0; 16]),
        sectors: disk.sectors,
    };
    let (type_byte, guid) = match &part.kind {
        PartitionKind::Mbr { type_byte, .. } => (*type_byte, [0; 16]),
        PartitionKind::Gpt { unique_guid, .. } => (0, *unique_guid),
    };
    let partition = HostPartition { number: part.number, start_lba: part.start_lba, sectors: part.sectors, type_byte, guid };
    let mut win = Window { inner: disk.clone(), start_lba: part.start_lba, sectors: part.sectors };
    let fs = vboot::fs::volume::sniff(&mut win).map(Filesystem::from).unwrap_or(Filesystem::Unknown);
    (host, partition, fs)
}

/// The table's layers from the plan's files; `formats` names the format of each file of the chain
/// (by path), the leaf's format covers the rest (VMDK extent files).
pub fn layers(planned: &[PlannedLayer], formats: &[(String, LayerFormat)]) -> Vec<Layer> {
    let leaf = formats.first().map(|f| f.1).unwrap_or(LayerFormat::Raw);
    planned
        .iter()
        .map(|p| {
            let format = chain::find_listed(formats, &p.path, |(n, _)| n.as_str()).map(|f| f.1).unwrap_or(leaf);
            Layer { format, size_bytes: p.size_bytes, path: p.path.clone(), extents: p.extents.extents.clone() }
        })
        .collect()
}

fn bcd(v: u8) -> u32 {
    (v >> 4) as u32 * 10 + (v & 0xF) as u32
}

/// A boot ID (time-stamp counter mixed with the clock) and the RTC time in Unix seconds (0 when
/// the BIOS does not answer).
pub fn boot_stamp() -> (u64, u64) {
    let mut t = Regs { eax: 0x0200, ..Default::default() };
    bios::call(0x1A, &mut t);
    let mut d = Regs { eax: 0x0400, ..Default::default() };
    bios::call(0x1A, &mut d);
    let unix = if t.cf() || d.cf() {
        0
    } else {
        let b = |r: u32, shift: u32| bcd((r >> shift) as u8);
        handoff::unix_seconds(b(d.ecx, 8) * 100 + b(d.ecx, 0), b(d.edx, 8), b(d.edx, 0), b(t.ecx, 8), b(t.ecx, 0), b(t.edx, 8))
            .unwrap_or(0)
    };
    let tsc = machine::timestamp();
    // Mixed (splitmix64), so two boots close in time differ in every bit.
    let mut seed = tsc ^ unix.rotate_left(32);
    let mut id = [0u8; 8];
    vboot::image::random_bytes(&mut seed, &mut id);
    (u64::from_le_bytes(id), unix)
}

/// Write the table at `at` (inside `region`, which is the reserved range `reserved`) and point the
/// stub's safe-hook header (at `hook`, the INT 13h entry) at it. The signature goes last, so a
/// half-written table never looks like one.
pub fn place(table: &mut Table, region: &mut Region, at: u32, room: u32, reserved: (u64, u64), hook: u32, prev_int13: u32) -> Result<(), String> {
    table.table_address = at as u64;
    table.reserved_base = reserved.0;
    table.reserved_length = reserved.1;
    table.safe_hook_address = hook;
    let bytes = table.to_bytes();
    if bytes.len() as u32 > room {
        return Err(String::from("internal: the hand-off table outgrew its room"));
    }
    let dest = region.at_mut(at, room);
    dest.fill(0);
    dest[8..bytes.len()].copy_from_slice(&bytes[8..]);
    dest[..8].copy_from_slice(&bytes[..8]);
    let mut header = [0u8; handoff::HOOK_BYTES];
    lowmem::read(hook, &mut header);
    if SafeHook::parse(&header).map(|h| h.vendor) != Some(handoff::HOOK_VENDOR) {
        return Err(String::from("internal: the stub's INT 13h entry has no safe-hook header"));
    }
    SafeHook::fill(&mut header, prev_int13, at, table.boot_id);
    lowmem::write(hook, &header);
    Ok(())
}
