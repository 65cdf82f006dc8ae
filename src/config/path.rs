//! GRUB path syntax for the files named on a `vboot` line.
//!
//! Forms accepted, with GRUB's numbering (disks from 0, partitions from 1, logical partitions
//! of an MBR extended partition from 5):
//! - `/images/xp.vhd`: on the partition grub.cfg was read from;
//! - `(hd0)/xp.img`: on disk 0 used as a whole (an unpartitioned "superfloppy" volume);
//! - `(hd0,1)/xp.vmdk`: partition 1 of disk 0, whatever the partition table;
//! - `(hd0,msdos5)/...`, `(hd1,gpt2)/...`: the same with GRUB's partition-map hint.
//!
//! Backslashes are accepted as separators (people copy paths from Windows) and stored as `/`.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

/// Which partition table a `(hdN,msdosM)` / `(hdN,gptM)` prefix named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionScheme {
    Msdos,
    Gpt,
}

/// A partition in GRUB numbering: primaries 1-4 and logicals from 5 on MBR disks, 1.. on GPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionRef {
    pub number: u32,
    /// `Some` when the path spelled the table type (`msdos5`, `gpt2`); `None` for a bare `5`.
    pub scheme_hint: Option<PartitionScheme>,
}

/// A parsed path. `disk == None` means "the partition grub.cfg was read from"; then `partition`
/// is also `None`. `path` always starts with `/` and uses `/` as separator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrubPath {
    pub disk: Option<u32>,
    pub partition: Option<PartitionRef>,
    pub path: String,
}

/// Why a path was refused; `text` is the path as written, so messages can quote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    pub text: String,
    pub message: String,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad path `{}`: {}", self.text, self.message)
    }
}

fn err(text: &str, message: impl Into<String>) -> PathError {
    PathError { text: text.to_string(), message: message.into() }
}

/// Decimal number without sign; `None` when empty, not all digits or too large for u32.
fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl GrubPath {
    /// Parse a path as written on a `vboot` line (after quote removal).
    pub fn parse(text: &str) -> Result<GrubPath, PathError> {
        if text.is_empty() {
            return Err(err(text, "the path is empty"));
        }
        let (disk, partition, rest) = if let Some(after_paren) = text.strip_prefix('(') {
            let close = after_paren
                .find(')')
                .ok_or_else(|| err(text, "the device has no closing `)`; write it as (hd0,1)/file"))?;
            let device = &after_paren[..close];
            let rest = &after_paren[close + 1..];
            let (disk, partition) = parse_device(text, device)?;
            if rest.is_empty() {
                return Err(err(
                    text,
                    format!(
                        "`({})` names a device but no file; add the path, as in ({})/file.vhd",
                        device, device
                    ),
                ));
            }
            if !rest.starts_with('/') && !rest.starts_with('\\') {
                return Err(err(text, format!("after `({})` the path must start with `/`", device)));
            }
            (Some(disk), partition, rest)
        } else {
            if !text.starts_with('/') && !text.starts_with('\\') {
                return Err(err(
                    text,
                    format!(
                        "a relative path needs a device; write /{} (on the grub.cfg partition) or (hd0,1)/{}",
                        text, text
                    ),
                ));
            }
            (None, None, text)
        };
        if rest.chars().any(|c| c.is_control()) {
            return Err(err(text, "the path contains a control character"));
        }
        let path: String = rest.chars().map(|c| if c == '\\' { '/' } else { c }).collect();
        Ok(GrubPath { disk, partition, path })
    }

    /// Parse a path that must name a file (not `/` and not ending in a separator).
    pub fn parse_file(text: &str) -> Result<GrubPath, PathError> {
        let p = GrubPath::parse(text)?;
        if p.file_name().is_none() {
            return Err(err(text, "the path names a directory, not a file"));
        }
        Ok(p)
    }

    /// The last component, or `None` when the path ends in `/` (a directory).
    pub fn file_name(&self) -> Option<&str> {
        match self.path.rsplit('/').next() {
            Some(name) if !name.is_empty() => Some(name),
            _ => None,
        }
    }

    /// True when the file lives on the partition grub.cfg came from.
    pub fn is_on_config_partition(&self) -> bool {
        self.disk.is_none()
    }
}

fn parse_device(text: &str, device: &str) -> Result<(u32, Option<PartitionRef>), PathError> {
    let mut parts = device.split(',');
    let drive = parts.next().unwrap_or("");
    let disk_digits = match drive.strip_prefix("hd") {
        Some(d) => d,
        None => {
            let known_elsewhere = ["fd", "cd", "ahci", "ata", "usb", "hostdisk", "loop", "memdisk"]
                .iter()
                .any(|p| drive.starts_with(p));
            return Err(err(
                text,
                if known_elsewhere {
                    format!("device `({})` is not a BIOS hard disk; vboot reads and starts (hdN) disks only", device)
                } else {
                    format!("unknown device `({})`; write (hdN) or (hdN,M), for example (hd0,1)", device)
                },
            ));
        }
    };
    let disk = parse_u32(disk_digits).ok_or_else(|| {
        err(text, format!("`({})`: the disk number after `hd` is missing or not a number", device))
    })?;
    let partition = match parts.next() {
        None => None,
        Some(p) => {
            let (digits, scheme_hint) = if let Some(d) = p.strip_prefix("msdos") {
                (d, Some(PartitionScheme::Msdos))
            } else if let Some(d) = p.strip_prefix("gpt") {
                (d, Some(PartitionScheme::Gpt))
            } else {
                (p, None)
            };
            let number = parse_u32(digits).ok_or_else(|| {
                err(text, format!("`({})`: partition `{}` is not a number, msdosN or gptN", device, p))
            })?;
            if number == 0 {
                return Err(err(
                    text,
                    format!("`({})`: GRUB numbers partitions from 1, so partition 0 does not exist", device),
                ));
            }
            Some(PartitionRef { number, scheme_hint })
        }
    };
    if parts.next().is_some() {
        return Err(err(
            text,
            format!("`({})`: nested partitions (a BSD label inside a partition) are not supported", device),
        ));
    }
    Ok((disk, partition))
}

