//! The stub's real-mode fast path (docs/int13.md, "The real-mode fast path"): a guest reading its
//! disk in long runs is served without the engine where the sectors lie straight on the host,
//! and through the engine everywhere else. The reader guest prints the stub's counters.
//! Whether the data is right through the fast path is what every other boot test checks (the
//! probe's patterns, the chain guest's hashes, Linux); here: that the path is taken, and where
//! it must not be.

use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, StubCounters};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{sh, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(120);

fn read_through_vboot(disk: &std::path::Path) -> (StubCounters, String) {
    let mut cfg = Config::disk(disk);
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    q.expect("READ-END", T);
    let status = q.wait_exit(T);
    let out = q.output();
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
    // A read into the stub, after the reads (inside a published run where there is one): refused
    // with 09h whichever path sees it, and the machine goes on.
    assert!(out.contains("STUB-GUARD 09"), "a read over the stub was not refused with 09h:\n{}", out);
    (guests::stub_counters(&out).unwrap_or_else(|| panic!("no STUB line:\n{}", out)), out)
}

/// 16 MiB read in 127-sector calls: 133 calls (and one AH=48h).
const SECTORS: u64 = 16 * 2048;
const READ_CALLS: u32 = SECTORS.div_ceil(127) as u32;

#[test]
fn a_raw_image_in_eight_fragments_is_read_almost_entirely_in_real_mode() {
    let dir = TempDir::new("fast-raw");
    let image = guests::reader_guest(&dir.path, SECTORS);
    let host = vboot_host(
        &dir,
        64,
        "set timeout=0\nmenuentry 'reader' {\n vboot harddisk=/reader.img\n}\n",
        &[HostImage { path: "/reader.img", file: &image, pieces: 8 }],
    );
    let (c, out) = read_through_vboot(&host.disk);
    // Each fragment boundary costs a call through the engine (the first read, and one where a
    // read straddles two fragments or starts a new one); the rest is the fast path.
    assert!(c.fast_calls >= READ_CALLS - 20, "only {} of {} reads took the fast path: {:?}\n{}", c.fast_calls, READ_CALLS, c, out);
    assert!(c.engine_calls < 30, "{:?}\n{}", c, out);
}

#[test]
fn a_dynamic_vhd_is_read_in_real_mode_where_its_blocks_are_allocated() {
    let dir = TempDir::new("fast-vhd");
    let image = guests::reader_guest(&dir.path, SECTORS);
    let vhd = dir.join("reader.vhd");
    sh(Command::new("qemu-img").args(["convert", "-O", "vpc", "-o", "subformat=dynamic,force_size=on"]).arg(&image).arg(&vhd));
    let host = vboot_host(
        &dir,
        64,
        "set timeout=0\nmenuentry 'reader' {\n vboot harddisk=/reader.vhd reserve=0\n}\n",
        &[HostImage { path: "/reader.vhd", file: &vhd, pieces: 1 }],
    );
    let (c, out) = read_through_vboot(&host.disk);
    // 2 MiB blocks: 8 of them, each entered once through the engine.
    assert!(c.fast_calls >= READ_CALLS - 20, "only {} of {} reads took the fast path: {:?}\n{}", c.fast_calls, READ_CALLS, c, out);
}

#[test]
fn immutable_reads_its_parent_through_the_throwaway_child_in_real_mode() {
    // The child is empty: every sector comes from the parent's extents, read straight from the
    // host. (Only the RAM overlay, where no child can be had, keeps every call in the engine.)
    let dir = TempDir::new("fast-immutable");
    let image = guests::reader_guest(&dir.path, SECTORS);
    let host = vboot_host(
        &dir,
        64,
        "set timeout=0\nmenuentry 'reader' {\n vboot harddisk=/reader.img immutable reserve=1M\n}\n",
        &[HostImage { path: "/reader.img", file: &image, pieces: 1 }],
    );
    let (c, out) = read_through_vboot(&host.disk);
    assert!(out.contains("immutable: /reader.immutable.vmdk made"), "{}", out);
    assert!(c.fast_calls >= READ_CALLS - 20, "only {} of {} reads took the fast path: {:?}\n{}", c.fast_calls, READ_CALLS, c, out);
}

#[test]
fn a_native_run_prints_no_counters() {
    let dir = TempDir::new("fast-native");
    let image = guests::reader_guest(&dir.path, 2048);
    let mut q = Qemu::start(&Config::disk(&image));
    q.expect("READ-END", T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS));
    assert_eq!(guests::stub_counters(&q.output()), None);
}

/// Where the test puts the host partition: at 1 MiB of an MBR disk (`vboot_host`), or at
/// `start_lba` of a GPT disk of `disk_bytes` (a sparse file).
enum HostAt {
    Usual,
    Gpt { start_lba: u64, disk_bytes: u64 },
}

