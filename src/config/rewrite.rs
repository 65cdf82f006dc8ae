//! Rewriting grub.cfg after `take_snapshot=` (before the guest starts), as a pure text edit: every
//! byte outside the one changed line (or the appended entry) stays as it was.
//!
//! What changes (the README has the user's view):
//! - [`SnapshotTarget::Entry`]: that entry's `vboot` line is replaced by one that boots the new
//!   child: `harddisk=` becomes the child, and the one-shot options (`take_snapshot=`,
//!   `boot_entry=`, `config_file=`, `new_menu_entry=`, `restore`) are dropped. Its other
//!   options (`parent_dir=`, `immutable`, `pause`, `cdrom=`, `floppy=`, `boot=` ...) are kept.
//! - [`SnapshotTarget::NewEntry`]: a new entry with that title is appended at the end of the
//!   file, booting the child with the options of the entry that took the snapshot (the same
//!   one-shot options dropped). Appending keeps every existing index, so a numeric
//!   `set default=` still means what it meant.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::chainload::ChainTarget;
use super::grubcfg::{BootCommand, Config, MenuItem};
use super::options::VbootOptions;
use super::path::GrubPath;

/// Which entry boots the new child from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotTarget {
    /// An existing entry, by menu path (`[2]`, or `[1, 0]` inside a submenu).
    Entry(Vec<usize>),
    /// A new entry with this title, modelled on `template` (the entry that took the snapshot).
    NewEntry { title: String, template: VbootOptions },
}

/// `text` with `target` changed to boot `child` (as it should be written in this file).
pub fn rewrite_for_snapshot(text: &str, target: &SnapshotTarget, child: &GrubPath) -> Result<String, String> {
    match target {
        SnapshotTarget::Entry(path) => retarget_entry(text, path, child),
        SnapshotTarget::NewEntry { title, template } => {
            let out = append_entry(text, title, &vboot_line(&snapshot_successor(template, child)));
            // The result must parse, and the new entry must be there with its options.
            let c = Config::parse(&out).map_err(|e| format!("the rewritten grub.cfg would not parse: {}", e))?;
            let added = c.entries.last().and_then(|i| match i {
                MenuItem::Entry(e) => e.vboot.clone(),
                MenuItem::Submenu(_) => None,
            });
            match added {
                Some(Ok(_)) => Ok(out),
                _ => Err(String::from("the new menu entry would not be read back as written")),
            }
        }
    }
}

/// `text` with an entry `title` of the one line `body` appended, in the file's line ends.
fn append_entry(text: &str, title: &str, body: &str) -> String {
    let mut out = String::from(text);
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push_str(newline);
    }
    out.push_str(&format!("menuentry {} {{{nl}    {}{nl}}}{nl}", quote_word(title), body, nl = newline));
    out
}

/// Title of the entry vboot-install offers for the boot loader it replaced.
pub const ORIGINAL_MBR_TITLE: &str = "Previous boot loader (original MBR)";

/// The entry that starts the original MBR, as vboot-install appends or prints it.
pub fn original_mbr_entry() -> String {
    append_entry("", ORIGINAL_MBR_TITLE, "chainloader --original-mbr")
}

/// grub.cfg `text` with [`original_mbr_entry`] appended; `Ok(None)` when an entry of the menu
/// (or of a submenu) already starts the original MBR, so a reinstall adds no second one; `Err`
/// when `text` does not parse (vboot-install then leaves the file alone).
pub fn with_original_mbr_entry(text: &str) -> Result<Option<String>, String> {
    fn starts_original_mbr(item: &MenuItem) -> bool {
        match item {
            MenuItem::Entry(e) => matches!(e.boot_command(), Ok(BootCommand::Chainload(ChainTarget::OriginalMbr))),
            MenuItem::Submenu(s) => s.items.iter().any(starts_original_mbr),
        }
    }
    let config = Config::parse(text).map_err(|e| format!("it does not parse: {}", e))?;
    if config.entries.iter().any(starts_original_mbr) {
        return Ok(None);
    }
    let mut out = String::from(text);
    if !out.is_empty() {
        // The file's last line ended, then a blank line before the new entry.
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        if !out.ends_with('\n') {
            out.push_str(newline);
        }
        out.push_str(newline);
    }
    let out = append_entry(&out, ORIGINAL_MBR_TITLE, "chainloader --original-mbr");
    let check = Config::parse(&out).map_err(|e| format!("with the entry appended it would not parse: {}", e))?;
    match check.entries.last() {
        Some(last) if starts_original_mbr(last) => Ok(Some(out)),
        _ => Err(String::from("the appended entry would not be read back as written")),
    }
}

