//! Image formats against oracles: qemu-img/qemu-io (Debian qemu-utils) make and fill images in
//! every variant, `qemu-img convert -O raw` says what they contain, and we must read the same.
//! VHD differencing chains (which qemu cannot read) are checked with libvhdi (python3-libvhdi).

use vboot_tests::{qemu_img, qemu_io, tool, TempDir};
use std::path::Path;
use std::process::Command;

use vboot::image::chain::{open_chain, ChainOptions, StdLocator};
use vboot::image::disk::Source;
use vboot::image::create::{create_at, CreateOptions, Variant};
use vboot::image::{Disk, ImageError};

/// The whole virtual disk as qemu sees it.
fn qemu_raw(fmt: &str, img: &str, dir: &TempDir) -> Vec<u8> {
    let out = dir.file("oracle.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&["convert", "-f", fmt, "-O", "raw", img, &out]);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

fn open(path: &str) -> Result<Disk, ImageError> {
    let (layers, warnings) = open_chain(path, &mut StdLocator::default(), &ChainOptions::default())?;
    Disk::new(layers, warnings)
}

fn open_rw(path: &str) -> Disk {
    let (layers, warnings) = open_chain(path, &mut StdLocator { writable_leaf: true }, &ChainOptions::default()).unwrap();
    Disk::new(layers, warnings).unwrap()
}

fn read_all(d: &mut Disk) -> Vec<u8> {
    let mut v = vec![0u8; (d.sectors() * 512) as usize];
    // Odd-sized chunks so reads cross block and grain boundaries at many offsets.
    let chunk = 1000 * 512;
    let mut at = 0usize;
    while at < v.len() {
        let n = chunk.min(v.len() - at);
        d.read((at / 512) as u64, &mut v[at..at + n]).unwrap();
        at += n;
    }
    v
}

fn assert_same(ours: &[u8], oracle: &[u8], what: &str) {
    assert_eq!(ours.len(), oracle.len(), "{}: virtual size differs from qemu's", what);
    if ours == oracle {
        return;
    }
    if let Some(i) = ours.iter().zip(oracle).position(|(a, b)| a != b) {
        panic!("{}: first difference at byte {} (sector {}): ours {:#04x}, qemu {:#04x}", what, i, i / 512, ours[i], oracle[i]);
    }
}

const PATTERN: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 1m 64k",
    "write -P 0x33 2044k 8k", // crosses a 2 MiB VHD block boundary
    "write -P 0x44 5000k 3k",
    "write -P 0x55 31m 1m",
    "write -P 0x66 63m 512",
];

fn roundtrip(fmt: &str, create: &[&str], tag: &str) {
    let dir = TempDir::new(tag);
    let img = dir.file(&format!("img.{}", if fmt == "vpc" { "vhd" } else { fmt }));
    let mut args = vec!["create", "-q", "-f", fmt];
    args.extend_from_slice(create);
    args.push(&img);
    args.push("64M");
    qemu_img(&args);
    qemu_io(fmt, &img, PATTERN);
    let oracle = qemu_raw(fmt, &img, &dir);
    let mut d = open(&img).unwrap();
    assert_same(&read_all(&mut d), &oracle, tag);
}

#[test]
fn raw_matches_qemu() {
    roundtrip("raw", &[], "raw");
}

#[test]
fn vhd_fixed_matches_qemu() {
    roundtrip("vpc", &["-o", "subformat=fixed"], "vhd-fixed");
    roundtrip("vpc", &["-o", "subformat=fixed,force_size=on"], "vhd-fixed-exact");
}

#[test]
fn vhd_dynamic_matches_qemu() {
    roundtrip("vpc", &["-o", "subformat=dynamic"], "vhd-dynamic");
    roundtrip("vpc", &["-o", "subformat=dynamic,force_size=on"], "vhd-dynamic-exact");
}

#[test]
fn vhd_virtual_size_follows_creator_rules() {
    let dir = TempDir::new("vhd-size");
    for (req, opts, want) in [("100M", "subformat=dynamic", 104_865_792u64), ("1G", "subformat=dynamic", 1_073_995_776), ("100M", "subformat=dynamic,force_size=on", 104_857_600)] {
        let img = dir.file("s.vhd");
        let _ = std::fs::remove_file(&img);
        qemu_img(&["create", "-q", "-f", "vpc", "-o", opts, &img, req]);
        let d = open(&img).unwrap();
        assert_eq!(d.sectors() * 512, want, "{} {}", req, opts);
    }
}

#[test]
fn vhd_map_offsets_match_qemu_map() {
    // qemu-img map gives the file offset of each allocated range: the same numbers must come
    // out of our flattened map.
    let dir = TempDir::new("vhd-map");
    let img = dir.file("m.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", &img, "100M"]);
    qemu_io("vpc", &img, &["write -P 0x77 6m 4k", "write -P 0x78 0 512"]);
    let json = qemu_img(&["map", "--output=json", "-f", "vpc", &img]);
    let mut d = open(&img).unwrap();
    let mut checked = 0;
    for line in json.lines().filter(|l| l.contains("\"offset\"")) {
        let field = |k: &str| -> u64 {
            let at = line.find(&format!("\"{}\": ", k)).unwrap() + k.len() + 4;
            line[at..].split(|c| c == ',' || c == '}').next().unwrap().trim().parse().unwrap()
        };
        let (start, offset) = (field("start"), field("offset"));
        let run = d.lookup(start / 512).unwrap();
        match run.source {
            Source::Data { offset_bytes, .. } => assert_eq!(offset_bytes + (start / 512 - run.start_sector) * 512, offset, "virtual byte {}", start),
            other => panic!("virtual byte {}: qemu has data at file offset {}, we have {:?}", start, offset, other),
        }
        checked += 1;
    }
    assert!(checked >= 2, "qemu-img map listed {} allocated ranges: {}", checked, json);
}

