//! The virtual disk, opened as the engine opens it at boot (`stage2/engine/src/chain.rs`): every
//! file of the chain read and written in place through its extent list on the host disk, the
//! chain walked by the core library with a locator that only knows the table's files, and one
//! `image::Disk` over it, so writes allocate in the files' slack exactly as at boot. A CD (the
//! ISO, read-only, whole 2048-byte blocks) and a floppy image are one raw file each, served
//! through the same `ExtentFile` directly.
//!
//! The pivot (`--pivot`, docs/vboot-attach.md): every file is opened through a [`Switchable`], so
//! that the server can later put the same file, opened through the host filesystem
//! (`vboot::image::StdFile`, as vdisk opens files), under the layers without reopening the chain:
//! the layers keep their state, only where the bytes come from changes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use vboot::block::{BlockDevice, BlockError};
use vboot::fs::ExtentList;
use vboot::handoff::{Drive, DriveKind, Layer, WriteMode};
use vboot::image::{open_chain, ChainOptions, Disk, ExtentFile, ImageError, ImageFile, ListedFile, ListedFiles, ParentLocator, StdFile};

use crate::nbd::{eio, Backend};

/// The host disk as a sector device for the chain's files (`vboot::image::ExtentFile`, the
/// type the engine uses at boot): positioned reads and writes, so the copies the locator hands
/// out share one open file. With `--direct`, writes go through a second descriptor opened with
/// O_DIRECT (`unbuffered`, see [`write_unbuffered`]).
#[derive(Clone)]
struct HostDevice(Arc<File>, Option<Arc<File>>);

/// Write `buf` at `lba` through `file`, opened with O_DIRECT: from a copy aligned to 4 KiB, as
/// O_DIRECT needs. Why unbuffered with `--direct`: the page cache of the host disk holds the
/// sectors around the image's metadata in blocks of up to 4 KiB, and a buffered write of one
/// sector writes its whole block back later, neighbours included. A neighbour that the dm table
/// wrote straight to the disk meanwhile (the data next to a VHD block's bitmap) would be put
/// back as the cache had it. An O_DIRECT write writes only its sectors and drops the cached
/// pages it touches.
fn write_unbuffered(file: &File, lba: u64, buf: &[u8]) -> std::io::Result<()> {
    const ALIGN: usize = 4096;
    let mut bounce = vec![0u8; buf.len() + ALIGN];
    let skip = bounce.as_ptr().align_offset(ALIGN);
    let aligned = &mut bounce[skip..skip + buf.len()];
    aligned.copy_from_slice(buf);
    file.write_all_at(aligned, lba * 512)
}

impl BlockDevice for HostDevice {
    fn sector_count(&self) -> u64 {
        u64::MAX
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.0.read_exact_at(buf, lba * 512).map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        match &self.1 {
            Some(unbuffered) => write_unbuffered(unbuffered, lba, buf),
            None => self.0.write_all_at(buf, lba * 512),
        }
        .map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.0.sync_data().map_err(|e| BlockError::Io { lba: 0, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
}

type Shared = Rc<RefCell<Box<dyn ImageFile>>>;

/// One file of the drive as the layers see it: an `ExtentFile` on the host disk until the pivot,
/// then a `StdFile` through the host filesystem. It never grows, before or after: writes allocate
/// in the file's slack as at boot.
#[derive(Clone)]
struct Switchable {
    inner: Shared,
    name: String,
}

impl Switchable {
    fn new(file: Box<dyn ImageFile>) -> Switchable {
        Switchable { name: file.name().to_string(), inner: Rc::new(RefCell::new(file)) }
    }
}

impl ImageFile for Switchable {
    fn len_bytes(&self) -> u64 {
        self.inner.borrow().len_bytes()
    }
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.inner.borrow_mut().read_at(offset_bytes, buf)
    }
    fn write_at(&mut self, offset_bytes: u64, buf: &[u8]) -> Result<(), ImageError> {
        let mut f = self.inner.borrow_mut();
        // The file through the filesystem could grow; in place (before the pivot) it refuses itself.
        if f.can_grow() && offset_bytes.checked_add(buf.len() as u64).map_or(true, |end| end > f.len_bytes()) {
            return Err(ImageError::Io { image: self.name.clone(), offset_bytes, detail: String::from("a write past the end: vboot-attach never grows a file") });
        }
        f.write_at(offset_bytes, buf)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        self.inner.borrow_mut().flush()
    }
    fn mtime_unix(&self) -> Option<u64> {
        self.inner.borrow().mtime_unix()
    }
    fn host_run(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        self.inner.borrow().host_run(offset_bytes)
    }
    fn host_run_writable(&self, offset_bytes: u64) -> Option<(u64, u64)> {
        self.inner.borrow().host_run_writable(offset_bytes)
    }
}

/// The table's files for the chain walker, each handed out as a [`Switchable`] that is remembered
/// (weakly: a file the walker only probed and dropped is not pivoted).
struct SwitchableFiles {
    listed: ListedFiles<HostDevice>,
    opened: Vec<Weak<RefCell<Box<dyn ImageFile>>>>,
}

impl ParentLocator for SwitchableFiles {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let s = Switchable::new(self.listed.open(path)?);
        self.opened.push(Rc::downgrade(&s.inner));
        Some(Box::new(s))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        self.listed.list_dir(dir)
    }
}

/// What the sectors come from: a hard disk's chain, or the one raw file of a CD or floppy.
enum Medium {
    Chain(Disk),
    File(Switchable),
}

/// `--direct` looks for in-place sectors inside a leaf's run that is not in place (a partly
/// written block: a VHD block whose bitmap has only the sectors written) sector by sector, since
/// a guest may write single sectors anywhere (a probe every 8 sectors missed 7 of 8 of those);
/// at most this many probes in all, so that the look stays bounded (each is a bitmap bit, about
/// 60 ns here: 16 Mi probes, 4,096 partly written VHD blocks, take about a second; the server
/// looks again at most every ten times as long as a look took).
const DIRECT_PROBES: u64 = 1 << 24;

/// `--direct` on a VMDK leaf: the first write of a session changes the CID in the descriptor
/// before anything else (docs/image-formats.md), so until then no sector of it is in place
/// (`in_place_run` says none). Make that first write now, before anything is served: one
/// sector the leaf holds written back with its own bytes. The image then says "modified" (a new
/// CID) even if Linux writes nothing, as after any session that wrote; its content is the same.
/// Other formats have no such first-write change.
fn first_write_now(d: &mut Disk) -> Result<(), String> {
    use vboot::image::disk::Source;
    if d.layers().first().map(|l| l.format()) != Some(vboot::image::Format::Vmdk) {
        return Ok(());
    }
    let mut sector = 0;
    while sector < d.sectors() {
        let run = d.lookup(sector).map_err(|e| format!("mapping sector {}: {}", sector, e))?;
        if let Source::Data { layer: 0, .. } = run.source {
            if d.in_place_run(sector).is_some() {
                // Made already (an earlier look, or Linux wrote).
                return Ok(());
            }
            let mut own = [0u8; 512];
            d.read(sector, &mut own).map_err(|e| format!("reading sector {}: {}", sector, e))?;
            d.write(sector, &own).map_err(|e| format!("--direct: the VMDK's first write (its new CID) at sector {}: {}", sector, e))?;
            eprintln!("vboot-attach: --direct: the VMDK leaf's CID changed now (its first write, sector {} rewritten as it was), so that its grains can go direct", sector);
            return Ok(());
        }
        sector += run.sectors.max(1);
    }
    Ok(())
}

/// The disk the guest saw, served over NBD.
pub struct VirtualDisk {
    medium: Medium,
    size_bytes: u64,
    /// The host disk, until the pivot closes it.
    host: Option<Arc<File>>,
    /// Every file the medium reads and writes (for the pivot).
    opened: Vec<Weak<RefCell<Box<dyn ImageFile>>>>,
    /// The table's files, leaf first: what the pivot checks against.
    pub layers: Vec<Layer>,
    /// After the pivot: the files through the host filesystem, in the order of `layers`.
    pivoted: Option<Vec<File>>,
    /// `immutable`: written sectors live here and the images never change.
    overlay: Option<HashMap<u64, Box<[u8; 512]>>>,
    read_only: bool,
    pub description: String,
    /// Writes served so far (`--direct` looks at its tables again after some).
    pub writes_served: u64,
}

impl VirtualDisk {
    /// Open the drive's chain on `host` (the host disk, opened read-write unless the drive is
    /// read-only or immutable). A CD is always read-only.
    #[cfg(test)]
    pub fn open(drive: &Drive, host: File, read_only: bool) -> Result<VirtualDisk, String> {
        VirtualDisk::open_with(drive, host, None, read_only)
    }

