//! The FAT reader against volumes made by `mkfs.fat` and filled with mtools. Every file is read
//! back through its extent list straight from the image file, and the extent list is compared
//! with the cluster chain `mshowfat` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use vboot::block::{FileDisk, Window};
use vboot::fs::fat::{FatType, FatVolume};
use vboot::fs::{ExtentList, FileKind, FsError};
use vboot::part::read_partitions;

/// A temp file or directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn path(tag: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::env::temp_dir().join(format!("vboot-fat-{}-{}-{}", tag, std::process::id(), n))
    }
    fn image(tag: &str, bytes: u64) -> Self {
        let p = Self::path(tag);
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        Temp(p)
    }
    fn dir(tag: &str) -> Self {
        let p = Self::path(tag);
        std::fs::create_dir_all(&p).unwrap();
        Temp(p)
    }
    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a host tool; a missing tool fails the test naming its Debian package.
fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({}): install the Debian package `{}`",
                tool, e, package
            )
        });
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        tool,
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mtool(tool: &str, args: &[&str]) -> String {
    run(tool, "mtools", args)
}

/// Deterministic bytes that differ per file and per position.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// What was put on a volume: file path -> bytes, and every directory.
#[derive(Default)]
struct Tree {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
}

/// Fills a volume through mtools.
struct Filler {
    image: PathBuf,
    volume_byte_offset: u64,
    /// The mtools image spec: `img`, or `img@@offset` for a partition.
    target: String,
    staging: Temp,
    tree: Tree,
    seed: u64,
}

impl Filler {
    fn new(image: &Path, volume_byte_offset: u64) -> Self {
        let target = if volume_byte_offset == 0 {
            image.to_str().unwrap().to_string()
        } else {
            format!("{}@@{}", image.display(), volume_byte_offset)
        };
        Filler {
            image: image.to_path_buf(),
            volume_byte_offset,
            target,
            staging: Temp::dir("staging"),
            tree: Tree::default(),
            seed: 1,
        }
    }

    /// On FAT32, mtools (like Windows) allocates after the FSInfo "next free" hint, so holes
    /// left by deletions stay empty. Invalidating the hint, as a disk checker does, makes the next
    /// copy start from the beginning of the volume and fill the holes.
    fn forget_next_free_hint(&self) {
        let bs = read_image(&self.image, self.volume_byte_offset, 512);
        let fat32 = u16::from_le_bytes([bs[22], bs[23]]) == 0;
        if !fat32 {
            return;
        }
        let bytes_per_sector = u16::from_le_bytes([bs[11], bs[12]]) as u64;
        let fsinfo = u16::from_le_bytes([bs[48], bs[49]]) as u64;
        let at = self.volume_byte_offset + fsinfo * bytes_per_sector + 492;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.image)
            .unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0xFF; 4]).unwrap();
    }

    fn mkdir(&mut self, path: &str) {
        mtool("mmd", &["-i", &self.target, &format!("::{}", path)]);
        self.tree.dirs.insert(path.to_string());
    }

    /// Copy a new file of `len` bytes to `path`.
    fn put(&mut self, path: &str, len: usize) {
        self.seed += 1;
        let bytes = content(self.seed, len);
        let src = self.staging.0.join(format!("src{}", self.seed));
        std::fs::write(&src, &bytes).unwrap();
        mtool(
            "mcopy",
            &[
                "-i",
                &self.target,
                src.to_str().unwrap(),
                &format!("::{}", path),
            ],
        );
        std::fs::remove_file(&src).unwrap();
        self.tree.files.insert(path.to_string(), bytes);
    }

    fn delete(&mut self, path: &str) {
        mtool("mdel", &["-i", &self.target, &format!("::{}", path)]);
        self.tree.files.remove(path);
    }

    /// The layout every volume gets: deep directories, long and mixed-case names, sizes around
    /// sector and cluster boundaries, a directory spanning several clusters, and a file copied
    /// into the holes left by deleting every other one of a row of files.
    fn standard_tree(&mut self, cluster_bytes: usize) {
        self.mkdir("/images");
        self.put("/images/Windows XP Professional (SP3).vhd", 300_000);
        self.put("/images/MixedCase.Txt", 1234);
        self.put("/images/lower.txt", 10);
        self.put("/images/UPPER.TXT", 512);
        self.put("/images/ünïcödé Näme.img", 4321);
        self.put("/images/empty.bin", 0);
        self.put("/images/one cluster.bin", cluster_bytes);
        self.put("/images/cluster plus one.bin", cluster_bytes + 1);
        self.put("/README.TXT", 777);
        let mut deep = String::new();
        for level in 1..=10 {
            deep.push_str(&format!("/Level {} with a long name", level));
            self.mkdir(&deep);
        }
        self.put(&format!("{}/deep file.dat", deep), 5000);
        self.mkdir("/many");
        for i in 0..60 {
            self.put(
                &format!("/many/File number {:02} with a long name.txt", i),
                100 + i * 37,
            );
        }
        self.mkdir("/frag");
        let hole = cluster_bytes * 2 + 100;
        for i in 0..12 {
            self.put(&format!("/frag/f{:02}", i), hole);
        }
        for i in (1..12).step_by(2) {
            self.delete(&format!("/frag/f{:02}", i));
        }
        self.forget_next_free_hint();
        self.put("/frag/Fragmented Big File.bin", cluster_bytes * 20 + 333);
    }
}

