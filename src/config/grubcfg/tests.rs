//! The grub.cfg reader end to end: text in, menu, settings, notices and errors out.
use super::*;
use crate::config::options::BootDevice;

fn parse(s: &str) -> Config {
    Config::parse(s).unwrap_or_else(|e| panic!("{}", e))
}

fn entry(c: &Config, path: &[usize]) -> Entry {
    c.entry(path).unwrap_or_else(|| panic!("no entry at {:?}", path)).clone()
}

fn err(s: &str) -> ConfigError {
    match Config::parse(s) {
        Ok(c) => panic!("accepted: {:?}", c),
        Err(e) => e,
    }
}

#[test]
fn minimal_entry() {
    let c = parse("set timeout=5\nset default=0\nmenuentry 'XP' {\n  vboot harddisk=(hd0,1)/xp.vhd\n}\n");
    assert_eq!(c.timeout_secs, Some(5));
    assert_eq!(c.default, DefaultChoice::Index(0));
    assert_eq!(c.notices, vec![]);
    let e = entry(&c, &[0]);
    assert_eq!(e.title, "XP");
    assert_eq!(e.lines, vec!["vboot harddisk=(hd0,1)/xp.vhd"]);
    assert_eq!(e.line_number, 3);
    assert_eq!(e.vboot_line, Some(4));
    let o = e.boot_options().unwrap();
    assert_eq!(o.boot, Some(BootDevice::Harddisk));
    assert_eq!(o.harddisk.as_ref().unwrap().to_string(), "(hd0,1)/xp.vhd");
}

#[test]
fn one_line_and_next_line_braces() {
    let c = parse("menuentry A { vboot cdrom=/a.iso; }\nmenuentry \"B\"\n{\nvboot floppy=/b.img\n}");
    assert_eq!(entry(&c, &[0]).lines, vec!["vboot cdrom=/a.iso;"]);
    assert_eq!(entry(&c, &[0]).boot_options().unwrap().boot, Some(BootDevice::Cdrom));
    assert_eq!(entry(&c, &[1]).title, "B");
    assert_eq!(entry(&c, &[1]).boot_options().unwrap().boot, Some(BootDevice::Floppy));
}

#[test]
fn header_options() {
    let c = parse(
        "menuentry --class windows 'Win 7' --class=os --id win7 --unrestricted --users=bob --hotkey w {\n}\n\
         menuentry --id=x --bogus T {}\n",
    );
    let e = entry(&c, &[0]);
    assert_eq!((e.title.as_str(), e.id.as_deref()), ("Win 7", Some("win7")));
    assert_eq!(e.classes, vec!["windows", "os"]);
    assert_eq!(e.lines, Vec::<String>::new());
    assert_eq!(entry(&c, &[1]).title, "T");
    assert_eq!(
        c.notices,
        vec![Notice { line: 3, message: "menuentry option `--bogus` is not known; ignored".into() }]
    );
}

#[test]
fn variables_expand_at_their_point() {
    let c = parse(
        "set img=/xp.vhd\nset t=\"Windows XP\"\nmenuentry \"$t ($img)\" { vboot harddisk=$img }\n\
         set img=/other.vhd\nmenuentry '$t' { set d=(hd1,2); vboot harddisk=${d}${img} $unset }\n",
    );
    let a = entry(&c, &[0]);
    assert_eq!(a.title, "Windows XP (/xp.vhd)");
    assert_eq!(a.boot_options().unwrap().harddisk.as_ref().unwrap().path, "/xp.vhd");
    let b = entry(&c, &[1]);
    assert_eq!(b.title, "$t");
    assert_eq!(b.boot_options().unwrap().harddisk.as_ref().unwrap().to_string(), "(hd1,2)/other.vhd");
}

#[test]
fn unquoted_variables_split() {
    let c = parse("set o=\"harddisk=/a.vhd  pause \"\nmenuentry x { vboot $o immutable }\nmenuentry y { vboot \"$o\" }\n");
    let o = entry(&c, &[0]).boot_options().unwrap().clone();
    assert!(o.pause && o.immutable);
    // Quoted, the value stays one word: a file name with blanks in it.
    let o = entry(&c, &[1]).boot_options().unwrap().clone();
    assert_eq!(o.harddisk.unwrap().path, "/a.vhd  pause ");
    assert!(!o.pause);
}

