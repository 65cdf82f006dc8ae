//! Guest programs for the QEMU tests: systems that boot from a virtual disk and use INT 13h the
//! way real guests do. Each is first proven against SeaBIOS serving the image natively, so that
//! when vboot later serves the same image from a file, any difference is vboot's.
//!
//! - The guest probe (tests/guest-probe/probe.s): checks every INT 13h answer itself.
//! - The chain guest (tests/guest-probe/chainer.s): hashes its whole disk (FNV-1a per 64-sector
//!   chunk, compared with the host's reading of the image) and writes runs of sectors.
//! - GRUB 2 from Debian's `grub-pc-bin`, hashing a file inside the guest.
//! - SYSLINUX booting a Debian Linux kernel with a busybox initramfs.
//!
//! # Probe disk layout
//!
//! | LBA | contents |
//! |---|---|
//! | 0 | probe boot sector (loaded by the BIOS to 0000:7C00) |
//! | 1 | [`ProbeConfig`] sector, loaded by the probe to 0000:7E00 |
//! | 2 ..= 15 | probe body ([`PROBE_BODY_SECTORS`]), at 0000:8000 |
//! | 16 .. [`PROBE_PATTERN_START_LBA`] | pattern too (unused by the probe) |
//! | the rest | [`pattern_sector`] of each LBA |
//!
//! # Configuration sector (LBA 1), little-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 8 | magic `VBPROBE1` |
//! | 0x08 | u32 | total sectors the disk must report (AH=48h) |
//! | 0x0C | u32 | flags: [`FLAG_EXACT_15H`], [`FLAG_OOR_COUNT_ZERO`], [`FLAG_CYLINDERS_C1`] |
//! | 0x10 | u32 | first LBA carrying the pattern (>= 16) |
//! | 0x14 | u32 | number of boundaries (<= 8) |
//! | 0x18 | u32 | number of writes (<= 8) |
//! | 0x1C | u32 | reserved, 0 |
//! | 0x20 | 8 x u32 | boundary LBAs X: the probe reads across X-1/X with 2, 4 and 127-sector reads, by AH=42h and (when in the CHS range) AH=02h; pattern_start + 64 <= X <= total - 64 |
//! | 0x40 | 8 x (u32 lba, u32 sectors) | writes of 1..=16 sectors: [`written_sector`] contents, even entries by AH=43h, odd ones by AH=03h when CHS reaches them; each read back by AH=42h and AH=02h |
//!
//! Everything is in 32-bit LBAs: probe disks stay below 2 TiB.

use crate::{require_tool, sh};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SECTOR_BYTES: usize = 512;
pub const PROBE_CONFIG_LBA: u64 = 1;
pub const PROBE_BODY_SECTORS: u64 = 14;
/// Sectors the built probe occupies from LBA 0: boot sector, config, body.
pub const PROBE_SECTORS: u64 = 2 + PROBE_BODY_SECTORS;
/// Where the verified pattern starts by default: after the probe, with room to spare.
pub const PROBE_PATTERN_START_LBA: u32 = 64;
pub const PROBE_MAX_BOUNDARIES: usize = 8;
pub const PROBE_MAX_WRITES: usize = 8;
pub const PROBE_MAX_WRITE_SECTORS: u32 = 16;

/// AH=15h must return the exact sector count (memdisk/iPXE style). Without it the probe also
/// accepts SeaBIOS's answer, the CHS size that AH=08h describes.
pub const FLAG_EXACT_15H: u32 = 1;
/// AH=42h starting past the end must rewrite the DAP count to 0 (SeaBIOS leaves it alone).
pub const FLAG_OOR_COUNT_ZERO: u32 = 2;
/// AH=08h's last cylinder must be C-1 (memdisk/iPXE), not SeaBIOS's C-2.
pub const FLAG_CYLINDERS_C1: u32 = 4;

const PATTERN_TAG: &[u8; 8] = b"VBPATTRN";
const WRITTEN_TAG: &[u8; 8] = b"VBWRITE1";
const CONFIG_MAGIC: &[u8; 8] = b"VBPROBE1";

/// The probe's final lines.
pub const PROBE_PASS: &str = "PROBE PASS";
pub const PROBE_FAIL: &str = "PROBE FAIL";

fn tagged_sector(lba: u64, tag: &[u8; 8], filler_xor: u8) -> [u8; SECTOR_BYTES] {
    let mut s = [0u8; SECTOR_BYTES];
    s[0..8].copy_from_slice(&lba.to_le_bytes());
    s[8..16].copy_from_slice(tag);
    for (i, b) in s.iter_mut().enumerate().take(508).skip(16) {
        *b = (i as u8) ^ (lba as u8) ^ filler_xor;
    }
    s[508..512].copy_from_slice(&(lba as u32).to_le_bytes());
    s
}

/// What the host puts in sector `lba`: LBA as u64 LE, "VBPATTRN", filler, LBA as u32 LE.
pub fn pattern_sector(lba: u64) -> [u8; SECTOR_BYTES] {
    tagged_sector(lba, PATTERN_TAG, 0)
}

/// What the probe writes to sector `lba`: the same shape with the tag "VBWRITE1".
pub fn written_sector(lba: u64) -> [u8; SECTOR_BYTES] {
    tagged_sector(lba, WRITTEN_TAG, 0xFF)
}

/// A raw disk of `sectors` sectors, each holding [`pattern_sector`].
pub fn make_pattern_disk(path: &Path, sectors: u64) {
    let f = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {}", path.display(), e));
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    for lba in 0..sectors {
        w.write_all(&pattern_sector(lba)).expect("write pattern disk");
    }
    w.flush().expect("write pattern disk");
}

/// A write the probe makes: `sectors` sectors from `lba`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeWrite {
    pub lba: u32,
    pub sectors: u32,
}

/// What the host tells the probe (LBA 1; layout in the module documentation).
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub total_sectors: u32,
    pub flags: u32,
    pub pattern_start_lba: u32,
    pub boundaries_lba: Vec<u32>,
    pub writes: Vec<ProbeWrite>,
}

impl ProbeConfig {
    /// For a disk of `total_sectors`, no boundaries or writes, SeaBIOS-tolerant flags.
    pub fn new(total_sectors: u64) -> ProbeConfig {
        let total_sectors = u32::try_from(total_sectors).expect("probe disks stay below 2 TiB");
        ProbeConfig {
            total_sectors,
            flags: 0,
            pattern_start_lba: PROBE_PATTERN_START_LBA,
            boundaries_lba: vec![],
            writes: vec![],
        }
    }

    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        assert!(self.boundaries_lba.len() <= PROBE_MAX_BOUNDARIES, "at most {} boundaries", PROBE_MAX_BOUNDARIES);
        assert!(self.writes.len() <= PROBE_MAX_WRITES, "at most {} writes", PROBE_MAX_WRITES);
        assert!(self.pattern_start_lba as u64 >= PROBE_SECTORS, "the pattern must start after the probe");
        let mut s = [0u8; SECTOR_BYTES];
        s[0..8].copy_from_slice(CONFIG_MAGIC);
        let mut put = |off: usize, v: u32| s[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x08, self.total_sectors);
        put(0x0C, self.flags);
        put(0x10, self.pattern_start_lba);
        put(0x14, self.boundaries_lba.len() as u32);
        put(0x18, self.writes.len() as u32);
        for (i, b) in self.boundaries_lba.iter().enumerate() {
            put(0x20 + 4 * i, *b);
        }
        for (i, w) in self.writes.iter().enumerate() {
            put(0x40 + 8 * i, w.lba);
            put(0x44 + 8 * i, w.sectors);
        }
        s
    }

    fn is_written(&self, lba: u64) -> bool {
        self.writes.iter().any(|w| lba >= w.lba as u64 && lba < w.lba as u64 + w.sectors as u64)
    }
}

/// Assemble the test guest tests/guest-probe/`name`.s (16-bit code linked at 0x7C00) into
/// `build`/`name`.bin, with `defsyms` as `as --defsym` symbols; its bytes. The one way every
/// guest below is built.
pub fn assemble_guest(name: &str, build: &Path, defsyms: &[(&str, u64)]) -> Vec<u8> {
    require_tool("as", "binutils");
    require_tool("ld", "binutils");
    std::fs::create_dir_all(build).unwrap_or_else(|e| panic!("create {}: {}", build.display(), e));
    let obj = build.join(format!("{}.o", name));
    let bin = build.join(format!("{}.bin", name));
    let mut asm = Command::new("as");
    asm.arg("--32");
    for (symbol, value) in defsyms {
        asm.arg("--defsym").arg(format!("{}={}", symbol, value));
    }
    sh(asm.arg("-o").arg(&obj).arg(crate::workspace_root().join(format!("tests/guest-probe/{}.s", name))));
    sh(Command::new("ld").args(["-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o"]).arg(&bin).arg(&obj));
    std::fs::read(&bin).unwrap_or_else(|e| panic!("read {}: {}", bin.display(), e))
}

/// Assemble tests/guest-probe/probe.s into `out`/probe.bin (GNU as + ld from binutils) and
/// return its path. The image is [`PROBE_SECTORS`] sectors: boot sector, placeholder config,
/// body.
pub fn build_probe(out: &Path) -> PathBuf {
    let len = assemble_guest("probe", out, &[]).len() as u64;
    assert_eq!(len, PROBE_SECTORS * SECTOR_BYTES as u64, "probe.bin has an unexpected size");
    out.join("probe.bin")
}

/// Put the probe (`probe_bin` from [`build_probe`]) and `cfg` at the start of `disk`.
pub fn install_probe(disk: &Path, probe_bin: &Path, cfg: &ProbeConfig) {
    use std::io::{Seek, SeekFrom};
    let mut image = std::fs::read(probe_bin).expect("read probe.bin");
    let cfg_at = PROBE_CONFIG_LBA as usize * SECTOR_BYTES;
    image[cfg_at..cfg_at + SECTOR_BYTES].copy_from_slice(&cfg.to_sector());
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).expect("open probe disk");
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&image).expect("write probe");
}

/// A pattern disk of `cfg.total_sectors` sectors at `path` with the probe installed.
pub fn make_probe_disk(path: &Path, probe_bin: &Path, cfg: &ProbeConfig) {
    make_pattern_disk(path, cfg.total_sectors as u64);
    install_probe(path, probe_bin, cfg);
}

