//! grub.cfg: `Config::parse_bytes` (lexer, quoting, escapes, line continuation, variables,
//! menuentry/submenu nesting, `set default/timeout`), every entry's `vboot` line, and the default
//! choice. Checks: no panic; `resolve_default` names an existing entry; every parsed `vboot`
//! line, written back with `rewrite::vboot_line`, parses to the same options (the line vboot
//! writes into grub.cfg when it takes a snapshot), and every parsed `chainloader` line written
//! back as its target (`(hd0,msdos2)+1`, `--original-mbr`) to the same target; memory at most
//! 64 x the input + 1 MiB.
//! Dictionary: fuzz/dict/grubcfg.dict; seeds: tests/data/grubcfg.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::config::rewrite::vboot_line;
use vboot::config::{Config, MenuItem};
use vboot_fuzz::heap;

fn check_items(items: &[MenuItem], depth: usize) {
    assert!(depth <= 64, "submenus nested deeper than the parser allows");
    for item in items {
        match item {
            MenuItem::Entry(e) => {
                if let Some(Ok(o)) = &e.vboot {
                    let _ = o.describe();
                    let line = vboot_line(o);
                    let text = format!("menuentry x {{\n{}\n}}\n", line);
                    let back = Config::parse(&text).unwrap_or_else(|err| panic!("{:?} written as {:?} does not parse: {}", o, line, err));
                    let got = back.entry(&[0]).and_then(|e| e.vboot.clone());
                    assert_eq!(got, Some(Ok(o.clone())), "vboot line {:?} does not read back", line);
                }
                if let Some(Ok(t)) = &e.chainloader {
                    let _ = t.describe();
                    let text = format!("menuentry x {{\n chainloader {}\n}}\n", t);
                    let back = Config::parse(&text).unwrap_or_else(|err| panic!("{:?} written as {:?} does not parse: {}", t, text, err));
                    let got = back.entry(&[0]).and_then(|e| e.chainloader.clone());
                    assert_eq!(got, Some(Ok(*t)), "chainloader {} does not read back", t);
                }
                let _ = e.boot_options();
                let _ = e.boot_command().map(|c| c.describe());
            }
            MenuItem::Submenu(s) => check_items(&s.items, depth + 1),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    heap::start(256 << 20);
    if let Ok(c) = Config::parse_bytes(data) {
        if let Some(path) = c.resolve_default() {
            assert!(c.item(&path).is_some(), "default {:?} names no item", path);
        }
        let _ = c.default_path();
        check_items(&c.entries, 0);
    }
    let bound = (1 << 20) + 64 * data.len() as u64;
    assert!(heap::peak() <= bound, "grub.cfg of {} bytes took {} bytes", data.len(), heap::peak());
    heap::stop();
});
