//! Host filesystem readers (exFAT, NTFS, ext2/3/4) against volumes built by the real tools.
//!
//! Oracle: a source directory tree of known files is put on a fresh volume by the filesystem's
//! own tools; every file is then opened through vboot, read back through its extent list
//! (both with `read_file` and by reading the image at the listed sectors directly) and compared
//! with its source. Mutation tests flip bytes in the on-disk metadata and require an error or a
//! correct answer, never a panic or a hang.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use vboot::block::{BlockDevice, FileDisk, MemDisk};
use vboot::fs::exfat::ExfatVolume;
use vboot::fs::ext::ExtVolume;
use vboot::fs::ntfs::NtfsVolume;
use vboot::fs::{DirEntry, File, FileKind, FsError};
use vboot_tests::{require_tool as need, sbin, sh as run, TempDir};

// ---------------------------------------------------------------- harness


/// Deterministic pseudo-random bytes (xorshift), so a mismatch is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn make_image(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

/// The source tree every filesystem gets: small and large files, an empty file, sizes that
/// end mid-sector, a deep directory chain, long and mixed-case names, and a directory with
/// many entries.
fn make_source_tree(root: &Path, many: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let w = |p: PathBuf, data: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w(root.join("boot/grub/grub.cfg"), b"set timeout=5\nmenuentry 'Win' {\n  vboot /VMs/win.vhd\n}\n");
    w(root.join("empty.txt"), b"");
    w(root.join("one.bin"), &rng.bytes(1));
    w(root.join("odd-size.bin"), &rng.bytes(5 * 512 + 77));
    w(root.join("VMs/Disk Image With A Rather Long Name (copy 2).vhd"), &rng.bytes(3 << 20));
    w(root.join("VMs/big.img"), &rng.bytes((9 << 20) + 123));
    let mut deep = root.to_path_buf();
    for i in 0..10 {
        deep = deep.join(format!("level{}", i));
    }
    w(deep.join("deep.txt"), b"at the bottom\n");
    for i in 0..many {
        w(root.join(format!("many/file-{:04}.txt", i)), format!("file number {}\n", i).as_bytes());
    }
}

/// Every regular file under `root` as volume paths, plus every directory.
fn walk(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = vec![String::from("/")];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = format!("/{}", e.path().strip_prefix(root).unwrap().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                dirs.push(rel);
                stack.push(e.path());
            } else {
                files.push(rel);
            }
        }
    }
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// The operations every reader offers, so the oracle and the mutation loops are shared.
trait Volume {
    fn open_file(&mut self, path: &str) -> Result<File, FsError>;
    fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError>;
    fn read_file(&mut self, file: &File, offset: u64, buf: &mut [u8]) -> Result<usize, FsError>;
    fn read_to_vec(&mut self, path: &str, max: u64) -> Result<Vec<u8>, FsError>;
}

macro_rules! impl_volume {
    ($t:ident) => {
        impl<D: BlockDevice> Volume for $t<D> {
            fn open_file(&mut self, path: &str) -> Result<File, FsError> {
                $t::open_file(self, path)
            }
            fn list_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
                $t::list_dir(self, path)
            }
            fn read_file(&mut self, file: &File, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
                $t::read_file(self, file, offset, buf)
            }
            fn read_to_vec(&mut self, path: &str, max: u64) -> Result<Vec<u8>, FsError> {
                $t::read_to_vec(self, path, max)
            }
        }
    };
}
impl_volume!(ExfatVolume);
impl_volume!(ExtVolume);
impl_volume!(NtfsVolume);

/// Read a file's bytes straight from the image at the sectors its extent list names.
fn bytes_at_extents(image: &[u8], file: &File) -> Vec<u8> {
    let mut out = Vec::new();
    for e in &file.extents.extents {
        assert_eq!(e.file_sector * 512, out.len() as u64, "{}: extents out of order", file.path);
        let start = (e.lba * 512) as usize;
        out.extend_from_slice(&image[start..start + (e.sectors * 512) as usize]);
    }
    assert!(out.len() as u64 >= file.size_bytes, "{}: extents cover less than the file", file.path);
    assert!(
        (out.len() as u64) < file.size_bytes + 512,
        "{}: extents cover more than the file's sectors",
        file.path
    );
    out.truncate(file.size_bytes as usize);
    out
}

/// Compare every file and directory listing of the volume with the source tree.
fn check_against_source(vol: &mut dyn Volume, image_path: &Path, src: &Path) {
    check_against_source_with(vol, image_path, src, false, &[])
}