    /// [`Self::open`], writing through `unbuffered` (the host disk opened with O_DIRECT) when
    /// given: `--direct` (see [`write_unbuffered`]).
    pub fn open_with(drive: &Drive, host: File, unbuffered: Option<File>, read_only: bool) -> Result<VirtualDisk, String> {
        let immutable = drive.write_mode == WriteMode::Immutable;
        let unbuffered = unbuffered.map(Arc::new);
        let host = Arc::new(host);
        if drive.kind != DriveKind::HardDisk {
            return VirtualDisk::open_file(drive, HostDevice(host, unbuffered), read_only || drive.kind == DriveKind::Cdrom, immutable);
        }
        let files = drive
            .layers
            .iter()
            .map(|l| ListedFile { path: l.path.clone(), size_bytes: l.size_bytes, extents: ExtentList { extents: l.extents.clone() } })
            .collect::<Vec<_>>();
        let leaf = files.first().ok_or("the drive has no image file")?.path.clone();
        let listed = ListedFiles { files, device: HostDevice(host.clone(), unbuffered), writable: !read_only && !immutable };
        let mut locator = SwitchableFiles { listed, opened: Vec::new() };
        let (layers, warnings) = open_chain(&leaf, &mut locator, &ChainOptions { parent_dir: drive.parent_dir.clone(), lenient_cid: false })
            .map_err(|e| format!("opening {}: {}", leaf, e))?;
        for w in &warnings {
            eprintln!("vboot-attach: warning: {}", w);
        }
        let disk = Disk::new(layers, warnings).map_err(|e| format!("opening {}: {}", leaf, e))?;
        if disk.sectors() != drive.virtual_sectors {
            return Err(format!(
                "{} is {} sectors now, but the guest saw {} at boot: the image changed since",
                leaf,
                disk.sectors(),
                drive.virtual_sectors
            ));
        }
        let names: Vec<String> = disk.layers().iter().map(|l| format!("{} ({})", l.name(), l.format().as_str())).collect();
        // Throwaway: the leaf is `immutable`'s child on disk, written like any leaf (the engine
        // wrote into it before Linux; the next start empties it).
        let mode = match drive.write_mode {
            WriteMode::Immutable => ", immutable: writes stay in RAM",
            WriteMode::Throwaway => ", immutable: writes go into the throwaway child, emptied at the next start",
            _ => "",
        };
        let description = format!("{} sectors, {}{}", disk.sectors(), names.join(" <- "), mode);
        let size_bytes = disk.sectors() * 512;
        Ok(VirtualDisk {
            medium: Medium::Chain(disk),
            size_bytes,
            host: Some(host),
            opened: locator.opened,
            layers: drive.layers.clone(),
            pivoted: None,
            overlay: immutable.then(HashMap::new),
            read_only,
            description,
            writes_served: 0,
        })
    }

