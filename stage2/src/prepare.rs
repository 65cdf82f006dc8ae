//! Changes to the host filesystem made before the guest starts (invariant 2, docs/architecture.md:
//! never from inside INT 13h): `take_snapshot=` with its grub.cfg rewrite, and growing the leaf's
//! write slack. Everything is checked before the first write; every write goes through the core
//! library's FAT/exFAT code.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::host::{open_grub_disk, GrubDisk, Loaded};
use crate::images::FsLocator;
use crate::println;
use vboot::config::rewrite::{rewrite_for_snapshot, SnapshotTarget};
use vboot::config::{GrubPath, PartitionRef, VbootOptions};
use vboot::fs::volume::Volume;
use vboot::fs::{File, FsError};
use vboot::image::create::{self, CreateOptions, Variant};
use vboot::image::onvolume::{self, CreateError, GrowError};
use vboot::image::slack::{self, SlackNeed};
use vboot::image::{chain, Format, Layer};

/// Write slack a sparse leaf gets before boot when the entry has no `reserve=`.
pub const DEFAULT_RESERVE_BYTES: u64 = 256 << 20;

/// The image's leaf on its disk and partition, and the files of its chain found so far (the
/// leaf first), so that later walks of the chain do not look them up on the filesystem again.
pub struct HostFile {
    pub disk: GrubDisk,
    pub partition: u32,
    pub file: File,
    pub known: Vec<(String, File)>,
}

impl HostFile {
    pub fn new(disk: GrubDisk, partition: u32, file: File) -> HostFile {
        HostFile { disk, partition, known: alloc::vec![(file.path.clone(), file.clone())], file }
    }

    /// `(hdN,M)`: where the image is, for messages.
    fn place(&self) -> String {
        self.disk.partition_name(self.partition)
    }
}

/// The chain of `image` (its known files first), walked on its partition.
fn open_chain(image: &HostFile, parent_dir: &Option<String>) -> Result<(FsLocator, Vec<Box<dyn Layer>>), String> {
    let p = image.disk.partition(image.partition)?;
    let mut loc = FsLocator::new(&image.disk.bios, p, image.known.clone());
    let (layers, _) = loc.open_chain(&image.file.path, parent_dir)?;
    Ok((loc, layers))
}

/// A partition-less path means the grub.cfg partition (partition `path_partition` of disk
/// `path_disk`); make it explicit when it is written into a file on another partition or disk.
fn as_seen_from(path: &GrubPath, path_disk: u32, path_partition: u32, file_disk: u32, file_partition: u32) -> GrubPath {
    if path.partition.is_none() && (path_partition != file_partition || path_disk != file_disk) {
        GrubPath { disk: Some(path_disk), partition: Some(PartitionRef { number: path_partition, scheme_hint: None }), path: path.path.clone() }
    } else {
        path.clone()
    }
}

/// The variant of a new differencing child of `leaf`: its own format, sparse.
fn child_variant(leaf: &dyn Layer) -> Result<Variant, String> {
    match leaf.format() {
        Format::Vhd => Ok(Variant::VhdDynamic),
        Format::Vdi => Ok(Variant::VdiDynamic),
        Format::Vmdk => Ok(Variant::VmdkMonolithicSparse),
        Format::Raw => Err(format!(
            "take_snapshot=: {} is a raw image, which cannot have differencing children; convert it to VHD, VMDK or VDI first (vdisk convert)",
            leaf.name()
        )),
    }
}

/// What `take_snapshot=` will write into grub.cfg, worked out before anything is written.
struct ConfigEdit {
    disk: GrubDisk,
    partition: u32,
    path: String,
    new_text: String,
}

fn plan_config_edit(
    boot_disk: &GrubDisk,
    loaded: &Loaded,
    booted: &[usize],
    opts: &VbootOptions,
    child: &GrubPath,
    child_disk: u32,
    child_partition: u32,
) -> Result<Option<ConfigEdit>, String> {
    if opts.config_file.is_none() && opts.boot_entry.is_none() && opts.new_menu_entry.is_none() {
        return Ok(None);
    }
    let (disk, partition, path) = match &opts.config_file {
        Some(p) => {
            let disk = match (p.disk, p.partition) {
                (Some(d), Some(_)) => open_grub_disk(boot_disk, d, &format!("config_file={}", p))?,
                (Some(d), None) => return Err(format!("config_file={}: a file needs a partition, as in (hd{},1){}", p, d, p.path)),
                (None, _) => boot_disk.clone(),
            };
            (disk, p.partition.map(|x| x.number).unwrap_or(loaded.partition), p.path.clone())
        }
        None => (boot_disk.clone(), loaded.partition, loaded.path.to_string()),
    };
    let place = disk.partition_name(partition);
    let same_file = disk.number == boot_disk.number && partition == loaded.partition && path.eq_ignore_ascii_case(&loaded.path);
    let target = match (opts.boot_entry, &opts.new_menu_entry) {
        (Some(n), _) => SnapshotTarget::Entry(alloc::vec![n as usize]),
        (None, Some(title)) => SnapshotTarget::NewEntry { title: title.clone(), template: opts.clone() },
        (None, None) if same_file => SnapshotTarget::Entry(booted.to_vec()),
        (None, None) => {
            return Err(format!(
                "config_file={}{} is not the grub.cfg this menu came from: say which of its entries boots the snapshot with boot_entry=N, or add one with new_menu_entry=TITLE",
                place, path
            ))
        }
    };
    let mut vol = disk.volume(partition).map_err(|e| format!("config_file={}{}: {}", place, path, e))?;
    // After an interrupted rewrite only NAME.new is there (replace_file puts it back in place).
    let (text, _) = vol.read_replaced(&path, 1 << 20).map_err(|e| format!("config_file {}{}: {}", place, path, e))?;
    let text = String::from_utf8(text).map_err(|_| format!("{}{} is not UTF-8 text; vboot will not rewrite it", place, path))?;
    let child_here = as_seen_from(child, child_disk, child_partition, disk.number, partition);
    let new_text = rewrite_for_snapshot(&text, &target, &child_here).map_err(|e| format!("{}{}: {}", place, path, e))?;
    Ok(Some(ConfigEdit { disk, partition, path, new_text }))
}