#[test]
fn bare_assignments_and_unset() {
    let c = parse("timeout=3\ndefault=1\nset timeout_style=countdown\nset default=2\nunset default\n");
    assert_eq!(c.timeout_secs, Some(3));
    assert_eq!(c.default, DefaultChoice::Unset);
    assert_eq!(c.timeout_style, TimeoutStyle::Countdown);
}

#[test]
fn timeouts() {
    assert_eq!(parse("set timeout=-1").timeout_secs, Some(-1));
    assert_eq!(parse("set timeout=-30").timeout_secs, Some(-1));
    assert_eq!(parse("set timeout=0").timeout_secs, Some(0));
    assert_eq!(parse("").timeout_secs, None);
    assert_eq!(parse("set timeout=99999999999").timeout_secs, Some(i32::MAX));
    let c = parse("\nset timeout=soon");
    assert_eq!(c.timeout_secs, None);
    assert_eq!(
        c.notices,
        vec![Notice { line: 2, message: "timeout `soon` is not a number of seconds; ignored".into() }]
    );
    let c = parse("set timeout_style=loud");
    assert_eq!(c.timeout_style, TimeoutStyle::Menu);
    assert_eq!(c.notices[0].message, "timeout_style `loud` is not menu, countdown or hidden; using menu");
    assert_eq!(parse("set timeout_style=hidden").timeout_style, TimeoutStyle::Hidden);
}

#[test]
fn defaults_resolve() {
    let cfg = "menuentry A --id a {}\nsubmenu 'S>1' --id s {\n menuentry B {}\n menuentry C --id c {}\n}\nmenuentry D {}\n";
    let with = |d: &str| parse(&format!("set default=\"{}\"\n{}", d, cfg));
    assert_eq!(with("2").resolve_default(), Some(vec![2]));
    assert_eq!(with("D").resolve_default(), Some(vec![2]));
    assert_eq!(with("a").resolve_default(), Some(vec![0]));
    assert_eq!(with("s").resolve_default(), Some(vec![1]));
    assert_eq!(with("1>1").resolve_default(), Some(vec![1, 1]));
    assert_eq!(with("S>>1>C").resolve_default(), Some(vec![1, 1]));
    assert_eq!(with("s>c").resolve_default(), Some(vec![1, 1]));
    assert_eq!(with("s>B").resolve_default(), Some(vec![1, 0]));
    assert_eq!(with("0>B").resolve_default(), None);
    assert_eq!(with("s>9").resolve_default(), None);
    let c = with("7");
    assert_eq!(c.resolve_default(), None);
    assert_eq!(c.default_path(), Some(vec![0]));
    assert_eq!(
        c.notices,
        vec![Notice {
            line: 1,
            message: "default `7` matches no menu entry; the first entry is the default".into()
        }]
    );
    assert_eq!(parse(cfg).resolve_default(), None);
    assert_eq!(parse(cfg).default_path(), Some(vec![0]));
    assert_eq!(parse("").default_path(), None);
}

#[test]
fn default_choice_forms() {
    assert_eq!(DefaultChoice::from_value(""), DefaultChoice::Unset);
    assert_eq!(DefaultChoice::from_value("3"), DefaultChoice::Index(3));
    assert_eq!(DefaultChoice::from_value("x"), DefaultChoice::Name("x".into()));
    assert_eq!(DefaultChoice::from_value("a>>b"), DefaultChoice::Name("a>b".into()));
    assert_eq!(DefaultChoice::from_value("a>b"), DefaultChoice::Path(vec!["a".into(), "b".into()]));
}

