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
