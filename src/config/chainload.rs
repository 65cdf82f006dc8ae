//! GRUB's `chainloader` line in a menu entry: start the boot loader that is already on a disk.
//!
//! ```text
//! set root=(hd0,2)               the boot sector (VBR) of partition 2 of disk 0,
//! chainloader +1                 started with DS:SI at its partition entry
//! chainloader (hd0,2)+1          the same, naming the device
//! chainloader (hd1)+1            the MBR of disk 1
//! chainloader --original-mbr     the sector 0 vboot-install saved (vboot's own option)
//! ```
//!
//! Only the first sector of a device can be chainloaded (`+1`): vboot does not load files, so
//! `chainloader /efi/x.efi` or `(hd0,1)/bootmgr` is refused, and so are GRUB's `--force` and
//! `--bpb` and block lists of more sectors. `+1` alone takes its device from the `root` variable
//! as the entry has it at that line (`set root=(hd0,2)` or GRUB's `set root='hd0,msdos2'`); vboot
//! does not run `search`, so a root that only `search --set=root` would set is missing.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::path::{GrubDevice, PathError};

/// What a `chainloader` line starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainTarget {
    /// The first sector of a device: a partition's boot sector (VBR), or a whole disk's MBR.
    FirstSector(GrubDevice),
    /// The sector 0 vboot-install saved when it installed vboot, with the disk's current
    /// partition table: the boot loader vboot replaced, for this boot only.
    OriginalMbr,
}

impl ChainTarget {
    /// Human-readable summary, one fact a line, for the entry view and the screen before booting.
    pub fn describe(&self) -> Vec<String> {
        match self {
            ChainTarget::FirstSector(device) => {
                let drive = match device.bios_drive() {
                    Some(drive) => format!("started as BIOS drive {:#04x}", drive),
                    None => format!("(hd{}) is past the last BIOS drive number (0xff)", device.disk),
                };
                match device.partition {
                    Some(_) => alloc::vec![
                        format!("chainload: the boot sector of partition {}", device),
                        format!("{}, DS:SI at its partition entry", drive),
                    ],
                    None => alloc::vec![format!("chainload: the MBR of disk {}", device), drive],
                }
            }
            ChainTarget::OriginalMbr => alloc::vec![
                "chainload: the original MBR vboot-install saved, with the current partition table".to_string(),
                "for this boot only: nothing is written".to_string(),
            ],
        }
    }
}

impl fmt::Display for ChainTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainTarget::FirstSector(device) => write!(f, "{}+1", device),
            ChainTarget::OriginalMbr => f.write_str("--original-mbr"),
        }
    }
}

/// Why a `chainloader` line was refused; `word` is the argument at fault as written (or
/// `chainloader` when one is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainloadError {
    pub word: String,
    pub kind: ChainloadErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainloadErrorKind {
    /// `chainloader` with nothing to load.
    NothingToLoad,
    /// A file (`/efi/x.efi`, `(hd0,1)/bootmgr`): vboot loads only a device's first sector.
    LoadsAFile,
    /// A device without `+1`: `chainloader (hd0,1)`.
    NoSectors,
    /// A block list other than the first sector (`+4`, `1+1`, `+1,5+1`).
    NotTheFirstSector,
    /// `+1` with no device and no `root` variable.
    NoRoot,
    /// `root` holds something that is not a BIOS hard disk or partition.
    BadRoot(PathError),
    BadDevice(PathError),
    /// An option vboot does not take; `grubs` when it is one of GRUB's own (`--force`, `--bpb`).
    UnknownOption { grubs: bool },
    /// More than one thing to load, or a device together with `--original-mbr`.
    ExtraArgument,
    /// A second `chainloader` line in the same entry.
    SecondChainloaderLine { first_line: usize },
}

const FIRST_SECTOR_HOWTO: &str = "write chainloader (hdN,M)+1 for a partition's boot sector, chainloader (hdN)+1 for a disk's MBR, \
                                  or set root=(hdN,M) and chainloader +1";

