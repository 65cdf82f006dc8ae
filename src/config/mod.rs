//! grub.cfg and the `vboot` line.
//!
//! - [`grubcfg`]: the menu (`menuentry`, `submenu`, `set default/timeout/timeout_style`), parsed
//!   by [`Config::parse`] / [`Config::parse_bytes`]. Syntax errors are [`ConfigError`]s; what
//!   vboot leaves out (GRUB commands, `if`/`for`/`function` blocks) becomes [`Notice`]s.
//! - [`options`]: the `vboot` line of an entry as typed [`VbootOptions`]; each entry keeps its
//!   own parse result, so one bad line does not hide the rest of the menu.
//! - [`chainload`]: an entry's `chainloader` line (`+1` with `root`, `(hdN,M)+1`, `(hdN)+1`,
//!   `--original-mbr`) as a typed [`ChainTarget`]; [`Entry::boot_command`] gives an entry's one
//!   way to boot, its `vboot` line or its `chainloader` line.
//! - [`path`]: GRUB path syntax, `(hd0,msdos5)/dir/file`.
//! - [`rewrite`]: the grub.cfg edit `take_snapshot=` makes (one line changed or one entry added).
//!
//! ```text
//! let config = Config::parse_bytes(&grub_cfg_bytes)?;
//! let path = config.default_path();                  // Some([1]) or Some([2, 0]) ...
//! let entry = config.entry(&path?)?;
//! let command = entry.boot_command()?;               // Err: no vboot line / bad option
//! ```

pub mod chainload;
pub mod generate;
pub mod grubcfg;
mod lexer;
pub mod options;
pub mod path;
pub mod rewrite;

pub use chainload::{ChainTarget, ChainloadError, ChainloadErrorKind};
pub use grubcfg::{
    BootCommand, Config, ConfigError, DefaultChoice, Entry, EntryProblem, MenuItem, Notice, Submenu, TimeoutStyle,
};
pub use options::{BootDevice, OptionError, OptionErrorKind, VbootOptions};
pub use path::{GrubDevice, GrubPath, PartitionRef, PartitionScheme, PathError};

/// Test helper for the line parsers: `result` must be a refusal whose message names the word at
/// fault (`word_of` gives it, `word` is expected), in backquotes, and says `needle`.
#[cfg(test)]
pub(crate) fn refusal<T: core::fmt::Debug, E: core::fmt::Display>(
    line: &str,
    result: Result<T, E>,
    word_of: impl Fn(&E) -> &str,
    word: &str,
    needle: &str,
) -> E {
    let e = match result {
        Ok(t) => panic!("{:?} accepted: {:?}", line, t),
        Err(e) => e,
    };
    let msg = alloc::string::ToString::to_string(&e);
    assert_eq!(word_of(&e), word, "{}", msg);
    assert!(msg.contains(&alloc::format!("`{}`", word)), "{:?} does not name `{}`", msg, word);
    assert!(msg.contains(needle), "{:?} lacks {:?}", msg, needle);
    e
}