/// Volume geometry from the boot sector, computed here independently of the reader, to turn
/// mshowfat's cluster numbers into sectors.
struct Bpb {
    cluster_sectors: u64,
    data_start: u64,
}

fn bpb(bs: &[u8]) -> Bpb {
    let u16at = |at: usize| u16::from_le_bytes([bs[at], bs[at + 1]]) as u64;
    let u32at = |at: usize| u32::from_le_bytes([bs[at], bs[at + 1], bs[at + 2], bs[at + 3]]) as u64;
    let bytes_per_sector = u16at(11);
    let scale = bytes_per_sector / 512;
    let fat_size = if u16at(22) != 0 { u16at(22) } else { u32at(36) };
    let root_sectors = (u16at(17) * 32).div_ceil(bytes_per_sector);
    Bpb {
        cluster_sectors: bs[13] as u64 * scale,
        data_start: (u16at(14) + bs[16] as u64 * fat_size + root_sectors) * scale,
    }
}

/// The sector runs of `path` per `mshowfat`, cut to the sectors that hold its bytes.
fn mshowfat_runs(target: &str, path: &str, bpb: &Bpb, size: u64) -> ExtentList {
    let out = mtool("mshowfat", &["-i", target, &format!("::{}", path)]);
    let mut list = ExtentList::default();
    let mut remaining = size.div_ceil(512);
    for group in out.split('<').skip(1) {
        let range = group.split('>').next().unwrap();
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u64>().unwrap(),
                b.trim().parse::<u64>().unwrap(),
            ),
            None => {
                let a = range.trim().parse::<u64>().unwrap();
                (a, a)
            }
        };
        let sectors = ((b - a + 1) * bpb.cluster_sectors).min(remaining);
        if sectors > 0 {
            list.push(bpb.data_start + (a - 2) * bpb.cluster_sectors, sectors);
        }
        remaining -= sectors;
    }
    list
}

