fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    // One artifact, one linker script: the top-level linker.ld lays out stage2.
    println!("cargo:rustc-link-arg-bins=--script={}/../linker.ld", dir);
    println!("cargo:rerun-if-changed=../linker.ld");
    println!("cargo:rerun-if-changed=src/entry.s");
}
