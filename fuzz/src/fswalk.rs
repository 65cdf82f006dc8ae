//! The walk every filesystem target makes: open the volume, list directories breadth-first,
//! open every file found (its extent list), read a little of it, and read a few well-known paths.
//! A budget of directory listings and files keeps one input's work bounded; what must end by
//! itself (a FAT chain that loops, an NTFS index that points back at itself) is the parser's job,
//! and libFuzzer's `-timeout` catches a walk that does not.

use vboot::block::BlockDevice;
use vboot::fs::volume::Volume;
use vboot::fs::{FileKind, FsError};

const MAX_DIRS: usize = 24;
const MAX_FILES: usize = 48;
const MAX_DEPTH: usize = 6;
const MAX_ENTRIES_PER_DIR: usize = 64;

/// Paths stage2 and the tools read.
const KNOWN: &[&str] = &["/boot/grub/grub.cfg", "/grub/grub.cfg", "/grub.cfg", "/images/disk.vhd", "/a/b/c/d", "\\x"];

/// Check a file's extent list: in file order, inside the volume, with no overflow.
fn check_file(f: &vboot::fs::File, volume_sectors: u64) {
    let mut next = 0u64;
    for e in &f.extents.extents {
        assert_eq!(e.file_sector, next, "{}: extents are not in file order", f.path);
        assert!(e.sectors > 0, "{}: empty extent", f.path);
        let end = e.lba.checked_add(e.sectors).expect("extent end overflows");
        assert!(
            end <= volume_sectors,
            "{}: extent {}+{} reaches past the volume ({} sectors)",
            f.path,
            e.lba,
            e.sectors,
            volume_sectors
        );
        next = next.checked_add(e.sectors).expect("file sectors overflow");
    }
}

std::thread_local! {
    /// Allocation checks made for the current input.
    static CHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub fn walk<D: BlockDevice>(vol: &mut Volume<D>, volume_sectors: u64) {
    CHECKS.with(|n| n.set(0));
    let mut dirs = vec![(String::from("/"), 0usize)];
    let mut listed = 0;
    let mut files = 0;
    let mut opened = Vec::new();
    while let Some((dir, depth)) = dirs.pop() {
        if listed >= MAX_DIRS {
            break;
        }
        listed += 1;
        let entries = vol.list_dir(&dir);
        if std::env::var_os("VBOOT_FUZZ_DEBUG").is_some() {
            eprintln!("list {}: {:?}", dir, entries.as_ref().map(|e| e.iter().map(|d| d.name.clone()).collect::<Vec<_>>()));
        }
        let Ok(entries) = entries else { continue };
        for e in entries.into_iter().take(MAX_ENTRIES_PER_DIR) {
            if e.name.is_empty() || e.name == "." || e.name == ".." {
                continue;
            }
            let path = if dir == "/" { format!("/{}", e.name) } else { format!("{}/{}", dir, e.name) };
            match e.kind {
                FileKind::Directory if depth < MAX_DEPTH => dirs.push((path, depth + 1)),
                FileKind::Directory => {}
                FileKind::File if files < MAX_FILES => {
                    files += 1;
                    // Kept for the check together only when small: the heap bound is per file.
                    if let Some(f) = open_and_read(vol, &path, volume_sectors).filter(|f| f.extents.extents.len() <= 4096) {
                        opened.push(f);
                    }
                }
                FileKind::File => {}
            }
        }
    }
    // The files found, checked together as stage2 checks a chain's parents (their extents
    // against each other, and on FAT in one pass).
    let together: Vec<&vboot::fs::File> = opened.iter().collect();
    let _ = vol.check_files_allocation(&together);
    drop(together);
    drop(opened);
    for p in KNOWN {
        open_and_read(vol, p, volume_sectors);
        let _ = vol.read_to_vec(p, 64 * 1024);
    }
}

fn open_and_read<D: BlockDevice>(vol: &mut Volume<D>, path: &str, volume_sectors: u64) -> Option<vboot::fs::File> {
    let f = match vol.open_file(path) {
        Ok(f) => f,
        Err(FsError::NotFound { .. }) | Err(_) => return None,
    };
    check_file(&f, volume_sectors);
    // What stage2 runs before handing the extents to the engine: one pass over the FAT, the
    // group descriptors and bitmaps, or $Bitmap. It must end, and refuse rather than panic. Its
    // cost is the volume's (a FAT of up to 1 GiB on a 64 GiB sparse volume), so only for the
    // first files of an input.
    if CHECKS.with(|n| n.replace(n.get() + 1) < 4) {
        let _ = vol.check_file_allocation(&f);
    }
    let mut buf = [0u8; 4096];
    let _ = vol.read_file(&f, 0, &mut buf);
    if f.size_bytes > 512 {
        let _ = vol.read_file(&f, f.size_bytes - 100, &mut buf[..512]);
    }
    let _ = vol.read_file(&f, u64::MAX - 10, &mut buf[..16]);
    Some(f)
}
