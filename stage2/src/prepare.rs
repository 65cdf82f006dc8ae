//! Changes to the host filesystem made before the guest starts (invariant 2, docs/architecture.md:
//! never from inside INT 13h): `take_snapshot=` with its grub.cfg rewrite, `immutable`'s
//! throwaway child (made, or emptied), and growing the leaf's write slack. Everything is checked
//! before the first write; every write that changes the filesystem goes through the core
//! library's FAT/exFAT code, and emptying a child writes only inside that file.

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
#[derive(Clone)]
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

/// The variant of a new differencing child of `leaf`: its own format, sparse. `what` names the
/// option asking, for the message.
fn child_variant(leaf: &dyn Layer, what: &str) -> Result<Variant, String> {
    match leaf.format() {
        Format::Vhd => Ok(Variant::VhdDynamic),
        Format::Vdi => Ok(Variant::VdiDynamic),
        Format::Vmdk => Ok(Variant::VmdkMonolithicSparse),
        Format::Raw => Err(format!(
            "{}: {} is a raw image, which cannot have differencing children; convert it to VHD, VMDK or VDI first (vdisk convert)",
            what,
            leaf.name()
        )),
    }
}

/// A differencing child of the image's leaf, worked out (and its size checked) before anything
/// is written; shared by `take_snapshot=` and `immutable`.
struct ChildPlan {
    path: String,
    variant: Variant,
    base_name: String,
    copts: CreateOptions,
    info: create::ParentInfo,
    /// The whole file: metadata and write slack.
    size_bytes: u64,
    metadata_bytes: u64,
    /// The files of the image's chain, so the new chain opens without walking them again.
    chain_files: Vec<(String, File)>,
    parent_dir: Option<String>,
}

/// Plan a child of `image` at `path` (on the image's partition) with `reserve_bytes` of write
/// slack. `what` names the option asking, for messages.
fn plan_child(image: &HostFile, parent_dir: &Option<String>, path: &str, reserve_bytes: u64, what: &str) -> Result<ChildPlan, String> {
    let (loc, layers) = open_chain(image, parent_dir)?;
    let chain_files = loc.chain_files(&layers);
    let leaf = &*layers[0];
    let variant = child_variant(leaf, what)?;
    let child_dir = chain::dirname(path);
    let relative = chain::relative_to(&child_dir, &image.file.path);
    let info = create::parent_info(leaf, &relative, &image.file.path);
    let (stamp, now_unix) = crate::handoff::boot_stamp();
    let copts = CreateOptions { size_bytes: 0, reserve_bytes: 0, exact_size: false, seed: stamp, now_unix };
    let base_name = chain::basename(path).to_string();
    let meta = create::metadata_bytes(variant, &base_name, &copts, Some(&info)).map_err(|e| format!("{}: {}", what, e))?;
    // The child starts empty: all of the virtual disk is left to allocate.
    // Saturating: a damaged parent's size must not wrap (create_file then refuses the size).
    let size_bytes = meta.saturating_add(slack::wanted_bytes(reserve_bytes, leaf.virtual_sectors().saturating_mul(512)));
    Ok(ChildPlan { path: path.to_string(), variant, base_name, copts, info, size_bytes, metadata_bytes: meta, chain_files, parent_dir: parent_dir.clone() })
}