    /// A CD or floppy: the image file's bytes as they are (a CD's whole 2048-byte blocks).
    fn open_file(drive: &Drive, device: HostDevice, read_only: bool, immutable: bool) -> Result<VirtualDisk, String> {
        let host = device.0.clone();
        let [l] = &drive.layers[..] else {
            return Err(format!("the {} drive {:#04x} has {} files in the table; it should have one", drive.kind.as_str(), drive.bios_number, drive.layers.len()));
        };
        let size_bytes = vboot_attach::drives::served_bytes(drive);
        if size_bytes == 0 || size_bytes > l.size_bytes || size_bytes / 512 > drive.virtual_sectors {
            return Err(format!("{}: {} bytes, {} sectors at boot: not a {} image", l.path, l.size_bytes, drive.virtual_sectors, drive.kind.as_str()));
        }
        let extents = ExtentList { extents: l.extents.clone() };
        let file = Switchable::new(Box::new(ExtentFile::new(device, l.path.clone(), l.size_bytes, extents, !read_only && !immutable)));
        let opened = vec![Rc::downgrade(&file.inner)];
        let what = match drive.kind {
            DriveKind::Cdrom => format!("ISO {}, {} blocks of 2048 bytes", l.path, size_bytes / 2048),
            _ => format!("{} image {}, {} sectors", drive.kind.as_str(), l.path, size_bytes / 512),
        };
        let description = format!(
            "{}{}",
            what,
            if immutable {
                ", immutable: writes stay in RAM"
            } else if read_only {
                ", read-only"
            } else {
                ""
            }
        );
        Ok(VirtualDisk {
            medium: Medium::File(file),
            size_bytes,
            host: Some(host),
            opened,
            layers: drive.layers.clone(),
            pivoted: None,
            overlay: immutable.then(HashMap::new),
            read_only,
            description,
            writes_served: 0,
        })
    }

    /// Whether the server writes the image files (the leaf): not read-only, not immutable.
    pub fn writes_files(&self) -> bool {
        !self.read_only && self.overlay.is_none()
    }

    pub fn pivoted(&self) -> bool {
        self.pivoted.is_some()
    }

    /// Make every write so far durable on the host disk (before the pivot).
    pub fn flush_host(&self) -> Result<(), String> {
        match &self.host {
            Some(h) if self.writes_files() => h.sync_all().map_err(|e| format!("flushing the host disk: {}", e)),
            _ => Ok(()),
        }
    }

    /// For `--direct`: the runs of the disk that may go straight to the host disk, in order. A
    /// disk the server writes: only the leaf's runs where a write changes nothing but those
    /// sectors (`Disk::in_place_run`: no allocation, no bitmap, no first-write metadata such as
    /// a VMDK's CID), so that a write through the dm table is exactly the server's write. A
    /// read-only disk: every run whose data lies in a file kept in place. Refused for a RAM
    /// overlay (`immutable` without a child: the server holds the writes) and after the pivot.
    pub fn direct_runs(&mut self) -> Result<Vec<vboot_attach::direct::DirectRun>, String> {
        use vboot::image::disk::Source;
        use vboot_attach::direct::DirectRun;
        if self.overlay.is_some() {
            return Err(String::from("--direct cannot serve this drive: its writes stay in the server's RAM (immutable without a throwaway child), which a direct mapping would bypass"));
        }
        if self.pivoted() {
            return Err(String::from("--direct after the pivot: the host disk is closed"));
        }
        let mut runs: Vec<DirectRun> = Vec::new();
        let push = |runs: &mut Vec<DirectRun>, r: DirectRun| match runs.last_mut() {
            Some(last) if last.start_sector + last.sectors == r.start_sector && last.host_lba + last.sectors == r.host_lba => last.sectors += r.sectors,
            _ => runs.push(r),
        };
        let writes = !self.read_only;
        let size_sectors = self.size_bytes / 512;
        match &mut self.medium {
            Medium::Chain(d) => {
                if writes {
                    first_write_now(d)?;
                }
                let mut sector = 0;
                let mut probes_left = DIRECT_PROBES;
                while sector < size_sectors {
                    if writes && probes_left > 0 {
                        probes_left -= 1;
                        if let Some((host_lba, sectors)) = d.in_place_run(sector) {
                            push(&mut runs, DirectRun { start_sector: sector, sectors, host_lba });
                            sector += sectors;
                            continue;
                        }
                    }
                    let run = d.lookup(sector).map_err(|e| format!("mapping sector {}: {}", sector, e))?;
                    let mut advance = run.sectors.max(1);
                    match run.source {
                        // The leaf's data, not in place here: a block whose bitmap has only
                        // some sectors (a VHD block vboot allocated has the written sectors'
                        // bits), or a VMDK whose CID the first write has not changed yet.
                        // Look again at the next sector, while the probes last.
                        Source::Data { layer: 0, .. } if writes && probes_left > 0 => {
                            advance = 1;
                        }
                        Source::Data { layer, file, offset_bytes } if !writes && offset_bytes % 512 == 0 => {
                            if let Some((host_lba, contiguous)) = d.host_run(layer, file, offset_bytes) {
                                let sectors = contiguous.min(run.sectors);
                                if sectors > 0 {
                                    push(&mut runs, DirectRun { start_sector: sector, sectors, host_lba });
                                    advance = sectors;
                                }
                            }
                        }
                        _ => {}
                    }
                    sector += advance;
                }
                if writes && probes_left == 0 {
                    eprintln!(
                        "vboot-attach: --direct: the leaf's data is not in place in many places (many partly written blocks); after {} probes the rest of the disk from sector {} goes through NBD",
                        DIRECT_PROBES, sector
                    );
                }
            }
            Medium::File(f) => {
                // A CD or floppy: the file's extents (writable ones only where the file owns
                // whole sectors).
                let mut sector = 0;
                while sector < size_sectors {
                    let at = if writes { f.host_run_writable(sector * 512) } else { f.host_run(sector * 512) };
                    let Some((host_lba, contiguous)) = at else { break };
                    let sectors = contiguous.min(size_sectors - sector);
                    if sectors == 0 {
                        break;
                    }
                    push(&mut runs, DirectRun { start_sector: sector, sectors, host_lba });
                    sector += sectors;
                }
            }
        }
        Ok(runs)
    }

