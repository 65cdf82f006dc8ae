//! The memory map: INT 15h E820, with the E801 and 88h fallbacks for old machines.

use crate::bios::{self, Regs, SMALL_BUF_ADDR};
use crate::lowmem;
use heapless::Vec;

#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub base: u64,
    pub length: u64,
    /// E820 type: 1 usable, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 bad.
    pub kind: u32,
}

pub const MAX_REGIONS: usize = 128;

pub struct MemoryMap {
    pub regions: Vec<Region, MAX_REGIONS>,
    pub source: &'static str,
}

const SMAP: u32 = 0x534D_4150;

pub fn read() -> MemoryMap {
    let mut regions: Vec<Region, MAX_REGIONS> = Vec::new();
    let mut continuation = 0u32;
    loop {
        lowmem::write(SMALL_BUF_ADDR, &[0u8; 24]);
        // ACPI 3 entries carry an extended-attributes dword; ask for 24 bytes, accept 20.
        lowmem::write(SMALL_BUF_ADDR + 20, &1u32.to_le_bytes());
        let (seg, off) = bios::seg_off(SMALL_BUF_ADDR);
        let mut r = Regs {
            eax: 0xE820,
            ebx: continuation,
            ecx: 24,
            edx: SMAP,
            edi: off as u32,
            es: seg,
            ..Default::default()
        };
        bios::call(0x15, &mut r);
        if r.cf() || r.eax != SMAP {
            break;
        }
        let mut e = [0u8; 24];
        lowmem::read(SMALL_BUF_ADDR, &mut e);
        let base = u64::from_le_bytes(e[0..8].try_into().unwrap_or([0; 8]));
        let length = u64::from_le_bytes(e[8..16].try_into().unwrap_or([0; 8]));
        let kind = u32::from_le_bytes(e[16..20].try_into().unwrap_or([0; 4]));
        let attrs = u32::from_le_bytes(e[20..24].try_into().unwrap_or([1; 4]));
        // Bit 0 clear in the ACPI 3 attributes means "ignore this entry".
        let ignored = r.ecx >= 24 && attrs & 1 == 0;
        if length != 0 && !ignored && regions.push(Region { base, length, kind }).is_err() {
            break;
        }
        continuation = r.ebx;
        if continuation == 0 {
            break;
        }
    }
    if !regions.is_empty() {
        return MemoryMap { regions, source: "E820" };
    }
    let low = Region { base: 0, length: conventional_kib() as u64 * 1024, kind: 1 };
    let _ = regions.push(low);
    let mut r = Regs { eax: 0xE801, ..Default::default() };
    bios::call(0x15, &mut r);
    if !r.cf() {
        let (mut kib_1m_16m, mut blocks_above_16m) = (r.eax & 0xFFFF, r.ebx & 0xFFFF);
        if kib_1m_16m == 0 {
            kib_1m_16m = r.ecx & 0xFFFF;
            blocks_above_16m = r.edx & 0xFFFF;
        }
        let _ = regions.push(Region { base: 0x10_0000, length: kib_1m_16m as u64 * 1024, kind: 1 });
        if blocks_above_16m != 0 {
            let _ = regions.push(Region { base: 0x100_0000, length: blocks_above_16m as u64 * 65536, kind: 1 });
        }
        return MemoryMap { regions, source: "E801" };
    }
    let mut r = Regs { eax: 0x8800, ..Default::default() };
    bios::call(0x15, &mut r);
    let kib = if r.cf() { 0 } else { r.eax & 0xFFFF };
    let _ = regions.push(Region { base: 0x10_0000, length: kib as u64 * 1024, kind: 1 });
    MemoryMap { regions, source: "INT 15h AH=88h" }
}

/// Conventional memory in KiB (BDA 0040:0013).
pub fn conventional_kib() -> u16 {
    lowmem::read_u16(0x413)
}

impl MemoryMap {
    /// The usable range that starts at 1 MiB, capped to stay below 4 GiB.
    pub fn extended_at_1mib(&self) -> Option<(u32, u32)> {
        self.regions
            .iter()
            .filter(|r| r.kind == 1 && r.base <= 0x10_0000 && r.base + r.length > 0x10_0000)
            .map(|r| {
                let end = (r.base + r.length).min(0xFFFF_F000);
                (0x10_0000u32, (end - 0x10_0000) as u32)
            })
            .next()
    }

    pub fn kind_name(kind: u32) -> &'static str {
        match kind {
            1 => "usable",
            2 => "reserved",
            3 => "ACPI data",
            4 => "ACPI NVS",
            5 => "bad",
            _ => "other",
        }
    }
}
