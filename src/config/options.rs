//! The `vboot` line of a menu entry, parsed into typed options.
//!
//! ```text
//! vboot harddisk=PATH cdrom=PATH floppy=PATH floppy_b=PATH boot=harddisk|cdrom|floppy
//!       parent_dir=DIR take_snapshot=PATH boot_entry=INDEX config_file=PATH
//!       new_menu_entry=TITLE reserve=SIZE restore immutable immutable_child=PATH
//!       recover_mbr pause
//! ```
//!
//! The parser takes the words after `vboot` once grub.cfg quoting and `$var` expansion are done,
//! so `harddisk="/My Images/xp.vhd"` arrives as one word. Every refusal names the word at fault.
//!
//! Rules beyond "each word is a known option":
//! - Without `boot=`, the guest boots from the hard disk if `harddisk=` is given, else from the
//!   CD if `cdrom=` is given, else from floppy A: (`floppy=`). `floppy_b=` is never booted.
//! - A line must name at least one of `harddisk=`, `cdrom=`, `floppy=`, except a line with
//!   `recover_mbr`, which boots the MBR that vboot-install saved and needs no image.
//! - `take_snapshot=`, `restore` and `parent_dir=` concern the hard-disk image and need
//!   `harddisk=`; `restore` and `take_snapshot=` exclude each other (one throws the child away,
//!   the other adds one).
//! - `boot_entry=`, `config_file=` and `new_menu_entry=` say how to rewrite grub.cfg after a
//!   snapshot, so they need `take_snapshot=`. `boot_entry=` (point an existing entry at the
//!   snapshot) and `new_menu_entry=` (add an entry for it) exclude each other.
//! - `reserve=SIZE` (bytes, or with a K, M or G suffix) is the write slack a sparse hard-disk
//!   image gets before boot (vboot's own extension); it needs `harddisk=`.
//! - `immutable_child=PATH` says where `immutable` keeps the hard-disk image's throwaway
//!   differencing child (default: beside the image, `x.vhd` -> `x.immutable.vhd`;
//!   docs/usage.md); it needs `immutable` and `harddisk=`. `restore` and `immutable` exclude each
//!   other (one empties the image's own child, the other never changes the image).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::path::{GrubPath, PathError};

/// Which emulated drive receives control (its boot sector at 0x7C00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    Harddisk,
    Cdrom,
    Floppy,
}

