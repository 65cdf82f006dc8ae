//! Building the firmware: stage1 and stage2 with the nightly toolchain and -Zbuild-std, turned
//! into flat binaries in target/vboot/, then the host tools with stable.

use crate::{root, run};
use std::path::Path;
use std::process::Command;

/// Variables the outer (stable) cargo sets that would make the nested nightly build use the
/// wrong compiler or flags.
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

fn nightly_build(crate_dir: &Path) -> Result<(), String> {
    nightly_build_with(crate_dir, &[])
}

fn nightly_build_with(crate_dir: &Path, env: &[(&str, &str)]) -> Result<(), String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"]).current_dir(crate_dir);
    for v in INHERITED {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn flatten(elf: &Path, out: &Path) -> Result<Vec<u8>, String> {
    run(Command::new("objcopy").arg("-O").arg("binary").arg(elf).arg(out))?;
    std::fs::read(out).map_err(|e| format!("{}: {}", out.display(), e))
}

pub fn build_firmware() -> Result<(), String> {
    let root = root();
    let out_dir = root.join("target/vboot");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;

    // The resident engine first: stage2 embeds it (stripped: symbols are no use at boot).
    nightly_build(&root.join("stage2/engine"))?;
    let engine_elf = out_dir.join("engine.elf");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(root.join("stage2/engine/target/engine-target/release/engine"))
        .arg(&engine_elf))?;
    let elf = std::fs::read(&engine_elf).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("engine.bin"), vboot::install::engine_blob(&elf)).map_err(|e| e.to_string())?;
    nightly_build(&root.join("stage2"))?;
    let mut stage2 = flatten(
        &root.join("stage2/target/x86-32-target/release/stage2"),
        &out_dir.join("stage2.bin"),
    )?;
    stage2.resize(stage2.len().div_ceil(512) * 512, 0);
    let header = vboot::install::Stage2Header::parse(&stage2)
        .ok_or("stage2.bin has no VBOOTST2 header; the linker script and entry.s disagree")?;
    if header.sectors as usize != stage2.len() / 512 {
        return Err(format!(
            "stage2 header says {} sectors but the file has {}",
            header.sectors,
            stage2.len() / 512
        ));
    }
    std::fs::write(out_dir.join("stage2.bin"), &stage2).map_err(|e| e.to_string())?;

    nightly_build(&root.join("stage1"))?;
    let stage1 = flatten(
        &root.join("stage1/target/x86-16-target/release/stage1"),
        &out_dir.join("stage1.bin"),
    )?;
    if stage1.len() != 512 || stage1[510..] != [0x55, 0xAA] {
        return Err(format!("stage1.bin is {} bytes or lacks 0x55AA; expected a 512-byte sector", stage1.len()));
    }
    let mut sector: [u8; 512] = stage1.try_into().map_err(|_| "stage1 size")?;
    let mut patch = vboot::install::StagePatch::read(&sector);
    if !patch.is_vboot() {
        return Err("stage1.bin has no patch area at 0x1A8".into());
    }
    // The default a plain `dd` gets: this very stage2, at the default LBA.
    patch.stage2_sectors = u16::try_from(header.sectors).map_err(|_| "stage2 is too big for stage1's u16 count")?;
    patch.write(&mut sector);
    std::fs::write(out_dir.join("stage1.bin"), sector).map_err(|e| e.to_string())?;

    eprintln!(
        "xtask: target/vboot/stage1.bin 512 bytes, target/vboot/stage2.bin {} bytes, target/vboot/engine.bin {} bytes",
        stage2.len(),
        vboot::install::engine_blob_sectors(elf.len() as u32) * 512
    );
    Ok(())
}

pub fn build_all() -> Result<(), String> {
    build_firmware()?;
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "--quiet", "--workspace", "--bins"]))?;
    build_attach_static()
}

/// `vboot-attach` runs in an initramfs with no C library: link it statically (glibc static-pie;
/// there is no musl target here). An explicit --target keeps the flag away from build scripts
/// and proc macros, and from the rest of the workspace. Result: target/vboot/vboot-attach.
pub fn build_attach_static() -> Result<(), String> {
    let triple = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--release", "--quiet", "-p", "vboot-attach", "--target", triple])
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut cmd)?;
    let built = root().join("target").join(triple).join("release/vboot-attach");
    let out = root().join("target/vboot/vboot-attach");
    // Stripped: it goes into every initramfs (2.0 MiB with symbols, 1.7 MiB without).
    run(Command::new("objcopy").arg("--strip-all").arg(&built).arg(&out))
}