/// `take_snapshot=`: make a differencing child of the image's leaf at the given path, in the
/// leaf's format, with write slack; rewrite grub.cfg as the options say. Returns the child, the
/// new leaf to boot.
pub fn take_snapshot(boot_disk: &GrubDisk, loaded: &Loaded, booted: &[usize], opts: &VbootOptions, image: HostFile) -> Result<HostFile, String> {
    let Some(snap) = &opts.take_snapshot else { return Ok(image) };
    // A path without a device is on the grub.cfg partition, as everywhere on the line.
    let snap_disk = snap.disk.unwrap_or(boot_disk.number);
    let snap_partition = snap.partition.map(|p| p.number).unwrap_or(loaded.partition);
    if snap_disk != image.disk.number || snap_partition != image.partition {
        return Err(format!(
            "take_snapshot={}: the snapshot must be on the image's partition {}, next to its parents: write take_snapshot={}{}",
            snap,
            image.place(),
            image.place(),
            snap.path
        ));
    }
    // Check everything before the first write.
    let parent_dir = crate::images::parent_dir_on(opts, image.disk.number, image.partition)?;
    let (loc, layers) = open_chain(&image, &parent_dir)?;
    let chain_files = loc.chain_files(&layers);
    let leaf = &*layers[0];
    let variant = child_variant(leaf)?;
    {
        let mut vol = image.disk.volume(image.partition)?;
        match vol.open_file(&snap.path) {
            Err(FsError::NotFound { .. }) => {}
            Ok(_) => {
                return Err(format!(
                    "take_snapshot: {} already exists on {}; delete it or choose another name (was this snapshot taken already?)",
                    snap.path,
                    image.place()
                ))
            }
            Err(e) => return Err(format!("take_snapshot={}: {}", snap, e)),
        }
        if matches!(vol, Volume::Ext(_) | Volume::Ntfs(_)) {
            return Err(format!(
                "take_snapshot: {} is {}, which vboot does not write to; keep images that take snapshots on FAT or exFAT",
                image.place(),
                vol.kind().name()
            ));
        }
    }
    let child_dir = chain::dirname(&snap.path);
    let relative = chain::relative_to(&child_dir, &image.file.path);
    let info = create::parent_info(leaf, &relative, &image.file.path);
    let reserve = opts.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES);
    let (stamp, now_unix) = crate::handoff::boot_stamp();
    let copts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: stamp, now_unix };
    let base_name = chain::basename(&snap.path).to_string();
    let meta = create::metadata_bytes(variant, &base_name, &copts, Some(&info)).map_err(|e| format!("take_snapshot: {}", e))?;
    // The child starts empty: all of the virtual disk is left to allocate.
    // Saturating: a damaged parent's size must not wrap (create_file then refuses the size).
    let size = meta.saturating_add(slack::wanted_bytes(reserve, leaf.virtual_sectors().saturating_mul(512)));
    drop(layers);
    let edit = plan_config_edit(boot_disk, loaded, booted, opts, snap, snap_disk, snap_partition)?;

    // The child file, then the image inside it.
    let made = {
        let mut vol = image.disk.volume(image.partition)?;
        onvolume::create_on_volume(&mut vol, &snap.path, size, variant, &base_name, &copts, Some(&info))
    };
    let file = match made {
        Ok(f) => f,
        Err(CreateError::File(e)) => return Err(format!("take_snapshot: creating {} ({} KiB): {}", snap.path, size / 1024, e)),
        Err(CreateError::Fill(e)) => return Err(cleanup_failed(&image, &snap.path, format!("{}", e))),
    };
    // The new chain must open, with the old leaf as the child's parent.
    let mut child = HostFile::new(image.disk.clone(), image.partition, file.clone());
    child.known.extend(chain_files);
    let check = open_chain(&child, &parent_dir).and_then(|(_, layers)| match layers.get(1) {
        Some(p) if p.name().eq_ignore_ascii_case(&image.file.path) => Ok(()),
        _ => Err(String::from("the new image does not link to its parent")),
    });
    if let Err(e) = check {
        return Err(cleanup_failed(&image, &snap.path, e));
    }
    println!("  snapshot: {} made, a {} child of {} with {} MiB of write slack", snap.path, variant.format().as_str().to_ascii_uppercase(), image.file.path, (size - meta) >> 20);
    if let Some(edit) = edit {
        let mut vol = edit.disk.volume(edit.partition)?;
        vol.replace_file(&edit.path, edit.new_text.as_bytes())
            .map_err(|e| format!("{} (the snapshot {} was made; grub.cfg may still point at the old image)", e, snap.path))?;
        println!("  grub.cfg: {}{} rewritten to boot {}", edit.disk.partition_name(edit.partition), edit.path, snap);
    }
    Ok(child)
}

