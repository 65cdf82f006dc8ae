//! Host tests of the image layer over in-memory files: create, write, read back, chains,
//! cycles, missing slack, and mutated headers (no panics on damaged input).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::chain::{open_chain, ChainOptions, ParentLocator};
use super::create::{create, parent_info, CreateOptions, ParentInfo, Variant};
use super::*;
use super::disk::Source;

/// A file whose bytes stay visible to the test after the image code is done with it.
#[derive(Clone)]
struct Shared {
    name: String,
    bytes: Rc<RefCell<Vec<u8>>>,
    can_grow: bool,
}

impl ImageFile for Shared {
    fn len_bytes(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let b = self.bytes.borrow();
        let s = offset_bytes as usize;
        match b.get(s..s + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ImageError::Io { image: self.name.clone(), offset_bytes, detail: "past end".into() }),
        }
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        let mut b = self.bytes.borrow_mut();
        let end = offset_bytes as usize + buf.len();
        if end > b.len() {
            if !self.can_grow {
                return Err(ImageError::Io { image: self.name.clone(), offset_bytes, detail: "cannot grow".into() });
            }
            b.resize(end, 0);
        }
        b[offset_bytes as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn can_grow(&self) -> bool {
        self.can_grow
    }
}

#[derive(Default)]
struct MemFs {
    files: BTreeMap<String, Rc<RefCell<Vec<u8>>>>,
    /// Files may grow (host) or not (boot).
    can_grow: bool,
    opts: ChainOptions,
    /// Log every write to this file (offset, bytes), in order.
    record: Option<(String, WriteLog)>,
    /// How many times the recorded file was flushed.
    record_flushes: Rc<core::cell::Cell<usize>>,
}

type WriteLog = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

/// A [`Shared`] file that logs its writes, so a test can replay any prefix of them (a crash).
struct Recorder {
    file: Shared,
    log: WriteLog,
    flushes: Rc<core::cell::Cell<usize>>,
}

impl ImageFile for Recorder {
    fn len_bytes(&self) -> u64 {
        self.file.len_bytes()
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.file.read_at(offset_bytes, buf)
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        self.file.write_at(offset_bytes, buf)?;
        self.log.borrow_mut().push((offset_bytes, buf.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        self.flushes.set(self.flushes.get() + 1);
        Ok(())
    }
    fn name(&self) -> &str {
        self.file.name()
    }
    fn can_grow(&self) -> bool {
        self.file.can_grow()
    }
}

impl MemFs {
    fn file(&mut self, path: &str) -> Shared {
        let bytes = self.files.entry(path.to_string()).or_default().clone();
        Shared { name: path.to_string(), bytes, can_grow: true }
    }
    /// The bytes of a file, by its path or by the name an image gives it (`Layer::file_names`).
    fn file_bytes(&self, name: &str) -> Vec<u8> {
        let tail = alloc::format!("/{}", name.rsplit('/').next().unwrap_or(name));
        let f = self.files.get(name).or_else(|| self.files.iter().find(|(k, _)| k.ends_with(&tail)).map(|(_, v)| v));
        f.unwrap_or_else(|| panic!("no file {} among {:?}", name, self.files.keys().collect::<Vec<_>>())).borrow().clone()
    }
    fn make(&mut self, path: &str, variant: Variant, size: u64, reserve: u64, parent: Option<&str>) {
        let pinfo: Option<ParentInfo> = parent.map(|p| {
            let opts = self.opts.clone();
            let (layers, _) = open_chain(p, self, &opts).unwrap();
            parent_info(&*layers[0], chain::basename(p), p)
        });
        let mut f = self.file(path);
        let opts = CreateOptions { size_bytes: size, reserve_bytes: reserve, exact_size: false, seed: path.len() as u64 * 7919 + size, now_unix: 1_700_000_000 };
        let dir = chain::dirname(path);
        let files = &mut self.files;
        create(variant, &mut f, chain::basename(path), &opts, pinfo.as_ref(), &mut |n: &str| {
            let bytes = files.entry(chain::join(&dir, n)).or_default().clone();
            Ok(Box::new(Shared { name: n.to_string(), bytes, can_grow: true }) as Box<dyn ImageFile>)
        })
        .unwrap();
    }
    fn disk(&mut self, path: &str) -> Result<Disk, ImageError> {
        let opts = self.opts.clone();
        self.disk_opts(path, &opts)
    }
    fn disk_opts(&mut self, path: &str, opts: &ChainOptions) -> Result<Disk, ImageError> {
        let (layers, warnings) = open_chain(path, self, opts)?;
        Disk::new(layers, warnings)
    }
}

impl ParentLocator for MemFs {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let bytes = self.files.get(&chain::normalize(path))?.clone();
        let file = Shared { name: chain::normalize(path), bytes, can_grow: self.can_grow };
        match &self.record {
            Some((p, log)) if *p == chain::normalize(path) => Some(Box::new(Recorder { file, log: log.clone(), flushes: self.record_flushes.clone() })),
            _ => Some(Box::new(file)),
        }
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        let d = chain::normalize(dir);
        self.files.keys().filter(|k| chain::dirname(k) == d).map(|k| chain::basename(k).to_string()).collect()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

fn read_all(d: &mut Disk) -> Vec<u8> {
    let mut v = vec![0u8; (d.sectors() * 512) as usize];
    d.read(0, &mut v).unwrap();
    v
}

/// A write into sectors a dynamic VHD already holds, with their bitmap bits set, changes no
/// metadata, so it has nothing to order and makes no flush (vboot-attach turns each flush into a
/// sync of the host disk); one that sets bitmap bits flushes the data before the bitmap.
#[test]
fn vhd_in_place_write_flushes_only_to_order_the_bitmap() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/img/a.vhd", Variant::VhdDynamic, 8 << 20, 4 << 20, None);
    fs.disk("/img/a.vhd").unwrap().write(0, &pattern(1, 8 * 512)).unwrap();
    let log: WriteLog = Rc::default();
    fs.record = Some(("/img/a.vhd".into(), log.clone()));
    let mut d = fs.disk("/img/a.vhd").unwrap();
    d.write(0, &pattern(2, 8 * 512)).unwrap();
    assert_eq!(fs.record_flushes.get(), 0, "a write into set bits flushed");
    assert_eq!(log.borrow().len(), 1, "a write into set bits should be one file write");
    // A block made by hand with a clear bit: the sector's bit is set after its data, flushed.
    let bat_entry = {
        let bytes = fs.file_bytes("/img/a.vhd");
        let table = u64::from_be_bytes(bytes[512 + 16..512 + 24].try_into().unwrap()) as usize;
        u32::from_be_bytes(bytes[table..table + 4].try_into().unwrap()) as usize
    };
    fs.files["/img/a.vhd"].borrow_mut()[bat_entry * 512] &= !0x01;
    let mut d = fs.disk("/img/a.vhd").unwrap();
    d.write(7, &pattern(3, 512)).unwrap();
    assert!(fs.record_flushes.get() >= 2, "data, then bitmap, each flushed: {} flushes", fs.record_flushes.get());
    let log = log.borrow();
    assert_eq!(log[log.len() - 1].0, bat_entry as u64 * 512, "the bitmap is written last");
    assert_eq!(read_all(&mut fs.disk("/img/a.vhd").unwrap())[7 * 512..8 * 512], pattern(3, 512)[..]);
}

/// Writes at awkward places: unaligned to blocks, crossing block/grain boundaries.
const WRITES: &[(u64, usize, u8)] = &[(0, 1, 1), (127, 3, 2), (4095, 2, 3), (4096 + 100, 300, 4), (8000, 200, 5), (16383, 1, 6)];

fn apply(d: &mut Disk, model: &mut [u8], seed_off: u8) {
    for &(s, n, seed) in WRITES {
        if (s + n as u64) > d.sectors() {
            continue;
        }
        let data = pattern(seed.wrapping_add(seed_off), n * 512);
        d.write(s, &data).unwrap();
        model[(s * 512) as usize..(s * 512) as usize + data.len()].copy_from_slice(&data);
    }
}

const WRITABLE: &[Variant] = &[Variant::Raw, Variant::VhdFixed, Variant::VhdDynamic, Variant::VdiDynamic, Variant::VdiFixed, Variant::VmdkMonolithicSparse, Variant::VmdkMonolithicFlat, Variant::VmdkTwoGbSparse];

#[test]
fn create_write_reopen_every_variant() {
    for &v in WRITABLE {
        let mut fs = MemFs { can_grow: true, ..Default::default() };
        fs.make("/img/a.img", v, 8 << 20, 4 << 20, None);
        let mut d = fs.disk("/img/a.img").unwrap();
        let size = (d.sectors() * 512) as usize;
        assert!(size >= 8 << 20, "{:?}: size {}", v, size);
        let mut model = vec![0u8; size];
        assert_eq!(read_all(&mut d), model, "{:?}: a new image reads as zeros", v);
        apply(&mut d, &mut model, 0);
        assert!(read_all(&mut d) == model, "{:?}: read after write", v);
        // Overwrite inside already allocated blocks.
        apply(&mut d, &mut model, 50);
        drop(d);
        let mut d = fs.disk("/img/a.img").unwrap();
        assert!(read_all(&mut d) == model, "{:?}: read after reopen", v);
        for l in d.layers_mut() {
            assert_eq!(l.check(), Vec::<String>::new(), "{:?}: check", v);
        }
    }
}

#[test]
fn writes_at_boot_use_only_reserved_slack() {
    for &v in &[Variant::VhdDynamic, Variant::VdiDynamic, Variant::VmdkMonolithicSparse] {
        let mut fs = MemFs::default();
        // Room for exactly one more block/grain of each format.
        let reserve = match v {
            Variant::VhdDynamic => (2 << 20) + 512,
            Variant::VdiDynamic => 1 << 20,
            _ => 64 << 10,
        };
        fs.make("/a", v, 16 << 20, reserve, None);
        let len_before = fs.files["/a"].borrow().len();
        fs.can_grow = false;
        let mut d = fs.disk("/a").unwrap();
        assert_eq!(d.layers()[0].slack_bytes(), reserve, "{:?}", v);
        d.write(10, &pattern(1, 512)).unwrap();
        assert_eq!(d.layers()[0].slack_bytes(), 0, "{:?}", v);
        // Same block again: fine.
        d.write(11, &pattern(2, 512)).unwrap();
        // A block far away needs a new allocation: no slack left.
        match d.write(20000, &pattern(3, 512)) {
            Err(ImageError::NoSlack { image, .. }) => assert_eq!(image, "/a"),
            other => panic!("{:?}: expected NoSlack, got {:?}", v, other.err()),
        }
        assert_eq!(fs.files["/a"].borrow().len(), len_before, "{:?}: file length must not change at boot", v);
        let mut buf = vec![0u8; 1024];
        d.read(10, &mut buf).unwrap();
        assert_eq!(&buf[..512], &pattern(1, 512)[..]);
        assert_eq!(&buf[512..], &pattern(2, 512)[..]);
        let mut z = vec![1u8; 512];
        d.read(20000, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0), "{:?}: the failed write left nothing behind", v);
        drop(d);
        let mut d = fs.disk("/a").unwrap();
        assert!(d.layers_mut()[0].check().is_empty(), "{:?}", v);
    }
}

#[test]
fn differencing_chains_in_all_three_formats() {
    for &(v, ext) in &[(Variant::VhdDynamic, "vhd"), (Variant::VdiDynamic, "vdi"), (Variant::VmdkMonolithicSparse, "vmdk")] {
        let mut fs = MemFs { can_grow: true, ..Default::default() };
        let base = alloc::format!("/vm/base.{}", ext);
        let mid = alloc::format!("/vm/snap/mid.{}", ext);
        let leaf = alloc::format!("/vm/snap/leaf.{}", ext);
        fs.make(&base, v, 8 << 20, 0, None);
        let mut model;
        {
            let mut d = fs.disk(&base).unwrap();
            model = vec![0u8; (d.sectors() * 512) as usize];
            apply(&mut d, &mut model, 0);
        }
        let base_bytes = fs.files[&base].borrow().clone();
        // VDI stores no path: its parent is searched by UUID in parent_dir and next to the child.
        let opts = ChainOptions { parent_dir: Some("/vm".into()), ..Default::default() };
        fs.opts = opts.clone();
        fs.make(&mid, v, 0, 0, Some(&base));
        if v == Variant::VdiDynamic {
            fs.opts = ChainOptions::default();
            assert!(matches!(fs.disk(&mid), Err(ImageError::ParentNotFound { .. })));
            fs.opts = opts.clone();
        }
        {
            let mut d = fs.disk_opts(&mid, &opts).unwrap();
            assert_eq!(d.layers().len(), 2, "{:?}", v);
            assert!(read_all(&mut d) == model, "{:?}: a fresh child reads as its parent", v);
            // Partial writes into blocks the parent has data in: copy-on-write must keep the rest.
            d.write(128, &pattern(90, 512)).unwrap();
            model[128 * 512..129 * 512].copy_from_slice(&pattern(90, 512));
            d.write(4096 + 50, &pattern(91, 1024)).unwrap();
            model[(4096 + 50) * 512..(4096 + 52) * 512].copy_from_slice(&pattern(91, 1024));
            assert!(read_all(&mut d) == model, "{:?}: mid after writes", v);
        }
        fs.make(&leaf, v, 0, 0, Some(&mid));
        let mut d = fs.disk_opts(&leaf, &opts).unwrap();
        assert_eq!(d.layers().len(), 3, "{:?}", v);
        assert!(read_all(&mut d) == model, "{:?}: leaf", v);
        d.write(0, &pattern(92, 512 * 3)).unwrap();
        model[..512 * 3].copy_from_slice(&pattern(92, 512 * 3));
        assert!(read_all(&mut d) == model, "{:?}: leaf after write", v);
        drop(d);
        assert!(*fs.files[&base].borrow() == base_bytes, "{:?}: the base was not touched", v);
        let mut d = fs.disk_opts(&leaf, &opts).unwrap();
        assert!(read_all(&mut d) == model, "{:?}: leaf reopened", v);
    }
}

#[test]
fn vdi_parent_found_by_uuid_under_another_name() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/p/base.vdi", Variant::VdiDynamic, 4 << 20, 0, None);
    fs.make("/p/{1234}.vdi", Variant::VdiDynamic, 0, 0, Some("/p/base.vdi"));
    // Decoys with the wrong UUID in the same directory.
    fs.make("/p/aaa.vdi", Variant::VdiDynamic, 4 << 20, 0, None);
    let bytes = fs.files.remove("/p/base.vdi").unwrap();
    fs.files.insert("/p/renamed.vdi".into(), bytes);
    let d = fs.disk("/p/{1234}.vdi").unwrap();
    assert_eq!(d.layers()[1].name(), "/p/renamed.vdi");
    // Gone entirely: the error names the child, the UUID and where it looked.
    fs.files.remove("/p/renamed.vdi");
    let e = fs.disk("/p/{1234}.vdi").err().unwrap().to_string();
    assert!(e.contains("{1234}.vdi") && e.contains("UUID") && e.contains("/p/aaa.vdi"), "{}", e);
}

#[test]
fn cycles_are_detected() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/c/a.vdi", Variant::VdiDynamic, 4 << 20, 0, None);
    fs.make("/c/b.vdi", Variant::VdiDynamic, 0, 0, Some("/c/a.vdi"));
    // Turn a into a child of b: a -> b -> a.
    let b_uuid = { fs.files["/c/b.vdi"].borrow()[vdi::off::UUID_CREATE..vdi::off::UUID_CREATE + 16].to_vec() };
    {
        let mut a = fs.files["/c/a.vdi"].borrow_mut();
        a[vdi::off::IMAGE_TYPE..vdi::off::IMAGE_TYPE + 4].copy_from_slice(&vdi::TYPE_DIFF.to_le_bytes());
        a[vdi::off::UUID_LINKAGE..vdi::off::UUID_LINKAGE + 16].copy_from_slice(&b_uuid);
    }
    match fs.disk("/c/b.vdi") {
        Err(ImageError::Cycle { chain, .. }) => assert!(chain.len() >= 2, "{:?}", chain),
        other => panic!("expected a cycle, got {:?}", other.err()),
    }
}