#[test]
fn vmdk_monolithic_sparse_matches_qemu() {
    roundtrip("vmdk", &["-o", "subformat=monolithicSparse"], "vmdk-sparse");
    roundtrip("vmdk", &["-o", "subformat=monolithicSparse,zeroed_grain=on"], "vmdk-sparse-zg");
}

#[test]
fn vmdk_monolithic_flat_matches_qemu() {
    roundtrip("vmdk", &["-o", "subformat=monolithicFlat"], "vmdk-flat");
}

#[test]
fn vmdk_stream_optimized_matches_qemu() {
    let dir = TempDir::new("vmdk-stream");
    let raw = dir.file("in.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "64M"]);
    qemu_io("raw", &raw, PATTERN);
    let img = dir.file("so.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", &raw, &img]);
    let oracle = qemu_raw("vmdk", &img, &dir);
    let mut d = open(&img).unwrap();
    assert_same(&read_all(&mut d), &oracle, "streamOptimized");
    assert!(matches!(d.write(0, &[0u8; 512]), Err(ImageError::ReadOnly { .. })), "streamOptimized must refuse writes");
}

#[test]
fn vmdk_stream_optimized_vmware_style_matches_qemu() {
    // VMDKstream (Debian python3-vmdkstream) writes what VMware does: grain directory at the
    // end (gdOffset = -1), a footer header, markers and an end-of-stream marker.
    let dir = TempDir::new("vmdk-vmdkstream");
    let raw = dir.file("in.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "64M"]);
    qemu_io("raw", &raw, PATTERN);
    let img = dir.file("so.vmdk");
    let script = format!("import VMDKstream\nVMDKstream.convert_to_stream({:?}, {:?})", raw, img);
    let r = Command::new("/usr/bin/python3").arg("-c").arg(&script).output().expect("cannot run /usr/bin/python3 (Debian python3)");
    assert!(r.status.success(), "VMDKstream failed (install the Debian package python3-vmdkstream): {}", String::from_utf8_lossy(&r.stderr));
    let mut head = [0u8; 64];
    use std::io::Read;
    std::fs::File::open(&img).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(u64::from_le_bytes(head[56..64].try_into().unwrap()), u64::MAX, "VMDKstream should put the grain directory at the end");
    let oracle = qemu_raw("vmdk", &img, &dir);
    assert_eq!(&oracle[..], &std::fs::read(&raw).unwrap()[..oracle.len()]);
    let mut d = open(&img).unwrap();
    assert_same(&read_all(&mut d), &oracle, "VMDKstream");
}

/// Compare selected byte ranges of a large image (reading all of a multi-GiB disk is too slow).
fn compare_ranges(fmt: &str, img: &str, dir: &TempDir, ranges: &[(u64, u64)]) {
    let oracle_path = dir.file("oracle.raw");
    let _ = std::fs::remove_file(&oracle_path);
    qemu_img(&["convert", "-f", fmt, "-O", "raw", img, &oracle_path]);
    let mut d = open(img).unwrap();
    let size = std::fs::metadata(&oracle_path).unwrap().len();
    assert_eq!(d.sectors() * 512, size, "virtual size");
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&oracle_path).unwrap();
    for &(start, len) in ranges {
        let mut want = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(start)).unwrap();
        f.read_exact(&mut want).unwrap();
        let mut got = vec![0u8; len as usize];
        d.read(start / 512, &mut got).unwrap();
        assert_same(&got, &want, &format!("{} bytes {}..{}", img, start, start + len));
    }
}

