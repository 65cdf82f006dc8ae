//! The malformed-input corpus at boot (issue 14): images, ISOs and floppies a user may have on
//! the disk, each made by a real tool (qemu-img, xorriso, mkfs.fat, vdisk for the VHD and VDI
//! children no other tool here makes) and then damaged in one stated way. Each is the image of
//! one menu entry; one QEMU run per group walks through its entries over the serial console: the
//! entry's error screen must name the file and say what is wrong, a key brings the menu back,
//! and the next entry is tried. Each run ends by booting a good (or tolerably damaged) entry,
//! which proves the machine still works. Every hard-disk and CD case is also driven through the
//! core library's code that stage2 runs (`image::open_chain`, `eltorito`), on the host.
//!
//! What each case tests is its `what` line in the tables below (`vhd_cases`, `vdi_cases`,
//! `vmdk_cases`, `chain_cases`, `media_cases`, `raw_cases`); docs/robustness.md, "Malformed inputs
//! at boot", describes the corpus and how to run it:
//! `cargo test --release -p vboot-tests --test malformed`.
//!
//! grub.cfg files that do not parse get one boot each (the menu reads one grub.cfg): 22 of them
//! go through `Config::parse_bytes` and the entry checks stage2 makes after it on the host,
//! and 4 are booted in QEMU.
//!
//! The byte offsets of the fields damaged here are listed in docs/robustness.md ("The fields the
//! corpus damages"), from the formats' specifications.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vboot::config::Config;
use vboot::eltorito;
use vboot::image::{chain::StdLocator, open_chain, ChainOptions, Disk};
use vboot_tests::qemu::{Qemu, EXIT_PASS};
use vboot_tests::{guests, qemu_img, sh, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(90);
/// The data the base disk holds besides the boot sector, and where.
const PATTERN_LBA: u64 = 2048;
const BASE_SECTORS: u64 = 8192;

// ---- the cases ---------------------------------------------------------------------------------

/// How vboot must take a case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// The core library refuses it while opening (image chain or El Torito): the host check
    /// expects the same words.
    Refused,
    /// The core opens it; stage2 refuses it later (file size, first sector, options).
    RefusedByStage2,
    /// A tolerable defect: it boots (the last entry of its group) and reads as the original.
    Boots,
}

struct Case {
    /// The file under /vm/ on the host partition (the leaf, for a chain).
    file: String,
    /// What the damage tests, one line.
    what: &'static str,
    /// The `vboot` line's options.
    options: String,
    /// Words the error screen must show, besides the file's name.
    expect: Vec<String>,
    outcome: Outcome,
}

/// One group: its files (under /vm/) and cases.
struct Group {
    name: &'static str,
    dir: PathBuf,
    files: Vec<String>,
    cases: Vec<Case>,
}

