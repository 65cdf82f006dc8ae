//! Test harness: build host disks without root or loop mounts, install vboot with the real
//! `vboot-install`, boot QEMU + SeaBIOS with a timeout, read the serial console and type into it.

pub mod disk;
pub mod guests;
pub mod large;
pub mod powercut;
pub mod qemu;
pub mod rig;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// The firmware and tools `cargo xtask build` made. Fails with the command to run if missing.
pub struct Artifacts {
    pub stage1: PathBuf,
    pub stage2: PathBuf,
    pub install: PathBuf,
    pub vdisk: PathBuf,
}

pub fn artifacts() -> Artifacts {
    let root = workspace_root();
    let a = Artifacts {
        stage1: root.join("target/vboot/stage1.bin"),
        stage2: root.join("target/vboot/stage2.bin"),
        install: root.join("target/release/vboot-install"),
        vdisk: root.join("target/release/vdisk"),
    };
    for p in [&a.stage1, &a.stage2, &a.install] {
        assert!(p.exists(), "{} is missing: run `cargo xtask test` (it builds the firmware first)", p.display());
    }
    a
}

/// vboot.lkrn as `cargo xtask build` made it (docs/boot-layout.md), for other loaders to start.
pub fn lkrn() -> PathBuf {
    let p = workspace_root().join("target/vboot/vboot.lkrn");
    assert!(p.exists(), "{} is missing: run `cargo xtask build`", p.display());
    p
}

