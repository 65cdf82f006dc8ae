//! Cylinder/head/sector geometry: register encoding, CHS <-> LBA, and picking a geometry.

/// INT 13h CHS calls address at most 1024 cylinders (10 bits).
pub const MAX_BIOS_CYLINDERS: u32 = 1024;
/// 256 heads break MS-DOS up to Windows 95, so 255 is the ceiling.
pub const MAX_HEADS: u32 = 255;
/// CL[5:0]: sectors are 1-based, so 63 is the most a track can have.
pub const MAX_SECTORS_PER_TRACK: u32 = 63;
/// Above this many sectors AH=48h must clear its "CHS fields valid" flag (EDD-4).
pub const EDD_CHS_VALID_LIMIT_SECTORS: u64 = 15_482_880;
/// The geometry used when an image brings none of its own (LBA-assist, as iPXE and fdisk).
pub const DEFAULT_HEADS: u32 = 255;
pub const DEFAULT_SECTORS_PER_TRACK: u32 = 63;

/// A geometry as counts (not maxima). `cylinders` may exceed 1024; CHS calls see only the first
/// 1024 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chs {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors_per_track: u32,
}

/// One CHS address as the registers carry it: sector is 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChsAddress {
    pub cylinder: u16,
    pub head: u8,
    pub sector: u8,
}

impl ChsAddress {
    /// Decode CH (cylinder bits 7:0), CL (cylinder bits 9:8 in 7:6, sector in 5:0) and DH (head).
    pub fn from_regs(cx: u16, dh: u8) -> Self {
        let ch = (cx >> 8) as u8;
        let cl = cx as u8;
        ChsAddress {
            cylinder: ch as u16 | (((cl & 0xC0) as u16) << 2),
            head: dh,
            sector: cl & 0x3F,
        }
    }
    /// Encode into (CX, DH). Cylinder bits above 9 are dropped, as the registers cannot hold them.
    pub fn to_regs(&self) -> (u16, u8) {
        let ch = self.cylinder as u8;
        let cl = (((self.cylinder >> 2) & 0xC0) as u8) | (self.sector & 0x3F);
        (((ch as u16) << 8) | cl as u16, self.head)
    }
}

impl Chs {
    /// Whether INT 13h CHS calls can express this geometry at all.
    pub fn is_bios_usable(&self) -> bool {
        self.cylinders >= 1
            && (1..=MAX_HEADS).contains(&self.heads)
            && (1..=MAX_SECTORS_PER_TRACK).contains(&self.sectors_per_track)
    }

    fn sectors_per_cylinder(&self) -> u64 {
        self.heads as u64 * self.sectors_per_track as u64
    }

    /// `heads` x `sectors_per_track` with as many cylinders as fit in `total_sectors` (at least
    /// one, so a disk smaller than a cylinder still answers AH=08h).
    pub fn with_heads_spt(total_sectors: u64, heads: u32, sectors_per_track: u32) -> Chs {
        let per_cyl = (heads as u64 * sectors_per_track as u64).max(1);
        let cylinders = u32::try_from(total_sectors / per_cyl).unwrap_or(u32::MAX).max(1);
        Chs { cylinders, heads, sectors_per_track }
    }

    /// The geometry the guest sees: the image's own when INT 13h can express it, else 255/63.
    pub fn for_disk(total_sectors: u64, image: Option<Chs>) -> Chs {
        match image {
            Some(g) if g.is_bios_usable() => g,
            _ => Chs::with_heads_spt(total_sectors, DEFAULT_HEADS, DEFAULT_SECTORS_PER_TRACK),
        }
    }

    /// Cylinders reachable through CHS calls.
    pub fn bios_cylinders(&self) -> u32 {
        self.cylinders.min(MAX_BIOS_CYLINDERS)
    }

    /// Sectors reachable through CHS calls (the disk itself may be smaller or larger).
    pub fn addressable_sectors(&self) -> u64 {
        self.bios_cylinders() as u64 * self.sectors_per_cylinder()
    }

    /// LBA of a CHS address, or `None` if the address lies outside this geometry (sector 0,
    /// sector past the track, head past the last, cylinder past the CHS-addressable ones).
    pub fn to_lba(&self, a: ChsAddress) -> Option<u64> {
        if a.sector == 0
            || a.sector as u32 > self.sectors_per_track
            || a.head as u32 >= self.heads
            || a.cylinder as u32 >= self.bios_cylinders()
        {
            return None;
        }
        Some(
            (a.cylinder as u64 * self.heads as u64 + a.head as u64) * self.sectors_per_track as u64
                + (a.sector as u64 - 1),
        )
    }

