//! NTFS: `NtfsVolume::open` ($MFT runs, fixups), attribute lists, extension records, index roots and allocation blocks, data runs.
//! The volume is a sparse disk of up to 2^36 bytes (64 GiB); the walk is `vboot_fuzz::fswalk`:
//! directories breadth-first, every file's extent list checked (file order, inside the volume,
//! no overflow), a little of each file read, well-known paths opened.
//! Memory: at most (32 << 20) live at any moment (attribute lists are at most 1 MiB and 4096 extension records, ntfs.rs; 32 MiB in all).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::block::BlockDevice;
use vboot::fs::volume::Volume;
use vboot_fuzz::{fswalk, heap, sparse::SparseDisk};

const LIMIT: u64 = 32 << 20;

fuzz_target!(|data: &[u8]| {
    let mut disk = SparseDisk::parse(data, 1 << 36);
    disk.read_only = true;
    let sectors = disk.sector_count();
    heap::start(LIMIT);
    let opened = vboot::fs::ntfs::NtfsVolume::open(disk);
    if std::env::var_os("VBOOT_FUZZ_DEBUG").is_some() {
        eprintln!("open: {:?}", opened.as_ref().err());
    }
    if let Ok(v) = opened {
        let mut vol = Volume::Ntfs(v);
        fswalk::walk(&mut vol, sectors);
    }
    heap::stop();
});