/// Sequential 64-sector writes over a raw image in four fragments: after the first write, the
/// engine publishes writable runs and the stub writes by itself. Every written sector must be in
/// the file afterwards (read back with mtools), every other sector unchanged, and the guest's
/// hashes before and after the writes (read through the fast path) must agree.
fn sequential_writes_land_in_the_file(tag: &str, at: HostAt) {
    use vboot_tests::disk;
    use vboot_tests::guests::{ChainConfig, WriteRun};
    let dir = TempDir::new(tag);
    const SECTORS: u64 = 16 * 2048;
    const HOST_MIB: u64 = 64;
    let cfg = ChainConfig {
        flags: guests::CHAIN_HASH_BEFORE | guests::CHAIN_HASH_AFTER,
        tag: 0xFA57_0001,
        runs: vec![WriteRun { lba: 64, writes: 400, stride: 64, sectors: 64 }],
    };
    let code = guests::build_chain_guest(&dir.join("chainer-build"));
    let mut model = vec![0u8; SECTORS as usize * 512];
    for (lba, chunk) in model.chunks_mut(512).enumerate() {
        chunk.copy_from_slice(&guests::pattern_sector(lba as u64));
    }
    let head = guests::chain_guest_sectors(&code, &cfg);
    model[..head.len()].copy_from_slice(&head);
    let image = dir.join("writer.img");
    std::fs::write(&image, &model).unwrap();
    let before = model.clone();
    for lba in cfg.written_lbas() {
        model[lba as usize * 512..(lba as usize + 1) * 512].copy_from_slice(&guests::chain_written_sector(lba, cfg.tag));
    }
    let grub = "set timeout=0\nmenuentry 'writer' {\n vboot harddisk=/writer.img\n}\n";
    let (disk_path, part_start, part) = match at {
        HostAt::Usual => {
            let host = vboot_host(&dir, HOST_MIB, grub, &[HostImage { path: "/writer.img", file: &image, pieces: 4 }]);
            (host.disk.clone(), 2048, host.part.clone())
        }
        HostAt::Gpt { start_lba, disk_bytes } => {
            let part = dir.join("host-part.img");
            disk::fat_volume(&part, HOST_MIB * 2048, 32, &[disk::FileSpec::new("/boot/grub/grub.cfg", grub)]);
            disk::put_fragmented(&part, "/writer.img", &std::fs::read(&image).unwrap(), 4);
            let host = dir.join("disk.img");
            std::fs::File::create(&host).unwrap().set_len(disk_bytes).unwrap();
            let end = start_lba + HOST_MIB * 2048 - 1;
            disk::sgdisk(&host, &["-a", "1", "-n", "1:34:2047", "-t", "1:ef02", "-n", &format!("2:{}:{}", start_lba, end), "-t", "2:0700"]);
            disk::write_at(&host, start_lba, &part);
            let (ok, out) = vboot_tests::vboot_install(&["install", host.to_str().unwrap()]);
            assert!(ok, "{}", out);
            (host, start_lba, part)
        }
    };
    let mut q = Qemu::boot_disk(&disk_path);
    let out = q.expect(guests::CHAIN_PASS, T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    let part_now = dir.join("part-after.img");
    let part_sectors = std::fs::metadata(&part).unwrap().len() / 512;
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&disk_path).unwrap();
        f.seek(SeekFrom::Start(part_start * 512)).unwrap();
        let mut bytes = vec![0u8; (part_sectors * 512) as usize];
        f.read_exact(&mut bytes).unwrap();
        std::fs::write(&part_now, &bytes).unwrap();
    }
    let back = dir.join("writer-after.img");
    disk::fat_get(&part_now, "/writer.img", &back);
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), model.len());
    if let Some(lba) = (0..SECTORS as usize).find(|&s| got[s * 512..(s + 1) * 512] != model[s * 512..(s + 1) * 512]) {
        panic!("sector {} of the image is not what the guest wrote (or left)\n{}", lba, out);
    }
    let passes = guests::hash_passes(&out);
    assert_eq!(passes.len(), 2, "two hash passes:\n{}", out);
    guests::compare_hashes(&passes[0], &before).unwrap_or_else(|e| panic!("the guest's hash before its writes: {}", e));
    guests::compare_hashes(&passes[1], &model).unwrap_or_else(|e| panic!("the guest's hash after its writes: {}", e));
}

#[test]
fn sequential_writes_to_a_raw_image_land_in_the_file_across_its_fragments() {
    sequential_writes_land_in_the_file("fast-writes", HostAt::Usual);
}

/// The same with the host partition past 2 TiB of a 3 TiB GPT disk: the host LBAs the stub
/// computes need their high 32 bits (the `adc` into the packet's upper LBA).
#[test]
fn the_fast_path_reaches_a_host_partition_past_2_tib() {
    sequential_writes_land_in_the_file("fast-writes-far", HostAt::Gpt { start_lba: (1 << 32) + 2048, disk_bytes: 3 << 40 });
}