fn two_gb(subformat: &str, tag: &str) {
    let dir = TempDir::new(tag);
    let img = dir.file("t.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-o", &format!("subformat={}", subformat), &img, "2100M"]);
    let gib2 = 2048u64 << 20;
    qemu_io("vmdk", &img, &["write -P 0x21 0 64k", &format!("write -P 0x22 {} 2m", gib2 - (1 << 20)), &format!("write -P 0x23 {} 4k", 2100u64 * (1 << 20) - 4096)]);
    let listing: Vec<String> = std::fs::read_dir(&dir.path).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(listing.len() >= 3, "expected a descriptor and 2 extent files, got {:?}", listing);
    let names = open(&img).unwrap().layers()[0].file_names();
    assert_eq!(names.len(), 3, "descriptor + 2 extents: {:?}", names);
    assert!(names[1].ends_with("t-s001.vmdk") || names[1].ends_with("t-f001.vmdk"), "{:?}", names);
    let end = 2100u64 << 20;
    compare_ranges("vmdk", &img, &dir, &[(0, 1 << 20), (gib2 - (2 << 20), 4 << 20), (end - (1 << 20), 1 << 20)]);
}

#[test]
fn vmdk_two_gb_sparse_matches_qemu() {
    two_gb("twoGbMaxExtentSparse", "vmdk-2gs");
}

#[test]
fn vmdk_two_gb_flat_matches_qemu() {
    two_gb("twoGbMaxExtentFlat", "vmdk-2gf");
}