impl Group {
    fn new(name: &'static str, dir: &Path) -> Group {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Group { name, dir, files: Vec::new(), cases: Vec::new() }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Put `bytes` in the group as `file` (an extra file: a parent, an extent).
    fn put(&mut self, file: &str, bytes: &[u8]) {
        std::fs::write(self.path(file), bytes).unwrap();
        if !self.files.iter().any(|f| f == file) {
            self.files.push(file.to_string());
        }
    }

    /// A case whose file is already in the group.
    fn case(&mut self, file: &str, what: &'static str, device: &str, outcome: Outcome, expect: &[&str]) {
        assert!(self.path(file).exists(), "{}: no file", file);
        if !self.files.iter().any(|f| f == file) {
            self.files.push(file.to_string());
        }
        self.cases.push(Case {
            file: file.to_string(),
            what,
            options: format!("{}=/vm/{}", device, file),
            expect: expect.iter().map(|s| s.to_string()).collect(),
            outcome,
        });
    }

    /// A hard-disk case made of `bytes`.
    fn disk(&mut self, file: &str, bytes: &[u8], what: &'static str, outcome: Outcome, expect: &[&str]) {
        self.put(file, bytes);
        self.case(file, what, "harddisk", outcome, expect);
    }

    /// A case with its own `vboot` options.
    fn options(&mut self, file: &str, options: &str, what: &'static str, expect: &[&str]) {
        self.cases.push(Case { file: file.to_string(), what, options: options.to_string(), expect: expect.iter().map(|s| s.to_string()).collect(), outcome: Outcome::RefusedByStage2 });
    }
}

// ---- byte surgery --------------------------------------------------------------------------------

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn set_be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn set_le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set_le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_le64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn cut(b: &[u8], len: usize) -> Vec<u8> {
    b[..len].to_vec()
}
fn edit(b: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = b.to_vec();
    f(&mut v);
    v
}

/// The VHD checksum (ones' complement of the byte sum, the field itself counted as zero) of the
/// structure at `at` (`len` bytes, checksum field at `field`), written back.
fn vhd_fix_checksum(b: &mut [u8], at: usize, len: usize, field: usize) {
    set_be32(b, at + field, 0);
    let sum = b[at..at + len].iter().fold(0u32, |s, &x| s.wrapping_add(x as u32));
    set_be32(b, at + field, !sum);
}
/// VHD footer: 512 bytes, checksum at 64 (docs/robustness.md).
fn fix_footer(b: &mut [u8], at: usize) {
    vhd_fix_checksum(b, at, 512, 64);
}
/// VHD dynamic header: 1024 bytes, checksum at 36.
fn fix_dyn(b: &mut [u8], at: usize) {
    vhd_fix_checksum(b, at, 1024, 36);
}
/// Change both footers of a dynamic VHD (the copy at 0 and the one at the end) and fix them.
fn both_footers(b: &mut [u8], f: impl Fn(&mut [u8])) {
    let end = b.len() - 512;
    for at in [0, end] {
        f(&mut b[at..at + 512]);
        fix_footer(b, at);
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {}", p.display(), e))
}

fn convert(src: &Path, fmt: &str, opts: &str, out: &Path) -> Vec<u8> {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", fmt];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    args.extend([s, o]);
    qemu_img(&args);
    read(out)
}

/// The base disk every image is made from: the hello guest (boot sector printing `message` and
/// ending QEMU with the pass code) and a pattern at sector 2048, 8192 sectors in all.
fn base_disk(dir: &Path, message: &str) -> (PathBuf, Vec<u8>) {
    let img = guests::hello_guest(dir, "base", message, BASE_SECTORS);
    let mut raw = read(&img);
    for lba in PATTERN_LBA..PATTERN_LBA + 8 {
        let at = lba as usize * 512;
        raw[at..at + 512].copy_from_slice(&guests::pattern_sector(lba));
    }
    std::fs::write(&img, &raw).unwrap();
    (img, raw)
}

const GOOD: &str = "CORPUS-GUEST-BOOTED";

// ---- VHD -----------------------------------------------------------------------------------------

fn vhd_cases(g: &mut Group, base: &Path) {
    use Outcome::*;
    let dynamic = convert(base, "vpc", "subformat=dynamic", &g.path("src-dynamic.vhd"));
    let fixed = convert(base, "vpc", "subformat=fixed", &g.path("src-fixed.vhd"));
    let len = dynamic.len();
    let header_at = be64(&dynamic, 16) as usize;
    let bat_at = be64(&dynamic, header_at + 16) as usize;
    let first_block = be32(&dynamic, bat_at) as u64;
    assert_ne!(first_block, u32::MAX as u64, "qemu-img left block 0 unallocated");

    g.disk("vhd-cut-footer.vhd", &cut(&dynamic, len - 100), "dynamic VHD cut inside its footer (the copy at 0 is used; the block now ends past it)", Refused, &["ends past the footer", "truncated image?"]);
    g.disk("vhd-cut-header.vhd", &cut(&dynamic, header_at + 600), "dynamic VHD cut inside its dynamic header", Refused, &["dynamic header offset", "outside the file"]);
    g.disk("vhd-cut-bat.vhd", &cut(&dynamic, bat_at + 4), "dynamic VHD cut inside its BAT", Refused, &["outside the file"]);
    g.disk("vhd-cut-data.vhd", &cut(&dynamic, first_block as usize * 512 + (1 << 20)), "dynamic VHD cut inside its first data block", Refused, &["ends past the footer"]);
    g.disk("vhd-cut-511.vhd", &cut(&dynamic, 511), "dynamic VHD cut to 511 bytes (the footer copy at 0 read as a footer at EOF-511)", Refused, &["dynamic header offset 512 is outside the file"]);
    g.disk("vhd-checksums.vhd", &edit(&dynamic, |b| { let e = b.len() - 512; b[64] ^= 1; b[e + 64] ^= 1; }), "both footers' checksums wrong", Refused, &["no valid VHD footer", "footer checksum"]);
    g.disk("vhd-dyn-checksum.vhd", &edit(&dynamic, |b| b[header_at + 36] ^= 0x10), "dynamic header checksum wrong", Refused, &["dynamic header checksum"]);
    g.disk("vhd-dyn-cookie.vhd", &edit(&dynamic, |b| { b[header_at] = b'X'; fix_dyn(b, header_at); }), "dynamic header without its cxsparse cookie", Refused, &["no `cxsparse` cookie"]);
    g.disk("vhd-type-7.vhd", &edit(&dynamic, |b| both_footers(b, |f| set_be32(f, 60, 7))), "footer disk type 7 (none such)", Refused, &["not supported", "VHD disk type 7"]);
    g.disk("vhd-type-0.vhd", &edit(&dynamic, |b| both_footers(b, |f| set_be32(f, 60, 0))), "footer disk type 0 (none)", Refused, &["VHD disk type 0"]);
    g.disk("vhd-block-3000.vhd", &edit(&dynamic, |b| { set_be32(b, header_at + 32, 3000); fix_dyn(b, header_at); }), "block size 3000 (not a power of two)", Refused, &["block size 3000 is not a power of two"]);
    g.disk("vhd-block-0.vhd", &edit(&dynamic, |b| { set_be32(b, header_at + 32, 0); fix_dyn(b, header_at); }), "block size 0", Refused, &["block size 0 is not a power of two"]);
    g.disk("vhd-block-2g.vhd", &edit(&dynamic, |b| { set_be32(b, header_at + 32, 1 << 31); fix_dyn(b, header_at); }), "block size 2 GiB (past the 1 GiB bound)", Refused, &["block size 2147483648"]);
    g.disk("vhd-bat-0-entries.vhd", &edit(&dynamic, |b| { set_be32(b, header_at + 28, 0); fix_dyn(b, header_at); }), "BAT of 0 entries for a 4 MiB disk", Refused, &["BAT has 0 entries but the disk size needs"]);
    g.disk("vhd-bat-offset.vhd", &edit(&dynamic, |b| { set_be64(b, header_at + 16, 1 << 40); fix_dyn(b, header_at); }), "BAT offset 1 TiB, past the end of the file", Refused, &["the VHD block allocation table (", "reaches past the end of the file"]);
    g.disk("vhd-bat-past-end.vhd", &edit(&dynamic, |b| set_be32(b, bat_at, 0x7FFF_0000)), "BAT entry pointing 1 TiB past the end", Refused, &["BAT entry 0 points at sector", "past the footer"]);
    g.disk("vhd-bat-into-header.vhd", &edit(&dynamic, |b| set_be32(b, bat_at, (header_at / 512) as u32)), "BAT entry pointing into the dynamic header", Refused, &["BAT entry 0 puts block 0", "over the dynamic header"]);
    g.disk("vhd-bat-into-bat.vhd", &edit(&dynamic, |b| set_be32(b, bat_at, (bat_at / 512) as u32)), "BAT entry pointing at the BAT itself", Refused, &["over the block allocation table"]);
    g.disk("vhd-bat-into-footer.vhd", &edit(&dynamic, |b| set_be32(b, bat_at, 0)), "BAT entry pointing at the footer copy at 0", Refused, &["over the footer copy at the start"]);
    g.disk("vhd-bat-alias.vhd", &edit(&dynamic, |b| { let e = be32(b, bat_at); set_be32(b, bat_at + 4, e); }), "two BAT entries naming the same block (a write to one changes the other)", Refused, &["BAT entries 0 and 1 put their blocks at sectors", "which overlap"]);
    g.disk("vhd-size-huge.vhd", &edit(&dynamic, |b| both_footers(b, |f| { set_be64(f, 48, 1 << 50); f[56..60].copy_from_slice(&[0xFF, 0xFF, 16, 255]); })), "footer disk size 1 PiB (geometry at its maximum, so the size field counts) with a BAT for 4 MiB", Refused, &["BAT has", "entries but the disk size needs"]);
    g.disk("vhd-data-offset.vhd", &edit(&dynamic, |b| both_footers(b, |f| set_be64(f, 16, 1 << 41))), "footer data offset 2 TiB (the dynamic header is outside the file)", Refused, &["dynamic header offset 2199023255552 is outside the file"]);
    g.disk("vhd-no-signature.vhd", &edit(&dynamic, |b| { let e = b.len() - 512; b[0] = b'X'; b[e] = b'X'; }), "no conectix cookie anywhere: read as raw, whose first sector is no boot sector", RefusedByStage2, &["no boot signature (55AA)", "read as a raw image"]);
    g.disk("vhd-size-zero.vhd", &edit(&dynamic, |b| both_footers(b, |f| f[56..60].copy_from_slice(&[0, 0, 0, 0]))), "footer geometry 0/0/0 (the disk size of a qemu-made VHD): a disk of 0 sectors", RefusedByStage2, &["reading the first sector"]);
    let fixed_data = fixed.len() - 512;
    g.disk("vhd-fixed-short.vhd", &edit(&fixed, |b| { let footer = b[fixed_data..].to_vec(); b.truncate(fixed_data - (1 << 20)); b.extend_from_slice(&footer); }), "fixed VHD with 1 MiB of data cut out before its footer", Refused, &["fixed disk of", "bytes of data before the footer"]);
    g.disk("vhd-fixed-type-9.vhd", &edit(&fixed, |b| { set_be32(b, fixed_data + 60, 9); fix_footer(b, fixed_data); }), "fixed VHD whose footer says disk type 9", Refused, &["VHD disk type 9"]);
    g.disk("vhd-fixed-checksum.vhd", &edit(&fixed, |b| b[fixed_data + 64] ^= 4), "fixed VHD with a wrong footer checksum: read as raw, it has 512 bytes too many", Refused, &["no valid VHD footer", "footer checksum"]);
    // Tolerable: the end footer is damaged but the copy at 0 is good (a warning), and a footer
    // at EOF-511 (a file one byte short, which old Virtual PC wrote).
    g.disk("vhd-end-footer-bad.vhd", &edit(&dynamic, |b| { let e = b.len() - 512; b[e + 64] ^= 1; }), "end footer's checksum wrong, the copy at 0 good: boots with a warning", Boots, &[]);
    g.disk("vhd-footer-511.vhd", &cut(&dynamic, len - 1), "dynamic VHD one byte short (footer at EOF-511): boots", Boots, &[]);
}

// ---- VDI -----------------------------------------------------------------------------------------

fn vdi_cases(g: &mut Group, base: &Path) {
    use Outcome::*;
    let vdi = convert(base, "vdi", "static=off", &g.path("src.vdi"));
    let off_blocks = le32(&vdi, 0x154) as usize;
    let off_data = le32(&vdi, 0x158) as usize;
    let block_bytes = le32(&vdi, 0x178) as usize;
    let map1 = le32(&vdi, off_blocks + 4);
    assert!(map1 < 0xFFFF_FFFE, "qemu-img left block 1 unallocated");

    g.disk("vdi-cut-preheader.vdi", &cut(&vdi, 0x30), "VDI cut inside the text before the signature: read as raw, 48 bytes", RefusedByStage2, &["is 48 bytes, not a whole number of 512-byte sectors"]);
    g.disk("vdi-cut-header.vdi", &cut(&vdi, 0x100), "VDI cut inside its header", Refused, &["no VDI signature"]);
    g.disk("vdi-cut-map.vdi", &cut(&vdi, off_blocks + 2), "VDI cut inside its block map", Refused, &["VDI block map"]);
    g.disk("vdi-cut-data.vdi", &cut(&vdi, off_data + block_bytes + block_bytes / 2), "VDI cut inside its second block", Refused, &["past the end of the file"]);
    g.disk("vdi-signature.vdi", &edit(&vdi, |b| b[0x40] ^= 0xFF), "VDI signature damaged: read as raw, no boot sector", RefusedByStage2, &["no boot signature (55AA)", "read as a raw image"]);
    g.disk("vdi-version-2.vdi", &edit(&vdi, |b| set_le32(b, 0x44, 0x0002_0000)), "VDI version 2.0", Refused, &["not supported", "VDI version 2.0"]);
    g.disk("vdi-type-9.vdi", &edit(&vdi, |b| set_le32(b, 0x4C, 9)), "image type 9", Refused, &["image type 9 is not 1..4"]);
    g.disk("vdi-block-1000.vdi", &edit(&vdi, |b| set_le32(b, 0x178, 1000)), "block size 1000", Refused, &["block size 1000 is not a power of two"]);
    g.disk("vdi-block-0.vdi", &edit(&vdi, |b| set_le32(b, 0x178, 0)), "block size 0", Refused, &["block size 0 is not a power of two"]);
    g.disk("vdi-blocks-short.vdi", &edit(&vdi, |b| set_le32(b, 0x180, 1)), "one block for a 4 MiB disk", Refused, &["1 blocks of", "do not cover the disk size"]);
    g.disk("vdi-allocated.vdi", &edit(&vdi, |b| set_le32(b, 0x184, 1000)), "1000 blocks allocated out of 4", Refused, &["1000 blocks allocated out of"]);
    g.disk("vdi-data-over-map.vdi", &edit(&vdi, |b| set_le32(b, 0x158, off_blocks as u32)), "data area starting on the block map", Refused, &["overlaps the block map"]);
    g.disk("vdi-map-slot.vdi", &edit(&vdi, |b| set_le32(b, off_blocks, 77)), "block map entry naming slot 77 of 4", Refused, &["points at slot 77, beyond the"]);
    g.disk("vdi-map-alias.vdi", &edit(&vdi, |b| set_le32(b, off_blocks + 8, map1)), "two block map entries naming one slot", Refused, &["which another block uses too"]);
    g.disk("vdi-extra-100.vdi", &edit(&vdi, |b| set_le32(b, 0x17C, 100)), "per-block extra data of 100 bytes", Refused, &["per-block extra data of 100 bytes"]);
    g.disk("vdi-map-offset.vdi", &edit(&vdi, |b| { set_le32(b, 0x154, 0xFFFF_0000); set_le32(b, 0x158, 0xFFFF_F000); }), "block map (and data) offset near 4 GiB, past the end", Refused, &["the VDI block map (", "reaches past the end of the file"]);
    g.disk("vdi-size-zero.vdi", &edit(&vdi, |b| set_le64(b, 0x170, 0)), "disk size 0", RefusedByStage2, &["reading the first sector"]);
    g.disk("vdi-odd-size.vdi", &edit(&vdi, |b| { let s = le64(b, 0x170); set_le64(b, 0x170, s - 100); }), "disk size 100 bytes short of a sector multiple (a VirtualBox quirk): boots", Boots, &[]);
}

// ---- VMDK ----------------------------------------------------------------------------------------

/// Replace `from` by `to` in the first text occurrence inside `b` (a descriptor).
fn replace_text(b: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("no {:?}", from));
    let mut v = b[..at].to_vec();
    v.extend_from_slice(to.as_bytes());
    v.extend_from_slice(&b[at + from.len()..]);
    v
}

fn vmdk_cases(g: &mut Group, base: &Path) {
    use Outcome::*;
    let sparse = convert(base, "vmdk", "subformat=monolithicSparse", &g.path("src-sparse.vmdk"));
    let desc_at = le64(&sparse, 28) as usize * 512;
    let gd_at = le64(&sparse, 56) as usize * 512;
    let gt0 = le32(&sparse, gd_at) as usize * 512;
    let grain0 = le32(&sparse, gt0) as usize * 512;
    assert!(grain0 > 0, "qemu-img left grain 0 unallocated");
    // An embedded descriptor has a fixed room and the grains follow it: keep its length.
    let same_len = |s: &[u8], from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        replace_text(s, from, to)
    };
    let extent_line = {
        let text = String::from_utf8_lossy(&sparse[desc_at..desc_at + 1024]).to_string();
        text.lines().find(|l| l.starts_with("RW ")).expect("an extent line").to_string()
    };

