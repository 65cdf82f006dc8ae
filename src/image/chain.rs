//! Finding the parents of a differencing image, from the leaf upward.
//!
//! Paths are strings with `/` or `\` separators in the namespace of a [`ParentLocator`]: the host
//! file system for the tools, the boot partition's file system for stage2. For every parent the
//! candidates are tried in this order (docs/image-formats.md, "Chains: finding a parent"; issue 5):
//! 1. each stored path that is relative, joined to the child's directory;
//! 2. each stored absolute path, with a drive letter (`C:`) or `\\?\` prefix dropped so that
//!    it names a path on the host partition;
//! 3. the base name of each stored path in `parent_dir` (if given);
//! 4. the base name of each stored path next to the child.
//! VDI stores no path: its parent is the VDI in `parent_dir` or the child's directory whose
//! uuidCreate equals the child's uuidLinkage.
//!
//! A candidate is accepted only when it opens and its identity matches (VHD parent Unique Id,
//! VMDK parentCID, VDI UUID). A VHD timestamp difference and a VDI modification UUID difference
//! are warnings. Reaching an image already in the chain is a cycle error. There is no depth
//! limit: every step adds a distinct file, so the walk ends.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{hex16, open_layer, Format, ImageError, ImageFile, Layer, ParentLink};

/// Opens files for the chain walker.
pub trait ParentLocator {
    /// Open an existing file read-only. `None` when it does not exist or cannot be opened.
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>>;
    /// Open the leaf (writable when the caller wants to write). Defaults to [`Self::open`].
    fn open_leaf(&mut self, path: &str) -> Result<Box<dyn ImageFile>, ImageError> {
        self.open(path).ok_or_else(|| ImageError::Io { image: path.to_string(), offset_bytes: 0, detail: "cannot open the file".into() })
    }
    /// Names (not paths) of the entries of directory `dir`.
    fn list_dir(&mut self, dir: &str) -> Vec<String>;
    /// A name that is equal for two paths of the same file (cycle detection).
    fn canonical(&mut self, path: &str) -> String {
        normalize(path).to_ascii_lowercase()
    }
}

#[derive(Clone, Debug, Default)]
pub struct ChainOptions {
    /// Extra directory to look for parents in (`parent_dir=`).
    pub parent_dir: Option<String>,
    /// Treat a VMDK parentCID mismatch as a warning instead of an error.
    pub lenient_cid: bool,
}

