//! grub.cfg: the menu structure, `set` variables and the `vboot` line of each entry.
//!
//! The file is read in two passes. The first turns tokens into statements (commands, menu
//! blocks, and constructs we skip); the second runs them in order the way GRUB would for the
//! parts we support: `set`/`unset`/`name=value` update variables, `menuentry`/`submenu` add menu
//! items with their arguments expanded at that point, everything else becomes a notice.
//!
//! What we do not evaluate (`if`, `for`, `while`, `until`, `function`) is skipped whole, with a
//! notice saying so, including any menu entries inside. Real generated configs put timeout and
//! default inside such blocks; skipping them leaves those unset, which means "first entry" and
//! "no countdown", the same as GRUB with those variables unset.
//!
//! Before the file runs, the variables a GRUB 2 `grub-mkconfig` header tests or sets in blocks
//! we skip are preset, so that `$menuentry_id_option 'id'` in generated entries still yields the
//! entry's id: `menuentry_id_option=--id`, `grub_platform=pc`, `grub_cpu=i386` and the
//! `feature_*=y` flags.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::lexer::{tokenize, Piece, Token, TokenKind, Word};
use super::options::{OptionError, OptionErrorKind, VbootOptions};

/// A syntax error: GRUB would refuse the file too. Lines and columns count from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grub.cfg line {}: {}", self.line, self.message)
    }
}

/// Something in the file vboot leaves out or interprets; shown to the user, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grub.cfg line {}: {}", self.line, self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeoutStyle {
    /// Show the menu and count down in its footer.
    #[default]
    Menu,
    /// Show only "booting in N s" until the timeout ends or a key is pressed.
    Countdown,
    /// Show nothing until the timeout ends or a key is pressed.
    Hidden,
}

/// `set default=...` as written: `N`, a title, an id, or a `>`-separated path into submenus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultChoice {
    Unset,
    Index(usize),
    /// A title or an id.
    Name(String),
    /// `submenu>entry`, each part an index, a title or an id (`>>` is a literal `>`).
    Path(Vec<String>),
}

impl DefaultChoice {
    pub fn from_value(value: &str) -> DefaultChoice {
        if value.is_empty() {
            return DefaultChoice::Unset;
        }
        let parts = split_default_path(value);
        if parts.len() > 1 {
            return DefaultChoice::Path(parts);
        }
        match parse_index(value) {
            Some(i) => DefaultChoice::Index(i),
            None => DefaultChoice::Name(parts.into_iter().next().unwrap_or_default()),
        }
    }
}

fn parse_index(s: &str) -> Option<usize> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Split `a>b>>c` into `["a", "b>c"]` (GRUB doubles `>` inside titles).
fn split_default_path(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '>' {
            if chars.peek() == Some(&'>') {
                chars.next();
                if let Some(last) = parts.last_mut() {
                    last.push('>');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    pub id: Option<String>,
    pub classes: Vec<String>,
    /// The body as written, one line per source line, trimmed, for the `e` view.
    pub lines: Vec<String>,
    /// `None` when the entry has no `vboot` line.
    pub vboot: Option<Result<VbootOptions, OptionError>>,
    /// Line of the `vboot` command, when there is one.
    pub vboot_line: Option<usize>,
    /// Line of the `menuentry` word.
    pub line_number: usize,
    /// Commands of the body vboot does not run, to show when the entry is opened or booted.
    pub skipped: Vec<Notice>,
}

/// Why an entry cannot be booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    NoVbootLine { title: String },
    Options { line: usize, error: OptionError },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::NoVbootLine { title } => {
                write!(f, "menu entry '{}' has no vboot line, so there is nothing to boot", title)
            }
            EntryProblem::Options { line, error } => write!(f, "grub.cfg line {}: {}", line, error),
        }
    }
}