    g.disk("vmdk-cut-header.vmdk", &cut(&sparse, 40), "sparse VMDK cut inside its header (40 bytes)", Refused, &["the file is 40 bytes, cut inside its 512-byte sparse extent header"]);
    g.disk("vmdk-cut-descriptor.vmdk", &cut(&sparse, desc_at + 512), "sparse VMDK cut inside its embedded descriptor", Refused, &["I/O error at byte 512", "past the end of the file"]);
    g.disk("vmdk-cut-gd.vmdk", &cut(&sparse, gd_at + 2), "sparse VMDK cut inside its grain directory", Refused, &["grain table 0 points at sector", "past the end of the file"]);
    g.disk("vmdk-cut-gt.vmdk", &cut(&sparse, gt0 + 512), "sparse VMDK cut inside its first grain table", Refused, &["grain table 0 at sector", "lies past the end of the file"]);
    g.disk("vmdk-cut-data.vmdk", &cut(&sparse, grain0 + 1024), "sparse VMDK cut inside its first grain", Refused, &["past the end of the file"]);
    g.disk("vmdk-magic.vmdk", &edit(&sparse, |b| b[0] = b'X'), "KDMV magic damaged: read as raw, no boot sector", RefusedByStage2, &["no boot signature (55AA)", "read as a raw image"]);
    g.disk("vmdk-version-9.vmdk", &edit(&sparse, |b| set_le32(b, 4, 9)), "sparse extent version 9", Refused, &["not supported", "sparse extent version 9"]);
    g.disk("vmdk-grain-3.vmdk", &edit(&sparse, |b| set_le64(b, 20, 3)), "grain size 3 sectors", Refused, &["grain size 3 sectors is not a power of two"]);
    g.disk("vmdk-gtes-0.vmdk", &edit(&sparse, |b| set_le32(b, 44, 0)), "0 grain table entries per table", Refused, &["0 grain table entries per table"]);
    g.disk("vmdk-gd-zero.vmdk", &edit(&sparse, |b| { set_le64(b, 48, 0); set_le64(b, 56, 0); }), "no grain directory offset (nor a redundant one)", Refused, &["no grain directory offset"]);
    g.disk("vmdk-gd-past-end.vmdk", &edit(&sparse, |b| { set_le64(b, 48, 1 << 30); set_le64(b, 56, 1 << 30); }), "both grain directories 512 GiB past the end", Refused, &["a VMDK grain directory (", "reaches past the end of the file"]);
    g.disk("vmdk-gd-entry.vmdk", &edit(&sparse, |b| { let rgd = le64(b, 48) as usize * 512; set_le32(b, gd_at, 0x7000_0000); set_le32(b, rgd, 0x7000_0000); }), "grain directory entry past the end of the file (both copies)", Refused, &["grain table 0 at sector", "lies past the end of the file"]);
    g.disk("vmdk-gt-entry.vmdk", &edit(&sparse, |b| set_le32(b, gt0, 0x7000_0000)), "grain table entry past the end of the file", Refused, &["past the end of the file"]);
    g.disk("vmdk-gt-into-header.vmdk", &edit(&sparse, |b| set_le32(b, gt0, 1)), "grain table entry pointing into the header and descriptor", Refused, &["grain 0 of grain table 0 lies at sector 1, over the image's own header"]);
    g.disk("vmdk-newline.vmdk", &edit(&sparse, |b| b[73] = b'\r'), "newline test bytes damaged (a text-mode transfer)", Refused, &["newline test bytes are damaged"]);
    g.disk("vmdk-capacity-huge.vmdk", &edit(&sparse, |b| set_le64(b, 12, 1 << 40)), "capacity 2^40 sectors with a grain directory for 4 MiB", Refused, &["not supported", "extent larger than 2^32 grains"]);
    g.disk("vmdk-capacity-zero.vmdk", &edit(&sparse, |b| set_le64(b, 12, 0)), "capacity 0 while its descriptor says 8192 sectors", Refused, &["its sparse header gives a capacity of 0 sectors, while its own descriptor gives it 8192 sectors"]);
    g.disk("vmdk-extent-garbage.vmdk", &replace_text(&sparse, &extent_line, &"RW x SPARSE".to_string()), "embedded descriptor's extent line unreadable", Refused, &["cannot read extent line"]);
    g.disk("vmdk-cid.vmdk", &edit(&sparse, |b| { let at = b.windows(5).position(|w| w == b"\nCID=").unwrap() + 5; b[at..at + 8].copy_from_slice(b"zzzzzzzz"); }), "descriptor CID not hexadecimal", Refused, &["is not hexadecimal"]);
    g.disk("vmdk-desc-size.vmdk", &edit(&sparse, |b| set_le64(b, 36, 1 << 20)), "embedded descriptor of 512 MiB", Refused, &["embedded descriptor larger than 1 MiB"]);