/// `resident_ok`: small files may be stored inside metadata (NTFS, ext4 inline_data) and then
/// have no extents;
/// `open_file` must say so, and `read_to_vec` must still return them. `extra`: names the
/// volume has beyond the source tree (checked by the caller).
fn check_against_source_with(vol: &mut dyn Volume, image_path: &Path, src: &Path, resident_ok: bool, extra: &[&str]) {
    let image = std::fs::read(image_path).unwrap();
    let (files, dirs) = walk(src);
    for path in &files {
        let want = std::fs::read(src.join(&path[1..])).unwrap();
        if resident_ok && want.len() < 1024 {
            match vol.open_file(path) {
                Err(FsError::Unsupported(m)) => {
                    assert!((m.contains("resident") || m.contains("inline")) && m.contains(path.as_str()), "{}", m)
                }
                Err(e) => panic!("open_file({}): {}", path, e),
                Ok(f) => assert!(bytes_at_extents(&image, &f) == want, "{}: bytes at the extents differ", path),
            }
            let v = vol.read_to_vec(path, 1 << 30).unwrap_or_else(|e| panic!("read_to_vec({}): {}", path, e));
            assert!(v == want, "{}: read_to_vec differs", path);
            let v = vol.read_to_vec(&path.to_uppercase(), 1 << 30).unwrap();
            assert!(v == want, "{}: read_to_vec of the upper-case path differs", path);
            continue;
        }
        let f = vol.open_file(path).unwrap_or_else(|e| panic!("open_file({}): {}", path, e));
        assert_eq!(f.size_bytes, want.len() as u64, "{}: size", path);
        assert_eq!(f.path, *path, "the returned path spells the name as stored");
        assert!(bytes_at_extents(&image, &f) == want, "{}: bytes at the extents differ from the source", path);
        let mut got = vec![0u8; want.len()];
        let n = vol.read_file(&f, 0, &mut got).unwrap();
        assert_eq!(n, want.len());
        assert!(got == want, "{}: read_file differs", path);
        // Unaligned reads in the middle, and past the end.
        if want.len() > 1000 {
            let mut mid = vec![0u8; 777];
            let n = vol.read_file(&f, 333, &mut mid).unwrap();
            assert_eq!(&mid[..n], &want[333..333 + n]);
        }
        let mut past = [0u8; 16];
        assert_eq!(vol.read_file(&f, want.len() as u64, &mut past).unwrap(), 0);
        let v = vol.read_to_vec(path, 1 << 30).unwrap();
        assert!(v == want, "{}: read_to_vec differs", path);
        // Lookups are case-insensitive.
        let upper = path.to_uppercase();
        let g = vol.open_file(&upper).unwrap_or_else(|e| panic!("open_file({}): {}", upper, e));
        assert_eq!(g.extents, f.extents);
        assert_eq!(g.path, *path);
    }
    for dir in &dirs {
        let listed: BTreeSet<(String, bool)> = vol
            .list_dir(dir)
            .unwrap_or_else(|e| panic!("list_dir({}): {}", dir, e))
            .into_iter()
            .filter(|e| e.name != "lost+found" && e.name != "." && e.name != ".." && !extra.contains(&e.name.as_str()))
            .map(|e| (e.name, e.kind == FileKind::Directory))
            .collect();
        let want: BTreeSet<(String, bool)> = std::fs::read_dir(src.join(dir.trim_start_matches('/')))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), e.file_type().unwrap().is_dir())
            })
            .collect();
        assert_eq!(listed, want, "listing of {}", dir);
    }
    assert!(matches!(vol.open_file("/no/such/file"), Err(FsError::NotFound { .. })));
    assert!(matches!(vol.open_file("/VMs"), Err(FsError::IsADirectory { .. })));
    let a_file = &files[0];
    assert!(matches!(vol.list_dir(a_file), Err(FsError::NotADirectory { .. })));
    assert!(vol.open_file(&format!("{}/x", a_file)).is_err());
}

/// Walk a (possibly damaged) volume: list every directory, read every file. Only panics and
/// hangs matter here; errors are fine.
fn exercise(vol: &mut dyn Volume) {
    let mut stack = vec![(String::from("/"), 0)];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > 200 || depth > 12 {
            break;
        }
        let Ok(entries) = vol.list_dir(&dir) else { continue };
        for e in entries.into_iter().take(50) {
            if e.name == "." || e.name == ".." || e.name.contains('/') || e.name.contains('\\') {
                continue;
            }
            let p = format!("{}/{}", dir.trim_end_matches('/'), e.name);
            match e.kind {
                FileKind::Directory => stack.push((p, depth + 1)),
                FileKind::File => {
                    let _ = vol.read_to_vec(&p, 16 << 20);
                    if let Ok(f) = vol.open_file(&p) {
                        let mut buf = vec![0u8; 4096];
                        let _ = vol.read_file(&f, 0, &mut buf);
                    }
                }
            }
        }
    }
    let _ = vol.open_file("/VMs/big.img");
    let _ = vol.read_to_vec("/boot/grub/grub.cfg", 1 << 20);
}

/// Run `rounds` mutations of `image` under a watchdog. `mutate` changes a copy; `one_round`
/// opens and uses a volume over it.
fn mutation_loop(
    name: &str,
    image: Vec<u8>,
    rounds: u32,
    mutate: fn(&mut Vec<u8>, &mut Rng),
    one_round: fn(MemDisk),
) {
    let (tx, rx) = mpsc::channel::<u32>();
    let name_owned = name.to_string();
    let worker = std::thread::spawn(move || {
        let mut rng = Rng(0xDEAD_BEEF_1234_5678);
        for round in 0..rounds {
            let mut img = image.clone();
            mutate(&mut img, &mut rng);
            one_round(MemDisk::from_bytes(img));
            tx.send(round).unwrap();
        }
        drop(name_owned);
    });
    let mut last = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(r) => last = Some(r),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{}: mutation round after {:?} hangs", name, last)
            }
        }
    }
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
    assert_eq!(last, Some(rounds - 1), "{}: not every round ran", name);
}

/// Flip 1..8 random bytes inside `ranges` (byte ranges of the image).
fn flip_bytes(img: &mut [u8], rng: &mut Rng, ranges: &[(usize, usize)]) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        let (a, b) = ranges[rng.below(ranges.len() as u64) as usize];
        let b = b.min(img.len());
        if b <= a {
            continue;
        }
        let i = a + rng.below((b - a) as u64) as usize;
        img[i] = match rng.below(4) {
            0 => 0,
            1 => 0xFF,
            2 => img[i] ^ (1 << rng.below(8)),
            _ => rng.next() as u8,
        };
    }
}

// ---------------------------------------------------------------- exFAT

