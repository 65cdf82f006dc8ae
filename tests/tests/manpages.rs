//! The man pages and shell completions `cargo xtask man` (and `cargo xtask build`) generate
//! from the tools' clap definitions: rendered by man-db's `man -l` (groff's `nroff` if man is
//! missing), and the bash completion run by bash itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use vboot_tests::workspace_root;

/// Each tool, its subcommands, and the options each subcommand's page must list (what README.md
/// and docs/ promise).
const TOOLS: &[(&str, &[(&str, &[&str])])] = &[
    (
        "vboot-install",
        &[
            ("install", &["--partition", "--force", "--force-chs", "--stage-dir", "--dry-run"]),
            ("uninstall", &["--dry-run"]),
            ("status", &[]),
        ],
    ),
    (
        "vdisk",
        &[
            ("create", &["--format", "--size", "--parent", "--reserve", "--exact-size", "--parent-dir"]),
            ("info", &["--json", "--output", "--parent-dir", "--lenient-cid"]),
            ("check", &["--parent-dir", "--lenient-cid"]),
            ("map", &["--json", "--output", "--parent-dir", "--lenient-cid"]),
            ("snapshot", &["--reserve", "--parent-dir"]),
            ("immutable-child", &["--child", "--reserve", "--parent-dir"]),
            ("convert", &["--format", "--reserve", "--parent-dir"]),
            ("merge", &["--parent-dir"]),
            ("restore", &["--parent-dir", "--lenient-cid"]),
            ("relink", &["--parent-dir"]),
            ("reserve", &[]),
            ("trim", &[]),
            ("mkconfig", &["--output", "--dry-run"]),
        ],
    ),
    ("vboot-attach", &[]),
];

const ATTACH_OPTIONS: &[&str] = &["--info", "--detach", "--drive", "--device", "--timeout", "--read-only", "--foreground", "--all", "--netlink"];

fn generated(sub: &str) -> PathBuf {
    let p = workspace_root().join("target").join(sub);
    assert!(p.exists(), "{} is missing: run `cargo xtask man` (or `cargo xtask build`)", p.display());
    p
}

/// The page as a reader sees it, plain text.
fn render(page: &Path) -> String {
    let out = if Path::new("/usr/bin/man").exists() {
        Command::new("man").arg("-l").arg(page).env("MANWIDTH", "200").env("MAN_KEEP_FORMATTING", "0").env("MANPAGER", "cat").env("PAGER", "cat").output()
    } else {
        Command::new("nroff").args(["-man", "-Tutf8"]).arg(page).output()
    }
    .expect("man (Debian man-db) or nroff (groff-base)");
    assert!(out.status.success(), "{}: {}", page.display(), String::from_utf8_lossy(&out.stderr));
    // Strip overstriking (bold/underline as X\bX), in case the formatter kept it.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The text of section NAME (the lines after its heading up to the next heading).
fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let heading = format!("\n{}\n", name);
    let start = text.find(&heading).unwrap_or_else(|| panic!("no {} section in:\n{}", name, text)) + heading.len();
    let rest = &text[start..];
    // The next heading: a line that starts at column 0 with a capital letter.
    let end = rest.match_indices('\n').map(|(i, _)| i + 1).find(|&i| rest[i..].chars().next().is_some_and(|c| c.is_ascii_uppercase())).unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn man_pages_name_every_subcommand_and_option() {
    let man = generated("man");
    for (tool, subcommands) in TOOLS {
        let text = render(&man.join(format!("{}.1", tool)));
        assert!(section(&text, "NAME").contains(&format!("{} - ", tool)), "{}: NAME:\n{}", tool, text);
        let options = section(&text, "OPTIONS");
        for opt in ["--help", "--version"] {
            assert!(options.contains(opt), "{}: OPTIONS lacks {}:\n{}", tool, opt, options);
        }
        if subcommands.is_empty() {
            for opt in ATTACH_OPTIONS {
                assert!(options.contains(opt), "{}: OPTIONS lacks {}:\n{}", tool, opt, options);
            }
            continue;
        }
        let listed = section(&text, "SUBCOMMANDS");
        for (sub, sub_options) in *subcommands {
            assert!(listed.contains(&format!("{}-{}(1)", tool, sub)), "{}: SUBCOMMANDS lacks {}:\n{}", tool, sub, listed);
            let page = render(&man.join(format!("{}-{}.1", tool, sub)));
            assert!(section(&page, "NAME").contains(&format!("{}-{} - ", tool, sub)), "{} {}: NAME:\n{}", tool, sub, page);
            let options = section(&page, "OPTIONS");
            for opt in *sub_options {
                assert!(options.contains(opt), "{} {}: OPTIONS lacks {}:\n{}", tool, sub, opt, options);
            }
        }
    }
}

#[test]
fn shell_completions_offer_every_subcommand() {
    let dir = generated("completions");
    for (tool, subcommands) in TOOLS {
        let bash = dir.join("bash").join(tool);
        // What bash offers after `TOOL <TAB>` (or `TOOL --<TAB>` for vboot-attach).
        let word = if subcommands.is_empty() { "--" } else { "" };
        let script = format!(
            "source {}; COMP_WORDS=({} {:?}); COMP_CWORD=1; COMP_LINE='{} {}'; COMP_POINT=${{#COMP_LINE}}; \"$(complete -p {} | sed 's/.*-F \\([^ ]*\\).*/\\1/')\" {} {:?} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.display(),
            tool,
            word,
            tool,
            word,
            tool,
            tool,
            word,
            tool
        );
        let out = Command::new("bash").args(["-c", &script]).output().expect("bash");
        let offered = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}", tool, String::from_utf8_lossy(&out.stderr));
        let offered: Vec<&str> = offered.lines().collect();
        let expected: Vec<&str> = if subcommands.is_empty() { ATTACH_OPTIONS.to_vec() } else { subcommands.iter().map(|(s, _)| *s).collect() };
        for e in expected {
            assert!(offered.contains(&e), "bash completion of {} does not offer {}: {:?}", tool, e, offered);
        }
        for (shell_dir, file) in [("zsh", format!("_{}", tool)), ("fish", format!("{}.fish", tool))] {
            let text = std::fs::read_to_string(dir.join(shell_dir).join(&file)).unwrap_or_else(|e| panic!("{}/{}: {}", shell_dir, file, e));
            for (sub, _) in *subcommands {
                assert!(text.contains(sub), "{} completion {} lacks {}", shell_dir, file, sub);
            }
        }
    }
}
