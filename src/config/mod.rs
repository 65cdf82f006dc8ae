//! grub.cfg and the `vboot` line.
//!
//! - [`grubcfg`]: the menu (`menuentry`, `submenu`, `set default/timeout/timeout_style`).
//! - [`options`]: the `vboot` line of an entry as typed [`VbootOptions`].
//! - [`path`]: GRUB path syntax, `(hd0,msdos5)/dir/file`.

pub mod grubcfg;
mod lexer;
pub mod options;
pub mod path;

pub use grubcfg::{
    Config, ConfigError, DefaultChoice, Entry, EntryProblem, MenuItem, Notice, Submenu, TimeoutStyle,
};
pub use options::{BootDevice, OptionError, OptionErrorKind, VbootOptions};
pub use path::{GrubPath, PartitionRef, PartitionScheme, PathError};