#[test]
fn deep_chain_lookup_does_not_grow_with_depth() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/d/0.vhd", Variant::VhdDynamic, 64 << 20, 0, None);
    let mut model = vec![0u8; 0];
    for i in 1..=64u64 {
        let p = alloc::format!("/d/{}.vhd", i - 1);
        let c = alloc::format!("/d/{}.vhd", i);
        fs.make(&c, Variant::VhdDynamic, 0, 0, Some(&p));
        let mut d = fs.disk(&c).unwrap();
        if model.is_empty() {
            model = vec![0u8; (d.sectors() * 512) as usize];
        }
        // Every layer owns one sector somewhere else.
        let s = i * 997;
        let data = pattern(i as u8, 512);
        d.write(s, &data).unwrap();
        model[(s * 512) as usize..(s * 512 + 512) as usize].copy_from_slice(&data);
    }
    let mut d = fs.disk("/d/64.vhd").unwrap();
    assert_eq!(d.layers().len(), 65);
    assert!(read_all(&mut d) == model);
    match d.lookup(5 * 997).unwrap().source {
        disk::Source::Data { layer, .. } => assert_eq!(layer, 64 - 5),
        other => panic!("{:?}", other),
    }
    // The map is the result, not the chain: 64 data sectors separated by zero runs.
    let runs = d.map_all().unwrap();
    assert!(runs.len() <= 2 * 64 + 1, "{} runs", runs.len());
    // Memory is the layers' own tables, fixed at open, whatever was read.
    let before = d.memory_bytes();
    assert!(read_all(&mut d) == model);
    assert_eq!(d.memory_bytes(), before);
    match d.lookup(5 * 997).unwrap().source {
        disk::Source::Data { layer, .. } => assert_eq!(layer, 64 - 5),
        other => panic!("{:?}", other),
    }
}

