//! What stage2 hands the resident engine, and the memory map the guest will see.
//!
//! stage2 resolves files (filesystems, partitions) and works out the memory layout; the engine,
//! once relocated to high memory, rebuilds its drives from this plan in its own heap. The plan is
//! a flat little-endian byte string so the two separately built binaries share no Rust layout.

use alloc::string::String;
use alloc::vec::Vec;

use crate::fs::{Extent, ExtentList};
use crate::int13::ElToritoBoot;

pub const PLAN_MAGIC: [u8; 8] = *b"VBPLAN03";

/// One E820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub base: u64,
    pub length: u64,
    pub kind: u32,
}

pub const E820_USABLE: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// Which kind of drive the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedKind {
    HardDisk = 0,
    Floppy = 1,
    Cdrom = 2,
}

/// How the engine reads a drive's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PlannedFormat {
    /// The file is the disk, sector for sector (raw images, ISOs, floppies).
    Raw = 0,
    /// One file of a VHD, VMDK or VDI image or chain, which the engine opens with the image code.
    Image = 1,
}

/// One file of a drive's image (one layer of a differencing chain, or the only one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedLayer {
    pub format: PlannedFormat,
    pub size_bytes: u64,
    /// Host-disk LBAs of the file's bytes.
    pub extents: ExtentList,
    /// The file's path, for messages.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDrive {
    /// The number the guest uses (0x80, 0x00, 0xE0 ...).
    pub number: u8,
    pub kind: PlannedKind,
    pub read_only: bool,
    /// The BIOS's own number for the host disk holding the files (before any renumbering).
    pub host_drive: u8,
    /// Leaf first.
    pub layers: Vec<PlannedLayer>,
    /// A CD (0xE0): its El Torito boot facts for AX=4B01h. A floppy or hard disk: set when the
    /// drive is the CD's emulated boot image (its layer is that part of the ISO).
    pub eltorito: Option<ElToritoBoot>,
    /// `immutable` where no throwaway child on disk could be had (a raw image, a floppy, an NTFS
    /// or ext host without one): every write goes to a RAM overlay in the engine's heap, at most
    /// [`IMMUTABLE_OVERLAY_BYTES`]; the drive's files never change.
    pub ram_overlay: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The memory map the guest gets from E820 (vboot's own ranges already reserved).
    pub memory_map: Vec<E820Entry>,
    pub drives: Vec<PlannedDrive>,
    /// `parent_dir=` of the entry, as a path on the image's partition.
    pub parent_dir: Option<String>,
    /// `restore`: empty the leaf differencing image of drive 0x80 before the guest starts.
    pub restore: bool,
    /// A buffer below 1 MiB (linear address, bytes) that the engine may use for host transfers
    /// while `engine_init` runs: stage2's own bounce buffer, idle during that call. Reading the
    /// image tables through it takes a few dozen BIOS calls where the stub's 1.5 KiB buffer takes
    /// thousands. 0 bytes: none.
    pub init_bounce_linear: u32,
    pub init_bounce_bytes: u32,
    /// vboot's own memory, `(base, length)`: the engine's range (code, stack, plan, heap,
    /// hand-off table) and the stub. The guest may not point a disk transfer there
    /// (`int13::check_guest_range`).
    pub vboot_ranges: Vec<(u64, u64)>,
}

struct Writer(Vec<u8>);
impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v)
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let s = self.b.get(self.at..self.at.checked_add(n).ok_or("plan too long")?).ok_or("plan truncated")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn count(&mut self, max: u32) -> Result<usize, &'static str> {
        let n = self.u32()?;
        if n > max {
            return Err("plan count out of range");
        }
        Ok(n as usize)
    }
}