impl BootDevice {
    pub fn keyword(self) -> &'static str {
        match self {
            BootDevice::Harddisk => "harddisk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Floppy => "floppy",
        }
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbootOptions {
    pub harddisk: Option<GrubPath>,
    pub cdrom: Option<GrubPath>,
    pub floppy: Option<GrubPath>,
    pub floppy_b: Option<GrubPath>,
    /// The device to boot: `boot=` if given, else the default described in the module docs.
    /// `None` only for a `recover_mbr` line without images.
    pub boot: Option<BootDevice>,
    /// True when `boot=` was written (for display: "boot: cdrom (default)" vs explicit).
    pub boot_explicit: bool,
    /// Where to look for the parents of a differencing image.
    pub parent_dir: Option<GrubPath>,
    /// Before booting, create a differencing child of the hard-disk image here and boot it.
    pub take_snapshot: Option<GrubPath>,
    /// Menu index (GRUB's, top level, from 0) of the entry the rewritten grub.cfg points at the
    /// new snapshot.
    pub boot_entry: Option<u32>,
    /// The grub.cfg to rewrite after a snapshot.
    pub config_file: Option<GrubPath>,
    /// Title of the menu entry to add for the new snapshot.
    pub new_menu_entry: Option<String>,
    /// Write slack the leaf of a sparse hard-disk image must have before boot (`reserve=`).
    pub reserve_bytes: Option<u64>,
    /// `immutable_child=`: where `immutable` keeps its throwaway differencing child, instead of
    /// beside the image.
    pub immutable_child: Option<GrubPath>,
    pub restore: bool,
    pub immutable: bool,
    pub recover_mbr: bool,
    pub pause: bool,
}

/// Why a `vboot` line was refused, and the word (as written) that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    pub word: String,
    pub kind: OptionErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionErrorKind {
    Unknown {
        suggestion: Option<&'static str>,
    },
    /// `harddisk=` or `harddisk` with nothing to go with it.
    MissingValue {
        option: &'static str,
    },
    /// `pause=1`: the option is a flag.
    ValueOnFlag {
        option: &'static str,
    },
    Duplicate {
        option: &'static str,
    },
    BadBootValue,
    /// `boot=cdrom` without `cdrom=` (and the same for the other devices).
    BootWithoutDevice {
        device: BootDevice,
    },
    RestoreWithSnapshot,
    /// `restore` together with `immutable`.
    RestoreWithImmutable,
    /// `immutable_child=` without `immutable`.
    NeedsImmutable,
    /// Nothing to boot: no harddisk=, cdrom= or floppy=. `word` is "vboot" or `floppy_b=...`.
    NoDevice,
    /// `boot_entry=` etc. without `take_snapshot=`.
    NeedsSnapshot {
        option: &'static str,
    },
    /// `take_snapshot=` etc. without `harddisk=`.
    NeedsHarddisk {
        option: &'static str,
    },
    NotANumber,
    /// `reserve=` with something that is not a size.
    BadSize,
    /// `boot_entry=` together with `new_menu_entry=`.
    EntryAndNewEntry,
    BadPath(PathError),
    /// A second `vboot` line in the same entry.
    SecondVbootLine {
        first_line: usize,
    },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.word;
        match &self.kind {
            OptionErrorKind::Unknown { suggestion: Some(s) } => {
                write!(f, "unknown vboot option `{}` (did you mean `{}`?)", w, s)
            }
            OptionErrorKind::Unknown { suggestion: None } => {
                write!(f, "unknown vboot option `{}`; the options are {}", w, KNOWN_LIST)
            }
            OptionErrorKind::MissingValue { option } => {
                write!(f, "vboot option `{}` needs a value: write {}={}", w, option, placeholder(option))
            }
            OptionErrorKind::ValueOnFlag { option } => {
                write!(
                    f,
                    "vboot option `{}`: `{}` is a flag and takes no value; write just {}{}",
                    w,
                    option,
                    option,
                    if *option == "immutable" { " (and immutable_child=PATH to say where its throwaway child goes)" } else { "" }
                )
            }
            OptionErrorKind::Duplicate { option } => {
                write!(f, "vboot option `{}`: `{}` is given twice", w, option)
            }
            OptionErrorKind::BadBootValue => {
                write!(f, "vboot option `{}`: boot= takes harddisk, cdrom or floppy", w)
            }
            OptionErrorKind::BootWithoutDevice { device } => write!(
                f,
                "vboot option `{}`: there is no {}= to boot from; add {}=PATH",
                w,
                device.keyword(),
                device.keyword()
            ),
            OptionErrorKind::RestoreWithSnapshot => write!(
                f,
                "vboot option `{}` cannot be combined with take_snapshot=: restore discards the \
                 differencing image, take_snapshot adds one",
                w
            ),
            OptionErrorKind::RestoreWithImmutable => write!(
                f,
                "vboot option `{}` cannot be combined with immutable: restore empties the image's \
                 differencing child, immutable never changes the image; keep one",
                w
            ),
            OptionErrorKind::NeedsImmutable => write!(
                f,
                "vboot option `{}`: immutable_child= says where immutable keeps its throwaway child; add immutable",
                w
            ),
            OptionErrorKind::NoDevice => {
                write!(f, "`{}`: nothing to boot; name an image with harddisk=, cdrom= or floppy=", w)
            }
            OptionErrorKind::NeedsSnapshot { option } => {
                write!(f, "vboot option `{}`: {}= only applies together with take_snapshot=", w, option)
            }
            OptionErrorKind::NeedsHarddisk { option } => {
                write!(f, "vboot option `{}`: {} works on the hard-disk image; add harddisk=PATH", w, option)
            }
            OptionErrorKind::NotANumber => {
                write!(f, "vboot option `{}`: boot_entry= takes a menu index (0, 1, 2 ...)", w)
            }
            OptionErrorKind::BadSize => {
                write!(f, "vboot option `{}`: reserve= takes a size in bytes, or with K, M or G (reserve=256M)", w)
            }
            OptionErrorKind::EntryAndNewEntry => write!(
                f,
                "vboot option `{}`: give either boot_entry= (point an existing entry at the snapshot) or \
                 new_menu_entry= (add an entry for it), not both",
                w
            ),
            OptionErrorKind::BadPath(e) => write!(f, "vboot option `{}`: {}", w, e),
            OptionErrorKind::SecondVbootLine { first_line } => {
                write!(f, "`{}`: this entry already has a vboot line (line {}); keep one", w, first_line)
            }
        }
    }
}