/// Make the planned child on FAT or exFAT and check that the new chain opens with the image as
/// its parent; a child that fails is removed again. Returns the child, the new leaf to boot.
fn create_child(image: &HostFile, plan: ChildPlan, what: &str) -> Result<HostFile, String> {
    let made = {
        let mut vol = image.disk.volume(image.partition)?;
        onvolume::create_on_volume(&mut vol, &plan.path, plan.size_bytes, plan.variant, &plan.base_name, &plan.copts, Some(&plan.info))
    };
    let file = match made {
        Ok(f) => f,
        Err(CreateError::File(e @ FsError::NoSpace { .. })) => {
            return Err(format!(
                "{}: creating {} ({} KiB): {}; free some room on {}, or give a smaller reserve=",
                what,
                plan.path,
                plan.size_bytes / 1024,
                e,
                image.disk.partition_name(image.partition)
            ))
        }
        Err(CreateError::File(e)) => return Err(format!("{}: creating {} ({} KiB): {}", what, plan.path, plan.size_bytes / 1024, e)),
        Err(CreateError::Fill(e)) => return Err(cleanup_failed(image, &plan.path, what, format!("{}", e))),
    };
    // The new chain must open, with the old leaf as the child's parent.
    let mut child = HostFile::new(image.disk.clone(), image.partition, file);
    child.known.extend(plan.chain_files);
    let check = open_chain(&child, &plan.parent_dir).and_then(|(_, layers)| match layers.get(1) {
        Some(p) if p.name().eq_ignore_ascii_case(&image.file.path) => Ok(()),
        _ => Err(String::from("the new image does not link to its parent")),
    });
    if let Err(e) = check {
        return Err(cleanup_failed(image, &plan.path, what, e));
    }
    Ok(child)
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
    let reserve = opts.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES);
    let plan = plan_child(&image, &parent_dir, &snap.path, reserve, "take_snapshot=")?;
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
    let edit = plan_config_edit(boot_disk, loaded, booted, opts, snap, snap_disk, snap_partition)?;

    // The child file, then the image inside it.
    let (variant, slack_bytes) = (plan.variant, plan.size_bytes - plan.metadata_bytes);
    let child = create_child(&image, plan, "take_snapshot")?;
    println!("  snapshot: {} made, a {} child of {} with {} MiB of write slack", snap.path, variant.format().as_str().to_ascii_uppercase(), image.file.path, slack_bytes >> 20);
    if let Some(edit) = edit {
        let mut vol = edit.disk.volume(edit.partition)?;
        vol.replace_file(&edit.path, edit.new_text.as_bytes())
            .map_err(|e| format!("{} (the snapshot {} was made; grub.cfg may still point at the old image)", e, snap.path))?;
        println!("  grub.cfg: {}{} rewritten to boot {}", edit.disk.partition_name(edit.partition), edit.path, snap);
    }
    Ok(child)
}

/// A child that could not be made is removed again; the message says whether it was.
fn cleanup_failed(image: &HostFile, path: &str, what: &str, e: String) -> String {
    let cleanup = image.disk.volume(image.partition).and_then(|mut v| v.delete_file(path).map_err(|e| format!("{}", e)));
    format!(
        "{}: making {} failed: {}{}",
        what,
        path,
        e,
        match cleanup {
            Ok(()) => String::from(" (the file was removed again)"),
            Err(c) => format!(" (and removing it failed: {}; delete it by hand)", c),
        }
    )
}

/// What `immutable` does with the hard-disk image.
pub enum Immutable {
    /// The throwaway child was made at this start, with its write slack: boot it.
    Made(HostFile),
    /// The throwaway child was there and is empty now: boot it (after `ensure_slack`).
    Emptied(HostFile),
    /// No child on disk (an NTFS or ext host without one, or one that could not be made, and
    /// the user pressed R): boot the image with writes in the engine's RAM overlay.
    RamOverlay(HostFile),
}