/// Collapse separators, `.` and `..`; drop a `\\?\` prefix. Keeps a leading `/` and a drive
/// letter.
pub fn normalize(path: &str) -> String {
    let p = path.replace('\\', "/");
    let p = p.strip_prefix("//?/").map(|s| s.to_string()).unwrap_or(p);
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().map_or(false, |l| *l != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if absolute {
        alloc::format!("/{}", joined)
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// Directory part of a path (`.` when there is none).
pub fn dirname(path: &str) -> String {
    let p = path.replace('\\', "/");
    match p.rfind('/') {
        Some(0) => "/".into(),
        Some(i) => p[..i].to_string(),
        None => ".".into(),
    }
}

pub fn basename(path: &str) -> &str {
    path.rsplit(|c| c == '/' || c == '\\').next().unwrap_or(path)
}

fn has_drive_letter(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// For locators that know their files by path instead of walking a filesystem (the engine's and
/// vboot-attach's, over the files stage2 handed over): the entry of `files` whose path (`path_of`)
/// is `path`, compared normalized and without case, as on FAT.
pub fn find_listed<'a, T>(files: &'a [T], path: &str, path_of: fn(&T) -> &str) -> Option<&'a T> {
    let want = normalize(path).to_ascii_lowercase();
    files.iter().find(|f| normalize(path_of(f)).to_ascii_lowercase() == want)
}

/// The names of the entries of `files` that lie directly in directory `dir` (see [`find_listed`]).
pub fn list_listed<T>(files: &[T], dir: &str, path_of: fn(&T) -> &str) -> Vec<String> {
    let dir = normalize(dir).to_ascii_lowercase();
    files
        .iter()
        .filter_map(|f| {
            let n = normalize(path_of(f));
            let (d, name) = n.rsplit_once('/')?;
            let d = if d.is_empty() { String::from("/") } else { d.to_ascii_lowercase() };
            (d == dir).then(|| String::from(name))
        })
        .collect()
}

/// `target` (absolute, `/`-separated) as a path relative to directory `dir` (absolute), for the
/// parent link a new child stores. Components compare without case, as on FAT and exFAT.
pub fn relative_to(dir: &str, target: &str) -> String {
    let a: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    let b: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let common = a.iter().zip(b.iter()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count();
    let mut parts: Vec<&str> = Vec::new();
    for _ in common..a.len() {
        parts.push("..");
    }
    parts.extend_from_slice(&b[common..]);
    parts.join("/")
}

pub fn is_absolute(p: &str) -> bool {
    p.starts_with('/') || p.starts_with('\\') || has_drive_letter(p)
}

pub fn join(dir: &str, rel: &str) -> String {
    if is_absolute(rel) {
        return normalize(rel);
    }
    if dir == "." || dir.is_empty() {
        normalize(rel)
    } else {
        normalize(&alloc::format!("{}/{}", dir, rel))
    }
}

/// `C:\dir\x.vhd` -> `/dir/x.vhd`; `\\?\C:\x` -> `/x`; `/a/b` stays.
pub fn map_absolute(p: &str) -> Option<String> {
    let n = p.replace('\\', "/");
    let n = n.strip_prefix("//?/").unwrap_or(&n);
    if has_drive_letter(n) {
        return Some(normalize(&alloc::format!("/{}", &n[2..])));
    }
    if n.starts_with("//") {
        return None; // UNC share: not on this partition
    }
    if n.starts_with('/') {
        return Some(normalize(n));
    }
    None
}

fn candidate_paths(link: &ParentLink, child_dir: &str, opts: &ChainOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let add = |p: String, out: &mut Vec<String>| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for c in link.path_candidates.iter().filter(|c| !is_absolute(c)) {
        add(join(child_dir, c), &mut out);
    }
    for c in link.path_candidates.iter().filter(|c| is_absolute(c)) {
        if let Some(p) = map_absolute(c) {
            add(p, &mut out);
        }
    }
    if let Some(dir) = &opts.parent_dir {
        for c in &link.path_candidates {
            add(join(dir, basename(c)), &mut out);
        }
    }
    for c in &link.path_candidates {
        add(join(child_dir, basename(c)), &mut out);
    }
    out
}

/// Does `parent` match what `link` expects? `Err` says why not; `Ok` carries warnings.
fn identity_check(child: &dyn Layer, link: &ParentLink, parent: &dyn Layer, opts: &ChainOptions) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let id = parent.identity();
    match child.format() {
        Format::Vhd => {
            if parent.format() != Format::Vhd {
                return Err(alloc::format!("it is a {} image, a VHD child needs a VHD parent", parent.format().as_str()));
            }
            if link.uuid != id.uuid {
                return Err(alloc::format!(
                    "its Unique Id is {}, the child expects {}",
                    id.uuid.map(|u| hex16(&u)).unwrap_or_default(),
                    link.uuid.map(|u| hex16(&u)).unwrap_or_default()
                ));
            }
            if let (Some(want), Some(have)) = (link.timestamp, id.timestamp) {
                if want != have {
                    warnings.push(alloc::format!(
                        "{}: parent {} was modified after the child was made (recorded time {}, file time {}); reading anyway",
                        child.name(),
                        parent.name(),
                        want,
                        have
                    ));
                }
            }
        }
        Format::Vmdk => {
            if parent.format() != Format::Vmdk {
                return Err(alloc::format!("it is a {} image, a VMDK child needs a VMDK parent", parent.format().as_str()));
            }
            if link.cid != id.cid {
                let msg = alloc::format!(
                    "its CID is {}, the child's parentCID is {}",
                    id.cid.map(|c| alloc::format!("{:08x}", c)).unwrap_or_else(|| "missing".into()),
                    link.cid.map(|c| alloc::format!("{:08x}", c)).unwrap_or_default()
                );
                if opts.lenient_cid {
                    warnings.push(alloc::format!("{}: parent {}: {} (the parent changed after the child was made)", child.name(), parent.name(), msg));
                } else {
                    return Err(msg);
                }
            }
        }
        Format::Vdi => {
            if parent.format() != Format::Vdi {
                return Err(alloc::format!("it is a {} image, a VDI child needs a VDI parent", parent.format().as_str()));
            }
            if link.uuid != id.uuid {
                return Err(alloc::format!(
                    "its UUID is {}, the child expects {}",
                    id.uuid.map(|u| hex16(&u)).unwrap_or_default(),
                    link.uuid.map(|u| hex16(&u)).unwrap_or_default()
                ));
            }
            if link.modify_uuid.is_some() && link.modify_uuid != Some([0; 16]) && link.modify_uuid != id.modify_uuid {
                warnings.push(alloc::format!("{}: parent {} was modified after the child was made (modification UUID differs)", child.name(), parent.name()));
            }
        }
        Format::Raw => return Err("a raw image has no parent".into()),
    }
    if parent.virtual_sectors() < child.virtual_sectors() {
        warnings.push(alloc::format!(
            "{}: parent {} is smaller ({} sectors) than the child ({} sectors); the rest reads as zeros",
            child.name(),
            parent.name(),
            parent.virtual_sectors(),
            child.virtual_sectors()
        ));
    }
    Ok(warnings)
}

fn open_at(locator: &mut dyn ParentLocator, path: &str) -> Option<Result<Box<dyn Layer>, ImageError>> {
    let file = locator.open(path)?;
    let dir = dirname(path);
    Some(open_layer(file, &mut |name: &str| locator.open(&join(&dir, name))))
}

/// Open `leaf_path` and all its parents. Returns the layers (leaf first) and warnings.
pub fn open_chain(leaf_path: &str, locator: &mut dyn ParentLocator, opts: &ChainOptions) -> Result<(Vec<Box<dyn Layer>>, Vec<String>), ImageError> {
    let leaf_file = locator.open_leaf(leaf_path)?;
    let leaf_dir = dirname(leaf_path);
    // The leaf's extent files (VMDK) are opened like the leaf, so flat extents can be written.
    let leaf = open_layer(leaf_file, &mut |name: &str| locator.open_leaf(&join(&leaf_dir, name)).ok())?;
    let mut layers: Vec<Box<dyn Layer>> = alloc::vec![leaf];
    let mut seen: Vec<String> = alloc::vec![locator.canonical(leaf_path)];
    let mut paths: Vec<String> = alloc::vec![leaf_path.to_string()];
    let mut warnings = Vec::new();
    loop {
        let child = match layers.last() {
            Some(c) => c,
            None => break,
        };
        let link = match child.parent_link() {
            Some(l) => l,
            None => break,
        };
        let child_path = paths.last().cloned().unwrap_or_default();
        let child_dir = dirname(&child_path);
        let mut candidates = candidate_paths(&link, &child_dir, opts);
        let mut tried = Vec::new();
        if child.format() == Format::Vdi {
            let mut dirs = Vec::new();
            if let Some(d) = &opts.parent_dir {
                dirs.push(d.clone());
            }
            dirs.push(child_dir.clone());
            for d in dirs {
                let names = locator.list_dir(&d);
                let vdis = names.iter().filter(|n| n.to_ascii_lowercase().ends_with(".vdi")).count();
                tried.push(alloc::format!("directory {}: {} .vdi file(s) compared by UUID", d, vdis));
                for n in names {
                    if n.to_ascii_lowercase().ends_with(".vdi") {
                        let p = join(&d, &n);
                        if !candidates.contains(&p) {
                            candidates.push(p);
                        }
                    }
                }
            }
        }
        let expected = match child.format() {
            Format::Vhd => alloc::format!("a VHD with Unique Id {}", link.uuid.map(|u| hex16(&u)).unwrap_or_default()),
            Format::Vmdk => alloc::format!("a VMDK with CID {:08x}", link.cid.unwrap_or(0)),
            _ => alloc::format!("a VDI with UUID {}", link.uuid.map(|u| hex16(&u)).unwrap_or_default()),
        };
        let mut mismatch = None;
        let mut found = None;
        for cand in candidates {
            let canon = locator.canonical(&cand);
            if canon == *seen.last().unwrap_or(&String::new()) {
                // The child itself (e.g. a basename equal to its own): never its own parent.
                tried.push(alloc::format!("{}: that is the child itself", cand));
                continue;
            }
            let parent = match open_at(locator, &cand) {
                None => {
                    tried.push(alloc::format!("{}: not found", cand));
                    continue;
                }
                Some(Err(e)) => {
                    tried.push(alloc::format!("{}: cannot be opened: {}", cand, e));
                    continue;
                }
                Some(Ok(p)) => p,
            };
            match identity_check(&**child, &link, &*parent, opts) {
                Err(why) => {
                    tried.push(alloc::format!("{}: {}", cand, why));
                    mismatch = Some((cand.clone(), why));
                }
                Ok(w) => {
                    if seen.contains(&canon) {
                        let mut chain = paths.clone();
                        chain.push(cand.clone());
                        return Err(ImageError::Cycle { image: child.name().to_string(), chain });
                    }
                    warnings.extend(w);
                    found = Some((cand, canon, parent));
                    break;
                }
            }
        }
        match found {
            Some((path, canon, parent)) => {
                layers.push(parent);
                seen.push(canon);
                paths.push(path);
            }
            None => {
                let image = child.name().to_string();
                return Err(match mismatch {
                    Some((parent, detail)) if tried.len() == 1 => ImageError::ParentMismatch { image, parent, detail },
                    _ => ImageError::ParentNotFound { image, expected, tried },
                });
            }
        }
    }
    Ok((layers, warnings))
}

#[cfg(feature = "std")]
mod host {
    use super::*;
    use crate::image::StdFile;

    /// Parent locator over the host file system.
    #[derive(Default)]
    pub struct StdLocator {
        /// Open the leaf writable.
        pub writable_leaf: bool,
    }

    impl ParentLocator for StdLocator {
        fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
            if !std::path::Path::new(path).is_file() {
                return None;
            }
            StdFile::open(path, false).ok().map(|f| Box::new(f) as Box<dyn ImageFile>)
        }
        fn open_leaf(&mut self, path: &str) -> Result<Box<dyn ImageFile>, ImageError> {
            Ok(Box::new(StdFile::open(path, self.writable_leaf)?))
        }
        fn list_dir(&mut self, dir: &str) -> Vec<String> {
            match std::fs::read_dir(dir) {
                Ok(rd) => {
                    let mut v: Vec<String> = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
                    v.sort();
                    v
                }
                Err(_) => Vec::new(),
            }
        }
        fn canonical(&mut self, path: &str) -> String {
            std::fs::canonicalize(path).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| normalize(path))
        }
    }
}

