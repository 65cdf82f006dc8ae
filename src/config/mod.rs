//! grub.cfg and the `vboot` line.

pub mod options;
pub mod path;

pub use options::{BootDevice, OptionError, OptionErrorKind, VbootOptions};
pub use path::{GrubPath, PartitionRef, PartitionScheme, PathError};
