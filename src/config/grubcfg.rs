//! grub.cfg: the menu structure, `set` variables and the `vboot` line of each entry.
//!
//! The file is read in two passes. The first (`grubcfg/parse.rs`) turns tokens into statements
//! (commands, menu blocks, and constructs we skip); the second (`grubcfg/eval.rs`) runs them in
//! order the way GRUB would for the parts we support: `set`/`unset`/`name=value` update
//! variables, `menuentry`/`submenu` add menu items with their arguments expanded at that point,
//! everything else becomes a notice. This file holds what they build: the menu and the settings,
//! and the walks over the menu that find an item or the default.
//!
//! What we do not evaluate (`if`, `for`, `while`, `until`, `function`) is skipped whole, with a
//! notice saying so, including any menu entries inside. Real generated configs put timeout and
//! default inside such blocks; skipping them leaves those unset, which means "first entry" and
//! "no countdown", the same as GRUB with those variables unset.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::chainload::{ChainTarget, ChainloadError};
use super::options::{OptionError, VbootOptions};

mod eval;
mod parse;

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
    /// `None` when the entry has no `chainloader` line.
    pub chainloader: Option<Result<ChainTarget, ChainloadError>>,
    /// Line of the `chainloader` command, when there is one.
    pub chainloader_line: Option<usize>,
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
    Chainloader { line: usize, error: ChainloadError },
    /// Both a `vboot` and a `chainloader` line: which one was meant is not for vboot to guess.
    VbootAndChainloader { vboot_line: usize, chainloader_line: usize },
}

/// How an entry boots: its `vboot` line (an image file) or its `chainloader` line (a boot
/// sector already on a disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootCommand<'e> {
    Vboot(&'e VbootOptions),
    Chainload(&'e ChainTarget),
}

impl BootCommand<'_> {
    /// One fact a line, for the entry view and the screen before booting.
    pub fn describe(&self) -> Vec<String> {
        match self {
            BootCommand::Vboot(o) => o.describe(),
            BootCommand::Chainload(t) => t.describe(),
        }
    }
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::NoVbootLine { title } => {
                write!(f, "menu entry '{}' has no vboot line, so there is nothing to boot", title)
            }
            EntryProblem::Options { line, error } => write!(f, "grub.cfg line {}: {}", line, error),
            EntryProblem::Chainloader { line, error } => write!(f, "grub.cfg line {}: {}", line, error),
            EntryProblem::VbootAndChainloader { vboot_line, chainloader_line } => write!(
                f,
                "grub.cfg line {}: this entry has both a vboot line (line {}) and a chainloader line; keep one",
                chainloader_line, vboot_line
            ),
        }
    }
}

impl Entry {
    /// The entry's one way to boot, or what stops it from booting.
    pub fn boot_command(&self) -> Result<BootCommand<'_>, EntryProblem> {
        match (&self.chainloader, self.vboot_line) {
            (None, _) => self.boot_options().map(BootCommand::Vboot),
            (Some(_), Some(vboot_line)) => Err(EntryProblem::VbootAndChainloader {
                vboot_line,
                chainloader_line: self.chainloader_line.unwrap_or(self.line_number),
            }),
            (Some(Ok(target)), None) => Ok(BootCommand::Chainload(target)),
            (Some(Err(e)), None) => Err(EntryProblem::Chainloader {
                line: self.chainloader_line.unwrap_or(self.line_number),
                error: e.clone(),
            }),
        }
    }

    /// The parsed `vboot` line, or what stops this entry from booting an image.
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
        let stmts = parse::statements(&src)?;
        eval::run(&stmts)
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

#[cfg(test)]
mod tests;
