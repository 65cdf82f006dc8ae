//! The grub.cfg rewrite of `take_snapshot=` (`rewrite::rewrite_for_snapshot`): retarget an
//! existing entry (`boot_entry=`) or append a new one (`new_menu_entry=`).
//! Input: a header line `selector\ttitle\tchild path\n`, then the grub.cfg text. Checks: no
//! panic; a rewrite that succeeds parses, the retargeted entry boots the child and keeps its
//! other options, every other entry keeps its title, and an appended entry leaves the old text
//! as it was and reads back with the title asked for.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::config::rewrite::{rewrite_for_snapshot, SnapshotTarget};
use vboot::config::{Config, GrubPath, MenuItem};

fn titles(items: &[MenuItem], out: &mut Vec<String>) {
    for i in items {
        out.push(i.title().to_string());
        if let MenuItem::Submenu(s) = i {
            titles(&s.items, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, cfg) = text.split_once('\n').unwrap_or((&text, ""));
    let mut parts = head.splitn(3, '\t');
    let selector = parts.next().unwrap_or("");
    let title = parts.next().unwrap_or("snapshot");
    let child = parts.next().unwrap_or("/s.vhd");
    let Ok(child) = GrubPath::parse(child) else { return };
    let target = if let Some(rest) = selector.strip_prefix("new") {
        let Ok(c) = Config::parse(cfg) else { return };
        let path: Vec<usize> = rest.split('>').filter_map(|n| n.trim().parse().ok()).take(4).collect();
        let Some(Ok(template)) = c.entry(&path).and_then(|e| e.vboot.clone()) else { return };
        SnapshotTarget::NewEntry { title: title.to_string(), template }
    } else {
        SnapshotTarget::Entry(selector.split('>').filter_map(|n| n.trim().parse().ok()).take(4).collect())
    };
    let Ok(out) = rewrite_for_snapshot(cfg, &target, &child) else { return };
    let before = Config::parse(cfg).expect("a rewrite succeeded on a grub.cfg that does not parse");
    let after = Config::parse(&out).expect("the rewritten grub.cfg does not parse");
    match &target {
        SnapshotTarget::Entry(path) => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            titles(&before.entries, &mut a);
            titles(&after.entries, &mut b);
            assert_eq!(a, b, "the rewrite changed the menu");
            let old = before.entry(path).and_then(|e| e.vboot.clone()).unwrap().unwrap();
            let new = after.entry(path).and_then(|e| e.vboot.clone()).unwrap().unwrap();
            assert_eq!(new.harddisk.as_ref(), Some(&child));
            assert_eq!((new.immutable, new.pause, &new.parent_dir), (old.immutable, old.pause, &old.parent_dir));
        }
        SnapshotTarget::NewEntry { title, .. } => {
            assert!(out.starts_with(cfg), "appending an entry changed the text before it");
            let last = after.entries.last().expect("no entry after appending one");
            assert_eq!(last.title(), title.as_str(), "the new entry's title does not read back");
        }
    }
});