impl fmt::Display for ChainloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.word;
        match &self.kind {
            ChainloadErrorKind::NothingToLoad => write!(f, "`{}` names nothing to start; {}", w, FIRST_SECTOR_HOWTO),
            ChainloadErrorKind::LoadsAFile => write!(
                f,
                "chainloader `{}`: loading files is not supported, only +1 (the first sector of a partition or disk); {}",
                w, FIRST_SECTOR_HOWTO
            ),
            ChainloadErrorKind::NoSectors => {
                write!(f, "chainloader `{}` names a device but not its first sector: write {}+1", w, w)
            }
            ChainloadErrorKind::NotTheFirstSector => write!(
                f,
                "chainloader `{}`: only +1 (the first sector of a partition or disk) can be loaded",
                w
            ),
            ChainloadErrorKind::NoRoot => write!(
                f,
                "chainloader `{}` has no device: root is not set (vboot does not run `search`); \
                 put set root=(hdN,M) before it or write chainloader (hdN,M)+1",
                w
            ),
            ChainloadErrorKind::BadRoot(e) => write!(f, "chainloader `{}`: the root variable: {}", w, e),
            ChainloadErrorKind::BadDevice(e) => write!(f, "chainloader `{}`: {}", w, e),
            ChainloadErrorKind::UnknownOption { grubs: true } => write!(
                f,
                "chainloader option `{}` is GRUB's and not supported by vboot; the options are --original-mbr",
                w
            ),
            ChainloadErrorKind::UnknownOption { grubs: false } => {
                write!(f, "unknown chainloader option `{}`; the options are --original-mbr", w)
            }
            ChainloadErrorKind::ExtraArgument => write!(
                f,
                "chainloader `{}`: one thing to start per line: a device's +1, or --original-mbr alone",
                w
            ),
            ChainloadErrorKind::SecondChainloaderLine { first_line } => {
                write!(f, "`{}`: this entry already has a chainloader line (line {}); keep one", w, first_line)
            }
        }
    }
}

fn fail(word: &str, kind: ChainloadErrorKind) -> ChainloadError {
    ChainloadError { word: word.to_string(), kind }
}