impl fmt::Display for GrubPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(disk) = self.disk {
            write!(f, "{}", GrubDevice { disk, partition: self.partition })?;
        }
        write!(f, "{}", self.path)
    }
}

/// A device on its own, `(hd1)` or `(hd0,msdos2)`, as GRUB's `root` variable and `chainloader`
/// name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrubDevice {
    pub disk: u32,
    /// `None`: the whole disk.
    pub partition: Option<PartitionRef>,
}

impl GrubDevice {
    /// `hd0,2` or `(hd0,2)` (GRUB's `root` is written both ways); `text` is quoted in errors.
    pub fn parse(text: &str) -> Result<GrubDevice, PathError> {
        let inner = match text.strip_prefix('(') {
            Some(rest) => rest.strip_suffix(')').ok_or_else(|| err(text, "the device has no closing `)`; write it as (hd0,1)"))?,
            None => text,
        };
        let (disk, partition) = parse_device(text, inner)?;
        Ok(GrubDevice { disk, partition })
    }

    /// The BIOS drive GRUB's `hdN` is: 80h + N, while that is a drive number (N < 128).
    pub fn bios_drive(&self) -> Option<u8> {
        u8::try_from(0x80u64 + self.disk as u64).ok()
    }
}

impl fmt::Display for GrubDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(hd{}", self.disk)?;
        if let Some(p) = self.partition {
            let prefix = match p.scheme_hint {
                None => "",
                Some(PartitionScheme::Msdos) => "msdos",
                Some(PartitionScheme::Gpt) => "gpt",
            };
            write!(f, ",{}{}", prefix, p.number)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> GrubPath {
        GrubPath::parse(s).unwrap_or_else(|e| panic!("{}: {}", s, e))
    }

    fn bad(s: &str, needle: &str) {
        match GrubPath::parse(s) {
            Ok(p) => panic!("{} parsed as {:?}", s, p),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{:?} lacks {:?}", msg, needle);
                assert!(msg.contains(s), "{:?} does not quote the path", msg);
            }
        }
    }

    #[test]
    fn config_partition_path() {
        let p = ok("/images/xp.vhd");
        assert_eq!(p, GrubPath { disk: None, partition: None, path: "/images/xp.vhd".into() });
        assert!(p.is_on_config_partition());
        assert_eq!(p.file_name(), Some("xp.vhd"));
        assert_eq!(p.to_string(), "/images/xp.vhd");
    }

    #[test]
    fn device_forms() {
        let p = ok("(hd0,1)/xp.vmdk");
        assert_eq!(p.disk, Some(0));
        assert_eq!(p.partition, Some(PartitionRef { number: 1, scheme_hint: None }));
        assert_eq!(p.path, "/xp.vmdk");

        let p = ok("(hd0,msdos5)/win/xp.vhd");
        assert_eq!(p.partition, Some(PartitionRef { number: 5, scheme_hint: Some(PartitionScheme::Msdos) }));
        assert_eq!(p.to_string(), "(hd0,msdos5)/win/xp.vhd");

        let p = ok("(hd1,gpt2)/a");
        assert_eq!(p.disk, Some(1));
        assert_eq!(p.partition, Some(PartitionRef { number: 2, scheme_hint: Some(PartitionScheme::Gpt) }));
        assert_eq!(p.to_string(), "(hd1,gpt2)/a");

        let p = ok("(hd0)/x");
        assert_eq!((p.disk, p.partition), (Some(0), None));
        assert_eq!(p.to_string(), "(hd0)/x");

        assert_eq!(ok("(hd12,128)/x").to_string(), "(hd12,128)/x");
    }

    #[test]
    fn backslashes_become_slashes() {
        let p = ok("(hd0,1)\\VHD\\Win 7.vhd");
        assert_eq!(p.path, "/VHD/Win 7.vhd");
        assert_eq!(p.to_string(), "(hd0,1)/VHD/Win 7.vhd");
        assert_eq!(ok("\\xp.vhd").path, "/xp.vhd");
    }

    #[test]
    fn directories_and_files() {
        assert_eq!(ok("/images/").file_name(), None);
        assert_eq!(ok("/").file_name(), None);
        assert!(GrubPath::parse_file("/images/").is_err());
        assert!(GrubPath::parse_file("(hd0,1)/").is_err());
        assert!(GrubPath::parse_file("(hd0,1)/a.vhd").is_ok());
    }

    #[test]
    fn refusals() {
        bad("", "empty");
        bad("(hd0,0)/x", "partition 0");
        bad("(hd0,msdos0)/x", "partition 0");
        bad("(fd0", "closing `)`");
        bad("(fd0)/x.img", "not a BIOS hard disk");
        bad("(foo)/x", "unknown device `(foo)`");
        bad("(hd)/x", "disk number");
        bad("(hdx,1)/x", "disk number");
        bad("(hd0,)/x", "partition ``");
        bad("(hd0,bsd1)/x", "partition `bsd1`");
        bad("(hd0,msdos1,bsd1)/x", "nested");
        bad("(hd0,1)", "no file");
        bad("(hd0,1)xp.vhd", "must start with `/`");
        bad("xp.vhd", "relative path");
        bad("images/xp.vhd", "relative path");
        bad("(hd99999999999,1)/x", "disk number");
        bad("/a\tb", "control character");
    }
}
