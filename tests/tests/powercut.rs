//! Power cuts before boot (issue 14; docs/power-cuts.md). stage2 changes host filesystem
//! metadata in three places before the guest starts: growing a leaf's write slack (`reserve=`),
//! making a snapshot child (`take_snapshot=`) and replacing grub.cfg. Each change is run here
//! through the same core-library functions stage2 calls, in the same order
//! (`image::onvolume::grow_on_volume`, `image::onvolume::create_on_volume`,
//! `fs::volume::Volume::replace_file`, read back with `Volume::read_replaced`), on FAT12, FAT16,
//! FAT32 and exFAT volumes made by mkfs.fat / mkfs.exfat, over a disk that loses power after
//! its k-th write call (every later write is lost), for every k from 0 to the number of writes
//! the change makes, and with the k-th write torn (only its first half of sectors lands, or only
//! its second half). A single sector is never torn: see the model in docs/power-cuts.md.
//!
//! After each cut:
//! - `fsck.fat -n` / `fsck.exfat -n` may report only what a power cut legitimately leaves (see
//!   [`accept_fsck`]: lost clusters, a stale free count, a second FAT lagging the first, leaked
//!   bitmap space); anything else fails the test;
//! - vboot reads the volume as the next boot would: grub.cfg (or grub.cfg.new when grub.cfg is
//!   missing) is the old text or the new one, and every image the menu names opens with its
//!   chain, passes its own check and reads the data it held before. A snapshot child the menu
//!   does not name yet is ignored; one it names must be complete.
//! - the next boot can carry on: slack is grown again, a rewrite is made again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use vboot::block::BlockDevice;
use vboot::config::rewrite::{rewrite_for_snapshot, SnapshotTarget};
use vboot::config::{Config, GrubPath};
use vboot::fs::volume::Volume;
use vboot::fs::FsError;
use vboot::image::create::{self, CreateOptions, Variant};
use vboot::image::disk::Disk;
use vboot::image::onvolume::{create_on_volume, grow_on_volume};
use vboot::image::slack::{self, SlackNeed};
use vboot::image::{chain, open_chain, open_layer, ChainOptions, ImageError, ImageFile, Layer};
use vboot_tests::disk::{fat_volume_args, FileSpec};
use vboot_tests::powercut::{cut_points, CutDisk, Fsck, FsckKind, Tear, VolLocator};
use vboot_tests::{require_tool, sh, TempDir};

/// Virtual size of the test images: two VHD blocks, four VDI blocks, 64 VMDK grains; the data
/// goes into the first of each (so each image has space left to allocate, and wants slack).
const VIRTUAL_BYTES: u64 = 4 << 20;
/// Sectors of the virtual disk the checks read: the written ones, around them, the last.
const SAMPLE: [(u64, u64); 4] = [(0, 10), (1490, 20), (4000, 40), (8190, 2)];
/// `reserve=` asked for when growing slack (not a multiple of any cluster size).
const SLACK_RESERVE: u64 = 100 << 10;
/// `reserve=` of the snapshot child.
const SNAPSHOT_RESERVE: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fs {
    Fat12,
    Fat16,
    Fat32,
    Exfat,
}

impl Fs {
    fn fsck(self) -> FsckKind {
        if self == Fs::Exfat {
            FsckKind::Exfat
        } else {
            FsckKind::Fat
        }
    }
    /// Where grub.cfg and the images go (exFAT: vboot makes no directories there, so the root).
    fn cfg_path(self) -> &'static str {
        if self == Fs::Exfat {
            "/grub.cfg"
        } else {
            "/boot/grub/grub.cfg"
        }
    }
    fn image_dir(self) -> &'static str {
        if self == Fs::Exfat {
            ""
        } else {
            "/vm"
        }
    }
}

// ------------------------------------------------------------------ fsck verdicts