    // Descriptor files (monolithicFlat, twoGbMaxExtentSparse).
    let flat_desc = {
        convert(base, "vmdk", "subformat=monolithicFlat", &g.path("flat.vmdk"));
        g.files.push("flat-flat.vmdk".into());
        std::fs::read_to_string(g.path("flat.vmdk")).unwrap()
    };
    let flat_line = flat_desc.lines().find(|l| l.starts_with("RW ")).unwrap().to_string();
    let with_line = |line: &str| flat_desc.replace(&flat_line, line);
    g.disk("vmdk-flat-missing.vmdk", with_line(&flat_line.replace("flat-flat.vmdk", "gone-flat.vmdk")).as_bytes(), "descriptor naming an extent file that is not there", Refused, &["extent file `gone-flat.vmdk` cannot be opened"]);
    let short = cut(&read(&g.path("flat-flat.vmdk")), 1 << 20);
    g.put("short-flat.vmdk", &short);
    g.disk("vmdk-flat-short.vmdk", with_line(&flat_line.replace("flat-flat.vmdk", "short-flat.vmdk")).as_bytes(), "FLAT extent file 1 MiB long for 4 MiB", Refused, &["extent file /vm/short-flat.vmdk: flat extent of 8192 sectors at sector 0 is longer than the file"]);
    g.disk("vmdk-flat-type.vmdk", with_line(&flat_line.replace("FLAT", "VMFSRDM")).as_bytes(), "extent type VMFSRDM (a raw device mapping)", Refused, &["not supported", "extent type VMFSRDM"]);
    g.disk("vmdk-flat-none.vmdk", with_line("").as_bytes(), "descriptor listing no extents", Refused, &["descriptor lists no extents"]);
    g.disk("vmdk-flat-zero.vmdk", with_line(&flat_line.replace(&format!("RW {}", BASE_SECTORS), "RW 0")).as_bytes(), "an extent of 0 sectors", Refused, &["an extent of 0 sectors"]);
    g.disk("vmdk-flat-huge.vmdk", with_line(&flat_line.replace(&format!("RW {}", BASE_SECTORS), "RW 36028797018963968")).as_bytes(), "a FLAT extent of 2^55 sectors", Refused, &["extent file /vm/flat-flat.vmdk: flat extent of 36028797018963968 sectors at sector 0 is longer than the file"]);
    g.disk("vmdk-flat-noname.vmdk", with_line(&format!("RW {} FLAT", BASE_SECTORS)).as_bytes(), "a FLAT extent without a file name", Refused, &["FLAT extent without a file name"]);
    convert(base, "vmdk", "subformat=twoGbMaxExtentSparse", &g.path("split.vmdk"));
    g.files.push("split-s001.vmdk".into());
    let split = std::fs::read_to_string(g.path("split.vmdk")).unwrap();
    g.disk("vmdk-split-missing.vmdk", split.replace("split-s001.vmdk", "split-s009.vmdk").as_bytes(), "twoGbMaxExtentSparse whose extent file is missing", Refused, &["extent file `split-s009.vmdk` cannot be opened"]);
    g.put("damaged-s001.vmdk", &cut(&read(&g.path("split-s001.vmdk")), 700));
    g.disk("vmdk-split-damaged.vmdk", split.replace("split-s001.vmdk", "damaged-s001.vmdk").as_bytes(), "twoGbMaxExtentSparse whose sparse extent file is cut inside its descriptor room", Refused, &["extent file /vm/damaged-s001.vmdk: a VMDK grain directory (", "reaches past the end of the file"]);
    // streamOptimized: its grain directory is found through the footer at the end.
    let stream = convert(base, "vmdk", "subformat=streamOptimized", &g.path("src-stream.vmdk"));
    g.disk("vmdk-stream-cut.vmdk", &cut(&stream, stream.len() - 1536), "streamOptimized cut before its footer: qemu-img's header holds the grain directory's offset too, so it reads whole", Boots, &[]);
    g.disk("vmdk-stream-half.vmdk", &cut(&stream, stream.len() / 2), "streamOptimized cut in half", Refused, &["points at sector", "past the end of the file"]);
    let first_grain = {
        // The first grain marker after the header: find the zlib stream of grain 0 (78 xx) at
        // the data start and damage its first deflate bytes.
        let overhead = le64(&stream, 64) as usize * 512;
        overhead + 12
    };
    g.disk("vmdk-stream-inflate.vmdk", &edit(&stream, |b| { for i in 0..16 { b[first_grain + 2 + i] = 0xFF; } }), "streamOptimized whose first compressed grain does not inflate", RefusedByStage2, &["reading the first sector", "does not inflate"]);
    g.disk("vmdk-ok-with-bad-cid.vmdk", &same_len(&sparse, "parentCID=ffffffff", "parentCID=FFFFFFFF"), "parentCID in capitals (no parent either way): boots", Boots, &[]);
}

// ---- chains ----------------------------------------------------------------------------------

fn vdisk(args: &[&str]) {
    sh(Command::new(vboot_tests::vdisk_bin()).args(args));
}