fn retarget_entry(text: &str, path: &[usize], child: &GrubPath) -> Result<String, String> {
    let config = Config::parse(text).map_err(|e| format!("cannot rewrite it: {}", e))?;
    let shown = path.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(">");
    let entry = match config.item(path) {
        None => {
            return Err(format!(
                "boot_entry={}: there is no such menu entry (the menu has {} top-level entries, counted from 0)",
                shown,
                config.entries.len()
            ))
        }
        Some(MenuItem::Submenu(s)) => return Err(format!("boot_entry={}: '{}' is a submenu, not an entry", shown, s.title)),
        Some(MenuItem::Entry(e)) => e,
    };
    let options = match &entry.vboot {
        Some(Ok(o)) => o.clone(),
        Some(Err(e)) => return Err(format!("boot_entry={}: entry '{}' has a bad vboot line: {}", shown, entry.title, e)),
        None => return Err(format!("boot_entry={}: entry '{}' has no vboot line to point at the snapshot", shown, entry.title)),
    };
    if options.harddisk.is_none() {
        return Err(format!("boot_entry={}: entry '{}' boots no hard-disk image", shown, entry.title));
    }
    let line_no = entry.vboot_line.ok_or("internal: vboot line without a line number")?;
    let mut lines: Vec<String> = text.split('\n').map(String::from).collect();
    let first = line_no - 1;
    if first >= lines.len() {
        return Err(String::from("internal: vboot line past the end of the file"));
    }
    // The command may go on over lines ending in a backslash; all of them become one line.
    let mut last = first;
    while lines[last].trim_end().ends_with('\\') && last + 1 < lines.len() {
        last += 1;
    }
    let cr = if lines[last].ends_with('\r') { "\r" } else { "" };
    let joined: Vec<&str> = lines[first..=last].iter().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let body = joined[0];
    let trimmed = body.trim_start();
    let single = trimmed.starts_with("vboot")
        && trimmed[5..].starts_with([' ', '\t'])
        && !joined.iter().any(|l| l.contains([';', '{', '}']));
    if !single {
        return Err(format!(
            "line {} holds more than the vboot command of entry '{}'; put `vboot ...` on a line of its own so vboot can rewrite it",
            line_no, entry.title
        ));
    }
    let indent = &body[..body.len() - trimmed.len()];
    let new_line = format!("{}{}{}", indent, vboot_line(&snapshot_successor(&options, child)), cr);
    lines.splice(first..=last, [new_line]);
    let out = lines.join("\n");
    let check = Config::parse(&out).map_err(|e| format!("the rewritten grub.cfg would not parse: {}", e))?;
    match check.entry(path).and_then(|e| e.vboot.clone()) {
        Some(Ok(o)) if o == snapshot_successor(&options, child) => Ok(out),
        _ => Err(String::from("the rewritten entry would not be read back as written")),
    }
}

/// The options that boot `child` in place of `options`' image: the one-shot snapshot options
/// and `restore` dropped, everything else kept.
pub fn snapshot_successor(options: &VbootOptions, child: &GrubPath) -> VbootOptions {
    VbootOptions {
        harddisk: Some(child.clone()),
        take_snapshot: None,
        boot_entry: None,
        config_file: None,
        new_menu_entry: None,
        restore: false,
        recover_mbr: false,
        ..options.clone()
    }
}

/// A `vboot` command line that parses back to `o`.
pub fn vboot_line(o: &VbootOptions) -> String {
    let mut words: Vec<String> = alloc::vec![String::from("vboot")];
    let paths: [(&str, &Option<GrubPath>); 8] = [
        ("harddisk", &o.harddisk),
        ("cdrom", &o.cdrom),
        ("floppy", &o.floppy),
        ("floppy_b", &o.floppy_b),
        ("parent_dir", &o.parent_dir),
        ("take_snapshot", &o.take_snapshot),
        ("config_file", &o.config_file),
        ("immutable_child", &o.immutable_child),
    ];
    for (name, p) in paths {
        if let Some(p) = p {
            words.push(quote_word(&format!("{}={}", name, p)));
        }
    }
    if o.boot_explicit {
        if let Some(b) = o.boot {
            words.push(format!("boot={}", b.keyword()));
        }
    }
    if let Some(n) = o.boot_entry {
        words.push(format!("boot_entry={}", n));
    }
    if let Some(t) = &o.new_menu_entry {
        words.push(quote_word(&format!("new_menu_entry={}", t)));
    }
    if let Some(bytes) = o.reserve_bytes {
        words.push(format!("reserve={}", size_word(bytes)));
    }
    for (on, flag) in [(o.restore, "restore"), (o.immutable, "immutable"), (o.recover_mbr, "recover_mbr"), (o.pause, "pause")] {
        if on {
            words.push(flag.to_string());
        }
    }
    words.join(" ")
}

