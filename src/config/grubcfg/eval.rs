//! grub.cfg, pass 2: running the statements in order the way GRUB would for the parts vboot
//! supports. Variables are set and expanded as they go (a submenu and each entry body work on a
//! copy); `menuentry`/`submenu` build the menu with their arguments expanded at that point; the
//! rest becomes notices. At the end, `default`, `timeout` and `timeout_style` are read from the
//! variables as the file left them.
//!
//! Before the file runs, the variables a GRUB 2 `grub-mkconfig` header tests or sets in blocks
//! we skip are preset, so that `$menuentry_id_option 'id'` in generated entries still yields the
//! entry's id: `menuentry_id_option=--id`, `grub_platform=pc`, `grub_cpu=i386` and the
//! `feature_*=y` flags.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::parse::{BlockKind, Stmt};
use super::{Config, ConfigError, DefaultChoice, Entry, MenuItem, Notice, Submenu, TimeoutStyle};
use crate::config::lexer::{Piece, Word};
use crate::config::chainload::{self, ChainTarget, ChainloadError, ChainloadErrorKind};
use crate::config::options::{OptionError, OptionErrorKind, VbootOptions};

/// The menu and settings that running `stmts` yields.
pub(super) fn run(stmts: &[Stmt]) -> Result<Config, ConfigError> {
    let mut run = Run { notices: Vec::new() };
    let mut env = Env::preset();
    let entries = run.items(stmts, &mut env)?;

    let default = DefaultChoice::from_value(env.get("default"));
    let timeout_secs = match env.vars.get("timeout") {
        None => None,
        Some(v) => match parse_timeout(v) {
            Some(t) => Some(t),
            None => {
                run.notices.push(Notice {
                    line: env.line_of("timeout"),
                    message: format!("timeout `{}` is not a number of seconds; ignored", v),
                });
                None
            }
        },
    };
    let timeout_style = match env.get("timeout_style") {
        "" | "menu" => TimeoutStyle::Menu,
        "countdown" => TimeoutStyle::Countdown,
        "hidden" => TimeoutStyle::Hidden,
        other => {
            run.notices.push(Notice {
                line: env.line_of("timeout_style"),
                message: format!(
                    "timeout_style `{}` is not menu, countdown or hidden; using menu",
                    other
                ),
            });
            TimeoutStyle::Menu
        }
    };
    let mut config = Config { entries, default, timeout_secs, timeout_style, notices: run.notices };
    if config.default != DefaultChoice::Unset && config.resolve_default().is_none() {
        config.notices.push(Notice {
            line: env.line_of("default"),
            message: format!(
                "default `{}` matches no menu entry; the first entry is the default",
                env.get("default")
            ),
        });
    }
    Ok(config)
}