/// Fill an exFAT image through exfat-fuse on a loop device (the only writer that needs no
/// kernel exFAT driver), making one file fragmented on purpose.
fn build_exfat(dir: &Path, src: &Path, size_bytes: u64, cluster: Option<&str>) -> PathBuf {
    need("mkfs.exfat", "exfatprogs");
    need("fsck.exfat", "exfatprogs");
    need("mount.exfat-fuse", "exfat-fuse");
    need("losetup", "mount");
    let img = dir.join("exfat.img");
    make_image(&img, size_bytes);
    let mut mk = sbin("mkfs.exfat");
    if let Some(c) = cluster {
        mk.args(["-c", c]);
    }
    run(mk.arg(&img));
    let loopdev = run(sbin("losetup").args(["-f", "--show"]).arg(&img)).trim().to_string();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new(sbin_path("mount.exfat-fuse")).arg(&loopdev).arg(&mnt).status();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(mounted.as_ref().map(|s| s.success()).unwrap_or(false), "mount.exfat-fuse failed");
        // Interleave two files so one of them ends up in several cluster runs.
        let mut rng = Rng(77);
        let frag = mnt.join("VMs");
        std::fs::create_dir_all(&frag).unwrap();
        for i in 0..6 {
            std::fs::write(mnt.join(format!("filler{}.tmp", i)), rng.bytes(40_000)).unwrap();
        }
        for i in (0..6).step_by(2) {
            std::fs::remove_file(mnt.join(format!("filler{}.tmp", i))).unwrap();
        }
        run(Command::new("cp").arg("-r").arg(format!("{}/.", src.display())).arg(&mnt));
        // Two files grown in turns: each ends up in many runs.
        {
            use std::io::Write;
            let mut a = std::fs::File::create(mnt.join("VMs/frag-a.bin")).unwrap();
            let mut b = std::fs::File::create(mnt.join("VMs/frag-b.bin")).unwrap();
            for _ in 0..24 {
                a.write_all(&rng.bytes(65536 + 1000)).unwrap();
                a.sync_all().unwrap();
                b.write_all(&rng.bytes(70000)).unwrap();
                b.sync_all().unwrap();
            }
        }
        for name in ["VMs/frag-a.bin", "VMs/frag-b.bin"] {
            std::fs::copy(mnt.join(name), src.join(name)).unwrap();
        }
        for i in (1..6).step_by(2) {
            let name = format!("filler{}.tmp", i);
            std::fs::copy(mnt.join(&name), src.join(&name)).unwrap();
        }
    }));
    let _ = Command::new("fusermount").arg("-u").arg(&mnt).status();
    let _ = Command::new("umount").arg(&mnt).stderr(std::process::Stdio::null()).status();
    run(sbin("losetup").arg("-d").arg(&loopdev));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    run(sbin("fsck.exfat").arg("-n").arg(&img));
    img
}

fn sbin_path(tool: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(tool);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(tool)
}

fn exfat_source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    make_source_tree(&src, 300);
    src
}

#[test]
fn exfat_reads_every_file_like_the_source() {
    for (size, cluster) in [(64u64 << 20, None), (48 << 20, Some("512")), (80 << 20, Some("64K"))] {
        let t = TempDir::new("exfat");
        let src = exfat_source(&t.path);
        let img = build_exfat(&t.path, &src, size, cluster);
        let mut vol = ExfatVolume::open(FileDisk::open(&img, false).unwrap()).unwrap();
        check_against_source(&mut vol, &img, &src);
        let runs = vol.open_file("/VMs/frag-a.bin").unwrap().extents.extents.len();
        assert!(runs > 4, "frag-a.bin should be fragmented, is in {} runs", runs);
    }
}

#[test]
fn exfat_rejects_a_bad_boot_checksum_and_foreign_volumes() {
    let t = TempDir::new("exfat-bad");
    need("mkfs.exfat", "exfatprogs");
    let img = &t.path.join("x.img");
    make_image(&img, 16 << 20);
    run(sbin("mkfs.exfat").arg(&img));
    let mut bytes = std::fs::read(&img).unwrap();
    assert!(ExfatVolume::open(MemDisk::from_bytes(bytes.clone())).is_ok());
    bytes[100] ^= 1; // VolumeSerialNumber: covered by the checksum
    match ExfatVolume::open(MemDisk::from_bytes(bytes.clone())) {
        Err(FsError::Corrupt(m)) => assert!(m.contains("checksum"), "{}", m),
        Err(e) => panic!("unexpected error {}", e),
        Ok(_) => panic!("a bad boot checksum was accepted"),
    }
    bytes[100] ^= 1;
    bytes[106] ^= 2; // VolumeFlags: excluded from the checksum
    assert!(ExfatVolume::open(MemDisk::from_bytes(bytes)).is_ok());
}