fn chain_cases(g: &mut Group, base: &Path) {
    use Outcome::*;
    let p = |g: &Group, n: &str| g.path(n).to_str().unwrap().to_string();
    // A VHD, a VDI and a VMDK parent, and children made by vdisk (VHD, VDI) and qemu-img (VMDK).
    convert(base, "vpc", "subformat=dynamic", &g.path("base.vhd"));
    convert(base, "vdi", "static=off", &g.path("base.vdi"));
    convert(base, "vmdk", "subformat=monolithicSparse", &g.path("base.vmdk"));
    g.files.extend(["base.vhd", "base.vdi", "base.vmdk"].map(String::from));
    for ext in ["vhd", "vdi"] {
        vdisk(&["snapshot", &p(g, &format!("base.{}", ext)), &p(g, &format!("child.{}", ext)), "--reserve", "1M"]);
        vdisk(&["snapshot", &p(g, &format!("base.{}", ext)), &p(g, &format!("orphan.{}", ext)), "--reserve", "1M"]);
    }
    let split_child = |g: &Group, parent: &str, name: &str| {
        qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "-F", "vmdk", "-b", parent, &p(g, name)]);
    };
    split_child(g, "base.vmdk", "child.vmdk");
    g.files.push("child-s001.vmdk".into());
    let child_vhd = read(&g.path("child.vhd"));
    let child_vdi = read(&g.path("child.vdi"));
    let child_vmdk = std::fs::read_to_string(g.path("child.vmdk")).unwrap();
    g.files.extend(["child.vhd", "child.vdi", "child.vmdk"].map(String::from));

    // Missing parents.
    let orphan_vhd = read(&g.path("orphan.vhd"));
    let orphan_vdi = read(&g.path("orphan.vdi"));
    g.files.retain(|f| !f.starts_with("orphan"));
    // Names of the parent the orphans ask for: renamed away.
    let rename_parent = |b: &[u8], from: &str, to: &str| -> Vec<u8> {
        // UTF-16 (VHD parent name and locators: BE and LE) and ASCII forms of the name.
        let mut v = b.to_vec();
        let forms: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (from.encode_utf16().flat_map(|u| u.to_be_bytes()).collect(), to.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()),
            (from.encode_utf16().flat_map(|u| u.to_le_bytes()).collect(), to.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()),
            (from.as_bytes().to_vec(), to.as_bytes().to_vec()),
        ];
        for (f, t) in forms {
            let mut i = 0;
            while i + f.len() <= v.len() {
                if v[i..i + f.len()] == f[..] {
                    v[i..i + f.len()].copy_from_slice(&t);
                    i += f.len();
                } else {
                    i += 1;
                }
            }
        }
        v
    };
    let mut orphan_vhd2 = rename_parent(&orphan_vhd, "base.vhd", "gone.vhd");
    let h = be64(&orphan_vhd2, 16) as usize;
    fix_dyn(&mut orphan_vhd2, h);
    g.disk("chain-vhd-missing.vhd", &orphan_vhd2, "differencing VHD whose parent (gone.vhd) is not on the disk", Refused, &["parent image not found", "gone.vhd"]);
    // A VDI parent is found by UUID among the directory's files: a child whose parent UUID
    // matches none of them.
    g.disk("chain-vdi-missing.vdi", &edit(&orphan_vdi, |b| { for i in 0..16 { b[0x1A8 + i] ^= 0x5A; } }), "differencing VDI whose parent UUID matches no file", Refused, &["parent image not found"]);
    g.disk("chain-vmdk-missing.vmdk", child_vmdk.replace("base.vmdk", "gone.vmdk").as_bytes(), "VMDK child whose parentFileNameHint names a missing file", Refused, &["parent image not found", "gone.vmdk"]);
    g.disk("chain-vmdk-winpath.vmdk", child_vmdk.replace("\"base.vmdk\"", "\"D:\\\\VMs\\\\nothere.vmdk\"").as_bytes(), "VMDK child whose parent hint is a Windows path that does not exist", Refused, &["parent image not found"]);
    // Wrong identity.
    g.disk("chain-vhd-uuid.vhd", &edit(&child_vhd, |b| { let h = be64(b, 16) as usize; b[h + 40] ^= 0xFF; fix_dyn(b, h); }), "differencing VHD whose recorded parent Unique Id differs from base.vhd's", Refused, &["its Unique Id is", "the child expects"]);
    g.disk("chain-vmdk-cid.vmdk", child_vmdk.replacen("parentCID=", "parentCID=0badc0de\n#", 1).as_bytes(), "VMDK child whose parentCID differs from the parent's CID", Refused, &["is not the image it was made from", "CID"]);
    // Cycles.
    let mut self_vhd = rename_parent(&child_vhd, "base.vhd", "cyc1.vhd");
    {
        let h = be64(&self_vhd, 16) as usize;
        let f_end = self_vhd.len() - 512;
        let uuid: Vec<u8> = self_vhd[f_end + 68..f_end + 84].to_vec();
        self_vhd[h + 40..h + 56].copy_from_slice(&uuid);
        fix_dyn(&mut self_vhd, h);
    }
    g.disk("cyc1.vhd", &self_vhd, "differencing VHD that is its own parent (same name, same Unique Id)", Refused, &["parent image not found", "that is the child itself"]);
    // Two VMDKs, each the other's parent: cyc-b made on child.vmdk, then both descriptors
    // pointed at each other (CIDs included).
    split_child(g, "child.vmdk", "cyc-b.vmdk");
    g.files.push("cyc-b-s001.vmdk".into());
    let cid_of = |text: &str| text.lines().find_map(|l| l.strip_prefix("CID=").map(String::from)).unwrap();
    let set_parent = |text: &str, cid: &str, hint: &str| -> String {
        text.lines()
            .map(|l| if l.starts_with("parentCID=") { format!("parentCID={}", cid) } else if l.starts_with("parentFileNameHint=") { format!("parentFileNameHint=\"{}\"", hint) } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let b_text = std::fs::read_to_string(g.path("cyc-b.vmdk")).unwrap();
    let a_text = set_parent(&child_vmdk, &cid_of(&b_text), "cyc-b.vmdk");
    g.put("cyc-a.vmdk", a_text.as_bytes());
    g.put("cyc-b.vmdk", set_parent(&b_text, &cid_of(&a_text), "cyc-a.vmdk").as_bytes());
    g.case("cyc-a.vmdk", "two VMDKs, each the other's parent", "harddisk", Refused, &["the parent chain loops back", "cyc-b.vmdk"]);
    // Two VHDs, each the other's parent (names and Unique Ids), from two children of base.vhd.
    {
        let mut x = rename_parent(&child_vhd, "base.vhd", "cycy.vhd");
        let mut y = rename_parent(&orphan_vhd, "base.vhd", "cycx.vhd");
        let uuid = |b: &[u8]| b[b.len() - 512 + 68..b.len() - 512 + 84].to_vec();
        let (ux, uy) = (uuid(&x), uuid(&y));
        for (b, parent) in [(&mut x, &uy), (&mut y, &ux)] {
            let h = be64(b, 16) as usize;
            b[h + 40..h + 56].copy_from_slice(parent);
            fix_dyn(b, h);
        }
        g.put("cycy.vhd", &y);
        g.disk("cycx.vhd", &x, "two VHDs, each the other's parent (names and Unique Ids)", Refused, &["the parent chain loops back", "cycy.vhd"]);
    }
    // Two VDIs, each the other's parent (a VDI parent is the file whose UUID the child links to).
    {
        let (mut x, mut y) = (child_vdi.clone(), orphan_vdi.clone());
        // UUIDs of their own: copies of these children elsewhere in the group share theirs.
        for (b, tag) in [(&mut x, 0xC1u8), (&mut y, 0xC2)] {
            b[0x188..0x198].copy_from_slice(&[tag; 16]);
        }
        let (create_x, create_y) = (x[0x188..0x198].to_vec(), y[0x188..0x198].to_vec());
        let (modify_x, modify_y) = (x[0x198..0x1A8].to_vec(), y[0x198..0x1A8].to_vec());
        x[0x1A8..0x1B8].copy_from_slice(&create_y);
        x[0x1B8..0x1C8].copy_from_slice(&modify_y);
        y[0x1A8..0x1B8].copy_from_slice(&create_x);
        y[0x1B8..0x1C8].copy_from_slice(&modify_x);
        g.put("cycy.vdi", &y);
        g.disk("cycx.vdi", &x, "two VDIs, each the other's parent (UUID links)", Refused, &["the parent chain loops back", "cycy.vdi"]);
    }
    // A parent that is damaged itself.
    g.put("cutb.vhd", &cut(&read(&g.path("base.vhd")), 1000));
    let mut to_cut = rename_parent(&child_vhd, "base.vhd", "cutb.vhd");
    // (the UUID still matches base.vhd's, which cutb.vhd, a cut copy, keeps in its copy at 0)
    let h = be64(&to_cut, 16) as usize;
    fix_dyn(&mut to_cut, h);
    g.disk("chain-parent-cut.vhd", &to_cut, "differencing VHD whose parent file is cut inside its header", Refused, &["parent image not found", "cutb.vhd: cannot be opened", "dynamic header offset 512 is outside the file"]);
    g.disk("chain-vdi-zero-parent.vdi", &edit(&child_vdi, |b| { for i in 0..16 { b[0x1A8 + i] = 0; } }), "differencing VDI with an all-zero parent UUID", Refused, &["parent image not found (expected a VDI with UUID 00000000-0000-0000-0000-000000000000)"]);
    g.case("child.vdi", "a good VDI child: boots through its parent", "harddisk", Boots, &[]);
}

// ---- CDs and floppies --------------------------------------------------------------------------

const CD_BLOCK: usize = 2048;

fn media_cases(g: &mut Group, dir: &Path) {
    use Outcome::*;
    // A no-emulation CD whose boot image is the hello guest's boot sector, and a floppy-emulation
    // one, both made by xorriso; a FAT12 floppy made by mkfs.fat.
    let tree = dir.join("cd-tree");
    std::fs::create_dir_all(&tree).unwrap();
    let boot = guests::hello_boot_sector(dir, "cd-boot", GOOD);
    let mut boot4 = boot.clone();
    boot4.resize(2048, 0);
    std::fs::write(tree.join("boot.bin"), &boot4).unwrap();
    let mut floppy_img = vec![0u8; 1_474_560];
    floppy_img[..512].copy_from_slice(&boot);
    std::fs::write(tree.join("floppy.img"), &floppy_img).unwrap();
    let iso = read(&guests::make_iso(&tree, &g.path("src.iso"), &["-b", "boot.bin", "-c", "boot.cat", "-no-emul-boot", "-boot-load-size", "4"]));
    let fdiso = read(&guests::make_iso(&tree, &g.path("src-fd.iso"), &["-b", "floppy.img", "-c", "boot.cat"]));
    let catalog = |b: &[u8]| le32(b, 17 * CD_BLOCK + 0x47) as usize * CD_BLOCK;
    let cat = catalog(&iso);
    let entry_rba = le32(&iso, cat + 32 + 8) as usize;
    let fd_cat = catalog(&fdiso);
    let fd_rba = le32(&fdiso, fd_cat + 32 + 8) as usize;
    let fix_validation = |b: &mut [u8], cat: usize| {
        // The 16-bit words of the validation entry sum to 0 (checksum word at 28).
        set_le16(b, cat + 28, 0);
        let sum = (0..16).fold(0u16, |s, i| s.wrapping_add(u16::from_le_bytes([b[cat + 2 * i], b[cat + 2 * i + 1]])));
        set_le16(b, cat + 28, sum.wrapping_neg());
    };
    let cd = |g: &mut Group, file: &str, bytes: &[u8], what: &'static str, outcome: Outcome, expect: &[&str]| {
        g.put(file, bytes);
        g.case(file, what, "cdrom", outcome, expect);
    };
    cd(g, "cd-cut-16k.iso", &cut(&iso, 16 * 1024), "ISO cut before its volume descriptors", Refused, &["too small to be an ISO 9660 CD image"]);
    cd(g, "cd-cut-pvd.iso", &cut(&iso, 16 * CD_BLOCK + 100), "ISO cut inside its primary volume descriptor", Refused, &["cdrom=/vm/cd-cut-pvd.iso", "32868 bytes, too small to be an ISO 9660 CD image"]);
    cd(g, "cd-cut-record.iso", &cut(&iso, 17 * CD_BLOCK + 64), "ISO cut inside its boot record", Refused, &["cdrom=/vm/cd-cut-record.iso", "34880 bytes, too small to be an ISO 9660 CD image"]);
    cd(g, "cd-cut-catalog.iso", &cut(&iso, cat), "ISO cut before its boot catalog", Refused, &["boot catalog", "lies past the end of the file"]);
    cd(g, "cd-cut-image.iso", &cut(&iso, entry_rba * CD_BLOCK + 512), "ISO cut inside its boot image", Refused, &["its boot image (block", "runs past the end of the"]);
    cd(g, "cd-no-cd001.iso", &edit(&iso, |b| b[16 * CD_BLOCK + 1] = b'X'), "primary volume descriptor without CD001", Refused, &["not an ISO 9660 CD image"]);
    cd(g, "cd-record-id.iso", &edit(&iso, |b| b[17 * CD_BLOCK + 7] = b'X'), "boot record whose system id is not EL TORITO SPECIFICATION", Refused, &["no El Torito boot record"]);
    cd(g, "cd-catalog-lba.iso", &edit(&iso, |b| set_le32(b, 17 * CD_BLOCK + 0x47, 0x0100_0000)), "boot catalog pointer 32 GiB past the end", Refused, &["lies past the end of the file"]);
    cd(g, "cd-header-id.iso", &edit(&iso, |b| b[cat] = 7), "validation entry header id 07h", Refused, &["boot catalog is damaged", "header ID 01h"]);
    cd(g, "cd-key.iso", &edit(&iso, |b| b[cat + 31] = 0), "validation entry without its 55AAh key", Refused, &["no 55AAh key"]);
    cd(g, "cd-checksum.iso", &edit(&iso, |b| b[cat + 4] ^= 0x20), "validation entry checksum wrong", Refused, &["checksum is wrong"]);
    cd(g, "cd-not-bootable.iso", &edit(&iso, |b| b[cat + 32] = 0), "default entry marked 00h, not 88h", Refused, &["marked 00h, not 88h"]);
    cd(g, "cd-media-9.iso", &edit(&iso, |b| b[cat + 33] = 9), "default entry media type 9", Refused, &["media type 9"]);
    cd(g, "cd-count-0.iso", &edit(&iso, |b| set_le16(b, cat + 32 + 6, 0)), "no-emulation entry loading 0 sectors", Refused, &["loads 0 sectors"]);
    cd(g, "cd-rba-past.iso", &edit(&iso, |b| set_le32(b, cat + 32 + 8, 0x0100_0000)), "boot image 32 GiB past the end", Refused, &["its boot image (block 16777216, 2048 bytes) runs past the end"]);
    cd(g, "cd-fd-cut.iso", &cut(&fdiso, fd_rba * CD_BLOCK + 700 * 1024), "floppy-emulation ISO cut inside its 1.44 MB boot image", Refused, &["1474560 bytes) runs past the end of the 786432-byte file"]);
    cd(g, "cd-fd-to-hd.iso", &edit(&fdiso, |b| { b[fd_cat + 33] = 4; fix_validation(b, fd_cat); }), "floppy image declared as a hard-disk emulation image (no partition table)", Refused, &["cdrom=/vm/cd-fd-to-hd.iso", "MBR holds no partition"]);
    cd(g, "cd-platform.iso", &edit(&iso, |b| { b[cat + 1] = 0xEF; fix_validation(b, cat); }), "validation entry for the EFI platform (EFh), checksum fixed", Refused, &["not for x86 BIOS"]);
    cd(g, "cd-empty.iso", &[], "a CD image of 0 bytes", Refused, &["0 bytes, too small"]);
    let good_iso = g.path("src.iso");
    std::fs::copy(&good_iso, g.path("cd-good.iso")).unwrap();
    g.case("cd-good.iso", "the untouched no-emulation CD: boots", "cdrom", Boots, &[]);

    // Floppies: mkfs.fat's 1.44 MB image, then wrong sizes.
    let fd = g.path("src-floppy.img");
    let _ = std::fs::remove_file(&fd);
    sh(Command::new("mkfs.fat").args(["-C", "-F", "12"]).arg(&fd).arg("1440"));
    let floppy = read(&fd);
    let fl = |g: &mut Group, file: &str, bytes: &[u8], device: &str, what: &'static str, expect: &[&str]| {
        g.put(file, bytes);
        g.case(file, what, device, RefusedByStage2, expect);
    };
    let sizes = ["which is no floppy size", "1.44M (1474560)"];
    fl(g, "fd-short.img", &cut(&floppy, floppy.len() - 512), "floppy", "1.44 MB floppy one sector short", &["is 1474048 bytes", sizes[0]]);
    fl(g, "fd-long.img", &edit(&floppy, |b| b.extend_from_slice(&[0; 512])), "floppy", "1.44 MB floppy one sector long", &["is 1475072 bytes", sizes[0]]);
    fl(g, "fd-odd.img", &cut(&floppy, 1_474_559), "floppy", "1.44 MB floppy one byte short", &["is 1474559 bytes", sizes[1]]);
    fl(g, "fd-empty.img", &[], "floppy", "a floppy image of 0 bytes", &["is 0 bytes", sizes[0]]);
    fl(g, "fd-cd.img", &iso, "floppy", "an ISO given as a floppy", &["which is no floppy size"]);
    fl(g, "fd-hd.img", &cut(&floppy, 1_000_448), "floppy", "a 977 KiB image (no floppy geometry)", &["is 1000448 bytes"]);
    g.put("src-floppy.img", &floppy);
    g.put("fdb-short.img", &cut(&floppy, 737_280 - 1024));
    g.options("fdb-short.img", "floppy=/vm/src-floppy.img floppy_b=/vm/fdb-short.img", "floppy_b= of 720 KB less two sectors beside a good A:", &["/vm/fdb-short.img is 736256 bytes", "which is no floppy size"]);
    fl(g, "fd-2880-plus.img", &vec![0u8; 2_949_120 + 2048], "floppy", "a 2.88 MB floppy with 2 KiB too many", &["is 2951168 bytes"]);
    // Blank first sectors, refused before the hook (stage2/src/media.rs).
    fl(g, "fd-blank.img", &vec![0u8; 1_474_560], "floppy", "a 1.44 MB floppy of zeros (nothing to start)", &["floppy=/vm/fd-blank.img has no boot code in its first sector"]);
    g.put("hd-blank.img", &vec![0u8; 1 << 20]);
    g.put("cd-beside.iso", &iso);
    g.options("harddisk=/vm/hd-blank.img", "harddisk=/vm/hd-blank.img cdrom=/vm/cd-beside.iso boot=harddisk", "a blank hard disk booted beside a CD", &["has no boot code in its first sector (no 55AA signature)"]);
}