fn parse_timeout(v: &str) -> Option<i32> {
    let v = v.trim();
    let (neg, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if neg {
        return Some(-1);
    }
    // A timeout longer than i32 seconds is "forever" in practice; clamp rather than refuse.
    Some(digits.parse::<i32>().unwrap_or(i32::MAX))
}

#[derive(Clone)]
struct Env {
    vars: BTreeMap<String, String>,
    /// Line of the last assignment to each variable, for notices about its value.
    set_at: BTreeMap<String, usize>,
}

impl Env {
    fn preset() -> Env {
        let mut vars = BTreeMap::new();
        for (k, v) in [
            ("menuentry_id_option", "--id"),
            ("grub_platform", "pc"),
            ("grub_cpu", "i386"),
            ("feature_menuentry_id", "y"),
            ("feature_platform_search_hint", "y"),
            ("feature_timeout_style", "y"),
            ("feature_default_font_path", "y"),
            ("feature_all_video_module", "y"),
        ] {
            vars.insert(k.to_string(), v.to_string());
        }
        Env { vars, set_at: BTreeMap::new() }
    }

    fn get(&self, name: &str) -> &str {
        self.vars.get(name).map(|s| s.as_str()).unwrap_or("")
    }

    fn line_of(&self, name: &str) -> usize {
        self.set_at.get(name).copied().unwrap_or(0)
    }

    fn set(&mut self, name: &str, value: &str, line: usize) {
        self.vars.insert(name.to_string(), value.to_string());
        self.set_at.insert(name.to_string(), line);
    }

    /// Words after quote removal and expansion. An unquoted `$var` splits on blanks and
    /// vanishes when empty; a quoted one never splits (as in GRUB and POSIX shells).
    fn expand(&self, words: &[Word]) -> Vec<String> {
        let mut out = Vec::new();
        for w in words {
            let mut cur = String::new();
            let mut have = false;
            for p in &w.pieces {
                match p {
                    Piece::Lit { text, .. } => {
                        cur.push_str(text);
                        have = true;
                    }
                    Piece::Var { name, quoted: true } => {
                        cur.push_str(self.get(name));
                        have = true;
                    }
                    Piece::Var { name, quoted: false } => {
                        let value = self.get(name);
                        let blank = |c: char| c == ' ' || c == '\t' || c == '\n';
                        if value.starts_with(blank) && have {
                            out.push(core::mem::take(&mut cur));
                            have = false;
                        }
                        for (i, field) in value.split(blank).filter(|f| !f.is_empty()).enumerate() {
                            if i > 0 {
                                out.push(core::mem::take(&mut cur));
                            }
                            cur.push_str(field);
                            have = true;
                        }
                        if value.ends_with(blank) && have {
                            out.push(core::mem::take(&mut cur));
                            have = false;
                        }
                    }
                }
            }
            if have {
                out.push(cur);
            }
        }
        out
    }

    /// `set a=b c=d`, `name=value` and `unset`: true when the command was one of these.
    fn assignment(&mut self, args: &[String], line: usize) -> bool {
        let is_name = |n: &str| {
            let mut cs = n.chars();
            cs.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        match args.first().map(|s| s.as_str()) {
            Some("set") => {
                for a in args.get(1..).unwrap_or(&[]) {
                    // `set name` without `=` prints the value in GRUB; nothing to do here.
                    if let Some((name, value)) = a.split_once('=') {
                        if is_name(name) {
                            self.set(name, value, line);
                        }
                    }
                }
                true
            }
            Some("unset") => {
                for a in args.get(1..).unwrap_or(&[]) {
                    self.vars.remove(a.as_str());
                }
                true
            }
            Some("export") => true,
            Some(first) => match first.split_once('=') {
                Some((name, value)) if is_name(name) && args.len() == 1 => {
                    self.set(name, value, line);
                    true
                }
                _ => false,
            },
            None => true,
        }
    }
}

struct Run {
    notices: Vec<Notice>,
}

struct Header {
    title: String,
    id: Option<String>,
    classes: Vec<String>,
}

/// Normalise body text for the `e` view: one trimmed line per source line, without the blank
/// lines that only frame the block.
fn body_lines(raw: &str) -> Vec<String> {
    let mut lines: Vec<String> = raw.split('\n').map(|l| l.trim().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let first = lines.iter().position(|l| !l.is_empty()).unwrap_or(lines.len());
    lines.drain(..first);
    lines
}

impl Run {
    fn note(&mut self, line: usize, message: String) {
        self.notices.push(Notice { line, message });
    }

    fn items(&mut self, stmts: &[Stmt], env: &mut Env) -> Result<Vec<MenuItem>, ConfigError> {
        let mut items = Vec::new();
        for stmt in stmts {
            match stmt {
                Stmt::Command { words, line } => {
                    let args = env.expand(words);
                    if env.assignment(&args, *line) {
                        continue;
                    }
                    let name = args.first().map(|s| s.as_str()).unwrap_or("");
                    if name == "vboot" {
                        self.note(*line, "`vboot` outside a menuentry does nothing; skipped".into());
                    } else if name == "source" || name == "configfile" {
                        self.note(
                            *line,
                            format!("`{}` not followed: vboot reads only this grub.cfg", args.join(" ")),
                        );
                    } else {
                        self.note(*line, format!("`{}` is a GRUB command vboot does not run; skipped", name));
                    }
                }
                Stmt::Skipped { keyword, line, end_line, entries } => {
                    let what = match keyword.as_str() {
                        "if" => format!("`if` block (lines {}-{})", line, end_line),
                        "function" => "`function` definition".to_string(),
                        k => format!("`{}` loop (lines {}-{})", k, line, end_line),
                    };
                    let mut message =
                        format!("{} skipped: vboot does not run conditions, loops or functions", what);
                    match entries {
                        0 => {}
                        1 => message.push_str("; the menu entry inside is not shown"),
                        n => message.push_str(&format!("; the {} menu entries inside are not shown", n)),
                    }
                    self.note(*line, message);
                }
                Stmt::Block { kind, args, line, body, raw } => {
                    let args = env.expand(args);
                    let header = self.header(*kind, &args, *line)?;
                    match kind {
                        BlockKind::Menuentry => {
                            items.push(MenuItem::Entry(self.entry(header, body, raw, env, *line)))
                        }
                        BlockKind::Submenu => {
                            // A submenu runs in its own variable context, as in GRUB.
                            let mut inner = env.clone();
                            let sub = self.items(body, &mut inner)?;
                            items.push(MenuItem::Submenu(Submenu {
                                title: header.title,
                                id: header.id,
                                classes: header.classes,
                                items: sub,
                                line_number: *line,
                            }));
                        }
                    }
                }
            }
        }
        Ok(items)
    }

    /// `menuentry`/`submenu` arguments: options anywhere, the first other word is the title
    /// (further words are arguments GRUB passes to the body as `$1`...; vboot ignores them).
    fn header(&mut self, kind: BlockKind, args: &[String], line: usize) -> Result<Header, ConfigError> {
        let what = if kind == BlockKind::Menuentry { "menuentry" } else { "submenu" };
        let mut title = None;
        let mut id = None;
        let mut classes = Vec::new();
        let mut i = 0;
        let mut options_done = false;
        while let Some(a) = args.get(i) {
            i += 1;
            if options_done || !a.starts_with("--") {
                if title.is_none() {
                    title = Some(a.clone());
                }
                continue;
            }
            if a == "--" {
                options_done = true;
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            let takes_value = matches!(name, "--class" | "--id" | "--users" | "--hotkey");
            if name == "--unrestricted" {
                continue;
            }
            if !takes_value {
                self.note(line, format!("{} option `{}` is not known; ignored", what, a));
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => {
                        self.note(line, format!("{} option `{}` has no value; ignored", what, name));
                        continue;
                    }
                },
            };
            match name {
                "--class" => classes.push(value),
                "--id" => id = Some(value),
                _ => {}
            }
        }
        let title = title.ok_or_else(|| ConfigError {
            line,
            column: 1,
            message: format!("`{}` has no title", what),
        })?;
        Ok(Header { title, id, classes })
    }

    fn entry(&mut self, header: Header, body: &[Stmt], raw: &str, env: &Env, line: usize) -> Entry {
        let mut local = env.clone();
        let mut vboot: Option<Result<VbootOptions, OptionError>> = None;
        let mut vboot_line = None;
        let mut chainloader: Option<Result<ChainTarget, ChainloadError>> = None;
        let mut chainloader_line = None;
        let mut skipped = Vec::new();
        for stmt in body {
            match stmt {
                Stmt::Command { words, line } => {
                    let args = local.expand(words);
                    if local.assignment(&args, *line) {
                        continue;
                    }
                    if args.first().map(|s| s.as_str()) == Some("vboot") {
                        match (vboot_line, &vboot) {
                            // The first error stays the one shown.
                            (Some(first_line), Some(Ok(_))) => {
                                vboot = Some(Err(OptionError {
                                    word: "vboot".into(),
                                    kind: OptionErrorKind::SecondVbootLine { first_line },
                                }));
                                vboot_line = Some(*line);
                            }
                            (Some(_), _) => {}
                            (None, _) => {
                                vboot = Some(VbootOptions::parse(args.get(1..).unwrap_or(&[])));
                                vboot_line = Some(*line);
                            }
                        }
                    } else if args.first().map(|s| s.as_str()) == Some("chainloader") {
                        match chainloader_line {
                            // The first line stays the one that counts, or its error the one shown.
                            Some(first_line) if matches!(chainloader, Some(Ok(_))) => {
                                chainloader = Some(Err(ChainloadError {
                                    word: "chainloader".into(),
                                    kind: ChainloadErrorKind::SecondChainloaderLine { first_line },
                                }));
                                chainloader_line = Some(*line);
                            }
                            Some(_) => {}
                            None => {
                                // `+1` alone means root's device as the entry has it here.
                                let root = local.vars.get("root").map(|s| s.as_str());
                                chainloader = Some(chainload::parse(args.get(1..).unwrap_or(&[]), root));
                                chainloader_line = Some(*line);
                            }
                        }
                    } else {
                        let name = args.first().map(|s| s.as_str()).unwrap_or("");
                        skipped.push(Notice {
                            line: *line,
                            message: format!("`{}` skipped: vboot runs only the vboot line", name),
                        });
                    }
                }
                Stmt::Skipped { keyword, line, .. } => skipped.push(Notice {
                    line: *line,
                    message: format!("`{}` block skipped: vboot does not run conditions or loops", keyword),
                }),
                Stmt::Block { kind, line, .. } => skipped.push(Notice {
                    line: *line,
                    message: format!(
                        "`{}` inside a menuentry skipped",
                        if *kind == BlockKind::Menuentry { "menuentry" } else { "submenu" }
                    ),
                }),
            }
        }
        Entry {
            title: header.title,
            id: header.id,
            classes: header.classes,
            lines: body_lines(raw),
            vboot,
            vboot_line,
            chainloader,
            chainloader_line,
            line_number: line,
            skipped,
        }
    }
}
