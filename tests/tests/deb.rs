//! The Debian package of `cargo xtask deb` (docs/packaging.md), checked with Debian's own tools:
//! `dpkg-deb -c`/`-I` for its contents and control data, lintian, and `dpkg --root` installing
//! it into a scratch root, whose tools then run.

use std::path::Path;
use std::process::Command;
use vboot_tests::disk::{self, FileSpec};
use vboot_tests::{require_tool, sh, TempDir};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const TOOLS: [&str; 3] = ["vboot-install", "vdisk", "vboot-attach"];

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    sh(Command::new("dpkg-deb").args(args).arg(deb))
}

#[test]
fn debian_package_contents_lintian_and_installed_tools() {
    require_tool("dpkg-deb", "dpkg");
    require_tool("lintian", "lintian");
    let deb = vboot_tests::debian_package();

    // Contents: every file where docs/packaging.md says, owned by root, with its mode.
    let listing = dpkg_deb(&["-c"], &deb);
    let entry = |path: &str| listing.lines().find(|l| l.ends_with(&format!(" ./{}", path))).unwrap_or_else(|| panic!("{} is not in the package:\n{}", path, listing));
    let expect_mode = |path: &str, mode: &str| {
        let line = entry(path);
        assert!(line.starts_with(mode) && line.contains(" root/root "), "{}: {}", path, line);
    };
    for tool in TOOLS {
        expect_mode(&format!("usr/bin/{}", tool), "-rwxr-xr-x");
        expect_mode(&format!("usr/share/man/man1/{}.1.gz", tool), "-rw-r--r--");
        expect_mode(&format!("usr/share/bash-completion/completions/{}", tool), "-rw-r--r--");
        expect_mode(&format!("usr/share/zsh/vendor-completions/_{}", tool), "-rw-r--r--");
        expect_mode(&format!("usr/share/fish/vendor_completions.d/{}.fish", tool), "-rw-r--r--");
    }
    for blob in ["stage1.bin", "stage2.bin", "engine.bin", "vboot.lkrn"] {
        expect_mode(&format!("usr/lib/vboot/{}", blob), "-rw-r--r--");
    }
    for script in [
        "usr/share/initramfs-tools/hooks/vboot-attach",
        "usr/share/initramfs-tools/scripts/local-top/vboot-attach",
        "usr/lib/dracut/modules.d/90vboot-attach/module-setup.sh",
        "usr/lib/dracut/modules.d/90vboot-attach/vboot-attach.sh",
        "usr/lib/dracut/modules.d/90vboot-attach/parse-vboot-attach.sh",
    ] {
        expect_mode(script, "-rwxr-xr-x");
    }
    for doc in ["copyright", "changelog.gz", "README.md.gz", "vdisk.md.gz", "vboot-attach.md.gz"] {
        expect_mode(&format!("usr/share/doc/vboot/{}", doc), "-rw-r--r--");
    }
    expect_mode("usr/share/man/man1/vdisk-create.1.gz", "-rw-r--r--");
    expect_mode("usr/share/lintian/overrides/vboot", "-rw-r--r--");
    assert!(!listing.contains(" ./etc/"), "no configuration files:\n{}", listing);

    // Control data: no maintainer scripts, so installing runs nothing.
    let info = dpkg_deb(&["-I"], &deb);
    for field in ["Package: vboot", &format!("Version: {}", VERSION), "Architecture: amd64", "Depends: libc6", "Installed-Size: "] {
        assert!(info.contains(field), "{} missing:\n{}", field, info);
    }
    for script in ["preinst", "postinst", "prerm", "postrm", "triggers", "config"] {
        assert!(!info.lines().any(|l| l.split_whitespace().last() == Some(script)), "the package has a {} script:\n{}", script, info);
    }

    // lintian: no error or warning (the overrides in tools/debian/lintian-overrides say why).
    let lint = Command::new("lintian").args(["--fail-on", "error,warning"]).arg(&deb).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));
    assert!(lint.status.success(), "lintian:\n{}", said);
    assert!(!said.lines().any(|l| l.starts_with("E: ") || l.starts_with("W: ")), "lintian:\n{}", said);

    // dpkg installs it into a scratch root with its own database (--force-depends: libc6 is not
    // in that database). A maintainer script would have to run there; there is none.
    let dir = TempDir::new("deb");
    let root = dir.path.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    sh(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-not-root", "--force-depends", "--force-script-chrootless", "--log=/dev/null", "-i"])
        .arg(&deb));
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: vboot") && status.contains("Status: install ok installed"), "{}", status);
    let scripts: Vec<_> = std::fs::read_dir(root.join("var/lib/dpkg/info"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with("inst") || n.ends_with("rm"))
        .collect();
    assert!(scripts.is_empty(), "maintainer scripts installed: {:?}", scripts);

    // Each installed tool: --help, --version, a wrong option (exit 2, clap's message).
    for tool in TOOLS {
        let bin = root.join("usr/bin").join(tool);
        let help = Command::new(&bin).arg("--help").output().unwrap();
        assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains(&format!("Usage: {}", tool)), "{} --help", tool);
        let version = Command::new(&bin).arg("--version").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("{} {}", tool, VERSION));
        let wrong = Command::new(&bin).arg("--no-such-option").output().unwrap();
        let stderr = String::from_utf8_lossy(&wrong.stderr);
        assert_eq!(wrong.status.code(), Some(2), "{}: {}", tool, stderr);
        assert!(stderr.contains("unexpected argument '--no-such-option'"), "{}: {}", tool, stderr);
    }
    let attach = sh(Command::new("file").arg(root.join("usr/bin/vboot-attach")));
    assert!(attach.contains("static"), "vboot-attach must be static for the initramfs: {}", attach);

    // The installed vboot-install with the packaged firmware: a dry run on a disk image.
    let disk = disk::mbr_fat32_disk(&dir, 32, &[FileSpec::new("/grub.cfg", "")]);
    let installed = root.join("usr/bin/vboot-install");
    let dry = Command::new(&installed)
        .env_remove("VBOOT_STAGE_DIR")
        .args(["install", "--dry-run", "--stage-dir"])
        .arg(root.join("usr/lib/vboot"))
        .arg(&disk)
        .output()
        .unwrap();
    assert!(dry.status.success() && String::from_utf8_lossy(&dry.stdout).contains("would write"), "{}", String::from_utf8_lossy(&dry.stderr));
    // Without --stage-dir, away from a source tree, it looks in /usr/lib/vboot.
    let default = Command::new(&installed).env_remove("VBOOT_STAGE_DIR").args(["install", "--dry-run"]).arg(&disk).output().unwrap();
    if Path::new("/usr/lib/vboot/stage1.bin").exists() {
        assert!(default.status.success(), "{}", String::from_utf8_lossy(&default.stderr));
    } else {
        assert!(String::from_utf8_lossy(&default.stderr).contains("/usr/lib/vboot/stage1.bin"), "{}", String::from_utf8_lossy(&default.stderr));
    }
}