fn exfat_mutate(img: &mut Vec<u8>, rng: &mut Rng) {
    // Metadata lives in the boot region, the FAT, and the first clusters of the heap (bitmap,
    // up-case table, root and the first directories).
    let heap = u32::from_le_bytes(img[88..92].try_into().unwrap()) as usize * 512;
    flip_bytes(img, rng, &[(0, 512), (24 * 512, heap), (heap, heap + 512 * 1024)]);
    // Half the time keep the boot checksum valid so geometry damage reaches the deeper code.
    if rng.below(2) == 0 {
        let sum = vboot::fs::exfat::boot_checksum(&img[..11 * 512]);
        for k in 0..128 {
            img[11 * 512 + 4 * k..11 * 512 + 4 * k + 4].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

#[test]
fn exfat_survives_mutations() {
    let t = TempDir::new("exfat-mut");
    let src = &t.path.join("src");
    make_source_tree(&src, 40);
    let img = build_exfat(&t.path, &src, 24 << 20, Some("4K"));
    let bytes = std::fs::read(&img).unwrap();
    mutation_loop("exFAT", bytes.clone(), 400, exfat_mutate, |d| {
        if let Ok(mut v) = ExfatVolume::open(d) {
            exercise(&mut v);
        }
    });
    // Metadata writes on a damaged volume: errors, never panics or hangs.
    mutation_loop("exFAT writes", bytes, 200, exfat_mutate, |d| {
        if let Ok(mut v) = ExfatVolume::open(d) {
            let _ = v.create_file("/VMs/new snapshot.vhd", 50_000);
            let _ = v.grow_file("/VMs/new snapshot.vhd", 90_000);
            let _ = v.grow_file("/boot/grub/grub.cfg", 9_000);
            let _ = v.truncate_file("/VMs/big.img", 10_000);
            let _ = v.delete_file("/one.bin");
            let _ = v.rename("/odd-size.bin", "/VMs/odd renamed.bin");
            for i in 0..30 {
                let _ = v.create_file(&format!("/many/another file {}", i), 100);
            }
            exercise(&mut v);
        }
    });
}

// ---------------------------------------------------------------- ext2/3/4

/// Build an ext volume from `src` with `mkfs` options, then fragment a file on purpose: remove
/// every other filler file and write a large file into the gaps with debugfs, which allocates
/// from the free blocks in order (enough extents for a tree of depth 1). Directories get
/// htree indexes from `e2fsck -D`.
fn build_ext(dir: &Path, src: &Path, size_bytes: u64, mkfs_args: &[&str]) -> PathBuf {
    need("mkfs.ext4", "e2fsprogs");
    need("debugfs", "e2fsprogs");
    need("e2fsck", "e2fsprogs");
    let mut rng = Rng(4242);
    for i in 0..40 {
        std::fs::write(src.join(format!("filler{:02}.tmp", i)), rng.bytes(3000 + i * 700)).unwrap();
    }
    let img = dir.join("ext.img");
    make_image(&img, size_bytes);
    run(sbin("mkfs.ext4").args(["-q", "-F"]).args(mkfs_args).arg("-d").arg(src).arg(&img));
    let frag_src = dir.join("frag.bin");
    std::fs::write(&frag_src, rng.bytes(150_000)).unwrap();
    let mut cmds = String::new();
    for i in (0..40).step_by(2) {
        let name = format!("filler{:02}.tmp", i);
        cmds.push_str(&format!("rm /{}\n", name));
        std::fs::remove_file(src.join(&name)).unwrap();
    }
    cmds.push_str(&format!("write {} /VMs/frag.bin\n", frag_src.display()));
    std::fs::copy(&frag_src, src.join("VMs/frag.bin")).unwrap();
    let cmd_file = dir.join("debugfs.cmd");
    std::fs::write(&cmd_file, cmds).unwrap();
    run(sbin("debugfs").arg("-w").arg("-f").arg(&cmd_file).arg(&img));
    // -D rebuilds (and indexes) directories; exit status 1 means "changed", which is expected.
    let st = sbin("e2fsck").args(["-f", "-y", "-D"]).arg(&img).output().unwrap();
    assert!(st.status.code().map_or(false, |c| c <= 1), "e2fsck -fyD: {}", String::from_utf8_lossy(&st.stdout));
    run(sbin("e2fsck").args(["-f", "-n"]).arg(&img));
    img
}

fn ext_case(tag: &str, size_bytes: u64, mkfs_args: &[&str]) {
    ext_case_with(tag, size_bytes, mkfs_args, false)
}

fn ext_case_with(tag: &str, size_bytes: u64, mkfs_args: &[&str], inline: bool) {
    let t = TempDir::new(tag);
    let src = &t.path.join("src");
    make_source_tree(&src, 600);
    let img = build_ext(&t.path, &src, size_bytes, mkfs_args);
    let mut vol = ExtVolume::open(FileDisk::open(&img, false).unwrap()).unwrap();
    check_against_source_with(&mut vol, &img, &src, inline, &[]);
    let runs = vol.open_file("/VMs/frag.bin").unwrap().extents.extents.len();
    assert!(runs > 4, "{}: frag.bin should be fragmented, is in {} runs", tag, runs);
    let htree = run(sbin("debugfs").arg("-R").arg("htree /many").arg(&img).stderr(std::process::Stdio::null()));
    assert!(htree.contains("Root node dump"), "{}: /many has no htree index:\n{}", tag, htree);
    assert!(matches!(vol.create_file("/new.img", 4096), Err(FsError::ReadOnly(_))));
    assert!(matches!(vol.grow_file("/VMs/big.img", 1 << 30), Err(FsError::ReadOnly(_))));
}

#[test]
fn ext4_default_features() {
    // 64bit, metadata_csum, flex_bg, extents, 4 KiB blocks.
    ext_case("ext4", 96 << 20, &["-b", "4096", "-O", "64bit,metadata_csum"]);
}

#[test]
fn ext4_without_csum_or_64bit_1k_blocks() {
    ext_case("ext4-small", 64 << 20, &["-b", "1024", "-O", "^metadata_csum,^64bit"]);
}

#[test]
fn ext4_without_extents_2k_blocks() {
    ext_case("ext4-noext", 64 << 20, &["-b", "2048", "-O", "^extent,^64bit"]);
}

#[test]
fn ext4_inline_data() {
    // Small files and directories live inside their inodes (i_block plus system.data).
    ext_case_with("ext4-inline", 64 << 20, &["-b", "4096", "-I", "512", "-O", "inline_data"], true);
    let t = TempDir::new("ext-inline-check");
    let src = &t.path.join("src");
    make_source_tree(&src, 3);
    let img = &t.path.join("i.img");
    make_image(&img, 32 << 20);
    run(sbin("mkfs.ext4").args(["-q", "-F", "-I", "512", "-O", "inline_data", "-d"]).arg(&src).arg(&img));
    let stat = run(sbin("debugfs").arg("-R").arg("stat /boot/grub/grub.cfg").arg(&img).stderr(std::process::Stdio::null()));
    assert!(stat.contains("Size of inline data"), "grub.cfg is not inline:\n{}", stat);
    let deepest = "/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9";
    let stat = run(sbin("debugfs").arg("-R").arg(format!("stat {}", deepest)).arg(&img).stderr(std::process::Stdio::null()));
    assert!(stat.contains("Size of inline data"), "{} is not inline:\n{}", deepest, stat);
}

#[test]
fn ext4_meta_bg() {
    // Small groups and few inodes per group spread the files' inodes over more than one meta
    // group (16 descriptors per 1 KiB block), so descriptors are found in both places.
    ext_case("ext4-metabg", 48 << 20, &["-b", "1024", "-g", "1024", "-N", "1024", "-O", "meta_bg,^resize_inode"]);
}

#[test]
fn ext2_and_ext3() {
    ext_case("ext2", 64 << 20, &["-t", "ext2", "-b", "1024"]);
    ext_case("ext3", 64 << 20, &["-t", "ext3", "-b", "4096"]);
}

#[test]
fn ext4_sparse_and_unwritten_files_read_as_zeros_and_are_refused() {
    need("mkfs.ext4", "e2fsprogs");
    need("debugfs", "e2fsprogs");
    let t = TempDir::new("ext-sparse");
    let src = &t.path.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut sparse = vec![0u8; 1 << 20];
    sparse[600_000..600_005].copy_from_slice(b"hello");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("sparse.img")).unwrap();
        f.set_len(1 << 20).unwrap();
        f.seek(SeekFrom::Start(600_000)).unwrap();
        f.write_all(b"hello").unwrap();
    }
    std::fs::write(src.join("prealloc.img"), b"").unwrap();
    let img = &t.path.join("ext.img");
    make_image(&img, 32 << 20);
    run(sbin("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&src).arg(&img));
    let cmd = &t.path.join("cmd");
    // Unwritten blocks over old data: fill the blocks first, so zeros can only come from the
    // unwritten flag.
    std::fs::write(&cmd, "fallocate /prealloc.img 0 63\nsif /prealloc.img size 200000\n").unwrap();
    run(sbin("debugfs").arg("-w").arg("-f").arg(&cmd).arg(&img));
    let extents = run(sbin("debugfs").arg("-R").arg("stat /prealloc.img").arg(&img).stderr(std::process::Stdio::null()));
    assert!(extents.contains("[u]"), "debugfs did not make unwritten extents:\n{}", extents);
    let mut bytes = std::fs::read(&img).unwrap();
    // Scribble over the unwritten blocks on disk: they must still read as zeros.
    let mut vol = ExtVolume::open(MemDisk::from_bytes(bytes.clone())).unwrap();
    let block_bytes = vol.block_bytes() as usize;
    let first_block: usize = extents
        .split("):")
        .nth(1)
        .and_then(|s| s.split('-').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("an extent in debugfs stat output");
    for b in &mut bytes[first_block * block_bytes..(first_block + 64) * block_bytes] {
        *b = 0xA5;
    }
    vol = ExtVolume::open(MemDisk::from_bytes(bytes)).unwrap();
    assert_eq!(vol.read_to_vec("/sparse.img", 1 << 30).unwrap(), sparse);
    assert_eq!(vol.read_to_vec("/prealloc.img", 1 << 30).unwrap(), vec![0u8; 200_000]);
    match vol.open_file("/sparse.img") {
        Err(FsError::Unsupported(m)) => assert!(m.contains("sparse.img") && m.contains("sparse"), "{}", m),
        other => panic!("a sparse file was accepted as an image: {:?}", other.map(|f| f.extents)),
    }
    match vol.open_file("/prealloc.img") {
        Err(FsError::Unsupported(m)) => assert!(m.contains("prealloc.img") && m.contains("unwritten"), "{}", m),
        other => panic!("an unwritten file was accepted as an image: {:?}", other.map(|f| f.extents)),
    }
}

fn ext_mutate(img: &mut Vec<u8>, rng: &mut Rng) {
    // Superblock, group descriptors, bitmaps, inode tables and the first directory blocks all
    // sit in the first megabytes of a small volume with flex_bg.
    flip_bytes(img, rng, &[(1024, 2048), (2048, 64 * 1024), (64 * 1024, 3 << 20)]);
}

#[test]
fn ext_survives_mutations() {
    for (tag, args) in [("ext4", &["-b", "1024"][..]), ("ext2", &["-t", "ext2", "-b", "1024"][..])] {
        let t = TempDir::new(tag);
        let src = &t.path.join("src");
        make_source_tree(&src, 60);
        let img = build_ext(&t.path, &src, 32 << 20, args);
        let bytes = std::fs::read(&img).unwrap();
        mutation_loop(tag, bytes, 300, ext_mutate, |d| {
            if let Ok(mut v) = ExtVolume::open(d) {
                exercise(&mut v);
            }
        });
    }
}

// ---------------------------------------------------------------- NTFS

struct FuseMount {
    dir: PathBuf,
}

impl FuseMount {
    fn ntfs(img: &Path, dir: &Path, opts: &str) -> FuseMount {
        need("ntfs-3g", "ntfs-3g");
        need("fusermount", "fuse3");
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new(sbin_path("ntfs-3g")).args(["-o", opts]).arg(img).arg(dir));
        FuseMount { dir: dir.to_path_buf() }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.dir).status();
    }
}

/// Build an NTFS volume from `src` through an ntfs-3g mount: the source tree, a file written
/// into the holes left by deleting every other small file (so its runs overflow the MFT
/// record into an attribute list), an 8.3 name, a compressed file and a sparse file.
fn build_ntfs(dir: &Path, src: &Path, size_bytes: u64, mkntfs_args: &[&str]) -> PathBuf {
    need("mkntfs", "ntfs-3g");
    need("ntfsinfo", "ntfs-3g");
    need("setfattr", "attr");
    let img = dir.join("ntfs.img");
    make_image(&img, size_bytes);
    run(sbin("mkntfs").args(["-F", "-Q"]).args(mkntfs_args).arg(&img));
    {
        let m = FuseMount::ntfs(&img, &dir.join("mnt"), "compression");
        let mnt = &m.dir;
        run(Command::new("cp").arg("-r").arg(format!("{}/.", src.display())).arg(mnt));
        std::fs::create_dir_all(mnt.join("holes")).unwrap();
        let mut rng = Rng(99);
        for i in 0..800 {
            std::fs::write(mnt.join(format!("holes/h{:03}", i)), rng.bytes(4096)).unwrap();
        }
        run(Command::new(sbin_path("setfattr"))
            .args(["-n", "system.ntfs_dos_name", "-v", "DISKIM~1.VHD"])
            .arg(mnt.join("VMs/Disk Image With A Rather Long Name (copy 2).vhd")));
        // Files created in a directory with the compressed attribute are compressed.
        std::fs::create_dir_all(mnt.join("special/comp")).unwrap();
        run(Command::new(sbin_path("setfattr"))
            .args(["-h", "-v", "0x00000810", "-n", "system.ntfs_attrib_be"])
            .arg(mnt.join("special/comp")));
        std::fs::write(mnt.join("special/comp/c.txt"), "compress me ".repeat(20000)).unwrap();
        let f = std::fs::File::create(mnt.join("special/sparse.img")).unwrap();
        f.set_len(1 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(b"in the middle", 700_000).unwrap();
        drop(f);
        // Fill the free space, so the next file can only go into the holes.
        {
            use std::io::Write;
            let mut fill = std::fs::File::create(mnt.join("fill.tmp")).unwrap();
            for chunk in [1usize << 20, 65536, 4096, 512] {
                let buf = vec![0x5Au8; chunk];
                while fill.write_all(&buf).and_then(|_| fill.sync_all()).is_ok() {}
            }
        }
        for i in (0..800).step_by(2) {
            std::fs::remove_file(mnt.join(format!("holes/h{:03}", i))).unwrap();
        }
        let frag = rng.bytes(300 * 4096 + 1234);
        std::fs::write(mnt.join("VMs/frag.bin"), &frag).unwrap();
        std::fs::write(src.join("VMs/frag.bin"), &frag).unwrap();
        // Named streams (ntfs-3g stores user xattrs as such) overflow the MFT record, which
        // moves attributes to extension records behind an $ATTRIBUTE_LIST.
        for k in 0..40 {
            run(Command::new(sbin_path("setfattr"))
                .args(["-n", &format!("user.stream{:02}", k), "-v", &"x".repeat(100)])
                .arg(mnt.join("VMs/frag.bin")));
        }
        std::fs::create_dir_all(src.join("holes")).unwrap();
        for i in (1..800).step_by(2) {
            let n = format!("holes/h{:03}", i);
            std::fs::copy(mnt.join(&n), src.join(&n)).unwrap();
        }
        std::fs::remove_file(mnt.join("fill.tmp")).unwrap();
    }
    img
}

#[test]
fn ntfs_reads_every_file_like_the_source() {
    for (tag, args) in [("4k", &["-c", "4096"][..]), ("512", &["-c", "512"][..]), ("64k", &["-c", "65536"][..])] {
        let t = TempDir::new(&format!("ntfs-{}", tag));
        let src = &t.path.join("src");
        make_source_tree(&src, 600);
        let img = build_ntfs(&t.path, &src, 96 << 20, args);
        let mut vol = NtfsVolume::open(FileDisk::open(&img, false).unwrap()).unwrap();
        check_against_source_with(&mut vol, &img, &src, true, &["special"]);
        check_ntfs_specials(&mut vol, &img, tag);
        check_ntfs_encrypted_flag(&img, tag);
    }
}

/// ntfs-3g cannot make EFS files, so set the encrypted flag on big.img's $DATA attribute by hand.
fn check_ntfs_encrypted_flag(img: &Path, tag: &str) {
    let info = run(sbin("ntfsinfo").args(["-F", "/VMs/big.img"]).arg(img).stderr(std::process::Stdio::null()));
    let record: usize = info
        .split("Dumping Inode ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("ntfsinfo names the inode");
    let mut bytes = std::fs::read(img).unwrap();
    let cluster = u16::from_le_bytes([bytes[11], bytes[12]]) as usize * bytes[13] as usize;
    let mft = u64::from_le_bytes(bytes[0x30..0x38].try_into().unwrap()) as usize * cluster;
    let rec = mft + record * 1024;
    assert_eq!(&bytes[rec..rec + 4], b"FILE", "{}: record {} is not where a contiguous MFT puts it", tag, record);
    let mut off = rec + u16::from_le_bytes([bytes[rec + 0x14], bytes[rec + 0x15]]) as usize;
    loop {
        let kind = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        assert_ne!(kind, 0xFFFF_FFFF, "{}: no $DATA attribute in record {}", tag, record);
        if kind == 0x80 && bytes[off + 9] == 0 {
            bytes[off + 13] |= 0x40;
            break;
        }
        off += u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
    }
    let mut vol = NtfsVolume::open(MemDisk::from_bytes(bytes)).unwrap();
    match vol.open_file("/VMs/big.img") {
        Err(FsError::Unsupported(m)) => assert!(m.contains("big.img") && m.contains("encrypted"), "{}", m),
        other => panic!("{}: an encrypted file was accepted: {:?}", tag, other.map(|f| f.extents)),
    }
    assert!(matches!(vol.read_to_vec("/VMs/big.img", 1 << 30), Err(FsError::Unsupported(_))));
}

fn check_ntfs_specials(vol: &mut NtfsVolume<FileDisk>, img: &Path, tag: &str) {
    let mut listed: Vec<String> = vol.list_dir("/special").unwrap().into_iter().map(|e| e.name).collect();
    listed.sort();
    assert_eq!(listed, ["comp", "sparse.img"]);
    // Compressed and sparse files: refused as images with a reason; sparse still readable.
    // NTFS compresses only with clusters of 4 KiB or less; with larger ones the file is plain.
    if tag == "64k" {
        let plain = vol.read_to_vec("/special/comp/c.txt", 1 << 20).unwrap();
        assert!(plain == "compress me ".repeat(20000).into_bytes());
    } else {
        match vol.open_file("/special/comp/c.txt") {
            Err(FsError::Unsupported(m)) => assert!(m.contains("c.txt") && m.contains("compressed"), "{}", m),
            other => panic!("{}: a compressed file was accepted: {:?}", tag, other.map(|f| f.extents)),
        }
        assert!(matches!(vol.read_to_vec("/special/comp/c.txt", 1 << 20), Err(FsError::Unsupported(_))));
    }
    match vol.open_file("/special/sparse.img") {
        Err(FsError::Unsupported(m)) => assert!(m.contains("sparse.img") && m.contains("sparse"), "{}", m),
        other => panic!("{}: a sparse file was accepted: {:?}", tag, other.map(|f| f.extents)),
    }
    let mut want = vec![0u8; 1 << 20];
    want[700_000..700_013].copy_from_slice(b"in the middle");
    assert!(vol.read_to_vec("/special/sparse.img", 1 << 30).unwrap() == want, "{}: sparse read", tag);

    // 8.3 name: found, and spelled with the long name.
    let by_dos = vol.open_file("/vms/diskim~1.vhd").unwrap();
    let by_long = vol.open_file("/VMs/Disk Image With A Rather Long Name (copy 2).vhd").unwrap();
    assert_eq!(by_dos.extents, by_long.extents);
    assert_eq!(by_dos.path, by_long.path);

    let frag = vol.open_file("/VMs/frag.bin").unwrap();
    // (With 64 KiB clusters ntfs-3g keeps free space in reserve that the filler cannot reach.)
    assert!(tag == "64k" || frag.extents.extents.len() > 15, "{}: frag.bin is in only {} runs", tag, frag.extents.extents.len());
    let info = run(sbin("ntfsinfo").args(["-F", "/VMs/frag.bin"]).arg(img).stderr(std::process::Stdio::null()));
    assert!(info.contains("$ATTRIBUTE_LIST"), "{}: frag.bin has no attribute list:\n{}", tag, info);

    assert!(matches!(vol.create_file("/new.img", 4096), Err(FsError::ReadOnly(m)) if m.contains("host OS")));
    assert!(matches!(vol.grow_file("/VMs/big.img", 1 << 30), Err(FsError::ReadOnly(_))));
}

fn ntfs_mutate(img: &mut Vec<u8>, rng: &mut Rng) {
    let cluster = u16::from_le_bytes([img[11], img[12]]) as usize * img[13] as usize;
    let mft = u64::from_le_bytes(img[0x30..0x38].try_into().unwrap()) as usize * cluster;
    let len = img.len();
    flip_bytes(img, rng, &[(0, 512), (mft, mft + 64 * 1024), (mft, mft + 2 << 20), (0, len)]);
}

#[test]
fn ntfs_survives_mutations() {
    let t = TempDir::new("ntfs-mut");
    let src = &t.path.join("src");
    make_source_tree(&src, 100);
    let img = build_ntfs(&t.path, &src, 40 << 20, &["-c", "4096"]);
    let bytes = std::fs::read(&img).unwrap();
    assert!(NtfsVolume::open(MemDisk::from_bytes(bytes.clone())).is_ok());
    mutation_loop("NTFS", bytes, 300, ntfs_mutate, |d| {
        if let Ok(mut v) = NtfsVolume::open(d) {
            exercise(&mut v);
        }
    });
}

// ---------------------------------------------------------------- exFAT metadata writes

/// Mount an exFAT image through exfat-fuse on a loop device for the duration of `f`.
fn with_exfat_mount<T>(img: &Path, mnt: &Path, f: impl FnOnce(&Path) -> T) -> T {
    need("mount.exfat-fuse", "exfat-fuse");
    let loopdev = run(sbin("losetup").args(["-f", "--show"]).arg(img)).trim().to_string();
    std::fs::create_dir_all(mnt).unwrap();
    let mounted = Command::new(sbin_path("mount.exfat-fuse")).arg(&loopdev).arg(mnt).status();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(mounted.as_ref().map(|s| s.success()).unwrap_or(false), "mount.exfat-fuse failed");
        f(mnt)
    }));
    let _ = Command::new("fusermount").arg("-u").arg(mnt).status();
    run(sbin("losetup").arg("-d").arg(&loopdev));
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn model_of(src: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    walk(src).0.into_iter().map(|p| {
        let data = std::fs::read(src.join(&p[1..])).unwrap();
        (p, data)
    }).collect()
}

fn check_model(vol: &mut ExfatVolume<FileDisk>, model: &std::collections::BTreeMap<String, Vec<u8>>, step: &str) {
    for (path, want) in model {
        let got = vol.read_to_vec(path, 1 << 30).unwrap_or_else(|e| panic!("after {}: {}: {}", step, path, e));
        assert!(got == *want, "after {}: {} differs ({} vs {} bytes)", step, path, got.len(), want.len());
    }
}

#[test]
fn exfat_metadata_writes_keep_the_volume_clean() {
    need("fsck.exfat", "exfatprogs");
    need("diff", "diffutils");
    let t = TempDir::new("exfat-write");
    let src = &t.path.join("src");
    make_source_tree(&src, 40);
    let img = build_exfat(&t.path, &src, 32 << 20, Some("4K"));
    let mut model = model_of(&src);
    let mut vol = ExfatVolume::open(FileDisk::open(&img, true).unwrap()).unwrap();
    let mut rng = Rng(5150);

    // Create with a long name, write inside it, grow it while the next clusters are free.
    let snap = "/VMs/Snapshot 2024-01-01 of the Windows 10 disk (long name).vhd";
    let f = vol.create_file(snap, 1_000_000).unwrap();
    assert_eq!(f.path, snap);
    assert_eq!(f.extents.extents.len(), 1, "a new file on a roomy volume is contiguous");
    assert_eq!(vol.read_to_vec(snap, 1 << 30).unwrap(), vec![0u8; 1_000_000]);
    let data = rng.bytes(12345);
    assert_eq!(vol.write_file(&f, 1000, &data).unwrap(), data.len());
    assert!(vol.write_file(&f, 999_999, &[1, 2]).is_err(), "writes past the end are refused");
    let mut want = vec![0u8; 1_000_000];
    want[1000..1000 + data.len()].copy_from_slice(&data);
    want.resize(3_000_000, 0);
    vol.grow_file(snap, 3_000_000).unwrap();
    model.insert(snap.to_string(), want);
    check_model(&mut vol, &model, "create+grow");
    assert!(matches!(vol.create_file(snap, 10), Err(FsError::Unsupported(m)) if m.contains("already exists")));
    assert!(vol.create_file("/VMs/bad:name", 10).is_err());
    assert!(matches!(vol.create_file("/nodir/x", 10), Err(FsError::NotFound { .. })));

    // Truncate, delete, rename across directories and by case only.
    vol.truncate_file("/VMs/big.img", 1_000_001).unwrap();
    model.get_mut("/VMs/big.img").unwrap().truncate(1_000_001);
    vol.delete_file("/odd-size.bin").unwrap();
    model.remove("/odd-size.bin");
    assert!(matches!(vol.open_file("/odd-size.bin"), Err(FsError::NotFound { .. })));
    vol.rename("/one.bin", "/VMs/ONE renamed with a name long enough for three entries.bin").unwrap();
    let v = model.remove("/one.bin").unwrap();
    model.insert("/VMs/ONE renamed with a name long enough for three entries.bin".into(), v);
    vol.rename("/empty.txt", "/EMPTY.TXT").unwrap();
    let v = model.remove("/empty.txt").unwrap();
    model.insert("/EMPTY.TXT".into(), v);
    assert!(vol.rename("/boot/grub/grub.cfg", "/VMs/big.img").is_err(), "rename onto an existing name");
    check_model(&mut vol, &model, "truncate/delete/rename");

    // Enough new names to grow a directory by several clusters.
    for i in 0..150 {
        let p = format!("/level0/grown file number {:03} with a long name.txt", i);
        let content = format!("{} ", i).repeat(i * 7).into_bytes();
        let f = vol.create_file(&p, content.len() as u64).unwrap();
        vol.write_file(&f, 0, &content).unwrap();
        model.insert(p, content);
    }
    check_model(&mut vol, &model, "directory growth");


    // Fill all but 160 KiB, make that tail into alternating 8 KiB files and holes, then make
    // files that can only use FAT chains through the holes.
    let free = vol.free_bytes().unwrap();
    vol.create_file("/fill.bin", free - 20 * 8192).unwrap();
    for i in 0..20 {
        vol.create_file(&format!("/hole{:02}", i), 8192).unwrap();
    }
    assert_eq!(vol.free_bytes().unwrap(), 0);
    for i in (0..20).step_by(2) {
        vol.delete_file(&format!("/hole{:02}", i)).unwrap();
    }
    for i in (1..20).step_by(2) {
        model.insert(format!("/hole{:02}", i), vec![0u8; 8192]);
    }
    assert!(matches!(vol.create_file("/too-big.bin", 20 * 8192), Err(FsError::NoSpace { .. })));
    let frag_data = rng.bytes(40_000);
    let f = vol.create_file("/frag.bin", 40_000).unwrap();
    assert!(f.extents.extents.len() >= 5, "frag.bin should be scattered over the holes");
    vol.write_file(&f, 0, &frag_data).unwrap();
    // The snapshot's next clusters are taken now: growing it must switch it to a FAT chain.
    assert_eq!(vol.open_file(snap).unwrap().extents.extents.len(), 1);
    vol.grow_file(snap, 3_004_000).unwrap();
    model.get_mut(snap).unwrap().resize(3_004_000, 0);
    assert!(vol.open_file(snap).unwrap().extents.extents.len() > 1);
    vol.grow_file("/frag.bin", 48_000).unwrap();
    vol.truncate_file("/frag.bin", 20_000).unwrap();
    let mut frag_want = frag_data;
    frag_want.truncate(20_000);
    model.insert("/frag.bin".into(), frag_want);
    vol.delete_file("/fill.bin").unwrap();
    vol.truncate_file("/VMs/Disk Image With A Rather Long Name (copy 2).vhd", 0).unwrap();
    model.insert("/VMs/Disk Image With A Rather Long Name (copy 2).vhd".into(), Vec::new());
    check_model(&mut vol, &model, "fragmented allocation");
    drop(vol);

    // The tools agree: fsck is clean, and exfat-fuse sees exactly the model.
    run(sbin("fsck.exfat").arg("-n").arg(&img));
    let expect = &t.path.join("expect");
    for (p, data) in &model {
        let dst = expect.join(&p[1..]);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::write(dst, data).unwrap();
    }
    for d in walk(&src).1 {
        std::fs::create_dir_all(expect.join(d.trim_start_matches('/'))).unwrap();
    }
    with_exfat_mount(&img, &&t.path.join("mnt2"), |mnt| {
        run(Command::new("diff").arg("-r").arg(&expect).arg(mnt));
    });
    let mut vol = ExfatVolume::open(FileDisk::open(&img, false).unwrap()).unwrap();
    check_against_source(&mut vol, &img, &expect);
}

// ---------------------------------------------------------------- writes inside extents

/// Patch a file through its extent list at unaligned offsets; return the expected content.
fn patch_through_extents(
    write: &mut dyn FnMut(&File, u64, &[u8]) -> Result<usize, FsError>,
    f: &File,
    mut want: Vec<u8>,
) -> Vec<u8> {
    let mut rng = Rng(31337);
    let size = want.len() as u64;
    for (off, len) in [(0u64, 512usize), (777, 5000), (size - 1000, 1000), (size / 2 + 3, 70_000)] {
        let data = rng.bytes(len);
        assert_eq!(write(f, off, &data).unwrap(), len);
        want[off as usize..off as usize + len].copy_from_slice(&data);
    }
    assert!(write(f, size - 10, &[0u8; 11]).is_err(), "a write past the end must be refused");
    want
}

#[test]
fn ext4_writes_inside_extents_are_seen_by_debugfs() {
    let t = TempDir::new("ext-write");
    let src = &t.path.join("src");
    make_source_tree(&src, 5);
    let img = build_ext(&t.path, &src, 32 << 20, &["-b", "1024"]);
    let before = std::fs::read(src.join("VMs/frag.bin")).unwrap();
    let mut vol = ExtVolume::open(FileDisk::open(&img, true).unwrap()).unwrap();
    let f = vol.open_file("/VMs/frag.bin").unwrap();
    let want = patch_through_extents(&mut |f, o, b| vol.write_file(f, o, b), &f, before);
    drop(vol);
    let out = &t.path.join("dumped");
    run(sbin("debugfs").arg("-R").arg(format!("dump /VMs/frag.bin {}", out.display())).arg(&img));
    assert!(std::fs::read(&out).unwrap() == want, "debugfs reads different bytes");
    run(sbin("e2fsck").args(["-f", "-n"]).arg(&img));
}

#[test]
fn ntfs_writes_inside_extents_are_seen_by_ntfscat() {
    need("ntfscat", "ntfs-3g");
    let t = TempDir::new("ntfs-write");
    let src = &t.path.join("src");
    make_source_tree(&src, 5);
    let img = build_ntfs(&t.path, &src, 40 << 20, &["-c", "4096"]);
    let before = std::fs::read(src.join("VMs/frag.bin")).unwrap();
    let mut vol = NtfsVolume::open(FileDisk::open(&img, true).unwrap()).unwrap();
    let f = vol.open_file("/VMs/frag.bin").unwrap();
    let want = patch_through_extents(&mut |f, o, b| vol.write_file(f, o, b), &f, before);
    drop(vol);
    let out = Command::new(sbin_path("ntfscat")).arg(&img).arg("/VMs/frag.bin").output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == want, "ntfscat reads different bytes");
}