/// After a probe run: every sector from the pattern start holds [`written_sector`] if the
/// config wrote it, else [`pattern_sector`]; so the writes landed where asked and nowhere else.
pub fn check_probe_disk(disk: &Path, cfg: &ProbeConfig) -> Result<(), String> {
    let bytes = std::fs::read(disk).map_err(|e| format!("read {}: {}", disk.display(), e))?;
    let want_len = cfg.total_sectors as usize * SECTOR_BYTES;
    if bytes.len() != want_len {
        return Err(format!("disk is {} bytes, want {}", bytes.len(), want_len));
    }
    let mut wrong = Vec::new();
    for lba in cfg.pattern_start_lba as u64..cfg.total_sectors as u64 {
        let at = lba as usize * SECTOR_BYTES;
        let got = &bytes[at..at + SECTOR_BYTES];
        let (want, what) =
            if cfg.is_written(lba) { (written_sector(lba), "written") } else { (pattern_sector(lba), "pattern") };
        if got != want {
            wrong.push(format!("LBA {} should hold the {} sector", lba, what));
            if wrong.len() >= 10 {
                break;
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n"))
    }
}

// ---- GRUB 2 ---------------------------------------------------------------------------------

/// Deterministic bytes that do not compress or repeat, so a misplaced sector changes the hash.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
/// GRUB's lines: before the hash, after a successful hash.
pub const GRUB_START: &str = "VBOOT-GRUB-START";
pub const GRUB_HASHED: &str = "VBOOT-GRUB-HASHED";

/// A raw disk with Debian's GRUB 2 installed by hand: boot.img in the MBR, core.img from LBA 1,
/// and an active FAT16 partition at 1 MiB holding /boot/grub/grub.cfg and /payload.bin
/// (`payload_bytes` of pseudo-random data). GRUB prints `VBOOT-GRUB-START`, the payload's
/// SHA-256 (`hashsum`), `VBOOT-GRUB-HASHED` and ends QEMU with exit status 33 (`outb 0xf4 0x10`);
/// on a hashing error it ends with 35. Returns (image, the payload's SHA-256 by sha256sum).
pub fn build_grub_guest(dir: &Path, payload_bytes: usize) -> (PathBuf, String) {
    require_tool("grub-mkimage", "grub-common");
    let boot_img = Path::new(GRUB_DIR).join("boot.img");
    assert!(boot_img.exists(), "{} is missing: install the Debian package grub-pc-bin", boot_img.display());
    std::fs::create_dir_all(dir).expect("create guest dir");

    let core = dir.join("core.img");
    sh(Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-d", GRUB_DIR, "-p", "(hd0,msdos1)/boot/grub", "-o"])
        .arg(&core)
        .args([
            "biosdisk", "part_msdos", "fat", "normal", "configfile", "hashsum", "gcry_sha256", "crypto", "serial",
            "terminal", "echo", "iorw", "test",
        ]));
    let core_bytes = std::fs::read(&core).expect("read core.img");
    let part_start_lba: u64 = 2048;
    assert!(
        (core_bytes.len() as u64).div_ceil(512) < part_start_lba,
        "core.img ({} bytes) does not fit before the partition",
        core_bytes.len()
    );

    let payload = pseudo_random_bytes(payload_bytes, 0x5EED_0000 ^ payload_bytes as u64);
    let payload_path = dir.join("payload.bin");
    std::fs::write(&payload_path, &payload).expect("write payload");
    let sha = crate::disk::sha256(&payload_path);

    let cfg = format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial\n\
         terminal_output serial\n\
         echo {start}\n\
         if hashsum --hash sha256 (hd0,msdos1)/payload.bin; then\n\
         \x20 echo {hashed}\n\
         \x20 outb 0xf4 0x10\n\
         fi\n\
         echo VBOOT-GRUB-HASH-FAILED\n\
         outb 0xf4 0x11\n",
        start = GRUB_START,
        hashed = GRUB_HASHED
    );

    let disk_mib = (payload_bytes as u64 / crate::disk::MIB * 2 + 16).max(32);
    let disk = dir.join("grub-guest.img");
    crate::disk::blank(&disk, disk_mib);
    crate::disk::sfdisk(&disk, &format!("label: dos\nstart={}, type=6, bootable\n", part_start_lba));
    let part = dir.join("grub-part.img");
    crate::disk::fat_volume(
        &part,
        disk_mib * 2048 - part_start_lba,
        16,
        &[
            crate::disk::FileSpec::new("/boot/grub/grub.cfg", cfg),
            crate::disk::FileSpec::new("/payload.bin", payload),
        ],
    );
    crate::disk::write_at(&disk, part_start_lba, &part);
    let _ = std::fs::remove_file(&part);

    // boot.img's code and data up to the disk signature, with core.img's LBA at 0x5C; the
    // partition table sfdisk wrote stays.
    let boot = std::fs::read(&boot_img).expect("read boot.img");
    let mut mbr = std::fs::read(&disk).expect("read disk")[..512].to_vec();
    mbr[..440].copy_from_slice(&boot[..440]);
    mbr[0x5C..0x64].copy_from_slice(&1u64.to_le_bytes());
    let mbr_path = dir.join("grub-mbr.bin");
    std::fs::write(&mbr_path, &mbr).unwrap();
    crate::disk::write_at(&disk, 0, &mbr_path);
    crate::disk::write_at(&disk, 1, &core);
    (disk, sha)
}

// ---- SYSLINUX + Linux -----------------------------------------------------------------------

/// What the Linux guest's /init prints on the serial console before `poweroff -f`.
pub const LINUX_OK: &str = "VBOOT-GUEST-LINUX-OK";

/// Downloaded kernels live here, so repeated test runs do not download again.
pub fn guest_cache_dir() -> PathBuf {
    let dir = crate::workspace_root().join("target/guest-cache");
    std::fs::create_dir_all(&dir).expect("create target/guest-cache");
    dir
}

/// A Debian amd64 kernel (bzImage), from the cache or from `apt-get download` of the package
/// `linux-image-amd64` depends on. Panics with what to do when it cannot be had: a test that
/// needs it must fail, not skip. It is a 64-bit kernel: boot it with qemu-system-x86_64.
pub fn debian_kernel() -> PathBuf {
    // Tests of one binary run in parallel; one download and one unpack at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guest_cache_dir();
    let cached_deb = || -> Option<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&cache)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("linux-image-") && name.ends_with("_amd64.deb")
            })
            .collect();
        debs.sort();
        debs.pop()
    };
    let deb = match cached_deb() {
        Some(deb) => deb,
        None => {
            require_tool("apt-get", "apt");
            let deps = sh(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
            let package = deps
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-"))
                .unwrap_or_else(|| panic!("apt-cache depends linux-image-amd64 names no kernel package:\n{}", deps))
                .to_string();
            let out = Command::new("apt-get").args(["download", &package]).current_dir(&cache).output();
            let ok = out.as_ref().map(|o| o.status.success()).unwrap_or(false);
            assert!(
                ok,
                "cannot download the Debian kernel package {} into {} (needs the Debian package \
                 archive; run `apt-get update` first, or put a linux-image-*_amd64.deb there): {:?}",
                package,
                cache.display(),
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            );
            cached_deb().unwrap_or_else(|| panic!("apt-get download {} left no .deb in {}", package, cache.display()))
        }
    };
    let stem = deb.file_stem().and_then(|s| s.to_str()).expect("deb name").to_string();
    let vmlinuz = cache.join(format!("{}.vmlinuz", stem));
    if !vmlinuz.exists() {
        require_tool("dpkg-deb", "dpkg");
        let unpack = cache.join(format!("{}.unpack-{}", stem, std::process::id()));
        let _ = std::fs::remove_dir_all(&unpack);
        std::fs::create_dir_all(&unpack).unwrap();
        sh(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './boot/vmlinuz-*'",
            deb.display(),
            unpack.display()
        )));
        let found = std::fs::read_dir(unpack.join("boot"))
            .expect("unpacked boot/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .unwrap_or_else(|| panic!("{} holds no /boot/vmlinuz-*", deb.display()));
        // Rename into place last, so an interrupted run never leaves a truncated kernel cached.
        let tmp = cache.join(format!("{}.vmlinuz.tmp-{}", stem, std::process::id()));
        std::fs::copy(&found, &tmp).expect("copy vmlinuz");
        std::fs::rename(&tmp, &vmlinuz).expect("cache vmlinuz");
        let _ = std::fs::remove_dir_all(&unpack);
    }
    vmlinuz
}

/// An uncompressed newc initramfs with busybox-static whose /init prints [`LINUX_OK`] on the
/// serial console, then ends QEMU with status 33 by writing 0x10 to isa-debug-exit's port 0xF4
/// through /dev/port (a triple fault or panic under -no-reboot ends with 0, so 0 proves
/// nothing), and powers off if that port is absent.
pub fn busybox_initramfs(out: &Path) -> PathBuf {
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /dev /proc\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox sed 's/^/IOMEM /' /proc/iomem > /dev/ttyS0\n\
         echo {ok} > /dev/ttyS0\n\
         echo {ok}\n\
         /bin/busybox printf '\\020' | /bin/busybox dd of=/dev/port bs=1 seek=244 2>/dev/null\n\
         /bin/busybox poweroff -f\n",
        ok = LINUX_OK
    );
    busybox_initramfs_with(out, &init, &[])
}

/// An uncompressed newc initramfs with busybox-static at /bin/busybox, `init` as /init, and
/// `files` (path inside, host file) copied in with mode 0755.
pub fn busybox_initramfs_with(out: &Path, init: &str, files: &[(&str, &Path)]) -> PathBuf {
    require_tool("cpio", "cpio");
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.exists(), "/bin/busybox is missing: install the Debian package busybox-static");
    let root = out.with_extension("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    std::fs::write(root.join("init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(root.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (inside, from) in files {
        let to = root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} into the initramfs: {}", from.display(), e));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out_abs = std::path::absolute(out).expect("absolute initramfs path");
    sh(Command::new("sh")
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet > '{}'", out_abs.display()))
        .current_dir(&root));
    let _ = std::fs::remove_dir_all(&root);
    out.to_path_buf()
}

/// Kernel modules from the cached Debian kernel package: `names` and what they depend on (the
/// `depends=` of each module's .modinfo), in an order `insmod` can load them. Cached in
/// target/guest-cache/modules-<package>/.
pub fn debian_modules(names: &[&str]) -> Vec<PathBuf> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let kernel = debian_kernel();
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stem = kernel.file_stem().and_then(|s| s.to_str()).unwrap().to_string();
    let deb = kernel.with_file_name(format!("{}.deb", stem));
    let dir = guest_cache_dir().join(format!("modules-{}", stem));
    std::fs::create_dir_all(&dir).unwrap();
    let listing = sh(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let path_of = |name: &str| -> String {
        let file = format!("/{}.ko", name);
        let alt = format!("/{}.ko", name.replace('_', "-"));
        listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .find(|p| p.ends_with(&file) || p.ends_with(&alt))
            .unwrap_or_else(|| panic!("{} has no module {}", deb.display(), name))
            .to_string()
    };
    let local = |name: &str| dir.join(format!("{}.ko", name));
    let extract = |names: &[String]| {
        let missing: Vec<String> = names.iter().filter(|n| !local(n).exists()).map(|n| path_of(n)).collect();
        if missing.is_empty() {
            return;
        }
        let tmp = dir.join(format!("unpack-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let list: Vec<String> = missing.iter().map(|m| format!("'{}'", m)).collect();
        sh(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' {}",
            deb.display(),
            tmp.display(),
            list.join(" ")
        )));
        for m in &missing {
            let name = Path::new(m).file_name().unwrap().to_str().unwrap().replace('-', "_");
            std::fs::rename(tmp.join(m), dir.join(name)).unwrap();
        }
        let _ = std::fs::remove_dir_all(&tmp);
    };
    let depends = |name: &str| -> Vec<String> {
        let bytes = std::fs::read(local(name)).unwrap();
        let at = bytes.windows(8).position(|w| w == b"depends=").map(|a| a + 8);
        match at {
            Some(a) => {
                let end = bytes[a..].iter().position(|&b| b == 0).unwrap_or(0);
                String::from_utf8_lossy(&bytes[a..a + end]).split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect()
            }
            None => Vec::new(),
        }
    };
    // Depth-first: dependencies before the module.
    fn visit(n: &str, extract: &dyn Fn(&[String]), depends: &dyn Fn(&str) -> Vec<String>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == n) {
            return;
        }
        extract(&[n.to_string()]);
        for d in depends(n) {
            visit(&d, extract, depends, order);
        }
        order.push(n.to_string());
    }
    let mut order = Vec::new();
    for n in names {
        visit(n, &extract, &depends, &mut order);
    }
    order.iter().map(|n| local(n)).collect()
}

/// A raw disk: SYSLINUX's mbr.bin, an active FAT16 partition at 1 MiB with ldlinux.sys
/// (`syslinux --install`), a Debian kernel and [`busybox_initramfs`]. Linux prints
/// [`LINUX_OK`] on ttyS0 and ends QEMU with exit status 33. The kernel is 64-bit: boot with qemu-system-x86_64.
pub fn build_syslinux_linux_guest(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create guest dir");
    let initrd = busybox_initramfs(&dir.join("initrd.img"));
    build_syslinux_linux_guest_with(dir, &initrd, &[])
}

/// [`build_syslinux_linux_guest`] with another initramfs and more files on the guest's partition.
pub fn build_syslinux_linux_guest_with(dir: &Path, initrd: &Path, extra: &[crate::disk::FileSpec]) -> PathBuf {
    require_tool("syslinux", "syslinux");
    let mbr_bin = Path::new("/usr/lib/syslinux/mbr/mbr.bin");
    assert!(mbr_bin.exists(), "{} is missing: install the Debian package syslinux-common", mbr_bin.display());
    std::fs::create_dir_all(dir).expect("create guest dir");
    let kernel = debian_kernel();
    let cfg = "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0 quiet panic=-1\n";

    let disk_mib: u64 = 48;
    let part_start_lba: u64 = 2048;
    let disk = dir.join("syslinux-guest.img");
    crate::disk::blank(&disk, disk_mib);
    crate::disk::sfdisk(&disk, &format!("label: dos\nstart={}, type=6, bootable\n", part_start_lba));
    let part = dir.join("syslinux-part.img");
    let mut files = vec![
        crate::disk::FileSpec::new("/vmlinuz", std::fs::read(&kernel).expect("read kernel")),
        crate::disk::FileSpec::new("/initrd.img", std::fs::read(initrd).expect("read initramfs")),
        crate::disk::FileSpec::new("/syslinux.cfg", cfg),
    ];
    files.extend(extra.iter().cloned());
    crate::disk::fat_volume(&part, disk_mib * 2048 - part_start_lba, 16, &files);
    sh(Command::new("syslinux").arg("--install").arg(&part));
    crate::disk::write_at(&disk, part_start_lba, &part);
    let _ = std::fs::remove_file(&part);

    crate::disk::write_mbr_code(&disk, &std::fs::read(mbr_bin).expect("read mbr.bin"));
    disk
}

/// What the attach guest's /init prints when every step passed.
pub const ATTACH_OK: &str = "VBOOT-ATTACH-OK";
/// The file the attach guest reads, and its content.
pub const ATTACH_FILE: &str = "/HELLO.TXT";
pub const ATTACH_FILE_TEXT: &str = "hello from the host, read through /dev/nbd0";
/// The file the attach guest writes, and its content.
pub const ATTACH_NEW_FILE: &str = "/NEW.TXT";
pub const ATTACH_NEW_TEXT: &str = "written by Linux through vboot-attach";
/// A bigger file the attach guest writes ("vboot\n" repeated), so that new VHD blocks are
/// allocated in the image's slack.
pub const ATTACH_BIG_FILE: &str = "/BIG.TXT";
pub const ATTACH_BIG_BYTES: usize = 3 << 20;

