//! Opening a hard-disk image and its parents on the host filesystem, before going resident:
//! the core library's chain walker, with a locator that reads files through the BIOS.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::disk::BiosDisk;
use vboot::block::Window;
use vboot::fs::volume::Volume;
use vboot::fs::{File, FileKind};
use vboot::config::VbootOptions;
use vboot::image::{ExtentFile, ImageFile, Layer, ParentLocator};
use vboot::part::Partition;

/// A file on a partition of a BIOS hard disk, read in place through its extent list (the changes
/// made before boot write through the volume instead: vboot::image::onvolume).
pub type VolumeFile = ExtentFile<Window<BiosDisk>>;

/// `file` on partition `part` of `disk`, for reading.
pub fn volume_file(disk: &BiosDisk, part: &Partition, file: &File) -> VolumeFile {
    ExtentFile::for_reading(Window { inner: disk.clone(), start_lba: part.start_lba, sectors: part.sectors }, file)
}

/// Finds images by path on one partition of a BIOS hard disk, and remembers what it opened.
pub struct FsLocator {
    pub disk: BiosDisk,
    pub start_lba: u64,
    pub sectors: u64,
    /// Every file opened, in order (the leaf first, already opened by the menu), with the path it
    /// was asked for; asking again does not walk the filesystem again.
    pub opened: Vec<(String, File)>,
    /// The partition's filesystem, opened at the first lookup and kept for the rest of the walk.
    volume: Option<Volume<Window<BiosDisk>>>,
}

impl FsLocator {
    /// Files on partition `part` of `disk`; `known` (the leaf first) are not looked up again.
    pub fn new(disk: &BiosDisk, part: &Partition, known: Vec<(String, File)>) -> FsLocator {
        FsLocator { disk: disk.clone(), start_lba: part.start_lba, sectors: part.sectors, opened: known, volume: None }
    }

    fn volume(&mut self) -> Option<&mut Volume<Window<BiosDisk>>> {
        if self.volume.is_none() {
            self.volume = Volume::open(Window { inner: self.disk.clone(), start_lba: self.start_lba, sectors: self.sectors }).ok();
        }
        self.volume.as_mut()
    }

    /// Walk the chain from `leaf` (one of the known files), with `parent_dir=`.
    pub fn open_chain(&mut self, leaf: &str, parent_dir: &Option<String>) -> Result<(Vec<Box<dyn Layer>>, Vec<String>), String> {
        let opts = vboot::image::ChainOptions { parent_dir: parent_dir.clone(), lenient_cid: false };
        vboot::image::open_chain(leaf, self, &opts).map_err(|e| format!("{}", e))
    }

    /// [`Volume::check_files_allocation`] for files of this partition.
    pub fn check_allocation(&mut self, files: &[&File]) -> Result<(), String> {
        let vol = self.volume().ok_or_else(|| String::from("the image's filesystem could not be opened again"))?;
        vol.check_files_allocation(files).map_err(|e| format!("{}", e))
    }

    /// The files the chain `layers` is made of, in chain order: not the candidates the walk
    /// opened and turned down.
    pub fn chain_files(&self, layers: &[Box<dyn Layer>]) -> Vec<(String, File)> {
        layers
            .iter()
            .flat_map(|l| l.file_names())
            .filter_map(|name| vboot::image::chain::find_listed(&self.opened, &name, |(p, _)| p.as_str()).cloned())
            .collect()
    }
}

/// The directory of `parent_dir=` on the image's partition `image_partition` of disk
/// (hd`image_disk`); refused when it names another partition or disk (the chain must live on
/// one). A path without a device is taken on the image's partition.
pub fn parent_dir_on(opts: &VbootOptions, image_disk: u32, image_partition: u32) -> Result<Option<String>, String> {
    match &opts.parent_dir {
        Some(p) if p.disk.is_none() || (p.disk == Some(image_disk) && p.partition.map(|x| x.number) == Some(image_partition)) => Ok(Some(p.path.clone())),
        Some(p) => Err(format!(
            "parent_dir={}: it must be on the image's partition (hd{},{}): write parent_dir={}, or leave the device out",
            p, image_disk, image_partition, p.path
        )),
        None => Ok(None),
    }
}

impl ParentLocator for FsLocator {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let file = match self.opened.iter().find(|(p, _)| p == path) {
            Some((_, f)) => f.clone(),
            None => {
                let file = match self.volume()?.open_file(path) {
                    Ok(f) => f,
                    Err(vboot::fs::FsError::NotFound { .. }) => return None,
                    Err(e) => {
                        // The chain's message will say "not found"; say why it could not be used.
                        crate::println!("  {}: {}", path, e);
                        return None;
                    }
                };
                self.opened.push((path.to_string(), file.clone()));
                file
            }
        };
        let window = Window { inner: self.disk.clone(), start_lba: self.start_lba, sectors: self.sectors };
        Some(Box::new(ExtentFile::for_reading(window, &file)))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        let Some(vol) = self.volume() else { return Vec::new() };
        vol.list_dir(dir)
            .map(|v| v.into_iter().filter(|e| e.kind == FileKind::File).map(|e| e.name).collect())
            .unwrap_or_default()
    }
}