impl Plan {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(&PLAN_MAGIC);
        w.u32(self.memory_map.len() as u32);
        for e in &self.memory_map {
            w.u64(e.base);
            w.u64(e.length);
            w.u32(e.kind);
        }
        w.u32(self.drives.len() as u32);
        for d in &self.drives {
            w.u8(d.number);
            w.u8(d.kind as u8);
            w.u8(d.read_only as u8);
            w.u8(d.host_drive);
            w.u32(d.layers.len() as u32);
            for l in &d.layers {
                w.u8(l.format as u8);
                w.u64(l.size_bytes);
                w.bytes(l.path.as_bytes());
                w.u32(l.extents.extents.len() as u32);
                for e in &l.extents.extents {
                    w.u64(e.file_sector);
                    w.u64(e.lba);
                    w.u64(e.sectors);
                }
            }
            match d.eltorito {
                Some(b) => {
                    w.u8(1);
                    w.u8(b.media);
                    w.u32(b.load_rba);
                    w.u32(b.load_segment as u32);
                    w.u32(b.load_sectors as u32);
                }
                None => w.u8(0),
            }
            w.u8(d.ram_overlay as u8);
        }
        match &self.parent_dir {
            Some(d) => {
                w.u8(1);
                w.bytes(d.as_bytes());
            }
            None => w.u8(0),
        }
        w.u8(self.restore as u8);
        w.u32(self.init_bounce_linear);
        w.u32(self.init_bounce_bytes);
        w.u32(self.vboot_ranges.len() as u32);
        for &(base, length) in &self.vboot_ranges {
            w.u64(base);
            w.u64(length);
        }
        w.0
    }

    pub fn from_bytes(b: &[u8]) -> Result<Plan, &'static str> {
        let mut r = Reader { b, at: 0 };
        if r.take(8)? != PLAN_MAGIC {
            return Err("no plan magic");
        }
        let mut plan = Plan::default();
        for _ in 0..r.count(1024)? {
            plan.memory_map.push(E820Entry { base: r.u64()?, length: r.u64()?, kind: r.u32()? });
        }
        for _ in 0..r.count(16)? {
            let number = r.u8()?;
            let kind = match r.u8()? {
                0 => PlannedKind::HardDisk,
                1 => PlannedKind::Floppy,
                2 => PlannedKind::Cdrom,
                _ => return Err("bad drive kind"),
            };
            let read_only = r.u8()? != 0;
            let host_drive = r.u8()?;
            let mut layers = Vec::new();
            for _ in 0..r.count(1 << 16)? {
                let format = match r.u8()? {
                    0 => PlannedFormat::Raw,
                    1 => PlannedFormat::Image,
                    _ => return Err("bad layer format"),
                };
                let size_bytes = r.u64()?;
                let n = r.count(4096)?;
                let path = String::from_utf8_lossy(r.take(n)?).into_owned();
                let mut extents = ExtentList::default();
                for _ in 0..r.count(1 << 24)? {
                    extents.extents.push(Extent { file_sector: r.u64()?, lba: r.u64()?, sectors: r.u64()? });
                }
                layers.push(PlannedLayer { format, size_bytes, extents, path });
            }
            let eltorito = match r.u8()? {
                0 => None,
                _ => Some(ElToritoBoot {
                    media: r.u8()?,
                    load_rba: r.u32()?,
                    load_segment: r.u32()? as u16,
                    load_sectors: r.u32()? as u16,
                }),
            };
            let ram_overlay = r.u8()? != 0;
            plan.drives.push(PlannedDrive { number, kind, read_only, host_drive, layers, eltorito, ram_overlay });
        }
        if r.u8()? == 1 {
            let n = r.count(4096)?;
            plan.parent_dir = Some(String::from_utf8_lossy(r.take(n)?).into_owned());
        }
        plan.restore = r.u8()? != 0;
        plan.init_bounce_linear = r.u32()?;
        plan.init_bounce_bytes = r.u32()?;
        if plan.init_bounce_bytes != 0
            && (plan.init_bounce_bytes % 512 != 0 || plan.init_bounce_linear as u64 + plan.init_bounce_bytes as u64 > 0x10_0000)
        {
            return Err("init bounce buffer is not whole sectors below 1 MiB");
        }
        for _ in 0..r.count(16)? {
            plan.vboot_ranges.push((r.u64()?, r.u64()?));
        }
        Ok(plan)
    }
}

