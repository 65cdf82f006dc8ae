//! exFAT: `ExfatVolume::open` (boot region checksum, allocation bitmap, up-case table), entry sets, NoFatChain streams.
//! The volume is a sparse disk of up to 2^36 bytes (64 GiB); the walk is `vboot_fuzz::fswalk`:
//! directories breadth-first, every file's extent list checked (file order, inside the volume,
//! no overflow), a little of each file read, well-known paths opened.
//! Memory: at most (8 << 20) + (16 << 20) live at any moment (a directory is at most 8 MiB, exfat.rs MAX_DIR_BYTES, plus 16 MiB; the bitmap is read a sector at a time, the up-case table is at most 256 KiB).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vboot::block::BlockDevice;
use vboot::fs::volume::Volume;
use vboot_fuzz::{fswalk, heap, sparse::SparseDisk};

const LIMIT: u64 = (8 << 20) + (16 << 20);

fuzz_target!(|data: &[u8]| {
    let mut disk = SparseDisk::parse(data, 1 << 36);
    disk.read_only = true;
    let sectors = disk.sector_count();
    heap::start(LIMIT);
    let opened = vboot::fs::exfat::ExfatVolume::open(disk);
    if std::env::var_os("VBOOT_FUZZ_DEBUG").is_some() {
        eprintln!("open: {:?}", opened.as_ref().err());
    }
    if let Ok(v) = opened {
        let mut vol = Volume::Exfat(v);
        fswalk::walk(&mut vol, sectors);
    }
    heap::stop();
});