/// Parse the words after `chainloader` (quotes removed, variables expanded), with `root` the
/// entry's `root` variable at that line (`None` or empty: not set).
pub fn parse<S: AsRef<str>>(words: &[S], root: Option<&str>) -> Result<ChainTarget, ChainloadError> {
    let mut original_mbr = false;
    let mut what: Option<&str> = None;
    for word in words {
        let word = word.as_ref();
        if word.starts_with("--") {
            match word {
                "--original-mbr" if !original_mbr => original_mbr = true,
                "--original-mbr" => return Err(fail(word, ChainloadErrorKind::ExtraArgument)),
                _ => {
                    let grubs = matches!(word, "--force" | "--bpb");
                    return Err(fail(word, ChainloadErrorKind::UnknownOption { grubs }));
                }
            }
        } else if what.is_some() {
            return Err(fail(word, ChainloadErrorKind::ExtraArgument));
        } else {
            what = Some(word);
        }
    }
    let what = match (original_mbr, what) {
        (true, None) => return Ok(ChainTarget::OriginalMbr),
        (true, Some(w)) => return Err(fail(w, ChainloadErrorKind::ExtraArgument)),
        (false, None) => return Err(fail("chainloader", ChainloadErrorKind::NothingToLoad)),
        (false, Some(w)) => w,
    };
    // `(device)rest` or `rest` alone.
    let (device_text, rest) = match what.strip_prefix('(') {
        Some(after) => match after.find(')') {
            Some(close) => (Some(&what[..close + 2]), &after[close + 1..]),
            None => {
                let message = "the device has no closing `)`; write it as (hd0,1)+1".to_string();
                return Err(fail(what, ChainloadErrorKind::BadDevice(PathError { text: what.to_string(), message })));
            }
        },
        None => (None, what),
    };
    if rest.is_empty() {
        return Err(fail(what, ChainloadErrorKind::NoSectors));
    }
    if !rest.bytes().all(|b| b.is_ascii_digit() || b == b'+' || b == b',') {
        return Err(fail(what, ChainloadErrorKind::LoadsAFile));
    }
    // GRUB's block list: `[offset]+length[,...]`; only the first sector is a boot sector.
    if rest != "+1" && rest != "0+1" {
        return Err(fail(what, ChainloadErrorKind::NotTheFirstSector));
    }
    let device = match device_text {
        Some(text) => GrubDevice::parse(text).map_err(|e| fail(what, ChainloadErrorKind::BadDevice(e)))?,
        None => match root.filter(|r| !r.is_empty()) {
            None => return Err(fail(what, ChainloadErrorKind::NoRoot)),
            Some(r) => GrubDevice::parse(r).map_err(|e| fail(what, ChainloadErrorKind::BadRoot(e)))?,
        },
    };
    Ok(ChainTarget::FirstSector(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::path::{PartitionRef, PartitionScheme};

    fn parse_line(line: &str, root: Option<&str>) -> Result<ChainTarget, ChainloadError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        parse(&words, root)
    }

    fn ok(line: &str, root: Option<&str>) -> ChainTarget {
        parse_line(line, root).unwrap_or_else(|e| panic!("{}: {}", line, e))
    }

    fn partition(disk: u32, number: u32, scheme_hint: Option<PartitionScheme>) -> ChainTarget {
        ChainTarget::FirstSector(GrubDevice { disk, partition: Some(PartitionRef { number, scheme_hint }) })
    }

    /// The refusal names the word and says the expected thing.
    fn refused(line: &str, root: Option<&str>, word: &str, needle: &str) -> ChainloadErrorKind {
        crate::config::refusal(line, parse_line(line, root), |e| &e.word, word, needle).kind
    }

    #[test]
    fn devices_and_root() {
        assert_eq!(ok("(hd0,2)+1", None), partition(0, 2, None));
        assert_eq!(ok("(hd1,msdos5)+1", Some("(hd0,1)")), partition(1, 5, Some(PartitionScheme::Msdos)));
        assert_eq!(ok("(hd0,gpt3)0+1", None), partition(0, 3, Some(PartitionScheme::Gpt)));
        assert_eq!(ok("(hd1)+1", None), ChainTarget::FirstSector(GrubDevice { disk: 1, partition: None }));
        // `+1` takes root, written with or without parentheses (os-prober writes 'hd0,msdos1').
        assert_eq!(ok("+1", Some("(hd0,2)")), partition(0, 2, None));
        assert_eq!(ok("+1", Some("hd0,msdos1")), partition(0, 1, Some(PartitionScheme::Msdos)));
        assert_eq!(ok("+1", Some("hd2")), ChainTarget::FirstSector(GrubDevice { disk: 2, partition: None }));
        assert_eq!(ok("--original-mbr", None), ChainTarget::OriginalMbr);
        assert_eq!(ok("--original-mbr", Some("(hd0,1)")), ChainTarget::OriginalMbr);
    }

    #[test]
    fn display_and_describe() {
        assert_eq!(partition(0, 5, Some(PartitionScheme::Msdos)).to_string(), "(hd0,msdos5)+1");
        assert_eq!(ChainTarget::OriginalMbr.to_string(), "--original-mbr");
        let d = partition(1, 2, None).describe();
        assert_eq!(d[0], "chainload: the boot sector of partition (hd1,2)");
        assert!(d[1].contains("BIOS drive 0x81"), "{:?}", d);
        let d = ChainTarget::FirstSector(GrubDevice { disk: 0, partition: None }).describe();
        assert_eq!(d[0], "chainload: the MBR of disk (hd0)");
        assert_eq!(d[1], "started as BIOS drive 0x80");
        // Disk numbers past the BIOS's are parsed (and refused at boot as missing), not wrapped.
        let far = ok("(hd4294967295)+1", None);
        assert!(far.describe()[1].contains("past the last BIOS drive number"), "{:?}", far.describe());
        assert_eq!(GrubDevice { disk: 127, partition: None }.bios_drive(), Some(0xFF));
        assert_eq!(GrubDevice { disk: 128, partition: None }.bios_drive(), None);
        assert!(ChainTarget::OriginalMbr.describe().concat().contains("nothing is written"));
    }

    #[test]
    fn files_are_refused() {
        for file in ["/efi/x.efi", "(hd0,1)/bootmgr", "/ntldr", "(hd0,1)/boot/+1"] {
            let k = refused(file, Some("(hd0,1)"), file, "loading files is not supported, only +1");
            assert_eq!(k, ChainloadErrorKind::LoadsAFile);
        }
    }

    #[test]
    fn only_the_first_sector() {
        for list in ["+4", "1+1", "+1,5+1", "(hd0,1)+2", "+", "+01x"] {
            let k = parse_line(list, Some("(hd0,1)")).unwrap_err().kind;
            assert!(matches!(k, ChainloadErrorKind::NotTheFirstSector | ChainloadErrorKind::LoadsAFile), "{}: {:?}", list, k);
        }
        refused("+4", Some("(hd0,1)"), "+4", "only +1");
        refused("(hd0,1)", None, "(hd0,1)", "write (hd0,1)+1");
    }

    #[test]
    fn root_is_needed_for_plus_one() {
        let k = refused("+1", None, "+1", "set root=(hdN,M)");
        assert_eq!(k, ChainloadErrorKind::NoRoot);
        refused("+1", Some(""), "+1", "root is not set");
        refused("+1", Some("(cd0)"), "+1", "the root variable");
        refused("+1", Some("(hd0,0)"), "+1", "partition 0");
    }

    #[test]
    fn bad_devices_options_and_extra_words() {
        refused("(fd0)+1", None, "(fd0)+1", "not a BIOS hard disk");
        refused("(hd0,1+1", None, "(hd0,1+1", "closing `)`");
        refused("(hdx)+1", None, "(hdx)+1", "disk number");
        let k = refused("--bpb +1", Some("(hd0,1)"), "--bpb", "GRUB's and not supported");
        assert_eq!(k, ChainloadErrorKind::UnknownOption { grubs: true });
        refused("--force (hd0,1)+1", None, "--force", "not supported");
        refused("--orignal-mbr", None, "--orignal-mbr", "unknown chainloader option");
        refused("(hd0,1)+1 (hd0,2)+1", None, "(hd0,2)+1", "one thing to start");
        refused("--original-mbr (hd0,1)+1", None, "(hd0,1)+1", "--original-mbr alone");
        refused("--original-mbr --original-mbr", None, "--original-mbr", "one thing");
        refused("", None, "chainloader", "names nothing to start");
    }
}