    /// CHS address of an LBA, or `None` past the CHS-addressable area.
    pub fn from_lba(&self, lba: u64) -> Option<ChsAddress> {
        if !self.is_bios_usable() || lba >= self.addressable_sectors() {
            return None;
        }
        let spt = self.sectors_per_track as u64;
        let sector = (lba % spt) as u8 + 1;
        let track = lba / spt;
        let head = (track % self.heads as u64) as u8;
        let cylinder = (track / self.heads as u64) as u16;
        Some(ChsAddress { cylinder, head, sector })
    }

    /// AH=08h answer: (CX, DH) holding the last cylinder index (clamped to 1023), the sectors per
    /// track and the last head index. Cylinder count - 1, as memdisk and iPXE report it.
    pub fn max_address_regs(&self) -> (u16, u8) {
        let last = ChsAddress {
            cylinder: (self.bios_cylinders().max(1) - 1) as u16,
            head: (self.heads.clamp(1, 256) - 1) as u8,
            sector: self.sectors_per_track.min(MAX_SECTORS_PER_TRACK) as u8,
        };
        last.to_regs()
    }
}

/// The geometry an MBR's partition entries were written with, as DOS FDISK and Win9x boot code
/// will compare it with AH=08h. Each used entry pairs a CHS address with an LBA at its start and
/// end; the geometry is the one that makes every pair agree (largest sectors per track, then
/// largest head count, first: 255/63 when it fits). Pairs on cylinder 1023 are skipped, as
/// tools write 1023/254/63 for "beyond CHS". `None` without a 55AA signature, without a usable
/// pair, or when no geometry INT 13h can express fits them all.
pub fn geometry_from_mbr(sector0: &[u8], total_sectors: u64) -> Option<Chs> {
    if sector0.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    // At most two (CHS, LBA) pairs per entry.
    let mut pairs: [(ChsAddress, u64); 8] = [(ChsAddress { cylinder: 0, head: 0, sector: 0 }, 0); 8];
    let mut n = 0;
    for i in 0..4 {
        let e = sector0.get(0x1BE + 16 * i..0x1BE + 16 * (i + 1))?;
        let start_lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
        if e[4] == 0 || sectors == 0 {
            continue;
        }
        let start = ChsAddress::from_regs(u16::from_le_bytes([e[2], e[3]]), e[1]);
        let end = ChsAddress::from_regs(u16::from_le_bytes([e[6], e[7]]), e[5]);
        for (a, lba) in [(start, start_lba), (end, start_lba + sectors - 1)] {
            if a.cylinder < 1023 && a.sector != 0 {
                pairs[n] = (a, lba);
                n += 1;
            }
        }
    }
    let pairs = &pairs[..n];
    if pairs.is_empty() {
        return None;
    }
    for spt in (1..=MAX_SECTORS_PER_TRACK).rev() {
        for heads in (1..=MAX_HEADS).rev() {
            let g = Chs { cylinders: MAX_BIOS_CYLINDERS, heads, sectors_per_track: spt };
            if pairs.iter().all(|&(a, lba)| g.to_lba(a) == Some(lba)) {
                return Some(Chs::with_heads_spt(total_sectors, heads, spt));
            }
        }
    }
    None
}