#[test]
fn vmdk_vmfs_descriptor_matches_qemu() {
    let dir = TempDir::new("vmdk-vmfs");
    let img = dir.file("v.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", &img, "64M"]);
    qemu_io("vmdk", &img, PATTERN);
    // qemu cannot create vmfs; turn the flat descriptor into one (qemu's parser wants exact
    // `key="value"` lines), take the oracle, then rewrite it with CRLF, blanks around `=`,
    // comments and NUL padding, which our lenient parser must read the same.
    let text = std::fs::read_to_string(&img).unwrap();
    let rewrite = |lenient: bool| {
        let mut out = String::new();
        for line in text.trim_end_matches('\0').lines() {
            let l = if line.starts_with("createType") {
                if lenient { "  createType = \"vmfs\"   # ESX thick".to_string() } else { "createType=\"vmfs\"".to_string() }
            } else if line.starts_with("RW ") {
                let sectors = line.split_whitespace().nth(1).unwrap();
                format!("RW {} VMFS \"v-flat.vmdk\"", sectors)
            } else {
                line.to_string()
            };
            out.push_str(&l);
            out.push_str(if lenient { "\r\n" } else { "\n" });
        }
        if lenient {
            out.push_str("\0\0\0\0garbage after NUL");
        }
        out
    };
    std::fs::write(&img, rewrite(false)).unwrap();
    let oracle = qemu_raw("vmdk", &img, &dir);
    std::fs::write(&img, rewrite(true)).unwrap();
    let mut d = open(&img).unwrap();
    assert_same(&read_all(&mut d), &oracle, "vmfs");
}

#[test]
fn vdi_dynamic_and_static_match_qemu() {
    roundtrip("vdi", &[], "vdi-dynamic");
    roundtrip("vdi", &["-o", "static=on"], "vdi-static");
}

