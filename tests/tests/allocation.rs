//! Writes that allocate a new block (VHD, VDI) or grain (VMDK) inside the write slack stage2
//! grew at boot, where the slack's clusters held another file's bytes before: what qemu-img reads
//! afterwards is exactly what the guest wrote and zeros, never the stale bytes, whether the zeros
//! went through the stub's bounce buffer (a one-sector write) or through the guest's own buffer,
//! lent for the moment (a 64-sector write: docs/int13.md, "Zeros from the guest's buffer"); the
//! guest checks after every write that its buffer is as it left it.

use std::process::Command;
use std::time::Duration;
use vboot_tests::guests::{self, BigIoConfig, BigOp};
use vboot_tests::qemu::{Config, Qemu, EXIT_PASS};
use vboot_tests::{sh, vboot_host, HostImage, TempDir};

const T: Duration = Duration::from_secs(300);
const DISK_BYTES: usize = 64 << 20;

fn new_units_read_as_written_and_zeros(fmt: &str, opts: &str, ext: &str, unit_sectors: u64) {
    let dir = TempDir::new(&format!("alloc-{}", ext));
    let code = guests::build_bigio_guest(&dir.join("bigio-build"));
    let last = DISK_BYTES as u64 / 512 / unit_sectors - 1;
    let ops = vec![
        // Zeros before and after, from the lent guest buffer.
        BigOp::Write { lba: 2 * unit_sectors + 8, sectors: 64 },
        // Zeros before, through the bounce buffer.
        BigOp::Write { lba: 3 * unit_sectors + unit_sectors - 1, sectors: 1 },
        // A new unit, then the sectors after it in place.
        BigOp::Write { lba: 4 * unit_sectors, sectors: 64 },
        BigOp::Write { lba: 4 * unit_sectors + 64, sectors: 64 },
        // The disk's last unit, ending at its last sector.
        BigOp::Write { lba: last * unit_sectors + unit_sectors - 64, sectors: 64 },
        BigOp::Pattern { lba: 2 * unit_sectors + 8, sectors: 64 },
        BigOp::Fill { lba: 2 * unit_sectors, sectors: 8, byte: 0 },
        BigOp::Fill { lba: 2 * unit_sectors + 72, sectors: 64, byte: 0 },
    ];
    let cfg = BigIoConfig { tag: 0xA110C, ops: ops.clone(), bench: None };
    let mut disk = guests::bigio_guest_sectors(&code, &cfg);
    disk.resize(DISK_BYTES, 0);
    let raw = dir.join("a.raw");
    std::fs::write(&raw, &disk).unwrap();
    let img = dir.join(&format!("a.{}", ext));
    sh(Command::new("qemu-img").args(["convert", "-O", fmt, "-o", opts]).arg(&raw).arg(&img));

    // A 40 MiB file of non-zero bytes after the image, deleted before boot: its clusters are the
    // free space stage2 grows the image's slack into.
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, (0..40u32 << 20).map(|i| (i % 251) as u8 | 0x80).collect::<Vec<u8>>()).unwrap();
    let path = format!("/a.{}", ext);
    let grub = format!("set timeout=0\nmenuentry 'alloc' {{\n vboot harddisk={} reserve=16M\n}}\n", path);
    let host = vboot_host(&dir, 128, &grub, &[HostImage { path: &path, file: &img, pieces: 1 }, HostImage { path: "/junk.bin", file: &junk, pieces: 1 }]);
    let image_at = format!("{}@@1M", host.disk.display());
    sh(Command::new("mdel").args(["-i", &image_at, "::/junk.bin"]).env("MTOOLS_SKIP_CHECK", "1"));

    let mut q = Qemu::start(&Config::disk(&host.disk));
    q.expect(guests::BIGIO_PASS, T);
    assert_eq!(q.wait_exit(T), Some(EXIT_PASS), "{}", q.output());
    let out = q.output();
    assert!(out.contains("write slack"), "stage2 did not grow the slack:\n{}", out);
    for op in &ops {
        assert!(out.contains(&op.ok_line()), "no {:?}:\n{}", op.ok_line(), out);
    }

    let back = dir.join(&format!("back.{}", ext));
    sh(Command::new("mcopy").args(["-i", &image_at, &format!("::{}", path)]).arg(&back).env("MTOOLS_SKIP_CHECK", "1"));
    if fmt != "vpc" {
        vboot_tests::qemu_img_check(&back, "after the allocating writes: ");
    }
    let back_raw = dir.join("back.raw");
    sh(Command::new("qemu-img").args(["convert", "-f", fmt, "-O", "raw"]).arg(&back).arg(&back_raw));
    let got = std::fs::read(&back_raw).unwrap();
    let mut want = disk;
    for op in ops.iter().filter(|o| matches!(o, BigOp::Write { .. })) {
        for s in op.lba()..op.lba() + op.sectors() as u64 {
            want[s as usize * 512..][..512].copy_from_slice(&cfg.written(s));
        }
    }
    assert_eq!(got.len(), want.len());
    if let Some(at) = (0..got.len() / 512).find(|&s| got[s * 512..][..512] != want[s * 512..][..512]) {
        panic!("{}: sector {} as qemu-img reads it is not what the guest wrote or zeros: {:02x?}", ext, at, &got[at * 512..at * 512 + 16]);
    }
}

#[test]
fn new_vhd_blocks_hold_the_guests_sectors_and_zeros_never_stale_slack() {
    new_units_read_as_written_and_zeros("vpc", "subformat=dynamic,force_size=on", "vhd", 4096);
}

#[test]
fn new_vdi_blocks_hold_the_guests_sectors_and_zeros_never_stale_slack() {
    new_units_read_as_written_and_zeros("vdi", "static=off", "vdi", 2048);
}

#[test]
fn new_vmdk_grains_hold_the_guests_sectors_and_zeros_never_stale_slack() {
    new_units_read_as_written_and_zeros("vmdk", "subformat=monolithicSparse", "vmdk", 128);
}