/// xorshift for reproducible mutations.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_images_never_panic() {
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    for &v in &[Variant::VhdDynamic, Variant::VhdFixed, Variant::VdiDynamic, Variant::VmdkMonolithicSparse] {
        let mut fs = MemFs { can_grow: true, ..Default::default() };
        fs.make("/f/base.vdi", v, 4 << 20, 0, None);
        {
            let mut d = fs.disk("/f/base.vdi").unwrap();
            let mut model = vec![0u8; (d.sectors() * 512) as usize];
            apply(&mut d, &mut model, 0);
        }
        let child = if v == Variant::VhdFixed { Variant::VhdDynamic } else { v };
        fs.make("/f/x.vdi", child, 0, 0, Some("/f/base.vdi"));
        {
            let mut d = fs.disk("/f/x.vdi").unwrap();
            let mut model = vec![0u8; (d.sectors() * 512) as usize];
            apply(&mut d, &mut model, 9);
        }
        let pristine = fs.files["/f/x.vdi"].borrow().clone();
        let len = pristine.len();
        for round in 0..400 {
            let mut m = pristine.clone();
            let hits = 1 + next(&mut state) % 8;
            for _ in 0..hits {
                // Aim at the metadata: the first 8 KiB and the last sector hold every header.
                let r = next(&mut state);
                let pos = if r % 3 == 0 { len - 1 - (r as usize >> 8) % 512 } else { (r as usize >> 8) % 8192.min(len) };
                let val = match next(&mut state) % 4 {
                    0 => 0xFF,
                    1 => 0,
                    _ => next(&mut state) as u8,
                };
                m[pos] = val;
            }
            *fs.files["/f/x.vdi"].borrow_mut() = m;
            if let Ok(mut d) = fs.disk("/f/x.vdi") {
                let mut buf = vec![0u8; 64 * 1024];
                let mut s = 0;
                while s < d.sectors() {
                    let n = (d.sectors() - s).min(128);
                    let _ = d.read(s, &mut buf[..(n * 512) as usize]);
                    s += n;
                }
                if round % 10 == 0 {
                    let _ = d.write(next(&mut state) % d.sectors(), &[0xAB; 512]);
                }
                for l in d.layers_mut() {
                    let _ = l.check();
                }
            }
        }
    }
}

#[test]
fn vhd_geometry_vectors() {
    // docs/image-formats.md, "VHD: virtual size and CHS geometry" (its table).
    assert_eq!(vhd::chs_for_size(1 << 20), (30, 4, 17));
    assert_eq!(vhd::chs_for_size(100 << 20), (1003, 12, 17));
    assert_eq!(vhd::chs_for_size(1 << 30), (2080, 16, 63));
    assert_eq!(vhd::chs_for_size(32 << 30), (16448, 16, 255));
    assert_eq!(vhd::chs_for_size(128 << 30), (65535, 16, 255));
    assert_eq!(vhd::chs_round_up(1 << 20).0, 1_079_296);
    assert_eq!(vhd::chs_round_up(100 << 20).0, 104_865_792);
    assert_eq!(vhd::chs_round_up(1 << 30).0, 1_073_995_776);
    assert_eq!(vhd::chs_round_up(32 << 30).0, 34_361_303_040);
}

#[test]
fn descriptor_parsing_is_lenient() {
    let text = b"# Disk DescriptorFile\r\nversion=1\r\n  CID = 1a2b3c4d \r\nparentCID=ffffffff\r\ncreateType = \"twoGbMaxExtentSparse\"\r\n# Extent description\r\nRW 4192256 SPARSE \"my disk-s001.vmdk\"\r\nrdonly 2048 FLAT \"with space.vmdk\" 17 extra fields here\r\nNOACCESS 100 ZERO\r\n\0\0garbage CID=00000000";
    let d = vmdk::Descriptor::parse(text, "t").unwrap();
    assert_eq!(d.cid, Some(0x1a2b3c4d));
    assert!(!d.has_parent());
    assert_eq!(d.extents.len(), 3);
    assert_eq!(d.extents[0].file_name.as_deref(), Some("my disk-s001.vmdk"));
    assert_eq!(d.extents[1].offset_sectors, 17);
    assert_eq!(d.extents[1].access, "RDONLY");
    assert_eq!(d.extents[2].kind, "ZERO");
}

#[test]
fn vhd_parent_name_both_endiannesses() {
    let mut raw = [0u8; 512];
    for (i, u) in "base.vhd".encode_utf16().enumerate() {
        raw[i * 2..i * 2 + 2].copy_from_slice(&u.to_be_bytes());
    }
    assert_eq!(vhd::decode_parent_name(&raw), "base.vhd");
    let mut raw = [0u8; 512];
    for (i, u) in "base.vhd".encode_utf16().enumerate() {
        raw[i * 2..i * 2 + 2].copy_from_slice(&u.to_le_bytes());
    }
    assert_eq!(vhd::decode_parent_name(&raw), "base.vhd");
}

#[test]
fn vhd_footer_fallback_to_copy_and_checksum() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/v/a.vhd", Variant::VhdDynamic, 4 << 20, 0, None);
    {
        let mut b = fs.files["/v/a.vhd"].borrow_mut();
        let n = b.len();
        b[n - 512 + 70] ^= 0xFF; // break the end footer's checksum
    }
    let d = fs.disk("/v/a.vhd").unwrap();
    assert!(d.layers()[0].details().iter().any(|(k, v)| k == "warning" && v.contains("copy at offset 0")));
    {
        let mut b = fs.files["/v/a.vhd"].borrow_mut();
        b[70] ^= 0xFF;
    }
    let e = fs.disk("/v/a.vhd").err().unwrap().to_string();
    assert!(e.contains("/v/a.vhd") && e.contains("checksum"), "{}", e);
}