#[test]
fn skipped_constructs() {
    let c = parse(
        "if [ x ]; then\n  set timeout=1\n  menuentry In { }\nelse if [ y ] ; then\n  echo\n fi\nfi\n\
         function f {\n  if a; then b; fi\n}\nfor i in 1 2; do echo $i; done\nwhile false; do\n  x\ndone\n\
         menuentry Out { }\n",
    );
    assert_eq!(c.timeout_secs, None);
    assert_eq!(c.entries.len(), 1);
    assert_eq!(c.entries[0].title(), "Out");
    let msgs: Vec<String> = c.notices.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        msgs,
        vec![
            "grub.cfg line 1: `if` block (lines 1-7) skipped: vboot does not run conditions, loops or functions; the menu entry inside is not shown",
            "grub.cfg line 8: `function` definition skipped: vboot does not run conditions, loops or functions",
            "grub.cfg line 11: `for` loop (lines 11-11) skipped: vboot does not run conditions, loops or functions",
            "grub.cfg line 12: `while` loop (lines 12-14) skipped: vboot does not run conditions, loops or functions",
        ]
    );
}

#[test]
fn commands_outside_and_inside_entries() {
    let c = parse("insmod part_msdos\nvboot harddisk=/a.vhd\nsource /x.cfg\nmenuentry E {\n insmod ntfs\n if a; then\n b\n fi\n linux /vmlinuz\n}\n");
    assert_eq!(
        c.notices,
        vec![
            Notice { line: 1, message: "`insmod` is a GRUB command vboot does not run; skipped".into() },
            Notice { line: 2, message: "`vboot` outside a menuentry does nothing; skipped".into() },
            Notice {
                line: 3,
                message: "`source /x.cfg` not followed: vboot reads only this grub.cfg".into()
            },
        ]
    );
    let e = entry(&c, &[0]);
    assert_eq!(e.vboot, None);
    assert_eq!(
        e.boot_options().unwrap_err().to_string(),
        "menu entry 'E' has no vboot line, so there is nothing to boot"
    );
    assert_eq!(
        e.skipped,
        vec![
            Notice { line: 5, message: "`insmod` skipped: vboot runs only the vboot line".into() },
            Notice {
                line: 6,
                message: "`if` block skipped: vboot does not run conditions or loops".into()
            },
            Notice { line: 9, message: "`linux` skipped: vboot runs only the vboot line".into() },
        ]
    );
    assert_eq!(e.lines, vec!["insmod ntfs", "if a; then", "b", "fi", "linux /vmlinuz"]);
}

#[test]
fn vboot_errors_stay_with_the_entry() {
    let c = parse("menuentry A {\n vboot hardisk=/a.vhd\n}\nmenuentry B {\n vboot harddisk=/a.vhd\n vboot cdrom=/b.iso\n}\n");
    let a = entry(&c, &[0]);
    assert_eq!(
        a.boot_options().unwrap_err().to_string(),
        "grub.cfg line 2: unknown vboot option `hardisk=/a.vhd` (did you mean `harddisk=`?)"
    );
    let b = entry(&c, &[1]);
    assert_eq!(
        b.boot_options().unwrap_err().to_string(),
        "grub.cfg line 6: `vboot`: this entry already has a vboot line (line 5); keep one"
    );
}

