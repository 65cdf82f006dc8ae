//! vboot-attach's command-line definition, shared by the program and `cargo xtask man`, and which
//! drive of the hand-off table it serves.
pub mod cli;
pub mod direct;
pub mod drives;
pub mod pivot;