/// Heads and sectors per track from the FAT BPB of an unpartitioned image, accepted only when
/// it really looks like one (memdisk's rules: jump E9h/EBh, media F0h or F8h+, 512-byte sectors,
/// boot signature 29h and a "FAT" type string). Heads must also be at most 255.
pub fn geometry_from_bpb(sector0: &[u8], total_sectors: u64) -> Option<Chs> {
    let b = sector0.get(..512)?;
    if b[0] != 0xE9 && b[0] != 0xEB {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([b[0x0B], b[0x0C]]);
    let media = b[0x15];
    let spt = u16::from_le_bytes([b[0x18], b[0x19]]) as u32;
    let heads = u16::from_le_bytes([b[0x1A], b[0x1B]]) as u32;
    if bytes_per_sector != 512 || !(media == 0xF0 || media >= 0xF8) {
        return None;
    }
    // Extended BPB: at 24h on FAT12/16, at 40h on FAT32.
    let fat16_ebpb = b[0x26] == 0x29 && &b[0x36..0x39] == b"FAT";
    let fat32_ebpb = b[0x42] == 0x29 && &b[0x52..0x55] == b"FAT";
    if !fat16_ebpb && !fat32_ebpb {
        return None;
    }
    let g = Chs::with_heads_spt(total_sectors, heads, spt);
    if g.is_bios_usable() {
        Some(g)
    } else {
        None
    }
}

/// The geometry sector 0 of a hard-disk image implies: its FAT BPB if it is an unpartitioned
/// volume, else its partition table (docs/int13.md, "CHS geometry", steps 2 and 3).
pub fn geometry_from_sector0(sector0: &[u8], total_sectors: u64) -> Option<Chs> {
    geometry_from_bpb(sector0, total_sectors).or_else(|| geometry_from_mbr(sector0, total_sectors))
}

/// A floppy geometry for an image of `sectors` sectors that is not a standard size: memdisk's
/// search for cylinders 40-255 (80 and up first), 2 or 1 heads and fewer than 63 sectors per
/// track whose product is exactly the size.
pub fn floppy_geometry_by_search(sectors: u64) -> Option<Chs> {
    for cylinders in (80..=255u32).chain(40..80) {
        for heads in [2u32, 1] {
            let per_cyl = cylinders as u64 * heads as u64;
            if sectors.is_multiple_of(per_cyl) {
                let spt = sectors / per_cyl;
                if (1..63).contains(&spt) {
                    return Some(Chs { cylinders, heads, sectors_per_track: spt as u32 });
                }
            }
        }
    }
    None
}

/// A standard floppy format, recognised by the image's exact size
/// (docs/int13.md, "Floppy formats").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloppyFormat {
    pub bytes: u64,
    pub geometry: Chs,
    /// AH=08h BL drive type.
    pub drive_type: u8,
}

const fn ff(bytes: u64, cylinders: u32, heads: u32, spt: u32, drive_type: u8) -> FloppyFormat {
    FloppyFormat { bytes, geometry: Chs { cylinders, heads, sectors_per_track: spt }, drive_type }
}

pub const FLOPPY_FORMATS: [FloppyFormat; 9] = [
    ff(163_840, 40, 1, 8, 0x01),
    ff(184_320, 40, 1, 9, 0x01),
    ff(327_680, 40, 2, 8, 0x01),
    ff(368_640, 40, 2, 9, 0x01),
    ff(737_280, 80, 2, 9, 0x03),
    ff(1_228_800, 80, 2, 15, 0x02),
    ff(1_474_560, 80, 2, 18, 0x04),
    ff(1_720_320, 80, 2, 21, 0x04),
    ff(2_949_120, 80, 2, 36, 0x06),
];

impl FloppyFormat {
    pub fn from_size(bytes: u64) -> Option<FloppyFormat> {
        FLOPPY_FORMATS.iter().copied().find(|f| f.bytes == bytes)
    }

    /// The format of a `floppy=` image, or a message listing the sizes that are floppies.
    pub fn for_image(path: &str, bytes: u64) -> Result<FloppyFormat, alloc::string::String> {
        FloppyFormat::from_size(bytes).ok_or_else(|| {
            alloc::format!(
                "{} is {} bytes, which is no floppy size. A floppy image must be exactly one of: \
                 160K (163840), 180K (184320), 320K (327680), 360K (368640), 720K (737280), \
                 1.2M (1228800), 1.44M (1474560), 1.68M DMF (1720320) or 2.88M (2949120) bytes",
                path, bytes
            )
        })
    }
}