#[test]
fn vhd_parent_by_drive_letter_path_and_parent_dir() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/vm/base.vhd", Variant::VhdDynamic, 4 << 20, 0, None);
    {
        let mut d = fs.disk("/vm/base.vhd").unwrap();
        d.write(3, &pattern(7, 512)).unwrap();
    }
    // A child made on Windows: W2ru points nowhere useful, W2ku is `C:\vm\base.vhd`.
    let (layers, _) = open_chain("/vm/base.vhd", &mut fs, &ChainOptions::default()).unwrap();
    let info = ParentInfo { relative_path: "..\\elsewhere\\base-old.vhd".into(), absolute_path: "C:\\vm\\base.vhd".into(), ..parent_info(&*layers[0], "", "") };
    drop(layers);
    let mut f = fs.file("/snaps/child.vhd");
    let opts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: 5, now_unix: 1_700_000_000 };
    create(Variant::VhdDynamic, &mut f, "child.vhd", &opts, Some(&info), &mut |_n: &str| Err(ImageError::Invalid { detail: "no".into() })).unwrap();
    let mut d = fs.disk("/snaps/child.vhd").unwrap();
    assert_eq!(d.layers()[1].name(), "/vm/base.vhd");
    let mut b = vec![0u8; 512];
    d.read(3, &mut b).unwrap();
    assert_eq!(b, pattern(7, 512));
    // Moved somewhere the stored paths do not reach: parent_dir= finds it by name.
    let bytes = fs.files.remove("/vm/base.vhd").unwrap();
    fs.files.insert("/images/base.vhd".into(), bytes);
    let e = fs.disk("/snaps/child.vhd").err().unwrap().to_string();
    assert!(e.contains("/vm/base.vhd: not found") && e.contains("/snaps/base.vhd: not found") && e.contains("/elsewhere/base-old.vhd"), "{}", e);
    fs.opts.parent_dir = Some("/images".into());
    let d = fs.disk("/snaps/child.vhd").unwrap();
    assert_eq!(d.layers()[1].name(), "/images/base.vhd");
}

#[test]
fn snapshot_into_a_preallocated_file_at_boot() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    for (v, ext) in [(Variant::VhdDynamic, "vhd"), (Variant::VdiDynamic, "vdi"), (Variant::VmdkMonolithicSparse, "vmdk")] {
        let base = alloc::format!("/b/base.{}", ext);
        fs.make(&base, v, 8 << 20, 0, None);
        let (layers, _) = open_chain(&base, &mut fs, &ChainOptions::default()).unwrap();
        let info = parent_info(&*layers[0], &alloc::format!("base.{}", ext), &base);
        drop(layers);
        // A file of 4 MiB made by the file system beforehand; it cannot grow.
        let child = alloc::format!("/b/snap.{}", ext);
        fs.files.insert(child.clone(), Rc::new(RefCell::new(vec![0xEEu8; 4 << 20])));
        let mut f = Shared { name: child.clone(), bytes: fs.files[&child].clone(), can_grow: false };
        let opts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: 3, now_unix: 1_700_000_000 };
        create::create_filling(v, &mut f, "snap", &opts, Some(&info)).unwrap();
        assert_eq!(fs.files[&child].borrow().len(), 4 << 20);
        fs.can_grow = false;
        let mut d = fs.disk(&child).unwrap();
        assert_eq!(d.layers().len(), 2, "{:?}", v);
        assert!(d.layers()[0].slack_bytes() > (1 << 20), "{:?}: {}", v, d.layers()[0].slack_bytes());
        d.write(0, &pattern(1, 4096)).unwrap();
        let mut b = vec![0u8; 4096];
        d.read(0, &mut b).unwrap();
        assert_eq!(b, pattern(1, 4096));
        assert!(d.layers_mut()[0].check().is_empty(), "{:?}", v);
        fs.can_grow = true;
        // Too small a file is refused before anything is written.
        let tiny = Rc::new(RefCell::new(vec![0xEEu8; 512]));
        let mut f = Shared { name: "tiny".into(), bytes: tiny.clone(), can_grow: false };
        assert!(matches!(create::create_filling(v, &mut f, "tiny", &opts, Some(&info)), Err(ImageError::NoSlack { .. })));
        assert!(tiny.borrow().iter().all(|&b| b == 0xEE));
    }
}

#[test]
fn restore_empties_the_leaf_and_reuses_its_space() {
    for &(v, ext) in &[(Variant::VhdDynamic, "vhd"), (Variant::VdiDynamic, "vdi"), (Variant::VmdkMonolithicSparse, "vmdk")] {
        let mut fs = MemFs { can_grow: true, ..Default::default() };
        let base = alloc::format!("/r/base.{}", ext);
        let leaf = alloc::format!("/r/leaf.{}", ext);
        fs.make(&base, v, 8 << 20, 0, None);
        let mut model;
        {
            let mut d = fs.disk(&base).unwrap();
            model = vec![0u8; (d.sectors() * 512) as usize];
            apply(&mut d, &mut model, 0);
        }
        let reserve = match v {
            Variant::VhdDynamic => 2 * ((2 << 20) + 512),
            Variant::VdiDynamic => 2 << 20,
            _ => 128 << 10,
        };
        fs.make(&leaf, v, 0, reserve, Some(&base));
        fs.can_grow = false;
        let len = fs.files[&leaf].borrow().len();
        let mut d = fs.disk(&leaf).unwrap();
        d.write(1, &pattern(40, 512)).unwrap();
        d.write(8000, &pattern(41, 512)).unwrap();
        assert_eq!(d.layers()[0].slack_bytes(), 0, "{:?}", v);
        d.discard_leaf().unwrap();
        assert!(read_all(&mut d) == model, "{:?}: reads as the parent again", v);
        assert_eq!(d.layers()[0].slack_bytes(), reserve, "{:?}: the space is free again", v);
        // And it can be written again within the same file.
        d.write(9000, &pattern(42, 512)).unwrap();
        drop(d);
        assert_eq!(fs.files[&leaf].borrow().len(), len);
        let mut d = fs.disk(&leaf).unwrap();
        let mut b = vec![0u8; 512];
        d.read(9000, &mut b).unwrap();
        assert_eq!(b, pattern(42, 512));
        d.read(1, &mut b).unwrap();
        assert_eq!(&b[..], &model[512..1024]);
        assert!(d.layers_mut()[0].check().is_empty(), "{:?}", v);
        let mut b = fs.disk(&base).unwrap();
        assert!(matches!(b.discard_leaf(), Err(ImageError::Invalid { .. })), "a base image is never emptied");
        fs.can_grow = true;
    }
}

#[test]
fn vmdk_write_allocates_a_missing_grain_table() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/g/a.vmdk", Variant::VmdkMonolithicSparse, 64 << 20, 0, None);
    {
        // Drop grain table 1 (sectors 65536..131071) from both directories, as a
        // streamOptimized-style or sparse-GT writer would leave it.
        let mut b = fs.files["/g/a.vmdk"].borrow_mut();
        let gd = u64::from_le_bytes(b[56..64].try_into().unwrap()) as usize * 512;
        let rgd = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize * 512;
        b[gd + 4..gd + 8].fill(0);
        b[rgd + 4..rgd + 8].fill(0);
    }
    let mut d = fs.disk("/g/a.vmdk").unwrap();
    let mut model = vec![0u8; (d.sectors() * 512) as usize];
    for &(s, n, seed) in &[(70000u64, 3usize, 1u8), (70001, 1, 2), (131071, 1, 3), (5, 2, 4)] {
        let data = pattern(seed, n * 512);
        d.write(s, &data).unwrap();
        model[(s * 512) as usize..(s * 512) as usize + data.len()].copy_from_slice(&data);
    }
    assert!(read_all(&mut d) == model);
    drop(d);
    let mut d = fs.disk("/g/a.vmdk").unwrap();
    assert!(read_all(&mut d) == model);
    assert_eq!(d.layers_mut()[0].check(), Vec::<String>::new());
}

#[test]
fn vhdx_and_qcow2_are_named_not_taken_for_raw() {
    for (magic, format) in [(&b"vhdxfile"[..], "VHDX"), (&b"QFI\xfb\0\0\0\x03"[..], "QCOW2")] {
        let mut bytes = alloc::vec![0u8; 4096];
        bytes[..magic.len()].copy_from_slice(magic);
        let mut f = MemFile::new("/vm/x.img", bytes);
        let e = probe(&mut f).unwrap_err();
        assert_eq!(e, ImageError::ForeignFormat { image: "/vm/x.img".into(), format });
        assert_eq!(
            alloc::format!("{}", e),
            alloc::format!("/vm/x.img is a {} image; vboot boots raw, VHD, VMDK and VDI images", format)
        );
    }
}

