//! The virtual disk, opened as the engine opens it at boot (`stage2/engine/src/chain.rs`): every
//! file of the chain read and written in place through its extent list on the host disk, the
//! chain walked by the core library with a locator that only knows the table's files, and one
//! `image::Disk` over it, so writes allocate in the files' slack exactly as at boot.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vboot::block::{BlockDevice, BlockError};
use vboot::fs::ExtentList;
use vboot::handoff::{Drive, WriteMode};
use vboot::image::{open_chain, ChainOptions, Disk, ImageError, ListedFile, ListedFiles};

use crate::nbd::{eio, Backend};

/// The host disk as a sector device for the chain's files (`vboot::image::ExtentFile`, the
/// type the engine uses at boot): positioned reads and writes, so the copies the locator hands
/// out share one open file.
#[derive(Clone)]
struct HostDevice(Arc<File>);

impl BlockDevice for HostDevice {
    fn sector_count(&self) -> u64 {
        u64::MAX
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.0.read_exact_at(buf, lba * 512).map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.0.write_all_at(buf, lba * 512).map_err(|e| BlockError::Io { lba, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.0.sync_data().map_err(|e| BlockError::Io { lba: 0, status: e.raw_os_error().unwrap_or(0) as u32 })
    }
}

/// The disk the guest saw, served over NBD.
pub struct VirtualDisk {
    disk: Disk,
    host: Arc<File>,
    /// `immutable`: written sectors live here and the images never change.
    overlay: Option<HashMap<u64, Box<[u8; 512]>>>,
    read_only: bool,
    pub description: String,
}

impl VirtualDisk {
    /// Open the drive's chain on `host` (the host disk, opened read-write unless the drive is
    /// read-only or immutable).
    pub fn open(drive: &Drive, host: File, read_only: bool) -> Result<VirtualDisk, String> {
        let immutable = drive.write_mode == WriteMode::Immutable;
        let host = Arc::new(host);
        let files = drive
            .layers
            .iter()
            .map(|l| ListedFile { path: l.path.clone(), size_bytes: l.size_bytes, extents: ExtentList { extents: l.extents.clone() } })
            .collect::<Vec<_>>();
        let leaf = files.first().ok_or("the drive has no image file")?.path.clone();
        let mut locator = ListedFiles { files, device: HostDevice(host.clone()), writable: !read_only && !immutable };
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
        let description = format!("{} sectors, {}{}", disk.sectors(), names.join(" <- "), if immutable { ", immutable: writes stay in RAM" } else { "" });
        Ok(VirtualDisk { disk, host, overlay: immutable.then(HashMap::new), read_only, description })
    }
}

impl Backend for VirtualDisk {
    fn size_bytes(&self) -> u64 {
        self.disk.sectors() * 512
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), (u32, String)> {
        if offset % 512 != 0 || buf.len() % 512 != 0 {
            return Err(eio(format!("read of {} bytes at {}: not whole sectors", buf.len(), offset)));
        }
        self.disk.read(offset / 512, buf).map_err(|e| eio(format!("read at sector {}: {}", offset / 512, e)))?;
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
        self.disk.write(offset / 512, buf).map_err(|e| {
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
        if self.overlay.is_some() || self.read_only {
            return Ok(());
        }
        self.host.sync_data().map_err(|e| eio(format!("flushing the host disk: {}", e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vboot::fs::Extent;
    use vboot::handoff::{DriveKind, Filesystem, HostDisk, HostPartition, HostScheme, Layer, LayerFormat};
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
