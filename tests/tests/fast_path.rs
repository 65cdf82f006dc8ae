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

/// Sequential 64-sector writes over a raw image in four fragments: after the first write, the
/// engine publishes writable runs and the stub writes by itself. Every written sector must be in
/// the file afterwards (read back with mtools), every other sector unchanged, and the guest's
/// hash after the writes (read through the fast path) must agree.
#[test]
fn sequential_writes_to_a_raw_image_land_in_the_file_across_its_fragments() {
    use vboot_tests::disk;
    use vboot_tests::guests::{ChainConfig, WriteRun};
    let dir = TempDir::new("fast-writes");
    const SECTORS: u64 = 16 * 2048;
    let cfg = ChainConfig {
        flags: guests::CHAIN_HASH_AFTER,
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
    for lba in cfg.written_lbas() {
        model[lba as usize * 512..(lba as usize + 1) * 512].copy_from_slice(&guests::chain_written_sector(lba, cfg.tag));
    }
    let host = vboot_host(
        &dir,
        64,
        "set timeout=0\nmenuentry 'writer' {\n vboot harddisk=/writer.img\n}\n",
        &[HostImage { path: "/writer.img", file: &image, pieces: 4 }],
    );
    let mut q = Qemu::boot_disk(&host.disk);
    let out = q.expect(guests::CHAIN_PASS, T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", out);
    let part = host.current_partition(&dir.join("part-after.img"));
    let back = dir.join("writer-after.img");
    disk::fat_get(&part, "/writer.img", &back);
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), model.len());
    if let Some(lba) = (0..SECTORS as usize).find(|&s| got[s * 512..(s + 1) * 512] != model[s * 512..(s + 1) * 512]) {
        panic!("sector {} of the image is not what the guest wrote (or left)\n{}", lba, out);
    }
    let passes = guests::hash_passes(&out);
    let after = passes.last().unwrap_or_else(|| panic!("no hash pass:\n{}", out));
    guests::compare_hashes(after, &model).unwrap_or_else(|e| panic!("the guest's hash after its writes: {}", e));
}