/// `chainloader` lines as GRUB users and os-prober write them: the device from `root` as the
/// entry has it at that line, or named; the refusals stay with their entry.
#[test]
fn chainloader_entries() {
    use crate::config::chainload::ChainTarget;
    use crate::config::path::{GrubDevice, PartitionRef, PartitionScheme};
    let c = parse(
        "set root=(hd0,3)\n\
         menuentry 'SYSLINUX' {\n insmod chain\n set root=(hd0,2)\n chainloader +1\n}\n\
         menuentry 'Windows 7 (on /dev/sda1)' --class windows {\n insmod part_msdos\n set root='hd0,msdos1'\n\
         if [ x$feature_platform_search_hint = xy ]; then\n  search --no-floppy --fs-uuid --set=root 1234\n fi\n\
         drivemap -s (hd0) ${root}\n chainloader +1\n}\n\
         menuentry 'Global root' { chainloader +1 }\n\
         menuentry 'Disk 1' { chainloader (hd1)+1 }\n\
         menuentry 'Previous boot loader (original MBR)' {\n chainloader --original-mbr\n}\n\
         menuentry 'A file' { chainloader (hd0,1)/bootmgr }\n\
         menuentry 'Both' {\n vboot harddisk=/a.vhd\n chainloader +1\n}\n\
         menuentry 'Twice' {\n chainloader (hd0,1)+1\n chainloader (hd0,2)+1\n}\n\
         unset root\nmenuentry 'No root' {\n chainloader +1\n}\n\
         chainloader +1\n",
    );
    let target = |path: &[usize]| match entry(&c, path).boot_command() {
        Ok(BootCommand::Chainload(t)) => *t,
        other => panic!("{:?}: {:?}", path, other),
    };
    let part = |disk, number, scheme_hint| ChainTarget::FirstSector(GrubDevice { disk, partition: Some(PartitionRef { number, scheme_hint }) });
    assert_eq!(target(&[0]), part(0, 2, None));
    assert_eq!(target(&[1]), part(0, 1, Some(PartitionScheme::Msdos)));
    assert_eq!(target(&[2]), part(0, 3, None));
    assert_eq!(target(&[3]), ChainTarget::FirstSector(GrubDevice { disk: 1, partition: None }));
    assert_eq!(target(&[4]), ChainTarget::OriginalMbr);
    let sys = entry(&c, &[0]);
    assert_eq!((sys.vboot_line, sys.chainloader_line), (None, Some(5)));
    assert_eq!(sys.skipped, vec![Notice { line: 3, message: "`insmod` skipped: vboot runs only the vboot line".into() }]);
    assert!(sys.boot_options().is_err(), "a chainloader entry has no vboot options");
    assert!(entry(&c, &[1]).skipped.iter().any(|n| n.message.starts_with("`drivemap` skipped")));
    let problem = |path: &[usize]| entry(&c, path).boot_command().unwrap_err().to_string();
    assert!(problem(&[5]).starts_with("grub.cfg line 21: chainloader `(hd0,1)/bootmgr`: loading files is not supported, only +1"), "{}", problem(&[5]));
    assert_eq!(problem(&[6]), "grub.cfg line 24: this entry has both a vboot line (line 23) and a chainloader line; keep one");
    assert_eq!(problem(&[7]), "grub.cfg line 28: `chainloader`: this entry already has a chainloader line (line 27); keep one");
    assert!(problem(&[8]).contains("chainloader `+1` has no device: root is not set"), "{}", problem(&[8]));
    assert_eq!(
        c.notices.last(),
        Some(&Notice { line: 34, message: "`chainloader` is a GRUB command vboot does not run; skipped".into() })
    );
    // The entry view and the boot screen describe it.
    assert_eq!(entry(&c, &[0]).boot_command().unwrap().describe()[0], "chainload: the boot sector of partition (hd0,2)");
}

#[test]
fn submenus_nest() {
    let c = parse("submenu 'Tools' {\n set x=/t.img\n menuentry Mem { vboot floppy=$x }\n submenu Deep { menuentry D {} }\n}\nmenuentry After { vboot floppy=$x }");
    assert_eq!(c.entries.len(), 2);
    match &c.entries[0] {
        MenuItem::Submenu(s) => {
            assert_eq!(s.title, "Tools");
            assert_eq!(s.items.len(), 2);
            assert!(s.items[1].is_submenu());
        }
        other => panic!("{:?}", other),
    }
    assert_eq!(entry(&c, &[0, 0]).boot_options().unwrap().floppy.as_ref().unwrap().path, "/t.img");
    assert_eq!(entry(&c, &[0, 1, 0]).title, "D");
    // The submenu's variables do not leak out.
    assert_eq!(
        entry(&c, &[1]).boot_options().unwrap_err().to_string(),
        "grub.cfg line 6: vboot option `floppy=` needs a value: write floppy=PATH"
    );
    assert_eq!(c.items_at(&[0, 1]).map(|i| i.len()), Some(1));
    assert_eq!(c.items_at(&[1]), None);
    assert_eq!(c.item(&[5]), None);
}

#[test]
fn preset_id_option() {
    let c = parse("menuentry 'Debian' --class debian $menuentry_id_option 'gnulinux-simple-1234' {\n}\n");
    let e = entry(&c, &[0]);
    assert_eq!(e.id.as_deref(), Some("gnulinux-simple-1234"));
    assert_eq!(e.classes, vec!["debian"]);
}