/// Invariant 3 (docs/architecture.md), exhaustively: a boot-time write that allocates two new units
/// (VHD blocks, VDI blocks, VMDK grains) in the slack of a dynamic image or a differencing child is
/// cut short after each of its file writes in turn, and in the middle of each multi-sector one (a
/// torn transfer). Every such image must open, pass its own check, read the written sectors as old
/// or new and every other sector as before, and take the same write again afterwards.
#[test]
fn a_crash_after_any_write_of_an_allocation_leaves_a_valid_image() {
    let formats = [(Variant::VhdDynamic, "vhd", 2 * ((2 << 20) + 512)), (Variant::VdiDynamic, "vdi", 2 << 20), (Variant::VmdkMonolithicSparse, "vmdk", 128 << 10)];
    for &(v, ext, reserve) in &formats {
        for differencing in [false, true] {
            let what = alloc::format!("{:?}{}", v, if differencing { " child" } else { "" });
            let mut fs = MemFs { can_grow: true, ..Default::default() };
            let base = alloc::format!("/c/base.{}", ext);
            // (The base takes its own pattern first, on the host: room for that too.)
            fs.make(&base, v, 8 << 20, if differencing { 0 } else { reserve + (20 << 20) }, None);
            // Two sectors across a boundary every format's units share (4096 sectors = 2 MiB),
            // in units the leaf has not allocated yet.
            let lba = 6 * 2048 - 1;
            let mut old = {
                let mut d = fs.disk(&base).unwrap();
                let mut model = vec![0u8; (d.sectors() * 512) as usize];
                apply(&mut d, &mut model, 0);
                if differencing {
                    // Parent data all around the write, so that a child reading anything but
                    // the parent's data or the write shows.
                    let around = pattern(90, 400 * 512);
                    d.write(lba - 200, &around).unwrap();
                    model[((lba - 200) * 512) as usize..((lba + 200) * 512) as usize].copy_from_slice(&around);
                }
                model
            };
            let leaf = if differencing {
                let leaf = alloc::format!("/c/leaf.{}", ext);
                fs.make(&leaf, v, 0, reserve, Some(&base));
                leaf
            } else {
                base.clone()
            };
            fs.can_grow = false;
            let before: BTreeMap<String, Vec<u8>> = fs.files.iter().map(|(k, b)| (k.clone(), b.borrow().clone())).collect();
            let data = pattern(77, 1024);
            let log: WriteLog = Rc::default();
            fs.record = Some((leaf.clone(), log.clone()));
            fs.disk(&leaf).unwrap().write(lba, &data).unwrap();
            fs.record = None;
            let log = log.take();
            assert!(log.len() >= 4, "{}: an allocating write should take several file writes", what);
            let mut new = old.clone();
            new[(lba * 512) as usize..(lba * 512) as usize + 1024].copy_from_slice(&data);
            if !differencing {
                // The base itself is the leaf: `old` is what it held before the write.
                old = {
                    let mut fs0 = MemFs { files: before.iter().map(|(k, b)| (k.clone(), Rc::new(RefCell::new(b.clone())))).collect(), ..Default::default() };
                    read_all(&mut fs0.disk(&leaf).unwrap())
                };
            }
            for cut in 0..=log.len() {
                for torn in [false, true] {
                    let partial = log.get(cut).map(|(_, b)| b.len() / 2 / 512 * 512).unwrap_or(0);
                    if torn && partial == 0 {
                        continue;
                    }
                    let case = alloc::format!("{}: crash after write {} of {}{}", what, cut, log.len(), if torn { ", torn in the next" } else { "" });
                    let mut bytes = before[&leaf].clone();
                    for (off, b) in log[..cut].iter() {
                        bytes[*off as usize..*off as usize + b.len()].copy_from_slice(b);
                    }
                    if torn {
                        let (off, b) = &log[cut];
                        bytes[*off as usize..*off as usize + partial].copy_from_slice(&b[..partial]);
                    }
                    let mut files: BTreeMap<String, Rc<RefCell<Vec<u8>>>> =
                        before.iter().map(|(k, b)| (k.clone(), Rc::new(RefCell::new(b.clone())))).collect();
                    files.insert(leaf.clone(), Rc::new(RefCell::new(bytes)));
                    let mut fs2 = MemFs { files, can_grow: false, ..Default::default() };
                    let mut d = fs2.disk(&leaf).unwrap_or_else(|e| panic!("{}: does not open: {}", case, e));
                    let problems = d.layers_mut()[0].check();
                    assert!(problems.is_empty(), "{}: {:?}", case, problems);
                    let got = read_all(&mut d);
                    for s in 0..d.sectors() as usize {
                        let r = s * 512..(s + 1) * 512;
                        let ok = got[r.clone()] == old[r.clone()] || ((s as u64 == lba || s as u64 == lba + 1) && got[r.clone()] == new[r.clone()]);
                        assert!(ok, "{}: sector {} holds neither its old nor its new data", case, s);
                    }
                    d.write(lba, &data).unwrap_or_else(|e| panic!("{}: the write again: {}", case, e));
                    drop(d);
                    let mut d = fs2.disk(&leaf).unwrap();
                    assert!(read_all(&mut d) == new, "{}: the write again does not read back", case);
                    let problems = d.layers_mut()[0].check();
                    assert!(problems.is_empty(), "{}: after the write again: {:?}", case, problems);
                }
            }
        }
    }
}

#[test]
fn vmdk_counts_its_unallocated_space_as_a_walk_does() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/u/a.vmdk", Variant::VmdkMonolithicSparse, 256 << 20, 0, None);
    let mut d = fs.disk("/u/a.vmdk").unwrap();
    for s in [0u64, 1, 300, 70_000, 400_000, 524_287] {
        d.write(s, &pattern(s as u8, 512)).unwrap();
    }
    let layer = &mut d.layers_mut()[0];
    let known = layer.unallocated_bytes_known().expect("VMDK knows its grain count");
    // The same walk, without the shortcut.
    let total = layer.virtual_sectors();
    let mut sector = 0u64;
    let mut walked = 0u64;
    while sector < total {
        let (m, n) = layer.map(sector).unwrap();
        if matches!(m, Mapping::Parent | Mapping::Zero) {
            walked += n;
        }
        sector += n;
    }
    assert_eq!(known, walked * 512);
    assert_eq!(known, (256 << 20) - 5 * 64 * 1024, "five grains written (0 and 1 share one)");
}

/// Tables that send a guest write onto the image's own metadata, or onto another block's data,
/// are refused at open (a boot would otherwise let the guest damage the image).
#[test]
fn tables_pointing_into_metadata_or_each_other_are_refused_at_open() {
    let refused = |fs: &mut MemFs, path: &str, needle: &str| match fs.disk(path) {
        Err(ImageError::Corrupt { image, detail }) => {
            assert_eq!(image, path);
            assert!(detail.contains(needle), "{}: {}", path, detail);
        }
        other => panic!("{}: expected a refusal naming {:?}, got {:?}", path, needle, other.err()),
    };
    // VHD: block 1 put over the BAT.
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/m/a.vhd", Variant::VhdDynamic, 64 << 20, 0, None);
    fs.disk("/m/a.vhd").unwrap().write(0, &pattern(1, 512)).unwrap();
    {
        let mut b = fs.files["/m/a.vhd"].borrow_mut();
        let len = b.len();
        let footer = vhd::Footer::parse(&b[len - 512..]).unwrap();
        let h = vhd::DynHeader::parse(&b[footer.data_offset as usize..footer.data_offset as usize + 1024]).unwrap();
        let at = h.table_offset as usize + 4;
        let bat_sector = (h.table_offset / 512) as u32;
        b[at..at + 4].copy_from_slice(&bat_sector.to_be_bytes());
    }
    refused(&mut fs, "/m/a.vhd", "over the block allocation table");

    // VHD: block 0 on block 1's sectors, then one sector before them (so they overlap).
    for (path, back) in [("/m/d.vhd", 0u32), ("/m/e.vhd", 1)] {
        fs.make(path, Variant::VhdDynamic, 64 << 20, 0, None);
        {
            let mut d = fs.disk(path).unwrap();
            d.write(0, &pattern(5, 512)).unwrap();
            d.write(4096, &pattern(6, 512)).unwrap();
        }
        {
            let mut b = fs.files[path].borrow_mut();
            let len = b.len();
            let footer = vhd::Footer::parse(&b[len - 512..]).unwrap();
            let h = vhd::DynHeader::parse(&b[footer.data_offset as usize..footer.data_offset as usize + 1024]).unwrap();
            let at = h.table_offset as usize;
            let block1 = u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap());
            b[at..at + 4].copy_from_slice(&(block1 - back).to_be_bytes());
        }
        refused(&mut fs, path, "BAT entries 0 and 1 put their blocks at sectors");
    }

    // VDI: blocks 0 and 1 in one slot.
    fs.make("/m/b.vdi", Variant::VdiDynamic, 64 << 20, 0, None);
    {
        let mut d = fs.disk("/m/b.vdi").unwrap();
        d.write(0, &pattern(2, 512)).unwrap();
        d.write(2048, &pattern(3, 512)).unwrap();
    }
    {
        let mut b = fs.files["/m/b.vdi"].borrow_mut();
        let map = u32::from_le_bytes(b[vdi::off::OFF_BLOCKS..vdi::off::OFF_BLOCKS + 4].try_into().unwrap()) as usize;
        let first: [u8; 4] = b[map..map + 4].try_into().unwrap();
        b[map + 4..map + 8].copy_from_slice(&first);
    }
    refused(&mut fs, "/m/b.vdi", "which another block uses too");

    // VMDK: grain 1 put over the first grain table.
    fs.make("/m/c.vmdk", Variant::VmdkMonolithicSparse, 64 << 20, 0, None);
    fs.disk("/m/c.vmdk").unwrap().write(0, &pattern(4, 512)).unwrap();
    {
        let mut b = fs.files["/m/c.vmdk"].borrow_mut();
        let header = vmdk::SparseHeader::parse(&b[..512], "c").unwrap();
        let gd = header.gd_offset as usize * 512;
        let gt = u32::from_le_bytes(b[gd..gd + 4].try_into().unwrap());
        let entry = gt as usize * 512 + 4;
        b[entry..entry + 4].copy_from_slice(&gt.to_le_bytes());
    }
    refused(&mut fs, "/m/c.vmdk", "over the image's own header, descriptor or grain tables");
}