// ---- raw images, other formats, options -------------------------------------------------------

fn raw_cases(g: &mut Group, base: &Path, dir: &Path) {
    use Outcome::*;
    let raw = read(base);
    g.disk("raw-odd.img", &cut(&raw, 1_000_000), "raw image of 1,000,000 bytes (not whole sectors)", RefusedByStage2, &["is 1000000 bytes, not a whole number of 512-byte sectors"]);
    g.disk("raw-empty.img", &[], "raw image of 0 bytes", RefusedByStage2, &["is empty"]);
    g.disk("raw-blank.img", &vec![0u8; 1 << 20], "raw image of zeros (a new disk nothing was installed on)", RefusedByStage2, &["no boot signature (55AA)", "read as a raw image"]);
    g.disk("raw-one-sector.img", &edit(&raw[..512], |b| b[510] = 0), "raw image of one sector without 55AA", RefusedByStage2, &["no boot signature (55AA)"]);
    let qcow = dir.join("src.qcow2");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2", base.to_str().unwrap(), qcow.to_str().unwrap()]);
    g.disk("foreign.qcow2", &read(&qcow), "a QCOW2 image (made by qemu-img)", Refused, &["QCOW2"]);
    let vhdx = dir.join("src.vhdx");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "vhdx", base.to_str().unwrap(), vhdx.to_str().unwrap()]);
    g.disk("foreign.vhdx", &read(&vhdx), "a VHDX image (made by qemu-img)", Refused, &["VHDX"]);
    g.disk("foreign-cut.qcow2", &cut(&read(&qcow), 4), "a QCOW2 magic alone (4 bytes): still named as QCOW2", Refused, &["is a QCOW2 image"]);
    // Impossible CHS geometry in the image's own boot sector, from which the engine takes the
    // geometry INT 13h reports: a partition entry whose CHS fields say sector 0 and head 255, and
    // a FAT BPB claiming 0 heads and 0 sectors per track. Tolerated: the geometry falls back to
    // the standard one (checked on the host), and the last one boots.
    g.disk("raw-chs-mbr.img", &edit(&raw, |b| {
        b[0x1BE..0x1CE].copy_from_slice(&[0x80, 0xFF, 0xC0, 0xFF, 0x0C, 0xFF, 0xC0, 0xFF, 0x3F, 0, 0, 0, 0x00, 0x10, 0, 0]);
    }), "partition entry with impossible CHS fields (sector 0, head 255): tolerated, the geometry falls back", Boots, &[]);
    g.disk("raw-chs-bpb.img", &edit(&raw, |b| {
        b[0] = 0xEB;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[21] = 0xF8;
        b[24..28].copy_from_slice(&[0, 0, 0, 0]);
        b[38] = 0x29;
        b[54..62].copy_from_slice(b"FAT16   ");
    }), "FAT BPB claiming 0 heads and 0 sectors per track: tolerated, the geometry falls back", Boots, &[]);
    g.put("good.img", &raw);
    // Options that name impossible places.
    g.options("missing.img", "harddisk=/vm/missing.img", "an image that is not there", &["hard disk image /vm/missing.img not found on (hd0,1)"]);
    g.options("partition (hd0,9)", "harddisk=(hd0,9)/vm/good.img", "a partition the disk does not have", &["partition (hd0,9) does not exist"]);
    g.options("(hd1,1)/vm/good.img", "harddisk=(hd1,1)/vm/good.img", "an image on a disk the machine does not have", &["disk (hd1) does not exist: the BIOS reports 1 hard disk(s), (hd0) to (hd0)"]);
    g.options("/vm", "harddisk=/vm", "a directory given as the image", &["/vm"]);
    g.options("(hd0,2)/vm", "harddisk=/vm/good.img parent_dir=(hd0,2)/vm", "parent_dir= on another partition", &["it must be on the image's partition (hd0,1)"]);
    g.options("/vm/good.img", "harddisk=/vm/good.img restore", "restore on an image without a parent", &["restore: /vm/good.img is not a differencing image"]);
    g.options("grub.cfg line", "harddisk=/vm/good.img boot=floppy", "boot=floppy with no floppy", &["`boot=floppy`: there is no floppy= to boot from"]);
    g.options("/vm/good.img", "cdrom=/vm/good.img", "a raw disk image given as a CD", &["cdrom=/vm/good.img", "not an ISO 9660 CD image"]);
    g.options("grub.cfg line", "harddisk=/vm/good.img reserve=12Q", "reserve= with a size vboot cannot read", &["`reserve=12Q`: reserve= takes a size in bytes"]);
    g.case("good.img", "the untouched raw image: boots", "harddisk", Boots, &[]);
    // The last case that boots is the one QEMU boots: the impossible MBR geometry, which the
    // engine reads when it sets up the drive.
    let chs = g.cases.iter().position(|c| c.file == "raw-chs-mbr.img").unwrap();
    let case = g.cases.remove(chs);
    g.cases.push(case);
}