fn placeholder(option: &str) -> &'static str {
    match option {
        "boot" => "harddisk|cdrom|floppy",
        "parent_dir" => "DIR",
        "boot_entry" => "INDEX",
        "new_menu_entry" => "TITLE",
        "reserve" => "SIZE",
        _ => "PATH",
    }
}

const VALUE_OPTIONS: [&str; 12] = [
    "harddisk",
    "cdrom",
    "floppy",
    "floppy_b",
    "boot",
    "parent_dir",
    "take_snapshot",
    "boot_entry",
    "config_file",
    "new_menu_entry",
    "reserve",
    "immutable_child",
];
const FLAG_OPTIONS: [&str; 4] = ["restore", "immutable", "recover_mbr", "pause"];
const KNOWN_LIST: &str = "harddisk=, cdrom=, floppy=, floppy_b=, boot=, parent_dir=, take_snapshot=, \
                          boot_entry=, config_file=, new_menu_entry=, reserve=, restore, immutable, immutable_child=, \
                          recover_mbr, pause";

/// Edit distance (insert, delete, substitute), for "did you mean". Names are short, so the
/// quadratic table is a few hundred cells.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = alloc::vec![0usize; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + if ca == *cb { 0 } else { 1 };
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        core::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn closest_option(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase().replace('-', "_");
    // An abbreviation (`cd`, `recover`...) is a typo of the one name it starts.
    let mut prefixed =
        VALUE_OPTIONS.iter().chain(FLAG_OPTIONS.iter()).filter(|n| key.len() >= 2 && n.starts_with(&key[..]));
    if let (Some(name), None) = (prefixed.next(), prefixed.next()) {
        return Some(name);
    }
    let mut best: Option<(&'static str, usize)> = None;
    for name in VALUE_OPTIONS.iter().chain(FLAG_OPTIONS.iter()) {
        let d = edit_distance(&key, name);
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((name, d));
        }
    }
    let (name, d) = best?;
    // Close enough to be a typo, not a different word: at most a third of the name wrong.
    if d <= 2.max(name.len() / 3) {
        Some(name)
    } else {
        None
    }
}