    /// The partitions of the virtual disk, read through the image (not the kernel), for
    /// `--direct`'s per-partition devices; extended-partition containers left out. None when
    /// the disk has no partition table.
    pub fn partitions(&mut self) -> Vec<vboot_attach::direct::DiskPartition> {
        let Medium::Chain(d) = &mut self.medium else { return Vec::new() };
        let Ok(table) = vboot::part::read_partitions(d) else { return Vec::new() };
        let disk_sectors = self.size_bytes / 512;
        table
            .partitions
            .iter()
            .filter(|p| !matches!(p.kind, vboot::part::PartitionKind::Mbr { type_byte, .. } if vboot::part::is_extended_type(type_byte)))
            .filter(|p| p.sectors > 0 && p.start_lba.checked_add(p.sectors).is_some_and(|e| e <= disk_sectors))
            .map(|p| vboot_attach::direct::DiskPartition { number: p.number, start_lba: p.start_lba, sectors: p.sectors })
            .collect()
    }

    /// The pivot itself, after the caller checked that `files` (the table's files through the
    /// host filesystem, in the order of [`Self::layers`]) hold exactly the table's extents and
    /// flushed the host disk: every layer's file becomes a `StdFile` over its own copy of the
    /// descriptor, and the host disk is closed. Nothing is read or written here, so nothing can
    /// fail half-way.
    pub fn pivot(&mut self, files: Vec<File>) -> Result<(), String> {
        if files.len() != self.layers.len() {
            return Err(format!("{} files for the {} of the chain", files.len(), self.layers.len()));
        }
        // Every descriptor first (dup can fail), then the swap.
        let mut swaps = Vec::new();
        for w in &self.opened {
            let Some(shared) = w.upgrade() else { continue };
            let name = shared.borrow().name().to_string();
            let i = self
                .layers
                .iter()
                .position(|l| vboot_attach::pivot::same_path(&l.path, &name))
                .ok_or_else(|| format!("{} is open but not in the hand-off table", name))?;
            let file = files[i].try_clone().map_err(|e| format!("{}: {}", name, e))?;
            swaps.push((shared, StdFile { file, name, len_bytes: self.layers[i].size_bytes }));
        }
        for (shared, file) in swaps {
            *shared.borrow_mut() = Box::new(file);
        }
        self.pivoted = Some(files);
        if let Some(host) = self.host.take() {
            if Arc::strong_count(&host) > 1 {
                eprintln!("vboot-attach: warning: the host disk is still open after the pivot ({} users)", Arc::strong_count(&host) - 1);
            }
        }
        Ok(())
    }
}

impl Backend for VirtualDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), (u32, String)> {
        if offset % 512 != 0 || buf.len() % 512 != 0 {
            return Err(eio(format!("read of {} bytes at {}: not whole sectors", buf.len(), offset)));
        }
        match &mut self.medium {
            Medium::Chain(d) => d.read(offset / 512, buf),
            Medium::File(f) => f.read_at(offset, buf),
        }
        .map_err(|e| eio(format!("read at sector {}: {}", offset / 512, e)))?;
        if let Some(o) = &self.overlay {
            for (i, s) in buf.chunks_mut(512).enumerate() {
                if let Some(w) = o.get(&(offset / 512 + i as u64)) {
                    s.copy_from_slice(&w[..]);
                }
            }
        }
        Ok(())
    }
    fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), (u32, String)> {
        if offset % 512 != 0 || buf.len() % 512 != 0 {
            return Err(eio(format!("write of {} bytes at {}: not whole sectors", buf.len(), offset)));
        }
        if let Some(o) = &mut self.overlay {
            for (i, s) in buf.chunks(512).enumerate() {
                o.insert(offset / 512 + i as u64, Box::new(s.try_into().unwrap()));
            }
            return Ok(());
        }
        self.writes_served += 1;
        match &mut self.medium {
            Medium::Chain(d) => d.write(offset / 512, buf),
            Medium::File(f) => f.write_at(offset, buf),
        }
        .map_err(|e| {
            // ENOSPC when the slack is used up, like a full disk; EPERM for a read-only layer.
            let (code, hint) = match e {
                ImageError::NoSlack { .. } => (28, " (add write slack to the image with `vdisk reserve`)"),
                ImageError::ReadOnly { .. } => (1, ""),
                _ => (5, ""),
            };
            (code, format!("write at sector {}: {}{}", offset / 512, e, hint))
        })
    }
    fn flush(&mut self) -> Result<(), (u32, String)> {
        if !self.writes_files() {
            return Ok(());
        }
        match (&self.host, &self.pivoted) {
            (Some(h), _) => h.sync_data().map_err(|e| eio(format!("flushing the host disk: {}", e))),
            // After the pivot: every file (the leaf's layer may be several; fsync of a file
            // nothing wrote is cheap).
            (None, Some(files)) => {
                for (f, l) in files.iter().zip(&self.layers) {
                    f.sync_data().map_err(|e| eio(format!("flushing {}: {}", l.path, e)))?;
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vboot::fs::Extent;
    use vboot::handoff::{Filesystem, HostDisk, HostPartition, HostScheme, Layer, LayerFormat};
    use vboot::image::create::{create, CreateOptions, Variant};
    use vboot::image::MemFile;

    const PART_START: u64 = 2048;
    const PART_SECTORS: u64 = 60000;

    fn vhd_bytes() -> Vec<u8> {
        let mut f = MemFile::new("/img/d.vhd", Vec::new());
        let opts = CreateOptions { size_bytes: 8 << 20, reserve_bytes: 4 << 20, exact_size: true, seed: 7, now_unix: 1_700_000_000 };
        create(Variant::VhdDynamic, &mut f, "d.vhd", &opts, None, &mut |_| Err(ImageError::Invalid { detail: "one file".into() })).unwrap();
        f.bytes
    }

    /// A host disk file holding `file` in three pieces, out of order; the drive record for it.
    fn host_disk(tag: &str, file: &[u8], mode: WriteMode) -> (std::path::PathBuf, Drive) {
        let path = std::env::temp_dir().join(format!("vboot-attach-test-{}-{}", tag, std::process::id()));
        let host = File::create(&path).unwrap();
        host.set_len((PART_START + PART_SECTORS) * 512).unwrap();
        let sectors = (file.len() as u64).div_ceil(512);
        let third = sectors / 3;
        let pieces = [(0, third, 40000), (third, third, 10000), (2 * third, sectors - 2 * third, 25000)];
        let mut extents = Vec::new();
        for (file_sector, n, lba) in pieces {
            let start = (file_sector * 512) as usize;
            let end = ((file_sector + n) * 512).min(file.len() as u64) as usize;
            host.write_all_at(&file[start..end], lba * 512).unwrap();
            extents.push(Extent { file_sector, lba, sectors: n });
        }
        let drive = Drive {
            bios_number: 0x80,
            kind: DriveKind::HardDisk,
            write_mode: mode,
            virtual_sectors: (8 << 20) / 512,
            host: HostDisk { bios_drive: 0x80, scheme: HostScheme::Mbr, mbr_signature: 1, disk_guid: [0; 16], sectors: PART_START + PART_SECTORS },
            partition: HostPartition { number: 1, start_lba: PART_START, sectors: PART_SECTORS, type_byte: 0x0C, guid: [0; 16] },
            filesystem: Filesystem::Fat,
            overlay: None,
            parent_dir: None,
            layers: vec![Layer { format: LayerFormat::Vhd, size_bytes: file.len() as u64, path: "/img/d.vhd".into(), extents }],
        };
        (path, drive)
    }

    fn open(path: &std::path::Path, drive: &Drive, writable: bool) -> VirtualDisk {
        let f = std::fs::OpenOptions::new().read(true).write(writable).open(path).unwrap();
        VirtualDisk::open(drive, f, false).unwrap()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 253) as u8 ^ 0x5A).collect()
    }

    #[test]
    fn writes_allocate_in_the_slack_and_stay_inside_the_file() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("rw", &vhd, WriteMode::Normal);
        let before = std::fs::read(&path).unwrap();
        let mut d = open(&path, &drive, true);
        let mut buf = vec![0u8; 8192];
        d.read(3 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "an unallocated block reads as zeros");
        d.write(3 << 20, &pattern(8192)).unwrap();
        d.flush().unwrap();
        drop(d);
        // Read back by a fresh open, as after a reboot.
        let mut d = open(&path, &drive, false);
        d.read(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, pattern(8192));
        // Every host byte outside the file's extents is as it was.
        let after = std::fs::read(&path).unwrap();
        let inside = |lba: u64| drive.layers[0].extents.iter().any(|e| lba >= e.lba && lba < e.lba + e.sectors);
        for (lba, (a, b)) in before.chunks(512).zip(after.chunks(512)).enumerate() {
            if !inside(lba as u64) {
                assert_eq!(a, b, "host sector {} outside the file changed", lba);
            }
        }
        assert_ne!(before, after, "the write reached the host disk");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn immutable_keeps_writes_in_memory() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("immutable", &vhd, WriteMode::Immutable);
        let before = std::fs::read(&path).unwrap();
        // Opened read-only, as the tool does for an immutable drive.
        let mut d = open(&path, &drive, false);
        d.write(512, &pattern(1024)).unwrap();
        let mut buf = vec![0u8; 2048];
        d.read(0, &mut buf).unwrap();
        assert_eq!(&buf[512..1536], &pattern(1024)[..]);
        d.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let _ = std::fs::remove_file(&path);
    }

    /// `--direct`'s runs: each lies where the server reads and writes the same sectors (the host
    /// file holds at `host_lba` exactly what the disk reads), only the leaf's sectors a write
    /// changes alone qualify (in a dynamic VHD's block, those whose bitmap bit is set), and a RAM
    /// overlay is refused.
    #[test]
    fn direct_runs_are_the_sectors_the_server_reads_in_place() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("direct", &vhd, WriteMode::Normal);
        let mut d = open(&path, &drive, true);
        assert_eq!(d.direct_runs().unwrap(), vec![], "an empty dynamic VHD has nothing in place");
        // One block (2 MiB) allocated, partly written.
        d.write(3 << 20, &pattern(8192)).unwrap();
        d.flush().unwrap();
        let runs = d.direct_runs().unwrap();
        let total: u64 = runs.iter().map(|r| r.sectors).sum();
        // The sectors written (their bitmap bits set), not the rest of the block.
        assert_eq!(runs.len(), 1, "{:?}", runs);
        assert_eq!((runs[0].start_sector, total), (6144, 16), "{:?}", runs);
        let host = std::fs::read(&path).unwrap();
        for r in &runs {
            let mut through_disk = vec![0u8; (r.sectors * 512) as usize];
            d.read(r.start_sector * 512, &mut through_disk).unwrap();
            let on_host = &host[(r.host_lba * 512) as usize..((r.host_lba + r.sectors) * 512) as usize];
            assert!(through_disk == on_host, "run {:?} is not where the server reads it", r);
        }
        // A sector written later in the block is in place from then on (its bit is set).
        d.write((6144 + 104) * 512, &pattern(4096)).unwrap();
        assert_eq!(d.direct_runs().unwrap().iter().map(|r| r.sectors).sum::<u64>(), 24);
        drop(d);
        let f = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
        let mut ro = VirtualDisk::open(&drive, f, true).unwrap();
        // Read-only: the allocated block whole (a dynamic VHD's block reads from the file).
        assert_eq!(ro.direct_runs().unwrap().iter().map(|r| r.sectors).sum::<u64>(), 4096);
        assert_eq!(ro.partitions(), vec![], "no partition table in this disk");
        let (path2, drive2) = host_disk("direct-immutable", &vhd, WriteMode::Immutable);
        let mut im = open(&path2, &drive2, false);
        assert!(im.direct_runs().unwrap_err().contains("RAM"));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&path2);
    }

    /// A VMDK leaf has nothing in place until its first write changed the CID: `--direct` makes
    /// that write at attach (the sector keeps its bytes), and then its grains are in place.
    #[test]
    fn direct_runs_of_a_vmdk_after_its_first_write_at_attach() {
        let mut f = MemFile::new("/img/d.vmdk", Vec::new());
        let opts = CreateOptions { size_bytes: 8 << 20, reserve_bytes: 4 << 20, exact_size: true, seed: 7, now_unix: 1_700_000_000 };
        create(Variant::VmdkMonolithicSparse, &mut f, "d.vmdk", &opts, None, &mut |_| Err(ImageError::Invalid { detail: "one file".into() })).unwrap();
        let (path, mut drive) = host_disk("direct-vmdk", &f.bytes, WriteMode::Normal);
        drive.layers[0].format = LayerFormat::Vmdk;
        drive.layers[0].path = "/img/d.vmdk".into();
        let mut d = open(&path, &drive, true);
        d.write(1 << 20, &pattern(64 << 10)).unwrap();
        d.flush().unwrap();
        drop(d);
        let cid = |bytes: &[u8]| String::from_utf8_lossy(bytes).lines().find(|l| l.starts_with("CID=")).map(str::to_string);
        let before = cid(&std::fs::read(&path).unwrap());
        // A new session: nothing in place until the first write.
        let mut d = open(&path, &drive, true);
        if let Medium::Chain(disk) = &mut d.medium {
            assert_eq!(disk.in_place_run(2048), None);
        }
        let runs = d.direct_runs().unwrap();
        assert!(runs.iter().map(|r| r.sectors).sum::<u64>() >= 128, "{:?}", runs);
        let mut buf = vec![0u8; 64 << 10];
        d.read(1 << 20, &mut buf).unwrap();
        assert_eq!(buf, pattern(64 << 10), "the content is unchanged");
        d.flush().unwrap();
        assert_ne!(cid(&std::fs::read(&path).unwrap()), before, "the CID changed");
        let _ = std::fs::remove_file(&path);
    }

    /// Throwaway (`immutable` with its child on disk): the leaf in the table is that child, and
    /// writes go into it like any leaf's, not into a RAM overlay of the tool's own.
    #[test]
    fn throwaway_writes_go_into_the_leaf_file() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("throwaway", &vhd, WriteMode::Throwaway);
        let before = std::fs::read(&path).unwrap();
        let mut d = open(&path, &drive, true);
        assert!(d.description.contains("immutable: writes go into the throwaway child"), "{}", d.description);
        assert!(d.overlay.is_none(), "a throwaway drive has no RAM overlay");
        d.write(3 << 20, &pattern(4096)).unwrap();
        d.flush().unwrap();
        drop(d);
        let mut d = open(&path, &drive, false);
        let mut buf = vec![0u8; 4096];
        d.read(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, pattern(4096));
        assert_ne!(std::fs::read(&path).unwrap(), before, "the write reached the child file");
        let _ = std::fs::remove_file(&path);
    }

    /// The drive record stage2 writes for a CD or floppy image `file` (one raw layer).
    fn medium(tag: &str, file: &[u8], kind: DriveKind, mode: WriteMode) -> (std::path::PathBuf, Drive) {
        let (path, mut drive) = host_disk(tag, file, mode);
        drive.kind = kind;
        drive.bios_number = if kind == DriveKind::Cdrom { 0xE0 } else { 0x00 };
        drive.virtual_sectors = file.len() as u64 / 512;
        drive.layers[0].format = LayerFormat::Raw;
        drive.layers[0].path = if kind == DriveKind::Cdrom { "/iso/x.iso".into() } else { "/fd/a.img".into() };
        (path, drive)
    }

    #[test]
    fn a_cd_is_the_iso_read_only_in_whole_blocks() {
        // Not a whole number of 2048-byte blocks: the last partial block is not served.
        let iso = pattern(10 * 2048 + 700);
        let (path, drive) = medium("cd", &iso, DriveKind::Cdrom, WriteMode::Normal);
        let before = std::fs::read(&path).unwrap();
        // Even asked for read-write, on a host disk opened read-write.
        let mut d = open(&path, &drive, true);
        assert!(d.read_only(), "a CD is read-only");
        assert_eq!(d.size_bytes(), 10 * 2048);
        assert!(d.description.contains("ISO /iso/x.iso, 10 blocks of 2048 bytes"), "{}", d.description);
        let mut buf = vec![0u8; 10 * 2048];
        d.read(0, &mut buf).unwrap();
        assert_eq!(buf, iso[..10 * 2048], "the ISO's bytes, through its three extents");
        let mut one = vec![0u8; 512];
        d.read(4096 + 1536, &mut one).unwrap();
        assert_eq!(one, iso[4096 + 1536..4096 + 2048]);
        // A write is refused with EPERM, as on a hard disk served with --read-only.
        let e = d.write(2048, &pattern(2048)).unwrap_err();
        assert_eq!(e.0, 1, "{}", e.1);
        d.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "the host disk changed");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_floppy_is_read_and_written_in_place() {
        let image = pattern(1_474_560);
        let (path, drive) = medium("floppy", &image, DriveKind::Floppy, WriteMode::Normal);
        let before = std::fs::read(&path).unwrap();
        let mut d = open(&path, &drive, true);
        assert!(!d.read_only());
        assert_eq!(d.size_bytes(), 1_474_560);
        let mut buf = vec![0u8; 1_474_560];
        d.read(0, &mut buf).unwrap();
        assert_eq!(buf, image);
        // Across the boundary of the first two extents (960 sectors each).
        d.write(959 * 512, &[0xC3; 1024]).unwrap();
        d.flush().unwrap();
        drop(d);
        let mut d = open(&path, &drive, false);
        d.read(958 * 512, &mut buf[..2048]).unwrap();
        assert_eq!(&buf[..512], &image[958 * 512..959 * 512]);
        assert!(buf[512..1536].iter().all(|&b| b == 0xC3));
        assert_eq!(&buf[1536..2048], &image[961 * 512..962 * 512]);
        // Only the file's sectors changed on the host.
        let after = std::fs::read(&path).unwrap();
        let changed: Vec<usize> = before.chunks(512).zip(after.chunks(512)).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
        assert_eq!(changed, vec![10000, 40000 + 959], "host sectors written");
        // --read-only: refused; immutable: kept in RAM.
        let f = File::open(&path).unwrap();
        let mut ro = VirtualDisk::open(&drive, f, true).unwrap();
        assert_eq!(ro.write(0, &[0; 512]).unwrap_err().0, 1);
        let mut im_drive = drive.clone();
        im_drive.write_mode = WriteMode::Immutable;
        let mut im = open(&path, &im_drive, false);
        im.write(0, &[0x77; 512]).unwrap();
        im.read(0, &mut buf[..1024]).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 0x77) && buf[512..1024] == image[512..1024]);
        im.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), after, "an immutable floppy changed the host");
        // A floppy record with two files is not one the tool knows.
        let mut two = drive.clone();
        two.layers.push(two.layers[0].clone());
        let e = VirtualDisk::open(&two, File::open(&path).unwrap(), false).err().unwrap();
        assert!(e.contains("should have one"), "{}", e);
        let _ = std::fs::remove_file(&path);
    }

    /// The pivot: after it, reads and writes go to the file given (here a copy of the image's
    /// bytes, as the host filesystem would show them) and the host disk is neither read nor
    /// written; the layers kept their state (the block allocated before is found after).
    #[test]
    fn after_the_pivot_the_file_is_served_and_the_host_disk_is_left_alone() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("pivot", &vhd, WriteMode::Normal);
        let mut d = open(&path, &drive, true);
        assert!(d.writes_files() && !d.pivoted());
        d.write(3 << 20, &pattern(4096)).unwrap();
        d.flush_host().unwrap();
        // The file as the filesystem shows it: its bytes, out of the host disk's extents.
        let host = File::open(&path).unwrap();
        let mut bytes = vec![0u8; vhd.len()];
        for e in &drive.layers[0].extents {
            let start = (e.file_sector * 512) as usize;
            let end = (start + (e.sectors * 512) as usize).min(bytes.len());
            host.read_exact_at(&mut bytes[start..end], e.lba * 512).unwrap();
        }
        let file_path = std::env::temp_dir().join(format!("vboot-attach-test-pivot-file-{}", std::process::id()));
        std::fs::write(&file_path, &bytes).unwrap();
        let host_before = std::fs::read(&path).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&file_path).unwrap();
        d.pivot(vec![f]).unwrap();
        assert!(d.pivoted());
        assert!(d.host.is_none(), "the host disk is closed");
        let mut buf = vec![0u8; 4096];
        d.read(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, pattern(4096), "written before the pivot, read after it");
        // Into the block allocated before (the slack holds one block: allocation after the pivot
        // is the QEMU test's, tests/tests/attach.rs).
        d.write((3 << 20) + 4096, &pattern(4096)).unwrap();
        d.write((3 << 20) + 65536, &pattern(8192)).unwrap();
        d.flush().unwrap();
        drop(d);
        assert_eq!(std::fs::read(&path).unwrap(), host_before, "the host disk was written after the pivot");
        assert_eq!(std::fs::metadata(&file_path).unwrap().len(), vhd.len() as u64, "the file grew");
        // The file, opened again as a plain VHD (the way vdisk opens files), has both writes.
        let mut locator = vboot::image::chain::StdLocator { writable_leaf: false };
        let (layers, _) = open_chain(file_path.to_str().unwrap(), &mut locator, &ChainOptions::default()).unwrap();
        let mut disk = Disk::new(layers, Vec::new()).unwrap();
        let mut buf = vec![0u8; 8192];
        disk.read(((3 << 20) + 65536) / 512, &mut buf).unwrap();
        assert_eq!(buf, pattern(8192));
        disk.read(((3 << 20) + 4096) / 512, &mut buf[..4096]).unwrap();
        assert_eq!(&buf[..4096], &pattern(4096)[..]);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&file_path);
    }

    /// A read-only drive pivots too; the file given may be read-only, and writes stay refused.
    #[test]
    fn a_read_only_drive_pivots_to_a_read_only_file() {
        let vhd = vhd_bytes();
        let (path, drive) = host_disk("pivot-ro", &vhd, WriteMode::Immutable);
        let mut d = open(&path, &drive, false);
        assert!(!d.writes_files());
        d.write(0, &pattern(512)).unwrap();
        let file_path = std::env::temp_dir().join(format!("vboot-attach-test-pivot-ro-{}", std::process::id()));
        std::fs::write(&file_path, &vhd).unwrap();
        d.pivot(vec![File::open(&file_path).unwrap()]).unwrap();
        let mut buf = vec![0u8; 1024];
        d.read(0, &mut buf).unwrap();
        assert_eq!(&buf[..512], &pattern(512)[..], "the RAM overlay survives the pivot");
        d.flush().unwrap();
        assert_eq!(std::fs::read(&file_path).unwrap(), vhd);
        let e = d.pivot(vec![]).unwrap_err();
        assert!(e.contains("0 files"), "{}", e);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&file_path);
    }

    /// `--direct` at the sizes users have: a 2040 GiB dynamic VHD (the format's largest) in 1,000
    /// fragments laid out of order on a host partition that starts past 2 TiB (host LBAs past
    /// 2^32), with one sector written into each of 64 blocks spread over the whole disk. Every
    /// written sector is a direct run whose host sector holds what the disk reads there, the
    /// walk over the 4 Gi sectors stays quick, and the table sends each run to the right sector
    /// of the host partition.
    #[test]
    fn direct_runs_of_a_2040_gib_vhd_in_a_thousand_fragments_past_2_tib() {
        const BLOCKS_WRITTEN: u64 = 64;
        const FRAGMENTS: u64 = 1000;
        let size_bytes = 2040u64 << 30;
        let mut f = MemFile::new("/img/big.vhd", Vec::new());
        let opts = CreateOptions { size_bytes, reserve_bytes: (BLOCKS_WRITTEN + 1) * (2 << 20) + (1 << 20), exact_size: true, seed: 9, now_unix: 1_700_000_000 };
        create(Variant::VhdDynamic, &mut f, "big.vhd", &opts, None, &mut |_| Err(ImageError::Invalid { detail: "one file".into() })).unwrap();
        let file = f.bytes;
        let file_sectors = (file.len() as u64).div_ceil(512);
        // The partition from 2 TiB on; the fragments in it, each at the slot of another.
        let part_start = 1u64 << 32;
        let piece = file_sectors.div_ceil(FRAGMENTS);
        let path = std::env::temp_dir().join(format!("vboot-attach-test-big-{}", std::process::id()));
        let host = File::create(&path).unwrap();
        host.set_len((part_start + 2048 + FRAGMENTS * piece) * 512).unwrap();
        let mut extents = Vec::new();
        for i in 0..FRAGMENTS {
            let file_sector = i * piece;
            if file_sector >= file_sectors {
                break;
            }
            let n = piece.min(file_sectors - file_sector);
            let slot = (i * 617) % FRAGMENTS; // 617 is prime to 1000: every slot once
            let lba = part_start + 2048 + slot * piece;
            let end = ((file_sector + n) * 512).min(file.len() as u64) as usize;
            host.write_all_at(&file[(file_sector * 512) as usize..end], lba * 512).unwrap();
            extents.push(Extent { file_sector, lba, sectors: n });
        }
        let partition_sectors = 2048 + FRAGMENTS * piece;
        let (_, mut drive) = host_disk("big-template", &vhd_bytes(), WriteMode::Normal);
        drive.virtual_sectors = size_bytes / 512;
        drive.host.sectors = part_start + partition_sectors;
        drive.partition.start_lba = part_start;
        drive.partition.sectors = partition_sectors;
        drive.layers[0] = Layer { format: LayerFormat::Vhd, size_bytes: file.len() as u64, path: "/img/big.vhd".into(), extents };
        let mut d = open(&path, &drive, true);
        let block_sectors = 4096u64;
        let stride = drive.virtual_sectors / BLOCKS_WRITTEN / block_sectors * block_sectors;
        let written: Vec<u64> = (0..BLOCKS_WRITTEN).map(|i| i * stride + 7 + i).collect();
        for &s in &written {
            d.write(s * 512, &pattern(512)).unwrap();
        }
        let started = std::time::Instant::now();
        let runs = d.direct_runs().unwrap();
        let walk = started.elapsed();
        assert!(walk < std::time::Duration::from_secs(10), "the walk over 2040 GiB took {:?}", walk);
        assert_eq!(runs.iter().map(|r| r.start_sector).collect::<Vec<_>>(), written, "one run per written sector");
        assert!(runs.iter().all(|r| r.sectors == 1 && r.host_lba > part_start), "{:?}", &runs[..4]);
        assert!(*written.last().unwrap() > drive.virtual_sectors - 2 * stride, "the last write is near the end of the 2040 GiB");
        let host = File::open(&path).unwrap();
        for r in &runs {
            let mut on_host = vec![0u8; 512];
            host.read_exact_at(&mut on_host, r.host_lba * 512).unwrap();
            assert_eq!(on_host, pattern(512), "host sector {} of the run at sector {}", r.host_lba, r.start_sector);
        }
        let hp = vboot_attach::direct::HostPartition { start_lba: part_start, sectors: partition_sectors };
        let (targets, summary) = vboot_attach::direct::build_table(&runs, 0, drive.virtual_sectors, hp, vboot_attach::direct::MAX_TARGETS);
        assert_eq!(summary.direct_sectors, BLOCKS_WRITTEN);
        assert_eq!(targets.iter().map(|t| t.sectors()).sum::<u64>(), drive.virtual_sectors, "the table covers the whole disk");
        let host_targets: Vec<(u64, u64)> = targets
            .iter()
            .filter_map(|t| match *t {
                vboot_attach::direct::Target::Host { start_sector, partition_sector, .. } => Some((start_sector, partition_sector)),
                _ => None,
            })
            .collect();
        let expected: Vec<(u64, u64)> = runs.iter().map(|r| (r.start_sector, r.host_lba - part_start)).collect();
        assert_eq!(host_targets, expected);
        drop(d);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn refusals() {
        let vhd = vhd_bytes();
        let (path, mut drive) = host_disk("refuse", &vhd, WriteMode::Normal);
        drive.virtual_sectors += 1;
        let f = File::open(&path).unwrap();
        let e = VirtualDisk::open(&drive, f, false).err().unwrap();
        assert!(e.contains("the image changed since"), "{}", e);
        drive.virtual_sectors -= 1;
        // Opened read-only (--read-only): writes are refused, reads work.
        let f = File::open(&path).unwrap();
        let mut d = VirtualDisk::open(&drive, f, true).unwrap();
        assert!(d.read_only());
        let e = d.write(3 << 20, &pattern(512)).unwrap_err();
        assert_eq!(e.0, 1, "{}", e.1);
        // A damaged file: both copies of the VHD footer fail their checksum.
        let mut bad = vhd.clone();
        let n = bad.len();
        bad[n - 512 + 70] ^= 0xFF;
        bad[70] ^= 0xFF;
        let (path2, drive2) = host_disk("damaged", &bad, WriteMode::Normal);
        let e = VirtualDisk::open(&drive2, File::open(&path2).unwrap(), false).err().unwrap();
        assert!(e.contains("/img/d.vhd"), "{}", e);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&path2);
    }
}
