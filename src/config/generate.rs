//! The grub.cfg text `vdisk mkconfig` writes: one `menuentry` per bootable image found on a host
//! partition, kept between two marker lines so that running it again replaces only its own
//! block and leaves every line the user wrote byte for byte (docs/vdisk.md, "mkconfig").

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::options::BootDevice;
use super::rewrite::quote_word;

/// The line before the generated entries.
pub const BEGIN_MARKER: &str = "### BEGIN vdisk mkconfig: entries between these lines are rewritten by each run ###";
/// The line after them.
pub const END_MARKER: &str = "### END vdisk mkconfig ###";

/// One image to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedEntry {
    pub title: String,
    pub device: BootDevice,
    /// The image's path from the root of its partition, `/`-separated.
    pub path: String,
}

/// The generated block, markers included, ending in a newline.
pub fn entries_block(entries: &[GeneratedEntry]) -> String {
    let mut s = String::new();
    s.push_str(BEGIN_MARKER);
    s.push('\n');
    for e in entries {
        let option = format!("{}={}", e.device.keyword(), e.path);
        s.push_str(&format!("menuentry {} {{\n    vboot {}\n}}\n", quote_word(&e.title), quote_word(&option)));
    }
    s.push_str(END_MARKER);
    s.push('\n');
    s
}

/// The start of a grub.cfg that did not exist before.
pub const NEW_FILE_HEADER: &str = "# grub.cfg for vboot. `vdisk mkconfig` rewrites only the lines between its two markers;\n\
# add your own entries and settings above or below them.\nset timeout=10\nset default=0\n\n";

/// Why an existing grub.cfg cannot take the block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeError {
    /// A begin marker without an end marker after it (or the reverse).
    UnpairedMarker { line: usize },
    /// More than one generated block.
    TwoBlocks { line: usize },
}

impl core::fmt::Display for MergeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MergeError::UnpairedMarker { line } => write!(
                f,
                "line {}: a vdisk mkconfig marker without its partner; put back the missing marker line ({:?} or {:?}) or remove this one",
                line, BEGIN_MARKER, END_MARKER
            ),
            MergeError::TwoBlocks { line } => write!(f, "line {}: a second block of vdisk mkconfig entries; remove one of them", line),
        }
    }
}

/// `existing` (the grub.cfg as it is, `None` when there is none) with `block` in place of its
/// generated block; appended at the end when it has none; a new file gets [`NEW_FILE_HEADER`]
/// first. Every byte outside the block is kept.
pub fn merge(existing: Option<&str>, block: &str) -> Result<String, MergeError> {
    let Some(text) = existing else {
        return Ok(format!("{}{}", NEW_FILE_HEADER, block));
    };
    // Byte offsets of each marker line (start, end including its newline).
    let mut begin: Option<(usize, usize)> = None;
    let mut found: Vec<((usize, usize), (usize, usize))> = Vec::new();
    let mut at = 0usize;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let span = (at, at + line.len());
        at += line.len();
        match line.trim_end_matches(['\n', '\r']).trim() {
            l if l == BEGIN_MARKER => {
                if begin.is_some() {
                    return Err(MergeError::UnpairedMarker { line: number + 1 });
                }
                if !found.is_empty() {
                    return Err(MergeError::TwoBlocks { line: number + 1 });
                }
                begin = Some(span);
            }
            l if l == END_MARKER => match begin.take() {
                Some(b) => found.push((b, span)),
                None => return Err(MergeError::UnpairedMarker { line: number + 1 }),
            },
            _ => {}
        }
    }
    if let Some((start, _)) = begin {
        let line = text[..start].matches('\n').count() + 1;
        return Err(MergeError::UnpairedMarker { line });
    }
    Ok(match found.first() {
        Some(((start, _), (_, end))) => format!("{}{}{}", &text[..*start], block, &text[*end..]),
        None if text.is_empty() || text.ends_with('\n') => format!("{}{}", text, block),
        None => format!("{}\n{}", text, block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use alloc::string::ToString;
    use alloc::vec;

    fn entries() -> Vec<GeneratedEntry> {
        vec![
            GeneratedEntry { title: "dos".into(), device: BootDevice::Harddisk, path: "/vm/dos.img".into() },
            GeneratedEntry { title: "it's a CD".into(), device: BootDevice::Cdrom, path: "/iso/my live.iso".into() },
            GeneratedEntry { title: "boot floppy".into(), device: BootDevice::Floppy, path: "/fd/boot.img".into() },
        ]
    }

    #[test]
    fn the_block_parses_back_to_the_same_entries_with_quoting() {
        let text = merge(None, &entries_block(&entries())).unwrap();
        let cfg = Config::parse(&text).unwrap();
        assert_eq!(cfg.entries.len(), 3);
        for (i, e) in entries().iter().enumerate() {
            let entry = cfg.entry(&[i]).unwrap();
            assert_eq!(entry.title, e.title);
            let opts = entry.boot_options().unwrap();
            let got = match e.device {
                BootDevice::Harddisk => opts.harddisk.clone(),
                BootDevice::Cdrom => opts.cdrom.clone(),
                BootDevice::Floppy => opts.floppy.clone(),
            };
            assert_eq!(got.map(|p| p.path), Some(e.path.clone()), "entry {}", i);
        }
    }

    #[test]
    fn a_second_run_replaces_only_its_block() {
        let user_top = "set timeout=3\r\nmenuentry 'mine' {\n    vboot harddisk=/a.img\n}\n\n";
        let user_bottom = "# after\nmenuentry 'also mine' { vboot recover_mbr }";
        let first = merge(Some(&format!("{}{}", user_top, user_bottom)), &entries_block(&entries()[..1])).unwrap();
        assert!(first.starts_with(user_top) && first.contains(user_bottom), "{}", first);
        assert!(first.ends_with(&format!("{}\n{}", user_bottom, entries_block(&entries()[..1]))), "appended after a last line without newline");
        let second = merge(Some(&first), &entries_block(&entries())).unwrap();
        assert_eq!(second, first.replace(&entries_block(&entries()[..1]), &entries_block(&entries())));
        let third = merge(Some(&second), &entries_block(&entries())).unwrap();
        assert_eq!(third, second, "the same images give the same file");
    }

    #[test]
    fn broken_markers_are_refused_with_the_line() {
        let lone = format!("a\n{}\nb\n", BEGIN_MARKER);
        assert_eq!(merge(Some(&lone), "x"), Err(MergeError::UnpairedMarker { line: 2 }));
        let lone_end = format!("{}\n", END_MARKER);
        assert_eq!(merge(Some(&lone_end), "x"), Err(MergeError::UnpairedMarker { line: 1 }));
        let two = format!("{b}\n{e}\n{b}\n{e}\n", b = BEGIN_MARKER, e = END_MARKER);
        assert_eq!(merge(Some(&two), "x"), Err(MergeError::TwoBlocks { line: 3 }));
        assert!(MergeError::UnpairedMarker { line: 2 }.to_string().contains("line 2"));
    }
}