/// Rendering of a suggestion as the user would type it (`harddisk=` vs `pause`).
fn spelled(name: &'static str) -> &'static str {
    match name {
        "harddisk" => "harddisk=",
        "cdrom" => "cdrom=",
        "floppy" => "floppy=",
        "floppy_b" => "floppy_b=",
        "boot" => "boot=",
        "parent_dir" => "parent_dir=",
        "take_snapshot" => "take_snapshot=",
        "boot_entry" => "boot_entry=",
        "config_file" => "config_file=",
        "new_menu_entry" => "new_menu_entry=",
        "reserve" => "reserve=",
        "immutable_child" => "immutable_child=",
        other => other,
    }
}

/// `4096`, `64K`, `256M`, `2G` (binary multiples; lower case too).
pub fn parse_size(value: &str) -> Option<u64> {
    let (digits, shift) = match value.as_bytes().last()? {
        b'k' | b'K' => (&value[..value.len() - 1], 10),
        b'm' | b'M' => (&value[..value.len() - 1], 20),
        b'g' | b'G' => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn fail(word: &str, kind: OptionErrorKind) -> OptionError {
    OptionError { word: word.to_string(), kind }
}

impl VbootOptions {
    /// Parse the words after `vboot`.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<VbootOptions, OptionError> {
        let mut o = VbootOptions {
            harddisk: None,
            cdrom: None,
            floppy: None,
            floppy_b: None,
            boot: None,
            boot_explicit: false,
            parent_dir: None,
            take_snapshot: None,
            boot_entry: None,
            config_file: None,
            new_menu_entry: None,
            reserve_bytes: None,
            immutable_child: None,
            restore: false,
            immutable: false,
            recover_mbr: false,
            pause: false,
        };
        // The word each option came from, for the cross-checks' messages.
        let mut seen: Vec<(&'static str, &str)> = Vec::new();

        for word in words {
            let word = word.as_ref();
            let (key, value) = match word.find('=') {
                Some(i) => (&word[..i], Some(&word[i + 1..])),
                None => (word, None),
            };
            let name = match VALUE_OPTIONS.iter().chain(FLAG_OPTIONS.iter()).find(|n| **n == key) {
                Some(n) => *n,
                None => {
                    let suggestion = closest_option(key).map(spelled);
                    return Err(fail(word, OptionErrorKind::Unknown { suggestion }));
                }
            };
            if seen.iter().any(|(n, _)| *n == name) {
                return Err(fail(word, OptionErrorKind::Duplicate { option: name }));
            }
            seen.push((name, word));
            if FLAG_OPTIONS.contains(&name) {
                if value.is_some() {
                    return Err(fail(word, OptionErrorKind::ValueOnFlag { option: name }));
                }
                match name {
                    "restore" => o.restore = true,
                    "immutable" => o.immutable = true,
                    "recover_mbr" => o.recover_mbr = true,
                    _ => o.pause = true,
                }
                continue;
            }
            let value = match value {
                Some(v) if !v.is_empty() => v,
                _ => return Err(fail(word, OptionErrorKind::MissingValue { option: name })),
            };
            let path = |v: &str, file: bool| {
                let r = if file { GrubPath::parse_file(v) } else { GrubPath::parse(v) };
                r.map_err(|e| fail(word, OptionErrorKind::BadPath(e)))
            };
            match name {
                "harddisk" => o.harddisk = Some(path(value, true)?),
                "cdrom" => o.cdrom = Some(path(value, true)?),
                "floppy" => o.floppy = Some(path(value, true)?),
                "floppy_b" => o.floppy_b = Some(path(value, true)?),
                "parent_dir" => o.parent_dir = Some(path(value, false)?),
                "take_snapshot" => o.take_snapshot = Some(path(value, true)?),
                "immutable_child" => o.immutable_child = Some(path(value, true)?),
                "config_file" => o.config_file = Some(path(value, true)?),
                "new_menu_entry" => o.new_menu_entry = Some(value.to_string()),
                "reserve" => o.reserve_bytes = Some(parse_size(value).ok_or_else(|| fail(word, OptionErrorKind::BadSize))?),
                "boot_entry" => {
                    let n = if value.bytes().all(|b| b.is_ascii_digit()) { value.parse().ok() } else { None };
                    o.boot_entry = Some(n.ok_or_else(|| fail(word, OptionErrorKind::NotANumber))?);
                }
                _ => {
                    o.boot = Some(match value {
                        "harddisk" => BootDevice::Harddisk,
                        "cdrom" => BootDevice::Cdrom,
                        "floppy" => BootDevice::Floppy,
                        _ => return Err(fail(word, OptionErrorKind::BadBootValue)),
                    });
                    o.boot_explicit = true;
                }
            }
        }

        let word_of = |name: &str| -> &str {
            seen.iter().find(|(n, _)| *n == name).map(|(_, w)| *w).unwrap_or("vboot")
        };

        if let Some(device) = o.boot {
            let present = match device {
                BootDevice::Harddisk => o.harddisk.is_some(),
                BootDevice::Cdrom => o.cdrom.is_some(),
                BootDevice::Floppy => o.floppy.is_some(),
            };
            if !present {
                return Err(fail(word_of("boot"), OptionErrorKind::BootWithoutDevice { device }));
            }
        } else if o.harddisk.is_some() {
            o.boot = Some(BootDevice::Harddisk);
        } else if o.cdrom.is_some() {
            o.boot = Some(BootDevice::Cdrom);
        } else if o.floppy.is_some() {
            o.boot = Some(BootDevice::Floppy);
        } else if !o.recover_mbr {
            let word = if o.floppy_b.is_some() { word_of("floppy_b") } else { "vboot" };
            return Err(fail(word, OptionErrorKind::NoDevice));
        }

        if o.restore && o.take_snapshot.is_some() {
            return Err(fail(word_of("restore"), OptionErrorKind::RestoreWithSnapshot));
        }
        if o.restore && o.immutable {
            return Err(fail(word_of("restore"), OptionErrorKind::RestoreWithImmutable));
        }
        if o.immutable_child.is_some() && !o.immutable {
            return Err(fail(word_of("immutable_child"), OptionErrorKind::NeedsImmutable));
        }
        if o.harddisk.is_none() {
            for name in ["take_snapshot", "restore", "parent_dir", "reserve", "immutable_child"] {
                if seen.iter().any(|(n, _)| *n == name) {
                    return Err(fail(word_of(name), OptionErrorKind::NeedsHarddisk { option: name }));
                }
            }
        }
        if o.take_snapshot.is_none() {
            for name in ["boot_entry", "config_file", "new_menu_entry"] {
                if seen.iter().any(|(n, _)| *n == name) {
                    return Err(fail(word_of(name), OptionErrorKind::NeedsSnapshot { option: name }));
                }
            }
        }
        if o.boot_entry.is_some() && o.new_menu_entry.is_some() {
            return Err(fail(word_of("new_menu_entry"), OptionErrorKind::EntryAndNewEntry));
        }
        Ok(o)
    }

    /// Human-readable summary, one fact a line, for the screen shown before booting.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let drives: [(&str, &Option<GrubPath>, &str); 4] = [
            ("hard disk", &self.harddisk, "0x80"),
            ("CD-ROM", &self.cdrom, "0xE0"),
            ("floppy A:", &self.floppy, "0x00"),
            ("floppy B:", &self.floppy_b, "0x01"),
        ];
        for (what, path, drive) in drives {
            if let Some(p) = path {
                lines.push(format!("{} (BIOS drive {}): {}", what, drive, p));
            }
        }
        match self.boot {
            Some(d) if self.boot_explicit => lines.push(format!("boot from: {}", d)),
            Some(d) => lines.push(format!("boot from: {} (default)", d)),
            None => {}
        }
        if let Some(p) = &self.parent_dir {
            lines.push(format!("parents looked up in: {}", p));
        }
        if let Some(p) = &self.take_snapshot {
            lines.push(format!("take a snapshot: new differencing image {}", p));
        }
        if let Some(p) = &self.config_file {
            lines.push(format!("then rewrite: {}", p));
        }
        if let Some(t) = &self.new_menu_entry {
            lines.push(format!("new menu entry: {}", t));
        }
        if let Some(n) = self.boot_entry {
            lines.push(format!("then menu entry {} boots the snapshot", n));
        }
        if let Some(b) = self.reserve_bytes {
            lines.push(format!("write slack for the image: {} KiB", b / 1024));
        }
        if let Some(p) = &self.immutable_child {
            lines.push(format!("immutable's throwaway child: {}", p));
        }
        let flags: [(bool, &str); 4] = [
            (self.restore, "restore: discard the changes in the differencing image"),
            (self.immutable, "immutable: changes are thrown away at the next boot"),
            (self.recover_mbr, "recover_mbr: put back the saved MBR"),
            (self.pause, "pause: wait for a key before starting the guest"),
        ];
        for (on, text) in flags {
            if on {
                lines.push(text.to_string());
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::path::{PartitionRef, PartitionScheme};

    fn parse(line: &str) -> Result<VbootOptions, OptionError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        VbootOptions::parse(&words)
    }

    fn ok(line: &str) -> VbootOptions {
        parse(line).unwrap_or_else(|e| panic!("{}: {}", line, e))
    }

    /// The refusal names the word and says the expected thing.
    fn refused(line: &str, word: &str, needle: &str) -> OptionErrorKind {
        crate::config::refusal(line, parse(line), |e| &e.word, word, needle).kind
    }

    #[test]
    fn full_line() {
        let o = ok("harddisk=(hd0,1)/xp.vhd cdrom=/iso/x.iso floppy=/f.img floppy_b=(hd0,msdos5)/b.img \
                    boot=cdrom parent_dir=/parents/ take_snapshot=/snap/s1.vhd reserve=64M \
                    config_file=/boot/grub/grub.cfg new_menu_entry=Snap immutable pause recover_mbr");
        assert_eq!(o.harddisk.as_ref().unwrap().to_string(), "(hd0,1)/xp.vhd");
        assert_eq!(o.cdrom.as_ref().unwrap().path, "/iso/x.iso");
        assert_eq!(o.floppy.as_ref().unwrap().path, "/f.img");
        assert_eq!(
            o.floppy_b.as_ref().unwrap().partition,
            Some(PartitionRef { number: 5, scheme_hint: Some(PartitionScheme::Msdos) })
        );
        assert_eq!(o.boot, Some(BootDevice::Cdrom));
        assert!(o.boot_explicit);
        assert_eq!(o.parent_dir.as_ref().unwrap().path, "/parents/");
        assert_eq!(o.take_snapshot.as_ref().unwrap().path, "/snap/s1.vhd");
        assert_eq!(o.reserve_bytes, Some(64 << 20));
        assert_eq!(o.config_file.as_ref().unwrap().path, "/boot/grub/grub.cfg");
        assert_eq!(o.new_menu_entry.as_deref(), Some("Snap"));
        assert!(o.immutable && o.pause && o.recover_mbr && !o.restore);
        let d = o.describe();
        assert!(d.contains(&"boot from: cdrom".to_string()), "{:?}", d);
        assert!(d.contains(&"hard disk (BIOS drive 0x80): (hd0,1)/xp.vhd".to_string()), "{:?}", d);
    }

    #[test]
    fn default_boot_device() {
        let o = ok("harddisk=/a.vhd cdrom=/b.iso floppy=/c.img");
        assert_eq!((o.boot, o.boot_explicit), (Some(BootDevice::Harddisk), false));
        assert!(o.describe().contains(&"boot from: harddisk (default)".to_string()));
        assert_eq!(ok("cdrom=/b.iso floppy=/c.img").boot, Some(BootDevice::Cdrom));
        assert_eq!(ok("floppy=/c.img floppy_b=/d.img").boot, Some(BootDevice::Floppy));
        assert_eq!(ok("recover_mbr").boot, None);
        assert!(ok("harddisk=/a.vhd restore").restore);
        assert_eq!(ok("boot=floppy floppy=/c.img harddisk=/a.vhd").boot, Some(BootDevice::Floppy));
    }

    #[test]
    fn value_with_spaces_and_equals() {
        let o = VbootOptions::parse(&[
            "harddisk=/My Images/xp.vhd",
            "take_snapshot=/s.vhd",
            "new_menu_entry=XP = snapshot 2",
        ])
        .unwrap();
        assert_eq!(o.harddisk.unwrap().path, "/My Images/xp.vhd");
        assert_eq!(o.new_menu_entry.as_deref(), Some("XP = snapshot 2"));
    }

    #[test]
    fn unknown_options_suggest() {
        let k = refused("hardisk=/a.vhd", "hardisk=/a.vhd", "did you mean `harddisk=`?");
        assert_eq!(k, OptionErrorKind::Unknown { suggestion: Some("harddisk=") });
        refused("harddisk=/a.vhd immutible", "immutible", "did you mean `immutable`?");
        refused("harddisk=/a.vhd take-snapshot=/s.vhd", "take-snapshot=/s.vhd", "`take_snapshot=`");
        refused("harddisk=/a.vhd Pause", "Pause", "did you mean `pause`?");
        refused("harddisk=/a.vhd cd=/x.iso", "cd=/x.iso", "did you mean `cdrom=`?");
        refused("harddisk=/a.vhd quiet", "quiet", "the options are harddisk=");
    }

    #[test]
    fn missing_values() {
        refused("harddisk=", "harddisk=", "needs a value: write harddisk=PATH");
        refused("harddisk", "harddisk", "needs a value");
        refused("harddisk=/a.vhd boot=", "boot=", "boot=harddisk|cdrom|floppy");
        refused("harddisk=/a.vhd take_snapshot=/s.vhd new_menu_entry=", "new_menu_entry=", "TITLE");
        refused("harddisk=/a.vhd take_snapshot=/s.vhd boot_entry", "boot_entry", "INDEX");
    }

    #[test]
    fn values_on_flags() {
        refused("harddisk=/a.vhd pause=1", "pause=1", "is a flag");
        refused("harddisk=/a.vhd immutable=", "immutable=", "is a flag");
        refused("harddisk=/a.vhd immutable=/c.vhd", "immutable=/c.vhd", "immutable_child=PATH");
        refused("harddisk=/a.vhd restore=yes", "restore=yes", "is a flag");
        refused("recover_mbr=true", "recover_mbr=true", "is a flag");
    }

    #[test]
    fn duplicates() {
        refused("harddisk=/a.vhd harddisk=/b.vhd", "harddisk=/b.vhd", "given twice");
        refused("harddisk=/a.vhd pause pause", "pause", "given twice");
        refused("cdrom=/a.iso boot=cdrom boot=cdrom", "boot=cdrom", "given twice");
    }

    #[test]
    fn boot_device_checks() {
        let k = refused("harddisk=/a.vhd boot=cdrom", "boot=cdrom", "no cdrom=");
        assert_eq!(k, OptionErrorKind::BootWithoutDevice { device: BootDevice::Cdrom });
        refused("harddisk=/a.vhd boot=floppy", "boot=floppy", "no floppy=");
        refused("cdrom=/a.iso boot=harddisk", "boot=harddisk", "no harddisk=");
        refused("floppy_b=/b.img boot=floppy", "boot=floppy", "no floppy=");
        refused("harddisk=/a.vhd boot=usb", "boot=usb", "takes harddisk, cdrom or floppy");
        refused("harddisk=/a.vhd boot=HardDisk", "boot=HardDisk", "takes harddisk");
    }

    #[test]
    fn nothing_to_boot() {
        refused("pause", "vboot", "nothing to boot");
        refused("", "vboot", "nothing to boot");
        refused("floppy_b=/b.img", "floppy_b=/b.img", "nothing to boot");
    }

    #[test]
    fn restore_and_snapshot_exclude() {
        let k = refused("harddisk=/a.vhd restore take_snapshot=/s.vhd", "restore", "take_snapshot=");
        assert_eq!(k, OptionErrorKind::RestoreWithSnapshot);
    }

    /// `immutable_child=` goes with `immutable` and a hard disk; `restore` does not go with
    /// `immutable`.
    #[test]
    fn immutable_child_and_its_refusals() {
        let o = ok("harddisk=/vm/a.vhd immutable immutable_child=(hd0,2)/scratch/a.immutable.vhd");
        assert!(o.immutable);
        assert_eq!(o.immutable_child.as_ref().unwrap().to_string(), "(hd0,2)/scratch/a.immutable.vhd");
        assert!(o.describe().contains(&"immutable's throwaway child: (hd0,2)/scratch/a.immutable.vhd".to_string()), "{:?}", o.describe());
        let k = refused("harddisk=/a.vhd immutable_child=/c.vhd", "immutable_child=/c.vhd", "add immutable");
        assert_eq!(k, OptionErrorKind::NeedsImmutable);
        refused("floppy=/a.img immutable immutable_child=/c.vhd", "immutable_child=/c.vhd", "add harddisk=PATH");
        refused("harddisk=/a.vhd immutable immutable_child=", "immutable_child=", "immutable_child=PATH");
        refused("harddisk=/a.vhd immutable immutable_child=/dir/", "immutable_child=/dir/", "");
        refused("harddisk=/a.vhd immutable imutable_child=/c.vhd", "imutable_child=/c.vhd", "did you mean `immutable_child=`?");
        let k = refused("harddisk=/a.vhd restore immutable", "restore", "keep one");
        assert_eq!(k, OptionErrorKind::RestoreWithImmutable);
    }

    #[test]
    fn harddisk_only_options() {
        refused("cdrom=/a.iso take_snapshot=/s.vhd", "take_snapshot=/s.vhd", "add harddisk=PATH");
        refused("cdrom=/a.iso restore", "restore", "add harddisk=PATH");
        refused("floppy=/a.img parent_dir=/p", "parent_dir=/p", "add harddisk=PATH");
    }

    #[test]
    fn snapshot_only_options() {
        refused("harddisk=/a.vhd boot_entry=2", "boot_entry=2", "only applies together with take_snapshot=");
        refused("harddisk=/a.vhd config_file=/grub.cfg", "config_file=/grub.cfg", "take_snapshot=");
        refused("harddisk=/a.vhd new_menu_entry=Snap", "new_menu_entry=Snap", "take_snapshot=");
    }

    #[test]
    fn numbers() {
        refused("harddisk=/a.vhd take_snapshot=/s.vhd boot_entry=two", "boot_entry=two", "menu index");
        refused("harddisk=/a.vhd take_snapshot=/s.vhd boot_entry=-1", "boot_entry=-1", "menu index");
        refused(
            "harddisk=/a.vhd take_snapshot=/s.vhd boot_entry=99999999999",
            "boot_entry=99999999999",
            "menu index",
        );
        assert_eq!(ok("harddisk=/a.vhd take_snapshot=/s.vhd boot_entry=0").boot_entry, Some(0));
        assert_eq!(ok("harddisk=/a.vhd reserve=256M").reserve_bytes, Some(256 << 20));
        assert_eq!(ok("harddisk=/a.vhd reserve=0").reserve_bytes, Some(0));
        assert_eq!(ok("harddisk=/a.vhd reserve=3g").reserve_bytes, Some(3 << 30));
        assert_eq!(ok("harddisk=/a.vhd reserve=4096").reserve_bytes, Some(4096));
        for bad in ["reserve=M", "reserve=1T", "reserve=-5M", "reserve=1.5G", "reserve=99999999999999999999"] {
            refused(&format!("harddisk=/a.vhd {}", bad), bad, "reserve= takes a size");
        }
        refused("cdrom=/a.iso reserve=1M", "reserve=1M", "works on the hard-disk image");
        refused(
            "harddisk=/a.vhd take_snapshot=/s.vhd boot_entry=1 new_menu_entry=S",
            "new_menu_entry=S",
            "either boot_entry=",
        );
    }

    #[test]
    fn bad_paths() {
        let k = refused("harddisk=(hd0,0)/a.vhd", "harddisk=(hd0,0)/a.vhd", "partition 0");
        assert!(matches!(k, OptionErrorKind::BadPath(_)));
        refused("harddisk=xp.vhd", "harddisk=xp.vhd", "relative path");
        refused("cdrom=(fd0", "cdrom=(fd0", "closing `)`");
        refused("harddisk=/images/", "harddisk=/images/", "directory, not a file");
        refused("harddisk=/a.vhd take_snapshot=(foo)/s.vhd", "take_snapshot=(foo)/s.vhd", "unknown device");
        refused("harddisk=/a.vhd parent_dir=parents", "parent_dir=parents", "relative path");
        refused("harddisk=/a.vhd take_snapshot=/s.vhd config_file=(hd0,1)", "config_file=(hd0,1)", "no file");
        assert_eq!(ok("harddisk=/a.vhd parent_dir=/").parent_dir.unwrap().path, "/");
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("pause", "pause"), 0);
        assert_eq!(closest_option("zzzzzzzz"), None);
    }
}
