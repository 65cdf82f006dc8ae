//! The allocation check before boot (`Volume::check_file_allocation`) and the bounded walks,
//! against volumes made by the real tools and then damaged on purpose.
//!
//! Each case: mkfs + the filesystem's own copy tool make a clean volume, which vboot accepts;
//! then one corruption (two files sharing clusters, a cluster or block marked free, a block in
//! the inode table, an NTFS run over `$MFT`, a FAT chain loop behind a huge size, a directory
//! longer than vboot reads), which the filesystem's own checker confirms where it can
//! (`fsck.fat -n`, `fsck.exfat -n`, `e2fsck -fn`; `ntfsinfo` shows the NTFS run where we put
//! it), and which vboot refuses with a message naming the file and the repair tool.
//!
//! What each filesystem's check does and does not catch: docs/filesystems.md.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use vboot::block::FileDisk;
use vboot::fs::volume::Volume;
use vboot::fs::FsError;
use vboot_tests::{require_tool as need, sbin, sh, TempDir};


/// Exit status and output (stdout + stderr) of a checker run that may fail.
fn checker(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

fn peek(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

fn open_volume(img: &Path) -> Volume<FileDisk> {
    Volume::open(FileDisk::open(img, false).unwrap()).unwrap()
}

/// Open `path` and run the allocation check: the error's text, or None when both pass.
fn refusal(img: &Path, path: &str) -> Option<String> {
    let mut vol = open_volume(img);
    let file = match vol.open_file(path) {
        Ok(f) => f,
        Err(e) => return Some(format!("{}", e)),
    };
    vol.check_file_allocation(&file).err().map(|e| format!("{}", e))
}

fn assert_refused(img: &Path, path: &str, words: &[&str]) {
    let m = refusal(img, path).unwrap_or_else(|| panic!("{} on {} was accepted", path, img.display()));
    for w in words {
        assert!(m.contains(w), "the refusal of {} should say {:?}: {}", path, w, m);
    }
}

// ---------------------------------------------------------------- FAT

/// FAT geometry from the boot sector: (byte offset of each FAT copy, bytes per entry, first
/// data sector, sectors per cluster).
fn fat_layout(img: &Path) -> (Vec<u64>, u64) {
    let bs = peek(img, 0, 512);
    let le16 = |at: usize| u16::from_le_bytes([bs[at], bs[at + 1]]) as u64;
    let reserved = le16(14);
    let fats = bs[16] as u64;
    let fat16_size = le16(22);
    let fat_size = if fat16_size != 0 { fat16_size } else { u32::from_le_bytes([bs[36], bs[37], bs[38], bs[39]]) as u64 };
    let entry_bytes = if fat16_size != 0 { 2 } else { 4 };
    ((0..fats).map(|k| (reserved + k * fat_size) * 512).collect(), entry_bytes)
}

fn set_fat(img: &Path, cluster: u32, value: u32) {
    let (fats, entry_bytes) = fat_layout(img);
    // mkfs.fat labels the type it chose; FAT12 packs two entries in three bytes.
    let fat12 = peek(img, 54, 8) == b"FAT12   ";
    for at in fats {
        if fat12 {
            let at = at + cluster as u64 * 3 / 2;
            let old = peek(img, at, 2);
            let pair = u16::from_le_bytes([old[0], old[1]]);
            let pair = if cluster % 2 == 0 { (pair & 0xF000) | value as u16 } else { (pair & 0x000F) | (value as u16) << 4 };
            patch(img, at, &pair.to_le_bytes());
        } else {
            patch(img, at + cluster as u64 * entry_bytes, &value.to_le_bytes()[..entry_bytes as usize]);
        }
    }
}

/// A file's clusters as mtools' mshowfat lists them ("::/A.IMG <3-130> <200-210>").
fn mshowfat(img: &Path, path: &str) -> Vec<u32> {
    let out = sh(Command::new("mshowfat").arg("-i").arg(img).arg(format!("::{}", path)).env("MTOOLS_SKIP_CHECK", "1"));
    let mut clusters = Vec::new();
    for range in out.split('<').skip(1) {
        let range = range.split('>').next().unwrap();
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        clusters.extend(a.trim().parse::<u32>().unwrap()..=b.trim().parse::<u32>().unwrap());
    }
    assert!(!clusters.is_empty(), "mshowfat listed no clusters for {}: {}", path, out);
    clusters
}

/// A FAT volume (mkfs.fat, one-sector clusters) with /A.IMG and /B.IMG of 64 KiB each, copied
/// by mtools, clean by fsck.fat.
fn fat_case(t: &TempDir, name: &str, fat_bits: u32, kib: u64) -> PathBuf {
    need("mkfs.fat", "dosfstools");
    need("fsck.fat", "dosfstools");
    need("mshowfat", "mtools");
    let img = t.join(name);
    vboot_tests::disk::fat_volume_args(
        &img,
        kib * 2,
        fat_bits,
        &["-s", "1"],
        &[
            vboot_tests::disk::FileSpec::new("/A.IMG", pseudo_random(65536, 1)),
            vboot_tests::disk::FileSpec::new("/B.IMG", pseudo_random(65536, 2)),
        ],
    );
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(clean, "fsck.fat finds the fresh volume damaged:\n{}", out);
    assert_eq!(refusal(&img, "/A.IMG"), None, "the untouched volume is accepted");
    img
}

fn fat_cross_link_is_refused(fat_bits: u32, kib: u64) {
    let t = TempDir::new(&format!("fsalloc-fat{}", fat_bits));
    let img = fat_case(&t, "fat.img", fat_bits, kib);
    let a = mshowfat(&img, "/A.IMG");
    let b = mshowfat(&img, "/B.IMG");
    // B's chain runs into A's tenth cluster: from there on the two files share clusters.
    set_fat(&img, b[b.len() - 1], a[9]);
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(!clean && (out.contains("B.IMG") || out.contains("A.IMG")), "fsck.fat sees no damage:\n{}", out);
    assert_refused(&img, "/A.IMG", &["/A.IMG", "cross-linked", &format!("cluster {}", a[9]), "fsck.fat"]);
    // B itself opens (a chain longer than its size is tolerated) and the pass finds nothing
    // pointing into B's own clusters.
    assert_eq!(refusal(&img, "/B.IMG"), None);
}

/// Two files of one chain checked together (`check_files_allocation`, what stage2 does for a
/// chain's parents): one pass over the FAT, and a second file whose chain *starts* inside the
/// first (not visible in the FAT) is refused because both are in the set.
#[test]
fn fat32_files_checked_together_catch_a_shared_start() {
    let t = TempDir::new("fsalloc-fat-together");
    let img = fat_case(&t, "fat.img", 32, 40 * 1024);
    {
        let mut vol = open_volume(&img);
        let a = vol.open_file("/A.IMG").unwrap();
        let b = vol.open_file("/B.IMG").unwrap();
        vol.check_files_allocation(&[&a, &b]).expect("two clean files");
    }
    let a = mshowfat(&img, "/A.IMG");
    // B's directory entry now names A's first cluster: both files are the same chain.
    let bytes = std::fs::read(&img).unwrap();
    let entry = bytes.windows(11).position(|w| w == b"B       IMG").expect("B's directory entry") as u64;
    patch(&img, entry + 20, &((a[0] >> 16) as u16).to_le_bytes());
    patch(&img, entry + 26, &(a[0] as u16).to_le_bytes());
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(!clean, "fsck.fat sees no damage:\n{}", out);
    let mut vol = open_volume(&img);
    let fa = vol.open_file("/A.IMG").unwrap();
    let fb = vol.open_file("/B.IMG").unwrap();
    // Each alone passes: nothing in the FAT points into the chain from outside.
    vol.check_file_allocation(&fa).unwrap();
    let m = format!("{}", vol.check_files_allocation(&[&fa, &fb]).unwrap_err());
    assert!(m.contains("/A.IMG: its sector") && m.contains("is also a sector of /B.IMG"), "{}", m);
}

#[test]
fn fat12_cross_linked_file_is_refused() {
    fat_cross_link_is_refused(12, 1024);
}

#[test]
fn fat16_cross_linked_file_is_refused() {
    fat_cross_link_is_refused(16, 16 * 1024);
}

#[test]
fn fat32_cross_linked_file_is_refused() {
    fat_cross_link_is_refused(32, 40 * 1024);
}

#[test]
fn fat32_cluster_marked_free_is_refused() {
    let t = TempDir::new("fsalloc-fat-free");
    let img = fat_case(&t, "fat.img", 32, 40 * 1024);
    let a = mshowfat(&img, "/A.IMG");
    // The last cluster's end-of-chain mark becomes "free": the chain still reads to its size.
    set_fat(&img, a[a.len() - 1], 0);
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(!clean, "fsck.fat sees no damage:\n{}", out);
    assert_refused(&img, "/A.IMG", &["/A.IMG", &format!("cluster {} is marked free", a[a.len() - 1]), "fsck.fat"]);
}

/// A 2-cluster loop behind a directory entry that claims 30 MiB (61,440 clusters): the walk
/// says "loops" after a handful of clusters instead of building a run per cluster.
#[test]
fn fat32_chain_loop_is_found_early() {
    let t = TempDir::new("fsalloc-fat-loop");
    let img = fat_case(&t, "fat.img", 32, 40 * 1024);
    let a = mshowfat(&img, "/A.IMG");
    set_fat(&img, a[1], a[0]);
    // The size field of A's directory entry (in the root directory, found by its 8.3 name).
    let bytes = std::fs::read(&img).unwrap();
    let entry = bytes.windows(11).position(|w| w == b"A       IMG").expect("A's directory entry");
    patch(&img, entry as u64 + 28, &(30u32 << 20).to_le_bytes());
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(!clean, "fsck.fat sees no damage:\n{}", out);
    let m = refusal(&img, "/A.IMG").expect("refused");
    assert!(m.contains("/A.IMG") && m.contains("loops"), "{}", m);
    // "comes back after N clusters": N is the number of runs the walk built at most.
    let after: u64 = m.split("after ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).expect(&m);
    assert!(after <= 8, "the loop was found after {} clusters: {}", after, m);
}

// ---------------------------------------------------------------- exFAT

/// An exFAT volume from mkfs.exfat with /a.img (256 KiB) written by vboot's exFAT writer (no
/// other writer works without root here), clean by fsck.exfat.
fn exfat_case(t: &TempDir) -> PathBuf {
    need("mkfs.exfat", "exfatprogs");
    need("fsck.exfat", "exfatprogs");
    let img = t.join("exfat.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    sh(sbin("mkfs.exfat").arg(&img));
    {
        let mut vol = Volume::open(FileDisk::open(&img, true).unwrap()).unwrap();
        let data = pseudo_random(256 << 10, 3);
        let f = vol.create_file("/a.img", data.len() as u64).unwrap();
        vol.write_file(&f, 0, &data).unwrap();
    }
    let (clean, out) = checker(sbin("fsck.exfat").arg("-n").arg(&img));
    assert!(clean, "fsck.exfat finds the fresh volume damaged:\n{}", out);
    assert_eq!(refusal(&img, "/a.img"), None, "the untouched volume is accepted");
    img
}

/// exFAT geometry: (heap start sector, sectors per cluster, FAT start sector, root cluster).
fn exfat_layout(img: &Path) -> (u64, u64, u64, u32) {
    let bs = peek(img, 0, 512);
    let le32 = |at: usize| u32::from_le_bytes([bs[at], bs[at + 1], bs[at + 2], bs[at + 3]]);
    assert_eq!(bs[108], 9, "512-byte sectors");
    (le32(88) as u64, 1u64 << bs[109], le32(80) as u64, le32(96))
}

#[test]
fn exfat_cluster_marked_free_is_refused() {
    let t = TempDir::new("fsalloc-exfat-free");
    let img = exfat_case(&t);
    let (heap, spc, _, _) = exfat_layout(&img);
    let file = open_volume(&img).open_file("/a.img").unwrap();
    let cluster = (file.extents.extents[0].lba - heap) / spc + 2 + 1;
    // The allocation bitmap's clusters, from vboot: the first entry of type 0x81 in the root.
    let bitmap_lba = {
        let (heap, spc, _, root) = exfat_layout(&img);
        let root_bytes = peek(&img, (heap + (root as u64 - 2) * spc) * 512, 4096);
        let e = root_bytes.chunks(32).find(|e| e[0] == 0x81).expect("bitmap entry");
        heap + (u32::from_le_bytes([e[20], e[21], e[22], e[23]]) as u64 - 2) * spc
    };
    let at = bitmap_lba * 512 + (cluster - 2) / 8;
    let byte = peek(&img, at, 1)[0];
    patch(&img, at, &[byte & !(1 << ((cluster - 2) % 8))]);
    let (clean, out) = checker(sbin("fsck.exfat").arg("-n").arg(&img));
    assert!(!clean, "fsck.exfat sees no damage:\n{}", out);
    assert_refused(&img, "/a.img", &["/a.img", &format!("cluster {}", cluster), "marks free", "fsck.exfat"]);
}

/// The root directory's FAT chain made 9 MiB long (over free clusters): refused when the
/// volume is opened, after at most 8 MiB of chain, not read into memory.
#[test]
fn exfat_directory_longer_than_the_bound_is_refused() {
    let t = TempDir::new("fsalloc-exfat-dir");
    let img = exfat_case(&t);
    let (_, spc, fat_lba, root) = exfat_layout(&img);
    let clusters = (9u64 << 20) / (spc * 512);
    // Free clusters at the end of the heap, chained behind the root's last cluster.
    let cluster_count = u32::from_le_bytes(peek(&img, 92, 4).try_into().unwrap()) as u64;
    let first_free = cluster_count + 2 - clusters;
    assert_eq!(peek(&img, fat_lba * 512 + root as u64 * 4, 4), [0xFF; 4], "a one-cluster root");
    patch(&img, fat_lba * 512 + root as u64 * 4, &(first_free as u32).to_le_bytes());
    for c in first_free..first_free + clusters {
        let next = if c + 1 == first_free + clusters { u32::MAX } else { c as u32 + 1 };
        patch(&img, fat_lba * 512 + c * 4, &next.to_le_bytes());
    }
    match Volume::open(FileDisk::open(&img, false).unwrap()) {
        Err(FsError::Corrupt(m)) => assert!(m.contains("root directory") && m.contains("8 MiB"), "{}", m),
        Err(e) => panic!("{}", e),
        Ok(_) => panic!("a 9 MiB root directory was read"),
    }
}

// ---------------------------------------------------------------- ext

/// An ext4 volume (1 KiB blocks when `small_blocks`) from `mkfs.ext4 -d` with /a.img (256 KiB),
/// /b.img and a directory /sub, clean by e2fsck.
fn ext_case(t: &TempDir, mkfs_args: &[&str]) -> PathBuf {
    need("mkfs.ext4", "e2fsprogs");
    need("e2fsck", "e2fsprogs");
    need("debugfs", "e2fsprogs");
    let src = t.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.img"), pseudo_random(256 << 10, 4)).unwrap();
    std::fs::write(src.join("b.img"), pseudo_random(64 << 10, 5)).unwrap();
    std::fs::write(src.join("sub/x.txt"), b"x").unwrap();
    let img = t.join("ext.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    sh(sbin("mkfs.ext4").args(["-q", "-F"]).args(mkfs_args).arg("-d").arg(&src).arg(&img));
    let (clean, out) = checker(sbin("e2fsck").args(["-fn"]).arg(&img));
    assert!(clean, "e2fsck finds the fresh volume damaged:\n{}", out);
    assert_eq!(refusal(&img, "/a.img"), None, "the untouched volume is accepted");
    img
}

fn debugfs_write(img: &Path, request: &str) {
    sh(sbin("debugfs").arg("-w").arg("-R").arg(request).arg(img));
}

/// A's first block, from debugfs ("(0-255):1234-1489").
fn ext_first_block(img: &Path, path: &str) -> u64 {
    let out = sh(sbin("debugfs").arg("-R").arg(format!("blocks {}", path)).arg(img));
    out.split_whitespace().next().and_then(|b| b.parse().ok()).unwrap_or_else(|| panic!("debugfs blocks: {}", out))
}

#[test]
fn ext4_block_marked_free_is_refused() {
    let t = TempDir::new("fsalloc-ext-free");
    let img = ext_case(&t, &[]);
    let block = ext_first_block(&img, "/a.img") + 3;
    debugfs_write(&img, &format!("freeb {}", block));
    let (clean, out) = checker(sbin("e2fsck").args(["-fn"]).arg(&img));
    assert!(!clean && out.contains("differences"), "e2fsck sees no damage:\n{}", out);
    assert_refused(&img, "/a.img", &["/a.img", &format!("block {}", block), "marks free", "e2fsck"]);
}

/// A's first extent moved onto the inode table (its start in i_block word 5, as debugfs's
/// set_inode_field names it), on a flex_bg volume and on one with 1 KiB blocks and no flex_bg.
fn ext_block_in_inode_table(tag: &str, mkfs_args: &[&str], group: u64) {
    let t = TempDir::new(tag);
    let img = ext_case(&t, mkfs_args);
    let stats = sh(sbin("dumpe2fs").arg(&img));
    // "  Inode table at 1066-1321 (+1065)" under "Group N:".
    let section = stats.split(&format!("Group {}:", group)).nth(1).expect("the group in dumpe2fs");
    let table: u64 = section
        .split("Inode table at ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the inode table in dumpe2fs");
    debugfs_write(&img, &format!("sif /a.img block[5] {}", table + 2));
    let (clean, out) = checker(sbin("e2fsck").args(["-fn"]).arg(&img));
    assert!(!clean, "e2fsck sees no damage:\n{}", out);
    assert_refused(&img, "/a.img", &["/a.img", "inode table", "e2fsck"]);
}

#[test]
fn ext4_block_in_the_inode_table_is_refused() {
    ext_block_in_inode_table("fsalloc-ext-itable", &[], 0);
}

#[test]
fn ext4_1k_blocks_block_in_another_groups_inode_table_is_refused() {
    ext_block_in_inode_table("fsalloc-ext-itable-1k", &["-b", "1024", "-O", "^flex_bg"], 2);
}

/// Superblock copies where sparse_super2 puts them (group 0 and the two backup groups), and
/// meta_bg descriptor blocks: clean volumes of several groups are accepted, and a block of
/// a.img marked free is still found.
#[test]
fn ext4_sparse_super2_and_meta_bg_volumes_are_accepted() {
    for (tag, args) in [
        ("fsalloc-ext-ss2", &["-b", "1024", "-O", "sparse_super2"][..]),
        ("fsalloc-ext-metabg", &["-b", "1024", "-O", "meta_bg,^resize_inode"][..]),
    ] {
        let t = TempDir::new(tag);
        let img = ext_case(&t, args);
        let block = ext_first_block(&img, "/a.img") + 1;
        debugfs_write(&img, &format!("freeb {}", block));
        assert_refused(&img, "/a.img", &["/a.img", &format!("block {}", block), "marks free"]);
    }
}

/// A directory whose size says 32 MiB: refused by its size, not read.
#[test]
fn ext4_directory_longer_than_the_bound_is_refused() {
    let t = TempDir::new("fsalloc-ext-dir");
    let img = ext_case(&t, &[]);
    debugfs_write(&img, &format!("sif /sub size {}", 32u64 << 20));
    let (clean, out) = checker(sbin("e2fsck").args(["-fn"]).arg(&img));
    assert!(!clean, "e2fsck sees no damage:\n{}", out);
    match open_volume(&img).open_file("/sub/x.txt") {
        Err(FsError::Unsupported(m)) => assert!(m.contains("/sub") && m.contains("16 MiB"), "{}", m),
        other => panic!("{:?}", other),
    }
}

// ---------------------------------------------------------------- NTFS

/// An NTFS volume from mkntfs with /a.img (1 MiB) copied by ntfscp.
fn ntfs_case(t: &TempDir) -> PathBuf {
    need("mkntfs", "ntfs-3g");
    need("ntfscp", "ntfs-3g");
    need("ntfsinfo", "ntfs-3g");
    let img = t.join("ntfs.img");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    sh(sbin("mkntfs").args(["-F", "-f", "-q"]).arg(&img));
    let local = t.join("a.bin");
    std::fs::write(&local, pseudo_random(1 << 20, 6)).unwrap();
    sh(sbin("ntfscp").arg(&img).arg(&local).arg("a.img"));
    assert_eq!(refusal(&img, "/a.img"), None, "the untouched volume is accepted");
    img
}

/// (LCN, clusters) of the first run of MFT record `record`'s data, as ntfsinfo prints it.
fn ntfs_first_run(img: &Path, record: u64) -> (u64, u64) {
    let out = sh(sbin("ntfsinfo").args(["-v", "-i", &record.to_string()]).arg(img));
    // The first runlist ntfsinfo prints is $DATA's (record 0 has $BITMAP's after it).
    let line = out.split("Runlist:").nth(1).and_then(|s| s.lines().nth(1)).expect("a runlist");
    let v: Vec<u64> = line.split_whitespace().map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap()).collect();
    (v[1], v[2])
}

fn ntfs_cluster_bytes(img: &Path) -> u64 {
    let bs = peek(img, 0, 512);
    u16::from_le_bytes([bs[11], bs[12]]) as u64 * bs[13] as u64
}

#[test]
fn ntfs_clusters_clear_in_bitmap_are_refused() {
    let t = TempDir::new("fsalloc-ntfs-free");
    let img = ntfs_case(&t);
    let cluster_bytes = ntfs_cluster_bytes(&img);
    let file = open_volume(&img).open_file("/a.img").unwrap();
    let cluster = file.extents.extents[0].lba * 512 / cluster_bytes + 5;
    let (bitmap_lcn, _) = ntfs_first_run(&img, 6);
    let at = bitmap_lcn * cluster_bytes + cluster / 8;
    let byte = peek(&img, at, 1)[0];
    assert_ne!(byte & (1 << (cluster % 8)), 0, "$Bitmap marks the file's cluster used");
    patch(&img, at, &[byte & !(1 << (cluster % 8))]);
    assert_refused(&img, "/a.img", &["/a.img", &format!("cluster {}", cluster), "$Bitmap marks free", "chkdsk"]);
}

#[test]
fn ntfs_run_over_the_mft_is_refused() {
    let t = TempDir::new("fsalloc-ntfs-mft");
    let img = ntfs_case(&t);
    let cluster_bytes = ntfs_cluster_bytes(&img);
    let (mft_lcn, _) = ntfs_first_run(&img, 0);
    let (lcn, clusters) = ntfs_first_run(&img, 64);
    assert_eq!(file_lcn(&img, cluster_bytes), lcn, "record 64 is a.img");
    // Record 64 of the MFT (contiguous at its start on a fresh volume): its data attribute's
    // first run gets the MFT's LCN, in the same field width.
    let record_at = mft_lcn * cluster_bytes + 64 * 1024;
    let rec = peek(&img, record_at, 1024);
    let mut attr = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
    assert_eq!(&rec[..4], b"FILE", "MFT record 64");
    while u32::from_le_bytes(rec[attr..attr + 4].try_into().unwrap()) != 0x80 {
        let len = u32::from_le_bytes(rec[attr + 4..attr + 8].try_into().unwrap()) as usize;
        assert!(len >= 16 && attr + len < 1024, "attribute length {} in record 64", len);
        attr += len;
    }
    assert_eq!(rec[attr + 8], 1, "a.img's data is non-resident");
    let runs = attr + u16::from_le_bytes([rec[attr + 0x20], rec[attr + 0x21]]) as usize;
    let (len_bytes, lcn_bytes) = ((rec[runs] & 0xF) as usize, (rec[runs] >> 4) as usize);
    let field = runs + 1 + len_bytes;
    assert!(field + lcn_bytes < 510, "the run stays clear of the first fixup");
    patch(&img, record_at + field as u64, &mft_lcn.to_le_bytes()[..lcn_bytes]);
    assert_eq!(ntfs_first_run(&img, 64), (mft_lcn, clusters), "ntfsinfo reads the run over $MFT");
    assert_refused(&img, "/a.img", &["/a.img", "lies in the MFT", "chkdsk"]);
}

fn file_lcn(img: &Path, cluster_bytes: u64) -> u64 {
    open_volume(img).open_file("/a.img").unwrap().extents.extents[0].lba * 512 / cluster_bytes
}

// ---------------------------------------------------------------- at boot

/// A menu entry whose image another file's chain runs into: stage2 shows the refusal with the
/// file's name and the repair tool, and a key returns to the menu.
#[test]
fn qemu_cross_linked_image_is_refused_with_the_way_back_to_the_menu() {
    need("mshowfat", "mtools");
    need("fsck.fat", "dosfstools");
    let t = TempDir::new("fsalloc-boot");
    let one = t.join("one.img");
    let two = t.join("two.img");
    std::fs::write(&one, pseudo_random(256 << 10, 7)).unwrap();
    std::fs::write(&two, pseudo_random(256 << 10, 8)).unwrap();
    let cfg = "set timeout=-1\nmenuentry 'Cross-linked' {\n    vboot harddisk=/one.img\n}\nmenuentry 'Other' {\n    vboot harddisk=/two.img\n}\n";
    let host = vboot_tests::vboot_host(
        &t,
        96,
        cfg,
        &[
            vboot_tests::HostImage { path: "/one.img", file: &one, pieces: 1 },
            vboot_tests::HostImage { path: "/two.img", file: &two, pieces: 1 },
        ],
    );
    let a = mshowfat(&host.part, "/one.img");
    let b = mshowfat(&host.part, "/two.img");
    set_fat(&host.part, b[b.len() - 1], a[5]);
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&host.part));
    assert!(!clean, "fsck.fat sees no damage:\n{}", out);
    vboot_tests::disk::write_at(&host.disk, 2048, &host.part);
    let mut q = vboot_tests::qemu::Qemu::boot_disk(&host.disk);
    let t_out = std::time::Duration::from_secs(120);
    q.expect("2. Other", t_out);
    q.expect_refusals("2. Other", &[(b"1", "/one.img: it is cross-linked")], t_out);
    q.expect_refusals("2. Other", &[(b"1", "run fsck.fat (dosfsck) or chkdsk on the host partition")], t_out);
    q.kill();
}

// ---------------------------------------------------------------- cost

/// Counts the reads a check makes (each one BIOS call in stage2).
struct CountingDisk {
    inner: FileDisk,
    reads: u64,
    sectors: u64,
}

impl vboot::block::BlockDevice for CountingDisk {
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), vboot::block::BlockError> {
        self.reads += 1;
        self.sectors += buf.len() as u64 / 512;
        self.inner.read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), vboot::block::BlockError> {
        self.inner.write_sectors(lba, buf)
    }
}

/// The FAT pass reads the whole FAT whatever the file: its cost is the volume's. A 110 GiB
/// FAT32 volume (mkfs.fat, 32 KiB clusters: 3.6 million clusters, 14 MiB of FAT) filled with 26
/// files of just under 4 GiB (FAT's largest) whose chains take turns every 33 clusters, so each
/// is in about 4,000 fragments; fsck.fat finds it clean. The check of one file: its time and
/// reads are printed (docs/filesystems.md quotes them) and bounded here.
#[test]
fn fat32_check_of_a_4_gib_file_in_4000_fragments_on_a_110_gib_volume() {
    need("mkfs.fat", "dosfstools");
    need("fsck.fat", "dosfstools");
    let t = TempDir::new("fsalloc-cost");
    let img = t.join("big.img");
    let _ = std::fs::remove_file(&img);
    sh(sbin("mkfs.fat").args(["-F", "32", "-s", "64", "-C"]).arg(&img).arg((110u64 << 20).to_string()));
    let bs = peek(&img, 0, 512);
    let le32 = |at: usize| u32::from_le_bytes([bs[at], bs[at + 1], bs[at + 2], bs[at + 3]]) as u64;
    let (reserved, fat_size) = (u16::from_le_bytes([bs[14], bs[15]]) as u64, le32(36));
    let data_start = reserved + 2 * fat_size;
    let root = le32(44);
    assert_eq!(root, 2);
    const FILES: u64 = 26;
    const RUN: u64 = 33;
    let file_clusters: u64 = (u32::MAX as u64) / (32 << 10); // 131,071: just under 4 GiB
    let mut fat = vec![0u8; (fat_size * 512) as usize];
    fat[..8].copy_from_slice(&peek(&img, reserved * 512, 8));
    fat[8..12].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // the root directory's cluster
    let mut last: Vec<Option<u64>> = vec![None; FILES as usize];
    let mut firsts = vec![0u64; FILES as usize];
    let mut taken = vec![0u64; FILES as usize];
    let mut next_free = 3u64;
    while taken.iter().any(|&n| n < file_clusters) {
        for f in 0..FILES as usize {
            let n = RUN.min(file_clusters - taken[f]);
            for c in next_free..next_free + n {
                match last[f] {
                    Some(prev) => fat[(prev * 4) as usize..(prev * 4 + 4) as usize].copy_from_slice(&(c as u32).to_le_bytes()),
                    None => firsts[f] = c,
                }
                last[f] = Some(c);
            }
            next_free += n;
            taken[f] += n;
        }
    }
    for l in last.iter().flatten() {
        fat[(l * 4) as usize..(l * 4 + 4) as usize].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
    }
    patch(&img, reserved * 512, &fat);
    patch(&img, (reserved + fat_size) * 512, &fat);
    let mut dir = vec![0u8; 32 * FILES as usize];
    for (f, e) in dir.chunks_mut(32).enumerate() {
        e[..11].copy_from_slice(format!("F{:02}     IMG", f).as_bytes());
        e[11] = 0x20;
        e[20..22].copy_from_slice(&((firsts[f] >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(firsts[f] as u16).to_le_bytes());
        e[28..32].copy_from_slice(&((file_clusters * (32 << 10)) as u32).to_le_bytes());
    }
    patch(&img, data_start * 512, &dir);
    // FSInfo's free count (and its copy behind the backup boot sector): "unknown".
    let fsinfo = u16::from_le_bytes([bs[48], bs[49]]) as u64;
    for sector in [fsinfo, fsinfo + 6] {
        patch(&img, sector * 512 + 488, &u32::MAX.to_le_bytes());
    }
    let (clean, out) = checker(sbin("fsck.fat").arg("-n").arg(&img));
    assert!(clean, "fsck.fat finds the built volume damaged:\n{}", out);

    let disk = CountingDisk { inner: FileDisk::open(&img, false).unwrap(), reads: 0, sectors: 0 };
    let mut vol = Volume::open(disk).unwrap();
    let started = std::time::Instant::now();
    let file = vol.open_file("/F00.IMG").unwrap();
    let open_time = started.elapsed();
    let fragments = file.extents.extents.len();
    assert!(fragments >= 3900, "{} fragments", fragments);
    let Volume::Fat(fat_vol) = vol else { panic!("not FAT") };
    let mut disk = fat_vol.into_inner();
    (disk.reads, disk.sectors) = (0, 0);
    let mut vol = Volume::open(disk).unwrap();
    let started = std::time::Instant::now();
    vol.check_file_allocation(&file).unwrap();
    let check_time = started.elapsed();
    let Volume::Fat(fat_vol) = vol else { panic!("not FAT") };
    let disk = fat_vol.into_inner();
    println!(
        "FAT32 110 GiB, 32 KiB clusters: /F00.IMG {} bytes in {} fragments; open {:?}; check {:?}, {} reads, {} sectors ({} MiB)",
        file.size_bytes,
        fragments,
        open_time,
        check_time,
        disk.reads,
        disk.sectors,
        disk.sectors / 2048
    );
    // One read of the FAT (64 sectors at a time), plus what opening the volume reads.
    assert!(disk.sectors <= fat_size + 256, "{} sectors read for a FAT of {}", disk.sectors, fat_size);
}
