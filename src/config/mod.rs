//! grub.cfg and the `vboot` line.
//!
//! - [`grubcfg`]: the menu (`menuentry`, `submenu`, `set default/timeout/timeout_style`), parsed
//!   by [`Config::parse`] / [`Config::parse_bytes`]. Syntax errors are [`ConfigError`]s; what
//!   vboot leaves out (GRUB commands, `if`/`for`/`function` blocks) becomes [`Notice`]s.
//! - [`options`]: the `vboot` line of an entry as typed [`VbootOptions`]; each entry keeps its
//!   own parse result, so one bad line does not hide the rest of the menu.
//! - [`path`]: GRUB path syntax, `(hd0,msdos5)/dir/file`.
//! - [`rewrite`]: the grub.cfg edit `take_snapshot=` makes (one line changed or one entry added).
//!
//! ```text
//! let config = Config::parse_bytes(&grub_cfg_bytes)?;
//! let path = config.default_path();                  // Some([1]) or Some([2, 0]) ...
//! let entry = config.entry(&path?)?;
//! let options = entry.boot_options()?;               // Err: no vboot line / bad option
//! ```

pub mod grubcfg;
mod lexer;
pub mod options;
pub mod path;
pub mod rewrite;

pub use grubcfg::{
    Config, ConfigError, DefaultChoice, Entry, EntryProblem, EntryScope, MenuItem, Notice, Submenu, TimeoutStyle,
};
pub use options::{BootDevice, OptionError, OptionErrorKind, VbootOptions};
pub use path::{GrubPath, PartitionRef, PartitionScheme, PathError};
