//! Install what the build and the tests need on a fresh machine: the nightly's rust-src, the
//! stable toolchain's i686 standard library (the core's unit tests also run as 32-bit code, as
//! the firmware is) and the Debian packages. As root it installs them; otherwise it says which
//! ones to install.

use crate::run;
use std::path::Path;
use std::process::Command;

/// (a file that shows the package is there, the Debian package providing it)
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-i386", "qemu-system-x86"),
    ("/usr/share/seabios/bios.bin", "seabios"),
    ("/usr/bin/qemu-img", "qemu-utils"),
    ("/usr/sbin/sfdisk", "fdisk"),
    ("/usr/sbin/sgdisk", "gdisk"),
    ("/usr/sbin/mkfs.fat", "dosfstools"),
    ("/usr/bin/mcopy", "mtools"),
    ("/usr/bin/objcopy", "binutils"),
    ("/usr/bin/as", "binutils"),
    // Links the i686 unit-test binary (32-bit crt files and libgcc); see I686_TARGET.
    ("/usr/lib32/crt1.o", "gcc-multilib"),
    ("/usr/sbin/fsck.fat", "dosfstools"),
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    ("/usr/bin/grub-mkimage", "grub-common"),
    ("/usr/bin/syslinux", "syslinux"),
    ("/usr/bin/xorriso", "xorriso"),
    ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
    ("/usr/bin/grub-mkrescue", "grub-common"),
    ("/usr/bin/mformat", "mtools"),
    ("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common"),
    // vboot.lkrn started over the network (tests/tests/lkrn.rs): PXELINUX, and the iPXE ROM of
    // QEMU's e1000 that SeaBIOS boots it with.
    ("/usr/lib/PXELINUX/pxelinux.0", "pxelinux"),
    ("/usr/lib/ipxe/qemu/pxe-e1000.rom", "ipxe-qemu"),
    ("/bin/busybox", "busybox-static"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
    ("/usr/sbin/mkfs.exfat", "exfatprogs"),
    ("/usr/sbin/fsck.exfat", "exfatprogs"),
    ("/usr/sbin/mkntfs", "ntfs-3g"),
    ("/sbin/mount.exfat-fuse", "exfat-fuse"),
    ("/usr/bin/fusermount3", "fuse3"),
    ("/usr/bin/sha256sum", "coreutils"),
    ("/usr/bin/setfattr", "attr"),
    ("/usr/bin/vhdiinfo", "libvhdi-utils"),
    ("/usr/lib/python3/dist-packages/pyvhdi.cpython-311-x86_64-linux-gnu.so", "python3-libvhdi"),
    ("/usr/bin/python3", "python3"),
    ("/usr/lib/python3/dist-packages/VMDKstream.py", "python3-vmdkstream"),
    // libFuzzer (built from C++ by libfuzzer-sys) for the fuzz targets.
    ("/usr/bin/g++", "g++"),
    // Renders the generated man pages (tests/tests/manpages.rs).
    ("/usr/bin/man", "man-db"),
    // `cargo xtask deb` and tests/tests/deb.rs.
    ("/usr/bin/dpkg-deb", "dpkg"),
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
    ("/usr/bin/lintian", "lintian"),
    ("/usr/bin/file", "file"),
    // `cargo xtask demo-debian` only.
    ("/usr/sbin/debootstrap", "debootstrap"),
];

/// The core library's unit tests run for this target too (`cargo xtask test`): the firmware is
/// 32-bit, so `usize` overflows only show there.
pub const I686_TARGET: &str = "i686-unknown-linux-gnu";

pub fn ensure_all() -> Result<(), String> {
    ensure_rust_src()?;
    ensure_i686_target()?;
    ensure_debian_packages()
}

fn ensure_rust_src() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {}", e))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: adding the rust-src component to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The i686 standard library for the host toolchain (the one `rust-toolchain.toml` selects in
/// the workspace), downloaded by rustup.
fn ensure_i686_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .current_dir(crate::root())
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {}", e))?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == I686_TARGET) {
        return Ok(());
    }
    eprintln!("xtask: adding the {} target to the host toolchain", I686_TARGET);
    run(Command::new("rustup").current_dir(crate::root()).args(["target", "add", I686_TARGET]))
}

/// Debian's qemu-system-x86 conflicts with a newer qemu-utils that a machine may come with (a
/// backport with no repository behind it): installed alone, apt removes that qemu-utils and
/// qemu-img is gone. So the two are installed in one transaction (see
/// `install_missing_debian_packages`), which replaces the newer qemu-img by the matching one;
/// a second look after installing catches anything else that went missing.
fn ensure_debian_packages() -> Result<(), String> {
    for _pass in 0..2 {
        install_missing_debian_packages()?;
    }
    let still: Vec<&str> = DEBIAN_PACKAGES.iter().filter(|(path, _)| !Path::new(path).exists()).map(|(_, pkg)| *pkg).collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("Debian packages still missing after installing them: {}", still.join(" ")))
    }
}

fn install_missing_debian_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.contains(&"qemu-system-x86") && !missing.contains(&"qemu-utils") {
        eprintln!("xtask: qemu-system-x86 and qemu-utils go in together (Debian's matching pair); a newer qemu-img this machine has is replaced by it");
        missing.push("qemu-utils");
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if !is_root {
        return Err(format!(
            "missing Debian packages: {}; install them with: sudo apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `cargo fuzz` (crates.io) for `cargo xtask fuzz` and the fuzz smoke step of `cargo xtask test`.
/// It takes about 4 minutes to build on this kind of machine, once; the fuzz targets themselves
/// build with the nightly toolchain the firmware already needs.
pub fn ensure_cargo_fuzz() -> Result<(), String> {
    let mut probe = Command::new("rustup");
    probe.args(["run", "nightly", "cargo", "fuzz", "--version"]);
    crate::toolchain::without_outer_cargo(&mut probe);
    let have = probe
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz from crates.io (a few minutes, once)");
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "--locked", "cargo-fuzz"]);
    crate::toolchain::without_outer_cargo(&mut cmd);
    run(&mut cmd)
}

