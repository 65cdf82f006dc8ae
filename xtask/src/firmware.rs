//! Building the firmware: stage1 and stage2 with the nightly toolchain and -Zbuild-std, turned
//! into flat binaries in target/vboot/, then the host tools with stable.

use crate::{root, run};
use std::path::Path;
use std::process::Command;

fn nightly_build(crate_dir: &Path, features: &[&str]) -> Result<(), String> {
    nightly_build_with(crate_dir, features, &[])
}

fn nightly_build_with(crate_dir: &Path, features: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"]).current_dir(crate_dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    crate::toolchain::without_outer_cargo(&mut cmd);
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
    build_firmware_into("target/vboot", &[])
}

/// The firmware with the `fault-injection` feature (stage2/src/fault.rs, stage2/engine/src/
/// fault.rs) in target/vboot-faults/, for tests/tests/faults.rs only. Same crates and target
/// directories as the release build (cargo keeps both feature sets' artifacts side by side, and
/// the core crate is shared), so only the engine and stage2 crates themselves are compiled for
/// it: about 20 s on 2 cores after a change to them, nothing when nothing changed.
pub fn build_fault_firmware() -> Result<(), String> {
    build_firmware_into("target/vboot-faults", &["fault-injection"])
}

fn build_firmware_into(out: &str, features: &[&str]) -> Result<(), String> {
    let root = root();
    let out_dir = root.join(out);
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;

    // The resident engine first (stripped: symbols are no use at boot).
    nightly_build(&root.join("stage2/engine"), features)?;
    let engine_elf = out_dir.join("engine.elf");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(root.join("stage2/engine/target/engine-target/release/engine"))
        .arg(&engine_elf))?;
    let elf = std::fs::read(&engine_elf).map_err(|e| e.to_string())?;
    check_variant(&elf, "engine", features)?;
    std::fs::write(out_dir.join("engine.bin"), vboot::install::engine_blob(&elf)).map_err(|e| e.to_string())?;
    nightly_build(&root.join("stage2"), features)?;
    let mut stage2 = flatten(
        &root.join("stage2/target/x86-32-target/release/stage2"),
        &out_dir.join("stage2.bin"),
    )?;
    check_variant(&stage2, "stage2", features)?;
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

    nightly_build(&root.join("stage1"), &[])?;
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
    // The default a plain `dd` gets: this very stage2, at the default LBA; stage1 loads its low
    // part, which loads the rest.
    patch.stage2_sectors = u16::try_from(header.load_sectors).map_err(|_| "stage2's low part is too big for stage1's u16 count")?;
    patch.write(&mut sector);
    std::fs::write(out_dir.join("stage1.bin"), sector).map_err(|e| e.to_string())?;

    let engine_bytes = vboot::install::engine_blob_sectors(elf.len() as u32) as u64 * 512;
    // stage2 and the engine share the gap before the first partition (docs/boot-layout.md):
    // partitioning tools leave 1 MiB, of which the record and the saved sector 0 take 3 sectors.
    const USUAL_GAP_BYTES: u64 = (2048 - 3) * 512;
    let used = stage2.len() as u64 + engine_bytes;
    eprintln!(
        "xtask: {out}/stage1.bin 512 bytes, {out}/stage2.bin {} bytes (low part {} of {} bytes), {out}/engine.bin {} bytes; \
         headroom in the usual 1 MiB gap: {} KiB",
        stage2.len(),
        header.load_sectors * 512,
        vboot::install::STAGE2_LOW_MAX_SECTORS * 512,
        engine_bytes,
        USUAL_GAP_BYTES.saturating_sub(used) / 1024
    );
    if used > USUAL_GAP_BYTES {
        return Err(format!(
            "stage2 ({} bytes) and the engine ({} bytes) no longer fit the usual 1 MiB gap before the first partition",
            stage2.len(),
            engine_bytes
        ));
    }
    build_lkrn(&root, &out_dir, &stage2, out)
}

/// vboot.lkrn, for other boot loaders to start (docs/boot-layout.md, "vboot.lkrn"): the setup
/// code (stage2/lkrn/setup.s, assembled at origin 0 by GNU as), then stage2.bin and engine.bin
/// as they are, with the Linux setup header filled in by the core (src/lkrn.rs).
fn build_lkrn(root: &Path, out_dir: &Path, stage2: &[u8], out: &str) -> Result<(), String> {
    let obj = out_dir.join("lkrn-setup.o");
    let bin = out_dir.join("lkrn-setup.bin");
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(root.join("stage2/lkrn/setup.s")))?;
    run(Command::new("ld").args(["-m", "elf_i386", "-Ttext", "0", "--oformat", "binary", "-o"]).arg(&bin).arg(&obj))?;
    let setup = std::fs::read(&bin).map_err(|e| format!("{}: {}", bin.display(), e))?;
    let engine = std::fs::read(out_dir.join("engine.bin")).map_err(|e| e.to_string())?;
    let (lkrn, layout) = vboot::lkrn::build(&setup, stage2, &engine)?;
    std::fs::write(out_dir.join("vboot.lkrn"), &lkrn).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: {out}/vboot.lkrn {} bytes (real-mode part {} bytes: setup code {} and stage2's low part; \
         at 0x100000: stage2's high part {} and the engine {})",
        lkrn.len(),
        layout.setup_bytes,
        setup.len(),
        layout.high_bytes,
        layout.engine_bytes
    );
    Ok(())
}

/// Both builds share the crates' target directories and so the file cargo leaves the binary in:
/// make sure the one just flattened is the variant asked for (the fault-injection code's panic
/// messages are only in that one), not the other build's, made meanwhile.
fn check_variant(binary: &[u8], what: &str, features: &[&str]) -> Result<(), String> {
    let faults = binary.windows(14).any(|w| w == b"injected fault");
    if faults != features.contains(&"fault-injection") {
        return Err(format!(
            "the {} binary just built {} fault injection: another build of the other variant ran at the same time; run this one again",
            what,
            if faults { "has" } else { "lacks" }
        ));
    }
    Ok(())
}

pub fn build_all() -> Result<(), String> {
    build_firmware()?;
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "--quiet", "--workspace", "--bins"]))?;
    build_attach_static()?;
    crate::man::generate()
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