fn read_image(image: &Path, byte_offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(byte_offset)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

/// Read a file through host-disk extents by reading the image file directly.
fn read_through_extents(image: &Path, extents: &ExtentList, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for e in &extents.extents {
        assert_eq!(
            e.file_sector * 512,
            out.len() as u64,
            "extents out of file order"
        );
        out.extend(read_image(image, e.lba * 512, (e.sectors * 512) as usize));
    }
    assert!(out.len() as u64 >= size);
    out.truncate(size as usize);
    out
}

/// Check every file and directory of `tree` on the volume `vol`, whose first sector is at
/// `volume_lba` of `image`.
fn check_volume<D: vboot::block::BlockDevice>(
    vol: &mut FatVolume<D>,
    tree: &Tree,
    image: &Path,
    volume_lba: u64,
    mtools_target: &str,
) {
    let bs = read_image(image, volume_lba * 512, 512);
    let bpb = bpb(&bs);
    let mut used: Vec<(u64, u64, String)> = Vec::new();
    for (path, bytes) in &tree.files {
        let f = vol
            .open_file(path)
            .unwrap_or_else(|e| panic!("{}: {}", path, e));
        assert_eq!(&f.path, path, "spelling of {}", path);
        assert_eq!(f.size_bytes, bytes.len() as u64, "size of {}", path);
        assert_eq!(
            f.extents.total_sectors(),
            (bytes.len() as u64).div_ceil(512),
            "sectors of {}",
            path
        );
        let expected = mshowfat_runs(mtools_target, path, &bpb, bytes.len() as u64);
        assert_eq!(f.extents, expected, "extents of {} vs mshowfat", path);
        let host = f.extents.to_host(volume_lba);
        assert!(
            read_through_extents(image, &host, f.size_bytes) == *bytes,
            "bytes of {} via extents",
            path
        );
        assert!(
            vol.read_to_vec(path, u64::MAX).unwrap() == *bytes,
            "bytes of {} via read_to_vec",
            path
        );
        for e in &host.extents {
            used.push((e.lba, e.sectors, path.clone()));
        }
    }
    // No sector belongs to two files.
    used.sort();
    for w in used.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "{} and {} share sectors",
            w[0].2,
            w[1].2
        );
    }
    // Every directory lists exactly what was put in it.
    let mut all_dirs = tree.dirs.clone();
    all_dirs.insert("/".to_string());
    for dir in &all_dirs {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{}/", dir)
        };
        let child = |p: &String| -> Option<String> {
            let rest = p.strip_prefix(&prefix)?;
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        };
        let mut want: Vec<(String, FileKind, u64)> = tree
            .files
            .iter()
            .filter_map(|(p, b)| child(p).map(|n| (n, FileKind::File, b.len() as u64)))
            .chain(
                tree.dirs
                    .iter()
                    .filter_map(|p| child(p).map(|n| (n, FileKind::Directory, 0))),
            )
            .collect();
        let mut got: Vec<(String, FileKind, u64)> = vol
            .list_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {}", dir, e))
            .into_iter()
            .map(|e| (e.name, e.kind, e.size_bytes))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "listing of {}", dir);
    }
}

fn fat_type_of(bits: u32) -> FatType {
    match bits {
        12 => FatType::Fat12,
        16 => FatType::Fat16,
        _ => FatType::Fat32,
    }
}