/// `immutable`: the image boots through a throwaway differencing child on disk, in the leaf's
/// format, emptied at every start (docs/usage.md, "Immutable"). The child is `immutable_child=`
/// or, by default, beside the leaf (`x.vhd` -> `x.immutable.vhd`; a raw `x.img` gets the VMDK
/// `x.immutable.vmdk` over the flat descriptor `x.immutable-raw.vmdk`). An existing child is emptied
/// as `restore` empties one (the same `discard_leaf`), on any filesystem, since that writes only
/// inside the file; a missing one is made on FAT and exFAT as `take_snapshot=` makes one. On NTFS
/// and ext, where vboot changes no metadata, the screen says how to make one on the host and
/// offers the RAM overlay.
pub fn immutable_child(opts: &VbootOptions, image: HostFile) -> Result<Immutable, String> {
    let parent_dir = crate::images::parent_dir_on(opts, image.disk.number, image.partition)?;
    let (raw, chain_files) = {
        let (loc, layers) = open_chain(&image, &parent_dir)?;
        (layers[0].format() == Format::Raw, loc.chain_files(&layers))
    };
    let child_path = match &opts.immutable_child {
        None => create::immutable_child_path(&image.file.path, raw),
        // A path without a device is on the image's partition, like the child beside it.
        Some(p) if p.disk.is_some_and(|d| d != image.disk.number) || p.partition.is_some_and(|x| x.number != image.partition) => {
            return Err(format!(
                "immutable_child={}: the throwaway child must be on the image's partition {}, next to its parents; write immutable_child={}/...",
                p,
                image.disk.partition_name(image.partition),
                image.disk.partition_name(image.partition)
            ))
        }
        Some(p) => p.path.clone(),
    };
    if chain_files.iter().any(|(p, _)| p.eq_ignore_ascii_case(&child_path)) {
        return Err(format!(
            "immutable: {} is part of the image's own chain, so it cannot be the throwaway child; name another file with immutable_child=",
            child_path
        ));
    }
    let (existing, writable_fs) = {
        let mut vol = image.disk.volume(image.partition)?;
        let writable_fs = !matches!(vol, Volume::Ext(_) | Volume::Ntfs(_));
        match vol.open_file(&child_path) {
            Ok(f) => (Some(f), writable_fs),
            Err(FsError::NotFound { .. }) => (None, writable_fs),
            Err(e) => return Err(format!("immutable: the throwaway child {}{}: {}", image.disk.partition_name(image.partition), child_path, e)),
        }
    };
    // A raw image has no differencing children: its child is a VMDK whose parent is a flat VMDK
    // descriptor naming the raw file (qemu opens a VMDK child's parent as a VMDK only).
    let parent = if raw {
        match raw_descriptor(&image, &parent_dir, writable_fs && existing.is_none())? {
            Some(descriptor) => Some(descriptor),
            None if existing.is_some() => {
                return Err(format!(
                    "immutable: {} is there, but its parent {} (the VMDK descriptor naming {}) is not; delete {}",
                    child_path,
                    create::raw_descriptor_path(&image.file.path),
                    image.file.path,
                    child_path
                ))
            }
            None => None,
        }
    } else {
        Some(image.clone())
    };
    if let (Some(file), Some(parent)) = (existing, &parent) {
        let child = empty_child(parent, file, parent.known.clone(), &parent_dir)?;
        println!("  immutable: {} emptied (the last boot's writes are gone); this boot writes into it", child_path);
        return Ok(Immutable::Emptied(child));
    }
    let why_not = if let (true, Some(parent)) = (writable_fs, &parent) {
        let reserve = opts.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES);
        let plan = plan_child(parent, &parent_dir, &child_path, reserve, "immutable")?;
        let (variant, slack_bytes) = (plan.variant, plan.size_bytes - plan.metadata_bytes);
        match create_child(parent, plan, "immutable") {
            Ok(child) => {
                println!(
                    "  immutable: {} made, a throwaway {} child of {} with {} MiB of write slack; it is emptied at every start",
                    child_path,
                    variant.format().as_str().to_ascii_uppercase(),
                    parent.file.path,
                    slack_bytes >> 20
                );
                return Ok(Immutable::Made(child));
            }
            Err(e) => e,
        }
    } else {
        let kind = image.disk.volume(image.partition)?.kind().name();
        format!(
            "immutable: {} is {}, where vboot makes no new files, and the throwaway child {} is not there.\n\
             Make it once on the host: vdisk immutable-child IMAGE (it makes {} beside the image;\n\
             --reserve SIZE sets its write slack), and every start empties and reuses it.",
            image.disk.partition_name(image.partition),
            kind,
            child_path,
            chain::basename(&child_path)
        )
    };
    crate::screen::show_error(&why_not);
    println!(
        "Press R to boot with writes kept in RAM (at most {} MiB, lost at power-off), any other key to go back.",
        vboot::resident::IMMUTABLE_OVERLAY_BYTES >> 20
    );
    match crate::wait_key() {
        b'r' | b'R' => {
            println!("  immutable: writes go to a RAM overlay of up to {} MiB", vboot::resident::IMMUTABLE_OVERLAY_BYTES >> 20);
            Ok(Immutable::RamOverlay(image))
        }
        _ => Err(format!("not booted: immutable needs the throwaway child {} (vdisk immutable-child)", child_path)),
    }
}