/// Whether an fsck line is something a power cut may legitimately leave behind. Everything not
/// accepted here fails the test (docs/power-cuts.md explains each):
/// - fsck.fat: lost clusters (a chain allocated or left behind that no entry references: "N
///   unused clusters" / "Reclaimed"), the FAT32 FSInfo free count or next-free hint being stale
///   ("Free cluster summary wrong"), and the second FAT differing from the first where the first
///   is the newer one ("FATs differ but appear to be intact. Using first FAT.": FAT1 is always
///   written first, and every reader, vboot's and fsck's, uses it).
/// - fsck.exfat: clusters marked used in the allocation bitmap that no file uses (the bitmap is
///   written before the FAT and the directory entry).
fn accept_fsck(kind: FsckKind, line: &str) -> bool {
    let l = line.trim();
    if l.is_empty() {
        return true;
    }
    match kind {
        FsckKind::Fat => {
            // The file a message is about (the message itself is judged on its own line).
            l.starts_with('/') && !l.contains(' ')
                || l.starts_with("fsck.fat ")
                || l.contains(" files, ") && l.contains(" clusters")
                || l.starts_with("Leaving filesystem unchanged")
                || l.starts_with("FATs differ but appear to be intact.")
                || l == "Using first FAT."
                || l.starts_with("File size is ") && l.contains(" bytes, cluster chain length is > ")
                || l.starts_with("Truncating file to ")
                || l.starts_with("Free cluster summary wrong")
                || l == "Auto-correcting."
                || l.starts_with("Reclaimed ") && l.contains("unused cluster")
                || l.contains("unused clusters") && l.contains("would be reclaimed")
        }
        FsckKind::Exfat => {
            l.starts_with("exfatprogs version")
                || l.contains(": clean. directories")
                || l.contains("directories ") && l.contains("files ")
        }
    }
}

// ------------------------------------------------------------------ images

/// An image file in memory that several owners share (to write data through a layer and keep
/// the bytes).
#[derive(Clone)]
struct Shared(Rc<RefCell<Vec<u8>>>, String);

