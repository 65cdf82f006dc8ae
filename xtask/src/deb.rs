//! `cargo xtask deb`: the Debian package `target/debian/vboot_<version>_amd64.deb`, built with
//! `dpkg-deb` from a staged tree (docs/packaging.md says why not cargo-deb). The packaging
//! files (control template, changelog, copyright, lintian overrides) are in `tools/debian/`.
//!
//! The package has no maintainer scripts: installing it writes nothing to any disk's boot
//! sectors and rebuilds no initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run};

/// (file under the workspace, where it goes in the package, mode)
type Placement = (PathBuf, String, u32);

pub fn command(args: &[String]) -> Result<(), String> {
    let mut build = true;
    for a in args {
        match a.as_str() {
            // For a package of what `cargo xtask build` already made.
            "--no-build" => build = false,
            other => return Err(format!("deb: unknown option {} (only --no-build)", other)),
        }
    }
    if build {
        crate::firmware::build_all()?;
    }
    let deb = build_package()?;
    lint(&deb)?;
    println!("{}", deb.display());
    Ok(())
}

/// The workspace version (the core crate's), which is the package's version.
pub fn version() -> Result<String, String> {
    let manifest = root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {}", manifest.display(), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .map(str::to_string)
        .ok_or_else(|| format!("{}: no version line in [package]", manifest.display()))
}

pub fn deb_path(version: &str) -> PathBuf {
    root().join("target/debian").join(format!("vboot_{}_amd64.deb", version))
}

fn build_package() -> Result<PathBuf, String> {
    let version = version()?;
    let packaging = root().join("tools/debian");
    let changelog = read(&packaging.join("changelog"))?;
    let expected = format!("vboot ({}) ", version);
    if !changelog.starts_with(&expected) {
        return Err(format!(
            "tools/debian/changelog must start with an entry for version {} (the workspace version in Cargo.toml): add one",
            version
        ));
    }
    let out_dir = root().join("target/debian");
    let stage = out_dir.join(format!("vboot_{}_amd64", version));
    let _ = std::fs::remove_dir_all(&stage);
    let t = root().join("target");
    let attach = root().join("tools/attach");
    let mut files: Vec<Placement> = vec![
        (t.join("release/vboot-install"), "usr/bin/vboot-install".into(), 0o755),
        (t.join("release/vdisk"), "usr/bin/vdisk".into(), 0o755),
        // The static, stripped build (target/vboot), not target/release's dynamic one.
        (t.join("vboot/vboot-attach"), "usr/bin/vboot-attach".into(), 0o755),
        (t.join("vboot/stage1.bin"), "usr/lib/vboot/stage1.bin".into(), 0o644),
        (t.join("vboot/stage2.bin"), "usr/lib/vboot/stage2.bin".into(), 0o644),
        (t.join("vboot/engine.bin"), "usr/lib/vboot/engine.bin".into(), 0o644),
        // For other boot loaders to start (docs/usage.md): copied to /boot by the user.
        (t.join("vboot/vboot.lkrn"), "usr/lib/vboot/vboot.lkrn".into(), 0o644),
        (attach.join("initramfs-tools/hooks/vboot-attach"), "usr/share/initramfs-tools/hooks/vboot-attach".into(), 0o755),
        (
            attach.join("initramfs-tools/scripts/local-top/vboot-attach"),
            "usr/share/initramfs-tools/scripts/local-top/vboot-attach".into(),
            0o755,
        ),
        (attach.join("dracut/90vboot-attach/module-setup.sh"), "usr/lib/dracut/modules.d/90vboot-attach/module-setup.sh".into(), 0o755),
        (attach.join("dracut/90vboot-attach/vboot-attach.sh"), "usr/lib/dracut/modules.d/90vboot-attach/vboot-attach.sh".into(), 0o755),
        (
            attach.join("dracut/90vboot-attach/parse-vboot-attach.sh"),
            "usr/lib/dracut/modules.d/90vboot-attach/parse-vboot-attach.sh".into(),
            0o755,
        ),
        (packaging.join("copyright"), "usr/share/doc/vboot/copyright".into(), 0o644),
        (packaging.join("lintian-overrides"), "usr/share/lintian/overrides/vboot".into(), 0o644),
    ];
    for (shell, dir_name) in crate::man::SHELLS {
        let installed_dir = match dir_name {
            "bash" => "usr/share/bash-completion/completions",
            "zsh" => "usr/share/zsh/vendor-completions",
            _ => "usr/share/fish/vendor_completions.d",
        };
        for tool in ["vboot-install", "vdisk", "vboot-attach"] {
            let name = crate::man::completion_file_name(shell, tool);
            files.push((crate::man::completions_dir().join(dir_name).join(&name), format!("{}/{}", installed_dir, name), 0o644));
        }
    }
    for (from, to, mode) in &files {
        place(from, &stage.join(to), *mode)?;
    }
    // Compressed as Debian policy wants: man pages, the changelog (a native package's is
    // changelog.gz) and the documentation.
    let man_dir = crate::man::man_dir();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man_dir)
        .map_err(|e| format!("{}: {} (run `cargo xtask man`)", man_dir.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for page in pages {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        place_gzipped(&page, &stage.join("usr/share/man/man1").join(format!("{}.gz", name)))?;
    }
    let doc = stage.join("usr/share/doc/vboot");
    place_gzipped(&packaging.join("changelog"), &doc.join("changelog.gz"))?;
    place_gzipped(&root().join("README.md"), &doc.join("README.md.gz"))?;
    for name in ["vboot-attach.md", "vdisk.md", "packaging.md", "handoff-table.md"] {
        place_gzipped(&root().join("docs").join(name), &doc.join(name).with_extension("md.gz"))?;
    }
    // Like dh_strip: cargo's builds keep symbols and .comment; the package does not.
    for tool in ["vboot-install", "vdisk", "vboot-attach"] {
        run(Command::new("strip").args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"]).arg(stage.join("usr/bin").join(tool)))?;
    }
    let depends = shared_library_depends(&stage)?;
    let control = read(&packaging.join("control"))?
        .replace("@VERSION@", &version)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string())
        .replace("@DEPENDS@", &depends);
    // Of the installed files only: computed before DEBIAN/ exists.
    let sums = md5sums(&stage)?;
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian).map_err(|e| format!("{}: {}", debian.display(), e))?;
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("md5sums"), &sums, 0o644)?;
    let deb = deb_path(&version);
    let _ = std::fs::remove_file(&deb);
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

