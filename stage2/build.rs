use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // One artifact, one linker script: the top-level linker.ld lays out stage2.
    println!("cargo:rustc-link-arg-bins=--script={}", dir.join("../linker.ld").display());
    println!("cargo:rerun-if-changed=../linker.ld");
    println!("cargo:rerun-if-changed=src/regs.s");
    println!("cargo:rerun-if-changed=src/entry.s");
    println!("cargo:rerun-if-changed=src/stub.s");
}