/// A size as `reserve=` takes it, with the largest suffix that divides it (`256M`, `4096`).
fn size_word(bytes: u64) -> String {
    match [(30, "G"), (20, "M"), (10, "K")].iter().find(|(shift, _)| bytes != 0 && bytes % (1u64 << shift) == 0) {
        Some((shift, suffix)) => format!("{}{}", bytes >> shift, suffix),
        None => format!("{}", bytes),
    }
}

/// One GRUB word: as is when it holds nothing special, else in single quotes (which GRUB takes
/// literally; a quote itself is written '\'').
pub fn quote_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars().all(|c| c.is_ascii_alphanumeric() || "_-+=/.,:()@%^~[]".contains(c) || (c as u32) > 0x7F);
    if plain {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp(s: &str) -> GrubPath {
        GrubPath::parse_file(s).unwrap()
    }

    const CFG: &str = "set timeout=5\nset default=0\n\nmenuentry 'XP' {\n\tvboot harddisk=/vm/xp.vhd pause\n}\n\
menuentry 'XP: snapshot' --class os {\n    # take one\n    vboot harddisk=/vm/xp.vhd take_snapshot=/vm/s1.vhd boot_entry=0 parent_dir=/base\n}\n\
submenu 'More' {\n  menuentry 'Inner' {\n    vboot harddisk=(hd0,2)/a.vmdk immutable\n  }\n}\n";

    #[test]
    fn the_original_mbr_entry_is_appended_once() {
        let out = with_original_mbr_entry(CFG).unwrap().unwrap();
        assert_eq!(
            out,
            format!("{}\nmenuentry 'Previous boot loader (original MBR)' {{\n    chainloader --original-mbr\n}}\n", CFG)
        );
        assert_eq!(with_original_mbr_entry(&out).unwrap(), None, "a second install adds no second entry");
        // CRLF files get CRLF; an empty file gets just the entry; a last line without its end is ended.
        let crlf = with_original_mbr_entry("set timeout=5\r\n").unwrap().unwrap();
        assert!(crlf.ends_with("\r\n\r\nmenuentry 'Previous boot loader (original MBR)' {\r\n    chainloader --original-mbr\r\n}\r\n"), "{:?}", crlf);
        assert_eq!(with_original_mbr_entry("").unwrap().unwrap(), original_mbr_entry());
        assert!(with_original_mbr_entry("set timeout=5").unwrap().unwrap().starts_with("set timeout=5\n\nmenuentry"));
        // One inside a submenu counts too.
        assert_eq!(with_original_mbr_entry("submenu S {\n menuentry O { chainloader --original-mbr }\n}\n").unwrap(), None);
        assert!(with_original_mbr_entry("menuentry 'broken {\n").unwrap_err().contains("does not parse"));
    }

    #[test]
    fn retargeting_an_entry_changes_only_its_vboot_line() {
        let out = rewrite_for_snapshot(CFG, &SnapshotTarget::Entry(alloc::vec![0]), &gp("/vm/s1.vhd")).unwrap();
        let want = CFG.replace("\tvboot harddisk=/vm/xp.vhd pause\n", "\tvboot harddisk=/vm/s1.vhd pause\n");
        assert_eq!(out, want);
    }

    #[test]
    fn the_snapshot_entry_itself_loses_its_one_shot_options_and_keeps_the_rest() {
        let out = rewrite_for_snapshot(CFG, &SnapshotTarget::Entry(alloc::vec![1]), &gp("/vm/s1.vhd")).unwrap();
        let want = CFG.replace(
            "    vboot harddisk=/vm/xp.vhd take_snapshot=/vm/s1.vhd boot_entry=0 parent_dir=/base\n",
            "    vboot harddisk=/vm/s1.vhd parent_dir=/base\n",
        );
        assert_eq!(out, want);
    }

    #[test]
    fn a_command_continued_over_lines_becomes_one_line() {
        let cfg = "menuentry A {\n  vboot harddisk=/a.vhd \\\n     take_snapshot=/s.vhd \\\n  pause\n}\nmenuentry B {\n}\n";
        let out = rewrite_for_snapshot(cfg, &SnapshotTarget::Entry(alloc::vec![0]), &gp("/s.vhd")).unwrap();
        assert_eq!(out, "menuentry A {\n  vboot harddisk=/s.vhd pause\n}\nmenuentry B {\n}\n");
    }

    #[test]
    fn entries_in_submenus_and_crlf_files() {
        let crlf = CFG.replace('\n', "\r\n");
        let out = rewrite_for_snapshot(&crlf, &SnapshotTarget::Entry(alloc::vec![2, 0]), &gp("(hd0,2)/b.vmdk")).unwrap();
        assert_eq!(out, crlf.replace("vboot harddisk=(hd0,2)/a.vmdk immutable\r\n", "vboot harddisk=(hd0,2)/b.vmdk immutable\r\n"));
    }

    #[test]
    fn a_new_entry_is_appended_with_the_template_options_and_quoted_title() {
        let template = VbootOptions::parse(&["harddisk=/vm/xp.vhd", "take_snapshot=/vm/s 1.vhd", "new_menu_entry=x", "pause"]).unwrap();
        let target = SnapshotTarget::NewEntry { title: String::from("XP, Tom's snapshot"), template };
        let child = gp("/vm/s 1.vhd");
        let out = rewrite_for_snapshot(CFG, &target, &child).unwrap();
        assert!(out.starts_with(CFG));
        assert_eq!(&out[CFG.len()..], "menuentry 'XP, Tom'\\''s snapshot' {\n    vboot 'harddisk=/vm/s 1.vhd' pause\n}\n");
        let c = Config::parse(&out).unwrap();
        let e = c.entry(&[3]).unwrap();
        assert_eq!(e.title, "XP, Tom's snapshot");
        let o = e.boot_options().unwrap();
        assert_eq!(o.harddisk.as_ref(), Some(&child));
        assert!(o.pause && o.take_snapshot.is_none() && o.new_menu_entry.is_none());
        // A file without a final newline gets one before the new entry.
        let out = rewrite_for_snapshot("menuentry A {\n vboot harddisk=/a.vhd\n}", &target, &child).unwrap();
        assert!(out.starts_with("menuentry A {\n vboot harddisk=/a.vhd\n}\nmenuentry "));
    }

    #[test]
    fn refusals_name_the_problem() {
        let child = gp("/s.vhd");
        let e = |t: &str, path: &[usize]| rewrite_for_snapshot(t, &SnapshotTarget::Entry(path.to_vec()), &child).unwrap_err();
        assert!(e(CFG, &[7]).contains("no such menu entry (the menu has 3 top-level entries"), "{}", e(CFG, &[7]));
        assert!(e(CFG, &[2]).contains("'More' is a submenu"));
        assert!(e("menuentry A {\n echo hi\n}\n", &[0]).contains("has no vboot line"));
        assert!(e("menuentry A {\n vboot cdrom=/a.iso\n}\n", &[0]).contains("boots no hard-disk image"));
        assert!(e("menuentry A {\n vboot harddisk=/a.vhd bogus\n}\n", &[0]).contains("bad vboot line"));
        assert!(e("menuentry A { vboot harddisk=/a.vhd; }\n", &[0]).contains("on a line of its own"));
        assert!(e("menuentry A {\n", &[0]).contains("cannot rewrite it"));
    }

    #[test]
    fn vboot_lines_parse_back_to_the_same_options() {
        for line in [
            "harddisk=(hd0,msdos1)/xp.vhd parent_dir=/p pause immutable",
            "harddisk=/a.vhd cdrom=/i.iso floppy=/f.img floppy_b=/g.img boot=cdrom",
            "harddisk=/a.vhd take_snapshot=/b.vhd config_file=/boot/grub/grub.cfg new_menu_entry=New",
            "harddisk=/a.vhd take_snapshot=/b.vhd boot_entry=3",
            "recover_mbr",
            "harddisk=/a.vhd restore",
            "harddisk=/a.vhd reserve=256M pause",
            "harddisk=/a.vhd reserve=0",
            "harddisk=/a.vhd reserve=1000",
            "harddisk=/a.vhd reserve=3G",
        ] {
            let words: Vec<&str> = line.split(' ').collect();
            let o = VbootOptions::parse(&words).unwrap();
            let text = vboot_line(&o);
            let c = Config::parse(&format!("menuentry x {{\n{}\n}}\n", text)).unwrap();
            assert_eq!(c.entry(&[0]).unwrap().boot_options().unwrap(), &o, "{}", text);
        }
    }
}