/// A descriptor-only VMDK at `path` with the extent lines `extents`.
fn vmdk_descriptor(fs: &mut MemFs, path: &str, extents: &str) {
    let text = alloc::format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{}\n", extents);
    fs.files.insert(path.to_string(), Rc::new(RefCell::new(text.into_bytes())));
}

fn corrupt_message(r: Result<Disk, ImageError>) -> String {
    match r {
        Err(ImageError::Corrupt { image, detail }) => alloc::format!("{}: {}", image, detail),
        Err(e) => panic!("expected a corrupt-image error, got {}", e),
        Ok(_) => panic!("the image opened"),
    }
}

// Issue 14: extent sizes from a descriptor went into `sectors * 512` unchecked.
#[test]
fn vmdk_extents_of_2_55_sectors_are_refused() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.files.insert("/v/flat.bin".into(), Rc::new(RefCell::new(vec![0u8; 64 * 512])));
    vmdk_descriptor(&mut fs, "/v/ok.vmdk", "RW 64 FLAT \"flat.bin\" 0");
    assert_eq!(fs.disk("/v/ok.vmdk").unwrap().sectors(), 64);
    // 2^55 sectors of a FLAT file: the byte count overflowed while checking the file's length.
    vmdk_descriptor(&mut fs, "/v/flat.vmdk", "RW 36028797018963968 FLAT \"flat.bin\" 0");
    let m = corrupt_message(fs.disk("/v/flat.vmdk"));
    assert_eq!(m, "/v/flat.vmdk: extent file /v/flat.bin: flat extent of 36028797018963968 sectors at sector 0 is longer than the file (32768 bytes)");
    // A ZERO extent is only a number: the image opened, and a snapshot of it (its size in bytes)
    // overflowed later.
    vmdk_descriptor(&mut fs, "/v/zero.vmdk", "RW 36028797018963968 ZERO");
    let m = corrupt_message(fs.disk("/v/zero.vmdk"));
    assert!(m.contains("/v/zero.vmdk: the extents add up to more than 4503599627370496 sectors (the 36028797018963968 sectors of `ZERO` make it 36028797018963968)"), "{}", m);
    // Extents that only add up to too much.
    vmdk_descriptor(&mut fs, "/v/sum.vmdk", "RW 4503599627370000 ZERO\nRW 4503599627370000 ZERO");
    assert!(corrupt_message(fs.disk("/v/sum.vmdk")).contains("the extents add up to more than"));
    vmdk_descriptor(&mut fs, "/v/wrap.vmdk", "RW 18446744073709551615 ZERO\nRW 2 ZERO");
    assert!(corrupt_message(fs.disk("/v/wrap.vmdk")).contains("the extents add up to more than"));
}

// Issue 14: `take_snapshot=` of a VMDK with a huge ZERO extent. stage2 sizes the child from the
// parent's bytes (`parent_info`, `metadata_bytes`, `slack::wanted_bytes`, as prepare.rs does);
// those overflowed, or tried to allocate the tables of an exabyte disk.
#[test]
fn a_snapshot_of_a_huge_zero_extent_is_refused_with_a_message() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    vmdk_descriptor(&mut fs, "/v/zero.vmdk", &alloc::format!("RW {} ZERO", MAX_VIRTUAL_SECTORS));
    let (layers, _) = open_chain("/v/zero.vmdk", &mut fs, &ChainOptions::default()).unwrap();
    let leaf = &*layers[0];
    assert_eq!(leaf.virtual_sectors(), 1 << 52);
    let info = parent_info(leaf, "zero.vmdk", "/v/zero.vmdk");
    assert_eq!(info.virtual_bytes, 1 << 61);
    let opts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: 1, now_unix: 1_700_000_000 };
    match create::metadata_bytes(Variant::VmdkMonolithicSparse, "snap.vmdk", &opts, Some(&info)) {
        Err(ImageError::Invalid { detail }) => {
            assert!(detail.contains("VMDK images are limited to 1099511627776 sectors (512 TiB); 2305843009213693952 bytes asked"), "{}", detail)
        }
        other => panic!("{:?}", other.map_err(|e| e.to_string())),
    }
    // The slack stage2 would ask for: capped, never wrapped.
    assert_eq!(slack::wanted_bytes(64 << 20, info.virtual_bytes), 64 << 20);
    assert_eq!(slack::wanted_bytes(u64::MAX, u64::MAX), u64::MAX / 512 * 512);
    // A layer that reports more than it may (not through open_layer) still gives a size, not a
    // panic, and `create` refuses it.
    let too_big = ParentInfo { virtual_bytes: u64::MAX, ..info.clone() };
    assert!(create::metadata_bytes(Variant::VmdkMonolithicSparse, "snap.vmdk", &opts, Some(&too_big)).is_err());
}

/// A file's bytes as a sector device (past the end of a partial last sector it reads zeros and
/// keeps nothing), so that a test opens the file as the engine and vboot-attach do: an
/// `ExtentFile` with one extent.
#[derive(Clone)]
struct BytesDevice(Rc<RefCell<Vec<u8>>>);

impl crate::block::BlockDevice for BytesDevice {
    fn sector_count(&self) -> u64 {
        (self.0.borrow().len() as u64).div_ceil(512)
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), crate::block::BlockError> {
        crate::block::check_request(lba, buf.len(), self.sector_count())?;
        let b = self.0.borrow();
        for (i, x) in buf.iter_mut().enumerate() {
            *x = b.get(lba as usize * 512 + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), crate::block::BlockError> {
        crate::block::check_request(lba, buf.len(), self.sector_count())?;
        let mut b = self.0.borrow_mut();
        for (i, x) in buf.iter().enumerate() {
            if let Some(y) = b.get_mut(lba as usize * 512 + i) {
                *y = *x;
            }
        }
        Ok(())
    }
}

struct InPlaceFs<'a>(&'a mut MemFs);

impl ParentLocator for InPlaceFs<'_> {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let bytes = self.0.files.get(&chain::normalize(path))?.clone();
        let size_bytes = bytes.borrow().len() as u64;
        let mut extents = crate::fs::ExtentList::default();
        extents.push(0, size_bytes.div_ceil(512));
        Some(Box::new(ExtentFile::new(BytesDevice(bytes), chain::normalize(path), size_bytes, extents, true)))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        self.0.list_dir(dir)
    }
}

