//! The `vboot` line's options on their own: `VbootOptions::parse` over words (split on
//! whitespace, as the lexer hands them over), `GrubPath::parse` of each `key=value` value, and
//! `parse_size`. Checks: no panic; parsed options, written back with `rewrite::vboot_line` and
//! read through grub.cfg's lexer, are the same options.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::config::options::parse_size;
use vboot::config::rewrite::vboot_line;
use vboot::config::{Config, GrubPath, VbootOptions};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    for w in &words {
        if let Some((_, v)) = w.split_once('=') {
            let _ = GrubPath::parse(v);
            let _ = GrubPath::parse_file(v);
            let _ = parse_size(v);
        }
    }
    if let Ok(o) = VbootOptions::parse(&words) {
        let _ = o.describe();
        let line = vboot_line(&o);
        let cfg = format!("menuentry x {{\n{}\n}}\n", line);
        let back = Config::parse(&cfg).unwrap_or_else(|e| panic!("{:?} written as {:?} does not parse: {}", o, line, e));
        assert_eq!(back.entry(&[0]).and_then(|e| e.vboot.clone()), Some(Ok(o.clone())), "{:?} does not read back", line);
    }
});
