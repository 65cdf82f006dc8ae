//! Nested cargo runs under the nightly toolchain (the firmware, cargo-fuzz) from inside the
//! stable cargo that runs xtask.

use std::process::Command;

/// Variables the outer (stable) cargo sets that would make a nested nightly cargo use the wrong
/// compiler, flags or target directory.
const INHERITED: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO",
    "CARGO_MANIFEST_DIR",
];

/// Drop what the outer cargo set from `cmd`'s environment.
pub fn without_outer_cargo(cmd: &mut Command) -> &mut Command {
    for v in INHERITED {
        cmd.env_remove(v);
    }
    cmd
}
