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
    // Room for the 64 MiB RAM overlay of `immutable`.
    cfg.memory_mib = 256;
    let mut q = Qemu::start(&cfg);
    q.expect("READ-END", T);
    let status = q.wait_exit(T);
    let out = q.output();
    assert_eq!(status, Some(EXIT_PASS), "{}", out);
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
fn immutable_keeps_every_call_in_the_engine() {
    // Writes go to the RAM overlay, so no run is ever straight: the fast path stays off.
    let dir = TempDir::new("fast-immutable");
    let image = guests::reader_guest(&dir.path, SECTORS);
    let host = vboot_host(
        &dir,
        64,
        "set timeout=0\nmenuentry 'reader' {\n vboot harddisk=/reader.img immutable\n}\n",
        &[HostImage { path: "/reader.img", file: &image, pieces: 1 }],
    );
    let (c, out) = read_through_vboot(&host.disk);
    assert_eq!(c.fast_calls, 0, "{:?}\n{}", c, out);
    assert!(c.engine_calls >= READ_CALLS, "{:?}", c);
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
