//! vboot-attach's command-line definition, shared by the program and `cargo xtask man`.
pub mod cli;
pub mod drives;