/// mkfs.fat a volume image, fill it, and check it.
fn volume_round_trip(bits: u32, megabytes: u64, extra_mkfs: &[&str]) {
    let img = Temp::image(&format!("fat{}", bits), megabytes << 20);
    let bits_s = bits.to_string();
    let mut args = vec!["-F", bits_s.as_str(), "-n", "VBOOT TEST"];
    args.extend_from_slice(extra_mkfs);
    args.push(img.s());
    run("mkfs.fat", "dosfstools", &args);
    let cluster_bytes = {
        let bs = read_image(&img.0, 0, 512);
        let bps = u16::from_le_bytes([bs[11], bs[12]]) as usize;
        bps * bs[13] as usize
    };
    let mut filler = Filler::new(&img.0, 0);
    filler.standard_tree(cluster_bytes);
    let tree = std::mem::take(&mut filler.tree);

    let mut vol = FatVolume::open(FileDisk::open(&img.0, false).unwrap()).unwrap();
    assert_eq!(vol.fat_type(), fat_type_of(bits));
    assert_eq!(vol.label().as_deref(), Some("VBOOT TEST"));
    assert_eq!(vol.cluster_bytes() as usize, cluster_bytes);
    check_volume(&mut vol, &tree, &img.0, 0, img.s());

    let frag = vol.open_file("/frag/Fragmented Big File.bin").unwrap();
    assert!(
        frag.extents.extents.len() >= 4,
        "the fragmented file should have several runs, has {:?}",
        frag.extents
    );
    // Lookups are case-insensitive, take either separator, and match 8.3 aliases.
    let a = vol
        .open_file("\\IMAGES\\windows xp professional (sp3).VHD")
        .unwrap();
    assert_eq!(a.path, "/images/Windows XP Professional (SP3).vhd");
    assert_eq!(
        vol.open_file("/IMAGES/ÜNÏCÖDÉ NÄME.IMG").unwrap().path,
        "/images/ünïcödé Näme.img"
    );
    let alias = mtool(
        "mdir",
        &["-i", img.s(), "::/images/Windows XP Professional (SP3).vhd"],
    );
    let short = alias
        .lines()
        .find(|l| l.contains("Windows XP"))
        .map(|l| {
            let mut w = l.split_whitespace();
            let (base, ext) = (w.next().unwrap(), w.next().unwrap());
            format!("/images/{}.{}", base, ext)
        })
        .unwrap();
    assert_eq!(
        vol.open_file(&short).unwrap().path,
        a.path,
        "8.3 alias {}",
        short
    );
    assert!(matches!(
        vol.open_file("/images/nope.vhd"),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        vol.open_file("/images"),
        Err(FsError::IsADirectory { .. })
    ));
    assert!(matches!(
        vol.list_dir("/README.TXT"),
        Err(FsError::NotADirectory { .. })
    ));
    run("fsck.fat", "dosfstools", &["-n", img.s()]);
}

#[test]
fn fat12_volume_read_back() {
    volume_round_trip(12, 8, &[]);
}

#[test]
fn fat16_volume_read_back() {
    volume_round_trip(16, 64, &[]);
}

#[test]
fn fat32_volume_read_back() {
    volume_round_trip(32, 48, &[]);
}

#[test]
fn fat32_with_large_clusters_and_2048_byte_sectors() {
    // Logical sectors larger than the 512-byte device sectors: everything must scale.
    volume_round_trip(32, 300, &["-S", "2048", "-s", "1"]);
}

#[test]
fn fat_on_a_partitioned_disk_gives_host_lbas() {
    let disk = Temp::image("disk", 80 << 20);
    // sfdisk reads its script from stdin.
    let script = Temp::path("script");
    std::fs::write(
        &script,
        "label: dos\nstart=2048, size=40960, type=83\nstart=43008, type=c\n",
    )
    .unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("sfdisk -q '{}' < '{}'", disk.s(), script.display()))
        .status()
        .expect("sh");
    let _ = std::fs::remove_file(&script);
    assert!(status.success(), "sfdisk failed (Debian package `fdisk`)");
    let table = read_partitions(&mut FileDisk::open(&disk.0, false).unwrap()).unwrap();
    let p2 = table.find(2).unwrap().clone();
    assert_eq!(p2.start_lba, 43008);
    run(
        "mkfs.fat",
        "dosfstools",
        &[
            "-F",
            "32",
            "--offset",
            "43008",
            "-n",
            "HOSTPART",
            disk.s(),
            &(p2.sectors / 2).to_string(),
        ],
    );
    let mut filler = Filler::new(&disk.0, p2.start_lba * 512);
    let target = filler.target.clone();
    filler.mkdir("/vboot");
    filler.put("/vboot/Guest Disk.vhd", 200_000);
    filler.put("/grub.cfg", 300);
    let tree = std::mem::take(&mut filler.tree);
    drop(filler);

    let window = Window {
        inner: FileDisk::open(&disk.0, false).unwrap(),
        start_lba: p2.start_lba,
        sectors: p2.sectors,
    };
    let mut vol = FatVolume::open(window).unwrap();
    assert_eq!(vol.label().as_deref(), Some("HOSTPART"));
    check_volume(&mut vol, &tree, &disk.0, p2.start_lba, &target);
    let f = vol.open_file("/vboot/guest disk.VHD").unwrap();
    assert!(f
        .extents
        .to_host(p2.start_lba)
        .extents
        .iter()
        .all(|e| e.lba >= 43008));
}