#[test]
fn vmdk_child_chain_from_qemu_matches_qemu() {
    let dir = TempDir::new("vmdk-chain");
    let base = dir.file("base.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &base, "64M"]);
    qemu_io("vmdk", &base, PATTERN);
    // Relative backing name, stored verbatim; middle layer is split sparse.
    let mid = dir.file("mid.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "-b", "base.vmdk", "-F", "vmdk", &mid]);
    qemu_io("vmdk", &mid, &["write -P 0xA1 1m 4k", "write -P 0xA2 31m 64k"]);
    let leaf = dir.file("leaf.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-b", &mid, "-F", "vmdk", &leaf]);
    qemu_io("vmdk", &leaf, &["write -P 0xB1 1m 512", "write -P 0xB2 40m 70k"]);
    let oracle = qemu_raw("vmdk", &leaf, &dir);
    let mut d = open(&leaf).unwrap();
    assert_eq!(d.layers().len(), 3);
    assert_same(&read_all(&mut d), &oracle, "vmdk chain");
}

#[test]
fn vmdk_child_with_changed_parent_is_refused() {
    let dir = TempDir::new("vmdk-cid");
    let base = dir.file("base.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &base, "64M"]);
    let leaf = dir.file("leaf.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", &leaf]);
    // Writing the base changes its CID: the child no longer matches.
    qemu_io("vmdk", &base, &["write -P 0x01 0 512"]);
    match open(&leaf) {
        Err(ImageError::ParentMismatch { image, detail, .. }) => {
            assert!(image.ends_with("leaf.vmdk"), "{}", image);
            assert!(detail.contains("CID"), "{}", detail);
        }
        Err(e) => panic!("expected a CID mismatch, got: {}", e),
        Ok(_) => panic!("a child whose parent changed must not open"),
    }
}

#[test]
fn missing_parent_error_names_image_and_places() {
    let dir = TempDir::new("vmdk-missing");
    let base = dir.file("base.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &base, "64M"]);
    let leaf = dir.file("leaf.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", &leaf]);
    std::fs::rename(&base, dir.file("elsewhere.vmdk")).unwrap();
    let e = match open(&leaf) {
        Err(e) => e,
        Ok(_) => panic!("opened a chain whose parent is gone"),
    };
    let msg = e.to_string();
    assert!(matches!(e, ImageError::ParentNotFound { .. }), "{}", msg);
    assert!(msg.contains("leaf.vmdk") && msg.contains(&base) && msg.contains("not found"), "{}", msg);
    // parent_dir= finds it under another directory when the name matches.
    let other = TempDir::new("vmdk-missing-pd");
    std::fs::rename(dir.file("elsewhere.vmdk"), other.file("base.vmdk")).unwrap();
    let opts = ChainOptions { parent_dir: Some(other.path.to_string_lossy().into_owned()), ..Default::default() };
    let (layers, _) = open_chain(&leaf, &mut StdLocator::default(), &opts).unwrap();
    assert_eq!(layers.len(), 2);
}

fn opts(reserve: u64) -> CreateOptions {
    CreateOptions { size_bytes: 64 << 20, reserve_bytes: reserve, exact_size: false, seed: std::process::id() as u64 * 1_000_003, now_unix: 1_700_000_000 }
}

/// Our writes, at awkward offsets (sectors, count, fill byte).
const OUR_WRITES: &[(u64, usize, u8)] = &[(0, 1, 0xC1), (127, 3, 0xC2), (4095, 2, 0xC3), (4196, 300, 0xC4), (60_000, 200, 0xC5), (131_071, 1, 0xC6)];

fn write_ours(d: &mut Disk) {
    for &(s, n, b) in OUR_WRITES {
        if s + n as u64 <= d.sectors() {
            d.write(s, &vec![b; n * 512]).unwrap();
        }
    }
}

#[test]
fn images_we_write_pass_qemu_check_and_read_the_same_through_qemu() {
    for (variant, fmt, check) in [
        (Variant::VhdDynamic, "vpc", false),
        (Variant::VhdFixed, "vpc", false),
        (Variant::VdiDynamic, "vdi", true),
        (Variant::VdiFixed, "vdi", true),
        (Variant::VmdkMonolithicSparse, "vmdk", true),
        (Variant::VmdkMonolithicFlat, "vmdk", true),
        (Variant::VmdkTwoGbSparse, "vmdk", true),
        (Variant::VmdkTwoGbFlat, "vmdk", true),
        (Variant::VmdkVmfs, "vmdk", true),
    ] {
        let dir = TempDir::new("ours");
        let img = dir.file("ours.img");
        create_at(&img, variant, &opts(8 << 20), None).unwrap();
        if check {
            qemu_img(&["check", "-f", fmt, &img]);
        }
        let empty = qemu_raw(fmt, &img, &dir);
        assert!(empty.iter().all(|&b| b == 0), "{:?}: a new image reads as zeros through qemu", variant);
        {
            let mut d = open_rw(&img);
            write_ours(&mut d);
        }
        if check {
            qemu_img(&["check", "-f", fmt, &img]);
        }
        let oracle = qemu_raw(fmt, &img, &dir);
        let mut d = open(&img).unwrap();
        assert_same(&read_all(&mut d), &oracle, &format!("{:?}", variant));
        let mut probe = vec![0u8; 512];
        d.read(4196, &mut probe).unwrap();
        assert!(probe.iter().all(|&b| b == 0xC4), "{:?}", variant);
        // And qemu can keep writing into what we made.
        qemu_io(fmt, &img, &["write -P 0xD1 3m 64k"]);
        let oracle = qemu_raw(fmt, &img, &dir);
        let mut d = open(&img).unwrap();
        assert_same(&read_all(&mut d), &oracle, &format!("{:?} after qemu wrote", variant));
    }
}

#[test]
fn vmdk_child_we_make_on_a_qemu_parent_reads_the_same_through_qemu() {
    let dir = TempDir::new("vmdk-ourchild");
    let base = dir.file("base.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &base, "64M"]);
    qemu_io("vmdk", &base, PATTERN);
    std::fs::create_dir(dir.path.join("snaps")).unwrap();
    let child = dir.file("snaps/child.vmdk");
    create_at(&child, Variant::VmdkMonolithicSparse, &opts(1 << 20), Some(&base)).unwrap();
    {
        let mut d = open_rw(&child);
        assert_eq!(d.layers().len(), 2);
        write_ours(&mut d); // partial grains: the rest comes from the parent
    }
    qemu_img(&["check", "-f", "vmdk", &child]);
    let info = qemu_img(&["info", &child]);
    assert!(info.contains("backing file: ../base.vmdk"), "{}", info);
    let oracle = qemu_raw("vmdk", &child, &dir);
    let mut d = open(&child).unwrap();
    assert_same(&read_all(&mut d), &oracle, "our vmdk child");
}

/// Read a VHD chain (leaf first) through libvhdi; returns the whole disk.
fn pyvhdi_read(chain: &[&str], dir: &TempDir) -> Vec<u8> {
    let out = dir.file("pyvhdi.raw");
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
leaf = files[0]
size = leaf.get_media_size()
with open({out:?}, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        o.write(leaf.read_buffer_at_offset(n, off))
        off += n
"#,
        paths = chain,
        out = out
    );
    // The distribution's python3: pyvhdi is a Debian package (python3-libvhdi).
    let r = Command::new("/usr/bin/python3").arg("-c").arg(&script).output().expect("cannot run /usr/bin/python3 (Debian python3)");
    assert!(r.status.success(), "pyvhdi failed (install the Debian package python3-libvhdi): {}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(&out).unwrap()
}

#[test]
fn vhd_chains_we_make_read_the_same_through_libvhdi() {
    let dir = TempDir::new("vhd-chain");
    let base = dir.file("base.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", &base, "64M"]);
    qemu_io("vpc", &base, PATTERN);
    std::fs::create_dir(dir.path.join("snap")).unwrap();
    let mid = dir.file("snap/mid.vhd");
    create_at(&mid, Variant::VhdDynamic, &opts(0), Some(&base)).unwrap();
    // libvhdi 20210425 (Debian 12) decodes VHD sector bitmaps without masking the bit
    // (`byte >> (7 - i)`), so every sector after a set bit *in the same byte* looks present.
    // Writes here are therefore 8-sector aligned so that libvhdi is a correct oracle; sector
    // granular fall-through is covered by the unit tests against a model.
    {
        let mut d = open_rw(&mid);
        for &(s, n, b) in &[(0u64, 8usize, 0xC1u8), (128, 16, 0xC2), (4088, 16, 0xC3), (4200, 304, 0xC4), (60_000, 200, 0xC5), (131_064, 8, 0xC6)] {
            d.write(s, &vec![b; n * 512]).unwrap();
        }
    }
    let leaf = dir.file("snap/leaf.vhd");
    create_at(&leaf, Variant::VhdDynamic, &opts(4 << 20), Some(&mid)).unwrap();
    {
        let mut d = open_rw(&leaf);
        d.write(4104, &vec![0xE1; 512 * 72]).unwrap();
        d.write(8, &vec![0xE2; 512 * 8]).unwrap();
    }
    let info = tool("vhdiinfo", "libvhdi-utils", &[&leaf]);
    assert!(info.contains("Differential"), "{}", info);
    assert!(info.contains("mid.vhd"), "{}", info);
    let mut d = open(&leaf).unwrap();
    assert_eq!(d.layers().len(), 3);
    let ours = read_all(&mut d);
    let theirs = pyvhdi_read(&[&leaf, &mid, &base], &dir);
    assert_same(&ours, &theirs, "VHD chain vs libvhdi");
    // Moving the whole tree keeps it openable: the relative locator (W2ru) is tried first.
    let moved = TempDir::new("vhd-chain-moved");
    for f in ["base.vhd", "snap/mid.vhd", "snap/leaf.vhd"] {
        if let Some(p) = Path::new(&moved.file(f)).parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::rename(dir.file(f), moved.file(f)).unwrap();
    }
    let mut d = open(&moved.file("snap/leaf.vhd")).unwrap();
    assert_same(&read_all(&mut d), &theirs, "moved chain");
}

#[test]
fn vhd_parent_uuid_mismatch_is_an_error_naming_both() {
    let dir = TempDir::new("vhd-uuid");
    let base = dir.file("base.vhd");
    create_at(&base, Variant::VhdDynamic, &opts(0), None).unwrap();
    let child = dir.file("child.vhd");
    create_at(&child, Variant::VhdDynamic, &opts(0), Some(&base)).unwrap();
    std::fs::remove_file(&base).unwrap();
    // Another image under the parent's name.
    create_at(&base, Variant::VhdDynamic, &CreateOptions { seed: 99, ..opts(0) }, None).unwrap();
    match open(&child) {
        Err(ImageError::ParentMismatch { image, parent, detail }) => {
            assert!(image.ends_with("child.vhd") && parent.ends_with("base.vhd") && detail.contains("Unique Id"), "{} {} {}", image, parent, detail);
        }
        Err(e) => panic!("expected a parent mismatch, got {}", e),
        Ok(_) => panic!("opened a child over the wrong parent"),
    }
}

/// Build a VHD chain of `depth` layers over a 256 MiB disk holding 64 chunks of 1 MiB (chunk i
/// at i*4 MiB), spread round-robin over the layers so every depth holds the same data.
fn bench_chain(dir: &TempDir, depth: usize) -> String {
    let mut paths = Vec::new();
    for i in 0..depth {
        let p = dir.file(&format!("d{}-{}.vhd", depth, i));
        let o = CreateOptions { size_bytes: 256 << 20, exact_size: true, ..opts(0) };
        create_at(&p, Variant::VhdDynamic, &o, paths.last().map(|s: &String| s.as_str())).unwrap();
        paths.push(p);
    }
    for (i, p) in paths.iter().enumerate() {
        let mut d = open_rw(p);
        for chunk in (0..64usize).filter(|c| c % depth == i) {
            d.write((chunk as u64) * 8192, &vec![chunk as u8 + 1; 1 << 20]).unwrap();
        }
    }
    paths.pop().unwrap()
}

/// Benchmark, run by `cargo xtask bench` (ignored by `cargo test`: timing belongs in benchmarks
/// on a shared machine): lookups per second and read throughput at depth 1, 8 and 64 as ratios
/// to depth 1, and the open time of 64 GiB images.
#[test]
#[ignore]
fn bench_depth_ratios_and_open_time() {
    use std::time::Instant;
    let dir = TempDir::new("bench");
    let mut disks = Vec::new();
    for depth in [1usize, 8, 64] {
        let leaf = bench_chain(&dir, depth);
        let t = Instant::now();
        let d = open(&leaf).unwrap();
        let open_s = t.elapsed().as_secs_f64();
        assert_eq!(d.layers().len(), depth);
        disks.push((depth, d, open_s));
    }
    // The machine is shared: alternate the depths over several rounds and keep each one's best.
    let mut best = vec![(0f64, 0f64); disks.len()];
    let mut buf = vec![0u8; 1 << 20];
    for _round in 0..5 {
        for (i, (_, d, _)) in disks.iter_mut().enumerate() {
            // Lookups: pseudo-random sectors, each a walk down the chain unless a recent run
            // holds it (random sectors mostly miss: this is the walk's worst case).
            let n = 500_000u64;
            let mut x = 0x9E37_79B9u64;
            let mut hits = 0u64;
            let t = Instant::now();
            for _ in 0..n {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let s = (x >> 20) % d.sectors();
                if let Ok(r) = d.lookup(s) {
                    hits += r.sectors.min(1);
                }
            }
            let lookups_per_s = n as f64 / t.elapsed().as_secs_f64();
            assert_eq!(hits, n);
            // Throughput: the whole disk in 1 MiB reads.
            let t = Instant::now();
            for s in (0..d.sectors()).step_by(2048) {
                d.read(s, &mut buf).unwrap();
                if s % 8192 == 0 {
                    assert_eq!(buf[0], (s / 8192) as u8 + 1);
                }
            }
            let mib_per_s = 256.0 / t.elapsed().as_secs_f64();
            best[i].0 = best[i].0.max(lookups_per_s);
            best[i].1 = best[i].1.max(mib_per_s);
        }
    }
    let results: Vec<(usize, f64, f64, f64, usize)> =
        disks.iter_mut().zip(&best).map(|((depth, d, o), (l, r))| (*depth, *l, *r, *o, d.map_all().unwrap().len())).collect();
    let (_, l1, r1, _, _) = results[0];
    let mut report = String::new();
    for (depth, l, r, o, runs) in &results {
        report.push_str(&format!(
            "| image layer on the host, VHD chain of depth {} | {:.0} lookups/s at random sectors (**{:.2}** of depth 1), {:.0} MiB/s reading (**{:.2}**), open {:.3} s |\n",
            depth,
            l,
            l / l1,
            r,
            r / r1,
            o
        ));
        eprintln!(
            "depth {:>2}: {:>12.0} lookups/s (x{:.2} of depth 1), {:>8.1} MiB/s read (x{:.2}), open {:.3} s, {} map runs",
            depth,
            l,
            l / l1,
            r,
            r / r1,
            o,
            runs
        );
    }
    // Same data, same map at any depth. A lookup that misses the recent runs walks the chain
    // (its cost grows with depth: reported above); reading, which is what a guest does, finds
    // each run once and stays about as fast at depth 64 as at depth 1.
    std::fs::write(vboot_tests::workspace_root().join("target/bench-depth.md"), &report).unwrap();
    let (_, _, r64, _, runs64) = results[2];
    assert_eq!(runs64, results[0].4, "the map of the same content should have the same runs at any depth");
    assert!(r64 / r1 > 0.5, "reads at depth 64 run at {:.2} of depth 1", r64 / r1);

    for (variant, name) in [(Variant::VhdDynamic, "big.vhd"), (Variant::VdiDynamic, "big.vdi"), (Variant::VmdkMonolithicSparse, "big.vmdk")] {
        let p = dir.file(name);
        create_at(&p, variant, &CreateOptions { size_bytes: 64 << 30, ..opts(0) }, None).unwrap();
        {
            let mut d = open_rw(&p);
            d.write(0, &[1u8; 4096]).unwrap();
            d.write((64u64 << 30) / 512 - 8, &[2u8; 4096]).unwrap();
        }
        let t = Instant::now();
        let mut d = open(&p).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let runs = d.map_all().unwrap().len();
        eprintln!("open 64 GiB {:?}: {:.3} s, {} map runs, {} KiB of tables and caches", variant, secs, runs, d.memory_bytes() / 1024);
        // data, zeros, data, (zeros up to a CHS-rounded end)
        assert!(runs <= 4, "{:?}: {} runs", variant, runs);
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn vmdk_grain_table_we_allocate_passes_qemu_check() {
    let dir = TempDir::new("vmdk-newgt");
    let img = dir.file("g.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", &img, "64M"]);
    {
        // Remove grain table 1 from both directories.
        let mut b = std::fs::read(&img).unwrap();
        let gd = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize * 512;
        let rgd = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize * 512;
        b[gd + 4..gd + 8].fill(0);
        b[rgd + 4..rgd + 8].fill(0);
        std::fs::write(&img, b).unwrap();
    }
    {
        let mut d = open_rw(&img);
        d.write(70000, &vec![0x7E; 512 * 5]).unwrap();
        d.write(10, &vec![0x7F; 512]).unwrap();
    }
    qemu_img(&["check", "-f", "vmdk", &img]);
    let oracle = qemu_raw("vmdk", &img, &dir);
    assert!(oracle[70000 * 512..70005 * 512].iter().all(|&b| b == 0x7E));
    assert!(oracle[10 * 512..11 * 512].iter().all(|&b| b == 0x7F));
    let mut d = open(&img).unwrap();
    assert_same(&read_all(&mut d), &oracle, "new grain table");
}