/// Heap the resident engine starts with, whatever it serves: per-disk transfer buffers (64 KiB
/// each), messages, and room for the allocator's fragmentation.
pub const ENGINE_BASE_HEAP_BYTES: u64 = 1 << 20;
/// The RAM overlay of `immutable`: writes the guest makes are kept in this much heap at most.
pub const IMMUTABLE_OVERLAY_BYTES: u64 = 64 << 20;

/// The heap the resident engine needs (docs/memory.md): the fixed part, the tables and caches of
/// every image chain it opens (`chain_bytes`, from `image::disk::chain_memory_bytes` on the same
/// chains), a quarter more for the allocator's headers and fragmentation, the plan's extent
/// lists (`plan_bytes`: the engine keeps them in a few forms: as parsed, per open file and as a
/// sorted index), and the RAM overlay when a drive has one (`ram_overlay`).
pub fn engine_heap_bytes(chain_bytes: u64, plan_bytes: u64, ram_overlay: bool) -> u64 {
    let overlay = if ram_overlay { IMMUTABLE_OVERLAY_BYTES } else { 0 };
    ENGINE_BASE_HEAP_BYTES
        .saturating_add(chain_bytes.saturating_add(chain_bytes / 4))
        .saturating_add(plan_bytes.saturating_mul(6))
        .saturating_add(overlay)
}

/// The map with `base..base+length` marked reserved, splitting usable entries it overlaps.
pub fn reserve(map: &[E820Entry], base: u64, length: u64) -> Vec<E820Entry> {
    let end = base + length;
    let mut out = Vec::new();
    for e in map {
        let e_end = e.base + e.length;
        if e.kind != E820_USABLE || e_end <= base || e.base >= end {
            out.push(*e);
            continue;
        }
        if e.base < base {
            out.push(E820Entry { base: e.base, length: base - e.base, kind: e.kind });
        }
        let r_start = e.base.max(base);
        let r_end = e_end.min(end);
        out.push(E820Entry { base: r_start, length: r_end - r_start, kind: E820_RESERVED });
        if e_end > end {
            out.push(E820Entry { base: end, length: e_end - end, kind: e.kind });
        }
    }
    out.sort_by_key(|e| e.base);
    out
}

/// INT 15h AX=E801h answers from a map: (KiB between 1 MiB and 16 MiB, 64 KiB blocks from
/// 16 MiB up to the first hole). Both stop at the first non-usable byte, as old BIOSes do.
pub fn e801_values(map: &[E820Entry]) -> (u16, u16) {
    let contiguous_end = |from: u64| -> u64 {
        let mut end = from;
        loop {
            let next = map.iter().find(|e| e.kind == E820_USABLE && e.base <= end && e.base + e.length > end);
            match next {
                Some(e) => end = e.base + e.length,
                None => return end,
            }
        }
    };
    let end = contiguous_end(0x10_0000);
    let below16 = (end.min(0x100_0000).saturating_sub(0x10_0000) / 1024).min(0x3C00) as u16;
    let above16 = if end > 0x100_0000 { ((end.min(0xFFFF_FFFF) - 0x100_0000) / 0x1_0000).min(0xFFFF) as u16 } else { 0 };
    (below16, above16)
}