#[test]
fn crlf_bom_and_utf8() {
    let c = Config::parse_bytes(b"\xef\xbb\xbfset timeout=2\r\nmenuentry 'Caf\xc3\xa9' {\r\n\tvboot \\\r\n  harddisk=/c.vhd\r\n}\r\n").unwrap();
    assert_eq!(c.timeout_secs, Some(2));
    let e = entry(&c, &[0]);
    assert_eq!(e.title, "Café");
    assert_eq!(e.lines, vec!["vboot \\", "harddisk=/c.vhd"]);
    assert!(e.boot_options().is_ok());
    let c = Config::parse_bytes(b"menuentry '\xff' {}").unwrap();
    assert_eq!(c.entries[0].title(), "\u{fffd}");
}

#[test]
fn syntax_errors() {
    let e = err("set a=1\n\nmenuentry 'x {\n}\n");
    assert_eq!(e.to_string(), "grub.cfg line 3: unterminated single quote");
    assert_eq!(e.column, 11);
    let e = err("menuentry x {\n vboot cdrom=/a.iso\n");
    assert_eq!(e.to_string(), "grub.cfg line 1: missing `}`: the menuentry opened here is never closed");
    let e = err("set a=1\n{\n}\n");
    assert_eq!(e.to_string(), "grub.cfg line 2: `{` without menuentry, submenu or function before it");
    let e = err("echo hi {\n}\n");
    assert_eq!(
        e.to_string(),
        "grub.cfg line 1: `{` after `echo`: only menuentry, submenu and function take a block"
    );
    let e = err("menuentry x\nset a=b\n");
    assert_eq!(e.to_string(), "grub.cfg line 1: `menuentry` has no `{ ... }` body");
    let e = err("}\n");
    assert_eq!(e.to_string(), "grub.cfg line 1: `}` without an open `{`");
    let e = err("\nif true; then\n echo\n");
    assert_eq!(e.to_string(), "grub.cfg line 2: `if` has no matching `fi`");
    let e = err("menuentry --class x {}\n");
    assert_eq!(e.to_string(), "grub.cfg line 1: `menuentry` has no title");
    let e = err("submenu s {\n menuentry a {\n}\n");
    assert_eq!(e.to_string(), "grub.cfg line 1: missing `}`: the submenu opened here is never closed");
}

/// Random soups of grub.cfg fragments: every one parses or is refused, none panics.
#[test]
fn random_fragments_never_panic() {
    const FRAGMENTS: [&str; 26] = [
        "menuentry",
        "submenu",
        "{",
        "}",
        "'",
        "\"",
        "\\",
        "$",
        "${",
        "}",
        "if",
        "fi",
        "then",
        "for",
        "done",
        "function",
        "\n",
        ";",
        " ",
        "set default=",
        "vboot",
        " harddisk=(hd0,",
        ")/a",
        "#",
        "\r\n",
        "é",
    ];
    let mut seed: u32 = 0x1234_5678;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..3000 {
        let len = next() % 40;
        let mut text = String::new();
        for _ in 0..len {
            text.push_str(FRAGMENTS[(next() as usize) % FRAGMENTS.len()]);
        }
        let parsed = Config::parse(&text);
        if parsed.is_ok() {
            accepted += 1
        } else {
            refused += 1
        }
        if let Ok(c) = parsed {
            let _ = c.resolve_default();
            for item in &c.entries {
                if let MenuItem::Entry(e) = item {
                    let _ = e.boot_options().map_err(|p| p.to_string());
                }
            }
        }
    }
    // Both paths were exercised, or the soup says nothing.
    assert!(accepted > 100 && refused > 100, "{} accepted, {} refused", accepted, refused);
}

#[test]
fn nesting_is_bounded() {
    let mut s = String::new();
    for _ in 0..100 {
        s.push_str("submenu s {\n");
    }
    for _ in 0..100 {
        s.push_str("}\n");
    }
    assert_eq!(err(&s).message, "blocks nested too deeply");
    let deep_if = "if a; then\n".repeat(200) + &"fi\n".repeat(200);
    assert_eq!(err(&deep_if).message, "blocks nested too deeply");
}