/// The flat VMDK descriptor that is a raw image's parent for `immutable` (beside it,
/// `x.immutable-raw.vmdk`), with the files of its chain (itself, the raw file). Made on FAT and
/// exFAT when `create` and it is missing; `None` when it is missing otherwise. An existing one
/// must open as a VMDK of the raw image's size that reads the raw file.
fn raw_descriptor(image: &HostFile, parent_dir: &Option<String>, create: bool) -> Result<Option<HostFile>, String> {
    let path = create::raw_descriptor_path(&image.file.path);
    let sectors = image.file.size_bytes / 512;
    let found = {
        let mut vol = image.disk.volume(image.partition)?;
        match vol.open_file(&path) {
            Ok(f) => Some(f),
            Err(FsError::NotFound { .. }) if !create => return Ok(None),
            Err(FsError::NotFound { .. }) => {
                let (stamp, _) = crate::handoff::boot_stamp();
                let text = create::raw_flat_descriptor(chain::basename(&image.file.path), sectors, stamp);
                // The directory entry first, then the text: a power cut leaves a file that does
                // not open as a descriptor, which the next start names (delete it).
                let file = vol.create_file(&path, text.len() as u64).map_err(|e| format!("immutable: creating {}: {}", path, e))?;
                if let Err(e) = vol.write_file(&file, 0, text.as_bytes()) {
                    return Err(cleanup_failed(image, &path, "immutable", format!("{}", e)));
                }
                println!("  immutable: {} made, a VMDK descriptor naming the raw {} (the throwaway child's parent)", path, image.file.path);
                None
            }
            Err(e) => return Err(format!("immutable: {}: {}", path, e)),
        }
    };
    let file = match found {
        Some(f) => f,
        None => image.disk.volume(image.partition)?.open_file(&path).map_err(|e| format!("immutable: {}: {}", path, e))?,
    };
    let mut descriptor = HostFile::new(image.disk.clone(), image.partition, file);
    descriptor.known.push((image.file.path.clone(), image.file.clone()));
    let wrong = |why: String| format!("immutable: {} is not the VMDK descriptor of the raw {}: {}; delete it and the child beside it", path, image.file.path, why);
    let (loc, layers) = open_chain(&descriptor, parent_dir).map_err(wrong)?;
    let files = loc.chain_files(&layers);
    if layers.len() != 1 || layers[0].format() != Format::Vmdk || layers[0].virtual_sectors() != sectors {
        return Err(wrong(format!("it is not a {}-sector VMDK without a parent", sectors)));
    }
    if !files.iter().any(|(p, _)| p.eq_ignore_ascii_case(&image.file.path)) {
        return Err(wrong(String::from("it names another file")));
    }
    descriptor.known = files;
    Ok(Some(descriptor))
}

/// An existing throwaway child: it must be a differencing child of the image's leaf, on disk
/// where the BIOS reaches it and with sound allocation; then it is emptied with the core
/// library's `discard_leaf` (what `restore` does), writing only inside the file.
fn empty_child(image: &HostFile, file: File, chain_files: Vec<(String, File)>, parent_dir: &Option<String>) -> Result<HostFile, String> {
    let path = file.path.clone();
    let remedy = "delete it: vboot makes a new one on FAT or exFAT, `vdisk immutable-child` makes one on the host";
    let part_start_lba = image.disk.partition(image.partition)?.start_lba;
    crate::resident::check_reach(&image.disk.bios, &path, &file.extents.to_host(part_start_lba))?;
    let mut child = HostFile::new(image.disk.clone(), image.partition, file);
    child.known.extend(chain_files);
    let (mut loc, layers) =
        open_chain(&child, parent_dir).map_err(|e| format!("immutable: the throwaway child {} does not open: {}; {}", path, e, remedy))?;
    match layers.get(1) {
        Some(p) if p.name().eq_ignore_ascii_case(&image.file.path) => {}
        _ => {
            // Maybe a file the user keeps: never suggest deleting it first.
            return Err(format!(
                "immutable: {} is there but is not a differencing child of {}; name another file with immutable_child=, or delete it if it is a leftover",
                path, image.file.path
            ))
        }
    }
    loc.check_allocation(&[&child.file]).map_err(|e| format!("immutable: {}: {}", path, e))?;
    let files: Vec<vboot::image::ListedFile> = loc
        .chain_files(&layers)
        .into_iter()
        .map(|(p, f)| vboot::image::ListedFile { path: p, size_bytes: f.size_bytes, extents: f.extents.to_host(part_start_lba) })
        .collect();
    drop(layers);
    // Opened writable for discard_leaf, which writes the leaf only (the parents are never written).
    let mut locator = vboot::image::ListedFiles { files, device: image.disk.bios.clone(), writable: true };
    let opts = vboot::image::ChainOptions { parent_dir: parent_dir.clone(), lenient_cid: false };
    let (layers, warnings) = vboot::image::open_chain(&path, &mut locator, &opts).map_err(|e| format!("immutable: {}: {}", path, e))?;
    let mut d = vboot::image::Disk::new(layers, warnings).map_err(|e| format!("immutable: {}: {}", path, e))?;
    d.discard_leaf().map_err(|e| format!("immutable: emptying {}: {}; {}", path, e, remedy))?;
    Ok(child)
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