/// An 11-byte diskette parameter table (INT 1Eh target) for `sectors_per_track`, with the
/// values a 3.5" drive's BIOS table carries. DOS boot sectors copy it and patch the spt byte.
pub fn diskette_parameter_table(sectors_per_track: u8) -> [u8; 11] {
    [0xDF, 0x02, 0x25, 0x02, sectors_per_track, 0x1B, 0xFF, 0x6C, 0xF6, 0x0F, 0x08]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_encoding_round_trips_10_bit_cylinders() {
        let a = ChsAddress { cylinder: 1023, head: 254, sector: 63 };
        let (cx, dh) = a.to_regs();
        assert_eq!(cx, 0xFFFF);
        assert_eq!(dh, 254);
        assert_eq!(ChsAddress::from_regs(cx, dh), a);
        let b = ChsAddress { cylinder: 0x155, head: 3, sector: 1 };
        let (cx, _) = b.to_regs();
        assert_eq!(cx, 0x5541);
        assert_eq!(ChsAddress::from_regs(cx, 3), b);
    }

    #[test]
    fn lba_round_trip_over_the_whole_addressable_area_edges() {
        let g = Chs { cylinders: 2000, heads: 16, sectors_per_track: 63 };
        let last = g.addressable_sectors() - 1;
        assert_eq!(g.addressable_sectors(), 1024 * 16 * 63);
        for lba in [0, 1, 62, 63, 1007, 1008, 123_456, last] {
            let a = g.from_lba(lba).unwrap();
            assert_eq!(g.to_lba(a), Some(lba), "lba {}", lba);
            let (cx, dh) = a.to_regs();
            assert_eq!(g.to_lba(ChsAddress::from_regs(cx, dh)), Some(lba));
        }
        assert_eq!(g.from_lba(last), Some(ChsAddress { cylinder: 1023, head: 15, sector: 63 }));
        assert_eq!(g.from_lba(last + 1), None);
    }

    #[test]
    fn every_lba_of_a_small_geometry_round_trips() {
        let g = Chs { cylinders: 7, heads: 3, sectors_per_track: 5 };
        for lba in 0..g.addressable_sectors() {
            assert_eq!(g.to_lba(g.from_lba(lba).unwrap()), Some(lba));
        }
    }

    #[test]
    fn to_lba_refuses_addresses_outside_the_geometry() {
        let g = Chs { cylinders: 10, heads: 4, sectors_per_track: 17 };
        let ok = ChsAddress { cylinder: 9, head: 3, sector: 17 };
        assert_eq!(g.to_lba(ok), Some(10 * 4 * 17 - 1));
        assert_eq!(g.to_lba(ChsAddress { sector: 0, ..ok }), None);
        assert_eq!(g.to_lba(ChsAddress { sector: 18, ..ok }), None);
        assert_eq!(g.to_lba(ChsAddress { head: 4, ..ok }), None);
        assert_eq!(g.to_lba(ChsAddress { cylinder: 10, ..ok }), None);
    }

    #[test]
    fn default_geometry_is_255_63_and_clamps_at_1024_cylinders() {
        let g = Chs::for_disk(100 * 16065 + 7, None);
        assert_eq!(g, Chs { cylinders: 100, heads: 255, sectors_per_track: 63 });
        assert_eq!(g.max_address_regs(), (ChsAddress { cylinder: 99, head: 254, sector: 63 }).to_regs());
        let big = Chs::for_disk(20_000_000_000 / 512, None);
        assert!(big.cylinders > 1024);
        assert_eq!(big.max_address_regs(), (0xFFFF, 254));
        assert_eq!(big.addressable_sectors(), 16_450_560);
        let tiny = Chs::for_disk(100, None);
        assert_eq!(tiny.cylinders, 1);
    }

    #[test]
    fn image_geometry_is_used_only_when_int13_can_express_it() {
        let vhd_small = Chs { cylinders: 520, heads: 16, sectors_per_track: 63 };
        assert_eq!(Chs::for_disk(520 * 16 * 63, Some(vhd_small)), vhd_small);
        // Large VHD footers say 65535/16/255: spt 255 is not expressible in CL.
        let vhd_big = Chs { cylinders: 65535, heads: 16, sectors_per_track: 255 };
        assert_eq!(Chs::for_disk(300_000_000, Some(vhd_big)).heads, 255);
        assert_eq!(Chs::for_disk(300_000_000, Some(vhd_big)).sectors_per_track, 63);
    }

    fn put_entry(mbr: &mut [u8; 512], i: usize, g: Chs, start_lba: u64, sectors: u64) {
        let enc = |lba: u64| {
            let a = g.from_lba(lba).unwrap_or(ChsAddress { cylinder: 1023, head: 254, sector: 63 });
            let (cx, dh) = a.to_regs();
            [dh, cx as u8, (cx >> 8) as u8]
        };
        let e = &mut mbr[0x1BE + 16 * i..0x1BE + 16 * (i + 1)];
        e[1..4].copy_from_slice(&enc(start_lba));
        e[4] = 0x06;
        e[5..8].copy_from_slice(&enc(start_lba + sectors - 1));
        e[8..12].copy_from_slice(&(start_lba as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    }

    #[test]
    fn mbr_chs_lba_pairs_give_the_geometry() {
        let mut mbr = [0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(geometry_from_mbr(&mbr, 10_000), None);
        // DOS-era: cylinder-aligned partitions on 16 heads / 32 sectors.
        let dos = Chs { cylinders: 1024, heads: 16, sectors_per_track: 32 };
        put_entry(&mut mbr, 0, dos, 32, 16 * 32 * 100 - 32);
        let g = geometry_from_mbr(&mbr, 100_000).unwrap();
        assert_eq!((g.heads, g.sectors_per_track, g.cylinders), (16, 32, 195));
        // Modern 1 MiB alignment on 255/63: ends are not on cylinder boundaries.
        let mut mbr2 = [0u8; 512];
        mbr2[510] = 0x55;
        mbr2[511] = 0xAA;
        let lba_assist = Chs { cylinders: 1024, heads: 255, sectors_per_track: 63 };
        put_entry(&mut mbr2, 0, lba_assist, 2048, 100_000);
        put_entry(&mut mbr2, 1, lba_assist, 102_400, 1_000_000);
        // Beyond CHS: 1023/254/63 is skipped.
        put_entry(&mut mbr2, 2, lba_assist, 17_000_000, 1_000_000);
        let g = geometry_from_mbr(&mbr2, 20_000_000).unwrap();
        assert_eq!((g.heads, g.sectors_per_track), (255, 63));
        // Pairs no geometry can satisfy.
        mbr2[0x1BE + 8] ^= 1;
        assert_eq!(geometry_from_mbr(&mbr2, 20_000_000), None);
    }

    #[test]
    fn bpb_geometry_of_an_unpartitioned_fat_image() {
        let mut b = [0u8; 512];
        b[0] = 0xEB;
        b[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        b[0x15] = 0xF8;
        b[0x18..0x1A].copy_from_slice(&32u16.to_le_bytes());
        b[0x1A..0x1C].copy_from_slice(&64u16.to_le_bytes());
        assert_eq!(geometry_from_bpb(&b, 1_000_000), None, "no boot signature");
        b[0x26] = 0x29;
        b[0x36..0x39].copy_from_slice(b"FAT");
        let g = geometry_from_bpb(&b, 1_000_000).unwrap();
        assert_eq!((g.heads, g.sectors_per_track, g.cylinders), (64, 32, 488));
        assert_eq!(geometry_from_sector0(&b, 1_000_000), Some(g));
        b[0x15] = 0x12;
        assert_eq!(geometry_from_bpb(&b, 1_000_000), None, "bad media byte");
        b[0x15] = 0xF0;
        b[0x1A..0x1C].copy_from_slice(&256u16.to_le_bytes());
        assert_eq!(geometry_from_bpb(&b, 1_000_000), None, "256 heads");
    }

    #[test]
    fn odd_floppy_sizes_are_searched() {
        // 1.72M (82/2/21) is not in the table.
        assert_eq!(FloppyFormat::from_size(82 * 2 * 21 * 512), None);
        assert_eq!(floppy_geometry_by_search(82 * 2 * 21), Some(Chs { cylinders: 82, heads: 2, sectors_per_track: 21 }));
        assert_eq!(floppy_geometry_by_search(7), None);
    }

    #[test]
    fn floppy_formats_by_size() {
        let f = FloppyFormat::from_size(1_474_560).unwrap();
        assert_eq!(f.geometry, Chs { cylinders: 80, heads: 2, sectors_per_track: 18 });
        assert_eq!(f.drive_type, 4);
        assert_eq!(FloppyFormat::from_size(2_949_120).unwrap().drive_type, 6);
        assert_eq!(FloppyFormat::from_size(1_474_561), None);
        for f in FLOPPY_FORMATS {
            let g = f.geometry;
            assert_eq!(g.cylinders as u64 * g.heads as u64 * g.sectors_per_track as u64 * 512, f.bytes);
        }
        assert_eq!(diskette_parameter_table(18)[4], 18);
        let msg = FloppyFormat::for_image("/a.img", 1_000_000).unwrap_err();
        assert!(msg.contains("/a.img is 1000000 bytes") && msg.contains("1474560") && msg.contains("2949120"), "{}", msg);
        assert_eq!(FloppyFormat::for_image("/a.img", 1_720_320).unwrap().geometry.sectors_per_track, 21);
    }
}