// ---- running a group ---------------------------------------------------------------------------

/// The name a case's error screen must show.
fn shown_name(c: &Case) -> String {
    if c.file.starts_with('/') || c.file.starts_with('(') || c.file.starts_with("partition") || c.file.starts_with("grub.cfg") || c.file.contains('=') {
        c.file.clone()
    } else {
        format!("/vm/{}", c.file)
    }
}

/// The grub.cfg of a group: its refused cases in submenus of up to 10 entries (so one digit
/// picks each), then the last case that boots, as the last top-level entry.
fn group_config(g: &Group) -> (String, Vec<Vec<&Case>>, &Case) {
    let refused: Vec<&Case> = g.cases.iter().filter(|c| c.outcome != Outcome::Boots).collect();
    let chunks: Vec<Vec<&Case>> = refused.chunks(10).map(|c| c.to_vec()).collect();
    assert!(chunks.len() < 10, "{}: too many cases for one-digit submenus", g.name);
    let good = g.cases.iter().rev().find(|c| c.outcome == Outcome::Boots).expect("a group ends with a case that boots");
    let mut cfg = String::from("set timeout=-1\n");
    for (i, chunk) in chunks.iter().enumerate() {
        cfg.push_str(&format!("submenu '{} part {}' {{\n", g.name, i + 1));
        for (j, c) in chunk.iter().enumerate() {
            cfg.push_str(&format!("  menuentry 'case {}.{} {}' {{\n    vboot {}\n  }}\n", i + 1, j + 1, c.file, c.options));
        }
        cfg.push_str("}\n");
    }
    // `immutable`: the guest's writes go into a throwaway child (or RAM, for floppies), so a
    // tolerated image that has no room for new blocks (the VHD one byte short) needs none; a
    // small child's slack (reserve=) fits the small host partition. Not for a VDI: the group's
    // VDIs are edited copies of one image with one UUID in one directory, and a VDI child finds
    // its parent by UUID there, so the child's parent would be ambiguous (vboot refuses the child
    // it made); reserve=0 boots it as it is (the guest writes nothing).
    let extra = if good.file.ends_with(".vdi") {
        " reserve=0"
    } else if good.options.contains("harddisk=") && !good.options.contains("reserve=") {
        " immutable reserve=8M"
    } else {
        " immutable"
    };
    cfg.push_str(&format!("menuentry 'tolerated {}' {{\n    vboot {}{}\n}}\n", good.file, good.options, extra));
    (cfg, chunks, good)
}

/// Boot the group's host disk once and walk through every refused case, then boot the good one.
fn run_group(g: &Group) {
    let started = Instant::now();
    let (cfg, chunks, good) = group_config(g);
    let files: Vec<(String, PathBuf)> = g.files.iter().map(|f| (f.clone(), g.path(f))).collect();
    let list: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let bytes: u64 = files.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    let rig = vboot_tests::rig::Rig::new(&format!("malformed-{}", g.name), 64 + 2 * (bytes >> 20), &cfg, &list);
    assert_eq!(rig.last_title, format!("tolerated {}", good.file));
    let mut q = rig.start();
    q.expect(&rig.last_title, T);
    let mut failures = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let mark = q.mark();
        q.send(&[b'1' + i as u8]);
        let last_title = format!("case {}.{} {}", i + 1, chunk.len(), chunk.last().unwrap().file);
        q.expect_from(mark, &last_title, T);
        for (j, c) in chunk.iter().enumerate() {
            let mark = q.mark();
            q.send(&[if j == 9 { b'0' } else { b'1' + j as u8 }]);
            let whole = q.expect_from(mark, "Press any key to return to the menu.", T);
            // From the error itself: the entry's title names the file too.
            let screen = &whole[whole.find("\nvboot: ").unwrap_or(0)..];
            if std::env::var_os("VBOOT_SHOW_MESSAGES").is_some() {
                eprintln!("{}", screen);
            }
            let mut missing: Vec<String> = c.expect.iter().filter(|e| !screen.contains(e.as_str())).cloned().collect();
            if !screen.contains(&shown_name(c)) {
                missing.push(shown_name(c));
            }
            if whole.contains("Starting the guest") || whole.contains("Resident: stub") {
                missing.push("(refused before the hook)".into());
            }
            if !missing.is_empty() {
                failures.push(format!("{} ({}): the screen lacks {:?}:\n{}", c.file, c.what, missing, screen));
            }
            let mark = q.mark();
            q.send(b" ");
            q.expect_from(mark, &last_title, T);
        }
        let mark = q.mark();
        q.send(b"\x1b[D");
        q.expect_from(mark, &rig.last_title, T);
    }
    assert!(failures.is_empty(), "{}: {} of {} cases:\n{}", g.name, failures.len(), chunks.iter().map(|c| c.len()).sum::<usize>(), failures.join("\n\n"));
    // The machine still works: the last entry boots.
    let mark = q.mark();
    q.send(&[b'1' + chunks.len() as u8]);
    q.expect_from(mark, GOOD, T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    eprintln!("{}: {} refused cases and one that boots, in {:.0?}", g.name, chunks.iter().map(|c| c.len()).sum::<usize>(), started.elapsed());
}