impl Entry {
    /// The parsed options, or what stops this entry from booting.
    pub fn boot_options(&self) -> Result<&VbootOptions, EntryProblem> {
        match &self.vboot {
            None => Err(EntryProblem::NoVbootLine { title: self.title.clone() }),
            Some(Ok(o)) => Ok(o),
            Some(Err(e)) => Err(EntryProblem::Options {
                line: self.vboot_line.unwrap_or(self.line_number),
                error: e.clone(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submenu {
    pub title: String,
    pub id: Option<String>,
    pub classes: Vec<String>,
    pub items: Vec<MenuItem>,
    pub line_number: usize,
}

// A menu holds a few dozen items built once; boxing entries would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MenuItem {
    Entry(Entry),
    Submenu(Submenu),
}

impl MenuItem {
    pub fn title(&self) -> &str {
        match self {
            MenuItem::Entry(e) => &e.title,
            MenuItem::Submenu(s) => &s.title,
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            MenuItem::Entry(e) => e.id.as_deref(),
            MenuItem::Submenu(s) => s.id.as_deref(),
        }
    }

    pub fn is_submenu(&self) -> bool {
        matches!(self, MenuItem::Submenu(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub entries: Vec<MenuItem>,
    pub default: DefaultChoice,
    /// Seconds before the default boots; `Some(-1)` (any negative value) and `None` (unset)
    /// both mean "wait for a key", as in GRUB.
    pub timeout_secs: Option<i32>,
    pub timeout_style: TimeoutStyle,
    pub notices: Vec<Notice>,
}

/// Deeper nesting than any real file has; the bound keeps a hostile file from exhausting the
/// firmware's stack.
const MAX_DEPTH: usize = 32;

impl Config {
    /// Parse grub.cfg bytes as read from disk: UTF-8 (invalid bytes become U+FFFD), with or
    /// without a byte-order mark, LF or CRLF line ends.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = String::from_utf8_lossy(bytes);
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let src = text.replace("\r\n", "\n");
        let tokens = tokenize(&src)?;
        let mut parser = Parser { tokens: &tokens, pos: 0, src: &src };
        let (stmts, _) = parser.list(End::Eof, 0)?;

        let mut run = Run { notices: Vec::new() };
        let mut env = Env::preset();
        let entries = run.items(&stmts, &mut env)?;

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

    /// Indices from the top menu down to the default item (an entry, or a submenu when the
    /// default names one). `None` when `default` is unset or names nothing.
    pub fn resolve_default(&self) -> Option<Vec<usize>> {
        let parts: Vec<String> = match &self.default {
            DefaultChoice::Unset => return None,
            DefaultChoice::Index(i) => vec![i.to_string()],
            DefaultChoice::Name(n) => vec![n.clone()],
            DefaultChoice::Path(p) => p.clone(),
        };
        let mut items: &[MenuItem] = &self.entries;
        let mut path = Vec::new();
        for (n, part) in parts.iter().enumerate() {
            let index = match parse_index(part) {
                Some(i) if i < items.len() => i,
                Some(_) => return None,
                None => items.iter().position(|it| it.id() == Some(part.as_str()) || it.title() == part)?,
            };
            path.push(index);
            match items.get(index)? {
                MenuItem::Submenu(s) => items = &s.items,
                MenuItem::Entry(_) if n + 1 < parts.len() => return None,
                MenuItem::Entry(_) => {}
            }
        }
        Some(path)
    }

    /// The default as a path, falling back to the first item (GRUB's behaviour).
    pub fn default_path(&self) -> Option<Vec<usize>> {
        self.resolve_default().or_else(|| if self.entries.is_empty() { None } else { Some(vec![0]) })
    }

    /// The item at a path of indices.
    pub fn item(&self, path: &[usize]) -> Option<&MenuItem> {
        let (last, parents) = path.split_last()?;
        self.items_at(parents)?.get(*last)
    }

    /// The items of the menu level a path of submenu indices leads to (`&[]` = top level).
    pub fn items_at(&self, submenu_path: &[usize]) -> Option<&[MenuItem]> {
        let mut items: &[MenuItem] = &self.entries;
        for i in submenu_path {
            match items.get(*i)? {
                MenuItem::Submenu(s) => items = &s.items,
                MenuItem::Entry(_) => return None,
            }
        }
        Some(items)
    }

    pub fn entry(&self, path: &[usize]) -> Option<&Entry> {
        match self.item(path)? {
            MenuItem::Entry(e) => Some(e),
            MenuItem::Submenu(_) => None,
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Pass 1: statements.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    Menuentry,
    Submenu,
}

#[derive(Debug)]
enum Stmt {
    Command {
        words: Vec<Word>,
        line: usize,
    },
    Block {
        kind: BlockKind,
        args: Vec<Word>,
        line: usize,
        body: Vec<Stmt>,
        raw: String,
    },
    /// `if ... fi` and friends; `entries` counts the menu blocks inside, for the notice.
    Skipped {
        keyword: String,
        line: usize,
        end_line: usize,
        entries: usize,
    },
}

#[derive(Clone, Copy)]
enum End<'k> {
    Eof,
    /// The `}` of a block opened at `line` by `what`.
    Brace {
        what: &'k str,
        line: usize,
    },
    /// A command starting with `keyword` closes the construct `opener` began at `line`.
    Keyword {
        keyword: &'k str,
        opener: &'k str,
        line: usize,
    },
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    src: &'t str,
}

fn count_blocks(stmts: &[Stmt]) -> usize {
    stmts
        .iter()
        .map(|s| match s {
            Stmt::Block { body, kind, .. } => {
                1 + if *kind == BlockKind::Submenu { count_blocks(body) } else { 0 }
            }
            Stmt::Skipped { entries, .. } => *entries,
            Stmt::Command { .. } => 0,
        })
        .sum()
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn error(line: usize, column: usize, message: String) -> ConfigError {
        ConfigError { line, column, message }
    }

    /// Statements up to `end`. Returns them and the line where the list ended, plus for a
    /// brace block the byte offset of its `}`.
    fn list(&mut self, end: End, depth: usize) -> Result<(Vec<Stmt>, (usize, usize)), ConfigError> {
        let mut stmts = Vec::new();
        loop {
            let tok = match self.peek() {
                Some(t) => t,
                None => {
                    let last_line = self.tokens.last().map_or(1, |t| t.line);
                    return match end {
                        End::Eof => Ok((stmts, (last_line, self.src.len()))),
                        End::Brace { what, line } => Err(Self::error(
                            line,
                            1,
                            format!("missing `}}`: the {} opened here is never closed", what),
                        )),
                        End::Keyword { keyword, opener, line } => {
                            Err(Self::error(line, 1, format!("`{}` has no matching `{}`", opener, keyword)))
                        }
                    };
                }
            };
            match &tok.kind {
                TokenKind::Newline | TokenKind::Semicolon => self.pos += 1,
                TokenKind::RBrace => {
                    if let End::Brace { .. } = end {
                        self.pos += 1;
                        return Ok((stmts, (tok.line, tok.start)));
                    }
                    return Err(Self::error(tok.line, tok.column, "`}` without an open `{`".into()));
                }
                TokenKind::LBrace => {
                    return Err(Self::error(
                        tok.line,
                        tok.column,
                        "`{` without menuentry, submenu or function before it".into(),
                    ))
                }
                TokenKind::Word(_) => {
                    let mut words = Vec::new();
                    while let Some(Token { kind: TokenKind::Word(w), .. }) = self.peek() {
                        words.push(w.clone());
                        self.pos += 1;
                    }
                    // `then`, `else`, `elif`, `do` introduce the command after them.
                    while words
                        .first()
                        .and_then(|w| w.keyword())
                        .is_some_and(|k| matches!(k, "then" | "else" | "elif" | "do"))
                    {
                        words.remove(0);
                    }
                    let first = match words.first() {
                        Some(w) => w,
                        None => continue,
                    };
                    if let End::Keyword { keyword, .. } = end {
                        if first.keyword() == Some(keyword) {
                            return Ok((stmts, (first.line, tok.start)));
                        }
                    }
                    stmts.push(self.statement(words, depth)?);
                }
            }
        }
    }

    fn statement(&mut self, words: Vec<Word>, depth: usize) -> Result<Stmt, ConfigError> {
        let first = match words.first() {
            Some(w) => w,
            None => return Ok(Stmt::Command { words, line: 0 }),
        };
        let line = first.line;
        if depth >= MAX_DEPTH {
            return Err(Self::error(line, first.column, "blocks nested too deeply".into()));
        }
        let keyword = first.keyword().unwrap_or("");
        let closing = match keyword {
            "if" => Some("fi"),
            "for" | "while" | "until" => Some("done"),
            _ => None,
        };
        if let Some(closing) = closing {
            let (body, (end_line, _)) =
                self.list(End::Keyword { keyword: closing, opener: keyword, line }, depth + 1)?;
            return Ok(Stmt::Skipped {
                keyword: keyword.into(),
                line,
                end_line,
                entries: count_blocks(&body),
            });
        }
        let block = match keyword {
            "menuentry" => Some(BlockKind::Menuentry),
            "submenu" => Some(BlockKind::Submenu),
            "function" => None,
            _ => {
                if let Some(Token { kind: TokenKind::LBrace, line, column, .. }) = self.peek() {
                    return Err(Self::error(
                        *line,
                        *column,
                        format!(
                            "`{{` after `{}`: only menuentry, submenu and function take a block",
                            keyword_or_text(first)
                        ),
                    ));
                }
                return Ok(Stmt::Command { words, line });
            }
        };
        // The body's `{` may be on the same line or on a following one.
        let mut look = self.pos;
        while let Some(Token { kind: TokenKind::Newline, .. }) = self.tokens.get(look) {
            look += 1;
        }
        let open = match self.tokens.get(look) {
            Some(t @ Token { kind: TokenKind::LBrace, .. }) => t,
            _ => {
                return Err(Self::error(line, first.column, format!("`{}` has no `{{ ... }}` body", keyword)))
            }
        };
        self.pos = look + 1;
        let (body, (_, close_start)) = self.list(End::Brace { what: keyword, line }, depth + 1)?;
        let raw = self.src.get(open.end..close_start).unwrap_or("").to_string();
        match block {
            None => Ok(Stmt::Skipped {
                keyword: keyword.into(),
                line,
                end_line: line,
                entries: count_blocks(&body),
            }),
            Some(kind) => {
                Ok(Stmt::Block { kind, args: words.get(1..).unwrap_or(&[]).to_vec(), line, body, raw })
            }
        }
    }
}

fn keyword_or_text(w: &Word) -> String {
    let mut s = String::new();
    for p in &w.pieces {
        match p {
            Piece::Lit { text, .. } => s.push_str(text),
            Piece::Var { name, .. } => {
                s.push_str("${");
                s.push_str(name);
                s.push('}');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Pass 2: running the statements.

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
            line_number: line,
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
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
}