#[test]
fn non_fat_volumes_are_not_recognized() {
    let img = Temp::image("zero", 4 << 20);
    match FatVolume::open(FileDisk::open(&img.0, false).unwrap()) {
        Err(FsError::NotRecognized(reason)) => assert!(reason.contains("jump"), "{}", reason),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata writes: after every scenario fsck.fat finds nothing to fix and mtools reads back
// exactly what vboot wrote.

/// `fsck.fat -n` must find nothing to fix (it exits 1 and says "Leaving filesystem unchanged"
/// when it would change something).
fn assert_fsck_clean(image: &Path, after: &str) {
    let out = Command::new("fsck.fat")
        .args(["-n", image.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run fsck.fat ({}): install the Debian package `dosfstools`",
                e
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("Leaving filesystem unchanged"),
        "fsck.fat after {}:\n{}",
        after,
        text
    );
}

/// The bytes of `path` as mtools reads them.
fn mtools_read(image: &Path, path: &str) -> Vec<u8> {
    let dst = Temp::path("mcopy-out");
    mtool(
        "mcopy",
        &[
            "-n",
            "-i",
            image.to_str().unwrap(),
            &format!("::{}", path),
            dst.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&dst).unwrap();
    let _ = std::fs::remove_file(&dst);
    bytes
}

/// Names in a directory as `mdir -b` lists them (full long names, directories end in '/').
fn mtools_list(image: &Path, dir: &str) -> BTreeSet<String> {
    let out = mtool(
        "mdir",
        &["-b", "-i", image.to_str().unwrap(), &format!("::{}", dir)],
    );
    out.lines()
        .map(|l| l.trim_start_matches("::").to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn mtools_exists(image: &Path, path: &str) -> bool {
    Command::new("mdir")
        .args(["-b", "-i", image.to_str().unwrap(), &format!("::{}", path)])
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("mdir (Debian package `mtools`)")
        .status
        .success()
}

fn open_rw(image: &Path) -> FatVolume<FileDisk> {
    FatVolume::open(FileDisk::open(image, true).unwrap()).unwrap()
}

fn write_scenarios(bits: u32, megabytes: u64, extra_mkfs: &[&str]) {
    let img = Temp::image(&format!("fatw{}", bits), megabytes << 20);
    let bits_s = bits.to_string();
    let mut args = vec!["-F", bits_s.as_str()];
    args.extend_from_slice(extra_mkfs);
    args.push(img.s());
    run("mkfs.fat", "dosfstools", &args);
    let cluster_bytes = {
        let bs = read_image(&img.0, 0, 512);
        u16::from_le_bytes([bs[11], bs[12]]) as u64 * bs[13] as u64
    };
    // Some existing content, and holes, so allocation has to work around things.
    let mut filler = Filler::new(&img.0, 0);
    filler.mkdir("/images");
    filler.put("/images/base.vhd", 50_000);
    for i in 0..6 {
        filler.put(&format!("/images/tmp{}", i), (cluster_bytes * 3) as usize);
    }
    for i in (0..6).step_by(2) {
        filler.delete(&format!("/images/tmp{}", i));
    }
    filler.forget_next_free_hint();
    let tree = std::mem::take(&mut filler.tree);
    drop(filler);
    assert_fsck_clean(&img.0, "mtools filled the volume");
    let now = vboot::fs::fat::FatTimestamp {
        year: 2026,
        month: 11,
        day: 26,
        hour: 14,
        minute: 5,
        second: 8,
    };

    // 1. Create a file with a long name.
    let snap = "/images/Snapshot of base (2026-11-26).vhd";
    {
        let mut vol = open_rw(&img.0);
        vol.set_clock(now);
        let f = vol.create_file(snap).unwrap();
        assert_eq!(f.size_bytes, 0);
        assert!(f.extents.extents.is_empty());
        assert!(matches!(
            vol.create_file("/images/SNAPSHOT OF BASE (2026-11-26).VHD"),
            Err(FsError::Unsupported(_))
        ));
        assert!(matches!(
            vol.create_file("/nodir/x"),
            Err(FsError::NotFound { .. })
        ));
        assert!(vol.create_file("/images/bad:name").is_err());
    }
    assert_fsck_clean(&img.0, "create");
    assert!(
        mtools_list(&img.0, "/images").contains(snap),
        "{:?}",
        mtools_list(&img.0, "/images")
    );
    assert_eq!(mtools_read(&img.0, snap), Vec::<u8>::new());

    // 2. Grow it (zero-filled), write through the extents, and grow again without zeroing.
    let first_bytes = content(1000, 300_000);
    {
        let mut vol = open_rw(&img.0);
        let f = vol.set_len(snap, 300_000, true).unwrap();
        assert_eq!(f.size_bytes, 300_000);
        assert_eq!(vol.read_to_vec(snap, u64::MAX).unwrap(), vec![0u8; 300_000]);
        vol.write_file(&f, 0, &first_bytes).unwrap();
        assert!(
            vol.write_file(&f, 299_999, &[1, 2]).is_err(),
            "write past the end"
        );
    }
    assert_fsck_clean(&img.0, "grow to 300000");
    assert!(mtools_read(&img.0, snap) == first_bytes);
    let big = content(1001, 1_000_003);
    {
        let mut vol = open_rw(&img.0);
        let f = vol.set_len(snap, big.len() as u64, false).unwrap();
        // The new clusters went where there was room, and the extents say so.
        let expected = mshowfat_runs(
            img.s(),
            snap,
            &bpb(&read_image(&img.0, 0, 512)),
            big.len() as u64,
        );
        assert_eq!(f.extents, expected);
        assert!(
            read_through_extents(&img.0, &f.extents, 300_000) == first_bytes,
            "old bytes kept"
        );
        vol.write_file(&f, 0, &big).unwrap();
    }
    assert_fsck_clean(&img.0, "grow to 1000003");
    assert!(mtools_read(&img.0, snap) == big);

    // 3. Grow by less than a cluster with zero fill: the tail of the last cluster is zeroed.
    {
        let mut vol = open_rw(&img.0);
        let f = vol.set_len(snap, big.len() as u64 + 10, true).unwrap();
        let back = vol.read_to_vec(snap, u64::MAX).unwrap();
        assert!(back[..big.len()] == big[..]);
        assert_eq!(&back[big.len()..], &[0u8; 10]);
        assert_eq!(
            f.extents.total_sectors(),
            (big.len() as u64 + 10).div_ceil(512)
        );
    }
    assert_fsck_clean(&img.0, "grow inside the last cluster");

    // 4. Truncate, then truncate to zero.
    {
        let mut vol = open_rw(&img.0);
        let f = vol.set_len(snap, 5000, false).unwrap();
        assert_eq!(f.extents.total_sectors(), 10);
    }
    assert_fsck_clean(&img.0, "truncate to 5000");
    assert!(mtools_read(&img.0, snap) == big[..5000]);
    {
        let mut vol = open_rw(&img.0);
        vol.set_len(snap, 0, false).unwrap();
    }
    assert_fsck_clean(&img.0, "truncate to 0");
    assert_eq!(mtools_read(&img.0, snap), Vec::<u8>::new());

    // 5. Directories: nested creation, enough long names to need more directory clusters.
    let many_dir = "/VMs/Windows XP/Snapshots";
    {
        let mut vol = open_rw(&img.0);
        vol.set_clock(now);
        vol.create_dir("/VMs").unwrap();
        vol.create_dir("/VMs/Windows XP").unwrap();
        vol.create_dir(many_dir).unwrap();
        for i in 0..40 {
            let p = format!("{}/Snapshot number {:02} of the XP disk.vhd", many_dir, i);
            vol.create_file(&p).unwrap();
            let f = vol.set_len(&p, 700 + i * 13, false).unwrap();
            vol.write_file(&f, 0, &content(i, (700 + i * 13) as usize))
                .unwrap();
        }
    }
    assert_fsck_clean(&img.0, "create_dir and 40 files");
    let listed = mtools_list(&img.0, many_dir);
    assert_eq!(listed.len(), 40);
    for i in 0..40u64 {
        let p = format!("{}/Snapshot number {:02} of the XP disk.vhd", many_dir, i);
        assert!(listed.contains(&p), "{} missing from {:?}", p, listed);
        assert!(mtools_read(&img.0, &p) == content(i, (700 + i * 13) as usize));
    }

    // 6. Rename: in place with a new long name, a change of case, and moves across directories
    // (a directory's `..` must follow it: fsck.fat checks that).
    let moved = "/VMs/Windows XP/xp-child.vhd";
    {
        let mut vol = open_rw(&img.0);
        let f = vol.set_len(snap, 4096, false).unwrap();
        vol.write_file(&f, 0, &big[..4096]).unwrap();
        vol.rename(snap, "/images/renamed snapshot.vhd").unwrap();
        vol.rename(
            "/images/renamed snapshot.vhd",
            "/images/RENAMED Snapshot.vhd",
        )
        .unwrap();
        vol.rename("/images/renamed snapshot.vhd", moved).unwrap();
        vol.rename("/VMs/Windows XP/Snapshots", "/images/Old Snapshots")
            .unwrap();
        assert!(
            vol.rename("/VMs", "/VMs/Windows XP/inside").is_err(),
            "a directory into itself"
        );
        assert!(
            vol.rename("/images/base.vhd", "/images/tmp1").is_err(),
            "onto an existing name"
        );
    }
    assert_fsck_clean(&img.0, "renames");
    assert!(!mtools_exists(&img.0, snap));
    assert!(mtools_read(&img.0, moved) == big[..4096]);
    assert!(mtools_list(&img.0, "/VMs/Windows XP").contains(moved));
    assert_eq!(mtools_list(&img.0, "/images/Old Snapshots").len(), 40);
    {
        let mut vol = open_rw(&img.0);
        assert_eq!(
            vol.open_file("/vms/windows xp/XP-CHILD.VHD").unwrap().path,
            moved
        );
        vol.rename("/images/RENAMED Snapshot.vhd", "/x")
            .unwrap_err();
    }

    // 7. Delete files and (empty) directories.
    {
        let mut vol = open_rw(&img.0);
        assert!(vol.delete("/images/Old Snapshots").is_err(), "not empty");
        let names: Vec<String> = vol
            .list_dir("/images/Old Snapshots")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        for n in names {
            vol.delete(&format!("/images/Old Snapshots/{}", n)).unwrap();
        }
        vol.delete("/images/Old Snapshots").unwrap();
        vol.delete(moved).unwrap();
        assert!(matches!(
            vol.open_file(moved),
            Err(FsError::NotFound { .. })
        ));
    }
    assert_fsck_clean(&img.0, "deletes");
    assert!(!mtools_exists(&img.0, "/images/Old Snapshots"));
    assert!(!mtools_exists(&img.0, moved));
    // What mtools put there is untouched.
    for (p, bytes) in &tree.files {
        assert!(mtools_read(&img.0, p) == *bytes, "{} changed", p);
    }

    // 8. Asking for more than the free space fails cleanly.
    {
        let mut vol = open_rw(&img.0);
        vol.create_file("/too big.bin").unwrap();
        let free_bytes = (megabytes << 20) + 1;
        let r = vol.set_len("/too big.bin", free_bytes.min(0xFFFF_FFFF), false);
        assert!(
            matches!(r, Err(FsError::NoSpace { .. })),
            "{:?}",
            r.map(|f| f.size_bytes)
        );
    }
    assert_fsck_clean(&img.0, "a failed grow");
}

#[test]
fn fat12_metadata_writes() {
    write_scenarios(12, 8, &[]);
}

#[test]
fn fat16_metadata_writes() {
    write_scenarios(16, 24, &["-s", "1"]);
}

#[test]
fn fat32_metadata_writes() {
    write_scenarios(32, 48, &[]);
}
