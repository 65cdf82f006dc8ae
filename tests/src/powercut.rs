//! Power cuts before boot (tests/tests/powercut.rs, docs/power-cuts.md): a volume in memory
//! that loses power after its k-th write or tears it, a locator that opens image chains on it
//! the way the next boot would, and fsck verdicts sorted into what a power cut may leave and
//! what is damage.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vboot::block::{check_request, BlockDevice, BlockError, SECTOR_BYTES};
use vboot::fs::volume::Volume;
use vboot::fs::FileKind;
use vboot::image::{ImageFile, MemFile, ParentLocator};

/// What happens to the write the power cut falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Nothing of it lands (the cut falls between two writes).
    None,
    /// Only its first half of sectors lands (a multi-sector transfer cut short).
    Head,
    /// Only its second half lands (the drive wrote the sectors out of order).
    Tail,
}

/// A volume image in memory, copy-on-write over `base`: writes up to the cut land in an overlay,
/// every later one is dropped without an error (the writer does not notice a power cut). Writes
/// are counted per `write_sectors` call (one BIOS transfer in stage2); a single sector is never
/// torn (the model: docs/power-cuts.md).
pub struct CutDisk<'a> {
    base: &'a [u8],
    /// Sectors written so far (volume LBA -> contents).
    pub overlay: BTreeMap<u64, Vec<u8>>,
    /// How many write calls land; `None`: all of them.
    pub budget: Option<usize>,
    /// What happens to write number `budget` (counted from 0).
    pub tear: Tear,
    /// Write calls seen, landed or not.
    pub writes: usize,
    /// Sectors of each write call, in order.
    pub write_sizes: Vec<usize>,
}

impl<'a> CutDisk<'a> {
    pub fn new(base: &'a [u8]) -> CutDisk<'a> {
        CutDisk { base, overlay: BTreeMap::new(), budget: None, tear: Tear::None, writes: 0, write_sizes: Vec::new() }
    }

    /// Power off after `landed` writes; `tear` says what happens to the next one.
    pub fn cut_after(base: &'a [u8], landed: usize, tear: Tear) -> CutDisk<'a> {
        CutDisk { budget: Some(landed), tear, ..CutDisk::new(base) }
    }

    /// The volume as the next boot finds it: what landed, with power back on (writes land).
    pub fn powered_on(&self) -> CutDisk<'a> {
        CutDisk { overlay: self.overlay.clone(), ..CutDisk::new(self.base) }
    }

    /// The whole volume image.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.base.to_vec();
        for (lba, s) in &self.overlay {
            let at = *lba as usize * SECTOR_BYTES;
            v[at..at + SECTOR_BYTES].copy_from_slice(s);
        }
        v
    }
}

impl BlockDevice for CutDisk<'_> {
    fn sector_count(&self) -> u64 {
        (self.base.len() / SECTOR_BYTES) as u64
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(lba, buf.len(), self.sector_count())?;
        for (i, out) in buf.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            let s = lba + i as u64;
            match self.overlay.get(&s) {
                Some(v) => out.copy_from_slice(v),
                None => out.copy_from_slice(&self.base[s as usize * SECTOR_BYTES..(s as usize + 1) * SECTOR_BYTES]),
            }
        }
        Ok(())
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        let n = check_request(lba, buf.len(), self.sector_count())? as usize;
        let index = self.writes;
        self.writes += 1;
        self.write_sizes.push(n);
        let lands: Box<dyn Fn(usize) -> bool> = match self.budget {
            None => Box::new(|_| true),
            Some(b) if index < b => Box::new(|_| true),
            Some(b) if index == b && n > 1 => match self.tear {
                Tear::None => Box::new(|_| false),
                Tear::Head => Box::new(move |i| i < n / 2),
                Tear::Tail => Box::new(move |i| i >= n / 2),
            },
            Some(_) => Box::new(|_| false),
        };
        for (i, s) in buf.chunks_exact(SECTOR_BYTES).enumerate() {
            if lands(i) {
                self.overlay.insert(lba + i as u64, s.to_vec());
            }
        }
        Ok(())
    }
}

/// Every cut of an operation that made `sizes` write calls: after 0..=n whole writes, and each
/// multi-sector write torn both ways.
pub fn cut_points(sizes: &[usize]) -> Vec<(usize, Tear)> {
    let mut v = Vec::new();
    for k in 0..=sizes.len() {
        v.push((k, Tear::None));
        if sizes.get(k).is_some_and(|&n| n > 1) {
            v.push((k, Tear::Head));
            v.push((k, Tear::Tail));
        }
    }
    v
}

/// Opens the files of a chain on a volume, as the next boot's chain walk does (stage2's
/// FsLocator reads through the same filesystem code); files are read whole into memory.
pub struct VolLocator<'v, D: BlockDevice> {
    pub vol: &'v mut Volume<D>,
}

impl<D: BlockDevice> ParentLocator for VolLocator<'_, D> {
    fn open(&mut self, path: &str) -> Option<Box<dyn ImageFile>> {
        let bytes = self.vol.read_to_vec(path, 1 << 30).ok()?;
        let mut f = MemFile::new(path, bytes);
        f.fixed_len = true;
        Some(Box::new(f))
    }
    fn list_dir(&mut self, dir: &str) -> Vec<String> {
        self.vol
            .list_dir(dir)
            .map(|v| v.into_iter().filter(|e| e.kind == FileKind::File).map(|e| e.name).collect())
            .unwrap_or_default()
    }
}

/// Which checker a volume takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsckKind {
    Fat,
    Exfat,
}

/// Runs fsck on volume states that differ from one base image in a few sectors: the base is
/// written to a file once, and each state only patches (then restores) the sectors it changed.
pub struct Fsck {
    pub kind: FsckKind,
    path: PathBuf,
    file: std::fs::File,
    base: Vec<u8>,
    /// How long fsck ran in total, and how many times.
    pub spent: std::time::Duration,
    pub runs: usize,
}

impl Fsck {
    pub fn new(kind: FsckKind, path: &Path, base: &[u8]) -> Fsck {
        let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
        file.write_all(base).unwrap();
        Fsck { kind, path: path.to_path_buf(), file, base: base.to_vec(), spent: Default::default(), runs: 0 }
    }

    /// fsck's report (exit status and the lines it printed) on `base` with `overlay` applied.
    pub fn run(&mut self, overlay: &BTreeMap<u64, Vec<u8>>) -> (i32, String) {
        for (lba, s) in overlay {
            self.file.write_all_at(s, lba * SECTOR_BYTES as u64).unwrap();
        }
        let t = std::time::Instant::now();
        let (prog, package) = match self.kind {
            FsckKind::Fat => ("fsck.fat", "dosfstools"),
            FsckKind::Exfat => ("fsck.exfat", "exfatprogs"),
        };
        let out = Command::new(prog)
            .arg("-n")
            .arg(&self.path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} ({}): install the Debian package {}", prog, e, package));
        self.spent += t.elapsed();
        self.runs += 1;
        for lba in overlay.keys() {
            let at = *lba as usize * SECTOR_BYTES;
            self.file.write_all_at(&self.base[at..at + SECTOR_BYTES], *lba * SECTOR_BYTES as u64).unwrap();
        }
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }
}