/// INT 15h AH=88h: KiB of contiguous memory above 1 MiB, at most 0xFFFF (SeaBIOS caps at 63 MiB).
pub fn ah88_value(map: &[E820Entry]) -> u16 {
    let (below16, above16) = e801_values(map);
    let kib = below16 as u32 + if below16 as u32 == 0x3C00 { above16 as u32 * 64 } else { 0 };
    kib.min(0xFC00) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_map() -> Vec<E820Entry> {
        alloc::vec![
            E820Entry { base: 0, length: 0x9FC00, kind: 1 },
            E820Entry { base: 0x9FC00, length: 0x400, kind: 2 },
            E820Entry { base: 0xF0000, length: 0x10000, kind: 2 },
            E820Entry { base: 0x10_0000, length: 0x7EE_D000, kind: 1 },
        ]
    }

    #[test]
    fn reserve_splits_and_sorts() {
        let m = reserve(&qemu_map(), 0x7000000, 0xFED000);
        assert_eq!(m.len(), 5);
        assert_eq!(m[3], E820Entry { base: 0x10_0000, length: 0x7000000 - 0x10_0000, kind: 1 });
        assert_eq!(m[4], E820Entry { base: 0x7000000, length: 0xFED000, kind: 2 });
        let low = reserve(&qemu_map(), 0x9EC00, 0x1000);
        assert_eq!(low[0], E820Entry { base: 0, length: 0x9EC00, kind: 1 });
        assert_eq!(low[1], E820Entry { base: 0x9EC00, length: 0x1000, kind: 2 });
    }

    #[test]
    fn e801_and_88_follow_the_reserved_top() {
        let m = reserve(&qemu_map(), 0x7000000, 0xFED000);
        assert_eq!(e801_values(&m), (0x3C00, ((0x7000000 - 0x100_0000) / 0x10000) as u16));
        assert_eq!(ah88_value(&m), 0xFC00);
        let small = reserve(&qemu_map(), 0x80_0000, 0x100_0000);
        assert_eq!(e801_values(&small), (0x1C00, 0));
        assert_eq!(ah88_value(&small), 0x1C00);
    }

    #[test]
    fn plan_round_trip_and_truncation() {
        let mut ext = ExtentList::default();
        ext.push(4096, 100);
        ext.push(9000, 28);
        let plan = Plan {
            memory_map: qemu_map(),
            drives: alloc::vec![
                PlannedDrive {
                    number: 0x80,
                    kind: PlannedKind::HardDisk,
                    read_only: false,
                    host_drive: 0x80,
                    layers: alloc::vec![PlannedLayer { format: PlannedFormat::Raw, size_bytes: 128 * 512, extents: ext.clone(), path: "/dos.img".into() }],
                    eltorito: None,
                    ram_overlay: true,
                },
                PlannedDrive {
                    number: 0xE0,
                    kind: PlannedKind::Cdrom,
                    read_only: true,
                    host_drive: 0x80,
                    layers: alloc::vec![PlannedLayer { format: PlannedFormat::Raw, size_bytes: 128 * 512, extents: ext, path: "/x.iso".into() }],
                    eltorito: Some(ElToritoBoot { media: 2, load_rba: 0x1234_5678, load_segment: 0x7C0, load_sectors: 4 }),
                    ram_overlay: false,
                },
            ],
            parent_dir: Some("/vms/base".into()),
            restore: true,
            init_bounce_linear: 0x1000,
            init_bounce_bytes: 0x6000,
            vboot_ranges: alloc::vec![(0x7F0_0000, 0xFE_0000), (0x9_F000, 0xC00)],
        };
        let b = plan.to_bytes();
        assert_eq!(Plan::from_bytes(&b), Ok(plan.clone()));
        // A lent buffer must be whole sectors below 1 MiB.
        for (linear, bytes) in [(0x1000u32, 1000u32), (0xF_F000, 0x2000)] {
            let bad = Plan { init_bounce_linear: linear, init_bounce_bytes: bytes, ..plan.clone() };
            assert!(Plan::from_bytes(&bad.to_bytes()).is_err(), "{:#x}+{:#x}", linear, bytes);
        }
        for cut in [0, 7, 20, b.len() - 1] {
            assert!(Plan::from_bytes(&b[..cut]).is_err());
        }
    }
}