// Issue 14: a differencing VHD whose parent locator says it is at byte 2^64 - 16. stage2's
// reader refused the read; the engine's range check (`offset + len`) overflowed.
#[test]
fn a_vhd_parent_locator_near_2_64_is_ignored_in_place() {
    assert!(check_in_place("f", 512, 512, 1000, "x").is_ok(), "inside the last (partial) sector");
    assert!(check_in_place("f", 1024, 1, 1000, "x").is_err());
    match check_in_place("/v/child.vhd", u64::MAX - 15, 100, 1 << 20, "read past the end of the file") {
        Err(ImageError::Io { image, offset_bytes, detail }) => {
            assert_eq!((image.as_str(), offset_bytes, detail.as_str()), ("/v/child.vhd", u64::MAX - 15, "read past the end of the file"))
        }
        other => panic!("{:?}", other),
    }
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/v/base.vhd", Variant::VhdDynamic, 4 << 20, 0, None);
    fs.make("/v/child.vhd", Variant::VhdDynamic, 0, 1 << 20, Some("/v/base.vhd"));
    {
        let mut b = fs.files["/v/child.vhd"].borrow_mut();
        let mut h = vhd::DynHeader::parse(&b[512..1536]).unwrap();
        assert_ne!(h.locators[0].platform_code, 0);
        h.locators[0].data_offset = u64::MAX - 15;
        b[512..1536].copy_from_slice(&h.to_bytes());
    }
    let (layers, _) = open_chain("/v/child.vhd", &mut InPlaceFs(&mut fs), &ChainOptions::default()).unwrap();
    assert_eq!(layers.len(), 2, "the other locator still names the parent");
    let details = layers[0].details();
    assert!(details.iter().any(|(k, w)| k == "warning" && w == "parent locator at byte 18446744073709551600 lies outside the file; ignored"), "{:?}", details);
}

/// Fuzz finding (image_vmdk target): the first write changes the descriptor's CID, and did so
/// through two copies of the descriptor text (up to 1 MiB each), past `memory_bytes()`. It is
/// now edited in place; a CID written with fewer than 8 digits moves the rest of the text and
/// the descriptor area keeps its size (the fuzz input is tests/data/fuzz-regressions/image_vmdk/).
#[test]
fn short_cid_is_rewritten_in_place() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/img/f.vmdk", Variant::VmdkMonolithicFlat, 1 << 20, 0, None);
    let text = String::from_utf8(fs.files["/img/f.vmdk"].borrow().clone()).unwrap();
    let cid_line = text.lines().find(|l| l.starts_with("CID=")).unwrap().to_string();
    let short = text.replace(&cid_line, "CID=1a");
    let mut padded = short.clone().into_bytes();
    padded.extend_from_slice(&[0u8; 16]);
    *fs.files["/img/f.vmdk"].borrow_mut() = padded.clone();
    let mut d = fs.disk("/img/f.vmdk").unwrap();
    d.write(0, &[1u8; 512]).unwrap();
    drop(d);
    let after = fs.files["/img/f.vmdk"].borrow().clone();
    assert_eq!(after.len(), padded.len(), "the descriptor area keeps its size");
    let end = after.iter().position(|&c| c == 0).unwrap();
    let new_text = String::from_utf8(after[..end].to_vec()).unwrap();
    let new_cid = new_text.lines().find(|l| l.starts_with("CID=")).unwrap();
    assert_eq!(new_cid.len(), 12, "{}", new_cid);
    assert_eq!(new_text, short.replace("CID=1a", new_cid));
    assert!(after[end..].iter().all(|&c| c == 0));
    let mut d = fs.disk("/img/f.vmdk").unwrap();
    let mut back = [0u8; 512];
    d.read(0, &mut back).unwrap();
    assert_eq!(back, [1u8; 512]);

    // No room for the longer value: the write is refused and the descriptor stays as it was.
    *fs.files["/img/f.vmdk"].borrow_mut() = short.clone().into_bytes();
    let mut d = fs.disk("/img/f.vmdk").unwrap();
    assert!(matches!(d.write(0, &[2u8; 512]), Err(ImageError::NoSlack { .. })));
    drop(d);
    assert_eq!(fs.files["/img/f.vmdk"].borrow().as_slice(), short.as_bytes());
}

/// Fuzz finding (image_vdi target): an allocating write into a VDI whose header declares
/// per-block extra data zeroed that area with one buffer of its size (up to 2 GiB, an
/// allocation failure in the engine). It is now zeroed 64 KiB at a time; the input is in
/// tests/data/fuzz-regressions/image_vdi/.
#[test]
fn vdi_block_extra_is_zeroed_in_pieces() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/img/x.vdi", Variant::VdiDynamic, 4 << 20, 0, None);
    let extra: u32 = 256 * 1024;
    let off_data = {
        let mut b = fs.files["/img/x.vdi"].borrow_mut();
        b[0x17C..0x180].copy_from_slice(&extra.to_le_bytes());
        let off_data = u32::from_le_bytes(b[0x158..0x15C].try_into().unwrap()) as usize;
        // What lies where the extra data goes must not survive the allocation.
        b.resize(off_data + extra as usize, 0xEE);
        off_data
    };
    let mut d = fs.disk("/img/x.vdi").unwrap();
    d.write(3, &[0x5Au8; 512]).unwrap();
    let mut back = [0u8; 1024];
    d.read(2, &mut back).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0) && back[512..].iter().all(|&b| b == 0x5A));
    drop(d);
    let b = fs.files["/img/x.vdi"].borrow();
    assert!(b[off_data..off_data + extra as usize].iter().all(|&x| x == 0), "the block's extra data is zeroed");
}

