//! Host disks for images of real size (issue 13): virtual disks of hundreds of GiB made by
//! qemu-img are small or sparse files, and so are the host disks that hold them, up to a 1 TiB
//! NTFS partition. Nothing here reads or writes the holes: files are copied by their data ranges
//! (SEEK_DATA/SEEK_HOLE), and zeros are never written over zeros.
//!
//! - [`big_host`]: an MBR disk with one exFAT or NTFS partition holding grub.cfg and the images
//!   at its root, vboot installed by `vboot-install`; [`BigHost::pull`] copies the images back out
//!   after a boot (with `fsck.exfat -n` on an exFAT partition, run through a read-only loop
//!   device: root, as the hostfs tests). Big host disks live in /dev/shm when it has room.
//! - [`shuffled_vmdk`]: a VMDK with many grains written by qemu-io in pseudo-random order.
//! - [`read_range`]: sectors of an image as qemu-img (or libvhdi, for VHD chains) reads them.

use crate::{require_tool, sh, TempDir};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Where the host partition starts, in sectors.
pub const PART_START_LBA: u64 = 2048;

extern "C" {
    fn lseek(fd: i32, offset: i64, whence: i32) -> i64;
}
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

/// The data ranges (offset, length) of a file, as the host filesystem reports them with
/// SEEK_DATA/SEEK_HOLE (a filesystem without holes reports the whole file).
pub fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {}", path.display(), e));
    let len = f.metadata().unwrap().len() as i64;
    let fd = f.as_raw_fd();
    let mut ranges = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: lseek on an open descriptor we own; it only moves the file position.
        let data = unsafe { lseek(fd, pos, SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        let hole = unsafe { lseek(fd, data, SEEK_HOLE) };
        let hole = if hole < 0 { len } else { hole };
        ranges.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    ranges
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().fold(0u8, |a, &b| a | b) == 0
}

/// Copy bytes `src_off..src_off + len` of `src` to `dst` at `dst_off`, reading only the data
/// ranges of `src` and writing only chunks that are not all zeros (`dst` must read zeros there:
/// a new sparse file, or a hole). `dst` must exist.
pub fn sparse_copy(src: &Path, src_off: u64, len: u64, dst: &Path, dst_off: u64) {
    let s = std::fs::File::open(src).unwrap();
    let d = std::fs::OpenOptions::new().write(true).open(dst).unwrap_or_else(|e| panic!("open {}: {}", dst.display(), e));
    let end = src_off + len;
    let mut buf = vec![0u8; MIB as usize];
    for (start, n) in data_ranges(src) {
        let (a, b) = (start.max(src_off), (start + n).min(end));
        let mut p = a;
        while p < b {
            let k = ((b - p) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..k], p).unwrap();
            if !is_zero(&buf[..k]) {
                d.write_all_at(&buf[..k], dst_off + (p - src_off)).unwrap();
            }
            p += k as u64;
        }
    }
}

/// A sparse copy of a whole file.
pub fn sparse_file_copy(src: &Path, dst: &Path) {
    let len = std::fs::metadata(src).unwrap().len();
    let f = std::fs::File::create(dst).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    sparse_copy(src, 0, len, dst, 0);
}

/// Turn the zero-filled blocks of a file into holes (`fallocate --dig-holes`, util-linux).
pub fn dig_holes(path: &Path) {
    require_tool("fallocate", "util-linux");
    sh(Command::new("fallocate").arg("--dig-holes").arg(path));
}

/// A block device that skips writes of zeros over sectors that already read as zeros: the
/// exFAT writer zeroes every new file, which would fill the holes of a sparse volume image.
pub struct SkipZeroWrites<D>(pub D);

impl<D: vboot::block::BlockDevice> vboot::block::BlockDevice for SkipZeroWrites<D> {
    fn sector_count(&self) -> u64 {
        self.0.sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), vboot::block::BlockError> {
        self.0.read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), vboot::block::BlockError> {
        if is_zero(buf) {
            let mut now = vec![0u8; buf.len()];
            self.0.read_sectors(lba, &mut now)?;
            if is_zero(&now) {
                return Ok(());
            }
        }
        self.0.write_sectors(lba, buf)
    }
}

