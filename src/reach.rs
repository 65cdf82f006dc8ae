//! How far into a disk the machine's BIOS can read, and whether a file lies within that reach
//! (docs/bios-reach.md). Everything vboot serves goes through the BIOS's INT 13h: stage2 reads
//! grub.cfg and prepares the boot with it, and the resident engine reads and writes the image
//! files with it while the guest runs. A file that ends past what the BIOS can address would boot
//! and then fail in the middle of the guest's start, so stage2 refuses it first, before anything
//! is written, with the limit and the file's last sector.

use alloc::format;
use alloc::string::String;

use crate::fs::ExtentList;

/// What the BIOS offers for one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiosAccess {
    /// INT 13h extensions (AH=41h said so): AH=42h/43h with 64-bit LBAs, up to the sector count
    /// AH=48h reported.
    Extensions { sectors: u64 },
    /// No extensions: AH=02h/03h with cylinder/head/sector addresses, at most 1024 cylinders of
    /// the geometry AH=08h reported (8 GiB with 255 heads of 63 sectors).
    Chs { cylinders: u32, heads: u32, sectors_per_track: u32 },
}

/// The most cylinders a CHS address can name (10 bits).
pub const CHS_MAX_CYLINDERS: u32 = 1024;

impl BiosAccess {
    /// Sectors from the start of the disk that the BIOS can read and write.
    pub fn reachable_sectors(&self) -> u64 {
        match *self {
            BiosAccess::Extensions { sectors } => sectors,
            BiosAccess::Chs { cylinders, heads, sectors_per_track } => {
                cylinders.min(CHS_MAX_CYLINDERS) as u64 * heads as u64 * sectors_per_track as u64
            }
        }
    }

    /// The limit in words, for a message.
    pub fn describe(&self) -> String {
        let bytes = self.reachable_sectors().saturating_mul(512);
        match *self {
            BiosAccess::Extensions { sectors } => format!(
                "this BIOS reports {} sectors ({}) for the disk through its INT 13h extensions",
                sectors,
                human(bytes)
            ),
            BiosAccess::Chs { cylinders, heads, sectors_per_track } => format!(
                "this BIOS has no INT 13h extensions, so it reaches only {} cylinders x {} heads x {} sectors ({}) of the disk",
                cylinders.min(CHS_MAX_CYLINDERS),
                heads,
                sectors_per_track,
                human(bytes)
            ),
        }
    }
}

/// Whole MiB (no floating point: the firmware would link its formatting code for this alone).
fn human(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The last disk sector of a file whose extents are in disk (host) LBAs, if it has any.
pub fn last_sector(extents_host: &ExtentList) -> Option<u64> {
    // A run whose end does not fit in 64 bits ends beyond any reach.
    extents_host.extents.iter().map(|e| e.lba.checked_add(e.sectors).map_or(u64::MAX, |end| end.saturating_sub(1))).max()
}

/// `Ok` when every sector of the file `path` (extents in disk LBAs) is within the BIOS's reach;
/// otherwise what the user reads.
pub fn check_file(path: &str, extents_host: &ExtentList, access: &BiosAccess) -> Result<(), String> {
    let reach = access.reachable_sectors();
    match last_sector(extents_host) {
        Some(last) if last >= reach => Err(format!(
            "{} cannot be booted on this machine: it ends at disk sector {} ({} into the disk), but {}. \
             Move the file nearer the start of the disk (a partition that ends within the limit), \
             or boot a machine whose BIOS reaches further",
            path,
            last,
            human(last.saturating_add(1).saturating_mul(512)),
            access.describe()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(runs: &[(u64, u64)]) -> ExtentList {
        let mut l = ExtentList::default();
        for &(lba, n) in runs {
            l.push(lba, n);
        }
        l
    }

    const CHS_8G: BiosAccess = BiosAccess::Chs { cylinders: 1024, heads: 255, sectors_per_track: 63 };

    #[test]
    fn chs_reaches_1024_cylinders_whatever_the_geometry_says() {
        assert_eq!(CHS_8G.reachable_sectors(), 16_450_560);
        let more = BiosAccess::Chs { cylinders: 4000, heads: 255, sectors_per_track: 63 };
        assert_eq!(more.reachable_sectors(), 16_450_560);
        assert_eq!(BiosAccess::Extensions { sectors: 1 << 40 }.reachable_sectors(), 1 << 40);
    }

    #[test]
    fn a_file_inside_the_reach_is_accepted_up_to_its_last_sector() {
        let f = file(&[(2048, 100), (16_450_000, 560)]);
        assert_eq!(last_sector(&f), Some(16_450_559));
        assert!(check_file("/vm/a.vhd", &f, &CHS_8G).is_ok());
        assert!(check_file("/vm/empty", &ExtentList::default(), &CHS_8G).is_ok());
    }

    #[test]
    fn a_file_past_the_chs_limit_is_refused_with_the_limit_and_its_last_sector() {
        // The last run is not the last in the file: fragments come in any order on disk.
        let f = file(&[(20_000_000, 8), (4096, 8)]);
        let e = check_file("/vm/big.vhd", &f, &CHS_8G).unwrap_err();
        assert!(e.starts_with("/vm/big.vhd cannot be booted on this machine: it ends at disk sector 20000007"), "{}", e);
        assert!(e.contains("no INT 13h extensions") && e.contains("1024 cylinders x 255 heads x 63 sectors") && e.contains("8032 MiB"), "{}", e);
        let just_out = file(&[(16_450_560, 1)]);
        assert!(check_file("/x", &just_out, &CHS_8G).is_err(), "the first unreachable sector");
    }

    #[test]
    fn a_file_past_what_the_extensions_report_is_refused() {
        let f = file(&[(1 << 28, 1)]);
        let access = BiosAccess::Extensions { sectors: 1 << 28 };
        let e = check_file("/vm/far.vmdk", &f, &access).unwrap_err();
        assert!(e.contains("reports 268435456 sectors (131072 MiB)"), "{}", e);
        assert!(check_file("/vm/far.vmdk", &file(&[((1 << 28) - 1, 1)]), &access).is_ok());
    }

    #[test]
    fn absurd_extents_do_not_overflow() {
        let f = file(&[(u64::MAX - 1, 8)]);
        assert!(check_file("/x", &f, &BiosAccess::Extensions { sectors: u64::MAX }).is_err());
    }
}