/// `cargo xtask ARGS` from the workspace root, once per test process per caller (`once`);
/// `what` names the step in the panic message.
fn xtask_once(once: &'static std::sync::OnceLock<Result<(), String>>, args: &[&str], what: &str) {
    once.get_or_init(|| {
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run cargo xtask {}: {}", args.join(" "), e))?;
        if !out.status.success() {
            return Err(format!(
                "cargo xtask {} failed{}:\n{}{}",
                args.join(" "),
                what,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    })
    .clone()
    .unwrap_or_else(|e| panic!("{}", e))
}

/// The Debian package `cargo xtask deb --no-build` makes of what `cargo xtask build` built
/// (docs/packaging.md); built once per test process.
pub fn debian_package() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    xtask_once(&BUILT, &["deb", "--no-build"], " (it needs `cargo xtask build` first)");
    let deb = workspace_root().join(format!("target/debian/vboot_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.exists(), "{} was not made", deb.display());
    deb
}

/// The firmware built with fault injection (stage2/src/fault.rs, stage2/engine/src/fault.rs),
/// for tests/tests/faults.rs: `cargo xtask build-faults` runs once per test process (a few
/// seconds when nothing changed), and its target/vboot-faults/ is returned.
pub fn fault_stage_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    xtask_once(&BUILT, &["build-faults"], "");
    workspace_root().join("target/vboot-faults")
}

/// A system tool run by its path in /usr/sbin, /sbin, /usr/bin or /bin (mkfs.*, fsck.*, debugfs:
/// root's PATH has the sbin directories, a user's may not), else by name.
pub fn sbin(tool: &str) -> Command {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = std::path::Path::new(d).join(tool);
        if p.is_file() {
            return Command::new(p);
        }
    }
    Command::new(tool)
}

/// Fail (never skip) when a tool the test needs is missing, naming its Debian package.
pub fn require_tool(program: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {} >/dev/null 2>&1 || test -x /usr/sbin/{}", program, program))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(found, "{} is missing: install the Debian package {} (cargo xtask deps does it)", program, package);
}

/// A scratch directory removed when dropped (kept when VBOOT_KEEP_TMP is set, for debugging).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = workspace_root().join("target/test-tmp").join(format!(
            "{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    /// `join` as a string, for command-line arguments.
    pub fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("VBOOT_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Run a command; panic with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    assert!(
        out.status.success(),
        "{:?} failed ({}):\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run vboot-install with `args`; returns (success, stdout + stderr).
pub fn vboot_install(args: &[&str]) -> (bool, String) {
    vboot_install_from(&workspace_root().join("target/vboot"), args)
}

/// [`vboot_install`] with the firmware in `stage_dir` (such as [`fault_stage_dir`]).
pub fn vboot_install_from(stage_dir: &Path, args: &[&str]) -> (bool, String) {
    let a = artifacts();
    let out = Command::new(&a.install)
        .args(args)
        .env("VBOOT_STAGE_DIR", stage_dir)
        .output()
        .expect("run vboot-install");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A host disk with vboot installed: MBR, one FAT32 partition at 1 MiB holding
/// `/boot/grub/grub.cfg` and the given images (each split into `pieces` fragments).
pub struct Host {
    pub disk: PathBuf,
    pub part: PathBuf,
    pub part_sectors: u64,
}

/// An image to put on the host partition: its path there, the local file, and how many
/// fragments to split it into (1 = contiguous).
pub struct HostImage<'a> {
    pub path: &'a str,
    pub file: &'a Path,
    pub pieces: usize,
}

pub fn vboot_host(dir: &TempDir, size_mib: u64, grub_cfg: &str, images: &[HostImage]) -> Host {
    vboot_host_from(&workspace_root().join("target/vboot"), dir, size_mib, grub_cfg, images)
}

/// [`vboot_host`] with the firmware in `stage_dir` (such as [`fault_stage_dir`]).
pub fn vboot_host_from(stage_dir: &Path, dir: &TempDir, size_mib: u64, grub_cfg: &str, images: &[HostImage]) -> Host {
    let part = dir.join("host-part.img");
    let part_sectors = size_mib * 2048 - 2048;
    disk::fat_volume(&part, part_sectors, 32, &[disk::FileSpec::new("/boot/grub/grub.cfg", grub_cfg)]);
    for im in images {
        let bytes = std::fs::read(im.file).expect("read image");
        if im.pieces > 1 {
            disk::put_fragmented(&part, im.path, &bytes, im.pieces);
        } else {
            sh(Command::new("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(&part)
                .arg(im.file)
                .arg(format!("::{}", im.path))
                .env("MTOOLS_SKIP_CHECK", "1"));
        }
    }
    let disk = disk::disk_from_partition(dir, &part, size_mib);
    let (ok, out) = vboot_install_from(stage_dir, &["install", disk.to_str().unwrap()]);
    assert!(ok, "vboot-install failed:\n{}", out);
    Host { disk, part, part_sectors }
}

impl Host {
    /// The partition as it is now inside the disk (after a boot wrote to it), as an image file.
    pub fn current_partition(&self, out: &Path) -> PathBuf {
        disk::partition_of(&self.disk, self.part_sectors, out);
        out.to_path_buf()
    }
}

/// Run an oracle tool with `args`; panics with its output (or the package to install) on failure.
pub fn tool(cmd: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({}): install the Debian package {}", cmd, e, package));
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        cmd,
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    tool("qemu-img", "qemu-utils", args)
}

/// Run qemu-io commands (`-c` each) on an image of format `fmt`.
pub fn qemu_io(fmt: &str, img: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    tool("qemu-io", "qemu-utils", &args);
}

/// The vdisk binary `cargo xtask build` made.
/// `vdisk check IMAGE` must pass (`context` goes into the failure message).
pub fn vdisk_check(image: &Path, context: &str) {
    let out = Command::new(vdisk_bin()).arg("check").arg(image).output().unwrap();
    assert!(out.status.success(), "{}vdisk check {}: {}{}", context, image.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `qemu-img check IMAGE` must pass (for the formats qemu reads: not VHD or VDI children).
pub fn qemu_img_check(image: &Path, context: &str) {
    let out = Command::new("qemu-img").arg("check").arg(image).output().unwrap();
    assert!(out.status.success(), "{}qemu-img check {}: {}{}", context, image.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

pub fn vdisk_bin() -> PathBuf {
    let p = workspace_root().join("target/release/vdisk");
    assert!(p.exists(), "{} is missing: run `cargo xtask test` (it builds the tools first)", p.display());
    p
}