impl ImageFile for Shared {
    fn len_bytes(&self) -> u64 {
        self.0.borrow().len() as u64
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let b = self.0.borrow();
        let end = off as usize + buf.len();
        if end > b.len() {
            return Err(ImageError::Io { image: self.1.clone(), offset_bytes: off, detail: "past the end".into() });
        }
        buf.copy_from_slice(&b[off as usize..end]);
        Ok(())
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> Result<(), ImageError> {
        let mut b = self.0.borrow_mut();
        let end = off as usize + buf.len();
        if end > b.len() {
            b.resize(end, 0);
        }
        b[off as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn name(&self) -> &str {
        &self.1
    }
    fn can_grow(&self) -> bool {
        true
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed as u32 * 77).to_le_bytes()[1]).collect()
}

/// A `variant` image of [`VIRTUAL_BYTES`] holding data in a few places (it has no slack: every
/// unit it allocated is used). Returns the file and the [`SAMPLE`] of its virtual disk.
fn make_image(variant: Variant, path: &str, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let shared = Shared(Rc::new(RefCell::new(Vec::new())), path.to_string());
    let opts = CreateOptions { size_bytes: VIRTUAL_BYTES, reserve_bytes: 0, exact_size: false, seed: seed as u64, now_unix: 1_700_000_000 };
    let mut f = shared.clone();
    create::create(variant, &mut f, chain::basename(path), &opts, None, &mut |_: &str| -> Result<Box<dyn ImageFile>, ImageError> {
        Err(ImageError::Invalid { detail: "one file".into() })
    })
    .unwrap();
    let layer = open_layer(Box::new(shared.clone()), &mut |_| None).unwrap();
    let mut disk = Disk::new(vec![layer], Vec::new()).unwrap();
    for (lba, n) in [(0u64, 8usize), (1500, 3)] {
        disk.write(lba, &pattern(seed.wrapping_add(lba as u8), n * 512)).unwrap();
    }
    let model = read_sample(&mut disk).unwrap();
    drop(disk);
    let bytes = shared.0.borrow().clone();
    (bytes, model)
}

/// The [`SAMPLE`] sectors of a virtual disk.
fn read_sample(disk: &mut Disk) -> Result<Vec<u8>, ImageError> {
    let mut v = Vec::new();
    for (lba, n) in SAMPLE {
        let mut b = vec![0u8; n as usize * 512];
        disk.read(lba, &mut b)?;
        v.extend_from_slice(&b);
    }
    Ok(v)
}

fn ext(variant: Variant) -> &'static str {
    match variant.format() {
        vboot::image::Format::Vhd => "vhd",
        vboot::image::Format::Vdi => "vdi",
        _ => "vmdk",
    }
}

// ------------------------------------------------------------------ volumes

const GRUB_CFG: &str = "set timeout=5\nset default=1\n\n\
menuentry 'VHD' {\n    vboot harddisk=VM/base.vhd\n}\n\
menuentry 'VHD: snapshot' {\n    vboot harddisk=VM/base.vhd take_snapshot=VM/snap.vhd boot_entry=0 reserve=64K\n}\n\
menuentry 'VMDK' {\n    vboot harddisk=VM/base.vmdk\n}\n\
menuentry 'VMDK: snapshot' {\n    vboot harddisk=VM/base.vmdk take_snapshot=VM/snap.vmdk boot_entry=2 reserve=64K\n}\n\
menuentry 'VDI' {\n    vboot harddisk=VM/base.vdi\n}\n\
menuentry 'VDI: snapshot' {\n    vboot harddisk=VM/base.vdi take_snapshot=VM/snap.vdi boot_entry=4 reserve=64K\n}\n";

/// One volume of the test: its bytes before any change and what its images hold.
struct Setup {
    fs: Fs,
    bytes: Vec<u8>,
    cfg_text: String,
    /// Image path -> (file bytes, virtual disk contents).
    images: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
}

const VARIANTS: [Variant; 3] = [Variant::VhdDynamic, Variant::VmdkMonolithicSparse, Variant::VdiDynamic];

fn image_path(fs: Fs, name: &str) -> String {
    format!("{}/{}", fs.image_dir(), name)
}

fn setup(fs: Fs, dir: &TempDir) -> Setup {
    let cfg_text = GRUB_CFG.replace("VM/", &format!("{}/", fs.image_dir()));
    let mut images = BTreeMap::new();
    for (i, v) in VARIANTS.iter().enumerate() {
        let path = image_path(fs, &format!("base.{}", ext(*v)));
        images.insert(path.clone(), make_image(*v, &path, 10 + i as u8));
    }
    let img = dir.join(&format!("{:?}.img", fs));
    let bytes = match fs {
        Fs::Exfat => {
            require_tool("mkfs.exfat", "exfatprogs");
            std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
            sh(std::process::Command::new("mkfs.exfat").arg(&img));
            let mut vol = Volume::open(vboot::block::FileDisk::open(&img, true).unwrap()).unwrap();
            let mut put = |path: &str, data: &[u8]| {
                let f = vol.create_file(path, data.len() as u64).unwrap();
                vol.write_file(&f, 0, data).unwrap();
            };
            put(fs.cfg_path(), cfg_text.as_bytes());
            for (path, (data, _)) in &images {
                put(path, data);
            }
            drop(vol);
            std::fs::read(&img).unwrap()
        }
        _ => {
            let mut files = vec![FileSpec::new(fs.cfg_path(), cfg_text.as_bytes())];
            for (path, (data, _)) in &images {
                files.push(FileSpec::new(path, data.clone()));
            }
            let (bits, kib, args): (u32, u64, &[&str]) = match fs {
                Fs::Fat12 => (12, 8192, &[]),
                Fs::Fat16 => (16, 8192, &["-s", "1"]),
                _ => (32, 34_000, &["-s", "1"]),
            };
            fat_volume_args(&img, kib * 2, bits, args, &files);
            std::fs::read(&img).unwrap()
        }
    };
    let mut fsck = Fsck::new(fs.fsck(), &dir.join(&format!("{:?}-fsck.img", fs)), &bytes);
    let (code, text) = fsck.run(&BTreeMap::new());
    assert_eq!(code, 0, "{:?}: the fresh volume is not clean:\n{}", fs, text);
    Setup { fs, bytes, cfg_text, images }
}

// ------------------------------------------------------------------ what the next boot sees

/// The chain of `leaf` on `vol`, as the next boot opens it; checked, and read whole.
fn open_and_read<D: BlockDevice>(vol: &mut Volume<D>, leaf: &str) -> Result<(Vec<String>, Vec<u8>), String> {
    let mut loc = VolLocator { vol };
    let (mut layers, _) = open_chain(leaf, &mut loc, &ChainOptions::default()).map_err(|e| format!("{} does not open: {}", leaf, e))?;
    let names: Vec<String> = layers.iter().map(|l| l.name().to_string()).collect();
    let problems = layers[0].check();
    if !problems.is_empty() {
        return Err(format!("{}: check: {:?}", leaf, problems));
    }
    let mut disk = Disk::new(layers, Vec::new()).map_err(|e| format!("{}", e))?;
    let data = read_sample(&mut disk).map_err(|e| format!("{} does not read: {}", leaf, e))?;
    Ok((names, data))
}

/// grub.cfg as the loader reads it.
fn read_cfg<D: BlockDevice>(vol: &mut Volume<D>, path: &str) -> Result<String, String> {
    let (bytes, _) = vol.read_replaced(path, 1 << 20).map_err(|e| format!("grub.cfg: {}", e))?;
    let text = String::from_utf8(bytes).map_err(|_| String::from("grub.cfg is not UTF-8"))?;
    Config::parse(&text).map_err(|e| format!("grub.cfg does not parse: {}", e))?;
    Ok(text)
}

/// The image entry `n` of a grub.cfg text boots.
fn entry_image(text: &str, n: usize) -> String {
    let c = Config::parse(text).unwrap();
    c.entry(&[n]).unwrap().boot_options().unwrap().harddisk.as_ref().unwrap().path.clone()
}

// ------------------------------------------------------------------ the changes, as stage2 makes them

/// What stage2's ensure_slack decides for `leaf` (prepare.rs): the bytes to add, 0 for none.
fn slack_to_add<D: BlockDevice>(vol: &mut Volume<D>, leaf: &str, asked: u64) -> Result<(vboot::image::Format, u64), String> {
    let mut loc = VolLocator { vol };
    let (mut layers, _) = open_chain(leaf, &mut loc, &ChainOptions::default()).map_err(|e| format!("{}", e))?;
    let layer: &mut dyn Layer = &mut *layers[0];
    let have = layer.slack_bytes();
    let need = slack::slack_need(layer);
    let left = if asked > have && need != SlackNeed::None { slack::unallocated_bytes(layer).map_err(|e| format!("{}", e))? } else { 0 };
    let want = slack::wanted_bytes(asked, left);
    let add = if need == SlackNeed::Growable && want > have { want - have } else { 0 };
    Ok((layer.format(), add))
}

/// stage2's grow(): growing the leaf's file and moving its trailer.
fn grow(disk: &mut CutDisk, leaf: &str) -> Result<(), String> {
    let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
    let (format, add) = slack_to_add(&mut vol, leaf, SLACK_RESERVE)?;
    if add == 0 {
        return Ok(());
    }
    grow_on_volume(&mut vol, leaf, format, add).map(|_| ()).map_err(|e| format!("{:?}", e))
}

/// What take_snapshot= works out before its first write (prepare.rs, take_snapshot).
struct SnapshotPlan {
    variant: Variant,
    child: String,
    base_name: String,
    size: u64,
    copts: CreateOptions,
    info: vboot::image::create::ParentInfo,
    new_cfg: String,
}

fn plan_snapshot(s: &Setup, variant: Variant, entry: usize) -> SnapshotPlan {
    let mut disk = CutDisk::new(&s.bytes);
    let mut vol = Volume::open(&mut disk).unwrap();
    let parent = image_path(s.fs, &format!("base.{}", ext(variant)));
    let child = image_path(s.fs, &format!("snap.{}", ext(variant)));
    let mut loc = VolLocator { vol: &mut vol };
    let (layers, _) = open_chain(&parent, &mut loc, &ChainOptions::default()).unwrap();
    let leaf = &*layers[0];
    let relative = chain::relative_to(&chain::dirname(&child), &parent);
    let info = create::parent_info(leaf, &relative, &parent);
    let copts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: 4242, now_unix: 1_700_000_000 };
    let base_name = chain::basename(&child).to_string();
    let meta = create::metadata_bytes(variant, &base_name, &copts, Some(&info)).unwrap();
    let size = meta + slack::wanted_bytes(SNAPSHOT_RESERVE, leaf.virtual_sectors() * 512);
    let child_path = GrubPath::parse_file(&child).unwrap();
    let new_cfg = rewrite_for_snapshot(&s.cfg_text, &SnapshotTarget::Entry(vec![entry]), &child_path).unwrap();
    assert_eq!(entry_image(&new_cfg, entry), child);
    SnapshotPlan { variant, child, base_name, size, copts, info, new_cfg }
}