/// lintian with the package's overrides; any error or warning fails the build.
fn lint(deb: &Path) -> Result<(), String> {
    if Command::new("lintian").arg("--version").output().is_err() {
        return Err("lintian is missing: install the Debian package lintian (cargo xtask deps does it)".into());
    }
    run(Command::new("lintian").args(["--fail-on", "error,warning", "--info", "--display-info"]).arg(deb))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {}", path.display(), e))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {}", path.display(), e))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {}", path.display(), e))
}

fn make_parent(to: &Path) -> Result<(), String> {
    let dir = to.parent().expect("staged files are inside the stage");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {}", dir.display(), e))
}

fn place(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    make_parent(to)?;
    std::fs::copy(from, to).map_err(|e| format!("{}: {} (run `cargo xtask build`)", from.display(), e))?;
    set_mode(to, mode)
}

fn place_gzipped(from: &Path, to: &Path) -> Result<(), String> {
    make_parent(to)?;
    // -n: no name or time stamp inside, so the package is reproducible.
    let out = Command::new("gzip").args(["-9", "-n", "-c"]).arg(from).output().map_err(|e| format!("cannot run gzip: {}", e))?;
    if !out.status.success() {
        return Err(format!("gzip {}: {}", from.display(), String::from_utf8_lossy(&out.stderr)));
    }
    std::fs::write(to, out.stdout).map_err(|e| format!("{}: {}", to.display(), e))?;
    set_mode(to, 0o644)
}

/// `Depends:` for the dynamically linked tools, from dpkg-shlibdeps (as debhelper's
/// ${shlibs:Depends}); vboot-attach is static and needs nothing.
fn shared_library_depends(stage: &Path) -> Result<String, String> {
    let work = root().join("target/debian/shlibdeps");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("debian")).map_err(|e| format!("{}: {}", work.display(), e))?;
    // dpkg-shlibdeps reads the package list of a source tree's debian/control.
    std::fs::write(work.join("debian/control"), "Source: vboot\n\nPackage: vboot\nArchitecture: amd64\n").map_err(|e| e.to_string())?;
    let out = Command::new("dpkg-shlibdeps")
        .current_dir(&work)
        .arg("-O")
        .arg(format!("-e{}", stage.join("usr/bin/vboot-install").display()))
        .arg(format!("-e{}", stage.join("usr/bin/vdisk").display()))
        .output()
        .map_err(|e| format!("cannot run dpkg-shlibdeps (Debian dpkg-dev): {}", e))?;
    if !out.status.success() {
        return Err(format!("dpkg-shlibdeps failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .ok_or_else(|| format!("dpkg-shlibdeps said no shlibs:Depends: {}", text))
}

fn staged_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| format!("{}: {}", dir.display(), e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            staged_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Installed-Size: KiB, each file rounded up (as dpkg-gencontrol counts).
fn installed_size_kib(stage: &Path) -> Result<u64, String> {
    let mut files = Vec::new();
    staged_files(stage, &mut files)?;
    let mut kib = 0;
    for f in files {
        kib += std::fs::metadata(&f).map_err(|e| e.to_string())?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// DEBIAN/md5sums: `md5sum` of every file, paths relative to the root.
fn md5sums(stage: &Path) -> Result<String, String> {
    let mut files = Vec::new();
    staged_files(stage, &mut files)?;
    let relative: Vec<String> = files.iter().map(|f| f.strip_prefix(stage).unwrap().to_string_lossy().into_owned()).collect();
    let out = Command::new("md5sum").current_dir(stage).args(&relative).output().map_err(|e| format!("cannot run md5sum: {}", e))?;
    if !out.status.success() {
        return Err(format!("md5sum: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