#[cfg(feature = "std")]
pub use host::StdLocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_files_are_found_without_case_and_listed_by_directory() {
        let files = alloc::vec![String::from("/VM/Base.vhd"), String::from("/vm/./snap.vhd"), String::from("/top.vhd")];
        fn p(f: &String) -> &str {
            f
        }
        assert_eq!(find_listed(&files, "/vm/base.VHD", p), Some(&files[0]));
        assert_eq!(find_listed(&files, "/vm/x/../snap.vhd", p), Some(&files[1]));
        assert_eq!(find_listed(&files, "/vm/none.vhd", p), None);
        assert_eq!(list_listed(&files, "/vm", p), alloc::vec!["Base.vhd", "snap.vhd"]);
        assert_eq!(list_listed(&files, "/", p), alloc::vec!["top.vhd"]);
    }

    #[test]
    fn relative_paths_for_new_children() {
        assert_eq!(relative_to("/vm", "/vm/xp.vhd"), "xp.vhd");
        assert_eq!(relative_to("/VM/snaps", "/vm/xp.vhd"), "../xp.vhd");
        assert_eq!(relative_to("/", "/base/a.vdi"), "base/a.vdi");
        assert_eq!(relative_to("/a/b", "/c/d.vmdk"), "../../c/d.vmdk");
    }

    #[test]
    fn paths() {
        assert_eq!(normalize("a/./b/../c"), "a/c");
        assert_eq!(normalize("/x/../../y"), "/y");
        assert_eq!(normalize("..\\..\\p.vhd"), "../../p.vhd");
        assert_eq!(join("/img/snap", "..\\base.vhd"), "/img/base.vhd");
        assert_eq!(join("/img", ".\\base.vhd"), "/img/base.vhd");
        assert_eq!(map_absolute("C:\\VMs\\base.vhd").as_deref(), Some("/VMs/base.vhd"));
        assert_eq!(map_absolute("\\\\?\\D:\\a\\b.vhdx").as_deref(), Some("/a/b.vhdx"));
        assert_eq!(map_absolute("\\\\server\\share\\x"), None);
        assert_eq!(dirname("/a/b/c.vhd"), "/a/b");
        assert_eq!(dirname("c.vhd"), ".");
        assert_eq!(basename("C:\\x\\y.vhd"), "y.vhd");
    }
}