/// take_snapshot='s writes: the child made in place (removed again if its chain does not open),
/// then grub.cfg replaced.
fn take_snapshot(disk: &mut CutDisk, p: &SnapshotPlan, cfg: &str, parent: &str) -> Result<(), String> {
    {
        let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
        create_on_volume(&mut vol, &p.child, p.size, p.variant, &p.base_name, &p.copts, Some(&p.info)).map_err(|e| format!("{:?}", e))?;
    }
    {
        let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
        match open_and_read(&mut vol, &p.child) {
            Ok((names, _)) if names.get(1).is_some_and(|n| n.eq_ignore_ascii_case(parent)) => {}
            _ => {
                let _ = vol.delete_file(&p.child);
                return Err(String::from("the new chain does not open"));
            }
        }
    }
    let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
    vol.replace_file(cfg, p.new_cfg.as_bytes())
}

// ------------------------------------------------------------------ the cut loop

/// Counts for the report.
#[derive(Default)]
struct Tally {
    cuts: usize,
    writes: usize,
    old: usize,
    new: usize,
    accepted: BTreeMap<String, usize>,
}

/// Run `change` once to count its writes, then again for every cut point; `check` judges the
/// volume each cut left (Ok(true): the new state, Ok(false): the old one).
fn every_cut(
    s: &Setup,
    fsck: &mut Fsck,
    what: &str,
    base: &[u8],
    change: &dyn Fn(&mut CutDisk) -> Result<(), String>,
    check: &dyn Fn(&mut CutDisk, &str) -> Result<bool, String>,
) -> Tally {
    let mut full = CutDisk::new(base);
    change(&mut full).unwrap_or_else(|e| panic!("{:?} {}: the change itself fails: {}", s.fs, what, e));
    let sizes = full.write_sizes.clone();
    let mut t = Tally { writes: sizes.len(), ..Default::default() };
    let mut failures = Vec::new();
    for (k, tear) in cut_points(&sizes) {
        let case = format!("{:?} {}: cut after write {} of {}{}", s.fs, what, k, sizes.len(), match tear {
            Tear::None => String::new(),
            Tear::Head => format!(", the first half of write {} ({} sectors) landed", k, sizes[k]),
            Tear::Tail => format!(", the second half of write {} ({} sectors) landed", k, sizes[k]),
        });
        let mut d = CutDisk::cut_after(base, k, tear);
        let _ = change(&mut d);
        t.cuts += 1;
        let (code, text) = fsck.run(&d.overlay);
        let bad: Vec<&str> = text.lines().filter(|l| !accept_fsck(fsck.kind, l)).collect();
        if !bad.is_empty() || code > 1 {
            failures.push(format!("{}: fsck (exit {}):\n{}", case, code, text));
            continue;
        }
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let l = l.trim();
            let generic = l.starts_with("fsck.fat ")
                || l.starts_with("exfatprogs version")
                || l.contains(" files, ")
                || l.contains("directories ")
                || l.starts_with('/')
                || l == "Leaving filesystem unchanged."
                || l == "Auto-correcting."
                || l == "Using first FAT.";
            if !generic {
                let key: String = l.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
                *t.accepted.entry(key).or_default() += 1;
            }
        }
        let mut next = d.powered_on();
        match check(&mut next, &case) {
            Ok(true) => t.new += 1,
            Ok(false) => t.old += 1,
            Err(e) => failures.push(format!("{}: {}", case, e)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cut points fail:\n{}", failures.len(), t.cuts, failures.join("\n"));
    assert!(t.old > 0 && t.new > 0, "{:?} {}: the cuts should reach both the old and the new state", s.fs, what);
    t
}

fn report(fs: Fs, what: &str, t: &Tally) {
    eprintln!("{:?} {:<28} {:>4} writes {:>5} cut points: {:>4} old, {:>4} new", fs, what, t.writes, t.cuts, t.old, t.new);
    for (m, n) in &t.accepted {
        eprintln!("      accepted fsck message ({}x): {}", n, m);
    }
}

/// The volume unchanged but for `except`: every other image opens and reads as before.
fn other_images_unchanged<D: BlockDevice>(s: &Setup, vol: &mut Volume<D>, except: &str) -> Result<(), String> {
    for (path, (bytes, _)) in &s.images {
        if path != except {
            let got = vol.read_to_vec(path, 1 << 30).map_err(|e| format!("{}: {}", path, e))?;
            if &got != bytes {
                return Err(format!("{} changed", path));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the three changes

fn slack_cuts(s: &Setup, fsck: &mut Fsck) {
    for v in VARIANTS {
        let leaf = image_path(s.fs, &format!("base.{}", ext(v)));
        let (_, model) = s.images[&leaf].clone();
        let old_len = s.images[&leaf].0.len() as u64;
        let change = |d: &mut CutDisk| grow(d, &leaf);
        let check = |d: &mut CutDisk, _case: &str| -> Result<bool, String> {
            let mut vol = Volume::open(&mut *d).map_err(|e| format!("the volume does not open: {}", e))?;
            if read_cfg(&mut vol, s.fs.cfg_path())? != s.cfg_text {
                return Err(String::from("grub.cfg changed"));
            }
            other_images_unchanged(s, &mut vol, &leaf)?;
            let (_, data) = open_and_read(&mut vol, &leaf)?;
            if data != model {
                return Err(format!("{} reads other data", leaf));
            }
            let len = vol.open_file(&leaf).map_err(|e| format!("{}", e))?.size_bytes;
            let grown = len > old_len;
            drop(vol);
            // The next boot grows it (again, or the rest of the way) and boots it.
            grow(d, &leaf).map_err(|e| format!("growing again: {}", e))?;
            let mut vol = Volume::open(&mut *d).map_err(|e| format!("{}", e))?;
            let (_, data) = open_and_read(&mut vol, &leaf).map_err(|e| format!("after growing again: {}", e))?;
            if data != model {
                return Err(format!("{} reads other data after growing again", leaf));
            }
            let (_, add) = slack_to_add(&mut vol, &leaf, SLACK_RESERVE)?;
            if add != 0 {
                return Err(format!("after growing again {} still wants {} bytes of slack", leaf, add));
            }
            Ok(grown)
        };
        let what = format!("slack {}", ext(v));
        let t = every_cut(s, fsck, &what, &s.bytes, &change, &check);
        report(s.fs, &what, &t);
    }
}

fn snapshot_cuts(s: &Setup, fsck: &mut Fsck) {
    for (i, v) in VARIANTS.iter().enumerate() {
        let entry = 2 * i;
        let plan = plan_snapshot(s, *v, entry);
        let parent = image_path(s.fs, &format!("base.{}", ext(*v)));
        let (_, model) = s.images[&parent].clone();
        let cfg = s.fs.cfg_path();
        let change = |d: &mut CutDisk| take_snapshot(d, &plan, cfg, &parent);
        let check = |d: &mut CutDisk, _case: &str| -> Result<bool, String> {
            let mut vol = Volume::open(&mut *d).map_err(|e| format!("the volume does not open: {}", e))?;
            let text = read_cfg(&mut vol, cfg)?;
            let is_new = if text == s.cfg_text {
                false
            } else if text == plan.new_cfg {
                true
            } else {
                return Err(format!("grub.cfg is neither the old nor the new text:\n{}", text));
            };
            // The parent is never written; the other images neither.
            other_images_unchanged(s, &mut vol, "")?;
            // The entry boots the parent (old) or the child over the parent (new).
            let leaf = entry_image(&text, entry);
            let (names, data) = open_and_read(&mut vol, &leaf)?;
            let want: Vec<String> = if is_new { vec![plan.child.clone(), parent.clone()] } else { vec![parent.clone()] };
            if names.iter().map(|n| n.to_ascii_lowercase()).collect::<Vec<_>>() != want.iter().map(|n| n.to_ascii_lowercase()).collect::<Vec<_>>() {
                return Err(format!("entry {} opens the chain {:?}, not {:?}", entry, names, want));
            }
            if data != model {
                return Err(format!("{} reads other data", leaf));
            }
            Ok(is_new)
        };
        let what = format!("snapshot {} + grub.cfg", ext(*v));
        let t = every_cut(s, fsck, &what, &s.bytes, &change, &check);
        report(s.fs, &what, &t);
    }
}

/// grub.cfg replaced from a starting state that `prepare` makes with vboot's own writes (fsck
/// must find it clean); `old` is what the loader reads there.
fn rewrite_cuts(s: &Setup, fsck: &mut Fsck, what: &str, old: &str, prepare: &dyn Fn(&mut Volume<&mut CutDisk>)) -> Tally {
    let cfg = s.fs.cfg_path();
    let new = s.cfg_text.replace("set timeout=5", "set timeout=9");
    let start = {
        let mut d = CutDisk::new(&s.bytes);
        {
            let mut vol = Volume::open(&mut d).unwrap();
            prepare(&mut vol);
            assert_eq!(read_cfg(&mut vol, cfg).unwrap(), old, "{:?} {}: the starting state", s.fs, what);
        }
        let (code, text) = fsck.run(&d.overlay);
        assert_eq!(code, 0, "{:?} {}: the starting volume is not clean:\n{}", s.fs, what, text);
        d.bytes()
    };
    let change = |d: &mut CutDisk| {
        let mut vol = Volume::open(&mut *d).map_err(|e| format!("{}", e))?;
        vol.replace_file(cfg, new.as_bytes())
    };
    let check = |d: &mut CutDisk, _case: &str| -> Result<bool, String> {
        let mut vol = Volume::open(&mut *d).map_err(|e| format!("the volume does not open: {}", e))?;
        let text = read_cfg(&mut vol, cfg)?;
        let is_new = if text == old {
            false
        } else if text == new {
            true
        } else {
            return Err(format!("grub.cfg is neither the old nor the new text:\n{}", text));
        };
        other_images_unchanged(s, &mut vol, "")?;
        // The next rewrite works from here.
        let again = s.cfg_text.replace("set timeout=5", "set timeout=11");
        vol.replace_file(cfg, again.as_bytes()).map_err(|e| format!("the next rewrite: {}", e))?;
        drop(vol);
        let mut vol = Volume::open(&mut *d).map_err(|e| format!("{}", e))?;
        if read_cfg(&mut vol, cfg)? != again {
            return Err(String::from("the next rewrite does not read back"));
        }
        Ok(is_new)
    };
    let dir = TempDir::new("powercut-start");
    let mut fsck2 = Fsck::new(fsck.kind, &dir.join("start.img"), &start);
    let t = every_cut(s, &mut fsck2, what, &start, &change, &check);
    fsck.spent += fsck2.spent;
    fsck.runs += fsck2.runs;
    t
}

/// A grub.cfg replacement that starts from one an older vboot left interrupted (it renamed
/// grub.cfg away before putting grub.cfg.new in its place): only grub.cfg.new is there, which
/// the loader reads; it is put in place first, then the new text goes in.
fn finish_interrupted_rewrite_cuts(s: &Setup, fsck: &mut Fsck) {
    let cfg = s.fs.cfg_path();
    let mid = s.cfg_text.replace("set timeout=5", "set timeout=7");
    let t = rewrite_cuts(s, fsck, "rewrite after a cut", &mid, &|vol| {
        let newp = format!("{}.new", cfg);
        let f = vol.create_file(&newp, mid.len() as u64).unwrap();
        vol.write_file(&f, 0, mid.as_bytes()).unwrap();
        vol.delete_file(cfg).unwrap();
        assert!(matches!(vol.open_file(cfg), Err(FsError::NotFound { .. })));
    });
    report(s.fs, "rewrite after a cut", &t);
}

/// grub.cfg replaced in a directory holding 0 to 16 more files before it, so that the entries of
/// grub.cfg.new start at every position of a directory sector, some of them across a sector
/// boundary (FAT: one slot per file; exFAT: three entries per file).
fn crowded_rewrite_cuts(s: &Setup, fsck: &mut Fsck) {
    let cfg = s.fs.cfg_path();
    let dir = chain::dirname(cfg);
    let mut all = Tally::default();
    for fillers in 0..=16 {
        let t = rewrite_cuts(s, fsck, &format!("rewrite, {} files before", fillers), &s.cfg_text, &|vol| {
            for i in 0..fillers {
                vol.create_file(&format!("{}/F{:02}.TXT", dir.trim_end_matches('/'), i), 0).unwrap();
            }
        });
        all.writes += t.writes;
        all.cuts += t.cuts;
        all.old += t.old;
        all.new += t.new;
        for (k, n) in t.accepted {
            *all.accepted.entry(k).or_default() += n;
        }
    }
    report(s.fs, "rewrite, 0-16 files before", &all);
}

fn run_fs(fs: Fs) {
    let t0 = Instant::now();
    let dir = TempDir::new(&format!("powercut-{:?}", fs));
    let s = setup(fs, &dir);
    let mut fsck = Fsck::new(fs.fsck(), &dir.join("fsck.img"), &s.bytes);
    slack_cuts(&s, &mut fsck);
    snapshot_cuts(&s, &mut fsck);
    finish_interrupted_rewrite_cuts(&s, &mut fsck);
    crowded_rewrite_cuts(&s, &mut fsck);
    eprintln!("{:?}: {} fsck runs, {:.1} s in fsck, {:.1} s in all", fs, fsck.runs, fsck.spent.as_secs_f64(), t0.elapsed().as_secs_f64());
}

#[test]
fn power_cuts_on_fat12() {
    run_fs(Fs::Fat12);
}

#[test]
fn power_cuts_on_fat16() {
    run_fs(Fs::Fat16);
}

#[test]
fn power_cuts_on_fat32() {
    run_fs(Fs::Fat32);
}

#[test]
fn power_cuts_on_exfat() {
    run_fs(Fs::Exfat);
}

/// A rename in one directory to a name that needs fewer entries (as finishing an older vboot's
/// interrupted rewrite does) is made in place: cut anywhere, the file is there under its old
/// name or its new one, with its bytes, and fsck finds nothing.
#[test]
fn renames_in_place_survive_power_cuts() {
    for fs in [Fs::Fat16, Fs::Exfat] {
        let dir = TempDir::new(&format!("powercut-rename-{:?}", fs));
        let s = setup(fs, &dir);
        let d = chain::dirname(fs.cfg_path());
        let d = d.trim_end_matches('/');
        let long = format!("{}/a file name long enough for two entries.txt", d);
        let short = format!("{}/b.txt", d);
        let data = pattern(3, 3000);
        let start = {
            let mut disk = CutDisk::new(&s.bytes);
            {
                let mut vol = Volume::open(&mut disk).unwrap();
                let f = vol.create_file(&long, data.len() as u64).unwrap();
                vol.write_file(&f, 0, &data).unwrap();
            }
            disk.bytes()
        };
        let mut fsck = Fsck::new(fs.fsck(), &dir.join("rename.img"), &start);
        let change = |disk: &mut CutDisk| {
            let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
            vol.rename(&long, &short).map_err(|e| format!("{}", e))
        };
        let check = |disk: &mut CutDisk, _case: &str| -> Result<bool, String> {
            let mut vol = Volume::open(&mut *disk).map_err(|e| format!("{}", e))?;
            let old = vol.read_to_vec(&long, 1 << 20).ok();
            let new = vol.read_to_vec(&short, 1 << 20).ok();
            match (old, new) {
                (Some(b), None) if b == data => Ok(false),
                (None, Some(b)) if b == data => Ok(true),
                (o, n) => Err(format!("old name {:?} bytes, new name {:?} bytes", o.map(|b| b.len()), n.map(|b| b.len()))),
            }
        };
        let t = every_cut(&s, &mut fsck, "rename in place", &start, &change, &check);
        assert_eq!(t.writes, 1, "{:?}: a rename in place is one sector write", fs);
        report(fs, "rename in place", &t);
    }
}
