//! Growing a file's write slack on FAT (`reserve=`, before boot) costs few disk calls: the FAT
//! sectors it changes are written in runs, not one call per sector. Under the BIOS each call is
//! a round trip through real mode, and 256 MiB of slack on a FAT32 volume with 4 KiB clusters
//! changes more than 500 FAT sectors in each copy (docs/benchmarks.md). On a 400 MiB volume and
//! on a 32 GiB one (a sparse file; its FAT is 32 MiB). fsck.fat and mtools check the result.

use std::process::Command;
use vboot::block::{BlockDevice, BlockError, FileDisk};
use vboot::fs::volume::Volume;
use vboot::image::onvolume::grow_on_volume;
use vboot::image::Format;
use vboot_tests::{disk, guests, TempDir};

/// The device calls a change makes.
struct Counting {
    inner: FileDisk,
    reads: u64,
    writes: u64,
}

impl BlockDevice for Counting {
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn read_sectors(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.reads += 1;
        self.inner.read_sectors(lba, buf)
    }
    fn write_sectors(&mut self, lba: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.writes += 1;
        self.inner.write_sectors(lba, buf)
    }
}

/// A 1 GiB dynamic VHD on a FAT32 volume of `volume_mib` with 4 KiB clusters grows by 256 MiB.
fn grow_256_mib_on(tag: &str, volume_mib: u64) {
    let dir = TempDir::new(tag);
    let hello = guests::hello_guest(&dir.path, "hello", "GUEST-HELLO", 2048);
    let vhd = dir.join("slack.vhd");
    vboot_tests::sh(Command::new("qemu-img").args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&vhd).arg("1G"));
    vboot_tests::qemu_io("vpc", vhd.to_str().unwrap(), &[&format!("write -q -s {} 0 1M", hello.display())]);
    let part = dir.join("part.img");
    // 4 KiB clusters: 256 MiB is 65,536 FAT entries.
    disk::fat_volume_args(&part, volume_mib * 2048, 32, &["-s", "8"], &[disk::FileSpec::new("/readme.txt", "host\n")]);
    vboot_tests::sh(Command::new("mcopy").arg("-i").arg(&part).arg(&vhd).arg("::/slack.vhd").env("MTOOLS_SKIP_CHECK", "1"));
    let dev = Counting { inner: FileDisk::open(&part, true).unwrap(), reads: 0, writes: 0 };
    let mut vol = Volume::open(dev).unwrap();
    let before = vol.open_file("/slack.vhd").unwrap().size_bytes;
    let grown = grow_on_volume(&mut vol, "/slack.vhd", Format::Vhd, 256 << 20).unwrap();
    assert_eq!(grown.size_bytes, before + (256 << 20));
    let dev = vol.into_inner();
    // Two FAT copies, 512 changed sectors each, in 64-sector windows: 16 runs; plus the tail,
    // the old footer, the directory entry and FSInfo. One call per sector was 1,032.
    assert!(dev.writes <= 32, "{} write calls to grow 256 MiB of slack", dev.writes);
    let fsck = Command::new("fsck.fat").arg("-n").arg(&part).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat:\n{}", String::from_utf8_lossy(&fsck.stdout));
    let listing = vboot_tests::sh(Command::new("mdir").arg("-i").arg(&part).arg("-a").arg("::/").env("MTOOLS_SKIP_CHECK", "1"));
    let size_text = (before + (256 << 20)).to_string();
    assert!(listing.replace(' ', "").contains(&size_text), "mdir does not show {} bytes:\n{}", size_text, listing);
}

#[test]
fn growing_256_mib_of_slack_on_fat32_writes_the_fat_in_runs() {
    grow_256_mib_on("slack-growth", 400);
}

#[test]
fn growing_256_mib_of_slack_on_a_32_gib_fat32_volume_writes_the_fat_in_runs() {
    grow_256_mib_on("slack-growth-32g", 32 << 10);
}