/// A snapshot child at `path` beside `image` that could not be made is removed again; the
/// message says whether it was.
fn cleanup_failed(image: &HostFile, path: &str, e: String) -> String {
    let cleanup = image.disk.volume(image.partition).and_then(|mut v| v.delete_file(path).map_err(|e| format!("{}", e)));
    format!(
        "take_snapshot: making {} failed: {}{}",
        path,
        e,
        match cleanup {
            Ok(()) => String::from(" (the file was removed again)"),
            Err(c) => format!(" (and removing it failed: {}; delete it by hand)", c),
        }
    )
}

/// What `ensure_slack` decided.
pub enum SlackOutcome {
    /// Boot as asked (the image has its slack, or needs none).
    Ready(HostFile),
    /// The user chose to boot with writes in a RAM overlay.
    RamOverlay(HostFile),
}

/// Make sure the leaf of a sparse image has write slack before boot: grow the file on FAT and
/// exFAT; where it cannot grow and has none, ask whether to boot with writes in RAM.
pub fn ensure_slack(opts: &VbootOptions, image: HostFile) -> Result<SlackOutcome, String> {
    if opts.immutable {
        return Ok(SlackOutcome::Ready(image));
    }
    let parent_dir = crate::images::parent_dir_on(opts, image.disk.number, image.partition)?;
    let (loc, mut layers) = open_chain(&image, &parent_dir)?;
    let mut known = loc.chain_files(&layers);
    let leaf = &mut *layers[0];
    let format = leaf.format();
    let have = leaf.slack_bytes();
    let asked = opts.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES);
    // A fully allocated image needs no slack, however much was asked for.
    let need = slack::slack_need(leaf);
    let left = if asked > have && need != SlackNeed::None {
        slack::unallocated_bytes(leaf).map_err(|e| format!("{}", e))?
    } else {
        0
    };
    let want = slack::wanted_bytes(asked, left);
    let why_not = match need {
        SlackNeed::None => return Ok(SlackOutcome::Ready(image)),
        _ if want == 0 => return Ok(SlackOutcome::Ready(image)),
        SlackNeed::Growable if have >= want => return Ok(SlackOutcome::Ready(image)),
        SlackNeed::Growable => None,
        SlackNeed::NotGrowable(e) => Some(e),
    };
    drop(layers);
    let why_not = match why_not {
        Some(e) => e,
        None => match grow(&image, format, want - have) {
            Ok(file) => {
                println!("  write slack: {} grown by {} KiB for new blocks", image.file.path, (want - have) / 1024);
                // The leaf's extents changed; its parents' did not.
                known[0] = (file.path.clone(), file.clone());
                return Ok(SlackOutcome::Ready(HostFile { disk: image.disk, partition: image.partition, file, known }));
            }
            Err(e) => e,
        },
    };
    if have > 0 {
        println!("  write slack: {}; booting with the {} KiB the image has", why_not, have / 1024);
        return Ok(SlackOutcome::Ready(image));
    }
    crate::screen::show_error(&format!(
        "{} has no room for new blocks, and it cannot be made: {}.\n\
         Writes to parts of the disk not written before would fail.",
        image.file.path, why_not
    ));
    println!("Press R to boot with writes kept in RAM (lost at power-off), any other key to go back.");
    match crate::wait_key() {
        b'r' | b'R' => {
            println!("  writes go to a RAM overlay; the image is not changed");
            Ok(SlackOutcome::RamOverlay(image))
        }
        _ => Err(String::from("not booted: the image has no write slack")),
    }
}

/// Grow the leaf by `add_bytes` on FAT or exFAT, then move its trailer. Returns the file with its
/// new extents.
fn grow(image: &HostFile, format: Format, add_bytes: u64) -> Result<File, String> {
    let path = &image.file.path;
    let mut vol = image.disk.volume(image.partition)?;
    onvolume::grow_on_volume(&mut vol, path, format, add_bytes).map_err(|e| match e {
        GrowError::NoRoom => format!("{} has no room for {} more KiB", image.place(), add_bytes / 1024),
        GrowError::FatLimit => format!("{} is already as large as a FAT file can be", path),
        GrowError::Fs(e) => format!("{}", e),
        GrowError::Image(e) => format!("{}", e),
    })
}