/// The host filesystem of a [`big_host`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFs {
    /// mkfs.exfat, filled with the core library's exFAT writer (fsck.exfat checks it).
    Exfat,
    /// mkntfs, filled with ntfscp.
    Ntfs,
}

/// A host disk built by [`big_host`] (removed when dropped).
pub struct BigHost {
    pub disk: PathBuf,
    pub fs: HostFs,
    pub part_bytes: u64,
    dir: PathBuf,
    _disk_file: ScratchFile,
}

fn sbin(tool: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(tool);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(tool)
}

/// A sparse MBR disk with one partition of `part_bytes` at 1 MiB (active; exFAT or NTFS, type
/// 07h) holding `/grub.cfg` and each `(name, file)` as `/name`, with vboot installed by
/// `vboot-install`. Files are copied by their data ranges, so sparse images stay sparse; an exFAT
/// volume is made by mkfs.exfat in a scratch file, moved into the disk (its metadata only) and
/// filled there, so the images' data is written once.
pub fn big_host(dir: &TempDir, fs: HostFs, part_bytes: u64, grub_cfg: &str, files: &[(&str, &Path)]) -> BigHost {
    let part_bytes = part_bytes.div_ceil(MIB) * MIB;
    let part = dir.join("host-part.img");
    let _ = std::fs::remove_file(&part);
    std::fs::File::create(&part).unwrap().set_len(part_bytes).unwrap();
    let cfg_file = dir.join("grub.cfg");
    std::fs::write(&cfg_file, grub_cfg).unwrap();
    match fs {
        HostFs::Exfat => {
            require_tool("mkfs.exfat", "exfatprogs");
            sh(Command::new(sbin("mkfs.exfat")).arg(&part).stdout(Stdio::null()));
        }
        HostFs::Ntfs => {
            require_tool("mkntfs", "ntfs-3g");
            require_tool("ntfscp", "ntfs-3g");
            sh(Command::new(sbin("mkntfs")).args(["-F", "-Q", "-q", "-p", &PART_START_LBA.to_string(), "-H", "255", "-S", "63"]).arg(&part));
            sh(Command::new(sbin("ntfscp")).arg("-f").arg(&part).arg(&cfg_file).arg("/grub.cfg"));
            for (name, file) in files {
                sh(Command::new(sbin("ntfscp")).arg("-f").arg(&part).arg(file).arg(format!("/{}", name)));
            }
        }
    }
    // The disk in /dev/shm when there is room: a sparse file of many small data extents (an
    // image whose grains lie far apart) is slow to write back and to delete on a busy disk.
    let data_bytes: u64 = files.iter().map(|(_, f)| data_ranges(f).iter().map(|r| r.1).sum::<u64>()).sum();
    let disk_file = ScratchFile::new(dir, "disk.img", data_bytes + 256 * MIB);
    let disk = disk_file.path.clone();
    std::fs::File::create(&disk).unwrap().set_len(PART_START_LBA * 512 + part_bytes).unwrap();
    crate::disk::sfdisk(&disk, &format!("label: dos\nstart={}, size={}, type=7, bootable\n", PART_START_LBA, part_bytes / 512));
    sparse_copy(&part, 0, part_bytes, &disk, PART_START_LBA * 512);
    let _ = std::fs::remove_file(&part);
    let host = BigHost { disk, fs, part_bytes, dir: dir.path.clone(), _disk_file: disk_file };
    if fs == HostFs::Exfat {
        let mut vol = host.exfat(true);
        let mut put = |name: &str, src: &Path| {
            let len = std::fs::metadata(src).unwrap().len();
            let f = vol.create_file(&format!("/{}", name), len).unwrap_or_else(|e| panic!("exFAT: create /{}: {}", name, e));
            let s = std::fs::File::open(src).unwrap();
            let mut buf = vec![0u8; MIB as usize];
            for (start, n) in data_ranges(src) {
                let mut p = start;
                while p < start + n {
                    let k = ((start + n - p) as usize).min(buf.len());
                    s.read_exact_at(&mut buf[..k], p).unwrap();
                    if !is_zero(&buf[..k]) {
                        vol.write_file(&f, p, &buf[..k]).unwrap_or_else(|e| panic!("exFAT: write /{}: {}", name, e));
                    }
                    p += k as u64;
                }
            }
        };
        put("grub.cfg", &cfg_file);
        for (name, file) in files {
            put(name, file);
        }
        drop(vol);
        host.fsck("filling the host partition");
    }
    let (ok, out) = crate::vboot_install(&["install", host.disk.to_str().unwrap()]);
    assert!(ok, "vboot-install failed:\n{}", out);
    host
}

