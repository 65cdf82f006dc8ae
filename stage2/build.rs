use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // One artifact, one linker script: the top-level linker.ld lays out stage2.
    println!("cargo:rustc-link-arg-bins=--script={}", dir.join("../linker.ld").display());
    println!("cargo:rerun-if-changed=../linker.ld");
    println!("cargo:rerun-if-changed=src/entry.s");
    println!("cargo:rerun-if-changed=src/stub.s");
    // The resident engine is built first (cargo xtask build) and embedded; xtask passes a
    // stripped copy, a plain build uses the engine crate's own output.
    println!("cargo:rerun-if-env-changed=VBOOT_ENGINE_ELF");
    let engine = std::env::var("VBOOT_ENGINE_ELF")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("engine/target/engine-target/release/engine"));
    if !engine.exists() {
        panic!("{} is missing: build the engine first (cargo xtask build does)", engine.display());
    }
    println!("cargo:rerun-if-changed={}", engine.display());
    println!("cargo:rustc-env=VBOOT_ENGINE_ELF={}", engine.display());
}