/// [`build_syslinux_linux_guest_with`] whose initramfs runs `vboot-attach` (target/vboot/,
/// from `cargo xtask build`) the way a user would, with modules from the Debian kernel package:
/// 1. without the host disk's driver (virtio_blk not loaded yet): refused, "did not appear";
/// 2. `--info` prints the table;
/// 3. with the host partition (`/dev/<host_partition>`, FAT) mounted read-write: refused;
/// 4. the initramfs-tools local-top script (tools/attach/initramfs-tools, with stand-ins for
///    /scripts/functions and nbd from `modprobe`) attaches it for `root=/dev/nbd0p1`; the file
///    reads back; detached;
/// 5. attaches drive 0x80 on /dev/nbd0, mounts its first partition (vfat), checks
///    [`ATTACH_FILE`], writes [`ATTACH_NEW_FILE`] and [`ATTACH_BIG_FILE`], unmounts, mounts
///    again to read the new file back, unmounts, detaches;
/// 6. `--drive 0x81`: refused;
/// 7. one byte of the table changed through /dev/mem: refused as damaged; restored: accepted;
/// 8. the boot ID in the INT 13h hook zeroed (as when the table is left from an earlier boot):
///    refused as stale.
/// Each step prints `STEP ...`; a failed step prints `ATTACH-FAILED: ...` and the guest ends at
/// once. At the end it prints [`ATTACH_OK`]. Either way QEMU ends with status 33: read the output.
pub fn build_attach_guest(dir: &Path, host_partition: &str) -> PathBuf {
    // Step 1 runs without virtio_blk; the initramfs-tools script loads nbd.
    let (mut files, load) = attach_tool_and_modules(&["virtio_pci", "virtio_blk", "nbd", "vfat", "nls_cp437", "nls_ascii"], &["virtio_blk.ko", "nbd.ko"]);
    let local_top = crate::workspace_root().join("tools/attach/initramfs-tools/scripts/local-top/vboot-attach");
    files.push(("/scripts/local-top/vboot-attach".into(), local_top));
    let init = format!(
        r#"{prologue}mkdir -p /mnt /host /scripts
echo "STEP modules"
{load}
echo "STEP no-disk"
vboot-attach --timeout 1 && fail "attached without the host disk's driver"
insmod /lib/modules/virtio_blk.ko || fail "insmod virtio_blk.ko"
echo "STEP info"
info=$(vboot-attach --info) || fail "vboot-attach --info"
echo "$info"
table=$(echo "$info" | sed -n 's/.*table at \(0x[0-9a-f]*\) .*/\1/p')
hook=$(echo "$info" | sed -n 's/.*INT 13h hook at \(0x[0-9a-f]*\),.*/\1/p')
echo "STEP mounted"
wait_block /dev/{host_partition} || fail "no /dev/{host_partition}"
mount -t vfat /dev/{host_partition} /host || fail "mount the host partition"
vboot-attach --timeout 5 && fail "attached while the host partition is mounted read-write"
umount /host || fail "umount the host partition"
echo "STEP initramfs-tools"
mkdir -p /lib/modules/$(uname -r)/kernel/drivers/block
cp /lib/modules/nbd.ko /lib/modules/$(uname -r)/kernel/drivers/block/ && depmod || fail "depmod"
cat > /scripts/functions <<'END'
log_begin_msg() {{ echo "Begin: $*"; }}
log_end_msg() {{ echo "Done."; }}
panic() {{ echo "panic: $*"; exit 1; }}
wait_for_udev() {{ :; }}
END
ROOT=/dev/nbd0p1 sh /scripts/local-top/vboot-attach || fail "the initramfs-tools local-top script"
wait_block /dev/nbd0p1 || fail "no /dev/nbd0p1 after the local-top script"
mount -t vfat -o ro /dev/nbd0p1 /mnt || fail "mount /dev/nbd0p1"
[ "$(cat /mnt{file})" = "{text}" ] || fail "read through the local-top script's device"
umount /mnt
vboot-attach --detach /dev/nbd0 || fail "detach after the local-top script"
echo "LOCAL-TOP-OK"
echo "STEP attach"
dev=$(vboot-attach --timeout 20) || fail "vboot-attach"
echo "ATTACHED $dev"
echo "SERVER $(tr '\0' ' ' < /proc/$(cat /sys/block/nbd0/pid)/cmdline)"
wait_block ${{dev}}p1 || fail "no ${{dev}}p1"
n=$(($(cat /sys/block/${{dev#/dev/}}/size) / 2048))
read t0 rest < /proc/uptime
dd if=/dev/vda of=/dev/null bs=1M count=$n 2>/dev/null || fail "read /dev/vda"
read t1 rest < /proc/uptime
echo "READ-NATIVE mib=$n from=$t0 to=$t1"
read t0 rest < /proc/uptime
dd if=$dev of=/dev/null bs=1M 2>/dev/null || fail "read all of $dev"
read t1 rest < /proc/uptime
echo "READ-ALL sectors=$(cat /sys/block/${{dev#/dev/}}/size) from=$t0 to=$t1"
echo "STEP mount"
mount -t vfat ${{dev}}p1 /mnt || fail "mount ${{dev}}p1"
got=$(cat /mnt{file})
[ "$got" = "{text}" ] || fail "read back: $got"
echo "READ-OK"
echo -n "{new_text}" > /mnt{new_file} || fail "write {new_file}"
yes vboot | head -c {big_bytes} > /mnt{big_file} || fail "write {big_file}"
umount /mnt || fail umount
mount -t vfat ${{dev}}p1 /mnt || fail "mount again"
[ "$(cat /mnt{new_file})" = "{new_text}" ] || fail "the new file after a remount"
echo "REREAD-OK"
umount /mnt || fail "umount again"
echo "STEP detach"
vboot-attach --detach $dev || fail "vboot-attach --detach"
echo "STEP other-drive"
vboot-attach --drive 0x81 && fail "drive 0x81 was accepted"
echo "STEP damaged"
dd if=/dev/mem of=/orig bs=1 skip=$((table + 96)) count=1 2>/dev/null || fail "read /dev/mem"
printf '\201' | dd of=/dev/mem bs=1 seek=$((table + 96)) conv=notrunc 2>/dev/null || fail "write /dev/mem"
vboot-attach --info && fail "a damaged table was accepted"
dd if=/orig of=/dev/mem bs=1 seek=$((table + 96)) conv=notrunc 2>/dev/null || fail "restore /dev/mem"
vboot-attach --info > /dev/null || fail "the restored table was refused"
echo "STEP stale"
dd if=/dev/zero of=/dev/mem bs=1 seek=$((hook + 31)) count=8 conv=notrunc 2>/dev/null || fail "write /dev/mem"
vboot-attach --info && fail "a stale table was accepted"
echo "{ok}"
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        host_partition = host_partition,
        file = ATTACH_FILE,
        text = ATTACH_FILE_TEXT,
        new_file = ATTACH_NEW_FILE,
        new_text = ATTACH_NEW_TEXT,
        big_file = ATTACH_BIG_FILE,
        big_bytes = ATTACH_BIG_BYTES,
        ok = ATTACH_OK
    );
    let initrd = attach_initramfs(dir, "attach-initrd.img", &init, &files);
    build_syslinux_linux_guest_with(dir, &initrd, &[crate::disk::FileSpec::new(ATTACH_FILE, ATTACH_FILE_TEXT)])
}

/// The part of the attach bench guest's disk it measures: MiB 16 to 48 of its 48 MiB, past most of
/// the files of its partition.
pub const ATTACH_BENCH_OFFSET_MIB: u64 = 16;
pub const ATTACH_BENCH_LENGTH_MIB: u64 = 32;
/// How many 4 KiB transfers each random measurement makes.
pub const ATTACH_BENCH_RANDOM_COUNT: u64 = 1500;
/// What the attach bench guest prints when every measurement ran.
pub const ATTACH_BENCH_OK: &str = "VBOOT-ATTACH-BENCH-OK";

/// tests/guest-probe/iobench.rs built statically (glibc, as vboot-attach is) into `dir`.
pub fn build_iobench(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create guest dir");
    let out = dir.join("iobench");
    sh(Command::new("rustc")
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-C", "strip=symbols"])
        .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
        .arg(&out)
        .arg(crate::workspace_root().join("tests/guest-probe/iobench.rs")));
    out
}

/// The attach bench guest: [`build_syslinux_linux_guest_with`] whose initramfs attaches its own
/// disk with `vboot-attach` and measures it against a scratch disk of the same size attached
/// natively as the second virtio disk (/dev/vdb): first one sequential write over
/// [`ATTACH_BENCH_OFFSET_MIB`]..+[`ATTACH_BENCH_LENGTH_MIB`] of each (the scratch disk's file
/// then holds its blocks; a dynamic image should hold them before the boot), then `rounds` rounds of sequential read and write (1 MiB transfers,
/// through the page cache) and random read and write ([`ATTACH_BENCH_RANDOM_COUNT`] 4 KiB
/// transfers, O_DIRECT), each on the native disk and then on the attached one. Every measurement
/// prints an `IOBENCH` line (tests/guest-probe/iobench.rs); the preparing writes come before the
/// line `PREPARED`. Ends with [`ATTACH_BENCH_OK`], or `ATTACH-FAILED: ...`; QEMU ends with 33.
///
/// With `direct`, dm-mod is loaded and the disk attached with `vboot-attach --direct`: the
/// attached device measured is /dev/mapper/vboot-nbd0, whose in-place runs go straight to the
/// host disk.
pub fn build_attach_bench_guest(dir: &Path, rounds: u32, direct: bool) -> PathBuf {
    let modules: &[&str] = if direct { &["virtio_pci", "virtio_blk", "nbd", "dm_mod"] } else { &["virtio_pci", "virtio_blk", "nbd"] };
    let (mut files, load) = attach_tool_and_modules(modules, &[]);
    files.push(("/bin/iobench".into(), build_iobench(dir)));
    let init = format!(
        r#"{prologue}{load}
dev=$(vboot-attach {direct}--timeout 20) || fail "vboot-attach {direct}"
echo "ATTACHED $dev"
[ -b /dev/vdb ] || fail "no scratch disk /dev/vdb"
measure() {{ iobench $1 $2 {offset} {length} $3 $4 || fail "iobench $*"; }}
measure seq-write /dev/vdb 1048576
measure seq-write $dev 1048576
echo PREPARED
round=0
while [ $round -lt {rounds} ]; do
  for job in "seq-read 1048576" "seq-write 1048576" "rand-read 4096 {count}" "rand-write 4096 {count}"; do
    set -- $job
    measure $1 /dev/vdb $2 $3
    measure $1 $dev $2 $3
  done
  round=$((round + 1))
done
vboot-attach --detach /dev/nbd0 || fail "vboot-attach --detach"
echo "{ok}"
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        offset = ATTACH_BENCH_OFFSET_MIB,
        length = ATTACH_BENCH_LENGTH_MIB,
        count = ATTACH_BENCH_RANDOM_COUNT,
        rounds = rounds,
        direct = if direct { "--direct " } else { "" },
        ok = ATTACH_BENCH_OK
    );
    let initrd = attach_initramfs(dir, "attach-bench-initrd.img", &init, &files);
    build_syslinux_linux_guest_with(dir, &initrd, &[])
}

/// What the pivot guest prints when every step passed.
pub const PIVOT_OK: &str = "VBOOT-PIVOT-OK";
/// The pivot guest's own disk: [`build_syslinux_linux_guest_with`]'s 48 MiB, then a second FAT16
/// partition of this many MiB at 48 MiB, which the guest writes its files into.
pub const PIVOT_GUEST_PART2_START_LBA: u64 = 48 * 2048;
pub const PIVOT_GUEST_PART2_MIB: u64 = 60;
pub const PIVOT_GUEST_DISK_MIB: u64 = 112;
/// The MiB of new files the pivot guest writes each way: half of it in each of two files onto
/// the host partition (/new/A.BIN, a copy of a file in RAM, and /new/B.BIN) and half in each of
/// two files into its own disk's second partition (/G1.BIN, /G2.BIN).
pub const PIVOT_WRITE_MIB: u64 = 50;

/// The pivot guest (issue 17: the host partition stays usable while Linux runs): a raw disk of
/// [`PIVOT_GUEST_DISK_MIB`] whose initramfs, booted through vboot from `/vm/<image>` on the host
/// partition `/dev/<host_partition>` (FAT), does:
/// 1. with the host partition mounted read-only on /host and no server: `--pivot` refused;
/// 2. attaches drive 0x80 on /dev/nbd0 (raw host-disk extents), reads [`ATTACH_FILE`]; reads
///    the whole image through /host (into the page cache), then writes /PRE.BIN (4 MiB, a copy
///    of /tmp/pre) into its own disk's second partition through the server, underneath that
///    cache;
/// 3. refusals, the server still serving after each: `--pivot /host/vm/<decoy>` (a copy of the
///    image, same size, other sectors), a file on a tmpfs, the host partition remounted
///    read-write before the pivot;
/// 4. `--pivot /host/vm/<image>`: the server switches to the file; /host is now read-write;
///    the server's descriptors (`SERVER-FILES before/after`) show the host disk closed and the
///    file open; a second `--pivot` refused; four single sectors of /PRE.BIN and /tmp/pre
///    rewritten alike, and the two compared (`SHA-EXPECTED /g/PRE.BIN <sha256>`);
/// 5. at the same time, [`PIVOT_WRITE_MIB`] of new files onto /host and as much into its own
///    disk's second partition (`SHA <path> <sha256>` for each and /PRE.BIN, read back after
///    dropping the caches); unmounts, detaches;
/// 6. /host read-only again, attaches with `--read-only` and pivots: the server switches without
///    a remount (/host stays read-only) and serves; detaches, unmounts /host.
/// Steps print `STEP ...`, a failure `ATTACH-FAILED: ...`, the end [`PIVOT_OK`]; QEMU ends with 33.
pub fn build_attach_pivot_guest(dir: &Path, host_partition: &str, image: &str, decoy: &str) -> PathBuf {
    let (files, load) = attach_tool_and_modules(&["virtio_pci", "virtio_blk", "nbd", "vfat", "nls_cp437", "nls_ascii"], &[]);
    let half = PIVOT_WRITE_MIB / 2;
    let init = format!(
        r#"{prologue}mkdir -p /mnt /host /g /t /tmp
still_serving() {{ echo 3 > /proc/sys/vm/drop_caches; [ "$(cat /mnt{file})" = "{text}" ] || fail "the server stopped serving after: $1"; echo "STILL-SERVING after $1"; }}
echo "STEP modules"
{load}
wait_block /dev/{hp} || fail "no /dev/{hp}"
mount -t vfat -o ro /dev/{hp} /host || fail "mount the host partition read-only"
echo "STEP no-server"
vboot-attach --pivot /host/vm/{image} && fail "pivoted without a server"
echo "STEP attach"
dev=$(vboot-attach --timeout 20) || fail "vboot-attach with the host partition mounted read-only"
echo "ATTACHED $dev"
wait_block /dev/nbd0p2 || fail "no /dev/nbd0p2"
mount -t vfat -o ro /dev/nbd0p1 /mnt || fail "mount /dev/nbd0p1"
still_serving attach
server=$(cat /sys/block/nbd0/pid)
echo "SERVER-FILES before $(ls -l /proc/$server/fd | grep -o '/dev/vda$\|/host/vm/[^ ]*$' | sort -u | tr '\n' ' ')"
echo "STEP refusals"
vboot-attach --pivot /host/vm/{decoy} && fail "pivoted to another file"
still_serving decoy
mount -t tmpfs tmpfs /t && head -c 4096 /host/vm/{image} > /t/{image} || fail "a file on a tmpfs"
vboot-attach --pivot /t/{image} && fail "pivoted to a file on a tmpfs"
still_serving tmpfs
mount -o remount,rw /host || fail "remount /host read-write"
vboot-attach --pivot /host/vm/{image} && fail "pivoted with /host read-write"
mount -o remount,ro /host || fail "remount /host read-only"
still_serving read-write
# Last before the pivot (still_serving drops every cache): the page cache of the image through /host, then writes through the server underneath it: what the
# server must forget at the pivot (the VHD's BAT and the new blocks change under the cache).
dd if=/host/vm/{image} of=/dev/null bs=64k 2>/dev/null || fail "read the image through /host"
mount -t vfat /dev/nbd0p2 /g || fail "mount /dev/nbd0p2"
dd if=/dev/urandom of=/tmp/pre bs=1M count=4 2>/dev/null && cp /tmp/pre /g/PRE.BIN && sync || fail "write /g/PRE.BIN"
echo "STEP pivot"
vboot-attach --pivot /host/vm/{image} || fail "vboot-attach --pivot"
echo "HOST-MOUNT $(grep ' /host ' /proc/mounts)"
grep -q ' /host vfat rw' /proc/mounts || fail "/host is not read-write after the pivot"
# At once after the pivot, single sectors of PRE.BIN rewritten through the file: the server writes them into pages of the
# image file that would be stale had it not dropped them (the rest of each page is PRE.BIN's
# data, written underneath the cache before the pivot). /tmp/pre is the reference.
dd if=/dev/urandom of=/tmp/patch bs=512 count=1 2>/dev/null
for at in 1 801 4321 8190; do
  for f in /tmp/pre /g/PRE.BIN; do dd if=/tmp/patch of=$f bs=512 seek=$at conv=notrunc 2>/dev/null || fail "patch $f"; done
done
# Read back through the server without dropping every cache (drop_caches would drop the image
# file's stale pages too): /g unmounted and mounted again.
sync
umount /g && mount -t vfat /dev/nbd0p2 /g || fail "mount /dev/nbd0p2 again"
[ "$(sha256sum < /tmp/pre)" = "$(sha256sum < /g/PRE.BIN)" ] || fail "/g/PRE.BIN differs from /tmp/pre after sectors of it were rewritten after the pivot"
echo "SHA-EXPECTED /g/PRE.BIN $(sha256sum /tmp/pre | cut -d' ' -f1)"
still_serving pivot
echo "SERVER-FILES after $(ls -l /proc/$server/fd | grep -o '/dev/vda$\|/host/vm/[^ ]*$' | sort -u | tr '\n' ' ')"
vboot-attach --pivot /host/vm/{image} && fail "pivoted twice"
echo "STEP writes"
mkdir -p /host/new || fail "mkdir /host/new"
dd if=/dev/urandom of=/tmp/src bs=1M count={half} 2>/dev/null || fail "make /tmp/src"
read t0 rest < /proc/uptime
( cp /tmp/src /host/new/A.BIN && dd if=/dev/urandom of=/host/new/B.BIN bs=1M count={half} 2>/dev/null ) & host_pid=$!
( dd if=/dev/urandom of=/g/G1.BIN bs=1M count={half} 2>/dev/null && dd if=/dev/urandom of=/g/G2.BIN bs=1M count={half} 2>/dev/null ) & guest_pid=$!
wait $host_pid || fail "writing onto /host"
wait $guest_pid || fail "writing into /dev/nbd0p2"
sync || fail sync
read t1 rest < /proc/uptime
echo "WRITES-DONE from=$t0 to=$t1"
echo 3 > /proc/sys/vm/drop_caches
for f in /host/new/A.BIN /host/new/B.BIN /g/G1.BIN /g/G2.BIN /g/PRE.BIN; do
  echo "SHA $f $(sha256sum $f | cut -d' ' -f1)"
done
umount /g || fail "umount /g"
umount /mnt || fail "umount /mnt"
vboot-attach --detach $dev || fail "vboot-attach --detach"
echo "STEP read-only"
mount -o remount,ro /host || fail "remount /host read-only"
dev=$(vboot-attach --read-only --timeout 20) || fail "vboot-attach --read-only"
wait_block /dev/nbd0p1 || fail "no /dev/nbd0p1 (read-only)"
vboot-attach --pivot /host/vm/{image} || fail "vboot-attach --pivot of a read-only drive"
grep -q ' /host vfat ro' /proc/mounts || fail "/host was remounted for a read-only drive"
mount -t vfat -o ro /dev/nbd0p1 /mnt || fail "mount /dev/nbd0p1 (read-only)"
still_serving read-only
umount /mnt
vboot-attach --detach $dev || fail "vboot-attach --detach (read-only)"
umount /host || fail "umount /host"
echo "{ok}"
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        hp = host_partition,
        image = image,
        decoy = decoy,
        half = half,
        file = ATTACH_FILE,
        text = ATTACH_FILE_TEXT,
        ok = PIVOT_OK
    );
    let initrd = attach_initramfs(dir, "pivot-initrd.img", &init, &files);
    let disk = build_syslinux_linux_guest_with(dir, &initrd, &[crate::disk::FileSpec::new(ATTACH_FILE, ATTACH_FILE_TEXT)]);
    // The second partition: an MBR entry (type 0x0E, FAT16 LBA) and a FAT16 volume.
    let sectors = PIVOT_GUEST_PART2_MIB * 2048;
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(PIVOT_GUEST_DISK_MIB << 20).unwrap();
    let mut entry = [0u8; 16];
    entry[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[4] = 0x0E;
    entry[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&(PIVOT_GUEST_PART2_START_LBA as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    use std::os::unix::fs::FileExt;
    f.write_all_at(&entry, 0x1CE).unwrap();
    drop(f);
    let part2 = dir.join("pivot-part2.img");
    crate::disk::fat_volume(&part2, sectors, 16, &[]);
    crate::disk::write_at(&disk, PIVOT_GUEST_PART2_START_LBA, &part2);
    let _ = std::fs::remove_file(&part2);
    disk
}

/// What an attach guest's initramfs holds besides busybox: vboot-attach (target/vboot/, from
/// `cargo xtask build`) in /bin and /sbin, and the Debian kernel's `modules` with their
/// dependencies in /lib/modules/; and the script lines that insmod them in order, except `later`
/// (file names such as "nbd.ko"), which the guest loads itself.
fn attach_tool_and_modules(modules: &[&str], later: &[&str]) -> (Vec<(String, PathBuf)>, String) {
    let attach = crate::workspace_root().join("target/vboot/vboot-attach");
    assert!(attach.exists(), "{} is missing: run `cargo xtask build`", attach.display());
    let mut files: Vec<(String, PathBuf)> = vec![("/bin/vboot-attach".into(), attach.clone()), ("/sbin/vboot-attach".into(), attach)];
    let mut load = String::new();
    for m in debian_modules(modules) {
        let name = m.file_name().unwrap().to_str().unwrap().to_string();
        files.push((format!("/lib/modules/{}", name), m.clone()));
        if !later.contains(&name.as_str()) {
            load.push_str(&format!("insmod /lib/modules/{} || fail \"insmod {}\"\n", name, name));
        }
    }
    (files, load)
}

/// The start of every attach guest's /init: busybox's applets, /dev, /proc and /sys, output on
/// the serial line, and the helpers `finish` (end QEMU through isa-debug-exit with 33),
/// `fail MESSAGE` (print `ATTACH-FAILED: MESSAGE`, then finish) and `wait_block DEVICE` (up to
/// 30 s for a block device node).
const ATTACH_INIT_PROLOGUE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /dev /proc /sys
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec > /dev/ttyS0 2>&1
finish() { printf '\020' | dd of=/dev/port bs=1 seek=244 2>/dev/null; poweroff -f; }
fail() { echo "ATTACH-FAILED: $1"; finish; }
wait_block() { i=0; while [ ! -b $1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b $1 ]; }
"#;

/// An attach guest's initramfs at `dir/name`: busybox, `init` as /init, and `files` (from
/// [`attach_tool_and_modules`]).
fn attach_initramfs(dir: &Path, name: &str, init: &str, files: &[(String, PathBuf)]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create guest dir");
    let refs: Vec<(&str, &Path)> = files.iter().map(|(a, b)| (a.as_str(), b.as_path())).collect();
    busybox_initramfs_with(&dir.join(name), init, &refs)
}

/// The file the live CD's guest reads from its own ISO through vboot-attach, and its content.
pub const LIVE_CD_FILE: &str = "/vboot/live.txt";
pub const LIVE_CD_TEXT: &str = "the live CD found its medium through /dev/nbd";
/// The file it reads from the floppy, and the one it writes there.
pub const LIVE_FLOPPY_FILE: &str = "/FLOPPY.TXT";
pub const LIVE_FLOPPY_TEXT: &str = "on the floppy image";
pub const LIVE_FLOPPY_NEW_FILE: &str = "/FROMCD.TXT";
pub const LIVE_FLOPPY_NEW_TEXT: &str = "written by the live CD's Linux";

/// A live CD: [`isolinux_linux_iso_with`] whose initramfs (busybox, vboot-attach, the Debian
/// kernel's modules) finds its medium, booted through vboot with `cdrom=` and `floppy=` (no hard
/// disk). /init:
/// 1. `vboot-attach --info` (both drives listed);
/// 2. `--drive cdrom`: mounts the device as iso9660 and checks [`LIVE_CD_FILE`] and `big_file`
///    (its SHA-256 is `big_sha256`), finds the device read-only (a write fails), detaches;
/// 3. `--drive floppy`: mounts it as vfat, checks [`LIVE_FLOPPY_FILE`], writes
///    [`LIVE_FLOPPY_NEW_FILE`], detaches;
/// 4. without `--drive` (no hard disk: the table's first drive, the CD), whole 2048-byte blocks;
///    `--drive 0x80` refused with the list of drives;
/// 5. `--all`: one device per drive, each detached.
///
/// Steps print `STEP ...`, a failure `ATTACH-FAILED: ...`; the end [`ATTACH_OK`]; QEMU ends with 33.
pub fn build_attach_live_cd(dir: &Path, big_file: (&str, &[u8])) -> PathBuf {
    let (files, load) = attach_tool_and_modules(&["virtio_pci", "virtio_blk", "nbd", "isofs", "vfat", "nls_cp437", "nls_ascii"], &["nbd.ko"]);
    let big_sha256 = {
        let tmp = dir.join("live-big.bin");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&tmp, big_file.1).unwrap();
        crate::disk::sha256(&tmp)
    };
    let init = format!(
        r#"{prologue}mkdir -p /mnt
echo "STEP modules"
{load}
insmod /lib/modules/nbd.ko nbds_max=4 max_part=8 || fail "insmod nbd.ko"
echo "STEP info"
vboot-attach --info || fail "vboot-attach --info"
echo "STEP cdrom"
dev=$(vboot-attach --drive cdrom --timeout 20) || fail "vboot-attach --drive cdrom"
echo "CD-ON $dev ro=$(cat /sys/block/${{dev#/dev/}}/ro) bytes=$(($(cat /sys/block/${{dev#/dev/}}/size) * 512))"
mount -t iso9660 -o ro $dev /mnt || fail "mount -t iso9660 $dev"
[ "$(cat /mnt{cd_file})" = "{cd_text}" ] || fail "{cd_file} on the CD"
[ "$(sha256sum /mnt{big} | cut -d' ' -f1)" = "{big_sha256}" ] || fail "{big} on the CD"
echo "CD-READ-OK"
umount /mnt
dd if=/dev/zero of=$dev bs=2048 count=1 conv=fsync 2>/dev/null && fail "a write to the CD's device was accepted"
echo "CD-WRITE-REFUSED"
vboot-attach --detach $dev || fail "detach the CD"
echo "STEP floppy"
dev=$(vboot-attach --drive floppy --timeout 20) || fail "vboot-attach --drive floppy"
echo "FLOPPY-ON $dev ro=$(cat /sys/block/${{dev#/dev/}}/ro)"
mount -t vfat $dev /mnt || fail "mount -t vfat $dev"
[ "$(cat /mnt{fd_file})" = "{fd_text}" ] || fail "{fd_file} on the floppy"
echo -n "{fd_new_text}" > /mnt{fd_new_file} || fail "write {fd_new_file}"
umount /mnt || fail "umount the floppy"
vboot-attach --detach $dev || fail "detach the floppy"
echo "FLOPPY-OK"
echo "STEP default"
dev=$(vboot-attach --timeout 20) || fail "vboot-attach without --drive"
echo "DEFAULT-ON $dev bytes=$(($(cat /sys/block/${{dev#/dev/}}/size) * 512))"
vboot-attach --detach $dev || fail "detach the default drive"
vboot-attach --drive 0x80 && fail "--drive 0x80 was accepted"
echo "STEP all"
all=$(vboot-attach --all --timeout 20) || fail "vboot-attach --all"
echo "ALL-ON" $all
for d in $all; do vboot-attach --detach $d || fail "detach $d"; done
echo "{ok}"
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        cd_file = LIVE_CD_FILE,
        cd_text = LIVE_CD_TEXT,
        big = big_file.0,
        big_sha256 = big_sha256,
        fd_file = LIVE_FLOPPY_FILE,
        fd_text = LIVE_FLOPPY_TEXT,
        fd_new_file = LIVE_FLOPPY_NEW_FILE,
        fd_new_text = LIVE_FLOPPY_NEW_TEXT,
        ok = ATTACH_OK
    );
    let initrd = attach_initramfs(dir, "live-initrd.img", &init, &files);
    isolinux_linux_iso_with(dir, &initrd, &[(LIVE_CD_FILE, LIVE_CD_TEXT.as_bytes()), big_file])
}

/// A one-sector guest that prints `message` (and CR LF) over serial and exits QEMU with 33,
/// in a raw image of `sectors` sectors. Used where what matters is which image booted.
pub fn hello_guest(dir: &Path, name: &str, message: &str, sectors: u64) -> PathBuf {
    hello_guest_with(dir, name, message, sectors, false)
}

/// What the guest of [`key_guest`] prints, followed by the byte it read.
pub const GUEST_KEY: &str = "GUEST-KEY ";

/// [`hello_guest`] that, after `message`, waits for a byte on COM1 and prints [`GUEST_KEY`] and
/// that byte before it exits: which key reached the guest rather than vboot.
pub fn key_guest(dir: &Path, name: &str, message: &str, sectors: u64) -> PathBuf {
    hello_guest_with(dir, name, message, sectors, true)
}

fn hello_guest_with(dir: &Path, name: &str, message: &str, sectors: u64, read_key: bool) -> PathBuf {
    let mut sector = assemble_guest("hello", &dir.join(format!("{}-build", name)), &[]);
    assert_eq!(sector.len(), 512);
    let text = format!("{}\r\n", message);
    assert!(text.len() < 0xFE);
    sector[0x100..0x100 + text.len()].copy_from_slice(text.as_bytes());
    sector[0xFF] = read_key as u8;
    let img = dir.join(format!("{}.img", name));
    let mut bytes = vec![0u8; (sectors as usize) * SECTOR_BYTES];
    bytes[..512].copy_from_slice(&sector);
    std::fs::write(&img, bytes).unwrap();
    img
}

/// The fault guest (tests/guest-probe/faulter.s), for the fault-injection firmware: `rounds`
/// times, INT 13h with AH=`fault_ah` on its boot drive must fail with CF=1 AH=20h, and the next
/// call (AH=42h of LBA 1, which holds "VBFAULT1") must work; then FAULTER DONE, and a byte on
/// COM1 ends QEMU with 33. In a raw image of `sectors` sectors.
pub fn faulter_guest(dir: &Path, name: &str, fault_ah: u8, rounds: u8, sectors: u64) -> PathBuf {
    let mut sector = assemble_guest("faulter", &dir.join(format!("{}-build", name)), &[]);
    assert_eq!(sector.len(), 512);
    sector[0x1F0] = fault_ah;
    sector[0x1F1] = rounds;
    let img = dir.join(format!("{}.img", name));
    let mut bytes = vec![0u8; (sectors as usize) * SECTOR_BYTES];
    bytes[..512].copy_from_slice(&sector);
    bytes[512..520].copy_from_slice(b"VBFAULT1");
    std::fs::write(&img, bytes).unwrap();
    img
}

/// A guest that reads its whole boot disk with AH=42h (127 sectors a call), between the lines
/// READ-START and READ-END, then exits QEMU with 33; in a raw image of `sectors` sectors filled
/// with the probe pattern. Used by the benchmarks.
pub fn reader_guest(dir: &Path, sectors: u64) -> PathBuf {
    // The stub's counters, at offsets defined once in vboot::stub (src/stub.rs).
    let code = assemble_guest(
        "reader",
        &dir.join("reader-build"),
        &[
            ("S_CALLS", vboot::stub::offset::CALLS as u64),
            ("S_FAST_CALLS", vboot::stub::offset::FAST_CALLS as u64),
            ("S_ENGINE_BIOS_CALLS", vboot::stub::offset::ENGINE_BIOS_CALLS as u64),
            ("S_BOUNCE_COPIED_BYTES", vboot::stub::offset::BOUNCE_COPIED_BYTES as u64),
        ],
    );
    let img = dir.join("reader.img");
    make_pattern_disk(&img, sectors);
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::Write;
    f.write_all(&code).unwrap();
    img
}

/// The stub's counters as the reader guest printed them after its reads ("STUB engine=... fast=...
/// bios=... copied=..."), `None` when the guest found no stub (a native run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubCounters {
    /// Guest calls the engine served (through protected mode).
    pub engine_calls: u32,
    /// Guest calls the stub's real-mode fast path served.
    pub fast_calls: u32,
    /// BIOS calls the engine made through the stub.
    pub engine_bios_calls: u32,
    /// Bytes the engine copied through a bounce buffer.
    pub bounce_copied_bytes: u32,
}

pub fn stub_counters(serial: &str) -> Option<StubCounters> {
    let line = serial.lines().find(|l| l.starts_with("STUB engine="))?;
    let field = |name: &str| -> Option<u32> {
        let at = line.find(&format!("{}=", name))? + name.len() + 1;
        u32::from_str_radix(line.get(at..at + 8)?, 16).ok()
    };
    Some(StubCounters {
        engine_calls: field("engine")?,
        fast_calls: field("fast")?,
        engine_bios_calls: field("bios")?,
        bounce_copied_bytes: field("copied")?,
    })
}

// ---- The chain guest (tests/guest-probe/chainer.s) -------------------------------------------

/// Sectors the chain guest occupies from LBA 0: boot sector, configuration, two code sectors.
pub const CHAIN_GUEST_SECTORS: u64 = 4;
pub const CHAIN_CONFIG_LBA: u64 = 1;
/// The guest hashes its disk in chunks of this many sectors (the last chunk may be shorter).
pub const CHAIN_CHUNK_SECTORS: usize = 64;
/// Hash the whole disk before the writes / after them.
pub const CHAIN_HASH_BEFORE: u32 = 1;
pub const CHAIN_HASH_AFTER: u32 = 2;
pub const CHAIN_PASS: &str = "CHAIN-PASS";
pub const CHAIN_MAX_RUNS: usize = 16;

/// `writes` writes of `sectors` sectors each, the first at `lba`, each `stride` sectors after the
/// one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteRun {
    pub lba: u32,
    pub writes: u32,
    pub stride: u32,
    pub sectors: u32,
}

/// What the chain guest does (its LBA 1; layout in chainer.s).
#[derive(Clone, Debug)]
pub struct ChainConfig {
    pub flags: u32,
    pub tag: u32,
    pub runs: Vec<WriteRun>,
}

impl ChainConfig {
    /// Hash the disk once, write nothing.
    pub fn hash_only() -> ChainConfig {
        ChainConfig { flags: CHAIN_HASH_BEFORE, tag: 0, runs: vec![] }
    }

    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        assert!(self.runs.len() <= CHAIN_MAX_RUNS, "at most {} write runs", CHAIN_MAX_RUNS);
        let mut s = [0u8; SECTOR_BYTES];
        s[0..8].copy_from_slice(b"VBCHAIN1");
        let mut put = |off: usize, v: u32| s[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x08, self.flags);
        put(0x0C, self.runs.len() as u32);
        put(0x10, self.tag);
        for (i, r) in self.runs.iter().enumerate() {
            assert!((1..=64).contains(&r.sectors), "1 to 64 sectors per write");
            assert!(r.lba as u64 >= CHAIN_GUEST_SECTORS, "a write run must not overwrite the guest");
            put(0x20 + 16 * i, r.lba);
            put(0x24 + 16 * i, r.writes);
            put(0x28 + 16 * i, r.stride);
            put(0x2C + 16 * i, r.sectors);
        }
        s
    }

    /// Every sector the guest writes, in the order it writes them.
    pub fn written_lbas(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for r in &self.runs {
            for k in 0..r.writes as u64 {
                let first = r.lba as u64 + k * r.stride as u64;
                v.extend(first..first + r.sectors as u64);
            }
        }
        v
    }

    /// What the disk holds after the guest's writes: `raw` with them applied.
    pub fn apply(&self, raw: &mut [u8]) {
        for lba in self.written_lbas() {
            let at = lba as usize * SECTOR_BYTES;
            raw[at..at + SECTOR_BYTES].copy_from_slice(&chain_written_sector(lba, self.tag));
        }
    }
}

/// What the chain guest writes into sector `lba` with `tag` (chainer.s).
pub fn chain_written_sector(lba: u64, tag: u32) -> [u8; SECTOR_BYTES] {
    let mut s = [0u8; SECTOR_BYTES];
    let mut v = (lba as u32).wrapping_mul(0x9E37_79B1) ^ tag;
    for i in 0..128 {
        s[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        v = v.wrapping_add(0x0100_0193);
    }
    s
}

/// Assemble chainer.s: [`CHAIN_GUEST_SECTORS`] sectors, with an empty configuration sector.
pub fn build_chain_guest(out: &Path) -> Vec<u8> {
    let code = assemble_guest("chainer", out, &[]);
    assert_eq!(code.len() as u64, CHAIN_GUEST_SECTORS * SECTOR_BYTES as u64, "chainer.bin has an unexpected size");
    code
}

/// The guest's first sectors with `cfg` as its configuration: write them at LBA 0.
pub fn chain_guest_sectors(code: &[u8], cfg: &ChainConfig) -> Vec<u8> {
    let mut v = code.to_vec();
    let at = CHAIN_CONFIG_LBA as usize * SECTOR_BYTES;
    v[at..at + SECTOR_BYTES].copy_from_slice(&cfg.to_sector());
    v
}

/// FNV-1a 32-bit of each [`CHAIN_CHUNK_SECTORS`]-sector chunk of `raw`, as the guest computes it.
pub fn chunk_hashes(raw: &[u8]) -> Vec<u32> {
    raw.chunks(CHAIN_CHUNK_SECTORS * SECTOR_BYTES)
        .map(|c| c.iter().fold(0x811C_9DC5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193)))
        .collect()
}

/// The hash passes in the guest's output, in order.
pub fn hash_passes(output: &str) -> Vec<Vec<u32>> {
    let mut passes = Vec::new();
    let mut cur: Option<Vec<u32>> = None;
    for line in output.lines().map(str::trim) {
        match line {
            "HASH-BEGIN" => cur = Some(Vec::new()),
            "HASH-END" => passes.extend(cur.take()),
            _ => {
                if let Some(c) = cur.as_mut() {
                    if let Ok(h) = u32::from_str_radix(line, 16) {
                        c.push(h);
                    }
                }
            }
        }
    }
    passes
}

/// Compare a hash pass with the expected disk; the error names the first chunks that differ
/// (as sector ranges).
pub fn compare_hashes(got: &[u32], want_raw: &[u8]) -> Result<(), String> {
    let want = chunk_hashes(want_raw);
    if got.len() != want.len() {
        return Err(format!("the guest hashed {} chunks, the disk has {}", got.len(), want.len()));
    }
    let bad: Vec<String> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .take(8)
        .map(|(i, _)| format!("sectors {}..{}", i * CHAIN_CHUNK_SECTORS, (i + 1) * CHAIN_CHUNK_SECTORS))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("the guest read other data than expected in {}", bad.join(", ")))
    }
}

// ---- Debian installed in a disk image -------------------------------------------------------

/// Which initramfs generator a debootstrapped Debian guest ([`debian_rootfs_tarball`]) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebianInitramfs {
    /// Debian's default, initramfs-tools (`update-initramfs`).
    Tools,
    /// Debian's `dracut` package (059 in bookworm), which replaces initramfs-tools.
    Dracut,
}

/// Unmounts on the way out, whatever happens.
pub struct Mounted(pub PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Run `args` chrooted into `root` with /proc mounted there (unmounted after, whatever
/// happens); returns (success, stdout + stderr).
pub fn chroot_with_proc(root: &Path, args: &[&str]) -> (bool, String) {
    sh(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.join("proc")));
    let _proc = Mounted(root.join("proc"));
    let out = Command::new("chroot").arg(root).args(args).env("DEBIAN_FRONTEND", "noninteractive").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A tar of a Debian bookworm root filesystem (debootstrap minbase with the kernel, systemd,
/// udev and e2fsprogs), made once (it needs root and deb.debian.org) and cached in
/// target/guest-cache/: `debian-bookworm-rootfs.tar` with initramfs-tools, and
/// `debian-bookworm-dracut-rootfs.tar`, the same after `apt-get install dracut` in the chroot
/// (which removes initramfs-tools and builds a first initramfs).
pub fn debian_rootfs_tarball(initramfs: DebianInitramfs) -> PathBuf {
    // Tests of one binary run in parallel; the dracut tree starts from the other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    debian_rootfs_tarball_locked(initramfs)
}

fn debian_rootfs_tarball_locked(initramfs: DebianInitramfs) -> PathBuf {
    let cache = guest_cache_dir();
    let name = match initramfs {
        DebianInitramfs::Tools => "debian-bookworm-rootfs.tar",
        DebianInitramfs::Dracut => "debian-bookworm-dracut-rootfs.tar",
    };
    let tarball = cache.join(name);
    if tarball.exists() {
        return tarball;
    }
    let tmp = cache.join(format!("{}-{}", name.trim_end_matches(".tar"), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    match initramfs {
        DebianInitramfs::Tools => {
            require_tool("debootstrap", "debootstrap");
            sh(Command::new("debootstrap")
                .args(["--variant=minbase", "--include=linux-image-amd64,initramfs-tools,systemd-sysv,udev,kmod,e2fsprogs", "bookworm"])
                .arg(&tmp)
                .arg("http://deb.debian.org/debian"));
        }
        DebianInitramfs::Dracut => {
            let base = debian_rootfs_tarball_locked(DebianInitramfs::Tools);
            std::fs::create_dir_all(&tmp).unwrap();
            sh(Command::new("tar").arg("-C").arg(&tmp).arg("-xf").arg(&base));
            let script = "apt-get update -q && apt-get install -y -q --no-install-recommends dracut && apt-get clean";
            let (ok, said) = chroot_with_proc(&tmp, &["sh", "-c", script]);
            assert!(ok, "apt-get install dracut in the chroot failed:\n{}", said);
        }
    }
    sh(Command::new("tar").arg("-C").arg(&tmp).arg("-cf").arg(tarball.with_extension("tmp")).arg("."));
    std::fs::rename(tarball.with_extension("tmp"), &tarball).unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
    tarball
}

// ---- CDs and floppies -----------------------------------------------------------------------

/// What the floppy check guest prints when every step passed.
pub const FLOPPY_PASS: &str = "FLOPPY PASS";
pub const FLOPPY_144_BYTES: u64 = 1_474_560;
/// LBA the floppy check guest writes (the last sector of a 1.44M floppy), and what it writes.
pub const FLOPPY_WRITE_LBA: u64 = 2879;
pub const FLOPPY_WRITE_MARKER: &[u8; 16] = b"VBFLOPPY-WRITTEN";

/// A 1.44M floppy whose boot sector is tests/guest-probe/floppy.s and whose other sectors hold
/// [`pattern_sector`]: the guest checks the floppy answers of INT 13h (steps listed in floppy.s)
/// and writes [`FLOPPY_WRITE_MARKER`] to [`FLOPPY_WRITE_LBA`].
pub fn floppy_check_guest(dir: &Path) -> PathBuf {
    let code = assemble_guest("floppy", &dir.join("floppy-check-build"), &[]);
    assert_eq!(code.len(), 512, "floppy.s must assemble to one sector");
    let img = dir.join("floppy-check.img");
    make_pattern_disk(&img, FLOPPY_144_BYTES / 512);
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all(&code).unwrap();
    img
}

/// The boot sector of [`hello_guest`] alone (512 bytes), for loaders that boot a file holding
/// a boot sector (SYSLINUX `KERNEL x.bs`).
pub fn hello_boot_sector(dir: &Path, name: &str, message: &str) -> Vec<u8> {
    let img = hello_guest(dir, name, message, 1);
    std::fs::read(img).unwrap()
}

/// A FAT12 1.44M floppy with SYSLINUX (`syslinux --install`) whose config turns on the serial
/// console (SYSLINUX prints its banner there) and boots `/hello.bs`, a boot sector that prints
/// `message` and ends QEMU with 33: so `message` proves SYSLINUX read its config and a file.
pub fn syslinux_floppy(dir: &Path, name: &str, message: &str) -> PathBuf {
    let cfg = "SERIAL 0 115200\nDEFAULT hello\nPROMPT 0\nTIMEOUT 0\nLABEL hello\n  KERNEL /hello.bs\n";
    let hello = dir.join(format!("{}-hello.bs", name));
    std::fs::write(&hello, hello_boot_sector(dir, &format!("{}-hello", name), message)).unwrap();
    syslinux_floppy_with(dir, name, cfg, &[("/hello.bs", &hello)])
}

/// A FAT12 1.44M floppy with SYSLINUX (`syslinux --install`) whose syslinux.cfg is `cfg` and
/// which holds `files` (path on the floppy, local file).
pub fn syslinux_floppy_with(dir: &Path, name: &str, cfg: &str, files: &[(&str, &Path)]) -> PathBuf {
    require_tool("syslinux", "syslinux");
    require_tool("mkfs.fat", "dosfstools");
    let img = dir.join(format!("{}.img", name));
    let _ = std::fs::remove_file(&img);
    sh(Command::new("mkfs.fat").args(["-C", "-F", "12", "-n", "VBOOTFD"]).arg(&img).arg("1440"));
    sh(Command::new("syslinux").arg("--install").arg(&img));
    let cfg_path = dir.join(format!("{}-syslinux.cfg", name));
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut all: Vec<(&Path, String)> = vec![(&cfg_path, String::from("::/syslinux.cfg"))];
    all.extend(files.iter().map(|(dst, src)| (*src, format!("::{}", dst))));
    for (src, dst) in all {
        sh(Command::new("mcopy").arg("-o").arg("-i").arg(&img).arg(src).arg(dst).env("MTOOLS_SKIP_CHECK", "1"));
    }
    img
}

/// `xorriso -as mkisofs` over the directory `tree` into `iso`, with `boot_args` (the El
/// Torito options).
pub fn make_iso(tree: &Path, iso: &Path, boot_args: &[&str]) -> PathBuf {
    require_tool("xorriso", "xorriso");
    let _ = std::fs::remove_file(iso);
    sh(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "VBOOTCD", "-o"])
        .arg(iso)
        .args(boot_args)
        .arg(tree));
    iso.to_path_buf()
}

/// A CD whose no-emulation boot image (4 sectors at 0000:7C00) is the hostile-register guest
/// (tests/guest-probe/hostile.s): INT 13h calls on its own drive that used to stop or corrupt
/// the resident engine must each fail with their status, then a plain read must work; it prints
/// HOSTILE DONE and ends QEMU with 33.
pub fn hostile_iso(dir: &Path) -> PathBuf {
    let mut code = assemble_guest("hostile", &dir.join("hostile-build"), &[]);
    assert!(code.len() <= 2048, "the hostile guest is {} bytes; the catalog loads 2048", code.len());
    code.resize(2048, 0);
    let tree = dir.join("hostile-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hostile.bin"), code).unwrap();
    make_iso(&tree, &dir.join("hostile.iso"), &["-b", "hostile.bin", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4"])
}

pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// An ISOLINUX CD (Debian's isolinux.bin and ldlinux.c32, no-emulation, boot-info table) whose
/// config turns on the serial console and boots `/hello.bs` from the ISO, which prints `message`
/// and ends QEMU with 33. The catalog asks the BIOS to load 4 sectors (`-boot-load-size 4`),
/// or with `load_whole` all of isolinux.bin (xorriso's default), which covers 0000:8000 on.
pub fn isolinux_iso(dir: &Path, name: &str, message: &str, load_whole: bool) -> PathBuf {
    assert!(Path::new(ISOLINUX_BIN).exists(), "{} is missing: install the Debian package isolinux", ISOLINUX_BIN);
    assert!(Path::new(LDLINUX_C32).exists(), "{} is missing: install the Debian package syslinux-common", LDLINUX_C32);
    let tree = dir.join(format!("{}-tree", name));
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    std::fs::copy(ISOLINUX_BIN, tree.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(LDLINUX_C32, tree.join("isolinux/ldlinux.c32")).unwrap();
    let cfg = "SERIAL 0 115200\nDEFAULT hello\nPROMPT 0\nTIMEOUT 0\nLABEL hello\n  KERNEL /hello.bs\n";
    std::fs::write(tree.join("isolinux/isolinux.cfg"), cfg).unwrap();
    std::fs::write(tree.join("hello.bs"), hello_boot_sector(dir, &format!("{}-hello", name), message)).unwrap();
    let mut args = vec!["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-info-table"];
    if !load_whole {
        args.extend(["-boot-load-size", "4"]);
    }
    make_iso(&tree, &dir.join(format!("{}.iso", name)), &args)
}

/// An ISOLINUX CD that boots Debian's kernel with [`busybox_initramfs`] (no emulation, 4
/// sectors): Linux prints [`LINUX_OK`] on ttyS0 and ends QEMU with 33. The kernel is 64-bit:
/// boot with qemu-system-x86_64.
pub fn isolinux_linux_iso(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let initrd = busybox_initramfs(&dir.join("linux-cd-initrd.img"));
    isolinux_linux_iso_with(dir, &initrd, &[])
}

/// [`isolinux_linux_iso`] with another initramfs and more files (path on the ISO, bytes).
pub fn isolinux_linux_iso_with(dir: &Path, initrd: &Path, extra: &[(&str, &[u8])]) -> PathBuf {
    let kernel = debian_kernel();
    let tree = dir.join("linux-cd-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    std::fs::copy(ISOLINUX_BIN, tree.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(LDLINUX_C32, tree.join("isolinux/ldlinux.c32")).unwrap();
    std::fs::copy(&kernel, tree.join("vmlinuz")).unwrap();
    std::fs::copy(initrd, tree.join("initrd.img")).unwrap();
    for (path, bytes) in extra {
        let to = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
    let cfg = "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0 quiet panic=-1\n";
    std::fs::write(tree.join("isolinux/isolinux.cfg"), cfg).unwrap();
    make_iso(
        &tree,
        &dir.join("linux.iso"),
        &["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"],
    )
}

/// A GRUB rescue CD from `grub-mkrescue` (i386-pc, no-emulation El Torito) holding `files` and
/// a /boot/grub/grub.cfg that sets up the serial console and then runs `script`.
pub fn grub_rescue_iso(dir: &Path, name: &str, script: &str, files: &[(&str, &[u8])]) -> PathBuf {
    require_tool("grub-mkrescue", "grub-common");
    require_tool("xorriso", "xorriso");
    require_tool("mformat", "mtools");
    let tree = dir.join(format!("{}-tree", name));
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
    let cfg = format!("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n{}\n", script);
    std::fs::write(tree.join("boot/grub/grub.cfg"), cfg).unwrap();
    for (path, bytes) in files {
        let p = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let iso = dir.join(format!("{}.iso", name));
    let _ = std::fs::remove_file(&iso);
    sh(Command::new("grub-mkrescue")
        .args(["-d", GRUB_DIR, "-o"])
        .arg(&iso)
        .arg(&tree));
    iso
}

// ---- The big-disk I/O guest (tests/guest-probe/bigio.s) --------------------------------------

/// Sectors the big-disk I/O guest occupies from LBA 0: boot sector, configuration, four code
/// sectors.
pub const BIGIO_SECTORS: u64 = 6;
pub const BIGIO_CONFIG_LBA: u64 = 1;
pub const BIGIO_PASS: &str = "BIGIO-PASS";
pub const BIGIO_FAIL: &str = "BIGIO-FAIL";
pub const BIGIO_MAX_OPS: usize = 30;
/// The most writes a benchmark list holds (64 sectors of u32 LBAs).
pub const BIGIO_BENCH_MAX_WRITES: u32 = 64 * 128;

/// One thing the big-disk I/O guest does, in order (64-bit LBAs, 1 to 64 sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BigOp {
    /// Write the tagged pattern ([`chain_written_sector`]) by AH=43h, read it back by AH=42h.
    Write { lba: u64, sectors: u16 },
    /// Read by AH=42h: every byte must be `byte`.
    Fill { lba: u64, sectors: u16, byte: u8 },
    /// Read by AH=42h: the tagged pattern must be there (written earlier).
    Pattern { lba: u64, sectors: u16 },
}

impl BigOp {
    pub fn lba(&self) -> u64 {
        match *self {
            BigOp::Write { lba, .. } | BigOp::Fill { lba, .. } | BigOp::Pattern { lba, .. } => lba,
        }
    }
    pub fn sectors(&self) -> u16 {
        match *self {
            BigOp::Write { sectors, .. } | BigOp::Fill { sectors, .. } | BigOp::Pattern { sectors, .. } => sectors,
        }
    }
    /// The line the guest prints when the operation passed.
    pub fn ok_line(&self) -> String {
        let kind = match self {
            BigOp::Write { .. } => 'W',
            BigOp::Fill { .. } => 'F',
            BigOp::Pattern { .. } => 'P',
        };
        format!("OK {} {:08X}{:08X} +{:08X}", kind, self.lba() >> 32, self.lba() as u32, self.sectors())
    }
}

/// The benchmark run after the operations: `writes` one-sector writes (of the tagged pattern) at
/// the LBAs listed from `list_lba` on ([`bigio_bench_list`] makes the list's sectors).
#[derive(Clone, Copy, Debug)]
pub struct BigBench {
    pub writes: u32,
    pub list_lba: u32,
}

/// What the big-disk I/O guest does (its LBA 1; layout in bigio.s).
#[derive(Clone, Debug)]
pub struct BigIoConfig {
    pub tag: u32,
    pub ops: Vec<BigOp>,
    pub bench: Option<BigBench>,
}

impl BigIoConfig {
    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        assert!(self.ops.len() <= BIGIO_MAX_OPS, "at most {} operations", BIGIO_MAX_OPS);
        let mut s = [0u8; SECTOR_BYTES];
        s[0..8].copy_from_slice(b"VBBIGIO1");
        let put = |s: &mut [u8; SECTOR_BYTES], off: usize, v: u32| s[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(&mut s, 0x08, self.ops.len() as u32);
        put(&mut s, 0x0C, self.tag);
        if let Some(b) = self.bench {
            assert!(b.writes >= 200, "the benchmark times its first and last hundred writes");
            assert!(b.writes <= BIGIO_BENCH_MAX_WRITES, "at most {} benchmark writes", BIGIO_BENCH_MAX_WRITES);
            put(&mut s, 0x10, 1);
            put(&mut s, 0x14, b.writes);
            put(&mut s, 0x18, b.list_lba);
        }
        for (i, op) in self.ops.iter().enumerate() {
            let at = 0x20 + 16 * i;
            assert!((1..=64).contains(&op.sectors()), "1 to 64 sectors per operation");
            assert!(op.lba() >= BIGIO_SECTORS || matches!(op, BigOp::Fill { .. } | BigOp::Pattern { .. }), "a write must not overwrite the guest");
            s[at..at + 8].copy_from_slice(&op.lba().to_le_bytes());
            s[at + 8..at + 10].copy_from_slice(&op.sectors().to_le_bytes());
            let (kind, fill) = match *op {
                BigOp::Write { .. } => (1u8, 0u8),
                BigOp::Fill { byte, .. } => (2, byte),
                BigOp::Pattern { .. } => (3, 0),
            };
            s[at + 10] = kind;
            s[at + 11] = fill;
        }
        s
    }

    /// What sector `lba` holds after the guest wrote it.
    pub fn written(&self, lba: u64) -> [u8; SECTOR_BYTES] {
        chain_written_sector(lba, self.tag)
    }
}

/// The sectors holding a benchmark's list of LBAs (u32 LE each, zero-padded to whole sectors):
/// write them at the list's LBA.
pub fn bigio_bench_list(lbas: &[u64]) -> Vec<u8> {
    let mut v: Vec<u8> = lbas.iter().flat_map(|&l| u32::try_from(l).expect("benchmark LBAs are 32-bit").to_le_bytes()).collect();
    v.resize(v.len().div_ceil(SECTOR_BYTES) * SECTOR_BYTES, 0);
    v
}

/// Assemble bigio.s: [`BIGIO_SECTORS`] sectors, with an empty configuration sector.
pub fn build_bigio_guest(out: &Path) -> Vec<u8> {
    let code = assemble_guest("bigio", out, &[]);
    assert_eq!(code.len() as u64, BIGIO_SECTORS * SECTOR_BYTES as u64, "bigio.bin has an unexpected size");
    code
}

/// The guest's first sectors with `cfg` as its configuration: write them at LBA 0.
pub fn bigio_guest_sectors(code: &[u8], cfg: &BigIoConfig) -> Vec<u8> {
    let mut v = code.to_vec();
    let at = BIGIO_CONFIG_LBA as usize * SECTOR_BYTES;
    v[at..at + SECTOR_BYTES].copy_from_slice(&cfg.to_sector());
    v
}

/// The disk size the guest read with AH=48h (its `DISK` line), in sectors.
pub fn bigio_disk_sectors(output: &str) -> Option<u64> {
    output.lines().find_map(|l| l.trim().strip_prefix("DISK ")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
}

// ---- The drive-numbering guest (tests/guest-probe/drives.s) ---------------------------------

/// The last line of the drive-numbering guest.
pub const DRIVES_DONE: &str = "DRIVES DONE";

/// What the drive-numbering guest reported: the hard-disk counts (BIOS data area, AH=08h on
/// 80h) and, for each hard disk from 80h, its number, sector count (AH=48h, low 32 bits) and MBR
/// disk signature.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrivesReport {
    pub boot_drive: u8,
    pub count_bda: u8,
    pub count_08h: u8,
    pub drives: Vec<(u8, u32, u32)>,
}

/// The guest of tests/guest-probe/drives.s in a raw image of `sectors` sectors with MBR disk
/// signature `signature`: it lists the hard disks it sees (see [`parse_drives_report`]).
pub fn drives_guest(dir: &Path, name: &str, signature: u32, sectors: u64) -> PathBuf {
    let mut sector = assemble_guest("drives", &dir.join(format!("{}-build", name)), &[]);
    assert_eq!(sector.len(), 512);
    sector[440..444].copy_from_slice(&signature.to_le_bytes());
    let img = dir.join(format!("{}.img", name));
    let mut bytes = vec![0u8; (sectors as usize) * SECTOR_BYTES];
    bytes[..512].copy_from_slice(&sector);
    std::fs::write(&img, bytes).unwrap();
    img
}

/// The drive-numbering guest's report in `output`, or `None` when it did not finish.
pub fn parse_drives_report(output: &str) -> Option<DrivesReport> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let mut report = DrivesReport::default();
    let head = output.lines().find(|l| l.starts_with("DRIVES boot "))?;
    let w: Vec<&str> = head.split_whitespace().collect();
    report.boot_drive = hex(w.get(2)?)? as u8;
    report.count_bda = hex(w.get(4)?)? as u8;
    report.count_08h = hex(w.get(6)?)? as u8;
    for l in output.lines().filter(|l| l.starts_with("DRIVE ")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        report.drives.push((hex(w.get(1)?)? as u8, hex(w.get(3)?)?, hex(w.get(5)?)?));
    }
    output.contains(DRIVES_DONE).then_some(report)
}

// ---- A write through INT 13h before Linux (tests/guest-probe/mbrwrite.s) ----------------------

/// The sector the writing MBR marks, and what it writes there (the rest of the sector is zeros).
pub const MBR_MARK_LBA: u64 = 40;
pub const MBR_MARK: &str = "VBOOT-MBR-MARK-1";

/// [`build_syslinux_linux_guest_with`] with tests/guest-probe/mbrwrite.s as its MBR: before
/// SYSLINUX starts, the MBR prints whether sector [`MBR_MARK_LBA`] holds [`MBR_MARK`]
/// ("MBR-MARK-SEEN" / "MBR-MARK-NONE") and writes it there through INT 13h AH=43h
/// ("MBR-MARK-WRITTEN"). Linux's /init then attaches drive 0x80 with vboot-attach and prints the
/// first bytes of that sector as /dev/nbd0 holds it ("LINUX-SAW <text>"), and ends QEMU with 33.
pub fn build_mbr_write_attach_guest(dir: &Path) -> PathBuf {
    let (files, load) = attach_tool_and_modules(&["virtio_pci", "virtio_blk", "nbd"], &[]);
    let init = format!(
        r#"{prologue}{load}
dev=$(vboot-attach --timeout 20) || {{ echo "ATTACH-FAILED"; finish; }}
i=0; while [ ! -b ${{dev}}p1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "LINUX-SAW $(dd if=$dev bs=512 skip={lba} count=1 2>/dev/null | head -c 16 | tr -c 'A-Z0-9-' '.')"
vboot-attach --detach $dev
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        lba = MBR_MARK_LBA
    );
    let initrd = attach_initramfs(dir, "mbrwrite-initrd.img", &init, &files);
    let disk = build_syslinux_linux_guest_with(dir, &initrd, &[]);
    let code = assemble_guest("mbrwrite", &dir.join("mbrwrite-build"), &[]);
    assert_eq!(code.len(), 440, "mbrwrite.bin must be the MBR's 440 code bytes");
    crate::disk::write_mbr_code(&disk, &code);
    disk
}

/// What the `--direct` guest prints when every step passed.
pub const DIRECT_OK: &str = "VBOOT-DIRECT-OK";
/// What the `--direct` guest writes over the first bytes of [`ATTACH_FILE`] in place (the
/// file's cluster, in a block the image holds: a write straight to the host disk).
pub const DIRECT_REWRITE: &str = "DIRECT";
/// The file of random bytes the `--direct` guest writes (new blocks, through NBD); the guest
/// prints `SHA /RAND.BIN <sha256>`.
pub const DIRECT_RANDOM_FILE: &str = "/RAND.BIN";
pub const DIRECT_RANDOM_BYTES: usize = 3 << 20;
/// A file the host puts into the `--direct` guest's partition so that most of the image is
/// allocated blocks (what goes direct): pseudo-random bytes ([`pseudo_random_bytes`] with seed
/// 18); the guest prints `SHA /FILL.BIN <sha256>` of what it reads through the dm device.
pub const DIRECT_FILL_FILE: &str = "/FILL.BIN";
pub const DIRECT_FILL_BYTES: usize = 20 << 20;
/// When vboot's entry has a CD too (`cdrom=`), the `--direct` guest attaches it with `--direct`
/// (a read-only table over the ISO's extents), mounts it and prints `SHA-CD <file> <sha256>` of
/// this file in it.
pub const DIRECT_CD_FILE: &str = "/CD.BIN";

/// The `--direct` guest (issue 18): [`build_syslinux_linux_guest_with`] whose initramfs, booted
/// through vboot from an image on the host partition `/dev/<host_partition>` (FAT), does what a
/// user would:
/// 1. `vboot-attach --direct` before dm-mod is loaded: exit status 1, the NBD device kept and
///    printed; detached;
/// 2. the initramfs-tools local-top script (tools/attach/initramfs-tools, stand-ins for
///    /scripts/functions) for `root=/dev/mapper/vboot-nbd0p1`: it loads dm-mod with modprobe and
///    attaches with `--direct`; the partition's dm device mounts and reads; detached;
///    `--direct` with the host partition mounted read-only: refused;
/// 3. `--direct`: prints /dev/mapper/vboot-nbd0 and makes /dev/mapper/vboot-nbd0p1 (its own
///    nodes, no udev); prints each dm device's slaves (`DM <name> slaves: ...`) and times five
///    reads of the whole disk (the caches dropped before each) natively, through the dm device
///    (with the sectors the host disk and the NBD device served meanwhile) and through
///    /dev/nbd0 (`READ-NATIVE`, `READ-DIRECT`, `READ-NBD`);
/// 4. mounts /dev/mapper/vboot-nbd0p1 (vfat), reads [`ATTACH_FILE`] and [`DIRECT_FILL_FILE`]; /dev/nbd0p1 and the host
///    partition cannot be mounted meanwhile (claimed); writes [`DIRECT_REWRITE`] over the start
///    of [`ATTACH_FILE`] in place, [`ATTACH_NEW_FILE`], and [`DIRECT_RANDOM_FILE`]; `--detach`
///    while mounted is refused with everything left attached; waits 3 s (the server loads the
///    tables again with the blocks it allocated); unmounts, drops the caches, mounts again and
///    prints the SHA-256 of what it reads back and how many sectors the host disk served for it
///    (`RAND-HOST-SECTORS`); unmounts, detaches (the dm devices and /dev/nbd0 gone);
/// 5. `--direct --read-only`: the dm devices are read-only; mounts read-only, reads; detaches;
/// 6. when the table has a CD (0xE0): `--direct --drive cdrom`, mounts it (iso9660), prints the
///    SHA-256 of [`DIRECT_CD_FILE`]; times five reads of the CD's dm device (wholly direct) and
///    of as many MiB of /dev/vda (`READ-CD-DIRECT`, `READ-CD-NATIVE`); detaches (no dm device
///    left); then `--all --direct` (`ALL-ON` and the two dm devices, one per drive), mounts the
///    disk's partition through its dm device and reads the rewritten file, detaches both
///    (`ALL-DIRECT-OK`).
/// Steps print `STEP ...`, a failure `ATTACH-FAILED: ...`, the end [`DIRECT_OK`]; QEMU ends with 33.
pub fn build_attach_direct_guest(dir: &Path, host_partition: &str) -> PathBuf {
    let (files, load) = attach_tool_and_modules(&["virtio_pci", "virtio_blk", "nbd", "vfat", "nls_cp437", "nls_ascii", "isofs", "dm_mod"], &["dm_mod.ko"]);
    let init = format!(
        r#"{prologue}mkdir -p /mnt /host
sectors_read() {{ set -- $(cat /sys/block/$1/stat); echo $3; }}
timed_read() {{ read t0 rest < /proc/uptime; for r in 1 2 3 4 5; do echo 3 > /proc/sys/vm/drop_caches; dd if=$1 of=/dev/null bs=1M $2 2>/dev/null || fail "read $1"; done; read t1 rest < /proc/uptime; }}
echo "STEP modules"
{load}
wait_block /dev/{hp} || fail "no /dev/{hp}"
echo "STEP no-dm"
out=$(vboot-attach --direct --timeout 20); st=$?
echo "NO-DM status=$st out=$out"
[ $st = 1 ] && [ "$out" = /dev/nbd0 ] || fail "--direct without dm-mod: status $st, printed $out"
[ -e /sys/block/nbd0/pid ] || fail "the NBD device was not kept after --direct failed"
vboot-attach --detach /dev/nbd0 || fail "detach after the failed --direct"
echo "STEP initramfs-tools"
mkdir -p /lib/modules/$(uname -r)/kernel/drivers/block /lib/modules/$(uname -r)/kernel/drivers/md /scripts/local-top
cp /lib/modules/nbd.ko /lib/modules/$(uname -r)/kernel/drivers/block/ || fail "copy nbd.ko"
cp /lib/modules/dm_mod.ko /lib/modules/$(uname -r)/kernel/drivers/md/ && depmod || fail "depmod"
cat > /scripts/functions <<'END'
log_begin_msg() {{ echo "Begin: $*"; }}
log_end_msg() {{ echo "Done."; }}
log_warning_msg() {{ echo "Warning: $*"; }}
panic() {{ echo "panic: $*"; exit 1; }}
wait_for_udev() {{ :; }}
END
ROOT=/dev/mapper/vboot-nbd0p1 sh /scripts/local-top/vboot-attach || fail "the initramfs-tools local-top script"
grep -q '^dm_mod ' /proc/modules || fail "the local-top script did not load dm-mod"
wait_block /dev/mapper/vboot-nbd0p1 || fail "no /dev/mapper/vboot-nbd0p1 after the local-top script"
mount -t vfat -o ro /dev/mapper/vboot-nbd0p1 /mnt || fail "mount /dev/mapper/vboot-nbd0p1"
[ "$(cat /mnt{file})" = "{text}" ] || fail "read through the local-top script's device"
umount /mnt
vboot-attach --detach /dev/nbd0 || fail "detach after the local-top script"
echo "LOCAL-TOP-DIRECT-OK"
echo "STEP host-mounted"
mount -t vfat -o ro /dev/{hp} /host || fail "mount the host partition read-only"
vboot-attach --direct --timeout 5 && fail "--direct with the host partition mounted"
umount /host || fail "umount /host"
echo "STEP attach"
dev=$(vboot-attach --direct --timeout 20) || fail "vboot-attach --direct"
echo "ATTACHED $dev"
[ "$dev" = /dev/mapper/vboot-nbd0 ] || fail "printed $dev"
wait_block /dev/mapper/vboot-nbd0p1 || fail "no /dev/mapper/vboot-nbd0p1"
for d in /sys/block/dm-*; do echo "DM $(cat $d/dm/name) slaves: $(ls $d/slaves | tr '\n' ' ')ro=$(cat $d/ro)"; done
echo "STEP read"
n=$(($(cat /sys/block/nbd0/size) / 2048))
timed_read /dev/vda "count=$n"
echo "READ-NATIVE mib=$((5*n)) from=$t0 to=$t1"
v0=$(sectors_read vda); b0=$(sectors_read nbd0)
timed_read $dev
v1=$(sectors_read vda); b1=$(sectors_read nbd0)
echo "READ-DIRECT mib=$((5*n)) from=$t0 to=$t1 host-sectors=$((v1-v0)) nbd-sectors=$((b1-b0))"
timed_read /dev/nbd0
echo "READ-NBD mib=$((5*n)) from=$t0 to=$t1"
echo "STEP mount"
mount -t vfat /dev/mapper/vboot-nbd0p1 /mnt || fail "mount /dev/mapper/vboot-nbd0p1"
[ "$(cat /mnt{file})" = "{text}" ] || fail "read {file}: $(cat /mnt{file})"
echo "SHA {fill_file} $(sha256sum /mnt{fill_file} | cut -d' ' -f1)"
echo "READ-OK"
mount -t vfat -o ro /dev/nbd0p1 /host && fail "/dev/nbd0p1 mounted beside the dm device"
mount -t vfat -o ro /dev/{hp} /host && fail "the host partition mounted while the dm tables hold it"
echo "CLAIMED-OK"
echo "STEP write"
printf '{rewrite}' | dd of=/mnt{file} bs=1 conv=notrunc 2>/dev/null || fail "rewrite {file}"
echo -n "{new_text}" > /mnt{new_file} || fail "write {new_file}"
head -c {random_bytes} /dev/urandom > /mnt{random_file} || fail "write {random_file}"
echo "SHA-WRITTEN {random_file} $(sha256sum /mnt{random_file} | cut -d' ' -f1)"
sync
# The server loads the tables again within a second or two of the writes that allocated.
sleep 3
echo "STEP detach-mounted"
vboot-attach --detach /dev/nbd0 && fail "detached while mounted"
[ -b /dev/mapper/vboot-nbd0 ] && [ -b /dev/mapper/vboot-nbd0p1 ] && [ -e /sys/block/nbd0/pid ] || fail "the refused detach removed something"
umount /mnt || fail umount
echo 3 > /proc/sys/vm/drop_caches
mount -t vfat /dev/mapper/vboot-nbd0p1 /mnt || fail "mount again"
echo "REREAD {file} $(cat /mnt{file})"
[ "$(cat /mnt{new_file})" = "{new_text}" ] || fail "the new file after a remount"
v0=$(sectors_read vda)
echo "SHA {random_file} $(sha256sum /mnt{random_file} | cut -d' ' -f1)"
v1=$(sectors_read vda)
echo "RAND-HOST-SECTORS $((v1-v0))"
umount /mnt || fail "umount again"
echo "STEP detach"
vboot-attach --detach /dev/nbd0 || fail "vboot-attach --detach"
[ -e /dev/mapper/vboot-nbd0 ] || [ -e /dev/mapper/vboot-nbd0p1 ] && fail "a /dev/mapper node left"
ls /sys/block | grep -q dm- && fail "a dm device left"
[ -e /sys/block/nbd0/pid ] && fail "/dev/nbd0 still attached"
echo "STEP read-only"
dev=$(vboot-attach --direct --read-only --timeout 20) || fail "vboot-attach --direct --read-only"
wait_block /dev/mapper/vboot-nbd0p1 || fail "no /dev/mapper/vboot-nbd0p1 read-only"
for d in /sys/block/dm-*; do echo "DM-RO $(cat $d/dm/name) slaves: $(ls $d/slaves | tr '\n' ' ')ro=$(cat $d/ro)"; done
mount -t vfat -o ro /dev/mapper/vboot-nbd0p1 /mnt || fail "mount read-only"
[ "$(cat /mnt{new_file})" = "{new_text}" ] || fail "read-only: {new_file}"
dd if=/dev/zero of=/dev/mapper/vboot-nbd0 bs=512 count=1 seek=1 conv=notrunc 2>/dev/null && fail "wrote a read-only dm device"
umount /mnt
vboot-attach --detach /dev/nbd0 || fail "detach read-only"
if vboot-attach --info | grep -q '^drive 0xe0'; then
echo "STEP cdrom"
cd=$(vboot-attach --direct --drive cdrom --timeout 20) || fail "vboot-attach --direct --drive cdrom"
echo "CD-ON $cd"
for d in /sys/block/dm-*; do echo "DM-CD $(cat $d/dm/name) slaves: $(ls $d/slaves | tr '\n' ' ')ro=$(cat $d/ro)"; done
mount -t iso9660 -o ro $cd /mnt || fail "mount -t iso9660 $cd"
echo "SHA-CD {cd_file} $(sha256sum /mnt{cd_file} | cut -d' ' -f1)"
umount /mnt
m=$(($(cat /sys/block/nbd0/size) / 2048))
timed_read /dev/vda "count=$m"
echo "READ-CD-NATIVE mib=$((5*m)) from=$t0 to=$t1"
timed_read $cd "count=$m"
echo "READ-CD-DIRECT mib=$((5*m)) from=$t0 to=$t1"
vboot-attach --detach /dev/nbd0 || fail "detach the CD"
ls /sys/block | grep -q dm- && fail "a dm device left after the CD"
echo "STEP all"
all=$(vboot-attach --all --direct --timeout 20) || fail "vboot-attach --all --direct"
echo "ALL-ON" $all
[ "$(echo $all)" = "/dev/mapper/vboot-nbd0 /dev/mapper/vboot-nbd1" ] || fail "--all --direct printed $all"
for d in $all; do [ -b $d ] || fail "no $d"; done
# In the table's order: the CD (0xE0) came first in this entry, on nbd0; the disk on nbd1.
wait_block /dev/mapper/vboot-nbd1p1 || fail "no /dev/mapper/vboot-nbd1p1 with --all"
mount -t vfat -o ro /dev/mapper/vboot-nbd1p1 /mnt || fail "mount the disk's partition with --all"
[ "$(head -c {rewrite_len} /mnt{file})" = "{rewrite}" ] || fail "the rewritten file with --all"
umount /mnt
vboot-attach --detach /dev/nbd0 && vboot-attach --detach /dev/nbd1 || fail "detach after --all --direct"
ls /sys/block | grep -q dm- && fail "a dm device left after --all"
echo "ALL-DIRECT-OK"
fi
echo "{ok}"
finish
"#,
        prologue = ATTACH_INIT_PROLOGUE,
        load = load,
        hp = host_partition,
        file = ATTACH_FILE,
        text = ATTACH_FILE_TEXT,
        rewrite = DIRECT_REWRITE,
        rewrite_len = DIRECT_REWRITE.len(),
        new_file = ATTACH_NEW_FILE,
        new_text = ATTACH_NEW_TEXT,
        random_file = DIRECT_RANDOM_FILE,
        random_bytes = DIRECT_RANDOM_BYTES,
        fill_file = DIRECT_FILL_FILE,
        cd_file = DIRECT_CD_FILE,
        ok = DIRECT_OK
    );
    let mut files = files;
    files.push(("/scripts/local-top/vboot-attach".into(), crate::workspace_root().join("tools/attach/initramfs-tools/scripts/local-top/vboot-attach")));
    let initrd = attach_initramfs(dir, "direct-initrd.img", &init, &files);
    let fill = crate::disk::FileSpec::new(DIRECT_FILL_FILE, pseudo_random_bytes(DIRECT_FILL_BYTES, 18));
    build_syslinux_linux_guest_with(dir, &initrd, &[crate::disk::FileSpec::new(ATTACH_FILE, ATTACH_FILE_TEXT), fill])
}