/// `fsck.exfat -n` must find the volume clean.
pub fn fsck_exfat(part: &Path, after: &str) {
    let out = Command::new(sbin("fsck.exfat")).arg("-n").arg(part).output().expect("run fsck.exfat (exfatprogs)");
    assert!(
        out.status.success(),
        "fsck.exfat -n after {}: {}{}",
        after,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

type ExfatOnDisk = vboot::fs::exfat::ExfatVolume<vboot::block::Window<SkipZeroWrites<vboot::block::FileDisk>>>;

/// A read-only loop device over a byte range of a file (`losetup -r -o --sizelimit`), detached
/// when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, offset: u64, bytes: u64) -> Loop {
        require_tool("losetup", "mount");
        let dev = sh(Command::new(sbin("losetup"))
            .args(["-r", "-f", "--show", "-o", &offset.to_string(), "--sizelimit", &bytes.to_string()])
            .arg(file));
        Loop(dev.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(sbin("losetup")).arg("-d").arg(&self.0).status();
    }
}

impl BigHost {
    /// The exFAT volume inside the disk, through the core library.
    fn exfat(&self, writable: bool) -> ExfatOnDisk {
        let dev = vboot::block::Window {
            inner: SkipZeroWrites(vboot::block::FileDisk::open(&self.disk, writable).unwrap()),
            start_lba: PART_START_LBA,
            sectors: self.part_bytes / 512,
        };
        vboot::fs::exfat::ExfatVolume::open(dev).unwrap_or_else(|e| panic!("open the exFAT host partition: {}", e))
    }

    /// `fsck.exfat -n` on the exFAT partition, through a read-only loop device (so nothing is
    /// copied); `after` goes into the failure message.
    pub fn fsck(&self, after: &str) {
        assert_eq!(self.fs, HostFs::Exfat, "fsck: only exFAT host partitions");
        require_tool("fsck.exfat", "exfatprogs");
        let dev = Loop::new(&self.disk, PART_START_LBA * 512, self.part_bytes);
        fsck_exfat(Path::new(&dev.0), after);
    }

    /// The partition as the disk holds it now, as a sparse file.
    pub fn partition(&self, out: &Path) -> PathBuf {
        let _ = std::fs::remove_file(out);
        std::fs::File::create(out).unwrap().set_len(self.part_bytes).unwrap();
        sparse_copy(&self.disk, PART_START_LBA * 512, self.part_bytes, out, 0);
        out.to_path_buf()
    }

    /// The files `names` as the host disk holds them now, copied into `dir/out/` under their own
    /// names (sparse where they are zero), after `fsck.exfat -n` passed on an exFAT partition.
    pub fn pull(&self, names: &[&str]) -> PathBuf {
        let out = self.dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        match self.fs {
            HostFs::Exfat => {
                self.fsck("the boot");
                let mut vol = self.exfat(false);
                let mut buf = vec![0u8; MIB as usize];
                for n in names {
                    let f = vol.open_file(&format!("/{}", n)).unwrap_or_else(|e| panic!("exFAT: open /{} after the boot: {}", n, e));
                    let dst = out.join(n);
                    let o = std::fs::File::create(&dst).unwrap();
                    o.set_len(f.size_bytes).unwrap();
                    let mut p = 0u64;
                    while p < f.size_bytes {
                        let k = ((f.size_bytes - p) as usize).min(buf.len());
                        let got = vol.read_file(&f, p, &mut buf[..k]).unwrap();
                        assert_eq!(got, k, "short read of /{}", n);
                        if !is_zero(&buf[..k]) {
                            o.write_all_at(&buf[..k], p).unwrap();
                        }
                        p += k as u64;
                    }
                }
            }
            HostFs::Ntfs => {
                require_tool("ntfscat", "ntfs-3g");
                let part = self.partition(&self.dir.join("part-now.img"));
                for n in names {
                    let o = std::fs::File::create(out.join(n)).unwrap();
                    let st = Command::new(sbin("ntfscat")).arg(&part).arg(format!("/{}", n)).stdout(o).status().unwrap();
                    assert!(st.success(), "ntfscat /{} failed", n);
                }
                let _ = std::fs::remove_file(&part);
            }
        }
        out
    }
}

/// A file for big scratch data: in /dev/shm when it has `room` bytes free (plus 2 GiB to spare;
/// writing zeros there costs no disk I/O), else in `dir`; removed when dropped (kept, and named,
/// when VBOOT_KEEP_TMP is set).
pub struct ScratchFile {
    pub path: PathBuf,
}

impl ScratchFile {
    pub fn new(dir: &TempDir, name: &str, room: u64) -> ScratchFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let shm_free = Command::new("df")
            .args(["--output=avail", "-B1", "/dev/shm"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()))
            .unwrap_or(0);
        let path = if shm_free > room + 2 * GIB {
            PathBuf::from(format!("/dev/shm/vboot-{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), name))
        } else {
            dir.join(name)
        };
        let _ = std::fs::remove_file(&path);
        ScratchFile { path }
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        if std::env::var_os("VBOOT_KEEP_TMP").is_none() {
            let _ = std::fs::remove_file(&self.path);
        } else {
            eprintln!("kept {}", self.path.display());
        }
    }
}

/// A monolithicSparse VMDK of `virtual_bytes` made by qemu-img, with `head` written at offset 0
/// and `prefill` (offset, bytes, fill byte) written, then `count` more grains (64 KiB) written by
/// qemu-io in pseudo-random order (seed `seed`), never grains in `avoid`: the k-th grain written
/// gets [`shuffled_marker`]`(k)` in its first sector (qemu writes the rest of the grain as zeros).
/// Returns the grains in the order they were written.
///
/// qemu-io runs in batches of 25,000 writes (commands on its standard input), and after each
/// batch the zero-filled blocks of the file become holes again, so the file never holds more
/// than about 1.6 GB of zeros (100,000 grains: about 20 s in /dev/shm, see [`ScratchFile`],
/// twice that on a disk that has to write the zeros back).
pub fn shuffled_vmdk(path: &Path, virtual_bytes: u64, head: &Path, prefill: &[(u64, u64, u8)], count: usize, seed: u64, avoid: &[u64]) -> Vec<u64> {
    require_tool("qemu-io", "qemu-utils");
    const BATCH: usize = 25_000;
    let grains_total = virtual_bytes / (64 << 10);
    assert!(count > 0 && (count as u64) < grains_total / 2, "1 grain to half the disk's grains");
    // A partial shuffle over the grain numbers, by xorshift64*.
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut chosen = std::collections::HashSet::with_capacity(count * 2);
    let mut order = Vec::with_capacity(count);
    while order.len() < count {
        let g = next() % grains_total;
        if avoid.contains(&g) || !chosen.insert(g) {
            continue;
        }
        order.push(g);
    }

    crate::qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", path.to_str().unwrap(), &virtual_bytes.to_string()]);
    let head_len = std::fs::metadata(head).unwrap().len();
    let mut first = format!("write -q -s {} 0 {}\n", head.display(), head_len);
    for (off, len, byte) in prefill {
        first.push_str(&format!("write -q -P 0x{:02x} {} {}\n", byte, off, len));
    }
    for (b, batch) in order.chunks(BATCH).enumerate() {
        let mut cmds = if b == 0 { std::mem::take(&mut first) } else { String::new() };
        for (i, g) in batch.iter().enumerate() {
            cmds.push_str(&format!("write -q -P 0x{:02x} {} 512\n", shuffled_marker(b * BATCH + i), g * (64 << 10)));
        }
        cmds.push_str("quit\n");
        let mut child = Command::new("qemu-io")
            .args(["-f", "vmdk"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run qemu-io");
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(cmds.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().expect("feed qemu-io");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !text.contains("failed"), "qemu-io: {}", text.chars().take(4000).collect::<String>());
        dig_holes(path);
    }
    order
}

/// What the k-th grain written by [`shuffled_vmdk`] holds in its first sector (every byte).
pub fn shuffled_marker(k: usize) -> u8 {
    (k % 251) as u8 + 1
}

/// How a test reads an image back after the boot.
#[derive(Clone, Debug)]
pub enum Reader {
    /// qemu-img reading the image in this qemu format (it follows VMDK parents by itself).
    Qemu(&'static str),
    /// libvhdi (python3-libvhdi) over a VHD chain, leaf first: qemu reads no VHD differencing
    /// image.
    Libvhdi(Vec<PathBuf>),
}

/// Sectors `lba..lba + sectors` of the image as `reader` sees them.
pub fn read_range(image: &Path, reader: &Reader, lba: u64, sectors: u64, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("range-{}-{}.raw", lba, sectors));
    let _ = std::fs::remove_file(&out);
    match reader {
        Reader::Qemu(fmt) => {
            // qemu's raw driver with an offset and a size over the image's own driver: exactly
            // that range, read by qemu. (`qemu-img dd` counts `count=` from the start of the
            // input in qemu 7.2, so it is not used.)
            let path = image.display().to_string();
            assert!(!path.contains(','), "{}: a comma would end the option string", path);
            sh(Command::new("qemu-img").args(["convert", "-O", "raw", "--image-opts"]).arg(format!(
                "driver=raw,offset={},size={},file.driver={},file.file.filename={}",
                lba * 512,
                sectors * 512,
                fmt,
                path
            )).arg(&out));
        }
        Reader::Libvhdi(chain) => {
            let script = format!(
                r#"
import pyvhdi
paths = {paths:?}
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
# Link from the base upward: libvhdi takes a parent's own parent into account only if it was
# set before the parent is attached.
for child, parent in reversed(list(zip(files, files[1:]))):
    child.set_parent(parent)
with open({out:?}, "wb") as o:
    o.write(files[0].read_buffer_at_offset({n}, {off}))
"#,
                paths = chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                out = out.display().to_string(),
                n = sectors * 512,
                off = lba * 512
            );
            let r = Command::new("/usr/bin/python3").arg("-c").arg(&script).output().expect("cannot run /usr/bin/python3 (Debian python3)");
            assert!(r.status.success(), "pyvhdi failed (install the Debian package python3-libvhdi): {}", String::from_utf8_lossy(&r.stderr));
        }
    }
    let v = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(v.len() as u64, sectors * 512, "{}: short read at LBA {}", image.display(), lba);
    v
}

/// The virtual size `vdisk info` gives an image (its whole chain), in sectors.
pub fn vdisk_sectors(image: &Path) -> u64 {
    let out = sh(Command::new(crate::vdisk_bin()).arg("info").arg(image).arg("--json"));
    let key = "\"virtual_size_bytes\": ";
    let at = out.find(key).expect("virtual_size_bytes in vdisk info") + key.len();
    out[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap() / 512
}

/// The virtual size qemu-img gives an image, in sectors.
pub fn qemu_sectors(image: &Path) -> u64 {
    let out = sh(Command::new("qemu-img").args(["info", "--output=json"]).arg(image));
    let key = "\"virtual-size\":";
    let at = out.find(key).expect("virtual-size") + key.len();
    out[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap() / 512
}
