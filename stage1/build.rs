fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rustc-link-arg-bins=--script={}/stage1.ld", dir);
    println!("cargo:rerun-if-changed=stage1.ld");
    println!("cargo:rerun-if-changed=src/stage1.s");
}