/// The same cases through the core library's code that stage2 runs, on the host: image chains
/// through `open_chain` and `Disk`, CDs through `eltorito` (stage2/src/media.rs).
fn host_check(g: &Group, raw: &[u8]) {
    let mut failures = Vec::new();
    for c in &g.cases {
        let path = g.path(&c.file);
        let device = c.options.split('=').next().unwrap();
        if c.outcome == Outcome::RefusedByStage2 || !path.exists() {
            continue;
        }
        let result: Result<(), String> = match device {
            "harddisk" => open_chain(path.to_str().unwrap(), &mut StdLocator::default(), &ChainOptions::default())
                .and_then(|(layers, warnings)| Disk::new(layers, warnings))
                .and_then(|mut d| {
                    let mut all = vec![0u8; (d.sectors() as usize).min(raw.len() / 512 + 64) * 512];
                    d.read(0, &mut all)?;
                    Ok(all)
                })
                .map_err(|e| e.to_string())
                .and_then(|all| {
                    // A raw image reads as itself; the others as the disk they were made from.
                    let want = if c.file.ends_with(".img") { read(&path) } else { raw.to_vec() };
                    // (A VHD's disk may be a little larger: its size is rounded to a CHS geometry.)
                    if all.len() >= want.len() && all[..want.len()] == want[..] && all[want.len()..].iter().all(|&x| x == 0) {
                        Ok(())
                    } else {
                        Err("reads differently from the original disk".into())
                    }
                }),
            "cdrom" => {
                let bytes = read(&path);
                let mut reader = |lba: u64, buf: &mut [u8; eltorito::CD_BLOCK_BYTES]| -> Result<(), String> {
                    let at = lba as usize * CD_BLOCK;
                    buf.copy_from_slice(bytes.get(at..at + CD_BLOCK).ok_or("past the end")?);
                    Ok(())
                };
                let size = bytes.len() as u64;
                eltorito::check_iso(&mut reader, size)
                    .and_then(|_| eltorito::boot_image(&mut reader, size))
                    .and_then(|image| match image.emulation {
                        eltorito::Emulation::HardDisk => {
                            let at = image.first_file_sector() as usize * 512;
                            let mbr = bytes.get(at..at + 512).unwrap_or(&[]);
                            eltorito::hard_disk_image_sectors(mbr, size / 512 - image.first_file_sector()).map(|_| ())
                        }
                        _ => Ok(()),
                    })
                    .map_err(|e| e.to_string())
            }
            _ => continue,
        };
        if std::env::var_os("VBOOT_SHOW_MESSAGES").is_some() {
            // For writing a case's expected words: what the core says about each file.
            eprintln!("{}: {:?}", c.file, result);
        }
        if c.outcome == Outcome::Boots && c.file.starts_with("raw-chs") {
            // The geometry the engine would take from sector 0: none, or one a BIOS can have.
            let sector0 = read(&path);
            let sectors = sector0.len() as u64 / 512;
            if let Some(chs) = vboot::int13::chs::geometry_from_sector0(&sector0[..512], sectors) {
                if !chs.is_bios_usable() {
                    failures.push(format!("{}: geometry {:?} from sector 0", c.file, chs));
                }
            }
        }
        match (c.outcome, result) {
            (Outcome::Boots, Ok(())) => {}
            (Outcome::Boots, Err(e)) => failures.push(format!("{} ({}) should boot: {}", c.file, c.what, e)),
            (_, Ok(())) => failures.push(format!("{} ({}) is accepted", c.file, c.what)),
            (_, Err(e)) => {
                let missing: Vec<&String> = c.expect.iter().filter(|x| !x.contains("/vm/") && !e.contains(x.as_str())).collect();
                if !missing.is_empty() {
                    failures.push(format!("{} ({}): {:?} not in: {}", c.file, c.what, missing, e));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}:\n{}", g.name, failures.join("\n"));
}

// ---- the tests ---------------------------------------------------------------------------------

fn build(name: &'static str, dir: &TempDir, f: impl FnOnce(&mut Group, &Path, &Path)) -> (Group, Vec<u8>) {
    let (base, raw) = base_disk(&dir.path, GOOD);
    let mut g = Group::new(name, &dir.path);
    f(&mut g, &base, &dir.path);
    (g, raw)
}

#[test]
fn every_case_on_the_host() {
    let dir = TempDir::new("malformed-host");
    let groups = vec![
        build("vhd", &dir, |g, b, _| vhd_cases(g, b)),
        build("vdi", &dir, |g, b, _| vdi_cases(g, b)),
        build("vmdk", &dir, |g, b, _| vmdk_cases(g, b)),
        build("chains", &dir, |g, b, _| chain_cases(g, b)),
        build("media", &dir, |g, _, d| media_cases(g, d)),
        build("raw", &dir, |g, b, d| raw_cases(g, b, d)),
    ];
    let mut total = 0;
    for (g, raw) in &groups {
        host_check(g, raw);
        total += g.cases.len();
    }
    assert!(total >= 100, "the corpus has {} cases", total);
    eprintln!("malformed corpus: {} cases", total);
}

#[test]
fn vhd_and_vdi_cases_at_boot() {
    let dir = TempDir::new("malformed-vhd");
    for (g, _) in [build("vhd", &dir, |g, b, _| vhd_cases(g, b)), build("vdi", &dir, |g, b, _| vdi_cases(g, b))] {
        run_group(&g);
    }
}

#[test]
fn vmdk_cases_at_boot() {
    let dir = TempDir::new("malformed-vmdk");
    let (g, _) = build("vmdk", &dir, |g, b, _| vmdk_cases(g, b));
    run_group(&g);
}

#[test]
fn chain_cases_at_boot() {
    let dir = TempDir::new("malformed-chains");
    let (g, _) = build("chains", &dir, |g, b, _| chain_cases(g, b));
    run_group(&g);
}

#[test]
fn cd_and_floppy_cases_at_boot() {
    let dir = TempDir::new("malformed-media");
    let (g, _) = build("media", &dir, |g, _, d| media_cases(g, d));
    run_group(&g);
}

#[test]
fn raw_image_and_option_cases_at_boot() {
    let dir = TempDir::new("malformed-raw");
    let (g, _) = build("raw", &dir, |g, b, d| raw_cases(g, b, d));
    run_group(&g);
}

// ---- grub.cfg ----------------------------------------------------------------------------------

/// Malformed grub.cfg files: (what it tests, the file, the line the message names, words of the
/// message). Each goes through what stage2 does with a grub.cfg (stage2/src/boot.rs): parse it
/// whole (a syntax error gets the "try again" screen), then, for an entry chosen in the menu,
/// its `vboot` line (an error gets the "return to the menu" screen).
const GRUB_CFGS: &[(&str, &str, usize, &[&str])] = &[
    ("single quote never closed", "set timeout=5\nmenuentry 'Broken {\n  vboot harddisk=/a.img\n}\n", 2, &["unterminated single quote"]),
    ("double quote never closed", "menuentry \"Broken {\n  vboot harddisk=/a.img\n}\n", 1, &["unterminated double quote"]),
    ("entry never closed", "menuentry 'A' {\n  vboot harddisk=/a.img\n", 1, &["menuentry"]),
    ("closing brace with no block", "set timeout=1\n}\n", 2, &["}"]),
    ("submenu never closed", "submenu 'S' {\n menuentry 'A' {\n  vboot harddisk=/a.img\n }\n", 1, &["submenu"]),
    ("menuentry without a title", "menuentry {\n  vboot harddisk=/a.img\n}\n", 1, &["title"]),
    ("menuentry without its block", "menuentry 'A'\n", 1, &["menuentry"]),
    ("${ never closed", "set x=${y\nmenuentry 'A' {\n vboot harddisk=/a.img\n}\n", 1, &["${"]),
    ("vboot option misspelt", "menuentry 'A' {\n vboot hardisk=/a.img\n}\n", 2, &["`hardisk=/a.img`", "did you mean `harddisk=`?"]),
    ("vboot option without a value", "menuentry 'A' {\n vboot harddisk=\n}\n", 2, &["needs a value"]),
    ("boot= with an unknown device", "menuentry 'A' {\n vboot harddisk=/a.img boot=usb\n}\n", 2, &["`boot=usb`", "boot= takes harddisk, cdrom or floppy"]),
    ("a flag given a value", "menuentry 'A' {\n vboot harddisk=/a.img immutable=yes\n}\n", 2, &["is a flag"]),
    ("restore with take_snapshot", "menuentry 'A' {\n vboot harddisk=/a.vhd restore take_snapshot=/s.vhd\n}\n", 2, &["take_snapshot="]),
    ("reserve= of no size", "menuentry 'A' {\n vboot harddisk=/a.img reserve=lots\n}\n", 2, &["reserve="]),
    ("a path with an unclosed device", "menuentry 'A' {\n vboot harddisk=(hd0,1/a.img\n}\n", 2, &["(hd0,1/a.img"]),
    ("a partition number of 0", "menuentry 'A' {\n vboot harddisk=(hd0,0)/a.img\n}\n", 2, &["(hd0,0)"]),
    ("floppy_b= without a value", "menuentry 'A' {\n vboot floppy_b=\n}\n", 2, &["floppy_b=", "needs a value"]),
    ("take_snapshot= for a CD", "menuentry 'A' {\n vboot cdrom=/a.iso take_snapshot=/s.vhd\n}\n", 2, &["take_snapshot="]),
    ("two vboot lines in one entry", "menuentry 'A' {\n vboot harddisk=/a.img\n vboot harddisk=/b.img\n}\n", 3, &["vboot"]),
    ("an entry with no vboot line", "menuentry 'A' {\n linux /vmlinuz\n}\n", 0, &["menu entry 'A' has no vboot line"]),
    ("nothing to boot: no image named", "menuentry 'A' {\n vboot pause\n}\n", 2, &["nothing to boot"]),
];

/// What stage2 shows for a grub.cfg: the syntax error of the file, or the first entry's
/// refusal, or None when the file parses and its first entry boots.
fn grub_cfg_message(text: &str) -> Option<String> {
    let config = match Config::parse_bytes(text.as_bytes()) {
        Err(e) => return Some(e.to_string()),
        Ok(c) => c,
    };
    let entry = config.entry(&[0])?;
    entry.boot_options().err().map(|e| e.to_string())
}

#[test]
fn malformed_grub_cfgs_on_the_host() {
    let mut failures = Vec::new();
    for (what, text, line, words) in GRUB_CFGS {
        match grub_cfg_message(text) {
            None => failures.push(format!("{}: accepted", what)),
            Some(m) => {
                let want_line = if *line == 0 { String::new() } else { format!("line {}", line) };
                if !m.contains(&want_line) || words.iter().any(|w| !m.contains(w)) {
                    failures.push(format!("{}: {:?} lacks {:?} or {:?}", what, m, want_line, words));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Four of those booted: the whole grub.cfg is refused with its line, and a key reads it again
/// (the same screen comes back: nothing hangs, nothing reboots).
#[test]
fn malformed_grub_cfgs_at_boot() {
    let dir = TempDir::new("malformed-grubcfg");
    let hello = guests::hello_guest(&dir.path, "a", GOOD, 2048);
    let picked = ["single quote never closed", "entry never closed", "submenu never closed", "${ never closed"];
    for what in picked {
        let (_, text, line, words) = GRUB_CFGS.iter().find(|c| c.0 == what).unwrap();
        let message = grub_cfg_message(text).unwrap();
        assert!(message.starts_with(&format!("grub.cfg line {}: ", line)), "{}", message);
        let host = vboot_host(&dir, 64, text, &[HostImage { path: "/a.img", file: &hello, pieces: 1 }]);
        let mut q = Qemu::boot_disk(&host.disk);
        for round in 0..2 {
            let mark = q.mark();
            if round > 0 {
                q.send(b" ");
            }
            let out = q.expect_from(mark, "Press any key to try again.", T);
            let shown = format!("vboot: (hd0,1)/boot/grub/grub.cfg: {}", message);
            assert!(out.contains(&shown), "{} (round {}): no {:?}:\n{}", what, round, shown, out);
            assert!(words.iter().all(|w| out.contains(w)), "{}: {:?}\n{}", what, words, out);
        }
        assert_eq!(q.try_exit(), None, "{}: QEMU ended:\n{}", what, q.output());
    }
}