#[test]
fn a_fixed_vdi_shorter_than_its_blocks_maps_zeros_past_its_end() {
    let mut fs = MemFs::default();
    fs.make("/img/f.vdi", Variant::VdiFixed, 4 << 20, 0, None);
    let full = fs.files["/img/f.vdi"].borrow().len() as u64;
    // Cut the file 1.5 MiB before its end: inside its last-but-one block.
    let cut = full - (3 << 19);
    fs.files["/img/f.vdi"].borrow_mut().truncate(cut as usize);
    let mut d = fs.disk("/img/f.vdi").unwrap();
    let sectors = d.sectors();
    let mut s = 0;
    let mut last_data_end = 0;
    while s < sectors {
        let r = d.lookup(s).unwrap();
        assert_eq!(r.start_sector, s);
        if let Source::Data { offset_bytes, .. } = r.source {
            assert!(offset_bytes + r.sectors * SECTOR_BYTES <= cut, "a data run at sector {} passes the file's end", s);
            last_data_end = s + r.sectors;
        }
        s += r.sectors;
    }
    assert!(last_data_end > 0 && last_data_end < sectors, "data then zeros: {}", last_data_end);
    // What the map says zeros reads as zeros.
    let mut tail = vec![0xAAu8; ((sectors - last_data_end) * SECTOR_BYTES) as usize];
    d.read(last_data_end, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}

/// A sparse VMDK cut inside its header says so, instead of reading the missing bytes as zeros
/// (which made the complaint "newline test bytes are damaged").
#[test]
fn vmdk_cut_inside_its_header_says_so() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/m/a.vmdk", Variant::VmdkMonolithicSparse, 64 << 20, 0, None);
    fs.files["/m/a.vmdk"].borrow_mut().truncate(40);
    match fs.disk("/m/a.vmdk") {
        Err(ImageError::Corrupt { image, detail }) => {
            assert_eq!(image, "/m/a.vmdk");
            assert_eq!(detail, "the file is 40 bytes, cut inside its 512-byte sparse extent header");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[test]
fn the_small_sort_sorts() {
    let mut seed = 12345u32;
    for len in [0usize, 1, 2, 3, 7, 64, 1000] {
        let mut v: Vec<u32> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                seed % 97
            })
            .collect();
        let mut want = v.clone();
        want.sort();
        vhd::sort_small(&mut v);
        assert_eq!(v, want, "{} entries", len);
    }
}

/// A monolithic sparse VMDK whose header capacity was zeroed says so, instead of calling itself
/// a descriptor-only file with separate extents.
#[test]
fn vmdk_with_a_zeroed_capacity_says_so() {
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.make("/m/a.vmdk", Variant::VmdkMonolithicSparse, 64 << 20, 0, None);
    fs.files["/m/a.vmdk"].borrow_mut()[12..20].copy_from_slice(&0u64.to_le_bytes());
    match fs.disk("/m/a.vmdk") {
        Err(ImageError::Corrupt { image, detail }) => {
            assert_eq!(image, "/m/a.vmdk");
            assert_eq!(detail, "its sparse header gives a capacity of 0 sectors, while its own descriptor gives it 131072 sectors");
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

/// Fuzz finding (image_vdi, 2026-12-06): a data area that does not start on a sector made a data
/// run end 2 bytes past the file, and the engine reads data runs by whole sectors.
#[test]
fn a_vdi_whose_data_area_is_not_sector_aligned_is_refused() {
    let mut fs = MemFs::default();
    fs.make("/img/u.vdi", Variant::VdiFixed, 1 << 20, 0, None);
    {
        let mut b = fs.files["/img/u.vdi"].borrow_mut();
        let off_data = u32::from_le_bytes(b[0x158..0x15C].try_into().unwrap());
        b[0x158..0x15C].copy_from_slice(&(off_data + 2).to_le_bytes());
    }
    let m = corrupt_message(fs.disk("/img/u.vdi"));
    assert!(m.contains("does not start on a 512-byte sector") && m.contains("u.vdi"), "{}", m);
}

/// `Layer::in_place_run` promises that a write there changes those file bytes and nothing else,
/// so the engine may write them straight from the guest's buffer. Checked against the layer's
/// own `write`: every file of the image is compared before and after.
#[test]
fn in_place_runs_are_exactly_what_a_write_changes() {
    let variants = [
        (Variant::VhdFixed, None),
        (Variant::VhdDynamic, None),
        (Variant::VdiDynamic, None),
        (Variant::VdiFixed, None),
        (Variant::VmdkMonolithicSparse, None),
        (Variant::VmdkMonolithicFlat, None),
        (Variant::VmdkTwoGbSparse, None),
        (Variant::VhdDynamic, Some("vhd")),
        (Variant::VdiDynamic, Some("vdi")),
        (Variant::VmdkMonolithicSparse, Some("vmdk")),
    ];
    for (v, child_ext) in variants {
        let mut fs = MemFs { can_grow: true, ..Default::default() };
        let ext = child_ext.unwrap_or("img");
        let base = alloc::format!("/vm/base.{}", ext);
        fs.make(&base, v, 8 << 20, 4 << 20, None);
        let top = match child_ext {
            Some(ext) => {
                {
                    let mut d = fs.disk(&base).unwrap();
                    let mut model = vec![0u8; (d.sectors() * 512) as usize];
                    apply(&mut d, &mut model, 0);
                }
                let leaf = alloc::format!("/vm/leaf.{}", ext);
                fs.opts = ChainOptions { parent_dir: Some("/vm".into()), ..Default::default() };
                fs.make(&leaf, v, 0, 4 << 20, Some(&base));
                leaf
            }
            None => base.clone(),
        };
        let opts = fs.opts.clone();
        let mut d = fs.disk_opts(&top, &opts).unwrap();
        let names: Vec<String> = d.layers()[0].file_names();
        let is_vmdk = matches!(v, Variant::VmdkMonolithicSparse | Variant::VmdkMonolithicFlat | Variant::VmdkTwoGbSparse);
        if is_vmdk {
            // Before the first write the CID still has to change: no in-place run anywhere.
            assert_eq!(d.layers_mut()[0].in_place_run(0).unwrap(), None, "{:?}: before the first write", v);
        }
        let mut model = vec![0u8; (d.sectors() * 512) as usize];
        apply(&mut d, &mut model, 7);
        let mut found = 0;
        for &(s, _, seed) in WRITES {
            for probe in [s, s + 1, s + 200] {
                if probe >= d.sectors() {
                    continue;
                }
                let Some((file, offset_bytes, sectors)) = d.layers_mut()[0].in_place_run(probe).unwrap() else { continue };
                found += 1;
                let n = sectors.min(3).min(d.sectors() - probe);
                let before: Vec<Vec<u8>> = names.iter().map(|p| fs.file_bytes(p)).collect();
                let data = pattern(seed.wrapping_add(100), (n * 512) as usize);
                d.write(probe, &data).unwrap();
                for (k, p) in names.iter().enumerate() {
                    let mut expect = before[k].clone();
                    if k == file as usize {
                        expect[offset_bytes as usize..offset_bytes as usize + data.len()].copy_from_slice(&data);
                    }
                    assert!(fs.file_bytes(p) == expect, "{:?} ({:?}): a write at sector {} changed {} beyond the in-place run", v, child_ext, probe, p);
                }
                model[(probe * 512) as usize..(probe * 512) as usize + data.len()].copy_from_slice(&data);
            }
        }
        assert!(found > 0, "{:?} ({:?}): no in-place run after writes", v, child_ext);
        assert!(read_all(&mut d) == model, "{:?}: the disk reads what was written", v);
        // Where the leaf holds nothing, a write allocates (or sets a bitmap): no run.
        if v != Variant::VhdFixed && v != Variant::VdiFixed && v != Variant::VmdkMonolithicFlat {
            let untouched = 11_000; // in no block, grain or table any write above touched
            assert_eq!(d.layers_mut()[0].in_place_run(untouched).unwrap(), None, "{:?}: an unallocated sector", v);
        }
    }
}

#[test]
fn immutable_child_sits_beside_the_image_with_its_extension_last() {
    use super::create::{immutable_child_path, raw_descriptor_path};
    assert_eq!(immutable_child_path("/vm/x.vhd", false), "/vm/x.immutable.vhd");
    assert_eq!(immutable_child_path("/vm/Win 7.child.vmdk", false), "/vm/Win 7.child.immutable.vmdk");
    assert_eq!(immutable_child_path("/vm.d/disk", false), "/vm.d/disk.immutable");
    assert_eq!(immutable_child_path("/.hidden", false), "/.hidden.immutable");
    assert_eq!(immutable_child_path("a.vdi", false), "a.immutable.vdi");
    assert_eq!(immutable_child_path("\\vm\\x.VHD", false), "\\vm\\x.immutable.VHD");
    // A raw image's child is a VMDK over a flat descriptor.
    assert_eq!(immutable_child_path("/vm/x.img", true), "/vm/x.immutable.vmdk");
    assert_eq!(immutable_child_path("/vm.d/disk", true), "/vm.d/disk.immutable.vmdk");
    assert_eq!(raw_descriptor_path("/vm/x.img"), "/vm/x.immutable-raw.vmdk");
    assert_eq!(raw_descriptor_path("disk"), "disk.immutable-raw.vmdk");
}

/// The descriptor for a raw parent opens as a monolithicFlat VMDK reading the raw file, and a
/// VMDK child of it reads through to the raw bytes.
#[test]
fn a_raw_image_becomes_a_vmdk_parent_through_a_flat_descriptor() {
    use super::create::raw_flat_descriptor;
    let raw: Vec<u8> = (0..64 * 512).map(|i| (i % 253) as u8).collect();
    let text = raw_flat_descriptor("x.img", 64, 7);
    assert!(text.contains("createType=\"monolithicFlat\"") && text.contains("RW 64 FLAT \"x.img\" 0"), "{}", text);
    let mut fs = MemFs { can_grow: true, ..Default::default() };
    fs.files.insert("/vm/x.img".to_string(), Rc::new(RefCell::new(raw.clone())));
    fs.files.insert("/vm/x.immutable-raw.vmdk".to_string(), Rc::new(RefCell::new(text.into_bytes())));
    let mut d = fs.disk("/vm/x.immutable-raw.vmdk").unwrap();
    assert_eq!(d.layers()[0].format(), Format::Vmdk);
    assert_eq!(d.sectors(), 64);
    assert_eq!(read_all(&mut d), raw);
    fs.make("/vm/x.immutable.vmdk", Variant::VmdkMonolithicSparse, 0, 64 * 1024, Some("/vm/x.immutable-raw.vmdk"));
    let mut child = fs.disk("/vm/x.immutable.vmdk").unwrap();
    assert_eq!(read_all(&mut child), raw);
    child.write(3, &[0xEE; 512]).unwrap();
    child.discard_leaf().unwrap();
    assert_eq!(read_all(&mut child), raw);
    assert_eq!(*fs.files["/vm/x.img"].borrow(), raw, "the raw parent was written");
}
